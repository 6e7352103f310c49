"""The results.json schema shared by every study run, and its reader.

Schema version 2 (written with sorted keys by :func:`bq_jax.report.write_json`; the same seeds
and settings give a byte-identical file):

* ``schema_version`` (int, 2); ``studies`` (names of the studies in the file, run order);
  ``dataset``; ``model`` (classifier architecture); ``seeds``; ``resolution``; ``quick``;
  ``config`` (every setting a result depends on, with ``config_type``: the config class).
* ``float_accuracy``, ``float_accuracy_std``: held-out accuracy of the float classifier.
* ``findings``: ``[{"study", "finding", "holds", "evidence"}]``, each study's claims checked on
  its aggregate (``holds`` None: undecidable).
* one key per study with its aggregate (keys in the study module's docstring; numbers follow
  :mod:`bq_jax.vocabulary`'s names and mean / ``_std`` / ``n_seeds`` convention).
* ``per_seed``: ``[{"seed": k, <study>: <that seed's result>, ...}]``.

Version 1 files (written before the vocabulary was unified: ``boundary_jaccard`` for the
Jaccard distance, ``triple_junctions`` for a count, ``heldout_accuracy`` beside ``accuracy``)
are refused with a message that says how to regenerate them.
"""

from __future__ import annotations

from bq_jax.report import read_json
from bq_jax.stats import mean_std
from bq_jax.studies import registry
from bq_jax.studies.config import BaseConfig

__all__ = ["SCHEMA_VERSION", "ResultsError", "assemble", "load_results"]

SCHEMA_VERSION = 2


class ResultsError(ValueError):
    """A results.json this version of bq_jax cannot read."""


def assemble(config: BaseConfig, per_seed: dict[str, list[dict]]) -> dict:
    """The results.json dict from each requested study's per-seed results (seed order)."""
    first = next(iter(per_seed.values()))
    mean, std = mean_std([r["float_accuracy"] for r in first])
    results = {
        "schema_version": SCHEMA_VERSION,
        "studies": list(per_seed),
        "dataset": config.dataset,
        "model": first[0]["model"],
        "seeds": list(config.seeds),
        "resolution": config.resolution,
        "quick": config.quick,
        "config": config.fingerprint(),
        "float_accuracy": mean,
        "float_accuracy_std": std,
    }
    findings = []
    for name, results_per_seed in per_seed.items():
        module = registry.study(name)
        results[name] = module.aggregate(config, results_per_seed)
        findings += [f.to_dict(name) for f in module.findings(config, results[name])]
    results["findings"] = findings
    results["per_seed"] = [
        {"seed": seed, **{name: per_seed[name][i] for name in per_seed}}
        for i, seed in enumerate(config.seeds)
    ]
    return results


def load_results(path: str) -> dict:
    """Read a results.json written by :func:`bq_jax.studies.run`.

    Raises:
        ResultsError: the file is not a results dict or has another schema version.
    """
    results = read_json(path)
    if not isinstance(results, dict) or "schema_version" not in results:
        raise ResultsError(f"{path} is not a bq_jax results.json (no schema_version)")
    version = results["schema_version"]
    if version != SCHEMA_VERSION:
        raise ResultsError(
            f"{path} has schema_version {version}; this bq_jax reads version {SCHEMA_VERSION} "
            "(metric keys were renamed: boundary_jaccard -> boundary_jaccard_distance, "
            "triple_junctions -> triple_junction_count). Re-run the command in its report.md "
            "to regenerate it."
        )
    return results
