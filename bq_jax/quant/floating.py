"""Floating-point fake quantization (FP8 / FP4 and any ``(exp_bits, man_bits)`` grid).

::

    y = cast(clip(x / scale, -max, max), fmt) * scale

with the cast rounding to nearest, ties to even, and saturating because of the clip (OCP 8-bit
floating point specification; Micikevicius et al. 2022, "FP8 Formats for Deep Learning"; OCP
Microscaling (MX) v1.0 for FP4). ``ml_dtypes`` is the reference, bit for bit.

Formats:

* ``"e4m3"``: ``ml_dtypes.float8_e4m3fn`` (bias 7, no inf, NaN = S.1111.111), max 448.
* ``"e5m2"``: ``ml_dtypes.float8_e5m2`` (IEEE: bias 15, inf and NaN), max 57344.
* ``"e2m1"``: ``ml_dtypes.float4_e2m1fn`` (bias 1, no inf, no NaN), max 6.
* ``(exp_bits, man_bits)`` with ``1 <= exp_bits <= 7`` and ``0 <= man_bits <= 23``: an IEEE-like
  grid (bias ``2^(e-1) - 1``, subnormals below ``2^(1 - bias)``) in which every bit pattern is
  finite (no inf, no NaN encodings, like MX FP4 / FP6), so ``max = 2^(2^e - 1 - bias) *
  (2 - 2^-m)``. ``(2, 1)`` is ``float4_e2m1fn`` and ``(3, 2)`` / ``(2, 3)`` are
  ``float6_e3m2fn`` / ``float6_e2m3fn`` exactly; ``(4, 3)`` and ``(5, 2)`` share the grid of
  ``float8_e4m3fn`` / ``float8_e5m2`` but reach one binade step further (max 480 and 114688
  instead of 448 and 57344, whose top codes those dtypes spend on NaN / inf). The exponent is
  limited to 7 bits so that the grid, its max and its smallest subnormal are normal float32
  numbers.

Named formats are cast with ``astype`` to the ``ml_dtypes`` dtype; tuples are rounded
arithmetically by :func:`float_round` (exponent from ``frexp``, mantissa rounded half to even
with ``jnp.round``, exact power-of-two rescaling with ``ldexp``), which gives the same bits as
``ml_dtypes`` wherever a dtype with that grid exists.

Float32 inputs below ``finfo(float32).tiny`` (subnormals) are flushed to zero by XLA on CPU; no
format here has values that small, so only the sign of a zero result can depend on it.
"""

from __future__ import annotations

import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np

from bq_jax.quant.common import (
    SCALE_GRADS,
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
    "FLOAT_FORMATS",
    "float_fake_quant",
    "float_format_max",
    "float_format_values",
    "float_round",
]

# Named floating-point formats as (exponent bits, mantissa bits): OCP FP8 and MX FP4.
FLOAT_FORMATS = {"e4m3": (4, 3), "e5m2": (5, 2), "e2m1": (2, 1)}
# The ml_dtypes dtype of each named format and its largest finite value.
_NAMED_DTYPES = {"e4m3": jnp.float8_e4m3fn, "e5m2": jnp.float8_e5m2, "e2m1": jnp.float4_e2m1fn}
_NAMED_MAX = {"e4m3": 448.0, "e5m2": 57344.0, "e2m1": 6.0}
_EXP_BITS = (1, 7)
_MAN_BITS = (0, 23)


def _format_error(fmt) -> ValueError:
    return ValueError(
        f"fmt must be one of {tuple(FLOAT_FORMATS)} or a tuple (exp_bits, man_bits) of ints with "
        f"{_EXP_BITS[0]} <= exp_bits <= {_EXP_BITS[1]} and "
        f"{_MAN_BITS[0]} <= man_bits <= {_MAN_BITS[1]}, got {fmt!r}"
    )


def _parse(fmt) -> tuple[str | None, int, int]:
    """``(name or None, exp_bits, man_bits)`` of a format, validated."""
    if isinstance(fmt, str):
        if fmt not in FLOAT_FORMATS:
            raise _format_error(fmt)
        return (fmt, *FLOAT_FORMATS[fmt])
    if isinstance(fmt, tuple | list) and len(fmt) == 2 and all(is_int(b) for b in fmt):
        e, m = int(fmt[0]), int(fmt[1])
        if _EXP_BITS[0] <= e <= _EXP_BITS[1] and _MAN_BITS[0] <= m <= _MAN_BITS[1]:
            return None, e, m
    raise _format_error(fmt)


def _bias(e: int) -> int:
    return 2 ** (e - 1) - 1


def float_format_max(fmt) -> float:
    """Largest finite value of a format: 448 (e4m3), 57344 (e5m2), 6 (e2m1).

    A tuple ``(e, m)`` (every bit pattern finite) has ``max = 2^(2^e - 1 - bias) * (2 - 2^-m)``
    with ``bias = 2^(e-1) - 1``.

    Example:
      >>> float_format_max("e4m3"), float_format_max((4, 3)), float_format_max((3, 2))
      (448.0, 480.0, 28.0)
    """
    name, e, m = _parse(fmt)
    if name is not None:
        return _NAMED_MAX[name]
    return float(2.0 ** (2**e - 1 - _bias(e)) * (2.0 - 2.0**-m))


def float_format_values(fmt) -> np.ndarray:
    """All non-negative finite values of a format, ascending (float64), from its bit fields.

    ``value = (mf / 2^m) * 2^(1 - bias)`` for exponent field ``ef = 0`` (subnormals, and 0) and
    ``(1 + mf / 2^m) * 2^(ef - bias)`` otherwise, kept up to :func:`float_format_max`.
    Refused (ValueError) above ``2^20`` values.

    Example:
      >>> float_format_values("e2m1").tolist()
      [0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0]
    """
    _, e, m = _parse(fmt)
    if e + m > 20:
        raise ValueError(
            f"fmt={fmt!r} has 2^{e + m} values; float_format_values enumerates <= 2^20"
        )
    bias, vmax = _bias(e), float_format_max(fmt)
    vals = []
    for ef, mf in itertools.product(range(2**e), range(2**m)):
        frac = mf / 2.0**m
        v = frac * 2.0 ** (1 - bias) if ef == 0 else (1.0 + frac) * 2.0 ** (ef - bias)
        if v <= vmax:
            vals.append(v)
    return np.array(sorted(vals), np.float64)


def float_round(v, exp_bits: int, man_bits: int) -> jax.Array:
    """Rounds ``v`` to the grid of an ``(exp_bits, man_bits)`` format, half to even, no clip.

    With ``bias = 2^(e-1) - 1`` and ``emin = 1 - bias`` (subnormals below ``2^emin`` share
    the spacing of the lowest binade)::

        E = max(floor(log2 |v|), emin)                (floor(log2|v|) from frexp)
        y = round_half_even(v * 2^(m - E)) * 2^(E - m)

    The rescaling is exact (``ldexp``), so the only rounding is ``jnp.round``. A value above
    the top binade keeps that binade's spacing: clip to the format's max first (as
    :func:`float_fake_quant` does) for a saturating cast. NaN stays NaN.

    Args:
      v: float array.
      exp_bits, man_bits: the grid (1..7 and 0..23).

    Returns:
      Array of the shape and dtype of ``v``.

    Example:
      >>> float_round(jnp.array([0.2, 0.25, 2.5, 5.0]), 2, 1)  # e2m1 grid
      Array([0., 0., 2., 4.], dtype=float32)
    """
    _, e, m = _parse((exp_bits, man_bits))
    v = jnp.asarray(v)
    emin = 1 - _bias(e)
    _, k = jnp.frexp(v)  # v = f * 2^k, 0.5 <= |f| < 1, so floor(log2|v|) = k - 1
    shift = m - jnp.maximum(k - 1, emin)
    return jnp.ldexp(jnp.round(jnp.ldexp(v, shift)), -shift)


def float_fake_quant(x, fmt, *, scale=1.0, scale_grad: str = "none", grad_scale=1.0) -> jax.Array:
    """Floating-point quantize-dequantize with a straight-through gradient.

    ::

        y = cast(clip(x / scale, -max, max), fmt) * scale        (round half to even)
        dy/dx = 1 if |x / scale| <= max  else 0                 (max itself is inside)
        dy/ds = 0                                  scale_grad="none" (scale is a constant)
        dy/ds = g * (Q(x/s) - x/s)                 scale_grad="lsq", inside the range,
                g * Q(x/s) = +-g * max             clipped

    with ``Q(v) = cast(clip(v, -max, max), fmt)``: LSQ's step-size gradient (Esser et al.
    2020, eq. 3) applied to the floating-point grid, scaled by ``g = grad_scale`` (LSQ's
    ``1 / sqrt(N * max)``, ``lsq_grad_scale(N, float_format_max(fmt))``). Bit-exact with
    ``ml_dtypes`` casts (see the module docstring for the formats); the forward value does not
    depend on ``scale_grad``. NaN inputs stay NaN (also for ``e2m1``, which has no NaN
    encoding); ``+-inf`` saturate to ``+-max * scale``.

    Args:
      x: float array; computed in float32 or wider, returned in the dtype of ``x``.
      fmt: ``"e4m3"``, ``"e5m2"``, ``"e2m1"`` or ``(exp_bits, man_bits)``.
      scale: positive finite scale, a scalar or an array of the rank of ``x`` broadcasting
        against it (per-tensor / per-channel / per-group as for ``int_fake_quant``). Checked
        when concrete; under tracing an invalid scale gives NaN.
      scale_grad: ``"none"`` or ``"lsq"``.
      grad_scale: LSQ gradient scale ``g`` (float or array), used with ``scale_grad="lsq"``.

    Returns:
      Array with the shape and dtype of ``x``.

    Example:
      >>> float_fake_quant(jnp.array([0.3, 100.0, 1000.0]), "e4m3")
      Array([3.125e-01, 9.600e+01, 4.480e+02], dtype=float32)
      >>> f = lambda s: jnp.sum(float_fake_quant(jnp.array([0.3, 20.0]), "e2m1", scale=s,
      ...                                        scale_grad="lsq"))
      >>> round(float(jax.grad(f)(1.0)), 6)  # (0.5 - 0.3) + 6
      6.2
    """
    if scale_grad not in SCALE_GRADS:
        raise ValueError(f"scale_grad must be one of {SCALE_GRADS}, got {scale_grad!r}")
    name, e, m = _parse(fmt)
    x = check_x(x)
    s = check_scale(scale, x.shape)
    ct = compute_dtype(x.dtype, s.dtype)
    g = jnp.asarray(grad_scale, ct) if scale_grad == "lsq" else None
    return _float_fake_quant_jit(
        x, s.astype(ct), g, name=name, e=e, m=m, check=concrete(scale) is None
    )


# One compiled program per format (also for eager calls); inlined under an outer jit.
@functools.partial(jax.jit, static_argnames=("name", "e", "m", "check"))
def _float_fake_quant_jit(x, s, grad_scale, *, name, e, m, check):
    fmax = float_format_max(name if name is not None else (e, m))
    xc = x.astype(s.dtype)
    xs, ss = jax.lax.stop_gradient(xc), jax.lax.stop_gradient(s)
    v = divide(xs, ss)
    vc = jnp.clip(v, -fmax, fmax)
    if name is not None:
        q = vc.astype(_NAMED_DTYPES[name]).astype(s.dtype)
        if name == "e2m1":  # no NaN encoding: keep NaN visible
            q = jnp.where(jnp.isnan(vc), vc, q)
    else:
        q = float_round(vc, e, m)
    y = q * ss
    if check:  # a traced scale could not be validated eagerly
        y = jnp.where((ss > 0) & jnp.isfinite(ss), y, jnp.nan)
    inside = jnp.abs(v) <= fmax
    if grad_scale is not None:  # scale_grad="lsq"
        factor = jnp.where(inside, q - v, q) * jax.lax.stop_gradient(grad_scale)
        y = ste_lsq(y, xc, s, inside, factor)
    else:
        y = ste(y, xc, inside)
    return y.astype(x.dtype)
