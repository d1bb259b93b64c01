"""Static matplotlib export of the lens grid (:func:`lens_grid_figure`), same colours as the page.

Part of the leaf package :mod:`futurelens_tl.viz`.
"""

from __future__ import annotations

import math
from typing import Any

from .html import visible_token
from .lens_grid_data import (
    _CELL_CHARS,
    _MODE_STYLE,
    _scale,
    cell_metric,
    validate_grid,
)

__all__ = ["lens_grid_figure"]


def lens_grid_figure(grid: dict[str, Any], *, lens: str | None = None,
                     color: str = "prob") -> Any:
    """Static matplotlib export of the lens grid: one subplot per lens, one colour scale.

    Cell text is the top-1 token (whitespace visible, truncated); the bottom axis shows the
    input tokens and the top axis the true next token, with ``*`` when the model's final top-1
    is correct; rows run from ``embed`` at the bottom up to the last layer (reference §A.4).
    Cells a lens does not cover are hatched.

    Args:
        grid: The lens-grid dict (see :func:`validate_grid`).
        lens: Draw only the lens with this name (``None``: all lenses side by side).
        color: ``prob``, ``rank``, ``kl`` or ``entropy``.

    Returns:
        A ``matplotlib.figure.Figure`` (not attached to pyplot).

    Raises:
        ValueError: On an invalid grid, unknown lens name or colour mode.

    Examples:
        >>> from futurelens_tl.viz.lens_grid import demo_grid
        >>> fig = lens_grid_figure(demo_grid(n_layers=2, n_pos=3), color="kl")
        >>> len([ax for ax in fig.axes if ax.images])  # one panel per lens
        3
        >>> fig.savefig("grid.png")  # doctest: +SKIP
    """
    import numpy as np

    from .figures import heatmap, new_figure

    if color not in ("prob", "rank", "kl", "entropy"):
        raise ValueError(
            f"color={color!r} is not a static colour mode; allowed: ['prob', 'rank', 'kl', "
            "'entropy'] ('pinned' needs the interactive view)"
        )
    g = validate_grid(grid)
    lenses = g["lenses"]
    if lens is not None:
        names = [x["name"] for x in lenses]
        if lens not in names:
            raise ValueError(f"lens={lens!r} is not in the grid; available: {names}")
        lenses = [x for x in lenses if x["name"] == lens]
    R, P = len(g["rows"]), len(g["tokens"])
    mats = []
    for x in lenses:
        m = np.full((R, P), np.nan)
        for r in range(R):
            for p in range(P):
                v = cell_metric(x, color, r, p)
                if v is not None:
                    m[r, p] = v
        mats.append(m)
    vmin, vmax = _scale([v for m in mats for v in m.ravel().tolist() if v == v], color)
    style = _MODE_STYLE[color]
    n = len(lenses)
    cell_w, cell_h = 0.62, 0.34
    panel_w, panel_h = max(3.0, 1.0 + cell_w * P), 1.7 + cell_h * R
    if n * P <= 30:  # side by side
        fig = new_figure(figsize=(panel_w * n + 1.2, panel_h))
        axes = fig.subplots(1, n, squeeze=False)[0]
    else:  # wide prompts: panels stacked, same columns
        fig = new_figure(figsize=(panel_w + 1.2, panel_h * n))
        axes = fig.subplots(n, 1, squeeze=False)[:, 0]
    tops = [visible_token(t, max_len=_CELL_CHARS - 1) + ("*" if c else "")
            for t, c in zip(g["next_tokens"], g["next_correct"])]
    bottoms = [visible_token(t, max_len=_CELL_CHARS) for t in g["tokens"]]
    im = None
    for ax, x, m in zip(axes, lenses, mats):
        annot = [[visible_token(x["top_tokens"][r][p][0], max_len=_CELL_CHARS)
                  if x["available"][r][p] and x["top_tokens"][r][p] else ""
                  for p in range(P)] for r in range(R)]
        title = x["name"] + (" (free-running)" if x.get("cont_tokens") is not None
                             or "free" in str(x.get("note", "")).lower() else "")
        im = heatmap(ax, m, row_labels=g["rows"], col_labels=bottoms, top_labels=tops,
                     annot=annot, cmap=style["mpl"], vmin=vmin, vmax=vmax, title=title,
                     origin="lower")
        unavailable = ~np.array(x["available"], dtype=bool)
        for r, p in zip(*np.nonzero(unavailable)):
            ax.add_patch(_hatch_rect(int(p), int(r)))
    cbar = fig.colorbar(im, ax=list(axes), fraction=0.025, pad=0.02)
    cbar.set_label(style["label"], fontsize=8)
    if color == "rank":
        ticks = [t for t in range(0, int(math.floor(vmax)) + 1)]
        cbar.set_ticks(ticks)
        cbar.set_ticklabels([f"{10 ** t:g}" for t in ticks])
    if g["title"]:
        fig.suptitle(g["title"])
    return fig


def _hatch_rect(p: int, r: int) -> Any:
    from matplotlib.patches import Rectangle

    return Rectangle((p - 0.5, r - 0.5), 1, 1, facecolor="#f3f4f6", edgecolor="#c0c4ca",
                     hatch="///", linewidth=0)

