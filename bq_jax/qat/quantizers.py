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

Both are ``quant.int_fake_quant`` / ``quant.float_fake_quant`` (``scale_grad="none"`` or
``"lsq"``, the one LSQ implementation of bq_jax), so the forward value is bit-identical to
``quant.fake_quant`` in both modes.
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
      >>> import flax.linen as nn
      >>> model = nn.Sequential([nn.Dense(8), nn.relu, nn.Dense(3)])
      >>> variables = model.init(jax.random.key(1), jnp.ones((1, 4)))
      >>> plan = resolve_plan(variables, quant.QuantConfig(bits=4), targets=r"kernel$")
      >>> [(leaf.path, leaf.qmin, leaf.qmax) for leaf in plan]
      [('params/layers_0/kernel', -8, 7), ('params/layers_2/kernel', -8, 7)]
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
      >>> scale_elements((64, 32), quant.QuantConfig(bits=4, granularity="per_channel"))
      64
    """
    size = math.prod(shape)
    if config.granularity == "per_tensor":
        return size
    if config.granularity == "per_channel":
        return size // shape[config.axis % len(shape)]
    return config.group_size


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
    ``1 / sqrt(N qmax)`` (``quant.int_fake_quant`` / ``quant.float_fake_quant`` with
    ``scale_grad="lsq"`` and ``grad_scale=quant.lsq_grad_scale(N, qmax)``).

    Example:
      >>> import flax.linen as nn
      >>> model = nn.Sequential([nn.Dense(8), nn.relu, nn.Dense(3)])
      >>> variables = model.init(jax.random.key(1), jnp.ones((1, 4)))
      >>> plan = resolve_plan(variables, quant.QuantConfig(bits=4), targets=r"kernel$")
      >>> leaf, w = plan[0], variables["params"]["layers_0"]["kernel"]
      >>> scales, zps = init_qparams(variables, plan)
      >>> wq = quantize_leaf(w, leaf, scales[leaf.path], zps[leaf.path], learned=True)
      >>> bool(jnp.all(wq == quant.fake_quant(w, leaf.config)))
      True
    """
    cfg = leaf.config
    wv = _view(w, cfg)
    if learned:
        qmax = leaf.qmax if cfg.is_int else quant.float_format_max(cfg.fmt)
        g = quant.lsq_grad_scale(scale_elements(leaf.shape, cfg), qmax)
        lsq = {"scale_grad": "lsq", "grad_scale": g}
    else:
        scale, lsq = jax.lax.stop_gradient(scale), {}
    if cfg.is_int:
        yv = quant.int_fake_quant(wv, scale, zero_point, qmin=leaf.qmin, qmax=leaf.qmax, **lsq)
    else:
        yv = quant.float_fake_quant(wv, cfg.fmt, scale=scale, **lsq)
    return _unview(yv, leaf.shape, cfg).astype(w.dtype)


def init_qparams(variables, plan: tuple[LeafPlan, ...]) -> tuple[dict, dict]:
    """Scales and zero points of every planned leaf from its range method.

    Returns:
      ``(scales, zero_points)``: ``{path: array}`` each (``quant.compute_qparams`` shapes).

    Example:
      >>> import flax.linen as nn
      >>> model = nn.Sequential([nn.Dense(8), nn.relu, nn.Dense(3)])
      >>> variables = model.init(jax.random.key(1), jnp.ones((1, 4)))
      >>> plan = resolve_plan(variables, quant.QuantConfig(bits=4), targets=r"kernel$")
      >>> scales, zps = init_qparams(variables, plan)
      >>> scales["params/layers_0/kernel"].shape, zps["params/layers_0/kernel"].dtype
      ((), dtype('int32'))
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
      >>> import flax.linen as nn
      >>> model = nn.Sequential([nn.Dense(8), nn.relu, nn.Dense(3)])
      >>> variables = model.init(jax.random.key(1), jnp.ones((1, 4)))
      >>> plan = resolve_plan(variables, quant.QuantConfig(bits=4), targets=r"kernel$")
      >>> deployed = quantize_variables(variables, plan, *init_qparams(variables, plan))
      >>> [bool(jnp.all(deployed["params"]["layers_2"][k] == variables["params"]["layers_2"][k]))
      ...  for k in ("kernel", "bias")]  # the kernel is quantized, the bias is not
      [False, True]
    """
    from bq_jax.ptq import flatten_params, unflatten_params

    flat = flatten_params(variables)
    for leaf in plan:
        flat[leaf.path] = quantize_leaf(
            flat[leaf.path], leaf, scales[leaf.path], zero_points[leaf.path], learned=learned
        )
    return unflatten_params(flat)
