"""Range setting: golden Gaussian values, numpy references, OCTAV fixed point, SQNR, qparams.

Golden values come from the derivations in ``bq_jax.quant.ranges`` (population quantities of
N(0, 1), computed here independently with scipy). Sample-based checks use one 1e6-sample
N(0, 1) tensor (module fixture) and tolerances of about 4-5 Monte-Carlo standard deviations,
measured over 12 seeds (numbers next to each tolerance).
"""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import integrate, special

from bq_jax import quant
from bq_jax.quant import ranges as rg

N = 1_000_000


def _rng(seed):
    # numpy data: a jax.random draw of a new shape costs seconds of compilation on 2 cores.
    return np.random.default_rng(seed)


@pytest.fixture(scope="module")
def x1m_np():
    return _rng(0).standard_normal(N)


@pytest.fixture(scope="module")
def x1m(x1m_np):
    return jnp.asarray(x1m_np, jnp.float32)


def _np_int_quant(x, scale, zp, qmin, qmax):
    return (np.clip(np.round(x / scale) + zp, qmin, qmax) - zp) * scale


def _phi(x):
    return np.exp(-0.5 * x * x) / math.sqrt(2 * math.pi)


# ------------------------------------------------------------------- Gaussian (analytic)


# c_B and the expected-MSE SQNR of the actual signed grid (qmin = -2^(B-1), qmax = 2^(B-1)-1),
# the narrow grid (qmin = -qmax) and the asymmetric grid. Narrow 2 bits is the ternary
# quantizer, whose known optimum level is 1.224 sigma.
GOLDEN_C = {
    (2, True, False): (1.048385, 8.2556),
    (3, True, False): (1.805473, 13.9107),
    (4, True, False): (2.370256, 19.2577),
    (8, True, False): (3.907228, 40.5697),
    (2, True, True): (1.224006, 7.2085),
    (4, True, True): (2.473879, 18.8977),
    (8, True, True): (3.920501, 40.5400),
    (4, False, False): (2.539560, 19.2577),
}


@pytest.mark.parametrize(("bits", "symmetric", "narrow"), sorted(GOLDEN_C))
def test_gaussian_clip_ratio_golden(bits, symmetric, narrow):
    c_golden, sqnr_golden = GOLDEN_C[(bits, symmetric, narrow)]
    c = rg.gaussian_clip_ratio(bits, symmetric=symmetric, narrow=narrow)
    assert c == pytest.approx(c_golden, abs=2e-6)
    m = rg.gaussian_expected_mse(c, bits, symmetric=symmetric, narrow=narrow)
    assert -10 * math.log10(m) == pytest.approx(sqnr_golden, abs=1e-4)


def _closed_form_mse(c, bits, narrow=False):
    """Independent reference: per-cell antiderivative (1+q^2) Phi - (x - 2q) phi, symmetric grid."""
    qmax = 2 ** (bits - 1) - 1
    qmin = -qmax if narrow else -qmax - 1
    s = c / qmax
    total = 0.0
    for k in range(qmin, qmax + 1):
        q = k * s
        a = -np.inf if k == qmin else (k - 0.5) * s
        b = np.inf if k == qmax else (k + 0.5) * s

        def anti(x, q=q):
            if np.isinf(x):
                return (1 + q * q) * (1.0 if x > 0 else 0.0)
            return (1 + q * q) * special.ndtr(x) - (x - 2 * q) * _phi(x)

        total += anti(b) - anti(a)
    return total


@pytest.mark.parametrize("bits", [2, 3, 4, 6])
@pytest.mark.parametrize("narrow", [False, True])
def test_gaussian_expected_mse_matches_closed_form(bits, narrow):
    for c in (0.7, 1.5, 2.5, 4.0):
        got = rg.gaussian_expected_mse(c, bits, narrow=narrow)
        assert got == pytest.approx(_closed_form_mse(c, bits, narrow), rel=1e-9)


def test_gaussian_expected_mse_matches_quad():
    # Brute-force quadrature of (x - Q(x))^2 phi(x) with the cell edges as break points.
    bits, c = 3, 1.9
    qmax = 3
    s = c / qmax
    edges = (np.arange(-4, 4) + 0.5) * s

    def integrand(x):
        q = np.clip(np.round(x / s), -4, 3) * s
        return (x - q) ** 2 * _phi(x)

    ref = integrate.quad(integrand, -12, 12, points=list(edges), limit=200, epsabs=1e-14)[0]
    assert rg.gaussian_expected_mse(c, bits) == pytest.approx(ref, rel=1e-8)


@pytest.mark.parametrize("bits", range(2, 9))
@pytest.mark.parametrize(("symmetric", "narrow"), [(True, False), (True, True), (False, False)])
def test_gaussian_clip_ratio_is_global_minimum(bits, symmetric, narrow):
    # The coarse bracket could miss a second minimum: scan [0.3, 6] finely.
    c = rg.gaussian_clip_ratio(bits, symmetric=symmetric, narrow=narrow)
    best = rg.gaussian_expected_mse(c, bits, symmetric=symmetric, narrow=narrow)
    scan = [
        rg.gaussian_expected_mse(t, bits, symmetric=symmetric, narrow=narrow)
        for t in np.arange(0.3, 6.0, 0.01)
    ]
    assert best <= min(scan) * (1 + 1e-12)


def test_gaussian_expected_mse_matches_monte_carlo(x1m_np):
    # Empirical MSE of the real quantizer at c_B vs the integral; the tolerance is 5 standard
    # errors of the sample mean of e^2, estimated from the same samples.
    x = x1m_np
    for bits in (2, 4, 8):
        c = rg.gaussian_clip_ratio(bits)
        qmax = 2 ** (bits - 1) - 1
        e2 = (x - _np_int_quant(x, c / qmax, 0, -qmax - 1, qmax)) ** 2
        se = e2.std() / math.sqrt(N)
        assert abs(e2.mean() - rg.gaussian_expected_mse(c, bits)) < 5 * se


@pytest.mark.parametrize(("bits", "window"), [(3, 0.15), (4, 0.15)])
def test_gaussian_clip_ratio_vs_brute_force_empirical(x1m, bits, window):
    # argmin over c (step 0.005) of the empirical MSE of the jax quantizer on 1e6 samples.
    # Its Monte-Carlo std over 12 seeds is 0.0026 (3 bits) and 0.0043 (4 bits); 0.02 is
    # 4.5 std plus one grid step.
    c_b = rg.gaussian_clip_ratio(bits)
    qmin, qmax = quant.int_range(bits, symmetric=True, narrow=False)
    cs = jnp.arange(c_b - window, c_b + window, 0.005, dtype=jnp.float32)

    @jax.jit
    def errs(cs):
        def one(c):
            xq = quant.int_fake_quant(x1m, c / qmax, jnp.int32(0), qmin=qmin, qmax=qmax)
            return jnp.mean(jnp.square(x1m - xq))

        return jax.lax.map(one, cs)

    e = np.asarray(errs(cs))
    c_emp = float(cs[int(np.argmin(e))])
    assert 0 < int(np.argmin(e)) < len(cs) - 1  # an interior minimum
    assert c_emp == pytest.approx(c_b, abs=0.02)


def test_gaussian_range_uses_sigma(x1m):
    x = 0.5 * x1m
    xn = np.asarray(x, np.float64)
    c = rg.gaussian_clip_ratio(4)
    r = rg.gaussian(x, bits=4)
    np.testing.assert_allclose(float(r.hi[0]), c * np.sqrt(np.mean(xn**2)), rtol=1e-5)
    assert float(r.lo[0]) == -float(r.hi[0])
    # Asymmetric: mu +- c std; for these data well inside [min, max].
    ca = rg.gaussian_clip_ratio(4, symmetric=False)
    ra = rg.gaussian(x + 1.0, bits=4, symmetric=False)
    mu, sd = np.mean(xn + 1.0), np.std(xn)
    np.testing.assert_allclose(float(ra.hi[0]), mu + ca * sd, rtol=1e-5)
    np.testing.assert_allclose(float(ra.lo[0]), mu - ca * sd, atol=1e-5)


def test_gaussian_range_never_exceeds_data():
    x = jnp.array([0.1, -0.2, 0.15, 0.05])  # c_8 * rms > max|x|
    r = rg.gaussian(x, bits=8)
    assert float(r.hi[0]) == float(jnp.float32(0.2))
    ra = rg.gaussian(x, bits=8, symmetric=False)
    assert float(ra.lo[0]) == float(x[1]) and float(ra.hi[0]) == float(x[2])


def test_gaussian_clip_ratio_validation():
    with pytest.raises(ValueError, match="bits"):
        rg.gaussian_clip_ratio(1)
    with pytest.raises(ValueError, match="bits"):
        rg.gaussian_clip_ratio(17)
    with pytest.raises(ValueError, match="c must be > 0"):
        rg.gaussian_expected_mse(0.0, 4)


# ------------------------------------------------------------------- OCTAV


def _octav_population(bits):
    """The OCTAV fixed point for N(0, 1): s = 2 phi(s) / (a (1 - 2Q(s)) + 2Q(s)), a = 4^-B/3."""
    a = 4.0**-bits / 3
    s = 0.8
    for _ in range(500):
        q = special.ndtr(-s)
        s = 2 * _phi(s) / (a * (1 - 2 * q) + 2 * q)
    return s


def test_octav_population_golden():
    # 1.7388 sigma at 2 bits and 3.9241 sigma at 8 bits (the fixed point of the update with
    # 4^-B/3; the minimiser of OCTAV's own J(s) is 1.688 at 2 bits, since the update drops the
    # density term of the derivative).
    assert _octav_population(2) == pytest.approx(1.738835, abs=2e-6)
    assert _octav_population(4) == pytest.approx(2.562090, abs=2e-6)
    assert _octav_population(8) == pytest.approx(3.924054, abs=2e-6)


@pytest.mark.parametrize(("bits", "tol"), [(2, 0.005), (8, 0.15)])
def test_octav_on_samples_matches_population(x1m, bits, tol):
    # Monte-Carlo std of the sample fixed point over 12 seeds: 0.0011 (2 bits), 0.037 (8 bits:
    # it depends on the 1e-4 tail mass beyond 3.9 sigma). Tolerances ~4.5 and 4 std.
    s, n = rg.octav_fixed_point(x1m, bits=bits)
    assert int(n) < 100
    assert float(s[0]) == pytest.approx(_octav_population(bits), abs=tol)


@pytest.mark.parametrize("bits", [2, 8])
def test_octav_is_fixed_point_of_update(x1m, bits):
    s, n = rg.octav_fixed_point(x1m, bits=bits, tol=1e-7)
    s_next = rg.octav_update(x1m, s, bits=bits)
    np.testing.assert_allclose(np.asarray(s_next), np.asarray(s), rtol=1e-6)
    r = rg.octav(x1m, bits=bits, tol=1e-7)
    assert float(r.hi[0]) == float(s[0]) == -float(r.lo[0])


def _np_octav(x, bits, iters=200):
    a = 4.0**-bits / 3
    ax = np.abs(x)
    s = ax.mean()
    for _ in range(iters):
        cl = ax >= s
        s = np.where(cl, ax, 0).mean() / (a * (~cl).mean() + cl.mean())
    return s


def test_octav_per_channel_matches_numpy():
    x = _rng(3).laplace(size=(500, 6)) * np.arange(1, 7)[None, :]
    s, _ = rg.octav_fixed_point(jnp.asarray(x, jnp.float32), bits=4, reduce_axes=0)
    ref = np.array([_np_octav(x[:, j], 4) for j in range(6)])
    assert s.shape == (1, 6)
    np.testing.assert_allclose(np.asarray(s)[0], ref, rtol=1e-5)


def test_octav_asymmetric_is_clipped_to_data():
    x = jnp.asarray(np.abs(_rng(4).standard_normal(1000)), jnp.float32)
    r = rg.octav(x, bits=4, symmetric=False)
    s, _ = rg.octav_fixed_point(x, bits=4)
    assert float(r.lo[0]) == float(jnp.min(x))
    assert float(r.hi[0]) == float(s[0])


def test_octav_constant_and_zero():
    s, n = rg.octav_fixed_point(jnp.full((7,), -2.5), bits=4)
    assert float(s[0]) == 2.5 and int(n) <= 2  # ties count as clipped: v is the fixed point
    s, _ = rg.octav_fixed_point(jnp.zeros((7,)), bits=4)
    assert float(s[0]) == 0.0


def test_octav_validation():
    with pytest.raises(ValueError, match="tol"):
        rg.octav(jnp.ones(3), bits=4, tol=0.0)
    with pytest.raises(ValueError, match="max_iter"):
        rg.octav(jnp.ones(3), bits=4, max_iter=0)


# ------------------------------------------------------------------- min-max / percentile


def test_minmax_per_channel_matches_numpy():
    x = _rng(1).standard_normal((3, 3, 4, 5)).astype(np.float32)
    r = rg.minmax(x, reduce_axes=rg.channel_reduce_axes(4, -1), symmetric=False)
    np.testing.assert_array_equal(np.asarray(r.lo), x.min(axis=(0, 1, 2), keepdims=True))
    np.testing.assert_array_equal(np.asarray(r.hi), x.max(axis=(0, 1, 2), keepdims=True))
    r = rg.minmax(x, reduce_axes=(0, 2, 3))
    np.testing.assert_array_equal(np.asarray(r.hi), np.abs(x).max(axis=(0, 2, 3), keepdims=True))
    np.testing.assert_array_equal(np.asarray(r.lo), -np.asarray(r.hi))


@pytest.mark.parametrize("q", [50.0, 99.99, 100.0])
@pytest.mark.parametrize("axes", [None, (0, 2)])
def test_percentile_matches_numpy(q, axes):
    x = _rng(2).standard_normal((300, 4, 5)).astype(np.float32)
    r = rg.percentile(x, q, reduce_axes=axes)
    ref = np.percentile(np.abs(x), q, axis=axes, keepdims=True)
    np.testing.assert_allclose(np.asarray(r.hi), ref, atol=1e-6, rtol=1e-5)
    np.testing.assert_allclose(np.asarray(r.lo), -ref, atol=1e-6, rtol=1e-5)
    r2 = rg.percentile(x, q, reduce_axes=axes, symmetric=False)
    np.testing.assert_allclose(
        np.asarray(r2.lo), np.percentile(x, 100 - q, axis=axes, keepdims=True), atol=1e-6, rtol=1e-5
    )
    np.testing.assert_allclose(
        np.asarray(r2.hi), np.percentile(x, q, axis=axes, keepdims=True), atol=1e-6, rtol=1e-5
    )


def test_range_validation():
    x = jnp.ones((2, 3))
    with pytest.raises(ValueError, match=r"percentile q must be in \(0, 100\]"):
        rg.percentile(x, 0.0)
    with pytest.raises(ValueError, match=r"\[50, 100\]"):
        rg.percentile(x, 10.0, symmetric=False)
    with pytest.raises(ValueError, match="reduce_axes entry 2 is out of range"):
        rg.minmax(x, reduce_axes=2)
    with pytest.raises(ValueError, match="repeated"):
        rg.minmax(x, reduce_axes=(0, -2))
    with pytest.raises(TypeError, match="floating-point"):
        rg.minmax(jnp.ones(3, jnp.int32))
    with pytest.raises(ValueError, match="axis 3 is out of range"):
        rg.channel_reduce_axes(2, 3)
    with pytest.raises(ValueError, match="bits"):
        rg.mse(x, bits=1)
    with pytest.raises(ValueError, match="num_candidates"):
        rg.mse(x, bits=4, num_candidates=0)


# ------------------------------------------------------------------- MSE search


def _np_mse_search(x, bits, n, axis_keep):
    qmax = 2 ** (bits - 1) - 1
    xs = np.moveaxis(x, axis_keep, 0).reshape(x.shape[axis_keep], -1)
    best = []
    for row in xs:
        a = np.abs(row).max()
        errs = [
            np.mean((row - _np_int_quant(row, (k / n) * a / qmax, 0, -qmax - 1, qmax)) ** 2)
            for k in range(n, 0, -1)
        ]
        best.append((n - int(np.argmin(errs))) / n * a)
    return np.array(best)


def test_mse_per_channel_matches_numpy_search():
    x = _rng(5).standard_t(3.0, (400, 5)).astype(np.float32)
    r = rg.mse(x, bits=3, reduce_axes=0, num_candidates=40)
    ref = _np_mse_search(x.astype(np.float64), 3, 40, 1)
    np.testing.assert_allclose(np.asarray(r.hi)[0], ref, rtol=1e-5)


@pytest.mark.parametrize(
    ("bits", "symmetric", "axes"), [(2, True, None), (4, False, 0), (8, True, 0)]
)
def test_mse_never_worse_than_minmax(bits, symmetric, axes):
    x = _rng(6).standard_t(2.5, (256, 8)).astype(np.float32) + (0.0 if symmetric else 0.7)
    x = jnp.asarray(x)
    qmin, qmax = quant.int_range(bits, symmetric=symmetric, narrow=False)

    @functools.partial(jax.jit, static_argnums=1)
    def err(r, axes):
        qp = rg.qparams_from_range(r.lo, r.hi, qmin=qmin, qmax=qmax, symmetric=symmetric)
        xq = quant.int_fake_quant(x, qp.scale, qp.zero_point, qmin=qmin, qmax=qmax)
        return jnp.mean(jnp.square(x - xq), axis=axes)

    e_mse = np.asarray(err(rg.mse(x, bits=bits, symmetric=symmetric, reduce_axes=axes), axes))
    e_mm = np.asarray(err(rg.minmax(x, symmetric=symmetric, reduce_axes=axes), axes))
    # equal candidates give equal errors up to the order of the float32 reduction
    assert np.all(e_mse <= e_mm * (1 + 1e-6))
    if bits <= 4:
        assert np.any(e_mse < 0.9 * e_mm)  # heavy tails at low bits: clipping pays


def test_mse_gaussian_near_c_b(x1m):
    # The n = 200 candidates are spaced max|x| / 200 = 0.024 sigma apart.
    r = rg.mse(x1m, bits=4, num_candidates=200)
    step = float(jnp.max(jnp.abs(x1m))) / 200
    assert float(r.hi[0]) == pytest.approx(rg.gaussian_clip_ratio(4), abs=step + 0.02)


# ------------------------------------------------------------------- qparams / SQNR


def test_qparams_from_range_pytorch_convention():
    qp = rg.qparams_from_range(
        jnp.array([-1.0, 0.5, -2.0]), jnp.array([3.0, 2.0, -1.0]), qmin=0, qmax=255, symmetric=False
    )
    # ranges extended to contain 0: [-1, 3], [0, 2], [-2, 0]
    np.testing.assert_allclose(np.asarray(qp.scale), np.array([4, 2, 2]) / 255, rtol=1e-7)
    np.testing.assert_array_equal(np.asarray(qp.zero_point), [64, 0, 255])
    assert qp.zero_point.dtype == jnp.int32 and (qp.qmin, qp.qmax) == (0, 255)
    qs = rg.qparams_from_range(jnp.float32(-3.0), jnp.float32(1.5), qmin=-8, qmax=7, symmetric=True)
    assert float(qs.scale) == pytest.approx(3.0 / 7) and int(qs.zero_point) == 0
    scale, zp, qmin, qmax = qs  # unpacks like a tuple
    assert (qmin, qmax) == (-8, 7)


def test_qparams_zero_range_is_finite():
    for sym, (qmin, qmax) in ((True, (-8, 7)), (False, (0, 15))):
        qp = rg.qparams_from_range(jnp.zeros(3), jnp.zeros(3), qmin=qmin, qmax=qmax, symmetric=sym)
        s = np.asarray(qp.scale)
        assert np.all(np.isfinite(s)) and np.all(s > 0)
        xq = quant.int_fake_quant(jnp.zeros(3), qp.scale, qp.zero_point, qmin=qmin, qmax=qmax)
        np.testing.assert_array_equal(np.asarray(xq), 0.0)


def test_qparams_validation():
    with pytest.raises(ValueError, match="qmin < qmax"):
        rg.qparams_from_range(0.0, 1.0, qmin=3, qmax=3, symmetric=False)
    with pytest.raises(ValueError, match="qmin < 0 < qmax"):
        rg.qparams_from_range(0.0, 1.0, qmin=0, qmax=255, symmetric=True)
    with pytest.raises(TypeError, match="qmin must be a Python int"):
        rg.qparams_from_range(0.0, 1.0, qmin=0.0, qmax=255, symmetric=False)


def test_qparams_is_static_pytree():
    qp = rg.qparams_from_range(jnp.float32(-1.0), jnp.float32(1.0), qmin=-8, qmax=7, symmetric=True)
    assert len(jax.tree.leaves(qp)) == 2
    out = jax.jit(lambda q: q)(qp)
    assert out.qmin == -8 and isinstance(out.qmax, int)


def test_sqnr_db():
    x = _rng(7).standard_normal((64, 3))
    xq = x + 0.01 * _rng(8).standard_normal((64, 3))
    ref = 10 * np.log10(np.mean(x**2) / np.mean((x - xq) ** 2))
    np.testing.assert_allclose(float(rg.sqnr_db(x, xq)), ref, rtol=1e-5)
    per = rg.sqnr_db(x, xq, reduce_axes=0)
    ref_per = 10 * np.log10(np.mean(x**2, 0) / np.mean((x - xq) ** 2, 0))
    assert per.shape == (1, 3)
    np.testing.assert_allclose(np.asarray(per)[0], ref_per, rtol=1e-5)
    assert float(rg.sqnr_db(x, x)) == np.inf
    assert float(rg.sqnr_db(np.zeros(3), np.zeros(3))) == np.inf
    assert float(rg.sqnr_db(np.zeros(3), np.ones(3))) == -np.inf
    with pytest.raises(ValueError, match="same shape"):
        rg.sqnr_db(np.zeros(3), np.zeros(4))
