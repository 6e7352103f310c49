"""Raw data sources: sklearn's bundled digits and TensorFlow Datasets (tfds) image data sets.

The tfds data sets are read with ``builder.as_data_source`` (random access to ArrayRecord
files, decoded with numpy/PIL), so reading needs no TensorFlow and never touches the network
(``download=False``, no GCS lookup): missing files raise :class:`DataUnavailableError` at once,
with the command that prepares them. Preparing (``tfds build``) is a one-off step that needs
network access and TensorFlow, because tfds encodes the images with ``tf.image``.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
import zipfile

import numpy as np

from bq_jax.data.dataset import DataUnavailableError

__all__ = [
    "CACHE_PREFIX",
    "RawData",
    "TFDS_NAMES",
    "fetch_command",
    "load_digits_raw",
    "load_tfds_raw",
]

#: bq_jax name -> tfds name with the pinned major version (a new major version is new data).
TFDS_NAMES = {
    "mnist": "mnist:3.*.*",
    "fashion_mnist": "fashion_mnist:3.*.*",
    "cifar10": "cifar10:3.*.*",
}

#: File name prefix of the decoded-array cache inside a tfds version folder.
CACHE_PREFIX = "bq_jax-arrays"


@dataclasses.dataclass(frozen=True, kw_only=True, eq=False)
class RawData:
    """Raw arrays of one data set before splitting and standardisation."""

    # Training pool inputs in raw units (digits float64 0..16, images uint8 NHWC).
    x_pool: np.ndarray
    # Training pool labels int64[N_pool].
    y_pool: np.ndarray
    # Held-out inputs in raw units (digits: the stratified 25 %; images: tfds's "test" split).
    x_heldout: np.ndarray
    # Held-out labels int64[N_heldout].
    y_heldout: np.ndarray
    # Indices of the pool / held-out examples into their source arrays (see Dataset.indices).
    pool_indices: np.ndarray
    heldout_indices: np.ndarray
    # Number of classes K.
    num_classes: int
    # Class names, one per label.
    class_names: tuple[str, ...]
    # Origin of the data, e.g. "tfds:mnist:3.0.1".
    source: str


def load_digits_raw(*, split_seed: int) -> RawData:
    """sklearn's 8x8 digits (1797 examples, 64 features 0..16, bundled: no download).

    The held-out set is ``train_test_split(..., test_size=0.25, stratify=y,
    random_state=split_seed)``: 450 examples (25 %, rounded up), every class in proportion.
    The remaining 1347 examples form the training pool.
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = np.asarray(digits.data, np.float64)
    y = np.asarray(digits.target, np.int64)
    pool_idx, heldout_idx = train_test_split(
        np.arange(y.shape[0]), test_size=0.25, stratify=y, random_state=split_seed
    )
    pool_idx, heldout_idx = np.sort(pool_idx), np.sort(heldout_idx)
    return RawData(
        x_pool=x[pool_idx],
        y_pool=y[pool_idx],
        x_heldout=x[heldout_idx],
        y_heldout=y[heldout_idx],
        pool_indices=pool_idx,
        heldout_indices=heldout_idx,
        num_classes=10,
        class_names=tuple(str(c) for c in digits.target_names),
        source="sklearn.datasets.load_digits",
    )


def fetch_command(name: str, data_dir: str) -> str:
    """Shell command that prepares tfds data set ``name`` as ArrayRecord files in ``data_dir``."""
    return f"tfds build {name} --data_dir={data_dir} --file_format=array_record"


def _unavailable(name: str, builder, data_dir: str, cause: BaseException) -> DataUnavailableError:
    """The error for a data set whose ArrayRecord files cannot be read, naming the fix."""
    version_dir = str(builder.data_dir)
    prepared = builder.is_prepared()
    fmt_name = getattr(builder.info.file_format, "value", builder.info.file_format)
    if prepared and fmt_name not in (None, "array_record"):
        problem = (
            f"the {name} data set under {version_dir} was prepared as {fmt_name} files; bq_jax "
            "reads ArrayRecord files (random access, no TensorFlow needed to read). Delete "
            f"that folder (or choose another data_dir) and prepare it as ArrayRecord:"
        )
        detail = f" [tfds: {type(cause).__name__}: {cause}]"
    else:
        problem = f"the {name} data set is not prepared under {version_dir}. Prepare it with:"
        detail = ""
    py = (
        f"python -c \"import tensorflow_datasets as tfds; tfds.builder('{name}', "
        f"data_dir='{data_dir}', file_format='array_record').download_and_prepare()\""
    )
    return DataUnavailableError(
        f"{problem}\n    {fetch_command(name, data_dir)}\n"
        f"or\n    {py}\n"
        "(a one-off step that needs network access and TensorFlow: pip install tensorflow), "
        f"then pass data_dir={data_dir!r} (or set TFDS_DATA_DIR).{detail}"
    )


def _read_split(source, *, image_shape, what: str, progress: bool):
    """Reads every record of a tfds data source into uint8 images and int64 labels."""
    from tqdm.auto import tqdm

    n = len(source)
    x = np.empty((n, *image_shape), np.uint8)
    y = np.empty((n,), np.int64)
    for i in tqdm(range(n), desc=f"reading {what}", disable=not progress, leave=False):
        example = source[i]
        image = np.asarray(example["image"])
        if image.shape != tuple(image_shape) or image.dtype != np.uint8:
            raise ValueError(
                f"{what}[{i}]: expected a uint8 image of shape {tuple(image_shape)}, "
                f"got {image.dtype} {image.shape}"
            )
        x[i] = image
        y[i] = int(example["label"])
    return x, y


def _cache_path(builder, split: str) -> str:
    return os.path.join(os.fspath(builder.data_dir), f"{CACHE_PREFIX}-{split}.npz")


def _load_cached(path: str, *, num_examples: int, image_shape):
    """Decoded ``(x, y)`` from a cache file, or None when it is absent or does not match."""
    if not os.path.isfile(path):
        return None
    try:
        # Our own file object: np.load leaks the one it opens when the file is not a zip
        # (truncated). A damaged member fails zipfile's CRC check on reading.
        with open(path, "rb") as fh, np.load(fh, allow_pickle=False) as f:
            x, y = f["x"], f["y"]
    except (OSError, ValueError, KeyError, zipfile.BadZipFile):
        return None
    expected = (num_examples, *image_shape)
    if x.shape != expected or x.dtype != np.uint8 or y.shape != (num_examples,):
        return None
    return x, y.astype(np.int64)


def _save_cache(path: str, x: np.ndarray, y: np.ndarray) -> None:
    """Writes the cache atomically (temp file + os.replace); a read-only folder is skipped."""
    try:
        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), suffix=".tmp")
    except OSError:
        return
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, x=x, y=y)
        os.replace(tmp, path)
    except OSError:
        if os.path.exists(tmp):
            os.remove(tmp)


def load_tfds_raw(
    name: str, *, data_dir: str | None, progress: bool, cache: bool = True
) -> RawData:
    """Reads the official ``train`` (pool) and ``test`` (held-out) splits of tfds data set
    ``name``.

    With ``cache``, the decoded uint8 arrays of a prepared data set are kept next to its
    ArrayRecord files (``bq_jax-arrays-{split}.npz`` in the tfds version folder), so later
    loads skip PNG decoding (about a minute for CIFAR-10's 60000 images). The cache lives in
    the folder it was made from, so deleting or rebuilding the data set removes it; it is
    used only if its shape matches the split, and skipped when the folder is read-only.

    Args:
        name: bq_jax name, a key of :data:`TFDS_NAMES`.
        data_dir: tfds data directory (None: ``$TFDS_DATA_DIR`` or ``~/tensorflow_datasets``).
        progress: show a progress bar while reading.
        cache: read / write the decoded-array cache.

    Returns:
        :class:`RawData` with uint8 NHWC images.

    Raises:
        DataUnavailableError: the prepared ArrayRecord files are not there.
    """
    import tensorflow_datasets as tfds

    tfds_name = TFDS_NAMES[name]
    builder = tfds.builder(tfds_name, data_dir=data_dir)
    base = tfds_name.split(":")[0]
    # The version folder is <data_dir>/<name>/<version>; name the root the user passes.
    shown_dir = data_dir or os.path.dirname(os.path.dirname(os.fspath(builder.data_dir)))
    try:
        sources = {s: builder.as_data_source(split=s) for s in ("train", "test")}
    except (KeyError, AssertionError, NotImplementedError, OSError, ValueError) as e:
        raise _unavailable(base, builder, shown_dir, e) from None
    features = builder.info.features
    image_shape = tuple(features["image"].shape)
    label = features["label"]
    # Only a data set prepared on disk gets a cache (not, e.g., tfds.testing.mock_data).
    use_cache = cache and builder.is_prepared()
    arrays = {}
    for s, src in sources.items():
        path = _cache_path(builder, s)
        cached = (
            _load_cached(path, num_examples=len(src), image_shape=image_shape)
            if use_cache
            else None
        )
        if cached is not None:
            arrays[s] = cached
            continue
        arrays[s] = _read_split(src, image_shape=image_shape, what=f"{name} {s}", progress=progress)
        if use_cache:
            _save_cache(path, *arrays[s])
    (x_pool, y_pool), (x_heldout, y_heldout) = arrays["train"], arrays["test"]
    return RawData(
        x_pool=x_pool,
        y_pool=y_pool,
        x_heldout=x_heldout,
        y_heldout=y_heldout,
        pool_indices=np.arange(y_pool.shape[0], dtype=np.int64),
        heldout_indices=np.arange(y_heldout.shape[0], dtype=np.int64),
        num_classes=int(label.num_classes),
        class_names=tuple(label.names),
        source=f"tfds:{base}:{builder.version}",
    )
