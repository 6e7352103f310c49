"""Grid sweeps: evaluate a stack of parameter variants over a slice grid in one jitted call.

:func:`sweep_logits` and :func:`sweep_labels` evaluate V parameter variants at the R x R
points of a :class:`~bq_jax.geometry.Slice` (or a stack of S slices), :func:`evaluate_logits`
at a batch of inputs. All three run one jitted, chunked call of the engine
(:mod:`bq_jax.geometry.engine`): memory beyond the output is one chunk whatever R is, and a
second call with new parameter values, a new plane or new inputs of the same shapes reuses the
compiled code as long as ``apply_fn`` is the same object (a fresh ``lambda`` per call
retraces). ``variant_batching="auto"`` evaluates the variants one after another on CPU
(``"map"``) and together (``"vmap"``) on accelerators.

A stacked slice (S planes, e.g. a :func:`~bq_jax.geometry.slice_family`) is one call too: the
planes are looped (``lax.fori_loop``) inside it, each swept by the same chunked loop as a single
plane, so plane ``s`` of the output equals a single-plane sweep of it bit for bit and the scratch
memory does not grow with S; the output itself is ``S x V x R^2``. When only per-plane metrics
are needed, :func:`~bq_jax.geometry.family_metrics` keeps ``[S, V]`` numbers instead.

Several devices (``mesh=``): the work -- (slice, variant or variant group, block of points)
items -- is split over the devices of a :class:`jax.sharding.Mesh` with ``jax.shard_map``
(parameters and slices are replicated: they are small next to the grid), each device runs the
same chunked loop on its items, and the results are gathered to the host in the single-device
layout. Every model call keeps the chunk's shape, so the labels and logits are the
single-device ones bit for bit. By default (``mesh=None``) every local device is used when
there is more than one; ``mesh=False`` keeps the single-device path.

Several hosts (a TPU pod slice, a multi-GPU cluster): call
``jax.distributed.initialize()`` at the start of every process (coordinator address, process
count and id as arguments or from the cluster's environment), then make the same call on
every process with the same arguments and ``mesh=device_mesh()`` (all devices of the job;
the default ``mesh=None`` would use only the local ones). Every process receives the whole
result (gathered with ``jax.experimental.multihost_utils.process_allgather``). This path is
documented, not tested: the tests run 8 forced CPU devices in one process.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax

from bq_jax.geometry.engine import (
    VARIANT_BATCHING,
    default_chunk_size,
    device_mesh,
    num_variants,
    resolve_mesh,
    resolve_variant_batching,
    run_eval,
    run_sweep,
)
from bq_jax.geometry.slices import Slice

__all__ = [
    "VARIANT_BATCHING",
    "default_chunk_size",
    "device_mesh",
    "resolve_mesh",
    "resolve_variant_batching",
    "num_variants",
    "sweep_logits",
    "sweep_labels",
    "evaluate_logits",
]


def sweep_logits(
    apply_fn: Callable,
    params_stack,
    slc: Slice | Sequence[Slice],
    *,
    chunk_size: int | None = None,
    variant_batching: str = "auto",
    check_finite: bool = True,
    mesh=None,
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
        mesh: devices to shard the work over (see the module docstring): None (default) for
            all local devices when there is more than one, else one device; a
            ``jax.sharding.Mesh`` (all its axes are flattened); a sequence of devices; or
            False for the single-device path. The result is the same, bit for bit.

    Returns:
        float[V, R, R, K], or float[S, V, R, R, K] for several slices.

    Raises:
        ValueError: leaves with different leading axes, NaN/inf logits, bad chunk size.

    Example:
        >>> import numpy as np
        >>> from bq_jax.geometry import pca_slice
        >>> def apply_fn(params, x):  # a linear classifier, K = 3
        ...     return x @ params["w"]
        >>> w = np.eye(2, 3, dtype=np.float32)
        >>> stack = {"w": np.stack([w, 2 * w])}  # V = 2 variants
        >>> x = np.random.default_rng(0).normal(size=(50, 2)).astype(np.float32)
        >>> sweep_logits(apply_fn, stack, pca_slice(x, resolution=16)).shape
        (2, 16, 16, 3)
    """
    return run_sweep(
        apply_fn, params_stack, slc, chunk_size, variant_batching, False, check_finite, None, mesh
    )


def sweep_labels(
    apply_fn: Callable,
    params_stack,
    slc: Slice | Sequence[Slice],
    *,
    chunk_size: int | None = None,
    variant_batching: str = "auto",
    check_finite: bool = True,
    mesh=None,
) -> jax.Array:
    """Predicted labels ``argmax_k z`` of every variant at every grid point, in one jitted call.

    Same arguments as :func:`sweep_logits` (``mesh`` included); the logits never leave the
    chunk, so the output is int32[V, R, R] (int32[S, V, R, R] for several slices). NaN/inf
    logits are still detected (per chunk, inside the call) and raise on the host.

    Example:
        >>> import numpy as np
        >>> from bq_jax.geometry import pca_slice
        >>> def apply_fn(params, x):
        ...     return x @ params["w"]
        >>> stack = {"w": np.stack([np.eye(2, 3, dtype=np.float32)] * 2)}
        >>> x = np.random.default_rng(0).normal(size=(50, 2)).astype(np.float32)
        >>> labels = sweep_labels(apply_fn, stack, pca_slice(x, resolution=16))
        >>> labels.dtype, labels.shape
        (dtype('int32'), (2, 16, 16))
    """
    return run_sweep(
        apply_fn, params_stack, slc, chunk_size, variant_batching, True, check_finite, None, mesh
    )


def evaluate_logits(
    apply_fn: Callable,
    params_stack,
    x,
    *,
    chunk_size: int | None = None,
    variant_batching: str = "auto",
    check_finite: bool = True,
    mesh=None,
) -> jax.Array:
    """float[V, N, K]: logits of every variant on a batch of inputs ``x[N, *input_shape]``,
    chunked over the batch exactly like :func:`sweep_logits` (one jitted call; ``mesh`` shards
    variants and blocks of inputs over devices as there).

    Example:
        >>> import numpy as np
        >>> def apply_fn(params, x):
        ...     return x @ params["w"]
        >>> stack = {"w": np.stack([np.eye(2, 3, dtype=np.float32)] * 2)}
        >>> evaluate_logits(apply_fn, stack, np.ones((5, 2), np.float32)).shape
        (2, 5, 3)
    """
    return run_eval(
        apply_fn, params_stack, x, chunk_size, variant_batching, check_finite, None, mesh
    )
