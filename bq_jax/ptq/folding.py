"""Batch-norm folding: merge an eval-mode batch norm into the weight layer that feeds it.

For a layer ``z = x * W + b`` followed by ``y = gamma * (z - mu) / sqrt(var + eps) + beta``
(running statistics), the pair equals one layer with

    W' = W * k,    b' = (b - mu) * k + beta,    k = gamma / sqrt(var + eps)

per output channel (the output axis of the kernel: last for linen / NNX ``(in, out)`` and HWIO
kernels, first for equinox's). This is the white paper's batch-norm folding (Nagel et al. 2021,
section 2.3.1); it is done before weight quantization so that the quantized kernel is the one
used at inference.

Pairs are found from ``apply_fn`` alone, in its jaxpr (:mod:`bq_jax.models.tracing`): the
output of a weight layer, read by nothing else, goes through a chain of elementwise
``sub`` / ``mul`` / ``add`` / ``div`` steps whose other operands are computed from params
leaves only, one value per channel (:class:`bq_jax.models.tracing.AffineChain`) -- how linen
and NNX write an eval-mode ``BatchNorm``, whatever the framework. The chain is the affine map
``z = k y + c``: ``k`` is composed step by step (so ``W' = W k`` exactly), and the new bias is
the chain itself applied to the old bias (``b' = (b - mu) k + beta``, bit for bit the formula
above). The leaves the chain reads (``mean``, ``var``, ``scale``, ``bias``) are removed.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp

from bq_jax.models.tracing import trace
from bq_jax.ptq.paths import flatten_params, unflatten_params

__all__ = ["BatchNormFold", "fold_batch_norm"]


@dataclasses.dataclass(frozen=True)
class BatchNormFold:
    """Result of :func:`fold_batch_norm`.

    Attributes:
      params: folded variables dict: folded kernels and biases; the folded batch norms'
        leaves (``params`` and ``batch_stats`` entries) removed.
      apply_fn: ``apply_fn(params, x) -> logits`` for the folded params; skips the folded
        batch norms (and adds the folded bias of layers built without one).
      pairs: ``((layer_name, batch_norm_name), ...)`` in call order.
    """

    params: dict
    apply_fn: Callable
    pairs: tuple[tuple[str, str], ...]


def _module_name(paths) -> str:
    """Common parent of leaf paths without the collection (``"BatchNorm_0"``)."""
    parts = [p.split("/")[1:] or p.split("/") for p in paths]
    common = []
    for level in zip(*parts, strict=False):
        if len(set(level)) != 1:
            break
        common.append(level[0])
    if len(common) == min(len(p) for p in parts):  # a single leaf: drop its own name
        common = common[:-1]
    return "/".join(common) or "/".join(parts[0])


def _bias_path(kernel_path: str) -> str:
    parent = kernel_path.rpartition("/")[0]
    return f"{parent}/bias" if parent else "bias"


def _channel_shape(ndim: int, axis: int, n: int) -> tuple[int, ...]:
    shape = [1] * ndim
    shape[axis] = n
    return tuple(shape)


def _scale(t, chain, values, dtype) -> jax.Array:
    """``k`` of the affine chain ``z = k y + c``, composed exactly step by step."""
    k = jnp.ones((), dtype)
    for (idx, pos), other in zip(chain.steps, values, strict=True):
        prim = t.ops[idx].prim
        if prim == "mul":
            k = k * other
        elif prim == "div":
            k = k / other
        elif prim == "sub" and pos == 1:
            k = -k
    return k


def fold_batch_norm(apply_fn: Callable, params, sample_x) -> BatchNormFold:
    """Folds every (weight layer -> eval-mode batch norm) pair into the weight layer.

    Args:
      apply_fn: eval-mode ``apply_fn(params, x) -> logits`` (linen, NNX through
        ``bq_jax.models.adapt``, or any function).
      params: variables dict with the batch norms' ``params`` and ``batch_stats``.
      sample_x: a few inputs (batch); only their shape is used, to find the pairs.

    Returns:
      :class:`BatchNormFold` with folded params, the matching apply_fn and the pairs.
      ``result.apply_fn(result.params, x)`` equals ``apply_fn(params, x)`` up to float
      rounding.

    Raises:
      ValueError: no pair found, or a batch norm in training mode (normalising with the
        statistics of its own batch).

    Example:
      >>> import flax.linen as nn
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
    t = trace(apply_fn, params, sample_x)
    sites = t.layers()
    if not sites:
        raise ValueError(
            "apply_fn computes no weight layer (no dot_general / conv reading a params leaf); "
            "nothing to fold"
        )
    found, training = [], []
    for site in sites:
        chain = t.affine_chain(site)
        if chain is not None:
            found.append((site, chain))
        elif t.normalises_own_batch(site):
            training.append(site.name)
    if training:
        raise ValueError(
            f"the output of {training} is normalised with statistics of its own batch: a "
            "batch norm in training mode; fold_batch_norm needs the eval-mode apply_fn "
            "(use_running_average=True)"
        )
    if not found:
        raise ValueError(
            "no (Dense|Conv -> BatchNorm) pair found: no weight layer's output goes (read by "
            "nothing else) through a per-channel affine map computed from params (an eval-mode "
            "batch norm)"
        )
    owners: dict[str, str] = {}
    for site, chain in found:
        for leaf in chain.leaves:
            if leaf in owners:
                raise ValueError(
                    f"{leaf!r} is read by the batch norms after {owners[leaf]!r} and "
                    f"{site.name!r}; shared batch-norm parameters cannot be folded"
                )
            owners[leaf] = site.name

    flat = flatten_params(params)
    removed = {}
    created = {}
    for site, chain in found:
        layer = site.layer
        values = t.affine_values(chain, params)
        w = flat[layer.kernel_path]
        n = site.num_channels
        k = _scale(t, chain, values, w.dtype)
        ndim_y = len(t.aval[site.output].shape)
        cshape = _channel_shape(ndim_y, site.channel_axis, n)
        k = jnp.broadcast_to(k, cshape).reshape(n)
        if layer.bias_path is not None:
            b = flat[layer.bias_path]
        else:
            b = jnp.zeros((n,), w.dtype)
        new_b = t.apply_chain(chain, values, jnp.reshape(b, cshape).astype(w.dtype))
        flat[layer.kernel_path] = w * k.reshape(_channel_shape(w.ndim, layer.output_axis, n))
        if layer.bias_path is not None:
            flat[layer.bias_path] = new_b.reshape(b.shape).astype(b.dtype)
        else:
            bp = _bias_path(layer.kernel_path)
            if bp in flat:
                raise ValueError(
                    f"layer {layer.name!r} adds no bias but params already hold {bp!r}; cannot "
                    "create its folded bias"
                )
            flat[bp] = new_b.reshape(n).astype(w.dtype)
            created[layer.kernel_path] = bp
        for leaf in chain.leaves:
            v = flat.pop(leaf)
            removed[leaf] = jax.ShapeDtypeStruct(jnp.shape(v), jnp.result_type(v))
    folded = unflatten_params(flat)
    for collection in params:
        if collection not in folded:
            folded[collection] = {}

    folded_kernels = frozenset(site.layer.kernel_path for site, _ in found)

    def folded_apply_fn(variables, x):
        full = flatten_params(variables)
        biases = {k: full.pop(bp) for k, bp in created.items()}
        for path, struct in removed.items():
            full[path] = jnp.zeros(struct.shape, struct.dtype)
        full = unflatten_params(full)
        tr = trace(apply_fn, full, x)
        hooks, keep = {}, []
        for site in tr.layers():
            if site.layer.kernel_path not in folded_kernels:
                continue
            chain = tr.affine_chain(site)
            keep.append(site.output)
            if site.layer.kernel_path in biases:
                bias = biases[site.layer.kernel_path]
                shape = _channel_shape(len(tr.aval[site.output].shape), site.channel_axis, -1)
                hooks[site.output] = _add(bias.reshape(shape))
            hooks[chain.output] = _skip_to(site.output)
        return tr.run(full, x, hooks=hooks, keep=keep)[0]

    return BatchNormFold(
        params=folded,
        apply_fn=folded_apply_fn,
        pairs=tuple((site.name, _module_name(chain.leaves)) for site, chain in found),
    )


def _add(bias):
    def hook(value, store):
        del store
        return value + bias.astype(value.dtype)

    return hook


def _skip_to(key):
    def hook(value, store):
        del value
        return store[key]

    return hook
