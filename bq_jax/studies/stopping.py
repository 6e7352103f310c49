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

Each choice is then judged on the held-out split: ``heldout_flip_rate`` (fraction of held-out
inputs whose predicted label differs from the float model's) and ``heldout_boundary_jaccard``
(the same Jaccard distance on the PCA slice of the held-out inputs).
"""

from __future__ import annotations

import statistics

import jax.numpy as jnp
import numpy as np

from bq_jax.stats import mean_rows, mean_std

__all__ = ["stopping", "select_bits", "split_jaccard", "compute", "aggregate", "DEPENDS"]

DEPENDS: tuple[str, ...] = ()

# Accuracies are ratios of counts; this absorbs float round-off in `drop <= epsilon`.
_ROUNDOFF = 1e-9


def split_jaccard(ctx, kind: str, key, params) -> float:
    """Boundary Jaccard distance between float and ``params`` on the PCA slice ``kind``."""
    from bq_jax import geometry

    mf = geometry.boundary_mask(jnp.asarray(ctx.float_labels(kind)))
    mq = geometry.boundary_mask(jnp.asarray(ctx.labels(kind, key, params)))
    return float(geometry.boundary_jaccard(mf, mq))


def variant_row(ctx, key, params) -> dict:
    """Calibration and held-out measurements of one quantized variant."""
    cal_drop = ctx.accuracy(ctx.float_params, "calibration", key="float") - ctx.accuracy(
        params, "calibration", key=key
    )
    return {
        "calibration_accuracy_drop": cal_drop,
        "calibration_boundary_jaccard": split_jaccard(ctx, "calibration", key, params),
        "heldout_accuracy": ctx.accuracy(params, "heldout", key=key),
        "heldout_flip_rate": ctx.flip_rate(params, "heldout", key=key),
        "heldout_boundary_jaccard": split_jaccard(ctx, "heldout", key, params),
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
    keep = (
        "calibration_accuracy_drop",
        "calibration_boundary_jaccard",
        "heldout_accuracy",
        "heldout_flip_rate",
        "heldout_boundary_jaccard",
    )
    return {"bits": bits, "met": met, **{k: row[k] for k in keep}}


def compute(config, seed, ctx, deps) -> tuple[dict, dict]:
    """One seed's stopping study: per-width rows and the choice of each rule."""
    rows = [{"bits": b, **variant_row(ctx, ("ptq", b), ctx.ptq(b))} for b in config.bits]
    result = {
        "model": ctx.model_name,
        "float_accuracy": ctx.float_accuracy,
        "float_calibration_accuracy": ctx.accuracy(ctx.float_params, "calibration", key="float"),
        "rows": rows,
        "accuracy_rule": _rule(rows, "calibration_accuracy_drop", config.accuracy_tolerance),
        "boundary_rule": _rule(rows, "calibration_boundary_jaccard", config.jaccard_threshold),
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


def stopping(config) -> dict:
    """Run the stopping study over ``config.seeds`` in memory and return its aggregate."""
    from bq_jax.studies.runner import run_study

    return run_study(config, "stopping")
