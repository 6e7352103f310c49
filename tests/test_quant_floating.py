"""Floating-point fake quantization: bit-exact against ml_dtypes over every value, ties, clip."""

import functools

import hypothesis
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

from bq_jax.quant.floating import (
    FLOAT_FORMATS,
    float_fake_quant,
    float_format_max,
    float_format_values,
    float_round,
)

# name -> (ml_dtypes dtype, bit width)
NAMED = {
    "e4m3": (ml_dtypes.float8_e4m3fn, 8),
    "e5m2": (ml_dtypes.float8_e5m2, 8),
    "e2m1": (ml_dtypes.float4_e2m1fn, 4),
}


def all_values(dtype, bits):
    """Every finite value of an ml_dtypes dtype, from all 2^bits bit patterns (float64)."""
    v = np.arange(2**bits, dtype=np.uint8).view(dtype).astype(np.float64)
    return v[np.isfinite(v)]


def probe_inputs(dtype, bits, vmax=None):
    """Every finite value, the midpoints between neighbours (exact ties), their float32
    neighbours on both sides, and (without vmax) out-of-range values incl. the tie above max."""
    vals = all_values(dtype, bits)
    fmax = float(ml_dtypes.finfo(dtype).max)
    out_of_range = vmax is None
    vmax = fmax if vmax is None else vmax
    pos = np.unique(np.abs(vals))
    pos = pos[pos <= vmax]
    mids = (pos[:-1] + pos[1:]) / 2  # exact in float32 (one more mantissa bit)
    xs = [pos, mids]
    mids32 = mids.astype(np.float32)
    xs += [np.nextafter(mids32, np.float32(np.inf)), np.nextafter(mids32, np.float32(0))]
    if out_of_range:
        step = pos[-1] - pos[-2]
        xs.append(np.array([fmax + step / 2, fmax + step, fmax * 1.0001, 2 * fmax, 1e30, np.inf]))
    x = np.concatenate([np.asarray(a, np.float64) for a in xs])
    return np.concatenate([x, -x]).astype(np.float32)


def ref_float(x, dtype, fmax, scale=1.0):
    """ml_dtypes reference: cast(clip(x / s, -max, max)) * s, all in float32."""
    s = np.asarray(scale, np.float32)
    v = np.clip(np.asarray(x, np.float32) / s, -fmax, fmax).astype(np.float32)
    return v.astype(dtype).astype(np.float32) * s


def assert_bitwise(a, b):
    a, b = np.asarray(a), np.asarray(b)
    assert a.dtype == b.dtype and a.shape == b.shape, (a.dtype, b.dtype, a.shape, b.shape)
    np.testing.assert_array_equal(a.view(np.uint8), b.view(np.uint8))


def ffq(x, fmt, scale=1.0, *, jit=False):
    f = functools.partial(float_fake_quant, fmt=fmt)
    return (jax.jit(f) if jit else f)(x, scale=scale)


# ----------------------------------------------------------------------------- named formats


def test_format_max_and_values():
    assert float_format_max("e4m3") == 448.0
    assert float_format_max("e5m2") == 57344.0
    assert float_format_max("e2m1") == 6.0
    assert float_format_max((4, 3)) == 480.0
    assert float_format_max((5, 2)) == 114688.0
    assert float_format_max((2, 1)) == 6.0
    assert float_format_max((3, 2)) == 28.0
    assert float_format_max((2, 3)) == 7.5
    assert FLOAT_FORMATS == {"e4m3": (4, 3), "e5m2": (5, 2), "e2m1": (2, 1)}
    for name, (dt, bits) in NAMED.items():
        v = all_values(dt, bits)
        np.testing.assert_array_equal(float_format_values(name), np.unique(np.abs(v)))
        assert float(ml_dtypes.finfo(dt).max) == float_format_max(name)
    for fmt, dt, bits in (
        ((2, 1), ml_dtypes.float4_e2m1fn, 4),
        ((3, 2), ml_dtypes.float6_e3m2fn, 6),
        ((2, 3), ml_dtypes.float6_e2m3fn, 6),
    ):
        np.testing.assert_array_equal(
            float_format_values(fmt), np.unique(np.abs(all_values(dt, bits)))
        )
    # (4, 3) is the e4m3fn grid plus 480 (the code e4m3fn spends on NaN)
    np.testing.assert_array_equal(
        float_format_values((4, 3)), np.append(float_format_values("e4m3"), 480.0)
    )


@pytest.mark.parametrize("name", list(NAMED))
@pytest.mark.parametrize("jit", [False, True])
def test_named_formats_bit_exact_over_every_value(name, jit):
    dt, bits = NAMED[name]
    fmax = float_format_max(name)
    x = probe_inputs(dt, bits)
    assert_bitwise(ffq(x, name, jit=jit), ref_float(x, dt, fmax))
    # golden: ties go to the even code, the tie above max saturates
    golden = {
        "e4m3": ([0.3, 17.0, 19.0, 464.0, 1e9], [0.3125, 16.0, 20.0, 448.0, 448.0]),
        "e5m2": ([0.3, 7.5, 9.0, 61440.0, 1e9], [0.3125, 8.0, 8.0, 57344.0, 57344.0]),
        "e2m1": ([0.25, 0.75, 2.5, 5.0, 7.0], [0.0, 1.0, 2.0, 4.0, 6.0]),
    }[name]
    np.testing.assert_array_equal(np.asarray(ffq(np.float32(golden[0]), name, jit=jit)), golden[1])


@pytest.mark.parametrize("name", list(NAMED))
def test_named_formats_with_scale(name):
    dt, bits = NAMED[name]
    fmax = float_format_max(name)
    base = probe_inputs(dt, bits)
    for s in (np.float32(2.0**-6), np.float32(1024.0), np.float32(0.37), np.float32(3.1e-3)):
        x = (base.astype(np.float64) * s).astype(np.float32)
        assert_bitwise(ffq(x, name, s), ref_float(x, dt, fmax, s))
    # per-channel scales, broadcast along either axis
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((64, 5)) * 10.0 ** rng.uniform(-3, 3, (64, 5))).astype(np.float32)
    for shape in ((1, 5), (64, 1)):
        s = rng.uniform(0.01, 2.0, shape).astype(np.float32)
        for jit in (False, True):
            assert_bitwise(ffq(x, name, s, jit=jit), ref_float(x, dt, fmax, s))


@pytest.mark.parametrize("name", list(NAMED))
def test_named_formats_arithmetic_path_agrees(name):
    # float_round (the (exp, man) arithmetic) after the named clip gives ml_dtypes' bits too
    dt, bits = NAMED[name]
    e, m = FLOAT_FORMATS[name]
    fmax = float_format_max(name)
    x = probe_inputs(dt, bits)
    got = float_round(np.clip(x, -fmax, fmax), e, m)
    assert_bitwise(got, ref_float(x, dt, fmax))


# ----------------------------------------------------------------------------- (exp, man)


@pytest.mark.parametrize(
    ("fmt", "dtype", "bits", "vmax"),
    [
        ((2, 1), ml_dtypes.float4_e2m1fn, 4, None),  # identical format, clip included
        ((3, 2), ml_dtypes.float6_e3m2fn, 6, None),
        ((2, 3), ml_dtypes.float6_e2m3fn, 6, None),
        ((4, 3), ml_dtypes.float8_e4m3fn, 8, 448.0),  # same grid; e4m3fn max is lower
        ((4, 3), ml_dtypes.float8_e4m3, 8, 240.0),  # IEEE-style e4m3 (inf at the top)
        ((5, 2), ml_dtypes.float8_e5m2, 8, 57344.0),  # IEEE e5m2: top exponent is inf/NaN
        ((3, 4), ml_dtypes.float8_e3m4, 8, 15.5),
    ],
)
def test_exp_man_grid_matches_ml_dtypes(fmt, dtype, bits, vmax):
    x = probe_inputs(dtype, bits, vmax)
    ref = ref_float(x, dtype, float(ml_dtypes.finfo(dtype).max))
    assert_bitwise(ffq(x, fmt), ref)
    assert_bitwise(ffq(x, fmt, jit=True), ref)


def test_e5m10_grid_matches_float16():
    # every finite float16 value, midpoints and neighbours, within float16's max
    v = np.arange(2**16, dtype=np.uint16).view(np.float16).astype(np.float64)
    pos = np.unique(np.abs(v[np.isfinite(v)]))
    mids = ((pos[:-1] + pos[1:]) / 2).astype(np.float32)
    x = np.concatenate([pos.astype(np.float32), mids, np.nextafter(mids, np.float32(np.inf))])
    x = np.concatenate([x, np.nextafter(mids, np.float32(0)), -x])
    assert_bitwise(ffq(x, (5, 10)), x.astype(np.float16).astype(np.float32))


def test_exp_man_beyond_the_named_max():
    # the extra top binade step of the every-pattern-finite layout, and saturation
    x = np.float32([448.0, 460.0, 464.0, 470.0, 480.0, 1000.0, np.inf, -np.inf])
    np.testing.assert_array_equal(
        np.asarray(ffq(x, (4, 3))), [448, 448, 448, 480, 480, 480, 480, -480]
    )
    np.testing.assert_array_equal(np.asarray(ffq(x, "e4m3")), [448] * 7 + [-448])
    # 61440 is the tie between 57344 (odd code) and 65536 (even): e5m2 saturates, (5, 2) rounds up
    assert float(float_round(np.float32(61440.0), 5, 2)) == 65536.0
    assert float(ffq(np.float32(61440.0), (5, 2))) == 65536.0
    assert float(ffq(np.float32(61440.0), "e5m2")) == 57344.0
    assert float(ffq(np.float32(2e5), (5, 2))) == 114688.0


@hypothesis.settings(max_examples=40, deadline=None, derandomize=True)
@hypothesis.given(
    e=st.integers(1, 7),
    m=st.integers(0, 10),
    u=st.lists(st.floats(-1.0, 1.0, width=32), min_size=32, max_size=32),
    logmag=st.lists(st.floats(0.0, 1.0), min_size=32, max_size=32),
)
def test_exp_man_rounding_error_is_half_a_step(e, m, u, logmag):
    # Any (e, m): |v - q(v)| <= half the spacing of the binade of v (2^(E - m - 1),
    # E = max(floor(log2|v|), emin)); ties are not tested here (exact comparison in float64).
    bias = 2 ** (e - 1) - 1
    emin, fmax = 1 - bias, float_format_max((e, m))
    lo = 2.0 ** (emin - m - 2)  # below the smallest subnormal
    mag = np.exp(np.log(lo) + np.asarray(logmag) * (np.log(fmax) - np.log(lo)))
    v = (np.sign(np.asarray(u)) * mag).astype(np.float32)
    q = np.asarray(float_round(v, e, m), np.float64)
    v64 = v.astype(np.float64)
    ex = np.maximum(np.floor(np.log2(np.maximum(np.abs(v64), 2.0**-300))), emin)
    assert np.all(np.abs(q - v64) <= 2.0 ** (ex - m - 1))
    assert np.all(np.abs(q) <= fmax)
    if e + m <= 12:
        assert np.all(np.isin(np.abs(q), float_format_values((e, m))))


# ----------------------------------------------------------------------------- gradient


@pytest.mark.parametrize("fmt", ["e4m3", "e5m2", "e2m1", (3, 2)])
@pytest.mark.parametrize("jit", [False, True])
def test_ste_gradient_is_the_clip_mask(fmt, jit):
    s = np.float32(0.5)  # power of two: x / s exact, so the edge is hit exactly
    fmax = np.float32(float_format_max(fmt))
    edge = fmax * s
    x = np.float32(
        [0.0, 1.0, -1.0, edge, -edge, np.nextafter(edge, np.float32(np.inf)), -2 * edge, np.inf]
    )
    g = jax.grad(lambda x: jnp.sum(float_fake_quant(x, fmt, scale=s)))
    g = (jax.jit(g) if jit else g)(x)
    assert_bitwise(g, np.float32([1, 1, 1, 1, 1, 0, 0, 0]))  # max itself is inside
    # per-channel scale: the scale gets no gradient
    sc = np.float32([[0.5, 2.0]])
    xs = np.float32([[1.0, 1000.0], [1000.0, 1.0]])
    gx, gs = jax.grad(lambda x, s: jnp.sum(float_fake_quant(x, fmt, scale=s)), (0, 1))(xs, sc)
    inside = np.abs(xs / sc) <= fmax
    assert_bitwise(gx, inside.astype(np.float32))
    assert_bitwise(gs, np.zeros_like(sc))


# ----------------------------------------------------------------------------- properties


def test_vmap_equals_loop_and_no_retrace():
    rng = np.random.default_rng(1)
    x = (rng.standard_normal((5, 30)) * 100).astype(np.float32)
    s = rng.uniform(0.05, 2.0, (5,)).astype(np.float32)
    for fmt in ("e4m3", (3, 2)):
        f = lambda x, s, fmt=fmt: float_fake_quant(x, fmt, scale=s)
        got = jax.vmap(f)(x, s)
        for i in range(5):
            assert_bitwise(got[i], f(x[i], s[i]))
    traces = []

    @jax.jit
    def h(x, s):
        traces.append(1)
        return float_fake_quant(x, "e5m2", scale=s)

    for sv in (0.1, 0.2, 0.3):
        assert_bitwise(h(x, np.float32(sv)), float_fake_quant(x, "e5m2", scale=np.float32(sv)))
    assert len(traces) == 1


@pytest.mark.parametrize("fmt", ["e4m3", "e5m2", "e2m1", (5, 10)])
def test_idempotent(fmt):
    x = (np.random.default_rng(2).standard_normal(500) * 30).astype(np.float32)
    for s in (np.float32(1.0), np.float32(0.37)):
        y = ffq(x, fmt, s)
        assert_bitwise(ffq(y, fmt, s), y)


@pytest.mark.parametrize("fmt", ["e4m3", "e5m2", "e2m1", (4, 3)])
def test_nan_inf_zeros(fmt):
    fmax = float_format_max(fmt)
    y = np.asarray(ffq(np.float32([np.nan, np.inf, -np.inf, 0.0, -0.0]), fmt))
    assert np.isnan(y[0])  # NaN stays visible, also for e2m1 (no NaN encoding)
    np.testing.assert_array_equal(y[1:3], [fmax, -fmax])
    assert_bitwise(y[3:], np.float32([0.0, -0.0]))
    tiny = np.float32(np.finfo(np.float32).tiny)  # scale floor of an all-zero tensor
    z = np.zeros((4, 3), np.float32)
    assert_bitwise(ffq(z, fmt, tiny), z)
    # a constant v with scale v / 2^k (2^k <= max, a format value) is reproduced exactly
    v = np.float32(-3.3)
    p2 = 2.0 ** np.floor(np.log2(fmax))
    assert_bitwise(ffq(np.full(3, v), fmt, np.float32(abs(v) / p2)), np.full(3, v))


def test_input_dtype_is_kept():
    for dt in (jnp.bfloat16, jnp.float16):
        x = jnp.asarray(np.linspace(-500, 500, 41, dtype=np.float32), dt)
        y = float_fake_quant(x, "e4m3")
        assert y.dtype == dt
        ref = ref_float(np.asarray(x, np.float32), ml_dtypes.float8_e4m3fn, 448.0)
        np.testing.assert_array_equal(np.asarray(y, np.float32), ref.astype(dt).astype(np.float32))


# ----------------------------------------------------------------------------- errors

_FMT_MSG = r"fmt must be one of \('e4m3', 'e5m2', 'e2m1'\) or a tuple \(exp_bits, man_bits\)"


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: float_fake_quant(jnp.ones(3), "e3m3"), _FMT_MSG + r".*got 'e3m3'"),
        (lambda: float_fake_quant(jnp.ones(3), "E4M3"), _FMT_MSG),
        (lambda: float_fake_quant(jnp.ones(3), (0, 3)), r"1 <= exp_bits <= 7.*got \(0, 3\)"),
        (lambda: float_fake_quant(jnp.ones(3), (8, 7)), r"1 <= exp_bits <= 7.*got \(8, 7\)"),
        (lambda: float_fake_quant(jnp.ones(3), (4, 24)), r"0 <= man_bits <= 23.*got \(4, 24\)"),
        (lambda: float_fake_quant(jnp.ones(3), (4, -1)), _FMT_MSG),
        (lambda: float_fake_quant(jnp.ones(3), (4.0, 3)), _FMT_MSG),
        (lambda: float_fake_quant(jnp.ones(3), (True, 3)), _FMT_MSG),
        (lambda: float_fake_quant(jnp.ones(3), (4, 3, 1)), _FMT_MSG),
        (lambda: float_fake_quant(jnp.ones(3), None), _FMT_MSG),
        (lambda: float_format_max("fp8"), _FMT_MSG),
        (lambda: float_round(jnp.ones(3), 9, 2), _FMT_MSG),
        (lambda: float_fake_quant(jnp.ones(3), "e4m3", scale=0.0), r"scale must be finite and > 0"),
        (
            lambda: float_fake_quant(jnp.ones(3), "e4m3", scale=-2.0),
            r"scale must be finite and > 0.*-2.0",
        ),
        (
            lambda: float_fake_quant(jnp.ones(3), "e4m3", scale=np.nan),
            r"scale must be finite and > 0",
        ),
        (
            lambda: float_fake_quant(jnp.ones((4, 3)), "e4m3", scale=jnp.ones(3)),
            r"scale of shape \(3,\) must be a scalar or have the rank of x",
        ),
        (
            lambda: float_format_values((7, 20)),
            r"has 2\^27 values; float_format_values enumerates <= 2\^20",
        ),
    ],
)
def test_bad_input_raises_value_error(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_bad_types_and_traced_scale():
    with pytest.raises(TypeError, match=r"x must be a floating-point array, got dtype int32"):
        float_fake_quant(jnp.ones(3, jnp.int32), "e4m3")
    # a traced scale cannot be checked eagerly: an invalid one gives NaN, a valid one is exact
    f = jax.jit(lambda s: float_fake_quant(jnp.arange(3.0), "e4m3", scale=s))
    assert np.all(np.isnan(np.asarray(f(np.float32(0.0)))))
    assert np.all(np.isnan(np.asarray(f(np.float32(-1.0)))))
    np.testing.assert_array_equal(np.asarray(f(np.float32(1.0))), [0.0, 1.0, 2.0])
