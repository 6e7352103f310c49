"""Batch-norm folding: folded model equals the eval-mode model; pairs found from apply_fn."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bq_jax import ptq


class _ConvBN(nn.Module):
    """Conv(no bias) -> BN -> relu -> Conv(bias) -> BN + skip -> pool -> Dense -> BN -> Dense."""

    @nn.compact
    def __call__(self, x):
        h = nn.Conv(6, (3, 3), use_bias=False)(x)
        h = nn.relu(nn.BatchNorm(use_running_average=True)(h))
        r = nn.Conv(6, (3, 3))(h)
        h = nn.relu(nn.BatchNorm(use_running_average=True)(r) + h)
        h = jnp.mean(h, axis=(1, 2))
        h = nn.relu(nn.BatchNorm(use_running_average=True)(nn.Dense(8)(h)))
        return nn.Dense(3)(h)


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
def conv_bn():
    model = _ConvBN()
    x = jax.random.normal(jax.random.key(0), (16, 8, 8, 2))
    variables = _numpy_init(model, x, seed=1)
    return model.apply, variables, x


def test_fold_matches_float_outputs(conv_bn):
    apply_fn, variables, x = conv_bn
    fold = ptq.fold_batch_norm(apply_fn, variables, x[:4])
    assert fold.pairs == (
        ("Conv_0", "BatchNorm_0"),
        ("Conv_1", "BatchNorm_1"),
        ("Dense_0", "BatchNorm_2"),
    )
    ref = apply_fn(variables, x)
    got = fold.apply_fn(fold.params, x)
    np.testing.assert_allclose(np.asarray(got), np.asarray(ref), rtol=1e-5, atol=1e-5)
    # Folded BatchNorms are gone; a bias was created for the bias-free conv.
    flat = ptq.flatten_params(fold.params)
    assert not any("BatchNorm" in p for p in flat)
    assert flat["params/Conv_0/bias"].shape == (6,)
    # Pure: jit and vmap over a stack of two variants agree with the loop.
    jitted = jax.jit(fold.apply_fn)(fold.params, x)
    np.testing.assert_allclose(np.asarray(jitted), np.asarray(got), rtol=1e-5, atol=1e-6)
    stack = jax.tree.map(lambda a: jnp.stack([a, 2 * a]), fold.params)
    vm = jax.vmap(fold.apply_fn, in_axes=(0, None))(stack, x)
    np.testing.assert_allclose(np.asarray(vm[0]), np.asarray(got), rtol=1e-5, atol=1e-6)


def test_fold_formula_single_dense():
    class M(nn.Module):
        @nn.compact
        def __call__(self, x):
            return nn.BatchNorm(use_running_average=True, epsilon=1e-3)(nn.Dense(2)(x))

    m = M()
    x = jnp.ones((1, 3))
    v = m.init(jax.random.key(0), x)
    v = {
        "params": {
            "Dense_0": {"kernel": jnp.arange(6.0).reshape(3, 2), "bias": jnp.array([1.0, -1.0])},
            "BatchNorm_0": {"scale": jnp.array([2.0, 0.5]), "bias": jnp.array([0.1, 0.2])},
        },
        "batch_stats": {
            "BatchNorm_0": {"mean": jnp.array([3.0, 4.0]), "var": jnp.array([4.0, 1.0])}
        },
    }
    fold = ptq.fold_batch_norm(m.apply, v, x)
    k = np.array([2.0, 0.5]) / np.sqrt(np.array([4.0, 1.0]) + 1e-3)
    np.testing.assert_allclose(
        np.asarray(fold.params["params"]["Dense_0"]["kernel"]),
        np.arange(6.0).reshape(3, 2) * k,
        rtol=1e-6,
    )
    np.testing.assert_allclose(
        np.asarray(fold.params["params"]["Dense_0"]["bias"]),
        (np.array([1.0, -1.0]) - np.array([3.0, 4.0])) * k + np.array([0.1, 0.2]),
        rtol=1e-6,
    )
    assert fold.params["batch_stats"] == {}


def test_fold_errors():
    class NoPair(nn.Module):
        @nn.compact
        def __call__(self, x):
            return nn.Dense(2)(nn.BatchNorm(use_running_average=True)(x))

    m = NoPair()
    x = jnp.ones((2, 3))
    v = m.init(jax.random.key(0), x)
    with pytest.raises(ValueError, match="no \\(Dense\\|Conv -> BatchNorm\\) pair"):
        ptq.fold_batch_norm(m.apply, v, x)

    class Train(nn.Module):
        @nn.compact
        def __call__(self, x):
            return nn.BatchNorm(use_running_average=False)(nn.Dense(2)(x))

    m = Train()
    v = m.init(jax.random.key(0), x)
    apply = lambda p, x: m.apply(p, x, mutable=["batch_stats"])[0]
    with pytest.raises(ValueError, match="training mode"):
        ptq.fold_batch_norm(apply, v, x)
    with pytest.raises(ValueError, match="no weight layer"):
        ptq.fold_batch_norm(lambda p, x: x, v, x)


def test_fold_project_resnet():
    """Every (Conv, BatchNorm) pair of bq_jax's ResNet folds; outputs unchanged."""
    from bq_jax.models import make_model

    model = make_model(
        "resnet", num_classes=5, input_shape=(8, 8, 3), stage_features=(4, 8), blocks_per_stage=1
    )
    shapes = jax.eval_shape(model.init, jax.random.key(0))
    rng = np.random.default_rng(3)

    def leaf(path, s):
        name = path[-1].key
        if name == "var":
            return jnp.asarray(rng.uniform(0.2, 3.0, size=s.shape), jnp.float32)
        if name == "kernel":
            return jnp.asarray(
                rng.normal(size=s.shape) / np.sqrt(np.prod(s.shape[:-1])), jnp.float32
            )
        return jnp.asarray(0.3 * rng.normal(size=s.shape) + (name == "scale"), jnp.float32)

    v = jax.tree_util.tree_map_with_path(leaf, shapes)
    x = jnp.asarray(rng.normal(size=(4, 8, 8, 3)), jnp.float32)
    fold = ptq.fold_batch_norm(model.apply_fn, v, x)
    n_bn = sum(1 for p in ptq.flatten_params(v) if p.endswith("/mean"))
    assert len(fold.pairs) == n_bn
    assert all("Conv" in a and "BatchNorm" in b for a, b in fold.pairs)
    assert fold.params["batch_stats"] == {}
    ref = jax.jit(model.apply_fn)(v, x)
    got = jax.jit(fold.apply_fn)(fold.params, x)
    np.testing.assert_allclose(
        np.asarray(got), np.asarray(ref), rtol=1e-5, atol=1e-5 * float(jnp.max(jnp.abs(ref)))
    )
