"""The ``Dataset`` container, split validation and the data fingerprint.

A :class:`Dataset` holds the three fixed splits of one data set exactly as the model sees them
(float32 inputs after standardisation, int32 labels), the statistics that produced them, the
indices the splits were drawn with, and a short ``fingerprint`` that checkpoints store so that a
model is never silently evaluated on data it was not trained against.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Mapping, Sequence

import numpy as np

from bq_jax._src.checks import check_choice, check_int
from bq_jax.vocabulary import SPLITS

__all__ = [
    "SPLITS",
    "DataUnavailableError",
    "Dataset",
    "fingerprint_of",
    "standardise",
    "validate_split",
]

# Bumped whenever the fingerprint's byte stream changes meaning, so old checkpoints are refused.
_FINGERPRINT_VERSION = 1


class DataUnavailableError(FileNotFoundError):
    """A data set's files are not on this machine; the message names the command that fetches
    them. A ``FileNotFoundError`` (hence an ``OSError``), so callers that report missing files
    report this one too."""


def _describe(a) -> str:
    shape, dtype = getattr(a, "shape", "?"), getattr(a, "dtype", "?")
    return f"{type(a).__name__} with shape {shape} and dtype {dtype}"


def validate_split(x, y, *, num_classes: int, name: str, input_shape: Sequence[int] | None = None):
    """Checks one split ``(x, y)`` and raises a ``ValueError`` naming the split and the problem.

    Checked: ``x`` has a leading example axis and ``y`` is 1-D with the same length; the split
    is not empty; ``x`` is numeric and finite (no NaN or inf); ``y`` has an integer dtype and
    every label lies in ``[0, num_classes)``; if ``input_shape`` is given, ``x.shape[1:]`` equals
    it. Training and PTQ calibration call it on the arrays they are handed.

    Args:
        x: inputs ``[N, *input_shape]`` (numpy or JAX array).
        y: integer labels ``[N]``.
        num_classes: number of classes K (>= 1); labels must lie in ``[0, K)``.
        name: split name used in messages (e.g. ``"train"``, ``"calibration"``).
        input_shape: expected per-example shape, or None to skip that check.

    Returns:
        None.

    Raises:
        ValueError: a shape, emptiness, finiteness or label-range problem.
        TypeError: ``num_classes`` is not an int, or ``x``/``y`` have a non-numeric dtype.

    Example:
        >>> validate_split(np.zeros((4, 2), np.float32), np.array([0, 1, 2, 0]),
        ...                num_classes=3, name="train")
    """
    num_classes = check_int("num_classes", num_classes, 1)
    xa = np.asarray(x)
    ya = np.asarray(y)
    where = f"split {name!r}"
    if xa.ndim < 1:
        raise ValueError(f"{where}: x must have a leading example axis, got {_describe(xa)}")
    if ya.ndim != 1:
        raise ValueError(f"{where}: y must be 1-D (one label per example), got {_describe(ya)}")
    if xa.shape[0] != ya.shape[0]:
        raise ValueError(
            f"{where}: x has {xa.shape[0]} examples but y has {ya.shape[0]} labels; they must match"
        )
    if xa.shape[0] == 0:
        raise ValueError(f"{where} is empty (0 examples); every split needs at least one")
    if input_shape is not None and tuple(xa.shape[1:]) != tuple(input_shape):
        raise ValueError(
            f"{where}: each example must have shape {tuple(input_shape)}, "
            f"got x.shape[1:] = {tuple(xa.shape[1:])}"
        )
    if not (np.issubdtype(xa.dtype, np.floating) or np.issubdtype(xa.dtype, np.integer)):
        raise TypeError(f"{where}: x must be a real numeric array, got dtype {xa.dtype}")
    if np.issubdtype(xa.dtype, np.floating):
        finite = np.isfinite(xa)
        if not finite.all():
            bad = np.flatnonzero(~finite.reshape(xa.shape[0], -1).all(axis=1))
            raise ValueError(
                f"{where}: x contains {int((~finite).sum())} NaN/inf values in "
                f"{bad.size} examples (first at example {int(bad[0])}); inputs must be finite"
            )
    if not np.issubdtype(ya.dtype, np.integer):
        raise TypeError(f"{where}: y must have an integer dtype, got {ya.dtype}")
    out = (ya < 0) | (ya >= num_classes)
    if out.any():
        first = int(np.flatnonzero(out)[0])
        raise ValueError(
            f"{where}: {int(out.sum())} labels outside [0, {num_classes}) "
            f"(first: y[{first}] = {int(ya[first])})"
        )


def _update(h, key: str, value) -> None:
    """Feeds ``key`` and a canonical byte form of ``value`` into the hash ``h``."""
    h.update(key.encode())
    h.update(b"\x00")
    if isinstance(value, np.ndarray):
        a = np.ascontiguousarray(value)
        h.update(f"{a.dtype.str}{a.shape}".encode())
        h.update(a.data)  # ascontiguousarray: a buffer of exactly the array's bytes
    elif isinstance(value, bytes):
        h.update(value)
    else:
        h.update(repr(value).encode())
    h.update(b"\x01")


def fingerprint_of(parts: Mapping[str, object]) -> str:
    """Short stable hash (16 hex digits, BLAKE2b-64) of named parts.

    Arrays are hashed by dtype, shape and bytes; other values by ``repr``. Keys are visited
    in sorted order, so the result depends only on the contents.

    Args:
        parts: name -> numpy array, bytes, or a value with a stable ``repr`` (str, int, tuple).

    Returns:
        16 lowercase hex characters.

    Example:
        >>> fingerprint_of({"indices": np.arange(3), "name": "digits"})
        '8b4e6742fe2f2e92'
    """
    h = hashlib.blake2b(digest_size=8)
    _update(h, "fingerprint_version", _FINGERPRINT_VERSION)
    for key in sorted(parts):
        _update(h, key, parts[key])
    return h.hexdigest()


def _frozen(a, dtype) -> np.ndarray:
    """``a`` as a read-only ``dtype`` array; copied unless it already is one that owns its data."""
    a = np.asarray(a)
    if a.dtype == dtype and a.flags.owndata and not a.flags.writeable:
        return a
    a = np.array(a, dtype=dtype, copy=True)
    a.setflags(write=False)
    return a


@dataclasses.dataclass(frozen=True, kw_only=True, eq=False, repr=False)
class Dataset:
    """One data set's fixed train / calibration / held-out splits, as the model sees them.

    ``x_*`` are float32 ``[N, *input_shape]`` (images NHWC) after standardisation
    ``x = (raw * input_scale - mean) / std``; ``y_*`` are int32 in ``[0, num_classes)``. Arrays
    are read-only. Construction validates every split (:func:`validate_split`).

    Example:
        >>> from bq_jax.data import load_dataset
        >>> data = load_dataset("digits")
        >>> data.x_train.shape, data.x_heldout.shape
        ((1047, 64), (450, 64))
    """

    # Data set name, e.g. "digits".
    name: str
    # Training inputs float32[N_train, *input_shape] (standardised).
    x_train: np.ndarray
    # Training labels int32[N_train].
    y_train: np.ndarray
    # Calibration inputs (drawn from the training data, never from held-out): PTQ ranges, margins.
    x_calibration: np.ndarray
    # Calibration labels int32[N_calibration].
    y_calibration: np.ndarray
    # Held-out inputs float32[N_heldout, *input_shape] (results are judged on them).
    x_heldout: np.ndarray
    # Held-out labels int32[N_heldout].
    y_heldout: np.ndarray
    # Number of classes K.
    num_classes: int
    # Per-example input shape, e.g. (64,) or (28, 28, 1).
    input_shape: tuple[int, ...]
    # Short stable hash of the split contents and preprocessing (checkpoints refuse a mismatch).
    fingerprint: str
    # Class names, one per label (default: "0", "1", ...).
    class_names: tuple[str, ...] = ()
    # Multiplier applied to raw inputs before standardisation (1/255 for 8-bit images).
    input_scale: float = 1.0
    # Standardisation mean, broadcastable against one example (per feature or per channel).
    mean: np.ndarray | None = None
    # Standardisation std (constant-in-train features use 1), same shape as ``mean``.
    std: np.ndarray | None = None
    # Indices of each split into its source array (see ``source``), keyed by split name.
    indices: Mapping[str, np.ndarray] = dataclasses.field(default_factory=dict)
    # Seed of the calibration draw (None when the splits were not drawn by load_dataset).
    seed: int | None = None
    # Seed of the fixed splits: the digits held-out split and the subset draws.
    split_seed: int | None = None
    # (train_per_class, heldout_per_class or None) of the subset, None for the full data.
    subset: tuple[int, int | None] | None = None
    # Where the raw data came from, e.g. "sklearn.datasets.load_digits" or "tfds:mnist:3.0.1".
    source: str = ""

    def __post_init__(self):
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"name must be a non-empty str, got {self.name!r}")
        num_classes = check_int("num_classes", self.num_classes, 1)
        shape = tuple(int(d) for d in self.input_shape)
        if not shape or any(d < 1 for d in shape):
            raise ValueError(f"input_shape must be a non-empty tuple of sizes >= 1, got {shape}")
        if not isinstance(self.fingerprint, str) or not self.fingerprint:
            raise ValueError(f"fingerprint must be a non-empty str, got {self.fingerprint!r}")
        set_ = lambda k, v: object.__setattr__(self, k, v)
        set_("num_classes", num_classes)
        set_("input_shape", shape)
        for split in SPLITS:
            x, y = getattr(self, f"x_{split}"), getattr(self, f"y_{split}")
            validate_split(x, y, num_classes=self.num_classes, name=split, input_shape=shape)
            set_(f"x_{split}", _frozen(x, np.float32))
            set_(f"y_{split}", _frozen(y, np.int32))
        names = tuple(str(c) for c in self.class_names) or tuple(
            str(k) for k in range(self.num_classes)
        )
        if len(names) != self.num_classes:
            raise ValueError(
                f"class_names must have num_classes = {self.num_classes} entries, got {len(names)}"
            )
        set_("class_names", names)
        for stat in ("mean", "std"):
            if getattr(self, stat) is not None:
                set_(stat, _frozen(getattr(self, stat), np.float32))
        set_("indices", {k: _frozen(v, np.int64) for k, v in dict(self.indices).items()})

    def split(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """``(x, y)`` of split ``name``: ``"train"``, ``"calibration"`` or ``"heldout"``."""
        check_choice("split", name, SPLITS)
        return getattr(self, f"x_{name}"), getattr(self, f"y_{name}")

    @property
    def sizes(self) -> dict[str, int]:
        """Examples per split, e.g. ``{"train": 1047, "calibration": 300, "heldout": 450}``."""
        return {s: int(getattr(self, f"y_{s}").shape[0]) for s in SPLITS}

    def standardise(self, raw) -> np.ndarray:
        """Applies this data set's preprocessing to raw inputs (0..16 digits, 0..255 images):
        ``(raw * input_scale - mean) / std`` as float32.

        Args:
            raw: raw inputs ``[N, *input_shape]`` in the source's units.

        Returns:
            float32 array of the same shape, as the model sees it.
        """
        if self.mean is None or self.std is None:
            raise ValueError(f"{self.name}: no standardisation statistics stored (mean/std None)")
        return standardise(raw, input_scale=self.input_scale, mean=self.mean, std=self.std)

    def __repr__(self) -> str:
        sizes = ", ".join(f"{k}={v}" for k, v in self.sizes.items())
        return (
            f"Dataset(name={self.name!r}, {sizes}, input_shape={self.input_shape}, "
            f"num_classes={self.num_classes}, seed={self.seed}, subset={self.subset}, "
            f"fingerprint={self.fingerprint!r})"
        )


def standardise(raw, *, input_scale: float, mean, std) -> np.ndarray:
    """``(raw * input_scale - mean) / std`` in float32; mean/std broadcast over the trailing axes.

    Args:
        raw: raw inputs ``[N, *input_shape]``.
        input_scale: multiplier of the raw values (1/255 for 8-bit images).
        mean: per-feature or per-channel mean (shape a suffix of ``input_shape``).
        std: matching standard deviation (no zeros).

    Returns:
        float32 array shaped like ``raw``.
    """
    x = np.asarray(raw, dtype=np.float32) * np.float32(input_scale)
    x -= np.asarray(mean, np.float32)
    x /= np.asarray(std, np.float32)
    return x
