"""Decision geometry of classifiers: slices, vmapped grid sweeps, boundary metrics, surrogates.

Only ``apply_fn(params, x) -> logits`` is known about a model, so everything here works for any
JAX classifier (flax, haiku, plain functions, models quantized by other libraries). Of bq_jax
it imports only the layers below every sub-package (``bq_jax._src``, ``bq_jax.vocabulary``).

* :mod:`~bq_jax.geometry.slices`: :class:`Slice` (plane ``x(u) = mu + P u`` and an R x R grid),
  :func:`pca_slice`, :func:`random_slice`, :func:`points_slice`, :func:`stack_slices`.
* :mod:`~bq_jax.geometry.families`: :func:`slice_family` (K planes of a kind in
  :data:`FAMILY_KINDS` drawn from a key, one stacked Slice), :func:`family_metrics` (per-slice
  metrics of V variants on K planes in one jitted call, memory flat in K).
* :mod:`~bq_jax.geometry.sweep`: :func:`sweep_logits`, :func:`sweep_labels` (V variants x
  R x R points in one jitted, chunked call, sharded over devices with ``mesh=``),
  :func:`evaluate_logits`, :func:`device_mesh`.
* :mod:`~bq_jax.geometry.adaptive`: :func:`adaptive_labels` (label maps from a coarse grid
  refined near boundaries; exact on the tested models, optionally Lipschitz-certified).
* :mod:`~bq_jax.geometry.metrics`: :func:`boundary_mask`, :func:`boundary_jaccard_distance`
  (alias :func:`boundary_jaccard`), :func:`grid_change`, :func:`triple_junctions`,
  :func:`triple_junction_count`, :func:`flip_rate`, :func:`margin`,
  :func:`boundary_band`, :func:`band_flip_rate`, :func:`pair_order_flip`.
* :mod:`~bq_jax.geometry.local`: :func:`margin_radius`, :func:`boundary_displacement`,
  :func:`normal_variation`, :func:`median_local_shift`.
* :mod:`~bq_jax.geometry.compare`: :func:`compare` (all metrics per variant, one call;
  ``variant_apply_fn=`` for variants that are another model), :func:`compare_models` (a
  float model against models that may each be a different implementation).
* :mod:`~bq_jax.geometry.regions`: :func:`fragmentation`, :func:`region_counts`,
  :func:`connected_components` (8-connected regions of label maps), :func:`class_skips`,
  :func:`segment_points`, :func:`segment_labels`, :func:`segment_class_skips` (label changes
  along segments between inputs).
* :mod:`~bq_jax.geometry.surrogates`: :func:`soft_boundary_mask`, :func:`soft_jaccard`,
  :func:`boundary_gap_penalty`.

Internal modules (not re-exported): :mod:`~bq_jax.geometry.engine` (the chunked, jitted
evaluation shared by sweeps, :func:`compare` and the local geometry) and
:mod:`~bq_jax.geometry.checks` (array-argument checks).
"""

from bq_jax.geometry.adaptive import AdaptiveLabels, adaptive_labels
from bq_jax.geometry.compare import (
    COMPARE_KEYS,
    SEGMENT_KEYS,
    compare,
    compare_models,
    compare_records,
)
from bq_jax.geometry.families import FAMILY_KINDS, FAMILY_METRICS, family_metrics, slice_family
from bq_jax.geometry.local import (
    GRAD_TOL,
    MarginRadius,
    boundary_displacement,
    margin_radius,
    median_local_shift,
    normal_variation,
)
from bq_jax.geometry.metrics import (
    band_flip_rate,
    band_threshold,
    boundary_band,
    boundary_jaccard,
    boundary_jaccard_distance,
    boundary_mask,
    flip_rate,
    grid_change,
    margin,
    masked_mean,
    masked_median,
    pair_gap,
    pair_order_flip,
    top2,
    triple_junction_count,
    triple_junctions,
)
from bq_jax.geometry.regions import (
    DEFAULT_SEGMENT_POINTS,
    ClassSkips,
    Fragmentation,
    class_skips,
    connected_components,
    fragmentation,
    region_counts,
    segment_class_skips,
    segment_labels,
    segment_points,
)
from bq_jax.geometry.slices import Slice, pca_slice, points_slice, random_slice, stack_slices
from bq_jax.geometry.surrogates import boundary_gap_penalty, huber, soft_boundary_mask, soft_jaccard
from bq_jax.geometry.sweep import (
    default_chunk_size,
    device_mesh,
    evaluate_logits,
    num_variants,
    sweep_labels,
    sweep_logits,
)

__all__ = [
    "AdaptiveLabels",
    "COMPARE_KEYS",
    "ClassSkips",
    "DEFAULT_SEGMENT_POINTS",
    "Fragmentation",
    "FAMILY_KINDS",
    "FAMILY_METRICS",
    "GRAD_TOL",
    "MarginRadius",
    "SEGMENT_KEYS",
    "Slice",
    "adaptive_labels",
    "band_flip_rate",
    "band_threshold",
    "boundary_band",
    "boundary_displacement",
    "boundary_gap_penalty",
    "boundary_jaccard",
    "boundary_jaccard_distance",
    "boundary_mask",
    "class_skips",
    "compare",
    "compare_models",
    "compare_records",
    "connected_components",
    "default_chunk_size",
    "device_mesh",
    "evaluate_logits",
    "family_metrics",
    "flip_rate",
    "fragmentation",
    "grid_change",
    "huber",
    "margin",
    "margin_radius",
    "masked_mean",
    "masked_median",
    "median_local_shift",
    "normal_variation",
    "num_variants",
    "pair_gap",
    "pair_order_flip",
    "pca_slice",
    "points_slice",
    "random_slice",
    "region_counts",
    "segment_class_skips",
    "segment_labels",
    "segment_points",
    "soft_boundary_mask",
    "slice_family",
    "soft_jaccard",
    "stack_slices",
    "sweep_labels",
    "sweep_logits",
    "top2",
    "triple_junction_count",
    "triple_junctions",
]
