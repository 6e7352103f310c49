"""``python -m bq_jax.cli``: the same as the ``bq-jax`` command."""

import sys

from bq_jax.cli import main

sys.exit(main())
