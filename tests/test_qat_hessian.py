"""Hessian-vector products against finite differences and a dense Hessian; Lanczos and power
iteration against a dense eigendecomposition."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.flatten_util import ravel_pytree

from bq_jax.qat import dense_hessian, hvp, lanczos_top_eigs, power_top_eigs, top_hessian_eigs
from bq_jax.qat.hessian import flat_hvp


class _Tiny(nn.Module):
    hidden: int = 6

    @nn.compact
    def __call__(self, x):
        if self.hidden:
            x = jnp.tanh(nn.Dense(self.hidden)(x))
        return nn.Dense(3)(x)


def _problem(dtype=jnp.float32, hidden=6):
    rng = np.random.RandomState(0)
    x = jnp.asarray(rng.normal(size=(40, 4)), dtype)
    y = jnp.asarray(rng.randint(0, 3, size=40), jnp.int32)
    module = _Tiny(hidden)
    # float32 initial values (the same for every dtype), then cast: flax would refuse to mix
    # float32 params with float64 inputs under strict promotion.
    params = jax.jit(module.init)(jax.random.key(0), x.astype(jnp.float32))["params"]
    params = jax.jit(lambda p: jax.tree.map(lambda a: a.astype(dtype), p))(params)

    def loss(p):
        logits = module.apply({"params": p}, x)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    return loss, params


def test_hvp_matches_central_finite_differences_float64():
    with jax.enable_x64(True):
        loss, params = _problem(jnp.float64)
        rng = np.random.RandomState(1)
        v = jax.tree.map(lambda a: jnp.asarray(rng.normal(size=a.shape), jnp.float64), params)
        eps = 1e-5
        g = jax.jit(jax.grad(loss))
        plus = g(jax.tree.map(lambda p, d: p + eps * d, params, v))
        minus = g(jax.tree.map(lambda p, d: p - eps * d, params, v))
        fd = jax.tree.map(lambda a, b: (a - b) / (2 * eps), plus, minus)
        got = jax.jit(lambda p, v: hvp(loss, p, v))(params, v)
        # central differences: error O(eps^2 |g'''|) ~ 1e-10, roundoff ~ 1e-16 / eps ~ 1e-11
        for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(fd), strict=True):
            assert a.dtype == jnp.float64
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-7, atol=1e-9)


def test_hvp_matches_dense_hessian():
    loss, params = _problem()
    h = dense_hessian(loss, params)
    w, _ = ravel_pytree(params)
    assert h.shape == (w.size, w.size)
    np.testing.assert_allclose(np.asarray(h), np.asarray(h).T, atol=1e-6)
    matvec, w0, unravel = flat_hvp(loss, params)
    np.testing.assert_array_equal(np.asarray(w0), np.asarray(w))
    v = jnp.asarray(np.random.RandomState(3).normal(size=w.shape), jnp.float32)
    np.testing.assert_allclose(np.asarray(matvec(v)), np.asarray(h @ v), rtol=1e-5, atol=1e-6)
    tree = jax.jit(lambda v: ravel_pytree(hvp(loss, params, unravel(v)))[0])(v)
    np.testing.assert_allclose(np.asarray(tree), np.asarray(matvec(v)), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("method", ["lanczos", "power"])
def test_top_eigs_match_dense_eigendecomposition(method):
    # Lanczos on the (indefinite) Hessian of a tanh MLP; power iteration, which finds the
    # largest magnitudes, on softmax regression (convex: a positive semi-definite Hessian).
    loss, params = _problem(hidden=6 if method == "lanczos" else 0)
    h = np.asarray(dense_hessian(loss, params), np.float64)
    h = (h + h.T) / 2
    vals, vecs = np.linalg.eigh(h)
    # largest algebraic for Lanczos, largest magnitude for power iteration
    order = np.argsort(vals if method == "lanczos" else np.abs(vals))[::-1][:3]
    if method == "power":
        # the test's premise: the three largest-magnitude eigenvalues are positive and separated
        assert np.all(vals[order] > 0) and np.min(-np.diff(vals[order])) > 1e-3 * vals[order[0]]
    eig = top_hessian_eigs(
        loss,
        params,
        3,
        method=method,
        num_iters=60 if method == "lanczos" else 5000,
        key=jax.random.key(1),
    )
    np.testing.assert_allclose(eig.values, np.sort(vals[order])[::-1], rtol=1e-4, atol=1e-6)
    for i, j in enumerate(sorted(order, key=lambda j: -vals[j])):
        cos = abs(float(eig.vectors[i] @ vecs[:, j]))
        assert cos > 1 - 1e-4, (method, i, cos)
    np.testing.assert_allclose(eig.vectors @ eig.vectors.T, np.eye(3), atol=1e-8)


def test_lanczos_and_power_on_a_known_spectrum():
    d = jnp.asarray(np.linspace(0.1, 10.0, 50), jnp.float32)

    def matvec(v):
        return d * v

    vals, vecs = lanczos_top_eigs(matvec, 50, 4, num_iters=50, key=jax.random.key(0))
    np.testing.assert_allclose(vals, np.asarray(d)[::-1][:4], rtol=1e-5)
    np.testing.assert_allclose(np.abs(vecs[0, -1]), 1.0, atol=1e-5)
    pvals, _ = power_top_eigs(matvec, 50, 2, num_iters=5000, tol=1e-12, key=jax.random.key(0))
    np.testing.assert_allclose(pvals, np.asarray(d)[::-1][:2], rtol=1e-4)
    with pytest.raises(ValueError, match="k must be"):
        lanczos_top_eigs(matvec, 50, 0, key=jax.random.key(0))
    with pytest.raises(ValueError, match="method"):
        top_hessian_eigs(
            lambda p: jnp.sum(p**2), jnp.ones(3), 1, method="arnoldi", key=jax.random.key(0)
        )
