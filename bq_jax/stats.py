"""Estimates with their uncertainty, and aggregation over seeds.

Estimators (pure, jit-able; each returns an :class:`Estimate` ``(mean, se, low, high, n)``):

* :func:`mean_estimate`: the mean of per-unit values (e.g. a slice metric on the K planes of a
  slice family), its standard error and a percentile bootstrap interval resampling the units,
  optionally stratified (one row of units per seed);
* :func:`wilson_interval`: a rate ``k / n`` over examples (flip rate, band flip rate, pair-order
  flip) with the Wilson score interval;
* :func:`pearson_estimate`: Pearson r over paired units with a percentile bootstrap interval
  resampling the pairs.

Aggregation over seeds (host side, JSON-friendly dicts): :func:`mean_rows` replaces every
number ``x`` with its mean over seeds and adds ``x_std``, the sample standard deviation
(``ddof=1``; 0.0 for a single seed). ``None`` (a value that is undefined for a seed, e.g. an
enrichment with no changed cell) is left out of the mean; a value that is ``None`` for every
seed stays ``None``. Estimate fields (``x_se``, ``x_low``, ``x_high``, ``x_n``, ``x_values``,
see :mod:`bq_jax.vocabulary`) are pooled over seeds instead of averaged.
"""

from __future__ import annotations

import functools
import math
import zlib
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from bq_jax.vocabulary import (
    COUNT_SUFFIX,
    ESTIMATE_SUFFIXES,
    HIGH_SUFFIX,
    LOW_SUFFIX,
    SE_SUFFIX,
    VALUES_SUFFIX,
)

__all__ = [
    "Estimate",
    "DEFAULT_RESAMPLES",
    "DEFAULT_LEVEL",
    "mean_estimate",
    "wilson_interval",
    "pearson_estimate",
    "mean_std",
    "mean_rows",
    "is_number",
    "pearson_r",
]

#: Bootstrap resamples of the estimators' defaults (percentile interval ends settle to ~0.01 of
#: the interval's width by 2000 resamples; Efron & Tibshirani 1993, ch. 19).
DEFAULT_RESAMPLES = 2000
#: Confidence level of the estimators' defaults.
DEFAULT_LEVEL = 0.95


class Estimate(NamedTuple):
    """An estimate with its uncertainty: ``mean`` (the point estimate), ``se`` (its standard
    error), ``[low, high]`` (a confidence interval) and ``n`` (resampling units behind it).

    A pytree (jit-able); undefined parts (e.g. ``se`` of a single unit) are NaN in the arrays
    and ``None`` in :meth:`to_dict`.
    """

    mean: Any
    se: Any
    low: Any
    high: Any
    n: Any

    def to_dict(self, name: str) -> dict:
        """``{name: mean, name_se: se, name_low: low, name_high: high, name_n: n}`` of Python
        numbers (NaN -> None), the key convention of :mod:`bq_jax.vocabulary`.

        Example:
            >>> Estimate(0.5, 0.1, 0.3, 0.7, 4).to_dict("x")
            {'x': 0.5, 'x_se': 0.1, 'x_low': 0.3, 'x_high': 0.7, 'x_n': 4}
        """
        return {
            name: _py(self.mean),
            name + SE_SUFFIX: _py(self.se),
            name + LOW_SUFFIX: _py(self.low),
            name + HIGH_SUFFIX: _py(self.high),
            name + COUNT_SUFFIX: int(self.n),
        }


def _py(v) -> float | None:
    v = float(v)
    return v if math.isfinite(v) else None


def _check_level(level, n_resamples=None):
    if not isinstance(level, jax.core.Tracer):
        lv = float(level)
        if not 0.0 < lv < 1.0:
            raise ValueError(f"level must be a confidence level in (0, 1), got {level}")
    if n_resamples is not None:
        if isinstance(n_resamples, bool) or not isinstance(n_resamples, (int, np.integer)):
            raise TypeError(f"n_resamples must be an int, got {type(n_resamples).__name__}")
        if n_resamples < 1:
            raise ValueError(f"n_resamples must be an int >= 1, got {n_resamples}")


def _check_values(values, name: str, min_ndim: int = 1) -> jax.Array:
    v = jnp.asarray(values)
    if not jnp.issubdtype(v.dtype, jnp.floating):
        v = v.astype(jnp.float32)
    if v.ndim not in (1, 2) or v.shape[-1] < 1 or (v.ndim == 2 and v.shape[0] < 1):
        raise ValueError(
            f"{name} must be [n] values or [S, n] (one row per stratum) with n >= 1, got shape "
            f"{v.shape}"
        )
    if not isinstance(v, jax.core.Tracer) and not bool(jnp.all(jnp.isfinite(v))):
        raise ValueError(f"{name} holds NaN or inf; an estimate needs finite values")
    return v


def _percentiles(boot, level):
    """The ``(1 -+ level) / 2`` quantiles of the finite entries of ``boot[B]``, by linear
    interpolation between order statistics (``numpy.quantile``'s default); NaN if none is
    finite. A sort and two gathers: cheaper to compile than ``jnp.nanquantile``."""
    finite = jnp.isfinite(boot)
    m = jnp.sum(finite)
    srt = jnp.sort(jnp.where(finite, boot, jnp.inf))
    alpha = (1.0 - jnp.asarray(level, boot.dtype)) / 2
    last = jnp.maximum(m - 1, 0)

    def q(p):
        h = p * last.astype(boot.dtype)
        lo = jnp.floor(h).astype(jnp.int32)
        hi = jnp.minimum(lo + 1, last)
        val = srt[lo] + (h - lo.astype(boot.dtype)) * (srt[hi] - srt[lo])
        return jnp.where(m > 0, val, jnp.nan)

    return q(alpha), q(1.0 - alpha)


@functools.partial(jax.jit, static_argnames="n_resamples")
def _mean_estimate(key, v, level, n_resamples):
    s, k = v.shape
    mean = jnp.mean(jnp.mean(v, axis=1))
    if k < 2:
        nan = jnp.full((), jnp.nan, v.dtype)
        return Estimate(mean, nan, nan, nan, s * k)
    var = jnp.var(v, axis=1, ddof=1)
    se = jnp.sqrt(jnp.sum(var / k)) / s
    idx = jax.random.randint(key, (n_resamples, s, k), 0, k)
    boot = jnp.take_along_axis(jnp.broadcast_to(v, (n_resamples, s, k)), idx, axis=2)
    boot = jnp.mean(jnp.mean(boot, axis=2), axis=1)
    low, high = _percentiles(boot, level)
    return Estimate(mean, se, low, high, s * k)


def mean_estimate(
    key: jax.Array,
    values,
    *,
    n_resamples: int = DEFAULT_RESAMPLES,
    level: float = DEFAULT_LEVEL,
) -> Estimate:
    """Mean of per-unit values with its standard error and a bootstrap percentile interval.

    Resampling unit: one entry of the last axis of ``values`` (e.g. one plane of a slice
    family, one example). For ``values[n]``: ``mean = sum_i v_i / n``,
    ``se = s / sqrt(n)`` with ``s`` the sample standard deviation (``ddof=1``), and
    ``[low, high]`` the ``(1 - level) / 2`` and ``(1 + level) / 2`` quantiles (linear
    interpolation, as ``numpy.quantile``) of the means of ``n_resamples`` resamples drawn with
    replacement (``jax.random.randint(key, (B, 1, n), 0, n)``): Efron's percentile bootstrap
    (Efron & Tibshirani, *An Introduction to the Bootstrap*, 1993, ch. 13).

    Stratified form ``values[S, n]`` (one row per stratum, e.g. per training seed): the
    estimate is the mean of the row means, ``se = sqrt(sum_s s_s^2 / n) / S``, and each
    resample draws ``n`` units with replacement within every row.

    With ``n = 1`` the standard error and the interval are undefined (NaN; ``None`` in
    :meth:`Estimate.to_dict`). Jit-able (``n_resamples`` static).

    Args:
        key: PRNG key of the resampling.
        values: float ``[n]`` or ``[S, n]`` per-unit values (finite).
        n_resamples: bootstrap resamples B >= 1.
        level: confidence level in (0, 1).

    Returns:
        :class:`Estimate` with ``n`` the number of units (``S * n``).

    Example:
        >>> est = mean_estimate(jax.random.key(0), jnp.array([0.2, 0.4, 0.3, 0.5]))
        >>> round(float(est.mean), 3), round(float(est.se), 4), int(est.n)
        (0.35, 0.0645, 4)
        >>> bool(est.low < est.mean < est.high)
        True
    """
    _check_level(level, n_resamples)
    v = _check_values(values, "values")
    v = v.reshape((1,) * (2 - v.ndim) + v.shape)
    return _mean_estimate(key, v, level, n_resamples)


@jax.jit
def _wilson(k, n, level):
    k = jnp.asarray(k, jnp.float32)
    n = jnp.asarray(n, jnp.float32)
    z = jax.scipy.special.ndtri((1.0 + jnp.asarray(level, jnp.float32)) / 2)
    p = k / n
    z2n = z * z / n
    denom = 1.0 + z2n
    centre = (p + z2n / 2) / denom
    half = z / denom * jnp.sqrt(p * (1.0 - p) / n + z2n / (4 * n))
    se = jnp.sqrt(p * (1.0 - p) / n)
    # at k = 0 (k = n) the bound is exactly 0 (1); float32 round-off would leave ~1e-10
    low = jnp.where(k == 0, 0.0, jnp.maximum(centre - half, 0.0))
    high = jnp.where(k == n, 1.0, jnp.minimum(centre + half, 1.0))
    return Estimate(p, se, low, high, n)


def wilson_interval(successes, n, *, level: float = DEFAULT_LEVEL) -> Estimate:
    """A rate ``k / n`` over examples with the Wilson score interval.

    Resampling unit: one example (a Bernoulli trial). ``p = k / n``, ``se = sqrt(p (1 - p) / n)``,
    and with ``z`` the ``(1 + level) / 2`` standard-normal quantile,
    ``(p + z^2 / 2n) / (1 + z^2 / n) +- z / (1 + z^2 / n) sqrt(p (1 - p) / n + z^2 / 4n^2)``
    (Wilson, JASA 1927; recommended over the Wald interval by Brown, Cai & DasGupta,
    Statistical Science 2001): it stays inside [0, 1] and is not degenerate at ``k = 0`` (a
    flip rate of 0 out of 450 held-out inputs still has an upper bound). ``n = 0`` gives NaN
    (undefined; ``None`` in :meth:`Estimate.to_dict`). Jit-able; ``k`` and ``n`` may be arrays
    (broadcast).

    Args:
        successes: counts ``k`` (ints or floats holding integers), ``0 <= k <= n``.
        n: trials.
        level: confidence level in (0, 1).

    Example:
        >>> est = wilson_interval(0, 450)
        >>> float(est.mean), round(float(est.high), 5)
        (0.0, 0.00846)
    """
    _check_level(level)
    k, nn = jnp.asarray(successes), jnp.asarray(n)
    if not isinstance(k, jax.core.Tracer) and not isinstance(nn, jax.core.Tracer):
        ka, na = np.asarray(k, np.float64), np.asarray(n, np.float64)
        if np.any(ka < 0) or np.any(na < 0) or np.any(ka > na) or np.any(ka != np.round(ka)):
            raise ValueError(
                f"successes must be integer counts with 0 <= successes <= n, got {ka} of {na}"
            )
    return _wilson(k, nn, level)


def _r(x, y):
    """Pearson r along the last axis; NaN where either coordinate is constant."""
    dx = x - jnp.mean(x, axis=-1, keepdims=True)
    dy = y - jnp.mean(y, axis=-1, keepdims=True)
    den = jnp.sqrt(jnp.sum(dx * dx, axis=-1) * jnp.sum(dy * dy, axis=-1))
    ok = den > 0
    r = jnp.sum(dx * dy, axis=-1) / jnp.where(ok, den, 1.0)
    return jnp.where(ok, jnp.clip(r, -1.0, 1.0), jnp.nan)


@functools.partial(jax.jit, static_argnames="n_resamples")
def _pearson_estimate(key, x, y, level, n_resamples):
    s, n = x.shape
    r = jnp.mean(_r(x, y))
    idx = jax.random.randint(key, (n_resamples, s, n), 0, n)
    xb = jnp.take_along_axis(jnp.broadcast_to(x, (n_resamples, s, n)), idx, axis=2)
    yb = jnp.take_along_axis(jnp.broadcast_to(y, (n_resamples, s, n)), idx, axis=2)
    boot = jnp.mean(_r(xb, yb), axis=1)  # NaN if any stratum's resample is constant
    low, high = _percentiles(boot, level)
    ok = jnp.isfinite(boot)
    m = jnp.sum(ok).astype(boot.dtype)
    centred = jnp.where(ok, boot - jnp.sum(jnp.where(ok, boot, 0.0)) / m, 0.0)
    se = jnp.sqrt(jnp.sum(centred * centred) / (m - 1))
    return Estimate(r, se, low, high, s * n)


def pearson_estimate(
    key: jax.Array,
    x,
    y,
    *,
    n_resamples: int = DEFAULT_RESAMPLES,
    level: float = DEFAULT_LEVEL,
) -> Estimate:
    """Pearson r of paired values with a bootstrap percentile interval resampling the pairs.

    Resampling unit: one pair ``(x_i, y_i)`` (e.g. one quantized variant's calibration and
    held-out boundary Jaccard). ``r = sum (x - mean x)(y - mean y) / sqrt(sum (x - mean x)^2
    sum (y - mean y)^2)``; ``[low, high]`` are the ``(1 -+ level) / 2`` quantiles of r over
    ``n_resamples`` resamples of the pairs with replacement, ``se`` their standard deviation
    (the bootstrap standard error). Stratified form ``x[S, n]``, ``y[S, n]``: the estimate is
    the mean of the per-row r, resampled within rows. A resample in which r is undefined (a
    constant coordinate) is left out of the quantiles; r itself is NaN (``None`` in
    :meth:`Estimate.to_dict`) when a row's coordinate is constant. Jit-able.

    Args:
        key: PRNG key of the resampling.
        x, y: float ``[n]`` or ``[S, n]`` paired values (finite), ``n >= 2``.
        n_resamples: bootstrap resamples B >= 1.
        level: confidence level in (0, 1).

    Example:
        >>> est = pearson_estimate(jax.random.key(0), jnp.arange(6.0),
        ...                        jnp.array([0.1, 1.2, 1.9, 3.2, 3.9, 5.1]))
        >>> round(float(est.mean), 4), bool(est.low <= est.mean <= est.high), int(est.n)
        (0.9974, True, 6)
    """
    _check_level(level, n_resamples)
    xv, yv = _check_values(x, "x"), _check_values(y, "y")
    if xv.shape != yv.shape:
        raise ValueError(f"x and y must have the same shape, got {xv.shape} and {yv.shape}")
    if xv.shape[-1] < 2:
        raise ValueError(f"pearson_estimate needs n >= 2 pairs, got {xv.shape[-1]}")
    xv = xv.reshape((1,) * (2 - xv.ndim) + xv.shape)
    yv = yv.reshape((1,) * (2 - yv.ndim) + yv.shape)
    return _pearson_estimate(key, xv, yv, level, n_resamples)


def is_number(v) -> bool:
    """True for int/float values (bool excluded)."""
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def mean_std(values: Sequence) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation (ddof=1, 0.0 for one value) of the non-None values.

    Example:
        >>> mean_std([1.0, 2.0, 3.0])
        (2.0, 1.0)
    """
    vals = [float(v) for v in values if v is not None]
    if not vals:
        return None, None
    for v in vals:
        if not math.isfinite(v):
            raise ValueError(f"cannot aggregate a non-finite value {v} over seeds")
    arr = np.asarray(vals, dtype=np.float64)
    std = float(arr.std(ddof=1)) if arr.size > 1 else 0.0
    return float(arr.mean()), std


def _estimate_bases(fields: Sequence[str]) -> set[str]:
    """Fields ``x`` of a row that are estimates (the row also carries ``x_n``)."""
    return {f for f in fields if f + COUNT_SUFFIX in fields}


def _is_estimate_field(f: str, bases: set[str]) -> bool:
    return any(f.endswith(s) and f[: -len(s)] in bases for s in ESTIMATE_SUFFIXES)


def _pool(rows: list[dict], f: str, key, n_resamples: int, level: float) -> dict:
    """Uncertainty fields of estimate ``f`` pooled over the seeds' ``rows`` (see
    :func:`mean_rows`): stratified bootstrap of the per-unit values, else the summed ``x_n``."""
    values = [r.get(f + VALUES_SUFFIX) for r in rows]
    if all(isinstance(v, list) and v for v in values) and len({len(v) for v in values}) == 1:
        if key is None:
            raise ValueError(f"mean_rows needs key= to pool the per-unit values of {f!r}")
        est = mean_estimate(
            key, np.asarray(values, np.float32), n_resamples=n_resamples, level=level
        )
        out = est.to_dict(f)
        out.pop(f)  # the mean over seeds is mean_std's (the same number)
        return out
    return {f + COUNT_SUFFIX: sum(r.get(f + COUNT_SUFFIX) or 0 for r in rows)}


def _pool_rate(rows: list[dict], f: str, level: float) -> dict:
    """Wilson interval of rate ``f`` from the pooled counts ``sum_s round(x_s n_s)``."""
    pairs = [(r.get(f), r.get(f + COUNT_SUFFIX)) for r in rows]
    pairs = [(x, n) for x, n in pairs if x is not None and n]
    if not pairs:
        return {f + COUNT_SUFFIX: 0}
    k = sum(round(x * n) for x, n in pairs)
    out = wilson_interval(k, sum(n for _, n in pairs), level=level).to_dict(f)
    out.pop(f)
    return out


def _field_key(key, row_id: tuple, field: str):
    """``fold_in(key, crc32(repr((row_id, field))))``: a key per (row, estimate) that is the same
    in every process and whatever the order of rows and fields."""
    return jax.random.fold_in(key, zlib.crc32(repr((row_id, field)).encode()) & 0x7FFFFFFF)


def mean_rows(
    per_seed_rows: Sequence[Sequence[dict]],
    keys: Sequence[str],
    *,
    key: jax.Array | None = None,
    rates: Sequence[str] = (),
    n_resamples: int = DEFAULT_RESAMPLES,
    level: float = DEFAULT_LEVEL,
) -> list[dict]:
    """Average rows that share the same ``keys`` across seeds.

    Args:
        per_seed_rows: one list of row dicts per seed.
        keys: the fields that identify a row (e.g. ``("bits",)`` or ``("bits", "method")``);
            they are copied, every other numeric field is averaged (``x``) with its spread
            (``x_std``). Non-numeric, non-key fields are dropped (they stay in ``per_seed``).
        key: PRNG key of the bootstrap that pools per-unit values (needed only when rows carry
            ``x_values``); the estimate ``x`` of the row identified by ``k`` (its ``keys``
            values) uses ``fold_in(key, crc32(repr((k, x))))``, so it does not depend on the
            order of rows or fields (a row read back from JSON gives the same interval).
        rates: estimate fields that are rates over examples (Wilson intervals), pooled as
            counts.
        n_resamples, level: of the pooled bootstrap and Wilson intervals.

    An estimate ``x`` (a row with ``x_n``, see :mod:`bq_jax.vocabulary`) is averaged like any
    number (``x``, ``x_std``), and its uncertainty is pooled over seeds: with per-unit values
    ``x_values`` (equal count per seed) by the stratified :func:`mean_estimate` (units
    resampled within each seed; ``x_n`` all units); for a field in ``rates`` by the Wilson
    interval of the pooled counts ``sum_s round(x_s n_s)`` of ``sum_s n_s`` examples; otherwise
    only ``x_n`` (summed) is kept. ``x_values`` stay in the per-seed rows.

    Returns:
        The averaged rows, in the order of the first seed's rows.

    Example:
        >>> mean_rows([[{"bits": 8, "a": 1.0}], [{"bits": 8, "a": 3.0}]], ("bits",))
        [{'bits': 8, 'a': 2.0, 'a_std': 1.4142135623730951, 'n_seeds': 2}]
    """
    if not per_seed_rows:
        raise ValueError("mean_rows needs at least one seed's rows")
    index = []
    grouped: dict[tuple, list[dict]] = {}
    for rows in per_seed_rows:
        for row in rows:
            k = tuple(row[name] for name in keys)
            if k not in grouped:
                grouped[k] = []
                index.append(k)
            grouped[k].append(row)
    out = []
    for k in index:
        rows = grouped[k]
        agg = dict(zip(keys, k, strict=True))
        fields = [f for f in rows[0] if f not in keys]
        bases = _estimate_bases(fields)
        for f in fields:
            if _is_estimate_field(f, bases):
                continue
            values = [r.get(f) for r in rows]
            if all(v is None or is_number(v) for v in values):
                agg[f], agg[f + "_std"] = mean_std(values)
            if f in bases:
                row_key = None if key is None else _field_key(key, k, f)
                if f in rates:
                    agg.update(_pool_rate(rows, f, level))
                else:
                    agg.update(_pool(rows, f, row_key, n_resamples, level))
        agg["n_seeds"] = len(rows)
        out.append(agg)
    return out


def pearson_r(x: Any, y: Any) -> float | None:
    """Pearson correlation ``r = cov(x, y) / (std(x) std(y))``; None when undefined.

    Undefined (returns ``None``, never NaN) when fewer than 2 points or either variable is
    constant.

    Example:
        >>> round(pearson_r([1, 2, 3], [2, 4, 7]), 4)
        0.9934
    """
    xa = np.asarray(x, dtype=np.float64).ravel()
    ya = np.asarray(y, dtype=np.float64).ravel()
    if xa.shape != ya.shape:
        raise ValueError(f"x and y must have the same length, got {xa.size} and {ya.size}")
    if xa.size < 2:
        return None
    dx = xa - xa.mean()
    dy = ya - ya.mean()
    den = math.sqrt(float(dx @ dx) * float(dy @ dy))
    if den == 0.0:
        return None
    return float(np.clip(float(dx @ dy) / den, -1.0, 1.0))
