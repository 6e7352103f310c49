"""qwix interop: from_qwix front door, compare of a float flax model against qwix models, and
bq_jax's qwix scale convention reproducing qwix's quantized weights."""

import importlib

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bq_jax import data, ptq
from bq_jax.geometry import COMPARE_KEYS, compare, compare_models, pca_slice
from bq_jax.models import qwix_interop
from bq_jax.models.qwix_interop import from_qwix
from bq_jax.quant import QuantConfig, quantize_tensor

qwix = pytest.importorskip("qwix")

QTYPE = {8: jnp.int8, 4: jnp.int4}
RES = 24  # slice resolution (kept small: the tests run a few compares)


class MLP(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Dense(32)(x))
        x = nn.relu(nn.Dense(32)(x))
        return nn.Dense(10)(x)


def float_apply(variables, x):
    return MLP().apply(variables, x)


@pytest.fixture(scope="module")
def digits():
    ds = data.load_dataset("digits")
    x_train = np.asarray(ds.x_train, np.float32)
    xh = np.asarray(ds.x_heldout, np.float32)
    xc = np.asarray(ds.x_calibration, np.float32)
    return x_train, xh, xc, pca_slice(x_train, resolution=RES)


def pow2_snapped(variables, bits):
    """Fixed random weights with every kernel column rescaled so that its absmax is
    (qmax + 0.5) * 2^e: qwix's per-channel scale is then exactly 2^e and every division in
    qwix's and bq_jax's quantizers is exact (no near-tie can fall either way)."""
    qmax = 2 ** (bits - 1) - 1
    params = jax.tree.map(np.asarray, variables["params"])
    out = {}
    for layer, p in params.items():
        k = np.array(p["kernel"], np.float32)
        absmax = np.max(np.abs(k), axis=0)
        e = np.floor(np.log2(absmax / (qmax + 0.5)))
        target = ((qmax + 0.5) * np.exp2(e)).astype(np.float32)
        k = (k * (target / absmax)).astype(np.float32)
        rows = np.argmax(np.abs(k), axis=0)
        cols = np.arange(k.shape[1])
        k[rows, cols] = np.sign(k[rows, cols]) * target
        out[layer] = {"kernel": jnp.asarray(k), "bias": jnp.asarray(p["bias"])}
    return {"params": out}


def init_vars(x):
    return MLP().init(jax.random.key(0), x[:1])


@pytest.mark.parametrize(
    "bits, provider",
    [
        (8, "ptq"),
        (4, "qat"),
        pytest.param(4, "ptq", marks=pytest.mark.slow),
        pytest.param(8, "qat", marks=pytest.mark.slow),
    ],
)
def test_compare_float_vs_qwix_model_gives_every_metric(digits, bits, provider):
    x_train, xh, xc, slc = digits
    variables = init_vars(x_train)
    rules = [qwix.QuantizationRule(module_path=".*", weight_qtype=QTYPE[bits])]
    qm = from_qwix(MLP(), variables, rules=rules, provider=provider, sample_x=x_train[:1])
    assert qm.provider == provider and not qm.quantized_activations
    res = compare_models((float_apply, variables), [(qm.apply_fn, qm.params)], slc, xh, xc)
    assert set(COMPARE_KEYS) <= set(res)
    for k in COMPARE_KEYS:
        assert res[k].shape == (1,) and np.all(np.isfinite(res[k])), k
    assert res["zero_gradient_count"][0] == 0  # gradients through qwix's quantized forward
    assert res["band_size"][0] > 0 and res["heldout_size"][0] == len(xh)
    assert 0 < res["grid_change"][0] < 0.5  # quantization moved some of the slice's labels


@pytest.mark.parametrize("bits", (4, pytest.param(8, marks=pytest.mark.slow)))
def test_bq_jax_qwix_convention_gives_qwix_weights_and_identical_metrics(digits, bits):
    x_train, xh, xc, slc = digits
    variables = pow2_snapped(init_vars(x_train), bits)
    rules = [qwix.QuantizationRule(module_path=".*", weight_qtype=QTYPE[bits])]
    qm = from_qwix(MLP(), variables, rules=rules, provider="ptq", sample_x=x_train[:1])
    cfg = QuantConfig(bits=bits, granularity="per_channel", scale_convention="qwix")
    ours = ptq.quantize_weights(variables, cfg)
    for layer, p in qm.params["params"].items():
        deq = np.asarray(qwix.dequantize(p["kernel"].array))
        np.testing.assert_array_equal(deq, np.asarray(ours["params"][layer]["kernel"]))
    # the same quantized model through two implementations: identical logits and metrics
    np.testing.assert_array_equal(
        np.asarray(qm.apply_fn(qm.params, xh)), np.asarray(float_apply(ours, xh))
    )
    stack = jax.tree.map(lambda l: jnp.expand_dims(l, 0), ours)
    res_bq = compare(float_apply, variables, stack, slc, xh, xc)
    res_qwix = compare_models((float_apply, variables), [(qm.apply_fn, qm.params)], slc, xh, xc)
    for k in COMPARE_KEYS:
        np.testing.assert_array_equal(res_bq[k], res_qwix[k], err_msg=k)
    assert res_bq["flip_rate"][0] >= 0 and res_bq["band_size"][0] > 0


def test_generic_weights_match_qwix_up_to_near_ties(digits):
    x_train, *_ = digits
    variables = init_vars(x_train)
    rules = [qwix.QuantizationRule(module_path=".*", weight_qtype=jnp.int4)]
    qm = from_qwix(MLP(), variables, rules=rules, provider="ptq", sample_x=x_train[:1])
    cfg = QuantConfig(bits=4, granularity="per_channel", scale_convention="qwix")
    old = QuantConfig(bits=4, granularity="per_channel")
    n = same = same_old = 0
    for layer, p in qm.params["params"].items():
        qcodes = np.asarray(p["kernel"].array.qvalue, np.int32)
        w = variables["params"][layer]["kernel"]
        codes = np.asarray(quantize_tensor(w, cfg)[0], np.int32)
        assert np.all(np.abs(codes - qcodes) <= 1)
        n += codes.size
        same += int((codes == qcodes).sum())
        same_old += int((np.asarray(quantize_tensor(w, old)[0]) == qcodes).sum())
    assert same / n > 0.99  # near-ties only (see tests/test_quant_qwix_convention.py)
    assert same_old / n < 0.95


def test_variant_apply_fn_checks_classes(digits):
    x_train, xh, xc, slc = digits
    variables = init_vars(x_train)

    def five(p, x):
        return float_apply(p, x)[:, :5]

    stack = jax.tree.map(lambda l: jnp.expand_dims(l, 0), variables)
    with pytest.raises(ValueError, match="classes"):
        compare(float_apply, variables, stack, slc, xh, xc, variant_apply_fn=five)


def test_front_door_errors(digits, monkeypatch):
    x_train, *_ = digits
    variables = init_vars(x_train)
    rules = [qwix.QuantizationRule(weight_qtype=jnp.int8)]
    with pytest.raises(ValueError, match="provider must be one of"):
        from_qwix(MLP(), variables, rules=rules, provider="aqt")
    with pytest.raises(ValueError, match="sample_x"):
        from_qwix(MLP(), variables, rules=rules, provider="ptq")
    with pytest.raises(ValueError, match="give qwix rules"):
        from_qwix(MLP(), variables, provider="qat")
    qmod = qwix.quantize_model(MLP(), qwix.QtProvider(rules))
    with pytest.raises(ValueError, match="already quantized"):
        from_qwix(qmod, variables, rules=rules, provider="qat")
    qm = from_qwix(qmod, variables, provider="qat")  # an already-quantized module
    ref = from_qwix(MLP(), variables, rules=rules, provider="qat")
    np.testing.assert_array_equal(
        np.asarray(qm.apply_fn(qm.params, x_train[:8])),
        np.asarray(ref.apply_fn(ref.params, x_train[:8])),
    )

    real = importlib.import_module

    def no_qwix(name, *a, **k):
        if name == "qwix":
            raise ImportError("No module named 'qwix'")
        return real(name, *a, **k)

    monkeypatch.setattr(qwix_interop.importlib, "import_module", no_qwix)
    with pytest.raises(ImportError, match=r"bq_jax\[interop\]"):
        from_qwix(MLP(), variables, rules=rules)


def test_activation_quantization_local_geometry_ptq_exact_derivative_qat_straight_through(digits):
    x_train, xh, xc, slc = digits
    variables = init_vars(x_train)
    rules = [qwix.QuantizationRule(weight_qtype=jnp.int8, act_qtype=jnp.int8)]
    out = {}
    for provider in ("ptq", "qat"):
        qm = from_qwix(MLP(), variables, rules=rules, provider=provider, sample_x=x_train[:1])
        assert qm.quantized_activations
        out[provider] = compare_models(
            (float_apply, variables), [(qm.apply_fn, qm.params)], slc, xh, xc
        )
        for k in COMPARE_KEYS:
            assert np.all(np.isfinite(out[provider][k])), (provider, k)
        assert out[provider]["zero_gradient_count"][0] == 0
    # same forward quantization, different input derivative: PTQ differentiates jnp.round (0)
    # and the dynamic activation scale, QAT's custom VJP passes straight through
    np.testing.assert_array_equal(out["ptq"]["flip_rate"], out["qat"]["flip_rate"])
    assert out["ptq"]["margin_radius_median"][0] != out["qat"]["margin_radius_median"][0]


@pytest.mark.parametrize("provider", ("ptq", "qat"))
def test_adapt_takes_a_qwix_quantized_module(digits, provider):
    """The front door: adapt() recognises a module quantized by qwix.quantize_model and runs it
    with the variables it was given, exactly as from_qwix's apply_fn does."""
    from bq_jax.models import adapt

    x_train, xh, _, _ = digits
    variables = init_vars(x_train)
    rule = qwix.QuantizationRule(weight_qtype=jnp.int8)
    qm = from_qwix(MLP(), variables, rules=[rule], provider=provider, sample_x=xh[:4])
    make = qwix.PtqProvider if provider == "ptq" else qwix.QtProvider
    quantized_module = qwix.quantize_model(MLP(), make([rule]))
    adapted = adapt(quantized_module, qm.params)
    assert adapted.framework == "qwix"
    np.testing.assert_array_equal(
        np.asarray(adapted.apply_fn(adapted.params, xh)), np.asarray(qm.apply_fn(qm.params, xh))
    )
    with pytest.raises(ValueError, match="'params' collection"):
        adapt(quantized_module, {"batch_stats": {}})
