"""Seeded, deterministic index draws: stratified samples, per-class subsets, standardisation
statistics.

Index draws use numpy's ``Generator`` seeded with ``SeedSequence([seed, stream])``, where the
stream number separates independent draws made from one seed (the calibration draw and the
subset draw never share random numbers). The same seed gives the same indices on every
platform (PCG64 is specified bit for bit).
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "STREAM_CALIBRATION",
    "STREAM_HELDOUT",
    "STREAM_SUBSET_HELDOUT",
    "STREAM_SUBSET_TRAIN",
    "fit_standardisation",
    "per_class_sample",
    "rng_for",
    "stratified_sample",
]

# Stream numbers of the independent draws made from one seed.
STREAM_CALIBRATION = 1
STREAM_SUBSET_TRAIN = 2
STREAM_SUBSET_HELDOUT = 3
# The held-out draw of a data set that has no official test split (mnist5k), from split_seed.
STREAM_HELDOUT = 4
# A feature (digits) or channel (images) whose train std is below this is constant: its scale
# is 1, so it maps to raw - mean (0 on train) instead of dividing by ~0. Raw inputs are
# quantised with a step >= 1/255 after scaling, so any varying feature over N <= 10^6
# examples has std >= step / sqrt(N) >= 3.9e-6, well above the threshold.
MIN_STD = 1e-6
# Examples per chunk when accumulating statistics (bounded float64 temporaries).
_CHUNK = 4096


def rng_for(seed: int, stream: int) -> np.random.Generator:
    """The numpy generator of draw ``stream`` for ``seed`` (independent across streams)."""
    return np.random.default_rng(np.random.SeedSequence([int(seed), int(stream)]))


def stratified_sample(indices, labels, size: int, rng: np.random.Generator) -> np.ndarray:
    """Draws ``size`` of ``indices`` without replacement, keeping class proportions.

    Class ``c`` with ``n_c`` of the ``N`` candidates gets ``floor(size * n_c / N)`` draws; the
    remaining draws go to the classes with the largest fractional parts (ties: lower class
    first), so the quota of each class is within one of ``size * n_c / N``.

    Args:
        indices: int candidate indices ``[N]``.
        labels: labels of the candidates ``[N]``.
        size: number to draw, ``0 <= size <= N``.
        rng: numpy generator (see :func:`rng_for`).

    Returns:
        The drawn indices, sorted ascending, int64.

    Example:
        >>> stratified_sample(np.arange(10), np.array([0] * 5 + [1] * 5), 4, rng_for(0, 1))
        array([1, 4, 6, 8])
    """
    indices = np.asarray(indices, np.int64)
    labels = np.asarray(labels)
    n = indices.shape[0]
    if not 0 <= size <= n:
        raise ValueError(f"cannot draw {size} examples from {n} candidates")
    classes, counts = np.unique(labels, return_counts=True)
    exact = size * counts / n
    quota = np.floor(exact).astype(np.int64)
    remainder = size - int(quota.sum())
    # Largest fractional part first; stable sort keeps the lower class first on ties.
    order = np.argsort(-(exact - quota), kind="stable")
    quota[order[:remainder]] += 1
    chosen = [
        rng.permutation(indices[labels == c])[:q] for c, q in zip(classes, quota, strict=True)
    ]
    return np.sort(np.concatenate(chosen)) if chosen else np.zeros(0, np.int64)


def per_class_sample(
    indices, labels, per_class: int, num_classes: int, rng: np.random.Generator, *, what: str
) -> np.ndarray:
    """Draws exactly ``per_class`` of ``indices`` from every class ``0..num_classes-1``.

    Args:
        indices: int candidate indices ``[N]``.
        labels: labels of the candidates ``[N]``.
        per_class: examples per class (>= 1).
        num_classes: number of classes K; every class must have ``per_class`` candidates.
        rng: numpy generator (see :func:`rng_for`).
        what: description used in the error message (e.g. ``"mnist train"``).

    Returns:
        ``per_class * num_classes`` indices, sorted ascending, int64.

    Raises:
        ValueError: a class has fewer than ``per_class`` candidates.
    """
    indices = np.asarray(indices, np.int64)
    labels = np.asarray(labels)
    chosen = []
    for c in range(num_classes):
        members = indices[labels == c]
        if members.shape[0] < per_class:
            raise ValueError(
                f"subset of {per_class} per class is too large for {what}: class {c} has only "
                f"{members.shape[0]} examples available"
            )
        chosen.append(rng.permutation(members)[:per_class])
    return np.sort(np.concatenate(chosen))


def fit_standardisation(raw, *, input_scale: float, axes: str) -> tuple[np.ndarray, np.ndarray]:
    """Mean and std of ``raw * input_scale`` over the training examples, in float64.

    ``axes="feature"``: one statistic per feature (reduce over examples only; digits).
    ``axes="channel"``: one per channel of NHWC images (reduce over N, H, W). The std is the
    population std (ddof 0), computed in two passes over example chunks; a std below
    :data:`MIN_STD` (a constant feature or channel) is replaced by 1 so it never divides by ~0.

    Args:
        raw: training inputs ``[N, ...]`` in raw units.
        input_scale: multiplier of the raw values.
        axes: ``"feature"`` or ``"channel"``.

    Returns:
        ``(mean, std)`` float64, shaped ``raw.shape[1:]`` (feature) or ``(C,)`` (channel).
    """
    if axes not in ("feature", "channel"):
        raise ValueError(f"axes must be 'feature' or 'channel', got {axes!r}")
    raw = np.asarray(raw)
    n = raw.shape[0]
    reduce = (0,) if axes == "feature" else tuple(range(raw.ndim - 1))
    count = n if axes == "feature" else int(np.prod(raw.shape[:-1]))

    def chunks():
        for i in range(0, n, _CHUNK):
            yield raw[i : i + _CHUNK].astype(np.float64) * input_scale

    total = sum(c.sum(axis=reduce) for c in chunks())
    mean = total / count
    sq = sum(np.square(c - mean).sum(axis=reduce) for c in chunks())
    std = np.sqrt(sq / count)
    std = np.where(std < MIN_STD, 1.0, std)
    return mean, std
