"""Decision-geometry metrics on label maps and on held-out points (pure, jit-able).

Definitions follow the boundary-aware quantization paper ("Boundary-Aware Quantization:
Finite-Scale Decision Geometry of Neural Classifiers"); each docstring states its formula.
Grid functions take label maps ``int[..., R, R]`` (leading axes are batch axes, e.g. variants)
in the :class:`bq_jax.geometry.Slice` grid convention: ``labels[..., i, j]``, column ``j``
along the slice's first axis, row ``i`` along its second.

Arguments of two-map functions may differ in leading axes only by missing leading axes
(``float_map[R, R]`` against ``variant_maps[V, R, R]``); they are aligned explicitly. Every
public function is ``jax.jit``-compiled (integer options such as ``tolerance`` static), so an
eager call compiles once per shape and composes with ``vmap``/``jit``.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax

from bq_jax._src.checks import check_int
from bq_jax.geometry.checks import align, check_logits
from bq_jax.vocabulary import DEFAULT_BAND_QUANTILE

__all__ = [
    "boundary_mask",
    "boundary_jaccard_distance",
    "boundary_jaccard",
    "grid_change",
    "triple_junctions",
    "triple_junction_count",
    "flip_rate",
    "margin",
    "top2",
    "pair_gap",
    "band_threshold",
    "boundary_band",
    "band_flip_rate",
    "pair_order_flip",
    "masked_median",
    "masked_mean",
]


def _check_grid(labels, name: str) -> jax.Array:
    """An integer label map ``[..., R, R]`` (float values are logits or a mistake: refused)."""
    labels = jnp.asarray(labels)
    if labels.ndim < 2:
        raise ValueError(f"{name} must be a grid [..., R, R], got shape {labels.shape}")
    if not (jnp.issubdtype(labels.dtype, jnp.integer) or labels.dtype == jnp.bool_):
        raise TypeError(
            f"{name} must be an integer label map [..., R, R] (e.g. sweep_labels, or the argmax "
            f"of logits [..., R, R, K] over the class axis), got dtype {labels.dtype} with shape "
            f"{labels.shape}"
        )
    return labels


def _check_mask(mask, name: str) -> jax.Array:
    """A bool boundary mask ``[..., R, R]`` (an integer label map is refused, not cast)."""
    mask = jnp.asarray(mask)
    if mask.ndim < 2:
        raise ValueError(f"{name} must be a bool boundary mask [..., R, R], got shape {mask.shape}")
    if mask.dtype != jnp.bool_:
        raise TypeError(
            f"{name} must be a bool boundary mask [..., R, R] (from boundary_mask), got dtype "
            f"{mask.dtype}; for two label maps use boundary_jaccard(boundary_mask(a), "
            "boundary_mask(b))"
        )
    return mask


# -- grid metrics ------------------------------------------------------------------------------


@jax.jit
def boundary_mask(labels) -> jax.Array:
    """bool[..., R, R]: grid points whose label differs from the right or lower neighbour.

    ``B[i, j] = (L[i, j] != L[i, j+1]) or (L[i, j] != L[i+1, j])``; a missing neighbour (last
    column / last row) counts as equal. Paper: slice boundary mask.

    Example:
        >>> boundary_mask(jnp.array([[0, 1], [0, 1]])).astype(int).tolist()
        [[1, 0], [1, 0]]
    """
    labels = _check_grid(labels, "labels")
    right = labels[..., :, :-1] != labels[..., :, 1:]
    lower = labels[..., :-1, :] != labels[..., 1:, :]
    nd = labels.ndim
    right = jnp.pad(right, [(0, 0)] * (nd - 1) + [(0, 1)])
    lower = jnp.pad(lower, [(0, 0)] * (nd - 2) + [(0, 1), (0, 0)])
    return right | lower


def _dilate(mask: jax.Array, d: int) -> jax.Array:
    """Chebyshev dilation: True where some True point is within ``d`` rows and ``d`` columns."""
    if d == 0:
        return mask
    nd = mask.ndim
    out = lax.reduce_window(
        mask.astype(jnp.int32),
        0,
        lax.max,
        window_dimensions=(1,) * (nd - 2) + (2 * d + 1, 2 * d + 1),
        window_strides=(1,) * nd,
        padding=[(0, 0)] * (nd - 2) + [(d, d), (d, d)],
    )
    return out > 0


@functools.partial(jax.jit, static_argnames="tolerance")
def boundary_jaccard_distance(mask_a, mask_b, *, tolerance: int = 0) -> jax.Array:
    """Boundary Jaccard distance ``1 - J = 1 - |A and B| / |A or B|`` of two boundary masks.

    A distance, not the Jaccard index ``J``: 0 for identical boundaries, 1 for disjoint ones.
    Both masks empty -> 0; exactly one empty -> 1. Always report the grid resolution with it.
    ``boundary_jaccard`` (DESIGN's name) is this same function.

    With ``tolerance = d > 0`` a boundary point counts as matched when the other mask has a
    point within Chebyshev distance ``d`` (``max(|di|, |dj|) <= d`` cells, i.e. the other mask
    dilated by a ``(2d+1) x (2d+1)`` square). Applied symmetrically::

        I_d = (|A and dil_d(B)| + |B and dil_d(A)|) / 2
        J_d = 1 - I_d / (|A| + |B| - I_d)

    For ``d = 0`` this is exactly the plain distance (``I_0 = |A and B|``,
    ``|A| + |B| - I_0 = |A or B|``); ``J_d`` is symmetric, non-increasing in ``d``, and 0 for a
    boundary moved by at most ``d`` cells. Paper: slice-boundary Jaccard distance.

    Args:
        mask_a, mask_b: bool[..., R, R] (e.g. from :func:`boundary_mask`); leading axes align
            (a float mask [R, R] against variant masks [V, R, R]).
        tolerance: d >= 0 cells (static).

    Returns:
        float32[...] distance in [0, 1].

    Example:
        >>> a = jnp.zeros((4, 4), bool).at[1, :].set(True)
        >>> float(boundary_jaccard_distance(a, jnp.roll(a, 1, axis=0)))
        1.0
        >>> float(boundary_jaccard_distance(a, jnp.roll(a, 1, axis=0), tolerance=1))
        0.0
    """
    check_int("tolerance", tolerance, 0)
    a, b = align(
        _check_mask(mask_a, "mask_a"),
        _check_mask(mask_b, "mask_b"),
        "mask_a",
        "mask_b",
        2,
    )
    axes = (-2, -1)
    na = jnp.sum(a, axis=axes, dtype=jnp.float32)
    nb = jnp.sum(b, axis=axes, dtype=jnp.float32)
    if tolerance == 0:
        inter = jnp.sum(a & b, axis=axes, dtype=jnp.float32)
    else:
        inter = 0.5 * (
            jnp.sum(a & _dilate(b, tolerance), axis=axes, dtype=jnp.float32)
            + jnp.sum(b & _dilate(a, tolerance), axis=axes, dtype=jnp.float32)
        )
    union = na + nb - inter
    safe = jnp.where(union > 0, union, 1.0)
    return jnp.where(union > 0, 1.0 - inter / safe, 0.0)


#: DESIGN's public name of :func:`boundary_jaccard_distance` (the same function object): the
#: boundary Jaccard *distance* ``1 - J``.
boundary_jaccard = boundary_jaccard_distance


@jax.jit
def grid_change(labels_a, labels_b) -> jax.Array:
    """float32[...]: fraction of grid points whose label differs, ``mean_{i,j} [L_a != L_b]``.

    Paper: grid prediction change.

    Example:
        >>> float(grid_change(jnp.zeros((2, 2), int), jnp.eye(2, dtype=int)))
        0.5
    """
    a, b = align(
        _check_grid(labels_a, "labels_a"),
        _check_grid(labels_b, "labels_b"),
        "labels_a",
        "labels_b",
        2,
    )
    return jnp.mean(a != b, axis=(-2, -1), dtype=jnp.float32)


@jax.jit
def triple_junctions(labels) -> jax.Array:
    """bool[..., R-1, R-1]: 2x2 blocks of grid points carrying at least 3 distinct labels.

    Block ``[i, j]`` holds points ``[i, j], [i, j+1], [i+1, j], [i+1, j+1]``. Paper: multiclass
    junctions (triple-junction cells).

    Example:
        >>> triple_junctions(jnp.array([[0, 1], [2, 2]])).tolist()
        [[True]]
    """
    labels = _check_grid(labels, "labels")
    p = labels[..., :-1, :-1]
    q = labels[..., :-1, 1:]
    r = labels[..., 1:, :-1]
    s = labels[..., 1:, 1:]
    distinct = (
        1
        + (q != p).astype(jnp.int32)
        + ((r != p) & (r != q)).astype(jnp.int32)
        + ((s != p) & (s != q) & (s != r)).astype(jnp.int32)
    )
    return distinct >= 3


@jax.jit
def triple_junction_count(labels) -> jax.Array:
    """int32[...]: number of triple-junction cells, the sum of :func:`triple_junctions` over the
    last two axes.

    Example:
        >>> int(triple_junction_count(jnp.array([[0, 1, 1], [2, 2, 1], [2, 0, 0]])))
        2
    """
    return jnp.sum(triple_junctions(labels), axis=(-2, -1), dtype=jnp.int32)


# -- point metrics -----------------------------------------------------------------------------


def _as_labels(x, name: str) -> jax.Array:
    x = jnp.asarray(x)
    if jnp.issubdtype(x.dtype, jnp.floating):
        if x.ndim < 2:
            raise ValueError(f"{name} logits must be [..., N, K], got shape {x.shape}")
        return jnp.argmax(x, axis=-1)
    if not jnp.issubdtype(x.dtype, jnp.integer):
        raise TypeError(f"{name} must be float logits [..., N, K] or int labels [..., N]")
    if x.ndim < 1:
        raise ValueError(f"{name} labels must be [..., N], got a scalar")
    return x.astype(jnp.int32)


@jax.jit
def flip_rate(a, b) -> jax.Array:
    """float32[...]: fraction of inputs whose predicted label differs, ``mean_n [y_a != y_b]``.

    ``a``/``b`` are float logits ``[..., N, K]`` (labels = argmax) or int labels ``[..., N]``.
    Paper: flip rate (held-out inputs).

    Example:
        >>> float(flip_rate(jnp.array([0, 1, 2, 3]), jnp.array([0, 1, 2, 0])))
        0.25
    """
    la, lb = align(_as_labels(a, "a"), _as_labels(b, "b"), "a", "b", 1)
    return jnp.mean(la != lb, axis=-1, dtype=jnp.float32)


def _take(z: jax.Array, idx: jax.Array) -> jax.Array:
    return jnp.take_along_axis(z, jnp.expand_dims(idx, -1), axis=-1)[..., 0]


def _broadcast_index(idx, logits: jax.Array, name: str) -> jax.Array:
    idx = jnp.asarray(idx)
    if not jnp.issubdtype(idx.dtype, jnp.integer):
        raise TypeError(f"{name} must be int class indices, got dtype {idx.dtype}")
    lead = logits.shape[:-1]
    if idx.ndim > len(lead) or lead[len(lead) - idx.ndim :] != idx.shape:
        raise ValueError(
            f"{name} shape {idx.shape} must match the trailing axes of logits[..., K] {lead}"
        )
    idx = idx.astype(jnp.int32)
    return jnp.broadcast_to(idx.reshape((1,) * (len(lead) - idx.ndim) + idx.shape), lead)


@jax.jit
def margin(logits, float_top) -> jax.Array:
    """float[...]: ``m(x) = z_a(x) - max_{k != a} z_k(x)`` with ``a`` the float model's top class.

    Positive where the model agrees with the float top class, negative where it flipped (the
    float model's own margin is >= 0). Paper: margin.

    Args:
        logits: float[..., N, K] (leading axes e.g. variants).
        float_top: int[N] (or any trailing part of ``logits.shape[:-1]``): float model's argmax.

    Example:
        >>> float(margin(jnp.array([1.0, 3.0, 2.0]), jnp.array(2)))
        -1.0
    """
    z = check_logits(logits)
    a = _broadcast_index(float_top, z, "float_top")
    k = z.shape[-1]
    is_a = jnp.arange(k).reshape((1,) * a.ndim + (k,)) == jnp.expand_dims(a, -1)
    other = jnp.max(jnp.where(is_a, -jnp.inf, z), axis=-1)
    return _take(z, a) - other


@jax.jit
def top2(logits_float) -> tuple[jax.Array, jax.Array]:
    """``(a, b)`` int32[...]: the float model's top class and runner-up (ties: lower index)."""
    z = check_logits(logits_float, "logits_float")
    _, idx = lax.top_k(z, 2)
    return idx[..., 0].astype(jnp.int32), idx[..., 1].astype(jnp.int32)


@jax.jit
def pair_gap(logits, a, b) -> jax.Array:
    """float[...]: ``g(x) = z_a(x) - z_b(x)`` for given classes ``a``, ``b`` (e.g. :func:`top2`)."""
    z = check_logits(logits)
    return _take(z, _broadcast_index(a, z, "a")) - _take(z, _broadcast_index(b, z, "b"))


@functools.partial(jax.jit, static_argnames="quantile")
def band_threshold(
    margins_float_calibration, *, quantile: float = DEFAULT_BAND_QUANTILE
) -> jax.Array:
    """``tau = quantile_q |m_F(calibration)|`` (linear interpolation, ``jnp.quantile``)."""
    if not 0.0 < float(quantile) <= 1.0:
        raise ValueError(f"quantile must be in (0, 1], got {quantile}")
    m = jnp.asarray(margins_float_calibration)
    if m.ndim != 1 or m.shape[0] < 1:
        raise ValueError(f"calibration margins must be a non-empty vector [N], got {m.shape}")
    return jnp.quantile(jnp.abs(m), quantile)


@functools.partial(jax.jit, static_argnames="quantile")
def boundary_band(
    margins_float_heldout, margins_float_calibration, *, quantile: float = DEFAULT_BAND_QUANTILE
) -> jax.Array:
    """bool[N]: held-out points in the boundary band, ``|m_F(x)| <= tau``.

    ``tau = quantile_q(|m_F|)`` over the calibration inputs (:func:`band_threshold`, default
    q = ``bq_jax.vocabulary.DEFAULT_BAND_QUANTILE``), ``m_F`` the float model's :func:`margin`.
    Paper: low-margin boundary band.

    Example:
        >>> boundary_band(jnp.array([0.1, 2.0]), jnp.array([0.2, 1.0, 3.0]), quantile=0.5).tolist()
        [True, False]
    """
    tau = band_threshold(margins_float_calibration, quantile=quantile)
    return jnp.abs(jnp.asarray(margins_float_heldout)) <= tau


@jax.jit
def masked_mean(values, mask) -> jax.Array:
    """float32[...]: mean of ``values[..., N]`` over ``mask[N]``; NaN where the mask is empty."""
    v, m = align(jnp.asarray(values, jnp.float32), jnp.asarray(mask, bool), "values", "mask", 1)
    n = jnp.sum(m, axis=-1, dtype=jnp.float32)
    s = jnp.sum(jnp.where(m, v, 0.0), axis=-1)
    return jnp.where(n > 0, s / jnp.maximum(n, 1.0), jnp.nan)


@jax.jit
def masked_median(values, mask) -> jax.Array:
    """float32[...]: median of ``values[..., N]`` over ``mask[..., N]`` (mean of the two middle
    values for an even count, as ``np.median``); NaN where the mask is empty."""
    v, m = align(jnp.asarray(values, jnp.float32), jnp.asarray(mask, bool), "values", "mask", 1)
    n = jnp.sum(m, axis=-1, dtype=jnp.int32)
    s = jnp.sort(jnp.where(m, v, jnp.inf), axis=-1)
    lo = jnp.expand_dims(jnp.maximum(n - 1, 0) // 2, -1)
    hi = jnp.expand_dims(n // 2, -1)
    med = 0.5 * (
        jnp.take_along_axis(s, lo, axis=-1)[..., 0] + jnp.take_along_axis(s, hi, axis=-1)[..., 0]
    )
    return jnp.where(n > 0, med, jnp.nan)


@jax.jit
def band_flip_rate(labels_a, labels_b, band) -> jax.Array:
    """float32[...]: flip rate restricted to the band, ``mean_{x in band} [y_a(x) != y_b(x)]``.

    Labels or logits as in :func:`flip_rate`; ``band`` bool[N] (:func:`boundary_band`).
    NaN for an empty band. Paper: band flip rate.

    Example:
        >>> float(band_flip_rate(jnp.array([0, 1, 2]), jnp.array([1, 1, 0]),
        ...                      jnp.array([True, True, False])))
        0.5
    """
    la, lb = align(_as_labels(labels_a, "labels_a"), _as_labels(labels_b, "labels_b"), "a", "b", 1)
    return masked_mean(la != lb, band)


@jax.jit
def pair_order_flip(logits_float, logits_q, band) -> jax.Array:
    """float32[...]: fraction of band points where ``sign(z_a - z_b)`` differs between models.

    ``a``, ``b`` are the float model's top class and runner-up at each point (:func:`top2`);
    ``sign`` is -1, 0 or +1. NaN for an empty band. Paper: boundary-band pair-order flip.

    Args:
        logits_float: float[N, K]; logits_q: float[..., N, K]; band: bool[N].

    Example:
        >>> zf = jnp.array([[2.0, 1.0, 0.0], [0.0, 1.0, 3.0]])
        >>> zq = jnp.array([[1.0, 2.0, 0.0], [0.0, 1.0, 3.0]])
        >>> float(pair_order_flip(zf, zq, jnp.array([True, True])))
        0.5
    """
    zf = check_logits(logits_float, "logits_float")
    zq = check_logits(logits_q, "logits_q")
    a, b = top2(zf)
    # signs (-1, 0, 1, NaN) are exact in float32, whatever the precision of either model's logits
    sf = jnp.sign(pair_gap(zf, a, b)).astype(jnp.float32)
    sq = jnp.sign(pair_gap(zq, a, b)).astype(jnp.float32)
    sf, sq = align(sf, sq, "logits_float", "logits_q", 1)
    return masked_mean(sf != sq, band)
