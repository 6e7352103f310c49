"""report.md and figures of a study run, assembled from each study's own section and figures.

Every number in report.md comes from the results dict; every figure from it or from the first
seed's part arrays. Where the paper states a value the study shows it beside ours, with a plain
sentence saying how ours compares.
"""

from __future__ import annotations

import os

from bq_jax.report import Report, markdown_table, save_figure
from bq_jax.vocabulary import (
    COUNT_SUFFIX,
    HIGH_SUFFIX,
    HYPERPARAMETERS,
    LOW_SUFFIX,
    STD_SUFFIX,
    metric_format,
)

__all__ = [
    "write_figures",
    "write_report",
    "mean_std_cell",
    "estimate_cell",
    "estimate_text",
    "table",
    "fmt_list",
    "compare_sentence",
]

TEXT_COLUMNS = ("finding", "holds", "evidence", "rule", "method", "transition", "study")


def mean_std_cell(row: dict, key: str, fmt: str | None = None) -> str | None:
    """``"mean ± std"`` text of ``row[key]`` (format from the vocabulary unless ``fmt``)."""
    v = row.get(key)
    if v is None:
        return None
    fmt = metric_format(key) if fmt is None else fmt
    s = row.get(key + STD_SUFFIX)
    text = format(v, fmt)
    if s:
        text += " ± " + format(s, fmt)
    return text


def estimate_cell(row: dict, key: str, fmt: str | None = None) -> str | None:
    """``"mean [low, high]"`` of an estimate ``row[key]`` (its confidence interval, see
    :mod:`bq_jax.vocabulary`); ``"mean ± std"`` (:func:`mean_std_cell`) for a number without one.

    Example:
        >>> estimate_cell({"flip_rate": 0.0, "flip_rate_low": 0.0, "flip_rate_high": 0.00846},
        ...               "flip_rate")
        '0.0000 [0.0000, 0.0085]'
    """
    v = row.get(key)
    lo, hi = row.get(key + LOW_SUFFIX), row.get(key + HIGH_SUFFIX)
    if v is None or lo is None or hi is None:
        return mean_std_cell(row, key, fmt)
    fmt = metric_format(key) if fmt is None else fmt
    return f"{format(v, fmt)} [{format(lo, fmt)}, {format(hi, fmt)}]"


def estimate_text(row: dict, key: str, fmt: str | None = None) -> str:
    """:func:`estimate_cell` with the number of resampling units, for evidence sentences:
    ``"0.185 [0.120, 0.250], n = 48"``."""
    cell = estimate_cell(row, key, fmt)
    if cell is None:
        return "undefined"
    n = row.get(key + COUNT_SUFFIX)
    return cell if n is None else f"{cell}, n = {n}"


def table(sec, rows, columns, *, formats=None, left=TEXT_COLUMNS) -> None:
    """A table whose cells (numbers or "mean ± std" text) are right-aligned, except ``left``."""
    align = {c: "left" if c in left else "right" for c in columns}
    sec.markdown(markdown_table(rows, columns, formats=formats, align=align))


def fmt_list(values, fmt: str = ".3f") -> str:
    """``values`` as comma-separated text, ``—`` for None."""
    return ", ".join("—" if v is None else format(v, fmt) for v in values)


def compare_sentence(name: str, ours, paper, fmt: str) -> str:
    """A plain sentence comparing ours with the paper's value at the paper's printed precision."""
    if ours is None:
        return f"{name}: paper {format(paper, fmt)}, ours undefined."
    o, p = format(ours, fmt), format(paper, fmt)
    if o == p:
        return f"{name}: ours {o} matches the paper's {p}."
    word = "higher" if ours > paper else "lower"
    return (
        f"{name}: ours {o} differs from the paper's {p} "
        f"(ours is {word} by {format(abs(ours - paper), fmt)})."
    )


def write_figures(
    config, results: dict, modules: dict, arrays: dict, out: str
) -> dict[str, dict[str, str]]:
    """Write every figure of the studies in ``results``; returns ``{study: {name: path}}``.

    ``modules`` maps each study name to its module, ``arrays`` to its first seed's arrays (or
    None).
    """
    paths: dict[str, dict[str, str]] = {}
    first = results["per_seed"][0]
    for name in results["studies"]:
        figs = modules[name].figures(config, results[name], first[name], arrays.get(name))
        paths[name] = {}
        for fname, fig in figs.items():
            path = os.path.join(out, "figures", fname)
            save_figure(fig, path)
            paths[name][fname] = path
    return paths


def write_report(
    config,
    results: dict,
    modules: dict,
    out: str,
    figures: dict,
    *,
    summary=None,
    command: str | None = None,
) -> str:
    """Write ``out/report.md`` for ``results`` (``modules``: study name -> module); returns its
    text."""
    names = results["studies"]
    title = (
        f"{modules[names[0]].TITLE}: {config.dataset}"
        if len(names) == 1
        else f"Boundary-aware quantization on {config.dataset}: {', '.join(names)}"
    )
    seeds = results["seeds"]
    rep = Report(
        title,
        intro=(
            f"Model `{results['model']}`, training seeds {seeds}, slice grid "
            f"{config.resolution}x{config.resolution}"
            + (" (quick settings: a smoke test, not a result)" if config.quick else "")
            + f". Float held-out accuracy {mean_std_cell(results, 'float_accuracy', '.4f')}. "
            "Numbers are means over seeds ± sample standard deviation (ddof = 1)."
        ),
    )
    sec = rep.section("Reproduce")
    if command is not None:
        sec.code(command, "bash")
    else:
        sec.code(
            f"from bq_jax import studies\nstudies.run(studies.{type(config).__name__}(...), OUT, "
            f"{names!r})",
            "python",
        )
    if summary is not None and summary.wall_time_s is not None:
        run = (
            f"the run that wrote this report took {summary.wall_time_s:.0f} s "
            f"({len(summary.computed)} parts computed, {len(summary.reused)} reused from "
            "earlier runs)."
        )
        times = list(summary.compute_s.values())
        if times and None not in times:
            sec.text(
                f"Computing its {len(times)} parts took {sum(times):.0f} s in all (timed when "
                f"each was computed, training or loading the float classifier included); {run}"
            )
        else:
            sec.text(run[0].upper() + run[1:])
    if results["findings"]:
        sec = rep.section("Findings, checked on these numbers")
        table(
            sec,
            [
                {
                    "study": f["study"],
                    "finding": f["finding"],
                    "holds": "undefined"
                    if f["holds"] is None
                    else ("yes" if f["holds"] else "**no**"),
                    "evidence": f["evidence"],
                }
                for f in results["findings"]
            ],
            ["study", "finding", "holds", "evidence"],
        )
    for name in names:
        module = modules[name]
        sec = rep.section(module.TITLE)
        module.report_section(sec, config, results[name], figures.get(name, {}))
    _settings_section(rep, config)
    return rep.write(os.path.join(out, "report.md"), check_links=True)


def _settings_section(rep, config) -> None:
    sec = rep.section("Settings and why")
    fingerprint = config.fingerprint()
    rows = [
        {"setting": k, "value": str(v), "meaning": HYPERPARAMETERS.get(k, "")}
        for k, v in fingerprint.items()
        if k != "config_type"
    ]
    table(sec, rows, ["setting", "value", "meaning"], left=("setting", "value", "meaning"))
    reasons = config.reasons()
    if reasons:
        sec.bullets(reasons)
