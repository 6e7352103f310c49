"""Array-argument checks shared by the geometry modules (internal; not re-exported).

The metric, local-geometry and surrogate functions take batched arrays whose leading axes may
differ (a float model's ``[N]`` against variants' ``[V, N]``); :func:`align` broadcasts them
explicitly, so nothing relies on implicit rank promotion.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

__all__ = ["align", "check_logits"]


def align(a: jax.Array, b: jax.Array, name_a: str, name_b: str, core: int):
    """Broadcast ``a`` and ``b`` to one shape, adding missing leading axes explicitly.

    The last ``core`` axes must agree; the leading axes broadcast as in numpy.

    Example:
        >>> a, b = align(jnp.zeros((2, 3)), jnp.ones(3), "a", "b", 1)
        >>> a.shape, b.shape
        ((2, 3), (2, 3))
    """
    if a.shape[a.ndim - core :] != b.shape[b.ndim - core :] or a.ndim < core or b.ndim < core:
        raise ValueError(
            f"{name_a} and {name_b} must agree on their last {core} axes, got shapes "
            f"{a.shape} and {b.shape}"
        )
    nd = max(a.ndim, b.ndim)
    a = a.reshape((1,) * (nd - a.ndim) + a.shape)
    b = b.reshape((1,) * (nd - b.ndim) + b.shape)
    shape = jnp.broadcast_shapes(a.shape, b.shape)
    return jnp.broadcast_to(a, shape), jnp.broadcast_to(b, shape)


def check_logits(logits, name: str = "logits") -> jax.Array:
    """``logits`` as an array, checked to be float ``[..., K]`` with ``K >= 2`` classes."""
    logits = jnp.asarray(logits)
    if logits.ndim < 1 or logits.shape[-1] < 2 or not jnp.issubdtype(logits.dtype, jnp.floating):
        raise ValueError(f"{name} must be float [..., K] with K >= 2 classes, got {logits.shape}")
    return logits
