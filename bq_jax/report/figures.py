"""Figures for studies: boundary maps, metric vs bits, calibration-vs-held-out scatter, curves.

Every function builds a fresh ``matplotlib.figure.Figure`` with an Agg canvas and returns it;
nothing touches pyplot or its global figure list, so the functions are safe to call from
threads and need no display. Save with :func:`bq_jax.report.save_figure`. Font sizes are set
explicitly (not read from ``rcParams``) so a figure looks the same in every session.

Colours are colour-blind friendly: lines and markers use the Okabe-Ito palette; class regions
use Paul Tol's "muted" palette (10 classes; more classes fall back to a 20-colour map) drawn
at reduced opacity so boundary overlays stand out.

Grid convention (that of ``bq_jax.geometry``): a label map ``labels[i, j]`` is a grid of
points, row ``i`` along the slice's second axis (drawn upwards), column ``j`` along its
first axis (drawn to the right). Boundary masks, triple junctions and the boundary Jaccard
distance are computed by ``bq_jax.geometry`` (:func:`~bq_jax.geometry.boundary_mask`,
:func:`~bq_jax.geometry.triple_junctions`, :func:`~bq_jax.geometry.boundary_jaccard_distance`);
a triple junction is drawn at the centre of its 2x2 block.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import ListedColormap, to_rgba
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from bq_jax.geometry import boundary_jaccard_distance, boundary_mask, triple_junctions
from bq_jax.stats import pearson_r

__all__ = [
    "OKABE_ITO",
    "CLASS_COLORS",
    "class_colors",
    "plot_boundary_maps",
    "plot_metric_vs_bits",
    "plot_scatter",
    "plot_curves",
    "plot_slice_values",
]

#: Okabe & Ito (2008) colour-blind-safe palette, black last (lines, markers, series).
OKABE_ITO = (
    "#0072B2",  # blue
    "#D55E00",  # vermillion
    "#009E73",  # bluish green
    "#CC79A7",  # reddish purple
    "#E69F00",  # orange
    "#56B4E9",  # sky blue
    "#F0E442",  # yellow
    "#000000",  # black
)

#: Paul Tol's "muted" qualitative palette (colour-blind safe), one colour per class 0..9.
CLASS_COLORS = (
    "#88CCEE",
    "#CC6677",
    "#DDCC77",
    "#117733",
    "#332288",
    "#AA4499",
    "#44AA99",
    "#999933",
    "#882255",
    "#DDDDDD",
)

# Overlay colours of boundary maps: float-only, variant-only, both; junction markers.
_FLOAT_ONLY = "#0072B2"  # blue
_VARIANT_ONLY = "#D55E00"  # vermillion
_BOTH = "#000000"  # black
_JUNCTION_FACE = "#F0E442"  # yellow, black edge
_CLASS_ALPHA = 0.45

_TITLE_SIZE = 11
_LABEL_SIZE = 10
_TICK_SIZE = 8.5
_LEGEND_SIZE = 8.5


def _new_figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _style_axes(ax) -> None:
    ax.tick_params(labelsize=_TICK_SIZE)
    ax.grid(True, color="#E5E5E5", linewidth=0.6)
    ax.set_axisbelow(True)


def class_colors(num_classes: int) -> list[str | tuple]:
    """Colour of each class 0..num_classes-1, the same in every panel and figure.

    Up to 10 classes use :data:`CLASS_COLORS`; up to 20 use matplotlib's ``tab20``; beyond
    that, evenly spaced hues of ``hsv``.

    Example:
        >>> class_colors(3)
        ['#88CCEE', '#CC6677', '#DDCC77']
    """
    if not (isinstance(num_classes, (int, np.integer)) and num_classes >= 1):
        raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
    if num_classes <= len(CLASS_COLORS):
        return list(CLASS_COLORS[:num_classes])
    import matplotlib

    if num_classes <= 20:
        cmap = matplotlib.colormaps["tab20"]
        return [cmap(k) for k in range(num_classes)]
    cmap = matplotlib.colormaps["hsv"]
    return [cmap(k / num_classes) for k in range(num_classes)]


# ---------------------------------------------------------------------------- boundary maps


def _check_label_map(labels: Any, name: str) -> np.ndarray:
    arr = np.asarray(labels)
    if arr.ndim != 2:
        raise ValueError(f"{name} must be a 2-D label map [R, C], got shape {arr.shape}")
    if arr.dtype.kind not in "iub":
        raise ValueError(f"{name} must hold integer class labels, got dtype {arr.dtype}")
    if arr.size and arr.min() < 0:
        raise ValueError(f"{name} has negative labels (min {arr.min()}); labels are 0..K-1")
    if arr.size and arr.max() > np.iinfo(np.int32).max:
        raise ValueError(f"{name} has a label above int32 (max {arr.max()}); labels are 0..K-1")
    return arr.astype(np.int32)


def _grid_geometry(shape: tuple[int, int], extent) -> tuple[tuple, Callable, Callable]:
    """imshow extent plus maps from (fractional) column/row index to plot coordinates."""
    rows, cols = shape
    if extent is None:
        u0, u1, v0, v1 = 0.0, float(cols - 1), 0.0, float(rows - 1)
    else:
        if len(extent) != 4:
            raise ValueError(
                f"extent must be (u_min, u_max, v_min, v_max), the coordinates of the first "
                f"and last grid points; got {extent!r}"
            )
        u0, u1, v0, v1 = (float(e) for e in extent)
        if not all(math.isfinite(e) for e in (u0, u1, v0, v1)) or u1 <= u0 or v1 <= v0:
            raise ValueError(
                f"extent must be finite with u_min < u_max and v_min < v_max, got {extent!r}"
            )
    du = (u1 - u0) / (cols - 1) if cols > 1 else 1.0
    dv = (v1 - v0) / (rows - 1) if rows > 1 else 1.0
    im_extent = (u0 - du / 2, u0 + (cols - 0.5) * du, v0 - dv / 2, v0 + (rows - 0.5) * dv)
    return im_extent, (lambda j: u0 + j * du), (lambda i: v0 + i * dv)


def _overlay_rgba(float_mask: np.ndarray, variant_mask: np.ndarray | None) -> np.ndarray:
    rgba = np.zeros(float_mask.shape + (4,), dtype=np.float64)
    if variant_mask is None:
        rgba[float_mask] = to_rgba(_FLOAT_ONLY)
        return rgba
    rgba[float_mask & ~variant_mask] = to_rgba(_FLOAT_ONLY)
    rgba[variant_mask & ~float_mask] = to_rgba(_VARIANT_ONLY)
    rgba[float_mask & variant_mask] = to_rgba(_BOTH)
    return rgba


def plot_boundary_maps(
    labels_float: Any,
    labels_variants: Any,
    *,
    extent: Sequence[float] | None = None,
    titles: Sequence[str] | None = None,
    junctions: bool = True,
    num_classes: int | None = None,
    axis_labels: tuple[str, str] = ("u1", "u2"),
    panel_size: float = 3.2,
    equal_aspect: bool = True,
) -> Figure:
    """A row of label-map panels: the float model, then each quantized variant.

    Each panel shows the class regions (one colour per class, the same in every panel). The
    float panel overlays the float boundary mask; each variant panel overlays the float
    boundary and the variant's boundary in two colours, with their overlap in a third, so
    moved boundary cells are visible at a glance. Triple-junction cells (2x2 blocks with >= 3
    labels, the paper's multiclass junctions) of the panel's own map are marked at the block
    centres. The title of a variant panel also states its ``boundary_jaccard_distance``
    ``1 - |B_F & B_Q| / |B_F | B_Q|`` (paper: slice-boundary Jaccard) and every panel's title
    its ``triple_junction_count``.

    Args:
        labels_float: int ``[R, C]`` label map of the float model on the slice grid.
        labels_variants: int ``[V, R, C]`` (or a sequence of ``[R, C]``) label maps of the
            quantized variants on the same grid.
        extent: ``(u_min, u_max, v_min, v_max)``, slice coordinates of the first and last grid
            points (a ``Slice``'s range); default: grid indices.
        titles: ``V + 1`` panel titles (float first); default ``"float"``, ``"variant k"``.
        junctions: mark triple-junction cells.
        num_classes: number of classes K (fixes the colours); default ``max label + 1``.
        axis_labels: the two slice-axis labels.
        panel_size: side of one panel in inches.
        equal_aspect: one unit of u and v the same length on screen (true slice geometry:
            angles between boundaries are preserved); False stretches the grid to a square.

    Returns:
        A ``Figure`` with ``V + 1`` axes.

    Raises:
        ValueError: maps that are not 2-D integer grids of one shape, a wrong number of
            titles, labels >= ``num_classes``, or a bad ``extent``.

    Example:
        >>> f = np.array([[0, 0, 1], [0, 2, 1], [2, 2, 1]])
        >>> fig = plot_boundary_maps(f, [f, np.where(f == 2, 0, f)], num_classes=3)
        >>> len(fig.axes)
        3
    """
    lf = _check_label_map(labels_float, "labels_float")
    if isinstance(labels_variants, np.ndarray) or hasattr(labels_variants, "shape"):
        stack = np.asarray(labels_variants)
        if stack.ndim == 2:
            raise ValueError(
                f"labels_variants must be [V, R, C] (a stack of maps), got one map of shape "
                f"{stack.shape}; wrap it as labels[None] or [labels]"
            )
        if stack.ndim != 3:
            raise ValueError(f"labels_variants must be [V, R, C], got shape {stack.shape}")
        variants = [stack[k] for k in range(stack.shape[0])]
    else:
        variants = list(labels_variants)
    lvs = [_check_label_map(v, f"labels_variants[{k}]") for k, v in enumerate(variants)]
    for k, lv in enumerate(lvs):
        if lv.shape != lf.shape:
            raise ValueError(
                f"labels_variants[{k}] has shape {lv.shape} but labels_float has {lf.shape}; "
                "all maps must come from the same slice grid"
            )
    n_panels = 1 + len(lvs)
    if titles is None:
        titles = ["float"] + [f"variant {k}" for k in range(len(lvs))]
    else:
        titles = list(titles)
        if len(titles) != n_panels:
            raise ValueError(
                f"titles must have {n_panels} entries (float first, then one per variant), "
                f"got {len(titles)}"
            )
    max_label = max(int(m.max()) if m.size else 0 for m in [lf, *lvs])
    if num_classes is None:
        num_classes = max_label + 1
    elif not (isinstance(num_classes, (int, np.integer)) and num_classes >= 1):
        raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
    elif max_label >= num_classes:
        raise ValueError(f"label {max_label} found but num_classes={num_classes}")
    colors = class_colors(int(num_classes))
    cmap = ListedColormap(colors)
    im_extent, col_to_u, row_to_v = _grid_geometry(lf.shape, extent)
    float_mask = np.asarray(boundary_mask(lf))
    aspect = "equal" if equal_aspect else "auto"

    height = panel_size
    if equal_aspect:
        ratio = (im_extent[3] - im_extent[2]) / (im_extent[1] - im_extent[0])
        height = panel_size * min(max(ratio, 0.35), 2.5)
    n_stat_lines = (1 if lvs else 0) + (1 if junctions else 0)
    fig = _new_figure(panel_size * n_panels, height + 1.3 + 0.18 * n_stat_lines)
    axes = fig.subplots(1, n_panels, sharex=True, sharey=True, squeeze=False)[0]
    for k, (ax, labels) in enumerate(zip(axes, [lf, *lvs], strict=True)):
        ax.imshow(
            labels,
            cmap=cmap,
            vmin=-0.5,
            vmax=num_classes - 0.5,
            origin="lower",
            extent=im_extent,
            interpolation="nearest",
            alpha=_CLASS_ALPHA,
            aspect=aspect,
        )
        variant_mask = None if k == 0 else np.asarray(boundary_mask(labels))
        ax.imshow(
            _overlay_rgba(float_mask, variant_mask),
            origin="lower",
            extent=im_extent,
            interpolation="nearest",
            aspect=aspect,
        )
        tj = np.asarray(triple_junctions(labels))
        stats = []
        if k > 0:
            jac = float(boundary_jaccard_distance(float_mask, variant_mask))
            stats.append(f"boundary_jaccard_distance={jac:.3f}")
        if junctions:
            stats.append(f"triple_junction_count={int(tj.sum())}")
            rows_idx, cols_idx = np.nonzero(tj)
            ax.scatter(
                col_to_u(cols_idx + 0.5),
                row_to_v(rows_idx + 0.5),
                s=22,
                marker="o",
                facecolors=_JUNCTION_FACE,
                edgecolors="black",
                linewidths=0.8,
                zorder=3,
            )
        title = "\n".join([titles[k], *stats])
        ax.set_title(title, fontsize=_LABEL_SIZE)
        ax.set_xlabel(axis_labels[0], fontsize=_LABEL_SIZE)
        if k == 0:
            ax.set_ylabel(axis_labels[1], fontsize=_LABEL_SIZE)
        ax.tick_params(labelsize=_TICK_SIZE)
        ax.set_xlim(im_extent[0], im_extent[1])
        ax.set_ylim(im_extent[2], im_extent[3])

    handles = [
        Patch(color=_FLOAT_ONLY, label="float boundary only" if lvs else "float boundary"),
    ]
    if lvs:
        handles += [
            Patch(color=_VARIANT_ONLY, label="quantized boundary only"),
            Patch(color=_BOTH, label="both boundaries"),
        ]
    if junctions:
        handles.append(
            Line2D(
                [],
                [],
                linestyle="none",
                marker="o",
                markerfacecolor=_JUNCTION_FACE,
                markeredgecolor="black",
                label="triple junction",
            )
        )
    present = np.unique(np.concatenate([m.ravel() for m in [lf, *lvs]]))
    handles += [
        Patch(color=colors[int(c)], alpha=_CLASS_ALPHA, label=f"class {int(c)}") for c in present
    ]
    fig.legend(
        handles=handles,
        loc="outside lower center",
        ncol=min(len(handles), max(4, 2 * n_panels + 1)),
        fontsize=_LEGEND_SIZE,
        frameon=False,
    )
    return fig


# ---------------------------------------------------------------------------- metric vs bits


def _finite_number(value: Any, what: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, (bool, np.bool_)) or not isinstance(
        value, (int, float, np.integer, np.floating)
    ):
        raise ValueError(f"{what} must be a number or None, got {value!r}")
    v = float(value)
    if not math.isfinite(v):
        raise ValueError(f"{what} is {v}; store None for an undefined value")
    return v


def plot_metric_vs_bits(
    rows: Sequence[Mapping[str, Any]],
    *,
    metric: str | Sequence[str],
    bits_key: str = "bits",
    by: str | None = None,
    paper: Mapping[Any, Mapping[str, Any]] | None = None,
    title: str | None = None,
    logy: bool = False,
) -> Figure:
    """One panel per metric: the metric against bit width, one line per group.

    Rows that share a bit width (and group) are seeds: the line shows their mean and the
    error bars their sample standard deviation (ddof=1). A single row per point that carries
    ``<metric>_std`` (rows already averaged by :func:`bq_jax.stats.mean_rows`) uses that as
    its error bar. ``None`` values (undefined for that row) are left out.

    Args:
        rows: result rows (dicts), each with ``bits_key`` and the metric(s).
        metric: a metric key of ``bq_jax.vocabulary.METRICS`` (e.g.
            ``"boundary_jaccard_distance"``) or several (one panel each).
        bits_key: the row key holding the bit width.
        by: optional row key that splits rows into lines (e.g. ``"range_method"``).
        paper: the paper's values, ``{bits: {metric: value}}`` (the shape of
            ``bq_jax.studies.paper.PAPER[dataset]["bits_sweep"]``); drawn as black stars.
        title: figure title.
        logy: logarithmic y axis.

    Returns:
        A ``Figure`` with one axes per metric.

    Raises:
        ValueError: no rows, a metric no row has (the message lists the available keys), a
            row without ``bits_key`` or ``by``, or a non-finite value.

    Example:
        >>> rows = [{"bits": b, "flip_rate": 0.1 / b} for b in (2, 4, 8)]
        >>> len(plot_metric_vs_bits(rows, metric="flip_rate").axes)
        1
    """
    rows = list(rows)
    if not rows:
        raise ValueError("plot_metric_vs_bits needs at least one row")
    metrics = [metric] if isinstance(metric, str) else list(metric)
    if not metrics:
        raise ValueError("metric must name at least one metric")
    available = sorted({k for r in rows for k in r})
    for m in metrics:
        if not any(m in r for r in rows):
            raise ValueError(f"unknown metric key {m!r}; the rows have: {', '.join(available)}")
    for i, r in enumerate(rows):
        if bits_key not in r:
            raise ValueError(f"row {i} has no {bits_key!r} key (bits_key); it has {sorted(r)}")
        if by is not None and by not in r:
            raise ValueError(f"row {i} has no {by!r} key (by); it has {sorted(r)}")

    groups: list[Any] = []
    for r in rows:
        g = r[by] if by is not None else None
        if g not in groups:
            groups.append(g)

    fig = _new_figure(4.2 * len(metrics), 3.4)
    axes = fig.subplots(1, len(metrics), squeeze=False)[0]
    all_bits: set[float] = set()
    for ax, m in zip(axes, metrics, strict=True):
        for gi, g in enumerate(groups):
            points: dict[float, list[float]] = {}
            stds: dict[float, float | None] = {}
            for i, r in enumerate(rows):
                if by is not None and r[by] != g:
                    continue
                b = _finite_number(r[bits_key], f"row {i} {bits_key!r}")
                if b is None:
                    raise ValueError(f"row {i} has {bits_key}=None")
                v = _finite_number(r.get(m), f"row {i} {m!r}")
                if v is None:
                    continue
                points.setdefault(b, []).append(v)
                stds[b] = _finite_number(r.get(f"{m}_std"), f"row {i} '{m}_std'")
            if not points:
                continue
            xs = np.asarray(sorted(points), dtype=np.float64)
            all_bits.update(xs.tolist())
            means = np.array([np.mean(points[b]) for b in xs.tolist()])
            errs = np.array(
                [
                    np.std(points[b], ddof=1)
                    if len(points[b]) > 1
                    else (stds[b] if stds[b] is not None else 0.0)
                    for b in xs.tolist()
                ]
            )
            label = None if by is None else f"{by}={g}"
            color = OKABE_ITO[gi % len(OKABE_ITO)]
            ax.errorbar(
                xs,
                means,
                yerr=errs if np.any(errs > 0) else None,
                color=color,
                marker="o",
                markersize=4.5,
                linewidth=1.6,
                capsize=3,
                label=label,
            )
        if paper is not None:
            px, py = [], []
            for b, vals in paper.items():
                if isinstance(vals, Mapping) and m in vals:
                    v = _finite_number(vals[m], f"paper[{b!r}][{m!r}]")
                    if v is not None:
                        px.append(float(b))
                        py.append(v)
            if px:
                all_bits.update(px)
                ax.scatter(
                    px,
                    py,
                    marker="*",
                    s=110,
                    color="black",
                    zorder=4,
                    label="paper",
                )
        ax.set_xlabel(bits_key, fontsize=_LABEL_SIZE)
        ax.set_ylabel(m, fontsize=_LABEL_SIZE)
        if logy:
            ax.set_yscale("log")
        _style_axes(ax)
        handles, labels = ax.get_legend_handles_labels()
        if labels:
            order = sorted(range(len(labels)), key=lambda i: labels[i] == "paper")
            ax.legend(
                [handles[i] for i in order],
                [labels[i] for i in order],
                fontsize=_LEGEND_SIZE,
                frameon=False,
            )
    ticks = sorted(all_bits)
    for ax in axes:
        if ticks:
            ax.set_xticks(ticks)
            ax.set_xticklabels([f"{t:g}" for t in ticks])
    if title:
        fig.suptitle(title, fontsize=_TITLE_SIZE)
    return fig


# ---------------------------------------------------------------------------- scatter


def plot_scatter(
    x: Any,
    y: Any,
    *,
    xlabel: str,
    ylabel: str,
    annotate: Sequence[str] | None = None,
    identity_line: bool = True,
    fit: bool = True,
    groups: Sequence[Any] | None = None,
    title: str | None = None,
) -> Figure:
    """Scatter ``y`` against ``x`` (e.g. calibration vs held-out boundary Jaccard distance).

    The title states Pearson ``r`` (:func:`pearson_r`) and ``n``. Optional dashed identity
    line ``y = x`` and least-squares fit ``y = a x + b``.

    Args:
        x, y: 1-D sequences of the same length (>= 1), finite.
        xlabel, ylabel: axis labels, the project's metric keys (e.g.
            ``"calibration_boundary_jaccard_distance"``).
        annotate: one text label per point (e.g. ``"4-bit nearest"``).
        identity_line: draw ``y = x``.
        fit: draw the least-squares line (when x is not constant).
        groups: one group per point (e.g. the variant family); each group a colour + legend.
        title: text put before the ``r`` line.

    Returns:
        A ``Figure`` with one axes.

    Raises:
        ValueError: lengths differ, no points, non-finite values, or ``annotate``/``groups``
            of the wrong length.

    Example:
        >>> fig = plot_scatter([0.1, 0.5, 0.9], [0.12, 0.48, 0.95],
        ...                    xlabel="calibration_boundary_jaccard_distance",
        ...                    ylabel="heldout_boundary_jaccard_distance")
        >>> fig.axes[0].get_title().startswith("Pearson r = 0.99")
        True
    """
    xa = np.asarray(x, dtype=np.float64)
    ya = np.asarray(y, dtype=np.float64)
    if xa.ndim != 1 or ya.ndim != 1 or xa.shape != ya.shape:
        raise ValueError(
            f"x and y must be 1-D of the same length, got shapes {xa.shape} and {ya.shape}"
        )
    if xa.size == 0:
        raise ValueError("plot_scatter needs at least one point")
    if not (np.all(np.isfinite(xa)) and np.all(np.isfinite(ya))):
        raise ValueError("x and y must be finite (NaN/inf found)")
    n = xa.size
    for name, seq in (("annotate", annotate), ("groups", groups)):
        if seq is not None and len(seq) != n:
            raise ValueError(f"{name} must have one entry per point ({n}), got {len(seq)}")

    fig = _new_figure(4.6, 4.2)
    ax = fig.add_subplot()
    if groups is None:
        ax.scatter(xa, ya, s=30, color=OKABE_ITO[0], edgecolors="white", linewidths=0.5, zorder=3)
    else:
        order: list[Any] = []
        for g in groups:
            if g not in order:
                order.append(g)
        garr = list(groups)
        for gi, g in enumerate(order):
            sel = np.array([gg == g for gg in garr])
            ax.scatter(
                xa[sel],
                ya[sel],
                s=30,
                color=OKABE_ITO[gi % len(OKABE_ITO)],
                edgecolors="white",
                linewidths=0.5,
                zorder=3,
                label=str(g),
            )
    lo = float(min(xa.min(), ya.min()))
    hi = float(max(xa.max(), ya.max()))
    pad = 0.05 * (hi - lo) if hi > lo else 0.05 * max(abs(hi), 1.0)
    lo, hi = lo - pad, hi + pad
    if identity_line:
        ax.plot([lo, hi], [lo, hi], linestyle="--", color="#777777", linewidth=1.0, label="y = x")
    if fit and n >= 2 and np.ptp(xa) > 0:
        slope, intercept = np.polyfit(xa, ya, 1)
        ax.plot(
            [lo, hi],
            [slope * lo + intercept, slope * hi + intercept],
            color=OKABE_ITO[1],
            linewidth=1.3,
            label=f"fit y = {slope:.3g} x {'-' if intercept < 0 else '+'} {abs(intercept):.3g}",
        )
    if annotate is not None:
        for xi, yi, text in zip(xa, ya, annotate, strict=True):
            ax.annotate(
                str(text),
                (xi, yi),
                xytext=(4, 3),
                textcoords="offset points",
                fontsize=7.5,
                color="#333333",
            )
    r = pearson_r(xa, ya)
    r_text = f"Pearson r = {r:.3f}" if r is not None else "Pearson r undefined"
    r_text += f" (n = {n})"
    ax.set_title(f"{title}\n{r_text}" if title else r_text, fontsize=_LABEL_SIZE)
    ax.set_xlabel(xlabel, fontsize=_LABEL_SIZE)
    ax.set_ylabel(ylabel, fontsize=_LABEL_SIZE)
    if identity_line:
        ax.set_xlim(lo, hi)
        ax.set_ylim(lo, hi)
        ax.set_aspect("equal", adjustable="box")
    _style_axes(ax)
    if ax.get_legend_handles_labels()[1]:
        ax.legend(fontsize=_LEGEND_SIZE, frameon=False, loc="upper left")
    return fig


# ---------------------------------------------------------------------------- curves


def plot_curves(
    curves: Mapping[str, tuple[Any, Any]],
    *,
    xlabel: str,
    ylabel: str,
    title: str | None = None,
    logy: bool = False,
    markers: bool = False,
    vlines: Mapping[str, float] | None = None,
) -> Figure:
    """Several named ``(x, y)`` curves on one axes (loss along a line, training curves).

    Args:
        curves: ``{name: (x, y)}``, each a pair of 1-D sequences of equal length; drawn in
            insertion order, one colour each.
        xlabel, ylabel: axis labels (e.g. ``"t"``, ``"loss"``).
        title: axes title.
        logy: logarithmic y axis (all y must then be > 0).
        markers: draw a marker at every point.
        vlines: ``{label: x}`` vertical reference lines (e.g. the chosen stopping point).

    Returns:
        A ``Figure`` with one axes.

    Raises:
        ValueError: no curves, x/y of different lengths or not 1-D, non-finite values, or
            non-positive y with ``logy``.

    Example:
        >>> fig = plot_curves({"train": ([0, 1, 2], [1.0, 0.5, 0.3])}, xlabel="epoch",
        ...                   ylabel="loss")
        >>> len(fig.axes)
        1
    """
    if not curves:
        raise ValueError("plot_curves needs at least one curve")
    fig = _new_figure(5.2, 3.6)
    ax = fig.add_subplot()
    for ci, (name, xy) in enumerate(curves.items()):
        if not (isinstance(xy, (tuple, list)) and len(xy) == 2):
            raise ValueError(f"curve {name!r} must be a pair (x, y)")
        xa = np.asarray(xy[0], dtype=np.float64)
        ya = np.asarray(xy[1], dtype=np.float64)
        if xa.ndim != 1 or ya.ndim != 1 or xa.shape != ya.shape or xa.size == 0:
            raise ValueError(
                f"curve {name!r}: x and y must be non-empty 1-D of the same length, got shapes "
                f"{xa.shape} and {ya.shape}"
            )
        if not (np.all(np.isfinite(xa)) and np.all(np.isfinite(ya))):
            raise ValueError(f"curve {name!r} has NaN/inf values")
        if logy and np.any(ya <= 0):
            raise ValueError(f"curve {name!r} has y <= 0, which a log axis (logy=True) cannot show")
        ax.plot(
            xa,
            ya,
            color=OKABE_ITO[ci % len(OKABE_ITO)],
            linewidth=1.6,
            marker="o" if markers else None,
            markersize=3.5,
            label=str(name),
        )
    for vi, (label, xv) in enumerate((vlines or {}).items()):
        xv = _finite_number(xv, f"vlines[{label!r}]")
        ax.axvline(
            xv,
            color="#555555",
            linestyle=(0, (4, 2 + 2 * vi)),
            linewidth=1.0,
            label=str(label),
        )
    ax.set_xlabel(xlabel, fontsize=_LABEL_SIZE)
    ax.set_ylabel(ylabel, fontsize=_LABEL_SIZE)
    if logy:
        ax.set_yscale("log")
    if title:
        ax.set_title(title, fontsize=_LABEL_SIZE)
    _style_axes(ax)
    ax.legend(fontsize=_LEGEND_SIZE, frameon=False)
    return fig


def plot_slice_values(
    groups: Sequence[str],
    series: Mapping[str, Sequence[Sequence[float]]],
    *,
    ylabel: str,
    intervals: Mapping[str, Sequence[tuple[float, float] | None]] | None = None,
    threshold: float | None = None,
    title: str | None = None,
) -> Figure:
    """Strip plot of per-slice values: one column of dots per (group, series), e.g. the
    calibration and the held-out boundary Jaccard distance of each plane of a slice family, for
    every quantized variant.

    Each series (e.g. ``"calibration"``, ``"heldout"``) gets one colour and a small horizontal
    offset; its dots are jittered deterministically (a fixed pattern, no RNG) so that equal
    values stay visible. The mean of each column is a black bar; ``intervals`` (per series, one
    ``(low, high)`` or None per group) are drawn as vertical lines through it.

    Args:
        groups: x-axis labels, one per group (e.g. ``"8b"``, ``"4b adaround"``).
        series: series name -> one sequence of per-slice values per group (finite).
        ylabel: the metric key.
        intervals: series name -> per-group confidence intervals of the mean.
        threshold: draw a dashed horizontal line (e.g. tau_J).
        title: axes title.

    Returns:
        A ``Figure`` with one axes.

    Raises:
        ValueError: no groups, a series whose length differs from ``groups``, non-finite values.

    Example:
        >>> fig = plot_slice_values(["8b", "4b"], {"calibration": [[0.1, 0.2], [0.5, 0.7]],
        ...                                        "heldout": [[0.15, 0.1], [0.6, 0.8]]},
        ...                         ylabel="boundary_jaccard_distance")
        >>> len(fig.axes[0].get_xticklabels())
        2
    """
    groups = [str(g) for g in groups]
    if not groups or not series:
        raise ValueError("plot_slice_values needs at least one group and one series")
    for name, vals in series.items():
        if len(vals) != len(groups):
            raise ValueError(
                f"series {name!r} has {len(vals)} value lists for {len(groups)} groups"
            )
        for v in vals:
            if not np.all(np.isfinite(np.asarray(v, np.float64))):
                raise ValueError(f"series {name!r} holds NaN or inf")
    fig = _new_figure(max(5.0, 0.75 * len(groups) + 2.0), 3.8)
    ax = fig.add_subplot(1, 1, 1)
    _style_axes(ax)
    names = list(series)
    width = 0.7 / len(names)
    for s, name in enumerate(names):
        color = OKABE_ITO[s % len(OKABE_ITO)]
        offset = (s - (len(names) - 1) / 2) * width
        for g, vals in enumerate(series[name]):
            v = np.asarray(vals, np.float64)
            jitter = ((np.arange(v.size) * 0.618034) % 1.0 - 0.5) * width * 0.6
            x0 = g + offset
            ax.scatter(
                x0 + jitter,
                v,
                s=9,
                color=color,
                alpha=0.6,
                linewidths=0,
                label=name if g == 0 else None,
            )
            if v.size:
                ax.hlines(
                    v.mean(), x0 - width * 0.4, x0 + width * 0.4, color="black", linewidth=1.2
                )
            iv = None if intervals is None else intervals.get(name, [None] * len(groups))[g]
            if iv is not None and None not in iv:
                ax.vlines(x0, iv[0], iv[1], color="black", linewidth=1.0)
    if threshold is not None:
        ax.axhline(threshold, color="#555555", linestyle="--", linewidth=1)
    ax.set_xticks(range(len(groups)))
    ax.set_xticklabels(
        groups, rotation=45 if len(groups) > 6 else 0, ha="right" if len(groups) > 6 else "center"
    )
    ax.set_ylabel(ylabel, fontsize=_LABEL_SIZE)
    if title:
        ax.set_title(title, fontsize=_TITLE_SIZE)
    ax.legend(fontsize=_LEGEND_SIZE, frameon=False)
    return fig
