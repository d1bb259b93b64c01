"""Figures and offline HTML for the layer-0 decomposition.

A leaf module: takes numpy arrays / pandas frames, imports nothing else of futurelens_tl. HTML is
self-contained (figures embedded as base64 PNG; no CDN, no network).
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = [
    "AUROC_CAPTION",
    "detokenization_table_html",
    "fig_to_html",
    "html_page",
    "html_table",
    "notes_html",
    "position_heatmap",
    "position_profile_lines",
    "position_term_bands",
    "positional_attention_curves",
    "term_contribution_bars",
    "top_prefix_table",
]


def _plt() -> Any:
    import matplotlib

    if matplotlib.get_backend().lower() not in ("agg",) and not _in_notebook():
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _in_notebook() -> bool:
    try:
        from IPython import get_ipython

        ip = get_ipython()
        return ip is not None and "IPKernelApp" in getattr(ip, "config", {})
    except ImportError:  # pragma: no cover
        return False


def fig_to_html(fig: Any, *, close: bool = True, dpi: int = 90) -> str:
    """Embed a matplotlib figure as a base64 PNG ``<img>`` (offline)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    if close:
        _plt().close(fig)
    data = base64.b64encode(buf.getvalue()).decode("ascii")
    return f'<img alt="figure" src="data:image/png;base64,{data}"/>'


def html_table(df: Any) -> str:
    """A pandas frame as an escaped HTML table with the module's CSS class."""
    from .html import dataframe_html

    return dataframe_html(df, index=True, max_rows=max(len(df), 1), css_class="fl-l0-table")


_CSS = (
    "<style>.fl-l0{font-family:system-ui,sans-serif;font-size:13px}"
    ".fl-l0 table.fl-l0-table{border-collapse:collapse;margin:6px 0}"
    ".fl-l0 table.fl-l0-table td,.fl-l0 table.fl-l0-table th{border:1px solid #ddd;"
    "padding:2px 6px;text-align:right}.fl-l0 h3{margin:4px 0}"
    ".fl-l0 code{background:#f4f4f4}</style>"
)


def html_page(title: str, parts: Sequence[str]) -> str:
    """Wrap HTML fragments in one self-contained ``<div>`` with inline CSS."""
    body = "\n".join(parts)
    return f'{_CSS}<div class="fl-l0"><h3>{html.escape(title)}</h3>{body}</div>'


def position_heatmap(values: np.ndarray, *, key_start: int = 0, query_pos: int | None = None,
                     title: str = "T_pp") -> Any:
    """Heatmap ``[head, key]`` of a position term for one query position."""
    plt = _plt()
    values = np.asarray(values, dtype=float)
    size = (min(12, 2 + 0.12 * values.shape[1]), 0.4 * values.shape[0] + 1.2)
    fig, ax = plt.subplots(figsize=size)
    vmax = float(np.nanmax(np.abs(values))) or 1.0
    im = ax.imshow(values, aspect="auto", cmap="RdBu_r", vmin=-vmax, vmax=vmax,
                   extent=(key_start - 0.5, key_start + values.shape[1] - 0.5,
                           values.shape[0] - 0.5, -0.5))
    ax.set_xlabel("key position j" + (f" (query i = {query_pos})" if query_pos is not None else ""))
    ax.set_ylabel("head")
    ax.set_yticks(range(values.shape[0]))
    ax.set_title(title)
    fig.colorbar(im, ax=ax)
    fig.tight_layout()
    return fig


def positional_attention_curves(curves: dict[str, np.ndarray], *, key_start: int = 0,
                                query_pos: int | None = None,
                                label: str = "sigma_i={}") -> Any:
    """Predicted positional attention per head, one line per curve (``label`` formats its key)."""
    plt = _plt()
    first = np.asarray(next(iter(curves.values())))
    n_heads = first.shape[0]
    cols = min(4, n_heads)
    rows = -(-n_heads // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3 * cols, 2.2 * rows), squeeze=False,
                             sharex=True)
    x = np.arange(key_start, key_start + first.shape[1])
    for h in range(rows * cols):
        ax = axes[h // cols][h % cols]
        if h >= n_heads:
            ax.axis("off")
            continue
        for name, arr in curves.items():
            ax.plot(x, np.asarray(arr)[h], label=label.format(name), lw=1)
        ax.set_title(f"head {h}", fontsize=9)
    axes[0][0].legend(fontsize=7)
    fig.suptitle("predicted positional attention" +
                 (f", query {query_pos}" if query_pos is not None else ""), fontsize=10)
    fig.supxlabel("key position j", fontsize=9)
    fig.tight_layout()
    return fig


def position_term_bands(df: Any, *, query_pos: int | None = None) -> Any:
    """``T_pp`` / ``T_p`` mean lines with 2.5-97.5 % bands over key tokens, one panel per head.

    ``df`` has columns ``head, key_pos, term, mean, lo, hi``.
    """
    plt = _plt()
    heads = sorted(df["head"].unique())
    cols = min(4, len(heads))
    rows = -(-len(heads) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3 * cols, 2.2 * rows), squeeze=False)
    for k, h in enumerate(heads):
        ax = axes[k // cols][k % cols]
        for term in [t for t in ("pp", "p") if t in set(df["term"])]:
            d = df[(df["head"] == h) & (df["term"] == term)].sort_values("key_pos")
            ax.plot(d["key_pos"], d["mean"], lw=1, label=f"T_{term}")
            ax.fill_between(d["key_pos"], d["lo"], d["hi"], alpha=0.3)
        ax.set_title(f"head {h}", fontsize=9)
    for k in range(len(heads), rows * cols):
        axes[k // cols][k % cols].axis("off")
    axes[0][0].legend(fontsize=7)
    fig.suptitle("position terms (mean, 95% band over key tokens)" +
                 (f", query {query_pos}" if query_pos is not None else ""), fontsize=10)
    fig.tight_layout()
    return fig


def term_contribution_bars(values: np.ndarray, term_names: Sequence[str], *,
                           title: str = "term contributions", log: bool = False) -> Any:
    """Grouped bars: ``values[term, head]``, one group per head."""
    plt = _plt()
    values = np.asarray(values, dtype=float)
    n_terms, n_heads = values.shape
    fig, ax = plt.subplots(figsize=(max(5, 0.8 * n_heads + 2), 3))
    width = 0.8 / n_terms
    for t in range(n_terms):
        v = values[t]
        if log:
            v = np.clip(v, 1e-12, None)
        ax.bar(np.arange(n_heads) + (t - (n_terms - 1) / 2) * width, v, width,
               label=f"T_{term_names[t]}")
    if log:
        ax.set_yscale("log")
    ax.set_xticks(range(n_heads))
    ax.set_xlabel("head")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7, ncol=min(6, n_terms))
    fig.tight_layout()
    return fig


def top_prefix_table(df: Any) -> str:
    """HTML table: rows ``(suffix, head)``, columns rank 1..k of rendered prefix+suffix."""
    if "head" not in df.columns:
        df = df.assign(head=0)
    wide = df.pivot_table(index=["suffix_str", "head"], columns="rank", values="rendered",
                          aggfunc="first")
    wide.columns = [f"#{c}" for c in wide.columns]
    return html_page("top prefixes (prefix+suffix, space shown as _)", [html_table(wide)])


def notes_html(notes: Sequence[str]) -> str:
    """What does not carry over to this model, as a short list (empty string when none)."""
    if not notes:
        return ""
    items = "".join(f"<li>{html.escape(n)}</li>" for n in notes)
    return f"<p>Not applicable here / changed meaning:</p><ul>{items}</ul>"


def position_profile_lines(df: Any) -> Any:
    """Fixed-query relative position profiles ``z[i, i - Delta] - z[i, i]``, one panel per head.

    ``df`` has columns ``head, query_pos, distance, logit`` (one line per query position).
    """
    plt = _plt()
    heads = sorted(df["head"].unique())
    cols = min(4, len(heads))
    rows = -(-len(heads) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3 * cols, 2.2 * rows), squeeze=False,
                             sharex=True)
    for k, h in enumerate(heads):
        ax = axes[k // cols][k % cols]
        for q, d in df[df["head"] == h].groupby("query_pos"):
            d = d.sort_values("distance")
            ax.plot(d["distance"], d["logit"], lw=1, label=f"query {q}")
        ax.axhline(0, color="#999", lw=0.5)
        ax.set_title(f"head {h}", fontsize=9)
    for k in range(len(heads), rows * cols):
        axes[k // cols][k % cols].axis("off")
    axes[0][0].legend(fontsize=7)
    fig.suptitle("position logit relative to self, z[i, i - d] - z[i, i] (fixed query)",
                 fontsize=10)
    fig.supxlabel("distance d = i - j", fontsize=9)
    fig.tight_layout()
    return fig


AUROC_CAPTION = (
    "Detokenization AUROC per head: for every suffix token, all prefixes are ranked by the "
    "weight-only score T_ee(s -> u); positives are prefixes seen right before the suffix in the "
    "corpus (weighted by count). Chance is 0.5 on seen suffixes (a random ranking); the paper's "
    "mean counts unseen suffixes as 0, so its chance level is 0.5 x the fraction of suffixes seen "
    "(chance_all) and small corpora pull it far below 0.5. A head below chance on seen suffixes "
    "is not broken: it ranks the observed preceding subwords below unobserved ones, i.e. it "
    "attends away from the previous token (to itself, by position or to distant context); the "
    "paper finds such heads in GPT-2 (heads 1, 5, 8, 9). The interval is a 95 % normal "
    "approximation over seen suffixes."
)


def detokenization_table_html(df: Any) -> str:
    """The per-head AUROC table with its controls, intervals and the caption above."""
    return html_page("Detokenization AUROC (weights vs corpus bigrams)", [
        html_table(df.round(4)), f"<p><small>{html.escape(AUROC_CAPTION)}</small></p>",
    ])
