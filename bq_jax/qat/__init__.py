"""Quantization-aware training and the "PTQ leaves the basin, QAT returns" study.

* :func:`qat_train` -- QAT as an optax loop (:class:`QATConfig`): straight-through weights
  with range-method scales (min-max, MSE, OCTAV, analytic Gaussian; re-estimated every
  ``range_update_every`` steps) or LSQ learned scales; gradient at the quantized weights (STE)
  or, as an ablation, at the float weights; integer and floating-point formats.
* :mod:`bq_jax.qat.hessian` -- Hessian-vector products, Lanczos and power iteration.
* :func:`run_basin_study` -- PTQ vs QAT: loss along the line from the float weights, excess
  loss, displacement along the top Hessian directions, gradient/basin cosine along the QAT
  trajectory, boundary metrics.
* :func:`run_range_method_study` -- STE-QAT with min-max / MSE / OCTAV / Gaussian range
  methods: accuracy, loss-curve spread over seeds, per-layer SQNR.
"""

from bq_jax.qat.basin import (
    BASIN_METHODS,
    BasinConfig,
    basin_config,
    run_basin_study,
    write_basin_outputs,
)
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
    lsq_fake_quant,
    lsq_float_fake_quant,
    lsq_grad_scale,
    quantize_variables,
    resolve_plan,
)
from bq_jax.qat.range_methods import (
    RANGE_METHOD_CHOICES,
    RangeMethodStudyConfig,
    range_method_study_config,
    run_range_method_study,
    write_range_method_outputs,
)
from bq_jax.qat.training import (
    QATDivergedError,
    QATProgram,
    QATResult,
    QATState,
    check_variables_match,
    epoch_batches,
    load_qat_checkpoint,
    make_qat_program,
    qat_train,
    save_qat_checkpoint,
)

__all__ = [
    "BASIN_METHODS",
    "BasinConfig",
    "basin_config",
    "run_basin_study",
    "write_basin_outputs",
    "RANGE_METHOD_CHOICES",
    "RangeMethodStudyConfig",
    "range_method_study_config",
    "run_range_method_study",
    "write_range_method_outputs",
    "LeafPlan",
    "QATConfig",
    "QATDivergedError",
    "QATProgram",
    "QATResult",
    "QATState",
    "check_variables_match",
    "dense_hessian",
    "epoch_batches",
    "hvp",
    "lanczos_top_eigs",
    "load_qat_checkpoint",
    "lsq_fake_quant",
    "lsq_float_fake_quant",
    "lsq_grad_scale",
    "make_qat_program",
    "power_top_eigs",
    "qat_train",
    "quantize_variables",
    "resolve_plan",
    "save_qat_checkpoint",
    "top_hessian_eigs",
]
