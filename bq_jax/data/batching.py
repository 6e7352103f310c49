"""Minibatch iteration over in-memory arrays, shuffled with an explicit JAX key.

The one batching rule of the project (float training and QAT): epoch ``e`` visits
``jax.random.permutation(fold_in(key, e), N)`` cut into consecutive chunks of ``batch_size``.
"""

from __future__ import annotations

from collections.abc import Iterator

import jax
import numpy as np

from bq_jax._src.checks import check_int

__all__ = ["batch_indices", "batches", "num_batches"]


def num_batches(num_examples: int, batch_size: int, *, drop_last: bool = False) -> int:
    """Batches per epoch: ``floor(N / B)`` with ``drop_last``, else ``ceil(N / B)``."""
    num_examples = check_int("num_examples", num_examples, 0)
    batch_size = check_int("batch_size", batch_size, 1)
    return num_examples // batch_size if drop_last else -(-num_examples // batch_size)


def batch_indices(
    num_examples: int,
    batch_size: int,
    *,
    key=None,
    epoch: int | None = None,
    drop_last: bool = False,
) -> list[np.ndarray]:
    """Index arrays of one epoch's batches: ``jax.random.permutation(k, N)`` cut into
    consecutive chunks of ``batch_size``, with ``k = fold_in(key, epoch)`` (``k = key`` when
    ``epoch`` is None; the original order when ``key`` is None). The last batch is shorter
    unless ``drop_last``, which drops it.

    Args:
        num_examples: N.
        batch_size: B >= 1.
        key: JAX PRNG key for the shuffle, or None for no shuffle.
        epoch: epoch number folded into ``key`` (a fresh permutation per epoch), or None to
            use ``key`` as it is.
        drop_last: drop the final partial batch so every batch has exactly B examples.

    Returns:
        A list of int64 index arrays.

    Raises:
        ValueError: ``drop_last`` with N < B (no batch at all), or a bad size.

    Example:
        >>> [b.tolist() for b in batch_indices(5, 2)]
        [[0, 1], [2, 3], [4]]
        >>> [b.shape for b in batch_indices(10, 4, key=jax.random.key(0), epoch=3,
        ...                                 drop_last=True)]
        [(4,), (4,)]
    """
    count = num_batches(num_examples, batch_size, drop_last=drop_last)
    if count == 0 and num_examples > 0:
        raise ValueError(
            f"drop_last=True with {num_examples} examples and batch_size={batch_size} gives "
            "no batch; lower batch_size or set drop_last=False"
        )
    if key is None:
        order = np.arange(num_examples, dtype=np.int64)
    else:
        if epoch is not None:
            key = jax.random.fold_in(key, check_int("epoch", epoch, 0))
        order = np.asarray(jax.random.permutation(key, num_examples), dtype=np.int64)
    return [order[i * batch_size : (i + 1) * batch_size] for i in range(count)]


def batches(
    x, y, batch_size: int, *, key=None, epoch: int | None = None, drop_last: bool = False
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yields ``(x[idx], y[idx])`` for the batches of :func:`batch_indices`.

    Args:
        x: inputs ``[N, ...]``.
        y: labels ``[N]``.
        batch_size: B >= 1.
        key: JAX PRNG key for the shuffle, or None to keep the order.
        epoch: epoch number folded into ``key``, or None (see :func:`batch_indices`).
        drop_last: drop the final partial batch.

    Returns:
        An iterator over ``(x_batch, y_batch)`` numpy pairs.

    Example:
        >>> x, y = np.arange(10.0).reshape(5, 2), np.arange(5)
        >>> [yb.tolist() for _, yb in batches(x, y, 2)]
        [[0, 1], [2, 3], [4]]
        >>> key = jax.random.key(0)
        >>> [len(yb) for _, yb in batches(x, y, 2, key=key, epoch=1, drop_last=True)]
        [2, 2]
    """
    x, y = np.asarray(x), np.asarray(y)
    if x.ndim < 1 or y.ndim != 1 or x.shape[0] != y.shape[0]:
        raise ValueError(
            f"x and y must have the same number of examples along axis 0, got x.shape={x.shape} "
            f"and y.shape={y.shape}"
        )
    # Validated and shuffled now, so a bad argument fails at the call, not at the first batch.
    chunks = batch_indices(x.shape[0], batch_size, key=key, epoch=epoch, drop_last=drop_last)
    return ((x[idx], y[idx]) for idx in chunks)
