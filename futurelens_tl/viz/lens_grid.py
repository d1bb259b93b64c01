"""The side-by-side lens grid: layer x position, one shared colour scale, hover, diff, pins.

Implements the canonical visualisation of reference lenses-and-transformerlens.md §A.4:

* rows are lens rows in layer order (``embed, 0, 1, ...``), input at the bottom by default
  (``top_down=True`` flips it; the page also has a toggle);
* the bottom axis shows the input tokens, the top axis the true next token, starred ``*`` when
  the model's final top-1 equals it;
* cell text is the row's top-1 token with whitespace made visible and long tokens truncated;
* cell colour is switchable between ``prob`` (top-1 probability), ``rank`` (rank of the true
  next token, log scale), ``kl`` (KL(final || row)), ``entropy`` and ``pinned`` (probability of
  a pinned token), with colour-blind-safe sequential maps (viridis / cividis) and one colour
  scale shared by every lens panel; a ``diff`` panel shows lens A minus lens B per cell
  (diverging purple-orange map);
* hovering a cell shows that lens's top-k table, the true next token's probability and rank,
  entropy, KL and the free-running continuation (Future Lens panels are marked
  "free-running");
* clicking a cell, or a token in the hover table, pins the token; the pinned-token panel draws
  an inline SVG line chart of each pinned token's probability across rows at the selected
  position, one line per lens and pin.

The grid data contract (a plain JSON-ready dict) is produced by ``futurelens_tl.compare``; see
:func:`validate_grid`. This module is part of the leaf package :mod:`futurelens_tl.viz` and
imports nothing else of ``futurelens_tl``. The data contract, metrics and colours live in
:mod:`.lens_grid_data`, the static figure in :mod:`.lens_grid_figure`; both are re-exported
here.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .html import (
    escape,
    fragment,
    json_script,
    page,
    read_json_script,
    unique_id,
    visible_token,
)
from .lens_grid_data import (  # re-exported: the public names stay importable from here
    _CELL_CHARS,
    _MODE_STYLE,
    CMAPS,
    COLOR_MODES,
    _cmap_color,  # noqa: F401  (tests and users reach the colour maps here)
    _color_for,
    _decode_tracked,
    _encode_tracked,
    _round_grid,
    _scale,
    _text_color,
    cell_metric,
    demo_grid,
    validate_grid,
)
from .lens_grid_figure import lens_grid_figure

__all__ = [
    "CMAPS",
    "COLOR_MODES",
    "cell_metric",
    "demo_grid",
    "grid_from_html",
    "lens_grid_figure",
    "lens_grid_html",
    "validate_grid",
]


# --------------------------------------------------------------------------- HTML


def _panel_html(g: dict[str, Any], li: int, mode: str, vmin: float, vmax: float,
                top_down: bool) -> str:
    lens = g["lenses"][li]
    R, P = len(g["rows"]), len(g["tokens"])
    badges = ""
    note = str(lens.get("note") or "")
    if "free" in note.lower() or lens.get("cont_tokens") is not None:
        badges += '<span class="fl-badge" title="Future Lens: continuation generated free-running '\
                  'from the top-1">free-running</span>'
    elif note:
        badges += f'<span class="fl-badge">{escape(note)}</span>'
    head = ['<th class="fl-corner" title="true next token (* = model\'s final top-1)">next</th>']
    for p in range(P):
        nxt = g["next_tokens"][p]
        star = "*" if g["next_correct"][p] else ""
        cls = "fl-axis fl-correct" if star else "fl-axis"
        title = f"true next token: {nxt!r}" + (" (model's final top-1 is correct)" if star else "")
        head.append(f'<th class="{cls}" data-role="next" data-pos="{p}" title="{escape(title)}">'
                    f"{escape(visible_token(nxt, max_len=_CELL_CHARS - len(star)))}{star}</th>")
    foot = ['<th class="fl-corner">input</th>']
    for p in range(P):
        tok = g["tokens"][p]
        foot.append(f'<th class="fl-axis" data-role="input" data-pos="{p}" '
                    f'title="{escape(repr(tok))} (position {p})">'
                    f"{escape(visible_token(tok, max_len=_CELL_CHARS))}</th>")
    order = range(R) if top_down else range(R - 1, -1, -1)
    body = []
    for r in order:
        tds = [f'<th class="fl-rowlab" title="layer {escape(g["row_layers"][r])}">'
               f"{escape(g['rows'][r])}</th>"]
        for p in range(P):
            attrs = (f'data-role="cell" data-lens="{escape(lens["name"])}" data-li="{li}" '
                     f'data-row="{r}" data-pos="{p}"')
            if not lens["available"][r][p]:
                tds.append(f'<td {attrs} class="fl-na" title="not covered by this lens">–</td>')
                continue
            toks = lens["top_tokens"][r][p]
            top = toks[0] if toks else ""
            bg = _color_for(cell_metric(lens, mode, r, p), mode, vmin, vmax)
            style = f' style="background:{bg};color:{_text_color(bg)}"' if bg else ""
            tds.append(f"<td {attrs}{style}>{escape(visible_token(top, max_len=_CELL_CHARS))}</td>")
        body.append(f'<tr data-row="{r}">' + "".join(tds) + "</tr>")
    return (
        f'<div class="fl-panel" data-role="panel" data-lens="{escape(lens["name"])}" '
        f'data-li="{li}"><div class="fl-panel-title">{escape(lens["name"])}{badges}</div>'
        f'<table class="fl-gt"><thead><tr>{"".join(head)}</tr></thead>'
        f'<tbody>{"".join(body)}</tbody><tfoot><tr>{"".join(foot)}</tr></tfoot></table></div>'
    )


def lens_grid_html(
    grid: dict[str, Any],
    *,
    color: str = "prob",
    standalone: bool = False,
    height: int | None = None,
    top_down: bool = False,
    pins: Sequence[Any] | None = None,
) -> str:
    """Render the side-by-side lens grid as offline HTML (reference §A.4).

    The result is a self-contained fragment for Jupyter / VS Code output cells (unique element
    ids per render, script scoped to its root, data embedded as ``<script
    type="application/json">``), or with ``standalone=True`` a full page; every asset is
    inlined, nothing is loaded from the network. Cells carry ``data-role="cell"``,
    ``data-lens``, ``data-row`` and ``data-pos``; the hover box is ``data-role="tooltip"`` and
    each trajectory line ``data-role="trajectory"``. Without JavaScript (e.g. a static notebook
    viewer) the grid still shows, coloured by ``color``.

    Args:
        grid: The lens-grid dict (see :func:`validate_grid`).
        color: Initial colour mode, one of ``prob``, ``rank``, ``kl``, ``entropy``, ``pinned``.
        standalone: Return a full ``<!DOCTYPE html>`` page instead of a fragment.
        height: Maximum height in pixels of the panel area (scrolls beyond); ``None``: no limit.
        top_down: Draw the embedding row at the top (default: input at the bottom).
        pins: Token ids pinned initially (their trajectories are drawn on load).

    Returns:
        The HTML text.

    Raises:
        ValueError: On an invalid grid, colour mode or height.

    Examples:
        On the toy model, through ``fl.compare`` (which builds the grid dict):

        >>> import futurelens_tl as fl
        >>> model = fl.toy_model(verbose=False)  # doctest: +SKIP
        >>> cmp = fl.compare(model, "The cat sat on the", [fl.LogitLens(model)])  # doctest: +SKIP
        >>> html = lens_grid_html(cmp.grid, color="rank", standalone=True)  # doctest: +SKIP

        On a synthetic grid (no model):

        >>> grid = demo_grid(n_layers=2, n_pos=3, k=3)
        >>> html = lens_grid_html(grid, color="kl")
        >>> html.count('<td data-role="cell"')  # 3 lenses x 3 rows x 3 positions
        27
    """
    if color not in COLOR_MODES:
        raise ValueError(f"color={color!r} is not a colour mode; allowed: {list(COLOR_MODES)}")
    if height is not None and (not isinstance(height, int) or height < 50):
        raise ValueError(f"height={height!r} must be None or an int >= 50 (pixels)")
    g = _round_grid(validate_grid(grid))
    pins = [int(t) for t in (pins or [])]
    R, P = len(g["rows"]), len(g["tokens"])
    pin_id = pins[-1] if pins else None
    values = [cell_metric(lens, color, r, p, pin_id)
              for lens in g["lenses"] for r in range(R) for p in range(P)]
    vmin, vmax = _scale(values, color)

    uid = unique_id("fl-grid")
    options = "".join(
        f'<option value="{m}"{" selected" if m == color else ""}>{escape(_MODE_STYLE[m]["label"])}'
        "</option>" for m in COLOR_MODES
    )
    lens_opts = "".join(f'<option value="{i}">{escape(lens["name"])}</option>'
                        for i, lens in enumerate(g["lenses"]))
    controls = (
        '<div class="fl-controls">'
        f'<label>colour <select data-role="color-mode">{options}</select></label>'
        f'<label{"" if len(g["lenses"]) > 1 else " hidden"}>diff '
        '<select data-role="diff-a"><option value="">off</option>'
        f'{lens_opts}</select> − <select data-role="diff-b">{lens_opts}</select></label>'
        f'<label><input type="checkbox" data-role="top-down"{" checked" if top_down else ""}>'
        " embed row on top</label>"
        '<span class="fl-legend" data-role="legend"></span>'
        "</div>"
    )
    panels = "".join(_panel_html(g, li, color, vmin, vmax, top_down)
                     for li in range(len(g["lenses"])))
    style = f' style="max-height:{height}px;overflow:auto"' if height else ""
    pin_panel = (
        '<div class="fl-pins" data-role="pin-panel"><div class="fl-pin-head">'
        "<b>Pinned tokens</b>"
        '<span data-role="pin-list"></span>'
        '<button type="button" data-role="clear-pins">clear</button>'
        '<label><input type="checkbox" data-role="pin-log"> log scale</label>'
        '<span class="fl-note" data-role="pin-pos"></span></div>'
        '<div data-role="pin-chart"><span class="fl-note">Click a cell, or a token in the hover '
        "table, to pin it: its probability across rows is drawn here for every lens.</span>"
        "</div></div>"
    )
    header = ""
    if g["title"]:
        header += f'<div class="fl-grid-title">{escape(g["title"])}</div>'
    if g["prompt"]:
        header += f'<div class="fl-prompt">prompt: <span class="fl-mono">{escape(g["prompt"])}'\
                  "</span></div>"
    view = {"color": color, "top_down": bool(top_down), "pins": pins, "cmaps": CMAPS,
            "modes": _MODE_STYLE}
    data_id = uid + "-data"
    body = (
        f'<div class="fl-grid" id="{uid}" data-fl="lens-grid">{header}{controls}'
        f'<div class="fl-panels-wrap"{style}><div class="fl-panels" data-role="panels">'
        f"{panels}</div></div>{pin_panel}"
        '<div class="fl-tooltip" data-role="tooltip" hidden></div>'
        f'{json_script({"grid": _encode_tracked(g), "view": view}, element_id=data_id)}</div>'
    )
    init = (f'(function(){{var r=document.getElementById("{uid}");'
            "if(r&&window.flLensGrid){window.flLensGrid(r);}})();")
    from .html import asset

    frag = fragment(body, css=[asset("lens_grid.css")], js=[asset("lens_grid.js"), init])
    if standalone:
        return page(g["title"] or "lens grid", frag)
    return frag


def grid_from_html(html_text: str) -> dict[str, Any]:
    """Read the grid payload back out of :func:`lens_grid_html` output (first grid).

    Args:
        html_text: HTML produced by :func:`lens_grid_html`.

    Returns:
        The embedded grid dict (probabilities rounded to 4 decimals).
    """
    import re

    m = re.search(r'id="(fl-grid-[0-9a-f]+-data)"', html_text)
    if m is None:
        raise ValueError("html_text holds no lens-grid payload")
    return _decode_tracked(read_json_script(html_text, m.group(1))["grid"])


