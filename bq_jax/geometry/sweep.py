"""Grid sweeps: evaluate a stack of parameter variants over a slice grid in one jitted call.

The engine writes the one-chunk computation (``apply_fn(params, x_chunk)`` for ``C`` grid
points generated on the fly from their flat indices), loops over chunks with
``lax.fori_loop`` writing each chunk into the output with ``dynamic_update_slice`` (the last
chunk is shifted back to end at the last point, so any chunk size works and nothing is
padded), and batches over the variant axis ``V`` either sequentially (``"map"``: an outer
``fori_loop`` over variants, like ``lax.map`` but writing straight into the output; each chunk
is one large dense batch) or with ``vmap`` (all variants per chunk). Memory beyond the output
is one chunk of points and activations, whatever R is; under ``vmap`` the V variants share
the default chunk (``default_chunk_size(..., variants=V)``), so it does not grow with V
either.

The jitted functions are module-level ``jax.jit`` objects with ``apply_fn``, the chunk size
and the batching mode static, and the slice's resolution and input shape static in its
pytree structure: a second call with other parameter *values* (same shapes) reuses the
compiled code. Pass the same ``apply_fn`` object each time (a fresh ``lambda`` per call is a
new static argument and retraces).

``variant_batching="auto"`` picks ``"map"`` on CPU and ``"vmap"`` on accelerators. On a
2-core CPU (``experiments/bench_sweep.py``) the two ran equally fast for the MLP once vmap
shares the chunk among the variants, while vmap was 2x slower for the small CNN and 7.6x
slower for the ResNet on CIFAR-shaped inputs at V = 8 (vmapping a convolution over its
kernels makes it a grouped convolution); "map" also keeps scratch memory independent of V.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from bq_jax.geometry.slices import Slice, stack_slices

__all__ = [
    "VARIANT_BATCHING",
    "default_chunk_size",
    "resolve_variant_batching",
    "num_variants",
    "sweep_logits",
    "sweep_labels",
    "evaluate_logits",
]

#: Accepted values of ``variant_batching``.
VARIANT_BATCHING = ("auto", "vmap", "map")

#: Input elements (points x D) per chunk on CPU; tuned with experiments/bench_sweep.py.
_CPU_CHUNK_ELEMENTS = 2**19
#: Input elements per chunk on accelerators.
_ACCEL_CHUNK_ELEMENTS = 2**23
_MIN_CHUNK, _MAX_CHUNK = 64, 2**16


def default_chunk_size(dim: int, backend: str | None = None, *, variants: int = 1) -> int:
    """Points per chunk when ``chunk_size=None``: ``clip(E // (D * variants), 64, 65536)``
    rounded down to a power of two, with ``E = 2^19`` input elements on CPU and ``2^23`` on
    accelerators.

    Large chunks keep the model's matmuls efficient; the bound on ``chunk * D`` keeps the
    per-chunk activations (which scale with D for conv nets) in the tens of MB on CPU.
    ``variants`` is the number of variants evaluated on a chunk at once: V under
    ``variant_batching="vmap"`` (the budget is shared, so memory does not grow with V), 1
    under ``"map"``.

    Example:
        >>> default_chunk_size(64, "cpu")
        8192
        >>> default_chunk_size(64, "cpu", variants=8)
        1024
    """
    backend = backend or jax.default_backend()
    budget = _CPU_CHUNK_ELEMENTS if backend == "cpu" else _ACCEL_CHUNK_ELEMENTS
    rows = max(int(dim), 1) * max(int(variants), 1)
    c = max(_MIN_CHUNK, min(_MAX_CHUNK, budget // rows))
    return 1 << (c.bit_length() - 1)


def resolve_variant_batching(variant_batching: str, backend: str | None = None) -> str:
    """``"map"`` or ``"vmap"`` for ``variant_batching`` (``"auto"``: map on CPU, else vmap)."""
    if variant_batching not in VARIANT_BATCHING:
        raise ValueError(
            f"variant_batching must be one of {VARIANT_BATCHING}, got {variant_batching!r}"
        )
    if variant_batching != "auto":
        return variant_batching
    return "map" if (backend or jax.default_backend()) == "cpu" else "vmap"


def _check_chunk(chunk_size, dim: int, variants: int = 1) -> int:
    if chunk_size is None:
        return default_chunk_size(dim, variants=variants)
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, (int, np.integer)):
        raise TypeError(f"chunk_size must be None or an int >= 1, got {chunk_size!r}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be None or an int >= 1, got {chunk_size}")
    return int(chunk_size)


def num_variants(params_stack) -> int:
    """V, the shared leading axis of every leaf of ``params_stack`` (validated).

    Raises:
        ValueError: no leaves, a scalar leaf, or leaves whose leading axes differ (the message
            lists each leaf path with its leading size).
    """
    leaves, _ = jax.tree_util.tree_flatten_with_path(params_stack)
    if not leaves:
        raise ValueError("params_stack has no array leaves")
    sizes = {}
    for path, leaf in leaves:
        shape = np.shape(leaf)
        if len(shape) == 0:
            raise ValueError(
                f"params_stack leaf {jax.tree_util.keystr(path)} is a scalar; every leaf needs "
                "a leading variant axis V (stack with jax.tree.map(lambda *l: jnp.stack(l), "
                "*variants))"
            )
        sizes[jax.tree_util.keystr(path)] = shape[0]
    if len(set(sizes.values())) != 1:
        listing = ", ".join(f"{k}: {v}" for k, v in sizes.items())
        raise ValueError(
            "params_stack leaves must share one leading variant axis V, got leading sizes "
            f"{{{listing}}}"
        )
    return int(next(iter(sizes.values())))


# -- the engine (traced inside jit) ---------------------------------------------------------


def _fill_chunks(fn: Callable, n: int, chunk: int, out_struct, init_flag=None):
    """Loop ``fn(start) -> (pytree of [C, ...] arrays, flag)`` over chunks covering ``n`` rows.

    Returns the filled pytree of ``[n, ...]`` buffers and the AND of the per-chunk flags.
    Chunk ``c`` starts at ``min(c * C, n - C)``: the last chunk overlaps its predecessor
    instead of being padded, and rewrites the overlapping rows with identical values.
    """
    c = min(chunk, n)
    n_chunks = math.ceil(n / c)
    bufs = jax.tree.map(lambda s: jnp.zeros((n,) + s.shape[1:], s.dtype), out_struct)
    flag = jnp.asarray(True) if init_flag is None else init_flag

    def body(k, carry):
        bufs, flag = carry
        start = jnp.minimum(k * c, n - c)
        vals, ok = fn(start, c)
        bufs = jax.tree.map(
            lambda b, v: lax.dynamic_update_slice_in_dim(b, v, start, axis=0), bufs, vals
        )
        return bufs, flag & ok

    return lax.fori_loop(0, n_chunks, body, (bufs, flag))


def _grid_points(slc: Slice):
    """``points(start, C) -> float32[C, *input_shape]``: grid points ``start .. start+C-1``."""
    r = slc.resolution
    u1, u2 = slc.coords()

    def points(start, c):
        idx = start + jnp.arange(c, dtype=jnp.int32)
        u = jnp.stack([u1[idx % r], u2[idx // r]], axis=-1)
        return slc.to_input(u)

    return points


def _data_points(x):
    def points(start, c):
        return lax.dynamic_slice_in_dim(x, start, c, axis=0)

    return points


def _out_struct(apply_fn, params_stack, points, n, chunk, labels):
    """Shape/dtype of one variant's output rows: ``[n]`` int32 labels or ``[n, K]`` logits."""
    first = jax.tree.map(lambda l: l[0], params_stack)
    z = jax.eval_shape(lambda p: apply_fn(p, points(0, min(chunk, n))), first)
    if z.ndim != 2:
        raise ValueError(
            f"apply_fn must return logits [batch, K] for a batch of inputs, got shape {z.shape}"
        )
    if labels:
        return (n,), jnp.int32
    return (n, z.shape[1]), z.dtype


def _fill(apply_fn, params_stack, points, n, chunk, mode, labels, carry, prefix):
    """Evaluate all variants on points ``0 .. n-1`` into ``carry = (out, finite)``.

    ``out[*prefix, v, p, ...]`` receives variant ``v`` at point ``p`` (labels or logits),
    ``finite[*prefix, v]`` is and-ed with "all logits finite". Chunk ``k`` covers points
    ``s = min(k C, n - C) .. s + C - 1``: the last chunk is shifted back instead of padded and
    rewrites the overlap with the same values. Everything is written in place into the loop
    carry, so memory beyond the output is one chunk.
    """
    c = min(chunk, n)
    n_chunks = math.ceil(n / c)
    v_count = num_variants(params_stack)
    zeros_tail = (0,) * (1 if labels else 2)

    def reduce(z):
        return jnp.argmax(z, axis=-1).astype(jnp.int32) if labels else z

    def put(out, vals, idx):
        vals = vals.reshape((1,) * (out.ndim - vals.ndim) + vals.shape)
        return lax.dynamic_update_slice(out, vals.astype(out.dtype), idx)

    if mode == "map":

        def variant_body(v, carry):
            params = jax.tree.map(
                lambda l: lax.dynamic_index_in_dim(l, v, 0, keepdims=False), params_stack
            )

            def chunk_body(k, carry):
                out, finite = carry
                start = jnp.minimum(k * c, n - c)
                z = apply_fn(params, points(start, c))
                out = put(out, reduce(z), (*prefix, v, start) + zeros_tail[1:])
                ok = jnp.all(jnp.isfinite(z))
                finite = finite.at[(*prefix, v)].set(finite[(*prefix, v)] & ok)
                return out, finite

            return lax.fori_loop(0, n_chunks, chunk_body, carry)

        return lax.fori_loop(0, v_count, variant_body, carry)

    def chunk_body(k, carry):
        out, finite = carry
        start = jnp.minimum(k * c, n - c)
        z = jax.vmap(apply_fn, in_axes=(0, None))(params_stack, points(start, c))  # [V, C, K]
        out = put(out, reduce(z), (*prefix, 0, start) + zeros_tail[1:])
        ok = jnp.all(jnp.isfinite(z), axis=(1, 2))
        if prefix:
            finite = finite.at[prefix].set(finite[prefix] & ok)
        else:
            finite = finite & ok
        return out, finite

    return lax.fori_loop(0, n_chunks, chunk_body, carry)


def _init_carry(lead, shape, dtype):
    return jnp.zeros((*lead, *shape), dtype), jnp.ones(lead, bool)


def _sweep_impl(params_stack, slc, *, apply_fn, chunk_size, mode, labels):
    apply_fn = jax.jit(apply_fn)  # one trace of apply_fn serves shape inference and the loop
    r = slc.resolution
    n = slc.num_points
    v = num_variants(params_stack)
    single = jax.tree.map(lambda l: l[0], slc) if slc.stacked else slc
    shape, dtype = _out_struct(apply_fn, params_stack, _grid_points(single), n, chunk_size, labels)

    def run(s, carry, prefix):
        return _fill(
            apply_fn, params_stack, _grid_points(s), n, chunk_size, mode, labels, carry, prefix
        )

    if slc.stacked:
        num = slc.num_slices

        def slice_body(i, carry):
            s = jax.tree.map(lambda l: lax.dynamic_index_in_dim(l, i, 0, keepdims=False), slc)
            return run(s, carry, (i,))

        out, finite = lax.fori_loop(0, num, slice_body, _init_carry((num, v), shape, dtype))
        return out.reshape((num, v, r, r) + shape[1:]), finite
    out, finite = run(slc, _init_carry((v,), shape, dtype), ())
    return out.reshape((v, r, r) + shape[1:]), finite


def _eval_impl(params_stack, x, *, apply_fn, chunk_size, mode, labels):
    apply_fn = jax.jit(apply_fn)
    n = x.shape[0]
    points = _data_points(x)
    shape, dtype = _out_struct(apply_fn, params_stack, points, n, chunk_size, labels)
    carry = _init_carry((num_variants(params_stack),), shape, dtype)
    return _fill(apply_fn, params_stack, points, n, chunk_size, mode, labels, carry, ())


_STATIC = ("apply_fn", "chunk_size", "mode", "labels")
_sweep_jit = jax.jit(_sweep_impl, static_argnames=_STATIC)
_eval_jit = jax.jit(_eval_impl, static_argnames=_STATIC)


# -- public API ------------------------------------------------------------------------------


def _as_slice(slc) -> Slice:
    if isinstance(slc, Slice):
        return slc
    if isinstance(slc, Sequence) and not isinstance(slc, (str, bytes)):
        return stack_slices(slc)
    raise TypeError(f"slc must be a Slice or a sequence of Slices, got {type(slc).__name__}")


def _raise_nonfinite(finite, where: str, names: Callable[[int], str] | None = None):
    finite = np.asarray(finite)
    if finite.all():
        return
    names = names or (lambda v: f"variant {v}")
    bad = np.argwhere(~finite)
    if finite.ndim == 2:
        items = ", ".join(f"(slice {s}, {names(int(v))})" for s, v in bad)
    else:
        items = ", ".join(names(int(v)) for (v,) in bad)
    raise ValueError(
        f"apply_fn produced NaN or inf logits {where} for {items}; check those parameters "
        "(e.g. a zero quantization scale)"
    )


def _run_sweep(
    apply_fn, params_stack, slc, chunk_size, variant_batching, labels, check_finite, names=None
):
    if not callable(apply_fn):
        raise TypeError(f"apply_fn must be callable (params, x) -> logits, got {apply_fn!r}")
    slc = _as_slice(slc)
    v = num_variants(params_stack)
    mode = resolve_variant_batching(variant_batching)
    chunk = _check_chunk(chunk_size, slc.dim, v if mode == "vmap" else 1)
    out, finite = _sweep_jit(
        params_stack, slc, apply_fn=apply_fn, chunk_size=chunk, mode=mode, labels=labels
    )
    if check_finite:
        _raise_nonfinite(finite, "on the slice grid", names)
    return out


def sweep_logits(
    apply_fn: Callable,
    params_stack,
    slc: Slice | Sequence[Slice],
    *,
    chunk_size: int | None = None,
    variant_batching: str = "auto",
    check_finite: bool = True,
) -> jax.Array:
    """Logits of every parameter variant at every grid point of a slice, in one jitted call.

    ``out[v, i, j] = apply_fn(params_stack[v], x(u1[j], u2[i]))`` with ``x(u) = mu + P u``
    (see :class:`Slice` for the grid convention).

    Args:
        apply_fn: ``apply_fn(params, x[N, *input_shape]) -> logits[N, K]``, pure.
        params_stack: pytree whose leaves share a leading variant axis V.
        slc: a :class:`Slice`, a stacked Slice (leading axis S) or a sequence of Slices of equal
            resolution and input shape.
        chunk_size: grid points per model call (None: :func:`default_chunk_size`, shared by
            the V variants under vmap). Results do not depend on it; memory beyond the output
            is one chunk (times V under vmap).
        variant_batching: ``"map"`` (one variant after another), ``"vmap"``, or ``"auto"``
            (map on CPU, vmap elsewhere; see the module docstring).
        check_finite: raise if any variant gives NaN/inf logits (checked on the host after the
            call, naming the variants).

    Returns:
        float[V, R, R, K], or float[S, V, R, R, K] for several slices.

    Raises:
        ValueError: leaves with different leading axes, NaN/inf logits, bad chunk size.

    Example:
        >>> z = sweep_logits(apply_fn, stack, pca_slice(x, resolution=64))  # doctest: +SKIP
        >>> z.shape  # doctest: +SKIP
        (8, 64, 64, 10)
    """
    return _run_sweep(
        apply_fn, params_stack, slc, chunk_size, variant_batching, False, check_finite
    )


def sweep_labels(
    apply_fn: Callable,
    params_stack,
    slc: Slice | Sequence[Slice],
    *,
    chunk_size: int | None = None,
    variant_batching: str = "auto",
    check_finite: bool = True,
) -> jax.Array:
    """Predicted labels ``argmax_k z`` of every variant at every grid point, in one jitted call.

    Same arguments as :func:`sweep_logits`; the logits never leave the chunk, so the output is
    int32[V, R, R] (int32[S, V, R, R] for several slices). NaN/inf logits are still detected
    (per chunk, inside the call) and raise on the host.

    Example:
        >>> labels = sweep_labels(apply_fn, stack, slc)  # doctest: +SKIP
        >>> labels.dtype, labels.shape  # doctest: +SKIP
        (dtype('int32'), (8, 256, 256))
    """
    return _run_sweep(apply_fn, params_stack, slc, chunk_size, variant_batching, True, check_finite)


def evaluate_logits(
    apply_fn: Callable,
    params_stack,
    x,
    *,
    chunk_size: int | None = None,
    variant_batching: str = "auto",
    check_finite: bool = True,
) -> jax.Array:
    """float[V, N, K]: logits of every variant on a batch of inputs ``x[N, *input_shape]``,
    chunked over the batch exactly like :func:`sweep_logits` (one jitted call).

    Example:
        >>> z = evaluate_logits(apply_fn, stack, x_test)  # doctest: +SKIP
    """
    return _run_eval(apply_fn, params_stack, x, chunk_size, variant_batching, check_finite)


def _run_eval(apply_fn, params_stack, x, chunk_size, variant_batching, check_finite, names=None):
    if not callable(apply_fn):
        raise TypeError(f"apply_fn must be callable (params, x) -> logits, got {apply_fn!r}")
    x = jnp.asarray(x)
    if x.ndim < 2 or x.shape[0] < 1:
        raise ValueError(f"x must be a non-empty batch [N, *input_shape], got shape {x.shape}")
    v = num_variants(params_stack)
    mode = resolve_variant_batching(variant_batching)
    chunk = _check_chunk(chunk_size, math.prod(x.shape[1:]), v if mode == "vmap" else 1)
    out, finite = _eval_jit(
        params_stack, x, apply_fn=apply_fn, chunk_size=chunk, mode=mode, labels=False
    )
    if check_finite:
        _raise_nonfinite(finite, "on the inputs", names)
    return out
