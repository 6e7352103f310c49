"""The configuration shared by every study: one frozen, validated dataclass.

Every setting is chosen for a stated reason, never tuned on held-out data; the reasons are in
the field comments and repeated in each run's ``report.md``.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

from bq_jax._src.checks import check_choice, check_float, check_fraction, check_int, is_real
from bq_jax.data import DATASETS
from bq_jax.geometry import FAMILY_KINDS
from bq_jax.studies.paper import SETTING_NOTES
from bq_jax.vocabulary import DEFAULT_BAND_QUANTILE

__all__ = [
    "DATASETS",
    "PAPER_STUDIES",
    "MIN_BITS",
    "MAX_BITS",
    "STOPPING_BOUNDS",
    "BaseConfig",
    "FamilyConfig",
    "StudyConfig",
    "StudyError",
    "default_config",
    "make_config",
]

#: The paper's studies, in the order they run (later ones reuse earlier ones' parts).
PAPER_STUDIES = ("bits_sweep", "interpolation", "stopping", "rounding", "correlation")
#: Bit widths a study accepts. Below 2 bits a symmetric signed grid has no non-zero positive level.
MIN_BITS = 2
MAX_BITS = 16
#: Values of ``stopping_bound``: which end of a calibration estimate the stopping rules use.
STOPPING_BOUNDS = ("mean", "upper")


def check_seeds(seeds) -> None:
    """``seeds`` must be a non-empty tuple of distinct ints >= 0."""
    if not isinstance(seeds, tuple) or not seeds:
        raise ValueError(f"seeds must be a non-empty tuple of ints, got {seeds!r}")
    for s in seeds:
        check_int("seeds[i]", s, 0)
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds must be distinct, got {seeds}")


def check_bits_tuple(name: str, bits) -> None:
    """``bits`` must be a non-empty tuple of widths in [MIN_BITS, MAX_BITS]."""
    if not isinstance(bits, tuple) or not bits:
        raise ValueError(f"{name} must be a non-empty tuple of bit widths, got {bits!r}")
    for b in bits:
        check_int(f"{name}[i]", b, MIN_BITS, MAX_BITS)


@dataclasses.dataclass(frozen=True, kw_only=True)
class BaseConfig:
    """Settings every study shares: which classifier (data set, architecture, seeds) and how
    its geometry is measured (slice resolution, boundary band). Study configs subclass it.

    Field help lives in :data:`bq_jax.vocabulary.HYPERPARAMETERS` (the CLI derives its flags
    from the fields and that table).
    """

    # Data set name, one of DATASETS.
    dataset: str = "digits"
    # Training seeds; every study runs once per seed and reports mean and spread.
    seeds: tuple[int, ...] = (0, 1, 2)
    # Classifier architecture; None takes bq_jax.train's default for the data set.
    model: str | None = None
    # Side R of every slice grid (R x R points). Boundary Jaccard depends on R, so it is reported.
    resolution: int = 256
    # Quantile of calibration |margin| that bounds the low-margin boundary band (DESIGN default).
    band_quantile: float = DEFAULT_BAND_QUANTILE
    # Small, fast settings (fewer training epochs, smaller sets); for smoke tests and demos.
    quick: bool = False
    # Data subset of bq_jax.data.load_dataset: None (the full data; with quick, "tiny" for the
    # image data sets), a name of bq_jax.data.SUBSETS, or an int k (k training examples per class).
    subset: str | int | None = None
    # Directory of tensorflow-datasets data (mnist, fashion_mnist, cifar10); None: tfds default.
    # digits and mnist5k are bundled with their packages and ignore it.
    data_dir: str | None = None
    # Show tqdm progress bars.
    progress: bool = True

    #: Overrides that ``quick=True`` applies (a subclass sets its own; see :func:`make_config`).
    QUICK: ClassVar[dict] = {"seeds": (0,)}
    #: Data set name -> defaults of that data set, applied by :func:`make_config` before the
    #: quick preset and the caller's overrides (a subclass sets its own).
    DATASET_DEFAULTS: ClassVar[dict] = {}

    def __post_init__(self):
        if self.dataset not in DATASETS:
            raise ValueError(f"dataset must be one of {', '.join(DATASETS)}; got {self.dataset!r}")
        check_seeds(self.seeds)
        check_int("resolution", self.resolution, 8, 4096)
        check_fraction("band_quantile", self.band_quantile, open_low=True)
        if not isinstance(self.quick, bool):
            raise TypeError(f"quick must be a bool, got {type(self.quick).__name__}")
        if self.subset is not None:
            from bq_jax.data import resolve_subset

            resolve_subset(self.subset)  # raises ValueError naming the accepted forms
        if self.model is not None and not isinstance(self.model, str):
            raise TypeError(f"model must be a str or None, got {type(self.model).__name__}")

    def fingerprint(self) -> dict:
        """The settings a finished part depends on (a part is reused only if these match).

        Paths and display switches (``data_dir``, ``progress``) are left out so that a result
        does not depend on where the data lives; tuples become lists (JSON). ``config_type``
        names the config class.
        """
        d = {"config_type": type(self).__name__}
        for f in dataclasses.fields(self):
            if f.name in ("data_dir", "progress"):
                continue
            v = getattr(self, f.name)
            d[f.name] = _jsonable(v)
        return d

    def reasons(self) -> list[str]:
        """Why each setting has its value (report.md's "Settings and why"); none by default."""
        return []


def _jsonable(v):
    if isinstance(v, tuple):
        return [_jsonable(x) for x in v]
    return v


@dataclasses.dataclass(frozen=True, kw_only=True)
class FamilyConfig(BaseConfig):
    """Settings of the studies that measure slice metrics on slice families and report every
    number as an estimate (:mod:`bq_jax.stats`): the family drawn per split
    (:func:`bq_jax.geometry.slice_family`) and the intervals. One definition, so the studies'
    configs cannot drift apart; a study config overrides a default (with its reason) by
    redeclaring the field.

    Example:
        >>> cfg = FamilyConfig(slice_count=4)
        >>> cfg.slice_family, cfg.slice_count, cfg.confidence_level
        ('triplet', 4, 0.95)
    """

    # Kind of the calibration and held-out slice families: planes through three random inputs of
    # the split (the "plane through three images" of decision-boundary studies). Each plane is an
    # independent draw anchored on real inputs, where a boundary move can change a prediction; a
    # PCA plane is one plane per split, and a random plane through the mean passes far from most
    # inputs in 64+ dimensions.
    slice_family: str = "triplet"
    # Planes K per family: the resampling unit of every slice-metric interval. 16 planes bring
    # the standard error of a mean to a quarter of one plane's spread.
    slice_count: int = 16
    # Side R of every family plane's grid. 128: a triplet plane spans three inputs, not the whole
    # data cloud, so 128 cells per axis resolve its boundaries as finely as 256 do the PCA plane.
    family_resolution: int = 128
    # Bootstrap resamples of every percentile interval (interval ends settle by ~2000).
    bootstrap_resamples: int = 2000
    # Confidence level of every interval.
    confidence_level: float = 0.95

    def __post_init__(self):
        super().__post_init__()
        check_choice("slice_family", self.slice_family, FAMILY_KINDS)
        check_int("slice_count", self.slice_count, 1, 1024)
        check_int("family_resolution", self.family_resolution, 8, 4096)
        check_int("bootstrap_resamples", self.bootstrap_resamples, 100, 1_000_000)
        check_float(
            "confidence_level",
            self.confidence_level,
            low=0.0,
            high=1.0,
            open_low=True,
            open_high=True,
        )


@dataclasses.dataclass(frozen=True, kw_only=True)
class StudyConfig(FamilyConfig):
    """Settings of the boundary-aware quantization paper's five studies.

    Example:
        >>> cfg = StudyConfig(dataset="digits", seeds=(0, 1, 2), resolution=256)
        >>> cfg.bits
        (8, 7, 6, 5, 4, 3, 2)
    """

    # Narrowest weight bit width of the PTQ-W sweep.
    min_bits: int = 2
    # Widest weight bit width of the PTQ-W sweep (8 bits: the usual deployment width).
    max_bits: int = 8
    # Bit widths of the rounding study: 4 bits (the paper's case) and the 3-bit stress case.
    rounding_bits: tuple[int, ...] = (4, 3)
    # Values of t in [0, 1] (both ends included) per interpolation between adjacent bit widths.
    interpolation_steps: int = 33
    # tau_J of the boundary stopping rule: keep a width while the calibration boundary Jaccard
    # distance is <= 0.5, i.e. while the float and quantized boundaries share at least as many
    # cells as they disagree on (the majority-overlap point; fixed a priori, not tuned).
    jaccard_threshold: float = 0.5
    # epsilon of the accuracy stopping rule: the customary PTQ acceptance of at most a 1 % drop in
    # accuracy relative to float, measured on the calibration split.
    accuracy_tolerance: float = 0.01
    # Optimisation steps per layer of AdaRound and boundary-gap rounding.
    rounding_iters: int = 1000
    # Weight of the boundary-gap penalty added to the AdaRound reconstruction objective.
    boundary_gap_weight: float = 1.0
    # Pairs of held-out inputs whose segments the bit sweep counts label changes along (100: the
    # fraction of pairs whose count changed is read in whole percent; the cost is 100 x 64 inputs
    # per width, small next to the slice grid).
    segment_pairs: int = 100
    # The stopping rules compare the upper confidence bound of each calibration estimate with
    # their threshold: a width is kept only while the calibration data support it being within
    # the threshold; the mean would keep widths that are as likely as not beyond it.
    stopping_bound: str = "upper"

    QUICK: ClassVar[dict] = {
        "seeds": (0,),
        "resolution": 48,
        "interpolation_steps": 9,
        "rounding_iters": 100,
        "slice_count": 4,
        "family_resolution": 32,
        "bootstrap_resamples": 500,
    }
    # mnist5k: the CNN costs ~100 us of CPU per grid point against the digits MLP's few, so a
    # 256 x 256 grid with 33 interpolation values (7 x 33 x 65536 = 15M CNN evaluations per seed
    # for the interpolation alone) would take hours on 2 CPU cores. 128 x 128 (a quarter of the
    # points; every boundary Jaccard distance is reported with its resolution) and 9 values of t
    # per transition (t steps of 1/8, the quick preset's value) bring the 3-seed reproduction to
    # minutes. Chosen for run time before any mnist5k result was seen. For the same reason the
    # slice-family planes are 64 x 64 (16 planes x 2 splits x ~14 variants at 128 x 128 would be
    # ~7M CNN evaluations per seed) and the learned rounding takes 250 steps per layer instead of
    # 1000 (the boundary-gap objective runs the whole CNN on band and grid points at every step;
    # at 1000 steps one seed's rounding study alone took over half an hour on 2 cores).
    DATASET_DEFAULTS: ClassVar[dict] = {
        "mnist5k": {
            "resolution": 128,
            "interpolation_steps": 9,
            "family_resolution": 64,
            "rounding_iters": 250,
        }
    }

    def __post_init__(self):
        super().__post_init__()
        check_int("min_bits", self.min_bits, MIN_BITS, MAX_BITS)
        check_int("max_bits", self.max_bits, MIN_BITS, MAX_BITS)
        if self.max_bits - self.min_bits < 1:
            raise ValueError(
                f"max_bits must exceed min_bits (a sweep needs two widths), got "
                f"min_bits={self.min_bits}, max_bits={self.max_bits}"
            )
        check_bits_tuple("rounding_bits", self.rounding_bits)
        check_int("interpolation_steps", self.interpolation_steps, 2, 10_000)
        check_fraction("jaccard_threshold", self.jaccard_threshold)
        check_fraction("accuracy_tolerance", self.accuracy_tolerance)
        check_int("rounding_iters", self.rounding_iters, 1)
        check_int("segment_pairs", self.segment_pairs, 1, 1_000_000)
        if not is_real(self.boundary_gap_weight):
            raise TypeError("boundary_gap_weight must be a float")
        if not self.boundary_gap_weight >= 0.0:
            raise ValueError(f"boundary_gap_weight must be >= 0, got {self.boundary_gap_weight}")
        check_choice("stopping_bound", self.stopping_bound, STOPPING_BOUNDS)
        if self.stopping_bound == "upper" and self.slice_count < 2:
            raise ValueError(
                "stopping_bound='upper' needs slice_count >= 2 (one plane has no confidence "
                f"interval), got slice_count={self.slice_count}; pass stopping_bound='mean'"
            )

    @property
    def bits(self) -> tuple[int, ...]:
        """PTQ-W bit widths of the sweep, widest first (the order the stopping rules walk)."""
        return tuple(range(self.max_bits, self.min_bits - 1, -1))

    def reasons(self) -> list[str]:
        return [
            "Weights: signed symmetric, per output channel, min-max scale, round half to even "
            "(the white paper's recommended weight quantizer: no zero-point cross term in the "
            "integer matmul, and per-channel scales absorb the spread of ranges across output "
            "channels that would otherwise leave small channels with a few levels at <= 4 bits). "
            "Activations, biases and batch-norm statistics stay float (PTQ-W).",
            f"Slices: PCA planes through the data mean, {self.resolution}x{self.resolution} "
            "grids over the projected data range (boundary Jaccard depends on the resolution: a "
            "finer grid resolves smaller boundary moves).",
            f"Slice families: {self.slice_count} {self.slice_family!r} planes of the calibration "
            f"inputs and {self.slice_count} of the held-out inputs (disjoint data, disjoint "
            f"planes), {self.family_resolution}x{self.family_resolution} grids; a slice metric "
            "is the mean over a family's planes with its standard error and a "
            f"{self.confidence_level:g} percentile bootstrap interval over the planes "
            f"({self.bootstrap_resamples} resamples; pooled over seeds, planes resampled within "
            "each seed). Rates over examples carry Wilson intervals.",
            f"Stopping rules compare the {self.stopping_bound} of each calibration estimate "
            "with their threshold"
            + (
                ": a width is kept only while the calibration data support it being within the "
                "threshold (chosen before any run, not on held-out numbers)."
                if self.stopping_bound == "upper"
                else "."
            ),
            f"tau_J = {self.jaccard_threshold:g}: the quantized and float boundaries share at "
            "least as many cells as they disagree on (the majority-overlap point); fixed before "
            "any run, never tuned on held-out data.",
            f"epsilon = {self.accuracy_tolerance:g}: the customary PTQ acceptance of at most a "
            "1 % accuracy drop relative to float, measured on calibration data.",
            f"Boundary band: held-out points with |float margin| below the "
            f"{self.band_quantile:g} quantile of calibration margins (the design default).",
            f"Interpolation: {self.interpolation_steps} values of t per transition.",
            f"Rounding: {self.rounding_iters} optimisation steps per layer, boundary-gap "
            f"weight {self.boundary_gap_weight:g}.",
            "Seeds change the training initialisation and data order; the data split, slices and "
            "quantizers are deterministic given the trained weights.",
            *([SETTING_NOTES[self.dataset]] if self.dataset in SETTING_NOTES else []),
        ]


def make_config(config_type: type[BaseConfig], *, quick: bool = False, **overrides):
    """A ``config_type`` with its data set's defaults (``config_type.DATASET_DEFAULTS``), then
    its quick preset (``config_type.QUICK``) when ``quick``, then ``overrides`` applied.

    Example:
        >>> make_config(StudyConfig, quick=True, dataset="digits").resolution
        48
    """
    fields = {"quick": quick}
    fields.update(config_type.DATASET_DEFAULTS.get(overrides.get("dataset"), {}))
    if quick:
        fields.update(config_type.QUICK)
    fields.update(overrides)
    return config_type(**fields)


def default_config(dataset: str, *, quick: bool = False, **overrides) -> StudyConfig:
    """The configuration ``bq-jax reproduce DATASET`` uses, with ``overrides`` applied.

    ``quick=True`` shrinks the same study for a smoke test: one seed, a 48 x 48 grid,
    9 interpolation steps, 100 rounding steps (and bq_jax.train's quick training).

    Example:
        >>> default_config("digits", quick=True).resolution
        48
    """
    return make_config(StudyConfig, quick=quick, dataset=dataset, **overrides)


class StudyError(RuntimeError):
    """A study cannot run (data missing, training failed); the CLI prints it as one line."""
