"""AdaRound primitives: rectified sigmoid, inverse init, soft/hard weights, regulariser."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bq_jax.quant import adaround as ar


def _np_h(v, zeta=1.1, gamma=-0.1):
    return np.clip(1.0 / (1.0 + np.exp(-v)) * (zeta - gamma) + gamma, 0.0, 1.0)


def test_h_range_and_reference():
    v = jnp.linspace(-20.0, 20.0, 2001)
    h = ar.adaround_h(v)
    assert float(h.min()) == 0.0 and float(h.max()) == 1.0
    assert bool(jnp.all((h >= 0) & (h <= 1)))
    np.testing.assert_allclose(np.asarray(h), _np_h(np.asarray(v, np.float64)), atol=1e-6)
    # The stretch reaches 0 / 1 exactly at finite V: sigmoid(V) = 1/12 resp. 11/12.
    assert float(ar.adaround_h(jnp.float32(-np.log(11.0) - 1e-3))) == 0.0
    assert float(ar.adaround_h(jnp.float32(np.log(11.0) + 1e-3))) == 1.0
    assert float(ar.adaround_h(jnp.float32(0.0))) == pytest.approx(0.5, abs=1e-7)


def test_h_rejects_bad_stretch_and_int():
    with pytest.raises(ValueError, match="zeta"):
        ar.adaround_h(jnp.zeros(3), zeta=0.9)
    with pytest.raises(TypeError, match="floating-point"):
        ar.adaround_h(jnp.zeros(3, jnp.int32))


@pytest.mark.parametrize("per_channel", [False, True])
def test_init_reproduces_w_under_soft_rounding(per_channel):
    key = jax.random.key(0)
    w = jax.random.normal(key, (64, 16)) * 0.3
    if per_channel:
        scale = jnp.max(jnp.abs(w), axis=0, keepdims=True) / 7.0
    else:
        scale = jnp.max(jnp.abs(w)) / 7.0
    v = ar.adaround_init(w, scale)
    assert bool(jnp.all(jnp.isfinite(v)))
    np.testing.assert_allclose(
        np.asarray(ar.adaround_h(v)),
        np.asarray(w / scale - jnp.floor(w / scale)),
        atol=2e-6,
    )
    w_soft = ar.adaround_weights(w, v, scale, 0, qmin=-8, qmax=7)
    np.testing.assert_allclose(np.asarray(w_soft), np.asarray(w), atol=1e-6, rtol=1e-5)


def test_init_finite_on_grid_points_and_zero_scale_free_inputs():
    # Weights exactly on the grid: frac = 0 -> h(V) = 0 reachable with finite V.
    w = jnp.array([-1.0, -0.5, 0.0, 0.5, 1.0])
    v = ar.adaround_init(w, 0.5)
    assert bool(jnp.all(jnp.isfinite(v)))
    np.testing.assert_allclose(np.asarray(ar.adaround_h(v)), 0.0, atol=1e-6)
    np.testing.assert_array_equal(
        np.asarray(ar.adaround_weights(w, v, 0.5, 0, qmin=-8, qmax=7, hard=True)), np.asarray(w)
    )


@pytest.mark.parametrize("zero_point", [0, 3])
def test_hard_rounding_is_always_on_grid(zero_point):
    key = jax.random.key(1)
    kw, kv = jax.random.split(key)
    w = jax.random.normal(kw, (32, 8)) * 2.0
    v = jax.random.normal(kv, (32, 8)) * 5.0
    scale = jnp.linspace(0.05, 0.4, 8).reshape(1, 8)
    qmin, qmax = -8, 7
    wq = ar.adaround_weights(w, v, scale, zero_point, qmin=qmin, qmax=qmax, hard=True)
    codes = ar.adaround_codes(w, v, scale, zero_point, qmin=qmin, qmax=qmax)
    assert codes.dtype == jnp.int32
    assert int(codes.min()) >= qmin and int(codes.max()) <= qmax
    # Bit-identical to dequantising the integer codes: never off the grid.
    np.testing.assert_array_equal(
        np.asarray(wq), np.asarray(scale * (codes.astype(jnp.float32) - zero_point))
    )
    # Hard rounding only ever picks floor or floor + 1 (where not clipped).
    lo = np.floor(np.asarray(w / scale)) + zero_point
    inside = (lo >= qmin) & (lo + 1 <= qmax)
    c = np.asarray(codes)
    assert np.all((c[inside] == lo[inside]) | (c[inside] == lo[inside] + 1))
    np.testing.assert_array_equal(c[inside], (lo + (np.asarray(v) >= 0))[inside])


def test_hard_rounding_of_init_is_round_to_nearest_off_ties():
    w = jax.random.uniform(jax.random.key(2), (1000,), minval=-3.0, maxval=3.0)
    scale = 0.37
    v = ar.adaround_init(w, scale)
    wq = ar.adaround_weights(w, v, scale, 0, qmin=-8, qmax=7, hard=True)
    x = np.asarray(w, np.float64) / scale
    ref = np.clip(np.round(x), -8, 7) * scale
    not_tie = np.abs(x - np.floor(x) - 0.5) > 1e-4
    np.testing.assert_allclose(np.asarray(wq)[not_tie], ref[not_tie], atol=1e-6)


def test_soft_weights_gradient_and_jit():
    w = jnp.array([0.1, 0.6, -0.4, 3.9])
    v = jnp.array([0.3, -0.2, 1.5, 0.0])
    f = lambda v: jnp.sum(ar.adaround_weights(w, v, 0.5, 0, qmin=-8, qmax=7))
    g = jax.grad(f)(v)
    sig = 1.0 / (1.0 + np.exp(-np.asarray(v, np.float64)))
    pre = sig * 1.2 - 0.1
    ref = 0.5 * 1.2 * sig * (1 - sig) * ((pre > 0) & (pre < 1))
    ref[3] = 0.0  # floor(3.9/0.5) + h = 7 + h clipped at qmax = 7 for h > 0
    np.testing.assert_allclose(np.asarray(g), ref, atol=1e-6, rtol=1e-5)
    # jit vs eager: the fused sigmoid may differ by an ulp (soft); hard is bit-identical.
    for hard in (False, True):
        fn = lambda v, hard=hard: ar.adaround_weights(w, v, 0.5, 0, qmin=-8, qmax=7, hard=hard)
        np.testing.assert_allclose(
            np.asarray(jax.jit(fn)(v)), np.asarray(fn(v)), atol=1e-6 * (not hard), rtol=0
        )


def test_weights_bad_inputs():
    w = jnp.zeros((4, 3))
    with pytest.raises(ValueError, match="shape"):
        ar.adaround_weights(w, jnp.zeros((4,)), 0.1, 0, qmin=-8, qmax=7)
    with pytest.raises(ValueError, match="broadcast"):
        ar.adaround_weights(w, w, jnp.ones((4,)), 0, qmin=-8, qmax=7)
    with pytest.raises(ValueError, match="qmin"):
        ar.adaround_weights(w, w, 0.1, 0, qmin=7, qmax=-8)


def test_regularizer_golden_values():
    # h = 0.5 -> 1 per entry; h in {0, 1} -> 0.
    assert float(ar.adaround_regularizer(jnp.zeros(5), 2.0)) == pytest.approx(5.0, abs=1e-6)
    assert float(ar.adaround_regularizer(jnp.array([-10.0, 10.0]), 2.0)) == 0.0
    v = jnp.array([-1.0, 0.4, 2.0])
    for beta in (2.0, 7.5, 20.0):
        h = _np_h(np.asarray(v, np.float64))
        ref = np.sum(1.0 - np.abs(2 * h - 1) ** beta)
        got = float(ar.adaround_regularizer(v, beta))
        assert got == pytest.approx(ref, rel=1e-5, abs=1e-6)
    # Golden value: sigmoid(1) * 1.2 - 0.1 = 0.77727..., |2h-1|^2 = 0.30752 -> 0.69248...
    assert float(ar.adaround_regularizer(jnp.array([1.0]), 2.0)) == pytest.approx(
        0.6924847, abs=1e-6
    )
    with pytest.raises(ValueError, match="beta"):
        ar.adaround_regularizer(v, 0.0)


def test_beta_schedule_values():
    vals = [float(ar.beta_schedule(s, 100)) for s in (0, 10, 20, 40, 60, 100, 150)]
    np.testing.assert_allclose(vals, [20.0, 20.0, 20.0, 15.5, 11.0, 2.0, 2.0], atol=1e-5)
    np.testing.assert_allclose(
        float(ar.beta_schedule(5, 10, warm_start=0.0, beta_start=10.0, beta_end=4.0)), 7.0
    )
    act = [float(ar.regularizer_active(s, 100)) for s in (0, 19, 20, 99)]
    assert act == [0.0, 0.0, 1.0, 1.0]
    # Jit with a traced step: same values, compiled once.
    jitted = jax.jit(lambda s: ar.beta_schedule(s, 100))
    np.testing.assert_allclose(
        [float(jitted(s)) for s in (0, 40, 100)], [20.0, 15.5, 2.0], atol=1e-5
    )
    with pytest.raises(ValueError, match="warm_start"):
        ar.beta_schedule(0, 100, warm_start=1.0)
    with pytest.raises(ValueError, match="total"):
        ar.beta_schedule(0, 0)
