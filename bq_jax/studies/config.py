"""The configuration shared by every study: one frozen, validated dataclass.

Every setting is chosen for a stated reason, never tuned on held-out data; the reasons are in
the field comments and repeated in each run's ``report.md``.
"""

from __future__ import annotations

import dataclasses

__all__ = [
    "DATASETS",
    "STUDIES",
    "MIN_BITS",
    "MAX_BITS",
    "StudyConfig",
    "StudyError",
    "default_config",
]

#: Data sets the studies run on (names of :func:`bq_jax.data.load_dataset`).
DATASETS = ("digits", "mnist", "fashion_mnist", "cifar10")
#: The studies, in the order they run (later ones reuse earlier ones' parts).
STUDIES = ("bits_sweep", "interpolation", "stopping", "rounding", "correlation")
#: Bit widths a study accepts. Below 2 bits a symmetric signed grid has no non-zero positive level.
MIN_BITS = 2
MAX_BITS = 16


def _check_int(name: str, value, low: int, high: int | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < low or (high is not None and value > high):
        accepted = f">= {low}" if high is None else f"in [{low}, {high}]"
        raise ValueError(f"{name} must be {accepted}, got {value}")


def _check_fraction(name: str, value, *, open_low: bool = False) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a float, got {type(value).__name__}")
    if not (0.0 < value <= 1.0 if open_low else 0.0 <= value <= 1.0):
        interval = "(0, 1]" if open_low else "[0, 1]"
        raise ValueError(f"{name} must be in {interval}, got {value}")


@dataclasses.dataclass(frozen=True, kw_only=True)
class StudyConfig:
    """Settings of the boundary-aware quantization studies.

    Example:
        >>> cfg = StudyConfig(dataset="digits", seeds=(0, 1, 2), resolution=256)
        >>> cfg.bits
        (8, 7, 6, 5, 4, 3, 2)
    """

    # Data set name, one of DATASETS.
    dataset: str
    # Training seeds; every study runs once per seed and reports mean and spread.
    seeds: tuple[int, ...] = (0, 1, 2)
    # Side R of every slice grid (R x R points). Boundary Jaccard depends on R, so it is reported.
    resolution: int = 256
    # Narrowest weight bit width of the PTQ-W sweep.
    min_bits: int = 2
    # Widest weight bit width of the PTQ-W sweep (8 bits: the usual deployment width).
    max_bits: int = 8
    # Bit widths of the rounding study: 4 bits (the paper's case) and the 3-bit stress case.
    rounding_bits: tuple[int, ...] = (4, 3)
    # Values of t in [0, 1] (both ends included) per interpolation between adjacent bit widths.
    interpolation_steps: int = 33
    # tau_J of the boundary stopping rule: keep a width while the calibration boundary Jaccard is
    # <= 0.5, i.e. while the float and quantized boundaries share at least as many cells as they
    # disagree on (the majority-overlap point; fixed a priori, not tuned).
    jaccard_threshold: float = 0.5
    # epsilon of the accuracy stopping rule: the customary PTQ acceptance of at most a 1 % drop in
    # accuracy relative to float, measured on the calibration split.
    accuracy_tolerance: float = 0.01
    # Quantile of calibration |margin| that bounds the low-margin boundary band (DESIGN default).
    band_quantile: float = 0.1
    # Optimisation steps per layer of AdaRound and boundary-gap rounding.
    rounding_iters: int = 1000
    # Weight of the boundary-gap penalty added to the AdaRound reconstruction objective.
    boundary_gap_weight: float = 1.0
    # Classifier architecture; None takes bq_jax.train's default for the data set.
    model: str | None = None
    # Small, fast settings (fewer training epochs, smaller sets); for smoke tests and demos.
    quick: bool = False
    # Data subset of bq_jax.data.load_dataset: None (the full data; with quick, "tiny" for the
    # image data sets), a name of bq_jax.data.SUBSETS, or an int k (k training examples per class).
    subset: str | int | None = None
    # Directory of tensorflow-datasets data (mnist, fashion_mnist, cifar10); None: tfds default.
    data_dir: str | None = None
    # Show tqdm progress bars.
    progress: bool = True

    def __post_init__(self):
        if self.dataset not in DATASETS:
            raise ValueError(f"dataset must be one of {', '.join(DATASETS)}; got {self.dataset!r}")
        if not isinstance(self.seeds, tuple) or not self.seeds:
            raise ValueError(f"seeds must be a non-empty tuple of ints, got {self.seeds!r}")
        for s in self.seeds:
            _check_int("seeds[i]", s, 0)
        if len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds must be distinct, got {self.seeds}")
        _check_int("resolution", self.resolution, 8, 4096)
        _check_int("min_bits", self.min_bits, MIN_BITS, MAX_BITS)
        _check_int("max_bits", self.max_bits, MIN_BITS, MAX_BITS)
        if self.max_bits - self.min_bits < 1:
            raise ValueError(
                f"max_bits must exceed min_bits (a sweep needs two widths), got "
                f"min_bits={self.min_bits}, max_bits={self.max_bits}"
            )
        if not isinstance(self.rounding_bits, tuple) or not self.rounding_bits:
            raise ValueError(f"rounding_bits must be a non-empty tuple, got {self.rounding_bits!r}")
        for b in self.rounding_bits:
            _check_int("rounding_bits[i]", b, MIN_BITS, MAX_BITS)
        _check_int("interpolation_steps", self.interpolation_steps, 2, 10_000)
        _check_fraction("jaccard_threshold", self.jaccard_threshold)
        _check_fraction("accuracy_tolerance", self.accuracy_tolerance)
        _check_fraction("band_quantile", self.band_quantile, open_low=True)
        _check_int("rounding_iters", self.rounding_iters, 1)
        if isinstance(self.boundary_gap_weight, bool) or not isinstance(
            self.boundary_gap_weight, (int, float)
        ):
            raise TypeError("boundary_gap_weight must be a float")
        if not self.boundary_gap_weight >= 0.0:
            raise ValueError(f"boundary_gap_weight must be >= 0, got {self.boundary_gap_weight}")
        if self.subset is not None:
            from bq_jax.data import resolve_subset

            resolve_subset(self.subset)  # raises ValueError naming the accepted forms
        if self.model is not None and not isinstance(self.model, str):
            raise TypeError(f"model must be a str or None, got {type(self.model).__name__}")

    @property
    def bits(self) -> tuple[int, ...]:
        """PTQ-W bit widths of the sweep, widest first (the order the stopping rules walk)."""
        return tuple(range(self.max_bits, self.min_bits - 1, -1))

    def fingerprint(self) -> dict:
        """The settings a finished part depends on (a part is reused only if these match).

        Paths and display switches (``data_dir``, ``progress``) are left out so that a result
        does not depend on where the data lives.
        """
        d = dataclasses.asdict(self)
        for k in ("seeds", "data_dir", "progress"):
            d.pop(k)
        d["seeds"] = list(self.seeds)
        d["rounding_bits"] = list(self.rounding_bits)
        return d


def default_config(dataset: str, *, quick: bool = False, **overrides) -> StudyConfig:
    """The configuration ``bq-jax reproduce DATASET`` uses, with ``overrides`` applied.

    ``quick=True`` shrinks the same study for a smoke test: one seed, a 48 x 48 grid,
    9 interpolation steps, 100 rounding steps (and bq_jax.train's quick training).

    Example:
        >>> default_config("digits", quick=True).resolution
        48
    """
    base = {"dataset": dataset, "quick": quick}
    if quick:
        base.update(seeds=(0,), resolution=48, interpolation_steps=9, rounding_iters=100)
    base.update(overrides)
    return StudyConfig(**base)


class StudyError(RuntimeError):
    """A study cannot run (data missing, training failed); the CLI prints it as one line."""
