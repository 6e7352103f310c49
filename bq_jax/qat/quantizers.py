"""Weight quantizers of quantization-aware training: fixed-range STE and LSQ learned scales.

Two ways to get a quantized weight ``w_q = Q(w; s)`` from a latent float weight ``w``:

* range scales (``scale_mode="range"``): ``s`` comes from a range method
  (``quant.compute_qparams``: min-max, MSE, OCTAV, analytic Gaussian, ...) and is a constant
  for the gradient. The forward value is ``quant.fake_quant(w, config, qparams=...)`` and the
  gradient is the straight-through estimator masked to the clip range (white paper
  section 4.1): ``dw_q/dw = 1{qmin <= round(w/s) + zp <= qmax}`` (``1{|w/s| <= fmt_max}``
  for floating-point grids).
* learned scales (``scale_mode="learned"``, LSQ: Esser et al. 2020, "Learned Step Size
  Quantization"): the same forward value, and a gradient for ``s`` too,

      dw_q/ds = round(w/s) - w/s     if qmin - zp <= w/s <= qmax - zp,
              = qmin - zp            if w/s < qmin - zp,
              = qmax - zp            if w/s > qmax - zp,

  multiplied by the LSQ gradient scale ``g = 1 / sqrt(N * qmax)`` where ``N`` is the number
  of elements that share the scale (the whole tensor per-tensor, one channel per-channel, one
  group per-group: LSQ's per-layer rule applied to what each scale covers) and ``qmax`` the
  largest positive code (the largest finite value ``fmt_max`` for a floating-point format).

The forward value of :func:`lsq_fake_quant` is bit-identical to ``quant.fake_quant``: it is
computed by the same formula and the gradient terms are added as ``a - stop_gradient(a)``,
which is exactly zero in the forward pass.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp

from bq_jax import quant

__all__ = [
    "LeafPlan",
    "init_qparams",
    "lsq_fake_quant",
    "lsq_float_fake_quant",
    "lsq_grad_scale",
    "quantize_leaf",
    "quantize_variables",
    "resolve_plan",
    "scale_elements",
]


@dataclasses.dataclass(frozen=True)
class LeafPlan:
    """The quantizer of one weight leaf.

    Attributes:
      path: ``"params/Dense_0/kernel"``-style path of the leaf.
      config: its ``quant.QuantConfig``.
      shape: the leaf's shape.
      qmin, qmax: integer code range (``None`` for floating-point formats).
    """

    path: str
    config: Any
    shape: tuple[int, ...]
    qmin: int | None
    qmax: int | None


def resolve_plan(variables: Mapping[str, Any], weights, *, targets) -> tuple[LeafPlan, ...]:
    """Which leaves are quantized, and how (``ptq.resolve_rules`` semantics).

    Args:
      variables: flax variables dict.
      weights: a ``QuantConfig`` for every targeted leaf, or ordered rules
        ``[(regex, QuantConfig | None), ...]`` (first match wins, ``None`` keeps float).
      targets: regex of candidate leaf paths (``None``: every leaf).

    Returns:
      One :class:`LeafPlan` per quantized leaf, in flattening order.

    Raises:
      ValueError: the rules quantize nothing, or a rule error of ``ptq.resolve_rules``.

    Example:
      >>> plan = resolve_plan(variables, QuantConfig(bits=4), targets=r"kernel$")  # doctest: +SKIP
    """
    from bq_jax.ptq import flatten_params, resolve_rules

    resolved = resolve_rules(variables, weights, targets=targets)
    if not resolved:
        raise ValueError(
            "the weight rules keep every targeted leaf in float; QAT needs at least one "
            "quantized leaf (give a QuantConfig, or rules that map some kernel to one)"
        )
    flat = flatten_params(variables)
    plan = []
    for path, cfg in resolved.items():
        if cfg.rounding != "nearest":
            raise ValueError(
                f"QAT trains for a round-to-nearest deployment; the QuantConfig of {path!r} has "
                f"rounding={cfg.rounding!r} (accepted: 'nearest')"
            )
        qmin, qmax = cfg.qrange if cfg.is_int else (None, None)
        plan.append(LeafPlan(path, cfg, tuple(jnp.shape(flat[path])), qmin, qmax))
    return tuple(plan)


def scale_elements(shape: tuple[int, ...], config) -> int:
    """``N``: how many elements of a tensor of ``shape`` share one scale under ``config``.

    Example:
      >>> scale_elements((64, 32), QuantConfig(bits=4, granularity="per_channel"))
      64
    """
    size = math.prod(shape)
    if config.granularity == "per_tensor":
        return size
    if config.granularity == "per_channel":
        return size // shape[config.axis % len(shape)]
    return config.group_size


def lsq_grad_scale(num_elements: int, qmax: float) -> float:
    """LSQ gradient scale ``g = 1 / sqrt(N * qmax)`` (Esser et al. 2020, section 2.2).

    Example:
      >>> lsq_grad_scale(64, 1)
      0.125
    """
    if num_elements < 1 or qmax <= 0:
        raise ValueError(
            f"lsq_grad_scale needs num_elements >= 1 and qmax > 0, got {num_elements}, {qmax}"
        )
    return 1.0 / math.sqrt(num_elements * float(qmax))


def _scaled_grad_term(scale, factor, grad_scale):
    """``(s - sg(s)) * g * sg(factor)``: zero forward, gradient ``g * factor`` for ``s``."""
    s = jnp.asarray(scale)
    return (s - jax.lax.stop_gradient(s)) * (grad_scale * jax.lax.stop_gradient(factor))


def lsq_fake_quant(x, scale, zero_point, *, qmin: int, qmax: int, grad_scale: float = 1.0):
    """Integer fake quantization with a learned step size (LSQ).

    Forward: ``y = (clip(round(x / s) + zp, qmin, qmax) - zp) * s`` (round half to even),
    identical to ``quant.fake_quant``. Gradients (LSQ, Esser et al. 2020, eq. 3)::

        dy/dx = 1{qmin <= round(x/s) + zp <= qmax}                       (masked STE)
        dy/ds = g * (round(x/s) - x/s)     inside the clip range,
                g * (qmin - zp) below,  g * (qmax - zp) above.

    Args:
      x: float array.
      scale: positive scale, broadcasting against ``x``.
      zero_point: integer-valued zero point, broadcasting against ``x`` (not learned).
      qmin, qmax: integer code range.
      grad_scale: ``g`` (see :func:`lsq_grad_scale`; 1.0 for the unscaled gradient).

    Returns:
      Array with the shape and dtype of ``x``.

    Example:
      >>> lsq_fake_quant(jnp.array([0.3, 2.0]), jnp.float32(0.5), 0, qmin=-2, qmax=1)
      Array([0.5, 0.5], dtype=float32)
    """
    x = jnp.asarray(x)
    s = jnp.asarray(scale, x.dtype)
    zp = jnp.asarray(zero_point).astype(x.dtype)
    v = x / s
    code = jnp.round(v) + zp
    inside = (code >= qmin) & (code <= qmax)
    q = jnp.clip(code, qmin, qmax) - zp
    y = jax.lax.stop_gradient(q * s)
    factor = jnp.where(inside, q - v, q)
    x_term = (x - jax.lax.stop_gradient(x)) * inside.astype(x.dtype)
    return y + x_term + _scaled_grad_term(s, factor, grad_scale)


def lsq_float_fake_quant(x, fmt, scale, *, grad_scale: float = 1.0):
    """Floating-point fake quantization with a learned scale (LSQ applied to an FP grid).

    Forward ``y = cast(clip(x / s, -m, m), fmt) * s`` (``m`` the format's largest finite
    value), identical to ``quant.float_fake_quant``; ``dy/dx = 1{|x/s| <= m}`` and
    ``dy/ds = g * (Q(x/s) - x/s)`` inside, ``g * Q(x/s) = +-g m`` outside.

    Example:
      >>> lsq_float_fake_quant(jnp.array([0.3, 20.0]), "e2m1", jnp.float32(1.0))
      Array([0.5, 6. ], dtype=float32)
    """
    x = jnp.asarray(x)
    s = jnp.asarray(scale, x.dtype)
    fmax = _fmt_max(fmt)
    v = x / s
    inside = jnp.abs(v) <= fmax
    y = jax.lax.stop_gradient(quant.fake_quant(x, _unit_float_config(fmt), qparams=_qp(s)))
    q = jax.lax.stop_gradient(y / s)
    factor = jnp.where(inside, q - v, q)
    x_term = (x - jax.lax.stop_gradient(x)) * inside.astype(x.dtype)
    return y + x_term + _scaled_grad_term(s, factor, grad_scale)


def _fmt_max(fmt) -> float:
    """Largest finite value of a floating-point format (``quant.float_format_max``)."""
    fn = getattr(quant, "float_format_max", None)
    if fn is None:
        from bq_jax.quant.ranges import _float_format_max as fn
    return float(fn(fmt))


def _unit_float_config(fmt):
    from bq_jax.quant import FLOAT_FORMATS

    exp, man = FLOAT_FORMATS[fmt] if isinstance(fmt, str) else fmt
    return quant.QuantConfig(bits=1 + exp + man, fmt=fmt)


def _qp(scale, zero_point=None, qmin=None, qmax=None):
    zp = jnp.zeros(jnp.shape(scale), jnp.int32) if zero_point is None else zero_point
    return quant.QParams(scale=scale, zero_point=zp, qmin=qmin, qmax=qmax)


def _view(w, config):
    if config.granularity == "per_group":
        return quant.to_groups(w, axis=config.axis, group_size=config.group_size)
    return w


def _unview(wv, shape, config):
    if config.granularity == "per_group":
        return quant.from_groups(wv, shape, axis=config.axis)
    return wv


def quantize_leaf(w, leaf: LeafPlan, scale, zero_point, *, learned: bool):
    """``Q(w)`` of one leaf with explicit scale / zero point.

    Forward value: exactly ``quant.fake_quant(w, leaf.config, qparams=...)``. Gradient for
    ``w``: the masked straight-through estimator (1 inside the clip range, 0 outside) for
    integer and floating-point grids alike. ``learned=False``: the scale is a constant
    (``stop_gradient``). ``learned=True``: LSQ gradient for the scale, scaled by
    ``1 / sqrt(N qmax)`` (:func:`lsq_fake_quant` / :func:`lsq_float_fake_quant`).

    Example:
      >>> wq = quantize_leaf(w, plan[0], scales[plan[0].path], zps[plan[0].path],
      ...                    learned=False)  # doctest: +SKIP
    """
    cfg = leaf.config
    if not learned:
        scale = jax.lax.stop_gradient(scale)
    wv = _view(w, cfg)
    n = scale_elements(leaf.shape, cfg)
    if cfg.is_int:
        g = lsq_grad_scale(n, leaf.qmax) if learned else 0.0
        yv = lsq_fake_quant(wv, scale, zero_point, qmin=leaf.qmin, qmax=leaf.qmax, grad_scale=g)
    else:
        g = lsq_grad_scale(n, _fmt_max(cfg.fmt)) if learned else 0.0
        yv = lsq_float_fake_quant(wv, cfg.fmt, scale, grad_scale=g)
    return _unview(yv, leaf.shape, cfg).astype(w.dtype)


def init_qparams(variables, plan: tuple[LeafPlan, ...]) -> tuple[dict, dict]:
    """Scales and zero points of every planned leaf from its range method.

    Returns:
      ``(scales, zero_points)``: ``{path: array}`` each (``quant.compute_qparams`` shapes).

    Example:
      >>> scales, zps = init_qparams(variables, plan)  # doctest: +SKIP
    """
    from bq_jax.ptq import flatten_params

    flat = flatten_params(variables)
    scales, zps = {}, {}
    for leaf in plan:
        qp = quant.compute_qparams(jax.lax.stop_gradient(flat[leaf.path]), leaf.config)
        scales[leaf.path] = jnp.asarray(qp.scale, jnp.float32)
        zps[leaf.path] = jnp.asarray(qp.zero_point, jnp.int32)
    return scales, zps


def quantize_variables(variables, plan, scales, zero_points, *, learned: bool = False):
    """The variables dict with every planned leaf replaced by ``Q(w)`` (other leaves as is).

    Example:
      >>> deployed = quantize_variables(latent, plan, scales, zps)  # doctest: +SKIP
    """
    from bq_jax.ptq import flatten_params, unflatten_params

    flat = flatten_params(variables)
    for leaf in plan:
        flat[leaf.path] = quantize_leaf(
            flat[leaf.path], leaf, scales[leaf.path], zero_points[leaf.path], learned=learned
        )
    return unflatten_params(flat)
