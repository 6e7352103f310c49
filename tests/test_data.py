"""Tests of bq_jax.data: splits, standardisation, fingerprints, subsets, validation, errors.

The tfds image data sets are exercised three ways, none of which downloads anything:
``tfds.testing.mock_data`` (random examples through the patched data source), tiny data sets
really prepared on disk as ArrayRecord files with tfds's own serializer (the unpatched read
path, pixel for pixel), and empty / wrongly prepared folders (the missing-data errors).
"""

import dataclasses
import io
import os
import time

import jax
import numpy as np
import pytest
import tensorflow_datasets as tfds
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from bq_jax.data import (
    DATASETS,
    SUBSETS,
    Dataset,
    DataUnavailableError,
    batch_indices,
    batches,
    fingerprint_of,
    load_dataset,
    num_batches,
    resolve_subset,
    validate_split,
)
from bq_jax.data.sources import CACHE_PREFIX
from bq_jax.data.splits import MIN_STD

IMAGE_SETS = {"mnist": (28, 28, 1), "fashion_mnist": (28, 28, 1), "cifar10": (32, 32, 3)}
# Examples per split that tfds.testing.mock_data generates, and the calibration size used.
MOCK_N = 240
MOCK_CAL = 40
F32 = dict(atol=1e-6, rtol=1e-5)


def _load_mock(name, *, num_examples=MOCK_N, **kwargs):
    kwargs.setdefault("calibration_size", MOCK_CAL)
    with tfds.testing.mock_data(num_examples=num_examples):
        return load_dataset(name, progress=False, **kwargs)


def _reference_standardise(raw_train, raw_other, *, scale, axes):
    """numpy reference: statistics of raw_train * scale (ddof 0), std 0 -> 1."""
    t = raw_train.astype(np.float64) * scale
    o = raw_other.astype(np.float64) * scale
    mean, std = t.mean(axis=axes), t.std(axis=axes)
    std = np.where(std < MIN_STD, 1.0, std)
    return (t - mean) / std, (o - mean) / std, mean, std


def _class_counts(y, k=10):
    return np.bincount(np.asarray(y), minlength=k)


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


@pytest.fixture(scope="module", params=sorted(IMAGE_SETS))
def mock_images(request):
    return _load_mock(request.param)


# ------------------------------------------------------------------------------------ digits
def test_digits_sizes_shapes_dtypes(digits):
    assert digits.sizes == {"train": 1047, "calibration": 300, "heldout": 450}
    assert digits.input_shape == (64,) and digits.num_classes == 10
    assert digits.class_names == tuple(str(k) for k in range(10))
    for split in ("train", "calibration", "heldout"):
        x, y = digits.split(split)
        assert x.dtype == np.float32 and y.dtype == np.int32
        assert x.shape == (digits.sizes[split], 64) and y.shape == (digits.sizes[split],)
        assert np.isfinite(x).all()
        assert not x.flags.writeable and not y.flags.writeable
    assert digits.seed == 0 and digits.split_seed == 0 and digits.subset is None


def test_digits_heldout_split_is_sklearns_stratified_quarter(digits):
    d = load_digits()
    _, expected = train_test_split(
        np.arange(1797), test_size=0.25, stratify=d.target, random_state=0
    )
    np.testing.assert_array_equal(digits.indices["heldout"], np.sort(expected))
    np.testing.assert_array_equal(digits.y_heldout, d.target[np.sort(expected)])
    # Stratified: every class within one example of its share of 450.
    share = 450 * np.bincount(d.target) / 1797
    assert np.all(np.abs(_class_counts(digits.y_heldout) - share) <= 1)
    # The held-out set does not depend on the training seed; the calibration draw does.
    other = load_dataset("digits", seed=1)
    np.testing.assert_array_equal(other.indices["heldout"], digits.indices["heldout"])
    np.testing.assert_array_equal(other.y_heldout, digits.y_heldout)
    assert not np.array_equal(other.indices["calibration"], digits.indices["calibration"])


def test_digits_calibration_is_stratified_draw_from_training_pool(digits):
    d = load_digits()
    pool = np.setdiff1d(np.arange(1797), digits.indices["heldout"])
    share = 300 * np.bincount(d.target[pool]) / pool.size
    assert np.all(np.abs(_class_counts(digits.y_calibration) - share) < 1)
    assert np.isin(digits.indices["calibration"], pool).all()


def test_digits_splits_disjoint_by_index_and_content(digits):
    idx = digits.indices
    assert not np.intersect1d(idx["train"], idx["calibration"]).size
    assert not np.intersect1d(idx["train"], idx["heldout"]).size
    assert not np.intersect1d(idx["calibration"], idx["heldout"]).size
    union = np.concatenate([idx["train"], idx["calibration"], idx["heldout"]])
    np.testing.assert_array_equal(np.sort(union), np.arange(1797))
    # sklearn's digits has no duplicate images, so contents must be disjoint too.
    rows = {
        s: {r.tobytes() for r in digits.split(s)[0]} for s in ("train", "calibration", "heldout")
    }
    assert not rows["train"] & rows["calibration"]
    assert not rows["train"] & rows["heldout"]
    assert not rows["calibration"] & rows["heldout"]


def test_digits_standardisation_matches_numpy_reference(digits):
    d = load_digits()
    raw = d.data
    ref_train, ref_heldout, mean, std = _reference_standardise(
        raw[digits.indices["train"]], raw[digits.indices["heldout"]], scale=1.0, axes=0
    )
    np.testing.assert_allclose(digits.x_train, ref_train, **F32)
    np.testing.assert_allclose(digits.x_heldout, ref_heldout, **F32)
    _, ref_cal, _, _ = _reference_standardise(
        raw[digits.indices["train"]], raw[digits.indices["calibration"]], scale=1.0, axes=0
    )
    np.testing.assert_allclose(digits.x_calibration, ref_cal, **F32)
    np.testing.assert_allclose(digits.mean, mean, **F32)
    np.testing.assert_allclose(digits.std, std, **F32)
    # Train split: mean 0, std 1 per feature; features constant in train: std 1, values 0.
    x = digits.x_train.astype(np.float64)
    np.testing.assert_allclose(x.mean(axis=0), 0.0, atol=1e-6)
    constant = raw[digits.indices["train"]].std(axis=0) == 0
    assert constant.sum() >= 3  # e.g. the corner pixels
    np.testing.assert_allclose(x.std(axis=0)[~constant], 1.0, atol=1e-5)
    np.testing.assert_array_equal(digits.std[constant], 1.0)
    np.testing.assert_array_equal(x[:, constant], 0.0)
    # The stored statistics reproduce the arrays from raw inputs.
    np.testing.assert_array_equal(
        digits.standardise(raw[digits.indices["heldout"]]), digits.x_heldout
    )


def test_digits_determinism_and_fingerprint(digits):
    again = load_dataset("digits")
    assert again.fingerprint == digits.fingerprint
    for split in ("train", "calibration", "heldout"):
        np.testing.assert_array_equal(again.split(split)[0], digits.split(split)[0])
        np.testing.assert_array_equal(again.split(split)[1], digits.split(split)[1])
    # Pinned: the digits data, its splits and the preprocessing are stable across versions.
    assert digits.fingerprint == "b0d826a4e0d6c385"
    variants = [
        load_dataset("digits", seed=1),
        load_dataset("digits", split_seed=1),
        load_dataset("digits", calibration_size=200),
        load_dataset("digits", subset=50),
    ]
    prints = {digits.fingerprint} | {v.fingerprint for v in variants}
    assert len(prints) == 5
    assert all(len(p) == 16 and int(p, 16) >= 0 for p in prints)
    # split_seed moves the held-out set.
    assert not np.array_equal(variants[1].indices["heldout"], digits.indices["heldout"])


def test_digits_subset_per_class(digits):
    data = load_dataset("digits", subset=(30, 10), seed=3)
    np.testing.assert_array_equal(_class_counts(data.y_train), 30)
    np.testing.assert_array_equal(_class_counts(data.y_heldout), 10)
    assert data.sizes == {"train": 300, "calibration": 300, "heldout": 100}
    assert data.subset == (30, 10)
    assert np.isin(data.indices["heldout"], digits.indices["heldout"]).all()
    assert not np.intersect1d(data.indices["train"], data.indices["calibration"]).size
    assert not np.isin(data.indices["calibration"], digits.indices["heldout"]).any()
    # The subset is fixed by split_seed: another training seed keeps train, redraws calibration.
    other = load_dataset("digits", subset=(30, 10), seed=4)
    np.testing.assert_array_equal(other.indices["train"], data.indices["train"])
    np.testing.assert_array_equal(other.indices["heldout"], data.indices["heldout"])
    assert not np.array_equal(other.indices["calibration"], data.indices["calibration"])


def test_named_subsets_are_documented_sizes():
    assert SUBSETS == {"tiny": (100, 20), "small": (500, 100)}
    assert resolve_subset("small") == (500, 100)
    assert resolve_subset(7) == (7, None)
    assert resolve_subset((7, None)) == (7, None)
    assert resolve_subset([7, 3]) == (7, 3)
    assert resolve_subset(None) is None


def test_subset_too_large_names_class():
    with pytest.raises(
        ValueError, match=r"subset of 500 per class is too large .*class \d+ has only"
    ):
        load_dataset("digits", subset="small")


# ------------------------------------------------------------------------------- tfds (mock)
def test_mock_images_shapes_dtypes(mock_images):
    data = mock_images
    shape = IMAGE_SETS[data.name]
    assert data.input_shape == shape and data.num_classes == 10
    assert data.sizes == {"train": MOCK_N - MOCK_CAL, "calibration": MOCK_CAL, "heldout": MOCK_N}
    for split in ("train", "calibration", "heldout"):
        x, y = data.split(split)
        assert x.shape == (data.sizes[split], *shape)  # NHWC
        assert x.dtype == np.float32 and y.dtype == np.int32
        assert np.isfinite(x).all() and 0 <= y.min() and y.max() < 10
    assert data.source.startswith(f"tfds:{data.name}:3.")
    assert data.input_scale == pytest.approx(1 / 255)
    assert data.mean.shape == data.std.shape == (shape[-1],)


def test_mock_images_train_standardised_per_channel(mock_images):
    data = mock_images
    x = data.x_train.astype(np.float64)
    np.testing.assert_allclose(x.mean(axis=(0, 1, 2)), 0.0, atol=1e-6)
    np.testing.assert_allclose(x.std(axis=(0, 1, 2)), 1.0, atol=1e-5)
    # Raw pixels are in [0, 255]: the channel mean lies in [0, 1] after scaling.
    assert np.all((data.mean > 0) & (data.mean < 1)) and np.all(data.std > 0)
    # Calibration and held-out use the train statistics, so they are not exactly standardised.
    assert abs(data.x_heldout.astype(np.float64).mean()) > 1e-6


def test_mock_images_splits_disjoint_by_index(mock_images):
    idx = mock_images.indices
    assert not np.intersect1d(idx["train"], idx["calibration"]).size
    np.testing.assert_array_equal(
        np.sort(np.concatenate([idx["train"], idx["calibration"]])), np.arange(MOCK_N)
    )
    # The held-out split is the official tfds test split, a different source.
    np.testing.assert_array_equal(idx["heldout"], np.arange(MOCK_N))


def test_mock_images_deterministic_per_seed(mock_images):
    name = mock_images.name
    again = _load_mock(name)
    assert again.fingerprint == mock_images.fingerprint
    np.testing.assert_array_equal(again.x_train, mock_images.x_train)
    np.testing.assert_array_equal(again.y_calibration, mock_images.y_calibration)
    other = _load_mock(name, seed=1)
    assert other.fingerprint != mock_images.fingerprint
    assert not np.array_equal(other.indices["calibration"], mock_images.indices["calibration"])
    np.testing.assert_array_equal(other.indices["heldout"], mock_images.indices["heldout"])


def test_mock_images_int_subset_per_class(mock_images):
    data = _load_mock(mock_images.name, subset=(6, 4), calibration_size=20)
    np.testing.assert_array_equal(_class_counts(data.y_train), 6)
    np.testing.assert_array_equal(_class_counts(data.y_heldout), 4)
    assert data.sizes == {"train": 60, "calibration": 20, "heldout": 40}
    assert not np.intersect1d(data.indices["train"], data.indices["calibration"]).size
    x = data.x_train.astype(np.float64)
    np.testing.assert_allclose(x.mean(axis=(0, 1, 2)), 0.0, atol=1e-6)


def test_mock_named_subset_tiny():
    data = _load_mock("mnist", num_examples=1500, subset="tiny", calibration_size=50)
    np.testing.assert_array_equal(_class_counts(data.y_train), 100)
    np.testing.assert_array_equal(_class_counts(data.y_heldout), 20)
    assert data.sizes == {"train": 1000, "calibration": 50, "heldout": 200}
    assert not np.intersect1d(data.indices["train"], data.indices["calibration"]).size


# ----------------------------------------------------------- tfds (ArrayRecord files on disk)
def _prepare_array_record(data_dir, name, n_train, n_test, seed=0):
    """Writes a tiny, really prepared tfds data set (ArrayRecord + dataset_info.json) with
    tfds's own serializer; returns the raw images and labels that were written and the
    version folder. ``seed`` draws the images; the labels are the same for every seed."""
    from PIL import Image
    from tensorflow_datasets.core import file_adapters, naming
    from tensorflow_datasets.core import splits as splits_lib

    builder = tfds.builder(f"{name}:3.*.*", data_dir=data_dir, file_format="array_record")
    features = builder.info.features
    shape = features["image"].shape
    rng = np.random.default_rng(seed)
    os.makedirs(builder.data_dir, exist_ok=True)
    written, infos = {}, []
    for split, n in (("train", n_train), ("test", n_test)):
        images = rng.integers(0, 256, (n, *shape), dtype=np.uint8)
        labels = np.random.default_rng(n).permutation(np.arange(n) % 10)
        template = naming.ShardedFileTemplate(
            data_dir=builder.data_dir,
            dataset_name=builder.name,
            split=split,
            filetype_suffix="array_record",
        )

        def examples(images=images, labels=labels, split=split):
            for i, (image, label) in enumerate(zip(images, labels, strict=True)):
                png = io.BytesIO()
                Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).save(
                    png, format="PNG"
                )
                example = {"image": png.getvalue(), "label": int(label)}
                if "id" in features:
                    example["id"] = f"{split}_{i:05d}"
                yield i, features.serialize_example(example)

        path = template.sharded_filepath(shard_index=0, num_shards=1)
        file_adapters.ArrayRecordFileAdapter.write_examples(path, examples())
        infos.append(
            splits_lib.SplitInfo(
                name=split, shard_lengths=[n], num_bytes=0, filename_template=template
            )
        )
        written[split] = (images, labels)
    builder.info.set_splits(splits_lib.SplitDict(infos))
    builder.info.write_to_directory(builder.data_dir)
    return written, builder.data_dir


@pytest.mark.parametrize("name", ["mnist", "cifar10"])
def test_array_record_files_read_pixel_exact_without_mock(tmp_path, name):
    written, version_dir = _prepare_array_record(tmp_path, name, 60, 30)
    data = load_dataset(name, data_dir=tmp_path, calibration_size=10, progress=False)
    (x_pool, y_pool), (x_heldout, y_heldout) = written["train"], written["test"]
    idx = data.indices
    np.testing.assert_array_equal(data.y_train, y_pool[idx["train"]])
    np.testing.assert_array_equal(data.y_calibration, y_pool[idx["calibration"]])
    np.testing.assert_array_equal(data.y_heldout, y_heldout)
    ref_train, ref_heldout, mean, std = _reference_standardise(
        x_pool[idx["train"]], x_heldout, scale=1 / 255, axes=(0, 1, 2)
    )
    np.testing.assert_allclose(data.x_train, ref_train, **F32)
    np.testing.assert_allclose(data.x_heldout, ref_heldout, **F32)
    np.testing.assert_allclose(data.mean, mean, **F32)
    np.testing.assert_allclose(data.std, std, **F32)
    # The decoded arrays are cached next to the files; a cached load is identical.
    for split in ("train", "test"):
        assert os.path.isfile(os.path.join(version_dir, f"{CACHE_PREFIX}-{split}.npz"))
    cached = load_dataset(name, data_dir=tmp_path, calibration_size=10, progress=False)
    uncached = load_dataset(
        name, data_dir=tmp_path, calibration_size=10, progress=False, cache=False
    )
    for other in (cached, uncached):
        assert other.fingerprint == data.fingerprint
        np.testing.assert_array_equal(other.x_train, data.x_train)
        np.testing.assert_array_equal(other.x_heldout, data.x_heldout)


def test_array_record_stale_cache_is_ignored(tmp_path):
    _, version_dir = _prepare_array_record(tmp_path, "mnist", 40, 20)
    first = load_dataset("mnist", data_dir=tmp_path, calibration_size=10, progress=False)
    path = os.path.join(version_dir, f"{CACHE_PREFIX}-train.npz")
    with open(path, "wb") as f:
        np.savez(f, x=np.zeros((3, 28, 28, 1), np.uint8), y=np.zeros(3, np.int64))
    again = load_dataset("mnist", data_dir=tmp_path, calibration_size=10, progress=False)
    assert again.fingerprint == first.fingerprint
    with open(path, "wb") as f:
        f.write(b"not an npz file")
    again = load_dataset("mnist", data_dir=tmp_path, calibration_size=10, progress=False)
    assert again.fingerprint == first.fingerprint


@pytest.mark.parametrize("damage", ["flipped_pixel_byte", "flipped_label_byte", "truncated"])
def test_array_record_corrupted_cache_is_detected_and_recomputed(tmp_path, damage):
    """The decoded-array cache is the one on-disk cache bq_jax.data writes: a damaged entry
    (bit rot in the pixels or labels, a truncated file) is never reused; the split is decoded
    again from the ArrayRecord files and the cache rewritten."""
    _, version_dir = _prepare_array_record(tmp_path, "mnist", 40, 20)
    first = load_dataset("mnist", data_dir=tmp_path, calibration_size=10, progress=False)
    path = os.path.join(version_dir, f"{CACHE_PREFIX}-train.npz")
    with open(path, "rb") as f:
        data = bytearray(f.read())
    if damage == "truncated":
        data = data[: len(data) // 2]
    else:  # x (40 x 28 x 28 bytes) is stored first, y (40 int64) after it
        name = b"x.npy" if damage == "flipped_pixel_byte" else b"y.npy"
        start = data.index(name) + len(name) + 128  # past the local header and .npy header
        data[start + 100] ^= 0x10
    with open(path, "wb") as f:
        f.write(data)
    again = load_dataset("mnist", data_dir=tmp_path, calibration_size=10, progress=False)
    assert again.fingerprint == first.fingerprint
    np.testing.assert_array_equal(again.x_train, first.x_train)
    np.testing.assert_array_equal(again.y_train, first.y_train)
    with np.load(path) as f:  # rewritten, complete
        assert f["x"].shape == (40, 28, 28, 1) and f["y"].shape == (40,)


def test_different_data_changes_fingerprint(tmp_path):
    _prepare_array_record(tmp_path / "a", "mnist", 40, 20, seed=0)
    _prepare_array_record(tmp_path / "b", "mnist", 40, 20, seed=1)
    a = load_dataset("mnist", data_dir=tmp_path / "a", calibration_size=10, progress=False)
    b = load_dataset("mnist", data_dir=tmp_path / "b", calibration_size=10, progress=False)
    np.testing.assert_array_equal(a.indices["calibration"], b.indices["calibration"])
    assert a.fingerprint != b.fingerprint


# ------------------------------------------------------------------------ missing-data errors
@pytest.mark.parametrize("name", sorted(IMAGE_SETS))
def test_missing_data_fails_fast_with_fetch_command(tmp_path, name):
    start = time.perf_counter()
    with pytest.raises(DataUnavailableError) as info:
        load_dataset(name, data_dir=str(tmp_path), progress=False)
    assert time.perf_counter() - start < 10.0
    message = str(info.value)
    assert f"tfds build {name} --data_dir={tmp_path} --file_format=array_record" in message
    assert "not prepared" in message and "TensorFlow" in message
    assert isinstance(info.value, FileNotFoundError)  # callers reporting OSError catch it
    assert info.value.__cause__ is None and info.value.__suppress_context__
    assert os.listdir(tmp_path) == []  # nothing written, nothing downloaded


def test_tfrecord_prepared_data_is_named(tmp_path):
    """A data set prepared in tfds's default tfrecord format cannot be read without TF."""
    from tensorflow_datasets.core import naming
    from tensorflow_datasets.core import splits as splits_lib

    builder = tfds.builder("mnist:3.*.*", data_dir=tmp_path)
    infos = [
        splits_lib.SplitInfo(
            name=split,
            shard_lengths=[5],
            num_bytes=0,
            filename_template=naming.ShardedFileTemplate(
                data_dir=builder.data_dir,
                dataset_name="mnist",
                split=split,
                filetype_suffix="tfrecord",
            ),
        )
        for split in ("train", "test")
    ]
    builder.info.set_splits(splits_lib.SplitDict(infos))
    os.makedirs(builder.data_dir)
    builder.info.write_to_directory(builder.data_dir)
    with pytest.raises(
        DataUnavailableError, match=r"(?s)prepared as tfrecord files.*--file_format"
    ):
        load_dataset("mnist", data_dir=tmp_path, progress=False)


# --------------------------------------------------------------------------------- bad input
def test_unknown_name_lists_known_names():
    with pytest.raises(
        ValueError, match="known data sets: digits, mnist, fashion_mnist, cifar10, mnist5k"
    ):
        load_dataset("imagenet")
    assert DATASETS == ("digits", "mnist", "fashion_mnist", "cifar10", "mnist5k")


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"seed": -1}, ValueError, "seed must be an int >= 0"),
        ({"seed": 1.5}, TypeError, "seed must be an int"),
        ({"split_seed": True}, TypeError, "split_seed must be an int"),
        ({"calibration_size": 0}, ValueError, "calibration_size must be an int >= 1"),
        ({"calibration_size": 1347}, ValueError, "calibration_size=1347 is too large"),
        ({"subset": "huge"}, ValueError, "unknown subset 'huge'"),
        ({"subset": 0}, ValueError, r"subset must be an int >= 1"),
        ({"subset": (1, 2, 3)}, ValueError, "subset must be None"),
        ({"subset": (5, 0)}, ValueError, r"subset\[1\] \(heldout per class\) must be an int >= 1"),
        ({"subset": (100, None), "calibration_size": 400}, ValueError, "outside the subset"),
        ({"data_dir": 123}, TypeError, "data_dir must be a str"),
    ],
)
def test_load_dataset_rejects_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        load_dataset("digits", **kwargs)


def _xy(n=4, d=3):
    return np.zeros((n, d), np.float32), np.arange(n) % 3


@pytest.mark.parametrize(
    "mutate, error, match",
    [
        (lambda x, y: (np.where(np.eye(4, 3, dtype=bool), np.nan, x), y), ValueError, "NaN/inf"),
        (lambda x, y: (x + np.float32(np.inf), y), ValueError, r"12 NaN/inf values in 4 examples"),
        (lambda x, y: (x, y - 1), ValueError, r"labels outside \[0, 3\) \(first: y\[0\] = -1\)"),
        (lambda x, y: (x, y + 1), ValueError, r"1 labels outside \[0, 3\)"),
        (lambda x, y: (x[:3], y), ValueError, "x has 3 examples but y has 4"),
        (lambda x, y: (x[:0], y[:0]), ValueError, "is empty"),
        (lambda x, y: (x, y.reshape(2, 2)), ValueError, "y must be 1-D"),
        (lambda x, y: (x, y.astype(np.float32)), TypeError, "y must have an integer dtype"),
        (lambda x, y: (x.astype(str), y), TypeError, "x must be a real numeric array"),
        (lambda x, y: (x.reshape(4, 3, 1), y), ValueError, r"each example must have shape \(3,\)"),
    ],
)
def test_validate_split_names_split_and_problem(mutate, error, match):
    x, y = mutate(*_xy())
    with pytest.raises(error, match=rf"^split 'calibration'.*{match}"):
        validate_split(x, y, num_classes=3, name="calibration", input_shape=(3,))


def test_validate_split_accepts_good_arrays_and_checks_num_classes():
    x, y = _xy()
    assert validate_split(x, y, num_classes=3, name="train") is None
    assert validate_split(jax.numpy.asarray(x), y, num_classes=3, name="train") is None
    with pytest.raises(TypeError, match="num_classes must be an int"):
        validate_split(x, y, num_classes=3.0, name="train")
    with pytest.raises(ValueError, match="num_classes must be an int >= 1"):
        validate_split(x, y, num_classes=0, name="train")


def _dataset(**overrides):
    x, y = _xy()
    fields = dict(
        name="toy",
        x_train=x,
        y_train=y,
        x_calibration=x,
        y_calibration=y,
        x_heldout=x,
        y_heldout=y,
        num_classes=3,
        input_shape=(3,),
        fingerprint="0123456789abcdef",
    )
    fields.update(overrides)
    return Dataset(**fields)


def test_dataset_validates_its_splits():
    x, y = _xy()
    bad_x = x.copy()
    bad_x[2, 1] = np.nan
    with pytest.raises(
        ValueError, match=r"split 'heldout': x contains 1 NaN/inf values .*example 2"
    ):
        _dataset(x_heldout=bad_x)
    with pytest.raises(ValueError, match=r"split 'train': 1 labels outside \[0, 2\)"):
        _dataset(num_classes=2)
    with pytest.raises(ValueError, match=r"split 'calibration' is empty"):
        _dataset(x_calibration=x[:0], y_calibration=y[:0])
    with pytest.raises(ValueError, match="class_names must have num_classes = 3 entries"):
        _dataset(class_names=("a", "b"))
    with pytest.raises(ValueError, match="fingerprint must be a non-empty str"):
        _dataset(fingerprint="")
    with pytest.raises(ValueError, match="split must be one of"):
        _dataset().split("test")


def test_dataset_is_frozen_and_read_only():
    data = _dataset(y_train=np.array([0, 1, 2, 0], np.int64), x_train=np.ones((4, 3)))
    assert data.x_train.dtype == np.float32 and data.y_train.dtype == np.int32
    assert data.class_names == ("0", "1", "2")
    with pytest.raises(dataclasses.FrozenInstanceError):
        data.name = "other"
    with pytest.raises(ValueError, match="read-only"):
        data.x_train[0, 0] = 1.0
    assert "toy" in repr(data) and "train=4" in repr(data)
    with pytest.raises(ValueError, match="no standardisation statistics"):
        data.standardise(np.zeros((1, 3)))


def test_fingerprint_of_is_stable_and_content_sensitive():
    parts = {"indices": np.arange(3), "name": "digits"}
    assert fingerprint_of(parts) == "8b4e6742fe2f2e92"
    assert fingerprint_of(dict(reversed(list(parts.items())))) == fingerprint_of(parts)
    assert fingerprint_of({**parts, "indices": np.arange(3, dtype=np.int32)}) != (
        fingerprint_of(parts)
    )
    assert fingerprint_of({**parts, "indices": np.array([0, 1, 3])}) != fingerprint_of(parts)
    assert fingerprint_of({**parts, "indices": np.arange(3).reshape(1, 3)}) != (
        fingerprint_of(parts)
    )


# ---------------------------------------------------------------------------------- batching
def test_batches_cover_each_example_once_and_follow_the_key():
    x = np.arange(10, dtype=np.float32)[:, None]
    y = np.arange(10)
    key = jax.random.key(0)
    got = list(batches(x, y, 4, key=key))
    assert [len(b[1]) for b in got] == [4, 4, 2]
    seen = np.concatenate([b[1] for b in got])
    np.testing.assert_array_equal(np.sort(seen), y)
    np.testing.assert_array_equal(seen, np.asarray(jax.random.permutation(key, 10)))
    for xb, yb in got:
        np.testing.assert_array_equal(xb[:, 0], yb.astype(np.float32))
    again = np.concatenate([b[1] for b in batches(x, y, 4, key=key)])
    np.testing.assert_array_equal(again, seen)
    other = np.concatenate([b[1] for b in batches(x, y, 4, key=jax.random.fold_in(key, 1))])
    assert not np.array_equal(other, seen)
    in_order = list(batches(x, y, 4, drop_last=True))
    assert [b[1].tolist() for b in in_order] == [[0, 1, 2, 3], [4, 5, 6, 7]]


def test_batch_helpers_reject_bad_input():
    assert num_batches(10, 4) == 3 and num_batches(10, 4, drop_last=True) == 2
    assert num_batches(0, 4) == 0 and batch_indices(0, 4) == []
    with pytest.raises(ValueError, match="batch_size must be an int >= 1"):
        batches(np.zeros((3, 1)), np.zeros(3), 0)
    with pytest.raises(TypeError, match="batch_size must be an int"):
        num_batches(3, 2.0)
    with pytest.raises(ValueError, match="gives no batch"):
        batches(np.zeros((3, 1)), np.zeros(3), 4, drop_last=True)
    with pytest.raises(ValueError, match="same number of examples"):
        batches(np.zeros((3, 1)), np.zeros(4), 2)


# ------------------------------------------------------- smoke: one epoch on each data set
# Narrow versions of the matching architectures: the test is about data meeting the models.
SMOKE_MODELS = {
    "digits": ("mlp", {"width": 16}),
    "mnist": ("cnn", {"features": (4, 8), "dense": 16}),
    "fashion_mnist": ("cnn", {"features": (4, 8), "dense": 16}),
    "cifar10": ("resnet", {"stage_features": (4, 8)}),
}


@pytest.mark.parametrize("name", list(SMOKE_MODELS))
def test_one_epoch_training_smoke(name):
    """The data feed the real models and trainer: one tiny epoch, finite loss, logits [N, K]."""
    from bq_jax.models import make_model
    from bq_jax.train import TrainConfig, train_with_history

    if name == "digits":
        data = load_dataset(name, subset=(6, 3), calibration_size=20)
    else:
        data = _load_mock(name, num_examples=48, calibration_size=16)
    model_name, hyper = SMOKE_MODELS[name]
    model = make_model(
        model_name, num_classes=data.num_classes, input_shape=data.input_shape, **hyper
    )
    config = TrainConfig(epochs=1, batch_size=16, learning_rate=1e-3, eval_every=0)
    variables, history = train_with_history(model, data, config, jax.random.key(0), progress=False)
    assert history["epoch"] == [1] and history["steps_per_epoch"] == data.sizes["train"] // 16
    assert np.isfinite(history["train_loss"]).all()
    logits = np.asarray(jax.jit(model.apply_fn)(variables, data.x_heldout))
    assert logits.shape == (data.sizes["heldout"], data.num_classes)
    assert np.isfinite(logits).all()
