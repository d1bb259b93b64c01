"""Embed circuitsvis views offline (reference lenses-and-transformerlens.md §D).

circuitsvis' ``RenderedHTML`` carries two renderings: ``local_src`` (its ~1.3 MB JS bundle
inlined) and ``cdn_src`` (imports from unpkg). Its ``_repr_html_`` probes ``http://google.com``
on every render and returns ``cdn_src`` when online; ``str(obj)`` and ``show_code()`` return
``cdn_src`` too, so HTML saved that way is blank offline. Here only ``obj.local_src`` is ever
used — inside an ``<iframe srcdoc>`` (isolated, so several views and our own scripts never
clash) or inline — and ``_repr_html_``/``str``/``cdn_src`` are never touched. Large attention
tensors are downsampled before rendering, because circuitsvis serialises props as JSON lists.

Part of the leaf package :mod:`futurelens_tl.viz`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .html import CSP, assert_offline, escape

__all__ = ["attention_heads_html", "circuitsvis_html", "downsample_attention"]


def circuitsvis_html(obj: Any, *, iframe: bool = True, height: int = 520,
                     title: str = "circuitsvis view") -> str:
    """Offline HTML for a circuitsvis ``RenderedHTML`` (its ``local_src`` only).

    Args:
        obj: The object a circuitsvis function returned (anything with a ``local_src`` str).
        iframe: Wrap it in a sandboxed ``<iframe srcdoc>`` (recommended: isolates the bundle;
            works in standalone pages, Jupyter and VS Code). ``False`` returns ``local_src``.
        height: Iframe height in pixels.
        title: Iframe title (accessibility).

    Returns:
        HTML with the circuitsvis bundle inlined; no network reference.

    Raises:
        TypeError: If ``obj`` has no string ``local_src`` (e.g. a plain string from ``str(obj)``,
            which is the CDN variant).
        OfflineError: If the bundle refers to the network.

    Examples:
        >>> import circuitsvis.attention as cva  # doctest: +SKIP
        >>> obj = cva.attention_heads(attention=pattern, tokens=toks)  # doctest: +SKIP
        >>> html = circuitsvis_html(obj)  # doctest: +SKIP
    """
    src = getattr(obj, "local_src", None)
    if not isinstance(src, str):
        raise TypeError(
            "obj must be a circuitsvis RenderedHTML with a local_src string, got "
            f"{type(obj).__name__}; do not pass str(obj) or cdn_src, which load from a CDN"
        )
    if not isinstance(height, int) or height < 50:
        raise ValueError(f"height={height!r} must be an int >= 50 (pixels)")
    assert_offline(src)
    if not iframe:
        return src
    doc = (
        '<!DOCTYPE html><html><head><meta charset="utf-8">'
        f'<meta http-equiv="Content-Security-Policy" content="{escape(CSP)}">'
        "<style>body{margin:4px;font-family:system-ui,sans-serif}</style></head>"
        f"<body>{src}</body></html>"
    )
    return (
        f'<iframe class="fl-iframe" data-role="circuitsvis" title="{escape(title)}" '
        f'sandbox="allow-scripts" style="height:{height}px" srcdoc="{escape(doc)}"></iframe>'
    )


def downsample_attention(
    attention: Any,
    tokens: Sequence[str],
    *,
    max_tokens: int = 64,
    max_heads: int | None = 48,
    head_names: Sequence[str] | None = None,
    mode: str = "pool",
    digits: int = 3,
) -> tuple[Any, list[str], list[str], str]:
    """Shrink an attention tensor ``[heads, dest, src]`` for rendering.

    ``mode="pool"`` groups positions into ``ceil(T / max_tokens)``-sized blocks: a coarse cell
    is the *sum* over the block's source positions of the *mean* over its destination
    positions, so every row still sums to what it summed to before (1 for a softmax pattern).
    Block labels are ``first_token…(+n)``. ``mode="window"`` keeps the last ``max_tokens``
    positions unchanged (rows then no longer sum to 1). Heads beyond ``max_heads`` are dropped.

    Args:
        attention: Array-like ``[heads, dest, src]`` or ``[dest, src]`` (numpy or torch).
        tokens: Token strings, one per position.
        max_tokens: Maximum positions kept.
        max_heads: Maximum heads kept (``None``: all).
        head_names: Names of the heads (default ``"H0", "H1", ...``).
        mode: ``"pool"`` or ``"window"``.
        digits: Round the values (smaller JSON).

    Returns:
        ``(attention float32 [h, t, t], tokens, head_names, note)``; ``note`` says what was
        dropped or pooled ("" when nothing was).

    Raises:
        ValueError: On inconsistent shapes or bad options.

    Examples:
        >>> import numpy as np
        >>> a = np.tril(np.ones((4, 4))); a /= a.sum(-1, keepdims=True)
        >>> small, toks, names, note = downsample_attention(a, list("abcd"), max_tokens=2)
        >>> small.shape, toks, small.sum(-1).round(3).tolist()
        ((1, 2, 2), ['a…(+1)', 'c…(+1)'], [[1.0, 1.0]])
    """
    import numpy as np

    if hasattr(attention, "detach"):
        attention = attention.detach().float().cpu().numpy()
    a = np.asarray(attention, dtype=np.float64)
    if a.ndim == 2:
        a = a[None]
    if a.ndim != 3 or a.shape[1] != a.shape[2]:
        raise ValueError(
            f"attention must be [heads, dest, src] (or [dest, src]) with dest == src, got shape "
            f"{tuple(np.shape(attention))}"
        )
    H, T, _ = a.shape
    tokens = [str(t) for t in tokens]
    if len(tokens) != T:
        raise ValueError(f"tokens has {len(tokens)} entries but attention has {T} positions")
    if head_names is None:
        head_names = [f"H{i}" for i in range(H)]
    head_names = [str(n) for n in head_names]
    if len(head_names) != H:
        raise ValueError(f"head_names has {len(head_names)} entries, expected {H}")
    if mode not in ("pool", "window"):
        raise ValueError(f"mode={mode!r} must be 'pool' or 'window'")
    if max_tokens < 1 or (max_heads is not None and max_heads < 1):
        raise ValueError(f"max_tokens={max_tokens}, max_heads={max_heads} must be >= 1")
    notes = []
    if max_heads is not None and H > max_heads:
        a, head_names = a[:max_heads], head_names[:max_heads]
        notes.append(f"showing the first {max_heads} of {H} heads")
    if T > max_tokens:
        if mode == "window":
            a = a[:, T - max_tokens:, T - max_tokens:]
            tokens = tokens[T - max_tokens:]
            notes.append(f"showing the last {max_tokens} of {T} positions")
        else:
            b = -(-T // max_tokens)
            n = -(-T // b)
            pad = n * b - T
            # mean over destination rows in a block (ignoring padding), sum over sources
            ap = np.pad(a, ((0, 0), (0, pad), (0, pad)))
            summed = ap.reshape(a.shape[0], n, b, n, b).sum(axis=4)  # [h, n, b, n]
            counts = np.array([min(b, T - i * b) for i in range(n)], dtype=np.float64)
            a = summed.sum(axis=2) / counts[None, :, None]
            tokens = [tokens[i * b] + (f"…(+{min(b, T - i * b) - 1})"
                                       if min(b, T - i * b) > 1 else "") for i in range(n)]
            notes.append(f"{T} positions pooled into {n} blocks of {b}")
    return a.round(digits).astype(np.float32), tokens, list(head_names), "; ".join(notes)


def attention_heads_html(
    attention: Any,
    tokens: Sequence[str],
    *,
    head_names: Sequence[str] | None = None,
    max_tokens: int = 64,
    max_heads: int | None = 48,
    mode: str = "pool",
    iframe: bool = True,
    height: int = 620,
) -> str:
    """Attention-heads view of circuitsvis, downsampled and embedded offline.

    Args:
        attention: ``[heads, dest, src]`` pattern (numpy or torch).
        tokens: Token strings (one per position).
        head_names: Head names (default ``H0, H1, ...``).
        max_tokens: See :func:`downsample_attention`.
        max_heads: See :func:`downsample_attention`.
        mode: See :func:`downsample_attention`.
        iframe: See :func:`circuitsvis_html`.
        height: Iframe height in pixels.

    Returns:
        Offline HTML (a note above the view says what was downsampled).

    Raises:
        ImportError: If circuitsvis is not installed.

    Examples:
        >>> import numpy as np
        >>> a = np.tril(np.ones((2, 5, 5))); a /= a.sum(-1, keepdims=True)
        >>> html = attention_heads_html(a, list("abcde"))
        >>> "srcdoc=" in html and "unpkg" not in html
        True
    """
    try:
        import circuitsvis.attention as cva
    except ImportError as e:  # pragma: no cover - circuitsvis is a dependency
        raise ImportError("attention_heads_html needs circuitsvis (pip install circuitsvis)") from e
    a, toks, names, note = downsample_attention(
        attention, tokens, max_tokens=max_tokens, max_heads=max_heads, head_names=head_names,
        mode=mode,
    )
    obj = cva.attention_heads(attention=a.tolist(), tokens=toks, attention_head_names=names)
    out = circuitsvis_html(obj, iframe=iframe, height=height, title="attention heads")
    if note:
        out = f'<p class="fl-note">{escape(note)}</p>' + out
    return out
