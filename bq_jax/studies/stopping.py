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
  calibration boundary Jaccard is the mean over a family of ``slice_count`` planes drawn from
  the calibration inputs only (:meth:`~bq_jax.studies.context.SeedContext.family`) of the
  boundary-mask Jaccard distance between the float and the quantized label maps on each plane,
  at ``family_resolution``, tolerance 0.

With ``stopping_bound="upper"`` (the default) each rule compares the upper end of the
estimate's confidence interval with its threshold (``x_high``: the bootstrap interval over the
planes, or over calibration examples for the accuracy drop), so a width is kept only while the
calibration data support it being within the threshold; ``"mean"`` compares the estimate.

Each choice is then judged on the held-out split: ``flip_rate`` (fraction of held-out inputs
whose predicted label differs from the float model's, Wilson interval), ``accuracy`` (held-out)
and ``heldout_boundary_jaccard_distance`` (the same Jaccard distance, mean over a family of
planes drawn from the held-out inputs only: disjoint data, disjoint planes).

results.json block: ``jaccard_threshold`` (tau_J), ``accuracy_tolerance`` (epsilon),
``stopping_bound``; ``accuracy_rule`` and ``boundary_rule``, each with ``bits`` (median over
seeds of the chosen width), ``bits_per_seed``, ``met`` (False if even ``max_bits`` failed the
rule for some seed), ``decided_on`` (the key compared with the threshold) and the row
measurements at each seed's choice, pooled over seeds; ``rows``: for every width
:data:`ROW_METRICS` and the grid change and triple-junction count of both families
(:data:`FAMILY_ROW_METRICS`), each an estimate (``x``, ``x_std`` over seeds, ``x_se``,
``x_low``, ``x_high``, ``x_n``; per-seed rows add the per-plane ``x_values``).
"""

from __future__ import annotations

import statistics

import numpy as np

from bq_jax.report import plot_metric_vs_bits, plot_slice_values
from bq_jax.stats import mean_estimate, mean_rows, wilson_interval
from bq_jax.studies.config import StudyConfig
from bq_jax.studies.context import FAMILY_SPLITS, stable_key
from bq_jax.studies.paper import PAPER
from bq_jax.studies.protocol import Finding
from bq_jax.studies.reporting import compare_sentence, estimate_cell, estimate_text, table
from bq_jax.vocabulary import HIGH_SUFFIX, VALUES_SUFFIX

__all__ = [
    "FAMILY_ROW_METRICS",
    "ROW_METRICS",
    "RATES",
    "select_bits",
    "decision_field",
    "variant_rows",
    "variant_row",
    "aggregate_rows",
    "slice_values_figure",
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
#: Estimates of a row that are rates over examples (Wilson intervals, pooled as counts).
RATES = ("flip_rate",)
#: Root of the key that pools estimates over seeds (stable_key(AGGREGATE_SEED, study, ...)).
AGGREGATE_SEED = 0xA66

# Accuracies are ratios of counts; this absorbs float round-off in `drop <= epsilon`.
_ROUNDOFF = 1e-9


#: Slice metrics measured on the calibration and held-out families (each an estimate).
FAMILY_ROW_METRICS = tuple(
    f"{split}_{name}"
    for split in FAMILY_SPLITS
    for name in ("boundary_jaccard_distance", "grid_change", "triple_junction_count")
)


def _estimate(ctx, field: str, key, values) -> dict:
    """``field`` with its :class:`~bq_jax.stats.Estimate` keys (and ``field_values``) from
    per-unit ``values``; the bootstrap key depends only on (seed, field, variant)."""
    cfg = ctx.config
    est = mean_estimate(
        stable_key(ctx.seed, field, key),
        np.asarray(values, np.float32),
        n_resamples=cfg.bootstrap_resamples,
        level=cfg.confidence_level,
    )
    return est.to_dict(field)


def variant_rows(ctx, keys, variants) -> list[dict]:
    """Calibration and held-out measurements of quantized ``variants`` (memoised by ``keys``).

    Every slice metric is the mean over the split's slice family with its standard error and
    bootstrap interval over the planes (``x``, ``x_se``, ``x_low``, ``x_high``, ``x_n``) and its
    per-plane values (``x_values``); ``calibration_accuracy_drop`` carries a bootstrap interval
    over calibration examples (per-example ``[correct_F] - [correct_Q]``), ``flip_rate`` a
    Wilson interval over held-out examples.
    """
    cfg = ctx.config
    fam = {split: ctx.family_metrics(split, keys, variants) for split in FAMILY_SPLITS}
    y_cal = np.asarray(ctx.targets("calibration"))
    correct_f = ctx.predictions(ctx.float_params, "calibration", "float") == y_cal
    ref = ctx.predictions(ctx.float_params, "heldout", "float")
    rows = []
    for i, (key, params) in enumerate(zip(keys, variants, strict=True)):
        correct_q = ctx.predictions(params, "calibration", key) == y_cal
        drop = correct_f.astype(np.float32) - correct_q.astype(np.float32)
        row = _estimate(ctx, "calibration_accuracy_drop", key, drop)
        for split in FAMILY_SPLITS:
            for name, values in fam[split][i].items():
                field = f"{split}_{name}"
                row.update(_estimate(ctx, field, key, values))
                row[field + VALUES_SUFFIX] = [float(v) for v in values]
        flips = int(np.sum(ctx.predictions(params, "heldout", key) != ref))
        row["accuracy"] = ctx.accuracy(params, "heldout", key=key)
        row.update(
            wilson_interval(flips, ref.size, level=cfg.confidence_level).to_dict("flip_rate")
        )
        rows.append(row)
    return rows


def variant_row(ctx, key, params) -> dict:
    """:func:`variant_rows` of one variant."""
    return variant_rows(ctx, [key], [params])[0]


def decision_field(config, field: str) -> str:
    """The key a stopping rule compares with its threshold: ``field`` (``stopping_bound``
    ``"mean"``) or its upper confidence bound ``field_high`` (``"upper"``)."""
    return field + HIGH_SUFFIX if config.stopping_bound == "upper" else field


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
    return {
        "bits": bits,
        "met": met,
        "decided_on": field,
        **{k: row[k] for k in row if k != "bits"},
    }


def compute(config, seed, ctx, deps) -> tuple[dict, dict]:
    """One seed's stopping study: per-width rows and the choice of each rule."""
    keys = [("ptq", b) for b in config.bits]
    rows = [
        {"bits": b, **row}
        for b, row in zip(
            config.bits, variant_rows(ctx, keys, [ctx.ptq(b) for b in config.bits]), strict=True
        )
    ]
    result = {
        "model": ctx.model_name,
        "float_accuracy": ctx.float_accuracy,
        "float_calibration_accuracy": ctx.accuracy(ctx.float_params, "calibration", key="float"),
        "rows": rows,
        "accuracy_rule": _rule(
            rows, decision_field(config, "calibration_accuracy_drop"), config.accuracy_tolerance
        ),
        "boundary_rule": _rule(
            rows,
            decision_field(config, "calibration_boundary_jaccard_distance"),
            config.jaccard_threshold,
        ),
    }
    return result, {}


def aggregate_rows(config, per_seed_rows, keys, study: str) -> list[dict]:
    """:func:`bq_jax.stats.mean_rows` with the estimates pooled over seeds (stratified
    bootstrap over each seed's planes, Wilson intervals of pooled counts for :data:`RATES`)."""
    return mean_rows(
        per_seed_rows,
        keys,
        key=stable_key(AGGREGATE_SEED, study),
        rates=RATES,
        n_resamples=config.bootstrap_resamples,
        level=config.confidence_level,
    )


def _aggregate_rule(config, rules: list[dict], name: str) -> dict:
    out = {
        "bits": statistics.median_low([r["bits"] for r in rules]),
        "bits_per_seed": [r["bits"] for r in rules],
        "met": all(r["met"] for r in rules),
        "decided_on": rules[0]["decided_on"],
    }
    (pooled,) = aggregate_rows(
        config, [[{k: v for k, v in r.items() if k not in out}] for r in rules], (), name
    )
    out.update(pooled)
    return out


def aggregate(config, results: list[dict]) -> dict:
    return {
        "jaccard_threshold": config.jaccard_threshold,
        "accuracy_tolerance": config.accuracy_tolerance,
        "stopping_bound": config.stopping_bound,
        "accuracy_rule": _aggregate_rule(
            config, [r["accuracy_rule"] for r in results], "stopping/accuracy_rule"
        ),
        "boundary_rule": _aggregate_rule(
            config, [r["boundary_rule"] for r in results], "stopping/boundary_rule"
        ),
        "rows": aggregate_rows(config, [r["rows"] for r in results], ("bits",), NAME),
    }


def findings(config, results: dict) -> list[Finding]:
    """The boundary rule keeps a wider width, with fewer flips and a lower held-out Jaccard."""
    a, b = results["accuracy_rule"], results["boundary_rule"]
    jac = "heldout_boundary_jaccard_distance"
    return [
        Finding(
            "the boundary rule keeps a wider width than the accuracy rule, with fewer "
            "held-out flips and a lower held-out boundary Jaccard distance",
            b["bits"] > a["bits"] and b["flip_rate"] <= a["flip_rate"] and b[jac] < a[jac],
            f"accuracy rule {a['bits']} bits (flip {estimate_text(a, 'flip_rate')}, Jaccard "
            f"distance {estimate_text(a, jac)}); boundary rule {b['bits']} bits (flip "
            f"{estimate_text(b, 'flip_rate')}, Jaccard distance {estimate_text(b, jac)}); "
            f"{config.confidence_level:g} intervals",
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
    return {"stopping.png": fig, "stopping_slices.png": slice_values_figure(config, first_result)}


def slice_values_figure(config, seed_result: dict, label=lambda r: f"{r['bits']}b"):
    """Per-plane calibration and held-out boundary Jaccard distance of every row of one seed's
    result (rows with ``x_values``), each column's mean and interval; dashed: tau_J."""
    rows = seed_result["rows"]
    jac = "boundary_jaccard_distance"
    series, intervals = {}, {}
    for split in FAMILY_SPLITS:
        field = f"{split}_{jac}"
        series[split] = [r[field + VALUES_SUFFIX] for r in rows]
        intervals[split] = [(r.get(field + "_low"), r.get(field + "_high")) for r in rows]
    return plot_slice_values(
        [label(r) for r in rows],
        series,
        intervals=intervals,
        ylabel=jac,
        threshold=config.jaccard_threshold,
        title=(
            f"{config.dataset}, seed {config.seeds[0]}: {config.slice_count} "
            f"{config.slice_family} planes per split, bar = mean, line = "
            f"{config.confidence_level:g} interval"
        ),
    )


def report_section(sec, config, results: dict, figure_paths: dict) -> None:
    """The two rules' choices with the paper's values, every width, and the figure."""
    bound = results.get("stopping_bound", "mean")
    compared = (
        f"the upper end of its {config.confidence_level:g} confidence interval"
        if bound == "upper"
        else "its mean"
    )
    sec.text(
        f"Walking down from {config.max_bits} bits, the accuracy rule keeps the last width whose "
        f"calibration accuracy drop is <= epsilon = {results['accuracy_tolerance']:g}; the "
        "boundary rule the last width whose calibration boundary Jaccard distance is <= tau_J = "
        f"{results['jaccard_threshold']:g}; each compares {compared} with its threshold. The "
        f"calibration boundary Jaccard distance is the mean over {config.slice_count} "
        f"{config.slice_family!r} planes drawn from the calibration inputs; the held-out one "
        f"over {config.slice_count} planes drawn from the held-out inputs "
        f"({config.family_resolution}x{config.family_resolution} grids). Cells: mean [interval] "
        f"({config.confidence_level:g}: bootstrap over planes, or over calibration examples for "
        "the accuracy drop; Wilson for the flip rate), pooled over seeds."
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
                "flip_rate": estimate_cell(r, "flip_rate"),
                "paper flip": p.get("flip_rate"),
                "heldout_boundary_jaccard_distance": estimate_cell(
                    r, "heldout_boundary_jaccard_distance"
                ),
                "paper Jaccard": p.get("heldout_boundary_jaccard_distance"),
                "accuracy": estimate_cell(r, "accuracy"),
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
            {"bits": r["bits"], **{k: estimate_cell(r, k) for k in ROW_METRICS}}
            for r in results["rows"]
        ],
        ["bits", *ROW_METRICS],
    )
    captions = {
        "stopping.png": "Calibration (deciding) and held-out (judging) measurements per width; "
        "dashed: epsilon and tau_J.",
        "stopping_slices.png": "Boundary Jaccard distance on each plane of the first seed's "
        "calibration and held-out families, per width; bar: mean, line: interval over planes; "
        "dashed: tau_J.",
    }
    for name, path in figure_paths.items():
        sec.figure(path, captions.get(name, name))
