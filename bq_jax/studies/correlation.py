"""Calibration boundary Jaccard predicts held-out boundary Jaccard.

Claim (paper; data sets not named in the abstract): "Calibration boundary Jaccard predicted
held-out boundary Jaccard across PTQ-W and optimized rounding variants with r=0.947--0.994."

The variants of one seed are every PTQ-W width of the sweep (from the stopping study's rows)
and every optimised rounding variant (``adaround`` and ``boundary_gap`` at each width of the
rounding study; ``nearest`` is already a PTQ-W width and is not counted twice). For each, the
calibration boundary Jaccard (mean over the ``slice_count`` planes of the calibration inputs'
slice family) and the held-out boundary Jaccard (mean over the held-out inputs' family:
disjoint data, disjoint planes) are paired, and the Pearson correlation

    r = sum (c - mean c)(h - mean h) / sqrt(sum (c - mean c)^2 * sum (h - mean h)^2)

is computed per seed; ``pearson_r`` is the mean of the per-seed r with a percentile bootstrap
interval resampling the variants within each seed (:func:`bq_jax.stats.pearson_estimate`,
stratified; the resampling unit is a variant). Undefined r (a constant coordinate) is None.

Both families are drawn from samples of the same distribution by the same recipe, so a high r
says a calibration family is a faithful stand-in for a held-out one, not that the two
measurements are independent.

results.json block: ``pearson_r`` (mean over seeds of the per-seed r) with ``pearson_r_se``,
``pearson_r_low``, ``pearson_r_high``, ``pearson_r_n`` (variants, all seeds), ``pearson_r_std``,
``pearson_r_min``, ``pearson_r_max``, ``pearson_r_per_seed`` (and its intervals
``pearson_r_per_seed_low`` / ``_high``), ``pearson_r_pooled`` (all seeds' points together),
``n_variants`` (per seed) and ``points`` (``seed``, ``variant``, ``bits``, ``method``,
``calibration_boundary_jaccard_distance``, ``heldout_boundary_jaccard_distance`` and their
``_se``, ``_low``, ``_high``, ``_n``; the per-seed points add the per-plane ``_values``).
"""

from __future__ import annotations

import numpy as np

from bq_jax.report import plot_scatter
from bq_jax.stats import mean_std, pearson_estimate, pearson_r
from bq_jax.studies.config import StudyConfig
from bq_jax.studies.context import stable_key
from bq_jax.studies.paper import PAPER_UNSTATED_DATASET
from bq_jax.studies.protocol import Finding
from bq_jax.studies.reporting import estimate_cell, estimate_text, fmt_list, table
from bq_jax.studies.stopping import AGGREGATE_SEED, slice_values_figure
from bq_jax.vocabulary import COUNT_SUFFIX, HIGH_SUFFIX, LOW_SUFFIX, SE_SUFFIX, VALUES_SUFFIX

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


CAL = "calibration_boundary_jaccard_distance"
HELD = "heldout_boundary_jaccard_distance"
_POINT_FIELDS = tuple(
    f + suffix
    for f in (CAL, HELD)
    for suffix in ("", SE_SUFFIX, LOW_SUFFIX, HIGH_SUFFIX, COUNT_SUFFIX, VALUES_SUFFIX)
)


def variant_points(stopping_result: dict, rounding_result: dict) -> list[dict]:
    """(variant, calibration and held-out boundary Jaccard estimates) of one seed."""
    points = [
        {
            "variant": f"ptq_w{r['bits']}",
            "bits": r["bits"],
            "method": "nearest",
            **{k: r.get(k) for k in _POINT_FIELDS},
        }
        for r in stopping_result["rows"]
    ]
    points += [
        {
            "variant": f"{r['method']}_w{r['bits']}",
            "bits": r["bits"],
            "method": r["method"],
            **{k: r.get(k) for k in _POINT_FIELDS},
        }
        for r in rounding_result["rows"]
        if r["method"] != "nearest"
    ]
    return points


def _r_estimate(config, points_per_seed: list[list[dict]], *parts) -> dict:
    """``pearson_r`` estimate of the seeds' points (stratified bootstrap over variants)."""
    x = np.asarray([[p[CAL] for p in pts] for pts in points_per_seed], np.float32)
    y = np.asarray([[p[HELD] for p in pts] for pts in points_per_seed], np.float32)
    if x.shape[1] < 2:
        return {"pearson_r": None}
    est = pearson_estimate(
        stable_key(AGGREGATE_SEED, NAME, *parts),
        x,
        y,
        n_resamples=config.bootstrap_resamples,
        level=config.confidence_level,
    )
    return est.to_dict("pearson_r")


def compute(config, seed, ctx, deps) -> tuple[dict, dict]:
    """One seed's correlation, from its stopping and rounding results (``deps``)."""
    points = variant_points(deps["stopping"], deps["rounding"])
    result = {
        "model": deps["stopping"]["model"],
        "float_accuracy": deps["stopping"]["float_accuracy"],
        **_r_estimate(config, [points], "seed", seed),
        "n_variants": len(points),
        "points": points,
    }
    return result, {}


def aggregate(config, results: list[dict]) -> dict:
    rs = [r["pearson_r"] for r in results]
    _, std = mean_std(rs)
    defined = [r for r in rs if r is not None]
    points = [  # the per-plane values stay in the per-seed results
        {"seed": seed, **{k: v for k, v in p.items() if not k.endswith(VALUES_SUFFIX)}}
        for seed, res in zip(config.seeds, results, strict=True)
        for p in res["points"]
    ]
    pooled = pearson_r([p[CAL] for p in points], [p[HELD] for p in points])
    return {
        **_r_estimate(config, [r["points"] for r in results], "all seeds"),
        "pearson_r_std": std,
        "pearson_r_min": min(defined) if defined else None,
        "pearson_r_max": max(defined) if defined else None,
        "pearson_r_per_seed": rs,
        "pearson_r_per_seed_low": [r.get("pearson_r" + LOW_SUFFIX) for r in results],
        "pearson_r_per_seed_high": [r.get("pearson_r" + HIGH_SUFFIX) for r in results],
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
            else f"Pearson r {estimate_text(results, 'pearson_r')} variants "
            f"({config.confidence_level:g} bootstrap over variants; per seed "
            f"{fmt_list(results['pearson_r_per_seed'])}, {results['n_variants']} variants per "
            f"seed, {config.slice_count} {config.slice_family} planes per split)",
        )
    ]


def figures(config, results: dict, first_result: dict, arrays: dict | None) -> dict:
    """Calibration vs held-out boundary Jaccard distance, every variant and seed, and the
    per-plane values behind the first seed's points."""
    pts = results["points"]
    fig = plot_scatter(
        [p[CAL] for p in pts],
        [p[HELD] for p in pts],
        xlabel=CAL,
        ylabel=HELD,
        groups=[p["method"] for p in pts],
        title=f"{config.dataset}: all variants, {len(config.seeds)} seed(s)",
    )
    ax = fig.axes[0]
    for p in pts:  # each point's intervals over planes
        if None not in (p.get(CAL + LOW_SUFFIX), p.get(HELD + LOW_SUFFIX)):
            ax.errorbar(
                p[CAL],
                p[HELD],
                xerr=[[p[CAL] - p[CAL + LOW_SUFFIX]], [p[CAL + HIGH_SUFFIX] - p[CAL]]],
                yerr=[[p[HELD] - p[HELD + LOW_SUFFIX]], [p[HELD + HIGH_SUFFIX] - p[HELD]]],
                fmt="none",
                ecolor="#999999",
                elinewidth=0.6,
                zorder=0,
            )
    return {"correlation.png": fig, "correlation_slices.png": _slices_figure(config, first_result)}


def _slices_figure(config, seed_result: dict):
    """Per-plane calibration and held-out values of the first seed's variants."""
    return slice_values_figure(
        config, {"rows": seed_result["points"]}, label=lambda p: p["variant"]
    )


def report_section(sec, config, results: dict, figure_paths: dict) -> None:
    """r with its interval, per seed and pooled, beside the paper's range."""
    lo, hi = PAPER_UNSTATED_DATASET["correlation"]["pearson_r"]
    r = results["pearson_r"]
    table(
        sec,
        [
            {
                "n_variants": results["n_variants"],
                "pearson_r": estimate_cell(results, "pearson_r"),
                "std over seeds": results.get("pearson_r_std"),
                "per seed": fmt_list(results["pearson_r_per_seed"]),
                "pooled": results["pearson_r_pooled"],
                "paper": f"{lo}–{hi}",
            }
        ],
        ["n_variants", "pearson_r", "std over seeds", "per seed", "pooled", "paper"],
        formats={"pooled": ".3f", "std over seeds": ".3f"},
    )
    if r is None:
        sentence = "Pearson r is undefined here (a constant coordinate)."
    elif lo <= r <= hi:
        sentence = f"Ours (mean r = {r:.3f}) lies inside the paper's range {lo}–{hi}."
    else:
        side = "above" if r > hi else "below"
        sentence = f"Ours (mean r = {r:.3f}) differs: it lies {side} the paper's range {lo}–{hi}."
    sec.text(
        sentence + f" Interval: {config.confidence_level:g} percentile bootstrap resampling the "
        "variants within each seed. Variants: every PTQ-W width and the AdaRound and "
        "boundary-gap variants of the rounding study. Each coordinate is the mean over "
        f"{config.slice_count} {config.slice_family!r} planes of its split "
        f"({config.family_resolution}x{config.family_resolution}); the calibration and held-out "
        "families are drawn from disjoint inputs by the same recipe, so a high r says a "
        "calibration family is a faithful stand-in for a held-out one."
    )
    captions = {
        "correlation.png": "Calibration vs held-out boundary Jaccard distance (means over each "
        "split's planes, grey: intervals over planes), every variant and seed.",
        "correlation_slices.png": "The per-plane values behind the first seed's points: each "
        "variant's calibration and held-out planes; bar: mean, line: interval over planes.",
    }
    for name, path in figure_paths.items():
        sec.figure(path, captions.get(name, name))
