"""The ``bq-jax`` command: run any study of :mod:`bq_jax.studies` from the shell.

``bq-jax --help`` lists the commands (:data:`bq_jax.cli.commands.COMMANDS`); every study
command's flags are derived from its config dataclass (:mod:`bq_jax.cli.flags`), so
``bq-jax COMMAND --help`` shows each setting with its default.

Every study command is resumable: each finished (study, seed) part is written atomically to
``OUT/parts/<study>_seed<k>.json`` and a re-run with the same settings skips it. Ctrl-C keeps the
finished parts and exits with status 130. Bad arguments print one line on stderr and exit with
status 2; a failure to load data, train or write exits with status 1.

Example:
    bq-jax reproduce digits                       # about 2 minutes on 2 CPU cores
    bq-jax reproduce digits --quick --out /tmp/q  # under a minute
"""

from __future__ import annotations

import argparse
import os
import sys

from bq_jax.cli.commands import COMMANDS, UsageError, run_command

__all__ = ["main", "build_parser", "EXIT_OK", "EXIT_FAILED", "EXIT_USAGE", "EXIT_INTERRUPTED"]

PROG = "bq-jax"
# Exit statuses.
EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130

DESCRIPTION = """\
Boundary-aware quantization studies: quantize a trained classifier and measure how
its decision boundaries move (boundary Jaccard distance, flips, junctions, ...).
Trained classifiers are kept in OUT/checkpoints and compiled XLA programs in
$BQ_JAX_CACHE/xla (default ~/.cache/bq_jax/xla), so a second run starts faster."""

EPILOG = """\
examples:
  bq-jax reproduce digits                            # the paper's studies, 3 seeds
  bq-jax reproduce digits --quick --out /tmp/quick   # smoke test, under a minute
  bq-jax stopping mnist --data-dir ~/tensorflow_datasets --jaccard-threshold 0.3
  bq-jax qat-basin digits --bits 2,3 --range-method mse"""


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line on stderr (no usage dump) and exit 2."""

    def error(self, message):
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def _dataset(text: str) -> str:
    from bq_jax.data import DATASETS

    name = text.strip().lower().replace("-", "_")
    if name not in DATASETS:
        raise argparse.ArgumentTypeError(
            f"unknown data set {text!r}; choose one of {', '.join(DATASETS)}"
        )
    return name


def build_parser() -> tuple[argparse.ArgumentParser, dict[str, list[str]]]:
    """The parser (a sub-parser per command) and each command's config-derived flag names."""
    from bq_jax import studies
    from bq_jax.cli.flags import add_config_flags
    from bq_jax.data import DATASETS

    parser = Parser(
        prog=PROG,
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    sub.required = True
    names = {}
    for name, spec in COMMANDS.items():
        p = sub.add_parser(name, help=spec.summary, description=spec.description)
        p.add_argument(
            "dataset", type=_dataset, metavar="DATASET", help=f"one of {', '.join(DATASETS)}"
        )
        p.add_argument(
            "--out",
            metavar="DIR",
            default=None,
            help="output directory (default: results/DATASET for reproduce, "
            "results/COMMAND/DATASET otherwise; '-quick' appended with --quick)",
        )
        p.add_argument("--quick", action="store_true", help="small, fast settings (smoke test)")
        p.add_argument("--no-progress", action="store_true", help="hide the progress bars")
        p.add_argument(
            "--data-dir", metavar="DIR", default=None, help="tensorflow-datasets data directory"
        )
        names[name] = add_config_flags(p, getattr(studies, spec.config))
    return parser, names


def _enable_compilation_cache() -> None:
    """Keep compiled XLA programs on disk so that later runs skip most compile time.

    Uses ``$JAX_COMPILATION_CACHE_DIR`` / an already configured directory if there is one,
    else ``<bq_jax cache>/xla`` (``$BQ_JAX_CACHE``, default ``~/.cache/bq_jax``). Compiled
    programs are keyed by their HLO, so results do not depend on the cache.
    """
    import jax

    from bq_jax.train import default_cache_dir

    if jax.config.jax_compilation_cache_dir:
        return
    path = os.path.join(default_cache_dir(), "xla")
    try:
        os.makedirs(path, exist_ok=True)
    except OSError:
        return  # an unwritable cache only costs compile time
    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``bq-jax``; returns the exit status (0 ok, 1 failed, 2 usage, 130 Ctrl-C)."""
    from bq_jax.report import OutputError
    from bq_jax.studies import StudyError

    argv = list(sys.argv[1:] if argv is None else argv)
    parser, names = build_parser()
    args = parser.parse_args(argv)
    where = f"{PROG} {args.command}"
    try:
        _enable_compilation_cache()
        for line in run_command(args.command, args, names[args.command], argv):
            print(line)
        return EXIT_OK
    except UsageError as e:
        print(f"{where}: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        parts = os.path.join(args.out or "OUT", "parts")
        print(
            f"{where}: interrupted; finished parts are kept in {parts} and a re-run resumes "
            "from them",
            file=sys.stderr,
        )
        return EXIT_INTERRUPTED
    except (StudyError, OutputError) as e:
        print(f"{where}: error: {e}", file=sys.stderr)
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
