"""Layer x head grids for head roles and patching effects (offline HTML and matplotlib).

A leaf module: plain numpy arrays and lists in, HTML strings (no CDN, no network) or
matplotlib figures out. :func:`attention_heads_html` renders circuitsvis ``attention_heads``
with its bundled JavaScript inlined (``local_src``), never ``cdn_src``.
"""

from __future__ import annotations

import html as _html
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["attention_heads_html", "heatmap_html", "role_colors", "role_grid_figure",
           "role_grid_html"]

_PALETTE = ["#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1",
            "#ff9da7", "#9c755f", "#bab0ac", "#1f77b4", "#d62728", "#2ca02c", "#9467bd",
            "#8c564b", "#17becf", "#bcbd22", "#e377c2", "#7f7f7f", "#aec7e8", "#ffbb78",
            "#98df8a", "#ff9896", "#c5b0d5", "#c49c94", "#dbdb8d", "#9edae5", "#393b79",
            "#637939", "#8c6d31"]
"""Thirty distinct colours: every shipped role (25) gets its own."""


def role_colors(roles: Sequence[str]) -> dict[str, str]:
    """A fixed colour per role (by position in ``roles``)."""
    return {r: _PALETTE[i % len(_PALETTE)] for i, r in enumerate(roles)}


def _fmt(x: float) -> str:
    return "nan" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.3f}"


def role_grid_html(
    scores: np.ndarray,
    roles: Sequence[str],
    dominant: Sequence[Sequence[str | None]],
    thresholds: dict[str, float | None],
    stages: dict[str, str],
    *,
    title: str = "Head roles",
    notes: dict[str, str] | None = None,
) -> str:
    """Layer x head grid coloured by each head's dominant tagged role; hover shows all scores.

    Args:
        scores: ``[n_roles, n_layers, n_heads]``.
        roles: Role names in the order of ``scores``.
        dominant: ``[n_layers][n_heads]`` role name or None.
        thresholds: Role -> threshold.
        stages: Role -> stage label.
        title: Caption.
        notes: Role -> reason it is unavailable.

    Returns:
        An HTML fragment (inline CSS only, no scripts, no external resources).
    """
    scores = np.asarray(scores, dtype=float)
    _, n_layers, n_heads = scores.shape
    colors = role_colors(roles)
    esc = _html.escape
    cells = []
    head_row = "".join(f"<th>H{h}</th>" for h in range(n_heads))
    cells.append(f"<tr><th></th>{head_row}</tr>")
    for layer in range(n_layers):
        row = [f"<th>L{layer}</th>"]
        for h in range(n_heads):
            dom = dominant[layer][h]
            lines = [f"L{layer}H{h}" + (f": {dom}" if dom else ": untagged")]
            for i, r in enumerate(roles):
                t = thresholds.get(r)
                mark = " *" if dom == r else ""
                lines.append(f"{r} = {_fmt(float(scores[i, layer, h]))}"
                             f" (thr {_fmt(t) if t is not None else '-'}){mark}")
            tip = esc("\n".join(lines))
            bg = colors[dom] if dom else "#f4f4f4"
            label = esc(dom.replace("_", " ")[:10]) if dom else ""
            row.append(f'<td title="{tip}" style="background:{bg};width:64px;height:30px;'
                       f'font-size:10px;text-align:center;color:#111;border:1px solid #fff">'
                       f"{label}</td>")
        cells.append("<tr>" + "".join(row) + "</tr>")
    legend = " ".join(
        f'<span style="display:inline-block;margin:2px 6px"><span style="display:inline-block;'
        f'width:12px;height:12px;background:{colors[r]}"></span> {esc(r)} '
        f'<small>({esc(stages.get(r, ""))})</small></span>' for r in roles)
    note_html = ""
    if notes:
        note_html = "<div style='font-size:11px;color:#666'>" + "<br>".join(
            f"{esc(r)}: {esc(v)}" for r, v in notes.items()) + "</div>"
    return (f"<div class='fl-head-grid' style='font-family:sans-serif'>"
            f"<div style='font-weight:bold;margin:4px 0'>{esc(title)}</div>"
            f"<table style='border-collapse:collapse'>{''.join(cells)}</table>"
            f"<div style='font-size:11px;margin-top:4px'>{legend}</div>{note_html}"
            f"<div style='font-size:10px;color:#888'>hover a cell for every role's score</div>"
            f"</div>")


def heatmap_html(values: np.ndarray, *, title: str = "", digits: int = 3) -> str:
    """A layer x head table shaded blue (negative) to red (positive) with values on hover."""
    v = np.asarray(values, dtype=float)
    n_layers, n_heads = v.shape
    finite = np.abs(v[np.isfinite(v)])
    vmax = float(finite.max()) if finite.size else 1.0
    vmax = vmax or 1.0
    rows = ["<tr><th></th>" + "".join(f"<th>H{h}</th>" for h in range(n_heads)) + "</tr>"]
    for layer in range(n_layers):
        r = [f"<th>L{layer}</th>"]
        for h in range(n_heads):
            x = v[layer, h]
            if not np.isfinite(x):
                bg = "#eee"
            else:
                a = min(1.0, abs(x) / vmax)
                c = (int(255 * (1 - a)), int(255 * (1 - a)), 255) if x < 0 else (
                    255, int(255 * (1 - a)), int(255 * (1 - a)))
                bg = f"rgb{c}"
            r.append(f'<td title="L{layer}H{h}: {x:.{digits}f}" style="background:{bg};'
                     f'width:44px;height:22px;font-size:9px;text-align:center">'
                     f"{'' if not np.isfinite(x) else f'{x:.2f}'}</td>")
        rows.append("<tr>" + "".join(r) + "</tr>")
    return (f"<div style='font-family:sans-serif'><b>{_html.escape(title)}</b>"
            f"<table style='border-collapse:collapse'>{''.join(rows)}</table></div>")


def role_grid_figure(scores: np.ndarray, roles: Sequence[str],
                     dominant: Sequence[Sequence[str | None]]) -> Any:
    """The same grid as a matplotlib figure (colour = dominant role)."""
    import matplotlib.pyplot as plt
    from matplotlib.colors import to_rgb

    colors = role_colors(roles)
    n_layers, n_heads = np.asarray(scores).shape[1:]
    img = np.ones((n_layers, n_heads, 3)) * 0.95
    for layer in range(n_layers):
        for h in range(n_heads):
            d = dominant[layer][h]
            if d:
                img[layer, h] = to_rgb(colors[d])
    fig, ax = plt.subplots(figsize=(0.5 * n_heads + 2, 0.4 * n_layers + 1))
    ax.imshow(img, aspect="auto")
    ax.set_xlabel("head")
    ax.set_ylabel("layer")
    for layer in range(n_layers):
        for h in range(n_heads):
            d = dominant[layer][h]
            if d:
                ax.text(h, layer, d[:4], ha="center", va="center", fontsize=6)
    return fig


def attention_heads_html(pattern: np.ndarray, tokens: Sequence[str],
                         head_names: Sequence[str]) -> str:
    """Circuitsvis ``attention_heads`` with its bundled JS inlined (``local_src``; offline).

    Falls back to a plain HTML table of the pattern when circuitsvis is not installed.

    Args:
        pattern: ``[n_heads, q, k]``.
        tokens: Token strings (length ``q``).
        head_names: One name per head.
    """
    pattern = np.asarray(pattern, dtype=float)
    try:
        import circuitsvis.attention as cva

        obj = cva.attention_heads(attention=pattern, tokens=list(tokens),
                                  attention_head_names=list(head_names))
        return str(obj.local_src)
    except ImportError:
        esc = _html.escape
        head = "".join(f"<th>{esc(t)}</th>" for t in tokens)
        rows = []
        for i, t in enumerate(tokens):
            tds = "".join(
                f'<td style="background:rgba(200,0,0,{pattern[0, i, j]:.3f})"></td>'
                for j in range(len(tokens)))
            rows.append(f"<tr><th>{esc(t)}</th>{tds}</tr>")
        return f"<table><tr><th></th>{head}</tr>{''.join(rows)}</table>"
