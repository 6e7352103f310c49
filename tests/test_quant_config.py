"""QuantConfig validation, compute_qparams / fake_quant against numpy references, shapes,
zero and constant tensors, jit == eager, no retrace, STE gradient."""

import dataclasses

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

from bq_jax import quant
from bq_jax.quant import QuantConfig


def _rng(seed):
    return np.random.default_rng(seed)


def _np_fake_quant(x, scale, zp, qmin, qmax):
    return (np.clip(np.round(x / scale) + zp, qmin, qmax) - zp) * scale


def _np_qparams(lo, hi, qmin, qmax, symmetric):
    if symmetric:
        return np.maximum(np.abs(lo), np.abs(hi)) / qmax, np.zeros_like(lo)
    lo, hi = np.minimum(lo, 0), np.maximum(hi, 0)
    s = (hi - lo) / (qmax - qmin)
    return s, np.clip(np.round(qmin - lo / s), qmin, qmax)


def _assert_close_to_reference(y, ref, x, scale):
    # Division x / scale can differ from numpy's by an ulp (DESIGN: near-tie allowance), which
    # moves a value by one step; everything else must match to float32 precision.
    diff = np.abs(np.asarray(y, np.float64) - ref)
    step = np.broadcast_to(scale, x.shape)
    ok = diff <= 1e-6 + 1e-5 * np.abs(ref)
    near_tie = np.abs(np.abs(np.asarray(x) / step - np.round(np.asarray(x) / step)) - 0.5) < 1e-5
    assert np.all(ok | (near_tie & (diff <= step * (1 + 1e-5))))
    assert ok.mean() > 0.99


# ------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"bits": 1}, r"bits must be an int in \[2, 16\]"),
        ({"bits": 17}, r"bits must be an int in \[2, 16\]"),
        ({"bits": 4.0}, "bits"),
        ({"symmetric": 1}, "symmetric must be a bool"),
        ({"granularity": "per_row"}, "granularity must be one of"),
        ({"axis": 1.0}, "axis must be an int"),
        ({"granularity": "per_group"}, "group_size must be an int >= 1"),
        ({"granularity": "per_group", "group_size": 0}, "group_size must be an int >= 1"),
        ({"group_size": 4}, "group_size is only used with granularity='per_group'"),
        ({"rounding": "up"}, "rounding must be one of"),
        ({"range_method": "kl"}, "range_method must be one of"),
        ({"percentile": 0.0}, r"percentile must be in \(0, 100\]"),
        ({"percentile": 101.0}, r"percentile must be in \(0, 100\]"),
        ({"symmetric": False, "percentile": 10.0}, r"percentile must be in \[50, 100\]"),
        ({"mse_candidates": 0}, "mse_candidates must be an int >= 1"),
        ({"narrow": "yes"}, "narrow must be a bool"),
        ({"fmt": "e3m4"}, "fmt must be 'int'"),
        ({"fmt": (4, -1)}, "fmt must be 'int'"),
        ({"fmt": [4, 3]}, "fmt must be 'int'"),
        ({"fmt": "e2m1"}, r"bits must equal the width 1 \+ 2 \+ 1 = 4"),
        ({"fmt": "e4m3", "symmetric": False}, "symmetric must be True for floating-point"),
        ({"fmt": "e4m3", "narrow": True}, "narrow must be False"),
        ({"fmt": "e4m3", "rounding": "floor"}, "rounding must be 'nearest'"),
        ({"fmt": "e4m3", "range_method": "octav"}, "range_method must be one of"),
    ],
)
def test_config_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        QuantConfig(**kwargs)


def test_config_is_frozen_kw_only_and_hashable():
    a = QuantConfig(bits=4, granularity="per_group", group_size=8, fmt="int")
    b = QuantConfig(bits=4, granularity="per_group", group_size=8)
    assert a == b and hash(a) == hash(b) and len({a, b}) == 1
    assert hash(QuantConfig(bits=4, fmt=(2, 1))) == hash(QuantConfig(bits=4, fmt=(2, 1)))
    with pytest.raises(dataclasses.FrozenInstanceError):
        a.bits = 8
    with pytest.raises(TypeError):
        QuantConfig(4)
    assert QuantConfig(bits=3).qrange == (-4, 3)
    assert QuantConfig(bits=3, narrow=True).qrange == (-3, 3)
    assert QuantConfig(bits=3, symmetric=False).qrange == (0, 7)


def test_tensor_validation():
    x = jnp.ones((4, 6))
    with pytest.raises(ValueError, match="axis=2 is out of range"):
        quant.compute_qparams(x, QuantConfig(granularity="per_channel", axis=2))
    with pytest.raises(ValueError, match="axis=-3 is out of range"):
        quant.fake_quant(x, QuantConfig(granularity="per_group", group_size=2, axis=-3))
    with pytest.raises(ValueError, match="group_size=3 must be a positive divisor of the 4"):
        quant.fake_quant(x, QuantConfig(granularity="per_group", group_size=3))
    with pytest.raises(ValueError, match="rank 0"):
        quant.compute_qparams(jnp.float32(1.0), QuantConfig(granularity="per_channel"))
    with pytest.raises(TypeError, match="floating-point"):
        quant.fake_quant(jnp.ones(3, jnp.int32), QuantConfig())
    with pytest.raises(TypeError, match="config must be a QuantConfig"):
        quant.fake_quant(x, {"bits": 8})
    with pytest.raises(ValueError, match="needs a PRNG key"):
        quant.fake_quant(x, QuantConfig(rounding="stochastic"))
    with pytest.raises(ValueError, match="quantize_tensor needs fmt='int'"):
        quant.quantize_tensor(x, QuantConfig(fmt="e4m3"))


# ------------------------------------------------------------------- numpy references


@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("axis", [-1, 0])
def test_per_channel_matches_numpy(symmetric, axis):
    x = (_rng(0).standard_normal((3, 3, 4, 6)) * np.arange(1, 7)).astype(np.float32)
    if not symmetric:
        x = x + 0.5
    cfg = QuantConfig(bits=4, symmetric=symmetric, granularity="per_channel", axis=axis)
    qp = quant.compute_qparams(x, cfg)
    axes = tuple(a for a in range(4) if a != axis % 4)
    lo, hi = x.min(axes, keepdims=True), x.max(axes, keepdims=True)
    qmin, qmax = cfg.qrange
    s_ref, zp_ref = _np_qparams(lo.astype(np.float64), hi.astype(np.float64), qmin, qmax, symmetric)
    assert qp.scale.shape == lo.shape and qp.zero_point.dtype == jnp.int32
    np.testing.assert_allclose(np.asarray(qp.scale), s_ref, rtol=1e-6)
    np.testing.assert_array_equal(np.asarray(qp.zero_point), zp_ref)
    y = quant.fake_quant(x, cfg)
    _assert_close_to_reference(y, _np_fake_quant(x, s_ref, zp_ref, qmin, qmax), x, s_ref)


def test_per_tensor_qparams_are_scalars():
    x = _rng(1).standard_normal((5, 7)).astype(np.float32)
    qp = quant.compute_qparams(x, QuantConfig(bits=8))
    assert qp.scale.shape == () and qp.zero_point.shape == ()
    np.testing.assert_allclose(float(qp.scale), np.abs(x).max() / 127, rtol=1e-6)


def test_per_group_matches_numpy():
    x = _rng(2).standard_normal((16, 5)).astype(np.float32)  # Dense kernel (in, out)
    cfg = QuantConfig(bits=3, granularity="per_group", group_size=4)
    qp = quant.compute_qparams(x, cfg)
    assert qp.scale.shape == (4, 1, 5)
    # Groups of 4 consecutive input rows per output column.
    ref = np.abs(x.reshape(4, 4, 5)).max(axis=1, keepdims=True) / 3
    np.testing.assert_allclose(np.asarray(qp.scale), ref, rtol=1e-6)
    y = quant.fake_quant(x, cfg)
    ref_y = _np_fake_quant(x, np.repeat(ref[:, 0, :], 4, axis=0), 0, -4, 3)
    _assert_close_to_reference(y, ref_y, x, np.repeat(ref[:, 0, :], 4, axis=0))
    full = quant.broadcast_qparams(qp, x.shape, cfg)
    assert full.scale.shape == x.shape
    np.testing.assert_array_equal(
        np.asarray(full.scale), np.repeat(np.asarray(qp.scale)[:, 0, :], 4, axis=0)
    )


def test_per_group_with_whole_channel_is_per_channel():
    x = _rng(3).standard_normal((3, 3, 2, 4)).astype(np.float32)  # HWIO, 18 values per channel
    g = QuantConfig(bits=4, symmetric=False, granularity="per_group", group_size=18)
    c = QuantConfig(bits=4, symmetric=False, granularity="per_channel")
    np.testing.assert_array_equal(
        np.asarray(quant.fake_quant(x, g)), np.asarray(quant.fake_quant(x, c))
    )
    xg = quant.to_groups(x, axis=1, group_size=6)
    assert xg.shape == (4, 6, 3)
    np.testing.assert_array_equal(np.asarray(quant.from_groups(xg, x.shape, axis=1)), x)


@pytest.mark.parametrize("method", ["minmax", "percentile", "mse", "octav", "gaussian"])
def test_range_methods_through_config(method):
    x = _rng(4).standard_normal((64, 3)).astype(np.float32)
    cfg = QuantConfig(
        bits=4, granularity="per_channel", range_method=method, percentile=99.0, mse_candidates=20
    )
    qp = quant.compute_qparams(x, cfg)
    r = {
        "minmax": lambda: quant.minmax(x, reduce_axes=0),
        "percentile": lambda: quant.percentile(x, 99.0, reduce_axes=0),
        "mse": lambda: quant.mse(x, bits=4, reduce_axes=0, num_candidates=20),
        "octav": lambda: quant.octav(x, bits=4, reduce_axes=0),
        "gaussian": lambda: quant.gaussian(x, bits=4, reduce_axes=0),
    }[method]()
    np.testing.assert_allclose(np.asarray(qp.scale), np.asarray(r.hi) / 7, rtol=1e-6)


def test_quantize_dequantize_round_trip():
    x = _rng(5).standard_normal((8, 6)).astype(np.float32) + 0.3
    cfg = QuantConfig(bits=5, symmetric=False, granularity="per_group", group_size=4)
    codes, qp = quant.quantize_tensor(x, cfg)
    assert codes.dtype == jnp.uint8 and codes.shape == x.shape
    assert int(codes.min()) >= 0 and int(codes.max()) <= 31
    np.testing.assert_array_equal(
        np.asarray(quant.dequantize_tensor(codes, qp, cfg)), np.asarray(quant.fake_quant(x, cfg))
    )


def test_float_format_matches_ml_dtypes():
    x = _rng(6).standard_normal((32, 4)).astype(np.float32) * 3
    for fmt, dtype, fmax in (
        ("e4m3", ml_dtypes.float8_e4m3fn, 448.0),
        ("e5m2", ml_dtypes.float8_e5m2, 57344.0),
    ):
        cfg = QuantConfig(bits=8, fmt=fmt, granularity="per_channel")
        qp = quant.compute_qparams(x, cfg)
        s = np.abs(x).max(0, keepdims=True) / np.float32(fmax)
        np.testing.assert_allclose(np.asarray(qp.scale), s, rtol=1e-6)
        scale = np.asarray(qp.scale)
        ref = np.clip(x / scale, -fmax, fmax).astype(dtype).astype(np.float32) * scale
        np.testing.assert_allclose(np.asarray(quant.fake_quant(x, cfg)), ref, rtol=1e-6, atol=0)
    assert quant.compute_qparams(x, QuantConfig(bits=8, fmt="e4m3")).qmin is None


# ------------------------------------------------------------------- zero / constant


@pytest.mark.parametrize(
    ("method", "symmetric"),
    [
        ("minmax", True),
        ("minmax", False),
        ("percentile", False),
        ("mse", True),
        ("octav", False),
        ("gaussian", True),
        ("gaussian", False),
    ],
)
def test_zero_and_constant_channels_are_exact(method, symmetric):
    # Column 0 all zero, columns 1-4 constant (values for which |v| / qmax * qmax != v in
    # float32 for some, and v < 0), column 5 ordinary data.
    consts = np.float32([0.0, 1.7, -3.3, 0.1, 12345.678])
    x = np.tile(consts, (10, 1))
    x = np.concatenate([x, _rng(7).standard_normal((10, 1)).astype(np.float32)], axis=1)
    cfg = QuantConfig(
        bits=4, symmetric=symmetric, granularity="per_channel", range_method=method, percentile=99.0
    )
    qp = quant.compute_qparams(x, cfg)
    s = np.asarray(qp.scale)
    assert np.all(np.isfinite(s)) and np.all(s > 0)
    y = np.asarray(quant.fake_quant(x, cfg))
    assert np.all(np.isfinite(y))
    np.testing.assert_array_equal(y[:, :5], x[:, :5])


@pytest.mark.parametrize(
    "cfg",
    [
        QuantConfig(bits=8),
        QuantConfig(bits=2, symmetric=False),
        QuantConfig(bits=8, fmt="e4m3"),
        QuantConfig(bits=4, fmt="e2m1"),
        QuantConfig(bits=3, rounding="floor", range_method="gaussian"),
    ],
)
def test_zero_and_constant_tensors_per_tensor(cfg):
    for v in (0.0, -0.37, 5.0):
        x = jnp.full((3, 4), v, jnp.float32)
        qp = quant.compute_qparams(x, cfg)
        assert np.isfinite(float(qp.scale)) and float(qp.scale) > 0
        np.testing.assert_array_equal(np.asarray(quant.fake_quant(x, cfg)), np.asarray(x))


# ------------------------------------------------------------------- jit / traces / grads


@pytest.mark.parametrize(
    "cfg",
    [
        QuantConfig(bits=4, granularity="per_channel", range_method="mse", mse_candidates=16),
        QuantConfig(bits=3, symmetric=False, granularity="per_group", group_size=4),
        QuantConfig(bits=6, range_method="octav"),
        QuantConfig(bits=8, fmt="e4m3", range_method="percentile", percentile=99.5),
        QuantConfig(bits=4, rounding="stochastic", range_method="gaussian"),
    ],
)
def test_fake_quant_jit_matches_eager(cfg):
    x = _rng(8).standard_normal((8, 6)).astype(np.float32)
    key = jax.random.key(0)
    eager = quant.fake_quant(x, cfg, key=key)
    jitted = jax.jit(quant.fake_quant, static_argnums=1)(x, cfg, key=key)
    np.testing.assert_array_equal(np.asarray(jitted), np.asarray(eager))


def test_no_retrace_when_only_values_change():
    traces = []
    cfg = QuantConfig(bits=4, granularity="per_channel", range_method="octav")

    @jax.jit
    def f(x):
        traces.append(1)
        return quant.fake_quant(x, cfg)

    rng = _rng(9)
    for _ in range(3):
        f(rng.standard_normal((16, 4)).astype(np.float32)).block_until_ready()
    assert len(traces) == 1
    # Config as a static argument: an equal (not identical) config hits the same cache entry.
    traces.clear()

    def h(x, config):
        traces.append(1)
        return quant.fake_quant(x, config)

    g = jax.jit(h, static_argnums=1)
    g(jnp.ones((16, 4)), cfg)
    g(jnp.zeros((16, 4)), QuantConfig(bits=4, granularity="per_channel", range_method="octav"))
    assert len(traces) == 1


def test_stochastic_rounding_is_on_grid_and_key_dependent():
    x = jnp.asarray(_rng(10).standard_normal((8, 6)).astype(np.float32))
    cfg = QuantConfig(bits=4, rounding="stochastic", range_method="gaussian")
    qp = quant.compute_qparams(x, cfg)
    y1 = quant.fake_quant(x, cfg, key=jax.random.key(1))
    y2 = quant.fake_quant(x, cfg, key=jax.random.key(2))
    codes = np.asarray(y1) / float(qp.scale)
    np.testing.assert_allclose(codes, np.round(codes), atol=1e-4)
    assert not np.array_equal(np.asarray(y1), np.asarray(y2))


def test_straight_through_gradient_is_the_clip_mask():
    x = jnp.asarray(_rng(11).standard_normal(512).astype(np.float32))
    cfg = QuantConfig(bits=4, range_method="percentile", percentile=95.0)
    qp = quant.compute_qparams(x, cfg)
    g = jax.grad(lambda x: jnp.sum(quant.fake_quant(x, cfg)))(x)
    code = np.round(np.asarray(x) / float(qp.scale))
    inside = (code >= qp.qmin) & (code <= qp.qmax)
    assert 0 < (~inside).sum() < 50
    np.testing.assert_array_equal(np.asarray(g), inside.astype(np.float32))
