"""The project's vocabulary: every split, metric key, hyperparameter and aggregation convention,
defined once.

Result files (``results.json``), report columns, CLI flags and the tests' key sets are all
derived from the tables here, so one concept has one name everywhere.

Conventions
-----------
* **Splits.** ``train`` (fitting the float model and QAT), ``calibration`` (what PTQ and every
  rule that chooses a setting may look at) and ``heldout`` (what results are judged on; never
  used to choose anything).
* **Where a metric is measured.** A metric key without a split prefix is measured on the
  held-out inputs (``accuracy``, ``flip_rate``, the band metrics) or, for a slice metric, on the
  slice of the training inputs. A ``calibration_`` or ``heldout_`` prefix names the split whose
  inputs (and slice) were used instead. A ``float_`` prefix is the float model's own value.
* **Aggregation over seeds.** A number ``x`` is the mean over seeds, ``x_std`` its sample
  standard deviation (``ddof=1``; ``0.0`` for one seed) and ``n_seeds`` the number of seeds that
  contributed; ``None`` marks a value undefined by construction and is left out of the mean.
* **Estimates with uncertainty** (:class:`bq_jax.stats.Estimate`). A measured ``x`` that is an
  estimate carries ``x_se`` (its standard error), ``x_low`` / ``x_high`` (the bounds of its
  confidence interval at the run's ``confidence_level``) and ``x_n`` (the number of resampling
  units behind it: slices of a slice family, examples of a rate, variants of a correlation);
  ``x_values`` lists the per-unit values where they are kept (per-slice values). Each metric's
  description names its unit and interval.

This module imports nothing of the project's (it sits below every sub-package).
"""

from __future__ import annotations

import dataclasses

__all__ = [
    "SPLITS",
    "Term",
    "METRICS",
    "HYPERPARAMETERS",
    "STD_SUFFIX",
    "N_SEEDS",
    "SE_SUFFIX",
    "LOW_SUFFIX",
    "HIGH_SUFFIX",
    "COUNT_SUFFIX",
    "VALUES_SUFFIX",
    "ESTIMATE_SUFFIXES",
    "DEFAULT_BAND_QUANTILE",
    "metric_base",
    "metric_format",
    "describe",
]

#: The data splits, in the order data flows through them.
SPLITS = ("train", "calibration", "heldout")

#: Suffix of the standard deviation over seeds of an aggregated number ``x``.
STD_SUFFIX = "_std"
#: Key of the number of seeds behind an aggregated row.
N_SEEDS = "n_seeds"
#: Suffixes of an estimate ``x``: standard error, interval bounds, resampling units, unit values.
SE_SUFFIX = "_se"
LOW_SUFFIX = "_low"
HIGH_SUFFIX = "_high"
COUNT_SUFFIX = "_n"
VALUES_SUFFIX = "_values"
#: The suffixes an estimate adds to its key (besides ``_std`` over seeds).
ESTIMATE_SUFFIXES = (SE_SUFFIX, LOW_SUFFIX, HIGH_SUFFIX, COUNT_SUFFIX, VALUES_SUFFIX)

#: Quantile of calibration ``|margin|`` that bounds the low-margin boundary band (DESIGN: 10 %).
DEFAULT_BAND_QUANTILE = 0.1


@dataclasses.dataclass(frozen=True)
class Term:
    """One entry of the vocabulary: what the name means and how a report prints it."""

    # One line: what the value is (with its formula where it has one).
    description: str
    # Python format spec of the value in a report table.
    fmt: str = ".4f"


#: Metric keys of result rows.
METRICS: dict[str, Term] = {
    # -- predictions -------------------------------------------------------------------------
    "accuracy": Term("fraction of held-out inputs classified correctly"),
    "float_accuracy": Term("held-out accuracy of the float classifier"),
    "accuracy_drop": Term("float minus quantized held-out accuracy"),
    "calibration_accuracy_drop": Term("float minus quantized calibration accuracy"),
    "flip_rate": Term("fraction of held-out inputs whose predicted label changed"),
    "band_flip_rate": Term(
        "label changes among boundary-band points (held-out points with float |margin| <= tau)"
    ),
    "pair_order_flip": Term(
        "fraction of band points where sign(z_a - z_b) of the float top-1 / runner-up changed"
    ),
    "band_size": Term("held-out points in the boundary band", "d"),
    "band_tau": Term("band threshold tau: band_quantile quantile of calibration |margin|", ".4g"),
    "heldout_size": Term("held-out inputs measured", "d"),
    # -- slice metrics -----------------------------------------------------------------------
    "boundary_jaccard_distance": Term(
        "1 - |B_F and B_Q| / |B_F or B_Q| of the boundary masks on the training slice "
        "(0: same boundary cells; both empty -> 0, one empty -> 1)",
        ".3f",
    ),
    "calibration_boundary_jaccard_distance": Term(
        "boundary_jaccard_distance on the slice of the calibration inputs", ".3f"
    ),
    "heldout_boundary_jaccard_distance": Term(
        "boundary_jaccard_distance on the slice of the held-out inputs", ".3f"
    ),
    "grid_change": Term("fraction of slice grid points whose label changed"),
    "heldout_boundary_jaccard_difference": Term(
        "boundary_gap minus nearest heldout_boundary_jaccard_distance, paired on the same planes",
        ".3f",
    ),
    "calibration_grid_change": Term("grid_change on the slices of the calibration inputs"),
    "heldout_grid_change": Term("grid_change on the slices of the held-out inputs"),
    "calibration_triple_junction_count": Term(
        "triple_junction_count on the slices of the calibration inputs", ".1f"
    ),
    "heldout_triple_junction_count": Term(
        "triple_junction_count on the slices of the held-out inputs", ".1f"
    ),
    "triple_junction_count": Term(
        "2x2 cells of the quantized slice map carrying >= 3 distinct labels", ".1f"
    ),
    "float_triple_junction_count": Term(
        "2x2 cells of the float slice map carrying >= 3 distinct labels", ".1f"
    ),
    "region_count": Term(
        "8-connected regions (maximal same-label point sets, diagonal contact connects) of the "
        "quantized slice map, all classes",
        ".1f",
    ),
    "float_region_count": Term("region_count of the float slice map", ".1f"),
    "excess_fragments": Term(
        "region_count - classes present on the quantized slice map (0: one region per class)",
        ".1f",
    ),
    "float_excess_fragments": Term("excess_fragments of the float slice map", ".1f"),
    "resolution": Term("side R of the R x R slice grid", "d"),
    "tolerance": Term("boundary-mask dilation (cells) of the Jaccard distance", "d"),
    # -- class skips along segments between held-out pairs ----------------------------------
    "label_changes": Term(
        "mean over segment pairs of #{s : y_{s+1} != y_s}, the quantized labels at S points of "
        "(1 - t) x0 + t x1",
        ".3f",
    ),
    "float_label_changes": Term("label_changes of the float model", ".3f"),
    "class_skips": Term(
        "mean over segment pairs of label_changes - [y_0 != y_{S-1}] (changes beyond a direct "
        "path's), quantized",
        ".3f",
    ),
    "float_class_skips": Term("class_skips of the float model", ".3f"),
    "label_change_delta": Term(
        "mean over segment pairs of quantized minus float label changes", ".3f"
    ),
    "label_changes_differ": Term(
        "fraction of segment pairs whose quantized label-change count differs from the float one"
    ),
    "segment_pairs": Term("pairs of held-out inputs whose segments are measured", "d"),
    "segment_points": Term("points S per segment, both ends included", "d"),
    # -- local geometry ----------------------------------------------------------------------
    "median_local_shift": Term(
        "median over band points of |r_Q - r_F|, r = m / ||grad_x m|| (input units)"
    ),
    "normal_variation": Term("median over band points of 1 - <n_F, n_Q>, n = grad m / ||grad m||"),
    "normal_variation_mean": Term("mean over band points of 1 - <n_F, n_Q>"),
    "margin_radius_median": Term("median local logit-margin radius of the quantized model"),
    "float_margin_radius_median": Term("median local logit-margin radius of the float model"),
    "zero_gradient_count": Term(
        "band points left out of the local metrics (zero margin gradient, quantized)", "d"
    ),
    "float_zero_gradient_count": Term(
        "band points left out of the local metrics (zero margin gradient, float)", "d"
    ),
    # -- interpolation between adjacent widths -----------------------------------------------
    "changed_cells": Term("grid points whose label changed, summed over consecutive t", "d"),
    "changed_cells_at_junctions": Term(
        "changed cells within one cell of a triple-junction corner of either map", "d"
    ),
    "expected_at_junctions": Term("changed_cells_at_junctions if changes fell uniformly", ".1f"),
    "junction_enrichment": Term("changed_cells_at_junctions / expected_at_junctions", ".2f"),
    "steps_with_changes": Term("interpolation steps in which some label changed", "d"),
    "triple_junction_count_from": Term("triple_junction_count of the map at t = 0 (b bits)", ".1f"),
    "triple_junction_count_to": Term("triple_junction_count of the map at t = 1 (b-1 bits)", ".1f"),
    # -- rounding ----------------------------------------------------------------------------
    "reconstruction_error": Term(
        "mean over layers of E||y_l - y~_l||^2 / E||y_l||^2 (layer outputs, the quantized "
        "model's own layer inputs) on the held-out inputs",
        ".4f",
    ),
    "sqnr_db": Term("10 log10(E[w^2] / E[(w - q(w))^2]) of the weights, dB", ".2f"),
    # -- correlation -------------------------------------------------------------------------
    "pearson_r": Term("Pearson correlation of calibration vs held-out values", ".3f"),
    "pearson_r_pooled": Term("pearson_r of all seeds' variants together", ".3f"),
    # -- loss landscape (QAT basin study) ----------------------------------------------------
    "train_loss": Term("mean cross-entropy on the training split", ".4f"),
    "calibration_loss": Term("mean cross-entropy on the calibration split", ".4f"),
    "excess_loss": Term("train_loss at the solution minus train_loss of the float model", ".4f"),
    "float_train_loss": Term("train_loss of the float model", ".4g"),
    "float_calibration_loss": Term("calibration_loss of the float model", ".4g"),
    "num_params": Term("trainable parameters P of the classifier", "d"),
    "num_heldout_examples": Term("held-out inputs the accuracy is measured on", "d"),
    "line_barrier": Term(
        "max of the training loss on the segment [w_F, w_Q] above its higher end", ".4g"
    ),
    "line_loss_max": Term("max training loss on the line w_F + t (w_Q - w_F), t in [0, t_max]"),
    "displacement_norm": Term("|d|, d = w_Q - w_F (all parameters, flat)", ".4g"),
    "sharp_fraction": Term("|V_k d| / |d|: share of d along the top-k Hessian eigenvectors"),
    "sharp_fraction_random": Term("sqrt(k / P): sharp_fraction of an isotropic displacement"),
    "quadratic_excess": Term("d^T H d / 2 at the float solution", ".4g"),
    "quadratic_excess_topk": Term("the part of quadratic_excess along the top-k directions", ".4g"),
    "quadratic_topk_share": Term("quadratic_excess_topk / quadratic_excess"),
    "random_direction_excess": Term(
        "mean excess training loss of random directions with d's per-layer norms", ".4g"
    ),
    # -- QAT trajectories (QAT basin study; means over the snapshots of one QAT run) ---------
    "cosine_quantized_mean": Term("mean cos(-g_Q, w_F - w_q), g_Q the straight-through gradient"),
    "cosine_float_mean": Term("mean cos(-grad L(w), w_F - w_q) at the latent iterates w"),
    "cosine_sharp_mean": Term("mean cos(-g_Q, -V_k V_k^T (w_q - w_F))"),
    "cosine_step_mean": Term("mean cos of the latent move to the next snapshot with w_F - w_q"),
    "grad_sharp_fraction_mean": Term("mean |V_k g_Q| / |g_Q|"),
    "deployed_loss_start": Term("training loss of the deployed weights at QAT step 0", ".4g"),
    "deployed_loss_end": Term("training loss of the deployed weights at the last snapshot", ".4g"),
    "sharp_displacement_start": Term("|V_k^T (w_q - w_F)| at QAT step 0", ".4g"),
    "sharp_displacement_end": Term("|V_k^T (w_q - w_F)| at the last snapshot", ".4g"),
    # -- range methods in QAT (spread: std, ddof = 0, over the QAT runs of one classifier) --
    "ptq_accuracy": Term("held-out accuracy of round-to-nearest PTQ with the same quantizer"),
    "accuracy_spread": Term("std over QAT runs of the held-out accuracy"),
    "accuracy_min": Term("lowest held-out accuracy over QAT runs"),
    "final_loss": Term("training loss of the last QAT epoch, mean over QAT runs", ".4g"),
    "final_loss_spread": Term("std over QAT runs of the last epoch's training loss", ".3g"),
    "loss_curve_spread": Term(
        "mean over epochs of the std over QAT runs of the epoch-mean training loss", ".3g"
    ),
    "ptq_sqnr_db": Term(
        "SQNR of the PTQ weights against the float weights, mean over layers", ".2f"
    ),
    "qat_sqnr_db": Term(
        "SQNR of the deployed weights against the latent weights after QAT, mean over layers",
        ".2f",
    ),
    # -- per-layer sensitivity and mixed precision ---------------------------------------------
    "layer": Term(
        "weight layer: its leaf path, e.g. params/Dense_0/kernel (None: every layer)", "s"
    ),
    "scope": Term(
        "weights a sensitivity variant quantizes: only (this layer), all_but (every weight "
        "layer but this one) or all",
        "s",
    ),
    "num_weights": Term("weights of the layer (of every weight layer for scope all)", "d"),
    "budget": Term("average bits per weight (weighted by weight count) an allocation may use", "d"),
    "allocation": Term(
        "mixed (per-layer widths chosen greedily on calibration planes), uniform (every layer "
        "at the budget) or exhaustive (the best widths on calibration planes, brute force)",
        "s",
    ),
    "exhaustive_bits_per_layer": Term(
        "widths minimising the calibration boundary Jaccard distance within the budget, found "
        "by exhaustive search (None: too many assignments)",
        "s",
    ),
    "average_bits": Term(
        "sum_l n_l b_l / sum_l n_l over the weight layers (n_l weights of layer l at b_l bits; "
        "biases not counted)",
        ".3f",
    ),
    "bits_per_layer": Term("width of each weight layer (leaf path -> bits)", "s"),
    "phase": Term(
        "step of the greedy allocation: narrow (to meet the budget) or widen (refill)", "s"
    ),
    "heldout_boundary_jaccard_distance_difference": Term(
        "heldout_boundary_jaccard_distance of mixed minus uniform, paired by plane", ".3f"
    ),
    "flip_rate_difference": Term("flip_rate of mixed minus uniform, paired by held-out example"),
    "accuracy_difference": Term("accuracy of mixed minus uniform, paired by held-out example"),
    "seeds_mixed_better": Term(
        "seeds whose mean held-out boundary Jaccard difference (mixed - uniform) is below 0", "d"
    ),
    "mixed_only_flips": Term("held-out examples flipped by mixed but not by uniform", "d"),
    "uniform_only_flips": Term("held-out examples flipped by uniform but not by mixed", "d"),
    "mixed_only_correct": Term("held-out examples right under mixed but not under uniform", "d"),
    "uniform_only_correct": Term("held-out examples right under uniform but not under mixed", "d"),
}

#: Hyperparameters (config fields) shared by the studies, CLI flags and reports. The CLI takes
#: its help text from here; a field of a study config that is not listed has no flag.
HYPERPARAMETERS: dict[str, str] = {
    "dataset": "data set name",
    "seeds": "training seeds; every study runs once per seed and reports mean and spread",
    "model": "classifier architecture (default: bq_jax.train's default for the data set)",
    "quick": "small, fast settings for smoke tests and demos",
    "subset": "training subset: a name of bq_jax.data.SUBSETS or k examples per class",
    "data_dir": "tensorflow-datasets data directory",
    "progress": "show progress bars",
    "resolution": "side R of every R x R slice grid (boundary Jaccard depends on it)",
    "band_quantile": "quantile of calibration |margin| that bounds the boundary band",
    "bits": "weight bit widths",
    "min_bits": "narrowest weight bit width of the PTQ-W sweep",
    "max_bits": "widest weight bit width of the PTQ-W sweep",
    "rounding_bits": "bit widths of the rounding study",
    "interpolation_steps": "values of t in [0, 1] per interpolation between adjacent widths",
    "jaccard_threshold": "tau_J of the boundary stopping rule (calibration Jaccard distance)",
    "accuracy_tolerance": "epsilon of the accuracy stopping rule (calibration accuracy drop)",
    "rounding_iters": "optimisation steps of learned rounding (AdaRound, boundary-gap rounding)",
    "boundary_gap_weight": "weight of the boundary-gap penalty in the rounding objective",
    "temperature": "temperature T of the boundary-gap weights exp(-|g_F| / T)",
    "range_method": "weight range-setting method",
    "range_methods": "weight range-setting methods compared",
    "granularity": "scale granularity of the weight quantizer",
    "methods": "quantization methods compared",
    "qat_epochs": "epochs of quantization-aware training",
    "qat_batch_size": "batch size of quantization-aware training",
    "qat_learning_rate": "learning rate of quantization-aware training",
    "range_update_every": "QAT steps between re-estimates of the range scales",
    "hessian_k": "top Hessian eigenpairs of the basin analysis",
    "hessian_iters": "Lanczos steps of the Hessian eigen-solver",
    "line_points": "points t on each float-to-solution line",
    "line_max": "largest t of the float-to-solution lines (1 = the solution)",
    "snapshot_every": "QAT steps between trajectory snapshots",
    "boundary_gap_grid": "(boundary_gap_weight, temperature) candidates chosen on calibration",
    "qat_seeds": "QAT runs (batch orders) per classifier and setting",
    "selection_accuracy_tolerance": "half-B calibration accuracy a boundary-gap candidate may lose "
    "against AdaRound and stay eligible",
    "check_bits": "weight bit width of the PTQ-W check row of the rounding comparison",
    "layer_bits": "weight bit widths of the per-layer sensitivity table",
    "candidate_bits": "weight bit widths the mixed-precision allocation may give a layer",
    "budgets": "average bits per weight (weighted by weight count) of the mixed-precision "
    "allocations; each is also the uniform baseline's width",
    "segment_pairs": "pairs of held-out inputs whose segments the bit sweep counts label "
    "changes along (class skips)",
    "slice_family": "kind of the calibration and held-out slice families (pca, random, triplet, "
    "pair; see bq_jax.geometry.slice_family)",
    "slice_count": "planes K per slice family (the resampling unit of slice-metric intervals)",
    "family_resolution": "side R of the R x R grid of every slice-family plane",
    "stopping_bound": "which end of a calibration estimate the stopping rules compare with their "
    "threshold: mean, or upper (the confidence interval's upper bound)",
    "bootstrap_resamples": "bootstrap resamples behind every confidence interval",
    "confidence_level": "confidence level of every interval (e.g. 0.95)",
}


def metric_base(key: str) -> str:
    """The metric an aggregated or estimate key belongs to: ``key`` without a ``_std`` and an
    estimate suffix (:data:`ESTIMATE_SUFFIXES`).

    Example:
        >>> metric_base("heldout_boundary_jaccard_distance_high"), metric_base("flip_rate_std")
        ('heldout_boundary_jaccard_distance', 'flip_rate')
    """
    base = key[: -len(STD_SUFFIX)] if key.endswith(STD_SUFFIX) else key
    for suffix in ESTIMATE_SUFFIXES:
        if base.endswith(suffix) and base[: -len(suffix)] in METRICS:
            return base[: -len(suffix)]
    return base


def metric_format(key: str) -> str:
    """Format spec of metric ``key`` (``x_std``, ``x_se``, ``x_low``, ``x_high`` use the format
    of ``x``, ``x_n`` is an integer); ``.4g`` if unknown.

    Example:
        >>> metric_format("boundary_jaccard_distance_std"), metric_format("flip_rate_n")
        ('.3f', 'd')
    """
    base = metric_base(key)
    if base != key and key.endswith(COUNT_SUFFIX):
        return "d"
    term = METRICS.get(base)
    return term.fmt if term is not None else ".4g"


def describe(key: str) -> str:
    """The description of a metric or hyperparameter ``key``.

    Raises:
        KeyError: ``key`` is not in the vocabulary.

    Example:
        >>> describe("flip_rate")
        'fraction of held-out inputs whose predicted label changed'
    """
    if key in METRICS:
        return METRICS[key].description
    if key in HYPERPARAMETERS:
        return HYPERPARAMETERS[key]
    raise KeyError(f"{key!r} is not in bq_jax.vocabulary (METRICS or HYPERPARAMETERS)")
