"""Range setting: clip ranges, scale / zero-point from a range, and SQNR.

Every range method maps a float tensor to a :class:`ClipRange` ``(lo, hi)``. The statistics are
taken over ``reduce_axes`` (``None``: all axes, i.e. per-tensor) with ``keepdims=True``, so the
range broadcasts against ``x`` without rank promotion; per-channel ranges reduce over every
axis but the channel axis (:func:`channel_reduce_axes`), per-group ranges reduce over the
group axis of a grouped view (see ``bq_jax.quant.config``).

Methods (white paper: Nagel et al. 2021, "A White Paper on Neural Network Quantization",
section 3.1 / 4.2; StatQAT: Aktukmak et al. 2026; OCTAV: Sakr et al., ICML 2022):

* :func:`minmax`: the data range.
* :func:`percentile`: a percentile of ``|x|`` (symmetric) or the ``(100-q, q)`` percentiles.
* :func:`mse`: grid search over clip ratios ``r = k / n`` of the min-max range, minimising the
  mean squared error of the real integer (or floating-point) quantizer.
* :func:`octav`: the OCTAV fixed point ``s <- E[|X| 1{|X|>s}] / ((4^-B/3) E[1{|X|<=s}] +
  E[1{|X|>s}])`` on the empirical distribution.
* :func:`gaussian`: ``clip = c_B * sigma`` with ``c_B`` minimising the expected MSE of the
  actual integer grid for Gaussian data (:func:`gaussian_clip_ratio`).

:func:`qparams_from_range` turns a range into ``QParams(scale, zero_point, qmin, qmax)`` in the
PyTorch ``fake_quantize_per_channel_affine`` convention (or, with ``scale_convention="qwix"``,
qwix's symmetric ``absmax / (qmax + 0.5)``), and :func:`sqnr_db` measures the
signal-to-quantization-noise ratio.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from scipy import integrate, optimize

from bq_jax.quant.common import (
    check_finite,
    check_qrange,
    check_x,
    compute_dtype,
    divide,
    is_int,
    is_real,
    scale_floor,
)
from bq_jax.quant.floating import float_fake_quant, float_format_max
from bq_jax.quant.integer import int_fake_quant, int_range

__all__ = [
    "RANGE_METHODS",
    "SCALE_CONVENTIONS",
    "ClipRange",
    "QParams",
    "channel_reduce_axes",
    "gaussian",
    "gaussian_clip_ratio",
    "gaussian_expected_mse",
    "minmax",
    "mse",
    "octav",
    "octav_fixed_point",
    "octav_update",
    "percentile",
    "qparams_from_range",
    "qwix_scale",
    "sqnr_db",
]

RANGE_METHODS = ("minmax", "percentile", "mse", "octav", "gaussian")

#: How a symmetric integer range ``absmax`` becomes a scale (:func:`qparams_from_range`):
#: ``"qmax"`` ``absmax / qmax`` (PyTorch, white paper; the default) or ``"qwix"``
#: ``absmax / (qmax + 0.5)`` (google/qwix).
SCALE_CONVENTIONS = ("qmax", "qwix")


class ClipRange(NamedTuple):
    """A clip range ``[lo, hi]``; both arrays have the rank of the tensor (``keepdims``)."""

    lo: jax.Array
    hi: jax.Array


@functools.partial(
    jax.tree_util.register_dataclass,
    data_fields=["scale", "zero_point"],
    meta_fields=["qmin", "qmax"],
)
@dataclasses.dataclass(frozen=True)
class QParams:
    """Integer quantization parameters: ``q = clip(round(x / scale) + zero_point, qmin, qmax)``.

    A pytree: ``scale`` and ``zero_point`` are leaves (arrays that broadcast against the
    tensor, or against its grouped view for per-group quantization); ``qmin`` and ``qmax`` are
    static Python ints, so a ``QParams`` can cross ``jax.jit`` boundaries without becoming
    traced. Unpacks like a tuple: ``scale, zero_point, qmin, qmax = qparams``.
    """

    scale: jax.Array  # float, > 0 everywhere
    zero_point: jax.Array  # int32, in [qmin, qmax]; 0 for symmetric quantization
    qmin: int | None  # smallest integer code (None for floating-point formats)
    qmax: int | None  # largest integer code (None for floating-point formats)

    def __iter__(self):
        return iter((self.scale, self.zero_point, self.qmin, self.qmax))


# ----------------------------------------------------------------------------- helpers


def _check_bits(bits) -> None:
    if not is_int(bits) or not 2 <= bits <= 16:
        raise ValueError(f"bits must be an int in [2, 16], got {bits!r}")


def _as_float(x, name: str = "x") -> jax.Array:
    x = check_x(x, name)
    check_finite(x, name)
    # Statistics in at least float32 (bfloat16 / float16 tensors are upcast).
    return x.astype(compute_dtype(x.dtype))


def _normalize_axes(reduce_axes, ndim: int) -> tuple[int, ...]:
    if reduce_axes is None:
        return tuple(range(ndim))
    if isinstance(reduce_axes, int) and not isinstance(reduce_axes, bool):
        reduce_axes = (reduce_axes,)
    if not isinstance(reduce_axes, Sequence) or not all(
        isinstance(a, int) and not isinstance(a, bool) for a in reduce_axes
    ):
        raise TypeError(f"reduce_axes must be None, an int or a tuple of ints, got {reduce_axes!r}")
    out = []
    for a in reduce_axes:
        if not -ndim <= a < ndim:
            raise ValueError(
                f"reduce_axes entry {a} is out of range for a tensor of rank {ndim} "
                f"(accepted: -{ndim} <= axis < {ndim})"
            )
        out.append(a % ndim)
    if len(set(out)) != len(out):
        raise ValueError(f"reduce_axes has repeated axes: {reduce_axes!r}")
    return tuple(sorted(out))


def channel_reduce_axes(ndim: int, axis: int) -> tuple[int, ...]:
    """Axes to reduce for per-channel statistics along ``axis`` (every axis but ``axis``).

    Example:
      >>> channel_reduce_axes(4, -1)  # HWIO conv kernel, one range per output channel
      (0, 1, 2)
    """
    if not -ndim <= axis < ndim or ndim == 0:
        raise ValueError(
            f"axis {axis} is out of range for a tensor of rank {ndim} "
            f"(accepted: -{ndim} <= axis < {ndim})"
        )
    return tuple(a for a in range(ndim) if a != axis % ndim)


# ----------------------------------------------------------------------------- qparams


def qparams_from_range(
    lo, hi, *, qmin: int, qmax: int, symmetric: bool, scale_convention: str = "qmax"
) -> QParams:
    """Scale and zero point that map the clip range ``[lo, hi]`` onto the codes ``[qmin, qmax]``.

    Symmetric (``qmin < 0 < qmax``, zero point 0)::

        scale = max(|lo|, |hi|) / qmax                        (scale_convention="qmax")
        scale = max(|lo|, |hi|) / (qmax + 0.5)                 (scale_convention="qwix")

    ``"qwix"`` is google/qwix's symmetric integer convention (qwix 0.1.8,
    ``qwix/_src/core/qarray.py::compute_scale_zero_point`` with
    ``numerics.get_symmetric_bound``: the bound ``qmax + 0.5`` lets the edge code ``qmax``
    take the bucket ``[qmax - 0.5, qmax + 0.5)``, so ``+absmax`` lands on the tie ``qmax +
    0.5`` and gives ``qmax`` after rounding half to even and clipping, and ``-absmax`` gives
    ``qmin = -(qmax + 1)`` or ``qmin + 1`` by the last ulp of the scale). A scale below
    ``sqrt(finfo.tiny)`` (a zero range) becomes 1, as in qwix. The division is an IEEE
    division (correctly rounded).

    Asymmetric (PyTorch ``fake_quantize_per_channel_affine`` / white paper eq. 2-4): the range
    is first extended to contain 0 (so that 0 is exactly representable), then::

        lo' = min(lo, 0),  hi' = max(hi, 0)
        scale = (hi' - lo') / (qmax - qmin)
        zero_point = clip(round(qmin - lo' / scale), qmin, qmax)     (an integer)

    A zero range (all-zero tensor or channel) gets the scale floor ``finfo(dtype).tiny``
    instead of 0, so the scale is always finite and positive and zeros quantize to zero
    exactly. (Because the range is extended to 0 *before* the floor is applied, a constant
    non-zero channel has a genuine range ``[0, v]`` and never hits the floor.)

    Args:
      lo, hi: lower / upper clip, float arrays of the same shape (e.g. a :class:`ClipRange`).
      qmin, qmax: integer code range (Python ints), e.g. ``-128, 127`` or ``0, 255``.
      symmetric: symmetric (zero point 0) or asymmetric quantization.
      scale_convention: ``"qmax"`` (default) or ``"qwix"`` (symmetric only), see above.

    Returns:
      ``QParams(scale, zero_point, qmin, qmax)``; ``scale`` float with the shape of ``lo``,
      ``zero_point`` int32 of the same shape.

    Example:
      >>> qp = qparams_from_range(jnp.float32(-1.0), jnp.float32(3.0), qmin=0, qmax=255,
      ...                         symmetric=False)
      >>> float(qp.scale), int(qp.zero_point)  # 4/255, round(0 + 1/(4/255)) = 64
      (0.01568627543747425, 64)
      >>> qp = qparams_from_range(jnp.float32(-2.0), jnp.float32(1.0), qmin=-8, qmax=7,
      ...                         symmetric=True, scale_convention="qwix")
      >>> float(qp.scale)  # 2 / 7.5
      0.2666666805744171
    """
    qmin, qmax = check_qrange(qmin, qmax)
    if scale_convention not in SCALE_CONVENTIONS:
        raise ValueError(
            f"scale_convention must be one of {SCALE_CONVENTIONS}, got {scale_convention!r}"
        )
    if scale_convention == "qwix" and not symmetric:
        raise ValueError(
            "scale_convention='qwix' is qwix's symmetric convention; use symmetric=True "
            "(qwix's asymmetric 'minmax' calibration is not reproduced)"
        )
    if symmetric and not qmin < 0 < qmax:
        raise ValueError(
            f"symmetric quantization needs qmin < 0 < qmax (signed codes), got [{qmin}, {qmax}]"
        )
    lo = _as_float(lo, "lo")
    hi = _as_float(hi, "hi")
    if lo.shape != hi.shape:
        raise ValueError(f"lo and hi must have the same shape, got {lo.shape} and {hi.shape}")
    dtype = compute_dtype(lo.dtype, hi.dtype)
    scale, zero_point = _qparams_jit(
        lo.astype(dtype), hi.astype(dtype), qmin, qmax, symmetric, scale_convention
    )
    return QParams(scale=scale, zero_point=zero_point, qmin=qmin, qmax=qmax)


def qwix_scale(absmax, qmax: int) -> jax.Array:
    """qwix's symmetric scale ``absmax / (qmax + 0.5)``, and 1 where it is below
    ``sqrt(finfo.tiny)`` (traced; ``absmax`` float, ``qmax`` a Python int).

    The division is kept an IEEE division (XLA would otherwise multiply by the rounded
    reciprocal of the constant, one ulp off for some ``absmax``).

    Example:
      >>> qwix_scale(jnp.array([2.55, 0.0]), 127)  # 2.55 / 127.5; a zero range gets 1
      Array([0.02, 1.  ], dtype=float32)
    """
    bound = jnp.full(absmax.shape, qmax + 0.5, absmax.dtype)
    scale = divide(absmax, bound)
    tiny_sqrt = np.sqrt(np.finfo(absmax.dtype).tiny)  # correctly rounded, as jnp.sqrt
    return jnp.where(scale < tiny_sqrt, jnp.ones_like(scale), scale)


@functools.partial(jax.jit, static_argnums=(2, 3, 4, 5))
def _qparams_jit(lo, hi, qmin: int, qmax: int, symmetric: bool, scale_convention: str):
    floor = scale_floor(lo.dtype)
    if scale_convention == "qwix":
        absmax = jnp.maximum(jnp.abs(lo), jnp.abs(hi))
        scale = qwix_scale(absmax, qmax)
        return scale, jnp.zeros(scale.shape, jnp.int32)
    if symmetric:
        absmax = jnp.maximum(jnp.abs(lo), jnp.abs(hi))
        scale = jnp.maximum(absmax / qmax, floor)
        return scale, jnp.zeros(scale.shape, jnp.int32)
    lo0 = jnp.minimum(lo, 0.0)
    hi0 = jnp.maximum(hi, 0.0)
    n = qmax - qmin
    width = hi0 - lo0
    # A finite range wider than the dtype's max ([-3e38, 1e38] in float32) overflows to inf:
    # divide first there (elsewhere the usual (hi - lo) / n, bit for bit).
    width_n = jnp.where(jnp.isfinite(width), width / n, hi0 / n - lo0 / n)
    scale = jnp.maximum(width_n, floor)
    return scale, jnp.clip(jnp.round(qmin - lo0 / scale), qmin, qmax).astype(jnp.int32)


# ----------------------------------------------------------------------------- methods


def minmax(x, *, reduce_axes=None, symmetric: bool = True) -> ClipRange:
    """Min-max range (white paper section 3.1): ``[-max|x|, max|x|]`` or ``[min x, max x]``.

    Args:
      x: float tensor.
      reduce_axes: axes to reduce over (``None``: all, per-tensor).
      symmetric: return the symmetric range ``+-max|x|`` instead of ``[min, max]``.

    Returns:
      ``ClipRange(lo, hi)`` with ``keepdims`` shapes.

    Example:
      >>> minmax(jnp.array([[-1.0, 2.0], [0.5, 0.25]]), reduce_axes=0, symmetric=False)
      ClipRange(lo=Array([[-1.  ,  0.25]], dtype=float32), hi=Array([[0.5, 2. ]], dtype=float32))
    """
    x = _as_float(x)
    return _minmax_jit(x, _normalize_axes(reduce_axes, x.ndim), bool(symmetric))


@functools.partial(jax.jit, static_argnums=(1, 2))
def _minmax_jit(x, axes: tuple[int, ...], symmetric: bool) -> ClipRange:
    if symmetric:
        a = jnp.max(jnp.abs(x), axis=axes, keepdims=True)
        return ClipRange(-a, a)
    return ClipRange(jnp.min(x, axis=axes, keepdims=True), jnp.max(x, axis=axes, keepdims=True))


def _percentile(x, q: float, axes: tuple[int, ...]) -> jax.Array:
    """``np.percentile(x, q, axis=axes, keepdims=True)`` (method "linear") in jax.

    The fractional position ``q / 100 * (n - 1)`` is computed in Python float64 (``q`` and
    ``n`` are static), then the two neighbouring order statistics are interpolated with
    numpy's ``lerp``. ``jnp.percentile`` computes the position in float32, which for
    ``n`` in the thousands moves the interpolation weight by ~1e-3 (visible in the tails).
    """
    keep = [a for a in range(x.ndim) if a not in axes]
    out_shape = tuple(1 if a in axes else x.shape[a] for a in range(x.ndim))
    n = math.prod(x.shape[a] for a in axes)
    if n == 0:
        raise ValueError("percentile of an empty reduction")
    v = jnp.transpose(x, keep + list(axes)).reshape(-1, n)
    v = jnp.sort(v, axis=-1)
    pos = q / 100.0 * (n - 1)
    i = min(int(math.floor(pos)), n - 1)
    t = pos - i
    j = min(i + 1, n - 1)
    a, b = v[:, i], v[:, j]
    diff = b - a
    res = jnp.where(t >= 0.5, b - diff * (1.0 - t), a + diff * t)
    return res.reshape(out_shape)


def percentile(x, q: float = 99.99, *, reduce_axes=None, symmetric: bool = True) -> ClipRange:
    """Percentile range (white paper section 3.1), linear interpolation as ``np.percentile``.

    Symmetric: ``c = percentile(|x|, q)``, range ``[-c, c]``. Two-sided:
    ``[percentile(x, 100 - q), percentile(x, q)]``. Sort-based and jit-able.

    Args:
      x: float tensor.
      q: percentile in (0, 100] (symmetric) or [50, 100] (two-sided), e.g. 99.99.
      reduce_axes: axes to reduce over (``None``: all).
      symmetric: percentile of ``|x|`` instead of the two tails of ``x``.

    Returns:
      ``ClipRange(lo, hi)`` with ``keepdims`` shapes.

    Example:
      >>> percentile(jnp.arange(-50.0, 51.0), 90.0)  # 90th percentile of |x| = 0..50
      ClipRange(lo=Array([-45.], dtype=float32), hi=Array([45.], dtype=float32))
    """
    if not is_real(q):
        raise TypeError(f"q must be a float, got {q!r}")
    q = float(q)
    low = 0.0 if symmetric else 50.0
    if not (low < q <= 100.0 if symmetric else low <= q <= 100.0):
        accepted = "(0, 100]" if symmetric else "[50, 100] for a two-sided range"
        raise ValueError(f"percentile q must be in {accepted}, got {q}")
    x = _as_float(x)
    return _percentile_jit(x, float(q), _normalize_axes(reduce_axes, x.ndim), bool(symmetric))


@functools.partial(jax.jit, static_argnums=(1, 2, 3))
def _percentile_jit(x, q: float, axes: tuple[int, ...], symmetric: bool) -> ClipRange:
    if symmetric:
        c = _percentile(jnp.abs(x), q, axes)
        return ClipRange(-c, c)
    return ClipRange(_percentile(x, 100.0 - q, axes), _percentile(x, q, axes))


def mse(
    x,
    *,
    bits: int,
    symmetric: bool = True,
    narrow: bool = False,
    reduce_axes=None,
    num_candidates: int = 100,
    fmt="int",
) -> ClipRange:
    """MSE range search (white paper section 3.1, "MSE"): the clip ratio of the min-max range
    that minimises the actual quantization error.

    Candidates are ``r_k = k / n`` for ``k = n, ..., 1`` (``n = num_candidates``) applied to
    the min-max range (``r * [lo, hi]``); for each, the tensor is fake-quantized with the real
    quantizer (integer grid from :func:`qparams_from_range`, round half to even; or the
    floating-point format when ``fmt`` is not ``"int"``) and ``mean((x - q(x))^2)`` is taken
    over ``reduce_axes``. Each slice keeps the candidate with the smallest error (ties keep
    the larger ratio). ``r = 1`` is a candidate, so the result is never worse than min-max.
    One ``lax.fori_loop`` over candidates: memory stays at one copy of ``x``.

    Args:
      x: float tensor.
      bits: integer bit width in [2, 16] (ignored for floating-point ``fmt``).
      symmetric: symmetric or asymmetric integer grid.
      narrow: narrow integer range (see ``int_range``).
      reduce_axes: axes to reduce over (``None``: all).
      num_candidates: number of clip ratios ``n`` (static, >= 1).
      fmt: ``"int"`` or a floating-point format (``"e4m3"``, ``"e5m2"``, ``"e2m1"``, or
        ``(exp_bits, man_bits)``); a float format maps ``r * max|x|`` to the format's max.

    Returns:
      ``ClipRange(lo, hi)`` with ``keepdims`` shapes.

    Example:
      >>> x = jax.random.normal(jax.random.key(0), (100_000,))
      >>> round(float(mse(x, bits=4).hi[0] / jnp.std(x)), 2)  # about 2.37 sigma
      2.39
    """
    if not is_int(num_candidates):
        raise TypeError(f"num_candidates must be an int, got {num_candidates!r}")
    num_candidates = int(num_candidates)
    if num_candidates < 1:
        raise ValueError(f"num_candidates must be >= 1, got {num_candidates}")
    x = _as_float(x)
    axes = _normalize_axes(reduce_axes, x.ndim)
    if isinstance(fmt, list):
        fmt = tuple(fmt)
    if fmt == "int":
        qrange = int_range(bits, symmetric=symmetric, narrow=narrow)
    else:
        float_format_max(fmt)  # validates the format
        qrange = None
    return _mse_jit(x, axes, qrange, bool(symmetric), num_candidates, fmt)


@functools.partial(jax.jit, static_argnums=(1, 2, 3, 4, 5))
def _mse_jit(x, axes, qrange, symmetric: bool, n: int, fmt) -> ClipRange:
    if qrange is not None:
        qmin, qmax = qrange
        base = minmax(x, reduce_axes=axes, symmetric=symmetric)

        def quant(ratio):
            qp = qparams_from_range(
                base.lo * ratio, base.hi * ratio, qmin=qmin, qmax=qmax, symmetric=symmetric
            )
            return int_fake_quant(x, qp.scale, qp.zero_point, qmin=qmin, qmax=qmax)

    else:
        fmax = float_format_max(fmt)
        base = minmax(x, reduce_axes=axes, symmetric=True)
        floor = scale_floor(x.dtype)

        def quant(ratio):
            scale = jnp.maximum(base.hi * ratio / fmax, floor)
            return float_fake_quant(x, fmt, scale=scale)

    def error(ratio):
        return jnp.mean(jnp.square(x - quant(ratio)), axis=axes, keepdims=True)

    def body(k, carry):
        best_err, best_ratio = carry
        ratio = (n - k).astype(x.dtype) / n
        err = error(ratio)
        better = err < best_err
        return jnp.where(better, err, best_err), jnp.where(better, ratio, best_ratio)

    one = jnp.ones(base.hi.shape, x.dtype)
    _, ratio = jax.lax.fori_loop(1, n, body, (error(one), one))
    return ClipRange(base.lo * ratio, base.hi * ratio)


def octav_update(x, s, *, bits: int, reduce_axes=None) -> jax.Array:
    """One OCTAV step (Sakr et al. 2022, eq. 6; StatQAT's iterative quantizer)::

        s <- E[|X| 1{|X| >= s}] / ((4^-B / 3) E[1{|X| < s}] + E[1{|X| >= s}])

    It comes from the clipping-plus-rounding MSE model
    ``J(s) = (4^-B / 3) s^2 E[1{|X| < s}] + E[(|X| - s)^2 1{|X| >= s}]`` (rounding noise
    ``step^2 / 12`` of a 2^B-level grid on ``[-s, s]`` inside, clipping error outside): setting
    ``dJ/ds = 0`` and dropping the term ``(4^-B / 3) s^2 d/ds E[1{|X| < s}]`` (density of
    ``|X|`` at ``s``) gives the update. So its fixed point is close to, not equal to, the
    minimiser of ``J``: for N(0, 1) at 2 bits 1.7388 sigma vs 1.688 sigma; at 8 bits both are
    3.924 sigma. Ties ``|X| = s`` count as clipped: such a value sits on the
    clip level ``+-s``, which is on the grid, so it has no rounding error (this differs from
    the paper's ``1{|X| > s}`` only where the data has atoms; it makes a constant ``|x| = v``
    the fixed point ``s = v`` rather than a 2-cycle ``v, 0, v, ...``). The denominator is at
    least ``4^-B / 3 > 0``.

    Args:
      x: float tensor.
      s: current clip, a scalar or ``keepdims``-shaped over ``reduce_axes``.
      bits: bit width ``B`` in [2, 16].
      reduce_axes: axes of the expectation (``None``: all).

    Returns:
      The next clip, same shape as ``s``.

    Example:
      >>> float(octav_update(jnp.array([1.0, -1.0]), jnp.ones((1,)), bits=4)[0])
      1.0
    """
    _check_bits(bits)
    x = _as_float(x)
    return _octav_update(x, jnp.asarray(s, x.dtype), bits, _normalize_axes(reduce_axes, x.ndim))


def _octav_update(x, s, bits: int, axes: tuple[int, ...]) -> jax.Array:
    a = 4.0**-bits / 3.0
    ax = jnp.abs(x)
    clipped = ax >= s
    num = jnp.mean(jnp.where(clipped, ax, 0.0), axis=axes, keepdims=True)
    p_clip = jnp.mean(clipped.astype(x.dtype), axis=axes, keepdims=True)
    p_in = jnp.mean((~clipped).astype(x.dtype), axis=axes, keepdims=True)
    return num / (a * p_in + p_clip)


def octav_fixed_point(
    x, *, bits: int, reduce_axes=None, tol: float = 1e-6, max_iter: int = 100
) -> tuple[jax.Array, jax.Array]:
    """Iterates :func:`octav_update` to its fixed point.

    Start: ``s_1 = E|X|``, which is the update applied to ``s = 0``; from below the iterates
    increase monotonically to the fixed point for Gaussian-like data (the map's slope there is
    small: -0.06 at 2 bits, -1e-4 at 8 bits, so convergence is fast). Stops when every
    slice's relative change ``|s' - s| / s'`` is ``<= tol`` or after ``max_iter`` updates
    (a ``lax.while_loop``: jit-able). Never exceeds ``max|x|`` (the update is bounded by it).
    All-zero slices give ``s = 0``.

    Args:
      x: float tensor.
      bits: bit width ``B`` in [2, 16].
      reduce_axes: axes to reduce over (``None``: all).
      tol: relative tolerance (> 0).
      max_iter: maximum number of updates (>= 1).

    Returns:
      ``(s, num_iterations)``: the clip (``keepdims`` shape) and the updates performed.

    Example:
      >>> x = jax.random.normal(jax.random.key(0), (1_000_000,))
      >>> s, n = octav_fixed_point(x, bits=2)
      >>> round(float(s[0]), 2)  # the Gaussian fixed point at 2 bits is 1.7388 sigma
      1.74
    """
    _check_bits(bits)
    if not (is_real(tol) and tol > 0):
        raise ValueError(f"tol must be a positive float, got {tol!r}")
    if not is_int(max_iter) or max_iter < 1:
        raise ValueError(f"max_iter must be an int >= 1, got {max_iter!r}")
    tol, max_iter = float(tol), int(max_iter)
    x = _as_float(x)
    return _octav_jit(x, _normalize_axes(reduce_axes, x.ndim), bits, float(tol), max_iter)


@functools.partial(jax.jit, static_argnums=(1, 2, 3, 4))
def _octav_jit(x, axes: tuple[int, ...], bits: int, tol: float, max_iter: int):
    tiny = scale_floor(x.dtype)
    s0 = jnp.mean(jnp.abs(x), axis=axes, keepdims=True)

    def cond(carry):
        i, _, change = carry
        return (i < max_iter) & (change > tol)

    def body(carry):
        i, s, _ = carry
        s_new = _octav_update(x, s, bits, axes)
        change = jnp.max(jnp.abs(s_new - s) / jnp.maximum(s_new, tiny))
        return i + 1, s_new, change

    init = (jnp.int32(1), s0, jnp.asarray(jnp.inf, x.dtype))
    n, s, _ = jax.lax.while_loop(cond, body, init)
    return s, n


def octav(
    x,
    *,
    bits: int,
    symmetric: bool = True,
    reduce_axes=None,
    tol: float = 1e-6,
    max_iter: int = 100,
) -> ClipRange:
    """OCTAV clip range: ``[-s, s]`` at the fixed point of :func:`octav_update`.

    OCTAV's noise model is the symmetric grid (2^B levels on ``[-s, s]``). With
    ``symmetric=False`` the range is ``[-s, s]`` intersected with ``[min x, max x]`` (so
    one-sided data is not given an empty half), but ``s`` itself is still the symmetric one.

    Args:
      x: float tensor.
      bits: bit width in [2, 16].
      symmetric: return ``[-s, s]``; otherwise intersect with the data range.
      reduce_axes: axes to reduce over (``None``: all).
      tol, max_iter: see :func:`octav_fixed_point`.

    Returns:
      ``ClipRange(lo, hi)`` with ``keepdims`` shapes.

    Example:
      >>> x = jax.random.normal(jax.random.key(0), (1_000_000,))
      >>> round(float(octav(x, bits=8).hi[0]), 1)  # the Gaussian fixed point is 3.92 sigma
      3.9
    """
    x = _as_float(x)
    axes = _normalize_axes(reduce_axes, x.ndim)
    s, _ = octav_fixed_point(x, bits=bits, reduce_axes=axes, tol=tol, max_iter=max_iter)
    if symmetric:
        return ClipRange(-s, s)
    return _intersect(s, minmax(x, reduce_axes=axes, symmetric=False))


@jax.jit
def _intersect(s, data: ClipRange) -> ClipRange:
    return ClipRange(jnp.maximum(-s, data.lo), jnp.minimum(s, data.hi))


# ----------------------------------------------------------------------------- Gaussian

# Gauss-Legendre rules on [-1, 1]. 24 nodes integrate t^2 phi(L + t) over a grid cell of width
# <= 1.6 sigma (every bit width >= 2) to double precision; cells narrower than 0.25 sigma
# (>= 5 bits) need only 8 (the error of an n-point rule scales like width^(2n)).
_GL_RULES = {n: np.polynomial.legendre.leggauss(n) for n in (8, 24)}


def _npdf(x):
    return np.exp(-0.5 * np.square(x)) / math.sqrt(2.0 * math.pi)


def _cell_integral(levels: np.ndarray, t0: float, t1: float) -> np.ndarray:
    """``int_{t0}^{t1} t^2 phi(L + t) dt`` for every level ``L`` (Gauss-Legendre)."""
    half = 0.5 * (t1 - t0)
    nodes, weights = _GL_RULES[8 if t1 - t0 < 0.25 else 24]
    t = 0.5 * (t1 + t0) + half * nodes  # (nodes,)
    f = np.square(t)[None, :] * _npdf(levels[:, None] + t[None, :])
    return half * (f @ weights)


def _tail_integral(level: float) -> float:
    """``int_level^inf (x - level)^2 phi(x) dx = int_0^inf t^2 phi(level + t) dt`` (quad)."""
    val, _ = integrate.quad(
        lambda t: t * t * math.exp(-0.5 * (level + t) ** 2), 0.0, np.inf, epsabs=0.0, epsrel=1e-12
    )
    return val / math.sqrt(2.0 * math.pi)


def _round_half_even(v: float) -> int:
    return int(np.round(v))


def _grid(c: float, bits: int, symmetric: bool, narrow: bool) -> tuple[np.ndarray, float]:
    """Reconstruction levels (ascending) and step of the integer grid for the range [-c, c]."""
    qmin, qmax = int_range(bits, symmetric=symmetric, narrow=narrow)
    if symmetric:
        s, zp = c / qmax, 0
    else:  # the float64 mirror of qparams_from_range for lo = -c, hi = c
        s = 2.0 * c / (qmax - qmin)
        zp = min(max(_round_half_even(qmin + c / s), qmin), qmax)
    return (np.arange(qmin, qmax + 1, dtype=np.float64) - zp) * s, s


def gaussian_expected_mse(c: float, bits: int, *, symmetric: bool = True, narrow: bool = False):
    """Expected squared error ``E[(X - Q(X))^2]`` for ``X ~ N(0, 1)`` on the actual integer grid.

    The grid is the one :func:`qparams_from_range` builds for the range ``[-c, c]`` (symmetric:
    step ``c / qmax`` with codes ``qmin..qmax``, i.e. ``2^(B-1)-1`` positive levels and, unless
    ``narrow``, one extra negative level ``-2^(B-1) * step``; asymmetric: step
    ``2c / (qmax - qmin)`` around the rounded zero point). With levels ``L_k`` and step ``s``::

        E = sum_k int_{cell_k} (x - L_k)^2 phi(x) dx,   cell_k = [L_k - s/2, L_k + s/2]

    where the outermost cells extend to +-infinity (clipping error). Inner cells are integrated
    by Gauss-Legendre (24 points; 8 for cells narrower than 0.25) in the shifted variable
    ``t = x - L_k`` (a positive integrand, so no cancellation between large terms), the two
    tails by adaptive quadrature. This is the exact grid, not the ``4^-B/3`` rounding-noise
    approximation.

    Args:
      c: clip in units of sigma (> 0).
      bits: bit width in [2, 16].
      symmetric, narrow: grid type, as for ``int_range``.

    Returns:
      Python float: MSE in units of sigma^2 (the SQNR is ``-10 log10`` of it).

    Example:
      >>> round(gaussian_expected_mse(2.0, 4), 5)  # the optimum c = 2.3703 gives 0.011864
      0.01475
    """
    if not c > 0:
        raise ValueError(f"c must be > 0, got {c}")
    levels, s = _grid(float(c), bits, symmetric, narrow)
    inner = levels[1:-1]
    total = float(np.sum(_cell_integral(inner, -0.5 * s, 0.5 * s)))
    total += float(_cell_integral(levels[:1], 0.0, 0.5 * s)[0])
    total += float(_cell_integral(levels[-1:], -0.5 * s, 0.0)[0])
    # Tails (x > L_max and, by symmetry of phi, x < L_min).
    total += _tail_integral(float(levels[-1])) + _tail_integral(float(-levels[0]))
    return total


@functools.cache
def gaussian_clip_ratio(bits: int, *, symmetric: bool = True, narrow: bool = False) -> float:
    """``c_B``: the clip (in sigma) minimising :func:`gaussian_expected_mse` (StatQAT's
    analytic quantizer for Gaussian weights, computed for the actual integer grid).

    A coarse scan over ``c`` in [0.25, 12] (step 0.25) brackets the minimum, then bounded
    Brent refines it to ``1e-10``. Computed once per ``(bits, symmetric, narrow)`` (cached).
    Values for the default signed grid: B=2: 1.0484, B=4: 2.3703, B=8: 3.9072; for the narrow
    grid (``+-(2^(B-1)-1)`` levels) B=2: 1.2240 (the ternary optimum), B=4: 2.4739.

    Args:
      bits: bit width in [2, 16].
      symmetric, narrow: grid type.

    Returns:
      Python float ``c_B``.

    Example:
      >>> round(gaussian_clip_ratio(4), 3)
      2.37
    """
    _check_bits(bits)
    if not isinstance(symmetric, bool) or not isinstance(narrow, bool):
        raise TypeError(f"symmetric and narrow must be bools, got {symmetric!r}, {narrow!r}")
    cs = np.arange(1, 49) * 0.25
    errs = np.array(
        [gaussian_expected_mse(c, bits, symmetric=symmetric, narrow=narrow) for c in cs]
    )
    i = int(np.argmin(errs))
    lo, hi = cs[max(i - 1, 0)], cs[min(i + 1, len(cs) - 1)]
    res = optimize.minimize_scalar(
        lambda c: gaussian_expected_mse(c, bits, symmetric=symmetric, narrow=narrow),
        bounds=(lo, hi),
        method="bounded",
        options={"xatol": 1e-10},
    )
    return float(res.x)


def gaussian(
    x, *, bits: int, symmetric: bool = True, narrow: bool = False, reduce_axes=None
) -> ClipRange:
    """Analytic Gaussian clip: ``clip = c_B * sigma`` (:func:`gaussian_clip_ratio`).

    Symmetric: ``sigma = sqrt(mean(x^2))`` (the maximum-likelihood sigma of the zero-mean
    model ``N(0, sigma^2)`` that the symmetric grid assumes; equals the std for zero-mean
    weights), range ``+-min(c_B sigma, max|x|)``. Asymmetric: ``mu +- c_B * std`` intersected
    with ``[min x, max x]``. Clipping beyond the data only wastes levels, hence the
    intersection (it matters when ``c_B`` exceeds the sample's extreme, e.g. at 16 bits or on
    small tensors). A constant slice gives ``[v, v]`` resp. ``+-|v|``.

    Args:
      x: float tensor (statistics over ``reduce_axes``).
      bits: bit width in [2, 16].
      symmetric, narrow: grid type (``c_B`` depends on it).
      reduce_axes: axes to reduce over (``None``: all).

    Returns:
      ``ClipRange(lo, hi)`` with ``keepdims`` shapes.

    Example:
      >>> x = 0.5 * jax.random.normal(jax.random.key(0), (100_000,))
      >>> round(float(gaussian(x, bits=4).hi[0]), 2)  # 2.3703 * 0.5
      1.19
    """
    c = gaussian_clip_ratio(bits, symmetric=symmetric, narrow=narrow)
    x = _as_float(x)
    return _gaussian_jit(
        x, jnp.asarray(c, x.dtype), _normalize_axes(reduce_axes, x.ndim), symmetric
    )


@functools.partial(jax.jit, static_argnums=(2, 3))
def _gaussian_jit(x, c, axes: tuple[int, ...], symmetric: bool) -> ClipRange:
    data = minmax(x, reduce_axes=axes, symmetric=False)
    if symmetric:
        sigma = jnp.sqrt(jnp.mean(jnp.square(x), axis=axes, keepdims=True))
        absmax = jnp.maximum(-data.lo, data.hi)
        clip = jnp.minimum(c * sigma, absmax)
        return ClipRange(-clip, clip)
    mu = jnp.mean(x, axis=axes, keepdims=True)
    sd = jnp.std(x, axis=axes, keepdims=True)
    return ClipRange(jnp.maximum(mu - c * sd, data.lo), jnp.minimum(mu + c * sd, data.hi))


# ----------------------------------------------------------------------------- SQNR


def sqnr_db(x, xq, *, reduce_axes=None) -> jax.Array:
    """Signal-to-quantization-noise ratio ``10 log10(E[x^2] / E[(x - xq)^2])`` in dB.

    Edge cases (no NaN from finite inputs): zero error gives ``+inf`` (also when ``x`` is all
    zeros and reproduced exactly: a perfect reconstruction); zero signal with non-zero error
    gives ``-inf``.

    Args:
      x: reference float tensor.
      xq: its quantized version, same shape.
      reduce_axes: axes of the expectations (``None``: all, a scalar).

    Returns:
      float array (``keepdims`` over ``reduce_axes``; a scalar for ``None``).

    Example:
      >>> round(float(sqnr_db(jnp.array([1.0, -1.0]), jnp.array([1.1, -0.9]))), 4)  # 1 / 0.01
      20.0
    """
    x = _as_float(x)
    xq = _as_float(xq, "xq")
    if x.shape != xq.shape:
        raise ValueError(f"x and xq must have the same shape, got {x.shape} and {xq.shape}")
    dtype = compute_dtype(x.dtype, xq.dtype)
    x, xq = x.astype(dtype), xq.astype(dtype)
    axes = _normalize_axes(reduce_axes, x.ndim)
    return _sqnr_jit(x, xq, axes, reduce_axes is not None)


@functools.partial(jax.jit, static_argnums=(2, 3))
def _sqnr_jit(x, xq, axes: tuple[int, ...], keep: bool) -> jax.Array:
    signal = jnp.mean(jnp.square(x), axis=axes, keepdims=keep)
    noise = jnp.mean(jnp.square(x - xq), axis=axes, keepdims=keep)
    safe_signal = jnp.where(signal > 0, signal, 1.0)
    safe_noise = jnp.where(noise > 0, noise, 1.0)
    db = 10.0 * (jnp.log10(safe_signal) - jnp.log10(safe_noise))
    return jnp.where(noise == 0, jnp.inf, jnp.where(signal == 0, -jnp.inf, db))
