"""Post-training quantization: PTQ-W, activation quantization, BN folding, CLE, bias
correction, AdaRound and boundary-gap rounding, all as pure functions of variables dicts.
"""

from bq_jax.ptq.activations import *  # noqa: F403
from bq_jax.ptq.bias_correction import *  # noqa: F403
from bq_jax.ptq.equalization import *  # noqa: F403
from bq_jax.ptq.folding import *  # noqa: F403
from bq_jax.ptq.layers import *  # noqa: F403
from bq_jax.ptq.paths import *  # noqa: F403
from bq_jax.ptq.rounding import *  # noqa: F403
from bq_jax.ptq.weights import *  # noqa: F403
