"""Nearest vs AdaRound vs boundary-gap rounding over seeds on digits.

The study is ``bq_jax.studies.rounding_comparison``.

The same as ``bq-jax rounding-comparison digits`` (writes results/rounding-comparison/digits);
extra arguments are
passed through, ``--help`` lists every setting::

    python experiments/rounding_comparison.py
    python experiments/rounding_comparison.py --quick --out /tmp/q
"""

import sys

from bq_jax.cli import main

if __name__ == "__main__":
    sys.exit(main(["rounding-comparison", "digits", *sys.argv[1:]]))
