"""Results, reports and figures: the output layer of every study.

It sits above ``bq_jax.geometry`` in the layering: boundary maps take their masks, junctions
and Jaccard distances from ``bq_jax.geometry``, table formats from ``bq_jax.vocabulary`` and
Pearson r from ``bq_jax.stats``; it never imports pyplot (figures use the Agg canvas directly).

* Writing (:mod:`bq_jax.report.io`): :func:`write_json` / :func:`read_json` (deterministic,
  NaN/inf refused), :func:`write_text`, :func:`atomic_write`, :func:`save_figure` (PNG,
  byte-identical for the same figure); failures raise :class:`OutputError`.
* Markdown (:mod:`bq_jax.report.markdown`): :func:`markdown_table`,
  :func:`paper_comparison_table` (the paper's value beside ours), :class:`Report`.
* Figures (:mod:`bq_jax.report.figures`): :func:`plot_boundary_maps`,
  :func:`plot_metric_vs_bits`, :func:`plot_scatter`, :func:`plot_curves`.
"""

from bq_jax.report.figures import (
    CLASS_COLORS,
    OKABE_ITO,
    class_colors,
    plot_boundary_maps,
    plot_curves,
    plot_metric_vs_bits,
    plot_scatter,
    plot_slice_values,
)
from bq_jax.report.io import (
    FIGURE_DPI,
    OutputError,
    atomic_write,
    json_dumps,
    read_json,
    save_figure,
    to_jsonable,
    write_json,
    write_text,
)
from bq_jax.report.markdown import (
    MISSING,
    Report,
    Section,
    format_value,
    markdown_table,
    paper_comparison_rows,
    paper_comparison_table,
)

__all__ = [
    "CLASS_COLORS",
    "FIGURE_DPI",
    "MISSING",
    "OKABE_ITO",
    "OutputError",
    "Report",
    "Section",
    "atomic_write",
    "class_colors",
    "format_value",
    "json_dumps",
    "markdown_table",
    "paper_comparison_rows",
    "paper_comparison_table",
    "plot_boundary_maps",
    "plot_curves",
    "plot_metric_vs_bits",
    "plot_scatter",
    "plot_slice_values",
    "read_json",
    "save_figure",
    "to_jsonable",
    "write_json",
    "write_text",
]
