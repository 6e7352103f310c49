"""Estimators with uncertainty: numpy/scipy references, coverage of the intervals on synthetic
data with a known truth (vmapped over 1000 repetitions), jit vs eager, pooling over seeds,
errors."""

import zlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats as sps

from bq_jax import stats


def _boot_idx(key, b, s, n):
    # the estimators' own resampling draw, reproduced for the numpy reference
    return np.asarray(jax.random.randint(key, (b, s, n), 0, n))


def test_mean_estimate_matches_numpy_reference():
    v = np.random.default_rng(0).normal(0.4, 0.1, size=12).astype(np.float32)
    key = jax.random.key(3)
    est = stats.mean_estimate(key, v, n_resamples=500, level=0.9)
    v64 = v.astype(np.float64)
    assert float(est.mean) == pytest.approx(v64.mean(), rel=1e-6)
    assert float(est.se) == pytest.approx(v64.std(ddof=1) / np.sqrt(12), rel=1e-5)
    idx = _boot_idx(key, 500, 1, 12)[:, 0]
    boot = v64[idx].mean(axis=1)
    lo, hi = np.quantile(boot, [0.05, 0.95])
    assert float(est.low) == pytest.approx(lo, rel=1e-5)
    assert float(est.high) == pytest.approx(hi, rel=1e-5)
    assert int(est.n) == 12


def test_stratified_mean_estimate_matches_numpy_reference():
    v = np.random.default_rng(1).uniform(size=(3, 8)).astype(np.float32)
    key = jax.random.key(5)
    est = stats.mean_estimate(key, v, n_resamples=400)
    v64 = v.astype(np.float64)
    assert float(est.mean) == pytest.approx(v64.mean(axis=1).mean(), rel=1e-6)
    se = np.sqrt(np.sum(v64.var(axis=1, ddof=1) / 8)) / 3
    assert float(est.se) == pytest.approx(se, rel=1e-5)
    idx = _boot_idx(key, 400, 3, 8)
    boot = np.take_along_axis(np.broadcast_to(v64, (400, 3, 8)), idx, axis=2).mean(2).mean(1)
    lo, hi = np.quantile(boot, [0.025, 0.975])
    assert (float(est.low), float(est.high)) == pytest.approx((lo, hi), rel=1e-5)
    assert int(est.n) == 24


def test_mean_estimate_of_one_unit_has_no_interval():
    est = stats.mean_estimate(jax.random.key(0), [0.25])
    assert float(est.mean) == 0.25 and np.isnan(est.se) and np.isnan(est.low)
    assert est.to_dict("x") == {"x": 0.25, "x_se": None, "x_low": None, "x_high": None, "x_n": 1}


def test_wilson_interval_matches_the_formula_and_scipy():
    level = 0.95
    z = sps.norm.ppf(0.975)
    for k, n in ((0, 450), (3, 450), (17, 40), (40, 40)):
        p = k / n
        c = (p + z * z / (2 * n)) / (1 + z * z / n)
        h = z / (1 + z * z / n) * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
        est = stats.wilson_interval(k, n, level=level)
        assert float(est.mean) == pytest.approx(p, abs=1e-7)
        assert float(est.low) == pytest.approx(max(c - h, 0.0), abs=2e-6)
        assert float(est.high) == pytest.approx(min(c + h, 1.0), abs=2e-6)
        assert float(est.se) == pytest.approx(np.sqrt(p * (1 - p) / n), abs=1e-7)
        if k == 0:  # exact ends, not float32 round-off
            assert float(est.low) == 0.0
        if k == n:
            assert float(est.high) == 1.0
        # scipy's binomtest gives the same Wilson interval
        ci = sps.binomtest(k, n).proportion_ci(confidence_level=level, method="wilson")
        assert (float(est.low), float(est.high)) == pytest.approx((ci.low, ci.high), abs=2e-6)


def test_pearson_estimate_matches_numpy_reference():
    rng = np.random.default_rng(2)
    x = rng.normal(size=15)
    y = 0.8 * x + 0.6 * rng.normal(size=15)
    x, y = x.astype(np.float32), y.astype(np.float32)
    key = jax.random.key(7)
    est = stats.pearson_estimate(key, x, y, n_resamples=300)
    assert float(est.mean) == pytest.approx(np.corrcoef(x, y)[0, 1], abs=1e-6)
    idx = _boot_idx(key, 300, 1, 15)[:, 0]
    rs = np.array([np.corrcoef(x[i].astype(np.float64), y[i])[0, 1] for i in idx])
    lo, hi = np.nanquantile(rs, [0.025, 0.975])
    assert (float(est.low), float(est.high)) == pytest.approx((lo, hi), abs=2e-5)
    assert float(est.se) == pytest.approx(np.nanstd(rs, ddof=1), abs=2e-5)
    assert int(est.n) == 15


def test_stratified_pearson_is_the_mean_of_per_stratum_r():
    rng = np.random.default_rng(4)
    x = rng.normal(size=(3, 10)).astype(np.float32)
    y = (x + rng.normal(size=(3, 10))).astype(np.float32)
    est = stats.pearson_estimate(jax.random.key(0), x, y, n_resamples=200)
    ref = np.mean([np.corrcoef(x[s], y[s])[0, 1] for s in range(3)])
    assert float(est.mean) == pytest.approx(ref, abs=1e-6)
    assert float(est.low) <= float(est.mean) <= float(est.high) and int(est.n) == 30


def test_jit_equals_eager():
    v = jnp.asarray(np.random.default_rng(5).uniform(size=9), jnp.float32)
    key = jax.random.key(1)
    eager = stats.mean_estimate(key, v)
    jitted = jax.jit(lambda k, v: stats.mean_estimate(k, v))(key, v)
    for a, b in zip(eager, jitted, strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    w_eager = stats.wilson_interval(7, 90)
    w_jit = jax.jit(lambda k, n: stats.wilson_interval(k, n))(7, 90)
    for a, b in zip(w_eager, w_jit, strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    y = v * 2.0 + jnp.sin(v)
    p_eager = stats.pearson_estimate(key, v, y, n_resamples=100)
    p_jit = jax.jit(lambda k, a, b: stats.pearson_estimate(k, a, b, n_resamples=100))(key, v, y)
    for a, b in zip(p_eager, p_jit, strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6)


# -- coverage: 1000 repetitions with a known truth, vmapped ------------------------------------
# The binomial standard error of an observed coverage of 0.95 over 1000 repetitions is 0.007,
# so the observed rate must lie in [0.92, 0.98] (about 4 standard errors).
REPS = 1000


def test_bootstrap_mean_interval_covers_at_the_stated_rate():
    n, mu = 40, 0.3

    def one(key):
        kd, kb = jax.random.split(key)
        v = mu + 0.1 * jax.random.normal(kd, (n,))
        est = stats.mean_estimate(kb, v, n_resamples=1000)
        return (est.low <= mu) & (mu <= est.high)

    hits = jax.jit(jax.vmap(one))(jax.random.split(jax.random.key(11), REPS))
    assert 0.92 <= float(jnp.mean(hits)) <= 0.98


def test_wilson_interval_covers_at_the_stated_rate():
    p, n = 0.1, 200

    def one(key):
        k = jnp.sum(jax.random.bernoulli(key, p, (n,)))
        est = stats.wilson_interval(k, n)
        return (est.low <= p) & (p <= est.high)

    hits = jax.jit(jax.vmap(one))(jax.random.split(jax.random.key(12), REPS))
    assert 0.92 <= float(jnp.mean(hits)) <= 0.98


def test_pearson_bootstrap_interval_covers_at_the_stated_rate():
    n, rho = 100, 0.6

    def one(key):
        kd, ke, kb = jax.random.split(key, 3)
        x = jax.random.normal(kd, (n,))
        y = rho * x + np.sqrt(1 - rho**2) * jax.random.normal(ke, (n,))
        est = stats.pearson_estimate(kb, x, y, n_resamples=1000)
        return (est.low <= rho) & (rho <= est.high)

    hits = jax.jit(jax.vmap(one))(jax.random.split(jax.random.key(13), REPS))
    assert 0.92 <= float(jnp.mean(hits)) <= 0.98


# -- pooling over seeds ------------------------------------------------------------------------


def test_mean_rows_pools_per_slice_values_and_rates():
    key = jax.random.key(0)
    seeds = []
    for s, vals in enumerate(([0.1, 0.3, 0.2], [0.4, 0.2, 0.3])):
        e = stats.mean_estimate(jax.random.key(s), vals)
        row = {"bits": 4, **e.to_dict("boundary_jaccard_distance")}
        row["boundary_jaccard_distance_values"] = vals
        row.update(stats.wilson_interval([3, 5][s], 450).to_dict("flip_rate"))
        seeds.append([row])
    (agg,) = stats.mean_rows(seeds, ("bits",), key=key, rates=("flip_rate",), n_resamples=300)
    pooled = stats.mean_estimate(
        jax.random.fold_in(key, zlib.crc32(repr(((4,), "boundary_jaccard_distance")).encode())),
        [[0.1, 0.3, 0.2], [0.4, 0.2, 0.3]],
        n_resamples=300,
    )
    assert agg["boundary_jaccard_distance"] == pytest.approx(float(pooled.mean), rel=1e-6)
    assert agg["boundary_jaccard_distance_std"] == pytest.approx(np.std([0.2, 0.3], ddof=1))
    assert agg["boundary_jaccard_distance_low"] == pytest.approx(float(pooled.low), rel=1e-6)
    assert agg["boundary_jaccard_distance_se"] == pytest.approx(float(pooled.se), rel=1e-6)
    assert agg["boundary_jaccard_distance_n"] == 6
    assert "boundary_jaccard_distance_values" not in agg
    assert "boundary_jaccard_distance_se_std" not in agg
    w = stats.wilson_interval(8, 900)
    assert agg["flip_rate"] == pytest.approx(8 / 900)
    assert (agg["flip_rate_low"], agg["flip_rate_high"]) == pytest.approx(
        (float(w.low), float(w.high))
    )
    assert agg["flip_rate_n"] == 900 and agg["n_seeds"] == 2
    # rows read back from JSON (sorted keys) pool to the same intervals
    shuffled = [[dict(sorted(r.items(), reverse=True)) for r in rows] for rows in seeds]
    again = stats.mean_rows(shuffled, ("bits",), key=key, rates=("flip_rate",), n_resamples=300)
    assert again[0] == agg


def test_mean_rows_without_estimates_is_unchanged():
    rows = [[{"bits": 8, "a": 1.0}], [{"bits": 8, "a": 3.0}]]
    assert stats.mean_rows(rows, ("bits",)) == [
        {"bits": 8, "a": 2.0, "a_std": float(np.sqrt(2.0)), "n_seeds": 2}
    ]


@pytest.mark.parametrize(
    "call, error, match",
    [
        (lambda: stats.mean_estimate(jax.random.key(0), [0.1, np.nan]), ValueError, "NaN"),
        (lambda: stats.mean_estimate(jax.random.key(0), [0.1], level=1.0), ValueError, "level"),
        (
            lambda: stats.mean_estimate(jax.random.key(0), [0.1], n_resamples=0),
            ValueError,
            "n_resamples must be an int >= 1",
        ),
        (lambda: stats.mean_estimate(jax.random.key(0), np.zeros((2, 2, 2))), ValueError, r"\[n\]"),
        (lambda: stats.wilson_interval(5, 3), ValueError, "0 <= successes <= n"),
        (lambda: stats.wilson_interval(1.5, 3), ValueError, "integer counts"),
        (lambda: stats.pearson_estimate(jax.random.key(0), [1.0], [2.0]), ValueError, "n >= 2"),
        (
            lambda: stats.pearson_estimate(jax.random.key(0), [1.0, 2.0], [2.0, 3.0, 4.0]),
            ValueError,
            "same shape",
        ),
    ],
)
def test_bad_arguments_raise_clear_errors(call, error, match):
    with pytest.raises(error, match=match):
        call()


def test_mean_rows_needs_a_key_for_per_unit_values():
    row = {"bits": 4, "x": 0.2, "x_n": 2, "x_values": [0.1, 0.3]}
    with pytest.raises(ValueError, match="key="):
        stats.mean_rows([[row]], ("bits",))
