"""Every study by name, and the order they run in (a study after those it builds on)."""

from __future__ import annotations

import types
from collections.abc import Sequence

from bq_jax.studies import (
    bits_sweep,
    correlation,
    interpolation,
    qat_basin,
    range_methods,
    rounding,
    rounding_comparison,
    sensitivity,
    stopping,
)
from bq_jax.studies.protocol import check_study

__all__ = ["STUDIES", "study", "studies_for", "with_dependencies"]

#: Study name -> module, in run order (a study after the studies it depends on).
STUDIES: dict[str, types.ModuleType] = {
    m.NAME: check_study(m)
    for m in (
        bits_sweep,
        interpolation,
        stopping,
        rounding,
        correlation,
        qat_basin,
        range_methods,
        rounding_comparison,
        sensitivity,
    )
}


def study(name: str) -> types.ModuleType:
    """The module of study ``name``."""
    if name not in STUDIES:
        raise ValueError(f"study must be one of {', '.join(STUDIES)}; got {name!r}")
    return STUDIES[name]


def studies_for(config_type: type) -> list[str]:
    """Names of the studies that run under ``config_type``, in run order."""
    return [n for n, m in STUDIES.items() if m.CONFIG is config_type]


def with_dependencies(names: Sequence[str]) -> list[str]:
    """``names`` and every study they build on, in run order."""
    need: set[str] = set()

    def add(name: str) -> None:
        if name not in need:
            need.add(name)
            for dep in study(name).DEPENDS:
                add(dep)

    for n in names:
        add(n)
    return [n for n in STUDIES if n in need]
