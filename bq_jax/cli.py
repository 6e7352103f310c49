"""The ``bq-jax`` command: reproduce the boundary-aware quantization studies.

Commands (``bq-jax COMMAND --help`` explains each one):

* ``bq-jax reproduce DATASET``      every study; writes results.json, report.md and figures.
* ``bq-jax bits-sweep DATASET``     PTQ-W bit sweep (accuracy and decision-geometry metrics).
* ``bq-jax interpolation DATASET``  scale interpolation between adjacent bit widths.
* ``bq-jax stopping DATASET``       accuracy vs boundary stopping rule, judged on held-out data.
* ``bq-jax rounding DATASET``       nearest vs AdaRound vs boundary-gap rounding at fixed bits.
* ``bq-jax correlation DATASET``    calibration vs held-out boundary Jaccard across variants.
* ``bq-jax train DATASET``          train (or load the cached) float classifiers only.
* ``bq-jax basin DATASET``          PTQ vs QAT at low bits: the QAT basin study (bq_jax.qat).

Every study command is resumable: each finished (study, seed) part is written atomically to
``OUT/parts/<study>_seed<k>.json`` and a re-run with the same settings skips it. Ctrl-C keeps
the finished parts and exits with status 130. Bad arguments print one line on stderr and exit
with status 2; a failure to load data or train exits with status 1.

Example:
    bq-jax reproduce digits --out results/digits          # about 5 minutes on 2 CPU cores
    bq-jax reproduce digits --quick --out /tmp/bq-quick    # under a minute
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile

__all__ = ["main", "build_parser"]

_PROG = "bq-jax"
# Exit statuses.
EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130

# Kept in step with bq_jax.studies.config (imported lazily so that `--help` stays fast).
_DATASETS = ("digits", "mnist", "fashion_mnist", "cifar10")
_MIN_BITS, _MAX_BITS = 2, 16

_STUDY_COMMANDS = {
    "bits-sweep": "bits_sweep",
    "interpolation": "interpolation",
    "stopping": "stopping",
    "rounding": "rounding",
    "correlation": "correlation",
}


class UsageError(Exception):
    """A bad command-line argument; reported as one line with exit status 2."""


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line on stderr (no usage dump) and exit 2."""

    def error(self, message):
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


class _Formatter(argparse.RawDescriptionHelpFormatter):
    """Raw descriptions; appends "(default: X)" where a default is worth showing."""

    def _get_help_string(self, action):
        text = action.help or ""
        if (
            "default" not in text
            and action.default is not None
            and action.default is not False
            and action.default is not argparse.SUPPRESS
            and action.option_strings
        ):
            default = action.default
            if isinstance(default, tuple):
                default = ",".join(str(v) for v in default)
            text += f" (default: {default})"
        return text


def _bits(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = None
    if value is None or not _MIN_BITS <= value <= _MAX_BITS:
        raise argparse.ArgumentTypeError(
            f"must be an integer bit width in [{_MIN_BITS}, {_MAX_BITS}], got {text!r}"
        )
    return value


def _bits_list(text: str) -> tuple[int, ...]:
    parts = [p for p in text.split(",") if p.strip()]
    if not parts:
        raise argparse.ArgumentTypeError(
            f"must be a comma-separated list of bit widths, got {text!r}"
        )
    return tuple(_bits(p.strip()) for p in parts)


def _int_at_least(low: int, what: str):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < low:
            raise argparse.ArgumentTypeError(f"must be {what} (an integer >= {low}), got {text!r}")
        return value

    return parse


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = None
    if value is None or not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be a number in [0, 1], got {text!r}")
    return value


def _non_negative(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = None
    if value is None or not value >= 0.0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text!r}")
    return value


def _subset(text: str):
    from bq_jax.data import SUBSETS

    text = text.strip()
    if text in SUBSETS:
        return text
    try:
        k = int(text)
    except ValueError:
        k = 0
    if k < 1:
        raise argparse.ArgumentTypeError(
            f"unknown subset {text!r}; choose one of {', '.join(SUBSETS)} or a positive int "
            "(training examples per class)"
        )
    return k


def _dataset(text: str) -> str:
    name = text.strip().lower().replace("-", "_")
    if name not in _DATASETS:
        raise argparse.ArgumentTypeError(
            f"unknown data set {text!r}; choose one of {', '.join(_DATASETS)}"
        )
    return name


def _add_classifier_source(p: argparse.ArgumentParser) -> None:
    """``--data-dir`` and ``--model``: where the data comes from and which classifier is trained."""
    p.add_argument(
        "--data-dir",
        metavar="DIR",
        default=None,
        help="tensorflow-datasets data directory for mnist, fashion_mnist and cifar10",
    )
    p.add_argument(
        "--model",
        default=None,
        help="classifier architecture (mlp, cnn, resnet); default: bq_jax.train's choice for "
        "the data set",
    )


def _add_common(p: argparse.ArgumentParser, *, study: bool = True) -> None:
    p.add_argument(
        "dataset", type=_dataset, metavar="DATASET", help=f"one of {', '.join(_DATASETS)}"
    )
    p.add_argument(
        "--out",
        metavar="DIR",
        default=None,
        help="output directory (default: results/DATASET, or results/DATASET-quick with --quick)",
    )
    p.add_argument(
        "--seed",
        type=_int_at_least(0, "a seed"),
        default=0,
        help="first training seed; the seeds used are SEED, SEED+1, ..., SEED+SEEDS-1",
    )
    p.add_argument(
        "--seeds",
        type=_int_at_least(1, "a number of seeds"),
        default=None,
        help="number of training seeds (default: 3, or 1 with --quick); results report their mean "
        "and standard deviation",
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="small, fast settings (1 seed, 48x48 grid, quick training) for a smoke test",
    )
    _add_classifier_source(p)
    p.add_argument(
        "--subset",
        type=_subset,
        default=None,
        help="train on a per-class subset: 'tiny' (100 per class), 'small' (500 per class) or "
        "an int K (K per class); default: the full data ('tiny' for image sets with --quick)",
    )
    p.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    if not study:
        return
    p.add_argument(
        "--resolution",
        type=_int_at_least(8, "a grid side"),
        default=None,
        help="side R of the R x R slice grid (default: 256, or 48 with --quick)",
    )
    p.add_argument(
        "--min-bits", type=_bits, help="narrowest weight bit width of the PTQ-W sweep (default: 2)"
    )
    p.add_argument(
        "--max-bits", type=_bits, help="widest weight bit width of the PTQ-W sweep (default: 8)"
    )


def _add_interpolation(p):
    p.add_argument(
        "--steps",
        dest="interpolation_steps",
        type=_int_at_least(2, "a number of t values"),
        default=None,
        help="values of t in [0, 1] per transition b -> b-1 (default: 33, or 9 with --quick)",
    )


def _add_stopping(p):
    p.add_argument(
        "--jaccard-threshold",
        type=_fraction,
        help="tau_J of the boundary rule: walking down from --max-bits, the last width whose "
        "calibration boundary Jaccard is <= tau_J is kept (default: 0.5)",
    )
    p.add_argument(
        "--accuracy-tolerance",
        type=_fraction,
        help="epsilon of the accuracy rule: walking down from --max-bits, the last width whose "
        "calibration accuracy drop is <= epsilon is kept (default: 0.01)",
    )


def _add_rounding(p):
    p.add_argument(
        "--rounding-bits",
        type=_bits_list,
        help="comma-separated bit widths of the rounding study (default: 4,3)",
    )
    p.add_argument(
        "--rounding-iters",
        type=_int_at_least(1, "a number of steps"),
        default=None,
        help="optimisation steps per layer of AdaRound and boundary-gap rounding "
        "(default: 1000, or 100 with --quick)",
    )
    p.add_argument(
        "--boundary-gap-weight",
        type=_non_negative,
        help="weight of the boundary-gap penalty in the rounding objective (default: 1.0)",
    )


_TOP_DESCRIPTION = """\
Boundary-aware quantization studies: quantize a trained classifier's weights and
measure how its decision boundaries move (boundary Jaccard, flips, junctions, ...).

Every study command is resumable: each finished (study, seed) part is written
atomically to OUT/parts/<study>_seed<k>.json and a re-run with the same settings
skips it. Ctrl-C keeps the finished parts and exits with status 130. Bad arguments
print one line on stderr and exit with status 2; a failure to load data or to
train exits with status 1. Trained classifiers are kept in OUT/checkpoints and
compiled XLA programs in $BQ_JAX_CACHE/xla (default ~/.cache/bq_jax/xla), so a
second run starts faster. `bq-jax COMMAND --help` explains each command."""

_TOP_EPILOG = """\
examples:
  bq-jax reproduce digits --out results/digits          # full study, 3 seeds
  bq-jax reproduce digits --quick --out /tmp/bq-quick   # smoke test, under a minute
  bq-jax stopping mnist --data-dir ~/tensorflow_datasets --jaccard-threshold 0.3"""

_DESCRIPTIONS = {
    "reproduce": """\
Run every study of the boundary-aware quantization paper on DATASET:
the PTQ-W bit sweep, the interpolation between adjacent bit widths, the
calibration-to-test stopping rules, the rounding comparison and the
calibration/held-out correlation, over SEEDS training seeds. Writes
OUT/results.json (documented in `python -c "import bq_jax.studies; help(bq_jax.studies)"`),
OUT/report.md (our numbers beside the paper's) and OUT/figures/*.png.
Finished parts are kept in OUT/parts; re-running resumes.""",
    "bits-sweep": """\
PTQ-W bit sweep: quantize the weights (per-channel symmetric, min-max range,
round to nearest) at every width from --max-bits down to --min-bits and measure
accuracy, held-out flip rate and the decision-geometry metrics (boundary Jaccard,
grid change, triple junctions, boundary-band flips, pair-order flips, median
local shift, normal variation) on the PCA slice of the training inputs.""",
    "interpolation": """\
Interpolate the quantization scale from the b-bit to the (b-1)-bit quantizer
(t from 0 to 1 in --steps values) for every adjacent pair of widths, record
where the slice labels change and how many changed cells lie at or next to a
multiclass (triple) junction, with the enrichment over chance.""",
    "stopping": """\
Calibration-to-test stopping: walk bit widths downward; the accuracy rule keeps
the lowest width whose calibration accuracy drop is <= epsilon, the boundary rule
the lowest width whose calibration boundary Jaccard (on the PCA slice of the
calibration inputs) is <= tau_J. Both choices are judged on held-out data
(flip rate, and boundary Jaccard on the PCA slice of the held-out inputs).""",
    "rounding": """\
Rounding at fixed bit widths: round to nearest, AdaRound, and AdaRound with the
boundary-gap penalty; reports accuracy, boundary Jaccard and boundary-band
pair-order flips.""",
    "correlation": """\
Correlation of calibration boundary Jaccard with held-out boundary Jaccard across
all PTQ-W widths and optimised rounding variants (Pearson r per seed). Runs the
stopping and rounding studies first if their parts are missing.""",
    "train": """\
Train the float classifiers for the requested seeds (or load them from the
checkpoint cache in OUT/checkpoints) and print their held-out accuracy.""",
}


def build_parser() -> argparse.ArgumentParser:
    """The ``bq-jax`` argument parser (one sub-parser per command)."""
    parser = _Parser(
        prog=_PROG,
        description=_TOP_DESCRIPTION,
        epilog=_TOP_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    summaries = {
        "reproduce": "run every study on a data set (results.json, report.md, figures)",
        "bits-sweep": "PTQ-W bit sweep: accuracy and decision-geometry metrics per bit width",
        "interpolation": "scale interpolation between adjacent bit widths; junction enrichment",
        "stopping": "accuracy vs boundary stopping rule, judged on held-out data",
        "rounding": "nearest vs AdaRound vs boundary-gap rounding at fixed bit widths",
        "correlation": "calibration vs held-out boundary Jaccard across quantized variants",
        "train": "train (or load cached) float classifiers",
    }
    for name, summary in summaries.items():
        p = sub.add_parser(
            name, help=summary, description=_DESCRIPTIONS[name], formatter_class=_Formatter
        )
        _add_common(p, study=name != "train")
        if name in ("reproduce", "interpolation"):
            _add_interpolation(p)
        if name in ("reproduce", "stopping"):
            _add_stopping(p)
        if name in ("reproduce", "rounding", "correlation"):
            _add_rounding(p)
        if name == "correlation":
            _add_stopping(p)
    _add_basin_command(sub)
    return parser


def _out_dir(args) -> str:
    out = args.out
    try:
        os.makedirs(out, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=out, prefix=".write-test-")
        os.close(fd)
        os.remove(probe)
    except OSError as e:
        raise UsageError(f"cannot write to --out {out!r}: {e.strerror or e}") from None
    args.out = out
    return out


def _config(args):
    from bq_jax.studies.config import default_config

    overrides = {
        "progress": not args.no_progress,
        "data_dir": args.data_dir,
        "model": args.model,
        "subset": args.subset,
    }
    if args.seeds is not None or args.seed != 0:
        n = args.seeds if args.seeds is not None else (1 if args.quick else 3)
        overrides["seeds"] = tuple(range(args.seed, args.seed + n))
    for name in (
        "resolution",
        "min_bits",
        "max_bits",
        "interpolation_steps",
        "jaccard_threshold",
        "accuracy_tolerance",
        "rounding_bits",
        "rounding_iters",
        "boundary_gap_weight",
    ):
        value = getattr(args, name, None)
        if value is not None:
            overrides[name] = value
    try:
        return default_config(args.dataset, quick=args.quick, **overrides)
    except (ValueError, TypeError) as e:
        raise UsageError(str(e)) from None


def _enable_compilation_cache() -> None:
    """Keep compiled XLA programs on disk so that later runs skip most compile time.

    Uses ``$JAX_COMPILATION_CACHE_DIR`` / an already configured directory if there is one,
    else ``<bq_jax cache>/xla`` (``$BQ_JAX_CACHE``, default ``~/.cache/bq_jax``). Compiled
    programs are keyed by their HLO, so results do not depend on the cache.
    """
    import jax

    if jax.config.jax_compilation_cache_dir:
        return
    from bq_jax.train import default_cache_dir

    path = os.path.join(default_cache_dir(), "xla")
    try:
        os.makedirs(path, exist_ok=True)
    except OSError:
        return  # an unwritable cache only costs compile time
    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)


def _run(args) -> int:
    config = _config(args)
    out = _out_dir(args)
    _enable_compilation_cache()
    from bq_jax.studies import runner

    if args.command == "train":
        for line in runner.train_only(config, out):
            print(line)
        return EXIT_OK
    studies = None if args.command == "reproduce" else (_STUDY_COMMANDS[args.command],)
    summary = runner.run(config, out, studies=studies)
    print(summary.describe())
    return EXIT_OK


# ----------------------------------------------------------------------------- bq-jax basin
# The "PTQ leaves the basin, QAT returns" study (bq_jax.qat.basin): its parser and runner.

_BASIN_DESCRIPTION = """\
The "PTQ leaves the basin, QAT returns" study on DATASET (default settings: the
digits MLP at 2, 3 and 4 bits): PTQ (round to nearest, AdaRound), STE-QAT, LSQ-QAT
and the ablation that takes gradients at the float weights. Measures the training
loss along the line from the float weights to each solution (t in [0, 1.5]), the
excess loss, the displacement along the top Hessian eigen-directions (Lanczos),
the cosine between the QAT gradient and the way back to the basin along each
trajectory, the boundary metrics and held-out accuracy. Writes OUT/results.json
(keys documented in `python -c "import bq_jax.qat.basin as b; help(b)"`),
OUT/report.md and OUT/figures/*.png."""


def _add_basin_command(sub) -> None:
    p = sub.add_parser(
        "basin",
        help="PTQ vs QAT at low bits: loss landscape, Hessian, trajectories (qat basin study)",
        description=_BASIN_DESCRIPTION,
        formatter_class=_Formatter,
    )
    p.add_argument(
        "dataset", type=_dataset, metavar="DATASET", help=f"one of {', '.join(_DATASETS)}"
    )
    p.add_argument(
        "--out",
        metavar="DIR",
        default=None,
        help="output directory (default: results/qat_basin, results/qat_basin-DATASET for "
        "other data sets; '-quick' appended with --quick)",
    )
    p.add_argument(
        "--seed",
        type=_int_at_least(0, "a seed"),
        default=0,
        help="seed of the float classifier, QAT, AdaRound and Lanczos",
    )
    p.add_argument(
        "--quick", action="store_true", help="small, fast settings (2 bits, 2 QAT epochs)"
    )
    p.add_argument("--bits", type=_bits_list, help="comma-separated bit widths (default: 2,3,4)")
    p.add_argument(
        "--qat-epochs",
        type=_int_at_least(1, "a number of epochs"),
        help="QAT epochs of each QAT method (default: 30, or 2 with --quick)",
    )
    p.add_argument(
        "--adaround-iterations",
        type=_int_at_least(1, "a number of steps"),
        help="AdaRound steps per layer (default: 2000, or 40 with --quick)",
    )
    p.add_argument(
        "--range-method",
        choices=("minmax", "percentile", "mse", "octav", "gaussian"),
        help="weight range method of every solution (default: minmax)",
    )
    p.add_argument(
        "--resolution",
        type=_int_at_least(8, "a grid side"),
        help="side R of the R x R slice grid of the boundary metrics (default: 128, or 24 "
        "with --quick)",
    )
    _add_classifier_source(p)
    p.add_argument("--no-progress", action="store_true", help="hide the progress bars")


def _run_basin(args) -> int:
    """``bq-jax basin``: one-line errors (2: bad settings, 1: data / training failure)."""
    if args.out is None:
        args.out = "results/qat_basin" + ("" if args.dataset == "digits" else f"-{args.dataset}")
        args.out += "-quick" if args.quick else ""
    prefix = f"{_PROG} basin: error:"
    from bq_jax.qat.basin import basin_config, run_basin_study

    overrides = {"dataset": args.dataset, "seed": args.seed, "data_dir": args.data_dir}
    names = ("model", "bits", "qat_epochs", "adaround_iterations", "resolution", "range_method")
    for name in names:
        value = getattr(args, name)
        if value is not None:
            overrides[name] = value
    try:
        config = basin_config(quick=args.quick, **overrides)
        out = _out_dir(args)
    except (ValueError, UsageError) as e:
        print(f"{prefix} {e}", file=sys.stderr)
        return EXIT_USAGE
    _enable_compilation_cache()
    try:
        res = run_basin_study(config, out_dir=out, progress=not args.no_progress)
    except KeyboardInterrupt:
        print(f"{_PROG} basin: interrupted; nothing written to {out}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except (FileNotFoundError, OSError, ValueError) as e:
        print(f"{prefix} {str(e).splitlines()[0] if str(e) else type(e).__name__}", file=sys.stderr)
        return EXIT_FAILED
    for f in res["findings"]:
        print(f"[{'holds' if f['holds'] else 'does not hold'}] {f['finding']}: {f['evidence']}")
    print(f"wrote {os.path.join(out, 'results.json')} and {os.path.join(out, 'report.md')}")
    return EXIT_OK


# ----------------------------------------------------------------------------- end bq-jax basin


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``bq-jax``; returns the exit status (0 ok, 1 failed, 2 usage, 130 Ctrl-C)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "basin":
        return _run_basin(args)
    if args.out is None:
        args.out = os.path.join("results", args.dataset + ("-quick" if args.quick else ""))
    from bq_jax.studies.config import StudyError

    try:
        return _run(args)
    except UsageError as e:
        print(f"{_PROG} {args.command}: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(
            f"{_PROG} {args.command}: interrupted; finished parts are kept in "
            f"{os.path.join(args.out, 'parts')} and a re-run resumes from them",
            file=sys.stderr,
        )
        return EXIT_INTERRUPTED
    except StudyError as e:
        print(f"{_PROG} {args.command}: error: {e}", file=sys.stderr)
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
