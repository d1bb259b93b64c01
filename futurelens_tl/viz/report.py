"""Standalone multi-section report pages with a table of contents.

Used by the ``futurelens-tl report`` command (and by anyone assembling several views into one
file): every section is a title plus an HTML fragment produced by a view (lens grid, tables,
base64 figures, offline circuitsvis iframes, ...). The page inlines every asset and carries a
Content-Security-Policy that forbids network requests (reference lenses-and-transformerlens.md
§D, "ours": standalone ``.html`` export embeds every asset). Part of the leaf package
:mod:`futurelens_tl.viz`.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .html import assert_offline, asset, escape, page, save_html, table_html

__all__ = ["Section", "report_html", "write_report"]


@dataclass
class Section:
    """One report section.

    Attributes:
        title: Heading text (plain text; escaped on render).
        html: The section body, an HTML fragment.
        level: 2 for a section, 3 for a subsection (nested in the table of contents).
        anchor: Optional fixed anchor id (default: derived from the title, made unique).
        note: Optional one-line plain-text note shown under the heading.
    """

    title: str
    html: str
    level: int = 2
    anchor: str | None = None
    note: str | None = None


def _slug(text: str) -> str:
    s = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    return s or "section"


def _as_section(item: Any, i: int) -> Section:
    if isinstance(item, Section):
        sec = item
    elif isinstance(item, (tuple, list)) and len(item) == 2:
        sec = Section(str(item[0]), item[1])
    else:
        raise TypeError(
            f"sections[{i}] must be a Section or a (title, html) pair, got {type(item).__name__}"
        )
    if not isinstance(sec.html, str):
        raise TypeError(f"sections[{i}] html must be str, got {type(sec.html).__name__}")
    if sec.level not in (2, 3):
        raise ValueError(f"sections[{i}].level={sec.level!r} must be 2 or 3")
    return sec


def report_html(
    title: str,
    sections: Sequence[Section | tuple[str, str]],
    *,
    subtitle: str | None = None,
    meta: Mapping[str, Any] | None = None,
    check_offline: bool = True,
) -> str:
    """Assemble a standalone report page: header, table of contents, sections.

    Args:
        title: Page title and main heading.
        sections: ``Section`` objects or ``(title, html_fragment)`` pairs, in order.
        subtitle: Optional line under the title.
        meta: Optional key/value facts shown under the title (model, fingerprint, date, ...).
        check_offline: Run :func:`~futurelens_tl.viz.html.assert_offline` on the result.

    Returns:
        The full ``<!DOCTYPE html>`` document.

    Raises:
        TypeError: On a malformed section.
        ValueError: On an empty section list or a bad level.
        OfflineError: If a fragment refers to the network (with ``check_offline``).

    Examples:
        >>> doc = report_html("Toy report", [("Lens grid", "<p>grid</p>"), ("Heads", "<p>h</p>")])
        >>> 'href="#lens-grid"' in doc and 'id="heads"' in doc
        True
    """
    if not sections:
        raise ValueError("sections is empty; a report needs at least one (title, html) section")
    secs = [_as_section(s, i) for i, s in enumerate(sections)]
    used: set[str] = set()
    anchors = []
    for sec in secs:
        base = _slug(sec.anchor or sec.title)
        a, n = base, 2
        while a in used:
            a, n = f"{base}-{n}", n + 1
        used.add(a)
        anchors.append(a)

    toc = ['<nav class="fl-toc" aria-label="contents"><b>Contents</b><ol>']
    open_sub = False
    for sec, a in zip(secs, anchors):
        link = f'<a href="#{a}">{escape(sec.title)}</a>'
        if sec.level == 3:
            if not open_sub:
                toc.append("<ol>")
                open_sub = True
            toc.append(f"<li>{link}</li>")
        else:
            if open_sub:
                toc.append("</ol>")
                open_sub = False
            toc.append(f"<li>{link}</li>")
    if open_sub:
        toc.append("</ol>")
    toc.append("</ol></nav>")

    body = []
    for sec, a in zip(secs, anchors):
        note = f'<p class="fl-note">{escape(sec.note)}</p>' if sec.note else ""
        body.append(f'<section id="{a}"><h{sec.level}>{escape(sec.title)}</h{sec.level}>'
                    f"{note}{sec.html}</section>")

    header = f"<header><h1>{escape(title)}</h1>"
    if subtitle:
        header += f'<div class="fl-subtitle">{escape(subtitle)}</div>'
    if meta:
        header += table_html(None, [[v] for v in meta.values()], row_headers=list(meta),
                             css_class="fl-meta")
    header += "</header>"
    doc = page(
        title,
        f'<div class="fl-report">{header}{"".join(toc)}<main>{"".join(body)}</main></div>',
        css=[asset("report.css")],
    )
    if check_offline:
        assert_offline(doc)
    return doc


def write_report(
    path: str | os.PathLike[str],
    title: str,
    sections: Sequence[Section | tuple[str, str]],
    **kwargs: Any,
) -> Path:
    """Build a report with :func:`report_html` and write it atomically to ``path``.

    Args:
        path: Destination ``.html`` file (parent folders are created).
        title: Page title.
        sections: As for :func:`report_html`.
        **kwargs: Passed to :func:`report_html` (``subtitle``, ``meta``).

    Returns:
        The written path.
    """
    return save_html(report_html(title, sections, **kwargs), path)
