"""Float training with optax, checkpoints, and cached trained classifiers.

* :class:`TrainConfig` and :func:`default_train_config` (per data set).
* :func:`run_epochs`: the one training loop (float training and QAT): a jitted
  ``step(state, batch) -> (state, metrics)`` over epochs shuffled with ``fold_in(key, epoch)``,
  progress, a stop on NaN/inf loss, resumable checkpoints (:class:`Checkpointing`).
* :func:`train` / :func:`train_with_history`: float training on it, monitoring on the
  calibration split only.
* :func:`accuracy`: batched, jitted top-1 accuracy of any ``apply_fn``.
* :func:`save_checkpoint` / :func:`load_checkpoint` (variables) and :func:`save_train_state` /
  :func:`load_train_state` (a whole training state): one format of atomic, checksummed msgpack
  files that store the model description, training settings and data fingerprint, and refuse
  mismatches.
* :func:`trained_classifier`: train once per (data set, model, settings, seed, data) and reuse.
"""

from bq_jax.train.cache import checkpoint_path, default_cache_dir, trained_classifier
from bq_jax.train.checkpoint import (
    Checkpoint,
    CheckpointError,
    CheckpointMismatchError,
    load_checkpoint,
    load_train_state,
    save_checkpoint,
    save_train_state,
)
from bq_jax.train.config import (
    DEFAULT_MODELS,
    OPTIMIZERS,
    SCHEDULES,
    TrainConfig,
    default_train_config,
)
from bq_jax.train.loop import (
    Checkpointing,
    EpochRun,
    NonFiniteLossError,
    TrainState,
    accuracy,
    augment_images,
    cross_entropy,
    make_optimizer,
    make_train_step,
    optimizer_update,
    run_epochs,
    train,
    train_with_history,
)

__all__ = [
    "Checkpoint",
    "CheckpointError",
    "CheckpointMismatchError",
    "checkpoint_path",
    "default_cache_dir",
    "load_checkpoint",
    "load_train_state",
    "save_checkpoint",
    "save_train_state",
    "trained_classifier",
    "DEFAULT_MODELS",
    "OPTIMIZERS",
    "SCHEDULES",
    "Checkpointing",
    "EpochRun",
    "NonFiniteLossError",
    "TrainConfig",
    "TrainState",
    "accuracy",
    "augment_images",
    "cross_entropy",
    "default_train_config",
    "make_optimizer",
    "make_train_step",
    "optimizer_update",
    "run_epochs",
    "train",
    "train_with_history",
]
