"""The quantizer interface PTQ uses: ``bq_jax.quant`` when it provides it, else a local copy.

PTQ needs ``QuantConfig``, ``compute_qparams``, ``fake_quant``, ``int_fake_quant`` and
``sqnr_db`` with the team-contract semantics. While ``bq_jax.quant`` does not (yet) export
one of them, the minimal implementation below (integer grids only, min-max / MSE /
percentile ranges, per-tensor or per-channel) stands in; each name resolves to the
``bq_jax.quant`` version as soon as it exists.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp

from bq_jax import quant as _q


@dataclasses.dataclass(frozen=True, kw_only=True)
class _QuantConfig:
    """Integer quantizer settings (stand-in for bq_jax.quant.QuantConfig)."""

    # Bit width (2-16).
    bits: int = 8
    # Symmetric signed grid (zero point 0) or asymmetric with integer zero point.
    symmetric: bool = True
    # "per_tensor" or "per_channel".
    granularity: str = "per_tensor"
    # Channel axis for per_channel.
    axis: int = -1
    # Unused here (learned rounding has its own); kept for interface parity.
    rounding: str = "nearest"
    # "minmax", "mse" or "percentile".
    range_method: str = "minmax"
    # Narrow symmetric range qmin = -qmax.
    narrow: bool = False
    # Only "int".
    fmt: str = "int"
    # Percentile for range_method="percentile".
    percentile: float = 99.99

    def __post_init__(self):
        if not (isinstance(self.bits, int) and 2 <= self.bits <= 16):
            raise ValueError(f"bits must be an int in [2, 16], got {self.bits!r}")
        if self.granularity not in ("per_tensor", "per_channel"):
            raise ValueError(
                f"granularity must be per_tensor|per_channel, got {self.granularity!r}"
            )
        if self.range_method not in ("minmax", "mse", "percentile"):
            raise ValueError(
                f"range_method must be minmax|mse|percentile, got {self.range_method!r}"
            )
        if self.fmt != "int":
            raise ValueError(f"fmt must be 'int', got {self.fmt!r}")


class _QParams(NamedTuple):
    scale: jax.Array
    zero_point: jax.Array
    qmin: int
    qmax: int


def _int_range(bits, symmetric, narrow):
    if symmetric:
        qmax = 2 ** (bits - 1) - 1
        return (-qmax if narrow else -qmax - 1), qmax
    return 0, 2**bits - 1


def _int_fake_quant(x, scale, zero_point, *, qmin, qmax, rounding="nearest", key=None):
    q = jnp.clip(jnp.round(x / scale) + zero_point, qmin, qmax)
    y = (q - zero_point) * scale
    inside = (jnp.round(x / scale) + zero_point >= qmin) & (
        jnp.round(x / scale) + zero_point <= qmax
    )
    return jnp.where(inside, x, jax.lax.stop_gradient(x)) + jax.lax.stop_gradient(y - x)


def _reduce_axes(x, config):
    if config.granularity == "per_tensor":
        return tuple(range(x.ndim))
    axis = config.axis % x.ndim
    return tuple(a for a in range(x.ndim) if a != axis)


def _qparams_from_range(lo, hi, config, qmin, qmax):
    tiny = jnp.finfo(jnp.float32).tiny
    if config.symmetric:
        scale = jnp.maximum(jnp.maximum(-lo, hi) / qmax, tiny)
        return scale, jnp.zeros_like(scale)
    lo, hi = jnp.minimum(lo, 0.0), jnp.maximum(hi, 0.0)
    scale = jnp.maximum((hi - lo) / (qmax - qmin), tiny)
    return scale, jnp.clip(jnp.round(qmin - lo / scale), qmin, qmax)


def _compute_qparams(x, config):
    x = jnp.asarray(x, jnp.float32)
    qmin, qmax = _int_range(config.bits, config.symmetric, config.narrow)
    axes = _reduce_axes(x, config)
    if config.range_method == "percentile":
        p = config.percentile
        lo = jnp.percentile(x, 100 - p, axis=axes, keepdims=True)
        hi = jnp.percentile(x, p, axis=axes, keepdims=True)
    else:
        lo = jnp.min(x, axis=axes, keepdims=True)
        hi = jnp.max(x, axis=axes, keepdims=True)
    scale, zp = _qparams_from_range(lo, hi, config, qmin, qmax)
    if config.range_method == "mse":
        best_s, best_z, best_e = scale, zp, None
        for r in jnp.linspace(0.3, 1.0, 36):
            s, z = _qparams_from_range(lo * r, hi * r, config, qmin, qmax)
            e = jnp.mean(
                (_int_fake_quant(x, s, z, qmin=qmin, qmax=qmax) - x) ** 2, axis=axes, keepdims=True
            )
            if best_e is None:
                best_s, best_z, best_e = s, z, e
            else:
                better = e < best_e
                best_s = jnp.where(better, s, best_s)
                best_z = jnp.where(better, z, best_z)
                best_e = jnp.minimum(e, best_e)
        scale, zp = best_s, best_z
    return _QParams(scale, zp, qmin, qmax)


def _fake_quant(x, config, *, key=None):
    qp = _compute_qparams(x, config)
    return _int_fake_quant(x, qp.scale, qp.zero_point, qmin=qp.qmin, qmax=qp.qmax).astype(x.dtype)


def _sqnr_db(x, xq):
    return 10.0 * jnp.log10(jnp.mean(x * x) / jnp.maximum(jnp.mean((x - xq) ** 2), 1e-30))


QuantConfig = getattr(_q, "QuantConfig", _QuantConfig)
compute_qparams = getattr(_q, "compute_qparams", _compute_qparams)
fake_quant = getattr(_q, "fake_quant", _fake_quant)
int_fake_quant = getattr(_q, "int_fake_quant", _int_fake_quant)
sqnr_db = getattr(_q, "sqnr_db", _sqnr_db)


def _broadcast_qparams(qparams, shape, config):
    def expand(a):
        a = jnp.asarray(a)
        return jnp.broadcast_to(a.reshape((1,) * (len(shape) - a.ndim) + a.shape), shape)

    return _QParams(expand(qparams.scale), expand(qparams.zero_point), qparams.qmin, qparams.qmax)


broadcast_qparams = getattr(_q, "broadcast_qparams", _broadcast_qparams)


@functools.partial(jax.jit, static_argnums=1)
def full_qparams(w, config):
    """``compute_qparams`` with scale / zero point expanded to ``w.shape`` (jitted)."""
    return broadcast_qparams(compute_qparams(w, config), tuple(w.shape), config)
