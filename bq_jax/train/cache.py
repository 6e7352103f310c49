"""``trained_classifier``: a trained float classifier per (data set, model, settings, seed),
trained once and then read from a checkpoint cache."""

from __future__ import annotations

import hashlib
import json
import os
import warnings

import jax

from bq_jax._src.checks import check_int
from bq_jax.train.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from bq_jax.train.config import DEFAULT_MODELS, TrainConfig, default_train_config
from bq_jax.train.loop import train_with_history

__all__ = ["checkpoint_path", "default_cache_dir", "trained_classifier"]

# Bumped when training changes in a way the cache key does not see (e.g. the loss or loop).
_CACHE_VERSION = 1


def default_cache_dir() -> str:
    """``$BQ_JAX_CACHE`` if set, else ``~/.cache/bq_jax``."""
    return os.environ.get("BQ_JAX_CACHE") or os.path.join(
        os.path.expanduser("~"), ".cache", "bq_jax"
    )


def checkpoint_path(cache_dir: str, dataset, model, train_config: TrainConfig, seed: int) -> str:
    """Cache file of one trained classifier:
    ``<cache_dir>/<dataset>_<model>_seed<seed>_<hash>.ckpt``, the hash (16 hex digits,
    BLAKE2b) covering the data set name and fingerprint, the model description, the training
    settings, the seed and the cache version."""
    key = json.dumps(
        {
            "dataset": dataset.name,
            "data_fingerprint": dataset.fingerprint,
            "model": model.to_dict(),
            "train_config": train_config.to_dict(),
            "seed": seed,
            "cache_version": _CACHE_VERSION,
        },
        sort_keys=True,
    )
    digest = hashlib.blake2b(key.encode(), digest_size=8).hexdigest()
    return os.path.join(cache_dir, f"{dataset.name}_{model.name}_seed{seed}_{digest}.ckpt")


def trained_classifier(
    dataset_name: str,
    *,
    seed: int = 0,
    cache_dir: str | os.PathLike | None = None,
    data_dir: str | None = None,
    model=None,
    train_config: TrainConfig | None = None,
    quick: bool = False,
    subset=None,
    progress: bool = True,
):
    """A float classifier trained on ``dataset_name``: loaded from the cache, or trained and
    cached.

    The data set is ``load_dataset(dataset_name, seed=seed, subset=subset, ...)`` (``seed``
    also draws the calibration split, see :mod:`bq_jax.data`); training uses
    ``jax.random.key(seed)``. The checkpoint is keyed by the data set name and fingerprint,
    the model description, the training settings and the seed
    (:func:`checkpoint_path`), so any change retrains and nothing is retrained otherwise.

    Defaults: model ``mlp`` for digits, ``cnn`` for mnist / fashion_mnist / mnist5k,
    ``resnet`` for cifar10 (:data:`DEFAULT_MODELS`, default hyperparameters); training settings
    :func:`default_train_config`. ``quick=True`` picks the quick training settings and, for the
    image data sets (mnist5k included), the ``"tiny"`` subset (100 train / 20 held-out examples
    per class); explicit ``train_config`` / ``subset`` take precedence.

    Args:
        dataset_name: ``"digits"``, ``"mnist"``, ``"fashion_mnist"``, ``"cifar10"`` or
            ``"mnist5k"``.
        seed: training seed (>= 0).
        cache_dir: checkpoint directory (None: :func:`default_cache_dir`).
        data_dir: tfds data directory for the tfds image data sets.
        model: architecture name (``"mlp"``, ``"cnn"``, ``"resnet"``), a
            :class:`bq_jax.models.Model`, or None for the data set's default.
        train_config: a :class:`TrainConfig`, or None for the data set's default.
        quick: quick default settings (see above).
        subset: data subset passed to ``load_dataset`` (None: full data, or "tiny" if quick).
        progress: show progress bars.

    Returns:
        ``(model, variables, dataset)``.

    Raises:
        ValueError: unknown data set or model, a model that does not fit the data, or a
            cached file that is corrupted (the message names the file).
        NonFiniteLossError: training diverged.
        DataUnavailableError: the image data is not prepared (``FileNotFoundError``).

    Example:
        >>> model, variables, data = trained_classifier("digits", seed=0)  # doctest: +SKIP
        >>> accuracy(model.apply_fn, variables, data.x_heldout, data.y_heldout)  # doctest: +SKIP
        0.97...
    """
    from bq_jax.data import load_dataset
    from bq_jax.models import Model, make_model

    seed = check_int("seed", seed, 0)
    if not isinstance(quick, bool):
        raise TypeError(f"quick must be a bool, got {quick!r}")
    if train_config is not None and not isinstance(train_config, TrainConfig):
        raise TypeError(f"train_config must be a TrainConfig or None, got {train_config!r}")
    if model is not None and not isinstance(model, str | Model):
        raise TypeError(f"model must be a name, a bq_jax.models.Model or None, got {model!r}")
    if subset is None and quick and dataset_name != "digits":
        subset = "tiny"
    data = load_dataset(
        dataset_name, data_dir=data_dir, seed=seed, subset=subset, progress=progress
    )
    if model is None or isinstance(model, str):
        name = model if model is not None else DEFAULT_MODELS[dataset_name]
        model = make_model(name, num_classes=data.num_classes, input_shape=data.input_shape)
    elif model.num_classes != data.num_classes or model.input_shape != data.input_shape:
        raise ValueError(
            f"model takes {model.input_shape} inputs and {model.num_classes} classes but "
            f"{dataset_name} has {data.input_shape} and {data.num_classes}"
        )
    if train_config is None:
        train_config = default_train_config(dataset_name, quick=quick)
    cache_dir = os.fspath(cache_dir) if cache_dir is not None else default_cache_dir()
    path = checkpoint_path(cache_dir, data, model, train_config, seed)
    if os.path.exists(path):
        try:
            ckpt = load_checkpoint(
                path, model=model, train_config=train_config, data_fingerprint=data.fingerprint
            )
        except CheckpointError as e:
            # A cache entry that fails its checksum or does not match its key is never reused:
            # the classifier is trained again (same seed, same result) and the entry replaced.
            warnings.warn(f"retraining: the cached checkpoint is unusable ({e})", stacklevel=2)
        else:
            return model, ckpt.variables, data
    variables, history = train_with_history(
        model, data, train_config, jax.random.key(seed), progress=progress
    )
    save_checkpoint(
        path,
        variables,
        model=model,
        train_config=train_config,
        data_fingerprint=data.fingerprint,
        extra={"dataset": dataset_name, "seed": seed, "subset": subset, "history": history},
    )
    return model, variables, data
