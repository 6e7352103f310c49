"""Interpolation between adjacent quantization levels: label changes sit at multiclass junctions.

Claim (paper, digits): "Interpolation between adjacent quantization levels localized the
visible reconfigurations at multiclass junctions, with 12, 34, and 17 triple-junction cells in
the selected transitions."

For each pair of adjacent widths b -> b-1 the per-channel scale of every kernel moves linearly
from the b-bit to the (b-1)-bit min-max scale,

    s(t) = (1 - t) * s_b + t * s_{b-1},   W(t) = s(t) * clip(round(W / s(t)), -2^(b-1), 2^(b-1)-1),

for t on ``interpolation_steps`` equally spaced values in [0, 1]. W(0) is the b-bit PTQ-W
quantizer and W(1) the (b-1)-bit one (|W| / s_{b-1} <= 2^(b-2) - 1, so the b-bit clip range is
never reached). Between consecutive t the label map on the training PCA slice is compared:

* changed cells C: grid points whose label differs between the two maps;
* junction points J: the four corners of every triple-junction 2 x 2 block (>= 3 distinct
  labels, :func:`bq_jax.geometry.triple_junctions`) of either map;
* near-junction points N: J dilated by one cell in the 8-neighbourhood (Chebyshev distance
  <= 1), i.e. "at or next to a junction";
* ``changed_cells_at_junctions`` = sum over steps of |C ∩ N|;
* ``junction_enrichment`` = sum |C ∩ N| / sum (|C| * |N| / R^2): the observed count over the
  count expected if the changed cells of each step fell uniformly on the grid. > 1 means changes
  concentrate at junctions; ``None`` when nothing changed or there is no junction.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from bq_jax.stats import mean_rows
from bq_jax.studies.context import weight_config

__all__ = [
    "interpolation",
    "interpolated_weights",
    "junction_points",
    "near_junctions",
    "transition_stats",
    "compute",
    "aggregate",
    "DEPENDS",
]

DEPENDS: tuple[str, ...] = ()


def _is_weight(path: str) -> bool:
    return path.split("/")[0] == "params" and path.endswith("/kernel")


@functools.partial(jax.jit, static_argnames=("bits",))
def interpolated_weights(params, t, *, bits: int):
    """Variables whose kernels use the scale interpolated from ``bits`` to ``bits - 1`` bits.

    Args:
        params: float flax variables dict.
        t: scalar in [0, 1]; 0 gives the ``bits``-bit PTQ-W weights, 1 the ``bits - 1``-bit ones.
        bits: the wider of the two widths (>= 3, so that ``bits - 1`` >= 2).

    Returns:
        Variables of the same structure with every ``params/.../kernel`` fake-quantized at the
        interpolated per-channel scale ``s(t) = (1 - t) s_b + t s_{b-1}``.

    Example:
        >>> v = {"params": {"Dense_0": {"kernel": jnp.ones((2, 3))}}}
        >>> interpolated_weights(v, 0.5, bits=4)["params"]["Dense_0"]["kernel"].shape
        (2, 3)
    """
    from bq_jax import quant
    from bq_jax.ptq import flatten_params, replace_leaves

    if bits < 3:
        raise ValueError(f"bits must be >= 3 so that bits - 1 >= 2, got {bits}")
    updates = {}
    for path, w in flatten_params(params).items():
        if not _is_weight(path):
            continue
        hi = quant.compute_qparams(w, weight_config(bits))
        lo = quant.compute_qparams(w, weight_config(bits - 1))
        scale = (1.0 - t) * hi.scale + t * lo.scale
        updates[path] = quant.int_fake_quant(
            w, scale, hi.zero_point, qmin=hi.qmin, qmax=hi.qmax, rounding="nearest"
        )
    return replace_leaves(params, updates)


def junction_points(labels) -> np.ndarray:
    """bool[..., R, R]: grid points that are a corner of a triple-junction 2 x 2 block."""
    from bq_jax import geometry

    tj = np.asarray(geometry.triple_junctions(jnp.asarray(labels)))
    pts = np.zeros(tj.shape[:-2] + (tj.shape[-2] + 1, tj.shape[-1] + 1), bool)
    pts[..., :-1, :-1] |= tj
    pts[..., 1:, :-1] |= tj
    pts[..., :-1, 1:] |= tj
    pts[..., 1:, 1:] |= tj
    return pts


def near_junctions(points: np.ndarray) -> np.ndarray:
    """``points`` dilated by one cell in the 8-neighbourhood (Chebyshev distance <= 1)."""
    p = np.pad(points, [(0, 0)] * (points.ndim - 2) + [(1, 1), (1, 1)])
    r, c = points.shape[-2:]
    out = np.zeros_like(points)
    for di in range(3):
        for dj in range(3):
            out |= p[..., di : di + r, dj : dj + c]
    return out


def transition_stats(maps: np.ndarray) -> dict:
    """Counts for a sequence of label maps ``int[T, R, R]`` along t (see module docstring).

    Example:
        >>> m = np.zeros((2, 4, 4), np.int32); m[1, 0, 0] = 1
        >>> transition_stats(m)["changed_cells"]
        1
    """
    maps = np.asarray(maps)
    n_cells = maps.shape[-1] * maps.shape[-2]
    near = near_junctions(junction_points(maps))
    changed = maps[1:] != maps[:-1]  # [T-1, R, R]
    near_step = near[1:] | near[:-1]
    per_step = changed.sum(axis=(1, 2))
    at_junctions = (changed & near_step).sum(axis=(1, 2))
    expected = float(np.sum(per_step * near_step.sum(axis=(1, 2))) / n_cells)
    observed = int(at_junctions.sum())
    return {
        "changed_cells": int(per_step.sum()),
        "changed_cells_at_junctions": observed,
        "junction_enrichment": observed / expected if expected > 0 else None,
        "expected_at_junctions": expected,
        "steps_with_changes": int(np.count_nonzero(per_step)),
        "changed_cells_per_step": [int(v) for v in per_step],
        "triple_junctions_from": _tj(maps[0]),
        "triple_junctions_to": _tj(maps[-1]),
        "change_count": changed.sum(axis=0),
        "near_any": near.any(axis=0),
    }


def _tj(labels) -> int:
    from bq_jax import geometry

    return int(np.sum(np.asarray(geometry.triple_junctions(jnp.asarray(labels)))))


def compute(config, seed, ctx, deps) -> tuple[dict, dict]:
    """One seed's interpolation study over every adjacent pair of widths."""
    ts = np.linspace(0.0, 1.0, config.interpolation_steps)
    pairs = [(b, b - 1) for b in config.bits[:-1]]
    rows, change_maps, near_maps, first_maps = [], [], [], []
    bar = tqdm(
        total=len(pairs) * len(ts),
        desc=f"interpolation seed {seed}",
        leave=False,
        disable=not config.progress,
    )
    for hi, lo in pairs:
        maps = []
        for t in ts:
            params = interpolated_weights(ctx.float_params, jnp.float32(t), bits=hi)
            maps.append(ctx.sweep("train", params))
            bar.update()
        stats = transition_stats(np.stack(maps))
        first_maps.append(maps[0])
        change_maps.append(stats.pop("change_count"))
        near_maps.append(stats.pop("near_any"))
        rows.append({"from_bits": hi, "to_bits": lo, **stats})
    bar.close()
    result = {
        "model": ctx.model_name,
        "float_accuracy": ctx.float_accuracy,
        "t": [float(t) for t in ts],
        "rows": rows,
    }
    arrays = {
        "from_bits": np.asarray([p[0] for p in pairs], np.int32),
        "change_count": np.stack(change_maps).astype(np.int16),
        "near_junctions": np.stack(near_maps),
        "labels_from": np.stack(first_maps).astype(np.int16),
        "extent": ctx.extent("train"),
        "num_classes": np.asarray(ctx.data.num_classes, np.int32),
    }
    return result, arrays


def aggregate(config, results: list[dict]) -> dict:
    rows = mean_rows([r["rows"] for r in results], ("from_bits", "to_bits"))
    return {"rows": rows, "steps": config.interpolation_steps}


def interpolation(config) -> dict:
    """Run the interpolation study over ``config.seeds`` in memory and return its aggregate."""
    from bq_jax.studies.runner import run_study

    return run_study(config, "interpolation")
