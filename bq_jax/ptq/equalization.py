"""Cross-layer equalization (CLE) of consecutive linear layers.

White paper (Nagel et al. 2021, section 3.2; Nagel et al. 2019, "Data-free quantization"):
for ``y = W2 f(W1 x + b1) + b2`` with a positively homogeneous ``f`` (ReLU:
``f(s x) = s f(x)`` for ``s > 0``), rescaling output channel ``i`` of layer 1 by ``1/s_i``
and the matching input channel of layer 2 by ``s_i`` leaves the function unchanged. With
``r1_i`` the range of output channel ``i`` of ``W1`` and ``r2_i`` the range of input
channel ``i`` of ``W2``, the choice

    s_i = (1 / r2_i) * sqrt(r1_i * r2_i)

makes both ranges equal to ``sqrt(r1_i * r2_i)``, which maximises the per-tensor
quantization precision ``sum_i r_i / R`` of both layers. Ranges are ``max |w|`` over the
channel (symmetric quantization); a channel with a zero range keeps ``s_i = 1``. For chains
of more than two layers the pairs are equalized in order and the sweep is repeated until the
scales stop changing.

The output / input channel axes of each kernel come from its layout, found in the jaxpr of
``apply_fn`` (:mod:`bq_jax.models.tracing`): last / second to last for linen and NNX
(``(in, out)``, HWIO), first / second for equinox (``(out, in)``, ``(O, I, H, W)``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp

from bq_jax.models.tracing import layer_structure
from bq_jax.ptq.paths import flatten_params, unflatten_params

__all__ = [
    "EqualizationResult",
    "channel_ranges",
    "channel_range_spread",
    "cross_layer_equalization",
    "per_tensor_precision",
]


def channel_ranges(kernel, axis: int = -1) -> jax.Array:
    """Per-channel range ``r_i = max |W|`` over every axis except ``axis``.

    Example:
      >>> channel_ranges(jnp.array([[1.0, -4.0], [-2.0, 3.0]]), axis=-1)
      Array([2., 4.], dtype=float32)
    """
    kernel = jnp.asarray(kernel)
    axis = axis % kernel.ndim
    other = tuple(a for a in range(kernel.ndim) if a != axis)
    return jnp.max(jnp.abs(kernel), axis=other)


def channel_range_spread(kernel, axis: int = -1) -> jax.Array:
    """Spread of per-channel ranges: ``max_i r_i / mean_i r_i`` (1 when all channels match).

    A large spread means a per-tensor grid wastes most levels on the few widest channels.

    Example:
      >>> float(channel_range_spread(jnp.array([[1.0, -3.0]])))
      1.5
    """
    r = channel_ranges(kernel, axis)
    return jnp.max(r) / jnp.maximum(jnp.mean(r), jnp.finfo(r.dtype).tiny)


def per_tensor_precision(kernel, axis: int = -1) -> jax.Array:
    """White paper's precision of a per-tensor grid: ``mean_i r_i / max_j r_j`` (in (0, 1]).

    Example:
      >>> float(per_tensor_precision(jnp.array([[1.0, -4.0]])))
      0.625
    """
    r = channel_ranges(kernel, axis)
    return jnp.mean(r) / jnp.maximum(jnp.max(r), jnp.finfo(r.dtype).tiny)


@dataclasses.dataclass(frozen=True)
class EqualizationResult:
    """Result of :func:`cross_layer_equalization`.

    Attributes:
      params: equalized variables dict (same structure).
      pairs: the equalized ``(layer_1, layer_2)`` names.
      scales: ``{(layer_1, layer_2): s}``, the accumulated per-channel scales.
      sweeps: number of sweeps over the pairs.
    """

    params: dict
    pairs: tuple[tuple[str, str], ...]
    scales: dict
    sweeps: int


def _default_pairs(calls, flat) -> list[tuple[str, str]]:
    pairs = []
    for a, b in zip(calls[:-1], calls[1:], strict=True):
        la, lb = a.layer, b.layer
        groups_ok = la.feature_group_count == 1 and lb.feature_group_count == 1
        if not groups_ok or lb.input_axis is None:
            continue
        n_out = flat[la.kernel_path].shape[la.output_axis]
        if n_out == flat[lb.kernel_path].shape[lb.input_axis] == a.outputs.shape[a.channel_axis]:
            pairs.append((a.name, b.name))
    return pairs


def _along(v, ndim: int, axis: int):
    shape = [1] * ndim
    shape[axis] = -1
    return v.reshape(shape)


def cross_layer_equalization(
    apply_fn: Callable,
    params,
    sample_x,
    *,
    pairs: Sequence[tuple[str, str]] | None = None,
    max_sweeps: int = 20,
    tol: float = 1e-4,
    check_rtol: float = 1e-4,
) -> EqualizationResult:
    """Equalizes per-channel weight ranges of consecutive layers (white paper, section 3.2).

    ``s_i = (1/r2_i) sqrt(r1_i r2_i)``; ``W1[..., i] /= s_i``, ``b1[i] /= s_i``,
    ``W2[..., i, :] *= s_i``. Repeated over all pairs until ``max |log s| < tol``.

    Args:
      apply_fn: ``apply_fn(params, x) -> logits`` (any model; ``bq_jax.models.adapt``).
      params: flax variables dict (fold batch norm first, see :func:`fold_batch_norm`).
      sample_x: a few inputs, used to find the layers and to check that the equalized model
        computes the same function.
      pairs: ``(layer_1, layer_2)`` names to equalize; default: every pair of consecutive
        weight layers (ungrouped) whose channel counts match. The activation between the two must be
        positively homogeneous (ReLU, leaky ReLU, max/avg pooling, identity).
      max_sweeps: maximal number of sweeps over the pairs.
      tol: stop when every scale of a sweep satisfies ``|log s| < tol``.
      check_rtol: tolerance of the function-preservation check, relative to ``max |logits|``.

    Returns:
      :class:`EqualizationResult`.

    Raises:
      ValueError: unknown layer names, no pair, channel mismatch, or outputs that change
        (the activation between a pair is not positively homogeneous).

    Example:
      >>> import flax.linen as nn
      >>> model = nn.Sequential([nn.Dense(8), nn.relu, nn.Dense(3)])
      >>> x = jax.random.normal(jax.random.key(0), (64, 4))
      >>> variables = model.init(jax.random.key(1), x)
      >>> res = cross_layer_equalization(model.apply, variables, x)
      >>> res.pairs
      (('layers_0', 'layers_2'),)
    """
    if max_sweeps < 1:
        raise ValueError(f"max_sweeps must be >= 1, got {max_sweeps}")
    calls = layer_structure(apply_fn, params, sample_x)
    names = [c.name for c in calls]
    layers = {c.name: c.layer for c in calls}
    flat = flatten_params(params)
    if pairs is None:
        pairs = _default_pairs(calls, flat)
    pairs = [tuple(p) for p in pairs]
    if not pairs:
        raise ValueError(f"no pair of consecutive layers with matching channels among {names}")
    for a, b in pairs:
        for n in (a, b):
            if n not in names:
                raise ValueError(f"layer {n!r} of pair ({a!r}, {b!r}) not found; layers: {names}")
        la, lb = layers[a], layers[b]
        if lb.input_axis is None:
            raise ValueError(f"pair ({a!r}, {b!r}): {b} has no single input-channel axis")
        n_out = flat[la.kernel_path].shape[la.output_axis]
        n_in = flat[lb.kernel_path].shape[lb.input_axis]
        if n_out != n_in:
            raise ValueError(
                f"pair ({a!r}, {b!r}): {a} has {n_out} output channels but {b} has "
                f"{n_in} input channels"
            )

    total = {}
    for p in pairs:
        first = layers[p[0]]
        total[p] = jnp.ones(flat[first.kernel_path].shape[first.output_axis])
    sweeps = 0
    for sweeps in range(1, max_sweeps + 1):  # noqa: B007
        worst = 0.0
        for a, b in pairs:
            la, lb = layers[a], layers[b]
            ka, kb, ba = la.kernel_path, lb.kernel_path, la.bias_path
            r1 = channel_ranges(flat[ka], la.output_axis)
            r2 = channel_ranges(flat[kb], lb.input_axis)
            ok = (r1 > 0) & (r2 > 0)
            s = jnp.where(ok, jnp.sqrt(r1 * r2) / jnp.where(ok, r2, 1.0), 1.0)
            w1 = flat[ka]
            flat[ka] = w1 / _along(s, w1.ndim, la.output_axis)
            if ba is not None and ba in flat:
                flat[ba] = flat[ba] / s.reshape(flat[ba].shape)
            w2 = flat[kb]
            flat[kb] = w2 * _along(s, w2.ndim, lb.input_axis)
            total[(a, b)] = total[(a, b)] * s
            worst = max(worst, float(jnp.max(jnp.abs(jnp.log(s)))))
        if worst < tol:
            break

    out = unflatten_params(flat)
    run = jax.jit(apply_fn)
    ref, got = run(params, sample_x), run(out, sample_x)
    err = float(jnp.max(jnp.abs(got - ref)))
    bound = check_rtol * max(float(jnp.max(jnp.abs(ref))), 1e-6)
    if not err <= bound:
        raise ValueError(
            f"cross-layer equalization changed the outputs (max abs diff {err:.3g} > {bound:.3g}):"
            f" the activation between some of the pairs {pairs} is not positively homogeneous "
            "(e.g. a residual connection, a bias-shifted or saturating activation); pass pairs="
        )
    return EqualizationResult(params=out, pairs=tuple(pairs), scales=total, sweeps=sweeps)
