"""Markdown tables, paper-vs-ours comparison tables, and a small report builder.

Cells are formatted per column; a missing key or ``None`` is shown as ``—`` (an em dash).
NaN or infinity raises ``ValueError`` (never printed silently). Numbers are right-aligned,
text left-aligned, and columns are padded so the raw Markdown reads as a table too. A float in
a column named after a metric of ``bq_jax.vocabulary.METRICS`` (or its ``_std``) gets that
metric's format unless the table is given one.
"""

from __future__ import annotations

import math
import os
import posixpath
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from bq_jax._src.checks import is_real
from bq_jax.report.io import write_text
from bq_jax.vocabulary import STD_SUFFIX, metric_format

__all__ = [
    "MISSING",
    "format_value",
    "markdown_table",
    "paper_comparison_rows",
    "paper_comparison_table",
    "Report",
    "Section",
]

#: Cell text of a missing value (no key, or ``None``).
MISSING = "—"

#: Default format of a float cell (4 significant digits).
DEFAULT_FLOAT_FORMAT = ".4g"

Format = str | Callable[[Any], str]


def format_value(value: Any, fmt: Format | None = None, *, where: str = "value") -> str:
    """Format one table cell.

    ``None`` -> ``—``; bool -> ``yes``/``no``; int -> decimal; float -> ``fmt`` (a
    ``format()`` spec such as ``".3f"`` or ``".1%"``, default ``".4g"``); a tuple/list ->
    its elements formatted and joined by ``", "``; anything else -> ``str``. A callable ``fmt``
    gets the raw value and returns the text.

    Raises:
        ValueError: NaN or infinity (``where`` names the cell), or a ``fmt`` that does not apply.

    Example:
        >>> format_value(0.123456, ".3f"), format_value(None), format_value(8)
        ('0.123', '—', '8')
    """
    if value is None:
        return MISSING
    if callable(fmt):
        return str(fmt(value))
    if isinstance(value, (bool, np.bool_)):
        return "yes" if value else "no"
    if isinstance(value, (tuple, list)):
        return ", ".join(format_value(v, fmt, where=where) for v in value)
    if isinstance(value, (np.ndarray, np.generic)) and np.ndim(value) == 0:
        value = value.item()
    if is_real(value):
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"{where} is {value}; use None for a missing or undefined value")
        if fmt is None:
            return str(value) if isinstance(value, int) else format(value, DEFAULT_FLOAT_FORMAT)
        try:
            return format(value, fmt)
        except ValueError as e:
            raise ValueError(f"format {fmt!r} does not apply to {where}={value!r}: {e}") from e
    return str(value)


def _escape(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _cell(value: Any, fmt: Format | None, column: str, where: str) -> str:
    """:func:`format_value` of a cell of ``column``; without ``fmt`` a float takes the
    vocabulary's format of the column (``.4g`` for a column that is no metric and for a count,
    whose mean over seeds is not a whole number)."""
    if fmt is None and is_real(value) and not isinstance(value, (int, np.integer)):
        spec = metric_format(column)
        fmt = DEFAULT_FLOAT_FORMAT if spec.endswith("d") else spec
    return format_value(value, fmt, where=where)


def markdown_table(
    rows: Sequence[Mapping[str, Any]],
    columns: Sequence[str],
    *,
    formats: Mapping[str, Format] | None = None,
    headers: Mapping[str, str] | None = None,
    align: Mapping[str, str] | None = None,
) -> str:
    """A GitHub-flavoured Markdown table of ``rows`` (dicts), one column per key in ``columns``.

    Args:
        rows: the table rows; a row without a column's key shows ``—`` there.
        columns: the keys to show, in order.
        formats: per-column format (a ``format()`` spec like ``".3f"``, or a callable); see
            :func:`format_value`. Default: ints in decimal; floats in the vocabulary's format
            of the column (``bq_jax.vocabulary.metric_format``), ``.4g`` for other columns.
        headers: per-column header text (default: the key itself).
        align: per-column ``"left"`` or ``"right"``; default: right when every present value
            of the column is a number, else left.

    Returns:
        The table text, ending with a newline.

    Raises:
        ValueError: no columns, a ``formats``/``headers`` key that is not a column, or a
            NaN/inf cell.

    Example:
        >>> print(markdown_table([{"bits": 8, "flip_rate": 0.0}], ["bits", "flip_rate"],
        ...                      formats={"flip_rate": ".4f"}), end="")
        | bits | flip_rate |
        | ---: | --------: |
        |    8 |    0.0000 |
    """
    columns = list(columns)
    if not columns:
        raise ValueError("markdown_table needs at least one column")
    if len(set(columns)) != len(columns):
        raise ValueError(f"columns must be distinct, got {columns}")
    formats = dict(formats or {})
    headers = dict(headers or {})
    align = dict(align or {})
    for c, a in align.items():
        if a not in ("left", "right"):
            raise ValueError(f"align[{c!r}] must be 'left' or 'right', got {a!r}")
    for name, mapping in (("formats", formats), ("headers", headers), ("align", align)):
        unknown = sorted(set(mapping) - set(columns))
        if unknown:
            raise ValueError(f"{name} names columns that are not in columns: {unknown}")
    cells = []
    numeric = {c: True for c in columns}
    for i, row in enumerate(rows):
        if not isinstance(row, Mapping):
            raise ValueError(f"rows[{i}] must be a dict, got {type(row).__name__}")
        line = []
        for c in columns:
            v = row.get(c)
            if v is not None and not is_real(v):
                numeric[c] = False
            line.append(_escape(_cell(v, formats.get(c), c, f"rows[{i}][{c!r}]")))
        cells.append(line)
    right = {c: align.get(c, "right" if numeric[c] else "left") == "right" for c in columns}
    head = [_escape(str(headers.get(c, c))) for c in columns]
    widths = [max(3, len(head[k]), *(len(r[k]) for r in cells)) for k in range(len(columns))]

    def fmt_line(values: Sequence[str]) -> str:
        parts = [
            v.rjust(w) if right[c] else v.ljust(w)
            for v, w, c in zip(values, widths, columns, strict=True)
        ]
        return "| " + " | ".join(parts) + " |"

    sep = [
        "-" * (w - 1) + ":" if right[c] else "-" * w for w, c in zip(widths, columns, strict=True)
    ]
    lines = [fmt_line(head), "| " + " | ".join(sep) + " |"]
    lines += [fmt_line(r) for r in cells]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------- paper vs ours


def _lookup(paper: Mapping[Any, Any], key: Any) -> Any:
    """``paper[key]``; also matches an int key against its decimal string (JSON round trip)."""
    if key in paper:
        return paper[key]
    skey = str(key)
    for k, v in paper.items():
        if str(k) == skey:
            return v
    return None


def paper_comparison_rows(
    rows: Sequence[Mapping[str, Any]],
    *,
    key: str | Sequence[str],
    metrics: Sequence[str],
    paper: Mapping[Any, Mapping[str, Any]] | None,
    std_suffix: str = STD_SUFFIX,
) -> list[dict[str, Any]]:
    """Rows with our value of each metric beside the paper's.

    For each of our rows and each metric ``m`` the output row has ``m`` (ours), ``m_std``
    (ours, spread over seeds, if the row has it) and ``m_paper`` (the paper's value, or
    ``None`` where the paper gives none).

    Args:
        rows: our result rows (e.g. seed-averaged bit-sweep rows).
        key: the row key(s) that identify a row in ``paper`` (e.g. ``"bits"``, or
            ``("bits", "method")`` with tuple keys in ``paper``).
        metrics: the metric names to compare.
        paper: ``{key value: {metric: value}}`` (e.g. ``PAPER["digits"]["bits_sweep"]``);
            ``None`` when the paper states nothing. Integer keys also match their decimal
            string, so a table read back from JSON works.
        std_suffix: suffix of the spread key in our rows.

    Returns:
        A list of dicts: the key column(s), then ``m``, ``m_std``, ``m_paper`` per metric.

    Raises:
        ValueError: a row lacks a key column.

    Example:
        >>> paper_comparison_rows([{"bits": 8, "flip_rate": 0.0}], key="bits",
        ...                       metrics=["flip_rate"], paper={8: {"flip_rate": 0.0}})
        [{'bits': 8, 'flip_rate': 0.0, 'flip_rate_std': None, 'flip_rate_paper': 0.0}]
    """
    keys = [key] if isinstance(key, str) else list(key)
    out = []
    for i, row in enumerate(rows):
        missing = [k for k in keys if k not in row]
        if missing:
            raise ValueError(f"rows[{i}] lacks the key column(s) {missing}; it has {sorted(row)}")
        kval = row[keys[0]] if len(keys) == 1 else tuple(row[k] for k in keys)
        ref = _lookup(paper, kval) if paper else None
        new = {k: row[k] for k in keys}
        for m in metrics:
            new[m] = row.get(m)
            new[m + std_suffix] = row.get(m + std_suffix)
            new[m + "_paper"] = ref.get(m) if isinstance(ref, Mapping) else None
        out.append(new)
    return out


def paper_comparison_table(
    rows: Sequence[Mapping[str, Any]],
    *,
    key: str | Sequence[str],
    metrics: Sequence[str],
    paper: Mapping[Any, Mapping[str, Any]] | None,
    formats: Mapping[str, str] | None = None,
    std_suffix: str = STD_SUFFIX,
) -> str:
    """Markdown table: key column(s), then ``m (ours)`` and ``m (paper)`` for each metric.

    Our cell reads ``mean ± std`` when the row carries ``m_std`` (seeds); the paper's cell is
    ``—`` where the paper gives no value. See :func:`paper_comparison_rows` for the arguments;
    ``formats`` maps a metric to a ``format()`` spec used for ours, the spread and the paper's
    (default: the vocabulary's format of the metric, as in :func:`markdown_table`).

    Example:
        >>> jd = "boundary_jaccard_distance"  # vocabulary format .3f
        >>> print(paper_comparison_table(
        ...     [{"bits": 8, jd: 0.41, jd + "_std": 0.02}, {"bits": 6, jd: 0.6}],
        ...     key="bits", metrics=[jd], paper={8: {jd: 0.428}}), end="")
        | bits | boundary_jaccard_distance (ours) | boundary_jaccard_distance (paper) |
        | ---: | -------------------------------: | --------------------------------: |
        |    8 |                    0.410 ± 0.020 |                             0.428 |
        |    6 |                            0.600 |                                 — |
    """
    keys = [key] if isinstance(key, str) else list(key)
    formats = dict(formats or {})
    unknown = sorted(set(formats) - set(metrics) - set(keys))
    if unknown:
        raise ValueError(f"formats names columns that are neither metrics nor keys: {unknown}")
    comp = paper_comparison_rows(
        rows,
        key=keys if len(keys) > 1 else keys[0],
        metrics=metrics,
        paper=paper,
        std_suffix=std_suffix,
    )
    table_rows = []
    columns = list(keys)
    headers: dict[str, str] = {}
    for m in metrics:
        columns += [m, m + "_paper"]
        headers[m] = f"{m} (ours)"
        headers[m + "_paper"] = f"{m} (paper)"
    for i, row in enumerate(comp):
        new = {k: row[k] for k in keys}
        for m in metrics:
            fmt = formats.get(m)
            ours = _cell(row[m], fmt, m, f"rows[{i}][{m!r}]")
            std = row[m + std_suffix]
            if row[m] is not None and std is not None:
                ours += " ± " + _cell(std, fmt, m, f"rows[{i}][{m + std_suffix!r}]")
            new[m] = ours if row[m] is not None else None
            new[m + "_paper"] = _cell(row[m + "_paper"], fmt, m, f"paper[{i}][{m!r}]")
        table_rows.append(new)
    return markdown_table(
        table_rows,
        columns,
        formats={k: formats[k] for k in keys if k in formats},
        headers=headers,
        align={c: "right" for c in columns},
    )


# ---------------------------------------------------------------------------- report builder


class Section:
    """One section of a :class:`Report`: a heading and a list of blocks, in order."""

    def __init__(self, title: str, level: int = 2):
        if not (isinstance(level, int) and 2 <= level <= 6):
            raise ValueError(f"level must be an int in 2..6 (1 is the report title), got {level!r}")
        self.title = title
        self.level = level
        self._blocks: list[tuple[str, Any]] = []

    def text(self, text: str) -> Section:
        """Add a paragraph of Markdown text."""
        self._blocks.append(("text", str(text).strip("\n")))
        return self

    def bullets(self, items: Sequence[str]) -> Section:
        """Add a bulleted list."""
        self._blocks.append(("text", "\n".join(f"- {item}" for item in items)))
        return self

    def code(self, text: str, language: str = "") -> Section:
        """Add a fenced code block (e.g. the command that reproduces the results)."""
        self._blocks.append(("text", f"```{language}\n{str(text).strip(chr(10))}\n```"))
        return self

    def table(
        self,
        rows: Sequence[Mapping[str, Any]],
        columns: Sequence[str],
        *,
        formats: Mapping[str, Format] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> Section:
        """Add a :func:`markdown_table` (rendered now, so bad cells fail early)."""
        self._blocks.append(
            ("text", markdown_table(rows, columns, formats=formats, headers=headers).rstrip("\n"))
        )
        return self

    def markdown(self, text: str) -> Section:
        """Add pre-rendered Markdown (e.g. a :func:`paper_comparison_table`) verbatim."""
        self._blocks.append(("text", str(text).rstrip("\n")))
        return self

    def figure(self, path: str | os.PathLike, caption: str = "") -> Section:
        """Add an image link to a figure file.

        Args:
            path: the figure's file path (absolute or relative to the current directory),
                the same path given to :func:`bq_jax.report.save_figure`. The link is written
                relative to the report file.
            caption: alt text and caption.
        """
        self._blocks.append(("figure", (os.path.abspath(os.fspath(path)), str(caption))))
        return self

    def _render(self, base_dir: str | None, check_links: bool) -> str:
        out = ["#" * self.level + " " + self.title]
        for kind, content in self._blocks:
            if kind == "text":
                out.append(content)
                continue
            path, caption = content
            if check_links and not os.path.isfile(path):
                raise ValueError(
                    f"figure {path!r} of section {self.title!r} does not exist; save the figure "
                    "before writing the report (or pass check_links=False)"
                )
            link = os.path.relpath(path, base_dir) if base_dir is not None else path
            link = link.replace(os.sep, posixpath.sep)
            text = f"![{caption}]({link})"
            if caption:
                text += f"\n\n*{caption}*"
            out.append(text)
        return "\n\n".join(out)


class Report:
    """A Markdown report: a title, an optional intro, then sections.

    Example:
        >>> r = Report("Bits sweep — digits")
        >>> _ = r.section("Results").table([{"bits": 8, "flip_rate": 0.0}], ["bits", "flip_rate"])
        >>> print(r.render(), end="")
        # Bits sweep — digits
        <BLANKLINE>
        ## Results
        <BLANKLINE>
        | bits | flip_rate |
        | ---: | --------: |
        |    8 |    0.0000 |
    """

    def __init__(self, title: str, intro: str | None = None):
        self.title = title
        self.intro = intro
        self.sections: list[Section] = []

    def section(self, title: str, *, level: int = 2) -> Section:
        """Append and return a new section."""
        sec = Section(title, level)
        self.sections.append(sec)
        return sec

    def render(
        self, *, base_dir: str | os.PathLike | None = None, check_links: bool = False
    ) -> str:
        """The report as Markdown text (ends with a newline).

        Args:
            base_dir: directory figure links are made relative to; ``None`` keeps absolute
                paths.
            check_links: raise ``ValueError`` when a figure file does not exist.
        """
        base = os.path.abspath(os.fspath(base_dir)) if base_dir is not None else None
        parts = [f"# {self.title}"]
        if self.intro:
            parts.append(self.intro.strip("\n"))
        parts += [s._render(base, check_links) for s in self.sections]
        return "\n\n".join(parts) + "\n"

    def write(self, path: str | os.PathLike, *, check_links: bool = True) -> str:
        """Render with figure links relative to ``path``'s directory and write atomically.

        Returns:
            The rendered text.

        Raises:
            ValueError: a linked figure does not exist (with ``check_links``).
            OutputError: the file cannot be written.
        """
        path = os.fspath(path)
        text = self.render(base_dir=os.path.dirname(os.path.abspath(path)), check_links=check_links)
        write_text(path, text)
        return text
