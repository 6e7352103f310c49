"""PTQ-W: quantize_weights (spec / rules / errors / summary) and quantize_weights_stack."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bq_jax import ptq
from bq_jax.quant import QuantConfig


class _Net(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.BatchNorm(use_running_average=True)(nn.Dense(16)(x)))
        x = nn.relu(nn.Dense(16)(x))
        return nn.Dense(4)(x)


@pytest.fixture(scope="module")
def net():
    m = _Net()
    x = jnp.asarray(np.random.default_rng(0).normal(size=(32, 6)), jnp.float32)
    shapes = jax.eval_shape(m.init, jax.random.key(0), x)
    rng = np.random.default_rng(1)
    v = jax.tree.map(lambda s: jnp.asarray(rng.normal(size=s.shape) * 0.5, jnp.float32), shapes)
    v["batch_stats"]["BatchNorm_0"]["var"] = jnp.abs(v["batch_stats"]["BatchNorm_0"]["var"]) + 0.5
    return m.apply, v, x


def _levels(w):
    """Distinct values per output channel (last axis)."""
    w = np.asarray(w)
    return max(len(np.unique(w[..., j])) for j in range(w.shape[-1]))


def _ref_per_channel_symmetric(w, bits):
    w = np.asarray(w, np.float64)
    qmax = 2 ** (bits - 1) - 1
    s = np.abs(w).max(axis=0, keepdims=True) / qmax
    return np.clip(np.round(w / s), -qmax - 1, qmax) * s


def test_spec_quantizes_kernels_only(net):
    apply_fn, v, x = net
    cfg = QuantConfig(bits=4, symmetric=True, granularity="per_channel")
    vq, rows = ptq.quantize_weights(v, cfg, return_summary=True)
    assert jax.tree.structure(vq) == jax.tree.structure(v)
    flat, flat_q = ptq.flatten_params(v), ptq.flatten_params(vq)
    for path, w in flat.items():
        if path.endswith("/kernel"):
            np.testing.assert_allclose(
                np.asarray(flat_q[path]), _ref_per_channel_symmetric(w, 4), rtol=1e-5, atol=1e-6
            )
            assert _levels(flat_q[path]) <= 16
        else:  # biases, BN scale/bias and statistics untouched (bit-identical)
            np.testing.assert_array_equal(np.asarray(flat_q[path]), np.asarray(w))
    assert [r["path"] for r in rows] == [
        "params/Dense_0/kernel",
        "params/Dense_1/kernel",
        "params/Dense_2/kernel",
    ]
    for r in rows:
        assert r["bits"] == 4 and r["fmt"] == "int" and r["range_method"] == "minmax"
        assert 0 < r["scale_min"] <= r["scale_mean"] <= r["scale_max"]
        assert 10.0 < r["sqnr_db"] < 40.0
    # The quantized model still runs under the same apply_fn.
    assert apply_fn(vq, x).shape == (32, 4)


def test_rules_first_last_8_rest_4_and_keep_float(net):
    _, v, _ = net
    c8 = QuantConfig(bits=8, symmetric=True, granularity="per_channel")
    c4 = QuantConfig(bits=4, symmetric=True, granularity="per_channel")
    rules = [(r"Dense_0/|Dense_2/", c8), (r"kernel$", c4)]
    vq, rows = ptq.quantize_weights(v, rules, return_summary=True)
    bits = {r["path"]: r["bits"] for r in rows}
    assert bits == {
        "params/Dense_0/kernel": 8,
        "params/Dense_1/kernel": 4,
        "params/Dense_2/kernel": 8,
    }
    assert _levels(vq["params"]["Dense_1"]["kernel"]) <= 16
    assert len(np.unique(np.asarray(vq["params"]["Dense_0"]["kernel"]))) > 16  # 6 x 16 kernel
    s8 = {r["path"]: r["sqnr_db"] for r in rows}
    assert s8["params/Dense_0/kernel"] > s8["params/Dense_1/kernel"] + 15
    # None keeps the matched kernels float (first match wins over the catch-all).
    vq2 = ptq.quantize_weights(v, [(r"Dense_1/", None), (r"kernel$", c4)])
    np.testing.assert_array_equal(
        np.asarray(vq2["params"]["Dense_1"]["kernel"]), np.asarray(v["params"]["Dense_1"]["kernel"])
    )
    assert _levels(vq2["params"]["Dense_0"]["kernel"]) <= 16
    # Other targets: quantize biases too.
    vq3 = ptq.quantize_weights(v, c4, targets=r"^params/Dense_\d/(kernel|bias)$")
    assert len(np.unique(np.asarray(vq3["params"]["Dense_0"]["bias"]))) <= 16


def test_rule_errors(net):
    _, v, _ = net
    c4 = QuantConfig(bits=4)
    with pytest.raises(ValueError, match=r"rule 0 \('Conv_'\) matches no parameter"):
        ptq.quantize_weights(v, [("Conv_", c4)])
    with pytest.raises(ValueError, match="matches no parameter"):
        ptq.quantize_weights(v, [("bias$", c4)])  # biases are not targeted by default
    with pytest.raises(ValueError, match=r"rule 1 \('Dense_1'\) never applies"):
        ptq.quantize_weights(v, [("kernel$", c4), ("Dense_1", None)])
    with pytest.raises(
        ValueError,
        match=r"ambiguous.*Dense_1/kernel.*rule 0 \('kernel\$'\).*"
        r"rule 1 \('Dense_1'\)",
    ):
        ptq.quantize_weights(v, [("kernel$", c4), ("Dense_1", None)], strict=True)
    # strict with disjoint rules is fine.
    ptq.quantize_weights(v, [("Dense_[02]", c4), ("Dense_1", None)], strict=True)
    with pytest.raises(ValueError, match="not a valid regex"):
        ptq.quantize_weights(v, [("Dense_(", c4)])
    with pytest.raises(TypeError, match="QuantConfig or None"):
        ptq.quantize_weights(v, [("kernel$", 4)])
    with pytest.raises(TypeError, match="QuantConfig or a sequence"):
        ptq.quantize_weights(v, "kernel")
    with pytest.raises(ValueError, match="empty"):
        ptq.quantize_weights(v, [])
    vi = {**v, "counters": {"step": jnp.array(3, jnp.int32)}}
    with pytest.raises(ValueError, match="counters/step.*non-float leaf of dtype int32"):
        ptq.quantize_weights(vi, [("step", c4)], targets=None)


def test_stack_matches_loop_and_vmaps(net):
    apply_fn, v, x = net
    configs = [QuantConfig(bits=b, symmetric=True, granularity="per_channel") for b in (2, 4, 8)]
    configs.append([(r"Dense_0/", QuantConfig(bits=8)), (r"kernel$", QuantConfig(bits=3))])
    stack = ptq.quantize_weights_stack(v, configs)
    assert jax.tree.structure(stack) == jax.tree.structure(v)
    for leaf, ref in zip(jax.tree.leaves(stack), jax.tree.leaves(v), strict=True):
        assert leaf.shape == (4, *ref.shape)
    logits = jax.vmap(apply_fn, in_axes=(0, None))(stack, x)
    for i, c in enumerate(configs):
        one = ptq.quantize_weights(v, c)
        for a, b in zip(jax.tree.leaves(one), jax.tree.leaves(stack), strict=True):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b[i]))
        np.testing.assert_allclose(
            np.asarray(logits[i]), np.asarray(apply_fn(one, x)), rtol=1e-5, atol=1e-5
        )
    with pytest.raises(ValueError, match="empty"):
        ptq.quantize_weights_stack(v, [])
    with pytest.raises(TypeError, match="sequence"):
        ptq.quantize_weights_stack(v, QuantConfig(bits=4))
