"""Reproduce the boundary-aware quantization paper's studies on scikit-learn digits (bundled).

The same as ``bq-jax reproduce digits``; extra arguments are passed through::

    python experiments/reproduce_digits.py                       # full: 3 seeds -> results/digits
    python experiments/reproduce_digits.py --quick --out /tmp/q  # smoke test

Each run's report.md records its own wall time.
"""

import sys

from bq_jax.cli import main

if __name__ == "__main__":
    sys.exit(main(["reproduce", "digits", *sys.argv[1:]]))
