"""Calibration boundary Jaccard predicts held-out boundary Jaccard.

Claim (paper; data sets not named in the abstract): "Calibration boundary Jaccard predicted
held-out boundary Jaccard across PTQ-W and optimized rounding variants with r=0.947--0.994."

The variants of one seed are every PTQ-W width of the sweep (from the stopping study's rows)
and every optimised rounding variant (``adaround`` and ``boundary_gap`` at each width of the
rounding study; ``nearest`` is already a PTQ-W width and is not counted twice). For each, the
calibration boundary Jaccard (PCA slice of the calibration inputs) and the held-out boundary
Jaccard (PCA slice of the held-out inputs) are paired, and the Pearson correlation

    r = sum (c - mean c)(h - mean h) / sqrt(sum (c - mean c)^2 * sum (h - mean h)^2)

is computed per seed (:func:`bq_jax.report.pearson_r`); ``None`` when either coordinate is
constant (r is undefined).

The two slices are planes through two samples of the same distribution, so they are close to
each other; a high r says the calibration slice is a faithful stand-in, not that the two
measurements are independent.
"""

from __future__ import annotations

from bq_jax.stats import pearson_r
from bq_jax.stats import mean_std

__all__ = ["correlation", "variant_points", "compute", "aggregate", "DEPENDS"]

DEPENDS: tuple[str, ...] = ("stopping", "rounding")


def variant_points(stopping_result: dict, rounding_result: dict) -> list[dict]:
    """(variant, calibration_boundary_jaccard, heldout_boundary_jaccard) of one seed."""
    points = [
        {
            "variant": f"ptq_w{r['bits']}",
            "bits": r["bits"],
            "method": "nearest",
            "calibration_boundary_jaccard": r["calibration_boundary_jaccard"],
            "heldout_boundary_jaccard": r["heldout_boundary_jaccard"],
        }
        for r in stopping_result["rows"]
    ]
    points += [
        {
            "variant": f"{r['method']}_w{r['bits']}",
            "bits": r["bits"],
            "method": r["method"],
            "calibration_boundary_jaccard": r["calibration_boundary_jaccard"],
            "heldout_boundary_jaccard": r["heldout_boundary_jaccard"],
        }
        for r in rounding_result["rows"]
        if r["method"] != "nearest"
    ]
    return points


def compute(config, seed, ctx, deps) -> tuple[dict, dict]:
    """One seed's correlation, from its stopping and rounding results (``deps``)."""
    points = variant_points(deps["stopping"], deps["rounding"])
    r = pearson_r(
        [p["calibration_boundary_jaccard"] for p in points],
        [p["heldout_boundary_jaccard"] for p in points],
    )
    result = {
        "model": deps["stopping"]["model"],
        "float_accuracy": deps["stopping"]["float_accuracy"],
        "pearson_r": r,
        "n_variants": len(points),
        "points": points,
    }
    return result, {}


def aggregate(config, results: list[dict]) -> dict:
    rs = [r["pearson_r"] for r in results]
    mean, std = mean_std(rs)
    defined = [r for r in rs if r is not None]
    points = [
        {"seed": seed, **p}
        for seed, res in zip(config.seeds, results, strict=True)
        for p in res["points"]
    ]
    pooled = pearson_r(
        [p["calibration_boundary_jaccard"] for p in points],
        [p["heldout_boundary_jaccard"] for p in points],
    )
    return {
        "pearson_r": mean,
        "pearson_r_std": std,
        "pearson_r_min": min(defined) if defined else None,
        "pearson_r_max": max(defined) if defined else None,
        "pearson_r_per_seed": rs,
        "pearson_r_pooled": pooled,
        "n_variants": results[0]["n_variants"],
        "points": points,
    }


def correlation(config) -> dict:
    """Run the correlation study (and the studies it needs) over ``config.seeds`` in memory."""
    from bq_jax.studies.runner import run_study

    return run_study(config, "correlation")
