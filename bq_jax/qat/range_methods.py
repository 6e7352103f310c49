"""Statistical quantizers in QAT: the same STE-QAT run with min-max, MSE, OCTAV-style and
analytic Gaussian range methods (StatQAT-style comparison).

On a trained float classifier (digits MLP by default, ``train.trained_classifier``), for every
bit width and range method it runs STE-QAT (:func:`bq_jax.qat.qat_train`, scales re-estimated
from the latent weights by the range method every ``range_update_every`` steps) from the same
float weights with ``num_seeds`` QAT seeds (the seeds draw the batch order), and reports:

* held-out ``accuracy`` of the deployed network (mean, std, min over seeds) and, for
  reference, of round-to-nearest PTQ with the same quantizer (``ptq_accuracy``: QAT at step 0);
* stability: ``loss_curve_spread``, the mean over epochs of the across-seed standard deviation
  of the epoch-mean training loss, and ``final_loss_std``, the across-seed standard deviation
  of the last epoch's loss;
* per-layer SQNR (dB) of the deployed weights against the weights they quantize:
  ``sqnr_init_db`` (PTQ of the float weights, step 0) and ``sqnr_final_db`` (the latent
  weights after QAT against their deployed grid values, mean over seeds).

results.json keys
-----------------
* ``schema_version`` (1), ``study`` ("qat_range_methods"), ``dataset``, ``model``, ``seed``,
  ``quick``, ``config`` (every setting), ``float_accuracy``, ``layers`` (quantized leaf paths).
* ``rows``: one per (``bits``, ``range_method``): ``accuracy_mean``, ``accuracy_std``,
  ``accuracy_min``, ``accuracies`` (per seed), ``ptq_accuracy``, ``final_loss_mean``,
  ``final_loss_std``, ``loss_curve_spread``, ``sqnr_init_db`` and ``sqnr_final_db``
  (``{layer: dB}``), ``sqnr_init_mean_db``, ``sqnr_final_mean_db`` (means over layers),
  ``scale_ratio`` (``{layer: mean final scale / mean initial scale}``, mean over seeds).
* ``curves``: ``{"<bits>/<range_method>": {"epoch_loss": [[per epoch] per seed]}}``.
* ``wall_time_s``.

Command: ``python experiments/qat_range_methods.py`` (full settings, about 2.5 min on 2 shared
CPU cores) or ``--quick``.
"""

from __future__ import annotations

import dataclasses
import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from bq_jax import quant
from bq_jax.qat import quantizers as qz
from bq_jax.qat.config import QATConfig, check_study_settings
from bq_jax.qat.training import qat_train

__all__ = [
    "RANGE_METHOD_CHOICES",
    "RangeMethodStudyConfig",
    "range_method_study_config",
    "run_range_method_study",
    "write_range_method_outputs",
]

# The statistical range methods compared (names of bq_jax.quant.RANGE_METHODS).
RANGE_METHOD_CHOICES = ("minmax", "mse", "octav", "gaussian")


@dataclasses.dataclass(frozen=True, kw_only=True)
class RangeMethodStudyConfig:
    """Settings of :func:`run_range_method_study` (frozen; presets in
    :func:`range_method_study_config`).

    Example:
      >>> cfg = RangeMethodStudyConfig(bits=(2,), range_methods=("minmax", "octav"))
    """

    # Data set of the float classifier (train.trained_classifier).
    dataset: str = "digits"
    # Architecture name or None for the data set's default (mlp on digits).
    model: str | None = None
    # Training seed of the float classifier; QAT seed i uses key fold_in(key(seed), 100 + i).
    seed: int = 0
    # Number of QAT seeds per (bits, range method).
    num_seeds: int = 3
    # Weight bit widths.
    bits: tuple[int, ...] = (2, 3, 4)
    # Range methods compared (subset of RANGE_METHOD_CHOICES, in this order).
    range_methods: tuple[str, ...] = RANGE_METHOD_CHOICES
    # Weight quantizer granularity ("per_channel" or "per_tensor").
    granularity: str = "per_channel"
    # QAT epochs, batch size, Adam learning rate; range re-estimation period in steps.
    qat_epochs: int = 30
    qat_batch_size: int = 32
    qat_learning_rate: float = 1e-3
    range_update_every: int = 1
    # Quick float classifier (train.trained_classifier(quick=True)).
    quick: bool = False
    # Checkpoint cache of bq_jax.train (None: its default) and tfds data directory.
    cache_dir: str | None = None
    data_dir: str | None = None

    def __post_init__(self):
        object.__setattr__(self, "bits", tuple(self.bits))
        object.__setattr__(self, "range_methods", tuple(self.range_methods))
        check_study_settings(
            self, ("num_seeds", "qat_epochs", "qat_batch_size", "range_update_every")
        )
        bad = [m for m in self.range_methods if m not in RANGE_METHOD_CHOICES]
        if not self.range_methods or bad:
            raise ValueError(
                f"range_methods must be a non-empty subset of {RANGE_METHOD_CHOICES}, "
                f"got {self.range_methods}"
            )

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
        """The :class:`QATConfig` of one run (STE, range-method scales)."""
        return QATConfig(
            weights=self.weight_config(bits, range_method),
            epochs=self.qat_epochs,
            batch_size=self.qat_batch_size,
            learning_rate=float(self.qat_learning_rate),
            range_update_every=self.range_update_every,
        )

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def range_method_study_config(*, quick: bool = False, **overrides) -> RangeMethodStudyConfig:
    """The study's settings; ``quick=True`` shrinks them for smoke tests (2 bits, 2 QAT
    epochs, 2 seeds, the quick float classifier).

    Example:
      >>> range_method_study_config(quick=True).num_seeds
      2
    """
    fields: dict[str, Any] = {}
    if quick:
        fields = dict(bits=(2,), qat_epochs=2, num_seeds=2, quick=True)
    fields.update(overrides)
    return RangeMethodStudyConfig(**fields)


def _layer_sqnr(plan, latent_params, deployed_params) -> dict[str, float]:
    from bq_jax.ptq import flatten_params

    lat = flatten_params({"params": latent_params})
    dep = flatten_params({"params": deployed_params})
    return {leaf.path: float(quant.sqnr_db(lat[leaf.path], dep[leaf.path])) for leaf in plan}


def _mean_over_layers(d: dict[str, float]) -> float:
    return float(np.mean(list(d.values())))


def run_range_method_study(
    config: RangeMethodStudyConfig | None = None,
    *,
    out_dir: str | None = None,
    progress: bool = True,
) -> dict:
    """Runs the range-method comparison (module docstring) and returns the results dict.

    Args:
      config: a :class:`RangeMethodStudyConfig` (None: :func:`range_method_study_config`).
      out_dir: when given, writes ``results.json``, ``report.md`` and ``figures/*.png`` there.
      progress: progress bars.

    Example:
      >>> res = run_range_method_study(range_method_study_config(quick=True))  # doctest: +SKIP
      >>> [(r["range_method"], r["accuracy_mean"]) for r in res["rows"]]  # doctest: +SKIP
    """
    from bq_jax import ptq, train

    config = range_method_study_config() if config is None else config
    if not isinstance(config, RangeMethodStudyConfig):
        raise TypeError(f"config must be a RangeMethodStudyConfig, got {type(config).__name__}")
    t_start = time.time()
    model, variables, data = train.trained_classifier(
        config.dataset,
        seed=config.seed,
        cache_dir=config.cache_dir,
        data_dir=config.data_dir,
        model=config.model,
        quick=config.quick,
        progress=progress,
    )
    apply_fn = model.apply_fn
    key = jax.random.key(config.seed)
    results: dict[str, Any] = {
        "schema_version": 1,
        "study": "qat_range_methods",
        "dataset": config.dataset,
        "model": model.name if hasattr(model, "name") else str(config.model),
        "seed": config.seed,
        "quick": config.quick,
        "config": config.to_dict(),
        "float_accuracy": train.accuracy(apply_fn, variables, data.x_test, data.y_test),
        "layers": [],
        "rows": [],
        "curves": {},
    }
    for bits in config.bits:
        for method in config.range_methods:
            qcfg = config.qat_config(bits, method)
            plan = qz.resolve_plan(variables, qcfg.weights, targets=qcfg.targets)
            results["layers"] = [leaf.path for leaf in plan]
            v_ptq = ptq.quantize_weights(variables, config.weight_config(bits, method))
            init_scales, _ = qz.init_qparams(variables, plan)
            accs, final_losses, curves, sqnrs, ratios = [], [], [], [], []
            for i in range(config.num_seeds):
                res = qat_train(
                    model,
                    variables,
                    data,
                    qcfg,
                    jax.random.fold_in(key, 100 + i),
                    progress=progress,
                )
                accs.append(train.accuracy(apply_fn, res.variables, data.x_test, data.y_test))
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
            loss_mat = np.asarray(curves, np.float64)  # [seeds, epochs]
            sqnr_init = _layer_sqnr(plan, variables["params"], v_ptq["params"])
            sqnr_final = {p: float(np.mean([s[p] for s in sqnrs])) for p in sqnr_init}
            results["rows"].append(
                {
                    "bits": bits,
                    "range_method": method,
                    "accuracy_mean": float(np.mean(accs)),
                    "accuracy_std": float(np.std(accs)),
                    "accuracy_min": float(np.min(accs)),
                    "accuracies": [float(a) for a in accs],
                    "ptq_accuracy": train.accuracy(apply_fn, v_ptq, data.x_test, data.y_test),
                    "final_loss_mean": float(np.mean(final_losses)),
                    "final_loss_std": float(np.std(final_losses)),
                    "loss_curve_spread": float(np.mean(np.std(loss_mat, axis=0))),
                    "sqnr_init_db": sqnr_init,
                    "sqnr_final_db": sqnr_final,
                    "sqnr_init_mean_db": _mean_over_layers(sqnr_init),
                    "sqnr_final_mean_db": _mean_over_layers(sqnr_final),
                    "scale_ratio": {p: float(np.mean([r[p] for r in ratios])) for p in ratios[0]},
                }
            )
            results["curves"][f"{bits}/{method}"] = {"epoch_loss": curves}
    results["wall_time_s"] = round(time.time() - t_start, 1)
    if out_dir is not None:
        write_range_method_outputs(results, out_dir)
    return results


_COLUMNS = (
    "bits",
    "range_method",
    "ptq_accuracy",
    "accuracy_mean",
    "accuracy_std",
    "accuracy_min",
    "final_loss_mean",
    "loss_curve_spread",
    "sqnr_init_mean_db",
    "sqnr_final_mean_db",
)


def write_range_method_outputs(results: dict, out_dir: str) -> dict[str, str]:
    """Writes ``results.json``, ``report.md`` and the figures of a range-method comparison.

    Returns:
      ``{name: path}`` of every file written.

    Example:
      >>> write_range_method_outputs(results, "/tmp/range_methods")  # doctest: +SKIP
    """
    from bq_jax.report import Report, plot_curves, save_figure, write_json

    os.makedirs(os.path.join(out_dir, "figures"), exist_ok=True)
    files = {"results": os.path.join(out_dir, "results.json")}
    write_json(files["results"], results)
    cfg = results["config"]
    figs = {}
    for bits in cfg["bits"]:
        means, spreads = {}, {}
        for method in cfg["range_methods"]:
            c = results["curves"].get(f"{bits}/{method}")
            if c is None:
                continue
            mat = np.asarray(c["epoch_loss"], np.float64)  # [seeds, epochs]
            epochs = list(range(1, mat.shape[1] + 1))
            means[method] = (epochs, mat.mean(axis=0))
            spreads[method] = (epochs, mat.std(axis=0))
        if not means:
            continue
        for name, curves, ylabel, title in (
            ("loss", means, "training loss (epoch mean, mean over seeds)", "loss curve"),
            ("spread", spreads, "std over seeds of the epoch loss", "loss-curve spread"),
        ):
            fig = plot_curves(
                curves,
                xlabel="QAT epoch",
                ylabel=ylabel,
                title=f"{bits}-bit STE-QAT: {title} by range method",
                logy=all(min(v[1]) > 0 for v in curves.values()),
            )
            stem = "loss_curves" if name == "loss" else "loss_curve_spread"
            figs[f"{name}_{bits}"] = os.path.join(out_dir, "figures", f"{stem}_{bits}bit.png")
            save_figure(fig, figs[f"{name}_{bits}"])
    rep = Report(
        f"Statistical quantizers in QAT — {results['dataset']} {results['model']}",
        intro=(
            f"STE-QAT of the float classifier (seed {results['seed']}, held-out accuracy "
            f"{results['float_accuracy']:.4f}) with weight scales re-estimated by each range "
            f"method every {cfg['range_update_every']} step(s); {cfg['num_seeds']} QAT seeds "
            f"(batch order), {cfg['qat_epochs']} epochs, batch {cfg['qat_batch_size']}, Adam "
            f"lr {cfg['qat_learning_rate']}. Weight quantizer: signed symmetric, "
            f"{cfg['granularity']}; biases and activations float. Wall time "
            f"{results.get('wall_time_s', 0):.0f} s."
        ),
    )
    sec = rep.section("Accuracy, stability and SQNR")
    sec.text(
        "ptq_accuracy: round-to-nearest PTQ with the same quantizer (QAT step 0). accuracy: "
        "held-out, over QAT seeds. loss_curve_spread: mean over epochs of the across-seed std "
        "of the epoch-mean training loss. sqnr_init_mean_db: SQNR of the PTQ weights against "
        "the float weights; sqnr_final_mean_db: SQNR of the deployed weights against the "
        "latent weights after QAT (both means over layers)."
    )
    fmt = {c: ".4g" for c in _COLUMNS if c not in ("bits", "range_method")}
    sec.table(results["rows"], list(_COLUMNS), formats=fmt)
    sec = rep.section("Per-layer SQNR (dB): PTQ init -> after QAT")
    layers = results["layers"]
    table = []
    for r in results["rows"]:
        row = {"bits": r["bits"], "range_method": r["range_method"]}
        for p in layers:
            row[p] = f"{r['sqnr_init_db'][p]:.2f} -> {r['sqnr_final_db'][p]:.2f}"
        table.append(row)
    sec.table(table, ["bits", "range_method", *layers])
    if figs:
        sec = rep.section("Figures")
        for name, path in figs.items():
            sec.figure(path, name.replace("_", " "))
    rep.section("Command").code(
        "python experiments/qat_range_methods.py" + (" --quick" if results["quick"] else ""),
        "bash",
    )
    files["report"] = os.path.join(out_dir, "report.md")
    rep.write(files["report"])
    files.update(figs)
    return files
