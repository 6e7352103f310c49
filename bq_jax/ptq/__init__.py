"""Post-training quantization as pure functions of variables dicts.

Everything works from ``apply_fn(params, x) -> logits`` of any JAX model -- flax linen, flax
NNX and equinox models come in through :func:`bq_jax.models.adapt` -- whose weight layers are
found in its jaxpr (:mod:`bq_jax.models.tracing`: :func:`trace_layers`,
:func:`layer_structure`, :func:`rewrite_layers`, re-exported here):

* PTQ-W: :func:`quantize_weights` (a ``QuantConfig`` or ordered path rules; ``layouts=`` for
  kernels whose output channel is not the last axis),
  :func:`quantize_weights_stack` (variants on a leading axis for ``geometry.sweep_labels``).
* Activations: :func:`quantize_activations` / :func:`calibrate_activations` /
  :func:`activation_quantized_apply` (ranges carried in the variables dict).
* :func:`fold_batch_norm`, :func:`cross_layer_equalization`, :func:`bias_correction`.
* Learned rounding: :func:`adaround` (layer-wise, :class:`AdaRoundConfig`),
  :func:`optimize_rounding` (network-wise with a swappable objective, boundary-gap rounding,
  :class:`RoundingConfig`), :func:`nearest_rounding`, :func:`layer_reconstruction_error`.
* Per-layer boundary sensitivity and mixed precision: :func:`layer_sensitivity` (only one
  layer / all but one quantized), :func:`allocate_bits` (greedy widths under an average-bit
  budget, chosen on calibration planes), :func:`quantize_layers`.
"""

from bq_jax.models.tracing import Layer as Layer
from bq_jax.models.tracing import LayerCall as LayerCall
from bq_jax.models.tracing import find_layers as find_layers
from bq_jax.models.tracing import layer_outputs as layer_outputs
from bq_jax.models.tracing import layer_structure as layer_structure
from bq_jax.models.tracing import rewrite_layers as rewrite_layers
from bq_jax.models.tracing import trace_layers as trace_layers
from bq_jax.ptq.activations import *  # noqa: F403
from bq_jax.ptq.bias_correction import *  # noqa: F403
from bq_jax.ptq.equalization import *  # noqa: F403
from bq_jax.ptq.folding import *  # noqa: F403
from bq_jax.ptq.paths import *  # noqa: F403
from bq_jax.ptq.rounding import *  # noqa: F403
from bq_jax.ptq.sensitivity import *  # noqa: F403
from bq_jax.ptq.weights import *  # noqa: F403
