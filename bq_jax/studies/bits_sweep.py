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

Shape of the decision regions (:mod:`bq_jax.geometry.regions`), float vs quantized: the
fragmentation of both slice maps (8-connected regions; regions beyond one per class present) and
the label changes along ``segment_pairs`` segments between held-out inputs (the same pairs for
every width, drawn with a key from the training seed; ``DEFAULT_SEGMENT_POINTS`` points each),
with the class skips (changes beyond a direct path's) and the fraction of pairs whose count of
label changes differs from the float model's.

results.json block: ``rows``, one per width (widest first) with ``bits``, ``accuracy``,
``accuracy_drop``, :data:`METRICS` and :data:`SHAPE_METRICS` (names as in
:mod:`bq_jax.vocabulary`), plus ``band_size``, ``zero_gradient_count`` and
``margin_radius_median``; a local metric is None when no band point has a usable gradient.
``float_triple_junction_count``: junction cells of the float map; ``segment_pairs`` and
``segment_points``: the segments behind the class skips.
"""

from __future__ import annotations

import jax
import numpy as np

from bq_jax import geometry
from bq_jax.ptq import stack_params
from bq_jax.report import plot_boundary_maps, plot_metric_vs_bits
from bq_jax.stats import mean_rows, mean_std
from bq_jax.studies.config import StudyConfig, StudyError
from bq_jax.studies.paper import PAPER
from bq_jax.studies.protocol import Finding
from bq_jax.studies.reporting import compare_sentence, mean_std_cell, table

__all__ = [
    "compute",
    "aggregate",
    "findings",
    "figures",
    "report_section",
    "METRICS",
    "SHAPE_METRICS",
    "segment_pairs",
]

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

#: Per-width decision-region shape metrics of a row (float vs quantized), see the module
#: docstring.
SHAPE_METRICS = (
    "region_count",
    "float_region_count",
    "excess_fragments",
    "float_excess_fragments",
    "label_changes",
    "float_label_changes",
    "class_skips",
    "float_class_skips",
    "label_change_delta",
    "label_changes_differ",
)

# Tag folded into the training seed's key to draw the segment pairs.
_PAIR_TAG = 0x5E6


def segment_pairs(ctx, count: int):
    """``(x0, x1)``: ``count`` pairs of distinct held-out inputs, drawn with a key from the seed.

    Pair ``p`` is ``(x[i_p], x[j_p])`` with ``i_p`` uniform over the N held-out inputs and
    ``j_p = (i_p + 1 + u_p) mod N``, ``u_p`` uniform over ``0 .. N - 2`` (so ``j_p != i_p``);
    pairs are drawn independently (a pair may repeat). The key is
    ``fold_in(key(seed), 0x5E6)``: the same seed gives the same pairs at every width.
    """
    x = np.asarray(ctx.inputs("heldout"))
    n = x.shape[0]
    if n < 2:
        raise StudyError(f"the class-skip segments need >= 2 held-out inputs, got {n}")
    k1, k2 = jax.random.split(jax.random.fold_in(jax.random.key(ctx.seed), _PAIR_TAG))
    i = np.asarray(jax.random.randint(k1, (count,), 0, n))
    j = (i + 1 + np.asarray(jax.random.randint(k2, (count,), 0, n - 1))) % n
    return x[i], x[j]


def _compare(ctx, variants, pairs=None):
    return geometry.compare(
        ctx.apply_fn,
        ctx.float_params,
        stack_params(variants),
        ctx.slice("train"),
        ctx.inputs("heldout"),
        ctx.inputs("calibration"),
        band_quantile=ctx.config.band_quantile,
        return_maps=True,
        segment_pairs=pairs,
    )


def metric_rows(ctx, variants, keys, *, pairs=None) -> list[dict]:
    """Rows of accuracy and :data:`METRICS` for quantized ``variants`` (memoised by ``keys``).

    A metric that is undefined for a variant (e.g. ``median_local_shift`` when every band
    point has a zero margin gradient) is ``None``; ``zero_gradient`` counts those points.
    With ``pairs`` (``(x0, x1)``, see :func:`segment_pairs`) the rows also carry
    :data:`SHAPE_METRICS`.
    """
    result = _compare(ctx, variants, pairs)
    ctx.remember_labels("train", "float", result["labels_float"])
    for key, labels in zip(keys, result["labels"], strict=True):
        ctx.remember_labels("train", key, labels)
    records = geometry.compare_records(result)
    rows = []
    for key, params, rec in zip(keys, variants, records, strict=True):
        acc = ctx.accuracy(params, "heldout", key=key)
        row = {"accuracy": acc, "accuracy_drop": ctx.float_accuracy - acc}
        row.update({name: rec[name] for name in METRICS})
        if pairs is not None:
            row.update({name: rec[name] for name in SHAPE_METRICS})
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
    pairs = segment_pairs(ctx, config.segment_pairs)
    measured = metric_rows(ctx, variants, [("ptq", b) for b in bits], pairs=pairs)
    rows = [{"bits": b, **row} for b, row in zip(bits, measured, strict=True)]
    float_labels = ctx.float_labels("train")
    maps = np.stack(
        [ctx.labels("train", ("ptq", b), v) for b, v in zip(bits, variants, strict=True)]
    )
    result = {
        "model": ctx.model_name,
        "float_accuracy": ctx.float_accuracy,
        "float_triple_junction_count": int(geometry.triple_junction_count(float_labels)),
        "segment_pairs": config.segment_pairs,
        "segment_points": geometry.DEFAULT_SEGMENT_POINTS,
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
        "segment_pairs": config.segment_pairs,
        "segment_points": geometry.DEFAULT_SEGMENT_POINTS,
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
    if any("region_count" in r for r in results["rows"]):
        figs["shape_vs_bits.png"] = plot_metric_vs_bits(
            results["rows"],
            metric=["excess_fragments", "label_changes", "class_skips", "label_changes_differ"],
            title=f"{config.dataset}: decision-region shape vs bits",
        )
    return figs


COLUMNS = ("bits", "accuracy") + METRICS
#: Columns of the region-shape table.
SHAPE_COLUMNS = (
    "bits",
    "region_count",
    "float_region_count",
    "excess_fragments",
    "float_excess_fragments",
    "label_changes",
    "float_label_changes",
    "class_skips",
    "label_change_delta",
    "label_changes_differ",
)

CAPTIONS = {
    "boundary_maps.png": "Label maps on the training PCA slice: float vs PTQ-W; boundary cells of "
    "float only (blue), quantized only (vermillion), both (black); yellow dots: triple junctions.",
    "metrics_vs_bits.png": "Accuracy, flip rate, boundary Jaccard distance and grid change vs "
    "bits (stars: the paper's values).",
    "geometry_vs_bits.png": "Boundary-band flips, pair-order flips, median local shift, normal "
    "variation and junction count vs bits.",
    "shape_vs_bits.png": "Excess fragments of the quantized slice map, label changes and class "
    "skips along the held-out segments, and the fraction of segments whose label-change count "
    "differs from the float model's, vs bits.",
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
    if any("region_count" in r for r in results["rows"]):
        sec.text(
            "Decision-region shape, float vs quantized. Regions: maximal 8-connected sets of "
            "slice grid points of one class (diagonal contact connects); excess_fragments = "
            "regions - classes present. Along "
            f"{results['segment_pairs']} segments between pairs of held-out inputs (the same "
            f"pairs at every width, {results['segment_points']} points each): label changes, "
            "class skips = label changes beyond the one a direct path needs (none when both "
            "ends share a label), the per-pair change in label changes, and the fraction of "
            "pairs whose count differs from the float model's."
        )
        shape_rows = [
            {"bits": r["bits"], **{k: mean_std_cell(r, k) for k in SHAPE_COLUMNS[1:]}}
            for r in results["rows"]
        ]
        table(sec, shape_rows, list(SHAPE_COLUMNS))
    for name, path in figure_paths.items():
        sec.figure(path, CAPTIONS[name])
