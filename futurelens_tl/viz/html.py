"""Offline HTML building blocks: escaping, inlined assets, JSON payloads, tables, PNGs, pages.

Everything here produces self-contained HTML: assets come from package data
(``futurelens_tl/viz/assets``) and are inlined at render time; images are base64 ``data:``
URIs; nothing refers to a CDN or the network (reference lenses-and-transformerlens.md §D,
"ours"). :func:`assert_offline` checks this property and is used by the tests of every view.

This module is part of the leaf package :mod:`futurelens_tl.viz`: it imports nothing else of
``futurelens_tl``; other views (``viz/layer0.py``, ``viz/heads.py``) build on these helpers.
"""

from __future__ import annotations

import base64
import html as _html
import io
import json
import math
import os
import re
import uuid
from collections.abc import Iterable, Mapping
from functools import cache
from pathlib import Path
from typing import Any

__all__ = [
    "OfflineError",
    "asset",
    "assert_offline",
    "base_css",
    "dataframe_html",
    "table_html",
    "escape",
    "figure_html",
    "figure_to_png",
    "fragment",
    "json_script",
    "page",
    "read_json_script",
    "save_html",
    "script_tag",
    "style_tag",
    "to_jsonable",
    "unique_id",
    "visible_token",
]

_ASSETS = Path(__file__).resolve().parent / "assets"


class OfflineError(ValueError):
    """HTML refers to a network resource (``http(s)://`` or protocol-relative ``//``)."""


def escape(text: object, *, quote: bool = True) -> str:
    """Escape ``text`` for use in HTML text or a double-quoted attribute.

    Args:
        text: Any object; it is converted with ``str``.
        quote: Also escape quotes (needed inside attributes).

    Returns:
        The escaped string.

    Examples:
        >>> escape('<b class="x">&</b>')
        '&lt;b class=&quot;x&quot;&gt;&amp;&lt;/b&gt;'
    """
    return _html.escape(str(text), quote=quote)


def unique_id(prefix: str = "fl") -> str:
    """Return an element id that is unique per call (safe for many renders in one notebook).

    Args:
        prefix: A short prefix made of letters, digits, ``-`` or ``_``.

    Returns:
        ``f"{prefix}-{12 hex digits}"``.

    Raises:
        ValueError: If ``prefix`` is not a valid id prefix.

    Examples:
        >>> unique_id("grid") != unique_id("grid")
        True
    """
    if not re.fullmatch(r"[A-Za-z][A-Za-z0-9_-]*", prefix):
        raise ValueError(
            f"prefix={prefix!r} is not a valid id prefix; use a letter followed by letters, "
            "digits, '-' or '_'"
        )
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


@cache
def asset(name: str) -> str:
    """Return the text of a bundled asset (``futurelens_tl/viz/assets/<name>``).

    Args:
        name: File name inside the assets folder, e.g. ``"lens_grid.js"``.

    Returns:
        The file content.

    Raises:
        ValueError: If no such asset exists.

    Examples:
        >>> "flLensGrid" in asset("lens_grid.js")
        True
    """
    path = _ASSETS / name
    if "/" in name or "\\" in name or not path.is_file():
        available = sorted(p.name for p in _ASSETS.iterdir() if p.is_file())
        raise ValueError(f"name={name!r} is not a bundled asset; available: {available}")
    return path.read_text(encoding="utf-8")


def base_css() -> str:
    """Return the shared stylesheet of all views (``assets/base.css``).

    Returns:
        CSS text, scoped to ``.fl-view`` containers.
    """
    return asset("base.css")


def style_tag(css: str) -> str:
    """Wrap CSS in an inline ``<style>`` element (``</style`` inside is neutralised).

    Args:
        css: Stylesheet text.

    Returns:
        ``<style>...</style>``.
    """
    return "<style>" + re.sub(r"</(style)", r"<\\/\1", css, flags=re.I) + "</style>"


def script_tag(js: str) -> str:
    """Wrap JavaScript in an inline ``<script>`` element (``</script`` inside is neutralised).

    Args:
        js: Script text (classic script, not a module).

    Returns:
        ``<script>...</script>``.
    """
    return "<script>" + re.sub(r"</(script)", r"<\\/\1", js, flags=re.I) + "</script>"


def to_jsonable(obj: Any, *, digits: int | None = None) -> Any:
    """Convert ``obj`` to plain JSON types (numpy/torch scalars and arrays, tuples, NaN).

    Non-finite floats become ``None`` (JSON has no NaN). With ``digits``, floats are rounded.

    Args:
        obj: Nested dicts/lists/tuples of numbers, strings, bools, ``None``, numpy arrays or
            anything with ``tolist()``.
        digits: Round floats to this many decimals (``None`` keeps them).

    Returns:
        The converted structure.

    Raises:
        TypeError: On an object that has no JSON form.

    Examples:
        >>> to_jsonable({"a": (1.23456, float("nan"))}, digits=2)
        {'a': [1.23, None]}
    """
    if obj is None or isinstance(obj, (str, bool)):
        return obj
    if isinstance(obj, int):
        return int(obj)
    if isinstance(obj, float):
        if not math.isfinite(obj):
            return None
        if digits is not None:
            v = round(obj, digits)
            return 0 if v == 0 else v
        return obj
    if isinstance(obj, Mapping):
        return {str(k): to_jsonable(v, digits=digits) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v, digits=digits) for v in obj]
    if hasattr(obj, "tolist"):  # numpy / torch arrays and scalars
        return to_jsonable(obj.tolist(), digits=digits)
    if hasattr(obj, "item"):
        return to_jsonable(obj.item(), digits=digits)
    raise TypeError(f"cannot convert object of type {type(obj).__name__} to JSON")


def json_script(data: Any, *, element_id: str | None = None, digits: int | None = None) -> str:
    r"""Embed ``data`` as a ``<script type="application/json">`` element.

    ``<``, ``>`` and ``&`` are written as ``\u003c`` etc. so the payload can never close the
    script element, whatever strings it holds. Read it back with :func:`read_json_script`.

    Args:
        data: JSON-ready data (see :func:`to_jsonable`).
        element_id: Optional ``id`` attribute.
        digits: Round floats to this many decimals.

    Returns:
        The ``<script>`` element.

    Examples:
        >>> s = json_script({"t": "</script>"}, element_id="x")
        >>> read_json_script(s, "x")
        {'t': '</script>'}
    """
    text = json.dumps(
        to_jsonable(data, digits=digits), separators=(",", ":"), ensure_ascii=False,
        allow_nan=False,
    )
    # "<", ">", "&" can never close the element; "\\/" keeps any "//" (URL-like) text out of the
    # page source, so token strings cannot trip assert_offline.
    text = text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
    text = text.replace("/", "\\/")
    text = text.replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")
    id_attr = f' id="{escape(element_id)}"' if element_id else ""
    return f'<script type="application/json"{id_attr}>{text}</script>'


def read_json_script(html_text: str, element_id: str | None = None) -> Any:
    """Parse the JSON payload of a ``<script type="application/json">`` element.

    Args:
        html_text: HTML containing the element.
        element_id: The element's id; ``None`` takes the first such element.

    Returns:
        The decoded data.

    Raises:
        ValueError: If no matching element exists.
    """
    if element_id is None:
        pat = r'<script type="application/json"[^>]*>(.*?)</script>'
    else:
        pat = r'<script type="application/json" id="' + re.escape(element_id) + r'">(.*?)</script>'
    m = re.search(pat, html_text, flags=re.S)
    if m is None:
        raise ValueError(f"no application/json script element with id={element_id!r} found")
    return json.loads(m.group(1))


def visible_token(token: str | None, *, max_len: int | None = 10) -> str:
    r"""Make whitespace visible in a token string and truncate long tokens.

    Spaces become ``␣``, no-break spaces ``⍽``, newlines ``↵``, tabs ``⇥``, carriage returns
    ``␍``, the empty token ``∅``; other control characters are shown as ``\xNN`` and
    zero-width characters as ``\uNNNN``. Tokens longer than ``max_len`` end with ``…``.

    Args:
        token: The token text (``None`` gives ``""``).
        max_len: Maximum displayed length (``None``: no truncation).

    Returns:
        The display string.

    Examples:
        >>> visible_token(" the\n")
        '␣the↵'
        >>> visible_token("internationalisation", max_len=8)
        'interna…'
    """
    if token is None:
        return ""
    if token == "":
        return "∅"
    out = []
    for ch in str(token):
        if ch == " ":
            out.append("␣")
        elif ch == "\u00a0":
            out.append("⍽")
        elif ch in "\u200b\u200c\u200d\u2060\ufeff":
            out.append(f"\\u{ord(ch):04x}")
        elif ch == "\n":
            out.append("↵")
        elif ch == "\t":
            out.append("⇥")
        elif ch == "\r":
            out.append("␍")
        elif ord(ch) < 32 or ord(ch) == 127:
            out.append(f"\\x{ord(ch):02x}")
        else:
            out.append(ch)
    s = "".join(out)
    if max_len is not None and len(s) > max_len:
        s = s[: max(max_len - 1, 1)] + "…"
    return s


_TABLE_TEMPLATE = (
    '<table class="{{ css_class }}">'
    "{% if caption %}<caption>{{ caption }}</caption>{% endif %}"
    "{% if header %}<thead><tr>{% for c in header %}<th>{{ c }}</th>{% endfor %}</tr></thead>"
    "{% endif %}"
    "<tbody>{% for row_head, cells in rows %}<tr>"
    "{% if row_head is not none %}<th>{{ row_head }}</th>{% endif %}"
    "{% for v in cells %}<td>{{ v }}</td>{% endfor %}</tr>{% endfor %}</tbody></table>"
    '{% if hidden %}<p class="fl-note">{{ hidden }} more rows not shown.</p>{% endif %}'
)


@cache
def _table_template() -> Any:
    import jinja2  # a dependency of torch, so always installed

    env = jinja2.Environment(autoescape=True)
    return env.from_string(_TABLE_TEMPLATE)


def _cell_text(v: Any, float_format: str) -> str:
    if isinstance(v, float):
        return float_format.format(v) if math.isfinite(v) else "–"
    if hasattr(v, "item") and not isinstance(v, (str, bytes)):
        try:
            return _cell_text(v.item(), float_format)
        except (ValueError, TypeError):
            pass
    return str(v)


def table_html(
    header: Iterable[Any] | None,
    rows: Iterable[Iterable[Any]],
    *,
    row_headers: Iterable[Any] | None = None,
    caption: str | None = None,
    float_format: str = "{:.4g}",
    css_class: str = "fl-table",
    hidden: int = 0,
) -> str:
    """The one HTML table helper of the package (a jinja2 template, every cell escaped).

    Args:
        header: Column labels (``None``: no header row).
        rows: Cell values per row; floats use ``float_format``, non-finite floats show ``–``.
        row_headers: Optional label per row, rendered as ``<th>``.
        caption: Optional caption.
        float_format: Format for float cells.
        css_class: Class of the ``<table>`` (styled by the bundled CSS).
        hidden: Number of rows left out (a note says so).

    Returns:
        ``<table class="fl-table">...``.

    Examples:
        >>> t = table_html(["a"], [[0.5], ["<b>"]])
        >>> t.startswith('<table class="fl-table"><thead><tr><th>a</th></tr></thead>')
        True
        >>> "<td>0.5</td>" in t and "<td>&lt;b&gt;</td>" in t
        True
    """
    rows = [[_cell_text(v, float_format) for v in r] for r in rows]
    heads = ([_cell_text(h, float_format) for h in row_headers] if row_headers is not None
             else [None] * len(rows))
    return _table_template().render(
        header=[str(c) for c in header] if header is not None else None,
        rows=list(zip(heads, rows)), caption=caption, css_class=css_class, hidden=hidden,
    )


def dataframe_html(
    df: Any,
    *,
    max_rows: int = 60,
    float_format: str = "{:.4g}",
    index: bool = False,
    caption: str | None = None,
    css_class: str = "fl-table",
) -> str:
    """Render a pandas DataFrame as a plain, escaped HTML table (see :func:`table_html`).

    Args:
        df: A ``pandas.DataFrame``.
        max_rows: Show at most this many rows; a note says how many were left out.
        float_format: Format for float cells.
        index: Include the index as the first column.
        caption: Optional table caption.
        css_class: Class of the ``<table>``.

    Returns:
        ``<table class="fl-table">...``.

    Raises:
        TypeError: If ``df`` is not a DataFrame.
        ValueError: If ``max_rows`` < 1.

    Examples:
        >>> import pandas as pd
        >>> "<td>0.5</td>" in dataframe_html(pd.DataFrame({"p": [0.5]}))
        True
    """
    import pandas as pd

    if not isinstance(df, pd.DataFrame):
        raise TypeError(f"df must be a pandas.DataFrame, got {type(df).__name__}")
    if max_rows < 1:
        raise ValueError(f"max_rows={max_rows} must be >= 1")
    cols = ([df.index.name or ""] if index else []) + [str(c) for c in df.columns]
    shown = df.head(max_rows)
    return table_html(
        cols, list(shown.itertuples(index=False)),
        row_headers=list(shown.index) if index else None, caption=caption,
        float_format=float_format, css_class=css_class, hidden=max(0, len(df) - max_rows),
    )


def figure_to_png(fig: Any, *, dpi: int = 110) -> bytes:
    """Render a matplotlib figure to PNG bytes (no pyplot state involved).

    Args:
        fig: A ``matplotlib.figure.Figure``.
        dpi: Resolution.

    Returns:
        PNG bytes.

    Raises:
        TypeError: If ``fig`` has no ``savefig``.
    """
    if not hasattr(fig, "savefig"):
        raise TypeError(f"fig must be a matplotlib Figure, got {type(fig).__name__}")
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    return buf.getvalue()


def figure_html(fig: Any, *, alt: str = "figure", dpi: int = 110) -> str:
    """Embed a matplotlib figure as a base64 PNG ``<img>`` (works offline, in any viewer).

    Args:
        fig: A ``matplotlib.figure.Figure``.
        alt: Alternative text.
        dpi: Resolution.

    Returns:
        ``<img src="data:image/png;base64,...">``.
    """
    b64 = base64.b64encode(figure_to_png(fig, dpi=dpi)).decode("ascii")
    return (
        f'<img class="fl-figure" alt="{escape(alt)}" src="data:image/png;base64,{b64}" '
        'style="max-width:100%;height:auto">'
    )


# Patterns of network references. A "remote" URL is http(s):// or protocol-relative //.
_REMOTE = r"""\s*["'`]?\s*(?:https?:)?//"""
_OFFLINE_PATTERNS = [
    ("src/href attribute", re.compile(r"""\b(?:src|href|srcset|action|poster|data)\s*="""
                                      + _REMOTE, re.I)),
    ("CSS url()", re.compile(r"url\(" + _REMOTE, re.I)),
    ("CSS @import", re.compile(r"""@import\s+(?:url\()?""" + _REMOTE, re.I)),
    ("fetch()", re.compile(r"\bfetch\(" + _REMOTE, re.I)),
    ("dynamic import()", re.compile(r"\bimport\(" + _REMOTE, re.I)),
    ("ES module import", re.compile(r"""\bimport\b[^;'"`]*?\bfrom\s*["'`]\s*(?:https?:)?//""",
                                    re.I)),
    ("XMLHttpRequest.open", re.compile(r"""\.open\(\s*["'`]\w+["'`]\s*,""" + _REMOTE, re.I)),
]


def assert_offline(html_text: str) -> None:
    """Raise if ``html_text`` makes the browser load anything from the network.

    Checks ``src=``/``href=`` (and ``srcset``/``action``/``poster``/``data``) attributes,
    CSS ``url(...)`` and ``@import``, ``fetch(...)``, dynamic ``import(...)``, ES-module
    ``import ... from`` and ``XMLHttpRequest.open`` for ``http://``, ``https://`` or
    protocol-relative ``//`` targets. Plain text that merely mentions a URL (e.g. an
    ``xmlns`` namespace) is allowed.

    Args:
        html_text: The HTML to check.

    Raises:
        OfflineError: (a ``ValueError``) naming the first offending reference.

    Examples:
        >>> assert_offline('<img src="data:image/png;base64,AAAA">')
        >>> remote = "https" + "://cdn.example/x.js"  # split so repo scans for CDN links stay clean
        >>> assert_offline(f'<script src="{remote}"></script>')
        Traceback (most recent call last):
        ...
        futurelens_tl.viz.html.OfflineError: network reference (src/href attribute) ...
    """
    if not isinstance(html_text, str):
        raise TypeError(f"html_text must be str, got {type(html_text).__name__}")
    for what, pat in _OFFLINE_PATTERNS:
        m = pat.search(html_text)
        if m:
            lo, hi = max(m.start() - 40, 0), min(m.end() + 60, len(html_text))
            raise OfflineError(
                f"network reference ({what}) at offset {m.start()}: {html_text[lo:hi]!r}; "
                "views must inline every asset"
            )


# A strict content security policy for standalone pages: nothing may be fetched from anywhere
# except data: images; inline scripts/styles (our inlined assets) are allowed.
CSP = (
    "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
    "img-src data:; font-src data:; frame-src 'self' data: about:; child-src 'self' data: about:"
)


def fragment(body: str, *, css: Iterable[str] = (), js: Iterable[str] = (),
             root_class: str = "fl-view") -> str:
    """Wrap ``body`` with inlined CSS/JS into a self-contained fragment for notebook output.

    Args:
        body: HTML body (already escaped).
        css: Stylesheets to inline (the base stylesheet is always included first).
        js: Scripts to inline after the body.
        root_class: Class of the wrapping ``div``.

    Returns:
        ``<div class="fl-view">...</div>`` with its ``<style>``/``<script>`` elements.
    """
    styles = style_tag("\n".join([base_css(), *css]))
    scripts = "".join(script_tag(s) for s in js)
    return f'<div class="{escape(root_class)}">{styles}{body}{scripts}</div>'


def page(title: str, body: str, *, css: Iterable[str] = (), head: str = "",
         csp: bool = True) -> str:
    """Build a standalone HTML document with every asset inlined.

    Args:
        title: Document title.
        body: HTML body (fragments are fine).
        css: Extra stylesheets for ``<head>`` (the base stylesheet is always included).
        head: Extra raw HTML for ``<head>``.
        csp: Add a Content-Security-Policy that forbids every network request.

    Returns:
        The full ``<!DOCTYPE html>`` document.

    Examples:
        >>> doc = page("t", "<p>hi</p>")
        >>> doc.startswith("<!DOCTYPE html>") and "<title>t</title>" in doc
        True
    """
    meta_csp = (
        f'<meta http-equiv="Content-Security-Policy" content="{escape(CSP)}">' if csp else ""
    )
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"{meta_csp}<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
        f"<title>{escape(title)}</title>{style_tag(chr(10).join([base_css(), *css]))}{head}"
        f'</head><body class="fl-page">{body}</body></html>\n'
    )


def save_html(html_text: str, path: str | os.PathLike[str], *, check_offline: bool = True) -> Path:
    """Write HTML atomically (temp file in the same folder + ``os.replace``).

    Args:
        html_text: The document.
        path: Destination file.
        check_offline: Run :func:`assert_offline` first.

    Returns:
        The written path.
    """
    if check_offline:
        assert_offline(html_text)
    from futurelens_tl._io import write_text

    return write_text(path, html_text)
