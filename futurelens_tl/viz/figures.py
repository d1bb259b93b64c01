"""Generic static matplotlib helpers: annotated heatmaps and line plots, colour-blind safe.

Figures are created with :class:`matplotlib.figure.Figure` directly (no pyplot global state,
no GUI backend needed), so they work in scripts, tests and CI. Default colour maps are the
perceptually uniform, colour-blind-safe ``viridis`` / ``cividis`` (sequential) and ``PuOr``
(diverging). Part of the leaf package :mod:`futurelens_tl.viz`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.image import AxesImage

__all__ = [
    "COLORBLIND_CMAPS",
    "OKABE_ITO",
    "heatmap",
    "line_plot",
    "new_figure",
    "save_figure",
]

COLORBLIND_CMAPS = {"sequential": "viridis", "sequential_alt": "cividis", "diverging": "PuOr"}
# Okabe & Ito's colour-blind-safe qualitative palette (for lines / categories).
OKABE_ITO = ["#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442",
             "#000000"]


def new_figure(figsize: tuple[float | int, float | int] = (6.0, 4.0), *, dpi: int = 100) -> Figure:
    """Create a pyplot-free figure with a constrained layout.

    Args:
        figsize: Width and height in inches.
        dpi: Resolution.

    Returns:
        A ``matplotlib.figure.Figure``.

    Examples:
        >>> fig = new_figure((3, 2))
        >>> fig.get_size_inches().tolist()
        [3.0, 2.0]
    """
    w, h = figsize
    if not (w > 0 and h > 0):
        raise ValueError(f"figsize={figsize!r} must be two positive numbers")
    return Figure(figsize=(float(w), float(h)), dpi=dpi, layout="constrained")


def _text_color(rgba: Sequence[float]) -> str:
    r, g, b = rgba[:3]
    return "#111111" if 0.2126 * r + 0.7152 * g + 0.0722 * b > 0.55 else "#ffffff"


def heatmap(
    ax: Any,
    values: Any,
    *,
    row_labels: Sequence[str] | None = None,
    col_labels: Sequence[str] | None = None,
    top_labels: Sequence[str] | None = None,
    annot: Sequence[Sequence[str]] | None = None,
    cmap: str = "viridis",
    vmin: float | int | None = None,
    vmax: float | int | None = None,
    title: str | None = None,
    origin: str = "upper",
    fontsize: float | int = 7.0,
    colorbar: bool = False,
    colorbar_label: str | None = None,
) -> AxesImage:
    """Draw an annotated heatmap of a 2-D array on ``ax`` (NaN cells are left blank).

    Args:
        ax: A matplotlib ``Axes`` (``None`` creates a new figure with one axes).
        values: 2-D array-like ``[rows, cols]``.
        row_labels: Y tick labels (one per row).
        col_labels: X tick labels on the bottom axis (one per column).
        top_labels: Optional X tick labels on a secondary top axis.
        annot: Optional cell texts ``[rows][cols]``; text colour adapts to the background.
        cmap: Colour map name (default colour-blind-safe ``viridis``).
        vmin: Lower end of the colour scale (default: data minimum).
        vmax: Upper end of the colour scale (default: data maximum).
        title: Axes title.
        origin: ``"upper"`` (row 0 at the top) or ``"lower"`` (row 0 at the bottom).
        fontsize: Font size of the annotations and tick labels.
        colorbar: Add a colour bar.
        colorbar_label: Its label.

    Returns:
        The ``AxesImage``.

    Raises:
        ValueError: On a non-2-D array or label lists of the wrong length.

    Examples:
        >>> im = heatmap(None, [[0.1, 0.9], [0.5, 0.2]], annot=[["a", "b"], ["c", "d"]])
        >>> im.get_array().shape
        (2, 2)
    """
    import numpy as np

    arr = np.asarray(values, dtype=float)
    if arr.ndim != 2:
        raise ValueError(f"values must be 2-D [rows, cols], got shape {tuple(arr.shape)}")
    if origin not in ("upper", "lower"):
        raise ValueError(f"origin={origin!r} must be 'upper' or 'lower'")
    n_rows, n_cols = arr.shape
    for name, labels, n in (("row_labels", row_labels, n_rows), ("col_labels", col_labels, n_cols),
                            ("top_labels", top_labels, n_cols)):
        if labels is not None and len(labels) != n:
            raise ValueError(f"{name} has {len(labels)} entries, expected {n}")
    if annot is not None and (len(annot) != n_rows or any(len(a) != n_cols for a in annot)):
        raise ValueError(f"annot must be {n_rows} x {n_cols}")
    if ax is None:
        ax = new_figure((1.0 + 0.6 * n_cols, 1.0 + 0.4 * n_rows)).subplots()
    finite = arr[np.isfinite(arr)]
    lo = vmin if vmin is not None else (float(finite.min()) if finite.size else 0.0)
    hi = vmax if vmax is not None else (float(finite.max()) if finite.size else 1.0)
    masked = np.ma.masked_invalid(arr)
    im = ax.imshow(masked, cmap=cmap, vmin=lo, vmax=hi, aspect="auto", origin=origin,
                   interpolation="nearest")
    ax.set_xticks(range(n_cols))
    ax.set_xticklabels(col_labels if col_labels is not None else [str(i) for i in range(n_cols)],
                       rotation=60 if n_cols > 8 else 0, fontsize=fontsize,
                       ha="right" if n_cols > 8 else "center")
    ax.set_yticks(range(n_rows))
    ax.set_yticklabels(row_labels if row_labels is not None else [str(i) for i in range(n_rows)],
                       fontsize=fontsize)
    if top_labels is not None:
        top = ax.secondary_xaxis("top")
        top.set_xticks(range(n_cols))
        top.set_xticklabels(list(top_labels), rotation=60 if n_cols > 8 else 0,
                            fontsize=fontsize, ha="left" if n_cols > 8 else "center")
    ax.tick_params(length=0)
    if annot is not None:
        cm = im.get_cmap()
        norm = im.norm
        for r in range(n_rows):
            for c in range(n_cols):
                txt = annot[r][c]
                if not txt:
                    continue
                v = arr[r, c]
                color = _text_color(cm(norm(v))) if math.isfinite(v) else "#57606a"
                ax.text(c, r, txt, ha="center", va="center", fontsize=fontsize, color=color,
                        family="monospace", clip_on=True, in_layout=False)
    if title:
        ax.set_title(title, fontsize=fontsize + 3, pad=14 if top_labels is not None else 6)
    if colorbar:
        cb = ax.figure.colorbar(im, ax=ax, fraction=0.046, pad=0.03)
        if colorbar_label:
            cb.set_label(colorbar_label)
    return im


def line_plot(
    x: Sequence[Any],
    ys: Mapping[str, Sequence[float | None]],
    *,
    ax: Any = None,
    xlabel: str = "",
    ylabel: str = "",
    title: str | None = None,
    logy: bool = False,
    styles: Mapping[str, Mapping[str, Any]] | None = None,
) -> Axes:
    """Plot several named series against ``x`` (``None`` values leave gaps).

    Args:
        x: X values or category labels (strings are placed at 0..n-1).
        ys: Series name -> values (same length as ``x``).
        ax: Axes to draw on (``None`` creates a figure).
        xlabel: X axis label.
        ylabel: Y axis label.
        title: Title.
        logy: Logarithmic y axis.
        styles: Optional per-series matplotlib keyword arguments.

    Returns:
        The ``Axes``.

    Raises:
        ValueError: If a series length differs from ``len(x)``.

    Examples:
        >>> ax = line_plot(["embed", "0", "1"], {"logit": [0.1, 0.5, 0.9]})
        >>> len(ax.lines)
        1
    """
    if ax is None:
        ax = new_figure((6.0, 3.2)).subplots()
    labels = [str(v) for v in x]
    categorical = any(isinstance(v, str) for v in x)
    xs = list(range(len(x))) if categorical else list(x)
    for i, (name, vals) in enumerate(ys.items()):
        if len(vals) != len(x):
            raise ValueError(f"series {name!r} has {len(vals)} values, expected len(x)={len(x)}")
        kw = {"color": OKABE_ITO[i % len(OKABE_ITO)], "marker": "o", "markersize": 3}
        kw.update((styles or {}).get(name, {}))
        yv = [float("nan") if v is None else float(v) for v in vals]
        ax.plot(xs, yv, label=name, **kw)
    if categorical:
        ax.set_xticks(xs)
        ax.set_xticklabels(labels)
    if logy:
        ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    if ys:
        ax.legend(fontsize=8, frameon=False)
    ax.grid(alpha=0.3)
    return ax


def save_figure(fig: Any, path: Any, *, dpi: int = 150) -> None:
    """Save a figure atomically (temp file + ``os.replace``); format from the suffix.

    Args:
        fig: A ``matplotlib.figure.Figure``.
        path: Destination (``.png``, ``.svg``, ``.pdf``).
        dpi: Resolution for raster formats.
    """
    from pathlib import Path

    from futurelens_tl._io import atomic_write

    fmt = Path(path).suffix.lstrip(".") or "png"
    atomic_write(path, lambda tmp: fig.savefig(tmp, format=fmt, dpi=dpi, bbox_inches="tight"))
