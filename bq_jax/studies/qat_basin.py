"""PTQ leaves the basin, QAT returns (QAT basin paper, arXiv:2606.09012).

On the trained float classifier of each seed, at each bit width of ``bits`` five quantized
solutions are built with the same weight quantizer (signed symmetric, ``granularity``,
``range_method``; biases and activations stay float):

* ``ptq_nearest``: PTQ-W, round to nearest (``ptq.quantize_weights``).
* ``ptq_adaround``: PTQ-W with AdaRound (``ptq.adaround``, calibration data,
  ``rounding_iters`` steps per layer).
* ``qat_ste``: QAT, loss and gradient at the quantized weights (straight-through), range
  scales re-estimated every step.
* ``qat_lsq``: QAT with LSQ learned step sizes (initialised by the range method).
* ``qat_float_gradient``: the ablation -- the same loop with the gradient taken at the float
  (latent) weights.

Every loss is the mean cross-entropy on the TRAINING split (the objective QAT minimises; the
calibration loss is reported beside it). Measured per solution: the loss along the line from
the float weights ``w_F`` to the solution ``w_Q`` (:mod:`bq_jax.qat.landscape`), the excess
loss at ``w_Q``, the displacement ``d = w_Q - w_F`` along the top-``hessian_k`` Hessian
eigen-directions at ``w_F`` (Lanczos), the boundary metrics of ``geometry.compare`` (training
PCA slice at ``resolution``, held-out inputs and their low-margin band) and the held-out
accuracy; along each QAT trajectory, the cosines between the gradient and the way back to the
basin ``w_F - w_q``.

Randomness: ``key = jax.random.key(seed)``; Lanczos ``fold_in(key, 1)``, the random-direction
control ``fold_in(key, 7)``, QAT at ``b`` bits ``fold_in(key, b)``, AdaRound at ``b`` bits
``fold_in(key, 1000 + b)``.

Per-seed result (``per_seed[i]["qat_basin"]``)
----------------------------------------------
* ``model``, ``float_accuracy`` (held-out), ``float_train_loss``, ``float_calibration_loss``,
  ``num_params``, ``num_heldout_examples``.
* ``hessian``: ``method`` ("lanczos"), ``k``, ``eigenvalues`` (top-k, decreasing),
  ``sharp_fraction_random`` (``sqrt(k / P)``: the top-k share of an isotropic displacement).
* ``line_t``: the t values of every line; ``lines``: ``{"<bits>/<method>": train loss at every
  line_t}``.
* ``rows``: one per (``bits``, ``method``): ``accuracy``, ``train_loss``, ``calibration_loss``,
  ``excess_loss``, ``line_barrier``, ``line_loss_max``, ``displacement_norm``,
  ``sharp_fraction``, ``quadratic_excess`` (``d^T H d / 2``), ``quadratic_excess_topk``,
  ``quadratic_topk_share``, ``random_direction_excess`` and the ``geometry.compare`` keys
  (``flip_rate``, ``boundary_jaccard_distance``, ``grid_change``, ``band_flip_rate``,
  ``pair_order_flip``, ``median_local_shift``, ``normal_variation``,
  ``triple_junction_count``).
* ``trajectories``: ``{"<bits>/<method>": {"step", "deployed_loss", "latent_loss",
  "cosine_quantized", "cosine_float", "cosine_sharp", "cosine_step", "grad_sharp_fraction",
  "sharp_displacement", "displacement_norm"}}`` for the QAT methods (lists over snapshots;
  ``cosine_step`` is None at the last snapshot).
* ``trajectory_summary``: per (bits, QAT method) means of the cosines over the snapshots and
  the first / last ``deployed_loss`` and ``sharp_displacement``.

Aggregate (``results["qat_basin"]``): ``rows`` and ``trajectory_summary`` averaged over seeds
(``x``, ``x_std``, ``n_seeds``), ``float_train_loss`` (+ ``_std``), ``hessian_eigenvalues``
(mean over seeds of each of the top-k), ``num_params``, ``num_heldout_examples``,
``sharp_fraction_random``, ``bits``, ``methods``, ``hessian_k``, ``resolution``.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import jax
import numpy as np
from jax.flatten_util import ravel_pytree

from bq_jax import quant
from bq_jax._src.checks import check_choice, check_float, check_int
from bq_jax.qat.config import QATConfig
from bq_jax.qat.hessian import flat_hvp, top_hessian_eigs
from bq_jax.qat.landscape import Landscape, cosine
from bq_jax.qat.quantizers import init_qparams, resolve_plan
from bq_jax.qat.training import qat_train
from bq_jax.report import plot_curves
from bq_jax.stats import mean_rows, mean_std
from bq_jax.studies.config import BaseConfig, check_bits_tuple
from bq_jax.studies.protocol import Finding
from bq_jax.studies.reporting import mean_std_cell, table

__all__ = [
    "BASIN_METHODS",
    "QAT_METHODS",
    "BasinConfig",
    "solve",
    "compute",
    "aggregate",
    "findings",
    "figures",
    "report_section",
]

NAME = "qat_basin"
TITLE = "PTQ leaves the basin, QAT returns"
DEPENDS: tuple[str, ...] = ()

#: The solutions compared, in report order.
BASIN_METHODS = ("ptq_nearest", "ptq_adaround", "qat_ste", "qat_lsq", "qat_float_gradient")
#: The methods that train (and have a trajectory).
QAT_METHODS = ("qat_ste", "qat_lsq", "qat_float_gradient")
# geometry.compare keys kept in a row.
_GEOMETRY_KEYS = (
    "flip_rate",
    "boundary_jaccard_distance",
    "grid_change",
    "band_flip_rate",
    "pair_order_flip",
    "median_local_shift",
    "normal_variation",
    "triple_junction_count",
)


@dataclasses.dataclass(frozen=True, kw_only=True)
class BasinConfig(BaseConfig):
    """Settings of the QAT basin study (frozen, validated; ``QUICK``: the smoke-test preset).

    Example:
        >>> cfg = BasinConfig(bits=(2, 3), qat_epochs=20)
        >>> cfg.seeds, cfg.resolution
        ((0,), 128)
    """

    # Training seeds (the committed results: seed 0, and separately seeds 1 and 2). The seed
    # also keys QAT, AdaRound and Lanczos (module docstring).
    seeds: tuple[int, ...] = (0,)
    # Grid side of the training PCA slice of the boundary metrics.
    resolution: int = 128
    # Weight bit widths.
    bits: tuple[int, ...] = (2, 3, 4)
    # Weight quantizer granularity ("per_channel" or "per_tensor") and range method (one of
    # bq_jax.quant.RANGE_METHODS), shared by every solution.
    granularity: str = "per_channel"
    range_method: str = "minmax"
    # QAT epochs, batch size and Adam learning rate (shared by the three QAT methods).
    qat_epochs: int = 30
    qat_batch_size: int = 32
    qat_learning_rate: float = 1e-3
    # Methods to run (subset of BASIN_METHODS, in this order).
    methods: tuple[str, ...] = BASIN_METHODS
    # AdaRound optimisation steps per layer.
    rounding_iters: int = 2000
    # Number of top Hessian eigen-directions and Lanczos steps.
    hessian_k: int = 10
    hessian_iters: int = 100
    # Line from the float weights: line_points values of t in [0, line_max] (t = 1 added).
    line_points: int = 31
    line_max: float = 1.5
    # QAT trajectory snapshot period in steps.
    snapshot_every: int = 8

    QUICK: ClassVar[dict] = {
        "seeds": (0,),
        "bits": (2,),
        "qat_epochs": 2,
        "rounding_iters": 40,
        "hessian_k": 3,
        "hessian_iters": 20,
        "line_points": 7,
        "snapshot_every": 8,
        "resolution": 24,
    }

    def __post_init__(self):
        for name in ("bits", "methods"):
            if isinstance(getattr(self, name), list):
                object.__setattr__(self, name, tuple(getattr(self, name)))
        super().__post_init__()
        check_bits_tuple("bits", self.bits)
        check_choice("granularity", self.granularity, ("per_channel", "per_tensor"))
        check_choice("range_method", self.range_method, quant.RANGE_METHODS)
        for name in (
            "qat_epochs",
            "qat_batch_size",
            "rounding_iters",
            "hessian_k",
            "hessian_iters",
            "snapshot_every",
        ):
            check_int(name, getattr(self, name), 1)
        check_float("qat_learning_rate", self.qat_learning_rate, low=0.0, open_low=True)
        if not isinstance(self.methods, tuple) or not self.methods:
            raise ValueError(
                f"methods must be a non-empty subset of {BASIN_METHODS}, got {self.methods!r}"
            )
        for m in self.methods:
            check_choice("methods[i]", m, BASIN_METHODS)
        check_int("line_points", self.line_points, 2)
        check_float("line_max", self.line_max, low=1.0)  # t = 1 is the quantized point

    def weight_config(self, bits: int) -> quant.QuantConfig:
        """The weight ``QuantConfig`` of every method at ``bits``."""
        return quant.QuantConfig(
            bits=bits,
            symmetric=True,
            granularity=self.granularity,
            axis=-1,
            range_method=self.range_method,
        )

    def qat_config(self, bits: int, method: str) -> QATConfig:
        """The :class:`~bq_jax.qat.QATConfig` of a QAT method at ``bits``."""
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

    def reasons(self) -> list[str]:
        return [
            "Weights: signed symmetric, "
            f"{self.granularity}, {self.range_method} range, for every solution, so the "
            "solutions differ only in how they reach their grid points.",
            "Losses are mean cross-entropy on the training split: the objective QAT minimises "
            "(the calibration loss is reported beside it).",
            f"Hessian: top-{self.hessian_k} eigenpairs at the float solution by Lanczos "
            f"({self.hessian_iters} steps).",
            f"QAT: {self.qat_epochs} epochs, batch {self.qat_batch_size}, Adam "
            f"{self.qat_learning_rate:g}; AdaRound {self.rounding_iters} steps per layer.",
        ]


CONFIG = BasinConfig


# ----------------------------------------------------------------------------- solutions


def _key(seed: int):
    return jax.random.key(seed)


def _solve_bits(config: BasinConfig, ctx, bits: int) -> dict:
    """The solutions of ``config.methods`` at ``bits``: ``{method: {"variables", "scales",
    "zero_points", "qat"}}`` (``qat``: the :class:`~bq_jax.qat.QATResult`, None for PTQ)."""
    from bq_jax import ptq

    key = _key(ctx.seed)
    variables = ctx.float_params
    wcfg = config.weight_config(bits)
    plan = resolve_plan(variables, wcfg, targets=QATConfig(weights=wcfg).targets)
    ptq_scales, ptq_zero_points = init_qparams(variables, plan)
    out: dict[str, dict] = {}
    for method in config.methods:
        if method == "ptq_nearest":
            vq = ptq.quantize_weights(variables, wcfg)
            out[method] = dict(variables=vq, scales=ptq_scales, zero_points=ptq_zero_points)
        elif method == "ptq_adaround":
            vq = ptq.adaround(
                ctx.apply_fn,
                variables,
                ctx.inputs("calibration"),
                ptq.AdaRoundConfig(weights=wcfg, rounding_iters=config.rounding_iters),
                jax.random.fold_in(key, 1000 + bits),
                progress=config.progress,
            )
            out[method] = dict(variables=vq, scales=ptq_scales, zero_points=ptq_zero_points)
        else:
            res = qat_train(
                ctx.model,
                variables,
                ctx.data,
                config.qat_config(bits, method),
                jax.random.fold_in(key, bits),
                progress=config.progress,
            )
            out[method] = dict(
                variables=res.variables, scales=res.scales, zero_points=res.zero_points, qat=res
            )
        out[method].setdefault("qat", None)
    return out


def solve(config: BasinConfig, seed: int, ctx) -> dict:
    """Every solution of one seed (for tests and notebooks; :func:`compute` measures them).

    Returns:
        ``{(bits, method): {"variables", "scales", "zero_points", "qat"}}``: the deployed
        variables dict, the grid each kernel lies on (``{kernel path: array}``) and, for the
        QAT methods, the :class:`~bq_jax.qat.QATResult`.
    """
    if ctx.seed != seed:
        raise ValueError(f"ctx is the context of seed {ctx.seed}, not of seed {seed}")
    return {
        (bits, method): sol
        for bits in config.bits
        for method, sol in _solve_bits(config, ctx, bits).items()
    }


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


_TRAJECTORY_KEYS = (
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


def _trajectory(res, plan, land, eig, ste_grad) -> dict:
    cfg = res.config
    snaps = res.history["snapshots"]
    wf = np.asarray(land.w_float, np.float64)
    out: dict[str, list] = {k: [] for k in _TRAJECTORY_KEYS}
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


def compute(config: BasinConfig, seed: int, ctx, deps) -> tuple[dict, dict]:
    """One seed's basin study: ``(result, {})`` (keys in the module docstring)."""
    from bq_jax import geometry, ptq, train

    key = _key(seed)
    apply_fn = ctx.apply_fn
    variables = ctx.float_params
    x_heldout, y_heldout = ctx.inputs("heldout"), ctx.targets("heldout")
    land = Landscape(apply_fn, variables, ctx.inputs("train"), ctx.targets("train"))
    land_cal = Landscape(apply_fn, variables, ctx.inputs("calibration"), ctx.targets("calibration"))
    eig = top_hessian_eigs(
        land.params_loss,
        variables["params"],
        config.hessian_k,
        method="lanczos",
        num_iters=config.hessian_iters,
        key=jax.random.fold_in(key, 1),
    )
    matvec, _, _ = flat_hvp(land.params_loss, variables["params"])
    ts = np.union1d(np.linspace(0.0, float(config.line_max), config.line_points), [1.0])
    l_float = land.loss(variables)
    result: dict[str, Any] = {
        "model": ctx.model_name,
        "float_accuracy": train.accuracy(apply_fn, variables, x_heldout, y_heldout),
        "float_train_loss": l_float,
        "float_calibration_loss": land_cal.loss(variables),
        "num_params": land.num_params,
        "num_heldout_examples": int(np.shape(y_heldout)[0]),
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
    for bits in config.bits:
        solutions = _solve_bits(config, ctx, bits)
        names = list(solutions)
        stack = ptq.stack_params([solutions[m]["variables"] for m in names])
        geo = geometry.compare_records(
            geometry.compare(
                apply_fn,
                variables,
                stack,
                ctx.slice("train"),
                x_heldout,
                ctx.inputs("calibration"),
                band_quantile=config.band_quantile,
            )
        )
        for i, method in enumerate(names):
            vq = solutions[method]["variables"]
            line = land.line(vq, ts)
            row = {
                "bits": bits,
                "method": method,
                "accuracy": train.accuracy(apply_fn, vq, x_heldout, y_heldout),
                **_solution_row(land, land_cal, eig, matvec, vq, jax.random.fold_in(key, 7)),
                **_line_row(line, ts),
            }
            row["excess_loss"] = row["train_loss"] - l_float
            row.update({k: geo[i][k] for k in _GEOMETRY_KEYS if k in geo[i]})
            result["rows"].append(row)
            result["lines"][f"{bits}/{method}"] = [float(v) for v in line]
        for method in names:
            res = solutions[method]["qat"]
            if res is None:
                continue
            plan = resolve_plan(variables, res.config.weights, targets=res.config.targets)
            tr = _trajectory(res, plan, land, eig, land.ste_grad_fn(plan))
            result["trajectories"][f"{bits}/{method}"] = tr
            result["trajectory_summary"].append(_trajectory_summary(bits, method, tr))
    return result, {}


# ----------------------------------------------------------------------------- aggregate


def aggregate(config: BasinConfig, per_seed: list[dict]) -> dict:
    """Rows and trajectory summaries averaged over seeds (see :mod:`bq_jax.vocabulary`)."""
    out: dict[str, Any] = {
        "bits": list(config.bits),
        "methods": list(config.methods),
        "resolution": config.resolution,
        "hessian_k": config.hessian_k,
        "num_params": per_seed[0]["num_params"],
        "num_heldout_examples": per_seed[0]["num_heldout_examples"],
        "sharp_fraction_random": per_seed[0]["hessian"]["sharp_fraction_random"],
        "rows": mean_rows([r["rows"] for r in per_seed], ("bits", "method")),
        "trajectory_summary": mean_rows(
            [r["trajectory_summary"] for r in per_seed], ("bits", "method")
        ),
    }
    for k in ("float_train_loss", "float_calibration_loss"):
        out[k], out[k + "_std"] = mean_std([r[k] for r in per_seed])
    eigs = np.asarray([r["hessian"]["eigenvalues"] for r in per_seed], np.float64)
    out["hessian_eigenvalues"] = [float(v) for v in eigs.mean(axis=0)]
    return out


def _find(rows, bits, method, key):
    for r in rows:
        if r["bits"] == bits and r["method"] == method:
            return r.get(key)
    return None


def findings(config: BasinConfig, results: dict) -> list[Finding]:
    """QAT beats PTQ, PTQ sits higher on the loss, the ablation does not recover, and the STE
    gradient points back to the basin (checked per bit width on the means over seeds)."""
    rows, trs = results["rows"], results["trajectory_summary"]
    out = []
    for bits in config.bits:
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
                Finding(
                    f"{bits}-bit: STE-QAT beats the best PTQ on held-out accuracy by more "
                    "than 0.02",
                    bool(gain > 0.02),
                    f"qat_ste {ste_acc:.4f} vs {best_ptq} {p_acc:.4f} ({gain:+.4f})",
                )
            )
            e_p = _find(rows, bits, best_ptq, "excess_loss")
            e_q = _find(rows, bits, "qat_ste", "excess_loss")
            out.append(
                Finding(
                    f"{bits}-bit: the PTQ point sits higher on the training loss than the "
                    "STE-QAT point (PTQ leaves the basin)",
                    bool(e_p > e_q),
                    f"excess train loss {best_ptq} {e_p:.4f} vs qat_ste {e_q:.4f}",
                )
            )
        abl = _find(rows, bits, "qat_float_gradient", "accuracy")
        if ste_acc is not None and abl is not None:
            out.append(
                Finding(
                    f"{bits}-bit: the gradient at the quantized weights is what recovers "
                    "(float-gradient ablation more than 0.02 below STE-QAT)",
                    bool(ste_acc - abl > 0.02),
                    f"qat_ste {ste_acc:.4f} vs qat_float_gradient {abl:.4f}",
                )
            )
        for t in trs:
            if t["bits"] != bits or t["method"] != "qat_ste":
                continue
            cq, cf = t["cosine_quantized_mean"], t["cosine_float_mean"]
            if cq is not None and cf is not None:
                out.append(
                    Finding(
                        f"{bits}-bit: along the STE trajectory the gradient at the quantized "
                        "weights points back toward the basin (w_F - w_q), more than the float "
                        "gradient at the same iterates",
                        bool(cq > 0 and cq > cf),
                        f"mean cos(-g_Q, w_F - w_q) {cq:.3f} vs mean cos(-grad L(w), w_F - w_q) "
                        f"{cf:.3f} (a random direction: about "
                        f"+-{1 / np.sqrt(results['num_params']):.3f})",
                    )
                )
            s0, s1 = t["sharp_displacement_start"], t["sharp_displacement_end"]
            out.append(
                Finding(
                    f"{bits}-bit: STE-QAT shrinks the deployed point's displacement along the "
                    "top Hessian directions",
                    bool(s1 < s0),
                    f"|V_k (w_q - w_F)| {s0:.4f} at step 0 -> {s1:.4f} at the end",
                )
            )
    return out


# ----------------------------------------------------------------------------- outputs


def _points(steps, values):
    pts = [(s, c) for s, c in zip(steps, values, strict=True) if c is not None]
    return [p[0] for p in pts], [p[1] for p in pts]


def figures(config: BasinConfig, results: dict, first_result: dict, arrays) -> dict:
    """Per bit width, of the first seed: loss along the line from the float weights, gradient /
    basin cosine along QAT, deployed loss along QAT."""
    seed = config.seeds[0]
    ts = first_result["line_t"]
    figs = {}
    for bits in config.bits:
        curves = {
            m: (ts, first_result["lines"][f"{bits}/{m}"])
            for m in config.methods
            if f"{bits}/{m}" in first_result["lines"]
        }
        figs[f"loss_along_line_{bits}bit.png"] = plot_curves(
            curves,
            xlabel="t  (w = w_F + t (w_Q - w_F); t = 1 is the deployed point)",
            ylabel="training loss",
            title=f"{bits}-bit: loss along the line from the float weights (seed {seed})",
            logy=all(min(c[1]) > 0 for c in curves.values()),
            vlines={"t = 1": 1.0},
        )
        cos_curves = {}
        loss_curves = {}
        for m in QAT_METHODS:
            tr = first_result["trajectories"].get(f"{bits}/{m}")
            if tr is None:
                continue
            steps = tr["step"]
            if m == "qat_float_gradient":
                xy = _points(steps, tr["cosine_float"])
                label = f"{m}: cos(-grad L(w), w_F - w_q)"
            else:
                xy = _points(steps, tr["cosine_quantized"])
                label = f"{m}: cos(-g_Q, w_F - w_q)"
            if xy[0]:
                cos_curves[label] = xy
            if m == "qat_ste":
                xy = _points(steps, tr["cosine_float"])
                if xy[0]:
                    cos_curves["qat_ste iterates: cos(-grad L(w), w_F - w_q)"] = xy
            loss_curves[m] = (steps, tr["deployed_loss"])
        if cos_curves:
            figs[f"trajectory_cosine_{bits}bit.png"] = plot_curves(
                cos_curves,
                xlabel="QAT step",
                ylabel="cosine with the way back to the basin",
                title=f"{bits}-bit: gradient vs basin direction along QAT (seed {seed})",
            )
        if loss_curves:
            figs[f"trajectory_loss_{bits}bit.png"] = plot_curves(
                loss_curves,
                xlabel="QAT step",
                ylabel="training loss of the deployed weights",
                title=f"{bits}-bit: deployed loss along QAT (seed {seed})",
                logy=all(min(c[1]) > 0 for c in loss_curves.values()),
            )
    return figs


ROW_COLUMNS = (
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
    "boundary_jaccard_distance",
)
TRAJECTORY_COLUMNS = (
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


def _cells(rows, columns) -> list[dict]:
    return [
        {c: r[c] if c in ("bits", "method") else mean_std_cell(r, c) for c in columns} for r in rows
    ]


def report_section(sec, config: BasinConfig, results: dict, figure_paths: dict) -> None:
    """Solutions table, trajectory table, Hessian eigenvalues and the figures."""
    n = results["num_heldout_examples"]
    sec.text(
        f"{results['num_params']} parameters; {n} held-out examples (one example = "
        f"{1 / max(n, 1):.4f} of accuracy); float training loss "
        f"{mean_std_cell(results, 'float_train_loss')}. Losses are mean cross-entropy on the "
        "training split (the QAT objective). Weight quantizer: signed symmetric, "
        f"{config.granularity}, {config.range_method} range; biases and activations float."
    )
    sec.text(
        "accuracy: held-out. excess_loss: L(w_Q) - L(w_F). line_barrier: max of the loss on "
        "the segment [w_F, w_Q] above its higher end. sharp_fraction: |V_k d| / |d| for "
        f"d = w_Q - w_F and the top-{results['hessian_k']} Hessian eigenvectors V_k at w_F "
        f"(isotropic d: {results['sharp_fraction_random']:.4f}). "
        "quadratic_topk_share: share of d^T H d carried by the top-k directions. "
        "random_direction_excess: excess loss of random directions with d's per-layer norms. "
        "boundary_jaccard_distance: Jaccard distance of the boundary (0 = the float boundary) "
        f"on the training PCA slice at resolution {results['resolution']}; flip_rate: held-out "
        "predictions that differ from the float model's."
    )
    table(sec, _cells(results["rows"], ROW_COLUMNS), list(ROW_COLUMNS))
    sec.text(
        "QAT trajectories. cosine_quantized: cos(-g_Q, w_F - w_q) with g_Q the straight-through "
        "gradient at the quantized weights (what STE-QAT follows); cosine_float: "
        "cos(-grad L(w), w_F - w_q) at the same latent iterate w (what the float-gradient "
        "ablation follows); cosine_sharp: cos(-g_Q, -V_k V_k^T (w_q - w_F)); cosine_step: cos "
        "of the actual latent move to the next snapshot with w_F - w_q. sharp_displacement: "
        "|V_k^T (w_q - w_F)|. Means over the snapshots. For scale: two independent random "
        f"directions in the {results['num_params']}-dimensional weight space have |cos| of "
        f"about 1/sqrt(P) = {1 / np.sqrt(results['num_params']):.4f}."
    )
    table(sec, _cells(results["trajectory_summary"], TRAJECTORY_COLUMNS), list(TRAJECTORY_COLUMNS))
    sec.text(
        f"Top-{results['hessian_k']} Hessian eigenvalues at the float solution (Lanczos; mean "
        "over seeds): " + ", ".join(f"{v:.4g}" for v in results["hessian_eigenvalues"])
    )
    captions = {
        "loss_along_line": "Training loss along the line from the float weights to each "
        "solution (t = 1: the deployed point)",
        "trajectory_cosine": "Cosine between the gradient and the way back to the basin along "
        "each QAT run",
        "trajectory_loss": "Training loss of the deployed weights along each QAT run",
    }
    for name, path in figure_paths.items():
        stem, bits = name[: -len("bit.png")].rsplit("_", 1)
        sec.figure(path, f"{bits}-bit: {captions[stem]} (seed {config.seeds[0]}).")
