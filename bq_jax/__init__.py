"""bq_jax: boundary-aware quantization in JAX.

Sub-packages, one per stage of the pipeline; imports flow one way, bottom to top (a test parses
every import and fails on an upward one, a cycle or a private name crossing a module):

* ``bq_jax.vocabulary``, ``bq_jax.stats``  the names of splits, metrics and settings, and the
  estimates over seeds (mean, spread, Pearson r); ``bq_jax._src`` holds shared internals.
* ``bq_jax.quant``    pure quantizers (integer, floating point, learned rounding, LSQ) and range
  setting; imports nothing else of bq_jax.
* ``bq_jax.data``     data sets with fixed train / calibration / held-out splits.
* ``bq_jax.models``   flax classifiers exposing ``apply_fn(params, x) -> logits``.
* ``bq_jax.train``    the training loop (float training and QAT) with optax, checkpoints.
* ``bq_jax.geometry`` slices, vmapped grid sweeps, boundary masks and decision-geometry metrics.
* ``bq_jax.ptq``      post-training quantization (PTQ-W, activations, BN folding, CLE, AdaRound).
* ``bq_jax.qat``      quantization-aware training.
* ``bq_jax.report``   results files, Markdown reports and figures.
* ``bq_jax.studies``  every study, one module each with one protocol, run by one runner.
* ``bq_jax.cli``      the ``bq-jax`` command, its flags derived from the study configs.

Sub-packages are imported on demand (``from bq_jax import quant``) so that ``import bq_jax``
stays cheap.
"""

__version__ = "0.1.0"
