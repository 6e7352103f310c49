"""Differentiable surrogates of the boundary metrics, for gradient-based rounding objectives.

All are smooth (almost everywhere) in the logits and hence in the model parameters; use them
inside an optax loss. The float model's logits are constants (``stop_gradient``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from bq_jax.geometry.checks import check_logits
from bq_jax.geometry.metrics import pair_gap, top2

__all__ = ["soft_boundary_mask", "soft_jaccard", "huber", "boundary_gap_penalty"]

_REDUCTIONS = ("mean", "sum", "weighted_mean")


def _positive(name: str, value) -> None:
    if isinstance(value, (int, float)) and not value > 0:
        raise ValueError(f"{name} must be > 0, got {value}")


def soft_boundary_mask(logits, *, tau: float, temperature: float) -> jax.Array:
    """Soft boundary mask ``sigma((tau - gap(x)) / T)``, ``gap = z_(1) - z_(2)`` (top-1 minus
    top-2 logit of these logits).

    Near 1 where the two largest logits are within ``tau`` (close to a boundary), near 0 far
    from it; ``T -> 0`` gives the hard indicator ``[gap < tau]``. Paper: smooth surrogates.

    Args:
        logits: float[..., K] (e.g. a sweep's [V, R, R, K]).
        tau: gap threshold (logit units).
        temperature: T > 0.

    Returns:
        float[...] in (0, 1).

    Example:
        >>> soft_boundary_mask(jnp.array([[2.0, 2.0, 0.0]]), tau=0.0, temperature=1.0).tolist()
        [0.5]
    """
    _positive("temperature", temperature)
    z = check_logits(logits)
    top, _ = lax.top_k(z, 2)
    gap = top[..., 0] - top[..., 1]
    return jax.nn.sigmoid((tau - gap) / temperature)


def soft_jaccard(soft_a, soft_b, *, axis=None) -> jax.Array:
    """Soft Jaccard distance ``1 - sum(a b) / sum(a + b - a b)`` of masks with values in [0, 1].

    The product t-norm / probabilistic-sum relaxation of ``1 - |A and B| / |A or B|``; equal to
    the boundary Jaccard distance on {0, 1} masks, 0 when both masks are all zero (the
    denominator vanishes; the gradient there is 0, not NaN).

    Args:
        soft_a, soft_b: float arrays of one shape with values in [0, 1].
        axis: axes to reduce (None: all); e.g. ``(-2, -1)`` for masks [V, R, R].

    Example:
        >>> float(soft_jaccard(jnp.array([1.0, 0.0]), jnp.array([1.0, 1.0])))
        0.5
    """
    a, b = jnp.asarray(soft_a), jnp.asarray(soft_b)
    if a.shape != b.shape:
        raise ValueError(f"soft_a and soft_b must have one shape, got {a.shape} and {b.shape}")
    inter = jnp.sum(a * b, axis=axis)
    union = jnp.sum(a + b - a * b, axis=axis)
    pos = union > 0
    return jnp.where(pos, 1.0 - inter / jnp.where(pos, union, 1.0), 0.0)


def huber(x, delta: float = 1.0) -> jax.Array:
    """``0.5 x^2`` for ``|x| <= delta``, else ``delta (|x| - delta / 2)`` (``optax.huber_loss``)."""
    _positive("delta", delta)
    ax = jnp.abs(x)
    return jnp.where(ax <= delta, 0.5 * x * x, delta * (ax - 0.5 * delta))


def boundary_gap_penalty(
    logits_q,
    logits_f,
    *,
    temperature: float,
    delta: float = 1.0,
    weights=None,
    reduction: str = "mean",
) -> jax.Array:
    """Boundary-gap penalty ``(1/N) sum_x w(x) huber(g_Q(x) - g_F(x))``.

    ``g(x) = z_a(x) - z_b(x)`` with ``a``, ``b`` the FLOAT model's top class and runner-up at
    ``x`` (fixed per point), ``w(x) = exp(-|g_F(x)| / T)`` (points near the float boundary
    count most), ``huber`` with threshold ``delta``. Evaluate it on boundary-band points and/or
    slice grid points. Paper: boundary-gap penalty (smooth surrogate added to the rounding
    objective).

    ``reduction``: ``"mean"`` (default) divides the weighted sum by the number of points N, so
    the scale does not depend on the batch size while far points still count ``w << 1``;
    ``"sum"`` is the paper's plain sum; ``"weighted_mean"`` divides by ``sum_x w(x)`` (a
    weighted average of the Huber terms).

    Args:
        logits_q: float[..., N, K] logits of the model being optimised.
        logits_f: float[N, K] float logits at the same points (treated as constants).
        temperature: T > 0 of the weights.
        delta: Huber threshold > 0.
        weights: optional float[N] replacing ``w(x)`` (e.g. a band indicator).
        reduction: ``"mean"``, ``"sum"`` or ``"weighted_mean"``.

    Returns:
        float[...] penalty (scalar for a single model).

    Example:
        >>> zf = jnp.array([[2.0, 1.0], [0.0, 3.0]])
        >>> float(boundary_gap_penalty(zf, zf, temperature=1.0))
        0.0
    """
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}")
    _positive("temperature", temperature)
    zf = lax.stop_gradient(check_logits(logits_f, "logits_f"))
    zq = check_logits(logits_q, "logits_q")
    if zq.shape[zq.ndim - zf.ndim :] != zf.shape:
        raise ValueError(
            f"logits_q [..., N, K] must end with logits_f's shape {zf.shape}, got {zq.shape}"
        )
    a, b = top2(zf)
    gf = pair_gap(zf, a, b)
    gq = pair_gap(zq, a, b)
    if weights is None:
        w = jnp.exp(-jnp.abs(gf) / temperature)
    else:
        w = lax.stop_gradient(jnp.asarray(weights, zq.dtype))
        if w.shape != gf.shape:
            raise ValueError(f"weights must have shape {gf.shape} (one per point), got {w.shape}")
    lead = (1,) * (gq.ndim - gf.ndim)
    diff = gq - gf.reshape(lead + gf.shape)
    terms = w.reshape(lead + w.shape) * huber(diff, delta)
    axes = tuple(range(gq.ndim - gf.ndim, gq.ndim))
    total = jnp.sum(terms, axis=axes)
    if reduction == "sum":
        return total
    if reduction == "mean":
        return total / gf.size
    wsum = jnp.sum(w)
    return jnp.where(wsum > 0, total / jnp.where(wsum > 0, wsum, 1.0), 0.0)
