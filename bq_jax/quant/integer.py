"""Integer fake quantization with straight-through gradients, codes, and layout utilities.

The uniform affine quantizer of the white paper (Nagel et al. 2021, "A White Paper on Neural
Network Quantization", eq. 2-4), in PyTorch's ``fake_quantize_per_channel_affine`` convention
except that we divide by the scale instead of multiplying by ``1 / scale`` (the two differ only
at exact ties)::

    code = clip(round(x / scale) + zero_point, qmin, qmax)          (quantize)
    y    = (code - zero_point) * scale                              (dequantize)

``int_fake_quant(x, ...) == dequantize(quantize(x, ...), ...)`` bit for bit: both evaluate the
same operations in the same order.

Shapes: ``scale`` and ``zero_point`` are scalars (per-tensor) or arrays with the rank of ``x``
that broadcast against it (per-channel: :func:`per_channel_shape`, e.g. ``(1, C)``; per-group:
the grouped view :func:`to_groups` with parameters of shape :func:`per_group_shape`). A lower
rank is refused rather than broadcast silently.

Validation: bad arguments raise ``ValueError`` / ``TypeError`` naming what is accepted. Array
values (``scale`` positive and finite; ``zero_point`` an integer in ``[qmin, qmax]``) are
checked when they are concrete. Under ``jax.jit`` / ``vmap`` they are tracers and cannot be
checked; the output is then set to NaN wherever the parameters are invalid, so a bad traced
scale shows up instead of quietly producing a plausible tensor.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from bq_jax.quant.common import (
    MAX_CODE,
    SCALE_GRADS,
    check_axis,
    check_broadcast,
    check_key,
    check_qrange,
    check_scale,
    check_x,
    compute_dtype,
    concrete,
    divide,
    is_int,
    ste,
    ste_lsq,
)

__all__ = [
    "ROUNDING_MODES",
    "SCALE_GRADS",
    "code_dtype",
    "dequantize",
    "from_groups",
    "int_fake_quant",
    "int_range",
    "lsq_grad_scale",
    "per_channel_shape",
    "per_group_shape",
    "quantize",
    "to_groups",
]

# Accepted values of `rounding`.
ROUNDING_MODES = ("nearest", "stochastic", "floor", "ceil")
# Candidate code dtypes, smallest first.
_SIGNED_CODES = (jnp.int8, jnp.int16, jnp.int32)
_UNSIGNED_CODES = (jnp.uint8, jnp.uint16, jnp.int32)


# ----------------------------------------------------------------------------- ranges


def int_range(bits: int, *, symmetric: bool = True, narrow: bool = False) -> tuple[int, int]:
    """Integer code range ``(qmin, qmax)`` of a ``bits``-bit grid.

    Signed (``symmetric=True``): ``[-2^(b-1), 2^(b-1) - 1]``; unsigned (``symmetric=False``,
    asymmetric quantization with a zero point): ``[0, 2^b - 1]``. ``narrow=True`` drops the
    lowest code: ``[-(2^(b-1) - 1), 2^(b-1) - 1]`` (a grid symmetric about 0) resp.
    ``[1, 2^b - 1]``. White paper (Nagel et al. 2021), section 2.2.

    Args:
      bits: bit width, an int in ``[2, 16]``.
      symmetric: signed (True) or unsigned (False) codes.
      narrow: drop the lowest code.

    Returns:
      ``(qmin, qmax)`` as Python ints.

    Example:
      >>> int_range(8), int_range(8, narrow=True), int_range(4, symmetric=False)
      ((-128, 127), (-127, 127), (0, 15))
    """
    if not is_int(bits) or not 2 <= bits <= 16:
        raise ValueError(f"bits must be an int in [2, 16], got {bits!r}")
    for name, v in (("symmetric", symmetric), ("narrow", narrow)):
        if not isinstance(v, bool | np.bool_):
            raise TypeError(f"{name} must be a bool, got {v!r}")
    if symmetric:
        qmax = 2 ** (bits - 1) - 1
        return (-qmax if narrow else -qmax - 1), qmax
    return (1 if narrow else 0), 2**bits - 1


def code_dtype(qmin: int, qmax: int) -> jnp.dtype:
    """Smallest integer dtype holding ``[qmin, qmax]``: int8/int16/int32 or uint8/uint16/int32.

    Code ranges are limited to ``[-2^24, 2^24]`` (integers exact in float32, the compute dtype).

    Unsigned dtypes are used when ``qmin >= 0``.

    Example:
      >>> code_dtype(-128, 127), code_dtype(0, 255), code_dtype(-32768, 32767), code_dtype(0, 65535)
      (dtype('int8'), dtype('uint8'), dtype('int16'), dtype('uint16'))
    """
    qmin, qmax = check_qrange(qmin, qmax)
    for dt in _UNSIGNED_CODES if qmin >= 0 else _SIGNED_CODES:
        info = jnp.iinfo(dt)
        if info.min <= qmin and qmax <= info.max:
            return jnp.dtype(dt)
    raise AssertionError("unreachable: |codes| <= 2^24 fit in int32")


# ----------------------------------------------------------------------------- layout


def per_channel_shape(shape, axis: int) -> tuple[int, ...]:
    """Shape of per-channel parameters along ``axis``: ``shape`` with 1 on every other axis.

    Example:
      >>> per_channel_shape((3, 3, 16, 32), -1), per_channel_shape((8, 4), 0)
      ((1, 1, 1, 32), (8, 1))
    """
    shape = tuple(int(s) for s in shape)
    ax = check_axis(len(shape), axis, "per-channel quantization")
    return tuple(s if i == ax else 1 for i, s in enumerate(shape))


def _group_dims(shape, axis, group_size) -> tuple[int, int, int]:
    shape = tuple(int(s) for s in shape)
    ax = check_axis(len(shape), axis, "per-group quantization")
    c = shape[ax]
    m = math.prod(shape) // c if c else 0
    if not (is_int(group_size) and group_size >= 1) or m % group_size:
        raise ValueError(
            f"group_size={group_size!r} must be a positive divisor of the {m} values per channel "
            f"of a tensor of shape {shape} with channel axis {axis}"
        )
    return ax, m, c


def per_group_shape(shape, *, axis: int, group_size: int) -> tuple[int, int, int]:
    """Shape ``(M // group_size, 1, C)`` of per-group parameters for the view :func:`to_groups`.

    ``C = shape[axis]`` channels, ``M = prod(shape) / C`` values per channel.

    Example:
      >>> per_group_shape((64, 10), axis=-1, group_size=16)
      (4, 1, 10)
    """
    _, m, c = _group_dims(shape, axis, group_size)
    return (m // group_size, 1, c)


def to_groups(x, *, axis: int, group_size: int) -> jax.Array:
    """Grouped view ``(M // group_size, group_size, C)`` of ``x`` for per-group quantization.

    The channel axis ``axis`` is moved last and the other axes are flattened (C order) to
    ``M = x.size / C`` values per channel, which are split into groups of ``group_size``
    consecutive values; one scale per (group, channel) then has shape :func:`per_group_shape`.
    For a Dense kernel ``(in, out)`` with ``axis=-1`` these are groups of ``group_size`` input
    rows per output column (the GPTQ / AWQ layout); ``group_size = M`` is per-channel.

    Example:
      >>> to_groups(jnp.zeros((8, 3)), axis=-1, group_size=4).shape
      (2, 4, 3)
    """
    x = jnp.asarray(x)
    ax, m, c = _group_dims(x.shape, axis, group_size)
    return jnp.moveaxis(x, ax, -1).reshape(m // group_size, group_size, c)


def from_groups(xg, shape, *, axis: int) -> jax.Array:
    """Inverse of :func:`to_groups`: back to ``shape`` with the channel axis at ``axis``.

    Example:
      >>> x = jnp.arange(24.0).reshape(2, 4, 3)
      >>> bool(jnp.all(from_groups(to_groups(x, axis=1, group_size=2), x.shape, axis=1) == x))
      True
    """
    shape = tuple(int(s) for s in shape)
    ax = check_axis(len(shape), axis, "per-group quantization")
    xg = jnp.asarray(xg)
    if xg.size != math.prod(shape):
        raise ValueError(
            f"grouped array of shape {xg.shape} does not hold a tensor of shape {shape}"
        )
    moved = tuple(s for i, s in enumerate(shape) if i != ax) + (shape[ax],)
    return jnp.moveaxis(jnp.reshape(xg, moved), -1, ax)


# ----------------------------------------------------------------------------- checks


def _check_zero_point(zero_point, x_shape, qmin: int, qmax: int) -> jax.Array:
    z = jnp.asarray(zero_point)
    if not (jnp.issubdtype(z.dtype, jnp.integer) or jnp.issubdtype(z.dtype, jnp.floating)):
        raise TypeError(f"zero_point must be an integer array, got dtype {z.dtype}")
    check_broadcast("zero_point", z, x_shape)
    v = concrete(zero_point)
    if v is not None:
        v = np.asarray(v, np.float64)
        bad = ~(np.isfinite(v) & (v == np.round(v)) & (v >= qmin) & (v <= qmax))
        if np.any(bad):
            raise ValueError(
                f"zero_point must be an integer in [qmin, qmax] = [{qmin}, {qmax}], got values "
                f"{v[bad].ravel()[:4].tolist()}"
            )
    return z


def _check_rounding(rounding, key) -> None:
    if rounding not in ROUNDING_MODES:
        raise ValueError(f"rounding must be one of {ROUNDING_MODES}, got {rounding!r}")
    if rounding == "stochastic" and key is None:
        raise ValueError("rounding='stochastic' needs a PRNG key: pass key=jax.random.key(...)")
    if rounding == "stochastic":
        check_key(key)


def _validity(s, z, qmin: int, qmax: int):
    """Elementwise validity of (traced) parameters: scale finite > 0, integer zp in range."""
    zf = z.astype(s.dtype)
    return (s > 0) & jnp.isfinite(s) & (zf == jnp.round(zf)) & (zf >= qmin) & (zf <= qmax)


# ----------------------------------------------------------------------------- core


def _round(v, rounding: str, key):
    """``round(v)`` for the given mode (``v`` float; integers come back as floats)."""
    if rounding == "nearest":
        return jnp.round(v)  # half to even
    if rounding == "floor":
        return jnp.floor(v)
    if rounding == "ceil":
        return jnp.ceil(v)
    # Stochastic: floor(v) + 1{u < frac(v)}, u ~ U[0, 1): up with probability frac(v), so
    # E[round(v)] = v. Same law as floor(v + u), without the rounding error of v + u.
    lo = jnp.floor(v)
    u = jax.random.uniform(key, v.shape, v.dtype)
    return lo + (u < v - lo).astype(v.dtype)


def _prepare(x, scale, zero_point, qmin, qmax, rounding, key):
    """Validated, dtype-aligned inputs shared by quantize and int_fake_quant."""
    x = check_x(x)
    qmin, qmax = check_qrange(qmin, qmax)
    _check_rounding(rounding, key)
    s = check_scale(scale, x.shape)
    z = _check_zero_point(zero_point, x.shape, qmin, qmax)
    known = concrete(scale) is not None and concrete(zero_point) is not None
    # Compute in at least float32 (codes up to 2^16 must be exact), in x's dtype if wider;
    # the scale carries the compute dtype into the compiled program.
    ct = compute_dtype(x.dtype, s.dtype)
    return x, s.astype(ct), z, qmin, qmax, ct, known


def _codes(x, s, z, qmin, qmax, rounding, key):
    """Float codes ``clip(round(x / s) + zp, qmin, qmax)`` and their pieces (no gradient)."""
    v = divide(x, s)
    r = _round(v, rounding, key)
    code = r + z.astype(v.dtype)
    return v, r, code, jnp.clip(code, qmin, qmax)


def int_fake_quant(
    x,
    scale,
    zero_point,
    *,
    qmin: int,
    qmax: int,
    rounding: str = "nearest",
    key=None,
    scale_grad: str = "none",
    grad_scale=1.0,
) -> jax.Array:
    """Integer quantize-dequantize with a straight-through gradient masked to the clip range.

    Forward (white paper, Nagel et al. 2021, eq. 2-4; PyTorch ``fake_quantize_per_channel_affine``
    but dividing by the scale)::

        code = clip(round(x / scale) + zero_point, qmin, qmax)
        y    = (code - zero_point) * scale

    ``round``: ``"nearest"`` half to even (``jnp.round``), ``"stochastic"``
    ``floor(v) + 1{u < v - floor(v)}``, ``u ~ U[0, 1)`` from ``key`` (equal in law to
    ``floor(v + u)``; ``E[y] = x`` inside the range, and ``y`` is always one of the two grid
    points around ``x``), ``"floor"`` or ``"ceil"``. ``key`` is unused for the other modes.

    Gradients (straight-through estimator, exact also under ``jit`` / ``vmap``)::

        dy/dx = 1  if qmin <= round(x / scale) + zero_point <= qmax,  else 0
        dy/ds = 0                                   scale_grad="none" (scale is a constant)
        dy/ds = g * (round(x/s) - x/s)              scale_grad="lsq", inside the range,
                g * (qmin - zp), g * (qmax - zp)    clipped low / high

    ``scale_grad="lsq"`` is LSQ, learned step size quantization (Esser et al. 2020, "Learned
    Step Size Quantization", ICLR 2020, eq. 3): the step size ``s`` is trained with the
    gradient above, multiplied by the gradient scale ``g = grad_scale`` (default 1: unscaled;
    LSQ uses ``g = 1 / sqrt(N * qmax)``, :func:`lsq_grad_scale`, with ``N`` the number of values
    sharing a scale). The forward value is the same for both ``scale_grad`` settings, bit for
    bit. ``zero_point`` never gets a gradient.

    Idempotence: with ``"nearest"``, ``q(q(x)) == q(x)`` bit for bit for any scale. With
    ``"floor"`` / ``"ceil"`` / ``"stochastic"`` that holds when grid values divide back
    exactly (e.g. power-of-two scales); otherwise ``fl(k * s) / s`` can land one ulp off the
    integer ``k`` and floor / ceil move it to the next grid point.

    Args:
      x: float array. Computed in float32 or wider; the result has the dtype of ``x``.
      scale: positive finite scale, a scalar or an array of the rank of ``x`` broadcasting
        against it (see :func:`per_channel_shape`, :func:`to_groups`).
      zero_point: integer-valued zero point in ``[qmin, qmax]``, same shapes as ``scale``.
      qmin, qmax: integer code range (Python ints, ``qmin < qmax``, within ``[-2^24, 2^24]``),
        e.g. :func:`int_range`.
      rounding: one of ``ROUNDING_MODES``.
      key: PRNG key, required for ``rounding="stochastic"``.
      scale_grad: ``"none"`` or ``"lsq"``.
      grad_scale: LSQ gradient scale ``g`` (float or array), used with ``scale_grad="lsq"``.

    Returns:
      Array with the shape and dtype of ``x``; NaN where ``x`` is NaN (and, under tracing,
      where the parameters are invalid); ``+-inf`` saturate to the end codes.

    Example:
      >>> int_fake_quant(jnp.array([0.3, 0.75, -2.0]), 0.5, 0, qmin=-2, qmax=1)  # 1.5 -> 2 -> 1
      Array([ 0.5,  0.5, -1. ], dtype=float32)
      >>> f = lambda s: jnp.sum(int_fake_quant(jnp.array([0.3, 2.0]), s, 0, qmin=-2, qmax=1,
      ...                                      scale_grad="lsq", grad_scale=0.5))
      >>> round(float(jax.grad(f)(0.5)), 6)  # 0.5 * ((round(0.6) - 0.6) + (qmax - 0))
      0.7
    """
    if scale_grad not in SCALE_GRADS:
        raise ValueError(f"scale_grad must be one of {SCALE_GRADS}, got {scale_grad!r}")
    x, s, z, qmin, qmax, ct, known = _prepare(x, scale, zero_point, qmin, qmax, rounding, key)
    g = jnp.asarray(grad_scale, ct) if scale_grad == "lsq" else None
    key = key if rounding == "stochastic" else None
    return _fake_quant_jit(x, s, z, key, g, qmin, qmax, rounding=rounding, check=not known)


def lsq_grad_scale(num_elements: int, qmax: float) -> float:
    """LSQ gradient scale ``g = 1 / sqrt(N * qmax)`` (Esser et al. 2020, section 2.2).

    ``N`` is the number of values that share one scale (the whole tensor per-tensor, one
    channel per-channel, one group per-group) and ``qmax`` the largest positive code (for a
    floating-point format, its largest finite value). Pass it as ``grad_scale`` of
    :func:`int_fake_quant` / ``float_fake_quant`` with ``scale_grad="lsq"``.

    Example:
      >>> lsq_grad_scale(64, 1)
      0.125
    """
    if not (is_int(num_elements) and num_elements >= 1) or not qmax > 0:
        raise ValueError(
            f"lsq_grad_scale needs num_elements >= 1 and qmax > 0, got {num_elements}, {qmax}"
        )
    return 1.0 / math.sqrt(int(num_elements) * float(qmax))


# One compiled program per shape and rounding mode, also for eager calls (qmin / qmax are
# traced: a bit-width sweep does not recompile); inlined under an outer jit.
@functools.partial(jax.jit, static_argnames=("rounding", "check"))
def _fake_quant_jit(x, s, z, key, grad_scale, qmin, qmax, *, rounding, check):
    xc = x.astype(s.dtype)
    xs, ss = jax.lax.stop_gradient(xc), jax.lax.stop_gradient(s)
    v, r, code, c = _codes(xs, ss, z, qmin, qmax, rounding, key)
    zf = z.astype(s.dtype)
    y = (c - zf) * ss
    if check:  # traced parameters could not be validated eagerly
        y = jnp.where(_validity(ss, z, qmin, qmax), y, jnp.nan)
    inside = (code >= qmin) & (code <= qmax)
    if grad_scale is not None:  # scale_grad="lsq"
        factor = jnp.where(inside, r - v, c - zf) * jax.lax.stop_gradient(grad_scale)
        y = ste_lsq(y, xc, s, inside, factor)
    else:
        y = ste(y, xc, inside)
    return y.astype(x.dtype)


def quantize(
    x, scale, zero_point, *, qmin: int, qmax: int, rounding: str = "nearest", key=None
) -> jax.Array:
    """Integer codes ``clip(round(x / scale) + zero_point, qmin, qmax)``.

    Same arguments, rounding and validation as :func:`int_fake_quant`, and the same
    operations: ``int_fake_quant(x, s, z, ...) == dequantize(quantize(x, s, z, ...), s, z,
    dtype=x.dtype)`` bit for bit. Codes carry no gradient. ``+-inf`` map to the end codes;
    NaN inputs give unspecified codes (an integer has no NaN).

    Returns:
      Codes with the shape of ``x`` in the smallest integer dtype holding ``[qmin, qmax]``
      (:func:`code_dtype`: int8 / uint8 / int16 / uint16 / int32).

    Example:
      >>> quantize(jnp.array([0.3, 0.75, -2.0]), 0.5, 0, qmin=-2, qmax=1)
      Array([ 1,  1, -2], dtype=int8)
    """
    x, s, z, qmin, qmax, _, _ = _prepare(x, scale, zero_point, qmin, qmax, rounding, key)
    key = key if rounding == "stochastic" else None
    return _quantize_jit(x, s, z, key, qmin, qmax, rounding=rounding, dtype=code_dtype(qmin, qmax))


@functools.partial(jax.jit, static_argnames=("rounding", "dtype"))
def _quantize_jit(x, s, z, key, qmin, qmax, *, rounding, dtype):
    xs = jax.lax.stop_gradient(x.astype(s.dtype))
    _, _, _, c = _codes(xs, jax.lax.stop_gradient(s), z, qmin, qmax, rounding, key)
    return c.astype(dtype)


def dequantize(
    codes, scale, zero_point, *, dtype=None, qmin: int | None = None, qmax: int | None = None
) -> jax.Array:
    """Real values ``(codes - zero_point) * scale`` of integer codes.

    Args:
      codes: integer array (e.g. from :func:`quantize`).
      scale: float scale broadcasting against ``codes`` (scalar or same rank).
      zero_point: integer zero point broadcasting against ``codes``.
      dtype: result dtype; default the scale's dtype, at least float32.
      qmin, qmax: the code range (default: the range of the codes' integer dtype). Where
        concrete, ``scale`` must be finite and > 0 and ``zero_point`` an integer in
        ``[qmin, qmax]``, as in :func:`int_fake_quant`.

    Returns:
      Float array with the shape of ``codes``. The product is computed in the wider of
      ``dtype`` and the scale's dtype (at least float32) and cast to ``dtype``, like
      :func:`int_fake_quant`.

    Example:
      >>> dequantize(jnp.array([1, 1, -2], jnp.int8), 0.5, 0)
      Array([ 0.5,  0.5, -1. ], dtype=float32)
    """
    codes = jnp.asarray(codes)
    if not jnp.issubdtype(codes.dtype, jnp.integer):
        raise TypeError(f"codes must be an integer array, got dtype {codes.dtype}")
    s = jnp.asarray(scale)
    if not jnp.issubdtype(s.dtype, jnp.floating):
        raise TypeError(f"scale must be a floating-point array, got dtype {s.dtype}")
    check_scale(scale, codes.shape)
    if qmin is None and qmax is None:
        info = np.iinfo(codes.dtype)
        qmin, qmax = max(int(info.min), -MAX_CODE), min(int(info.max), MAX_CODE)
    qmin, qmax = check_qrange(qmin, qmax)
    z = _check_zero_point(zero_point, codes.shape, qmin, qmax)
    out = compute_dtype(s.dtype) if dtype is None else jnp.dtype(dtype)
    if not jnp.issubdtype(out, jnp.floating):
        raise TypeError(f"dtype must be a floating-point dtype, got {out}")
    ct = compute_dtype(out, s.dtype)
    y = (codes.astype(ct) - z.astype(ct)) * s.astype(ct)
    return y.astype(out)
