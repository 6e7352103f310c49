"""Calibration-to-test stopping: choose the bit width on calibration data, judge it on held-out.

Claim (paper, digits): "Calibration-to-test stopping reduced the digits held-out flip rate from
0.0094 to 0.0022 and boundary Jaccard from 0.825 to 0.524"; on CIFAR-10 subsets the accuracy
rule chose 6 bits (flip 0.0367, Jaccard 0.184) and the boundary rule 8 bits (flip 0.0083,
Jaccard 0.048).

Both rules walk the PTQ-W widths downward from ``max_bits`` and stop at the first width that
fails; the chosen width is the last one that passed (``max_bits`` if even that fails, reported
with ``met: false``). They see only the calibration split:

* accuracy rule: calibration accuracy drop ``acc_float - acc_q <= accuracy_tolerance`` (epsilon);
* boundary rule: calibration boundary Jaccard ``<= jaccard_threshold`` (tau_J), where the
  calibration boundary Jaccard is the boundary-mask Jaccard distance between the float and the
  quantized label maps on the PCA slice of the calibration inputs (its own mean, principal
  plane and grid range), at ``resolution``, tolerance 0.

Each choice is then judged on the held-out split: ``flip_rate`` (fraction of held-out inputs
whose predicted label differs from the float model's), ``accuracy`` (held-out) and
``heldout_boundary_jaccard_distance`` (the same Jaccard distance on the PCA slice of the
held-out inputs).

results.json block: ``jaccard_threshold`` (tau_J), ``accuracy_tolerance`` (epsilon);
``accuracy_rule`` and ``boundary_rule``, each with ``bits`` (median over seeds of the chosen
width), ``bits_per_seed``, ``met`` (False if even ``max_bits`` failed the rule for some seed) and
the row measurements below at each seed's choice (mean, ``_std``); ``rows``: for every width
``calibration_accuracy_drop``, ``calibration_boundary_jaccard_distance``, ``accuracy``,
``flip_rate``, ``heldout_boundary_jaccard_distance``.
"""

from __future__ import annotations

import statistics

import jax.numpy as jnp
import numpy as np

from bq_jax import geometry
from bq_jax.report import plot_metric_vs_bits
from bq_jax.stats import mean_rows, mean_std
from bq_jax.studies.config import StudyConfig
from bq_jax.studies.paper import PAPER
from bq_jax.studies.protocol import Finding
from bq_jax.studies.reporting import compare_sentence, mean_std_cell, table

__all__ = [
    "select_bits",
    "split_jaccard",
    "variant_row",
    "compute",
    "aggregate",
    "findings",
    "figures",
    "report_section",
]

NAME = "stopping"
TITLE = "Calibration-to-test stopping"
CONFIG = StudyConfig
DEPENDS: tuple[str, ...] = ()

#: Measurements of every width (calibration ones decide, the others judge).
ROW_METRICS = (
    "calibration_accuracy_drop",
    "calibration_boundary_jaccard_distance",
    "accuracy",
    "flip_rate",
    "heldout_boundary_jaccard_distance",
)

# Accuracies are ratios of counts; this absorbs float round-off in `drop <= epsilon`.
_ROUNDOFF = 1e-9


def split_jaccard(ctx, kind: str, key, params) -> float:
    """Boundary Jaccard distance between float and ``params`` on the PCA slice ``kind``."""
    mf = geometry.boundary_mask(jnp.asarray(ctx.float_labels(kind)))
    mq = geometry.boundary_mask(jnp.asarray(ctx.labels(kind, key, params)))
    return float(geometry.boundary_jaccard_distance(mf, mq))


def variant_row(ctx, key, params) -> dict:
    """Calibration and held-out measurements of one quantized variant."""
    cal_drop = ctx.accuracy(ctx.float_params, "calibration", key="float") - ctx.accuracy(
        params, "calibration", key=key
    )
    return {
        "calibration_accuracy_drop": cal_drop,
        "calibration_boundary_jaccard_distance": split_jaccard(ctx, "calibration", key, params),
        "accuracy": ctx.accuracy(params, "heldout", key=key),
        "flip_rate": ctx.flip_rate(params, "heldout", key=key),
        "heldout_boundary_jaccard_distance": split_jaccard(ctx, "heldout", key, params),
    }


def select_bits(rows: list[dict], field: str, threshold: float) -> tuple[int, bool]:
    """Walk ``rows`` (widest first) and keep the last width whose ``field`` <= ``threshold``.

    Returns:
        ``(bits, met)``: the chosen width, and False when even the widest fails (then the widest
        is returned).

    Example:
        >>> select_bits([{"bits": 8, "j": 0.1}, {"bits": 7, "j": 0.3}, {"bits": 6, "j": 0.9}],
        ...             "j", 0.5)
        (7, True)
    """
    chosen = None
    for row in rows:
        if row[field] <= threshold + _ROUNDOFF:
            chosen = row["bits"]
        else:
            break
    if chosen is None:
        return rows[0]["bits"], False
    return chosen, True


def _rule(rows, field, threshold) -> dict:
    bits, met = select_bits(rows, field, threshold)
    row = next(r for r in rows if r["bits"] == bits)
    return {"bits": bits, "met": met, **{k: row[k] for k in ROW_METRICS}}


def compute(config, seed, ctx, deps) -> tuple[dict, dict]:
    """One seed's stopping study: per-width rows and the choice of each rule."""
    rows = [{"bits": b, **variant_row(ctx, ("ptq", b), ctx.ptq(b))} for b in config.bits]
    result = {
        "model": ctx.model_name,
        "float_accuracy": ctx.float_accuracy,
        "float_calibration_accuracy": ctx.accuracy(ctx.float_params, "calibration", key="float"),
        "rows": rows,
        "accuracy_rule": _rule(rows, "calibration_accuracy_drop", config.accuracy_tolerance),
        "boundary_rule": _rule(
            rows, "calibration_boundary_jaccard_distance", config.jaccard_threshold
        ),
    }
    arrays = {
        "calibration_float_labels": ctx.float_labels("calibration").astype(np.int16),
        "heldout_float_labels": ctx.float_labels("heldout").astype(np.int16),
    }
    return result, arrays


def _aggregate_rule(rules: list[dict]) -> dict:
    out = {
        "bits": statistics.median_low([r["bits"] for r in rules]),
        "bits_per_seed": [r["bits"] for r in rules],
        "met": all(r["met"] for r in rules),
    }
    for k in rules[0]:
        if k in ("bits", "met"):
            continue
        out[k], out[k + "_std"] = mean_std([r[k] for r in rules])
    return out


def aggregate(config, results: list[dict]) -> dict:
    return {
        "jaccard_threshold": config.jaccard_threshold,
        "accuracy_tolerance": config.accuracy_tolerance,
        "accuracy_rule": _aggregate_rule([r["accuracy_rule"] for r in results]),
        "boundary_rule": _aggregate_rule([r["boundary_rule"] for r in results]),
        "rows": mean_rows([r["rows"] for r in results], ("bits",)),
    }


def findings(config, results: dict) -> list[Finding]:
    """The boundary rule keeps a wider width, with fewer flips and a lower held-out Jaccard."""
    a, b = results["accuracy_rule"], results["boundary_rule"]
    return [
        Finding(
            "the boundary rule keeps a wider width than the accuracy rule, with fewer "
            "held-out flips and a lower held-out boundary Jaccard distance",
            b["bits"] > a["bits"]
            and b["flip_rate"] <= a["flip_rate"]
            and b["heldout_boundary_jaccard_distance"] < a["heldout_boundary_jaccard_distance"],
            f"accuracy rule {a['bits']} bits (flip {a['flip_rate']:.4f}, Jaccard distance "
            f"{a['heldout_boundary_jaccard_distance']:.3f}); boundary rule {b['bits']} bits "
            f"(flip {b['flip_rate']:.4f}, Jaccard distance "
            f"{b['heldout_boundary_jaccard_distance']:.3f})",
        )
    ]


def figures(config, results: dict, first_result: dict, arrays: dict | None) -> dict:
    """Calibration (deciding) and held-out (judging) measurements per width."""
    fig = plot_metric_vs_bits(
        results["rows"],
        metric=[
            "calibration_accuracy_drop",
            "calibration_boundary_jaccard_distance",
            "flip_rate",
            "heldout_boundary_jaccard_distance",
        ],
        title=(
            f"{config.dataset}: stopping (epsilon = {results['accuracy_tolerance']}, "
            f"tau_J = {results['jaccard_threshold']}; accuracy rule -> "
            f"{results['accuracy_rule']['bits']} bits, boundary rule -> "
            f"{results['boundary_rule']['bits']} bits)"
        ),
    )
    axes = fig.axes
    axes[0].axhline(results["accuracy_tolerance"], color="#555555", linestyle="--", linewidth=1)
    axes[1].axhline(results["jaccard_threshold"], color="#555555", linestyle="--", linewidth=1)
    return {"stopping.png": fig}


def report_section(sec, config, results: dict, figure_paths: dict) -> None:
    """The two rules' choices with the paper's values, every width, and the figure."""
    sec.text(
        f"Walking down from {config.max_bits} bits, the accuracy rule keeps the last width whose "
        f"calibration accuracy drop is <= epsilon = {results['accuracy_tolerance']:g}; the "
        "boundary rule the last width whose calibration boundary Jaccard distance (PCA slice of "
        f"the calibration inputs) is <= tau_J = {results['jaccard_threshold']:g}. Judged on the "
        "held-out split (flip rate, accuracy; boundary Jaccard distance on the PCA slice of the "
        "held-out inputs)."
    )
    ref = PAPER.get(config.dataset, {}).get("stopping", {})
    rows = []
    for rule in ("accuracy_rule", "boundary_rule"):
        r = results[rule]
        p = ref.get(rule, {}) if isinstance(ref.get(rule), dict) else {}
        rows.append(
            {
                "rule": rule,
                "bits": r["bits"],
                "bits_per_seed": ", ".join(str(b) for b in r["bits_per_seed"]),
                "paper bits": p.get("bits"),
                "flip_rate": mean_std_cell(r, "flip_rate"),
                "paper flip": p.get("flip_rate"),
                "heldout_boundary_jaccard_distance": mean_std_cell(
                    r, "heldout_boundary_jaccard_distance"
                ),
                "paper Jaccard": p.get("heldout_boundary_jaccard_distance"),
                "accuracy": mean_std_cell(r, "accuracy"),
            }
        )
    table(
        sec,
        rows,
        [
            "rule",
            "bits",
            "bits_per_seed",
            "paper bits",
            "flip_rate",
            "paper flip",
            "heldout_boundary_jaccard_distance",
            "paper Jaccard",
            "accuracy",
        ],
    )
    lines = []
    for rule in ("accuracy_rule", "boundary_rule"):
        p = ref.get(rule) if isinstance(ref.get(rule), dict) else None
        if not p:
            continue
        for key, fmt in (("flip_rate", ".4f"), ("heldout_boundary_jaccard_distance", ".3f")):
            lines.append(f"{rule} " + compare_sentence(key, results[rule][key], p[key], fmt))
    if "claim" in ref:
        lines.append(f"The paper states only that {ref['claim']} on {config.dataset}.")
    if lines:
        sec.bullets(lines)
    sec.text("Every width (calibration columns decide, the others judge):")
    table(
        sec,
        [
            {"bits": r["bits"], **{k: mean_std_cell(r, k) for k in ROW_METRICS}}
            for r in results["rows"]
        ],
        ["bits", *ROW_METRICS],
    )
    for path in figure_paths.values():
        sec.figure(
            path,
            "Calibration (deciding) and held-out (judging) measurements per width; "
            "dashed: epsilon and tau_J.",
        )
