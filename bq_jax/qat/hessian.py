"""Hessian-vector products and the top eigen-directions of a loss Hessian.

* :func:`hvp`: ``H v = d/de grad L(w + e v) |_{e=0}``, forward-over-reverse
  (``jax.jvp(jax.grad(L), (w,), (v,))``), exact up to floating point and never forming ``H``.
* :func:`lanczos_top_eigs`: Lanczos with full re-orthogonalisation (Golub & Van Loan,
  "Matrix Computations", section 10.1; as used for neural-network Hessian spectra by
  Ghorbani et al. 2019): ``m`` Hessian-vector products give a tridiagonal ``T_m`` whose top
  Ritz values converge first to the largest eigenvalues.
* :func:`power_top_eigs`: power iteration with Hotelling deflation,
  ``v <- (H - sum_j lambda_j u_j u_j^T) v`` (finds the eigenvalues of largest magnitude, one at a
  time; PyHessian's method).
* :func:`dense_hessian`: the full matrix (``jax.hessian``), for tiny models and tests.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

__all__ = [
    "HessianEigs",
    "dense_hessian",
    "flat_hvp",
    "hvp",
    "lanczos_top_eigs",
    "power_top_eigs",
    "top_hessian_eigs",
]


def hvp(loss_fn: Callable, params, v):
    """Hessian-vector product ``H(params) v`` of a scalar ``loss_fn`` (pytrees in, pytree out).

    ``H v = jax.jvp(jax.grad(loss_fn), (params,), (v,))[1]`` (forward-over-reverse).

    Example:
      >>> hvp(lambda w: jnp.sum(w ** 3), jnp.array([1.0, 2.0]), jnp.array([1.0, 0.0]))
      Array([6., 0.], dtype=float32)
    """
    return jax.jvp(jax.grad(loss_fn), (params,), (v,))[1]


def flat_hvp(loss_fn: Callable, params) -> tuple[Callable, np.ndarray, Callable]:
    """``(matvec, w_flat, unravel)``: a jitted ``v[P] -> (H v)[P]`` on the flattened params.

    Example:
      >>> mv, w, unravel = flat_hvp(lambda p: jnp.sum(p["a"] ** 2), {"a": jnp.ones(3)})
      >>> mv(jnp.ones(3))
      Array([2., 2., 2.], dtype=float32)
    """
    w, unravel = ravel_pytree(params)

    def flat_loss(wf):
        return loss_fn(unravel(wf))

    matvec = jax.jit(lambda v: hvp(flat_loss, w, v))
    return matvec, w, unravel


def dense_hessian(loss_fn: Callable, params) -> jax.Array:
    """The full Hessian ``[P, P]`` of ``loss_fn`` at ``params`` (flattened with
    ``ravel_pytree``); only for tiny models.

    Example:
      >>> dense_hessian(lambda w: jnp.sum(w ** 2), jnp.ones(2))
      Array([[2., 0.],
             [0., 2.]], dtype=float32)
    """
    w, unravel = ravel_pytree(params)
    return jax.jit(jax.hessian(lambda wf: loss_fn(unravel(wf))))(w)


def _check_k(k: int, dim: int) -> None:
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= dim:
        raise ValueError(f"k must be an int in [1, {dim}] (the number of parameters), got {k!r}")


def lanczos_top_eigs(
    matvec: Callable, dim: int, k: int, *, num_iters: int = 80, key: jax.Array
) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` largest (algebraic) eigenvalues and unit eigenvectors of a symmetric operator.

    Lanczos: ``beta_{j+1} q_{j+1} = A q_j - alpha_j q_j - beta_j q_{j-1}`` with every new
    vector re-orthogonalised twice against all previous ones (classical Gram-Schmidt, float64
    on the host), then the eigenpairs of the tridiagonal ``T_m`` (Ritz pairs) are mapped back.
    Stops early if the Krylov space becomes invariant (``beta < 1e-10 * |T|``).

    Args:
      matvec: ``v[dim] -> (A v)[dim]`` (e.g. from :func:`flat_hvp`).
      dim: the operator's size ``P``.
      k: number of eigenpairs.
      num_iters: Lanczos steps ``m`` (clipped to ``[k, dim]``).
      key: PRNG key of the start vector.

    Returns:
      ``(values[k], vectors[k, dim])``, values in decreasing order, float64.

    Example:
      >>> a = jnp.diag(jnp.arange(1.0, 6.0))
      >>> vals, _ = lanczos_top_eigs(lambda v: a @ v, 5, 2, num_iters=5, key=jax.random.key(0))
      >>> np.round(vals, 4)
      array([5., 4.])
    """
    _check_k(k, dim)
    m = int(min(dim, max(k, num_iters)))
    q = np.asarray(jax.random.normal(key, (dim,), jnp.float32), np.float64)
    q /= np.linalg.norm(q)
    basis = np.zeros((m, dim), np.float64)
    alphas, betas = [], []
    beta, q_prev = 0.0, np.zeros(dim)
    for j in range(m):
        basis[j] = q
        w = np.asarray(matvec(jnp.asarray(q, jnp.float32)), np.float64)
        alpha = float(w @ q)
        w = w - alpha * q - beta * q_prev
        for _ in range(2):
            w -= basis[: j + 1].T @ (basis[: j + 1] @ w)
        alphas.append(alpha)
        beta = float(np.linalg.norm(w))
        scale = max(abs(a) for a in alphas) + (max(betas) if betas else 0.0)
        if j + 1 == m or beta <= 1e-10 * max(scale, 1e-30):
            break
        betas.append(beta)
        q_prev, q = q, w / beta
    size = len(alphas)
    t = np.diag(alphas) + np.diag(betas[: size - 1], 1) + np.diag(betas[: size - 1], -1)
    vals, vecs = np.linalg.eigh(t)
    if size < k:
        raise ValueError(
            f"Lanczos found an invariant subspace of size {size} < k={k}; the operator has "
            "fewer distinct eigen-directions reachable from the start vector"
        )
    order = np.argsort(vals)[::-1][:k]
    vectors = (basis[:size].T @ vecs[:, order]).T
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return vals[order], vectors


def power_top_eigs(
    matvec: Callable,
    dim: int,
    k: int,
    *,
    num_iters: int = 500,
    tol: float = 1e-6,
    key: jax.Array,
) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` eigenpairs of largest magnitude by power iteration with deflation.

    For ``i = 1..k``: ``v <- B v / |B v|`` with ``B = A - sum_{j<i} lambda_j u_j u_j^T``
    until the eigen-residual ``|B v - lambda v| <= tol * |lambda|`` (``lambda = v^T B v``, the
    Rayleigh quotient) or ``num_iters``; ``v`` is kept orthogonal to the ``u_j``.

    Returns:
      ``(values[k], vectors[k, dim])`` in the order found (decreasing magnitude), float64.

    Example:
      >>> a = jnp.diag(jnp.array([3.0, 1.0, 0.5]))
      >>> vals, _ = power_top_eigs(lambda v: a @ v, 3, 1, key=jax.random.key(0))
      >>> round(float(vals[0]), 5)
      3.0
    """
    _check_k(k, dim)
    vals: list[float] = []
    vecs: list[np.ndarray] = []
    for i in range(k):
        v = np.asarray(jax.random.normal(jax.random.fold_in(key, i), (dim,)), np.float64)
        lam = 0.0
        for _ in range(num_iters):
            for u in vecs:
                v -= (u @ v) * u
            v /= np.linalg.norm(v)
            bv = np.asarray(matvec(jnp.asarray(v, jnp.float32)), np.float64)
            for lj, u in zip(vals, vecs, strict=True):
                bv -= lj * (u @ v) * u
            lam = float(v @ bv)
            nrm = np.linalg.norm(bv)
            if nrm == 0.0:
                break
            residual = np.linalg.norm(bv - lam * v)
            v = bv / nrm
            if residual <= tol * abs(lam):
                break
        for u in vecs:
            v -= (u @ v) * u
        v /= np.linalg.norm(v)
        vals.append(lam)
        vecs.append(v)
    return np.asarray(vals), np.stack(vecs)


@dataclasses.dataclass(frozen=True)
class HessianEigs:
    """Top eigenpairs of a loss Hessian at ``params``.

    Attributes:
      values: float64[k], decreasing.
      vectors: float64[k, P] orthonormal rows, in the ``ravel_pytree`` order of ``params``.
      unravel: maps a flat ``[P]`` vector back to the params pytree.
      method: ``"lanczos"`` or ``"power"``.
    """

    values: np.ndarray
    vectors: np.ndarray
    unravel: Callable
    method: str

    def project(self, d) -> np.ndarray:
        """Coordinates ``V d`` (float64[k]) of a flat vector or params pytree ``d``."""
        flat = (
            d if isinstance(d, np.ndarray | jax.Array) and np.ndim(d) == 1 else ravel_pytree(d)[0]
        )
        return self.vectors @ np.asarray(flat, np.float64)


def top_hessian_eigs(
    loss_fn: Callable,
    params,
    k: int,
    *,
    method: str = "lanczos",
    num_iters: int | None = None,
    key: jax.Array,
) -> HessianEigs:
    """Top-``k`` eigenpairs of the Hessian of ``loss_fn`` at ``params`` from Hessian-vector
    products only (:func:`lanczos_top_eigs` or :func:`power_top_eigs`).

    Args:
      loss_fn: scalar function of the params pytree.
      params: the point (e.g. the float solution's ``"params"`` collection).
      k: number of eigen-directions.
      method: ``"lanczos"`` (largest algebraic) or ``"power"`` (largest magnitude, deflation).
      num_iters: Lanczos steps (default ``max(4k, 60)``) or power iterations per eigenpair
        (default 500).
      key: PRNG key of the start vectors.

    Example:
      >>> curvature = jnp.array([3.0, 2.0, 1.0])
      >>> loss = lambda p: 0.5 * jnp.sum(curvature * p["w"] ** 2)
      >>> eig = top_hessian_eigs(loss, {"w": jnp.ones(3)}, 2, key=jax.random.key(0))
      >>> np.round(eig.values, 4), np.round(np.abs(eig.vectors), 4)
      (array([3., 2.]), array([[1., 0., 0.],
             [0., 1., 0.]]))
    """
    if method not in ("lanczos", "power"):
        raise ValueError(f"method must be 'lanczos' or 'power', got {method!r}")
    matvec, w, unravel = flat_hvp(loss_fn, params)
    dim = int(w.shape[0])
    if method == "lanczos":
        vals, vecs = lanczos_top_eigs(
            matvec, dim, k, num_iters=num_iters or max(4 * k, 60), key=key
        )
    else:
        vals, vecs = power_top_eigs(matvec, dim, k, num_iters=num_iters or 500, key=key)
        order = np.argsort(vals)[::-1]
        vals, vecs = vals[order], vecs[order]
    return HessianEigs(values=vals, vectors=vecs, unravel=unravel, method=method)
