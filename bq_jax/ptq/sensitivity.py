"""Per-layer sensitivity of the decision boundary to weight quantization, and a greedy
mixed-precision bit allocation that keeps the calibration boundary close to the float one.

What a per-layer quantization analysis (AIMET's QuantAnalyzer: "quantize one layer at a time")
does for accuracy, done here for decision geometry:

* :func:`layer_sensitivity`: for every weight layer (a kernel leaf of the params pytree, found
  by the path rules of :func:`~bq_jax.ptq.quantize_weights`) and every given ``QuantConfig``,
  two PTQ-W variants -- **only** that layer quantized (``scope="only"``) and **all but** that
  layer quantized (``scope="all_but"``) -- plus the reference with every layer quantized
  (``scope="all"``). All variants are stacked and measured together (:func:`measure_variants`):
  weight SQNR, accuracy, held-out flip rate, band flip rate, pair-order flip, local shift and
  normal variation (held-out points, one :func:`bq_jax.geometry.compare` call) and the slice
  metrics (boundary Jaccard distance, grid change, triple junctions) on every plane of a slice
  family (one :func:`bq_jax.geometry.family_metrics` call).
* :func:`allocate_bits`: a greedy mixed-precision allocation that, for an average bit budget
  (weighted by parameter count, :func:`average_bits`), picks per-layer widths from a candidate
  set minimising the CALIBRATION boundary Jaccard distance (:func:`greedy_allocation` is the
  search, on any score; :func:`exhaustive_allocation` the brute-force reference for a few
  layers).

Every number is an estimate of :mod:`bq_jax.stats` with the keys of :mod:`bq_jax.vocabulary`
(``x``, ``x_se``, ``x_low``, ``x_high``, ``x_n``): a rate over examples (accuracy, flip rate,
band flip rate, pair-order flip) carries the Wilson score interval
(:func:`bq_jax.stats.wilson_interval`, the example is the unit); a slice metric is the mean over
the planes of a slice family with its standard error and percentile bootstrap interval
(:func:`bq_jax.stats.mean_estimate`, the plane is the unit) and keeps its per-plane values
``x_values``.

References:
    Dong et al., "HAWQ-V2: Hessian Aware trace-Weighted Quantization of Neural Networks",
    NeurIPS 2020 (per-layer sensitivity weighted by parameter count, bit allocation under an
    average-bit budget). Qualcomm AIMET, "Automatic Mixed Precision" and "QuantAnalyzer"
    (per-layer sensitivity with one layer quantized at a time; greedy lowering of the layers
    whose narrowing costs least).
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import numpy as np

from bq_jax import geometry, quant
from bq_jax._src.checks import check_float, check_int
from bq_jax.ptq.paths import flatten_params, unflatten_params
from bq_jax.ptq.weights import DEFAULT_TARGETS, quantize_weights, resolve_rules, stack_params
from bq_jax.stats import DEFAULT_LEVEL, DEFAULT_RESAMPLES, mean_estimate, wilson_interval
from bq_jax.vocabulary import DEFAULT_BAND_QUANTILE, VALUES_SUFFIX

__all__ = [
    "SCOPES",
    "SLICE_METRICS",
    "PROPORTION_METRICS",
    "Allocation",
    "allocate_bits",
    "average_bits",
    "calibration_jaccard_score",
    "exhaustive_allocation",
    "greedy_allocation",
    "layer_sensitivity",
    "measure_variants",
    "quantize_layers",
    "resolve_layers",
    "weight_layers",
    "weight_sqnr_db",
]

#: Variants of :func:`layer_sensitivity`: only this layer quantized, every layer but this one,
#: every layer (the reference row; its ``layer`` is None).
SCOPES = ("only", "all_but", "all")
#: Slice metrics (:func:`bq_jax.geometry.family_metrics`), each reported as the mean over the
#: planes of a slice family with a bootstrap interval over the planes.
SLICE_METRICS = geometry.FAMILY_METRICS
#: Rates over examples (metric -> the compare() key of its denominator): Wilson intervals.
PROPORTION_METRICS = {
    "accuracy": "heldout_size",
    "flip_rate": "heldout_size",
    "band_flip_rate": "band_size",
    "pair_order_flip": "band_size",
}
# compare() keys of the held-out point metrics and the band (they do not look at the slice).
_POINT_KEYS = (
    "flip_rate",
    "band_flip_rate",
    "pair_order_flip",
    "median_local_shift",
    "normal_variation",
    "normal_variation_mean",
    "margin_radius_median",
    "float_margin_radius_median",
    "zero_gradient_count",
    "float_zero_gradient_count",
    "band_size",
    "band_tau",
    "heldout_size",
)


# ----------------------------------------------------------------------------- layers


def weight_layers(
    params: Mapping[str, Any],
    *,
    targets: str | None = DEFAULT_TARGETS,
    layouts: Mapping[str, int] | None = None,
) -> dict:
    """The weight layers of ``params``: ``{path: parameter count}`` in flattening order.

    A layer is a floating-point leaf whose path matches ``targets`` (default: every ``kernel``
    of the ``params`` collection, the leaves :func:`~bq_jax.ptq.quantize_weights` quantizes).

    Example:
        >>> import flax.linen as nn
        >>> model = nn.Sequential([nn.Dense(8), nn.relu, nn.Dense(3)])
        >>> variables = model.init(jax.random.key(0), np.zeros((1, 4), np.float32))
        >>> weight_layers(variables)
        {'params/layers_0/kernel': 32, 'params/layers_2/kernel': 24}
    """
    plan = resolve_rules(params, quant.QuantConfig(bits=8), targets=targets, layouts=layouts)
    flat = flatten_params(params)
    return {p: int(np.size(flat[p])) for p in plan}


def resolve_layers(
    params: Mapping[str, Any],
    layers=None,
    *,
    targets: str | None = DEFAULT_TARGETS,
    layouts: Mapping[str, int] | None = None,
) -> list[str]:
    """Leaf paths of ``layers`` (None: every weight layer, :func:`weight_layers` order).

    A layer is named by its leaf path (``"params/Dense_0/kernel"``) or by its module path
    (``"Dense_0"``, i.e. the path without the leading ``params/`` and trailing ``/kernel``).

    Raises:
        ValueError: an unknown or repeated name (the message lists the known layers), or an
            empty selection. TypeError: ``layers`` is not a sequence of strings.

    Example:
        >>> import flax.linen as nn
        >>> model = nn.Sequential([nn.Dense(8), nn.relu, nn.Dense(3)])
        >>> variables = model.init(jax.random.key(0), np.zeros((1, 4), np.float32))
        >>> resolve_layers(variables, ["layers_2"])
        ['params/layers_2/kernel']
    """
    known = list(weight_layers(params, targets=targets, layouts=layouts))
    if layers is None:
        return known
    if isinstance(layers, str | bytes) or not isinstance(layers, Sequence):
        raise TypeError(f"layers must be a sequence of layer names or None, got {layers!r}")
    if len(layers) == 0:
        raise ValueError("layers is empty; give at least one layer name (or None for all)")
    short = {_module_name(p): p for p in known}
    out = []
    for name in layers:
        if not isinstance(name, str):
            raise TypeError(f"a layer name must be a str, got {type(name).__name__} {name!r}")
        path = name if name in known else short.get(name)
        if path is None:
            raise ValueError(
                f"unknown layer {name!r}; the weight layers (targets={targets!r}) are "
                f"{', '.join(known)} (or by module name: {', '.join(short)})"
            )
        if path in out:
            raise ValueError(f"layer {name!r} ({path}) is given twice")
        out.append(path)
    return out


def _module_name(path: str) -> str:
    parts = path.split("/")
    if parts[0] == "params":
        parts = parts[1:]
    if len(parts) > 1:
        parts = parts[:-1]
    return "/".join(parts)


def quantize_layers(
    params: Mapping[str, Any],
    assignment: Mapping[str, quant.QuantConfig | None],
    *,
    targets: str | None = DEFAULT_TARGETS,
    layouts: Mapping[str, int] | None = None,
):
    """PTQ-W of the layers in ``assignment`` (path -> QuantConfig; None or absent: float).

    The same quantizer as :func:`~bq_jax.ptq.quantize_weights` with one exact-path rule per
    layer (``^path$``), so a layer's weights depend only on its own config.

    Example:
        >>> import flax.linen as nn
        >>> model = nn.Sequential([nn.Dense(8), nn.relu, nn.Dense(3)])
        >>> variables = model.init(jax.random.key(0), np.zeros((1, 4), np.float32))
        >>> q = quantize_layers(variables, {"params/layers_2/kernel": quant.QuantConfig(bits=2)})
        >>> len(np.unique(q["params"]["layers_2"]["kernel"])) <= 4, bool(np.array_equal(
        ...     q["params"]["layers_0"]["kernel"], variables["params"]["layers_0"]["kernel"]))
        (True, True)
    """
    known = weight_layers(params, targets=targets, layouts=layouts)
    rules = []
    for path, cfg in assignment.items():
        if path not in known:
            raise ValueError(f"unknown layer {path!r}; the weight layers are {', '.join(known)}")
        if cfg is not None:
            rules.append(("^" + re.escape(path) + "$", cfg))
    if not rules:
        return jax.tree.map(lambda x: x, params)
    return quantize_weights(params, rules, targets=targets, layouts=layouts)


def weight_sqnr_db(params, params_q, layers: Sequence[str]) -> float | None:
    """Pooled SQNR (dB) of the weights of ``layers``:
    ``10 log10(sum ||w_l||^2 / sum ||w_l - q(w_l)||^2)`` over the layers (for one layer this is
    :func:`bq_jax.quant.sqnr_db`). None when there is no layer or no error (infinite SQNR).

    Example:
        >>> p = {"params": {"d": {"kernel": np.array([1.0, -1.0], np.float32)}}}
        >>> q = {"params": {"d": {"kernel": np.array([1.1, -0.9], np.float32)}}}
        >>> round(weight_sqnr_db(p, q, ["params/d/kernel"]), 3)
        20.0
    """
    fa, fb = flatten_params(params), flatten_params(params_q)
    sig = err = 0.0
    for p in layers:
        w = np.asarray(fa[p], np.float64)
        sig += float(np.sum(w**2))
        err += float(np.sum((w - np.asarray(fb[p], np.float64)) ** 2))
    if not layers or err == 0.0 or sig == 0.0:
        return None
    return 10.0 * math.log10(sig / err)


# ----------------------------------------------------------------------------- sensitivity


def _as_configs(configs) -> tuple[quant.QuantConfig, ...]:
    if isinstance(configs, quant.QuantConfig):
        return (configs,)
    if isinstance(configs, str | bytes) or not isinstance(configs, Sequence) or not configs:
        raise TypeError(
            f"configs must be a QuantConfig or a non-empty sequence of them, got {configs!r}"
        )
    for c in configs:
        if not isinstance(c, quant.QuantConfig):
            raise TypeError(f"configs must hold QuantConfigs, got {type(c).__name__} {c!r}")
    if len(set(configs)) != len(configs):
        raise ValueError(f"configs must be distinct, got {configs}")
    return tuple(configs)


def _as_slice_list(slices) -> list:
    if isinstance(slices, geometry.Slice):
        return [slices[i] for i in range(slices.num_slices)] if slices.stacked else [slices]
    if (
        isinstance(slices, Sequence)
        and slices
        and all(isinstance(s, geometry.Slice) and not s.stacked for s in slices)
    ):
        return list(slices)
    raise TypeError(
        "slices must be a Slice, a stacked Slice or a non-empty sequence of single Slices, "
        f"got {type(slices).__name__}"
    )


def _as_family(slices):
    """``slices`` as one Slice (stacked, or single) for :func:`bq_jax.geometry.family_metrics`."""
    if isinstance(slices, geometry.Slice):
        return slices
    return geometry.stack_slices(_as_slice_list(slices))


def _with_leaves(flat_float: dict, leaves: Mapping[str, Any]):
    flat = dict(flat_float)
    flat.update(leaves)
    return unflatten_params(flat)


def measure_variants(
    apply_fn: Callable,
    params: Mapping[str, Any],
    variants: Sequence[Mapping[str, Any]],
    *,
    slices,
    heldout_x,
    heldout_y,
    calibration_x,
    key: jax.Array,
    band_quantile: float = DEFAULT_BAND_QUANTILE,
    n_resamples: int = DEFAULT_RESAMPLES,
    level: float = DEFAULT_LEVEL,
    chunk_size: int | None = None,
) -> list[dict]:
    """Every metric of V quantized variants against the float model, each with its interval.

    The variants are stacked and measured together: the slice metrics by ONE
    :func:`bq_jax.geometry.family_metrics` call over all planes of ``slices`` (e.g. a
    :func:`bq_jax.geometry.slice_family`), the point metrics by one
    :func:`bq_jax.geometry.compare` call (held-out flip rate, band flip rate, pair-order flip,
    local shift, normal variation, radii, band; they do not depend on the plane, so it is
    given the first plane), accuracy from the held-out logits
    (:func:`bq_jax.geometry.evaluate_logits`).

    Each row holds the point metrics of compare() and:

    * every slice metric ``x`` of :data:`SLICE_METRICS` (tolerance 0) as an estimate over the
      K planes, the plane being the unit: :func:`bq_jax.stats.mean_estimate` (mean, standard
      error, percentile bootstrap interval) with keys ``x``, ``x_se``, ``x_low``, ``x_high``,
      ``x_n`` (= K) and the per-plane values ``x_values`` (plane order). Its bootstrap key is
      ``fold_in(fold_in(key, v), m)`` for variant ``v`` and metric index ``m``;
    * every rate of :data:`PROPORTION_METRICS` (accuracy and the flip rates) as
      :func:`bq_jax.stats.wilson_interval` of its count over its examples (the example is
      the unit; ``x_n`` the examples; an empty band gives ``None``).

    Args:
        apply_fn: ``apply_fn(params, x) -> logits`` (the same object across calls).
        params: the float model's variables dict.
        variants: V variables dicts of the structure of ``params``.
        slices: planes: a stacked Slice (a slice family), a Slice, or a sequence of Slices of
            one resolution.
        heldout_x, heldout_y: inputs and integer labels the point metrics are measured on.
        calibration_x: inputs of the band threshold (calibration split).
        key: PRNG key of the bootstrap intervals.
        band_quantile, chunk_size: as in :func:`~bq_jax.geometry.compare`.
        n_resamples, level: bootstrap resamples and confidence level of every interval.

    Returns:
        One row per variant (Python numbers and lists; NaN becomes None).

    Example:
        >>> def apply_fn(params, x):  # a linear 3-class classifier
        ...     return x @ params["w"]
        >>> rng = np.random.default_rng(0)
        >>> w = rng.normal(size=(2, 3)).astype(np.float32)
        >>> x = rng.normal(size=(300, 2)).astype(np.float32)
        >>> y = np.argmax(x @ w, axis=-1)
        >>> planes = geometry.slice_family(jax.random.key(0), x, kind="random", count=4,
        ...                                resolution=16)
        >>> (row,) = measure_variants(apply_fn, {"w": w}, [{"w": np.round(w * 2) / 2}],
        ...                           slices=planes, heldout_x=x[:200], heldout_y=y[:200],
        ...                           calibration_x=x[200:], key=jax.random.key(1))
        >>> row["flip_rate"], row["accuracy"], row["accuracy_n"]  # 36 and 164 of 200
        (0.18, 0.82, 200)
        >>> row["boundary_jaccard_distance_n"], len(row["boundary_jaccard_distance_values"])
        (4, 4)
    """
    family = _as_family(slices)
    if len(variants) == 0:
        raise ValueError("variants is empty; give at least one variables dict")
    heldout_y = np.asarray(heldout_y)
    if heldout_y.ndim != 1 or heldout_y.shape[0] != np.shape(heldout_x)[0]:
        raise ValueError(
            f"heldout_y must be labels [N] for heldout_x [N, ...], got {heldout_y.shape} for "
            f"{np.shape(heldout_x)}"
        )
    if not np.issubdtype(heldout_y.dtype, np.integer):
        raise TypeError(f"heldout_y must hold integer labels, got dtype {heldout_y.dtype}")
    stack = stack_params(list(variants))
    points = geometry.compare(
        apply_fn,
        params,
        stack,
        family[0] if family.stacked else family,
        heldout_x,
        calibration_x,
        band_quantile=band_quantile,
        chunk_size=chunk_size,
    )
    planes = geometry.family_metrics(apply_fn, params, stack, family, chunk_size=chunk_size)
    logits = np.asarray(geometry.evaluate_logits(apply_fn, stack, heldout_x, chunk_size=chunk_size))
    correct = np.sum(np.argmax(logits, axis=-1) == heldout_y, axis=-1)
    n_held = int(heldout_y.shape[0])
    rows = []
    for i in range(len(variants)):
        row: dict[str, Any] = {k: _scalar(points[k][i]) for k in _POINT_KEYS}
        row["accuracy"] = float(correct[i]) / n_held
        for k, n_key in PROPORTION_METRICS.items():
            n = int(row[n_key])
            count = 0 if n == 0 else round(row[k] * n)  # the count behind compare()'s ratio
            row.update(wilson_interval(count, n, level=level).to_dict(k))
            row[k] = count / n if n else None  # exact (the estimator computes in float32)
        for m, k in enumerate(SLICE_METRICS):
            values = np.asarray(planes[k][:, i], np.float32)
            est = mean_estimate(
                jax.random.fold_in(jax.random.fold_in(key, i), m),
                values,
                n_resamples=n_resamples,
                level=level,
            )
            row.update(est.to_dict(k))
            row[k + VALUES_SUFFIX] = [float(v) for v in values]
        rows.append(row)
    return rows


def layer_sensitivity(
    apply_fn: Callable,
    params: Mapping[str, Any],
    *,
    configs,
    slices,
    heldout_x,
    heldout_y,
    calibration_x,
    key: jax.Array,
    layers=None,
    scopes: Sequence[str] = SCOPES,
    targets: str | None = DEFAULT_TARGETS,
    layouts: Mapping[str, int] | None = None,
    band_quantile: float = DEFAULT_BAND_QUANTILE,
    n_resamples: int = DEFAULT_RESAMPLES,
    level: float = DEFAULT_LEVEL,
    chunk_size: int | None = None,
) -> list[dict]:
    """Decision-geometry sensitivity of each weight layer: only it quantized, all but it.

    For every config ``c`` of ``configs`` and every layer ``l`` of ``layers`` the variants are
    ``only``: ``l`` at ``c``, every other weight float; ``all_but``: every weight layer
    (``targets``) at ``c`` except ``l``; and once per config ``all``: every weight layer at
    ``c``. All variants (every config and scope) are measured together by
    :func:`measure_variants` (one compare() and one family_metrics() call).

    Each row: ``layer`` (leaf path; None for ``all``), ``scope``, ``bits`` (``c.bits``),
    ``num_weights`` (of ``layer``; of all weight layers for ``all``), ``sqnr_db`` (pooled SQNR of
    the weights the variant quantizes, :func:`weight_sqnr_db`), then the keys of
    :func:`measure_variants` (accuracy, point metrics and slice metrics with intervals).

    Args:
        apply_fn: ``apply_fn(params, x) -> logits`` (the same object across calls).
        params: the float model's variables dict.
        configs: a :class:`~bq_jax.quant.QuantConfig` or a sequence of distinct ones.
        slices: planes: a slice family (stacked Slice, :func:`bq_jax.geometry.slice_family`),
            a Slice, or a sequence of Slices.
        heldout_x, heldout_y: inputs and integer labels the point metrics are measured on.
        calibration_x: inputs of the band threshold (calibration split).
        key: PRNG key of the bootstrap intervals (:func:`measure_variants`).
        layers: layer names (:func:`resolve_layers`); None: every weight layer.
        scopes: which of :data:`SCOPES` to measure.
        targets: regex of the weight leaves (as in :func:`~bq_jax.ptq.quantize_weights`).
        layouts: ``{kernel_path: output_axis}`` of the model's kernels (``Adapted.layouts`` of
            :func:`bq_jax.models.adapt`), so per-channel configs scale per OUTPUT channel
            whatever the framework (equinox kernels are ``(out, in)``); None: linen layout.
        band_quantile, chunk_size: as in :func:`~bq_jax.geometry.compare`.
        n_resamples, level: bootstrap resamples and confidence level of every interval.

    Returns:
        Rows, config-major, then scope (:data:`SCOPES` order), then layer.

    Raises:
        ValueError: unknown layer or scope, mismatched labels, and compare()'s errors.

    Example:
        >>> import flax.linen as nn
        >>> model = nn.Sequential([nn.Dense(16), nn.relu, nn.Dense(3)])
        >>> x = np.asarray(jax.random.normal(jax.random.key(0), (300, 4)))
        >>> variables = model.init(jax.random.key(1), x)
        >>> y = np.asarray(model.apply(variables, x).argmax(-1))
        >>> fam = geometry.slice_family(jax.random.key(2), x[:200], kind="triplet", count=3,
        ...                             resolution=16)
        >>> rows = layer_sensitivity(model.apply, variables, configs=quant.QuantConfig(bits=2),
        ...                          slices=fam, heldout_x=x[:200], heldout_y=y[:200],
        ...                          calibration_x=x[200:], key=jax.random.key(3))
        >>> [(r["layer"], r["scope"]) for r in rows]  # doctest: +NORMALIZE_WHITESPACE
        [('params/layers_0/kernel', 'only'), ('params/layers_2/kernel', 'only'),
         ('params/layers_0/kernel', 'all_but'), ('params/layers_2/kernel', 'all_but'),
         (None, 'all')]
    """
    configs = _as_configs(configs)
    chosen = resolve_layers(params, layers, targets=targets, layouts=layouts)
    sizes = weight_layers(params, targets=targets, layouts=layouts)
    every = list(sizes)
    scopes = tuple(scopes)
    if not scopes:
        raise ValueError(f"scopes is empty; give some of {SCOPES}")
    for s in scopes:
        if s not in SCOPES:
            raise ValueError(f"scope must be one of {SCOPES}, got {s!r}")
    flat = flatten_params(params)
    variants, heads = [], []
    for cfg in configs:
        q_all = flatten_params(
            quantize_layers(params, dict.fromkeys(every, cfg), targets=targets, layouts=layouts)
        )
        for scope in (s for s in SCOPES if s in scopes):
            for layer in chosen if scope != "all" else [None]:
                if scope == "only":
                    quantized = [layer]
                elif scope == "all_but":
                    quantized = [p for p in every if p != layer]
                else:
                    quantized = every
                variant = _with_leaves(flat, {p: q_all[p] for p in quantized})
                variants.append(variant)
                heads.append(
                    {
                        "layer": layer,
                        "scope": scope,
                        "bits": cfg.bits,
                        "num_weights": sizes[layer] if layer is not None else sum(sizes.values()),
                        "sqnr_db": weight_sqnr_db(params, variant, quantized),
                    }
                )
    rows = measure_variants(
        apply_fn,
        params,
        variants,
        slices=slices,
        heldout_x=heldout_x,
        heldout_y=heldout_y,
        calibration_x=calibration_x,
        band_quantile=band_quantile,
        key=key,
        n_resamples=n_resamples,
        level=level,
        chunk_size=chunk_size,
    )
    return [{**head, **row} for head, row in zip(heads, rows, strict=True)]


def _scalar(x):
    x = np.asarray(x)
    if np.issubdtype(x.dtype, np.integer):
        return int(x)
    x = float(x)
    return x if math.isfinite(x) else None


# ----------------------------------------------------------------------------- allocation


def average_bits(bits: Mapping[str, int], num_weights: Mapping[str, int]) -> float:
    """Parameter-weighted average width ``sum_l n_l b_l / sum_l n_l`` over the quantized layers
    (the memory of the weights in bits per weight; biases and float leaves are not counted).

    Example:
        >>> average_bits({"a": 8, "b": 4}, {"a": 10, "b": 30})
        5.0
    """
    if set(bits) != set(num_weights) or not bits:
        raise ValueError(
            f"bits and num_weights must name the same non-empty set of layers, got "
            f"{sorted(bits)} and {sorted(num_weights)}"
        )
    total = sum(num_weights.values())
    return sum(num_weights[p] * bits[p] for p in bits) / total


def _check_allocation(num_weights, widths, budget) -> tuple[list[int], list[int], float]:
    """Checked allocation arguments: distinct widths (widest first), layer sizes, budget."""
    ws = sorted({check_int("widths[i]", w, 1) for w in widths}, reverse=True)
    if len(ws) != len(widths):
        raise ValueError(f"widths must be distinct, got {widths}")
    sizes = [check_int("num_weights[i]", n, 1) for n in num_weights]
    if not sizes:
        raise ValueError("num_weights is empty; give at least one layer")
    budget = check_float("budget", budget, low=float(ws[-1]), high=float(ws[0]))
    return ws, sizes, budget


def greedy_allocation(
    score_fn: Callable[[list[tuple[int, ...]]], Sequence[float]],
    num_weights: Sequence[int],
    widths: Sequence[int],
    budget: float,
    *,
    refine: bool = True,
) -> tuple[tuple[int, ...], list[dict]]:
    """Greedy per-layer widths under a weight-count-weighted average-bit budget.

    With ``n_l`` the weights of layer ``l`` and ``b_l`` its width, the budget is
    ``sum_l n_l b_l <= budget * sum_l n_l``. Lower scores are better.

    1. **narrow**: every layer starts at the widest width; while over budget, each layer that
       can narrow gives a candidate that lowers it by one step of ``widths``; all candidates are
       scored together (``score_fn``) and the one with the smallest score increase per bit
       saved, ``(s' - s) / (n_l (b_l - b_l'))``, is taken (ties: the larger saving, then the
       earlier layer).
    2. **refine** (``refine=True``): the narrowing can overshoot the budget, and its one-step
       path can miss a better neighbour, so moves within the budget are tried: widen one layer
       by one step, alone or paired with narrowing another layer by the fewest steps that keep
       the budget. All moves are scored together; the lowest-scoring one is taken if it lowers
       the score (ties: move order), until none does. Each accepted move lowers the score, so
       this ends.

    Starting wide and narrowing is the greedy of AIMET's automatic mixed precision and of
    HAWQ-style allocation: every candidate is a whole mixed-precision network scored with the
    other layers at their current widths, so interactions between layers enter the choice (no
    additive per-layer sensitivities are assumed), and the descent stops as soon as the budget
    is met. The cost per bit saved ranks a large layer that barely moves the score before a
    small one that moves it a lot (HAWQ-V2 weighs sensitivity by parameter count the same way).
    Deterministic: no randomness, explicit tie order. Scores are requested in batches (one
    batch per step), so ``score_fn`` can evaluate the candidates of a step together.

    Args:
        score_fn: maps a list of assignments (tuples of widths, one per layer) to their scores.
        num_weights: weight count ``n_l`` of each layer (> 0).
        widths: candidate widths (distinct ints >= 1).
        budget: average bits per weight, in ``[min(widths), max(widths)]``.
        refine: run step 2.

    Returns:
        The widths per layer and the steps taken (``{"phase", "layer", "from_bits",
        "to_bits", "score", "average_bits"}``, ``layer`` the index; a paired refine move is two
        steps, the widening first).

    Example:
        >>> def score(assignments):  # layer 0 matters 10x more per weight than layer 1
        ...     return [10 * 2.0 ** -a[0] + 2.0 ** -a[1] for a in assignments]
        >>> greedy_allocation(score, [100, 100], [2, 4, 8], budget=5.0)[0]
        (8, 2)
    """
    ws, sizes, budget = _check_allocation(num_weights, widths, budget)
    total = sum(sizes)
    limit = budget * total * (1 + 1e-12)
    top = len(ws) - 1

    def bitsum(idx):
        return sum(n * ws[i] for n, i in zip(sizes, idx, strict=True))

    def widths_of(idx):
        return tuple(ws[i] for i in idx)

    def moved(idx, layer, new):
        return idx[:layer] + [new] + idx[layer + 1 :]

    idx = [0] * len(sizes)
    (current,) = score_fn([widths_of(idx)])
    steps: list[dict] = []

    def record(phase, layer, old, new, score, state):
        steps.append(
            {
                "phase": phase,
                "layer": layer,
                "from_bits": ws[old],
                "to_bits": ws[new],
                "score": float(score),
                "average_bits": bitsum(state) / total,
            }
        )

    while bitsum(idx) > limit:
        cands = [l for l in range(len(sizes)) if idx[l] < top]
        new = [moved(idx, l, idx[l] + 1) for l in cands]
        scores = score_fn([widths_of(n) for n in new])
        saved = [sizes[l] * (ws[idx[l]] - ws[idx[l] + 1]) for l in cands]
        cost = [(float(s) - float(current)) / b for s, b in zip(scores, saved, strict=True)]
        j = min(range(len(cands)), key=lambda i: (cost[i], -saved[i], cands[i]))
        old, idx, current = idx[cands[j]], new[j], scores[j]
        record("narrow", cands[j], old, idx[cands[j]], current, idx)
    while refine:
        moves = []  # (widened layer, narrowed layer or None, new state)
        for i in range(len(sizes)):
            if idx[i] == 0:
                continue
            up = moved(idx, i, idx[i] - 1)
            if bitsum(up) <= limit:
                moves.append((i, None, up))
                continue
            for j in range(len(sizes)):
                if j == i:
                    continue
                for k in range(idx[j] + 1, top + 1):
                    down = moved(up, j, k)
                    if bitsum(down) <= limit:
                        moves.append((i, j, down))
                        break
        if not moves:
            break
        scores = score_fn([widths_of(m[2]) for m in moves])
        best = min(range(len(moves)), key=lambda m: (float(scores[m]), m))
        if not float(scores[best]) < float(current):
            break
        i, j, state = moves[best]
        record("widen", i, idx[i], state[i], scores[best], state)
        if j is not None:
            record("narrow", j, idx[j], state[j], scores[best], state)
        idx, current = state, scores[best]
    return widths_of(idx), steps


def exhaustive_allocation(
    score_fn: Callable[[list[tuple[int, ...]]], Sequence[float]],
    num_weights: Sequence[int],
    widths: Sequence[int],
    budget: float,
    *,
    max_assignments: int = 4096,
) -> tuple[tuple[int, ...], float]:
    """The best assignment within the budget by exhaustive search (the reference for
    :func:`greedy_allocation` on small networks).

    Every assignment of ``widths`` to the layers with ``sum_l n_l b_l <= budget * sum_l n_l``
    is scored in one ``score_fn`` call; the lowest score wins (ties: the first in
    ``itertools.product`` order of the widths sorted widest first). There are
    ``len(widths) ** len(num_weights)`` assignments, so this is for a few layers only.

    Args:
        score_fn, num_weights, widths, budget: as in :func:`greedy_allocation`.
        max_assignments: refuse (ValueError) when ``len(widths) ** layers`` exceeds it.

    Returns:
        The best widths per layer and their score.

    Example:
        >>> def score(assignments):
        ...     return [10 * 2.0 ** -a[0] + 2.0 ** -a[1] for a in assignments]
        >>> exhaustive_allocation(score, [100, 100], [2, 4, 8], budget=5.0)
        ((8, 2), 0.2890625)
    """
    ws, sizes, budget = _check_allocation(num_weights, widths, budget)
    if len(ws) ** len(sizes) > max_assignments:
        raise ValueError(
            f"exhaustive search over {len(ws)} widths and {len(sizes)} layers means "
            f"{len(ws) ** len(sizes)} assignments, more than max_assignments={max_assignments}; "
            "use greedy_allocation"
        )
    limit = budget * sum(sizes) * (1 + 1e-12)
    feasible = [
        a
        for a in itertools.product(ws, repeat=len(sizes))
        if sum(n * b for n, b in zip(sizes, a, strict=True)) <= limit
    ]
    scores = [float(x) for x in score_fn(feasible)]
    best = min(range(len(feasible)), key=lambda i: (scores[i], i))
    return feasible[best], scores[best]


def calibration_jaccard_score(
    apply_fn: Callable,
    params: Mapping[str, Any],
    configs: Mapping[int, quant.QuantConfig],
    slices,
    layers: Sequence[str],
    *,
    targets: str | None = DEFAULT_TARGETS,
    layouts: Mapping[str, int] | None = None,
    chunk_size: int | None = None,
) -> Callable[[list[tuple[int, ...]]], list[float]]:
    """The score of :func:`allocate_bits`: assignments (widths of ``layers``, in order) ->
    boundary Jaccard distance (tolerance 0) to the float model, mean over the planes of
    ``slices`` (pass a slice family of the calibration inputs: the score chooses). Weights of
    ``layers`` use ``configs[width]``; other weight leaves stay float. Every batch of
    assignments is one :func:`bq_jax.geometry.family_metrics` call over all planes (the engine
    :func:`measure_variants` judges with); scores are memoised.

    Example:
        >>> import flax.linen as nn
        >>> model = nn.Sequential([nn.Dense(16), nn.relu, nn.Dense(3)])
        >>> x = np.asarray(jax.random.normal(jax.random.key(0), (100, 4)))
        >>> variables = model.init(jax.random.key(1), x)
        >>> layers = resolve_layers(variables)
        >>> score = calibration_jaccard_score(
        ...     model.apply, variables, {b: quant.QuantConfig(bits=b) for b in (2, 16)},
        ...     geometry.pca_slice(x, resolution=32), layers)
        >>> s16, s2 = score([(16, 16), (2, 2)])
        >>> s16 < 0.05 < s2
        True
    """
    planes = _as_family(slices)
    flat = flatten_params(params)
    leaves = {
        (p, b): flatten_params(quantize_layers(params, {p: cfg}, targets=targets, layouts=layouts))[
            p
        ]
        for p in layers
        for b, cfg in configs.items()
    }
    memo: dict[tuple[int, ...], float] = {}

    def score(assignments: list[tuple[int, ...]]) -> list[float]:
        todo = [a for a in dict.fromkeys(tuple(a) for a in assignments) if a not in memo]
        for a in todo:
            if len(a) != len(layers) or any(b not in configs for b in a):
                raise ValueError(
                    f"an assignment must give one width of {sorted(configs)} per layer "
                    f"({len(layers)}), got {a}"
                )
        if todo:
            # pad the batch to a power of two (repeating its last assignment) so that the
            # sweep compiles for a few batch sizes only
            padded = todo + [todo[-1]] * ((1 << (len(todo) - 1).bit_length()) - len(todo))
            stack = stack_params(
                [
                    _with_leaves(flat, {p: leaves[(p, b)] for p, b in zip(layers, a, strict=True)})
                    for a in padded
                ]
            )
            dist = geometry.family_metrics(apply_fn, params, stack, planes, chunk_size=chunk_size)[
                "boundary_jaccard_distance"
            ]  # [K, V]
            for a, d in zip(todo, dist.mean(axis=0)[: len(todo)], strict=True):
                memo[a] = float(d)
        return [memo[tuple(a)] for a in assignments]

    return score


@dataclasses.dataclass(frozen=True)
class Allocation:
    """A mixed-precision allocation chosen by :func:`allocate_bits`."""

    # Width per layer path.
    bits: dict[str, int]
    # Parameter count per layer path.
    num_weights: dict[str, int]
    # The average-bit budget it was chosen for, and its parameter-weighted average width.
    budget: float
    average_bits: float
    # Calibration boundary Jaccard distance (mean over the calibration planes) of the choice.
    calibration_score: float
    # The greedy steps (see greedy_allocation), with the layer as its path.
    steps: tuple[dict, ...]

    def configs(self, configs: Mapping[int, quant.QuantConfig]) -> dict[str, quant.QuantConfig]:
        """``{path: configs[width]}``, ready for :func:`quantize_layers`."""
        return {p: configs[b] for p, b in self.bits.items()}


def allocate_bits(
    apply_fn: Callable,
    params: Mapping[str, Any],
    *,
    configs: Mapping[int, quant.QuantConfig],
    calibration_slices,
    budget: float,
    layers=None,
    targets: str | None = DEFAULT_TARGETS,
    layouts: Mapping[str, int] | None = None,
    chunk_size: int | None = None,
    score_fn: Callable | None = None,
) -> Allocation:
    """Per-layer widths for an average-bit budget, chosen on calibration planes.

    :func:`greedy_allocation` (start every layer at the widest width of ``configs``, repeatedly
    narrow the layer whose narrowing raises the calibration boundary Jaccard distance least per
    bit saved until ``average_bits <= budget``, then refill the slack while that lowers the
    distance) on :func:`calibration_jaccard_score`. The budget is the parameter-weighted
    average width of the chosen layers, :func:`average_bits` (weights only: biases stay float
    and are not counted). Layers outside ``layers`` stay float and are not counted.

    Args:
        apply_fn: ``apply_fn(params, x) -> logits``.
        params: float variables dict.
        configs: candidate widths -> their QuantConfig (e.g. per-channel symmetric min-max at
            each width); ``config.bits`` must equal its key.
        calibration_slices: planes of the CALIBRATION inputs (a Slice, a stacked Slice or a
            sequence). Never pass held-out planes: the score chooses.
        budget: average bits per weight, between the narrowest and widest candidate width.
        layers: layer names (:func:`resolve_layers`); None: every weight layer.
        targets, layouts, chunk_size: as in :func:`layer_sensitivity`.
        score_fn: a score from :func:`calibration_jaccard_score` to reuse (its memo spares
            recomputing the assignments several budgets share); built here when None.

    Returns:
        An :class:`Allocation`.

    Example:
        >>> import flax.linen as nn
        >>> model = nn.Sequential([nn.Dense(16), nn.relu, nn.Dense(3)])
        >>> x = np.asarray(jax.random.normal(jax.random.key(0), (100, 4)))
        >>> variables = model.init(jax.random.key(1), x)
        >>> configs = {b: quant.QuantConfig(bits=b) for b in (2, 8)}
        >>> alloc = allocate_bits(model.apply, variables, configs=configs,
        ...                       calibration_slices=geometry.pca_slice(x, resolution=16),
        ...                       budget=4.0)
        >>> alloc.average_bits <= 4.0, sorted(alloc.bits)
        (True, ['params/layers_0/kernel', 'params/layers_2/kernel'])
    """
    if not isinstance(configs, Mapping) or not configs:
        raise TypeError(
            f"configs must be a non-empty mapping width -> QuantConfig, got {configs!r}"
        )
    for b, cfg in configs.items():
        if not isinstance(cfg, quant.QuantConfig) or cfg.bits != b:
            raise ValueError(
                f"configs must map each width to a QuantConfig of that width, got {b}: {cfg!r}"
            )
    chosen = resolve_layers(params, layers, targets=targets, layouts=layouts)
    sizes = weight_layers(params, targets=targets, layouts=layouts)
    if score_fn is None:
        score_fn = calibration_jaccard_score(
            apply_fn,
            params,
            configs,
            calibration_slices,
            chosen,
            targets=targets,
            layouts=layouts,
            chunk_size=chunk_size,
        )
    widths, steps = greedy_allocation(score_fn, [sizes[p] for p in chosen], list(configs), budget)
    bits = dict(zip(chosen, widths, strict=True))
    num = {p: sizes[p] for p in chosen}
    (final,) = score_fn([widths])
    return Allocation(
        bits=bits,
        num_weights=num,
        budget=float(budget),
        average_bits=average_bits(bits, num),
        calibration_score=float(final),
        steps=tuple({**s, "layer": chosen[s["layer"]]} for s in steps),
    )
