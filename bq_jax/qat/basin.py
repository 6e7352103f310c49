"""The "PTQ leaves the basin, QAT returns" study (QAT basin paper, arXiv:2606.09012).

On a trained float classifier (digits MLP by default, ``train.trained_classifier``), at each
bit width it builds five quantized solutions with the same weight quantizer (signed
symmetric, per output channel, min-max range unless configured otherwise):

* ``ptq_nearest``: PTQ-W, round to nearest (``ptq.quantize_weights``).
* ``ptq_adaround``: PTQ-W with AdaRound (``ptq.adaround``, calibration data).
* ``qat_ste``: QAT, loss and gradient at the quantized weights (straight-through), range
  scales re-estimated every step.
* ``qat_lsq``: QAT with LSQ learned step sizes (initialised by the range method).
* ``qat_float_gradient``: the ablation -- the same loop with the gradient taken at the float
  (latent) weights.

and measures (every loss is the mean cross-entropy on the TRAINING split, the objective QAT
minimises; the calibration loss is reported beside it): the loss along the line from the float
weights to each solution (:mod:`bq_jax.qat.landscape`), the excess loss at the quantized
point, the displacement along the top-k Hessian eigen-directions at the float solution
(Lanczos), the gradient / basin-direction cosines along each QAT trajectory, and the boundary
metrics of every solution (``geometry.compare``: ``flip_rate``, ``boundary_jaccard`` on the
training PCA slice, ...) with its held-out ``accuracy``.

results.json keys
-----------------
* ``schema_version`` (1), ``study`` ("qat_basin"), ``dataset``, ``model``, ``seed``, ``quick``,
  ``config`` (every setting), ``num_params``, ``num_test_examples``, ``resolution``.
* ``float``: ``accuracy`` (held-out), ``train_loss``, ``calibration_loss``.
* ``hessian``: ``method`` ("lanczos"), ``k``, ``eigenvalues`` (top-k, decreasing),
  ``sharp_fraction_random`` (``sqrt(k / P)``: the top-k share of an isotropic displacement).
* ``line_t``: the t values of every line.
* ``rows``: one per (``bits``, ``method``): ``accuracy``, ``train_loss``, ``calibration_loss``,
  ``excess_loss`` (train), ``line_barrier``, ``line_loss_max`` (max over t in [0, t_max]),
  ``displacement_norm``, ``sharp_fraction``, ``quadratic_excess`` (``d^T H d / 2``),
  ``quadratic_excess_topk``, ``quadratic_topk_share``, ``random_direction_excess``, and the
  ``geometry.compare`` keys (``flip_rate``, ``boundary_jaccard``, ``grid_change``,
  ``band_flip_rate``, ``pair_order_flip``, ``median_local_shift``, ...).
* ``lines``: ``{"<bits>/<method>": train loss at every line_t}``.
* ``trajectories``: ``{"<bits>/<method>": {"step", "deployed_loss", "latent_loss",
  "cosine_quantized", "cosine_float", "cosine_sharp", "cosine_step", "grad_sharp_fraction",
  "sharp_displacement", "displacement_norm"}}`` for the QAT methods (lists over snapshots;
  ``cosine_step`` is None at the last snapshot).
* ``trajectory_summary``: per (bits, method) means of the cosines and the first / last
  ``deployed_loss`` and ``sharp_displacement``.
* ``findings``: ``{"finding", "holds", "evidence"}`` checked from the numbers.

Command: ``python experiments/qat_basin.py`` (full settings, about 2-3 min on 2 shared CPU
cores) or ``--quick`` (well under a minute; for tests).
"""

from __future__ import annotations

import dataclasses
import os
import time
from typing import Any

import jax
import numpy as np
from jax.flatten_util import ravel_pytree

from bq_jax import quant
from bq_jax.qat import quantizers as qz
from bq_jax.qat.config import QATConfig, check_study_settings
from bq_jax.qat.hessian import flat_hvp, top_hessian_eigs
from bq_jax.qat.landscape import Landscape, cosine
from bq_jax.qat.training import qat_train

__all__ = ["BASIN_METHODS", "BasinConfig", "basin_config", "run_basin_study", "write_basin_outputs"]

BASIN_METHODS = ("ptq_nearest", "ptq_adaround", "qat_ste", "qat_lsq", "qat_float_gradient")
QAT_METHODS = ("qat_ste", "qat_lsq", "qat_float_gradient")
_GEOMETRY_KEYS = (
    "flip_rate",
    "boundary_jaccard",
    "grid_change",
    "band_flip_rate",
    "pair_order_flip",
    "median_local_shift",
    "normal_variation",
    "triple_junctions",
)


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


@dataclasses.dataclass(frozen=True, kw_only=True)
class BasinConfig:
    """Settings of :func:`run_basin_study` (frozen; see :func:`basin_config` for presets).

    Example:
      >>> cfg = BasinConfig(bits=(2, 3), qat_epochs=20)
    """

    # Data set of the float classifier (train.trained_classifier).
    dataset: str = "digits"
    # Architecture name or None for the data set's default (mlp on digits).
    model: str | None = None
    # Training seed of the float classifier; also the key of QAT, AdaRound and Lanczos.
    seed: int = 0
    # Weight bit widths.
    bits: tuple[int, ...] = (2, 3, 4)
    # Weight quantizer granularity ("per_channel" or "per_tensor") and range method.
    granularity: str = "per_channel"
    range_method: str = "minmax"
    # QAT epochs, batch size and Adam learning rate (shared by the three QAT methods).
    qat_epochs: int = 30
    qat_batch_size: int = 32
    qat_learning_rate: float = 1e-3
    # Methods to run (subset of BASIN_METHODS, in this order).
    methods: tuple[str, ...] = BASIN_METHODS
    # AdaRound optimisation steps per layer.
    adaround_iterations: int = 2000
    # Number of top Hessian eigen-directions and Lanczos steps.
    hessian_k: int = 10
    hessian_iters: int = 100
    # Line from the float weights: line_points values of t in [0, line_max] (t = 1 added).
    line_points: int = 31
    line_max: float = 1.5
    # QAT trajectory snapshot period in steps.
    snapshot_every: int = 8
    # Grid side of the training PCA slice of the boundary metrics.
    resolution: int = 128
    # Quick float classifier (train.trained_classifier(quick=True)) and shrunken settings.
    quick: bool = False
    # Checkpoint cache of bq_jax.train (None: its default) and tfds data directory.
    cache_dir: str | None = None
    data_dir: str | None = None

    def __post_init__(self):
        object.__setattr__(self, "bits", tuple(self.bits))
        object.__setattr__(self, "methods", tuple(self.methods))
        check_study_settings(
            self,
            (
                "qat_epochs",
                "qat_batch_size",
                "adaround_iterations",
                "hessian_k",
                "hessian_iters",
                "snapshot_every",
                "resolution",
            ),
        )
        bad = [m for m in self.methods if m not in BASIN_METHODS]
        if not self.methods or bad:
            raise ValueError(
                f"methods must be a non-empty subset of {BASIN_METHODS}, got {self.methods}"
            )
        if self.range_method not in quant.RANGE_METHODS:
            raise ValueError(
                f"range_method must be one of {quant.RANGE_METHODS}, got {self.range_method!r}"
            )
        if not (_is_int(self.line_points) and self.line_points >= 2):
            raise ValueError(f"line_points must be an int >= 2, got {self.line_points!r}")
        if not (isinstance(self.line_max, int | float) and self.line_max >= 1.0):
            raise ValueError(
                f"line_max must be >= 1 (t = 1 is the quantized point), got {self.line_max!r}"
            )

    def weight_config(self, bits: int):
        """The weight ``QuantConfig`` of every method at ``bits``."""
        return quant.QuantConfig(
            bits=bits,
            symmetric=True,
            granularity=self.granularity,
            axis=-1,
            range_method=self.range_method,
        )

    def qat_config(self, bits: int, method: str) -> QATConfig:
        """The :class:`QATConfig` of a QAT method at ``bits``."""
        base = dict(
            weights=self.weight_config(bits),
            epochs=self.qat_epochs,
            batch_size=self.qat_batch_size,
            learning_rate=float(self.qat_learning_rate),
            snapshot_every=self.snapshot_every,
        )
        if method == "qat_lsq":
            return QATConfig(**base, scale_mode="learned")
        if method == "qat_float_gradient":
            return QATConfig(**base, gradient_at="float")
        return QATConfig(**base)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def basin_config(*, quick: bool = False, **overrides) -> BasinConfig:
    """The study's settings; ``quick=True`` shrinks everything for smoke tests (2 bits, 2 QAT
    epochs, 40 AdaRound steps, k = 3, a 24 x 24 slice, the quick float classifier).

    Example:
      >>> basin_config(quick=True).bits
      (2,)
    """
    fields: dict[str, Any] = {}
    if quick:
        fields = dict(
            bits=(2,),
            qat_epochs=2,
            adaround_iterations=40,
            hessian_k=3,
            hessian_iters=20,
            line_points=7,
            snapshot_every=8,
            resolution=24,
            quick=True,
        )
    fields.update(overrides)
    return BasinConfig(**fields)


# ----------------------------------------------------------------------------- measurements


def _solution_row(land, land_cal, eig, matvec, variables_q, key) -> dict:
    d = np.asarray(land.flat(variables_q) - land.w_float, np.float64)
    coords = eig.vectors @ d
    norm = float(np.linalg.norm(d))
    hd = np.asarray(matvec(land.flat(variables_q) - land.w_float), np.float64)
    quad = 0.5 * float(d @ hd)
    quad_top = 0.5 * float(np.sum(eig.values * coords**2))
    return {
        "train_loss": land.loss(variables_q),
        "calibration_loss": land_cal.loss(variables_q),
        "displacement_norm": norm,
        "sharp_fraction": float(np.linalg.norm(coords) / norm) if norm > 0 else None,
        "quadratic_excess": quad,
        "quadratic_excess_topk": quad_top,
        "quadratic_topk_share": quad_top / quad if quad > 0 else None,
        "random_direction_excess": land.random_direction_excess(variables_q, key),
    }


def _line_row(line: np.ndarray, ts: np.ndarray) -> dict:
    inside = ts <= 1.0 + 1e-12
    l0, l1 = float(line[0]), float(line[np.argmin(np.abs(ts - 1.0))])
    return {
        "line_barrier": float(max(np.max(line[inside]) - max(l0, l1), 0.0)),
        "line_loss_max": float(np.max(line)),
    }


def _trajectory(res, plan, land, eig, ste_grad) -> dict:
    cfg = res.config
    snaps = res.history["snapshots"]
    wf = np.asarray(land.w_float, np.float64)
    keys = (
        "step",
        "deployed_loss",
        "latent_loss",
        "cosine_quantized",
        "cosine_float",
        "cosine_sharp",
        "cosine_step",
        "grad_sharp_fraction",
        "sharp_displacement",
        "displacement_norm",
    )
    out: dict[str, list] = {k: [] for k in keys}
    latents, backs = [], []
    # Scales and zero points the deployed network of a snapshot uses: range scales are a
    # function of the latent weights; learned / fixed ones are carried in the snapshot.
    deploy = land.deploy_fn(
        plan, range_scales=cfg.scale_mode == "range" and cfg.range_update_every > 0
    )
    for snap in snaps:
        params = snap["params"]
        wq_flat, scales, zps = deploy(params, snap["scales"], snap["zero_points"])
        vq = {"params": land.unravel(wq_flat)}
        wq = np.asarray(wq_flat, np.float64)
        wt = np.asarray(ravel_pytree(params)[0], np.float64)
        u = wf - wq
        latents.append(wt)
        backs.append(u)
        g_q = np.asarray(ste_grad(params, scales, zps), np.float64)
        g_f = land.grad(wt)
        c = eig.vectors @ (wq - wf)
        gq_norm = np.linalg.norm(g_q)
        out["step"].append(int(snap["step"]))
        out["deployed_loss"].append(land.loss(vq))
        out["latent_loss"].append(land.loss({"params": params}))
        out["cosine_quantized"].append(cosine(-g_q, u))
        out["cosine_float"].append(cosine(-g_f, u))
        out["cosine_sharp"].append(cosine(-g_q, -(eig.vectors.T @ c)))
        out["grad_sharp_fraction"].append(
            float(np.linalg.norm(eig.vectors @ g_q) / gq_norm) if gq_norm > 0 else None
        )
        out["sharp_displacement"].append(float(np.linalg.norm(c)))
        out["displacement_norm"].append(float(np.linalg.norm(u)))
    # the actual latent move to the next snapshot against the way back at this one
    for i in range(len(latents)):
        nxt = latents[i + 1] - latents[i] if i + 1 < len(latents) else None
        out["cosine_step"].append(None if nxt is None else cosine(nxt, backs[i]))
    return out


def _mean(values) -> float | None:
    v = [x for x in values if x is not None]
    return float(np.mean(v)) if v else None


def _trajectory_summary(bits: int, method: str, tr: dict) -> dict:
    return {
        "bits": bits,
        "method": method,
        "cosine_quantized_mean": _mean(tr["cosine_quantized"]),
        "cosine_float_mean": _mean(tr["cosine_float"]),
        "cosine_sharp_mean": _mean(tr["cosine_sharp"]),
        "cosine_step_mean": _mean(tr["cosine_step"]),
        "grad_sharp_fraction_mean": _mean(tr["grad_sharp_fraction"]),
        "deployed_loss_start": tr["deployed_loss"][0],
        "deployed_loss_end": tr["deployed_loss"][-1],
        "sharp_displacement_start": tr["sharp_displacement"][0],
        "sharp_displacement_end": tr["sharp_displacement"][-1],
    }


def _find(rows, bits, method, key):
    for r in rows:
        if r["bits"] == bits and r["method"] == method:
            return r.get(key)
    return None


def _findings(results: dict) -> list[dict]:
    rows, trs = results["rows"], results["trajectory_summary"]
    out = []
    for bits in results["config"]["bits"]:
        ptq = [
            m
            for m in ("ptq_nearest", "ptq_adaround")
            if _find(rows, bits, m, "accuracy") is not None
        ]
        best_ptq = max(ptq, key=lambda m: _find(rows, bits, m, "accuracy")) if ptq else None
        ste_acc = _find(rows, bits, "qat_ste", "accuracy")
        if best_ptq and ste_acc is not None:
            p_acc = _find(rows, bits, best_ptq, "accuracy")
            gain = ste_acc - p_acc
            out.append(
                {
                    "finding": f"{bits}-bit: STE-QAT beats the best PTQ on held-out accuracy "
                    "by more than 0.02",
                    "holds": bool(gain > 0.02),
                    "evidence": f"qat_ste {ste_acc:.4f} vs {best_ptq} {p_acc:.4f} ({gain:+.4f})",
                }
            )
            e_p = _find(rows, bits, best_ptq, "excess_loss")
            e_q = _find(rows, bits, "qat_ste", "excess_loss")
            out.append(
                {
                    "finding": f"{bits}-bit: the PTQ point sits higher on the training loss "
                    "than the STE-QAT point (PTQ leaves the basin)",
                    "holds": bool(e_p > e_q),
                    "evidence": f"excess train loss {best_ptq} {e_p:.4f} vs qat_ste {e_q:.4f}",
                }
            )
        abl = _find(rows, bits, "qat_float_gradient", "accuracy")
        if ste_acc is not None and abl is not None:
            out.append(
                {
                    "finding": f"{bits}-bit: the gradient at the quantized weights is what "
                    "recovers (float-gradient ablation more than 0.02 below STE-QAT)",
                    "holds": bool(ste_acc - abl > 0.02),
                    "evidence": f"qat_ste {ste_acc:.4f} vs qat_float_gradient {abl:.4f}",
                }
            )
        for t in trs:
            if t["bits"] == bits and t["method"] == "qat_ste":
                cq, cf = t["cosine_quantized_mean"], t["cosine_float_mean"]
                if cq is not None and cf is not None:
                    out.append(
                        {
                            "finding": f"{bits}-bit: along the STE trajectory the gradient at the "
                            "quantized weights points back toward the basin (w_F - w_q), more "
                            "than the float gradient at the same iterates",
                            "holds": bool(cq > 0 and cq > cf),
                            "evidence": f"mean cos(-g_Q, w_F - w_q) {cq:.3f} vs "
                            f"mean cos(-grad L(w), w_F - w_q) {cf:.3f} (a random direction: "
                            f"about +-{1 / np.sqrt(results['num_params']):.3f})",
                        }
                    )
                s0, s1 = t["sharp_displacement_start"], t["sharp_displacement_end"]
                out.append(
                    {
                        "finding": f"{bits}-bit: STE-QAT shrinks the deployed point's displacement "
                        "along the top Hessian directions",
                        "holds": bool(s1 < s0),
                        "evidence": f"|V_k (w_q - w_F)| {s0:.4f} at step 0 -> {s1:.4f} at the end",
                    }
                )
    return out


# ----------------------------------------------------------------------------- the study


def run_basin_study(
    config: BasinConfig | None = None,
    *,
    out_dir: str | None = None,
    progress: bool = True,
    return_solutions: bool = False,
):
    """Runs the basin study (module docstring) and returns the results dict.

    Args:
      config: a :class:`BasinConfig` (None: :func:`basin_config` defaults).
      out_dir: when given, writes ``results.json``, ``report.md`` and ``figures/*.png`` there.
      progress: progress bars.
      return_solutions: also return the quantized solutions.

    Returns:
      The results dict (keys in the module docstring); with ``return_solutions`` the pair
      ``(results, solutions)``, ``solutions[(bits, method)]`` holding ``variables`` (the
      deployed variables dict), ``scales`` and ``zero_points`` (``{kernel path: array}``, the
      grid each kernel lies on); ``solutions["float"]`` holds the float ``variables``,
      ``apply_fn``, ``x_train``, ``y_train``, ``x_test`` and ``y_test``.

    Example:
      >>> res = run_basin_study(basin_config(quick=True), out_dir="/tmp/basin", progress=False)
      ... # doctest: +SKIP
      >>> [r["accuracy"] for r in res["rows"]]  # doctest: +SKIP
    """
    from bq_jax import geometry, ptq, train

    config = basin_config() if config is None else config
    if not isinstance(config, BasinConfig):
        raise TypeError(f"config must be a BasinConfig, got {type(config).__name__}")
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
    land = Landscape(apply_fn, variables, data.x_train, data.y_train)
    land_cal = Landscape(apply_fn, variables, data.x_calibration, data.y_calibration)
    eig = top_hessian_eigs(
        land.params_loss,
        variables["params"],
        config.hessian_k,
        method="lanczos",
        num_iters=config.hessian_iters,
        key=jax.random.fold_in(key, 1),
    )
    matvec, _, _ = flat_hvp(land.params_loss, variables["params"])
    slc = geometry.pca_slice(data.x_train, resolution=config.resolution)
    ts = np.union1d(np.linspace(0.0, float(config.line_max), config.line_points), [1.0])
    float_acc = train.accuracy(apply_fn, variables, data.x_test, data.y_test)
    l_float = land.loss(variables)
    results: dict[str, Any] = {
        "schema_version": 1,
        "study": "qat_basin",
        "dataset": config.dataset,
        "model": model.name if hasattr(model, "name") else str(config.model),
        "seed": config.seed,
        "quick": config.quick,
        "config": config.to_dict(),
        "num_params": land.num_params,
        "num_test_examples": int(np.shape(data.y_test)[0]),
        "resolution": config.resolution,
        "float": {
            "accuracy": float_acc,
            "train_loss": l_float,
            "calibration_loss": land_cal.loss(variables),
        },
        "hessian": {
            "method": eig.method,
            "k": config.hessian_k,
            "eigenvalues": [float(v) for v in eig.values],
            "sharp_fraction_random": float(np.sqrt(config.hessian_k / land.num_params)),
        },
        "line_t": [float(t) for t in ts],
        "rows": [],
        "lines": {},
        "trajectories": {},
        "trajectory_summary": [],
    }
    kept: dict[Any, Any] = {
        "float": {
            "variables": variables,
            "apply_fn": apply_fn,
            "x_train": data.x_train,
            "y_train": data.y_train,
            "x_test": data.x_test,
            "y_test": data.y_test,
        }
    }
    for bits in config.bits:
        wcfg = config.weight_config(bits)
        solutions: dict[str, Any] = {}
        qat_runs = {}
        ptq_plan = qz.resolve_plan(variables, wcfg, targets=QATConfig(weights=wcfg).targets)
        ptq_grid = qz.init_qparams(variables, ptq_plan)
        for method in config.methods:
            if method == "ptq_nearest":
                solutions[method] = ptq.quantize_weights(variables, wcfg)
            elif method == "ptq_adaround":
                solutions[method] = ptq.adaround(
                    apply_fn,
                    variables,
                    data.x_calibration,
                    ptq.AdaRoundConfig(weights=wcfg, iterations=config.adaround_iterations),
                    jax.random.fold_in(key, 1000 + bits),
                    progress=progress,
                )
            else:
                res = qat_train(
                    model,
                    variables,
                    data,
                    config.qat_config(bits, method),
                    jax.random.fold_in(key, bits),
                    progress=progress,
                )
                solutions[method] = res.variables
                qat_runs[method] = res
        names = list(solutions)
        if return_solutions:
            for method in names:
                grid = (
                    (qat_runs[method].scales, qat_runs[method].zero_points)
                    if method in qat_runs
                    else ptq_grid
                )
                kept[(bits, method)] = {
                    "variables": solutions[method],
                    "scales": grid[0],
                    "zero_points": grid[1],
                }
        stack = ptq.stack_params([solutions[m] for m in names])
        geo = geometry.compare_records(
            geometry.compare(apply_fn, variables, stack, slc, data.x_test, data.x_calibration)
        )
        for i, method in enumerate(names):
            vq = solutions[method]
            line = land.line(vq, ts)
            row = {
                "bits": bits,
                "method": method,
                "accuracy": train.accuracy(apply_fn, vq, data.x_test, data.y_test),
                **_solution_row(land, land_cal, eig, matvec, vq, jax.random.fold_in(key, 7)),
                **_line_row(line, ts),
            }
            row["excess_loss"] = row["train_loss"] - l_float
            row.update({k: geo[i][k] for k in _GEOMETRY_KEYS if k in geo[i]})
            results["rows"].append(row)
            results["lines"][f"{bits}/{method}"] = [float(v) for v in line]
        for method, res in qat_runs.items():
            plan = qz.resolve_plan(variables, res.config.weights, targets=res.config.targets)
            tr = _trajectory(res, plan, land, eig, land.ste_grad_fn(plan))
            results["trajectories"][f"{bits}/{method}"] = tr
            results["trajectory_summary"].append(_trajectory_summary(bits, method, tr))
    results["findings"] = _findings(results)
    results["wall_time_s"] = round(time.time() - t_start, 1)
    if out_dir is not None:
        write_basin_outputs(results, out_dir)
    if return_solutions:
        return results, kept
    return results


# ----------------------------------------------------------------------------- outputs

_ROW_COLUMNS = (
    "bits",
    "method",
    "accuracy",
    "train_loss",
    "excess_loss",
    "line_barrier",
    "sharp_fraction",
    "quadratic_topk_share",
    "random_direction_excess",
    "flip_rate",
    "boundary_jaccard",
)
_TRAJ_COLUMNS = (
    "bits",
    "method",
    "cosine_quantized_mean",
    "cosine_float_mean",
    "cosine_sharp_mean",
    "cosine_step_mean",
    "deployed_loss_start",
    "deployed_loss_end",
    "sharp_displacement_start",
    "sharp_displacement_end",
)


def _command(results: dict) -> str:
    """The ``experiments/qat_basin.py`` command line that reproduces ``results``."""
    cfg = results["config"]
    default = basin_config(quick=bool(results["quick"])).to_dict()
    parts = ["python experiments/qat_basin.py"] + (["--quick"] if results["quick"] else [])
    for key, flag in (
        ("seed", "--seed"),
        ("bits", "--bits"),
        ("qat_epochs", "--qat-epochs"),
        ("adaround_iterations", "--adaround-iterations"),
        ("range_method", "--range-method"),
    ):
        value, ref = cfg[key], default[key]
        if key == "bits":
            value, ref = ",".join(str(b) for b in value), ",".join(str(b) for b in ref)
        if value != ref:
            parts.append(f"{flag} {value}")
    return " ".join(parts)


def write_basin_outputs(results: dict, out_dir: str) -> dict[str, str]:
    """Writes ``results.json``, ``report.md`` and the figures of a basin-study result.

    Returns:
      ``{name: path}`` of every file written.

    Example:
      >>> write_basin_outputs(results, "/tmp/basin")  # doctest: +SKIP
    """
    from bq_jax.report import Report, plot_curves, save_figure, write_json

    os.makedirs(os.path.join(out_dir, "figures"), exist_ok=True)
    files = {"results": os.path.join(out_dir, "results.json")}
    write_json(files["results"], results)
    ts = results["line_t"]
    figs = {}
    for bits in results["config"]["bits"]:
        curves = {
            m: (ts, results["lines"][f"{bits}/{m}"])
            for m in results["config"]["methods"]
            if f"{bits}/{m}" in results["lines"]
        }
        fig = plot_curves(
            curves,
            xlabel="t  (w = w_F + t (w_Q - w_F); t = 1 is the deployed point)",
            ylabel="training loss",
            title=f"{bits}-bit: loss along the line from the float weights",
            logy=all(min(c[1]) > 0 for c in curves.values()),
            vlines={"t = 1": 1.0},
        )
        figs[f"line_{bits}"] = os.path.join(out_dir, "figures", f"loss_along_line_{bits}bit.png")
        save_figure(fig, figs[f"line_{bits}"])
        cos_curves = {}
        loss_curves = {}
        for m in QAT_METHODS:
            tr = results["trajectories"].get(f"{bits}/{m}")
            if tr is None:
                continue
            steps = tr["step"]
            if m == "qat_float_gradient":
                pts = [
                    (s, c) for s, c in zip(steps, tr["cosine_float"], strict=True) if c is not None
                ]
                label = f"{m}: cos(-grad L(w), w_F - w_q)"
            else:
                pts = [
                    (s, c)
                    for s, c in zip(steps, tr["cosine_quantized"], strict=True)
                    if c is not None
                ]
                label = f"{m}: cos(-g_Q, w_F - w_q)"
            if pts:
                cos_curves[label] = ([p[0] for p in pts], [p[1] for p in pts])
            if m == "qat_ste":
                pts = [
                    (s, c) for s, c in zip(steps, tr["cosine_float"], strict=True) if c is not None
                ]
                if pts:
                    cos_curves["qat_ste iterates: cos(-grad L(w), w_F - w_q)"] = (
                        [p[0] for p in pts],
                        [p[1] for p in pts],
                    )
            loss_curves[m] = (steps, tr["deployed_loss"])
        if cos_curves:
            fig = plot_curves(
                cos_curves,
                xlabel="QAT step",
                ylabel="cosine with the way back to the basin",
                title=f"{bits}-bit: gradient vs basin direction along QAT",
            )
            figs[f"cos_{bits}"] = os.path.join(
                out_dir, "figures", f"trajectory_cosine_{bits}bit.png"
            )
            save_figure(fig, figs[f"cos_{bits}"])
        if loss_curves:
            fig = plot_curves(
                loss_curves,
                xlabel="QAT step",
                ylabel="training loss of the deployed weights",
                title=f"{bits}-bit: deployed loss along QAT",
                logy=all(min(c[1]) > 0 for c in loss_curves.values()),
            )
            figs[f"traj_loss_{bits}"] = os.path.join(
                out_dir, "figures", f"trajectory_loss_{bits}bit.png"
            )
            save_figure(fig, figs[f"traj_loss_{bits}"])
    rep = Report(
        f"PTQ leaves the basin, QAT returns — {results['dataset']} {results['model']}",
        intro=(
            f"Seed {results['seed']}, {results['num_params']} parameters, float held-out "
            f"accuracy {results['float']['accuracy']:.4f} on "
            f"{results.get('num_test_examples', '?')} held-out examples (one example = "
            f"{1 / max(results.get('num_test_examples', 1), 1):.4f}), float training loss "
            f"{results['float']['train_loss']:.4g}. Losses are mean cross-entropy on the "
            "training split (the QAT objective). Weight quantizer: signed symmetric, "
            f"{results['config']['granularity']}, {results['config']['range_method']} range; "
            "biases and activations float. Wall time "
            f"{results.get('wall_time_s', 0):.0f} s."
        ),
    )
    sec = rep.section("Findings (checked from the numbers)")
    sec.table(results["findings"], ["finding", "holds", "evidence"])
    sec = rep.section("Solutions")
    sec.text(
        "accuracy: held-out. excess_loss: L(w_Q) - L(w_F). line_barrier: max of the loss on "
        "the segment [w_F, w_Q] above its higher end. sharp_fraction: |V_k d| / |d| for "
        f"d = w_Q - w_F and the top-{results['hessian']['k']} Hessian eigenvectors V_k at w_F "
        f"(isotropic d: {results['hessian']['sharp_fraction_random']:.4f}). "
        "quadratic_topk_share: share of d^T H d carried by the top-k directions. "
        "random_direction_excess: excess loss of random directions with d's per-layer norms. "
        "boundary_jaccard: Jaccard distance of the boundary (0 = the float boundary) on the "
        f"training PCA slice at resolution {results['resolution']}; flip_rate: held-out "
        "predictions that differ from the float model's."
    )
    fmt = {c: ".4g" for c in _ROW_COLUMNS if c not in ("bits", "method")}
    sec.table(results["rows"], list(_ROW_COLUMNS), formats=fmt)
    sec = rep.section("QAT trajectories")
    sec.text(
        "cosine_quantized: cos(-g_Q, w_F - w_q) with g_Q the straight-through gradient at the "
        "quantized weights (what STE-QAT follows); cosine_float: cos(-grad L(w), w_F - w_q) at "
        "the same latent iterate w (what the float-gradient ablation follows); cosine_sharp: "
        "cos(-g_Q, -V_k V_k^T (w_q - w_F)); cosine_step: cos of the actual latent move to the "
        "next snapshot with w_F - w_q. sharp_displacement: |V_k^T (w_q - w_F)|. Means over "
        "the snapshots. For scale: two independent random directions in the "
        f"{results['num_params']}-dimensional weight space have |cos| of about "
        f"1/sqrt(P) = {1 / np.sqrt(results['num_params']):.4f}."
    )
    fmt = {c: ".4g" for c in _TRAJ_COLUMNS if c not in ("bits", "method")}
    sec.table(results["trajectory_summary"], list(_TRAJ_COLUMNS), formats=fmt)
    sec = rep.section("Hessian at the float solution")
    sec.text(
        f"Top-{results['hessian']['k']} eigenvalues (Lanczos): "
        + ", ".join(f"{v:.4g}" for v in results["hessian"]["eigenvalues"])
    )
    sec = rep.section("Figures")
    for name, path in figs.items():
        sec.figure(path, name.replace("_", " "))
    rep.section("Command").code(_command(results), "bash")
    files["report"] = os.path.join(out_dir, "report.md")
    rep.write(files["report"])
    files.update(figs)
    return files
