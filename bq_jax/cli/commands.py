"""The ``bq-jax`` commands: which studies each runs under which config, and how it runs them."""

from __future__ import annotations

import dataclasses
import os
import shlex
import tempfile

__all__ = ["Command", "COMMANDS", "UsageError", "out_dir", "run_command"]


class UsageError(Exception):
    """A bad command-line argument; reported as one line with exit status 2."""


@dataclasses.dataclass(frozen=True)
class Command:
    """A study command: the studies it runs and the config class its flags come from."""

    # One line for `bq-jax --help`.
    summary: str
    # Paragraph for `bq-jax COMMAND --help`.
    description: str
    # Study names (None: train the classifiers only).
    studies: tuple[str, ...] | None
    # Name of the config class in bq_jax.studies.
    config: str = "StudyConfig"


COMMANDS: dict[str, Command] = {
    "reproduce": Command(
        "run the paper's five studies on a data set (results.json, report.md, figures)",
        "Run every study of the boundary-aware quantization paper on DATASET: the PTQ-W bit "
        "sweep, the interpolation between adjacent bit widths, the calibration-to-test stopping "
        "rules, the rounding comparison and the calibration/held-out correlation, over the "
        "training seeds. Writes OUT/results.json (schema: bq_jax.studies.results), OUT/report.md "
        "(our numbers beside the paper's) and OUT/figures/*.png.",
        ("bits_sweep", "interpolation", "stopping", "rounding", "correlation"),
    ),
    "bits-sweep": Command(
        "PTQ-W bit sweep: accuracy and decision-geometry metrics per bit width",
        "Quantize the weights (per-channel symmetric, min-max range, round to nearest) at every "
        "width from --max-bits down to --min-bits and measure accuracy, held-out flip rate and "
        "the decision-geometry metrics on the PCA slice of the training inputs.",
        ("bits_sweep",),
    ),
    "interpolation": Command(
        "scale interpolation between adjacent bit widths; junction enrichment",
        "Interpolate the quantization scale from the b-bit to the (b-1)-bit quantizer for every "
        "adjacent pair of widths and record where the slice labels change and how many changed "
        "cells lie at or next to a multiclass (triple) junction.",
        ("interpolation",),
    ),
    "stopping": Command(
        "accuracy vs boundary stopping rule, judged on held-out data",
        "Walk bit widths downward; the accuracy rule keeps the lowest width whose calibration "
        "accuracy drop is <= epsilon, the boundary rule the lowest width whose calibration "
        "boundary Jaccard distance is <= tau_J. Both choices are judged on held-out data.",
        ("stopping",),
    ),
    "rounding": Command(
        "nearest vs AdaRound vs boundary-gap rounding at fixed bit widths",
        "Round to nearest, AdaRound, and AdaRound with the boundary-gap penalty at each of "
        "--rounding-bits; reports accuracy, boundary Jaccard distance and pair-order flips.",
        ("rounding",),
    ),
    "correlation": Command(
        "calibration vs held-out boundary Jaccard across quantized variants",
        "Pearson r of calibration vs held-out boundary Jaccard distance across all PTQ-W widths "
        "and optimised rounding variants (runs the stopping and rounding studies first).",
        ("correlation",),
    ),
    "qat-basin": Command(
        "PTQ vs QAT at low bits: loss landscape, Hessian, trajectories",
        "The 'PTQ leaves the basin, QAT returns' study: PTQ (nearest, AdaRound), STE-QAT, "
        "LSQ-QAT and the float-gradient ablation at each of --bits; loss along the line from "
        "the float weights, excess loss, top Hessian directions, trajectory cosines, boundary "
        "metrics and held-out accuracy.",
        ("qat_basin",),
        "BasinConfig",
    ),
    "range-methods": Command(
        "STE-QAT with each weight range-setting method",
        "STE-QAT with min-max, MSE, OCTAV and Gaussian weight ranges over seeds: held-out "
        "accuracy, spread of the loss curves and per-layer SQNR.",
        ("range_methods",),
        "RangeMethodsConfig",
    ),
    "rounding-comparison": Command(
        "rounding rules over seeds, boundary-gap settings chosen on calibration data",
        "Nearest vs AdaRound vs boundary-gap rounding over seeds, with the boundary-gap weight "
        "and temperature chosen on calibration data only: accuracy, reconstruction error, "
        "boundary Jaccard distance and pair-order flips on held-out data.",
        ("rounding_comparison",),
        "RoundingComparisonConfig",
    ),
    "sensitivity": Command(
        "per-layer boundary sensitivity; mixed precision chosen on calibration data",
        "Quantize one weight layer at a time (and all but one) at each of --layer-bits and "
        "measure held-out accuracy, flip rate, band flip rate, weight SQNR and the boundary "
        "Jaccard distance on a stack of held-out planes; then, for each average bit budget of "
        "--budgets, choose per-layer widths greedily on calibration planes and judge them "
        "against uniform weights at the same average bits on held-out data.",
        ("sensitivity",),
        "SensitivityConfig",
    ),
    "train": Command(
        "train (or load cached) float classifiers",
        "Train the float classifiers for the requested seeds (or load them from the checkpoint "
        "cache in OUT/checkpoints) and print their held-out accuracy.",
        None,
    ),
}


def out_dir(command: str, dataset: str, quick: bool, out: str | None) -> str:
    """The output directory (default ``results/DATASET`` for reproduce, else
    ``results/COMMAND/DATASET``; ``-quick`` appended with --quick), checked writable.

    Raises:
        OutputError: it cannot be created or written (the CLI exits 1: the environment, not the
            arguments, is at fault).
    """
    from bq_jax.report import OutputError

    if out is None:
        base = dataset if command == "reproduce" else os.path.join(command, dataset)
        out = os.path.join("results", base + ("-quick" if quick else ""))
    try:
        os.makedirs(out, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=out, prefix=".write-test-")
        os.close(fd)
        os.remove(probe)
    except OSError as e:
        raise OutputError(out, f"--out is not a writable directory ({e.strerror or e})") from None
    return out


def _flag_for(message: str, names: list[str]) -> str:
    from bq_jax.cli.flags import flag_name

    for n in sorted(names, key=len, reverse=True):
        if n in message:
            return f"argument {flag_name(n)}: "
    return ""


def make_config(command: str, args, names: list[str]):
    """The config of ``command`` from parsed ``args`` (``UsageError`` naming the flag)."""
    from bq_jax import studies
    from bq_jax.cli.flags import config_overrides

    config_type = getattr(studies, COMMANDS[command].config)
    overrides = config_overrides(args, names)
    overrides.update(dataset=args.dataset, progress=not args.no_progress, data_dir=args.data_dir)
    try:
        return studies.make_config(config_type, quick=args.quick, **overrides)
    except (ValueError, TypeError) as e:
        raise UsageError(_flag_for(str(e), names) + str(e)) from None


def run_command(command: str, args, names: list[str], argv: list[str]) -> list[str]:
    """Run ``command``; returns the lines to print."""
    from bq_jax.studies import runner

    config = make_config(command, args, names)
    out = args.out = out_dir(command, config.dataset, config.quick, args.out)
    spec = COMMANDS[command]
    if spec.studies is None:
        return runner.train_only(config, out)
    shown = [a for a in argv if a != "--no-progress"]
    summary = runner.run(
        config, out, list(spec.studies), command="bq-jax " + " ".join(map(shlex.quote, shown))
    )
    return [summary.describe()]
