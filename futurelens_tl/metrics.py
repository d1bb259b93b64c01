"""Lens metrics: precision@k, surprisal, KL, entropy, rank, top-k agreement, n-gram baselines.

All functions take torch tensors and compute in float32 (float64 inputs stay float64). Log
quantities are in **nats** (divide by ``ln 2`` for bits).

Definitions (reference ``future-lens.md`` §4.1, ``lenses-and-transformerlens.md`` §A.3, §B.7):

* ``precision@k``: fraction of rows whose label is among the top-k predictions; hits are
  cumulative in k.
* ``surprisal``: ``-log P_ref(pred)``: how plausible the lens's guess is to a reference model
  distribution (the Future Lens definition, future-lens.md §4.1).
* ``kl_divergence(p, q)``: ``KL(p || q) = sum_v p_v (log p_v - log q_v)``; lenses use
  ``KL(final || lens)``.
* ``entropy``: ``H(p) = -sum_v p_v log p_v``.
* ``rank_of``: 1-based rank of the label (1 = top); ties count against the label only when
  strictly larger scores exist (rank = 1 + #{v : score_v > score_label}).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Sequence
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

__all__ = [
    "METRICS",
    "NgramBaseline",
    "confidence_buckets",
    "cross_entropy",
    "entropy",
    "get_metric",
    "kl_divergence",
    "precision_at_k",
    "rank_of",
    "surprisal",
    "topk_agreement",
    "topk_hits",
]


def _f(x: Tensor) -> Tensor:
    return x if x.dtype == torch.float64 else x.float()


def _check_ks(ks: int | Sequence[int], vocab: int | None = None, arg: str = "k") -> list[int]:
    if isinstance(ks, bool):
        raise TypeError(f"{arg} must be an int or a sequence of ints, got bool")
    kl = [ks] if isinstance(ks, int) else list(ks)
    if not kl:
        raise ValueError(f"{arg} is empty; give at least one k >= 1")
    for k in kl:
        if isinstance(k, bool) or not isinstance(k, int):
            raise TypeError(f"{arg} must hold ints, got {k!r}")
        if k < 1:
            raise ValueError(f"{arg}={k} must be >= 1")
        if vocab is not None and k > vocab:
            raise ValueError(f"{arg}={k} is larger than the vocabulary ({vocab})")
    return kl


def _check_scores(scores: Tensor, arg: str = "logits") -> None:
    """NaN or +inf scores make every rank, top-k and probability meaningless: refuse them.

    (``-inf`` is allowed: it is how masked tokens appear in logits and log-probs.)
    """
    from futurelens_tl.errors import NonFiniteError

    if not isinstance(scores, Tensor):
        raise TypeError(f"{arg} must be a tensor, got {type(scores).__name__}")
    if not scores.is_floating_point():
        raise TypeError(f"{arg} must be a floating-point tensor, got dtype {scores.dtype}")
    flat = scores.reshape(-1)
    step = 1 << 22  # chunks: the check never allocates more than 4 MB of booleans
    if all(bool((flat[i : i + step] < math.inf).all()) for i in range(0, flat.numel(), step)):
        return
    bad = torch.isnan(scores) | torch.isposinf(scores)
    if bool(bad.any()):
        raise NonFiniteError(
            f"{arg} holds {int(bad.sum())} NaN/+inf value(s) of {scores.numel()}; a NaN row would "
            "rank every label first (precision 1.0). Check the weights that produced them."
        )


def _check_labels(scores: Tensor, labels: Tensor, arg: str = "labels") -> None:
    _check_scores(scores)
    if not isinstance(labels, Tensor):
        raise TypeError(f"{arg} must be a tensor of token ids, got {type(labels).__name__}")
    if labels.is_floating_point() or labels.dtype == torch.bool:
        raise TypeError(f"{arg} must hold integer token ids, got dtype {labels.dtype}")
    if labels.shape != scores.shape[:-1]:
        raise ValueError(
            f"{arg} has shape {tuple(labels.shape)} but the scores have leading shape "
            f"{tuple(scores.shape[:-1])} (scores are [..., vocab], {arg} [...])"
        )
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= scores.shape[-1]):
        raise ValueError(
            f"{arg} holds ids outside 0..vocab-1={scores.shape[-1] - 1} (min "
            f"{int(labels.min())}, max {int(labels.max())})"
        )


def rank_of(
    logits: Float[Tensor, "... vocab"], labels: Int[Tensor, "..."]
) -> Int[Tensor, "..."]:
    """1-based rank of ``labels`` under ``logits`` (or log-probs) over the full vocabulary.

    Args:
        logits: Scores ``[..., vocab]`` (logits or log-probs: same ranks).
        labels: Token ids ``[...]``.

    Returns:
        ``1 + #{v : score_v > score_label}`` (int64).

    Examples:
        >>> import torch
        >>> from futurelens_tl.metrics import rank_of
        >>> rank_of(torch.tensor([[0.1, 2.0, 1.0]]), torch.tensor([2]))
        tensor([2])
    """
    _check_labels(logits, labels)
    s = _f(logits)
    tgt = s.gather(-1, labels.long().unsqueeze(-1))
    return (s > tgt).sum(-1) + 1


def topk_hits(
    logits: Float[Tensor, "... vocab"], labels: Int[Tensor, "..."], ks: int | Sequence[int]
) -> Tensor:
    """Whether ``labels`` is among the top-k of ``logits`` for every k (cumulative in k).

    Uses the rank (ties resolved in the label's favour), so a hit at k implies a hit at k' > k.

    Returns:
        bool ``[..., len(ks)]``.

    Examples:
        >>> import torch
        >>> from futurelens_tl.metrics import topk_hits
        >>> topk_hits(torch.tensor([[0.1, 2.0, 1.0]]), torch.tensor([2]), (1, 2))
        tensor([[False,  True]])
    """
    kl = _check_ks(ks, logits.shape[-1])
    r = rank_of(logits, labels)
    return torch.stack([r <= k for k in kl], dim=-1)


def precision_at_k(
    logits: Float[Tensor, "... vocab"], labels: Int[Tensor, "..."], k: int | Sequence[int] = 1
) -> Tensor:
    """Mean top-k hit rate (future-lens.md §4.1): a scalar for an int ``k``, ``[len(k)]`` else.

    Examples:
        >>> import torch
        >>> from futurelens_tl.metrics import precision_at_k
        >>> x = torch.tensor([[0.0, 1.0, 2.0], [2.0, 1.0, 0.0]])
        >>> precision_at_k(x, torch.tensor([2, 1]), 1).item()
        0.5
    """
    hits = topk_hits(logits, labels, k).float()
    out = hits.reshape(-1, hits.shape[-1]).mean(0)
    return out[0] if isinstance(k, int) else out


def surprisal(
    ref_log_probs: Float[Tensor, "... vocab"], pred_ids: Int[Tensor, "..."]
) -> Float[Tensor, "..."]:
    """``-ref_log_probs[pred_ids]`` in nats (future-lens.md §4.1; lower is better).

    ``ref_log_probs`` is the reference model's distribution (normalised: log-softmax is applied
    if the input does not already sum to one), ``pred_ids`` the lens's guesses.

    Examples:
        >>> import torch
        >>> from futurelens_tl.metrics import surprisal
        >>> lp = torch.log(torch.tensor([[0.5, 0.25, 0.25]]))
        >>> round(surprisal(lp, torch.tensor([0])).item(), 4)
        0.6931
    """
    _check_labels(ref_log_probs, pred_ids, "pred_ids")
    lp = torch.log_softmax(_f(ref_log_probs), dim=-1)
    return -lp.gather(-1, pred_ids.long().unsqueeze(-1)).squeeze(-1)


def cross_entropy(
    log_probs: Float[Tensor, "... vocab"], labels: Int[Tensor, "..."]
) -> Float[Tensor, "..."]:
    """``-log p(label)`` in nats (same as :func:`surprisal`, named for the CE use)."""
    return surprisal(log_probs, labels)


def kl_divergence(
    p_log: Float[Tensor, "... vocab"], q_log: Float[Tensor, "..."]
) -> Float[Tensor, "..."]:
    """``KL(p || q)`` summed over the vocabulary (nats); inputs are logits or log-probs.

    Examples:
        >>> import torch
        >>> from futurelens_tl.metrics import kl_divergence
        >>> p = torch.log(torch.tensor([0.5, 0.5]))
        >>> q = torch.log(torch.tensor([0.25, 0.75]))
        >>> round(kl_divergence(p, q).item(), 4)
        0.1438
    """
    if p_log.shape != q_log.shape:
        raise ValueError(
            f"p_log {tuple(p_log.shape)} and q_log {tuple(q_log.shape)} must have the same shape"
        )
    _check_scores(p_log, "p_log")
    _check_scores(q_log, "q_log")
    p = torch.log_softmax(_f(p_log), dim=-1)
    q = torch.log_softmax(_f(q_log), dim=-1)
    return (p.exp() * (p - q)).sum(-1).clamp_min(0.0)


def entropy(log_probs: Float[Tensor, "... vocab"]) -> Float[Tensor, "..."]:
    """``H(p) = -sum p log p`` (nats) of logits or log-probs.

    Examples:
        >>> import torch
        >>> from futurelens_tl.metrics import entropy
        >>> round(entropy(torch.zeros(4)).item(), 4)  # uniform over 4 = ln 4
        1.3863
    """
    _check_scores(log_probs, "log_probs")
    lp = torch.log_softmax(_f(log_probs), dim=-1)
    return -(lp.exp() * lp).sum(-1)


def topk_agreement(
    a: Float[Tensor, "... vocab"], b: Float[Tensor, "..."], k: int = 1
) -> Float[Tensor, "..."]:
    """Overlap of the top-k token sets of two distributions: ``|topk(a) ∩ topk(b)| / k``.

    For ``k = 1`` this is 1.0 where the argmaxes agree and 0.0 elsewhere.

    Examples:
        >>> import torch
        >>> from futurelens_tl.metrics import topk_agreement
        >>> topk_agreement(torch.tensor([3.0, 2, 1, 0]), torch.tensor([2.0, 3, 0, 1]), 2).item()
        1.0
    """
    (k,) = _check_ks(k, a.shape[-1])
    if a.shape != b.shape:
        raise ValueError(f"a {tuple(a.shape)} and b {tuple(b.shape)} must have the same shape")
    _check_scores(a, "a")
    _check_scores(b, "b")
    ta = a.topk(k, dim=-1).indices
    tb = b.topk(k, dim=-1).indices
    same = (ta.unsqueeze(-1) == tb.unsqueeze(-2)).any(-1).sum(-1)
    return same.float() / k


# ---------------------------------------------------------------------- n-gram baseline
class NgramBaseline:
    """An n-gram next-token model counted from a token corpus (bigram by default).

    Counts never cross sequence boundaries: each row of a ``[n, pos]`` tensor (or each
    sequence of a list) is its own document, and the first ``n - 1`` tokens of a sequence only
    serve as context. Pass windows from :func:`futurelens_tl.data.token_windows`; documents
    joined inside one window are separated by BOS, which simply becomes context.

    Args:
        n: Order (2 = bigram: predict ``x_{t+1}`` from ``x_t``).
        vocab_size: Vocabulary size (default ``max id + 1``).
        add_k: Add-k smoothing (0 = maximum likelihood; unseen contexts fall back to the
            unigram distribution).

    Examples:
        >>> import torch
        >>> from futurelens_tl.metrics import NgramBaseline
        >>> bg = NgramBaseline(2).fit(torch.tensor([[1, 2, 1, 2, 1, 3]]))
        >>> bg.topk(torch.tensor([1]), 1)[0].tolist()
        [[2]]
    """

    def __init__(self, n: int = 2, vocab_size: int | None = None, add_k: float = 0.0):
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"n={n!r} must be an int >= 1 (2 = bigram)")
        if add_k < 0:
            raise ValueError(f"add_k={add_k} must be >= 0")
        self.n = n
        self.vocab_size = vocab_size
        self.add_k = float(add_k)
        self.counts: dict[tuple[int, ...], Tensor] = {}
        self.unigram: Tensor | None = None
        self.n_tokens = 0

    def fit(self, tokens: Int[Tensor, "n pos"] | Sequence[Sequence[int]]) -> NgramBaseline:
        """Count n-grams in ``tokens`` (a ``[n, pos]`` tensor or a list of sequences).

        Raises:
            TypeError: Non-integer token ids (a float tensor would be truncated silently).
            ValueError: No tokens, negative ids, or ids >= ``vocab_size``.
        """
        if isinstance(tokens, Tensor) and (tokens.is_floating_point() or
                                           tokens.dtype == torch.bool):
            raise TypeError(f"tokens must hold integer token ids, got dtype {tokens.dtype}")
        raw = tokens.tolist() if isinstance(tokens, Tensor) else tokens
        for i, s in enumerate(raw):
            if any(isinstance(x, bool) or not isinstance(x, numbers.Integral) for x in s):
                raise TypeError(f"tokens[{i}] holds a non-integer id")
        seqs = [[int(x) for x in s] for s in raw]
        if not seqs or not any(seqs):
            raise ValueError("tokens is empty; give at least one non-empty sequence")
        vmin = min(min(s) for s in seqs if s)
        if vmin < 0:
            raise ValueError(f"tokens hold negative id {vmin}; ids must be in 0..vocab_size-1")
        vmax = max(max(s) for s in seqs if s) + 1
        V = self.vocab_size or vmax
        if vmax > V:
            raise ValueError(f"tokens hold id {vmax - 1} >= vocab_size={V}")
        self.vocab_size = V
        uni = torch.zeros(V, dtype=torch.float64)
        ctx_counts: dict[tuple[int, ...], dict[int, int]] = {}
        m = self.n - 1
        for s in seqs:
            for t, tok in enumerate(s):
                uni[tok] += 1
                if t >= m:
                    ctx = tuple(s[t - m : t])
                    d = ctx_counts.setdefault(ctx, {})
                    d[tok] = d.get(tok, 0) + 1
        self.unigram = uni
        self.n_tokens = int(uni.sum())
        self.counts = {}
        for ctx, d in ctx_counts.items():
            c = torch.zeros(V, dtype=torch.float64)
            c[list(d)] = torch.tensor(list(d.values()), dtype=torch.float64)
            self.counts[ctx] = c
        return self

    def _dist(self, ctx: tuple[int, ...]) -> Tensor:
        assert self.unigram is not None and self.vocab_size is not None
        c = self.counts.get(ctx)
        if c is None:
            c = self.unigram
        c = c + self.add_k
        return c / c.sum().clamp_min(1e-300)

    def predict_log_probs(self, context: Int[Tensor, "..."] | Sequence[int]) -> Tensor:
        """Log-probs ``[..., vocab]`` of the next token after each context of ``n - 1`` tokens.

        ``context`` is a ``[..., n-1]`` tensor; for a bigram it is ``[...]`` (the previous
        tokens themselves). Zero-probability tokens get ``-inf`` unless ``add_k > 0``.
        """
        if self.unigram is None:
            raise ValueError("NgramBaseline is not fitted; call .fit(tokens) first")
        ctx = context if isinstance(context, Tensor) else torch.tensor(list(context))
        m = self.n - 1
        if m == 0:
            lead = ctx.shape
            flat = [()] * int(torch.tensor(lead).prod()) if len(lead) else [()]
        else:
            if m == 1:
                ctx = ctx.unsqueeze(-1)
            elif ctx.ndim == 0 or ctx.shape[-1] != m:
                raise ValueError(
                    f"context must end with n-1={m} tokens, got {tuple(ctx.shape)}"
                )
            lead = ctx.shape[:-1]
            flat = [tuple(r) for r in ctx.reshape(-1, m).tolist()]
        cache: dict[tuple[int, ...], Tensor] = {}
        rows = []
        for c in flat:
            if c not in cache:
                cache[c] = self._dist(c).log().float()
            rows.append(cache[c])
        out = torch.stack(rows) if rows else torch.empty(0, self.vocab_size)
        return out.reshape(*lead, self.vocab_size)

    def topk(self, prev_tokens: Int[Tensor, "..."], k: int = 1) -> tuple[Tensor, Tensor]:
        """Top-k next tokens ``(ids [..., k], probs [..., k])`` after ``prev_tokens``."""
        (k,) = _check_ks(k, self.vocab_size)
        lp = self.predict_log_probs(prev_tokens)
        v, i = lp.topk(k, dim=-1)
        return i, v.exp()

    def precision_at_k(
        self, tokens: Int[Tensor, "n pos"], k: int | Sequence[int] = 1, shift: int = 1
    ) -> Tensor:
        """Precision@k of the next-token guess after position t, scored at ``t + shift``.

        ``shift = 1`` is the usual next-token baseline (the Future Lens "bigram" line at N=1
        predicts ``x_{T+2}`` from ``x_{T+1}``, which is this same next-token baseline read one
        position later; future-lens.md §4.1). ``shift > 1`` scores the same guess against a
        token further ahead.
        """
        if shift < 1:
            raise ValueError(f"shift={shift} must be >= 1")
        m = self.n - 1
        if tokens.shape[1] <= m + shift - 1:
            raise ValueError("tokens are too short for this n and shift")
        T = tokens.shape[1]
        starts = range(max(m - 1, 0), T - shift)
        ctxs = torch.stack([tokens[:, t - m + 1 : t + 1] for t in starts], dim=1) if m else None
        labels = torch.stack([tokens[:, t + shift] for t in starts], dim=1)
        if m == 1:
            ctxs = ctxs.squeeze(-1)
        if ctxs is None:
            lp = self.predict_log_probs(torch.zeros(*labels.shape, 0, dtype=torch.long))
        else:
            lp = self.predict_log_probs(ctxs)
        return precision_at_k(lp, labels, k)


# ---------------------------------------------------------------------- buckets
def confidence_buckets(
    confidence: Any,
    hits: Any,
    edges: Sequence[Any] = (0.0, 0.3, 0.6, 0.9, 1.0),
) -> Any:
    """Precision per confidence bucket (future-lens.md §4.1: confidence = max P_model).

    Buckets are ``[e_i, e_{i+1})`` except the last, which is closed ``[e_{n-1}, e_n]``.

    Returns:
        pandas DataFrame with columns ``bucket, lo, hi, n, precision, mean_confidence``.

    Examples:
        >>> import torch
        >>> from futurelens_tl.metrics import confidence_buckets
        >>> df = confidence_buckets(torch.tensor([0.1, 0.95, 0.97]), torch.tensor([0, 1, 1]))
        >>> df["n"].tolist()
        [1, 0, 0, 2]
    """
    import pandas as pd

    conf = torch.as_tensor(confidence).reshape(-1)
    if not conf.is_floating_point():
        conf = conf.double()
    h = torch.as_tensor(hits).reshape(-1).double()
    if conf.shape != h.shape:
        raise ValueError(
            f"confidence ({conf.numel()} values) and hits ({h.numel()} values) must match"
        )
    if bool(torch.isnan(conf).any()):
        from futurelens_tl.errors import NonFiniteError

        raise NonFiniteError(f"confidence holds {int(torch.isnan(conf).sum())} NaN value(s); "
                             "they would fall in no bucket and vanish from the counts")
    e = [float(x) for x in edges]
    if len(e) < 2 or any(not math.isfinite(x) for x in e) or any(
            b <= a for a, b in zip(e, e[1:])):
        raise ValueError(f"edges={tuple(edges)} must be >= 2 strictly increasing numbers")
    rows = []
    for i, (lo, hi) in enumerate(zip(e, e[1:])):
        last = i == len(e) - 2
        # compare in conf's own dtype so float32 0.9 falls in the bucket starting at 0.9
        lo_t, hi_t = torch.tensor(lo, dtype=conf.dtype), torch.tensor(hi, dtype=conf.dtype)
        m = (conf >= lo_t) & ((conf <= hi_t) if last else (conf < hi_t))
        n = int(m.sum())
        rows.append({
            "bucket": f"[{lo:g}, {hi:g}{']' if last else ')'}",
            "lo": lo,
            "hi": hi,
            "n": n,
            "precision": float(h[m].mean()) if n else math.nan,
            "mean_confidence": float(conf[m].double().mean()) if n else math.nan,
        })
    return pd.DataFrame(rows)


# ---------------------------------------------------------------------- registry
METRICS: dict[str, Callable[..., Any]] = {
    "precision": precision_at_k,
    "precision_at_k": precision_at_k,
    "topk_hits": topk_hits,
    "surprisal": surprisal,
    "cross_entropy": cross_entropy,
    "ce": cross_entropy,
    "kl": kl_divergence,
    "kl_divergence": kl_divergence,
    "entropy": entropy,
    "rank": rank_of,
    "topk_agreement": topk_agreement,
}


def get_metric(name: str) -> Callable[..., Any]:
    """The metric function called ``name``.

    Raises:
        ValueError: If ``name`` is unknown; the message lists the known names.
    """
    if name not in METRICS:
        raise ValueError(f"metric={name!r} is unknown; known metrics: {sorted(METRICS)}")
    return METRICS[name]
