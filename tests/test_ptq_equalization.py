"""Cross-layer equalization and empirical bias correction on small MLP / CNN models."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bq_jax import ptq


class _MLP(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Dense(16)(x))
        x = nn.relu(nn.Dense(12)(x))
        return nn.Dense(5)(x)


class _CNN(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Conv(6, (3, 3))(x))
        x = nn.max_pool(x, (2, 2), (2, 2))
        x = nn.relu(nn.Conv(5, (3, 3))(x))
        x = x.reshape(x.shape[0], -1)
        return nn.Dense(4)(x)


def _imbalance(variables, seed):
    """Spread per-channel ranges over two decades (as after training with BN folded)."""
    rng = np.random.default_rng(seed)
    flat = ptq.flatten_params(variables)
    for p, w in list(flat.items()):
        if p.endswith("kernel"):
            f = jnp.asarray(10.0 ** rng.uniform(-1, 1, size=w.shape[-1]), jnp.float32)
            flat[p] = w * f.reshape((1,) * (w.ndim - 1) + f.shape)
            flat[p.replace("kernel", "bias")] = 0.1 * f
    return ptq.unflatten_params(flat)


def _numpy_init(model, x, seed):
    """Random variables of ``model`` without compiling its initialisers (fast on CPU)."""
    shapes = jax.eval_shape(model.init, jax.random.key(0), x)
    rng = np.random.default_rng(seed)

    def leaf(path, s):
        name = path[-1].key
        if name == "kernel":
            w = rng.normal(size=s.shape) / np.sqrt(np.prod(s.shape[:-1]))
        elif name == "var":
            w = rng.uniform(0.2, 3.0, size=s.shape)
        elif name == "scale":
            w = 1.0 + 0.5 * rng.normal(size=s.shape)
        else:
            w = 0.3 * rng.normal(size=s.shape)
        return jnp.asarray(w, jnp.float32)

    return jax.tree_util.tree_map_with_path(leaf, shapes)


@pytest.fixture(scope="module")
def mlp():
    m = _MLP()
    x = jax.random.normal(jax.random.key(0), (64, 10))
    v = _imbalance(_numpy_init(m, x, 1), 2)
    return m.apply, v, x


def test_cle_preserves_outputs_and_reduces_spread(mlp):
    apply_fn, v, x = mlp
    res = ptq.cross_layer_equalization(apply_fn, v, x)
    assert res.pairs == (("Dense_0", "Dense_1"), ("Dense_1", "Dense_2"))
    ref = apply_fn(v, x)
    np.testing.assert_allclose(
        np.asarray(apply_fn(res.params, x)),
        np.asarray(ref),
        rtol=1e-5,
        atol=1e-5 * float(jnp.max(jnp.abs(ref))),
    )
    k = lambda p, n: p["params"][n]["kernel"]
    for a, b in res.pairs:
        # The spread of output-channel ranges of the first layer of each pair shrinks ...
        before = float(ptq.channel_range_spread(k(v, a), -1))
        after = float(ptq.channel_range_spread(k(res.params, a), -1))
        assert after < before, (a, before, after)

        # ... and the white paper's objective sum_i p1_i * p2_i (p = r / R) increases.
        def objective(p, a=a, b=b):
            r1, r2 = ptq.channel_ranges(k(p, a), -1), ptq.channel_ranges(k(p, b), -2)
            return float(jnp.sum(r1 / jnp.max(r1) * r2 / jnp.max(r2)))

        assert objective(res.params) > objective(v)
    # At the fixed point the two ranges of every equalized channel coincide.
    for a, b in res.pairs:
        np.testing.assert_allclose(
            np.asarray(ptq.channel_ranges(k(res.params, a), -1)),
            np.asarray(ptq.channel_ranges(k(res.params, b), -2)),
            rtol=1e-3,
        )


def test_cle_single_pair_formula():
    """One sweep on one pair is exactly the white paper's s_i = sqrt(r1_i r2_i) / r2_i."""
    m = _MLP()
    x = jax.random.normal(jax.random.key(3), (8, 10))
    v = _imbalance(_numpy_init(m, x, 4), 5)
    res = ptq.cross_layer_equalization(m.apply, v, x, pairs=[("Dense_1", "Dense_2")], max_sweeps=1)
    w1 = np.asarray(v["params"]["Dense_1"]["kernel"], np.float64)
    w2 = np.asarray(v["params"]["Dense_2"]["kernel"], np.float64)
    r1, r2 = np.abs(w1).max(0), np.abs(w2).max(1)
    s = np.sqrt(r1 * r2) / r2
    np.testing.assert_allclose(np.asarray(res.scales[("Dense_1", "Dense_2")]), s, rtol=1e-5)
    np.testing.assert_allclose(
        np.asarray(res.params["params"]["Dense_1"]["kernel"]), w1 / s, rtol=1e-5
    )
    np.testing.assert_allclose(
        np.asarray(res.params["params"]["Dense_2"]["kernel"]), w2 * s[:, None], rtol=1e-5
    )
    np.testing.assert_array_equal(
        np.asarray(res.params["params"]["Dense_0"]["kernel"]),
        np.asarray(v["params"]["Dense_0"]["kernel"]),
    )


def test_cle_cnn_and_errors():
    m = _CNN()
    x = jax.random.normal(jax.random.key(6), (4, 8, 8, 3))
    v = _imbalance(_numpy_init(m, x, 7), 8)
    res = ptq.cross_layer_equalization(m.apply, v, x)
    assert res.pairs == (("Conv_0", "Conv_1"),)  # Conv_1 -> Dense goes through a flatten
    ref = m.apply(v, x)
    np.testing.assert_allclose(
        np.asarray(m.apply(res.params, x)),
        np.asarray(ref),
        rtol=1e-5,
        atol=1e-5 * float(jnp.max(jnp.abs(ref))),
    )
    assert float(ptq.channel_range_spread(res.params["params"]["Conv_0"]["kernel"])) < float(
        ptq.channel_range_spread(v["params"]["Conv_0"]["kernel"])
    )
    with pytest.raises(ValueError, match="not found"):
        ptq.cross_layer_equalization(m.apply, v, x, pairs=[("Conv_0", "Conv_9")])
    with pytest.raises(ValueError, match="output channels"):
        ptq.cross_layer_equalization(m.apply, v, x, pairs=[("Conv_1", "Dense_0")])

    class Tanh(nn.Module):
        @nn.compact
        def __call__(self, x):
            return nn.Dense(3)(jnp.tanh(nn.Dense(4)(x)))

    t = Tanh()
    xt = jax.random.normal(jax.random.key(9), (8, 2))
    vt = _imbalance(_numpy_init(t, xt, 10), 11)
    with pytest.raises(ValueError, match="positively homogeneous"):
        ptq.cross_layer_equalization(t.apply, vt, xt)


def _round_to_grid(variables, bits=3):
    def q(p, w):
        if not p.endswith("kernel"):
            return w
        s = jnp.max(jnp.abs(w), axis=0, keepdims=True) / (2 ** (bits - 1) - 1)
        return jnp.clip(jnp.round(w / s), -(2 ** (bits - 1)), 2 ** (bits - 1) - 1) * s

    flat = ptq.flatten_params(variables)
    return ptq.unflatten_params({p: q(p, w) for p, w in flat.items()})


def test_bias_correction_zeroes_calibration_mean_error(mlp):
    apply_fn, v, x = mlp
    vq = _round_to_grid(v)
    before = ptq.layer_mean_errors(apply_fn, v, vq, x)
    vbc = ptq.bias_correction(apply_fn, v, vq, x)
    after = ptq.layer_mean_errors(apply_fn, v, vbc, x)
    for name in before:
        b = float(jnp.mean(jnp.abs(before[name])))
        a = float(jnp.mean(jnp.abs(after[name])))
        assert a < 0.05 * b, (name, b, a)
    # Kernels untouched (still on the grid); held-out mean logit error also shrinks here.
    np.testing.assert_array_equal(
        np.asarray(vbc["params"]["Dense_1"]["kernel"]),
        np.asarray(vq["params"]["Dense_1"]["kernel"]),
    )
    xh = jax.random.normal(jax.random.key(12), (256, 10))
    eh_before = ptq.layer_mean_errors(apply_fn, v, vq, xh)["Dense_2"]
    eh_after = ptq.layer_mean_errors(apply_fn, v, vbc, xh)["Dense_2"]
    assert float(jnp.mean(jnp.abs(eh_after))) < float(jnp.mean(jnp.abs(eh_before)))


def test_bias_correction_errors(mlp):
    apply_fn, v, x = mlp
    with pytest.raises(ValueError, match="non-empty"):
        ptq.bias_correction(apply_fn, v, v, x[:0])

    class NoBias(nn.Module):
        @nn.compact
        def __call__(self, x):
            return nn.Dense(3, use_bias=False)(x)

    nb = NoBias()
    vn = _numpy_init(nb, x, 0)
    with pytest.raises(ValueError, match="no bias"):
        ptq.bias_correction(nb.apply, vn, vn, x)
