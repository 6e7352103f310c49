"""Internals shared by the quantizers of ``bq_jax.quant`` (not part of the public API).

Argument checks, the compute dtype, the IEEE division and the straight-through estimators used
by :mod:`~bq_jax.quant.integer`, :mod:`~bq_jax.quant.floating`, :mod:`~bq_jax.quant.ranges`
and :mod:`~bq_jax.quant.config`. Like the rest of ``bq_jax.quant`` it imports nothing else of
bq_jax.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "MAX_CODE",
    "SCALE_GRADS",
    "check_axis",
    "check_broadcast",
    "check_finite",
    "check_key",
    "check_qrange",
    "check_scale",
    "check_x",
    "compute_dtype",
    "concrete",
    "divide",
    "is_int",
    "is_real",
    "scale_floor",
    "ste",
    "ste_lsq",
]

# Accepted values of `scale_grad` of the quantizers: a constant scale, or LSQ's learned step.
SCALE_GRADS = ("none", "lsq")
# Largest |code|: every integer up to 2^24 is exact in float32, the compute dtype.
MAX_CODE = 2**24


def is_int(v) -> bool:
    """True for Python and NumPy integers (``bool`` excluded)."""
    return isinstance(v, int | np.integer) and not isinstance(v, bool | np.bool_)


def is_real(v) -> bool:
    """True for Python and NumPy integers and floats (``bool`` excluded)."""
    return isinstance(v, int | float | np.integer | np.floating) and not isinstance(
        v, bool | np.bool_
    )


def compute_dtype(*dtypes) -> np.dtype:
    """The dtype quantizers compute in: the widest of ``dtypes``, at least float32.

    Explicit (no implicit promotion): bfloat16 / float16 / float8 inputs compute in float32,
    float64 inputs in float64.

    Example:
      >>> compute_dtype(jnp.bfloat16), compute_dtype(jnp.float32, jnp.float64)
      (dtype('float32'), dtype('float64'))
    """
    widest = max((np.dtype(d) for d in dtypes), key=lambda d: d.itemsize)
    return widest if widest.itemsize > 4 else np.dtype(jnp.float32)


def scale_floor(dtype) -> float:
    """Smallest normal number of ``dtype``: the scale of a zero range.

    It is finite and positive, so ``0 / scale = 0`` exactly and nothing is NaN or inf.
    """
    return float(jnp.finfo(dtype).tiny)


def concrete(a) -> np.ndarray | None:
    """The numpy value of ``a``, or None when it is traced (under jit / vmap / grad)."""
    if isinstance(a, jax.core.Tracer):
        return None
    return np.asarray(a)


def check_x(x, name: str = "x") -> jax.Array:
    """``x`` as a jax array, which must be floating point."""
    x = jnp.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise TypeError(f"{name} must be a floating-point array, got dtype {x.dtype}")
    return x


def check_finite(x, name: str = "x", *, empty_ok: bool = False) -> None:
    """Refuses an empty ``x`` and, where ``x`` is concrete, NaN or inf values.

    One NaN or inf makes a range (and so the scale of the whole tensor or channel) NaN or
    inf, which wipes every value; the error names the tensor and counts the bad values.
    Traced values (under jit / vmap) cannot be checked and pass.
    """
    if not empty_ok and 0 in jnp.shape(x):
        raise ValueError(f"{name} is empty (shape {tuple(jnp.shape(x))}); a range needs values")
    v = concrete(x)
    if v is None:
        return
    finite = np.isfinite(v)
    if not finite.all():
        n_nan = int(np.isnan(v).sum())
        n_inf = int((~finite).sum()) - n_nan
        first = tuple(int(i) for i in np.argwhere(~finite)[0])
        raise ValueError(
            f"{name} holds {n_nan} NaN and {n_inf} inf values (first at index {first}); "
            "quantization ranges need finite values: replace or mask them first"
        )


def check_key(key, name: str = "key") -> None:
    """Refuses anything but a PRNG key (``jax.random.key(...)`` or ``jax.random.PRNGKey(...)``)."""
    k = key if isinstance(key, jax.Array) else None
    ok = k is not None and (
        jnp.issubdtype(k.dtype, jax.dtypes.prng_key)
        or (k.dtype == jnp.uint32 and k.ndim >= 1 and k.shape[-1] == 2)
    )
    if not ok:
        shown = f"{type(key).__name__} {key!r}" if not hasattr(key, "dtype") else repr(key)
        raise TypeError(
            f"{name} must be a PRNG key from jax.random.key(seed) or jax.random.PRNGKey(seed), "
            f"got {shown[:80]}"
        )


def check_qrange(qmin, qmax) -> tuple[int, int]:
    """``(qmin, qmax)`` as Python ints with ``qmin < qmax`` inside ``[-2^24, 2^24]``."""
    for name, v in (("qmin", qmin), ("qmax", qmax)):
        if not is_int(v):
            raise TypeError(f"{name} must be a Python int, got {v!r}")
    qmin, qmax = int(qmin), int(qmax)
    if qmin >= qmax:
        raise ValueError(f"need qmin < qmax, got qmin={qmin}, qmax={qmax}")
    if qmin < -MAX_CODE or qmax > MAX_CODE:
        raise ValueError(
            f"qmin, qmax must lie in [-2^24, 2^24] (codes exact in float32), got [{qmin}, {qmax}]"
        )
    return qmin, qmax


def check_axis(ndim: int, axis, what: str) -> int:
    """``axis`` normalised to ``[0, ndim)``; ``what`` names the use in the error message."""
    if not is_int(axis) or ndim == 0 or not -ndim <= axis < ndim:
        raise ValueError(
            f"axis={axis!r} is out of range for {what} of a tensor of rank {ndim} "
            f"(accepted: an int with -{ndim} <= axis < {ndim}, rank >= 1)"
        )
    return int(axis) % ndim


def check_broadcast(name: str, a, x_shape) -> None:
    """Refuses ``a`` unless it is a scalar or has the rank of ``x`` and broadcasts against it."""
    shape = jnp.shape(a)
    ok = len(shape) in (0, len(x_shape))
    if ok:
        try:
            ok = np.broadcast_shapes(shape, x_shape) == tuple(x_shape)
        except ValueError:
            ok = False
    if not ok:
        raise ValueError(
            f"{name} of shape {shape} must be a scalar or have the rank of x and broadcast "
            f"against x.shape={tuple(x_shape)} (per-channel: reshape to "
            f"per_channel_shape(x.shape, axis); per-group: use to_groups / per_group_shape)"
        )


def check_scale(scale, x_shape, *, name: str = "scale") -> jax.Array:
    """A float scale broadcasting against ``x``; finite and > 0 where its value is concrete."""
    s = jnp.asarray(scale)
    if jnp.issubdtype(s.dtype, jnp.integer):
        s = s.astype(jnp.float32)
    elif not jnp.issubdtype(s.dtype, jnp.floating):
        raise TypeError(f"{name} must be a real number or float array, got dtype {s.dtype}")
    check_broadcast(name, s, x_shape)
    v = concrete(scale)
    if v is not None and not np.all(np.isfinite(v) & (v > 0)):
        bad = v[~(np.isfinite(v) & (v > 0))].ravel()[:4]
        raise ValueError(f"{name} must be finite and > 0 everywhere, got values {bad.tolist()}")
    return s


def divide(x, s):
    """``x / s`` as an IEEE division per element (correctly rounded, as numpy's).

    XLA's algebraic simplifier rewrites a division by a broadcast operand (a per-tensor or
    per-channel scale, also one that ``vmap`` broadcasts) into a multiplication by its
    reciprocal, which is off by one ulp for about a third of the inputs and so rounds some
    near-ties the other way. Dividing by ``where(isnan(x), 1, s)`` -- elementwise the same
    divisor wherever the result is not NaN anyway -- is not a broadcast, so the division stays
    a division; it still fuses into one loop.
    """
    return x / jnp.where(jnp.isnan(x), jnp.ones_like(s), s)


@jax.custom_jvp
def ste(y, x, x_mask):
    """Returns ``y``; its derivative is ``where(x_mask, dx, 0)`` (straight-through)."""
    del x, x_mask
    return y


@ste.defjvp
def _ste_jvp(primals, tangents):
    y, _, x_mask = primals
    _, dx, _ = tangents
    return y, jnp.where(x_mask, dx, jnp.zeros_like(dx))


@jax.custom_jvp
def ste_lsq(y, x, scale, x_mask, scale_factor):
    """Returns ``y``; its derivative is ``where(x_mask, dx, 0) + scale_factor * dscale``.

    The LSQ straight-through estimator (Esser et al. 2020): the quantizer passes the gradient
    of ``x`` inside the clip range and gives the scale the gradient ``scale_factor``.
    """
    del x, scale, x_mask, scale_factor
    return y


@ste_lsq.defjvp
def _ste_lsq_jvp(primals, tangents):
    y, _, _, x_mask, scale_factor = primals
    _, dx, dscale, _, _ = tangents
    return y, jnp.where(x_mask, dx, jnp.zeros_like(dx)) + scale_factor * dscale
