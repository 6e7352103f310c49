"""Per-layer boundary sensitivity and a greedy mixed-precision allocation judged on held-out data.

On the trained float classifier of each seed (the digits MLP by default: three weight layers,
``Dense_0`` 64x64, ``Dense_1`` 64x64, ``Dense_2`` 64x10), every kernel quantized by the studies'
PTQ-W quantizer (:func:`bq_jax.studies.context.weight_config`: signed symmetric, per output
channel, min-max, round to nearest; biases and activations float):

1. **Per-layer sensitivity** (:func:`bq_jax.ptq.layer_sensitivity`) at each width of
   ``layer_bits``: only this layer quantized (``scope="only"``), all but this layer
   (``"all_but"``) and every layer (``"all"``), measured on HELD-OUT data: held-out accuracy,
   flip rate, band flip rate and pair-order flip (band: held-out points with float |margin|
   below the ``band_quantile`` quantile of calibration margins), weight SQNR, and the slice
   metrics on the held-out planes (``heldout_`` prefix), mean and interval over the planes.
2. **Mixed precision** (:func:`bq_jax.ptq.allocate_bits`): for every average budget of
   ``budgets`` (bits per weight, weighted by parameter count), per-layer widths from
   ``candidate_bits`` chosen greedily to minimise the CALIBRATION boundary Jaccard distance
   (mean over the calibration planes). The allocation and the uniform width with the same
   average bits are then judged on HELD-OUT data: accuracy, flip rate, band flip rate, held-out
   boundary Jaccard distance on the held-out planes. The calibration split chooses, the
   held-out split judges; nothing is tuned on held-out data. For a small network (at most
   ``MAX_EXHAUSTIVE`` width assignments; the digits MLP has 6^3 = 216) the exhaustive minimiser
   of the same calibration score within the budget is judged too: it separates a weak search
   from a calibration criterion that does not carry over to held-out data.

Planes: per split a slice family (:func:`bq_jax.geometry.slice_family` of kind
``slice_family``, ``slice_count`` planes, ``family_resolution`` grids; the families of
:meth:`bq_jax.studies.context.SeedContext.family`, shared with the paper's studies): calibration
planes come from calibration inputs only and choose the allocation; held-out planes come from
held-out inputs only and judge.

Estimates (:mod:`bq_jax.stats`, keys ``x``, ``x_se``, ``x_low``, ``x_high``, ``x_n`` at
``confidence_level``): a rate over held-out examples carries the Wilson interval; a slice metric
is the mean over the family's planes with the percentile bootstrap interval over the planes
(``bootstrap_resamples``) and its per-plane values ``x_values``. Over seeds
(:func:`bq_jax.stats.mean_rows`) slice metrics are pooled by the bootstrap over each seed's
planes and rates by the Wilson interval of the pooled counts. The mixed - uniform differences
are paired (same planes, same examples) and pooled over seeds by the bootstrap over
(seed, plane) pairs for the held-out boundary Jaccard distance and over (seed, example) pairs
for the flip-rate and accuracy differences, units resampled within each seed. The aggregate's
``_std`` is the spread over training seeds.

Per-seed result: ``model``, ``float_accuracy``, ``num_heldout_examples``, ``layers`` (paths),
``num_weights`` (path -> count), ``layer_rows`` (keys of :func:`bq_jax.ptq.layer_sensitivity`,
slice metrics prefixed ``heldout_``), ``allocations`` (per budget: ``budget``,
``bits_per_layer``, ``average_bits``, ``calibration_boundary_jaccard_distance``,
``exhaustive_bits_per_layer`` (None when too many assignments), ``steps``),
``rows`` (per budget and ``allocation`` of :data:`ALLOCATIONS`: ``average_bits``,
``calibration_boundary_jaccard_distance`` and the held-out metrics of
:func:`bq_jax.ptq.measure_variants`), ``differences`` (per budget, mixed - uniform: the
per-plane Jaccard difference as an estimate with its ``_values``, and the paired counts).
Aggregate: ``layer_rows`` and ``rows`` averaged over seeds (``x``, ``x_std``, ``n_seeds``),
``allocations`` (every seed's choice), ``differences`` (pooled paired estimates with intervals),
``layers``, ``num_weights``, ``layer_bits``, ``candidate_bits``, ``budgets``.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import numpy as np

from bq_jax.stats import mean_estimate, mean_rows
from bq_jax.studies.config import FamilyConfig, check_bits_tuple
from bq_jax.studies.protocol import Finding
from bq_jax.studies.reporting import mean_std_cell, table
from bq_jax.vocabulary import ESTIMATE_SUFFIXES, HIGH_SUFFIX, LOW_SUFFIX, VALUES_SUFFIX

__all__ = [
    "ALLOCATIONS",
    "SensitivityConfig",
    "compute",
    "aggregate",
    "findings",
    "figures",
    "report_section",
]

NAME = "sensitivity"
TITLE = "Per-layer boundary sensitivity and mixed precision"
DEPENDS: tuple[str, ...] = ()

#: Row names of the mixed-precision comparison at each budget: the greedy allocation, uniform
#: weights at the budget and, for a network small enough (at most MAX_EXHAUSTIVE assignments),
#: the exhaustive minimiser of the calibration score within the budget.
ALLOCATIONS = ("mixed", "uniform", "exhaustive")
#: Largest number of width assignments (widths ** layers) searched exhaustively.
MAX_EXHAUSTIVE = 4096
#: Rates over held-out examples (Wilson intervals; pooled over seeds as counts).
RATES = ("accuracy", "flip_rate", "band_flip_rate", "pair_order_flip")
#: The held-out boundary Jaccard distance of mixed minus uniform, paired by plane.
DIFFERENCE = "heldout_boundary_jaccard_distance_difference"
# The slice metrics, as reported here on the held-out planes (heldout_ prefix).
_SLICE_KEYS = ("boundary_jaccard_distance", "grid_change", "triple_junction_count")
_SUFFIXES = ("", *ESTIMATE_SUFFIXES)


@dataclasses.dataclass(frozen=True, kw_only=True)
class SensitivityConfig(FamilyConfig):
    """Settings of the sensitivity study (frozen, validated; ``QUICK``: the smoke preset).

    ``bq-jax sensitivity digits`` runs it with these defaults (3 seeds). The slice families and
    intervals (``slice_family``, ``slice_count``, ``family_resolution``,
    ``bootstrap_resamples``, ``confidence_level``) are the fields of
    :class:`~bq_jax.studies.config.FamilyConfig`, shared with the paper's studies.

    Example:
        >>> cfg = SensitivityConfig()
        >>> cfg.layer_bits, cfg.budgets, cfg.slice_family, cfg.slice_count, cfg.family_resolution
        ((4, 3), (3, 4), 'triplet', 16, 64)
    """

    # Side R of every family plane's grid. 64: measured on calibration planes only (16 triplet
    # planes of the calibration inputs, seeds 0 and 1), the tolerance-0 Jaccard distance of
    # 3-bit weights on every layer is 0.83 / 0.90 at R = 64 and 0.92 / 0.97 at R = 128, where
    # the layers crowd near 1 and can no longer be told apart (at R = 32 it is 0.67 / 0.74, but
    # a 32-cell grid across three inputs misses the small moves of 4-bit layers: 0.23-0.41).
    # A coarser grid also keeps each of the allocation's hundreds of scored networks cheap.
    family_resolution: int = 64
    # The run's recorded slice grid (results.json "resolution", the report header). This study
    # measures every slice metric on its families, so it must equal family_resolution.
    resolution: int = 64
    # Widths of the per-layer table: 4 bits (where the whole network starts to move its boundary)
    # and the 3-bit stress case.
    layer_bits: tuple[int, ...] = (4, 3)
    # Widths the allocation may give a layer (8 bits: the usual deployment width, the start).
    candidate_bits: tuple[int, ...] = (2, 3, 4, 5, 6, 8)
    # Average bits per weight (parameter-weighted) of the allocations; each is also a uniform
    # width of candidate_bits, the baseline at equal average bits.
    budgets: tuple[int, ...] = (3, 4)

    QUICK: ClassVar[dict] = {
        "seeds": (0,),
        "resolution": 24,
        "family_resolution": 24,
        "slice_count": 3,
        "bootstrap_resamples": 500,
        "layer_bits": (3,),
        "candidate_bits": (2, 3, 4, 8),
        "budgets": (3,),
    }

    def __post_init__(self):
        for name in ("layer_bits", "candidate_bits", "budgets"):
            if isinstance(getattr(self, name), list):
                object.__setattr__(self, name, tuple(getattr(self, name)))
        super().__post_init__()
        if self.resolution != self.family_resolution:
            raise ValueError(
                "resolution must equal family_resolution (the sensitivity study measures its "
                f"slice metrics on the families only), got resolution={self.resolution}, "
                f"family_resolution={self.family_resolution}; set both"
            )
        for name in ("layer_bits", "candidate_bits", "budgets"):
            check_bits_tuple(name, getattr(self, name))
            if len(set(getattr(self, name))) != len(getattr(self, name)):
                raise ValueError(f"{name} must be distinct, got {getattr(self, name)}")
        if len(self.candidate_bits) < 2:
            raise ValueError(
                f"candidate_bits needs at least two widths to allocate, got {self.candidate_bits}"
            )
        for b in self.budgets:
            if b not in self.candidate_bits or b == max(self.candidate_bits):
                raise ValueError(
                    f"budgets must each be one of the allocation's widths "
                    f"{', '.join(map(str, self.candidate_bits))} below the widest (the uniform "
                    f"baseline at equal average bits), got {b}"
                )

    def reasons(self) -> list[str]:
        return [
            "Weights: the studies' PTQ-W quantizer (signed symmetric, per output channel, "
            "min-max, round to nearest); biases and activations float.",
            f"Per-layer table at {', '.join(map(str, self.layer_bits))} bits: only one layer "
            "quantized and all but one, measured on held-out data and held-out planes.",
            f"Allocation: greedy from {max(self.candidate_bits)} bits over the widths "
            f"{', '.join(map(str, self.candidate_bits))}, lowering the layer whose narrowing "
            "raises the calibration boundary Jaccard distance least per bit saved; budgets "
            f"{', '.join(map(str, self.budgets))} bits per weight, weighted by parameter count "
            "(biases not counted). Chosen on calibration planes only; judged on held-out data.",
            f"Slice families: {self.slice_count} {self.slice_family!r} planes of the calibration "
            f"inputs (they choose the allocation) and {self.slice_count} of the held-out inputs "
            f"(they judge), {self.family_resolution}x{self.family_resolution} grids (on "
            "calibration planes the 3-bit all-layer Jaccard distance nears 1 at 128, where layers "
            "can no longer be told apart). A slice metric is the mean over a family's planes "
            "with its standard error and a "
            f"{self.confidence_level:g} percentile bootstrap interval over the planes "
            f"({self.bootstrap_resamples} resamples; pooled over seeds, planes resampled within "
            "each seed); rates over held-out examples carry Wilson intervals; paired "
            "mixed - uniform differences are bootstrapped over (seed, plane) or (seed, example) "
            "pairs.",
            f"Boundary band: held-out points with |float margin| below the "
            f"{self.band_quantile:g} quantile of calibration margins.",
        ]


CONFIG = SensitivityConfig


def _heldout_slice_keys(row: dict) -> dict:
    out = {}
    for k, v in row.items():
        base = next((s for s in _SLICE_KEYS if k in (s + suf for suf in _SUFFIXES)), None)
        out["heldout_" + k if base is not None else k] = v
    return out


def _short(path: str) -> str:
    parts = path.split("/")
    return "/".join(parts[1:-1]) if len(parts) > 2 else path


# ----------------------------------------------------------------------------- one seed


def compute(config: SensitivityConfig, seed: int, ctx, deps) -> tuple[dict, dict]:
    """One seed: per-layer sensitivity on held-out data; allocations chosen on calibration
    planes and judged with their uniform baselines on held-out data."""
    from bq_jax import geometry, ptq
    from bq_jax.studies.context import stable_key, weight_config

    apply_fn, v = ctx.apply_fn, ctx.float_params
    x_cal = np.asarray(ctx.inputs("calibration"))
    x_held = np.asarray(ctx.inputs("heldout"))
    y_held = np.asarray(ctx.targets("heldout"))
    cal_planes = ctx.family("calibration")
    held_planes = ctx.family("heldout")
    common = dict(
        heldout_x=x_held,
        heldout_y=y_held,
        calibration_x=x_cal,
        band_quantile=config.band_quantile,
        n_resamples=config.bootstrap_resamples,
        level=config.confidence_level,
    )
    layers = ptq.resolve_layers(v)
    sizes = ptq.weight_layers(v)

    layer_rows = ptq.layer_sensitivity(
        apply_fn,
        v,
        configs=[weight_config(b) for b in config.layer_bits],
        slices=held_planes,
        key=stable_key(seed, NAME, "layer_rows"),
        **common,
    )

    configs = {b: weight_config(b) for b in config.candidate_bits}
    score = ptq.calibration_jaccard_score(apply_fn, v, configs, cal_planes, layers)
    allocations, variants, heads = [], [], []
    for budget in config.budgets:
        alloc = ptq.allocate_bits(
            apply_fn,
            v,
            configs=configs,
            calibration_slices=cal_planes,
            budget=budget,
            score_fn=score,
        )
        named = {"mixed": alloc.bits, "uniform": dict.fromkeys(layers, budget)}
        if len(configs) ** len(layers) <= MAX_EXHAUSTIVE:
            best, _ = ptq.exhaustive_allocation(
                score, [sizes[p] for p in layers], list(configs), budget
            )
            named["exhaustive"] = dict(zip(layers, best, strict=True))
        allocations.append(
            {
                "budget": budget,
                "bits_per_layer": alloc.bits,
                "average_bits": alloc.average_bits,
                "calibration_boundary_jaccard_distance": alloc.calibration_score,
                "exhaustive_bits_per_layer": named.get("exhaustive"),
                "steps": [
                    {
                        "calibration_boundary_jaccard_distance" if k == "score" else k: x
                        for k, x in step.items()
                    }
                    for step in alloc.steps
                ],
            }
        )
        for name, bits in named.items():
            variants.append(ptq.quantize_layers(v, {p: configs[b] for p, b in bits.items()}))
            (cal,) = score([tuple(bits[p] for p in layers)])
            heads.append(
                {
                    "budget": budget,
                    "allocation": name,
                    "average_bits": ptq.average_bits(bits, sizes),
                    "calibration_boundary_jaccard_distance": cal,
                    "bits_per_layer": dict(bits),
                }
            )
    measured = ptq.measure_variants(
        apply_fn, v, variants, slices=held_planes, key=stable_key(seed, NAME, "rows"), **common
    )
    rows = [{**h, **_heldout_slice_keys(m)} for h, m in zip(heads, measured, strict=True)]

    # Paired differences (mixed - uniform): same planes, same held-out examples.
    stack = ptq.stack_params([v, *variants])
    pred = np.argmax(np.asarray(geometry.evaluate_logits(apply_fn, stack, x_held)), axis=-1)
    flips = pred[1:] != pred[0]
    correct = pred[1:] == y_held
    differences = []
    index = {(h["budget"], h["allocation"]): i for i, h in enumerate(heads)}
    for budget in config.budgets:
        m, u = index[(budget, "mixed")], index[(budget, "uniform")]
        jac = "heldout_boundary_jaccard_distance"
        diff = np.subtract(rows[m][jac + VALUES_SUFFIX], rows[u][jac + VALUES_SUFFIX])
        est = mean_estimate(
            stable_key(seed, NAME, "difference", budget),
            diff.astype(np.float32),
            n_resamples=config.bootstrap_resamples,
            level=config.confidence_level,
        )
        differences.append(
            {
                "budget": budget,
                **est.to_dict(DIFFERENCE),
                DIFFERENCE + VALUES_SUFFIX: [float(d) for d in diff],
                "mixed_only_flips": int(np.sum(flips[m] & ~flips[u])),
                "uniform_only_flips": int(np.sum(flips[u] & ~flips[m])),
                "mixed_only_correct": int(np.sum(correct[m] & ~correct[u])),
                "uniform_only_correct": int(np.sum(correct[u] & ~correct[m])),
                "heldout_size": int(y_held.shape[0]),
            }
        )
    result = {
        "model": ctx.model_name,
        "float_accuracy": float(np.mean(pred[0] == y_held)),
        "num_heldout_examples": int(y_held.shape[0]),
        "layers": layers,
        "num_weights": sizes,
        "layer_rows": [_heldout_slice_keys(r) for r in layer_rows],
        "allocations": allocations,
        "rows": rows,
        "differences": differences,
    }
    return result, {}


# ----------------------------------------------------------------------------- aggregate


def _paired_values(pos: int, neg: int, n: int) -> np.ndarray:
    """The n per-example paired differences in {-1, 0, +1} behind ``pos`` +1s and ``neg`` -1s
    (their order does not change the bootstrap's distribution)."""
    values = np.zeros(n, np.float32)
    values[:pos] = 1.0
    values[pos : pos + neg] = -1.0
    return values


def _pooled(key, per_seed_values: list, config: SensitivityConfig) -> dict:
    """Estimate of paired differences pooled over seeds: stratified :func:`mean_estimate`
    (units resampled within each seed) when every seed has as many units, else one pool."""
    if len({len(v) for v in per_seed_values}) == 1:
        values = np.asarray(per_seed_values, np.float32)
    else:
        values = np.concatenate(per_seed_values).astype(np.float32)
    return mean_estimate(
        key, values, n_resamples=config.bootstrap_resamples, level=config.confidence_level
    )


def aggregate(config: SensitivityConfig, per_seed: list[dict]) -> dict:
    """Rows averaged over seeds with their estimates pooled (:func:`bq_jax.stats.mean_rows`:
    slice metrics by the bootstrap over each seed's planes, :data:`RATES` as Wilson intervals of
    the pooled counts); the paired mixed - uniform differences pooled over seeds by the
    bootstrap over (seed, plane) and (seed, example) pairs."""
    from bq_jax.studies.context import stable_key
    from bq_jax.studies.stopping import AGGREGATE_SEED

    differences = []
    for i, budget in enumerate(config.budgets):
        ds = [s["differences"][i] for s in per_seed]
        jac = _pooled(
            stable_key(AGGREGATE_SEED, NAME, DIFFERENCE, budget),
            [d[DIFFERENCE + VALUES_SUFFIX] for d in ds],
            config,
        )
        flip = _pooled(
            stable_key(AGGREGATE_SEED, NAME, "flip_rate_difference", budget),
            [
                _paired_values(d["mixed_only_flips"], d["uniform_only_flips"], d["heldout_size"])
                for d in ds
            ],
            config,
        )
        acc = _pooled(
            stable_key(AGGREGATE_SEED, NAME, "accuracy_difference", budget),
            [
                _paired_values(
                    d["mixed_only_correct"], d["uniform_only_correct"], d["heldout_size"]
                )
                for d in ds
            ],
            config,
        )
        differences.append(
            {
                "budget": budget,
                **jac.to_dict(DIFFERENCE),
                **flip.to_dict("flip_rate_difference"),
                **acc.to_dict("accuracy_difference"),
                "heldout_size": sum(d["heldout_size"] for d in ds),
                "seeds_mixed_better": int(sum(d[DIFFERENCE] < 0 for d in ds)),
                "n_seeds": len(ds),
            }
        )

    def pooled_rows(block: str, keys: tuple[str, ...]) -> list[dict]:
        return mean_rows(
            [s[block] for s in per_seed],
            keys,
            key=stable_key(AGGREGATE_SEED, NAME, block),
            rates=RATES,
            n_resamples=config.bootstrap_resamples,
            level=config.confidence_level,
        )

    return {
        "layers": per_seed[0]["layers"],
        "num_weights": per_seed[0]["num_weights"],
        "layer_bits": list(config.layer_bits),
        "candidate_bits": list(config.candidate_bits),
        "budgets": list(config.budgets),
        "slice_family": config.slice_family,
        "slice_count": config.slice_count,
        "family_resolution": config.family_resolution,
        "confidence_level": config.confidence_level,
        "num_heldout_examples": per_seed[0]["num_heldout_examples"],
        "layer_rows": pooled_rows("layer_rows", ("bits", "scope", "layer")),
        "rows": pooled_rows("rows", ("budget", "allocation")),
        "allocations": [
            {
                "seed": seed,
                **{
                    k: a[k]
                    for k in (
                        "budget",
                        "bits_per_layer",
                        "average_bits",
                        "exhaustive_bits_per_layer",
                    )
                },
            }
            for seed, s in zip(config.seeds, per_seed, strict=True)
            for a in s["allocations"]
        ],
        "differences": differences,
    }


# ----------------------------------------------------------------------------- findings


def _fmt_ci(row: dict, key: str, fmt: str = ".3f") -> str:
    lo, hi = row.get(key + LOW_SUFFIX), row.get(key + HIGH_SUFFIX)
    text = format(row[key], fmt)
    if lo is not None and hi is not None:
        text += f" [{format(lo, fmt)}, {format(hi, fmt)}]"
    return text


def findings(config: SensitivityConfig, results: dict) -> list[Finding]:
    """Per width: the most sensitive layer alone is the one whose exclusion helps most, and is
    the one with the lowest weight SQNR. Per budget: the calibration choice beats uniform on
    calibration, and (the question) on held-out boundary Jaccard distance and on held-out flip
    rate: "beats" needs the whole paired interval below 0."""
    out = []
    key = "heldout_boundary_jaccard_distance"
    for bits in config.layer_bits:
        rows = [r for r in results["layer_rows"] if r["bits"] == bits]
        only = {r["layer"]: r for r in rows if r["scope"] == "only"}
        but = {r["layer"]: r for r in rows if r["scope"] == "all_but"}
        if len(only) < 2 or set(only) != set(but):
            continue
        worst = max(only, key=lambda p: only[p][key])
        best_excluded = min(but, key=lambda p: but[p][key])
        out.append(
            Finding(
                f"{bits}-bit: the layer whose quantization alone moves the held-out boundary "
                "most is the layer whose exclusion (all but it quantized) moves it least",
                bool(worst == best_excluded),
                "only: "
                + ", ".join(f"{_short(p)} {r[key]:.3f}" for p, r in only.items())
                + "; all but: "
                + ", ".join(f"{_short(p)} {r[key]:.3f}" for p, r in but.items())
                + " (held-out boundary Jaccard distance, mean over planes and seeds)",
            )
        )
        lowest = min(only, key=lambda p: only[p]["sqnr_db"])
        out.append(
            Finding(
                f"{bits}-bit: the layer with the lowest weight SQNR is the most boundary-"
                "sensitive one (only it quantized)",
                bool(lowest == worst),
                ", ".join(
                    f"{_short(p)} SQNR {r['sqnr_db']:.2f} dB, Jaccard {r[key]:.3f}"
                    for p, r in only.items()
                ),
            )
        )
    rows = {(r["budget"], r["allocation"]): r for r in results["rows"]}
    for d in results["differences"]:
        b = d["budget"]
        m, u = rows[(b, "mixed")], rows[(b, "uniform")]
        cal = "calibration_boundary_jaccard_distance"
        out.append(
            Finding(
                f"{b} bits per weight: the mixed allocation has a lower CALIBRATION boundary "
                f"Jaccard distance than uniform {b}-bit weights (the criterion it was chosen on)",
                bool(m[cal] < u[cal]),
                f"mixed {m[cal]:.3f} vs uniform {u[cal]:.3f} (mean over planes and seeds); "
                f"average bits {m['average_bits']:.3f} vs {u['average_bits']:.3f}",
            )
        )
        ex = rows.get((b, "exhaustive"))
        if ex is not None:
            chosen = [a for a in results["allocations"] if a["budget"] == b]
            same = sum(a["bits_per_layer"] == a["exhaustive_bits_per_layer"] for a in chosen)
            out.append(
                Finding(
                    f"{b} bits per weight: the greedy allocation reaches the exhaustive "
                    "minimum of the calibration boundary Jaccard distance within the budget",
                    bool(abs(m[cal] - ex[cal]) <= 1e-9),
                    f"greedy {m[cal]:.4f} vs exhaustive {ex[cal]:.4f} (calibration, mean over "
                    f"planes and seeds); the same widths in {same} of {len(chosen)} seeds",
                )
            )
        jd = "heldout_boundary_jaccard_distance_difference"
        out.append(
            Finding(
                f"{b} bits per weight: mixed precision chosen on calibration data beats uniform "
                f"{b}-bit weights on HELD-OUT boundary Jaccard distance (paired difference "
                "mixed - uniform below 0 with its whole interval)",
                bool(d[jd + HIGH_SUFFIX] is not None and d[jd + HIGH_SUFFIX] < 0),
                f"difference {_fmt_ci(d, jd)} over {d[jd + '_n']} (seed, plane) pairs; mixed "
                f"{_fmt_ci(m, key)} vs uniform {_fmt_ci(u, key)}; mixed lower in "
                f"{d['seeds_mixed_better']} of {d['n_seeds']} seeds"
                + ("" if ex is None else f"; exhaustive calibration optimum {ex[key]:.3f}"),
            )
        )
        out.append(
            Finding(
                f"{b} bits per weight: mixed precision chosen on calibration data beats uniform "
                f"{b}-bit weights on HELD-OUT flip rate (paired difference mixed - uniform below "
                "0 with its whole interval)",
                bool(
                    d["flip_rate_difference" + HIGH_SUFFIX] is not None
                    and d["flip_rate_difference" + HIGH_SUFFIX] < 0
                ),
                f"flip-rate difference {_fmt_ci(d, 'flip_rate_difference', '.4f')}, accuracy "
                f"difference {_fmt_ci(d, 'accuracy_difference', '.4f')} over {d['heldout_size']} "
                f"(seed, example) pairs; flip rate mixed {m['flip_rate']:.4f} vs uniform "
                f"{u['flip_rate']:.4f}",
            )
        )
    return out


# ----------------------------------------------------------------------------- figures


def _bars(ax, groups: list[str], series: dict, ylabel: str) -> None:
    from bq_jax.report import OKABE_ITO

    width = 0.8 / max(len(series), 1)
    x = np.arange(len(groups))
    for i, (name, (vals, errs)) in enumerate(series.items()):
        ax.bar(
            x + (i - (len(series) - 1) / 2) * width,
            vals,
            width,
            yerr=errs,
            capsize=3,
            label=name,
            color=OKABE_ITO[i % len(OKABE_ITO)],
        )
    ax.set_xticks(x, groups)
    ax.set_ylabel(ylabel, fontsize=9)
    ax.tick_params(labelsize=8.5)
    ax.grid(True, axis="y", color="#E5E5E5", linewidth=0.6)
    ax.set_axisbelow(True)


def _new_figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


_PANELS = (
    ("heldout_boundary_jaccard_distance", "held-out boundary Jaccard distance"),
    ("flip_rate", "held-out flip rate"),
)


def figures(config: SensitivityConfig, results: dict, first_result: dict, arrays) -> dict:
    """Per layer width: bars per layer (only / all but), the all-layers value as a line; the
    mixed vs uniform comparison per budget. Error bars: std over seeds."""
    figs = {}
    layers = results["layers"]
    for bits in config.layer_bits:
        rows = [r for r in results["layer_rows"] if r["bits"] == bits]
        fig = _new_figure(4.2 * len(_PANELS), 3.6)
        axes = fig.subplots(1, len(_PANELS))
        for ax, (key, label) in zip(axes, _PANELS, strict=True):
            series = {}
            for scope, name in (("only", "only this layer"), ("all_but", "all but this layer")):
                by = {r["layer"]: r for r in rows if r["scope"] == scope}
                series[name] = (
                    [by[p][key] for p in layers],
                    [by[p].get(key + "_std") or 0.0 for p in layers],
                )
            _bars(ax, [_short(p) for p in layers], series, label)
            everything = [r for r in rows if r["scope"] == "all"]
            if everything:
                ax.axhline(
                    everything[0][key],
                    color="#444444",
                    linestyle="--",
                    linewidth=1,
                    label="all layers",
                )
            ax.legend(fontsize=8)
        fig.suptitle(
            f"{config.dataset}: {bits}-bit PTQ-W of one layer / all but one "
            f"(mean ± std over {len(config.seeds)} seeds)",
            fontsize=10,
        )
        figs[f"layer_sensitivity_{bits}bit.png"] = fig
    fig = _new_figure(4.2 * len(_PANELS), 3.6)
    axes = fig.subplots(1, len(_PANELS))
    by = {(r["budget"], r["allocation"]): r for r in results["rows"]}
    budgets = list(config.budgets)
    for ax, (key, label) in zip(axes, _PANELS, strict=True):
        series = {
            name: (
                [by[(b, name)][key] for b in budgets],
                [by[(b, name)].get(key + "_std") or 0.0 for b in budgets],
            )
            for name in ALLOCATIONS
            if (budgets[0], name) in by
        }
        _bars(ax, [f"{b} bits/weight" for b in budgets], series, label)
        ax.legend(fontsize=8)
    fig.suptitle(
        f"{config.dataset}: mixed precision (chosen on calibration planes) vs uniform, held-out "
        f"(mean ± std over {len(config.seeds)} seeds)",
        fontsize=10,
    )
    figs["mixed_vs_uniform.png"] = fig
    return figs


# ----------------------------------------------------------------------------- report


LAYER_COLUMNS = (
    "sqnr_db",
    "accuracy",
    "flip_rate",
    "band_flip_rate",
    "pair_order_flip",
    "heldout_boundary_jaccard_distance",
    "heldout_grid_change",
)
ROW_COLUMNS = (
    "average_bits",
    "calibration_boundary_jaccard_distance",
    "accuracy",
    "flip_rate",
    "band_flip_rate",
    "heldout_boundary_jaccard_distance",
)


def _interval_cell(row: dict, key: str) -> str | None:
    lo, hi = row.get(key + LOW_SUFFIX), row.get(key + HIGH_SUFFIX)
    if lo is None or hi is None:
        return None
    fmt = ".3f" if "jaccard" in key else ".4f"
    return f"[{format(lo, fmt)}, {format(hi, fmt)}]"


def report_section(sec, config: SensitivityConfig, results: dict, figure_paths: dict) -> None:
    """The per-layer tables, the allocations, mixed vs uniform and the paired differences."""
    level = f"{config.confidence_level:g}"
    sec.text(
        "Weight layers (parameter count): "
        + ", ".join(f"`{p}` ({n})" for p, n in results["num_weights"].items())
        + ". Weights: per-channel symmetric min-max PTQ-W; biases and activations float. "
        f"Planes: per split a family of {config.slice_count} {config.slice_family!r} planes "
        f"(calibration inputs choose, held-out inputs judge), "
        f"{config.family_resolution}x{config.family_resolution}. Cells: mean ± std over seeds; "
        f"interval columns: the {level} interval pooled over seeds (percentile bootstrap over "
        "the planes, resampled within each seed, for slice metrics; Wilson over the pooled "
        "held-out examples for rates)."
    )
    for bits in config.layer_bits:
        sec.text(
            f"**{bits}-bit, per layer** (held-out data; heldout_ slice metrics on the held-out "
            "planes). only: just this layer quantized; all_but: every other layer quantized; "
            "all: every layer."
        )
        rows = []
        for r in results["layer_rows"]:
            if r["bits"] != bits:
                continue
            row: dict[str, Any] = {
                "layer": "all layers" if r["layer"] is None else _short(r["layer"]),
                "scope": r["scope"],
            }
            row.update({c: mean_std_cell(r, c) for c in LAYER_COLUMNS})
            row["flip_rate interval"] = _interval_cell(r, "flip_rate")
            row["heldout_boundary_jaccard_distance interval"] = _interval_cell(
                r, "heldout_boundary_jaccard_distance"
            )
            rows.append(row)
        cols = [
            "layer",
            "scope",
            *LAYER_COLUMNS,
            "flip_rate interval",
            "heldout_boundary_jaccard_distance interval",
        ]
        table(sec, rows, cols, left=("layer", "scope"))
    sec.text(
        "**Allocations chosen on calibration planes** (bits per layer, in the order "
        + ", ".join(_short(p) for p in results["layers"])
        + "; the budget is the parameter-weighted average bits per weight):"
    )

    def widths(bits):
        return "—" if bits is None else "/".join(str(bits[p]) for p in results["layers"])

    alloc_rows = [
        {
            "seed": a["seed"],
            "budget": a["budget"],
            "bits per layer": widths(a["bits_per_layer"]),
            "average_bits": f"{a['average_bits']:.3f}",
            "exhaustive": widths(a["exhaustive_bits_per_layer"]),
        }
        for a in results["allocations"]
    ]
    table(sec, alloc_rows, ["seed", "budget", "bits per layer", "average_bits", "exhaustive"])
    sec.text(
        "**Mixed vs uniform at equal average bits** (mixed: the greedy allocation; exhaustive: "
        "the best allocation within the budget on calibration planes; "
        "calibration_boundary_jaccard_distance: the criterion, on calibration planes; the rest "
        "judged on held-out data and planes):"
    )
    rows = []
    for r in results["rows"]:
        row = {"budget": r["budget"], "allocation": r["allocation"]}
        row.update({c: mean_std_cell(r, c) for c in ROW_COLUMNS})
        row["heldout_boundary_jaccard_distance interval"] = _interval_cell(
            r, "heldout_boundary_jaccard_distance"
        )
        rows.append(row)
    table(
        sec,
        rows,
        ["budget", "allocation", *ROW_COLUMNS, "heldout_boundary_jaccard_distance interval"],
        left=("allocation",),
    )
    sec.text(
        f"**Paired differences mixed - uniform** (negative: mixed better for the Jaccard distance "
        f"and the flip rate), pooled over seeds: {level} percentile bootstrap intervals over "
        "(seed, plane) pairs for the Jaccard distance and over (seed, held-out example) pairs "
        "for flip rate and accuracy, units resampled within each seed:"
    )
    diff_rows = [
        {
            "budget": d["budget"],
            "heldout_boundary_jaccard_distance_difference": _fmt_ci(
                d, "heldout_boundary_jaccard_distance_difference"
            ),
            "(seed, plane) pairs": d[DIFFERENCE + "_n"],
            "flip_rate_difference": _fmt_ci(d, "flip_rate_difference", ".4f"),
            "accuracy_difference": _fmt_ci(d, "accuracy_difference", ".4f"),
            "seeds_mixed_better": f"{d['seeds_mixed_better']} of {d['n_seeds']}",
        }
        for d in results["differences"]
    ]
    table(
        sec,
        diff_rows,
        [
            "budget",
            "heldout_boundary_jaccard_distance_difference",
            "(seed, plane) pairs",
            "flip_rate_difference",
            "accuracy_difference",
            "seeds_mixed_better",
        ],
    )
    for name, path in figure_paths.items():
        if name.startswith("layer_sensitivity_"):
            bits = name[len("layer_sensitivity_") : -len("bit.png")]
            caption = (
                f"{bits}-bit PTQ-W of only one layer vs all but one: held-out boundary Jaccard "
                "distance (held-out planes) and flip rate; dashed: every layer quantized."
            )
        else:
            caption = (
                "Mixed precision chosen on calibration planes vs uniform weights at the same "
                "average bits: held-out boundary Jaccard distance and flip rate."
            )
        sec.figure(path, caption)
