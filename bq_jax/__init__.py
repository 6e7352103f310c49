"""bq_jax: boundary-aware quantization in JAX.

Sub-packages, one per stage of the pipeline (imports flow one way, top to bottom):

* ``bq_jax.quant``    pure quantizers (integer, floating point, learned rounding) and range setting.
* ``bq_jax.data``     data sets with fixed train / calibration / held-out splits.
* ``bq_jax.models``   flax classifiers exposing ``apply_fn(params, x) -> logits``.
* ``bq_jax.train``    float training with optax, checkpoints.
* ``bq_jax.geometry`` slices, vmapped grid sweeps, boundary masks and decision-geometry metrics.
* ``bq_jax.ptq``      post-training quantization (PTQ-W, activations, BN folding, CLE, AdaRound).
* ``bq_jax.qat``      quantization-aware training.
* ``bq_jax.studies``  the paper's studies; ``bq_jax.report`` writes results, reports and figures.
* ``bq_jax.cli``      the ``bq-jax`` command.

Sub-packages are imported on demand (``from bq_jax import quant``) so that ``import bq_jax``
stays cheap.
"""

__version__ = "0.1.0"
