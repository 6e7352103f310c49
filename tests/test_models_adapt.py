"""adapt(): linen, NNX and equinox twins (same weights) give the same apply_fn, params, layers.

``mlp_twins`` (64 -> 32 -> 10) and ``cnn_twins`` (conv 3x3 2 -> 4, relu, spatial mean,
dense 4 -> 5) build the same network in the three frameworks with copied weights (equinox's
kernels transposed to ``(out, in)`` / OIHW, its inputs NCHW); tests/test_ptq_interop.py uses
them for PTQ.
"""

import sys

import equinox as eqx
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from bq_jax import ptq
from bq_jax.models import ADAPTERS, adapt, make_model
from bq_jax.models.tracing import trace

FRAMEWORKS = ("linen", "nnx", "equinox")


class LinenMLP(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Dense(32, name="fc1")(x))
        return nn.Dense(10, name="fc2")(x)


class NNXMLP(nnx.Module):
    def __init__(self, rngs):
        self.fc1 = nnx.Linear(64, 32, rngs=rngs)
        self.fc2 = nnx.Linear(32, 10, rngs=rngs)

    def __call__(self, x):
        return self.fc2(nnx.relu(self.fc1(x)))


class EqxMLP(eqx.Module):
    fc1: eqx.nn.Linear
    fc2: eqx.nn.Linear

    def __init__(self, key):
        k1, k2 = jax.random.split(key)
        self.fc1 = eqx.nn.Linear(64, 32, key=k1)
        self.fc2 = eqx.nn.Linear(32, 10, key=k2)

    def __call__(self, x):
        return self.fc2(jax.nn.relu(self.fc1(x)))


class LinenCNN(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Conv(4, (3, 3), name="conv")(x))
        return nn.Dense(5, name="fc")(jnp.mean(x, axis=(1, 2)))


class NNXCNN(nnx.Module):
    def __init__(self, rngs):
        self.conv = nnx.Conv(2, 4, (3, 3), rngs=rngs)
        self.fc = nnx.Linear(4, 5, rngs=rngs)

    def __call__(self, x):
        return self.fc(jnp.mean(nnx.relu(self.conv(x)), axis=(1, 2)))


class EqxCNN(eqx.Module):
    conv: eqx.nn.Conv2d
    fc: eqx.nn.Linear

    def __init__(self, key):
        k1, k2 = jax.random.split(key)
        self.conv = eqx.nn.Conv2d(2, 4, 3, padding=1, key=k1)
        self.fc = eqx.nn.Linear(4, 5, key=k2)

    def __call__(self, x):  # one example, CHW
        return self.fc(jnp.mean(jax.nn.relu(self.conv(x)), axis=(1, 2)))


def _weights(shapes, seed):
    rng = np.random.default_rng(seed)
    return {
        name: jnp.asarray(
            rng.normal(size=s) / np.sqrt(np.prod(s[:-1]) if len(s) > 1 else 4.0), jnp.float32
        )
        for name, s in shapes.items()
    }


def _nnx(cls, pure: dict):
    """An NNX module of ``cls`` holding the arrays of ``pure`` (built abstractly: no init)."""
    graphdef, state = nnx.split(nnx.eval_shape(lambda: cls(nnx.Rngs(0))))
    nnx.replace_by_pure_dict(state, pure)
    return nnx.merge(graphdef, state)


def _eqx(cls, where, values):
    """An equinox module of ``cls`` whose leaves at ``where`` are ``values`` (no init)."""
    return eqx.tree_at(where, eqx.filter_eval_shape(cls, jax.random.key(0)), values)


def mlp_twins(seed: int = 0) -> dict:
    """``{framework: (Adapted, x)}`` of the same MLP; ``x`` float32[256, 64]."""
    w = _weights({"k1": (64, 32), "b1": (32,), "k2": (32, 10), "b2": (10,)}, seed)
    x = jnp.asarray(np.random.default_rng(seed + 1).normal(size=(256, 64)), jnp.float32)
    variables = {
        "params": {
            "fc1": {"kernel": w["k1"], "bias": w["b1"]},
            "fc2": {"kernel": w["k2"], "bias": w["b2"]},
        }
    }
    m = _nnx(NNXMLP, variables["params"])
    e = _eqx(
        EqxMLP,
        lambda t: (t.fc1.weight, t.fc1.bias, t.fc2.weight, t.fc2.bias),
        (w["k1"].T, w["b1"], w["k2"].T, w["b2"]),
    )
    return {
        "linen": (adapt(LinenMLP(), variables, sample_x=x[:2]), x),
        "nnx": (adapt(m, sample_x=x[:2]), x),
        "equinox": (adapt(e, sample_x=x[:2]), x),
    }


def cnn_twins(seed: int = 0) -> dict:
    """``{framework: (Adapted, x)}`` of the same CNN; ``x`` NHWC float32[96, 6, 6, 2] (NCHW
    for equinox)."""
    w = _weights({"kc": (3, 3, 2, 4), "bc": (4,), "kf": (4, 5), "bf": (5,)}, seed)
    x = jnp.asarray(np.random.default_rng(seed + 1).normal(size=(96, 6, 6, 2)), jnp.float32)
    variables = {
        "params": {
            "conv": {"kernel": w["kc"], "bias": w["bc"]},
            "fc": {"kernel": w["kf"], "bias": w["bf"]},
        }
    }
    m = _nnx(NNXCNN, variables["params"])
    e = _eqx(
        EqxCNN,
        lambda t: (t.conv.weight, t.conv.bias, t.fc.weight, t.fc.bias),
        (jnp.transpose(w["kc"], (3, 2, 0, 1)), w["bc"].reshape(4, 1, 1), w["kf"].T, w["bf"]),
    )
    x_chw = jnp.transpose(x, (0, 3, 1, 2))
    return {
        "linen": (adapt(LinenCNN(), variables, sample_x=x[:2]), x),
        "nnx": (adapt(m, sample_x=x[:2]), x),
        "equinox": (adapt(e, sample_x=x_chw[:2]), x_chw),
    }


@pytest.fixture(scope="module")
def mlps():
    return mlp_twins()


@pytest.fixture(scope="module")
def cnns():
    return cnn_twins()


def test_mlp_twins_same_logits_and_layouts(mlps):
    ref = np.asarray(jax.jit(mlps["linen"][0].apply_fn)(mlps["linen"][0].params, mlps["linen"][1]))
    for fw in FRAMEWORKS:
        a, x = mlps[fw]
        assert a.framework == fw
        np.testing.assert_allclose(
            np.asarray(jax.jit(a.apply_fn)(a.params, x)), ref, rtol=1e-6, atol=1e-6
        )
    leaf = {"linen": "kernel", "nnx": "kernel", "equinox": "weight"}
    axis = {"linen": -1, "nnx": -1, "equinox": 0}
    for fw in FRAMEWORKS:
        a = mlps[fw][0]
        assert [layer.name for layer in a.layers] == ["fc1", "fc2"]
        assert a.layouts == {f"params/fc1/{leaf[fw]}": axis[fw], f"params/fc2/{leaf[fw]}": axis[fw]}
        assert [layer.bias_path for layer in a.layers] == ["params/fc1/bias", "params/fc2/bias"]
        assert {layer.kind for layer in a.layers} == {"dense"}
        assert [layer.input_axis for layer in a.layers] == [0 if fw != "equinox" else -1] * 2
    # equinox params are plain nested dicts keyed by attribute path
    assert jax.tree.map(jnp.shape, mlps["equinox"][0].params) == {
        "params": {
            "fc1": {"weight": (32, 64), "bias": (32,)},
            "fc2": {"weight": (10, 32), "bias": (10,)},
        }
    }


def test_apply_fn_vmaps_over_stacked_params(mlps):
    for fw in FRAMEWORKS:
        a, x = mlps[fw]
        stack = jax.tree.map(lambda p: jnp.stack([p, 2 * p]), a.params)
        out = jax.vmap(a.apply_fn, in_axes=(0, None))(stack, x[:8])
        np.testing.assert_allclose(
            np.asarray(out[0]), np.asarray(a.apply_fn(a.params, x[:8])), rtol=1e-6, atol=1e-6
        )
        doubled = jax.tree.map(lambda p: 2 * p, a.params)
        np.testing.assert_allclose(
            np.asarray(out[1]), np.asarray(a.apply_fn(doubled, x[:8])), rtol=1e-6, atol=1e-6
        )


def test_cnn_twins_same_logits_and_conv_layouts(cnns):
    ref = np.asarray(cnns["linen"][0].apply_fn(cnns["linen"][0].params, cnns["linen"][1]))
    for fw in FRAMEWORKS:
        a, x = cnns[fw]
        np.testing.assert_allclose(np.asarray(a.apply_fn(a.params, x)), ref, rtol=1e-5, atol=1e-6)
        conv, fc = a.layers
        assert (conv.kind, fc.kind) == ("conv", "dense")
        assert conv.output_axis == (0 if fw == "equinox" else -1)
        assert conv.input_axis == (1 if fw == "equinox" else 2)
        assert conv.bias_path == "params/conv/bias"
    # equinox conv: output NCHW, channels on axis 1, bias (4, 1, 1) found through its reshape
    _, calls = ptq.trace_layers(
        cnns["equinox"][0].apply_fn, cnns["equinox"][0].params, cnns["equinox"][1][:3]
    )
    assert calls[0].outputs.shape == (3, 4, 6, 6) and calls[0].channel_axis == 1


def test_layer_program_replays_the_recorded_layer(cnns):
    """A layer cut out of the jaxpr gives the output recorded in the full run."""
    for fw in FRAMEWORKS:
        a, x = cnns[fw]
        _, calls = ptq.trace_layers(a.apply_fn, a.params, x[:8])
        t = trace(a.apply_fn, a.params, x[:8])
        flat = ptq.flatten_params(a.params)
        for site, call in zip(t.sites, calls, strict=True):
            program = t.program(site)
            got = program(call.inputs, {p: flat[p] for p in program.leaves})
            np.testing.assert_array_equal(np.asarray(got), np.asarray(call.outputs))
            assert hash(program) == hash(t.program(site))


def test_prejitted_and_plain_function_models():
    """The jaxpr sees through jit (no more 'un-jitted apply_fn' requirement) and plain code."""
    model = make_model("mlp", num_classes=3, input_shape=(4,), width=8)
    variables = model.init(jax.random.key(0))
    x = jnp.ones((5, 4))
    direct = adapt(model, variables, sample_x=x)
    jitted = adapt(jax.jit(model.apply_fn), variables, sample_x=x)
    assert direct.layouts == jitted.layouts and len(direct.layers) >= 2
    assert jitted.framework == "function"

    def fn(params, x):
        return jnp.tanh(x @ params["w1"]) @ params["w2"]

    params = {"w1": jnp.ones((4, 6)), "w2": jnp.ones((6, 2))}
    a = adapt(fn, params, sample_x=x)
    assert [(layer.name, layer.kernel_path, layer.bias_path) for layer in a.layers] == [
        ("w1", "w1", None),
        ("w2", "w2", None),
    ]


def test_nnx_batch_norm_runs_in_eval_mode():
    class M(nnx.Module):
        def __init__(self, rngs):
            self.fc = nnx.Linear(3, 4, rngs=rngs)
            self.bn = nnx.BatchNorm(4, rngs=rngs)  # training mode by default

        def __call__(self, x):
            return self.bn(self.fc(x))

    m = M(nnx.Rngs(0))
    m.bn.mean[...] = jnp.arange(4.0)
    a = adapt(m, sample_x=jnp.ones((2, 3)))
    assert sorted(a.params) == ["batch_stats", "params"]
    x = jnp.ones((6, 3))
    y = m.fc(x)
    expect = (y - jnp.arange(4.0)[None, :]) / jnp.sqrt(1.0 + 1e-5)
    np.testing.assert_allclose(np.asarray(a.apply_fn(a.params, x)), np.asarray(expect), rtol=1e-5)
    assert not m.bn.use_running_average  # the user's module is left as it was


def test_adapt_errors(monkeypatch):
    with pytest.raises(TypeError, match="accepted: .*flax.linen.Module.*flax.nnx.Module.*equinox"):
        adapt(object())
    with pytest.raises(TypeError, match="cannot adapt a builtins.str"):
        adapt("mlp")
    with pytest.raises(ValueError, match="needs its variables"):
        adapt(LinenMLP())
    with pytest.raises(ValueError, match="without variables"):
        adapt(NNXMLP(nnx.Rngs(0)), {"params": {}})
    with pytest.raises(ValueError, match="sample_x"):
        _ = adapt(NNXMLP(nnx.Rngs(0))).layouts
    bn = eqx.nn.Sequential(
        [
            eqx.nn.Linear(3, 4, key=jax.random.key(0)),
            eqx.nn.BatchNorm(4, axis_name="batch", mode="batch"),
        ]
    )
    with pytest.raises(ValueError, match="stateful"):
        adapt(bn)
    model = EqxMLP(jax.random.key(0))
    monkeypatch.setitem(sys.modules, "equinox", None)  # as if equinox were not installed
    with pytest.raises(ImportError, match=r"bq_jax\[interop\]"):
        adapt(model)


def test_adapter_table_is_ordered_and_named():
    names = [a.name for a in ADAPTERS]
    # a qwix-quantized module is a linen module too: its entry must come first
    assert names[:4] == ["qwix", "linen", "linen", "nnx"]
    assert "equinox" in names and names[-1] == "function"
