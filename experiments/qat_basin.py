"""Run the "PTQ leaves the basin, QAT returns" study on digits (``bq_jax.studies.qat_basin``).

The same as ``bq-jax qat-basin digits`` (writes results/qat-basin/digits);
extra arguments are
passed through, ``--help`` lists every setting::

    python experiments/qat_basin.py
    python experiments/qat_basin.py --quick --out /tmp/q
"""

import sys

from bq_jax.cli import main

if __name__ == "__main__":
    sys.exit(main(["qat-basin", "digits", *sys.argv[1:]]))
