"""bq_jax.models: structure, shapes, eval vs training mode, batch norm, validation."""

import functools
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bq_jax.models import MODEL_NAMES, make_model, model_from_dict

SHAPES = {"mlp": (64,), "cnn": (28, 28, 1), "resnet": (32, 32, 3)}
# Numerical checks use a smaller ResNet (two stages, 12x12 inputs): the same code paths
# (stem, identity and projection shortcuts) at a fraction of the compile time. The default
# sizes are checked through shapes only (jax.eval_shape, nothing compiled).
SMALL = {
    "mlp": {},
    "cnn": {},
    "resnet": {"stage_features": (4, 8)},
}
SMALL_SHAPES = {"mlp": (64,), "cnn": (28, 28, 1), "resnet": (12, 12, 3)}


@pytest.fixture(scope="module")
def built():
    out = {}
    for name, shape in SMALL_SHAPES.items():
        model = make_model(name, num_classes=10, input_shape=shape, **SMALL[name])
        out[name] = (model, model.init(jax.random.key(0)))
    return out


@functools.cache
def _jitted(model):
    """Jitted eval and training forward passes of ``model``, shared across tests (eager,
    op-by-op execution compiles every primitive separately and is much slower)."""
    return (
        jax.jit(model.apply_fn),
        jax.jit(lambda v, x, key: model.apply_train(v, x, key=key)),
    )


def _apply(model, v, x):
    return _jitted(model)[0](v, x)


def _train(model, v, x, key=None):
    return _jitted(model)[1](v, x, key)


def _layout(name):
    model = make_model(name, num_classes=10, input_shape=SHAPES[name])
    return jax.eval_shape(model.init, jax.random.key(0))


def _x(shape, n=5, seed=1):
    # numpy draws: a jax.random draw would compile a threefry program per shape.
    return np.random.default_rng(seed).standard_normal((n, *shape)).astype(np.float32)


def _paths(tree, prefix=""):
    out = {}
    for k, v in tree.items():
        if isinstance(v, dict):
            out.update(_paths(v, f"{prefix}{k}/"))
        else:
            out[f"{prefix}{k}"] = v.shape
    return out


def test_model_names():
    assert MODEL_NAMES == ("mlp", "cnn", "resnet")


def test_mlp_variables_layout():
    v = _layout("mlp")
    assert list(v) == ["params"]
    assert _paths(v) == {
        "params/Dense_0/kernel": (64, 64),
        "params/Dense_0/bias": (64,),
        "params/Dense_1/kernel": (64, 64),
        "params/Dense_1/bias": (64,),
        "params/Dense_2/kernel": (64, 10),
        "params/Dense_2/bias": (10,),
    }


def test_cnn_variables_layout():
    v = _layout("cnn")
    assert list(v) == ["params"]
    assert _paths(v) == {
        "params/Conv_0/kernel": (3, 3, 1, 16),  # HWIO, output channel last
        "params/Conv_0/bias": (16,),
        "params/Conv_1/kernel": (3, 3, 16, 32),
        "params/Conv_1/bias": (32,),
        "params/Dense_0/kernel": (7 * 7 * 32, 64),
        "params/Dense_0/bias": (64,),
        "params/Dense_1/kernel": (64, 10),
        "params/Dense_1/bias": (10,),
    }


def test_resnet_variables_layout():
    v = _layout("resnet")
    assert sorted(v) == ["batch_stats", "params"]
    p = _paths(v)
    assert p["params/Conv_0/kernel"] == (3, 3, 3, 16)
    assert "params/Conv_0/bias" not in p  # conv -> BN: the BN bias plays that role
    assert p["params/BatchNorm_0/scale"] == p["params/BatchNorm_0/bias"] == (16,)
    assert p["batch_stats/BatchNorm_0/mean"] == p["batch_stats/BatchNorm_0/var"] == (16,)
    assert p["params/ResidualBlock_1/Conv_0/kernel"] == (3, 3, 16, 32)
    assert p["params/ResidualBlock_1/Conv_2/kernel"] == (1, 1, 16, 32)  # projection shortcut
    assert p["batch_stats/ResidualBlock_2/BatchNorm_2/var"] == (64,)
    assert "params/ResidualBlock_0/Conv_2/kernel" not in p  # identity shortcut
    assert p["params/Dense_0/kernel"] == (64, 10)
    n_params = sum(int(np.prod(s)) for k, s in p.items() if k.startswith("params/"))
    assert n_params == 78042


def test_batch_norm_running_stats_start_at_zero_mean_unit_var(built):
    _, v = built["resnet"]
    stats = v["batch_stats"]["ResidualBlock_1"]["BatchNorm_0"]
    np.testing.assert_array_equal(stats["mean"], np.zeros(8, np.float32))
    np.testing.assert_array_equal(stats["var"], np.ones(8, np.float32))


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_apply_fn_shapes_batch_and_single(built, name):
    model, v = built[name]
    x = _x(model.input_shape)
    logits = _apply(model, v, x)
    assert logits.shape == (5, 10) and logits.dtype == jnp.float32
    assert bool(jnp.all(jnp.isfinite(logits)))
    one = _apply(model, v, x[2])
    assert one.shape == (10,)
    np.testing.assert_allclose(one, logits[2], atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_jit_matches_eager(built, name):
    model, v = built[name]
    x = _x(model.input_shape)
    np.testing.assert_allclose(
        jax.jit(model.apply_fn)(v, x), model.apply_fn(v, x), atol=1e-6, rtol=1e-5
    )


def test_vmap_over_variants_matches_loop(built):
    model, v = built["cnn"]
    variants = [v, model.init(jax.random.key(7))]
    stack = jax.tree.map(lambda *l: jnp.stack(l), *variants)
    x = _x(model.input_shape)
    out = jax.vmap(model.apply_fn, in_axes=(0, None))(stack, x)
    for i, p in enumerate(variants):
        np.testing.assert_allclose(out[i], _apply(model, p, x), atol=1e-6, rtol=1e-5)


def test_init_depends_on_key_only():
    model = make_model("mlp", num_classes=10, input_shape=(64,))
    a, b = model.init(jax.random.key(3)), model.init(jax.random.key(3))
    c = model.init(jax.random.key(4))
    assert all(
        np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
    )
    assert not np.array_equal(a["params"]["Dense_0"]["kernel"], c["params"]["Dense_0"]["kernel"])


def test_mlp_matches_numpy_reference(built):
    model, v = built["mlp"]
    x = np.asarray(_x((64,)), np.float64)
    p = {k: {n: np.asarray(a, np.float64) for n, a in d.items()} for k, d in v["params"].items()}
    h = np.maximum(x @ p["Dense_0"]["kernel"] + p["Dense_0"]["bias"], 0)
    h = np.maximum(h @ p["Dense_1"]["kernel"] + p["Dense_1"]["bias"], 0)
    ref = h @ p["Dense_2"]["kernel"] + p["Dense_2"]["bias"]
    np.testing.assert_allclose(_apply(model, v, x.astype(np.float32)), ref, atol=1e-5, rtol=1e-5)


def test_no_batch_norm_models_train_mode_equals_eval_mode(built):
    for name in ("mlp", "cnn"):
        model, v = built[name]
        x = _x(model.input_shape)
        logits, updates = _train(model, v, x)
        assert updates == {}
        np.testing.assert_allclose(logits, _apply(model, v, x), atol=1e-6, rtol=1e-5)


def test_batch_norm_eval_mode_uses_running_stats(built):
    model, v = built["resnet"]
    x = _x(model.input_shape, n=6) * 3.0 + 1.0
    # Eval mode: each example's logits do not depend on the rest of the batch.
    full = _apply(model, v, x)
    np.testing.assert_allclose(_apply(model, v, x[:2]), full[:2], atol=1e-6, rtol=1e-5)
    # ... and change when the running statistics change.
    shifted = jax.tree.map(lambda a: a, v)
    shifted["batch_stats"]["BatchNorm_0"]["mean"] = jnp.full((4,), 0.5, jnp.float32)
    assert not np.allclose(_apply(model, shifted, x), full)
    # Training mode normalises with batch statistics: logits depend on the batch.
    train_full, _ = _train(model, v, x)
    train_part, _ = _train(model, v, x[:2])
    assert not np.allclose(train_part, train_full[:2], atol=1e-3)
    assert not np.allclose(train_full, full, atol=1e-3)


def test_batch_norm_running_stats_update_matches_reference(built):
    model, v = built["resnet"]
    x = _x(model.input_shape, n=4) * 2.0 + 0.5
    _, updates = _train(model, v, x)
    assert sorted(updates) == ["batch_stats"]
    assert jax.tree.structure(updates["batch_stats"]) == jax.tree.structure(v["batch_stats"])
    # Stem: z = conv(x, W) (no bias); new = 0.9 * old + 0.1 * batch statistic (over N, H, W).
    kernel = v["params"]["Conv_0"]["kernel"]
    z = jax.lax.conv_general_dilated(
        x, kernel, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
    )
    z = np.asarray(z, np.float64)
    mean = z.mean(axis=(0, 1, 2))
    var = z.var(axis=(0, 1, 2))
    got = updates["batch_stats"]["BatchNorm_0"]
    np.testing.assert_allclose(got["mean"], 0.1 * mean, atol=1e-6, rtol=1e-5)
    np.testing.assert_allclose(got["var"], 0.9 + 0.1 * var, atol=1e-6, rtol=1e-5)


def test_batch_norm_folds_into_convs(built):
    from bq_jax.ptq import fold_batch_norm

    model, v = built["resnet"]
    x = _x(model.input_shape, n=4)
    _, updates = _train(model, v, x * 2.0)
    v = {**v, **updates}
    fold = fold_batch_norm(model.apply_fn, v, x)
    assert len(fold.pairs) == 6  # stem, 2 in block 0, 3 in block 1 (projection shortcut)
    assert fold.pairs[0] == ("Conv_0", "BatchNorm_0")
    assert ("ResidualBlock_1/Conv_2", "ResidualBlock_1/BatchNorm_2") in fold.pairs
    np.testing.assert_allclose(
        fold.apply_fn(fold.params, x), _apply(model, v, x), atol=1e-5, rtol=1e-5
    )


def test_dropout_needs_key_and_uses_it():
    model = make_model("mlp", num_classes=3, input_shape=(5,), width=8, depth=1, dropout=0.5)
    assert model.uses_dropout
    v = model.init(jax.random.key(0))
    x = _x((5,), n=8)
    with pytest.raises(ValueError, match="dropout.*needs key"):
        model.apply_train(v, x)
    a, _ = _train(model, v, x, jax.random.key(1))
    b, _ = _train(model, v, x, jax.random.key(1))
    c, _ = _train(model, v, x, jax.random.key(2))
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)
    # Eval mode has no dropout: it equals the same network built without dropout.
    plain = make_model("mlp", num_classes=3, input_shape=(5,), width=8, depth=1)
    np.testing.assert_array_equal(_apply(model, v, x), _apply(plain, v, x))


def test_to_dict_round_trip_and_json(built):
    for model, _ in built.values():
        d = model.to_dict()
        assert json.loads(json.dumps(d)) == d
        assert model_from_dict(json.loads(json.dumps(d))) == model
    m = make_model("cnn", num_classes=4, input_shape=(8, 8, 2), features=(4,), dense=0)
    assert model_from_dict(m.to_dict()) == m
    assert m != make_model("cnn", num_classes=4, input_shape=(8, 8, 2), features=(5,), dense=0)
    assert hash(m) == hash(model_from_dict(m.to_dict()))
    assert sorted(m.init(jax.random.key(0))["params"]) == ["Conv_0", "Dense_0"]


def test_model_is_usable_as_static_jit_argument():
    m1 = make_model("mlp", num_classes=3, input_shape=(4,), width=8)
    m2 = make_model("mlp", num_classes=3, input_shape=(4,), width=8)
    traces = []

    def f(model, v, x):
        traces.append(1)
        return model.apply_fn(v, x)

    g = jax.jit(f, static_argnums=0)
    v, x = m1.init(jax.random.key(0)), jnp.ones((2, 4))
    np.testing.assert_array_equal(g(m1, v, x), g(m2, v, x))
    assert len(traces) == 1


def test_unknown_name_lists_known_names():
    with pytest.raises(ValueError, match="known names: mlp, cnn, resnet"):
        make_model("vgg", num_classes=10, input_shape=(32, 32, 3))


def test_bad_hyperparameters():
    with pytest.raises(ValueError, match="unknown hyperparameter.*widht.*accepted: width"):
        make_model("mlp", num_classes=10, input_shape=(64,), widht=3)
    with pytest.raises(ValueError, match="width must be an int >= 1"):
        make_model("mlp", num_classes=10, input_shape=(64,), width=0)
    with pytest.raises(ValueError, match=r"dropout must be a finite number in \[0.0, 1.0\)"):
        make_model("cnn", num_classes=10, input_shape=(28, 28, 1), dropout=1.0)
    with pytest.raises(ValueError, match="stage_features must be a non-empty tuple"):
        make_model("resnet", num_classes=10, input_shape=(32, 32, 3), stage_features=())
    with pytest.raises(ValueError, match="num_classes must be an int >= 2"):
        make_model("mlp", num_classes=1, input_shape=(64,))


def test_bad_input_shape_at_construction():
    with pytest.raises(ValueError, match=r"needs images: input_shape must be \(height, width"):
        make_model("cnn", num_classes=10, input_shape=(784,))
    with pytest.raises(ValueError, match="input_shape must be a non-empty tuple"):
        make_model("mlp", num_classes=10, input_shape=(0,))


def test_apply_fn_rejects_wrong_trailing_shape(built):
    model, v = built["cnn"]
    with pytest.raises(ValueError, match=r"takes x of shape \(N, 28, 28, 1\).*got x.shape = "):
        model.apply_fn(v, jnp.zeros((2, 28, 28, 3)))
    with pytest.raises(ValueError, match=r"\(N, 28, 28, 1\)"):
        model.apply_fn(v, jnp.zeros((2, 784)))
    with pytest.raises(TypeError, match="variables must be a flax variables dict"):
        model.apply_fn(v["params"], jnp.zeros((2, 28, 28, 1)))
    with pytest.raises(ValueError, match="apply_train needs a batch"):
        model.apply_train(v, jnp.zeros((28, 28, 1)))
    with pytest.raises(TypeError, match="real numeric"):
        model.apply_fn(v, jnp.zeros((2, 28, 28, 1), jnp.bool_))
