"""Local (first-order) boundary geometry at inputs: margin radius, displacement, normals.

``r(x) = m(x) / ||grad_x m(x)||`` is the first-order (DeepFool / large-margin) distance from
``x`` to the boundary of the float model's top class ``a``; for a linear classifier whose
runner-up stays fixed near ``x`` it is exact. ``n(x) = grad_x m / ||grad_x m||`` is the unit
normal of that boundary. Gradients are taken per input (``vmap`` of ``grad`` of the
one-input margin), so models whose outputs mix the batch are handled correctly.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from bq_jax._src.checks import is_real
from bq_jax.geometry.checks import align
from bq_jax.geometry.engine import check_chunk, margin_radius_jit
from bq_jax.geometry.metrics import masked_median

__all__ = [
    "GRAD_TOL",
    "MarginRadius",
    "margin_radius",
    "boundary_displacement",
    "normal_variation",
    "median_local_shift",
]

#: ``||grad_x m|| <= GRAD_TOL`` counts as a zero gradient (radius undefined, reported apart).
GRAD_TOL = 1e-12


class MarginRadius(NamedTuple):
    """Per-input local geometry from :func:`margin_radius` (all arrays have leading axis N)."""

    #: float32[N] ``m / ||grad m||``; 0 where ``zero_gradient`` (excluded from statistics).
    radius: jax.Array
    #: float32[N] margin ``m = z_a - max_{k != a} z_k``.
    margin: jax.Array
    #: float32[N] ``||grad_x m||`` (full space, or of the gradient projected on the basis).
    grad_norm: jax.Array
    #: float32[N, D] (or [N, 2] in-slice) unit normal ``grad m / ||grad m||``; 0 where zero.
    normal: jax.Array
    #: bool[N] ``||grad_x m|| <= grad_tol``: radius and normal undefined.
    zero_gradient: jax.Array

    @property
    def zero_gradient_count(self) -> int:
        """Number of inputs with a zero gradient."""
        return int(np.sum(np.asarray(self.zero_gradient)))


def _check_inputs(x, float_top):
    x = jnp.asarray(x, jnp.float32)
    if x.ndim < 2 or x.shape[0] < 1:
        raise ValueError(f"x must be a non-empty batch [N, *input_shape], got shape {x.shape}")
    if not isinstance(x, jax.core.Tracer) and not np.all(np.isfinite(np.asarray(x))):
        raise ValueError("x (the inputs) contains NaN or inf; radii need finite inputs")
    a = jnp.asarray(float_top)
    if not jnp.issubdtype(a.dtype, jnp.integer) or a.shape != x.shape[:1]:
        raise ValueError(f"float_top must be int[N] with N = {x.shape[0]}, got {a.dtype}{a.shape}")
    return x, a.astype(jnp.int32)


def margin_radius(
    apply_fn: Callable,
    params,
    x,
    *,
    float_top,
    basis=None,
    grad_tol: float = GRAD_TOL,
    chunk_size: int | None = None,
) -> MarginRadius:
    """Local logit-margin radius ``r(x) = m(x) / ||grad_x m(x)||`` at each input.

    ``m(x) = z_a(x) - max_{k != a} z_k(x)`` with ``a`` = ``float_top`` (the float model's top
    class), so ``r`` is negative where this model disagrees with the float top class. With
    ``basis`` (a slice's ``P[D, 2]``) the in-slice radius uses the projected gradient
    ``P^T grad_x m`` (distance within the plane). Where ``||grad|| <= grad_tol`` the radius is
    undefined: it is set to 0 and flagged in ``zero_gradient`` -- never a division by zero.
    Paper: local logit-margin radius (DeepFool first-order distance).

    Args:
        apply_fn: ``apply_fn(params, x[N, *input_shape]) -> logits[N, K]``.
        params: one parameter pytree (not a stack).
        x: inputs ``[N, *input_shape]``.
        float_top: int[N] the float model's argmax at ``x``.
        basis: optional float[D, 2] orthonormal slice basis (``Slice.basis``).
        grad_tol: gradient norms at or below this count as zero.
        chunk_size: inputs per gradient batch (None: ``default_chunk_size``).

    Returns:
        :class:`MarginRadius` ``(radius, margin, grad_norm, normal, zero_gradient)``.

    Example:
        >>> import numpy as np
        >>> def apply_fn(params, x):  # z = (x0, -x0): the boundary is the line x0 = 0
        ...     return x @ params["w"]
        >>> params = {"w": np.array([[1.0, -1.0], [0.0, 0.0]], np.float32)}
        >>> x = np.array([[2.0, 5.0], [-1.0, 0.0]], np.float32)
        >>> res = margin_radius(apply_fn, params, x, float_top=np.array([0, 1]))
        >>> res.radius.tolist(), res.zero_gradient_count
        ([2.0, 1.0], 0)
    """
    x, a = _check_inputs(x, float_top)
    if not (is_real(grad_tol) and np.isfinite(grad_tol) and grad_tol >= 0):
        raise ValueError(
            f"grad_tol must be a finite number >= 0 (gradient norms at or below it count as "
            f"zero; a negative value would turn that guard off), got {grad_tol!r}"
        )
    if basis is not None:
        basis = jnp.asarray(basis, jnp.float32)
        d = math.prod(x.shape[1:])
        if basis.shape != (d, 2):
            raise ValueError(f"basis must be [D, 2] = {(d, 2)}, got {basis.shape}")
        b = np.asarray(basis, np.float64)
        if not np.all(np.isfinite(b)) or not np.allclose(b.T @ b, np.eye(2), atol=1e-4):
            raise ValueError(
                "basis must be an orthonormal [D, 2] slice basis (Slice.basis: finite, "
                f"P^T P = I), got P^T P = {np.round(b.T @ b, 4).tolist()}"
            )
    chunk = check_chunk(chunk_size, math.prod(x.shape[1:]))
    res = MarginRadius(
        *margin_radius_jit(
            params, x, a, basis, jnp.float32(grad_tol), apply_fn=apply_fn, chunk=chunk
        )
    )
    if not isinstance(res.margin, jax.core.Tracer):
        bad = ~(np.isfinite(np.asarray(res.margin)) & np.isfinite(np.asarray(res.grad_norm)))
        if bad.any():
            raise ValueError(
                f"apply_fn produced NaN or inf margins or gradients at {int(bad.sum())} of "
                f"{bad.size} inputs (first: input {int(np.argmax(bad))}); check the parameters"
            )
    return res


def boundary_displacement(radius_q, radius_f) -> jax.Array:
    """First-order boundary displacement ``delta(x) = r_Q(x) - r_F(x)``.

    Positive: the quantized boundary moved away from ``x`` (larger signed radius). Exclude
    points with a zero gradient in either model (``MarginRadius.zero_gradient``). Paper:
    first-order boundary displacement.

    Example:
        >>> boundary_displacement(jnp.array([1.5]), jnp.array([1.0])).tolist()
        [0.5]
    """
    rq, rf = align(jnp.asarray(radius_q), jnp.asarray(radius_f), "radius_q", "radius_f", 1)
    return rq - rf


def normal_variation(normal_f, normal_q) -> jax.Array:
    """``1 - <n_F(x), n_Q(x)>`` per input, ``n = grad_x m / ||grad_x m||`` (unit normals).

    0 for parallel normals, 1 for orthogonal, 2 for opposite; the inner product is clipped to
    [-1, 1] so float rounding cannot leave that range. Inputs ``[..., N, D]``. Paper: normal
    variation.

    Example:
        >>> normal_variation(jnp.array([[1.0, 0.0]]), jnp.array([[0.0, 1.0]])).tolist()
        [1.0]
    """
    nf, nq = jnp.asarray(normal_f), jnp.asarray(normal_q)
    if nf.ndim < 2 or nq.ndim < 2:
        raise ValueError(f"normals must be [..., N, D], got {nf.shape} and {nq.shape}")
    nf, nq = align(nf, nq, "normal_f", "normal_q", 2)
    return 1.0 - jnp.clip(jnp.sum(nf * nq, axis=-1), -1.0, 1.0)


def median_local_shift(delta, band) -> jax.Array:
    """``median_{x in band} |delta(x)|``: median absolute first-order boundary displacement.

    ``band`` bool[N] marks the boundary-band points to use (and'ed with "both gradients
    non-zero" by the caller); NaN for an empty selection. Paper: median local boundary shift.

    Example:
        >>> float(median_local_shift(jnp.array([-0.5, 0.25, 5.0]), jnp.array([True, True, False])))
        0.375
    """
    return masked_median(jnp.abs(jnp.asarray(delta)), band)
