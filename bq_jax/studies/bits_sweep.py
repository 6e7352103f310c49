"""PTQ-W bit sweep: accuracy barely moves while the decision boundaries do.

Claim (paper, digits): "8-bit weight quantization preserved all test labels while producing
boundary-mask Jaccard 0.428 on the PCA slice; at 4 bits, accuracy remained 0.9733, while
boundary Jaccard rose to 0.970 and median local boundary shift reached 0.0290."

For every width b from ``max_bits`` down to ``min_bits`` the weights (every ``kernel``; biases
and batch-norm statistics stay float) are quantized per output channel, symmetric, min-max,
round to nearest (:func:`bq_jax.studies.context.weight_config`), and
:func:`bq_jax.geometry.compare` measures the float/quantized pair on the PCA slice of the
training inputs at ``resolution``, on the held-out inputs, and on the low-margin band (held-out
points with float |margin| below the ``band_quantile`` quantile of calibration margins).

results.json block: ``rows``, one per width (widest first) with ``bits``, ``accuracy``,
``accuracy_drop`` and :data:`METRICS` (names as in :mod:`bq_jax.vocabulary`), plus ``band_size``,
``zero_gradient_count`` and ``margin_radius_median``; a local metric is None when no band point
has a usable gradient. ``float_triple_junction_count``: junction cells of the float map.
"""

from __future__ import annotations

import numpy as np

from bq_jax import geometry
from bq_jax.ptq import stack_params
from bq_jax.report import plot_boundary_maps, plot_metric_vs_bits
from bq_jax.stats import mean_rows, mean_std
from bq_jax.studies.config import StudyConfig
from bq_jax.studies.paper import PAPER
from bq_jax.studies.protocol import Finding
from bq_jax.studies.reporting import compare_sentence, mean_std_cell, table

__all__ = ["compute", "aggregate", "findings", "figures", "report_section", "METRICS"]

NAME = "bits_sweep"
TITLE = "PTQ-W bit sweep"
CONFIG = StudyConfig
DEPENDS: tuple[str, ...] = ()

#: Per-width metrics of a row, besides ``bits``, ``accuracy`` and ``accuracy_drop``.
METRICS = (
    "flip_rate",
    "boundary_jaccard_distance",
    "grid_change",
    "median_local_shift",
    "triple_junction_count",
    "band_flip_rate",
    "pair_order_flip",
    "normal_variation",
)


def _compare(ctx, variants):
    return geometry.compare(
        ctx.apply_fn,
        ctx.float_params,
        stack_params(variants),
        ctx.slice("train"),
        ctx.inputs("heldout"),
        ctx.inputs("calibration"),
        band_quantile=ctx.config.band_quantile,
        return_maps=True,
    )


def metric_rows(ctx, variants, keys) -> list[dict]:
    """Rows of accuracy and :data:`METRICS` for quantized ``variants`` (memoised by ``keys``).

    A metric that is undefined for a variant (e.g. ``median_local_shift`` when every band
    point has a zero margin gradient) is ``None``; ``zero_gradient`` counts those points.
    """
    result = _compare(ctx, variants)
    ctx.remember_labels("train", "float", result["labels_float"])
    for key, labels in zip(keys, result["labels"], strict=True):
        ctx.remember_labels("train", key, labels)
    records = geometry.compare_records(result)
    rows = []
    for key, params, rec in zip(keys, variants, records, strict=True):
        acc = ctx.accuracy(params, "heldout", key=key)
        row = {"accuracy": acc, "accuracy_drop": ctx.float_accuracy - acc}
        row.update({name: rec[name] for name in METRICS})
        row.update(
            {
                k: rec[k]
                for k in ("band_size", "zero_gradient_count", "margin_radius_median")
                if k in rec
            }
        )
        rows.append(row)
    return rows


def compute(config, seed, ctx, deps) -> tuple[dict, dict]:
    """One seed's bit sweep: ``({"rows": [...], ...}, arrays for the figures)``."""
    bits = config.bits
    variants = [ctx.ptq(b) for b in bits]
    rows = [
        {"bits": b, **row}
        for b, row in zip(bits, metric_rows(ctx, variants, [("ptq", b) for b in bits]), strict=True)
    ]
    float_labels = ctx.float_labels("train")
    maps = np.stack(
        [ctx.labels("train", ("ptq", b), v) for b, v in zip(bits, variants, strict=True)]
    )
    result = {
        "model": ctx.model_name,
        "float_accuracy": ctx.float_accuracy,
        "float_triple_junction_count": int(geometry.triple_junction_count(float_labels)),
        "rows": rows,
    }
    arrays = {
        "bits": np.asarray(bits, np.int32),
        "float_labels": float_labels.astype(np.int16),
        "labels": maps.astype(np.int16),
        "extent": ctx.extent("train"),
        "num_classes": np.asarray(ctx.data.num_classes, np.int32),
    }
    return result, arrays


def aggregate(config, results: list[dict]) -> dict:
    """Mean and spread over seeds (see :mod:`bq_jax.vocabulary`)."""
    mean, std = mean_std([r["float_triple_junction_count"] for r in results])
    return {
        "rows": mean_rows([r["rows"] for r in results], ("bits",)),
        "float_triple_junction_count": mean,
        "float_triple_junction_count_std": std,
    }


def findings(config, results: dict) -> list[Finding]:
    """The widest width keeps the labels while the boundary moves; Jaccard grows as bits fall."""
    rows = {r["bits"]: r for r in results["rows"]}
    top = max(rows)
    r = rows[top]
    bits = sorted(rows, reverse=True)
    jac = [rows[b]["boundary_jaccard_distance"] for b in bits]
    increases = sum(b2 >= b1 for b1, b2 in zip(jac, jac[1:], strict=False))
    return [
        Finding(
            f"{top}-bit PTQ-W keeps (almost) every held-out label while the boundary moves",
            r["flip_rate"] <= 0.005 and r["boundary_jaccard_distance"] > 0.0,
            f"flip_rate {r['flip_rate']:.4f}, boundary_jaccard_distance "
            f"{r['boundary_jaccard_distance']:.3f}",
        ),
        Finding(
            "boundary Jaccard distance grows as bits fall",
            jac[-1] > jac[0] and increases >= len(jac) - 2,
            "boundary_jaccard_distance from "
            + " > ".join(f"{b}b {rows[b]['boundary_jaccard_distance']:.3f}" for b in bits)
            + f" ({increases} of {len(jac) - 1} steps non-decreasing)",
        ),
    ]


def figures(config, results: dict, first_result: dict, arrays: dict | None) -> dict:
    """Boundary maps of the first seed; metrics and local geometry vs bits."""
    paper = PAPER.get(config.dataset, {})
    figs = {}
    if arrays is not None:
        bits = [int(b) for b in arrays["bits"]]
        show = [b for b in (8, 6, 4, 3, 2) if b in bits] or bits[:4]
        idx = [bits.index(b) for b in show]
        fig = plot_boundary_maps(
            arrays["float_labels"].astype(np.int32),
            arrays["labels"][idx].astype(np.int32),
            extent=tuple(float(v) for v in arrays["extent"]),
            num_classes=int(arrays["num_classes"]),
            titles=["float"] + [f"PTQ-W {b}-bit" for b in show],
            axis_labels=("PC 1", "PC 2"),
        )
        fig.suptitle(
            f"{config.dataset}: training PCA slice, {config.resolution}x{config.resolution}, "
            f"seed {config.seeds[0]}"
        )
        figs["boundary_maps.png"] = fig
    figs["metrics_vs_bits.png"] = plot_metric_vs_bits(
        results["rows"],
        metric=["accuracy", "flip_rate", "boundary_jaccard_distance", "grid_change"],
        paper=paper.get("bits_sweep"),
        title=f"{config.dataset}: PTQ-W bit sweep (mean ± std over {len(config.seeds)} seeds)",
    )
    figs["geometry_vs_bits.png"] = plot_metric_vs_bits(
        results["rows"],
        metric=[
            "band_flip_rate",
            "pair_order_flip",
            "median_local_shift",
            "normal_variation",
            "triple_junction_count",
        ],
        paper=paper.get("bits_sweep"),
        title=f"{config.dataset}: boundary-band and local geometry vs bits",
    )
    return figs


COLUMNS = ("bits", "accuracy") + METRICS

CAPTIONS = {
    "boundary_maps.png": "Label maps on the training PCA slice: float vs PTQ-W; boundary cells of "
    "float only (blue), quantized only (vermillion), both (black); yellow dots: triple junctions.",
    "metrics_vs_bits.png": "Accuracy, flip rate, boundary Jaccard distance and grid change vs "
    "bits (stars: the paper's values).",
    "geometry_vs_bits.png": "Boundary-band flips, pair-order flips, median local shift, normal "
    "variation and junction count vs bits.",
}


def report_section(sec, config, results: dict, figure_paths: dict) -> None:
    """The bit-sweep table, the paper's values beside ours, and the figures."""
    sec.text(
        "Weights quantized per output channel, symmetric, min-max range, round to nearest; "
        f"metrics on the training PCA slice ({config.resolution}x{config.resolution}), the "
        "held-out split and its low-margin band "
        f"(|float margin| below the {config.band_quantile:g} quantile of calibration margins). "
        f"Float slice map: {results['float_triple_junction_count']:.1f} triple-junction cells."
    )
    rows = [
        {"bits": r["bits"], **{k: mean_std_cell(r, k) for k in COLUMNS[1:]}}
        for r in results["rows"]
    ]
    table(sec, rows, list(COLUMNS))
    ref = PAPER.get(config.dataset, {}).get("bits_sweep")
    if ref:
        ours = {r["bits"]: r for r in results["rows"]}
        lines = []
        for b, vals in ref.items():
            if b not in ours:
                lines.append(f"{b}-bit: not in this sweep.")
                continue
            for m, pv in vals.items():
                fmt = ".3f" if m == "boundary_jaccard_distance" else ".4f"
                lines.append(f"{b}-bit " + compare_sentence(m, ours[b].get(m), pv, fmt))
        sec.text("Against the paper:")
        sec.bullets(lines)
    for name, path in figure_paths.items():
        sec.figure(path, CAPTIONS[name])
