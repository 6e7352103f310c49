"""Rounding comparison: nearest vs AdaRound vs boundary-gap rounding at 4 bits, and 8-bit PTQ-W.

On the trained float classifier of each seed (the digits MLP by default), the ``bits``-bit
per-channel symmetric min-max weight grids of every kernel are shared by four rounding rules:

* ``nearest``: round to nearest;
* ``adaround``: layer-wise AdaRound (DESIGN defaults: ``rounding_iters`` steps per layer,
  batch 32, Adam 1e-3, lambda 0.01, beta 20 -> 2 after a 20 % warm start);
* ``boundary_gap``: AdaRound plus the boundary-gap penalty (the boundary-aware quantization
  paper's method): network-wise rounding started from the same seed's AdaRound solution
  (``ptq.optimize_rounding(init_params=...)``), with KL + per-layer reconstruction +
  ``boundary_gap_weight`` x boundary-gap penalty on calibration band points (the
  ``band_quantile`` band, as the evaluation's) and the calibration PCA-slice grid, evaluated on the
  hard-rounded network with straight-through gradients;
* ``network``: the ablation -- the same network-wise objective without the gap term, started
  from the float weights as AdaRound is;

plus ``ptq_w<check_bits>`` (8-bit per-channel PTQ-W, round to nearest): the check that 8 bits
keeps the held-out labels while the boundary still moves.

Only calibration data is used for fitting AND for choosing (``boundary_gap_weight``, T) from
``boundary_gap_grid``: the calibration set is split in two halves A / B (a permutation drawn
with ``numpy.random.default_rng(seed)``); every candidate is fitted on A (from the AdaRound
solution on A) and scored on B (boundary Jaccard distance of B's PCA slice plus pair-order flip
of B's low-margin band, subject to B accuracy >= AdaRound's B accuracy -
``selection_accuracy_tolerance``); the chosen pair is refitted on the whole calibration set.
Held-out data is only used for the final rows. Key of every fit: ``jax.random.key(seed)``.

Metrics (``geometry.compare``): held-out ``accuracy``, ``flip_rate``, ``pair_order_flip``
(band: held-out points with float |margin| below the ``band_quantile`` quantile of calibration
margins), ``boundary_jaccard_distance`` on the ``resolution`` x ``resolution`` PCA slice of the
training inputs, and ``reconstruction_error``: mean over layers of
``E||y_l - y~_l||^2 / E||y_l||^2`` on the held-out inputs (the quantized model's own layer
inputs).

Per-seed result: ``model``, ``float_accuracy``, ``num_heldout_examples``,
``boundary_gap_weight`` and ``temperature`` (the chosen pair), ``calibration_scores`` (half-B
scores of AdaRound and of each candidate, with its ``boundary_gap_weight`` and
``temperature``), ``rows`` (one per ``method``, with its ``bits``).
Aggregate: ``rows`` averaged over seeds, ``chosen`` (the pair of every seed), ``methods``.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import jax
import jax.numpy as jnp
import numpy as np

from bq_jax import quant
from bq_jax._src.checks import check_float, check_fraction, check_int
from bq_jax.report import plot_metric_vs_bits
from bq_jax.stats import mean_rows
from bq_jax.studies.config import MAX_BITS, MIN_BITS, BaseConfig
from bq_jax.studies.protocol import Finding
from bq_jax.studies.reporting import mean_std_cell, table

__all__ = [
    "ROUNDING_METHODS",
    "RoundingComparisonConfig",
    "compute",
    "aggregate",
    "findings",
    "figures",
    "report_section",
]

NAME = "rounding_comparison"
TITLE = "Rounding comparison: nearest vs AdaRound vs boundary-gap rounding"
DEPENDS: tuple[str, ...] = ()

#: The rounding rules compared at ``bits`` (report order); the PTQ-W check row follows them.
ROUNDING_METHODS = ("nearest", "adaround", "network", "boundary_gap")
# Network-wise objective shared by "network" and "boundary_gap". straight_through: the
# objective scores the hard-rounded network (with the soft relaxation the gap term is met by
# fractional h and hard rounding undoes it: calibration gap penalty above AdaRound's).
NETWORK_OBJECTIVE = dict(reg_weight=1.0, recon_weight=1.0, task="kl", straight_through=True)
# The half-B scores of a candidate.
_SCORE_KEYS = (
    "boundary_jaccard_distance",
    "flip_rate",
    "pair_order_flip",
    "accuracy",
    "reconstruction_error",
)


@dataclasses.dataclass(frozen=True, kw_only=True)
class RoundingComparisonConfig(BaseConfig):
    """Settings of the rounding comparison (frozen, validated; ``QUICK``: the smoke preset).

    Example:
        >>> cfg = RoundingComparisonConfig()
        >>> cfg.resolution, cfg.band_quantile, cfg.boundary_gap_grid[0]
        (64, 0.1, (1.0, 1.0))
    """

    # Side R of the R x R PCA slices (the training slice of the final rows and the half-B
    # slice of the choice).
    resolution: int = 64
    # Weight width of the rounding rules (the paper's 4-bit case).
    bits: int = 4
    # Width of the PTQ-W check row (8 bits: the usual deployment width).
    check_bits: int = 8
    # Optimisation steps: AdaRound per layer, and the network-wise fits (all layers jointly).
    rounding_iters: int = 10_000
    # Candidates (boundary_gap_weight, temperature), chosen on calibration half B.
    boundary_gap_grid: tuple[tuple[float, float], ...] = (
        (1.0, 1.0),
        (3.0, 1.0),
        (10.0, 1.0),
        (10.0, 3.0),
    )
    # A candidate is eligible when its half-B accuracy is at least AdaRound's minus this.
    selection_accuracy_tolerance: float = 0.01

    QUICK: ClassVar[dict] = {
        "seeds": (0,),
        "rounding_iters": 300,
        "boundary_gap_grid": ((1.0, 1.0),),
    }

    def __post_init__(self):
        if isinstance(self.boundary_gap_grid, list):
            object.__setattr__(
                self, "boundary_gap_grid", tuple(tuple(p) for p in self.boundary_gap_grid)
            )
        super().__post_init__()
        check_int("bits", self.bits, MIN_BITS, MAX_BITS)
        check_int("check_bits", self.check_bits, MIN_BITS, MAX_BITS)
        check_int("rounding_iters", self.rounding_iters, 1)
        grid = self.boundary_gap_grid
        if not isinstance(grid, tuple) or not grid:
            raise ValueError(
                "boundary_gap_grid must be a non-empty tuple of (boundary_gap_weight, "
                f"temperature) pairs, got {grid!r}"
            )
        for pair in grid:
            if not (isinstance(pair, tuple) and len(pair) == 2):
                raise ValueError(
                    "boundary_gap_grid must hold (boundary_gap_weight, temperature) pairs, "
                    f"got {pair!r}"
                )
            check_float("boundary_gap_grid weight", pair[0], low=0.0, open_low=True)
            check_float("boundary_gap_grid temperature", pair[1], low=0.0, open_low=True)
        check_fraction("selection_accuracy_tolerance", self.selection_accuracy_tolerance)

    @property
    def methods(self) -> tuple[str, ...]:
        """Row names: the rounding rules, then the PTQ-W check."""
        return (*ROUNDING_METHODS, f"ptq_w{self.check_bits}")

    def reasons(self) -> list[str]:
        return [
            f"{self.bits}-bit rows share per-channel symmetric min-max grids: only the rounding "
            "differs.",
            "boundary_gap starts from the AdaRound solution: network-wise rounding from the "
            "float weights (the network row) ends far from AdaRound on the boundary metrics, "
            "so a gap term added to it would start from a weak baseline.",
            "(boundary_gap_weight, T) is chosen on calibration data only (fit on half A, score "
            f"on half B, accuracy allowance {self.selection_accuracy_tolerance:g} against "
            "AdaRound); held-out data is used for the final rows alone.",
            f"Slices {self.resolution}x{self.resolution}; boundary band (of the evaluation and of "
            f"the penalty alike): points below the {self.band_quantile:g} quantile of "
            "calibration |margin|.",
        ]


CONFIG = RoundingComparisonConfig


# ----------------------------------------------------------------------------- metrics


def _geometry_metrics(config, apply_fn, params_float, variants, x_slice, x_eval, x_cal):
    """boundary_jaccard_distance (PCA slice of ``x_slice``), flip_rate and pair_order_flip
    on ``x_eval``, one dict per variant."""
    from bq_jax import geometry, ptq

    slc = geometry.pca_slice(jnp.asarray(x_slice), resolution=config.resolution)
    res = geometry.compare(
        apply_fn,
        params_float,
        ptq.stack_params(variants),
        slc,
        jnp.asarray(x_eval),
        jnp.asarray(x_cal),
        band_quantile=config.band_quantile,
    )
    names = ("boundary_jaccard_distance", "flip_rate", "pair_order_flip")
    return [{n: float(np.asarray(res[n])[i]) for n in names} for i in range(len(variants))]


def _evaluate(config, apply_fn, params_float, variants, x_slice, x_eval, y_eval, x_cal):
    from bq_jax import ptq

    run = jax.jit(apply_fn)
    rows = _geometry_metrics(config, apply_fn, params_float, variants, x_slice, x_eval, x_cal)
    for row, params in zip(rows, variants, strict=True):
        row["accuracy"] = float(np.mean(np.argmax(np.asarray(run(params, x_eval)), -1) == y_eval))
        err = ptq.layer_reconstruction_error(apply_fn, params_float, params, x_eval)
        row["reconstruction_error"] = float(np.mean(list(err.values())))
    return rows


# ----------------------------------------------------------------------------- one seed


def compute(config: RoundingComparisonConfig, seed: int, ctx, deps) -> tuple[dict, dict]:
    """One seed: choose (boundary_gap_weight, T) on calibration, then fit and measure."""
    from bq_jax import ptq

    apply_fn, v = ctx.apply_fn, ctx.float_params
    x_train = np.asarray(ctx.inputs("train"))
    x_cal = np.asarray(ctx.inputs("calibration"))
    y_cal = np.asarray(ctx.targets("calibration"))
    x_heldout = np.asarray(ctx.inputs("heldout"))
    y_heldout = np.asarray(ctx.targets("heldout"))
    key = jax.random.key(seed)
    wq = quant.QuantConfig(bits=config.bits, symmetric=True, granularity="per_channel")
    w_check = quant.QuantConfig(bits=config.check_bits, symmetric=True, granularity="per_channel")
    ada_cfg = ptq.AdaRoundConfig(weights=wq, rounding_iters=config.rounding_iters)
    net = dict(
        NETWORK_OBJECTIVE,
        rounding_iters=config.rounding_iters,
        band_quantile=config.band_quantile,
    )
    grid = config.boundary_gap_grid
    progress = config.progress

    # Hyperparameters from calibration only: fit on half A, score on half B.
    perm = np.random.default_rng(seed).permutation(x_cal.shape[0])
    a, b = perm[: len(perm) // 2], perm[len(perm) // 2 :]
    ada_a = ptq.adaround(apply_fn, v, x_cal[a], ada_cfg, key, progress=progress)
    cands = [
        ptq.optimize_rounding(
            apply_fn,
            v,
            x_cal[a],
            ptq.RoundingConfig(weights=wq, boundary_gap_weight=gw, temperature=t, **net),
            key,
            init_params=ada_a,
            progress=progress,
        )
        for gw, t in grid
    ]
    scores = _evaluate(config, apply_fn, v, [ada_a, *cands], x_cal[b], x_cal[b], y_cal[b], x_cal[b])
    ok = [
        s["accuracy"] >= scores[0]["accuracy"] - config.selection_accuracy_tolerance
        for s in scores[1:]
    ]
    crit = [s["boundary_jaccard_distance"] + s["pair_order_flip"] for s in scores[1:]]
    choice = min(range(len(grid)), key=lambda i: (not ok[i], crit[i], i))
    gw, temp = grid[choice]

    ada = ptq.adaround(apply_fn, v, x_cal, ada_cfg, key, progress=progress)
    variants = {
        "nearest": ptq.nearest_rounding(v, wq),
        "adaround": ada,
        "network": ptq.optimize_rounding(
            apply_fn, v, x_cal, ptq.RoundingConfig(weights=wq, **net), key, progress=progress
        ),
        "boundary_gap": ptq.optimize_rounding(
            apply_fn,
            v,
            x_cal,
            ptq.RoundingConfig(weights=wq, boundary_gap_weight=gw, temperature=temp, **net),
            key,
            init_params=ada,
            progress=progress,
        ),
        f"ptq_w{config.check_bits}": ptq.quantize_weights(v, w_check),
    }
    rows = _evaluate(
        config, apply_fn, v, list(variants.values()), x_train, x_heldout, y_heldout, x_cal
    )
    run = jax.jit(apply_fn)
    float_acc = float(np.mean(np.argmax(np.asarray(run(v, x_heldout)), -1) == y_heldout))
    result = {
        "model": ctx.model_name,
        "float_accuracy": float_acc,
        "num_heldout_examples": int(y_heldout.shape[0]),
        "boundary_gap_weight": gw,
        "temperature": temp,
        "calibration_scores": [
            {"method": "adaround", "boundary_gap_weight": None, "temperature": None, **scores[0]},
            *(
                {"method": "boundary_gap", "boundary_gap_weight": g, "temperature": t, **sc}
                for (g, t), sc in zip(grid, scores[1:], strict=True)
            ),
        ],
        "rows": [
            {"method": m, "bits": config.check_bits if m.startswith("ptq_w") else config.bits, **r}
            for m, r in zip(variants, rows, strict=True)
        ],
    }
    return result, {}


# ----------------------------------------------------------------------------- aggregate


def aggregate(config: RoundingComparisonConfig, per_seed: list[dict]) -> dict:
    """Rows averaged over seeds (``x``, ``x_std``, ``n_seeds``) and the pair chosen per seed."""
    return {
        "methods": list(config.methods),
        "bits": config.bits,
        "check_bits": config.check_bits,
        "rounding_iters": config.rounding_iters,
        "num_heldout_examples": per_seed[0]["num_heldout_examples"],
        "chosen": [
            {
                "seed": s,
                "boundary_gap_weight": r["boundary_gap_weight"],
                "temperature": r["temperature"],
            }
            for s, r in zip(config.seeds, per_seed, strict=True)
        ],
        "rows": mean_rows([r["rows"] for r in per_seed], ("method", "bits")),
    }


def findings(config: RoundingComparisonConfig, results: dict) -> list[Finding]:
    """AdaRound vs nearest (reconstruction error, accuracy), boundary-gap vs AdaRound (boundary
    Jaccard distance, pair-order flip), and the 8-bit PTQ-W check, on the means over seeds."""
    rows = {r["method"]: r for r in results["rows"]}
    n, a, g = rows["nearest"], rows["adaround"], rows["boundary_gap"]
    check = rows[f"ptq_w{config.check_bits}"]
    b = config.bits
    num = results["num_heldout_examples"]

    def pair(key, fmt, x, y, nx, ny):
        return f"{key}: {nx} {format(x[key], fmt)} vs {ny} {format(y[key], fmt)}"

    return [
        Finding(
            f"{b}-bit: AdaRound lowers the layer reconstruction error below round-to-nearest",
            bool(a["reconstruction_error"] < n["reconstruction_error"]),
            pair("reconstruction_error", ".4f", a, n, "adaround", "nearest"),
        ),
        Finding(
            f"{b}-bit: AdaRound's held-out accuracy is at least round-to-nearest's",
            bool(a["accuracy"] >= n["accuracy"]),
            pair("accuracy", ".4f", a, n, "adaround", "nearest"),
        ),
        Finding(
            f"{b}-bit: boundary-gap rounding lowers the boundary Jaccard distance (training "
            "slice) below AdaRound's",
            bool(g["boundary_jaccard_distance"] < a["boundary_jaccard_distance"]),
            pair("boundary_jaccard_distance", ".3f", g, a, "boundary_gap", "adaround"),
        ),
        Finding(
            f"{b}-bit: boundary-gap rounding lowers the boundary-band pair-order flip below "
            "AdaRound's",
            bool(g["pair_order_flip"] < a["pair_order_flip"]),
            pair("pair_order_flip", ".4f", g, a, "boundary_gap", "adaround"),
        ),
        Finding(
            f"{config.check_bits}-bit PTQ-W changes at most 2 held-out labels while the "
            "boundary moves (boundary Jaccard distance > 0.01)",
            bool(check["flip_rate"] <= 2 / num and check["boundary_jaccard_distance"] > 0.01),
            f"flip_rate {check['flip_rate']:.4f} (2 of {num} = {2 / num:.4f}), "
            f"boundary_jaccard_distance {check['boundary_jaccard_distance']:.3f}",
        ),
    ]


def figures(config: RoundingComparisonConfig, results: dict, first_result: dict, arrays) -> dict:
    """Accuracy, reconstruction error, boundary Jaccard distance and pair-order flip per method
    (mean ± std over seeds)."""
    fig = plot_metric_vs_bits(
        results["rows"],
        metric=["accuracy", "reconstruction_error", "boundary_jaccard_distance", "pair_order_flip"],
        by="method",
        title=f"{config.dataset}: rounding rules at {config.bits} bits and {config.check_bits}-bit "
        f"PTQ-W (mean ± std over {len(config.seeds)} seeds)",
    )
    return {"rounding_comparison.png": fig}


COLUMNS = (
    "method",
    "bits",
    "accuracy",
    "reconstruction_error",
    "boundary_jaccard_distance",
    "pair_order_flip",
    "flip_rate",
)


def report_section(sec, config: RoundingComparisonConfig, results: dict, figure_paths: dict):
    """The per-method table, the chosen (boundary_gap_weight, T) per seed and the figure."""
    sec.text(
        f"{config.bits}-bit rows share per-channel symmetric min-max grids; AdaRound and the "
        f"network-wise fits run {config.rounding_iters} steps; boundary_gap starts from the "
        "AdaRound solution. Held-out split; boundary_jaccard_distance on the "
        f"{config.resolution}x{config.resolution} PCA slice of the training inputs; "
        "pair_order_flip on the band of held-out points with float |margin| below the "
        f"{config.band_quantile:g} quantile of calibration margins; reconstruction_error = mean "
        "over layers of E||y - y~||^2 / E||y||^2 on the held-out inputs."
    )
    rows = [
        {c: r[c] if c in ("method", "bits") else mean_std_cell(r, c) for c in COLUMNS}
        for r in results["rows"]
    ]
    table(sec, rows, list(COLUMNS))
    sec.text(
        "(boundary_gap_weight, T) chosen on calibration half B, per seed: "
        + ", ".join(
            f"seed {c['seed']}: ({c['boundary_gap_weight']:g}, {c['temperature']:g})"
            for c in results["chosen"]
        )
    )
    for path in figure_paths.values():
        sec.figure(
            path,
            "Accuracy, reconstruction error, boundary Jaccard distance and "
            "pair-order flip per method (mean ± std over seeds).",
        )
