"""Calibration boundary Jaccard predicts held-out boundary Jaccard.

Claim (paper; data sets not named in the abstract): "Calibration boundary Jaccard predicted
held-out boundary Jaccard across PTQ-W and optimized rounding variants with r=0.947--0.994."

The variants of one seed are every PTQ-W width of the sweep (from the stopping study's rows)
and every optimised rounding variant (``adaround`` and ``boundary_gap`` at each width of the
rounding study; ``nearest`` is already a PTQ-W width and is not counted twice). For each, the
calibration boundary Jaccard (PCA slice of the calibration inputs) and the held-out boundary
Jaccard (PCA slice of the held-out inputs) are paired, and the Pearson correlation

    r = sum (c - mean c)(h - mean h) / sqrt(sum (c - mean c)^2 * sum (h - mean h)^2)

is computed per seed (:func:`bq_jax.stats.pearson_r`); ``None`` when either coordinate is
constant (r is undefined).

The two slices are planes through two samples of the same distribution, so they are close to
each other; a high r says the calibration slice is a faithful stand-in, not that the two
measurements are independent.

results.json block: ``pearson_r`` (mean over seeds of the per-seed r), ``pearson_r_std``,
``pearson_r_min``, ``pearson_r_max``, ``pearson_r_per_seed``, ``pearson_r_pooled`` (all seeds'
points together), ``n_variants`` (per seed) and ``points`` (``seed``, ``variant``, ``bits``,
``method``, ``calibration_boundary_jaccard_distance``, ``heldout_boundary_jaccard_distance``).
"""

from __future__ import annotations

from bq_jax.report import plot_scatter
from bq_jax.stats import mean_std, pearson_r
from bq_jax.studies.config import StudyConfig
from bq_jax.studies.paper import PAPER_UNSTATED_DATASET
from bq_jax.studies.protocol import Finding
from bq_jax.studies.reporting import fmt_list, mean_std_cell, table

__all__ = [
    "variant_points",
    "compute",
    "aggregate",
    "findings",
    "figures",
    "report_section",
]

NAME = "correlation"
TITLE = "Calibration vs held-out boundary Jaccard distance"
CONFIG = StudyConfig
DEPENDS: tuple[str, ...] = ("stopping", "rounding")


def variant_points(stopping_result: dict, rounding_result: dict) -> list[dict]:
    """(variant, calibration_boundary_jaccard, heldout_boundary_jaccard) of one seed."""
    points = [
        {
            "variant": f"ptq_w{r['bits']}",
            "bits": r["bits"],
            "method": "nearest",
            "calibration_boundary_jaccard_distance": r["calibration_boundary_jaccard_distance"],
            "heldout_boundary_jaccard_distance": r["heldout_boundary_jaccard_distance"],
        }
        for r in stopping_result["rows"]
    ]
    points += [
        {
            "variant": f"{r['method']}_w{r['bits']}",
            "bits": r["bits"],
            "method": r["method"],
            "calibration_boundary_jaccard_distance": r["calibration_boundary_jaccard_distance"],
            "heldout_boundary_jaccard_distance": r["heldout_boundary_jaccard_distance"],
        }
        for r in rounding_result["rows"]
        if r["method"] != "nearest"
    ]
    return points


def compute(config, seed, ctx, deps) -> tuple[dict, dict]:
    """One seed's correlation, from its stopping and rounding results (``deps``)."""
    points = variant_points(deps["stopping"], deps["rounding"])
    r = pearson_r(
        [p["calibration_boundary_jaccard_distance"] for p in points],
        [p["heldout_boundary_jaccard_distance"] for p in points],
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
        [p["calibration_boundary_jaccard_distance"] for p in points],
        [p["heldout_boundary_jaccard_distance"] for p in points],
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


def findings(config, results: dict) -> list[Finding]:
    """Calibration and held-out boundary Jaccard distances correlate strongly (r >= 0.9)."""
    r = results["pearson_r"]
    return [
        Finding(
            "calibration and held-out boundary Jaccard distances correlate strongly (r >= 0.9)",
            None if r is None else r >= 0.9,
            "Pearson r undefined"
            if r is None
            else f"Pearson r {r:.3f} (per seed {fmt_list(results['pearson_r_per_seed'])}, "
            f"n = {results['n_variants']} variants per seed)",
        )
    ]


def figures(config, results: dict, first_result: dict, arrays: dict | None) -> dict:
    """Calibration vs held-out boundary Jaccard distance, every variant and seed."""
    pts = results["points"]
    fig = plot_scatter(
        [p["calibration_boundary_jaccard_distance"] for p in pts],
        [p["heldout_boundary_jaccard_distance"] for p in pts],
        xlabel="calibration_boundary_jaccard_distance",
        ylabel="heldout_boundary_jaccard_distance",
        groups=[p["method"] for p in pts],
        title=f"{config.dataset}: all variants, {len(config.seeds)} seed(s)",
    )
    return {"correlation.png": fig}


def report_section(sec, config, results: dict, figure_paths: dict) -> None:
    """r per seed and pooled beside the paper's range."""
    lo, hi = PAPER_UNSTATED_DATASET["correlation"]["pearson_r"]
    r = results["pearson_r"]
    table(
        sec,
        [
            {
                "n_variants": results["n_variants"],
                "pearson_r": mean_std_cell(results, "pearson_r"),
                "per seed": fmt_list(results["pearson_r_per_seed"]),
                "pooled": results["pearson_r_pooled"],
                "paper": f"{lo}–{hi}",
            }
        ],
        ["n_variants", "pearson_r", "per seed", "pooled", "paper"],
        formats={"pooled": ".3f"},
    )
    if r is None:
        sentence = "Pearson r is undefined here (a constant coordinate)."
    elif lo <= r <= hi:
        sentence = f"Ours (mean r = {r:.3f}) lies inside the paper's range {lo}–{hi}."
    else:
        side = "above" if r > hi else "below"
        sentence = f"Ours (mean r = {r:.3f}) differs: it lies {side} the paper's range {lo}–{hi}."
    sec.text(
        sentence + " Variants: every PTQ-W width and the AdaRound and boundary-gap variants of "
        "the rounding study. The calibration and held-out slices are PCA planes of two samples "
        "of the same distribution, so a high r says the calibration slice is a faithful stand-in "
        "for the held-out one."
    )
    for path in figure_paths.values():
        sec.figure(
            path, "Calibration vs held-out boundary Jaccard distance, every variant and seed."
        )
