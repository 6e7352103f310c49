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

from bq_jax.geometry.metrics import _align, margin, masked_median
from bq_jax.geometry.sweep import _check_chunk, _fill_chunks

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


def _margin_grads(apply_fn, params, x, a, basis, chunk):
    """``(m[N], g[N, D'])`` margin and its input gradient (projected on ``basis`` if given)."""
    n = x.shape[0]
    input_shape = x.shape[1:]

    def one(xi, ai):
        return margin(apply_fn(params, xi.reshape((1,) + input_shape))[0], ai)

    grad_one = jax.vmap(jax.value_and_grad(one))
    d_out = 2 if basis is not None else math.prod(input_shape)

    def chunk_fn(start, c):
        xs = jax.lax.dynamic_slice_in_dim(x, start, c, axis=0)
        ai = jax.lax.dynamic_slice_in_dim(a, start, c, axis=0)
        m, g = grad_one(xs, ai)
        g = g.reshape(c, -1)
        if basis is not None:
            g = g @ basis
        return (m, g), jnp.asarray(True)

    struct = (
        jax.ShapeDtypeStruct((n,), jnp.float32),
        jax.ShapeDtypeStruct((n, d_out), jnp.float32),
    )
    (m, g), _ = _fill_chunks(chunk_fn, n, chunk, struct)
    return m, g


def _radius_from(m, g, grad_tol):
    norm = jnp.linalg.norm(g, axis=-1)
    zero = norm <= grad_tol
    safe = jnp.where(zero, 1.0, norm)
    radius = jnp.where(zero, 0.0, m / safe)
    normal = jnp.where(jnp.expand_dims(zero, -1), 0.0, g / jnp.expand_dims(safe, -1))
    return MarginRadius(radius, m, norm, normal, zero)


def _margin_radius_impl(params, x, a, basis, grad_tol, *, apply_fn, chunk):
    m, g = _margin_grads(apply_fn, params, x, a, basis, chunk)
    return _radius_from(m, g, grad_tol)


_margin_radius_jit = jax.jit(_margin_radius_impl, static_argnames=("apply_fn", "chunk"))


def _variant_local_impl(params_stack, x, a, normal_ref, grad_tol, *, apply_fn, chunk):
    """Per variant: margin, grad norm, radius, zero mask and ``<n_Q, normal_ref>``."""

    def one(params):
        r = _radius_from(*_margin_grads(apply_fn, params, x, a, None, chunk), grad_tol)
        cos = jnp.clip(jnp.sum(r.normal * normal_ref, axis=-1), -1.0, 1.0)
        return r.radius, r.margin, r.grad_norm, r.zero_gradient, cos

    return jax.lax.map(one, params_stack)


_variant_local_jit = jax.jit(_variant_local_impl, static_argnames=("apply_fn", "chunk"))


def _check_inputs(x, float_top):
    x = jnp.asarray(x, jnp.float32)
    if x.ndim < 2 or x.shape[0] < 1:
        raise ValueError(f"x must be a non-empty batch [N, *input_shape], got shape {x.shape}")
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
        >>> res = margin_radius(apply_fn, params, x, float_top=top)  # doctest: +SKIP
        >>> res.radius.shape, res.zero_gradient_count  # doctest: +SKIP
        ((450,), 0)
    """
    x, a = _check_inputs(x, float_top)
    if basis is not None:
        basis = jnp.asarray(basis, jnp.float32)
        d = math.prod(x.shape[1:])
        if basis.shape != (d, 2):
            raise ValueError(f"basis must be [D, 2] = {(d, 2)}, got {basis.shape}")
    chunk = _check_chunk(chunk_size, math.prod(x.shape[1:]))
    return _margin_radius_jit(
        params, x, a, basis, jnp.float32(grad_tol), apply_fn=apply_fn, chunk=chunk
    )


def boundary_displacement(radius_q, radius_f) -> jax.Array:
    """First-order boundary displacement ``delta(x) = r_Q(x) - r_F(x)``.

    Positive: the quantized boundary moved away from ``x`` (larger signed radius). Exclude
    points with a zero gradient in either model (``MarginRadius.zero_gradient``). Paper:
    first-order boundary displacement.

    Example:
        >>> boundary_displacement(jnp.array([1.5]), jnp.array([1.0])).tolist()
        [0.5]
    """
    rq, rf = _align(jnp.asarray(radius_q), jnp.asarray(radius_f), "radius_q", "radius_f", 1)
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
    nf, nq = _align(nf, nq, "normal_f", "normal_q", 2)
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
