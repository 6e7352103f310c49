"""Integer fake quantization: numpy reference, ties, STE / LSQ gradients, codes, layouts, errors."""

import functools

import hypothesis
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bq_jax.quant import integer as qi
from bq_jax.quant.integer import (
    code_dtype,
    dequantize,
    from_groups,
    int_fake_quant,
    int_range,
    per_channel_shape,
    per_group_shape,
    quantize,
    to_groups,
)

_ROUND = {"nearest": np.round, "floor": np.floor, "ceil": np.ceil}  # np.round: half to even


def rbg_key(seed):
    """A cheap-to-compile key for tests that do not test the generator itself (threefry, the
    default, costs seconds of XLA compile per shape on CPU; the unbiasedness test uses it)."""
    return jax.random.key(seed, impl="rbg")


def ref_codes(x, scale, zero_point, qmin, qmax, rounding="nearest"):
    """numpy float32 reference: (unclipped code, clipped code)."""
    x = np.asarray(x, np.float32)
    s = np.asarray(scale, np.float32)
    z = np.asarray(zero_point, np.float32)
    code = _ROUND[rounding](x / s) + z
    return code, np.clip(code, qmin, qmax)


def ref_fake_quant(x, scale, zero_point, qmin, qmax, rounding="nearest"):
    _, c = ref_codes(x, scale, zero_point, qmin, qmax, rounding)
    return (c - np.asarray(zero_point, np.float32)) * np.asarray(scale, np.float32)


def assert_bitwise(a, b):
    a, b = np.asarray(a), np.asarray(b)
    assert a.dtype == b.dtype and a.shape == b.shape, (a.dtype, b.dtype, a.shape, b.shape)
    np.testing.assert_array_equal(a.view(np.uint8), b.view(np.uint8))


def fq(x, s, z, qmin, qmax, *, jit=False, **kw):
    f = functools.partial(int_fake_quant, qmin=qmin, qmax=qmax, **kw)
    return (jax.jit(f) if jit else f)(x, s, z)


def rand(shape, seed=0, scale=3.0):
    return (np.random.default_rng(seed).standard_normal(shape) * scale).astype(np.float32)


# ----------------------------------------------------------------------------- ranges, dtypes


@pytest.mark.parametrize("bits", range(2, 17))
def test_int_range_formula(bits):
    h = 2 ** (bits - 1)
    assert int_range(bits) == (-h, h - 1)
    assert int_range(bits, narrow=True) == (-(h - 1), h - 1)
    assert int_range(bits, symmetric=False) == (0, 2**bits - 1)
    assert int_range(bits, symmetric=False, narrow=True) == (1, 2**bits - 1)


def test_code_dtype_is_smallest():
    assert code_dtype(*int_range(8)) == jnp.int8
    assert code_dtype(*int_range(8, symmetric=False)) == jnp.uint8
    assert code_dtype(*int_range(9)) == jnp.int16
    assert code_dtype(*int_range(9, symmetric=False)) == jnp.uint16
    assert code_dtype(*int_range(16)) == jnp.int16
    assert code_dtype(*int_range(16, symmetric=False)) == jnp.uint16
    assert code_dtype(-1, 65535) == jnp.int32
    assert code_dtype(0, 2**24) == jnp.int32
    assert code_dtype(-129, 0) == jnp.int16


# ----------------------------------------------------------------------------- numpy reference


@pytest.mark.parametrize("rounding", ["nearest", "floor", "ceil"])
@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("jit", [False, True])
def test_matches_numpy_reference_bitwise(rounding, symmetric, jit):
    # Arbitrary (non power-of-two) scale: the division is IEEE (correctly rounded) like numpy's,
    # so the result is bit-identical, ties included.
    x = rand((64, 33), seed=1)
    qmin, qmax = int_range(4, symmetric=symmetric)
    z = 0 if symmetric else 6
    s = np.float32(0.3712)
    got = fq(x, s, z, qmin, qmax, rounding=rounding, jit=jit)
    assert_bitwise(got, ref_fake_quant(x, s, z, qmin, qmax, rounding))


def test_division_is_not_a_reciprocal_multiplication():
    # x * (1/s) differs from x / s for many inputs; the quantizer must divide (DESIGN.md).
    x = rand((200_000,), seed=2, scale=50.0)
    s = np.float32(1.0 / 3.0)
    v = x / s
    assert np.any(v != x * (np.float32(1) / s))  # the test data can tell the two apart
    # Place inputs where reciprocal multiplication would round the other way at a tie.
    ties = ((np.arange(-60, 60) + 0.5) * s).astype(np.float32)
    xs = np.concatenate([x, ties])
    for jit in (False, True):
        got = fq(xs, s, 0, -128, 127, jit=jit)
        assert_bitwise(got, ref_fake_quant(xs, s, 0, -128, 127))
    # also when vmap broadcasts an unbatched scale
    got = jax.vmap(lambda r: int_fake_quant(r, s, 0, qmin=-128, qmax=127))(xs.reshape(-1, 40))
    assert_bitwise(np.asarray(got).ravel(), ref_fake_quant(xs, s, 0, -128, 127))


@pytest.mark.parametrize("jit", [False, True])
def test_exact_ties_half_to_even(jit):
    s = np.float32(2.0**-3)  # power of two: x / s is exact, so v = k + 1/2 exactly
    k = np.arange(-20, 20)
    x = ((k + 0.5) * s).astype(np.float32)
    codes = np.asarray(quantize(x, s, 0, qmin=-128, qmax=127))
    np.testing.assert_array_equal(codes % 2, 0)  # ties go to the even neighbour
    np.testing.assert_array_equal(codes, np.round(k + 0.5))
    y = fq(x, s, 0, -128, 127, jit=jit)
    assert_bitwise(y, ref_fake_quant(x, s, 0, -128, 127))
    np.testing.assert_array_equal(np.asarray(y), np.round(k + 0.5) * s)
    assert_bitwise(fq(x, s, 0, -128, 127, rounding="floor", jit=jit), (k * s).astype(np.float32))
    assert_bitwise(
        fq(x, s, 0, -128, 127, rounding="ceil", jit=jit), ((k + 1) * s).astype(np.float32)
    )
    # golden values
    y = fq(np.float32([0.5, 1.5, 2.5, -0.5, -1.5, -2.5]), 1.0, 0, -8, 7, jit=jit)
    np.testing.assert_array_equal(np.asarray(y), [0.0, 2.0, 2.0, -0.0, -2.0, -2.0])


def test_clipping_and_infinities():
    qmin, qmax = int_range(3)  # [-4, 3]
    x = np.float32([-100.0, -4.6, -4.5, -4.4, 3.4, 3.5, 3.6, 100.0, np.inf, -np.inf])
    y = np.asarray(int_fake_quant(x, 1.0, 0, qmin=qmin, qmax=qmax))
    np.testing.assert_array_equal(y, [-4, -4, -4, -4, 3, 3, 3, 3, 3, -4])
    assert np.isnan(np.asarray(int_fake_quant(np.float32([np.nan]), 1.0, 0, qmin=-4, qmax=3)))[0]


@pytest.mark.parametrize("axis", [0, -1])
@pytest.mark.parametrize("jit", [False, True])
def test_per_channel(axis, jit):
    x = rand((12, 7), seed=3)
    c = x.shape[axis]
    shape = per_channel_shape(x.shape, axis)
    rng = np.random.default_rng(4)
    s = rng.uniform(0.05, 0.5, c).astype(np.float32).reshape(shape)
    qmin, qmax = int_range(5, symmetric=False)
    z = rng.integers(qmin, qmax + 1, c).astype(np.int32).reshape(shape)
    assert_bitwise(fq(x, s, z, qmin, qmax, jit=jit), ref_fake_quant(x, s, z, qmin, qmax))
    # each channel on its own equals per-tensor quantization with that channel's parameters
    for i in range(c):
        xi = np.take(x, [i], axis=axis)
        yi = np.take(np.asarray(fq(x, s, z, qmin, qmax, jit=jit)), [i], axis=axis)
        assert_bitwise(yi, np.asarray(fq(xi, s.ravel()[i], z.ravel()[i], qmin, qmax)))


def test_layout_helpers():
    assert per_channel_shape((3, 3, 16, 32), -1) == (1, 1, 1, 32)
    assert per_channel_shape((8, 4), 0) == (8, 1)
    assert per_group_shape((64, 10), axis=-1, group_size=16) == (4, 1, 10)
    assert per_group_shape((3, 3, 4, 8), axis=-1, group_size=12) == (3, 1, 8)
    x = jnp.asarray(rand((3, 4, 6), seed=5))
    for axis in (0, 1, 2, -1):
        m = x.size // x.shape[axis]
        g = to_groups(x, axis=axis, group_size=m // 2)
        assert g.shape == (2, m // 2, x.shape[axis])
        assert_bitwise(from_groups(g, x.shape, axis=axis), x)
    # Dense kernel (in, out), channel last: groups of consecutive input rows per output column
    w = jnp.arange(24.0).reshape(8, 3)
    np.testing.assert_array_equal(to_groups(w, axis=-1, group_size=4)[1, :, 2], [14, 17, 20, 23])


@pytest.mark.parametrize("jit", [False, True])
def test_per_group_matches_loop(jit):
    rng = np.random.default_rng(6)
    w = rand((3, 3, 4, 8), seed=7)  # HWIO conv kernel, output channel last
    g = 12  # M = 36 values per channel -> 3 groups
    qmin, qmax = int_range(4)
    wg = to_groups(w, axis=-1, group_size=g)
    s = rng.uniform(0.05, 0.4, per_group_shape(w.shape, axis=-1, group_size=g)).astype(np.float32)
    y = from_groups(fq(wg, s, 0, qmin, qmax, jit=jit), w.shape, axis=-1)
    flat = w.reshape(-1, 8)  # (M, C): channel last, other axes flattened in C order
    ref = np.empty_like(flat)
    for gi in range(3):
        for c in range(8):
            rows = slice(gi * g, (gi + 1) * g)
            ref[rows, c] = ref_fake_quant(flat[rows, c], s[gi, 0, c], 0, qmin, qmax)
    assert_bitwise(y, ref.reshape(w.shape))


@pytest.mark.parametrize("symmetric", [True, False])
def test_all_bit_widths(symmetric):
    x = rand((257,), seed=8)
    for bits in range(2, 17):
        qmin, qmax = int_range(bits, symmetric=symmetric)
        if symmetric:
            s, z = np.float32(np.abs(x).max() / qmax), 0
        else:
            lo, hi = min(x.min(), 0), max(x.max(), 0)
            s = np.float32((hi - lo) / (qmax - qmin))
            z = int(np.clip(np.round(qmin - lo / s), qmin, qmax))
        assert_bitwise(
            int_fake_quant(x, s, z, qmin=qmin, qmax=qmax), ref_fake_quant(x, s, z, qmin, qmax)
        )
        codes = quantize(x, s, z, qmin=qmin, qmax=qmax)
        assert codes.dtype == code_dtype(qmin, qmax)
        _, c = ref_codes(x, s, z, qmin, qmax)
        np.testing.assert_array_equal(np.asarray(codes, np.int64), c.astype(np.int64))
        assert int(codes.min()) >= qmin and int(codes.max()) <= qmax


def test_narrow_range():
    qmin, qmax = int_range(4, narrow=True)  # [-7, 7]
    x = np.float32([-1.0, -0.95, 1.0, -2.0])
    s = np.float32(1.0 / 7.0)
    codes = np.asarray(quantize(x, s, 0, qmin=qmin, qmax=qmax))
    np.testing.assert_array_equal(codes, [-7, -7, 7, -7])  # -8 is never produced
    y = np.asarray(int_fake_quant(x, s, 0, qmin=qmin, qmax=qmax))
    np.testing.assert_array_equal(y[[0, 2]], [-y[2], y[2]])  # grid symmetric about 0


# ----------------------------------------------------------------------------- codes


@pytest.mark.parametrize("jit", [False, True])
def test_quantize_dequantize_equals_fake_quant_exactly(jit):
    x = rand((40, 9), seed=9)
    key = rbg_key(3)
    cases = [
        (np.float32(0.0731), 0, *int_range(8)),
        (np.float32(0.41), 5, *int_range(4, symmetric=False)),
        (
            np.random.default_rng(1).uniform(0.01, 0.2, (1, 9)).astype(np.float32),
            np.arange(9, dtype=np.int32).reshape(1, 9) * 20,
            *int_range(8, symmetric=False),
        ),
        (np.float32(0.001), 0, *int_range(16)),
    ]
    for s, z, qmin, qmax in cases:

        def all_modes(x, s, z, qmin=qmin, qmax=qmax):
            out = []
            for rounding in qi.ROUNDING_MODES:
                kw = dict(qmin=qmin, qmax=qmax, rounding=rounding, key=key)
                codes = quantize(x, s, z, **kw)
                y_codes = dequantize(codes, s, z, dtype=x.dtype)
                out.append((codes, y_codes, int_fake_quant(x, s, z, **kw)))
            return out

        for codes, y_codes, y in (jax.jit(all_modes) if jit else all_modes)(x, s, z):
            assert codes.dtype == code_dtype(qmin, qmax)
            assert_bitwise(y_codes, y)


def test_dequantize_golden_and_dtype():
    y = dequantize(jnp.array([0, 128, 255], jnp.uint8), np.float32(0.5), 128)
    np.testing.assert_array_equal(np.asarray(y), [-64.0, 0.0, 63.5])
    assert y.dtype == jnp.float32
    assert dequantize(jnp.array([1], jnp.int8), 1.0, 0, dtype=jnp.bfloat16).dtype == jnp.bfloat16


def test_input_dtype_is_kept():
    for dt in (jnp.bfloat16, jnp.float16):
        x = jnp.asarray(rand((16,), seed=10), dt)
        y = int_fake_quant(x, 0.25, 0, qmin=-128, qmax=127)
        assert y.dtype == dt
        ref = ref_fake_quant(np.asarray(x, np.float32), 0.25, 0, -128, 127)
        np.testing.assert_array_equal(np.asarray(y, np.float32), ref.astype(dt).astype(np.float32))


# ----------------------------------------------------------------------------- gradients


def _edge_inputs(s, qmin, qmax, z=0):
    """Values around and exactly at the clip edges (power-of-two s: exact x / s)."""
    v = np.concatenate(
        [
            np.arange(qmin - z - 3, qmax - z + 3, 0.25),
            [qmin - z - 0.5, qmax - z + 0.5, qmin - z - 0.51, qmax - z + 0.49],
        ]
    )
    return (v * s).astype(np.float32)


@pytest.mark.parametrize("jit", [False, True])
@pytest.mark.parametrize("rounding", ["nearest", "floor", "ceil"])
def test_ste_gradient_is_the_clip_mask(jit, rounding):
    s = np.float32(0.25)
    for (qmin, qmax), z in ((int_range(3), 0), (int_range(3, symmetric=False), 3)):
        x = _edge_inputs(s, qmin, qmax, z)
        f = lambda x, qmin=qmin, qmax=qmax, z=z: jnp.sum(
            int_fake_quant(x, s, z, qmin=qmin, qmax=qmax, rounding=rounding)
        )
        g = (jax.jit(jax.grad(f)) if jit else jax.grad(f))(x)
        code, _ = ref_codes(x, s, z, qmin, qmax, rounding)
        mask = ((code >= qmin) & (code <= qmax)).astype(np.float32)
        assert_bitwise(g, mask)
        assert 0 < mask.sum() < mask.size
    # ties at the edges: qmax + 1/2 rounds to the even code qmax + 1 (outside, qmax = 3 odd),
    # qmin - 1/2 rounds to the even code qmin (inside)
    g = jax.grad(lambda x: jnp.sum(int_fake_quant(x, 1.0, 0, qmin=-4, qmax=3)))(
        np.float32([3.5, -4.5, 2.5, -5.5])
    )
    np.testing.assert_array_equal(np.asarray(g), [0.0, 1.0, 1.0, 0.0])


def test_ste_gradient_per_channel_and_vjp_weights():
    x = rand((10, 4), seed=11)
    s = np.float32([[0.125, 0.25, 0.5, 1.0]])
    qmin, qmax = int_range(3)
    w = rand((10, 4), seed=12)  # cotangent: the STE passes it through where inside
    _, vjp = jax.vjp(lambda x: int_fake_quant(x, s, 0, qmin=qmin, qmax=qmax), x)
    code, _ = ref_codes(x, s, 0, qmin, qmax)
    inside = (code >= qmin) & (code <= qmax)
    assert_bitwise(vjp(w)[0], np.where(inside, w, np.float32(0)))
    # forward mode agrees
    _, t = jax.jvp(lambda x: int_fake_quant(x, s, 0, qmin=qmin, qmax=qmax), (x,), (w,))
    assert_bitwise(t, np.where(inside, w, np.float32(0)))


def _lsq_factor(x, s, z, qmin, qmax):
    """LSQ dy/ds per element (float64 of the float32 pieces): r - v inside, c - zp clipped."""
    v = np.asarray(x, np.float32) / np.asarray(s, np.float32)
    code, c = ref_codes(x, s, z, qmin, qmax)
    inside = (code >= qmin) & (code <= qmax)
    return np.where(inside, np.round(v).astype(np.float64) - v, c - np.asarray(z, np.float64))


@pytest.mark.parametrize("jit", [False, True])
def test_lsq_scale_gradient(jit):
    qmin, qmax = int_range(4, symmetric=False)
    z = 5
    x = rand((50, 3), seed=13)
    s = np.float32(0.37)

    def loss(s, x):
        return jnp.sum(int_fake_quant(x, s, z, qmin=qmin, qmax=qmax, scale_grad="lsq"))

    grad = jax.jit(jax.grad(loss, argnums=(0, 1))) if jit else jax.grad(loss, argnums=(0, 1))
    gs, gx = grad(s, x)
    factor = _lsq_factor(x, s, z, qmin, qmax)
    np.testing.assert_allclose(float(gs), factor.sum(), rtol=1e-5, atol=1e-6)
    code, _ = ref_codes(x, s, z, qmin, qmax)
    assert_bitwise(gx, ((code >= qmin) & (code <= qmax)).astype(np.float32))
    # both clipped sides occur, so the qmin - zp and qmax - zp branches are exercised
    assert (code < qmin).any() and (code > qmax).any()

    # per-channel scale: one gradient per channel, the grad_scale g multiplies it
    sc = np.float32([[0.2, 0.37, 0.9]])
    g = 0.125
    gsc = jax.grad(
        lambda s: jnp.sum(
            int_fake_quant(x, s, z, qmin=qmin, qmax=qmax, scale_grad="lsq", grad_scale=g)
        )
    )(sc)
    ref = g * _lsq_factor(x, sc, z, qmin, qmax).sum(axis=0, keepdims=True)
    assert gsc.shape == sc.shape
    np.testing.assert_allclose(np.asarray(gsc), ref, rtol=1e-5, atol=1e-6)


def test_lsq_golden_and_no_scale_gradient_by_default():
    x = jnp.array([-3.0, -2.25, -2.0, 0.3, 0.74, 0.76, 1.25])  # x / 0.5 = -6 .. 2.5
    f = lambda s, sg: jnp.sum(int_fake_quant(x, s, 0, qmin=-4, qmax=2, scale_grad=sg))
    # -6 clipped low: qmin = -4; inside: 0.5, 0, 0.4, -0.48, 0.48, -0.5 -> sum -3.6
    np.testing.assert_allclose(float(jax.grad(f)(0.5, "lsq")), -3.6, rtol=1e-6)
    assert float(jax.grad(f)(0.5, "none")) == 0.0


# ----------------------------------------------------------------------------- transforms


def test_jit_equals_eager_and_no_retrace():
    traces = []

    @functools.partial(jax.jit, static_argnames=("qmin", "qmax"))
    def f(x, s, z, *, qmin, qmax):
        traces.append(1)
        return int_fake_quant(x, s, z, qmin=qmin, qmax=qmax)

    x = rand((32,), seed=14)
    for s in (0.1, 0.2, 0.3):
        s = np.float32(s)
        assert_bitwise(f(x, s, 0, qmin=-8, qmax=7), int_fake_quant(x, s, 0, qmin=-8, qmax=7))
    assert len(traces) == 1


def test_vmap_equals_loop():
    x = rand((6, 20), seed=15)
    s = np.random.default_rng(16).uniform(0.1, 0.5, (6,)).astype(np.float32)
    z = np.arange(6, dtype=np.int32)
    f = lambda x, s, z: int_fake_quant(x, s, z, qmin=0, qmax=15)
    got = jax.vmap(f)(x, s, z)
    for i in range(6):
        assert_bitwise(got[i], f(x[i], s[i], z[i]))
    # stochastic rounding with one key per row
    keys = jax.random.split(jax.random.key(0), 6)  # threefry: rbg is not vmap-invariant
    g = lambda x, k: int_fake_quant(x, 0.3, 0, qmin=-8, qmax=7, rounding="stochastic", key=k)
    got = jax.vmap(g)(x, keys)
    for i in range(6):
        assert_bitwise(got[i], g(x[i], keys[i]))
    # gradients under vmap are the per-row masks
    gx = jax.vmap(jax.grad(lambda x, s, z: jnp.sum(f(x, s, z))))(x, s, z)
    for i in range(6):
        code, _ = ref_codes(x[i], s[i], z[i], 0, 15)
        assert_bitwise(gx[i], ((code >= 0) & (code <= 15)).astype(np.float32))


# ----------------------------------------------------------------------------- stochastic


def test_stochastic_rounding_is_unbiased_and_local():
    n = 200_000
    s = np.float32(0.5)
    # x / s = 0.3, -1.7, 2.5, 3.0 (a grid point), 6.8 (between qmax - 1 and qmax = 7)
    vals = np.float32([0.15, -0.85, 1.25, 1.5, 3.4])
    x = np.broadcast_to(vals, (n, vals.size))
    y = np.asarray(
        int_fake_quant(x, s, 0, qmin=-8, qmax=7, rounding="stochastic", key=jax.random.key(1)),
        np.float64,
    )
    v = vals.astype(np.float64) / 0.5
    lo, hi = np.floor(v) * 0.5, np.ceil(v) * 0.5
    assert np.all((y == lo) | (y == hi))  # only the two neighbouring grid points
    p = v - np.floor(v)  # probability of rounding up
    se = 0.5 * np.sqrt(p * (1 - p) / n)  # standard error of the mean of n draws
    # Bound: |mean - x| <= 5 standard errors (false-alarm rate ~6e-7 per value) plus the
    # 2^-23 resolution of float32 uniforms.
    assert np.all(np.abs(y.mean(axis=0) - vals) <= 5 * se + 2.0**-23)
    assert np.all(y[:, 3] == 1.5)  # grid points never move
    # deterministic per key, different across keys
    kw = dict(qmin=-8, qmax=7, rounding="stochastic")
    a = int_fake_quant(x, s, 0, key=jax.random.key(1), **kw)
    assert_bitwise(a, y.astype(np.float32))
    b = int_fake_quant(x, s, 0, key=jax.random.key(2), **kw)
    assert np.any(np.asarray(a) != np.asarray(b))


# ----------------------------------------------------------------------------- properties


@pytest.mark.parametrize("rounding", ["nearest", "floor", "ceil", "stochastic"])
def test_idempotent(rounding):
    # "nearest" for any scale; the directed / random modes need grid values that divide back
    # exactly (power-of-two scales), see the int_fake_quant docstring.
    x = rand((300,), seed=17)
    key = rbg_key(4)
    scales = (0.0713, 0.19) if rounding == "nearest" else (2.0**-4, 0.25)
    for s, z, (qmin, qmax) in (
        (scales[0], 0, int_range(6)),
        (scales[1], 9, int_range(5, symmetric=False)),
    ):
        s = np.float32(s)
        kw = dict(qmin=qmin, qmax=qmax, rounding=rounding, key=key)
        y = int_fake_quant(x, s, z, **kw)
        assert_bitwise(int_fake_quant(y, s, z, **kw), y)


@hypothesis.settings(max_examples=60, deadline=None, derandomize=True)
@hypothesis.given(
    bits=st.integers(2, 16),
    symmetric=st.booleans(),
    scale=st.floats(float(np.float32(1e-6)), float(np.float32(1e6)), width=32),
    zfrac=st.floats(0.0, 1.0),
    u=st.lists(st.floats(-1.0, 1.0, width=32), min_size=16, max_size=16),  # one shape
)
def test_error_at_most_half_a_step_inside_the_range(bits, symmetric, scale, zfrac, u):
    qmin, qmax = int_range(bits, symmetric=symmetric)
    z = 0 if symmetric else int(round(qmin + zfrac * (qmax - qmin)))
    # x spans the clip range [(qmin - z - 1/2) s, (qmax - z + 1/2) s]
    mid, half = 0.5 * (qmin + qmax) - z, 0.5 * (qmax - qmin) + 0.5
    x = ((mid + np.asarray(u, np.float64) * half) * scale).astype(np.float32)
    y = np.asarray(int_fake_quant(x, np.float32(scale), z, qmin=qmin, qmax=qmax), np.float64)
    code, _ = ref_codes(x, scale, z, qmin, qmax)
    inside = (code >= qmin) & (code <= qmax)
    x64, s64 = x.astype(np.float64), float(np.float32(scale))
    # v = fl(x/s) = (x/s)(1+d1), y = fl(r s) = r s (1+d2), |d1|, |d2| <= u = 2^-24, |r - v| <= 1/2
    # => |x - y| <= |x d1| + s/2 + |r s d2| <= s/2 + u (|x| + |y|) (1 + 2u)
    slack = 2.0**-24 * (np.abs(x64) + np.abs(y)) * (1 + 2.0**-23)
    assert np.all(np.abs(x64 - y)[inside] <= (s64 / 2 + slack)[inside])


def test_zeros_and_constants_stay_finite_and_exact():
    tiny = np.float32(np.finfo(np.float32).tiny)  # scale floor of an all-zero range
    for z, (qmin, qmax) in ((0, int_range(8)), (0, int_range(8, symmetric=False))):
        x = np.zeros((5, 4), np.float32)
        y = int_fake_quant(x, tiny, z, qmin=qmin, qmax=qmax)
        assert_bitwise(y, x)
        g = jax.grad(
            lambda s, x=x, z=z, qmin=qmin, qmax=qmax: jnp.sum(
                int_fake_quant(x, s, z, qmin=qmin, qmax=qmax, scale_grad="lsq")
            )
        )(tiny)
        assert np.isfinite(float(g))
    # a constant tensor v with scale v / 2^k (largest 2^k <= qmax) is reproduced exactly
    for v in (np.float32(0.3), np.float32(-7.77), np.float32(1e-20)):
        x = np.full((6,), v, np.float32)
        s = np.float32(abs(v) / 64)
        assert_bitwise(int_fake_quant(x, s, 0, qmin=-128, qmax=127), x)


# ----------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: int_range(1), r"bits must be an int in \[2, 16\], got 1"),
        (lambda: int_range(17), r"bits must be an int in \[2, 16\], got 17"),
        (lambda: int_range(8.0), r"bits must be an int in \[2, 16\], got 8.0"),
        (
            lambda: int_fake_quant(jnp.ones(3), 0.0, 0, qmin=-8, qmax=7),
            r"scale must be finite and > 0",
        ),
        (
            lambda: int_fake_quant(jnp.ones(3), -1.0, 0, qmin=-8, qmax=7),
            r"scale must be finite and > 0.*-1.0",
        ),
        (
            lambda: int_fake_quant(jnp.ones(3), np.nan, 0, qmin=-8, qmax=7),
            r"scale must be finite and > 0",
        ),
        (
            lambda: int_fake_quant(jnp.ones(3), np.inf, 0, qmin=-8, qmax=7),
            r"scale must be finite and > 0",
        ),
        (
            lambda: int_fake_quant(jnp.ones(3), jnp.array([1.0, 0.0, 1.0]), 0, qmin=-8, qmax=7),
            r"scale must be finite and > 0.*0.0",
        ),
        (
            lambda: int_fake_quant(jnp.ones(3), 1.0, 16, qmin=0, qmax=15),
            r"zero_point must be an integer in \[qmin, qmax\] = \[0, 15\].*16",
        ),
        (
            lambda: int_fake_quant(jnp.ones(3), 1.0, -1, qmin=0, qmax=15),
            r"zero_point must be an integer in \[qmin, qmax\]",
        ),
        (
            lambda: int_fake_quant(jnp.ones(3), 1.0, 2.5, qmin=0, qmax=15),
            r"zero_point must be an integer.*2.5",
        ),
        (
            lambda: int_fake_quant(jnp.ones(3), 1.0, 0, qmin=-8, qmax=7, rounding="half_up"),
            r"rounding must be one of \('nearest', 'stochastic', 'floor', 'ceil'\), got 'half_up'",
        ),
        (
            lambda: int_fake_quant(jnp.ones(3), 1.0, 0, qmin=-8, qmax=7, rounding="stochastic"),
            r"rounding='stochastic' needs a PRNG key",
        ),
        (
            lambda: quantize(jnp.ones(3), 1.0, 0, qmin=-8, qmax=7, rounding="stochastic"),
            r"needs a PRNG key",
        ),
        (
            lambda: int_fake_quant(jnp.ones(3), 1.0, 0, qmin=7, qmax=7),
            r"need qmin < qmax, got qmin=7, qmax=7",
        ),
        (lambda: int_fake_quant(jnp.ones(3), 1.0, 0, qmin=8, qmax=-8), r"need qmin < qmax"),
        (
            lambda: int_fake_quant(jnp.ones(3), 1.0, 0, qmin=0, qmax=2**24 + 1),
            r"must lie in \[-2\^24, 2\^24\]",
        ),
        (
            lambda: int_fake_quant(jnp.ones(3), 1.0, 0, qmin=-8, qmax=7, scale_grad="ste"),
            r"scale_grad must be one of \('none', 'lsq'\), got 'ste'",
        ),
        (
            lambda: int_fake_quant(jnp.ones((4, 3)), jnp.ones(3), 0, qmin=-8, qmax=7),
            r"scale of shape \(3,\) must be a scalar or have the rank of x.*per_channel_shape",
        ),
        (
            lambda: int_fake_quant(jnp.ones((4, 3)), jnp.ones((4, 1, 1)), 0, qmin=-8, qmax=7),
            r"scale of shape \(4, 1, 1\)",
        ),
        (
            lambda: int_fake_quant(jnp.ones((4, 3)), jnp.ones((1, 2)), 0, qmin=-8, qmax=7),
            r"broadcast against x.shape=\(4, 3\)",
        ),
        (
            lambda: int_fake_quant(
                jnp.ones((4, 3)), 1.0, jnp.zeros((4, 2), jnp.int32), qmin=-8, qmax=7
            ),
            r"zero_point of shape \(4, 2\)",
        ),
        (
            lambda: per_channel_shape((4, 3), 2),
            r"axis=2 is out of range for per-channel quantization of a tensor of rank 2 "
            r"\(accepted: an int with -2 <= axis < 2",
        ),
        (lambda: per_channel_shape((4, 3), -3), r"axis=-3 is out of range"),
        (
            lambda: to_groups(jnp.ones((10, 3)), axis=-1, group_size=4),
            r"group_size=4 must be a positive divisor of the 10 values per channel",
        ),
        (
            lambda: to_groups(jnp.ones((10, 3)), axis=-1, group_size=0),
            r"group_size=0 must be a positive divisor",
        ),
        (
            lambda: to_groups(jnp.ones((10, 3)), axis=2, group_size=5),
            r"axis=2 is out of range for per-group quantization",
        ),
        (
            lambda: per_group_shape((10, 3), axis=0, group_size=2),
            r"group_size=2 must be a positive divisor of the 3 values",
        ),
        (
            lambda: from_groups(jnp.ones((2, 5, 3)), (10, 4), axis=-1),
            r"does not hold a tensor of shape \(10, 4\)",
        ),
    ],
)
def test_bad_input_raises_value_error(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_bad_types_raise_type_error():
    with pytest.raises(TypeError, match=r"x must be a floating-point array, got dtype int32"):
        int_fake_quant(jnp.ones(3, jnp.int32), 1.0, 0, qmin=-8, qmax=7)
    with pytest.raises(TypeError, match=r"qmin must be a Python int, got 0.5"):
        int_fake_quant(jnp.ones(3), 1.0, 0, qmin=0.5, qmax=7)
    with pytest.raises(TypeError, match=r"codes must be an integer array"):
        dequantize(jnp.ones(3), 1.0, 0)
    with pytest.raises(TypeError, match=r"symmetric must be a bool"):
        int_range(8, symmetric="yes")


def test_traced_invalid_parameters_give_nan_not_a_plausible_tensor():
    # Under jit the values cannot be checked eagerly (they are tracers): the output is NaN.
    f = jax.jit(lambda s, z: int_fake_quant(jnp.arange(4.0), s, z, qmin=0, qmax=15))
    assert np.all(np.isnan(np.asarray(f(np.float32(0.0), 0))))
    assert np.all(np.isnan(np.asarray(f(np.float32(-1.0), 0))))
    assert np.all(np.isnan(np.asarray(f(np.float32(1.0), 16))))
    assert np.all(np.isnan(np.asarray(f(np.float32(1.0), 2.5))))
    np.testing.assert_array_equal(np.asarray(f(np.float32(1.0), 0)), [0, 1, 2, 3])
    # valid traced parameters: bit-identical to eager
    x = rand((50,), seed=18)
    g = jax.jit(lambda x, s: int_fake_quant(x, s, 3, qmin=0, qmax=15))
    assert_bitwise(g(x, np.float32(0.3)), int_fake_quant(x, np.float32(0.3), 3, qmin=0, qmax=15))


def test_public_names():
    for name in qi.__all__:
        assert hasattr(qi, name)
    import bq_jax.quant as q

    assert q.int_fake_quant is int_fake_quant and q.quantize is quantize
