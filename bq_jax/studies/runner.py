"""Run studies over seeds, resumably, and write results.json, report.md and figures.

Layout of an output directory ``OUT``::

    OUT/results.json               aggregated results (keys: see bq_jax.studies)
    OUT/report.md                  tables, the paper's values beside ours, settings and reasons
    OUT/figures/*.png              one or more figures per study
    OUT/parts/<study>_seed<k>.json one finished (study, seed) part: {"study", "seed", "config",
                                   "depends", "result"}; written atomically, so it is either
                                   complete or absent
    OUT/parts/<study>_seed<k>.npz  arrays for the figures (slice label maps), written before the
                                   .json part
    OUT/checkpoints/               trained float classifiers (bq_jax.train's cache)

A part is reused when its ``config`` equals the current :meth:`StudyConfig.fingerprint` and,
for a study built on other studies, the digests of the parts it was built from still match;
otherwise it is recomputed. Parts are written as soon as they are finished, so Ctrl-C loses at
most the part in progress.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import io
import os
import time
from collections.abc import Sequence

import numpy as np

from bq_jax.studies.config import STUDIES, StudyConfig, StudyError

__all__ = ["RunSummary", "run", "run_study", "train_only", "part_path"]

#: The module that computes each study (``compute``, ``aggregate``, ``DEPENDS``). Looked up by
#: module path: the package namespace binds each name to the study function instead.
MODULES = {name: importlib.import_module(f"bq_jax.studies.{name}") for name in STUDIES}


@dataclasses.dataclass
class RunSummary:
    """What a run did: the parts it computed and those it reused, and where it wrote."""

    out: str
    computed: list[str] = dataclasses.field(default_factory=list)
    reused: list[str] = dataclasses.field(default_factory=list)
    results: dict | None = None
    wall_time_s: float | None = None

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


def _needed(studies: Sequence[str]) -> list[str]:
    need = set()

    def add(s):
        if s not in need:
            need.add(s)
            for d in MODULES[s].DEPENDS:
                add(d)

    for s in studies:
        add(s)
    return [s for s in STUDIES if s in need]


def _digest(obj) -> str:
    from bq_jax.report import json_dumps

    return hashlib.sha256(json_dumps(obj).encode()).hexdigest()[:16]


def _save_arrays(path: str, arrays: dict) -> None:
    from bq_jax.report import atomic_write

    buf = io.BytesIO()
    np.savez_compressed(buf, **{k: np.asarray(v) for k, v in arrays.items()})
    atomic_write(path, buf.getvalue())


def _load_part(path: str, fingerprint: dict, depends: dict) -> dict | None:
    from bq_jax.report import read_json

    try:
        part = read_json(path)
    except (OSError, ValueError):
        return None
    if part.get("config") != fingerprint or part.get("depends") != depends:
        return None
    return part


def run(
    config: StudyConfig,
    out: str,
    studies: Sequence[str] | None = None,
) -> RunSummary:
    """Run ``studies`` (default: all) for every seed of ``config``; write everything under ``out``.

    Args:
        config: the study settings.
        out: output directory (created if missing).
        studies: names from :data:`STUDIES`; studies they build on run too (their parts are
            written) but only the requested ones appear in results.json and report.md.

    Returns:
        A :class:`RunSummary` with the computed/reused parts and the results dict.

    Raises:
        StudyError: the data could not be loaded or a classifier could not be trained.
        KeyboardInterrupt: passed on after the finished parts are safely on disk.
    """
    from tqdm.auto import tqdm

    from bq_jax.report import write_json
    from bq_jax.studies.context import SeedContext

    start = time.perf_counter()
    requested = list(STUDIES if studies is None else studies)
    for s in requested:
        if s not in STUDIES:
            raise ValueError(f"studies must be names from {STUDIES}, got {s!r}")
    order = _needed(requested)
    fingerprint = config.fingerprint()
    summary = RunSummary(out=out)
    per_seed: dict[str, list[dict]] = {s: [] for s in order}
    ckpt = os.path.join(out, "checkpoints")
    bar = tqdm(
        total=len(order) * len(config.seeds),
        desc=f"{config.dataset} parts",
        unit="part",
        disable=not config.progress,
    )
    try:
        for seed in config.seeds:
            ctx = None
            done: dict[str, dict] = {}
            for study in order:
                module = MODULES[study]
                deps = {d: done[d]["result"] for d in module.DEPENDS}
                dep_digests = {d: _digest(v) for d, v in sorted(deps.items())}
                path = part_path(out, study, seed)
                part = _load_part(path, fingerprint, dep_digests)
                name = f"{study}_seed{seed}"
                if part is None:
                    bar.set_postfix_str(f"{study} seed {seed}")
                    if ctx is None:
                        ctx = SeedContext(config, seed, cache_dir=ckpt)
                    result, arrays = module.compute(config, seed, ctx, deps)
                    if arrays:
                        _save_arrays(part_path(out, study, seed, "npz"), arrays)
                    part = {
                        "study": study,
                        "seed": seed,
                        "config": fingerprint,
                        "depends": dep_digests,
                        "result": result,
                    }
                    write_json(path, part)
                    summary.computed.append(name)
                else:
                    summary.reused.append(name)
                done[study] = part
                per_seed[study].append(part["result"])
                bar.update()
            del ctx
    finally:
        bar.close()
    results = assemble(config, {s: per_seed[s] for s in requested})
    write_json(os.path.join(out, "results.json"), results)
    from bq_jax.studies import reporting

    reporting.write_figures(config, results, out)
    summary.wall_time_s = time.perf_counter() - start
    reporting.write_report(config, results, out, summary=summary)
    summary.results = results
    return summary


def assemble(config: StudyConfig, per_seed: dict[str, list[dict]]) -> dict:
    """The results.json dict from each requested study's per-seed results (seed order)."""
    first = next(iter(per_seed.values()))
    float_acc = [r["float_accuracy"] for r in first]
    from bq_jax.stats import mean_std

    mean, std = mean_std(float_acc)
    results = {
        "schema_version": 1,
        "dataset": config.dataset,
        "model": first[0]["model"],
        "seeds": list(config.seeds),
        "resolution": config.resolution,
        "quick": config.quick,
        "config": config.fingerprint(),
        "float_accuracy": mean,
        "float_accuracy_std": std,
    }
    for study, results_per_seed in per_seed.items():
        results[study] = MODULES[study].aggregate(config, results_per_seed)
    results["per_seed"] = [
        {"seed": seed, **{study: per_seed[study][i] for study in per_seed}}
        for i, seed in enumerate(config.seeds)
    ]
    return results


def run_study(config: StudyConfig, study: str, *, cache_dir: str | None = None) -> dict:
    """Run one study in memory (no parts) over ``config.seeds`` and return its aggregate.

    Studies it builds on are computed too (and not returned).

    Example:
        >>> from bq_jax.studies import StudyConfig, run_study
        >>> run_study(StudyConfig(dataset="digits", seeds=(0,)), "bits_sweep")  # doctest: +SKIP
    """
    from bq_jax.studies.context import SeedContext

    if study not in STUDIES:
        raise ValueError(f"study must be one of {STUDIES}, got {study!r}")
    order = _needed([study])
    results = []
    for seed in config.seeds:
        ctx = SeedContext(config, seed, cache_dir=cache_dir)
        done = {}
        for s in order:
            module = MODULES[s]
            done[s], _ = module.compute(config, seed, ctx, {d: done[d] for d in module.DEPENDS})
        results.append(done[study])
    return MODULES[study].aggregate(config, results)


def train_only(config: StudyConfig, out: str) -> list[str]:
    """Train (or load) the float classifier of every seed; one summary line per seed."""
    from bq_jax.studies.context import SeedContext

    lines = []
    for seed in config.seeds:
        ctx = SeedContext(config, seed, cache_dir=os.path.join(out, "checkpoints"))
        lines.append(
            f"{config.dataset} seed {seed}: {ctx.model_name}, held-out accuracy "
            f"{ctx.float_accuracy:.4f} (checkpoints in {os.path.join(out, 'checkpoints')})"
        )
    return lines


__all__ += ["StudyError", "assemble", "MODULES"]
