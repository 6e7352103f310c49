"""The chunked evaluation engine behind the sweeps, :func:`~bq_jax.geometry.compare` and the
local geometry (internal; the public entry points are in :mod:`~bq_jax.geometry.sweep` and
:mod:`~bq_jax.geometry.local`).

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

The jitted functions (:data:`sweep_jit`, :data:`eval_jit`, :data:`margin_radius_jit`,
:data:`variant_local_jit`) are module-level ``jax.jit`` objects with ``apply_fn``, the chunk
size and the batching mode static, and the slice's resolution and input shape static in its
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
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from bq_jax._src.checks import check_int
from bq_jax.geometry.metrics import (
    boundary_jaccard_distance,
    boundary_mask,
    grid_change,
    margin,
    triple_junction_count,
)
from bq_jax.geometry.slices import Slice, stack_slices

__all__ = [
    "VARIANT_BATCHING",
    "default_chunk_size",
    "resolve_variant_batching",
    "check_chunk",
    "num_variants",
    "sweep_impl",
    "eval_impl",
    "sweep_jit",
    "eval_jit",
    "run_sweep",
    "run_eval",
    "FAMILY_METRICS",
    "family_metrics_jit",
    "run_family_metrics",
    "margin_radius_jit",
    "variant_local_jit",
    "MESH_AXIS",
    "device_mesh",
    "resolve_mesh",
    "ShardPlan",
    "shard_plan",
    "sharded_jit",
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


def check_chunk(chunk_size, dim: int, variants: int = 1) -> int:
    """``chunk_size`` checked (an int >= 1), or :func:`default_chunk_size` for ``None``."""
    if chunk_size is None:
        return default_chunk_size(dim, variants=variants)
    return check_int("chunk_size", chunk_size, 1)


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


# Largest number of values in one output array: XLA indexes arrays with int32.
MAX_ELEMENTS = 2**31 - 1


def _fill_chunks(fn: Callable, n: int, chunk: int, out_struct):
    """Loop ``fn(start, C) -> pytree of [C, ...] arrays`` over chunks covering ``n`` rows.

    Returns the filled pytree of ``[n, ...]`` buffers. Chunk ``c`` starts at
    ``min(c * C, n - C)``: the last chunk overlaps its predecessor instead of being padded, and
    rewrites the overlapping rows with identical values.
    """
    c = min(chunk, n)
    n_chunks = math.ceil(n / c)
    bufs = jax.tree.map(lambda s: jnp.zeros((n,) + s.shape[1:], s.dtype), out_struct)

    def body(k, bufs):
        start = jnp.minimum(k * c, n - c)
        vals = fn(start, c)
        return jax.tree.map(
            lambda b, v: lax.dynamic_update_slice_in_dim(b, v, start, axis=0), bufs, vals
        )

    return lax.fori_loop(0, n_chunks, body, bufs)


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
    rows = min(chunk, n)
    if z.ndim != 2:
        raise ValueError(
            f"apply_fn must return logits [batch, K] for a batch of inputs, got shape {z.shape}"
        )
    if z.shape[0] != rows:
        raise ValueError(
            f"apply_fn must return one row of logits per input: [batch, K] = [{rows}, K] for a "
            f"batch of {rows} inputs, got shape {z.shape}"
        )
    if not jnp.issubdtype(z.dtype, jnp.floating) or z.shape[1] < 2:
        raise ValueError(
            f"apply_fn must return float logits [batch, K] with K >= 2 classes, got "
            f"{z.dtype}{list(z.shape)}"
        )
    v = num_variants(params_stack)
    size = v * n * (1 if labels else z.shape[1])
    if size >= MAX_ELEMENTS:
        raise ValueError(
            f"the sweep output would hold {v} variants x {n} points"
            + ("" if labels else f" x {z.shape[1]} classes")
            + f" = {size} values, over the int32 indexing limit 2^31 - 1; lower the resolution "
            "(points = R^2), the number of variants, or sweep labels instead of logits"
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


def sweep_impl(params_stack, slc, *, apply_fn, chunk_size, mode, labels):
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


def eval_impl(params_stack, x, *, apply_fn, chunk_size, mode, labels):
    apply_fn = jax.jit(apply_fn)
    n = x.shape[0]
    points = _data_points(x)
    shape, dtype = _out_struct(apply_fn, params_stack, points, n, chunk_size, labels)
    carry = _init_carry((num_variants(params_stack),), shape, dtype)
    return _fill(apply_fn, params_stack, points, n, chunk_size, mode, labels, carry, ())


_STATIC = ("apply_fn", "chunk_size", "mode", "labels")
sweep_jit = jax.jit(sweep_impl, static_argnames=_STATIC)
eval_jit = jax.jit(eval_impl, static_argnames=_STATIC)


# -- slice families: per-slice metrics, memory flat in the number of slices ------------------

#: Per-slice metrics of :func:`family_metrics_jit`, each ``[S, V]`` (``float_`` ones ``[S]``).
FAMILY_METRICS = ("boundary_jaccard_distance", "grid_change", "triple_junction_count")


def _family_metrics_impl(float_stack, params_stack, slc, *, apply_fn, chunk_size, mode):
    """Per-slice metrics of V variants against the float model on a stacked slice.

    ``lax.map`` over the S slices: slice ``s``'s float and variant label maps are swept with
    :func:`sweep_impl` (the same chunked loop as a single-slice sweep, so the maps are the
    single-slice ones bit for bit), reduced to the metrics of :data:`FAMILY_METRICS`, and
    dropped; only ``[S, V]`` numbers leave the loop, so memory beyond them is one slice's maps
    ``[V + 1, R, R]`` and one chunk, whatever S is.
    """

    def one(s):
        fl, f_ok = sweep_impl(
            float_stack, s, apply_fn=apply_fn, chunk_size=chunk_size, mode=mode, labels=True
        )
        ql, q_ok = sweep_impl(
            params_stack, s, apply_fn=apply_fn, chunk_size=chunk_size, mode=mode, labels=True
        )
        fl = fl[0]
        out = {
            "boundary_jaccard_distance": boundary_jaccard_distance(
                boundary_mask(fl), boundary_mask(ql)
            ),
            "grid_change": grid_change(fl, ql),
            "triple_junction_count": triple_junction_count(ql),
            "float_triple_junction_count": triple_junction_count(fl),
        }
        return out, f_ok[0] & q_ok

    return lax.map(one, slc)


#: ``family_metrics_jit(float_stack, params_stack, slc, *, apply_fn, chunk_size, mode)`` ->
#: ``(metrics, finite)``: ``metrics`` maps each name of :data:`FAMILY_METRICS` to ``[S, V]``
#: (and ``float_triple_junction_count`` to ``[S]``), ``finite`` bool[S, V]; ``slc`` stacked.
family_metrics_jit = jax.jit(
    _family_metrics_impl, static_argnames=("apply_fn", "chunk_size", "mode")
)


# -- device-parallel evaluation (jax.sharding) ------------------------------------------------

#: Name of the one mesh axis of :func:`device_mesh`; any mesh works (its axes are flattened).
MESH_AXIS = "devices"


def device_mesh(devices=None) -> Mesh:
    """A one-axis :class:`jax.sharding.Mesh` (axis :data:`MESH_AXIS`) over ``devices``.

    ``devices=None`` takes every device of the job (``jax.devices()``: all hosts' devices after
    ``jax.distributed.initialize()``; this host's devices in a single-process run).
    """
    devices = list(jax.devices() if devices is None else devices)
    if not devices:
        raise ValueError("device_mesh needs at least one device")
    return Mesh(np.array(devices, dtype=object), (MESH_AXIS,))


def resolve_mesh(mesh) -> Mesh | None:
    """The mesh a call shards over, or None for the single-device path.

    ``mesh=None`` (the default of every entry point) means all local devices when there is
    more than one (``jax.local_devices()``), else the single-device path; a
    :class:`~jax.sharding.Mesh` is used as given (all its axes flattened into one) unless it
    has one device; a sequence of devices becomes :func:`device_mesh` of them; ``False``
    forces the single-device path.
    """
    if mesh is False:
        return None
    if mesh is None:
        local = jax.local_devices()
        return device_mesh(local) if len(local) > 1 else None
    if not isinstance(mesh, Mesh):
        if isinstance(mesh, Sequence) and not isinstance(mesh, (str, bytes)):
            mesh = device_mesh(mesh)
        else:
            raise TypeError(
                "mesh must be None, False, a jax.sharding.Mesh or a sequence of devices, got "
                f"{type(mesh).__name__}"
            )
    return mesh if mesh.devices.size > 1 else None


class ShardPlan(NamedTuple):
    """How a sharded call splits its work: ``items`` work items ``(slice s, variant group g,
    point block b)``, ``per_device`` of them on each of ``devices`` devices (the last device's
    surplus items repeat the last item and are discarded).

    Variant group ``g`` is variants ``min(g G, V - G) .. + G - 1`` (``G = group``; 1 under
    ``"map"``), point block ``b`` is points ``min(b B, n - B) .. + B - 1`` (``B = block``, a
    multiple of the chunk, or n): like the engine's last chunk, the last group and block are
    shifted back instead of padded and recompute an overlap with identical values.
    """

    slices: int
    variants: int
    group: int
    groups: int
    points: int
    block: int
    blocks: int
    devices: int
    per_device: int

    @property
    def items(self) -> int:
        return self.slices * self.groups * self.blocks

    def item(self, t: int) -> tuple[int, int, int]:
        """``(s, v0, p0)``: slice, first variant and first point of item ``t``."""
        s, rest = divmod(t, self.groups * self.blocks)
        g, b = divmod(rest, self.blocks)
        v0 = min(g * self.group, self.variants - self.group)
        return s, v0, min(b * self.block, self.points - self.block)


def shard_plan(slices: int, variants: int, n: int, chunk: int, mode: str, devices: int):
    """The :class:`ShardPlan` minimising the points one device evaluates.

    Under ``"map"`` every variant is its own item; under ``"vmap"`` the V variants are split
    into ``min(V, devices)`` groups evaluated with ``vmap``. Points are then split into blocks
    (multiples of the chunk, so every model call has the chunk's shape and each point's
    logits are the single-device ones) until every device has work.
    """
    c = min(chunk, n)
    if mode == "map":
        group, groups = 1, variants
    else:
        groups = min(variants, devices)
        group = math.ceil(variants / groups)
        groups = math.ceil(variants / group)
    best = None
    for want in range(1, 2 * devices + 1):
        block = min(n, math.ceil(math.ceil(n / want) / c) * c)
        blocks = math.ceil(n / block)
        per = math.ceil(slices * groups * blocks / devices)
        cost = (per * block * group, blocks)
        if best is None or cost < best[0]:
            best = (cost, block, blocks, per)
    _, block, blocks, per = best
    return ShardPlan(slices, variants, group, groups, n, block, blocks, devices, per)


def _mesh_axes(mesh: Mesh):
    return tuple(mesh.axis_names)


def _sharded_impl(params_stack, data, *, apply_fn, chunk_size, mode, labels, mesh, plan, grid):
    """Per-device evaluation of ``plan.per_device`` work items inside ``shard_map``.

    ``data`` is the (stacked or single) Slice for a grid sweep (``grid=True``) or the inputs
    ``x`` for an evaluation, replicated on every device like ``params_stack``. Returns
    ``out[items_padded, G, B, ...]`` and ``finite[items_padded, G]``, sharded on the first
    axis.
    """
    apply_fn = jax.jit(apply_fn)
    axes = _mesh_axes(mesh)
    g_size, b_size = plan.group, plan.block
    stacked = grid and data.stacked
    if grid:
        single = jax.tree.map(lambda l: l[0], data) if stacked else data
        probe = _grid_points(single)
    else:
        probe = _data_points(data)
    shape, dtype = _out_struct(apply_fn, params_stack, probe, b_size, chunk_size, labels)
    tail = shape[1:]
    n_items = plan.items

    def local(params_stack, data):
        d = lax.axis_index(axes)
        carry = _init_carry((plan.per_device, g_size), (b_size, *tail), dtype)

        def item_body(i, carry):
            t = jnp.minimum(d * plan.per_device + i, n_items - 1)
            s = t // (plan.groups * plan.blocks)
            g = (t // plan.blocks) % plan.groups
            b = t % plan.blocks
            v0 = jnp.minimum(g * g_size, plan.variants - g_size)
            p0 = jnp.minimum(b * b_size, plan.points - b_size)
            params = jax.tree.map(
                lambda l: lax.dynamic_slice_in_dim(l, v0, g_size, axis=0), params_stack
            )
            if grid:
                slc = (
                    jax.tree.map(lambda l: lax.dynamic_index_in_dim(l, s, 0, keepdims=False), data)
                    if stacked
                    else data
                )
                base = _grid_points(slc)
            else:
                base = _data_points(data)

            def points(start, c):
                return base(p0 + start, c)

            return _fill(apply_fn, params, points, b_size, chunk_size, mode, labels, carry, (i,))

        return lax.fori_loop(0, plan.per_device, item_body, carry)

    spec = P(axes)
    return jax.shard_map(
        local, mesh=mesh, in_specs=(P(), P()), out_specs=(spec, spec), check_vma=False
    )(params_stack, data)


#: ``sharded_jit(params_stack, data, *, apply_fn, chunk_size, mode, labels, mesh, plan, grid)``
#: -> ``(out, finite)`` per work item of ``plan`` (see :func:`shard_plan`), sharded over the
#: flattened axes of ``mesh``; :func:`run_sweep` / :func:`run_eval` reassemble them.
sharded_jit = jax.jit(
    _sharded_impl,
    static_argnames=("apply_fn", "chunk_size", "mode", "labels", "mesh", "plan", "grid"),
)


def _to_host(x, mesh: Mesh) -> np.ndarray:
    """The whole of a sharded array on this host (every process gets all of it)."""
    if getattr(x, "is_fully_addressable", True):
        return np.asarray(x)
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def _run_sharded(apply_fn, params_stack, data, chunk, mode, labels, mesh):
    """``(out, finite)`` of a sweep (``data`` a Slice) or evaluation (``data`` inputs) on
    ``mesh``, gathered to the host in the single-device layout."""
    grid = isinstance(data, Slice)
    v = num_variants(params_stack)
    s_count = data.num_slices if grid else 1
    n = data.num_points if grid else data.shape[0]
    plan = shard_plan(s_count, v, n, chunk, mode, mesh.devices.size)
    replicated = NamedSharding(mesh, P())
    params_stack, data = jax.device_put((params_stack, data), replicated)
    out, finite = sharded_jit(
        params_stack,
        data,
        apply_fn=apply_fn,
        chunk_size=chunk,
        mode=mode,
        labels=labels,
        mesh=mesh,
        plan=plan,
        grid=grid,
    )
    out, finite = _to_host(out, mesh), _to_host(finite, mesh)
    full = np.zeros((s_count, v, n) + out.shape[3:], out.dtype)
    ok = np.ones((s_count, v), bool)
    for t in range(plan.items):
        s, v0, p0 = plan.item(t)
        full[s, v0 : v0 + plan.group, p0 : p0 + plan.block] = out[t]
        ok[s, v0 : v0 + plan.group] &= finite[t]
    if grid:
        r = data.resolution
        full = full.reshape((s_count, v, r, r) + out.shape[3:])
        if not data.stacked:
            full, ok = full[0], ok[0]
    else:
        full, ok = full[0], ok[0]
    return jnp.asarray(full), ok


# -- host-side entry points ------------------------------------------------------------------------


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


def _plan(apply_fn, params_stack, dim: int, chunk_size, variant_batching) -> tuple[str, int]:
    """``(mode, chunk)`` of a call: batching mode and checked chunk size for inputs of size D."""
    if not callable(apply_fn):
        raise TypeError(f"apply_fn must be callable (params, x) -> logits, got {apply_fn!r}")
    v = num_variants(params_stack)
    mode = resolve_variant_batching(variant_batching)
    return mode, check_chunk(chunk_size, dim, v if mode == "vmap" else 1)


def run_sweep(
    apply_fn,
    params_stack,
    slc,
    chunk_size,
    variant_batching,
    labels,
    check_finite,
    names=None,
    mesh=None,
):
    """Labels (``labels=True``) or logits of every variant on a slice grid (see
    :func:`~bq_jax.geometry.sweep_logits`); ``names(v)`` names variant ``v`` in NaN errors;
    ``mesh`` as in :func:`resolve_mesh`."""
    slc = _as_slice(slc)
    mode, chunk = _plan(apply_fn, params_stack, slc.dim, chunk_size, variant_batching)
    mesh = resolve_mesh(mesh)
    if mesh is not None:
        out, finite = _run_sharded(apply_fn, params_stack, slc, chunk, mode, labels, mesh)
    else:
        out, finite = sweep_jit(
            params_stack, slc, apply_fn=apply_fn, chunk_size=chunk, mode=mode, labels=labels
        )
    if check_finite:
        _raise_nonfinite(finite, "on the slice grid", names)
    return out


def run_eval(
    apply_fn, params_stack, x, chunk_size, variant_batching, check_finite, names=None, mesh=None
):
    """Logits ``[V, N, K]`` of every variant on inputs ``x`` (see
    :func:`~bq_jax.geometry.evaluate_logits`); ``names`` and ``mesh`` as in :func:`run_sweep`."""
    x = jnp.asarray(x)
    if x.ndim < 2 or x.shape[0] < 1:
        raise ValueError(f"x must be a non-empty batch [N, *input_shape], got shape {x.shape}")
    if not isinstance(x, jax.core.Tracer) and jnp.issubdtype(x.dtype, jnp.floating):
        bad = ~np.isfinite(np.asarray(x))
        if bad.any():
            first = tuple(int(i) for i in np.argwhere(bad)[0])
            raise ValueError(
                f"x (the inputs) holds {int(bad.sum())} NaN / inf values (first at index "
                f"{first}); the inputs, not the parameters, are not finite"
            )
    mode, chunk = _plan(
        apply_fn, params_stack, math.prod(x.shape[1:]), chunk_size, variant_batching
    )
    mesh = resolve_mesh(mesh)
    if mesh is not None:
        out, finite = _run_sharded(apply_fn, params_stack, x, chunk, mode, False, mesh)
    else:
        out, finite = eval_jit(
            params_stack, x, apply_fn=apply_fn, chunk_size=chunk, mode=mode, labels=False
        )
    if check_finite:
        _raise_nonfinite(finite, "on the inputs", names)
    return out


def run_family_metrics(
    apply_fn, float_params, params_stack, slc, chunk_size, variant_batching, names=None
) -> dict[str, np.ndarray]:
    """Host entry of :data:`family_metrics_jit` (see
    :func:`~bq_jax.geometry.family_metrics`): checks the arguments, runs the one jitted call,
    raises on NaN/inf logits (naming slice and variant) and returns numpy arrays."""
    slc = _as_slice(slc)
    if not slc.stacked:
        slc = stack_slices([slc])
    float_stack = jax.tree.map(lambda l: jnp.expand_dims(jnp.asarray(l), 0), float_params)
    mode, chunk = _plan(apply_fn, params_stack, slc.dim, chunk_size, variant_batching)
    metrics, finite = family_metrics_jit(
        float_stack, params_stack, slc, apply_fn=apply_fn, chunk_size=chunk, mode=mode
    )
    _raise_nonfinite(finite, "on the slice grid", names)
    return {k: np.asarray(v) for k, v in metrics.items()}


# -- local geometry (margin gradients at inputs) ---------------------------------------------


def _margin_grads(apply_fn, params, x, a, basis, chunk):
    """``(m[N], g[N, D'])`` margin and its input gradient (projected on ``basis`` if given)."""
    n = x.shape[0]
    input_shape = x.shape[1:]

    def one(xi, ai):
        return margin(apply_fn(params, xi.reshape((1,) + input_shape))[0], ai)

    grad_one = jax.vmap(jax.value_and_grad(one))
    d_out = 2 if basis is not None else math.prod(input_shape)

    def chunk_fn(start, c):
        xs = lax.dynamic_slice_in_dim(x, start, c, axis=0)
        ai = lax.dynamic_slice_in_dim(a, start, c, axis=0)
        m, g = grad_one(xs, ai)
        g = g.reshape(c, -1).astype(jnp.float32)  # float32 also for low-precision models
        if basis is not None:
            g = g @ basis
        return m.astype(jnp.float32), g

    struct = (
        jax.ShapeDtypeStruct((n,), jnp.float32),
        jax.ShapeDtypeStruct((n, d_out), jnp.float32),
    )
    return _fill_chunks(chunk_fn, n, chunk, struct)


def _radius_from(m, g, grad_tol):
    """``(radius, margin, grad_norm, normal, zero_gradient)`` from margins and gradients."""
    norm = jnp.linalg.norm(g, axis=-1)
    zero = norm <= grad_tol
    safe = jnp.where(zero, 1.0, norm)
    radius = jnp.where(zero, 0.0, m / safe)
    normal = jnp.where(jnp.expand_dims(zero, -1), 0.0, g / jnp.expand_dims(safe, -1))
    return radius, m, norm, normal, zero


def _margin_radius_impl(params, x, a, basis, grad_tol, *, apply_fn, chunk):
    return _radius_from(*_margin_grads(apply_fn, params, x, a, basis, chunk), grad_tol)


def _variant_local_impl(params_stack, x, a, normal_ref, grad_tol, *, apply_fn, chunk):
    def one(params):
        radius, m, norm, normal, zero = _radius_from(
            *_margin_grads(apply_fn, params, x, a, None, chunk), grad_tol
        )
        cos = jnp.clip(jnp.sum(normal * normal_ref, axis=-1), -1.0, 1.0)
        return radius, m, norm, zero, cos

    return lax.map(one, params_stack)


#: ``margin_radius_jit(params, x, a, basis, grad_tol, *, apply_fn, chunk)`` ->
#: ``(radius, margin, grad_norm, normal, zero_gradient)`` of one model at inputs ``x[N, ...]``
#: (``a`` int32[N] the float top class, ``basis`` float[D, 2] or None, ``grad_tol`` float32).
margin_radius_jit = jax.jit(_margin_radius_impl, static_argnames=("apply_fn", "chunk"))

#: ``variant_local_jit(params_stack, x, a, normal_ref, grad_tol, *, apply_fn, chunk)`` -> per
#: variant ``(radius, margin, grad_norm, zero_gradient, cos)``, each ``[V, N]``, with ``cos``
#: the clipped inner product of the variant's unit normal and ``normal_ref[N, D]``.
variant_local_jit = jax.jit(_variant_local_impl, static_argnames=("apply_fn", "chunk"))
