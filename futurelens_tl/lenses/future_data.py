"""Feature cache for the Future Lens: contexts, labels and residuals from one pass per batch.

Reference ``future-lens.md`` §3 (dataset construction) and §7 (efficiency). A
:class:`FutureLensData` holds, for ``n`` contexts ``x_0 = BOS, x_1..x_T``:

* ``labels[i, N] = y_N = x_{T+1+N}`` for ``N = 0..n_max``: the model's own greedy continuation
  (default, ``label_source="model_greedy"``) or the corpus text (``label_source="corpus"``),
  stored as token ids (never decoded strings);
* ``sources[k, i]``: ``h_T^l`` for every layer ``l = layers[k]`` (``-1`` = embedding output);
* ``targets[i, N]``: the final-layer residual at ``T + N`` on ``BOS + prefix + y_0..y_{N-1}``,
  from which ``P_model^N`` is recomputed on demand with the frozen final norm + unembedding
  (:meth:`FutureLensData.target_logprobs`); 50k-wide logits are never stored.

Everything cached comes from **one** no-grad forward per batch over ``BOS + prefix +
y_0..y_{n_max-1}`` (counted in :data:`futurelens_tl.data.FORWARD_COUNTER`). Greedy labels need
``n_max`` extra logits-only passes per batch to generate ``y_0..y_{n_max-1}`` (counted
separately in ``label_passes``); the last greedy step is fused with the feature pass.
Contexts of different lengths are **right**-padded with an existing token id: with causal
attention and absolute positions counted from 0, padding after the last real token cannot
change any real position (no left-padding position shift, pitfall 7; no new ``<|PAD|>`` row,
pitfall 8). Splits are train / validation / test (model selection on validation only,
pitfall 3).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

from futurelens_tl.data import FORWARD_COUNTER, progress, token_windows
from futurelens_tl.models.view import ModelView, as_view

__all__ = ["FutureLensData", "LABEL_SOURCES", "SPLITS", "build_features", "doc_windows"]

LABEL_SOURCES = ("model_greedy", "corpus")
SPLITS = {"train": 0, "val": 1, "test": 2}


@dataclass
class FutureLensData:
    """Cached Future Lens features (see the module docstring).

    Attributes:
        tokens: ``[n, S]`` right-padded ``BOS + prefix + y_0..y_{n_max-1}`` per context.
        source_pos: ``[n]`` the source position ``T`` (last prefix token) of each context.
        labels: ``[n, n_max + 1]`` label ids ``y_0..y_{n_max}``.
        sources: ``[len(layers), n, d_model]`` the source states ``h_T^l``.
        targets: ``[n, n_max + 1, d_model]`` final-layer residuals at ``T .. T + n_max``.
        split: ``[n]`` 0 = train, 1 = validation, 2 = test.
        layers: Layer of each row of ``sources``.
        n_max: Largest lookahead N the data supports.
        label_source: ``"model_greedy"`` or ``"corpus"``.
        fingerprint: Fingerprint of the model the features came from.
        basis: Residual basis of that model.
        n_forward: Feature forward passes (one per batch, all layers at once).
        label_passes: Extra logits-only passes spent generating greedy labels.
        bigram_tokens: ``[m, W]`` training-split token windows (legacy bigram input).
        doc: ``[n]`` document id of each context (splits and bootstrap intervals are grouped
            by it: no document contributes to two splits).
        corpus_labels: ``[n, n_max + 1]`` the text's own tokens ``x_{T+1..T+1+n_max}`` (equal
            to ``labels`` when ``label_source="corpus"``); the greedy-correct filter compares
            them with the greedy labels.
        train_seqs: Token sequences of the training documents (valid tokens only), on which
            the n-gram baselines are counted.
        meta: Timings and settings.
    """

    tokens: Tensor
    source_pos: Tensor
    labels: Tensor
    sources: Tensor
    targets: Tensor
    split: Tensor
    layers: list[int]
    n_max: int
    label_source: str
    fingerprint: str
    basis: str
    n_forward: int = 0
    label_passes: int = 0
    bigram_tokens: Tensor | None = None
    doc: Tensor | None = None
    corpus_labels: Tensor | None = None
    train_seqs: list[list[int]] | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.doc is None:  # legacy construction: every context its own document
            self.doc = torch.arange(len(self))

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    # ------------------------------------------------------------------ access
    def layer_row(self, layer: int) -> int:
        """Row of ``sources`` holding ``layer``.

        Raises:
            ValueError: If the features were not cached for ``layer``.
        """
        if layer not in self.layers:
            raise ValueError(
                f"layer={layer} was not cached; these features cover layers {self.layers}."
            )
        return self.layers.index(layer)

    def indices(self, split: str | None) -> Tensor:
        """Example indices of ``split`` (``"train"``, ``"val"``, ``"test"`` or None = all)."""
        if split is None:
            return torch.arange(len(self))
        if split not in SPLITS:
            raise ValueError(f"split={split!r} is not one of {sorted(SPLITS)} or None.")
        return torch.nonzero(self.split == SPLITS[split]).flatten()

    def subset(self, idx: Tensor | Sequence[int]) -> FutureLensData:
        """A view of the examples ``idx`` (same layers, labels and metadata)."""
        idx = torch.as_tensor(idx, dtype=torch.long)
        return FutureLensData(
            tokens=self.tokens[idx], source_pos=self.source_pos[idx], labels=self.labels[idx],
            sources=self.sources[:, idx], targets=self.targets[idx], split=self.split[idx],
            layers=list(self.layers), n_max=self.n_max, label_source=self.label_source,
            fingerprint=self.fingerprint, basis=self.basis, n_forward=self.n_forward,
            label_passes=self.label_passes, bigram_tokens=self.bigram_tokens,
            doc=self.doc[idx],
            corpus_labels=None if self.corpus_labels is None else self.corpus_labels[idx],
            train_seqs=self.train_seqs, meta=dict(self.meta),
        )

    def greedy_correct(self, upto: int = 0) -> Tensor:
        """Mask of contexts where the model's greedy continuation matches the text.

        The paper's selection filter (reference §3: "examples were kept only where the model
        gets the next token right"): ``labels[:, :upto+1] == corpus_labels[:, :upto+1]``.
        ``upto=0`` checks the next token only; ``upto=N`` every token through ``y_N``.
        """
        if self.corpus_labels is None:
            raise ValueError("these features hold no corpus tokens; rebuild them with "
                             "build_features to use the greedy-correct filter.")
        u = int(upto) + 1
        return (self.labels[:, :u] == self.corpus_labels[:, :u]).all(-1)

    def check_n(self, n_ahead: int, *, arg: str = "n_ahead") -> int:
        """Validate one lookahead against what the data supports."""
        if isinstance(n_ahead, bool) or not isinstance(n_ahead, int):
            raise TypeError(f"{arg} must be an int, got {type(n_ahead).__name__}")
        if n_ahead < 0:
            raise ValueError(f"{arg}={n_ahead} must be >= 0 (N=0 is the next token).")
        if n_ahead > self.n_max:
            raise ValueError(
                f"{arg}={n_ahead} is beyond what the data supports: the features hold labels "
                f"up to N={self.n_max}; rebuild them with n_max>={n_ahead}."
            )
        return n_ahead

    def check_model(self, model: Any) -> None:
        """Refuse features cached from another model or basis."""
        view = as_view(model)
        if view.basis != self.basis or view.fingerprint != self.fingerprint:
            raise ValueError(
                f"these features were cached from model {self.fingerprint} ({self.basis} basis) "
                f"but the model is {view.fingerprint} ({view.basis} basis); rebuild them."
            )

    def target_logprobs(
        self, model: Any, n_ahead: int, idx: Tensor | None = None
    ) -> Float[Tensor, "n d_vocab"]:
        """``log P_model^N`` (fp32) recomputed from the cached final residuals."""
        view = as_view(model)
        t = self.targets[:, n_ahead] if idx is None else self.targets[idx, n_ahead]
        with torch.no_grad():
            logits = view.readout(t.to(view.device, view.dtype))
        return torch.log_softmax(logits.float(), dim=-1)

    def summary(self) -> dict[str, Any]:
        """JSON-ready description (stored in trained artifacts)."""
        return {
            "n": len(self),
            "n_train": int((self.split == 0).sum()),
            "n_val": int((self.split == 1).sum()),
            "n_test": int((self.split == 2).sum()),
            "n_max": self.n_max,
            "label_source": self.label_source,
            "layers": list(self.layers),
            "mean_prefix_len": float(self.source_pos.float().mean()) if len(self) else 0.0,
            "n_forward": self.n_forward,
            "label_passes": self.label_passes,
            "n_docs": int(self.doc.unique().numel()),
            "n_docs_train": int(self.doc[self.split == 0].unique().numel()),
            "n_docs_test": int(self.doc[self.split == 2].unique().numel()),
            **{k: v for k, v in self.meta.items() if isinstance(v, (int, float, str))},
        }


def _split_ids(groups: Tensor, fractions: Sequence[float], seed: int) -> Tensor:
    """Train / val / test per example, assigned **per group** (document): no leakage."""
    if len(fractions) != 3 or any(f < 0 for f in fractions) or sum(fractions) <= 0:
        raise ValueError(
            f"splits={tuple(fractions)} must be three non-negative fractions (train, val, test)."
        )
    uniq, inv = torch.unique(groups, return_inverse=True)
    n = len(uniq)
    tot = float(sum(fractions))
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(n, generator=g)
    n_train = int(round(n * fractions[0] / tot))
    n_val = int(round(n * fractions[1] / tot))
    per_group = torch.full((n,), 2, dtype=torch.int8)
    per_group[perm[:n_train]] = 0
    per_group[perm[n_train : n_train + n_val]] = 1
    return per_group[inv]


def doc_windows(
    view: ModelView, texts: str | Sequence[str], width: int
) -> tuple[Tensor, Tensor, Tensor]:
    """Per-document windows ``[BOS] + chunk``: no window crosses a document boundary.

    Each document is tokenised without BOS and cut into chunks of ``width - 1`` tokens; the
    last, shorter chunk is kept and right-padded (its valid length is returned).

    Returns:
        ``(windows [n, width], valid_len [n], doc [n])``.
    """
    from futurelens_tl.data import load_texts

    tok = view.tokenizer
    if tok is None:
        raise ValueError("the model has no tokenizer; pass token ids instead of texts")
    bos = tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id
    rows, lens, docs = [], [], []
    for d, text in enumerate(load_texts(texts)):
        ids = tok(text, add_special_tokens=False)["input_ids"]
        for s in range(0, len(ids), width - 1):
            chunk = [bos] + ids[s : s + width - 1]
            lens.append(len(chunk))
            rows.append(chunk + [bos] * (width - len(chunk)))
            docs.append(d)
    if not rows:
        raise ValueError("the corpus tokenises to nothing; give non-empty documents.")
    return torch.tensor(rows), torch.tensor(lens), torch.tensor(docs)


def _run_feature_pass(
    view: ModelView, batch: Int[Tensor, "b s"], layers: list[int]
) -> tuple[Tensor, list[Tensor]]:
    names = [view.resid_hook(layer) for layer in layers]
    final = view.resid_hook(view.n_layers - 1)
    wanted = list(dict.fromkeys(names + [final]))
    logits, cache = view.run_with_cache(batch, wanted)
    FORWARD_COUNTER.passes += 1
    FORWARD_COUNTER.tokens += batch.numel()
    return logits, [cache[n] for n in names] + [cache[final]]


def build_features(
    model: Any,
    texts: str | Sequence[str] | Int[Tensor, "n pos"],
    *,
    n_max: int = 3,
    layers: Sequence[int] | None = None,
    label_source: str = "model_greedy",
    window: int | None = None,
    contexts_per_window: int = 1,
    min_prefix: int = 1,
    positions: Sequence[tuple[int, int]] | None = None,
    docs: Sequence[int] | Tensor | None = None,
    max_contexts: int | None = None,
    splits: Sequence[float] = (0.8, 0.1, 0.1),
    batch_size: int = 16,
    seed: int = 0,
    device: str | torch.device = "cpu",
    verbose: bool = True,
) -> FutureLensData:
    """Cut contexts from a corpus and cache Future Lens features from one pass per batch.

    Reference ``future-lens.md`` §3 and §7. Contexts are prefixes ``BOS, x_1..x_T`` of token
    windows with ``T`` drawn uniformly (``seed``) from ``min_prefix .. W - 2 - n_max`` (``W``
    the window's valid length) so that the corpus continuation of length ``n_max + 1`` exists.
    Texts are windowed per document, never across documents.

    Args:
        model: The (frozen) TransformerLens model.
        texts: Corpus: a string, a list of strings, or ready ``[n, W]`` windows (BOS first).
        n_max: Largest lookahead N to support (labels ``y_0..y_{n_max}``).
        layers: Source layers to cache (default all, ``-1 .. L-1``).
        label_source: ``"model_greedy"`` (the model's own greedy continuation, default) or
            ``"corpus"`` (the text).
        window: Window length including BOS (default ``min(n_ctx, 128)``).
        contexts_per_window: Distinct source positions drawn per window.
        min_prefix: Smallest ``T`` (number of real tokens in the prefix).
        positions: Explicit ``(window_index, T)`` sources instead of random ones.
        docs: Document id of each row when ``texts`` is a window tensor (default: every
            window its own document). Text input is windowed per document
            (:func:`doc_windows`), so ids are exact.
        max_contexts: Keep at most this many contexts.
        splits: Train / validation / test fractions **of documents** (a document's contexts
            all land in one split, so no test context shares text with a training one).
        batch_size: Contexts per forward pass.
        seed: Seed for the source positions and the split.
        device: Where the cache lives.
        verbose: Progress bar.

    Returns:
        A :class:`FutureLensData`.

    Raises:
        ValueError: Empty corpus, ``n_max < 0``, windows too short for ``n_max``, contexts
            longer than ``n_ctx``, an unknown label source or bad positions.

    Examples:
        >>> import futurelens_tl as fl
        >>> from futurelens_tl.lenses.future_data import build_features
        >>> from futurelens_tl.toy import toy_corpus
        >>> model = fl.toy_model(verbose=False)
        >>> data = build_features(model, toy_corpus(20).texts, n_max=3, verbose=False)
        >>> data.labels.shape[1], data.n_forward >= 1
        (4, True)
    """
    view = as_view(model)
    view.freeze()
    if label_source not in LABEL_SOURCES:
        raise ValueError(f"label_source={label_source!r} is not one of {LABEL_SOURCES}.")
    if isinstance(n_max, bool) or not isinstance(n_max, int) or n_max < 0:
        raise ValueError(f"n_max={n_max!r} must be an int >= 0 (largest lookahead N).")
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size} must be >= 1.")
    if contexts_per_window < 1:
        raise ValueError(f"contexts_per_window={contexts_per_window} must be >= 1.")
    if min_prefix < 1:
        raise ValueError(f"min_prefix={min_prefix} must be >= 1 (at least one real token).")
    if isinstance(texts, (list, tuple)) and len(texts) == 0:
        raise ValueError("texts is empty: give at least one non-empty document.")
    if isinstance(texts, Tensor) and texts.shape[-1] > view.n_ctx:
        raise ValueError(
            f"texts windows are {texts.shape[-1]} tokens long but the model's context is "
            f"n_ctx={view.n_ctx}; cut them with futurelens_tl.data.token_windows()."
        )
    if window is not None and window > view.n_ctx:
        raise ValueError(f"window={window} exceeds the model's context n_ctx={view.n_ctx}.")
    if isinstance(texts, Tensor):
        windows = token_windows(view, texts).cpu()
        valid = torch.full((windows.shape[0],), windows.shape[1])
        win_doc = (torch.arange(windows.shape[0]) if docs is None
                   else torch.as_tensor(docs, dtype=torch.long).reshape(-1))
        if win_doc.shape[0] != windows.shape[0]:
            raise ValueError(f"docs has {win_doc.shape[0]} ids for {windows.shape[0]} windows.")
    else:
        width0 = min(view.n_ctx, 128) if window is None else int(window)
        windows, valid, win_doc = doc_windows(view, texts, width0)
    n_win, width = windows.shape
    t_max = width - 2 - n_max
    if t_max < min_prefix:
        raise ValueError(
            f"n_max={n_max} is beyond what the data supports: windows of {width} tokens leave "
            f"no prefix of >= {min_prefix} tokens followed by {n_max + 1} label tokens; use "
            "longer windows or a smaller n_max."
        )
    g = torch.Generator().manual_seed(seed)
    if positions is None:
        pairs: list[tuple[int, int]] = []
        for w in range(n_win):
            span = int(valid[w]) - 2 - n_max - min_prefix + 1
            if span < 1:  # a document tail too short for one context
                continue
            k = min(contexts_per_window, span)
            ts = (torch.randperm(span, generator=g)[:k] + min_prefix).tolist()
            pairs.extend((w, int(t)) for t in sorted(ts))
    else:
        pairs = [(int(w), int(t)) for w, t in positions]
        for w, t in pairs:
            if not 0 <= w < n_win:
                raise ValueError(f"positions: window index {w} is outside 0..{n_win - 1}.")
            if not min_prefix <= t <= int(valid[w]) - 2 - n_max:
                raise ValueError(
                    f"positions: T={t} must lie in {min_prefix}..{int(valid[w]) - 2 - n_max} "
                    f"for window {w} ({int(valid[w])} valid tokens) and n_max={n_max}."
                )
    if max_contexts is not None:
        pairs = pairs[: int(max_contexts)]
    if not pairs:
        raise ValueError("no contexts: the corpus or positions gave nothing to cache.")
    n = len(pairs)
    win_idx = torch.tensor([p[0] for p in pairs])
    src = torch.tensor([p[1] for p in pairs])
    seq_len = int(src.max()) + 1 + n_max
    pad_id = int(windows[0, 0])  # an existing id (BOS); only ever placed after real tokens
    tokens = torch.full((n, seq_len), pad_id, dtype=torch.long)
    labels = torch.empty((n, n_max + 1), dtype=torch.long)
    corpus_labels = torch.stack([windows[w, t + 1 : t + 2 + n_max] for w, t in pairs])
    sources_chunks: list[Tensor] = []
    target_chunks: list[Tensor] = []
    layer_idx = view.layer_indices(layers)
    before = FORWARD_COUNTER.passes
    label_passes = 0
    t_label = t_feat = 0.0
    ar = torch.arange(n_max + 1)
    for start in progress(range(0, n, batch_size), verbose=verbose, desc="future-lens features"):
        sl = slice(start, min(start + batch_size, n))
        w, t = win_idx[sl], src[sl]
        b = len(t)
        buf = torch.full((b, seq_len), pad_id, dtype=torch.long)
        for i in range(b):
            buf[i, : t[i] + 1] = windows[w[i], : t[i] + 1]
        rows = torch.arange(b)
        if label_source == "corpus":
            for i in range(b):
                labels[start + i] = windows[w[i], t[i] + 1 : t[i] + 2 + n_max]
                buf[i, t[i] + 1 : t[i] + 1 + n_max] = labels[start + i, :n_max]
        else:
            t0 = time.perf_counter()
            for k in range(n_max):  # logits-only passes generating y_0..y_{n_max-1}
                upto = int(t.max()) + 1 + k
                with torch.no_grad():
                    logits = view.forward(buf[:, :upto].to(view.device))
                label_passes += 1
                y = logits[rows.to(logits.device), (t + k).to(logits.device)].argmax(-1).cpu()
                labels[start:start + b, k] = y
                buf[rows, t + 1 + k] = y
            t_label += time.perf_counter() - t0
        t0 = time.perf_counter()
        with torch.no_grad():
            logits, acts = _run_feature_pass(view, buf.to(view.device), layer_idx)
        t_feat += time.perf_counter() - t0
        dev_rows = rows.to(logits.device)
        t_dev = t.to(logits.device)
        if label_source == "model_greedy":
            labels[start:start + b, n_max] = logits[dev_rows, t_dev + n_max].argmax(-1).cpu()
        sources_chunks.append(
            torch.stack([a[dev_rows, t_dev] for a in acts[:-1]]).to(device, torch.float32)
        )
        pos = t_dev[:, None] + ar.to(logits.device)[None]
        target_chunks.append(acts[-1][dev_rows[:, None], pos].to(device, torch.float32))
        tokens[sl] = buf
    ctx_doc = win_doc[win_idx]
    split = _split_ids(ctx_doc, splits, seed)
    train_windows = torch.unique(win_idx[split == 0])
    train_docs = set(ctx_doc[split == 0].tolist())
    train_seqs = [windows[w, : int(valid[w])].tolist() for w in range(n_win)
                  if int(win_doc[w]) in train_docs]
    return FutureLensData(
        tokens=tokens,
        source_pos=src,
        labels=labels,
        sources=torch.cat(sources_chunks, dim=1),
        targets=torch.cat(target_chunks, dim=0),
        split=split,
        layers=layer_idx,
        n_max=n_max,
        label_source=label_source,
        fingerprint=view.fingerprint,
        basis=view.basis,
        n_forward=FORWARD_COUNTER.passes - before,
        label_passes=label_passes,
        bigram_tokens=windows[train_windows] if len(train_windows) else None,
        doc=ctx_doc, corpus_labels=corpus_labels, train_seqs=train_seqs,
        meta={"extract_s": t_feat, "label_s": t_label, "window": width, "seed": seed,
              "grouping": "document" if not isinstance(texts, Tensor) or docs is not None
              else "window"},
    )
