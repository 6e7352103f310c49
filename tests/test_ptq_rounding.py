"""Layer-wise AdaRound and network-wise rounding: on-grid results, compile-once, errors."""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bq_jax import ptq, quant
from bq_jax.quant import QuantConfig

W4 = QuantConfig(bits=4, symmetric=True, granularity="per_channel")


class _MLP(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Dense(24)(x))
        x = nn.relu(nn.Dense(16)(x))
        return nn.Dense(4)(x)


@pytest.fixture(scope="module")
def mlp():
    m = _MLP()
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(160, 8)), jnp.float32)
    shapes = jax.eval_shape(m.init, jax.random.key(0), x)
    v = jax.tree.map(
        lambda s: jnp.asarray(rng.normal(size=s.shape) / np.sqrt(s.shape[0]), jnp.float32), shapes
    )
    return m.apply, v, x[:96], x[96:]


def _assert_on_grid(params_q, params_f, config):
    """Every quantized kernel is s * (integer code - zp) with codes in [qmin, qmax]."""
    for path in ("params/Dense_0/kernel", "params/Dense_1/kernel", "params/Dense_2/kernel"):
        w = ptq.flatten_params(params_f)[path]
        wq = np.asarray(ptq.flatten_params(params_q)[path], np.float64)
        qp = quant.compute_qparams(w, config)
        s = np.asarray(qp.scale, np.float64).reshape(1, -1)
        codes = wq / s
        np.testing.assert_allclose(codes, np.round(codes), atol=1e-4)
        assert codes.min() >= qp.qmin - 1e-4 and codes.max() <= qp.qmax + 1e-4
        # Learned rounding only ever moves a weight to the grid point below or above it.
        lo = np.floor(np.asarray(w, np.float64) / s)
        assert np.all((np.round(codes) >= lo - 1e-6) & (np.round(codes) <= lo + 1 + 1e-6))


def test_adaround_on_grid_compiles_once_and_beats_nearest(mlp):
    apply_fn, v, x_cal, x_heldout = mlp
    cfg = ptq.AdaRoundConfig(weights=W4, rounding_iters=600, batch_size=32, steps_per_call=300)
    vq, info = ptq.adaround(
        apply_fn, v, x_cal, cfg, jax.random.key(0), progress=False, return_info=True
    )
    _assert_on_grid(vq, v, W4)
    assert list(info) == ["Dense_0", "Dense_1", "Dense_2"]
    for layer in info.values():
        assert layer["traces"] == 1  # one compilation per layer, reused over the 2 chunks
        assert layer["loss"].shape == (600,)
        assert bool(jnp.all(jnp.isfinite(layer["loss"])))
    # Biases untouched; layer reconstruction error below round-to-nearest on calibration data.
    np.testing.assert_array_equal(
        np.asarray(vq["params"]["Dense_1"]["bias"]), np.asarray(v["params"]["Dense_1"]["bias"])
    )
    vn = ptq.nearest_rounding(v, W4)
    _assert_on_grid(vn, v, W4)
    e_ar = ptq.layer_reconstruction_error(apply_fn, v, vq, x_cal)
    e_rtn = ptq.layer_reconstruction_error(apply_fn, v, vn, x_cal)
    assert np.mean(list(e_ar.values())) < np.mean(list(e_rtn.values()))
    # Same key -> same result.
    vq2 = ptq.adaround(apply_fn, v, x_cal, cfg, jax.random.key(0), progress=False)
    for a, b in zip(jax.tree.leaves(vq), jax.tree.leaves(vq2), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_adaround_rules_and_errors(mlp):
    apply_fn, v, x_cal, _ = mlp
    rules = [(r"Dense_2/", None), (r"kernel$", W4)]
    cfg = ptq.AdaRoundConfig(weights=rules, rounding_iters=20, steps_per_call=20, inputs="float")
    vq = ptq.adaround(apply_fn, v, x_cal, cfg, jax.random.key(1), progress=False)
    np.testing.assert_array_equal(  # kept in float by the None rule
        np.asarray(vq["params"]["Dense_2"]["kernel"]), np.asarray(v["params"]["Dense_2"]["kernel"])
    )
    with pytest.raises(ValueError, match="non-empty"):
        ptq.adaround(apply_fn, v, x_cal[:0], cfg, jax.random.key(1), progress=False)
    with pytest.raises(ValueError, match="matches no parameter"):
        ptq.adaround(
            apply_fn,
            v,
            x_cal,
            ptq.AdaRoundConfig(weights=[("Conv", W4)], rounding_iters=5),
            jax.random.key(1),
            progress=False,
        )
    with pytest.raises(ValueError, match="inputs"):
        ptq.AdaRoundConfig(weights=W4, inputs="both")
    with pytest.raises(ValueError, match="rounding_iters"):
        ptq.AdaRoundConfig(weights=W4, rounding_iters=0)
    with pytest.raises(ValueError, match="warm_start"):
        ptq.AdaRoundConfig(weights=W4, warm_start=1.5)
    with pytest.raises(TypeError, match="AdaRoundConfig"):
        ptq.adaround(apply_fn, v, x_cal, W4, jax.random.key(1), progress=False)


def test_optimize_rounding_custom_objective(mlp):
    apply_fn, v, x_cal, _ = mlp

    def logit_mse(soft_params, batch):
        zq = apply_fn(soft_params, batch["x"])
        loss = jnp.mean(jnp.sum((zq - batch["logits"]) ** 2, axis=-1))
        return loss, {"mse": loss}

    cfg = ptq.RoundingConfig(weights=W4, rounding_iters=300, steps_per_call=150, resolution=8)
    vq, info = ptq.optimize_rounding(
        apply_fn,
        v,
        x_cal,
        cfg,
        jax.random.key(2),
        objective=logit_mse,
        progress=False,
        return_info=True,
    )
    _assert_on_grid(vq, v, W4)
    assert info["traces"] == 1 and info["mse"].shape == (300,)
    # The objective went down while the regulariser was off (first 20 % of the steps).
    assert float(jnp.mean(info["mse"][50:60])) < float(jnp.mean(info["mse"][:10]))
    with pytest.raises(TypeError, match="callable"):
        ptq.optimize_rounding(apply_fn, v, x_cal, cfg, jax.random.key(2), objective="kl")
    with pytest.raises(ValueError, match="non-empty"):
        ptq.optimize_rounding(apply_fn, v, x_cal[:0], cfg, jax.random.key(2), objective=logit_mse)
    with pytest.raises(ValueError, match="objective is empty"):
        ptq.RoundingConfig(weights=W4, task="none", recon_weight=0.0)
    with pytest.raises(ValueError, match="temperature"):
        ptq.RoundingConfig(weights=W4, temperature=0.0)


def test_check_on_grid_rejects_off_grid_and_out_of_range_codes():
    q = quant.QParams(0.5, 0, -8, 7)
    ptq.check_on_grid(jnp.array([0.5, -4.0, 3.5]), q)  # codes 1, -8, 7: on the grid
    with pytest.raises(RuntimeError, match="layer/kernel.*off the integer grid"):
        ptq.check_on_grid(jnp.array([0.5, 0.3]), q, path="layer/kernel")  # code 0.6
    with pytest.raises(RuntimeError, match=r"codes in \[-8.0, 8.0\] vs \[-8, 7\]"):
        ptq.check_on_grid(jnp.array([4.0, -4.0]), q)  # code 8 > qmax


def test_learned_rounding_stays_on_grid_for_degenerate_kernels(mlp):
    """A zero output channel and an outlier weight (codes at qmin / qmax) stay on the grid."""
    apply_fn, v, x_cal, _ = mlp
    k = np.array(v["params"]["Dense_1"]["kernel"])
    k[:, 0] = 0.0
    k[3, 5] = 20.0 * np.abs(k).max()
    vd = jax.tree.map(lambda a: a, v)
    vd["params"]["Dense_1"]["kernel"] = jnp.asarray(k)
    ada = ptq.AdaRoundConfig(weights=W4, rounding_iters=40, steps_per_call=40)
    net = ptq.RoundingConfig(weights=W4, rounding_iters=40, steps_per_call=40, resolution=8)
    for vq in (
        ptq.adaround(apply_fn, vd, x_cal, ada, jax.random.key(3), progress=False),
        ptq.optimize_rounding(
            apply_fn,
            vd,
            x_cal,
            dataclasses.replace(net, boundary_gap_weight=10.0),
            jax.random.key(3),
            progress=False,
        ),
    ):
        assert all(bool(jnp.all(jnp.isfinite(a))) for a in jax.tree.leaves(vq))
        _assert_on_grid(vq, vd, W4)
        np.testing.assert_array_equal(np.asarray(vq["params"]["Dense_1"]["kernel"])[:, 0], 0.0)


def test_learned_rounding_rule_and_calibration_errors(mlp):
    """quantize_weights' rule errors and the empty-calibration error reach both rounders."""
    apply_fn, v, x_cal, _ = mlp
    key = jax.random.key(4)
    vi = {**v, "counters": {"step": jnp.array(3, jnp.int32)}}
    ambiguous = [(r"kernel$", W4), (r"Dense_1/", W4)]
    for make, run in (
        (
            lambda **kw: ptq.AdaRoundConfig(rounding_iters=5, **kw),
            lambda vv, x, cfg: ptq.adaround(apply_fn, vv, x, cfg, key, progress=False),
        ),
        (
            lambda **kw: ptq.RoundingConfig(rounding_iters=5, resolution=8, **kw),
            lambda vv, x, cfg: ptq.optimize_rounding(apply_fn, vv, x, cfg, key, progress=False),
        ),
    ):
        with pytest.raises(ValueError, match="matches no parameter"):
            run(v, x_cal, make(weights=[("Conv_", W4)]))
        with pytest.raises(ValueError, match=r"ambiguous.*Dense_1/kernel"):
            run(v, x_cal, make(weights=ambiguous, strict=True))
        with pytest.raises(ValueError, match="counters/step.*non-float leaf of dtype int32"):
            run(vi, x_cal, make(weights=[("step", W4)], targets=None))
        with pytest.raises(ValueError, match="non-empty"):
            run(v, x_cal[:0], make(weights=W4))


def test_straight_through_objective_sees_the_hard_rounded_network(mlp):
    """At the first step (h = frac(W/s)) the objective sees the float kernel through the soft
    relaxation and the round-to-nearest kernel with straight_through=True -- including each
    channel's absmax weight, whose W/s = qmax a jitted division can put one ulp below."""
    apply_fn, v, x_cal, _ = mlp
    path = "params/Dense_1/kernel"

    def kernel_sum(soft_params, batch):
        k = ptq.flatten_params(soft_params)[path]
        loss = jnp.mean(jnp.sum((apply_fn(soft_params, batch["x"]) - batch["logits"]) ** 2, -1))
        return loss, {"kernel_sum": jnp.sum(k)}

    cfg = ptq.RoundingConfig(weights=W4, rounding_iters=2, steps_per_call=2, resolution=8)
    expected = {
        False: ptq.flatten_params(v)[path],
        True: ptq.flatten_params(ptq.nearest_rounding(v, W4))[path],
    }
    for straight_through, k in expected.items():
        _, info = ptq.optimize_rounding(
            apply_fn,
            v,
            x_cal,
            dataclasses.replace(cfg, straight_through=straight_through),
            jax.random.key(5),
            objective=kernel_sum,
            progress=False,
            return_info=True,
        )
        np.testing.assert_allclose(
            float(info["kernel_sum"][0]), float(jnp.sum(k)), rtol=1e-5, atol=1e-5
        )
    assert float(jnp.sum(expected[True])) != pytest.approx(float(jnp.sum(expected[False])))
    with pytest.raises(TypeError, match="straight_through must be a bool"):
        ptq.RoundingConfig(weights=W4, straight_through=1)


def test_optimize_rounding_starts_from_given_rounding(mlp):
    apply_fn, v, x_cal, _ = mlp
    flat = ptq.flatten_params(v)
    rng = np.random.default_rng(1)
    start = dict(flat)
    for path in ("params/Dense_0/kernel", "params/Dense_1/kernel", "params/Dense_2/kernel"):
        qp = quant.compute_qparams(flat[path], W4)
        s = jnp.asarray(qp.scale).reshape(1, -1)
        up = jnp.asarray(rng.integers(0, 2, size=flat[path].shape), jnp.float32)
        x = flat[path] / s
        # Weights on a grid point (each channel's absmax) keep their code.
        lo = jnp.where(jnp.abs(x - jnp.round(x)) < 1e-3, jnp.round(x), jnp.floor(x))
        start[path] = s * jnp.clip(lo + up, qp.qmin, qp.qmax)
    start = ptq.unflatten_params(start)
    cfg = ptq.RoundingConfig(weights=W4, rounding_iters=1, straight_through=True, steps_per_call=1)
    vq = ptq.optimize_rounding(
        apply_fn, v, x_cal, cfg, jax.random.key(0), init_params=start, progress=False
    )
    _assert_on_grid(vq, v, W4)
    for path, a in ptq.flatten_params(start).items():
        np.testing.assert_array_equal(np.asarray(ptq.flatten_params(vq)[path]), np.asarray(a))

    off = ptq.flatten_params(start)
    off["params/Dense_1/kernel"] = off["params/Dense_1/kernel"] + 0.3 * jnp.asarray(
        quant.compute_qparams(flat["params/Dense_1/kernel"], W4).scale
    ).reshape(1, -1)
    with pytest.raises(ValueError, match="Dense_1/kernel: rounded weights are off the integer"):
        ptq.optimize_rounding(
            apply_fn, v, x_cal, cfg, jax.random.key(0), init_params=ptq.unflatten_params(off)
        )
    zero = ptq.flatten_params(start)
    zero["params/Dense_0/kernel"] = jnp.zeros_like(flat["params/Dense_0/kernel"])
    with pytest.raises(ValueError, match="neither floor"):
        ptq.optimize_rounding(
            apply_fn, v, x_cal, cfg, jax.random.key(0), init_params=ptq.unflatten_params(zero)
        )
