"""Reproduce the boundary-aware quantization studies on scikit-learn digits (bundled).

Command (the same as ``bq-jax reproduce digits``; extra arguments are passed through)::

    python experiments/reproduce_digits.py --out results/digits          # full: 3 seeds, 256x256
    python experiments/reproduce_digits.py --quick --out /tmp/bq-digits  # smoke test

Time on a 2-core CPU: see the "Time" lines of ``bq-jax reproduce --help`` and the
``results/digits/report.md`` of a run (it records its own wall time).
"""

import sys

from bq_jax.cli import main

if __name__ == "__main__":
    sys.exit(main(["reproduce", "digits", *sys.argv[1:]]))
