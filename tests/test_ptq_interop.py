"""PTQ on linen, NNX and equinox twins through adapt(): the same numbers for all three.

The twins (tests/test_models_adapt.py) hold the same weights, equinox's transposed to
``(out, in)`` / OIHW; every result is compared across frameworks (equinox kernels transposed
back), so the layout handling, not luck, makes them agree.
"""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from test_models_adapt import FRAMEWORKS, cnn_twins, mlp_twins

from bq_jax import geometry, ptq, quant
from bq_jax.models import adapt
from bq_jax.quant import QuantConfig

W4 = QuantConfig(bits=4, granularity="per_channel")


@pytest.fixture(scope="module")
def mlps():
    return mlp_twins()


@pytest.fixture(scope="module")
def cnns():
    return cnn_twins()


def _as_linen(fw: str, path_leaves: dict) -> dict:
    """``{layer: kernel}`` in linen layout (equinox kernels transposed back)."""
    out = {}
    for path, w in path_leaves.items():
        name = path.split("/")[1]
        w = np.asarray(w)
        if fw == "equinox":
            w = w.T if w.ndim == 2 else np.transpose(w, (2, 3, 1, 0))
        out[name] = w
    return out


def _kernels(adapted, params) -> dict:
    flat = ptq.flatten_params(params)
    return {p: flat[p] for p in adapted.layouts}


def test_per_channel_weights_identical_and_equinox_scales_per_output(mlps):
    got = {}
    for fw in FRAMEWORKS:
        a, _ = mlps[fw]
        q = ptq.quantize_weights(a.params, W4, layouts=a.layouts)
        got[fw] = _as_linen(fw, _kernels(a, q))
    for fw in ("nnx", "equinox"):
        for name in got["linen"]:
            np.testing.assert_array_equal(got[fw][name], got["linen"][name])
    # The plan resolves equinox's axis to 0: one scale per output row, shape (out, 1).
    a = mlps["equinox"][0]
    plan = ptq.resolve_rules(a.params, W4, layouts=a.layouts)
    w = ptq.flatten_params(a.params)["params/fc1/weight"]
    assert plan["params/fc1/weight"].axis == 0
    assert quant.compute_qparams(w, plan["params/fc1/weight"]).scale.shape == (32, 1)
    # The linen plan is untouched (same config object, axis -1).
    linen = mlps["linen"][0]
    assert ptq.resolve_rules(linen.params, W4, layouts=linen.layouts)["params/fc1/kernel"] is W4


def test_wrong_axis_is_refused_or_explicit(mlps):
    a, _ = mlps["equinox"]
    per_input = QuantConfig(bits=4, granularity="per_channel", axis=1)
    with pytest.raises(ValueError, match="output channel is axis 0.*channel_axis='config'"):
        ptq.quantize_weights(a.params, per_input, layouts=a.layouts)
    # An explicit choice: per-input-channel scales, as asked.
    q = ptq.quantize_weights(a.params, per_input, layouts=a.layouts, channel_axis="config")
    w = ptq.flatten_params(a.params)["params/fc1/weight"]
    np.testing.assert_array_equal(
        np.asarray(ptq.flatten_params(q)["params/fc1/weight"]),
        np.asarray(quant.fake_quant(w, per_input)),
    )
    # Without layouts the equinox weights are not mistaken for linen kernels.
    with pytest.raises(ValueError, match="layouts="):
        ptq.quantize_weights(a.params, W4)
    with pytest.raises(ValueError, match="channel_axis must be one of"):
        ptq.quantize_weights(a.params, W4, layouts=a.layouts, channel_axis="input")
    # AdaRound finds the layout itself and refuses the same conflict.
    cfg = ptq.AdaRoundConfig(weights=per_input, rounding_iters=2, steps_per_call=2)
    with pytest.raises(ValueError, match="output channel is axis 0"):
        ptq.adaround(
            a.apply_fn, a.params, mlps["equinox"][1], cfg, jax.random.key(0), progress=False
        )


def test_geometry_compare_identical_across_frameworks(mlps):
    x = mlps["linen"][1]
    slc = geometry.pca_slice(x[:128], resolution=16)
    results = {}
    for fw in FRAMEWORKS:
        a, _ = mlps[fw]
        variants = ptq.quantize_weights_stack(
            a.params,
            [QuantConfig(bits=b, granularity="per_channel") for b in (3, 5)],
            layouts=a.layouts,
        )
        results[fw] = geometry.compare(
            a.apply_fn, a.params, variants, slc, x[128:], x[:128], return_maps=True
        )
    ref = results["linen"]
    assert 0 < ref["flip_rate"][0] and ref["labels"].shape == (2, 16, 16)
    for fw in ("nnx", "equinox"):
        np.testing.assert_array_equal(results[fw]["labels"], ref["labels"])
        for key in (
            "flip_rate",
            "boundary_jaccard_distance",
            "grid_change",
            "band_flip_rate",
            "pair_order_flip",
            "band_size",
        ):
            np.testing.assert_array_equal(results[fw][key], ref[key], err_msg=f"{fw} {key}")
        for key in ("median_local_shift", "normal_variation", "margin_radius_median"):
            np.testing.assert_allclose(results[fw][key], ref[key], rtol=1e-4, err_msg=key)


# The CNN case (~27 s) is slow: the MLP case runs the same AdaRound path on every framework, and
# the CNN's conv layers are checked across frameworks by the other tests of this file.
@pytest.mark.parametrize("twins", ["mlp", pytest.param("cnn", marks=pytest.mark.slow)])
def test_adaround_same_result_on_every_framework(twins, mlps, cnns):
    models = mlps if twins == "mlp" else cnns
    cfg = ptq.AdaRoundConfig(weights=W4, rounding_iters=60, batch_size=16, steps_per_call=60)
    got, errors = {}, {}
    for fw in FRAMEWORKS:
        a, x = models[fw]
        q = ptq.adaround(a.apply_fn, a.params, x[:64], cfg, jax.random.key(3), progress=False)
        got[fw] = _as_linen(fw, _kernels(a, q))
        errors[fw] = ptq.layer_reconstruction_error(a.apply_fn, a.params, q, x[:64])
        # every kernel on its per-output-channel 4-bit grid
        for path in a.layouts:
            w = ptq.flatten_params(a.params)[path]
            plan = ptq.resolve_rules(a.params, W4, layouts=a.layouts)[path]
            qp = quant.compute_qparams(w, plan)
            codes = np.asarray(ptq.flatten_params(q)[path]) / np.asarray(qp.scale)
            np.testing.assert_allclose(codes, np.round(codes), atol=1e-4)
    for fw in ("nnx", "equinox"):
        for name in got["linen"]:
            np.testing.assert_array_equal(got[fw][name], got["linen"][name], err_msg=f"{fw} {name}")
        assert errors[fw].keys() == errors["linen"].keys()
        for name in errors["linen"]:
            np.testing.assert_allclose(errors[fw][name], errors["linen"][name], rtol=1e-4)


def test_bias_correction_activations_and_errors_agree(cnns):
    w3 = QuantConfig(bits=3, granularity="per_channel")
    a8 = QuantConfig(bits=6, symmetric=False)
    out = {}
    for fw in FRAMEWORKS:
        a, x = cnns[fw]
        q = ptq.quantize_weights(a.params, w3, layouts=a.layouts)
        bc = ptq.bias_correction(a.apply_fn, a.params, q, x[:64])
        errs = ptq.layer_mean_errors(a.apply_fn, a.params, bc, x[:64])
        apply_q, pq = ptq.quantize_activations(
            a.apply_fn, bc, x[:64], a8, points=("input", "output")
        )
        out[fw] = {
            "bias": {
                n: np.asarray(ptq.flatten_params(bc)[f"params/{n}/bias"]).reshape(-1)
                for n in ("conv", "fc")
            },
            "err_before": ptq.layer_mean_errors(a.apply_fn, a.params, q, x[:64]),
            "err_after": errs,
            "logits_q": np.asarray(jax.jit(apply_q)(pq, x[64:])),
            "ranges": pq["activation_qparams"],
            "recon": ptq.layer_reconstruction_error(
                a.apply_fn, a.params, q, x[:64], inputs="float"
            ),
        }
    ref = out["linen"]
    # bias correction zeroes the per-channel mean error on the calibration set
    for n in ("conv", "fc"):
        assert float(jnp.max(jnp.abs(ref["err_before"][n]))) > 1e-3
        assert float(jnp.max(jnp.abs(ref["err_after"][n]))) < 1e-5
    for fw in ("nnx", "equinox"):
        for n in ("conv", "fc"):
            np.testing.assert_allclose(out[fw]["bias"][n], ref["bias"][n], rtol=1e-5, atol=1e-6)
            np.testing.assert_allclose(
                np.asarray(out[fw]["err_before"][n]),
                np.asarray(ref["err_before"][n]),
                rtol=1e-4,
                atol=1e-6,
            )
            for point in ("input", "output"):
                for k in ("scale", "zero_point"):
                    np.testing.assert_allclose(
                        np.asarray(out[fw]["ranges"][n][point][k]),
                        np.asarray(ref["ranges"][n][point][k]),
                        rtol=1e-5,
                    )
            np.testing.assert_allclose(out[fw]["recon"][n], ref["recon"][n], rtol=1e-4)
        np.testing.assert_allclose(out[fw]["logits_q"], ref["logits_q"], rtol=1e-4, atol=1e-5)


class _NNXConvBN(nnx.Module):
    def __init__(self, rngs):
        self.conv = nnx.Conv(2, 4, (3, 3), use_bias=False, rngs=rngs)
        self.bn = nnx.BatchNorm(4, rngs=rngs)
        self.fc = nnx.Linear(4, 3, rngs=rngs)
        self.bn_fc = nnx.BatchNorm(3, rngs=rngs)

    def __call__(self, x):
        h = jnp.mean(nnx.relu(self.bn(self.conv(x))), axis=(1, 2))
        return self.bn_fc(self.fc(h))


def test_fold_nnx_batch_norm():
    graphdef, state = nnx.split(nnx.eval_shape(lambda: _NNXConvBN(nnx.Rngs(0))))
    rng = np.random.default_rng(0)
    pure = jax.tree.map(
        lambda s: jnp.asarray(rng.uniform(0.5, 2.0, size=s.shape), jnp.float32),
        nnx.to_pure_dict(state),
    )
    nnx.replace_by_pure_dict(state, pure)
    a = adapt(nnx.merge(graphdef, state), sample_x=jnp.ones((2, 6, 6, 2)))
    x = jnp.asarray(rng.normal(size=(8, 6, 6, 2)), jnp.float32)
    fold = ptq.fold_batch_norm(a.apply_fn, a.params, x[:2])
    assert fold.pairs == (("conv", "bn"), ("fc", "bn_fc"))
    assert fold.params["batch_stats"] == {} and "bn" not in fold.params["params"]
    # k = scale / sqrt(var + eps) per output channel (last axis of the HWIO kernel)
    bn = pure["bn"]
    k = np.asarray(bn["scale"]) / np.sqrt(np.asarray(bn["var"]) + 1e-5)
    np.testing.assert_allclose(
        np.asarray(fold.params["params"]["conv"]["kernel"]),
        np.asarray(pure["conv"]["kernel"]) * k,
        rtol=1e-6,
    )
    np.testing.assert_allclose(
        np.asarray(fold.params["params"]["conv"]["bias"]),
        (0 - np.asarray(bn["mean"])) * k + np.asarray(bn["bias"]),
        rtol=1e-5,
    )
    ref = a.apply_fn(a.params, x)
    np.testing.assert_allclose(
        np.asarray(jax.jit(fold.apply_fn)(fold.params, x)), np.asarray(ref), rtol=1e-5, atol=1e-5
    )


def test_equinox_batch_norm_is_refused_with_the_reason():
    model = eqx.nn.Sequential(
        [
            eqx.nn.Linear(3, 4, key=jax.random.key(0)),
            eqx.nn.BatchNorm(4, axis_name="batch", mode="batch"),
        ]
    )
    with pytest.raises(ValueError, match="eqx.nn.State"):
        adapt(model)
