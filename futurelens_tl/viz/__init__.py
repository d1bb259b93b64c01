"""Views: offline HTML (inlined assets, no CDN, no network) and matplotlib figures.

A leaf package: it takes plain arrays and data frames and imports nothing else of futurelens_tl.

* :mod:`.html` -- escaping, inlined assets, JSON payloads, DataFrame tables, base64 PNGs,
  standalone pages, :func:`~futurelens_tl.viz.html.assert_offline`.
* :mod:`.lens_grid` -- the side-by-side lens grid (:func:`lens_grid_html`,
  :func:`lens_grid_figure`).
* :mod:`.figures` -- generic colour-blind-safe matplotlib helpers.
* :mod:`.report` -- multi-section standalone report pages with a table of contents.
* :mod:`.circuits` -- circuitsvis views embedded offline (``local_src`` only).
"""

from __future__ import annotations

from .html import (
    OfflineError,
    assert_offline,
    dataframe_html,
    escape,
    figure_html,
    fragment,
    json_script,
    page,
    save_html,
    unique_id,
    visible_token,
)
from .lens_grid import grid_from_html, lens_grid_figure, lens_grid_html, validate_grid

__all__ = [
    "OfflineError",
    "assert_offline",
    "Section",
    "attention_heads_html",
    "circuitsvis_html",
    "downsample_attention",
    "dataframe_html",
    "escape",
    "figure_html",
    "fragment",
    "grid_from_html",
    "json_script",
    "lens_grid_figure",
    "lens_grid_html",
    "page",
    "report_html",
    "save_html",
    "unique_id",
    "validate_grid",
    "visible_token",
    "write_report",
]


def __getattr__(name: str):
    if name in ("report_html", "write_report", "Section"):
        from . import report

        return getattr(report, name)
    if name in ("circuitsvis_html", "attention_heads_html", "downsample_attention"):
        from . import circuits

        return getattr(circuits, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
