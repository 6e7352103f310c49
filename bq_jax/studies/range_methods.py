"""Statistical quantizers in QAT: the same STE-QAT run with min-max, MSE, OCTAV-style and
analytic Gaussian weight ranges (StatQAT-style comparison).

On the trained float classifier of each seed, for every bit width of ``bits`` and range method
of ``range_methods`` (names of :data:`bq_jax.quant.RANGE_METHODS`), STE-QAT
(:func:`bq_jax.qat.qat_train`; weight scales re-estimated from the latent weights by the range
method every ``range_update_every`` steps) runs from the same float weights ``qat_seeds`` times;
QAT run ``i`` uses the key ``fold_in(jax.random.key(seed), 100 + i)``, which draws its batch
order. Reported per (bits, range method):

* held-out ``accuracy`` of the deployed network (mean over the QAT runs), ``accuracy_spread``
  (their standard deviation, ddof = 0), ``accuracy_min``, and for reference ``ptq_accuracy``:
  round-to-nearest PTQ with the same quantizer (QAT at step 0);
* stability over the QAT runs: ``loss_curve_spread``, the mean over epochs of the across-run
  standard deviation of the epoch-mean training loss, ``final_loss`` (mean over runs of the last
  epoch's loss) and ``final_loss_spread`` (its across-run standard deviation);
* SQNR (dB) of the deployed weights against the weights they quantize, mean over layers:
  ``ptq_sqnr_db`` (PTQ of the float weights, step 0) and ``qat_sqnr_db`` (the latent weights
  after QAT against their deployed grid values, mean over runs); per layer in
  ``ptq_sqnr_db_per_layer`` / ``qat_sqnr_db_per_layer``; ``scale_ratio`` (per layer: mean final
  scale / mean initial scale, mean over runs).

The ``_spread`` numbers are spreads over QAT runs of one classifier; the aggregate's ``_std``
numbers are spreads over training seeds (:mod:`bq_jax.vocabulary`).

Per-seed result: ``model``, ``float_accuracy``, ``layers`` (quantized leaf paths), ``rows``
(keys above, plus ``accuracies``: one per QAT run) and ``curves``
(``{"<bits>/<range_method>": {"epoch_loss": [[per epoch] per QAT run]}}``).
Aggregate: ``rows`` averaged over seeds; ``curves`` (``epoch_loss_mean`` / ``epoch_loss_spread``:
mean over seeds of the per-seed mean / spread over QAT runs at every epoch); ``layers``,
``bits``, ``range_methods``, ``qat_seeds``.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np

from bq_jax import quant
from bq_jax._src.checks import check_choice, check_float, check_int
from bq_jax.qat.config import QATConfig
from bq_jax.qat.quantizers import init_qparams, resolve_plan
from bq_jax.qat.training import qat_train
from bq_jax.report import plot_curves
from bq_jax.stats import mean_rows
from bq_jax.studies.config import BaseConfig, check_bits_tuple
from bq_jax.studies.protocol import Finding
from bq_jax.studies.reporting import mean_std_cell, table

__all__ = [
    "DEFAULT_RANGE_METHODS",
    "RangeMethodsConfig",
    "compute",
    "aggregate",
    "findings",
    "figures",
    "report_section",
]

NAME = "range_methods"
TITLE = "Statistical range methods in QAT"
DEPENDS: tuple[str, ...] = ()

#: The range methods compared by default (a subset of bq_jax.quant.RANGE_METHODS: percentile
#: clipping is left out, as in the StatQAT comparison).
DEFAULT_RANGE_METHODS = ("minmax", "mse", "octav", "gaussian")


@dataclasses.dataclass(frozen=True, kw_only=True)
class RangeMethodsConfig(BaseConfig):
    """Settings of the range-method comparison (frozen, validated; ``QUICK``: smoke preset).

    Example:
        >>> cfg = RangeMethodsConfig(bits=(2,), range_methods=("minmax", "octav"))
        >>> cfg.seeds, cfg.qat_seeds
        ((0,), 3)
    """

    # Training seeds of the float classifier (seed 0: the committed results).
    seeds: tuple[int, ...] = (0,)
    # QAT runs per training seed and (bits, range method); run i uses the key
    # fold_in(key(seed), 100 + i) (its batch order). The stability numbers are over these runs.
    qat_seeds: int = 3
    # Weight bit widths.
    bits: tuple[int, ...] = (2, 3, 4)
    # Range methods compared (names of bq_jax.quant.RANGE_METHODS, in this order).
    range_methods: tuple[str, ...] = DEFAULT_RANGE_METHODS
    # Weight quantizer granularity ("per_channel" or "per_tensor").
    granularity: str = "per_channel"
    # QAT epochs, batch size, Adam learning rate; range re-estimation period in steps.
    qat_epochs: int = 30
    qat_batch_size: int = 32
    qat_learning_rate: float = 1e-3
    range_update_every: int = 1

    QUICK: ClassVar[dict] = {"seeds": (0,), "bits": (2,), "qat_epochs": 2, "qat_seeds": 2}

    def __post_init__(self):
        for name in ("bits", "range_methods"):
            if isinstance(getattr(self, name), list):
                object.__setattr__(self, name, tuple(getattr(self, name)))
        super().__post_init__()
        check_bits_tuple("bits", self.bits)
        check_choice("granularity", self.granularity, ("per_channel", "per_tensor"))
        for name in ("qat_seeds", "qat_epochs", "qat_batch_size", "range_update_every"):
            check_int(name, getattr(self, name), 1)
        check_float("qat_learning_rate", self.qat_learning_rate, low=0.0, open_low=True)
        if not isinstance(self.range_methods, tuple) or not self.range_methods:
            raise ValueError(
                "range_methods must be a non-empty tuple of names of bq_jax.quant.RANGE_METHODS, "
                f"got {self.range_methods!r}"
            )
        for m in self.range_methods:
            check_choice("range_methods[i]", m, quant.RANGE_METHODS)
        if len(set(self.range_methods)) != len(self.range_methods):
            raise ValueError(f"range_methods must be distinct, got {self.range_methods}")

    def weight_config(self, bits: int, range_method: str) -> quant.QuantConfig:
        """The weight ``QuantConfig`` (signed symmetric) of one run."""
        return quant.QuantConfig(
            bits=bits,
            symmetric=True,
            granularity=self.granularity,
            axis=-1,
            range_method=range_method,
        )

    def qat_config(self, bits: int, range_method: str) -> QATConfig:
        """The :class:`~bq_jax.qat.QATConfig` of one run (STE, range-method scales)."""
        return QATConfig(
            weights=self.weight_config(bits, range_method),
            epochs=self.qat_epochs,
            batch_size=self.qat_batch_size,
            learning_rate=float(self.qat_learning_rate),
            range_update_every=self.range_update_every,
        )

    def reasons(self) -> list[str]:
        return [
            f"STE-QAT with weight scales re-estimated by each range method every "
            f"{self.range_update_every} step(s): the runs differ only in the range method.",
            f"{self.qat_seeds} QAT runs (batch orders) per classifier: the loss-curve spread "
            "over them measures the stability StatQAT attributes to statistical ranges.",
            f"QAT: {self.qat_epochs} epochs, batch {self.qat_batch_size}, Adam "
            f"{self.qat_learning_rate:g}; weights signed symmetric {self.granularity}; biases "
            "and activations float.",
        ]


CONFIG = RangeMethodsConfig


def _layer_sqnr(plan, latent_params, deployed_params) -> dict[str, float]:
    from bq_jax.ptq import flatten_params

    lat = flatten_params({"params": latent_params})
    dep = flatten_params({"params": deployed_params})
    return {leaf.path: float(quant.sqnr_db(lat[leaf.path], dep[leaf.path])) for leaf in plan}


def _mean_over_layers(d: dict[str, float]) -> float:
    return float(np.mean(list(d.values())))


def compute(config: RangeMethodsConfig, seed: int, ctx, deps) -> tuple[dict, dict]:
    """One training seed: every (bits, range method) with ``qat_seeds`` QAT runs each."""
    from bq_jax import ptq, train

    apply_fn = ctx.apply_fn
    variables = ctx.float_params
    x_heldout, y_heldout = ctx.inputs("heldout"), ctx.targets("heldout")
    key = jax.random.key(seed)
    result: dict[str, Any] = {
        "model": ctx.model_name,
        "float_accuracy": train.accuracy(apply_fn, variables, x_heldout, y_heldout),
        "layers": [],
        "rows": [],
        "curves": {},
    }
    for bits in config.bits:
        for method in config.range_methods:
            qcfg = config.qat_config(bits, method)
            plan = resolve_plan(variables, qcfg.weights, targets=qcfg.targets)
            result["layers"] = [leaf.path for leaf in plan]
            v_ptq = ptq.quantize_weights(variables, config.weight_config(bits, method))
            init_scales, _ = init_qparams(variables, plan)
            accs, final_losses, curves, sqnrs, ratios = [], [], [], [], []
            for i in range(config.qat_seeds):
                res = qat_train(
                    ctx.model,
                    variables,
                    ctx.data,
                    qcfg,
                    jax.random.fold_in(key, 100 + i),
                    progress=config.progress,
                )
                accs.append(train.accuracy(apply_fn, res.variables, x_heldout, y_heldout))
                curve = [float(v) for v in res.history["epoch_loss"]]
                curves.append(curve)
                final_losses.append(curve[-1])
                sqnrs.append(_layer_sqnr(plan, res.params["params"], res.variables["params"]))
                ratios.append(
                    {
                        p: float(jnp.mean(res.scales[p]) / jnp.mean(init_scales[p]))
                        for p in init_scales
                    }
                )
            loss_mat = np.asarray(curves, np.float64)  # [runs, epochs]
            sqnr_init = _layer_sqnr(plan, variables["params"], v_ptq["params"])
            sqnr_final = {p: float(np.mean([s[p] for s in sqnrs])) for p in sqnr_init}
            result["rows"].append(
                {
                    "bits": bits,
                    "range_method": method,
                    "accuracy": float(np.mean(accs)),
                    "accuracy_spread": float(np.std(accs)),
                    "accuracy_min": float(np.min(accs)),
                    "accuracies": [float(a) for a in accs],
                    "ptq_accuracy": train.accuracy(apply_fn, v_ptq, x_heldout, y_heldout),
                    "final_loss": float(np.mean(final_losses)),
                    "final_loss_spread": float(np.std(final_losses)),
                    "loss_curve_spread": float(np.mean(np.std(loss_mat, axis=0))),
                    "ptq_sqnr_db": _mean_over_layers(sqnr_init),
                    "qat_sqnr_db": _mean_over_layers(sqnr_final),
                    "ptq_sqnr_db_per_layer": sqnr_init,
                    "qat_sqnr_db_per_layer": sqnr_final,
                    "scale_ratio": {p: float(np.mean([r[p] for r in ratios])) for p in ratios[0]},
                }
            )
            result["curves"][f"{bits}/{method}"] = {"epoch_loss": curves}
    return result, {}


def aggregate(config: RangeMethodsConfig, per_seed: list[dict]) -> dict:
    """Rows averaged over training seeds; per-layer SQNR and loss curves averaged too."""
    rows = mean_rows([r["rows"] for r in per_seed], ("bits", "range_method"))
    by_seed = [{(r["bits"], r["range_method"]): r for r in s["rows"]} for s in per_seed]
    for row in rows:
        k = (row["bits"], row["range_method"])
        for name in ("ptq_sqnr_db_per_layer", "qat_sqnr_db_per_layer", "scale_ratio"):
            layers = by_seed[0][k][name]
            row[name] = {p: float(np.mean([s[k][name][p] for s in by_seed])) for p in layers}
    curves = {}
    for name in per_seed[0]["curves"]:
        mats = [np.asarray(s["curves"][name]["epoch_loss"], np.float64) for s in per_seed]
        curves[name] = {
            "epoch_loss_mean": [float(v) for v in np.mean([m.mean(axis=0) for m in mats], 0)],
            "epoch_loss_spread": [float(v) for v in np.mean([m.std(axis=0) for m in mats], 0)],
        }
    return {
        "bits": list(config.bits),
        "range_methods": list(config.range_methods),
        "qat_seeds": config.qat_seeds,
        "layers": per_seed[0]["layers"],
        "rows": rows,
        "curves": curves,
    }


def findings(config: RangeMethodsConfig, results: dict) -> list[Finding]:
    """QAT recovers PTQ's accuracy; statistical ranges raise the PTQ weight SQNR over min-max;
    the most stable QAT run set (lowest loss-curve spread) uses a statistical range."""
    out = []
    for bits in config.bits:
        rows = {r["range_method"]: r for r in results["rows"] if r["bits"] == bits}
        if not rows:
            continue
        worst = min(rows, key=lambda m: rows[m]["accuracy"] - rows[m]["ptq_accuracy"])
        out.append(
            Finding(
                f"{bits}-bit: STE-QAT matches or beats round-to-nearest PTQ with the same "
                "range method (held-out accuracy at least PTQ's - 0.01) for every range method",
                all(r["accuracy"] >= r["ptq_accuracy"] - 0.01 for r in rows.values()),
                ", ".join(
                    f"{m} PTQ {r['ptq_accuracy']:.4f} -> QAT {r['accuracy']:.4f}"
                    for m, r in rows.items()
                )
                + f" (smallest gain: {worst})",
            )
        )
        if "minmax" in rows:
            ref = rows["minmax"]["ptq_sqnr_db"]
            for m, r in rows.items():
                if m == "minmax":
                    continue
                out.append(
                    Finding(
                        f"{bits}-bit: {m} ranges give the PTQ weights a higher SQNR than min-max",
                        bool(r["ptq_sqnr_db"] > ref),
                        f"{m} {r['ptq_sqnr_db']:.2f} dB vs minmax {ref:.2f} dB (mean over layers)",
                    )
                )
            if len(rows) > 1:
                spreads = {m: r["loss_curve_spread"] for m, r in rows.items()}
                best = min(spreads, key=spreads.get)
                out.append(
                    Finding(
                        f"{bits}-bit: the smallest loss-curve spread over QAT runs belongs to a "
                        "statistical range method, not min-max",
                        None if config.qat_seeds < 2 else bool(best != "minmax"),
                        ", ".join(f"{m} {v:.3g}" for m, v in spreads.items())
                        + (" (one QAT run: no spread)" if config.qat_seeds < 2 else ""),
                    )
                )
    return out


def figures(config: RangeMethodsConfig, results: dict, first_result: dict, arrays) -> dict:
    """Per bit width: loss curves by range method and their spread over QAT runs."""
    figs = {}
    for bits in config.bits:
        means, spreads = {}, {}
        for method in config.range_methods:
            c = results["curves"].get(f"{bits}/{method}")
            if c is None:
                continue
            epochs = list(range(1, len(c["epoch_loss_mean"]) + 1))
            means[method] = (epochs, c["epoch_loss_mean"])
            spreads[method] = (epochs, c["epoch_loss_spread"])
        if not means:
            continue
        for stem, curves, ylabel, title in (
            ("loss_curves", means, "training loss (epoch mean, mean over QAT runs)", "loss curve"),
            (
                "loss_curve_spread",
                spreads,
                "std over QAT runs of the epoch loss",
                "loss-curve spread",
            ),
        ):
            figs[f"{stem}_{bits}bit.png"] = plot_curves(
                curves,
                xlabel="QAT epoch",
                ylabel=ylabel,
                title=f"{bits}-bit STE-QAT: {title} by range method",
                logy=all(min(v[1]) > 0 for v in curves.values()),
            )
    return figs


COLUMNS = (
    "bits",
    "range_method",
    "ptq_accuracy",
    "accuracy",
    "accuracy_spread",
    "accuracy_min",
    "final_loss",
    "loss_curve_spread",
    "ptq_sqnr_db",
    "qat_sqnr_db",
)


def report_section(sec, config: RangeMethodsConfig, results: dict, figure_paths: dict) -> None:
    """The accuracy / stability / SQNR table, per-layer SQNR and the figures."""
    sec.text(
        f"STE-QAT with weight scales re-estimated by each range method every "
        f"{config.range_update_every} step(s); {config.qat_seeds} QAT runs (batch orders) per "
        f"classifier, {config.qat_epochs} epochs, batch {config.qat_batch_size}, Adam lr "
        f"{config.qat_learning_rate:g}. Weight quantizer: signed symmetric, "
        f"{config.granularity}; biases and activations float."
    )
    sec.text(
        "ptq_accuracy: round-to-nearest PTQ with the same quantizer (QAT step 0). accuracy: "
        "held-out, mean over QAT runs; accuracy_spread / accuracy_min: their std (ddof = 0) "
        "and minimum. loss_curve_spread: mean over epochs of the across-run std of the "
        "epoch-mean training loss. ptq_sqnr_db: SQNR of the PTQ weights against the float "
        "weights; qat_sqnr_db: SQNR of the deployed weights against the latent weights after "
        "QAT (both means over layers). ± is the spread over training seeds."
    )
    rows = [
        {c: r[c] if c in ("bits", "range_method") else mean_std_cell(r, c) for c in COLUMNS}
        for r in results["rows"]
    ]
    table(sec, rows, list(COLUMNS))
    sec.text("Per-layer SQNR (dB): PTQ init -> after QAT.")
    layers = results["layers"]
    per_layer = []
    for r in results["rows"]:
        row = {"bits": r["bits"], "range_method": r["range_method"]}
        for p in layers:
            row[p] = f"{r['ptq_sqnr_db_per_layer'][p]:.2f} -> {r['qat_sqnr_db_per_layer'][p]:.2f}"
        per_layer.append(row)
    table(sec, per_layer, ["bits", "range_method", *layers], left=("range_method",))
    captions = {
        "loss_curves": "epoch-mean training loss by range method (mean over QAT runs)",
        "loss_curve_spread": "std over QAT runs of the epoch-mean training loss by range method",
    }
    for name, path in figure_paths.items():
        stem, bits = name[: -len("bit.png")].rsplit("_", 1)
        sec.figure(path, f"{bits}-bit STE-QAT: {captions[stem]}.")
