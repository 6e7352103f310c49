"""One call that measures how each parameter variant moved the float model's decision geometry."""

from __future__ import annotations

import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from bq_jax.geometry import metrics as M
from bq_jax.geometry import regions
from bq_jax.geometry.adaptive import adaptive_labels
from bq_jax.geometry.engine import (
    check_chunk,
    num_variants,
    run_eval,
    run_sweep,
    variant_local_jit,
)
from bq_jax.geometry.local import GRAD_TOL, margin_radius
from bq_jax.geometry.slices import Slice
from bq_jax.vocabulary import DEFAULT_BAND_QUANTILE

__all__ = [
    "COMPARE_KEYS",
    "SEGMENT_KEYS",
    "SLICE_LABELS",
    "compare",
    "compare_models",
    "compare_records",
]

#: Accepted values of :func:`compare`'s ``slice_labels``.
SLICE_LABELS = ("dense", "adaptive", "adaptive-certified")

#: Keys of :func:`compare`'s result (each a numpy array with one entry per variant).
COMPARE_KEYS = (
    "flip_rate",
    "boundary_jaccard_distance",
    "grid_change",
    "triple_junction_count",
    "float_triple_junction_count",
    "region_count",
    "float_region_count",
    "excess_fragments",
    "float_excess_fragments",
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
    "resolution",
    "tolerance",
)

#: Keys :func:`compare` adds when given ``segment_pairs`` (class skips along segments).
SEGMENT_KEYS = (
    "label_changes",
    "float_label_changes",
    "class_skips",
    "float_class_skips",
    "label_change_delta",
    "label_changes_differ",
    "segment_pairs",
    "segment_points",
)


def _stack1(params):
    return jax.tree.map(lambda l: jnp.expand_dims(jnp.asarray(l), 0), params)


def _float_name(v: int) -> str:
    return "the float model (params_float)"


def _both_names(v: int) -> str:
    return _float_name(v) if v == 0 else f"variant {v - 1}"


def _same_dtypes(params_float, params_variants) -> bool:
    return all(
        jnp.result_type(f) == jnp.result_type(q)
        for f, q in zip(
            jax.tree.leaves(params_float), jax.tree.leaves(params_variants), strict=True
        )
    )


def _check_pair(params_float, params_variants) -> int:
    v = num_variants(params_variants)
    sf = jax.tree.structure(params_float)
    sv = jax.tree.structure(params_variants)
    if sf != sv:
        raise ValueError(
            "params_variants must have the tree structure of params_float (with a leading "
            f"variant axis on every leaf); got {sv} vs {sf}"
        )
    for lf, lv in zip(jax.tree.leaves(params_float), jax.tree.leaves(params_variants), strict=True):
        if np.shape(lv)[1:] != np.shape(lf):
            raise ValueError(
                f"a params_variants leaf has shape {np.shape(lv)}, expected (V, *{np.shape(lf)}) "
                "to match params_float"
            )
    return v


def compare(
    apply_fn: Callable,
    params_float,
    params_variants,
    slc: Slice,
    heldout_x,
    calibration_x,
    *,
    band_quantile: float = DEFAULT_BAND_QUANTILE,
    tolerance: int = 0,
    chunk_size: int | None = None,
    variant_batching: str = "auto",
    grad_tol: float = GRAD_TOL,
    return_maps: bool = False,
    mesh=None,
    slice_labels: str = "dense",
    variant_apply_fn: Callable | None = None,
    segment_pairs=None,
    segment_points: int = regions.DEFAULT_SEGMENT_POINTS,
) -> dict[str, np.ndarray]:
    """All decision-geometry metrics of V parameter variants against the float model.

    The variants run through ``apply_fn`` like the float model (same parameter tree), or,
    with ``variant_apply_fn``, through their own model (another implementation, e.g. a
    qwix-quantized one, with its own parameter tree; :func:`compare_models` is the form for
    a list of such models).

    Slice metrics use the label maps of both models on ``slc``; point metrics use the
    held-out inputs; the boundary band is the held-out points with ``|m_F| <= tau``, ``tau``
    the ``band_quantile`` quantile of the float margins on ``calibration_x``
    (:func:`~bq_jax.geometry.boundary_band`). Local radii and normals are full-space
    (gradients in the whole input space) at the band points; points where either model's
    margin gradient is zero are left out of ``median_local_shift`` and ``normal_variation``
    and counted in ``zero_gradient_count`` / ``float_zero_gradient_count``.

    Result keys (numpy arrays of shape [V], i.e. one entry per variant; per-model constants
    such as ``float_triple_junction_count`` are repeated; the meaning of every key is in
    ``bq_jax.vocabulary.METRICS``):

    * ``flip_rate``: held-out flip rate vs the float model.
    * ``boundary_jaccard_distance``: boundary Jaccard distance ``1 - J`` on the slice (at
      ``tolerance``).
    * ``grid_change``: fraction of grid points whose label changed.
    * ``triple_junction_count`` / ``float_triple_junction_count``: triple-junction cell counts
      of the variant's / the float model's map (int).
    * ``region_count`` / ``float_region_count``: 8-connected regions of the variant's / the
      float model's map, all classes (int; :func:`~bq_jax.geometry.fragmentation`, K the
      number of logits).
    * ``excess_fragments`` / ``float_excess_fragments``: regions beyond one per class present
      on the variant's / the float model's map (int).
    * ``band_flip_rate``: flip rate on the band.
    * ``pair_order_flip``: band fraction where ``sign(z_a - z_b)`` changed.
    * ``median_local_shift``: ``median |r_Q - r_F|`` over the band.
    * ``normal_variation``: MEDIAN of ``1 - <n_F, n_Q>`` over the band;
      ``normal_variation_mean`` its mean.
    * ``margin_radius_median`` / ``float_margin_radius_median``: median radius over the band.
    * ``zero_gradient_count`` / ``float_zero_gradient_count``: band points with a zero margin
      gradient (int).
    * ``band_size`` (int), ``band_tau``, ``heldout_size`` (int), ``resolution`` (int),
      ``tolerance`` (int): the settings behind the numbers.
    * with ``return_maps``: ``labels`` int32[V, R, R] and ``labels_float`` int32[R, R].
    * with ``segment_pairs`` (:data:`SEGMENT_KEYS`; :func:`~bq_jax.geometry.class_skips` of the
      labels at ``segment_points`` points of each segment ``[x0[p], x1[p]]``, means over the P
      pairs): ``label_changes`` / ``float_label_changes`` (mean label changes along a segment,
      variant / float), ``class_skips`` / ``float_class_skips`` (mean changes beyond a direct
      path's), ``label_change_delta`` (mean of the variant's minus the float model's label
      changes, per pair), ``label_changes_differ`` (fraction of pairs whose label-change count
      differs from the float model's), ``segment_pairs`` (P) and ``segment_points`` (S).

    Args:
        apply_fn: ``apply_fn(params, x) -> logits`` (pass the same object each call: the
            jitted evaluations are cached on it).
        params_float: the float model's parameters.
        params_variants: pytree of the same structure, every leaf with a leading axis V (with
            ``variant_apply_fn``: any pytree ``variant_apply_fn`` takes, leading axis V).
        slc: a single :class:`~bq_jax.geometry.Slice` (e.g. :func:`pca_slice`).
        heldout_x: held-out inputs ``[N, *input_shape]``.
        calibration_x: calibration inputs (band threshold only).
        band_quantile: q of the band threshold, in (0, 1]
            (default ``bq_jax.vocabulary.DEFAULT_BAND_QUANTILE``).
        tolerance: boundary Jaccard tolerance in cells.
        chunk_size, variant_batching: as in :func:`~bq_jax.geometry.sweep_labels`.
        grad_tol: gradient norms at or below this are zero.
        return_maps: also return the label maps.
        mesh: devices the slice sweep and the point evaluations are sharded over, as in
            :func:`~bq_jax.geometry.sweep_labels` (None: all local devices when more than one;
            results identical to one device). The local geometry at the band points runs on
            one device.
        slice_labels: how the label maps are computed: ``"dense"`` (every grid point, the
            default), ``"adaptive"`` or ``"adaptive-certified"``
            (:func:`~bq_jax.geometry.adaptive_labels` with ``certified`` False / True; equal to
            the dense maps on the tested models, not guaranteed in general -- see
            :mod:`bq_jax.geometry.adaptive`; ``mesh`` does not apply to them).
        variant_apply_fn: ``variant_apply_fn(params, x) -> logits`` of the variants when they
            are another model than ``apply_fn`` (None: ``apply_fn``). Its logits must have the
            float model's K classes, and the local metrics need it differentiable in ``x``
            (``jax.grad``; band points where its margin gradient is zero are counted in
            ``zero_gradient_count``, never divided by).
        segment_pairs: None, or ``(x0, x1)``, two input batches ``[P, *input_shape]``: the ends
            of P segments along which the class skips are measured (evaluated separately from
            the held-out inputs, so the other keys do not depend on them).
        segment_points: S >= 2 points per segment, both ends included.

    Returns:
        dict of numpy arrays (see above); :func:`compare_records` turns it into JSON rows.

    Raises:
        ValueError: mismatched parameter trees, NaN/inf logits (naming the variants), a
            stacked slice, or an empty boundary band.

    Example:
        >>> import numpy as np
        >>> from bq_jax.geometry import pca_slice
        >>> def apply_fn(params, x):  # a linear 3-class classifier
        ...     return x @ params["w"]
        >>> rng = np.random.default_rng(0)
        >>> w = rng.normal(size=(2, 3)).astype(np.float32)
        >>> variants = {"w": np.stack([w, np.round(w * 2) / 2])}  # itself; w on a 0.5 grid
        >>> x = rng.normal(size=(300, 2)).astype(np.float32)
        >>> res = compare(apply_fn, {"w": w}, variants, pca_slice(x, resolution=32),
        ...               x[:200], x[200:])
        >>> [round(float(d), 3) for d in res["boundary_jaccard_distance"]]
        [0.0, 0.946]
        >>> [round(float(f), 2) for f in res["flip_rate"]]
        [0.0, 0.18]
        >>> res["triple_junction_count"].tolist(), res["band_size"].tolist()
        ([1, 1], [19, 19])
        >>> res["region_count"].tolist(), res["excess_fragments"].tolist()
        ([3, 3], [0, 0])
        >>> res = compare(apply_fn, {"w": w}, variants, pca_slice(x, resolution=32),
        ...               x[:200], x[200:], segment_pairs=(x[:50], x[50:100]))
        >>> for key in ("label_changes", "class_skips", "label_changes_differ"):
        ...     print(key, [round(float(d), 2) for d in res[key]])
        label_changes [0.64, 0.78]
        class_skips [0.14, 0.16]
        label_changes_differ [0.0, 0.3]
    """
    if not isinstance(slc, Slice) or slc.stacked:
        raise TypeError("compare needs a single Slice (not a stack or list of slices)")
    if variant_apply_fn is None:
        v = _check_pair(params_float, params_variants)
        apply_q = apply_fn
    else:
        if not callable(variant_apply_fn):
            raise TypeError(
                f"variant_apply_fn must be callable (params, x) -> logits, got {variant_apply_fn!r}"
            )
        v = num_variants(params_variants)
        apply_q = variant_apply_fn
    heldout_x = jnp.asarray(heldout_x, jnp.float32)
    calibration_x = jnp.asarray(calibration_x, jnp.float32)
    for name, arr in (("heldout_x", heldout_x), ("calibration_x", calibration_x)):
        if arr.ndim < 2 or arr.shape[0] < 1 or arr.shape[1:] != slc.input_shape:
            raise ValueError(
                f"{name} must be a non-empty batch [N, *{slc.input_shape}] like the slice's "
                f"inputs, got {arr.shape}"
            )
        if not isinstance(arr, jax.core.Tracer) and not np.all(np.isfinite(np.asarray(arr))):
            raise ValueError(
                f"{name} (an input batch) contains NaN or inf; the inputs, not the parameters, "
                "are not finite"
            )
    if slice_labels not in SLICE_LABELS:
        raise ValueError(f"slice_labels must be one of {SLICE_LABELS}, got {slice_labels!r}")
    if segment_pairs is not None:
        if not isinstance(segment_pairs, (tuple, list)) or len(segment_pairs) != 2:
            raise TypeError(
                "segment_pairs must be None or a pair (x0, x1) of input batches [P, *input_shape]"
            )
        seg = regions.segment_points(*segment_pairs, num_points=segment_points)
        if seg.shape[2:] != slc.input_shape:
            raise ValueError(
                f"segment_pairs must hold inputs [P, *{slc.input_shape}] like the slice's inputs, "
                f"got [P, *{seg.shape[2:]}]"
            )
        n_pairs = seg.shape[0]
        seg = seg.reshape((-1,) + seg.shape[2:])

    def sweep(fn, stack, names):
        if slice_labels == "dense":
            return run_sweep(fn, stack, slc, chunk_size, variant_batching, True, True, names, mesh)
        certified = slice_labels == "adaptive-certified"
        return adaptive_labels(fn, stack, slc, certified=certified, chunk_size=chunk_size).labels

    n_h = heldout_x.shape[0]
    points = jnp.concatenate([heldout_x, calibration_x])
    stack_f = _stack1(params_float)
    if variant_apply_fn is None and _same_dtypes(params_float, params_variants):
        # one stack [float, variants...]: one compiled sweep and one evaluation for all models
        both = jax.tree.map(lambda f, q: jnp.concatenate([f, q]), stack_f, params_variants)
        names = _both_names
        labels = sweep(apply_fn, both, names)
        labels_f, labels_q = labels[0], labels[1:]
        z = run_eval(apply_fn, both, points, chunk_size, variant_batching, True, names, mesh)
        zf, zq, zc = z[0, :n_h], z[1:, :n_h], z[0, n_h:]
        if segment_pairs is not None:
            zs = run_eval(apply_fn, both, seg, chunk_size, variant_batching, True, names, mesh)
            seg_f, seg_q = zs[0], zs[1:]
    else:
        labels_f = sweep(apply_fn, stack_f, _float_name)[0]
        labels_q = sweep(apply_q, params_variants, None)
        z = run_eval(
            apply_fn, stack_f, points, chunk_size, variant_batching, True, _float_name, mesh
        )[0]
        zf, zc = z[:n_h], z[n_h:]
        zq = run_eval(
            apply_q, params_variants, heldout_x, chunk_size, variant_batching, True, None, mesh
        )
        if zq.shape[-1] != zf.shape[-1]:
            raise ValueError(
                f"the variants' logits have {zq.shape[-1]} classes, the float model's "
                f"{zf.shape[-1]}: variant_apply_fn must classify into the same classes"
            )
        if segment_pairs is not None:
            seg_f = run_eval(
                apply_fn, stack_f, seg, chunk_size, variant_batching, True, _float_name, mesh
            )[0]
            seg_q = run_eval(
                apply_q, params_variants, seg, chunk_size, variant_batching, True, None, mesh
            )
    mask_f, mask_q = M.boundary_mask(labels_f), M.boundary_mask(labels_q)
    num_classes = zf.shape[-1]
    # one map per call: the labelling compiles once per resolution, whatever the number of
    # variants (the studies call compare with different V)
    frags = [
        regions.fragmentation(m, num_classes=num_classes)
        for m in [labels_f, *jnp.asarray(labels_q)]
    ]
    frag_f = frags[0]
    frag_q = jax.tree.map(lambda *a: jnp.stack(a), *frags[1:])

    a, _ = M.top2(zf)
    mf = M.margin(zf, a)
    mc = M.margin(zc, jnp.argmax(zc, axis=-1))
    tau = M.band_threshold(mc, quantile=band_quantile)
    band = np.asarray(jnp.abs(mf) <= tau)
    if not band.any():
        raise ValueError(
            f"the boundary band is empty: no held-out point has |m_F| <= tau = {float(tau):.4g} "
            f"(calibration quantile {band_quantile}); use a larger band_quantile"
        )

    # local geometry at the band points
    xb = heldout_x[band]
    ab = a[band]
    chunk = check_chunk(chunk_size, math.prod(slc.input_shape))
    rf = margin_radius(
        apply_fn, params_float, xb, float_top=ab, grad_tol=grad_tol, chunk_size=chunk
    )
    r_q, _, _, zero_q, cos = variant_local_jit(
        params_variants, xb, ab, rf.normal, jnp.float32(grad_tol), apply_fn=apply_q, chunk=chunk
    )
    valid = ~zero_q & jnp.expand_dims(~rf.zero_gradient, 0)
    delta = r_q - jnp.expand_dims(rf.radius, 0)

    def rep(x, dtype):
        return np.full((v,), np.asarray(x), dtype)

    out = {
        "flip_rate": M.flip_rate(zf, zq),
        "boundary_jaccard_distance": M.boundary_jaccard_distance(
            mask_f, mask_q, tolerance=tolerance
        ),
        "grid_change": M.grid_change(labels_f, labels_q),
        "triple_junction_count": M.triple_junction_count(labels_q),
        "float_triple_junction_count": rep(M.triple_junction_count(labels_f), np.int64),
        "region_count": frag_q.region_count,
        "float_region_count": rep(frag_f.region_count, np.int64),
        "excess_fragments": frag_q.excess_fragments,
        "float_excess_fragments": rep(frag_f.excess_fragments, np.int64),
        "band_flip_rate": M.band_flip_rate(zf, zq, band),
        "pair_order_flip": M.pair_order_flip(zf, zq, band),
        "median_local_shift": M.masked_median(jnp.abs(delta), valid),
        "normal_variation": M.masked_median(1.0 - cos, valid),
        "normal_variation_mean": M.masked_mean(1.0 - cos, valid),
        "margin_radius_median": M.masked_median(r_q, ~zero_q),
        "float_margin_radius_median": rep(
            M.masked_median(rf.radius, ~rf.zero_gradient), np.float32
        ),
        "zero_gradient_count": jnp.sum(zero_q, axis=-1),
        "float_zero_gradient_count": rep(rf.zero_gradient_count, np.int64),
        "band_size": rep(int(band.sum()), np.int64),
        "band_tau": rep(tau, np.float32),
        "heldout_size": rep(heldout_x.shape[0], np.int64),
        "resolution": rep(slc.resolution, np.int64),
        "tolerance": rep(tolerance, np.int64),
    }
    ints = {"triple_junction_count", "zero_gradient_count", "region_count", "excess_fragments"}
    if segment_pairs is not None:
        skips_f = regions.class_skips(jnp.argmax(seg_f, axis=-1).reshape(n_pairs, segment_points))
        skips_q = regions.class_skips(
            jnp.argmax(seg_q, axis=-1).reshape(v, n_pairs, segment_points)
        )
        changes_f, changes_q = skips_f.label_changes, skips_q.label_changes
        out.update(
            {
                "label_changes": jnp.mean(changes_q, axis=-1, dtype=jnp.float32),
                "float_label_changes": rep(jnp.mean(changes_f, dtype=jnp.float32), np.float32),
                "class_skips": jnp.mean(skips_q.class_skips, axis=-1, dtype=jnp.float32),
                "float_class_skips": rep(
                    jnp.mean(skips_f.class_skips, dtype=jnp.float32), np.float32
                ),
                "label_change_delta": jnp.mean(
                    changes_q - jnp.expand_dims(changes_f, 0), axis=-1, dtype=jnp.float32
                ),
                "label_changes_differ": jnp.mean(
                    changes_q != jnp.expand_dims(changes_f, 0), axis=-1, dtype=jnp.float32
                ),
                "segment_pairs": rep(n_pairs, np.int64),
                "segment_points": rep(segment_points, np.int64),
            }
        )
    out = {k: np.asarray(x, np.int64 if k in ints else None).reshape(v) for k, x in out.items()}
    if return_maps:
        out["labels"] = np.asarray(labels_q)
        out["labels_float"] = np.asarray(labels_f)
    return out


def _stack_group(params_list):
    return jax.tree.map(lambda *leaves: jnp.stack([jnp.asarray(l) for l in leaves]), *params_list)


def compare_models(
    float_model: tuple[Callable, object],
    variant_models,
    slc: Slice,
    heldout_x,
    calibration_x,
    **kwargs,
) -> dict[str, np.ndarray]:
    """:func:`compare` of V models that may each be a different implementation.

    ``float_model = (apply_fn, params)`` and ``variant_models = [(apply_fn_v, params_v),
    ...]`` (unstacked params): each variant may have its own ``apply_fn`` and parameter tree
    (e.g. a float flax model against qwix-quantized versions from
    :func:`bq_jax.models.qwix_interop.from_qwix`). Consecutive variants with the same
    ``apply_fn`` object and tree structure are stacked and evaluated together; each such group
    is one :func:`compare` call with ``variant_apply_fn`` (the float model's maps and margins
    are recomputed per group), and the results are concatenated in the order given. Every
    :data:`COMPARE_KEYS` metric is computed by the same code as :func:`compare`.

    Args:
        float_model: ``(apply_fn, params)`` of the float model.
        variant_models: sequence of ``(apply_fn, params)``.
        slc, heldout_x, calibration_x: as in :func:`compare`.
        **kwargs: keyword arguments of :func:`compare` (``band_quantile``, ``tolerance``,
            ``chunk_size``, ``return_maps``, ...; not ``variant_apply_fn``).

    Returns:
        :func:`compare`'s dict, one entry per variant model (``labels_float`` once).

    Example:
        >>> import numpy as np
        >>> from bq_jax.geometry import pca_slice
        >>> rng = np.random.default_rng(0)
        >>> w = rng.normal(size=(2, 3)).astype(np.float32)
        >>> x = rng.normal(size=(300, 2)).astype(np.float32)
        >>> def linear(p, x):
        ...     return x @ p["w"]
        >>> def scaled(p, x):  # another implementation: a scale times a weight matrix
        ...     return p["s"] * (x @ p["m"])
        >>> res = compare_models((linear, {"w": w}),
        ...                      [(scaled, {"s": np.float32(2.0), "m": w / 2}),
        ...                       (linear, {"w": np.round(w * 2) / 2})],
        ...                      pca_slice(x, resolution=32), x[:200], x[200:])
        >>> [round(float(f), 2) for f in res["flip_rate"]]
        [0.0, 0.18]
    """
    if "variant_apply_fn" in kwargs:
        raise TypeError("compare_models takes each variant's apply_fn in variant_models")
    if not (isinstance(float_model, tuple | list) and len(float_model) == 2):
        raise TypeError("float_model must be a pair (apply_fn, params)")
    models = list(variant_models)
    if not models:
        raise ValueError("variant_models is empty; give at least one (apply_fn, params) pair")
    for i, m in enumerate(models):
        if not (isinstance(m, tuple | list) and len(m) == 2 and callable(m[0])):
            raise TypeError(f"variant_models[{i}] must be a pair (apply_fn, params), got {m!r}")
    groups: list[tuple[Callable, list]] = []
    for fn, params in models:
        last = groups[-1] if groups else None
        if (
            last is not None
            and last[0] is fn
            and jax.tree.structure(last[1][0]) == jax.tree.structure(params)
        ):
            last[1].append(params)
        else:
            groups.append((fn, [params]))
    apply_fn, params_float = float_model
    results = [
        compare(
            apply_fn,
            params_float,
            _stack_group(plist),
            slc,
            heldout_x,
            calibration_x,
            variant_apply_fn=fn,
            **kwargs,
        )
        for fn, plist in groups
    ]
    out = {}
    for k in results[0]:
        if k == "labels_float":
            out[k] = results[0][k]
        else:
            out[k] = np.concatenate([r[k] for r in results])
    return out


def compare_records(result: dict[str, np.ndarray]) -> list[dict[str, float | int]]:
    """Per-variant rows of Python ``int``/``float`` (JSON-ready) from a :func:`compare` result.

    Label maps (``labels``, ``labels_float``) are left out; NaN becomes ``None``.

    Example:
        >>> result = {"flip_rate": np.array([0.0, 0.5], np.float32),
        ...           "median_local_shift": np.array([np.nan, 0.25], np.float32),
        ...           "triple_junction_count": np.array([1, 2])}
        >>> for row in compare_records(result):
        ...     print(row)
        {'flip_rate': 0.0, 'median_local_shift': None, 'triple_junction_count': 1}
        {'flip_rate': 0.5, 'median_local_shift': 0.25, 'triple_junction_count': 2}
    """
    keys = [k for k in result if k not in ("labels", "labels_float")]
    v = len(np.asarray(result[keys[0]]))
    rows = []
    for i in range(v):
        row = {}
        for k in keys:
            x = np.asarray(result[k])[i]
            if np.issubdtype(x.dtype, np.integer):
                row[k] = int(x)
            else:
                row[k] = None if not np.isfinite(x) else float(x)
        rows.append(row)
    return rows
