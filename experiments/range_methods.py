"""STE-QAT with each weight range-setting method on digits (``bq_jax.studies.range_methods``).

The same as ``bq-jax range-methods digits`` (writes results/range-methods/digits);
extra arguments are
passed through, ``--help`` lists every setting::

    python experiments/range_methods.py
    python experiments/range_methods.py --quick --out /tmp/q
"""

import sys

from bq_jax.cli import main

if __name__ == "__main__":
    sys.exit(main(["range-methods", "digits", *sys.argv[1:]]))
