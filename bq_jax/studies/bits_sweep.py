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
"""

from __future__ import annotations

import numpy as np

from bq_jax.ptq import stack_params
from bq_jax.stats import mean_rows, mean_std

__all__ = ["bits_sweep", "compute", "aggregate", "METRICS", "DEPENDS"]

DEPENDS: tuple[str, ...] = ()

#: Per-width metrics of a row, besides ``bits``, ``accuracy`` and ``accuracy_drop``.
METRICS = (
    "flip_rate",
    "boundary_jaccard",
    "grid_change",
    "median_local_shift",
    "triple_junctions",
    "band_flip_rate",
    "pair_order_flip",
    "normal_variation",
)


def _compare(ctx, variants):
    from bq_jax import geometry

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
    from bq_jax import geometry

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
            {k: rec[k] for k in ("band_size", "zero_gradient", "margin_radius_median") if k in rec}
        )
        rows.append(row)
    return rows


def compute(config, seed, ctx, deps) -> tuple[dict, dict]:
    """One seed's bit sweep: ``({"rows": [...], ...}, arrays for the figures)``."""
    from bq_jax import geometry

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
        "float_triple_junctions": int(np.sum(np.asarray(geometry.triple_junctions(float_labels)))),
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
    """Mean and spread over seeds (see :mod:`bq_jax.studies.aggregate`)."""
    mean, std = mean_std([r["float_triple_junctions"] for r in results])
    return {
        "rows": mean_rows([r["rows"] for r in results], ("bits",)),
        "float_triple_junctions": mean,
        "float_triple_junctions_std": std,
    }


def bits_sweep(config) -> dict:
    """Run the bit sweep over ``config.seeds`` in memory and return its aggregate.

    Example:
        >>> from bq_jax.studies import StudyConfig, bits_sweep
        >>> res = bits_sweep(StudyConfig(dataset="digits", seeds=(0,)))  # doctest: +SKIP
        >>> [r["bits"] for r in res["rows"]]  # doctest: +SKIP
        [8, 7, 6, 5, 4, 3, 2]
    """
    from bq_jax.studies.runner import run_study

    return run_study(config, "bits_sweep")
