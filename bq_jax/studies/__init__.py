"""Every study of the project, one module each, with one protocol and one runner.

The boundary-aware quantization paper's five studies run under :class:`StudyConfig`
(``bq-jax reproduce DATASET``):

* :mod:`~bq_jax.studies.bits_sweep`     PTQ-W at every width: accuracy stays, boundaries move.
* :mod:`~bq_jax.studies.interpolation`  scale interpolation b -> b-1: changes sit at junctions.
* :mod:`~bq_jax.studies.stopping`       accuracy rule vs boundary rule chosen on calibration.
* :mod:`~bq_jax.studies.rounding`       nearest vs AdaRound vs boundary-gap rounding.
* :mod:`~bq_jax.studies.correlation`    calibration vs held-out boundary Jaccard distance.

and four more, each under its own config:

* :mod:`~bq_jax.studies.qat_basin`            PTQ leaves the loss basin, QAT returns
  (``BasinConfig``, ``bq-jax qat-basin``).
* :mod:`~bq_jax.studies.range_methods`        STE-QAT with each range-setting method
  (``RangeMethodsConfig``, ``bq-jax range-methods``).
* :mod:`~bq_jax.studies.rounding_comparison`  rounding rules over seeds with the boundary-gap
  settings chosen on calibration data (``RoundingComparisonConfig``,
  ``bq-jax rounding-comparison``).
* :mod:`~bq_jax.studies.sensitivity`          per-layer boundary sensitivity and a mixed-precision
  allocation chosen on calibration planes, judged on held-out data (``SensitivityConfig``,
  ``bq-jax sensitivity``).

Every study module has the shape of :mod:`bq_jax.studies.protocol` (config, compute, aggregate,
findings, figures, report section); :func:`run` runs any of them resumably into an output
directory and :func:`run_study` in memory. results.json follows :mod:`bq_jax.studies.results`
(versioned); metric names, splits and the mean/std convention are those of
:mod:`bq_jax.vocabulary`. Each study's block is documented in its module.

Quantizer of every PTQ-W variant of the paper's studies: weights (every ``kernel``) signed
symmetric, per output channel, min-max scale ``absmax / (2^(b-1) - 1)``, round half to even;
biases and batch-norm statistics stay float; activations stay float.

Slices: PCA planes of the inputs as the model sees them, on an R x R grid (R = ``resolution``):
``train`` (training inputs; the bit sweep, interpolation and rounding), ``calibration``
(calibration inputs only; what the stopping rules see) and ``heldout`` (held-out inputs; how the
stopping choices are judged).

Example:
    >>> from bq_jax.studies import default_config, run
    >>> summary = run(default_config("digits", quick=True), "/tmp/bq-digits")  # doctest: +SKIP
    >>> summary.results["bits_sweep"]["rows"][0]["bits"]  # doctest: +SKIP
    8
"""

from bq_jax.studies.config import (
    DATASETS,
    PAPER_STUDIES,
    BaseConfig,
    FamilyConfig,
    StudyConfig,
    StudyError,
    default_config,
    make_config,
)
from bq_jax.studies.protocol import Finding
from bq_jax.studies.qat_basin import BasinConfig
from bq_jax.studies.range_methods import RangeMethodsConfig
from bq_jax.studies.registry import STUDIES
from bq_jax.studies.results import SCHEMA_VERSION, ResultsError, load_results
from bq_jax.studies.rounding_comparison import RoundingComparisonConfig
from bq_jax.studies.runner import RunSummary, run, run_study, train_only
from bq_jax.studies.sensitivity import SensitivityConfig

__all__ = [
    "DATASETS",
    "PAPER_STUDIES",
    "SCHEMA_VERSION",
    "STUDIES",
    "BaseConfig",
    "BasinConfig",
    "FamilyConfig",
    "Finding",
    "RangeMethodsConfig",
    "ResultsError",
    "RoundingComparisonConfig",
    "RunSummary",
    "SensitivityConfig",
    "StudyConfig",
    "StudyError",
    "default_config",
    "load_results",
    "make_config",
    "run",
    "run_study",
    "train_only",
]
