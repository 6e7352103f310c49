"""The boundary-aware quantization paper's studies, one function per claim.

Each study takes a :class:`StudyConfig` and returns a JSON-friendly dict aggregated over
``config.seeds`` (training seeds):

* :func:`bits_sweep`     PTQ-W at every width: accuracy stays, boundaries move.
* :func:`interpolation`  scale interpolation b -> b-1: label changes concentrate at junctions.
* :func:`stopping`       accuracy rule vs boundary rule chosen on calibration, judged held-out.
* :func:`rounding`       nearest vs AdaRound vs boundary-gap rounding at fixed widths.
* :func:`correlation`    calibration vs held-out boundary Jaccard across variants.

:func:`run` runs several of them resumably into an output directory (``bq-jax reproduce``).

Quantizer of every PTQ-W variant: weights (every ``kernel``) signed symmetric, per output
channel, min-max scale ``absmax / (2^(b-1) - 1)``, round half to even; biases and batch-norm
statistics stay float; activations stay float.

Slices: PCA planes of the inputs as the model sees them, on an R x R grid (R = ``resolution``):
``train`` (training inputs; the bit sweep, interpolation and rounding), ``calibration``
(calibration inputs only; what the stopping rules see) and ``heldout`` (held-out inputs; how the
stopping choices are judged).

results.json
------------
Written with sorted keys by :func:`bq_jax.report.write_json` (same seeds and settings give a
byte-identical file). Aggregation over seeds: a number ``x`` is the mean over seeds and
``x_std`` its sample standard deviation (ddof=1; 0.0 for one seed); ``n_seeds`` counts the
seeds in a row; ``None`` marks a value undefined by construction (left out of the mean).

Top level:

* ``schema_version`` (int, 1), ``dataset`` (str), ``model`` (str, classifier architecture),
  ``seeds`` (list of training seeds), ``resolution`` (grid side R of every slice), ``quick``
  (bool), ``config`` (every setting a result depends on: :meth:`StudyConfig.fingerprint`).
* ``float_accuracy``, ``float_accuracy_std``: held-out accuracy of the float classifier.
* one key per study that was run (below), and ``per_seed``: a list of
  ``{"seed": k, <study>: <that seed's un-aggregated result>, ...}``.

``bits_sweep``:
  ``rows``: one per width, widest first, with ``bits``; ``accuracy`` (held-out);
  ``accuracy_drop`` (float minus quantized held-out accuracy); ``flip_rate`` (fraction of
  held-out inputs whose label changed); ``boundary_jaccard`` (boundary-mask Jaccard distance
  ``1 - |B_F ∧ B_Q| / |B_F ∨ B_Q|`` on the training PCA slice, tolerance 0); ``grid_change``
  (fraction of slice grid points whose label changed); ``median_local_shift`` (median
  ``|r_Q - r_F|`` of the local logit-margin radius over the boundary band, input units);
  ``triple_junctions`` (number of triple-junction 2x2 cells of the quantized slice map);
  ``band_flip_rate`` (label changes among boundary-band points: held-out points with float
  ``|margin|`` below the ``band_quantile`` quantile of calibration margins);
  ``pair_order_flip`` (fraction of band points where ``sign(z_a - z_b)`` of the float top-1 /
  runner-up pair changed); ``normal_variation`` (median over the band of ``1 - <n_F, n_Q>``,
  unit margin normals); ``band_size`` (band points), ``zero_gradient`` (band points left out
  of the local metrics for a zero margin gradient), ``margin_radius_median``. A local metric
  is None when no band point has a usable gradient. ``float_triple_junctions``: junction
  cells of the float map.

``interpolation``:
  ``steps`` (t values per transition) and ``rows``, one per transition, with ``from_bits``,
  ``to_bits``; ``changed_cells`` (sum over consecutive t of grid points whose label changed);
  ``changed_cells_at_junctions`` (those within one cell, 8-neighbourhood, of a corner of a
  triple-junction cell of either map); ``expected_at_junctions`` (that count if changes fell
  uniformly on the grid); ``junction_enrichment`` (observed / expected; > 1: changes
  concentrate at junctions; None if undefined); ``steps_with_changes``;
  ``triple_junctions_from`` / ``triple_junctions_to`` (junction cells at t = 0 and t = 1).

``stopping``:
  ``jaccard_threshold`` (tau_J), ``accuracy_tolerance`` (epsilon); ``accuracy_rule`` and
  ``boundary_rule``, each with ``bits`` (median over seeds of the chosen width),
  ``bits_per_seed``, ``met`` (False if even ``max_bits`` failed the rule for some seed),
  ``heldout_flip_rate``, ``heldout_boundary_jaccard`` (PCA slice of the held-out inputs),
  ``heldout_accuracy``, ``calibration_accuracy_drop``, ``calibration_boundary_jaccard`` (PCA
  slice of the calibration inputs), averaged over seeds at each seed's choice; ``rows``: those
  five measurements for every width.

``rounding``:
  ``methods`` (``nearest``, ``adaround``, ``boundary_gap``), ``boundary_gap_weight``,
  ``rounding_iters``, and ``rows``, one per (``bits``, ``method``), with ``accuracy``,
  ``boundary_jaccard``, ``pair_order_flip`` and the other bit-sweep metrics, plus the stopping
  study's calibration / held-out measurements.

``correlation``:
  ``pearson_r`` (mean over seeds of the per-seed Pearson r between calibration and held-out
  boundary Jaccard), ``pearson_r_std``, ``pearson_r_min``, ``pearson_r_max``,
  ``pearson_r_per_seed``, ``pearson_r_pooled`` (all seeds' points together), ``n_variants``
  (variants per seed: every PTQ-W width plus the optimised rounding variants), ``points``
  (``seed``, ``variant``, ``bits``, ``method``, ``calibration_boundary_jaccard``,
  ``heldout_boundary_jaccard``).

Example:
    >>> from bq_jax.studies import default_config, run
    >>> summary = run(default_config("digits", quick=True), "/tmp/bq-digits")  # doctest: +SKIP
    >>> summary.results["bits_sweep"]["rows"][0]["bits"]  # doctest: +SKIP
    8
"""

from bq_jax.studies.bits_sweep import bits_sweep
from bq_jax.studies.config import (
    DATASETS,
    STUDIES,
    StudyConfig,
    StudyError,
    default_config,
)
from bq_jax.studies.correlation import correlation
from bq_jax.studies.interpolation import interpolation
from bq_jax.studies.rounding import rounding
from bq_jax.studies.runner import RunSummary, run, run_study
from bq_jax.studies.stopping import stopping

__all__ = [
    "DATASETS",
    "STUDIES",
    "RunSummary",
    "StudyConfig",
    "StudyError",
    "bits_sweep",
    "correlation",
    "default_config",
    "interpolation",
    "rounding",
    "run",
    "run_study",
    "stopping",
]
