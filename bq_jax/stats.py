"""Estimates over seeds and variants: mean and spread, Pearson correlation.

A per-seed result is a JSON-friendly dict. Aggregating over seeds replaces every number ``x``
with its mean over seeds and adds ``x_std``, the sample standard deviation (``ddof=1``; 0.0 for
a single seed). ``None`` (a value that is undefined for a seed, e.g. an enrichment with no
changed cell) is left out of the mean; a value that is ``None`` for every seed stays ``None``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["mean_std", "mean_rows", "is_number", "pearson_r"]


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


def mean_rows(per_seed_rows: Sequence[Sequence[dict]], keys: Sequence[str]) -> list[dict]:
    """Average rows that share the same ``keys`` across seeds.

    Args:
        per_seed_rows: one list of row dicts per seed.
        keys: the fields that identify a row (e.g. ``("bits",)`` or ``("bits", "method")``);
            they are copied, every other numeric field is averaged (``x``) with its spread
            (``x_std``). Non-numeric, non-key fields are dropped (they stay in ``per_seed``).

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
            k = tuple(row[key] for key in keys)
            if k not in grouped:
                grouped[k] = []
                index.append(k)
            grouped[k].append(row)
    out = []
    for k in index:
        rows = grouped[k]
        agg = dict(zip(keys, k, strict=True))
        fields = [f for f in rows[0] if f not in keys]
        for f in fields:
            values = [r.get(f) for r in rows]
            if all(v is None or is_number(v) for v in values):
                agg[f], agg[f + "_std"] = mean_std(values)
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
