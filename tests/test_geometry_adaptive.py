"""Adaptive boundary tracing: equal to the dense map on a trained digits MLP, a small CNN and a
linear classifier with known boundaries, at several R; evaluation counts; no retrace."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from sklearn.datasets import load_digits

from bq_jax import geometry as G


def mlp(p, x):
    h = jnp.tanh(x.reshape(x.shape[0], -1) @ p["w1"] + p["b1"][None])
    return h @ p["w2"] + p["b2"][None]


def cnn(p, x):
    y = jax.lax.conv_general_dilated(
        x, p["k"], (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
    )
    y = jax.nn.relu(y + p["kb"][None, None, None])
    return y.reshape(y.shape[0], -1) @ p["w"] + p["b"][None]


def linear(p, x):
    return x @ p["w"] + p["b"][None]


def _train(apply_fn, params, x, y, steps=150):
    tx = optax.adam(1e-2)

    def loss(p):
        return optax.softmax_cross_entropy_with_integer_labels(apply_fn(p, x), y).mean()

    @jax.jit
    def step(p, s):
        g = jax.grad(loss)(p)
        u, s = tx.update(g, s, p)
        return optax.apply_updates(p, u), s

    with jax.numpy_dtype_promotion("standard"):  # optax's Adam mixes int32 and float32
        s = tx.init(params)
        for _ in range(steps):
            params, s = step(params, s)
    return params


@pytest.fixture(scope="module")
def digits():
    d = load_digits()
    x = ((d.data - d.data.mean(0)) / (d.data.std(0) + 1e-6)).astype(np.float32)
    return x, d.target.astype(np.int32)


def _stack(*ps):
    return jax.tree.map(lambda *l: jnp.stack(l), *ps)


@pytest.fixture(scope="module")
def trained_mlp(digits):
    x, y = digits
    k1, k2 = jax.random.split(jax.random.key(0))
    p = {
        "w1": jax.random.normal(k1, (64, 32)) / 8.0,
        "b1": jnp.zeros(32),
        "w2": jax.random.normal(k2, (32, 10)) / np.sqrt(32),
        "b2": jnp.zeros(10),
    }
    p = _train(mlp, p, jnp.asarray(x), jnp.asarray(y))
    coarse = jax.tree.map(lambda l: jnp.round(l * 8) / 8, p)  # a quantized-like variant
    return _stack(p, coarse), x


@pytest.fixture(scope="module")
def trained_cnn(digits):
    x, y = digits
    x = x.reshape(-1, 8, 8, 1)
    k1, k2 = jax.random.split(jax.random.key(1))
    p = {
        "k": jax.random.normal(k1, (3, 3, 1, 4)) / 3.0,
        "kb": jnp.zeros(4),
        "w": jax.random.normal(k2, (256, 10)) / 16.0,
        "b": jnp.zeros(10),
    }
    return _stack(_train(cnn, p, jnp.asarray(x[:600]), jnp.asarray(y[:600]), steps=100)), x


@pytest.mark.parametrize("r", [33, 100, 257])
def test_adaptive_equals_dense_on_the_digits_mlp(trained_mlp, r):
    params, x = trained_mlp
    slc = G.pca_slice(x, resolution=r)
    dense = np.asarray(G.sweep_labels(mlp, params, slc))
    assert len(np.unique(dense[0])) >= 4  # a map with real boundaries and junctions
    for certified in (False, True):
        res = G.adaptive_labels(mlp, params, slc, certified=certified)
        np.testing.assert_array_equal(res.labels, dense)
        assert res.dense_evaluations == r * r
        assert np.all(res.evaluations <= r * r)
    if r == 257:
        res = G.adaptive_labels(mlp, params, slc)
        assert np.all(res.evaluations * 3 < r * r), res.evaluations


@pytest.mark.parametrize("r", [40, 129])
def test_adaptive_equals_dense_on_a_small_cnn(trained_cnn, r):
    params, x = trained_cnn
    slc = G.pca_slice(x, resolution=r)
    dense = np.asarray(G.sweep_labels(cnn, params, slc))
    assert len(np.unique(dense)) >= 3
    res = G.adaptive_labels(cnn, params, slc, coarse_step=8)
    np.testing.assert_array_equal(res.labels, dense)
    assert res.evaluations[0] < r * r


@pytest.mark.parametrize("r", [17, 64, 301])
def test_adaptive_equals_dense_and_the_known_boundaries_of_a_linear_classifier(r):
    # 4 classes on the plane: z = x @ w + b, boundaries are the lines where two logits tie
    w = np.array([[1.0, -1.0, 0.5, 0.0], [0.3, 0.8, -1.2, 0.0]], np.float32)
    b = np.array([0.0, 0.1, -0.2, 0.05], np.float32)
    params = _stack({"w": w, "b": b}, {"w": 2 * w, "b": b - 0.3})
    x = np.random.default_rng(0).normal(size=(200, 2)).astype(np.float32)
    slc = G.pca_slice(x, resolution=r)
    dense = np.asarray(G.sweep_labels(linear, params, slc))
    # the known answer: argmax in float64 at the grid points (away from float32 ties)
    pts = np.asarray(slc.points(), np.float64)
    for v, (wv, bv) in enumerate(((w, b), (2 * w, b - 0.3))):
        z = pts @ wv.astype(np.float64) + bv
        srt = np.sort(z, axis=-1)
        clear = (srt[:, -1] - srt[:, -2]) > 1e-5
        np.testing.assert_array_equal(dense[v].ravel()[clear], z.argmax(-1)[clear])
    # a linear classifier's Lipschitz constant along the plane is known exactly
    basis = np.asarray(slc.basis, np.float64)
    lip = max(
        np.linalg.norm((w[:, a] - w[:, k]) @ basis) * s
        for a in range(4)
        for k in range(4)
        for s in (1.0, 2.0)
    )
    for kw in ({}, {"certified": True}, {"certified": True, "lipschitz": lip}):
        res = G.adaptive_labels(linear, params, slc, coarse_step=4, **kw)
        np.testing.assert_array_equal(res.labels, dense)
    assert res.lipschitz_source == "given" and np.all(res.lipschitz == lip)


def test_stacked_slices_count_evaluations_and_do_not_retrace(trained_mlp):
    params, x = trained_mlp
    slcs = [G.pca_slice(x, resolution=65), G.random_slice(jax.random.key(3), x, resolution=65)]
    traces = []

    def counted(p, xb):
        traces.append(1)
        return mlp(p, xb)

    res = G.adaptive_labels(counted, params, slcs, coarse_step=8)
    assert res.labels.shape == (2, 2, 65, 65) and res.evaluations.shape == (2, 2)
    np.testing.assert_array_equal(res.labels, G.sweep_labels(mlp, params, slcs))
    assert np.all(res.padded_evaluations >= res.evaluations)
    n = len(traces)
    new = jax.tree.map(lambda l: 0.9 * l, params)  # new values: same buckets, no new trace
    res2 = G.adaptive_labels(counted, new, slcs, coarse_step=8)
    np.testing.assert_array_equal(res2.labels, G.sweep_labels(mlp, new, slcs))
    assert len(traces) <= n + 2  # at most a power-of-two bucket not seen before


def test_compare_with_adaptive_labels_equals_dense(trained_mlp):
    params, x = trained_mlp
    pf = jax.tree.map(lambda l: l[0], params)
    slc = G.pca_slice(x, resolution=64)
    dense = G.compare(mlp, pf, params, slc, x[:300], x[300:600], return_maps=True)
    for how in ("adaptive", "adaptive-certified"):
        res = G.compare(
            mlp, pf, params, slc, x[:300], x[300:600], return_maps=True, slice_labels=how
        )
        for k in dense:
            np.testing.assert_array_equal(res[k], dense[k], err_msg=k)
    with pytest.raises(ValueError, match="slice_labels"):
        G.compare(mlp, pf, params, slc, x[:300], x[300:600], slice_labels="sparse")


def test_bad_arguments_raise(trained_mlp):
    params, x = trained_mlp
    slc = G.pca_slice(x, resolution=16)
    with pytest.raises(ValueError, match="power of two"):
        G.adaptive_labels(mlp, params, slc, coarse_step=6)
    with pytest.raises(ValueError, match="safety"):
        G.adaptive_labels(mlp, params, slc, certified=True, safety=0.5)
