"""Rounding at fixed bit widths: nearest vs AdaRound vs boundary-gap rounding.

Claim (paper; data set not named in the abstract): "A fixed-bit boundary-gap rounding term
changed the trade-off at 4 bits by reducing boundary Jaccard from 0.457 to 0.435 and
boundary-band pair-order flip from 0.3600 to 0.3558, with an accuracy trade-off; the 3-bit
stress test exposed the tuning limit of this surrogate."

At each width of ``rounding_bits`` the same per-channel symmetric min-max grid is used by three
rounding rules:

* ``nearest``: round to nearest (the PTQ-W variant of the bit sweep);
* ``adaround``: layer-wise AdaRound (:func:`bq_jax.ptq.adaround`): learned up/down rounding
  minimising each layer's output reconstruction error on calibration inputs
  (rectified-sigmoid relaxation, annealed regulariser, ``rounding_iters`` steps per layer);
* ``boundary_gap``: network-wise learned rounding (:func:`bq_jax.ptq.optimize_rounding`) of
  the KL(float || quantized) task term plus ``boundary_gap_weight`` times the boundary-gap
  penalty ``sum_x w(x) huber(g_Q(x) - g_F(x))``, ``g = z_a - z_b`` (float top-1 minus
  runner-up logit), ``w = exp(-|g_F| / T)``, on calibration band points and calibration
  slice-grid points; ``rounding_iters`` x (number of layers) steps, the same budget.

Every variant is measured like the bit sweep (accuracy, boundary Jaccard on the training PCA
slice, boundary-band pair-order flip, ...) and like the stopping study: boundary Jaccard
distance, grid change and triple-junction count as estimates over a family of ``slice_count``
planes drawn from the calibration inputs and one drawn from the held-out inputs (mean,
standard error, bootstrap interval over planes, per-plane values), the flip rate with a Wilson
interval. The finding is judged on the held-out family: the per-plane difference
``boundary_gap - nearest`` of the held-out boundary Jaccard distance (paired: both variants
on the same planes), whose bootstrap interval over planes (resampled within each seed) must lie
below 0.

results.json block: ``methods``, ``boundary_gap_weight``, ``rounding_iters``, ``rows``, one per
(``bits``, ``method``), with the bit sweep's metrics and the stopping study's calibration /
held-out estimates of that variant, and ``paired_differences``: per width of
``rounding_bits`` the estimate ``heldout_boundary_jaccard_difference`` (boundary_gap minus
nearest, paired per plane, pooled over seeds).
"""

from __future__ import annotations

import jax
import numpy as np
from tqdm.auto import tqdm

from bq_jax import ptq
from bq_jax.report import plot_metric_vs_bits
from bq_jax.stats import mean_estimate
from bq_jax.studies.bits_sweep import metric_rows
from bq_jax.studies.config import StudyConfig
from bq_jax.studies.context import stable_key, weight_config
from bq_jax.studies.paper import PAPER_UNSTATED_DATASET
from bq_jax.studies.protocol import Finding
from bq_jax.studies.reporting import estimate_cell, estimate_text, mean_std_cell, table
from bq_jax.studies.stopping import AGGREGATE_SEED, aggregate_rows, variant_rows
from bq_jax.vocabulary import VALUES_SUFFIX

__all__ = [
    "METHODS",
    "rounded_weights",
    "compute",
    "aggregate",
    "findings",
    "figures",
    "report_section",
]

NAME = "rounding"
TITLE = "Rounding at fixed bit widths"
CONFIG = StudyConfig
DEPENDS: tuple[str, ...] = ()

#: Rounding rules compared, in report order.
METHODS = ("nearest", "adaround", "boundary_gap")


def rounded_weights(ctx, bits: int, method: str, key, *, start=None):
    """Variables with every kernel quantized at ``bits`` by rounding rule ``method``.

    ``adaround`` runs ``rounding_iters`` steps per layer; ``boundary_gap`` is AdaRound plus the
    boundary-gap penalty: it starts from ``start`` (the AdaRound solution at these bits) and
    optimises all layers jointly for ``rounding_iters`` x (number of layers) steps, the same
    step budget, scoring the hard-rounded network (straight-through) so that the penalty is
    met by the rounding that is deployed rather than by undecided soft weights. Its penalty's
    boundary band is the study's ``band_quantile`` band.
    """
    if method == "nearest":
        return ctx.ptq(bits)
    cfg = ctx.config
    weights = weight_config(bits)
    if method == "adaround":
        return ptq.adaround(
            ctx.apply_fn,
            ctx.float_params,
            ctx.inputs("calibration"),
            ptq.AdaRoundConfig(weights=weights, rounding_iters=cfg.rounding_iters),
            key,
            progress=False,
        )
    if method == "boundary_gap":
        n_layers = len(ptq.resolve_rules(ctx.float_params, weights))
        return ptq.optimize_rounding(
            ctx.apply_fn,
            ctx.float_params,
            ctx.inputs("calibration"),
            ptq.RoundingConfig(
                weights=weights,
                rounding_iters=cfg.rounding_iters * n_layers,
                boundary_gap_weight=cfg.boundary_gap_weight,
                band_quantile=cfg.band_quantile,
                straight_through=True,
            ),
            key,
            init_params=start,
            progress=False,
        )
    raise ValueError(f"method must be one of {METHODS}, got {method!r}")


def compute(config, seed, ctx, deps) -> tuple[dict, dict]:
    """One seed's rounding study: a row per (bits, method)."""
    base = jax.random.fold_in(jax.random.PRNGKey(seed), 0x0B0C)
    keys, variants, names = [], [], []
    bar = tqdm(
        total=len(config.rounding_bits) * len(METHODS),
        desc=f"rounding seed {seed}",
        leave=False,
        disable=not config.progress,
    )
    for i, b in enumerate(config.rounding_bits):
        solutions = {}
        for j, method in enumerate(METHODS):
            key = jax.random.fold_in(jax.random.fold_in(base, i), j)
            start = solutions.get("adaround")
            solutions[method] = rounded_weights(ctx, b, method, key, start=start)
            variants.append(solutions[method])
            names.append((b, method))
            keys.append(("ptq", b) if method == "nearest" else ("round", b, method))
            bar.update()
    bar.close()
    rows = []
    metrics = metric_rows(ctx, variants, keys)
    judged = variant_rows(ctx, keys, variants)
    for (b, method), m, v in zip(names, metrics, judged, strict=True):
        rows.append({"bits": b, "method": method, **m, **v})
    result = {"model": ctx.model_name, "float_accuracy": ctx.float_accuracy, "rows": rows}
    return result, {}


JUDGED = "heldout_boundary_jaccard_distance"
DIFFERENCE = "heldout_boundary_jaccard_difference"


def paired_difference(config, results: list[dict], bits: int) -> dict | None:
    """Estimate of ``boundary_gap - nearest`` held-out boundary Jaccard distance at ``bits``:
    per-plane differences (both variants on the same held-out planes), mean over planes and
    seeds, bootstrap interval resampling planes within each seed; None if a row is missing."""
    diffs = []
    for res in results:
        rows = {(r["bits"], r["method"]): r for r in res["rows"]}
        if (bits, "nearest") not in rows or (bits, "boundary_gap") not in rows:
            return None
        g = np.asarray(rows[(bits, "boundary_gap")][JUDGED + VALUES_SUFFIX], np.float32)
        n = np.asarray(rows[(bits, "nearest")][JUDGED + VALUES_SUFFIX], np.float32)
        diffs.append(g - n)
    est = mean_estimate(
        stable_key(AGGREGATE_SEED, NAME, DIFFERENCE, bits),
        np.stack(diffs),
        n_resamples=config.bootstrap_resamples,
        level=config.confidence_level,
    )
    return {"bits": bits, **est.to_dict(DIFFERENCE)}


def aggregate(config, results: list[dict]) -> dict:
    diffs = [paired_difference(config, results, b) for b in config.rounding_bits]
    return {
        "methods": list(METHODS),
        "boundary_gap_weight": config.boundary_gap_weight,
        "rounding_iters": config.rounding_iters,
        "rows": aggregate_rows(config, [r["rows"] for r in results], ("bits", "method"), NAME),
        "paired_differences": [d for d in diffs if d is not None],
    }


def findings(config, results: dict) -> list[Finding]:
    """Boundary-gap rounding lowers the 4-bit held-out boundary Jaccard distance below
    nearest's: the interval of the paired per-plane difference lies below 0."""
    rows = {(r["bits"], r["method"]): r for r in results["rows"]}
    diff = next((d for d in results.get("paired_differences", []) if d["bits"] == 4), None)
    if (4, "nearest") not in rows or (4, "boundary_gap") not in rows or diff is None:
        return []
    n, g = rows[(4, "nearest")], rows[(4, "boundary_gap")]
    high = diff.get(DIFFERENCE + "_high")
    return [
        Finding(
            "boundary-gap rounding lowers the held-out boundary Jaccard distance at 4 bits "
            "(interval of the paired per-plane difference below 0)",
            None if high is None else high < 0.0,
            f"nearest {estimate_text(n, JUDGED)} -> boundary_gap {estimate_text(g, JUDGED)}; "
            f"difference {estimate_text(diff, DIFFERENCE)} ({config.confidence_level:g} "
            "bootstrap over planes)",
        )
    ]


def figures(config, results: dict, first_result: dict, arrays: dict | None) -> dict:
    """Accuracy, boundary Jaccard distance and pair-order flip per rounding rule."""
    fig = plot_metric_vs_bits(
        results["rows"],
        metric=["accuracy", JUDGED, "pair_order_flip"],
        by="method",
        title=f"{config.dataset}: rounding rules at fixed bit widths",
    )
    return {"rounding.png": fig}


def report_section(sec, config, results: dict, figure_paths: dict) -> None:
    """The per-(bits, method) table beside the paper's (unnamed data set) values."""
    ref = PAPER_UNSTATED_DATASET["rounding"]
    sec.text(
        "Same per-channel grid, three rounding rules: nearest; AdaRound (layer-wise output "
        f"reconstruction on calibration inputs, {results['rounding_iters']} steps per layer); "
        f"boundary_gap (AdaRound + {results['boundary_gap_weight']:g} x boundary-gap penalty: "
        "all layers jointly, starting from the AdaRound solution, the task, reconstruction and "
        "gap terms scored on the hard-rounded network). The paper's numbers below are from a "
        "data set its abstract does not name. "
        f"{JUDGED}: mean over {config.slice_count} {config.slice_family!r} planes of the "
        f"held-out inputs per seed [{config.confidence_level:g} bootstrap interval over planes]; "
        "boundary_jaccard_distance: the training PCA plane (one plane, mean ± std over seeds), "
        "the plane the paper reports on; flip_rate: [Wilson interval]."
    )
    rows = []
    for r in results["rows"]:
        p = ref.get(r["bits"], {}).get(r["method"], {})
        rows.append(
            {
                "bits": r["bits"],
                "method": r["method"],
                "accuracy": mean_std_cell(r, "accuracy"),
                JUDGED: estimate_cell(r, JUDGED),
                "boundary_jaccard_distance": mean_std_cell(r, "boundary_jaccard_distance"),
                "paper Jaccard": p.get("boundary_jaccard_distance"),
                "pair_order_flip": mean_std_cell(r, "pair_order_flip"),
                "paper pair-order": p.get("pair_order_flip"),
                "flip_rate": estimate_cell(r, "flip_rate"),
            }
        )
    table(
        sec,
        rows,
        [
            "bits",
            "method",
            "accuracy",
            JUDGED,
            "boundary_jaccard_distance",
            "paper Jaccard",
            "pair_order_flip",
            "paper pair-order",
            "flip_rate",
        ],
        formats={"paper Jaccard": ".3f", "paper pair-order": ".4f"},
    )
    by = {(r["bits"], r["method"]): r for r in results["rows"]}
    lines = []
    for b, methods in ref.items():
        if (b, "nearest") not in by or (b, "boundary_gap") not in by:
            continue
        n, g = by[(b, "nearest")], by[(b, "boundary_gap")]
        pn, pg = methods["nearest"], methods["boundary_gap"]
        for key, fmt in (("boundary_jaccard_distance", ".3f"), ("pair_order_flip", ".4f")):
            lines.append(
                f"{b}-bit {key} nearest -> boundary_gap: ours {format(n[key], fmt)} -> "
                f"{format(g[key], fmt)} ({format(g[key] - n[key], '+' + fmt)}), paper "
                f"{format(pn[key], fmt)} -> {format(pg[key], fmt)} "
                f"({format(pg[key] - pn[key], '+' + fmt)})."
            )
    for d in results.get("paired_differences", []):
        lines.append(
            f"{d['bits']}-bit {DIFFERENCE} (boundary_gap minus nearest on the same held-out "
            f"planes): {estimate_text(d, DIFFERENCE)}."
        )
    if lines:
        sec.bullets(lines)
    for path in figure_paths.values():
        sec.figure(
            path, "Accuracy, held-out boundary Jaccard distance and pair-order flip per rule."
        )
