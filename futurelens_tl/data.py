"""Text -> token windows -> activations, with one forward pass feeding every layer.

* :func:`token_windows` turns texts (or a file, or a Hugging Face dataset column) into
  ``[n, length]`` windows, each starting with BOS, never longer than ``n_ctx``.
* :func:`iter_batches` streams ``(logits, resid[layers, batch, pos, d])`` from **one** no-grad
  forward per batch; trainers consume it so every layer trains from the same pass.
* :func:`cache_residuals` gathers the residuals at chosen positions of every window into
  memory (what the Future Lens caches: the source states for all layers plus final-layer targets).

Every forward made here is counted in :data:`FORWARD_COUNTER` so benchmarks and tests can assert
"exactly one pass per batch".
"""

from __future__ import annotations

import numbers
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from jaxtyping import Int
from torch import Tensor

from futurelens_tl.models.view import LayerLike, ModelView, as_view
from futurelens_tl.progress import progress  # re-exported: data.progress stays importable

__all__ = [
    "FORWARD_COUNTER",
    "ForwardCounter",
    "ResidualCache",
    "cache_residuals",
    "iter_batches",
    "load_texts",
    "progress",
    "token_windows",
]


@dataclass
class ForwardCounter:
    """Counts model forward passes (and the tokens they covered) made by this module."""

    passes: int = 0
    tokens: int = 0

    def reset(self) -> None:
        self.passes = 0
        self.tokens = 0


FORWARD_COUNTER = ForwardCounter()


_TEXT_SUFFIXES = (".txt", ".text", ".jsonl", ".json", ".csv", ".md", ".arrow", ".parquet")


def _looks_like_path(s: str) -> bool:
    """A one-line string without spaces that names a file (``data/x.txt``, ``~/c.jsonl``)."""
    if not s or len(s) > 4096 or "\n" in s or s != s.strip() or " " in s:
        return False
    return (s.lower().endswith(_TEXT_SUFFIXES) or s.startswith(("~", "./", "../"))
            or os.sep in s or "/" in s)


def _read_jsonl(path: str, column: str) -> list[str]:
    import json

    texts = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}:{lineno} is not valid JSON ({err})") from None
            if not isinstance(rec, dict) or column not in rec:
                keys = sorted(rec) if isinstance(rec, dict) else type(rec).__name__
                raise ValueError(f"{path}:{lineno} has no {column!r} field (it has {keys}); "
                                 "pass column=... to read another field")
            if not isinstance(rec[column], str):
                raise TypeError(f"{path}:{lineno}: field {column!r} is a "
                                f"{type(rec[column]).__name__}, not a string")
            texts.append(rec[column])
    return texts


def _read_file(path: str, column: str) -> list[str]:
    if os.path.isdir(path):
        import datasets  # optional: only for on-disk HF datasets

        ds = datasets.load_from_disk(path)
        if column not in ds.column_names:
            raise ValueError(f"dataset {path!r} has no column {column!r} (it has "
                             f"{ds.column_names}); pass column=...")
        texts = list(ds[column])
    elif path.endswith(".jsonl"):
        texts = _read_jsonl(path, column)
    else:
        try:
            with open(path, encoding="utf-8") as f:
                texts = f.read().split("\n\n")
        except UnicodeDecodeError as err:
            raise ValueError(f"{path!r} is not UTF-8 text ({err}); give a .txt (blank-line "
                             "separated documents) or .jsonl file") from None
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise TypeError(f"{path!r}: document {i} is a {type(t).__name__}, not a string")
    return texts


def load_texts(
    source: str | os.PathLike[str] | Iterable[str], *, column: str = "text"
) -> list[str]:
    """Texts from strings or a file; what is a path and what is text is never guessed silently.

    * a :class:`pathlib.Path` (any ``os.PathLike``) is always a file: a ``.txt`` file
      (blank-line separated documents), a ``.jsonl`` file (``column`` field of every line) or
      a directory holding a Hugging Face ``datasets`` split saved to disk; a missing one raises
      ``FileNotFoundError``;
    * a ``str`` naming an existing file is read as that file; a ``str`` that looks like a file
      path (one line, no spaces, a ``/`` or a text-file suffix such as ``.txt``) but names no
      file raises ``FileNotFoundError`` instead of being read as a one-line document; any other
      ``str`` is one document;
    * a list/tuple (any iterable) of strings is always documents, never paths (pass ``[s]`` to
      use a path-like string as text).

    Blank documents are dropped.

    Raises:
        FileNotFoundError: A path (or path-like string) that does not exist.
        TypeError: A non-string item (the message names its index) or an unsupported source.
        ValueError: No non-empty text, a ``.jsonl`` line without ``column``, non-UTF-8 text.

    Examples:
        >>> from futurelens_tl.data import load_texts
        >>> load_texts(["one doc", "", "two"])
        ['one doc', 'two']
        >>> try:
        ...     load_texts("/no/such/corpus.txt")
        ... except FileNotFoundError as err:
        ...     print(type(err).__name__)
        FileNotFoundError
    """
    if isinstance(source, os.PathLike):
        path = os.fspath(source)
        if not os.path.exists(path):
            raise FileNotFoundError(f"texts file {path!r} does not exist")
        texts = _read_file(path, column)
    elif isinstance(source, str):
        if "\n" not in source and len(source) < 4096 and os.path.exists(source):
            texts = _read_file(source, column)
        elif _looks_like_path(source):
            raise FileNotFoundError(
                f"texts={source!r} looks like a file path but no such file exists; pass an "
                "existing file, or [text] to use the string itself as a document."
            )
        else:
            texts = [source]
    elif isinstance(source, (bytes, bytearray, dict)) or not isinstance(source, Iterable):
        raise TypeError(f"texts must be a string, a list of strings or a file path, got "
                        f"{type(source).__name__}")
    else:
        texts = list(source)
        for i, t in enumerate(texts):
            if not isinstance(t, str):
                raise TypeError(f"texts[{i}] is a {type(t).__name__} ({t!r:.40}), not a string; "
                                "every document must be a str")
    texts = [t for t in texts if t.strip()]
    if not texts:
        raise ValueError("texts is empty: give at least one non-empty document.")
    return texts


def token_windows(
    model: Any,
    texts: str | os.PathLike[str] | Sequence[str] | Tensor,
    *,
    length: int | None = None,
    max_windows: int | None = None,
    prepend_bos: bool = True,
) -> Int[Tensor, "n length"]:
    """Cut texts into windows of ``length`` tokens (BOS first), documents separated by BOS.

    Documents are tokenised without BOS, joined into one stream with the BOS/EOS token between
    them, and cut into consecutive windows of ``length - 1`` stream tokens, each prefixed with
    BOS. The incomplete tail is dropped. Long texts are therefore windowed, never truncated
    silently and never longer than ``n_ctx``.

    Args:
        model: The model (its tokenizer and ``n_ctx`` are used).
        texts: A string, a list of strings, a file (see :func:`load_texts` for how paths and
            text are told apart), or a ready ``[n, length]`` token tensor.
        length: Window length including BOS (default ``min(n_ctx, 128)``).
        max_windows: Keep at most this many windows.
        prepend_bos: Start every window with BOS.

    Raises:
        ValueError: Empty corpus, ``length`` < 2 or > ``n_ctx``, or a corpus shorter than one
            window.
        TypeError: A non-string document (named by index) or a non-int ``length``.
        FileNotFoundError: A path that does not exist (see :func:`load_texts`).
    """
    view = as_view(model)
    if isinstance(texts, Tensor):
        return view.to_tokens(texts, arg="texts")
    if length is not None and (isinstance(length, bool) or
                               not isinstance(length, numbers.Integral)):
        raise TypeError(f"length must be an int, got {type(length).__name__}")
    if max_windows is not None and (isinstance(max_windows, bool) or
                                    not isinstance(max_windows, numbers.Integral) or
                                    max_windows < 1):
        raise ValueError(f"max_windows={max_windows!r} must be None or an int >= 1")
    length = min(view.n_ctx, 128) if length is None else int(length)
    if length < 2 or length > view.n_ctx:
        raise ValueError(f"length={length} must be in 2..n_ctx={view.n_ctx}")
    docs = load_texts(texts)
    tok = view.tokenizer
    if tok is None:
        raise ValueError("the model has no tokenizer; pass token ids instead of texts")
    sep = tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id
    stream: list[int] = []
    for doc in docs:
        ids = tok(doc, add_special_tokens=False)["input_ids"]
        if stream and sep is not None:
            stream.append(sep)
        stream.extend(ids)
    body = length - 1 if (prepend_bos and sep is not None) else length
    n = len(stream) // body
    if max_windows is not None:
        n = min(n, int(max_windows))
    if n == 0:
        raise ValueError(
            f"the corpus has {len(stream)} tokens, fewer than one window of {length}; give "
            "more text or a smaller length."
        )
    windows = torch.tensor(stream[: n * body], dtype=torch.long).view(n, body)
    if body < length:
        windows = torch.cat([torch.full((n, 1), sep, dtype=torch.long), windows], dim=1)
    return windows


def iter_batches(
    model: Any,
    tokens: Int[Tensor, "n pos"],
    *,
    layers: Iterable[LayerLike] | None = None,
    batch_size: int = 8,
    verbose: bool = True,
    desc: str = "forward",
) -> Iterator[tuple[Tensor, Tensor, Tensor]]:
    """Yield ``(tokens, logits, resid)`` per batch from one no-grad forward each.

    ``resid[k]`` is the residual at ``layers[k]`` (default all layers, ``-1 .. L-1``).
    """
    view = as_view(model)
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size} must be >= 1")
    idx = view.layer_indices(layers)
    for start in progress(range(0, tokens.shape[0], batch_size), verbose=verbose, desc=desc):
        batch = tokens[start : start + batch_size].to(view.device)
        with torch.inference_mode():
            logits, resid = view.residuals(batch, idx)
        FORWARD_COUNTER.passes += 1
        FORWARD_COUNTER.tokens += batch.numel()
        yield batch, logits, resid


@dataclass
class ResidualCache:
    """Residuals gathered at chosen positions of every window (kept on ``device``).

    Attributes:
        layers: Layer of each row of ``resid``.
        resid: ``[layers, n, k, d_model]`` residuals at the selected positions.
        positions: ``[n, k]`` the positions gathered per window.
        tokens: ``[n, pos]`` the windows.
        n_forward: Forward passes spent building the cache.
    """

    layers: list[int]
    resid: Tensor
    positions: Tensor
    tokens: Tensor
    n_forward: int = 0
    meta: dict[str, Any] = field(default_factory=dict)


def cache_residuals(
    model: Any,
    tokens: Int[Tensor, "n pos"],
    positions: Int[Tensor, "n k"] | None = None,
    *,
    layers: Iterable[LayerLike] | None = None,
    batch_size: int = 8,
    dtype: torch.dtype | None = None,
    device: str | torch.device = "cpu",
    verbose: bool = True,
) -> ResidualCache:
    """Run every window once and keep the residuals at ``positions`` for all ``layers``.

    Args:
        model: The model.
        tokens: ``[n, pos]`` windows.
        positions: ``[n, k]`` positions to keep per window (default: all positions).
        layers: Layers to keep (default all).
        batch_size: Windows per forward pass.
        dtype: Storage dtype (default: the model's).
        device: Where the cache lives (default CPU, so GPU memory holds only one batch).
        verbose: Progress bar.
    """
    view: ModelView = as_view(model)
    idx = view.layer_indices(layers)
    n, pos = tokens.shape
    if positions is None:
        positions = torch.arange(pos).expand(n, pos)
    positions = positions.long()
    if positions.shape[0] != n:
        raise ValueError(f"positions has {positions.shape[0]} rows for {n} windows")
    if positions.numel() and (int(positions.min()) < 0 or int(positions.max()) >= pos):
        raise ValueError(f"positions must lie in 0..{pos - 1}")
    chunks = []
    before = FORWARD_COUNTER.passes
    for i, (_, _, resid) in enumerate(
        iter_batches(view, tokens, layers=idx, batch_size=batch_size, verbose=verbose, desc="cache")
    ):
        p = positions[i * batch_size : i * batch_size + resid.shape[1]].to(resid.device)
        gather = p[None, :, :, None].expand(resid.shape[0], -1, -1, resid.shape[-1])
        picked = resid.gather(2, gather)
        chunks.append(picked.to(device=device, dtype=dtype or picked.dtype))
    return ResidualCache(
        layers=idx,
        resid=torch.cat(chunks, dim=1),
        positions=positions,
        tokens=tokens,
        n_forward=FORWARD_COUNTER.passes - before,
    )
