"""Quantization-aware training and the tools of the "PTQ leaves the basin, QAT returns" study.

* :func:`qat_train` -- QAT as an optax loop (:class:`QATConfig`): straight-through weights
  with range-method scales (min-max, MSE, OCTAV, analytic Gaussian; re-estimated every
  ``range_update_every`` steps) or LSQ learned scales; gradient at the quantized weights (STE)
  or, as an ablation, at the float weights; integer and floating-point formats.
* :mod:`bq_jax.qat.hessian` -- Hessian-vector products, Lanczos and power iteration.
* :mod:`bq_jax.qat.landscape` -- losses along lines, STE gradients and deployed weights of QAT
  snapshots.

The studies built on them (the QAT basin study, the range-method comparison) live in
:mod:`bq_jax.studies.qat_basin` and :mod:`bq_jax.studies.range_methods`.
"""

from bq_jax.qat.config import QATConfig
from bq_jax.qat.hessian import (
    dense_hessian,
    hvp,
    lanczos_top_eigs,
    power_top_eigs,
    top_hessian_eigs,
)
from bq_jax.qat.quantizers import (
    LeafPlan,
    quantize_variables,
    resolve_plan,
)
from bq_jax.qat.training import (
    QAT_CHECKPOINT_NAME,
    QATDivergedError,
    QATProgram,
    QATResult,
    QATState,
    check_variables_match,
    make_qat_program,
    qat_checkpoint_path,
    qat_train,
)

__all__ = [
    "LeafPlan",
    "QAT_CHECKPOINT_NAME",
    "QATConfig",
    "QATDivergedError",
    "QATProgram",
    "QATResult",
    "QATState",
    "check_variables_match",
    "dense_hessian",
    "hvp",
    "lanczos_top_eigs",
    "make_qat_program",
    "power_top_eigs",
    "qat_checkpoint_path",
    "qat_train",
    "quantize_variables",
    "resolve_plan",
    "top_hessian_eigs",
]
