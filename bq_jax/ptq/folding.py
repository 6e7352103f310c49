"""Batch-norm folding: merge an eval-mode BatchNorm into the Dense/Conv layer that feeds it.

For a layer ``z = x * W + b`` followed by ``y = gamma * (z - mu) / sqrt(var + eps) + beta``
(running statistics), the pair equals one layer with

    W' = W * k,    b' = (b - mu) * k + beta,    k = gamma / sqrt(var + eps)

per output channel (the last axis of Dense ``(in, out)`` and Conv ``HWIO`` kernels). This is
the white paper's batch-norm folding (Nagel et al. 2021, section 2.3.1); it is done before
weight quantization so that the quantized kernel is the one used at inference.

Pairs are found from ``apply_fn`` alone: a BatchNorm call whose input is the very array a
Dense/Conv call returned forms a pair (see :mod:`bq_jax.ptq.layers`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from bq_jax.ptq.layers import LINEAR_TYPES, layer_structure
from bq_jax.ptq.paths import flatten_params, unflatten_params

__all__ = ["BatchNormFold", "fold_batch_norm"]


@dataclasses.dataclass(frozen=True)
class BatchNormFold:
    """Result of :func:`fold_batch_norm`.

    Attributes:
      params: folded variables dict: folded kernels and biases; the folded BatchNorms'
        ``params`` and ``batch_stats`` entries removed.
      apply_fn: ``apply_fn(params, x) -> logits`` for the folded params; skips the folded
        BatchNorms (and adds the folded bias of layers built with ``use_bias=False``).
      pairs: ``((layer_name, batch_norm_name), ...)`` in call order.
    """

    params: dict
    apply_fn: Callable
    pairs: tuple[tuple[str, str], ...]


def _use_running_average(module: nn.BatchNorm, kwargs: dict) -> bool | None:
    value = kwargs.get("use_running_average", None)
    if value is None:
        value = module.use_running_average
    return value


def fold_batch_norm(apply_fn: Callable, params, sample_x) -> BatchNormFold:
    """Folds every (Dense|Conv -> BatchNorm) pair of a linen model into the linear layer.

    Args:
      apply_fn: eval-mode ``apply_fn(params, x) -> logits`` (not pre-jitted).
      params: flax variables dict with ``params`` and ``batch_stats``.
      sample_x: a few inputs (batch) used once to find the pairs.

    Returns:
      :class:`BatchNormFold` with folded params, the matching apply_fn and the pairs.
      ``result.apply_fn(result.params, x)`` equals ``apply_fn(params, x)`` up to float
      rounding.

    Raises:
      ValueError: no pair found, a BatchNorm in training mode, or a BatchNorm over an axis
        other than the last.

    Example:
      >>> bn = nn.BatchNorm(use_running_average=True)
      >>> model = nn.Sequential([nn.Dense(8), bn, nn.relu, nn.Dense(3)])
      >>> x = jax.random.normal(jax.random.key(0), (16, 4))
      >>> variables = model.init(jax.random.key(1), x)
      >>> fold = fold_batch_norm(model.apply, variables, x)
      >>> fold.pairs
      (('layers_0', 'layers_1'),)
      >>> diff = fold.apply_fn(fold.params, x) - model.apply(variables, x)
      >>> float(jnp.max(jnp.abs(diff))) < 1e-5
      True
    """
    calls = layer_structure(apply_fn, params, sample_x, layer_types=(*LINEAR_TYPES, nn.BatchNorm))
    pairs = []
    for call in calls:
        if isinstance(call.module, nn.BatchNorm):
            if call.source is None or isinstance(calls[call.source].module, nn.BatchNorm):
                continue
            producer = calls[call.source]
            if _use_running_average(call.module, call.kwargs) is not True:
                raise ValueError(
                    f"BatchNorm {call.name!r} runs in training mode; fold_batch_norm needs the "
                    "eval-mode apply_fn (use_running_average=True)"
                )
            axis = call.module.axis
            if axis not in (-1, len(call.inputs.shape) - 1):
                raise ValueError(
                    f"BatchNorm {call.name!r} normalises axis {axis}; folding needs the last "
                    "(channel) axis"
                )
            pairs.append((producer, call))
    if not pairs:
        raise ValueError(
            "no (Dense|Conv -> BatchNorm) pair found: no BatchNorm takes a Dense/Conv output "
            "directly"
        )

    flat = flatten_params(params)
    needs_bias = set()
    for layer, bn in pairs:
        kp, bp = f"params/{layer.name}/kernel", f"params/{layer.name}/bias"
        w = flat[kp]
        b = flat.get(bp, jnp.zeros(w.shape[-1], w.dtype))
        mean = flat.pop(f"batch_stats/{bn.name}/mean")
        var = flat.pop(f"batch_stats/{bn.name}/var")
        gamma = flat.pop(f"params/{bn.name}/scale", None)
        beta = flat.pop(f"params/{bn.name}/bias", None)
        if gamma is None:
            gamma = jnp.ones_like(mean)
        if beta is None:
            beta = jnp.zeros_like(mean)
        k = gamma * jax.lax.rsqrt(var + bn.module.epsilon)
        flat[kp] = w * k.reshape((1,) * (w.ndim - 1) + k.shape)
        flat[bp] = (b - mean) * k + beta
        if not layer.module.use_bias:
            needs_bias.add(layer.name)
    folded = unflatten_params(flat)
    if "batch_stats" in params and "batch_stats" not in folded:
        folded["batch_stats"] = {}

    skip = frozenset(bn.name for _, bn in pairs)
    add_bias = frozenset(needs_bias)
    layer_types = (*LINEAR_TYPES, nn.BatchNorm)

    def folded_apply_fn(variables, x):
        def interceptor(next_fun, args, kwargs, context):
            module = context.module
            if context.method_name != "__call__" or not isinstance(module, layer_types):
                return next_fun(*args, **kwargs)
            name = "/".join(str(p) for p in module.path)
            if name in skip:
                return args[0]
            out = next_fun(*args, **kwargs)
            if name in add_bias:
                bias = flatten_params(variables)[f"params/{name}/bias"]
                out = out + bias.reshape((1,) * (out.ndim - 1) + bias.shape)
            return out

        with nn.intercept_methods(interceptor):
            return apply_fn(variables, x)

    return BatchNormFold(
        params=folded,
        apply_fn=folded_apply_fn,
        pairs=tuple((layer.name, bn.name) for layer, bn in pairs),
    )
