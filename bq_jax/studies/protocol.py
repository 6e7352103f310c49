"""The one shape every study has, so that a new study is one new module.

A study is a module of ``bq_jax.studies`` that defines:

* ``NAME`` (str): its key in results.json and its part-file prefix.
* ``TITLE`` (str): its section heading in report.md.
* ``CONFIG`` (type): the frozen config dataclass it runs under (a subclass of
  :class:`bq_jax.studies.config.BaseConfig`); studies run together share one config.
* ``DEPENDS`` (tuple of study names): studies whose per-seed results it reads.
* ``compute(config, seed, ctx, deps) -> (result, arrays)``: one training seed. ``ctx`` is the
  seed's :class:`bq_jax.studies.context.SeedContext`; ``deps`` maps each name of ``DEPENDS`` to
  that study's result for the same seed. ``result`` is JSON-ready (the ``per_seed`` entry);
  ``arrays`` (numpy arrays, may be empty) are kept beside it for the figures.
* ``aggregate(config, per_seed) -> dict``: the results.json block from the per-seed results
  (mean ``x``, ``x_std`` and ``n_seeds`` by the convention of :mod:`bq_jax.vocabulary`).
* ``findings(config, results) -> list[Finding]``: its claims checked on the aggregate.
* ``figures(config, results, first_result, first_arrays) -> dict[str, Figure]``: file name ->
  matplotlib figure; ``first_result`` / ``first_arrays`` are the first seed's ``compute``
  outputs (``first_arrays`` is ``None`` if that part has none).
* ``report_section(section, config, results, figures)``: writes its report.md section;
  ``figures`` maps the figure names written to their paths.

:func:`check_study` verifies that a module has this shape; the runner calls it on every study.
"""

from __future__ import annotations

import dataclasses
import types

__all__ = ["Finding", "PROTOCOL", "check_study"]

#: Attributes every study module defines (see the module docstring).
PROTOCOL = (
    "NAME",
    "TITLE",
    "CONFIG",
    "DEPENDS",
    "compute",
    "aggregate",
    "findings",
    "figures",
    "report_section",
)


@dataclasses.dataclass(frozen=True)
class Finding:
    """A claim checked on the numbers: ``holds`` is None when the data cannot decide it."""

    # The claim, in one sentence.
    finding: str
    # True / False, or None when undecidable (e.g. a correlation of a constant).
    holds: bool | None
    # The numbers that decided it.
    evidence: str

    def to_dict(self, study: str) -> dict:
        return {"study": study, **dataclasses.asdict(self)}


def check_study(module: types.ModuleType) -> types.ModuleType:
    """``module`` if it has every attribute of :data:`PROTOCOL`; ``TypeError`` otherwise."""
    missing = [a for a in PROTOCOL if not hasattr(module, a)]
    if missing:
        raise TypeError(f"study module {module.__name__} lacks {', '.join(missing)}")
    return module
