"""The one runner of every study: over seeds, resumably, into results.json, report.md and figures.

Layout of an output directory ``OUT``::

    OUT/results.json               aggregated results (schema: bq_jax.studies.results)
    OUT/report.md                  findings, one section per study, settings and reasons
    OUT/figures/*.png              the studies' figures
    OUT/parts/<study>_seed<k>.json one finished (study, seed) part: {"study", "seed", "config",
                                   "depends", "arrays_sha256", "result_sha256", "compute_s",
                                   "result"}; written atomically, so it is either complete or
                                   absent
    OUT/parts/<study>_seed<k>.npz  arrays for the figures, written before the .json part
    OUT/checkpoints/               trained float classifiers (bq_jax.train's cache)

A part is reused when its ``config`` equals the current config's fingerprint, the digests of the
parts it was built from still match, its ``result`` has the recorded digest (``result_sha256``: an
edited part is recomputed, not reused) and its arrays file has the recorded SHA-256; otherwise it
is recomputed. A part that cannot be read (truncated, not JSON, ``null``) is recomputed too. Parts
are written as soon as they are finished, so Ctrl-C (or a kill) loses at most the part in progress.

One run at a time per directory: :func:`run` and :func:`train_only` hold an exclusive
``fcntl.flock`` on ``OUT/.lock`` (which records the holder's pid) and refuse, with an
:class:`~bq_jax.report.OutputError`, a second run on the same ``OUT`` while the first is alive.
The operating system drops the lock when its holder exits or is killed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import io
import os
import time
import zipfile
from collections.abc import Iterator, Sequence

import numpy as np

from bq_jax.report import OutputError, atomic_write, json_dumps, read_json, write_json
from bq_jax.studies import registry, reporting
from bq_jax.studies.config import BaseConfig
from bq_jax.studies.context import SeedContext
from bq_jax.studies.results import assemble

__all__ = ["RunSummary", "lock_output", "run", "run_study", "train_only", "part_path"]


@dataclasses.dataclass
class RunSummary:
    """What a run did: the parts it computed and those it reused, and where it wrote."""

    out: str
    computed: list[str] = dataclasses.field(default_factory=list)
    reused: list[str] = dataclasses.field(default_factory=list)
    results: dict | None = None
    wall_time_s: float | None = None
    # Seconds each part took to compute when it was computed (reused parts keep their time).
    compute_s: dict[str, float] = dataclasses.field(default_factory=dict)

    def describe(self) -> str:
        """One line for the terminal."""
        return (
            f"wrote {os.path.join(self.out, 'results.json')} and report.md "
            f"({len(self.computed)} parts computed, {len(self.reused)} reused"
            + (f", {self.wall_time_s:.0f} s" if self.wall_time_s is not None else "")
            + ")"
        )


def part_path(out: str, study: str, seed: int, ext: str = "json") -> str:
    """Path of the part of ``study`` for training seed ``seed`` under ``out``."""
    return os.path.join(out, "parts", f"{study}_seed{seed}.{ext}")


def _digest(obj) -> str:
    return hashlib.sha256(json_dumps(obj).encode()).hexdigest()[:16]


def _save_arrays(path: str, arrays: dict) -> str:
    buf = io.BytesIO()
    np.savez_compressed(buf, **{k: np.asarray(v) for k, v in arrays.items()})
    data = buf.getvalue()
    atomic_write(path, data)
    return hashlib.sha256(data).hexdigest()


@contextlib.contextmanager
def lock_output(out: str) -> Iterator[None]:
    """Holds an exclusive lock on ``out`` (``OUT/.lock``, with this process's pid) while inside.

    Raises:
        OutputError: another live process holds the lock (its pid is named), or ``out``
            cannot be created / the lock file cannot be opened.
    """
    path = os.path.join(out, ".lock")
    try:
        os.makedirs(out, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        raise OutputError(path, e.strerror or str(e)) from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            raise OutputError(
                out,
                f"another bq-jax run (pid {holder}) is writing to this directory; wait for it "
                "to finish or choose another --out",
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def _load_arrays(path: str, sha256: str | None) -> dict | None:
    """The arrays at ``path`` if the file exists and has checksum ``sha256``; else None."""
    if sha256 is None:
        return None
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError:
        return None
    if hashlib.sha256(data).hexdigest() != sha256:
        return None
    try:
        with np.load(io.BytesIO(data)) as f:
            return {k: f[k] for k in f.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile):
        return None


def _load_part(out: str, study: str, seed: int, fingerprint: dict, depends: dict) -> dict | None:
    """A finished part whose settings, dependencies and arrays still match; else None."""
    try:
        part = read_json(part_path(out, study, seed))
    except (OSError, ValueError):
        return None
    if not isinstance(part, dict) or not isinstance(part.get("result"), dict):
        return None
    if part.get("config") != fingerprint or part.get("depends") != depends:
        return None
    if part.get("result_sha256") != _digest(part["result"]):
        return None
    sha = part.get("arrays_sha256")
    if sha is not None and _load_arrays(part_path(out, study, seed, "npz"), sha) is None:
        return None
    return part


def _check_studies(config: BaseConfig, studies: Sequence[str] | None) -> list[str]:
    if not isinstance(config, BaseConfig):
        raise TypeError(
            f"config must be a study config (a bq_jax.studies.BaseConfig), got "
            f"{type(config).__name__}"
        )
    names = registry.studies_for(type(config)) if studies is None else list(studies)
    for s in names:
        module = registry.study(s)  # raises naming the known studies
        if not isinstance(config, module.CONFIG):
            raise TypeError(
                f"study {s!r} runs under a {module.CONFIG.__name__}, got a {type(config).__name__}"
            )
    if not names:
        raise ValueError("studies must name at least one study")
    return names


def run(
    config: BaseConfig,
    out: str,
    studies: Sequence[str] | None = None,
    *,
    command: str | None = None,
) -> RunSummary:
    """Run ``studies`` for every seed of ``config``; write everything under ``out``.

    Args:
        config: the study settings (a :class:`~bq_jax.studies.config.BaseConfig` subclass).
        out: output directory (created if missing).
        studies: study names (default: every study of ``type(config)``); studies they build on
            run too (their parts are written) but only the requested ones appear in
            results.json and report.md.
        command: the command line that reproduces this run, quoted in report.md.

    Returns:
        A :class:`RunSummary` with the computed/reused parts and the results dict.

    Raises:
        StudyError: the data could not be loaded or a classifier could not be trained.
        OutputError: ``out`` cannot be written, or another run holds its lock.
        KeyboardInterrupt: passed on after the finished parts are safely on disk.
    """
    requested = _check_studies(config, studies)
    with lock_output(out):
        return _run(config, out, requested, command)


def _run(config: BaseConfig, out: str, requested: list[str], command: str | None) -> RunSummary:
    from tqdm.auto import tqdm

    start = time.perf_counter()
    order = registry.with_dependencies(requested)
    fingerprint = config.fingerprint()
    summary = RunSummary(out=out)
    per_seed: dict[str, list[dict]] = {s: [] for s in order}
    first_arrays: dict[str, dict | None] = {}
    ckpt = os.path.join(out, "checkpoints")
    bar = tqdm(
        total=len(order) * len(config.seeds),
        desc=f"{config.dataset} parts",
        unit="part",
        disable=not config.progress,
    )
    try:
        for i, seed in enumerate(config.seeds):
            ctx = None
            done: dict[str, dict] = {}
            for name in order:
                module = registry.study(name)
                deps = {d: done[d]["result"] for d in module.DEPENDS}
                dep_digests = {d: _digest(v) for d, v in sorted(deps.items())}
                part = _load_part(out, name, seed, fingerprint, dep_digests)
                label = f"{name}_seed{seed}"
                if part is None:
                    bar.set_postfix_str(f"{name} seed {seed}")
                    t0 = time.perf_counter()
                    if ctx is None:
                        ctx = SeedContext(config, seed, cache_dir=ckpt)
                    result, arrays = module.compute(config, seed, ctx, deps)
                    seconds = round(time.perf_counter() - t0, 1)
                    sha = None
                    if arrays:
                        sha = _save_arrays(part_path(out, name, seed, "npz"), arrays)
                    part = {
                        "study": name,
                        "seed": seed,
                        "config": fingerprint,
                        "depends": dep_digests,
                        "arrays_sha256": sha,
                        "result_sha256": _digest(result),
                        "compute_s": seconds,
                        "result": result,
                    }
                    write_json(part_path(out, name, seed), part)
                    summary.computed.append(label)
                else:
                    summary.reused.append(label)
                summary.compute_s[label] = part.get("compute_s")
                if i == 0:
                    first_arrays[name] = _load_arrays(
                        part_path(out, name, seed, "npz"), part.get("arrays_sha256")
                    )
                done[name] = part
                per_seed[name].append(part["result"])
                bar.update()
            del ctx
    finally:
        bar.close()
    results = assemble(config, {s: per_seed[s] for s in requested})
    write_json(os.path.join(out, "results.json"), results)
    modules = {s: registry.study(s) for s in requested}
    figures = reporting.write_figures(
        config, results, modules, {s: first_arrays[s] for s in requested}, out
    )
    summary.wall_time_s = time.perf_counter() - start
    reporting.write_report(config, results, modules, out, figures, summary=summary, command=command)
    summary.results = results
    return summary


def run_study(config: BaseConfig, study: str, *, cache_dir: str | None = None) -> dict:
    """Run one study in memory (no files) over ``config.seeds`` and return its aggregate.

    Studies it builds on are computed too (and not returned).

    Example:
        >>> from bq_jax.studies import StudyConfig, run_study
        >>> run_study(StudyConfig(dataset="digits", seeds=(0,)), "bits_sweep")  # doctest: +SKIP
    """
    _check_studies(config, [study])
    order = registry.with_dependencies([study])
    per_seed = []
    for seed in config.seeds:
        ctx = SeedContext(config, seed, cache_dir=cache_dir)
        done: dict[str, dict] = {}
        for name in order:
            module = registry.study(name)
            deps = {d: done[d] for d in module.DEPENDS}
            done[name], _ = module.compute(config, seed, ctx, deps)
        per_seed.append(done[study])
    return registry.study(study).aggregate(config, per_seed)


def train_only(config: BaseConfig, out: str) -> list[str]:
    """Train (or load) the float classifier of every seed; one summary line per seed."""
    lines = []
    with lock_output(out):
        for seed in config.seeds:
            ctx = SeedContext(config, seed, cache_dir=os.path.join(out, "checkpoints"))
            lines.append(
                f"{config.dataset} seed {seed}: {ctx.model_name}, held-out accuracy "
                f"{ctx.float_accuracy:.4f} (checkpoints in {os.path.join(out, 'checkpoints')})"
            )
    return lines
