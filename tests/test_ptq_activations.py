"""Activation quantization at the layers found in the jaxpr: calibration, W8A8, purity."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bq_jax import ptq, quant
from bq_jax.quant import QuantConfig


class _CNN(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Conv(4, (3, 3))(x))
        x = x.reshape(x.shape[0], -1)
        x = nn.relu(nn.Dense(16)(x))
        return nn.Dense(5)(x)


@pytest.fixture(scope="module")
def cnn():
    m = _CNN()
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(96, 6, 6, 2)), jnp.float32)
    shapes = jax.eval_shape(m.init, jax.random.key(0), x)
    v = jax.tree.map(
        lambda s: jnp.asarray(rng.normal(size=s.shape) / np.sqrt(s.shape[0]), jnp.float32), shapes
    )
    return m.apply, v, x[:64], x[64:]


def test_16_bit_matches_float_and_8_bit_changes_few_labels(cnn):
    apply_fn, v, x_cal, x_heldout = cnn
    ref_cal, ref_heldout = apply_fn(v, x_cal), apply_fn(v, x_heldout)
    a16 = QuantConfig(bits=16, symmetric=False)
    apply_q, pq = ptq.quantize_activations(apply_fn, v, x_cal, a16, points=("input", "output"))
    assert set(pq["activation_qparams"]) == {"Conv_0", "Dense_0", "Dense_1"}
    got = jax.jit(apply_q)(pq, x_cal)
    scale = float(jnp.max(jnp.abs(ref_cal)))
    # Inside the calibrated ranges a 16-bit grid only adds ~1e-5 relative rounding noise.
    np.testing.assert_allclose(np.asarray(got), np.asarray(ref_cal), atol=1e-3 * scale, rtol=0)
    a8 = QuantConfig(bits=8, symmetric=False, range_method="minmax")
    apply_q8, pq8 = ptq.quantize_activations(apply_fn, v, x_cal, a8)
    labels = jnp.argmax(jax.jit(apply_q8)(pq8, x_heldout), -1)
    flip = float(jnp.mean(labels != jnp.argmax(ref_heldout, -1)))
    assert flip <= 0.1, flip
    # 8 bits is coarser than 16 bits, but it does change the logits.
    err8 = float(jnp.max(jnp.abs(jax.jit(apply_q8)(pq8, x_cal) - ref_cal)))
    assert 1e-3 * scale < err8 < 0.2 * scale


def test_ranges_follow_the_range_method(cnn):
    apply_fn, v, x_cal, _ = cnn
    _, calls = ptq.trace_layers(apply_fn, v, x_cal)
    for method in ("minmax", "percentile", "mse"):
        cfg = QuantConfig(bits=8, symmetric=False, range_method=method)
        ranges = ptq.calibrate_activations(apply_fn, v, x_cal, cfg, batch_size=16)
        for c in calls:
            t = c.inputs.reshape(-1, c.inputs.shape[-1])
            qp = quant.compute_qparams(t, cfg)
            np.testing.assert_allclose(
                np.asarray(ranges[c.name]["input"]["scale"]).reshape(-1),
                np.asarray(qp.scale).reshape(-1),
                rtol=1e-6,
            )
    mm = ptq.calibrate_activations(apply_fn, v, x_cal, QuantConfig(bits=8, symmetric=False))
    t = calls[1].inputs  # ReLU output feeding Dense_0: min 0
    np.testing.assert_allclose(
        float(np.asarray(mm["Dense_0"]["input"]["scale"]).reshape(-1)[0]),
        float(jnp.max(t)) / 255,
        rtol=1e-5,
    )


def test_w8a8_vmaps_over_variants(cnn):
    apply_fn, v, x_cal, x_heldout = cnn
    w8 = QuantConfig(bits=8, symmetric=True, granularity="per_channel")
    variants = []
    for bits in (8, 4):
        a = QuantConfig(bits=bits, symmetric=False)
        apply_q, pq = ptq.quantize_activations(
            apply_fn, ptq.quantize_weights(v, w8), x_cal, a, points=("input", "output")
        )
        variants.append(pq)
    stack = ptq.stack_params(variants)
    # One apply_q serves both variants: the ranges travel in the variables.
    apply_q = ptq.activation_quantized_apply(apply_fn, QuantConfig(bits=8, symmetric=False))
    out = jax.vmap(apply_q, in_axes=(0, None))(stack, x_heldout)
    np.testing.assert_allclose(
        np.asarray(out[0]),
        np.asarray(jax.jit(apply_q)(variants[0], x_heldout)),
        rtol=1e-5,
        atol=1e-5,
    )


def test_activation_errors(cnn):
    apply_fn, v, x_cal, _ = cnn
    a8 = QuantConfig(bits=8, symmetric=False)
    with pytest.raises(ValueError, match="non-empty"):
        ptq.calibrate_activations(apply_fn, v, x_cal[:0], a8)
    with pytest.raises(ValueError, match="points"):
        ptq.calibrate_activations(apply_fn, v, x_cal, a8, points=("weights",))
    with pytest.raises(TypeError, match="QuantConfig"):
        ptq.calibrate_activations(apply_fn, v, x_cal, 8)
    apply_q = ptq.activation_quantized_apply(apply_fn, a8)
    with pytest.raises(ValueError, match="activation_qparams"):
        apply_q(v, x_cal)
