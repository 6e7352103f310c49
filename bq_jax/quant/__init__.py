"""Pure quantizers with straight-through gradients, and range setting.

Imports nothing else from bq_jax.
"""

from bq_jax.quant.adaround import *  # noqa: F403
from bq_jax.quant.config import *  # noqa: F403
from bq_jax.quant.floating import *  # noqa: F403
from bq_jax.quant.integer import *  # noqa: F403
from bq_jax.quant.ranges import *  # noqa: F403
