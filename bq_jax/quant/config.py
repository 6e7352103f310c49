"""Quantizer configuration: ``QuantConfig``, ``compute_qparams`` and one-call ``fake_quant``.

A :class:`QuantConfig` says *what* grid to use (bits, symmetric or not, integer or a
floating-point format), *where* the statistics are taken (per tensor, per channel, per group)
and *how* the range is set and values are rounded. It is frozen and hashable, so it can be a
static argument of ``jax.jit`` or be closed over::

    cfg = QuantConfig(bits=4, symmetric=True, granularity="per_channel", range_method="mse")
    wq = jax.jit(fake_quant, static_argnums=1)(w, cfg)

Granularity and shapes (``C`` = size of the channel axis ``axis``):

* ``per_tensor``: one scale; ``QParams`` leaves are scalars (shape ``()``).
* ``per_channel``: one scale per channel; leaves have the rank of ``x`` with size 1 everywhere
  but ``axis`` (``keepdims``), so they broadcast against ``x``.
* ``per_group``: per channel, the remaining ``M = x.size / C`` values of the channel (the
  other axes flattened in C order) are split into groups of ``group_size`` consecutive
  values, one scale per group. For a Dense kernel ``(in, out)`` with ``axis=-1`` that is
  groups of ``group_size`` input rows per output column (the GPTQ / AWQ layout); for an HWIO
  conv kernel, groups run along ``I`` first. ``group_size = M`` is ``per_channel``. The
  ``QParams`` leaves have shape ``(M // group_size, 1, C)`` and broadcast against the grouped
  view :func:`to_groups` ``(x)`` of shape ``(M // group_size, group_size, C)``;
  :func:`broadcast_qparams` expands any ``QParams`` to the full shape of ``x``.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp

from bq_jax.quant import ranges as range_setting
from bq_jax.quant.common import (
    check_axis,
    check_finite,
    check_key,
    check_x,
    compute_dtype,
    is_int,
    is_real,
    scale_floor,
)
from bq_jax.quant.floating import FLOAT_FORMATS, float_fake_quant, float_format_max
from bq_jax.quant.integer import (
    ROUNDING_MODES,
    dequantize,
    from_groups,
    int_fake_quant,
    int_range,
    per_channel_shape,
    per_group_shape,
    quantize,
    to_groups,
)
from bq_jax.quant.ranges import QParams

__all__ = [
    "GRANULARITIES",
    "QuantConfig",
    "broadcast_qparams",
    "compute_qparams",
    "dequantize_tensor",
    "fake_quant",
    "quantize_tensor",
]

GRANULARITIES = ("per_tensor", "per_channel", "per_group")
_FLOAT_RANGE_METHODS = ("minmax", "percentile", "mse")


@dataclasses.dataclass(frozen=True, kw_only=True)
class QuantConfig:
    """How to quantize one tensor (validated at construction; frozen and hashable).

    Scale conventions of symmetric signed ``b``-bit integer quantization (codes ``[qmin,
    qmax] = [-2^(b-1), 2^(b-1) - 1]``, ``code = clip(round_half_even(x / s), qmin, qmax)``):

    * ``scale_convention="qmax"`` (default): ``s = absmax / qmax`` -- the white paper (Nagel
      et al. 2021, eq. 2-4 with ``s = absmax / (2^(b-1) - 1)``); with ``narrow=True`` it is
      PyTorch's ``torch.ao.quantization`` observers on ``[-127, 127]`` (``MinMaxObserver``
      symmetric: ``s = 2 max(|x_min|, x_max) / (Q_max - Q_min)``).
    * ``scale_convention="qwix"``: ``s = absmax / (qmax + 0.5)`` -- google/qwix 0.1.8's
      symmetric integer quantization (``qarray.calibrate`` "absmax" per channel / tile,
      ``compute_scale_zero_point`` with ``numerics.get_symmetric_bound``; codes by
      ``jnp.round`` (half to even) and ``clip(-2^(b-1), 2^(b-1)-1)`` or the saturating
      ``astype(int8/int4)``). The same scale as PyTorch's observers on the full range
      ``[-128, 127]`` (``2 absmax / 255``; PyTorch floors the scale at ``eps`` where qwix
      puts 1) and as AQT's ``IntNumerics`` with ``preserve_zero=True,
      preserve_max_val=False`` (``absmax`` mapped to ``2^(b-1) - 0.5``; AQT then clips to
      the narrow ``+-(2^(b-1) - 1)``). ``+absmax`` lands on the tie ``qmax + 0.5`` and gives
      ``qmax``, ``-absmax`` gives ``qmin`` or ``qmin + 1`` (by the last ulp of ``s``); a
      scale below ``sqrt(finfo.tiny)`` (an all-zero slice) becomes 1. Needs ``fmt="int"``,
      ``bits`` in ``2..8`` (qwix's int2..int8), ``symmetric=True``, ``narrow=False``,
      ``range_method="minmax"`` (qwix's "absmax" calibration) and ``rounding="nearest"``;
      any granularity (qwix's per-channel ``channelwise_axes`` and subchannel ``tiled_axes``
      are ``per_channel`` and ``per_group``). No exact-constant rescaling (see
      :func:`compute_qparams`): a constant channel ``v`` gets ``|v| / (qmax + 0.5)`` as in
      qwix.

    The ``"qwix"`` scale and codes are the exactly rounded values of those formulas (IEEE
    division). qwix itself runs them through XLA, which may turn the divisions into
    multiplications by a rounded reciprocal (differently under ``jit`` and eagerly), so
    qwix's own codes can differ from these by one at near-ties (within a few ulps of ``x /
    s``); with power-of-two scales they agree everywhere (tests/test_quant_config.py).

    Example:
      >>> cfg = QuantConfig(bits=4, symmetric=True, granularity="per_channel")
      >>> fake_quant(jnp.array([[0.5, -1.2], [0.2, 2.0]]), cfg)  # scales 0.5/7 and 2/7
      Array([[ 0.5       , -1.1428572 ],
             [ 0.21428573,  2.        ]], dtype=float32)
    """

    # Bit width, 2..16 for "int"; for a floating-point fmt it must equal 1 + exp + man bits.
    bits: int = 8
    # True: signed codes, zero point 0, range +-max|x|. False: unsigned codes [0, 2^b - 1]
    # with an integer zero point, range [min, max] extended to include 0 (int only).
    symmetric: bool = True
    # "per_tensor" (one scale), "per_channel" (one per index of `axis`) or "per_group"
    # (per channel, groups of `group_size` values; see the module docstring).
    granularity: str = "per_tensor"
    # Channel axis for per_channel / per_group; negative counts from the end (our kernels put
    # the output channel last).
    axis: int = -1
    # Values per group for per_group (must divide x.size / C); must be None otherwise.
    group_size: int | None = None
    # "nearest" (half to even), "stochastic" (floor(x/s + u), u ~ U[0,1); needs a key),
    # "floor" or "ceil". Floating-point formats round to nearest even only.
    rounding: str = "nearest"
    # Range setting: "minmax", "percentile", "mse", "octav" or "gaussian" (see ranges.py);
    # floating-point formats accept "minmax", "percentile" and "mse".
    range_method: str = "minmax"
    # Percentile for range_method="percentile": of |x| if symmetric (0, 100], else the two
    # tails (100 - p, p) with p in [50, 100].
    percentile: float = 99.99
    # Number of candidate clip ratios k / n for range_method="mse".
    mse_candidates: int = 100
    # Narrow range: drop the lowest code (symmetric [-(2^(b-1)-1), 2^(b-1)-1]) (int only).
    narrow: bool = False
    # "int", or a floating-point format "e4m3", "e5m2", "e2m1" or (exp_bits, man_bits); for a
    # float format the scale maps the range max to the format's largest finite value.
    fmt: str | tuple[int, int] = "int"
    # How a symmetric integer range becomes a scale: "qmax" (scale = absmax / qmax, PyTorch /
    # white paper) or "qwix" (scale = absmax / (qmax + 0.5), google/qwix; see the class
    # docstring for what it requires).
    scale_convention: str = "qmax"

    def __post_init__(self):
        if self.fmt != "int":
            self._check_float_fmt()
        elif not (is_int(self.bits) and 2 <= self.bits <= 16):
            raise ValueError(f"bits must be an int in [2, 16] for fmt='int', got {self.bits!r}")
        for name in ("symmetric", "narrow"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be a bool, got {getattr(self, name)!r}")
        if self.granularity not in GRANULARITIES:
            raise ValueError(
                f"granularity must be one of {GRANULARITIES}, got {self.granularity!r}"
            )
        if not is_int(self.axis):
            raise ValueError(f"axis must be an int (the channel axis), got {self.axis!r}")
        if self.granularity == "per_group":
            if not (is_int(self.group_size) and self.group_size >= 1):
                raise ValueError(
                    f"group_size must be an int >= 1 for granularity='per_group', "
                    f"got {self.group_size!r}"
                )
        elif self.group_size is not None:
            raise ValueError(
                f"group_size is only used with granularity='per_group' (accepted: None for "
                f"{self.granularity!r}), got {self.group_size!r}"
            )
        if self.rounding not in ROUNDING_MODES:
            raise ValueError(f"rounding must be one of {ROUNDING_MODES}, got {self.rounding!r}")
        if self.range_method not in range_setting.RANGE_METHODS:
            raise ValueError(
                f"range_method must be one of {range_setting.RANGE_METHODS}, "
                f"got {self.range_method!r}"
            )
        p = self.percentile
        if not is_real(p):
            raise ValueError(f"percentile must be a float, got {p!r}")
        if self.symmetric and not 0.0 < p <= 100.0:
            raise ValueError(f"percentile must be in (0, 100] for a symmetric range, got {p}")
        if not self.symmetric and not 50.0 <= p <= 100.0:
            raise ValueError(
                f"percentile must be in [50, 100] for an asymmetric (two-sided) range, got {p}"
            )
        if not (is_int(self.mse_candidates) and self.mse_candidates >= 1):
            raise ValueError(f"mse_candidates must be an int >= 1, got {self.mse_candidates!r}")
        if self.scale_convention not in range_setting.SCALE_CONVENTIONS:
            raise ValueError(
                f"scale_convention must be one of {range_setting.SCALE_CONVENTIONS}, "
                f"got {self.scale_convention!r}"
            )
        if self.scale_convention == "qwix":
            self._check_qwix()

    def _check_qwix(self) -> None:
        need = {
            "fmt": ("int", "qwix's integer quantization"),
            "symmetric": (True, "qwix's 'absmax' (symmetric) calibration"),
            "narrow": (False, "qwix uses the full code range [-2^(b-1), 2^(b-1) - 1]"),
            "range_method": ("minmax", "qwix's 'absmax' calibration is the min-max range"),
            "rounding": ("nearest", "qwix rounds half to even"),
        }
        for name, (value, why) in need.items():
            if getattr(self, name) != value:
                raise ValueError(
                    f"scale_convention='qwix' needs {name}={value!r} ({why}), "
                    f"got {name}={getattr(self, name)!r}"
                )
        if not 2 <= self.bits <= 8:
            raise ValueError(
                f"scale_convention='qwix' needs bits in [2, 8] (qwix's int2 .. int8), "
                f"got bits={self.bits!r}"
            )

    def _check_float_fmt(self) -> None:
        fmt = self.fmt
        if not isinstance(fmt, str | tuple):
            raise ValueError(f"fmt must be 'int', a format name or a tuple, got {fmt!r}")
        try:
            float_format_max(fmt)  # validates the format
        except ValueError as err:
            raise ValueError(f"fmt must be 'int' or a floating-point format: {err}") from None
        exp, man = FLOAT_FORMATS[fmt] if isinstance(fmt, str) else fmt
        if self.bits != 1 + exp + man:
            raise ValueError(
                f"bits must equal the width 1 + {exp} + {man} = {1 + exp + man} of fmt={fmt!r}, "
                f"got bits={self.bits!r}"
            )
        if not self.symmetric:
            raise ValueError(f"symmetric must be True for floating-point fmt={fmt!r}")
        if self.narrow:
            raise ValueError(f"narrow must be False for floating-point fmt={fmt!r}")
        if self.rounding != "nearest":
            raise ValueError(
                f"rounding must be 'nearest' for floating-point fmt={fmt!r} (the cast rounds "
                f"half to even), got {self.rounding!r}"
            )
        if self.range_method not in _FLOAT_RANGE_METHODS:
            raise ValueError(
                f"range_method must be one of {_FLOAT_RANGE_METHODS} for floating-point "
                f"fmt={fmt!r} (octav and gaussian are derived for the integer grid), "
                f"got {self.range_method!r}"
            )

    @property
    def is_int(self) -> bool:
        """True for the integer grid (``fmt="int"``)."""
        return self.fmt == "int"

    @property
    def qrange(self) -> tuple[int, int]:
        """``(qmin, qmax)`` integer code range (``int_range(bits, symmetric, narrow)``)."""
        if not self.is_int:
            raise ValueError(f"fmt={self.fmt!r} has no integer code range")
        return int_range(self.bits, symmetric=self.symmetric, narrow=self.narrow)


# ----------------------------------------------------------------------------- grouping


def _view(x, config: QuantConfig) -> tuple[jax.Array, tuple[int, ...]]:
    """The tensor the statistics are taken on, and the axes they reduce over."""
    if config.granularity == "per_tensor":
        return x, tuple(range(x.ndim))
    if config.granularity == "per_channel":
        return x, range_setting.channel_reduce_axes(x.ndim, config.axis)
    return to_groups(x, axis=config.axis, group_size=config.group_size), (1,)


def _unview(y, x, config: QuantConfig) -> jax.Array:
    if config.granularity == "per_group":
        return from_groups(y, x.shape, axis=config.axis)
    return y


def _check_x(x, config) -> jax.Array:
    if not isinstance(config, QuantConfig):
        raise TypeError(f"config must be a QuantConfig, got {type(config).__name__}")
    return check_x(x)


# ----------------------------------------------------------------------------- qparams


def _clip_range(xv, axes, config: QuantConfig) -> range_setting.ClipRange:
    m, sym = config.range_method, config.symmetric
    if m == "minmax":
        return range_setting.minmax(xv, reduce_axes=axes, symmetric=sym)
    if m == "percentile":
        return range_setting.percentile(
            xv, float(config.percentile), reduce_axes=axes, symmetric=sym
        )
    if m == "mse":
        return range_setting.mse(
            xv,
            bits=config.bits,
            symmetric=sym,
            narrow=config.narrow,
            reduce_axes=axes,
            num_candidates=config.mse_candidates,
            fmt=config.fmt,
        )
    if m == "octav":
        return range_setting.octav(xv, bits=config.bits, symmetric=sym, reduce_axes=axes)
    return range_setting.gaussian(
        xv, bits=config.bits, symmetric=sym, narrow=config.narrow, reduce_axes=axes
    )


def compute_qparams(x, config: QuantConfig) -> QParams:
    """Scale and zero point of ``x`` under ``config`` (range method, then
    :func:`~bq_jax.quant.ranges.qparams_from_range`).

    Integer grids: ``QParams(scale, zero_point, qmin, qmax)`` with
    ``(qmin, qmax) = int_range(bits, symmetric, narrow)``; symmetric ``scale = absmax / qmax``,
    asymmetric ``scale = (hi - lo) / (qmax - qmin)``, ``zero_point = clip(round(qmin -
    lo / scale))`` after extending the range to include 0 (PyTorch convention). Floating-point
    formats: ``scale = absmax / fmt_max`` (the range max lands on the format's largest finite
    value), ``zero_point = 0`` and ``qmin = qmax = None`` (no integer codes).

    ``scale_convention="qwix"`` (symmetric int only): ``scale = absmax / (qmax + 0.5)``, a
    scale below ``sqrt(finfo.tiny)`` becomes 1, and constant slices are not rescaled (qwix's
    rules, see :class:`QuantConfig`); the rest of this paragraph is the ``"qmax"`` convention.

    Zero-range slices: an all-zero slice gets the scale floor ``finfo.tiny`` (finite, > 0;
    zeros stay exactly zero). A constant non-zero slice ``v`` (any range method) gets
    ``scale = |v| / 2^k`` with ``2^k`` the largest power of two ``<= qmax`` (symmetric),
    ``<= qmax - qmin`` (asymmetric, zero point ``qmin`` or ``qmax`` by the sign of ``v``) or
    ``<= fmt_max`` (float), so ``v`` is reproduced bit for bit.

    Args:
      x: float tensor.
      config: a :class:`QuantConfig`.

    Returns:
      ``QParams`` whose leaves have shape ``()`` (per_tensor), the rank of ``x`` with size 1
      off the channel axis (per_channel), or ``(M // group_size, 1, C)`` (per_group, see the
      module docstring). ``scale`` is float32 (float64 for float64 ``x``).

    Raises:
      ValueError: ``x`` is empty or (when concrete) holds NaN / inf, naming how many.

    Example:
      >>> qp = compute_qparams(jnp.array([-1.0, 0.5]), QuantConfig(bits=8, symmetric=False))
      >>> round(float(qp.scale) * 255, 6), int(qp.zero_point), qp.qmin, qp.qmax
      (1.5, 170, 0, 255)
    """
    x = _check_x(x, config)
    check_finite(x)
    _view_shape_check(x.shape, config)
    return _compute_qparams_jit(x, config)


def _view_shape_check(shape: tuple[int, ...], config: QuantConfig) -> None:
    """Raises the axis / group_size errors before tracing (clear messages, no jit frames)."""
    if config.granularity == "per_channel":
        per_channel_shape(shape, config.axis)
    elif config.granularity == "per_group":
        per_group_shape(shape, axis=config.axis, group_size=config.group_size)


def _exact_constant_qparams(
    xmin, xmax, qparams: QParams, *, n: float | None, symmetric: bool
) -> QParams:
    """Replaces the qparams of constant slices (``xmin == xmax != 0``) by a grid holding ``v``.

    A constant slice ``v`` gets ``scale = |v| / 2^k`` with ``2^k`` the largest power of two
    ``<= n``; ``n`` defaults to ``qmax`` (symmetric) or ``qmax - qmin`` (asymmetric: zero
    point ``qmin`` for ``v > 0``, ``qmax`` for ``v < 0``); for a floating-point format pass its
    largest finite value (``2^k`` is then exactly representable in the format). Division by
    a power of two is exact in binary floating point, so ``(code - zero_point) * scale =
    +-2^k * |v| / 2^k = v`` bit for bit (with the ``|v| / qmax`` scale, ``qmax * fl(|v| /
    qmax)`` misses ``v`` by one ulp for a few percent of values). Zero error on the data, and
    the grid still reaches about ``2 |v|``. Caveat: not exact when ``|v| / 2^k`` would be
    below ``finfo.tiny`` (the scale floor).
    """
    qmin, qmax = qparams.qmin, qparams.qmax
    if n is None:
        n = qmax if symmetric else qmax - qmin
    p2 = float(2.0 ** math.floor(math.log2(n)))
    scale, zp = qparams.scale, qparams.zero_point
    v = xmin.astype(scale.dtype)
    constant = (xmin == xmax) & (v != 0)
    scale_c = jnp.maximum(jnp.abs(v) / p2, scale_floor(scale.dtype))
    if symmetric:
        zp_c = jnp.zeros_like(zp)
    else:
        zp_c = jnp.where(v > 0, qmin, qmax).astype(jnp.int32)
    return QParams(
        scale=jnp.where(constant, scale_c, scale),
        zero_point=jnp.where(constant, zp_c, zp),
        qmin=qmin,
        qmax=qmax,
    )


@functools.partial(jax.jit, static_argnums=1)
def _compute_qparams_jit(x, config: QuantConfig) -> QParams:
    xv, axes = _view(x, config)
    xv = xv.astype(compute_dtype(xv.dtype))
    rng = _clip_range(xv, axes, config)
    xmin = jnp.min(xv, axis=axes, keepdims=True)
    xmax = jnp.max(xv, axis=axes, keepdims=True)
    if config.is_int:
        qmin, qmax = config.qrange
        qp = range_setting.qparams_from_range(
            rng.lo,
            rng.hi,
            qmin=qmin,
            qmax=qmax,
            symmetric=config.symmetric,
            scale_convention=config.scale_convention,
        )
        if config.scale_convention == "qmax":
            qp = _exact_constant_qparams(xmin, xmax, qp, n=None, symmetric=config.symmetric)
    else:
        fmax = float_format_max(config.fmt)
        absmax = jnp.maximum(jnp.abs(rng.lo), jnp.abs(rng.hi))
        scale = jnp.maximum(absmax / fmax, scale_floor(xv.dtype))
        qp = QParams(
            scale=scale, zero_point=jnp.zeros(scale.shape, jnp.int32), qmin=None, qmax=None
        )
        qp = _exact_constant_qparams(xmin, xmax, qp, n=fmax, symmetric=True)
    if config.granularity == "per_tensor":
        qp = QParams(
            scale=qp.scale.reshape(()),
            zero_point=qp.zero_point.reshape(()),
            qmin=qp.qmin,
            qmax=qp.qmax,
        )
    return qp


def broadcast_qparams(qparams: QParams, shape: tuple[int, ...], config: QuantConfig) -> QParams:
    """``QParams`` with ``scale`` and ``zero_point`` expanded to the full tensor ``shape``.

    Useful for per-group parameters, whose natural shape refers to the grouped view.

    Example:
      >>> cfg = QuantConfig(bits=4, granularity="per_group", group_size=2)
      >>> broadcast_qparams(compute_qparams(jnp.ones((4, 3)), cfg), (4, 3), cfg).scale.shape
      (4, 3)
    """
    shape = tuple(shape)

    def expand(a):
        a = jnp.asarray(a)
        if config.granularity == "per_group":
            ax = check_axis(len(shape), config.axis, "per-group quantization")
            m = math.prod(shape) // shape[ax]
            g = jnp.broadcast_to(a, (m // config.group_size, config.group_size, shape[ax]))
            return from_groups(g, shape, axis=config.axis)
        return jnp.broadcast_to(a.reshape((1,) * (len(shape) - a.ndim) + a.shape), shape)

    return QParams(
        scale=expand(qparams.scale),
        zero_point=expand(qparams.zero_point),
        qmin=qparams.qmin,
        qmax=qparams.qmax,
    )


# ----------------------------------------------------------------------------- one call


def _check_key(config: QuantConfig, key) -> None:
    if config.rounding == "stochastic" and key is None:
        raise ValueError("rounding='stochastic' needs a PRNG key: pass key=jax.random.key(...)")
    if key is not None:
        check_key(key)


def fake_quant(x, config: QuantConfig, *, key=None, qparams: QParams | None = None) -> jax.Array:
    """Quantize-dequantize ``x`` in one jit-able call.

    Integer: ``y = (clip(round(x / s) + zp, qmin, qmax) - zp) * s`` (``int_fake_quant``);
    float: ``y = cast(clip(x / s, -max, max), fmt) * s`` (``float_fake_quant``). The
    parameters come from :func:`compute_qparams` (computed from ``x`` itself, under
    ``stop_gradient``: the range is a constant for the straight-through gradient, which is 1
    inside the clip range and 0 outside) unless ``qparams`` is given (e.g. calibrated on other
    data). ``config`` is static: ``jax.jit(fake_quant, static_argnums=1)`` or close over it.

    Args:
      x: float tensor.
      config: a :class:`QuantConfig`.
      key: PRNG key, required for ``rounding="stochastic"`` (unused otherwise).
      qparams: precomputed parameters (shapes as returned by :func:`compute_qparams`).

    Returns:
      Array with the shape and dtype of ``x``.

    Raises:
      ValueError: ``x`` is empty or (when concrete, i.e. not under jit) holds NaN / inf: one
        NaN would make the range, and so every value sharing it, NaN.

    Example:
      >>> fake_quant(jnp.array([0.1, 0.52, -1.0]), QuantConfig(bits=3))  # s = 1/3
      Array([ 0.       ,  0.6666667, -1.       ], dtype=float32)
    """
    x = _check_x(x, config)
    if qparams is not None:  # else compute_qparams checks (one host transfer, not two)
        check_finite(x)
    _view_shape_check(x.shape, config)
    _check_key(config, key)
    if qparams is None:
        # Computed here, hence valid: the quantizer can run compiled (under tracing the
        # quantizers cannot check parameter values, so user-given qparams run eagerly).
        qparams = jax.lax.stop_gradient(compute_qparams(x, config))
        return _fake_quant_jit(x, config, key, qparams)
    return _fake_quant_impl(x, config, key, qparams)


def _fake_quant_impl(x, config: QuantConfig, key, qparams: QParams) -> jax.Array:
    xv, _ = _view(x, config)
    xv = xv.astype(compute_dtype(xv.dtype))
    scale = jnp.asarray(qparams.scale, xv.dtype)
    if config.is_int:
        yv = int_fake_quant(
            xv,
            scale,
            qparams.zero_point,
            qmin=qparams.qmin,
            qmax=qparams.qmax,
            rounding=config.rounding,
            key=key,
        )
    else:
        yv = float_fake_quant(xv, config.fmt, scale=scale)
    return _unview(yv, x, config).astype(x.dtype)


_fake_quant_jit = jax.jit(_fake_quant_impl, static_argnums=1)


def quantize_tensor(x, config: QuantConfig, *, key=None) -> tuple[jax.Array, QParams]:
    """Integer codes of ``x`` and their parameters: ``clip(round(x / s) + zp, qmin, qmax)``.

    Args:
      x: float tensor.
      config: a :class:`QuantConfig` with ``fmt="int"``.
      key: PRNG key for ``rounding="stochastic"``.

    Returns:
      ``(codes, qparams)``: codes with the shape of ``x`` in the smallest integer dtype that
      holds ``[qmin, qmax]`` (``code_dtype``: int8 / uint8 / int16 / uint16 / int32) and the
      :func:`compute_qparams` parameters.

    Example:
      >>> codes, qp = quantize_tensor(jnp.array([0.1, 0.52, -1.0]), QuantConfig(bits=3))
      >>> codes
      Array([ 0,  2, -3], dtype=int8)
    """
    x = _check_x(x, config)
    if not config.is_int:
        raise ValueError(f"quantize_tensor needs fmt='int' (integer codes), got {config.fmt!r}")
    _check_key(config, key)
    qp = compute_qparams(x, config)
    return _quantize_jit(x, config, key, qp), qp


@functools.partial(jax.jit, static_argnums=1)
def _quantize_jit(x, config: QuantConfig, key, qp: QParams) -> jax.Array:
    xv, _ = _view(x, config)
    xv = xv.astype(compute_dtype(xv.dtype))
    codes = quantize(
        xv,
        jnp.asarray(qp.scale, xv.dtype),
        qp.zero_point,
        qmin=qp.qmin,
        qmax=qp.qmax,
        rounding=config.rounding,
        key=key,
    )
    return _unview(codes, x, config)


def dequantize_tensor(codes, qparams: QParams, config: QuantConfig) -> jax.Array:
    """``(codes - zero_point) * scale`` (``dequantize``) in the layout of :func:`quantize_tensor`.

    ``dequantize_tensor(*quantize_tensor(x, cfg), cfg) == fake_quant(x, cfg)`` bit for bit.

    Example:
      >>> codes, qp = quantize_tensor(jnp.array([0.1, 0.52, -1.0]), QuantConfig(bits=3))
      >>> dequantize_tensor(codes, qp, QuantConfig(bits=3))
      Array([ 0.       ,  0.6666667, -1.       ], dtype=float32)
    """
    codes = jnp.asarray(codes)
    if not jnp.issubdtype(codes.dtype, jnp.integer):
        raise TypeError(f"codes must be an integer array, got dtype {codes.dtype}")
    _view_shape_check(codes.shape, config)
    cv, _ = _view(codes, config)
    return _unview(dequantize(cv, qparams.scale, qparams.zero_point), codes, config)
