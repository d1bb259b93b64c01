"""Weight-only decomposition of first-layer attention (Kamoda et al., NAACL Findings 2025).

Reference: ``shared/reference/layer0-decomposition.md`` (cited below as "ref §n").

Layer-0 attention of a model with additive learned positions is an exact function of the
weights and of the per-token LayerNorm scale ``sigma``::

    alpha[i, j, h] = softmax_{j <= i} (T_ee + T_ep + T_pe + T_pp + T_e + T_p)[i, j, h] / sqrt(d')

with ``W^QK_h = W~Q_h W~K_h^T`` and ``b^QK_h = b~Q_h W~K_h^T`` after folding ``C diag(gamma)``
and ``beta`` into the query/key projections (ref §2-§4). :func:`decompose_first_layer` builds
a :class:`Layer0Decomposition` from the weights alone (no forward pass); it then answers:

* :meth:`Layer0Decomposition.terms` / :meth:`~Layer0Decomposition.attention`: the six terms for
  actual token sequences and their softmax (equals ``blocks.0.attn.hook_pattern``),
* :meth:`~Layer0Decomposition.sigma_table`: ``Sigma[j, v]`` over (position, token) (ref §5),
* :meth:`~Layer0Decomposition.positional_attention`,
  :meth:`~Layer0Decomposition.position_terms`,
  :meth:`~Layer0Decomposition.position_terms_by_distance`: weight-only position analyses (ref §6.1,
  §6.3),
* :meth:`~Layer0Decomposition.token_scores`, :meth:`~Layer0Decomposition.top_prefixes`,
  :meth:`~Layer0Decomposition.detokenization_auroc`: token-token analyses (ref §6.2, §8, §11),
* :meth:`~Layer0Decomposition.contributions`: leave-one-term-out KL and the additive integrated
  alternative (ref §7).

Architectures: learned absolute positions with LayerNorm (GPT-2, GPT-Neo, OPT-like), RMSNorm
(ref §12.1: fold only ``diag(gamma)``, ``sigma`` = RMS), no norm at all (``sigma`` = 1), models
without biases (``T_e = T_p = 0``) and grouped-query attention (K weights of the head's KV group).
Rotary/ALiBi models raise :class:`NotImplementedError` (see :func:`decompose_first_layer`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import torch
from jaxtyping import Float, Int
from torch import Tensor

from futurelens_tl.data import progress
from futurelens_tl.model import as_view

__all__ = [
    "TERM_GROUPS",
    "TERM_NAMES",
    "BigramCounts",
    "Layer0Contributions",
    "Layer0Decomposition",
    "count_bigrams",
    "decompose_first_layer",
    "detokenization_scores",
]

TERM_NAMES: tuple[str, ...] = ("ee", "ep", "pe", "pp", "e", "p")
"""Order of the six terms along the ``term`` axis (ref §4)."""

TERM_GROUPS: dict[str, tuple[str, ...]] = {
    "position": ("pp", "p"),
    "token": ("ee", "e"),
    "mixed": ("ep", "pe"),
}
"""Grouping of the six terms (ref §4): position-related, token-related and mixed."""



# ---------------------------------------------------------------------------------- helpers
def _as_int_list(x: int | Sequence[int] | Tensor, arg: str, high: int) -> list[int]:
    if isinstance(x, Tensor):
        vals = [int(v) for v in x.reshape(-1).tolist()]
    elif isinstance(x, (int, np.integer)) and not isinstance(x, bool):
        vals = [int(x)]
    elif isinstance(x, (list, tuple, range, np.ndarray)):
        vals = [int(v) for v in x]
    else:
        raise TypeError(
            f"{arg} must be an int, a sequence of ints or a tensor, got {type(x).__name__}"
        )
    if not vals:
        raise ValueError(f"{arg} is empty; give at least one value.")
    bad = [v for v in vals if not 0 <= v < high]
    if bad:
        raise ValueError(f"{arg}={bad[:5]} is out of range; allowed 0..{high - 1}.")
    return vals


def _percentile_rows(x: Tensor, q: float) -> Tensor:
    """Percentile ``q`` (0-100) of each row of ``x``, numpy ``linear``, via partial top-k.

    Only the two order statistics around ``q (n - 1) / 100`` are needed, so a ``topk`` of
    ``~ min(q, 100 - q) % `` of the row replaces a full sort (``torch.quantile`` refuses large
    inputs; ref §6.3).
    """
    n = x.shape[-1]
    pos = q / 100.0 * (n - 1)
    lo = int(math.floor(pos))
    hi = min(lo + 1, n - 1)
    frac = pos - lo
    if hi + 1 <= n - lo:  # lower tail: ascending top-k holds indices lo, hi
        v = torch.topk(x, hi + 1, dim=-1, largest=False, sorted=True).values
        s_lo, s_hi = v[..., lo], v[..., hi]
    else:  # upper tail: descending top-k, ascending index m is descending n - 1 - m
        v = torch.topk(x, n - lo, dim=-1, largest=True, sorted=True).values
        s_lo, s_hi = v[..., n - 1 - lo], v[..., n - 1 - hi]
    return s_lo + (s_hi - s_lo) * frac


def _masked_softmax(x: Tensor, mask: Tensor) -> Tensor:
    return torch.softmax(x.masked_fill(~mask, float("-inf")), dim=-1)


def _gauss_legendre_01(n_nodes: int, n_panels: int) -> tuple[Tensor, Tensor]:
    x, w = np.polynomial.legendre.leggauss(n_nodes)
    nodes, weights = [], []
    for k in range(n_panels):
        a, b = k / n_panels, (k + 1) / n_panels
        nodes.append((b - a) / 2 * x + (a + b) / 2)
        weights.append((b - a) / 2 * w)
    return torch.tensor(np.concatenate(nodes)), torch.tensor(np.concatenate(weights))


# ---------------------------------------------------------------------------------- bigrams
@dataclass
class BigramCounts:
    """Sparse bigram counts ``c(u, s)``: prefix ``u`` immediately followed by suffix ``s``.

    Stored as CSR keyed by the suffix (rows = suffix, columns = prefix), which is what the
    AUROC of ref §8 streams over. Build it with :func:`count_bigrams` or
    :meth:`from_dense`.

    Attributes:
        vocab_size: ``|V|``.
        indptr: ``[|V| + 1]`` int64 row pointers over suffixes.
        prefix: ``[nnz]`` int64 prefix ids, ascending within each suffix row.
        count: ``[nnz]`` int64 counts (all > 0).
    """

    vocab_size: int
    indptr: np.ndarray
    prefix: np.ndarray
    count: np.ndarray

    @classmethod
    def from_pairs(
        cls, prefix: npt.ArrayLike, suffix: npt.ArrayLike, count: npt.ArrayLike, vocab_size: int
    ) -> BigramCounts:
        """Build from parallel arrays (duplicate pairs are summed, zero counts dropped)."""
        prefix = np.asarray(prefix, dtype=np.int64)
        suffix = np.asarray(suffix, dtype=np.int64)
        count = np.asarray(count, dtype=np.int64)
        if prefix.size and (min(prefix.min(), suffix.min()) < 0
                            or max(prefix.max(), suffix.max()) >= vocab_size):
            raise ValueError(
                f"bigram token ids must lie in 0..{vocab_size - 1} (vocab_size={vocab_size})"
            )
        if (count < 0).any():
            raise ValueError("bigram counts must be non-negative")
        key = suffix * vocab_size + prefix
        uniq, inv = np.unique(key, return_inverse=True)
        summed = np.bincount(inv, weights=count, minlength=uniq.size).astype(np.int64)
        keep = summed > 0
        uniq, summed = uniq[keep], summed[keep]
        suf, pre = uniq // vocab_size, uniq % vocab_size
        indptr = np.zeros(vocab_size + 1, dtype=np.int64)
        np.add.at(indptr, suf + 1, 1)
        return cls(vocab_size, np.cumsum(indptr), pre, summed)

    @classmethod
    def from_dense(cls, counts: Tensor | np.ndarray) -> BigramCounts:
        """From a dense ``[|V|, |V|]`` matrix indexed ``counts[prefix, suffix]``."""
        arr = counts.detach().cpu().numpy() if isinstance(counts, Tensor) else np.asarray(counts)
        if arr.ndim != 2 or arr.shape[0] != arr.shape[1]:
            raise ValueError(f"bigram_counts must be square [|V|, |V|], got shape {arr.shape}")
        u, s = np.nonzero(arr)
        return cls.from_pairs(u, s, arr[u, s].astype(np.int64), arr.shape[0])

    @property
    def nnz(self) -> int:
        return int(self.count.size)

    def suffix_totals(self) -> np.ndarray:
        """Number of occurrences of each token as a suffix, ``sum_u c(u, s)``."""
        rows = np.repeat(np.arange(self.vocab_size), np.diff(self.indptr))
        return np.bincount(rows, weights=self.count, minlength=self.vocab_size).astype(np.int64)

    def dense_rows(self, start: int, stop: int, dtype: torch.dtype = torch.float64) -> Tensor:
        """Counts for suffixes ``start..stop-1`` as a dense ``[stop-start, |V|]`` tensor."""
        a, b = int(self.indptr[start]), int(self.indptr[stop])
        out = torch.zeros(stop - start, self.vocab_size, dtype=dtype)
        rows = np.repeat(np.arange(stop - start), np.diff(self.indptr[start:stop + 1]))
        out[torch.from_numpy(rows), torch.from_numpy(self.prefix[a:b])] = torch.from_numpy(
            self.count[a:b]
        ).to(dtype)
        return out

    def get(self, prefix: int, suffix: int) -> int:
        """Count of the pair (``prefix``, ``suffix``)."""
        a, b = int(self.indptr[suffix]), int(self.indptr[suffix + 1])
        k = np.searchsorted(self.prefix[a:b], prefix)
        return int(self.count[a + k]) if k < b - a and self.prefix[a + k] == prefix else 0


def count_bigrams(
    token_sequences: Iterable[Sequence[int] | Tensor | np.ndarray],
    vocab_size: int,
    *,
    verbose: bool = True,
) -> BigramCounts:
    """Count adjacent token pairs within each sequence (ref §8: documents counted separately).

    Args:
        token_sequences: Iterable of 1-D token-id sequences (lists, numpy arrays or tensors);
            a 2-D tensor is read row by row. Pairs never cross sequence boundaries.
        vocab_size: ``|V|``; every id must lie in ``0..vocab_size-1``.
        verbose: Progress bar.

    Returns:
        :class:`BigramCounts` with ``c(u, s)`` = number of times ``u`` is directly followed by
        ``s``.

    Raises:
        ValueError: On ids outside the vocabulary or a non-positive ``vocab_size``.

    Examples:
        >>> from futurelens_tl.attention.layer0 import count_bigrams
        >>> c = count_bigrams([[1, 2, 1, 2], [2, 1]], vocab_size=4)
        >>> c.get(1, 2), c.get(2, 1)
        (2, 2)
    """
    if not isinstance(vocab_size, int) or vocab_size <= 0:
        raise ValueError(f"vocab_size={vocab_size!r} must be a positive int")
    if isinstance(token_sequences, Tensor) and token_sequences.ndim == 2:
        token_sequences = list(token_sequences)
    keys: list[np.ndarray] = []
    pending = 0
    acc_k = np.zeros(0, dtype=np.int64)
    acc_c = np.zeros(0, dtype=np.int64)
    for seq in progress(token_sequences, verbose=verbose, desc="bigrams"):
        arr = (seq.detach().cpu().numpy() if isinstance(seq, Tensor) else np.asarray(seq))
        arr = arr.astype(np.int64).reshape(-1)
        if arr.size and (arr.min() < 0 or arr.max() >= vocab_size):
            raise ValueError(
                f"token_sequences holds ids outside the vocabulary 0..{vocab_size - 1} "
                f"(min {arr.min()}, max {arr.max()})"
            )
        if arr.size < 2:
            continue
        keys.append(arr[1:] * vocab_size + arr[:-1])  # suffix-major key
        pending += arr.size - 1
        if pending > 5_000_000:
            acc_k, acc_c = _merge_keys(acc_k, acc_c, keys)
            keys, pending = [], 0
    acc_k, acc_c = _merge_keys(acc_k, acc_c, keys)
    return BigramCounts.from_pairs(acc_k % vocab_size, acc_k // vocab_size, acc_c, vocab_size)


def _merge_keys(
    acc_k: np.ndarray, acc_c: np.ndarray, keys: list[np.ndarray]
) -> tuple[np.ndarray, np.ndarray]:
    if not keys:
        return acc_k, acc_c
    new = np.concatenate(keys)
    k = np.concatenate([acc_k, new])
    c = np.concatenate([acc_c, np.ones(new.size, dtype=np.int64)])
    uniq, inv = np.unique(k, return_inverse=True)
    return uniq, np.bincount(inv, weights=c, minlength=uniq.size).astype(np.int64)


def _as_bigram_counts(bigram_counts: Any, vocab_size: int) -> BigramCounts:
    if isinstance(bigram_counts, BigramCounts):
        bc = bigram_counts
    elif isinstance(bigram_counts, Tensor) and bigram_counts.is_sparse:
        t = bigram_counts.coalesce()
        idx = t.indices().cpu().numpy()
        bc = BigramCounts.from_pairs(idx[0], idx[1], t.values().cpu().numpy(), t.shape[0])
    elif isinstance(bigram_counts, Tensor) and bigram_counts.layout == torch.sparse_csr:
        return _as_bigram_counts(bigram_counts.to_sparse_coo(), vocab_size)
    elif isinstance(bigram_counts, dict):
        if bigram_counts:
            pairs = np.array(list(bigram_counts.keys()), dtype=np.int64)
            vals = np.array(list(bigram_counts.values()), dtype=np.int64)
        else:
            pairs, vals = np.zeros((0, 2), dtype=np.int64), np.zeros(0, dtype=np.int64)
        bc = BigramCounts.from_pairs(pairs[:, 0], pairs[:, 1], vals, vocab_size)
    elif isinstance(bigram_counts, (Tensor, np.ndarray)):
        bc = BigramCounts.from_dense(bigram_counts)
    else:
        raise TypeError(
            "bigram_counts must be BigramCounts (see count_bigrams), a dense or sparse "
            f"[|V|, |V|] tensor indexed [prefix, suffix], or a dict {{(prefix, suffix): count}}; "
            f"got {type(bigram_counts).__name__}"
        )
    if bc.vocab_size != vocab_size:
        raise ValueError(
            f"bigram_counts has vocab_size {bc.vocab_size} but the model has d_vocab {vocab_size}"
        )
    return bc


def _weighted_auroc_rows(
    scores: Float[Tensor, "rows vocab"], counts: Float[Tensor, "rows vocab"]
) -> Float[Tensor, " rows"]:
    """Weighted Mann-Whitney AUROC per row (ref §8): positives weighted by count, negatives 1.

    Rows without positives get 0 (ref §8: "AUROC := 0, stays in the mean"); rows without
    negatives get NaN (undefined; sklearn raises).
    """
    scores = scores.double()
    pos_w = counts.double()
    neg_w = (counts == 0).double()
    s_sorted, order = torch.sort(scores, dim=-1)
    pos_s = torch.gather(pos_w, -1, order)
    neg_s = torch.gather(neg_w, -1, order)
    cum = torch.nn.functional.pad(torch.cumsum(neg_s, -1), (1, 0))
    left = torch.searchsorted(s_sorted, s_sorted, side="left")
    right = torch.searchsorted(s_sorted, s_sorted, side="right")
    below = torch.gather(cum, -1, left)
    ties = torch.gather(cum, -1, right) - below
    num = (pos_s * (below + 0.5 * ties)).sum(-1)
    p_tot = pos_w.sum(-1)
    n_tot = neg_w.sum(-1)
    auc = num / (p_tot * n_tot)
    auc = torch.where(p_tot > 0, auc, torch.zeros_like(auc))
    return torch.where((n_tot == 0) & (p_tot > 0), torch.full_like(auc, float("nan")), auc)


def _weighted_auroc_csr(
    scores: Float[Tensor, "rows vocab"], bc: BigramCounts, start: int
) -> Float[Tensor, " rows"]:
    """Same as :func:`_weighted_auroc_rows` for suffix rows ``start..`` of ``bc``, sparse.

    Sorts each score row once (values only), then places only the positive prefixes by binary
    search, among all prefixes and among the positives themselves; negatives below/tied =
    all - positives. Cost ``O(V log V)`` per row plus ``O(nnz log nnz)``.
    """
    rows, v = scores.shape
    stop = start + rows
    nr = np.diff(bc.indptr[start:stop + 1])
    out = torch.zeros(rows, dtype=torch.float64)
    if nr.sum() == 0:
        return out
    m = int(nr.max())
    a = int(bc.indptr[start])
    nnz = int(nr.sum())
    row_id = np.repeat(np.arange(rows), nr)
    col = np.arange(nnz) - (bc.indptr[start:stop][row_id] - a)
    idx = torch.zeros(rows, m, dtype=torch.long)
    w = torch.zeros(rows, m, dtype=torch.float64)
    valid = torch.zeros(rows, m, dtype=torch.bool)
    r_t, c_t = torch.from_numpy(row_id), torch.from_numpy(col)
    idx[r_t, c_t] = torch.from_numpy(bc.prefix[a:a + nnz])
    w[r_t, c_t] = torch.from_numpy(bc.count[a:a + nnz]).double()
    valid[r_t, c_t] = True
    scores = scores.contiguous()
    pos = torch.gather(scores, 1, idx).masked_fill(~valid, float("inf"))
    all_sorted = torch.sort(scores, dim=-1).values
    all_lt = torch.searchsorted(all_sorted, pos, side="left")
    all_le = torch.searchsorted(all_sorted, pos, side="right")
    pos_sorted = torch.sort(pos, dim=-1).values
    pos_lt = torch.searchsorted(pos_sorted, pos, side="left")
    pos_le = torch.searchsorted(pos_sorted, pos, side="right")
    neg_lt = (all_lt - pos_lt).double()
    neg_eq = ((all_le - all_lt) - (pos_le - pos_lt)).double()
    num = (w * (neg_lt + 0.5 * neg_eq)).sum(-1)
    p_tot = w.sum(-1)
    n_neg = torch.from_numpy(v - nr).double()
    auc = torch.where(p_tot > 0, num / (p_tot * n_neg), torch.zeros_like(num))
    return torch.where((n_neg == 0) & (p_tot > 0), torch.full_like(auc, float("nan")), auc)


# ---------------------------------------------------------------------------------- results
@dataclass(repr=False)
class Layer0Contributions:
    """Per-term contributions to layer-0 attention (ref §7), averaged over documents.

    Attributes:
        loo: ``[term, head, pos]`` leave-one-term-out ``KL(P || Q_t) / (i + 1)`` (mean over
            documents that reach position ``i``).
        integrated: ``[term, head, pos]`` additive integrated-gradient shares ``I_t``; they sum
            over terms to ``total``.
        total: ``[head, pos]`` ``KL(softmax(z) || uniform_{i+1})`` (unnormalised by ``i + 1``).
        n_docs: ``[pos]`` number of documents covering each position.
        scaled: Whether the logits were divided by ``sqrt(d')`` (the paper's code does not).
        term_names: Names along the ``term`` axis (:data:`TERM_NAMES`).
    """

    loo: Float[Tensor, "term head pos"]
    integrated: Float[Tensor, "term head pos"]
    total: Float[Tensor, "head pos"]
    n_docs: Int[Tensor, " pos"]
    scaled: bool
    term_names: tuple[str, ...] = TERM_NAMES

    def __repr__(self) -> str:
        t, h, n = self.loo.shape
        return (f"Layer0Contributions(terms={list(self.term_names)}, heads={h}, positions={n}, "
                f"documents={int(self.n_docs.max()) if n else 0}, scaled={self.scaled})")

    def to_dataframe(self) -> Any:
        """Long table: ``term, head, position, loo, integrated, total, n_docs``."""
        import pandas as pd

        t, h, n = self.loo.shape
        ti, hi, pi = np.meshgrid(np.arange(t), np.arange(h), np.arange(n), indexing="ij")
        return pd.DataFrame({
            "term": np.array(self.term_names)[ti.ravel()],
            "head": hi.ravel(),
            "position": pi.ravel(),
            "loo": self.loo.reshape(-1).cpu().numpy(),
            "integrated": self.integrated.reshape(-1).cpu().numpy(),
            "total": self.total[hi.ravel(), pi.ravel()].cpu().numpy(),
            "n_docs": self.n_docs[pi.ravel()].cpu().numpy(),
        })

    def summary(self, skip_first: bool = True) -> Any:
        """Per (head, term) mean over positions (position 0 dropped: a single key)."""
        import pandas as pd

        sl = slice(1, None) if skip_first and self.loo.shape[-1] > 1 else slice(None)
        loo = self.loo[..., sl].mean(-1).cpu().numpy()
        ig = self.integrated[..., sl].mean(-1).cpu().numpy()
        rows = []
        for ti, name in enumerate(self.term_names):
            for h in range(loo.shape[1]):
                rows.append({"head": h, "term": name, "loo": float(loo[ti, h]),
                             "integrated": float(ig[ti, h])})
        return pd.DataFrame(rows)

    def plot(self, measure: str = "loo") -> Any:
        """Per-head bars of each term's mean contribution (matplotlib figure)."""
        from futurelens_tl.viz.layer0 import term_contribution_bars

        if measure not in ("loo", "integrated"):
            raise ValueError(f"measure={measure!r}; allowed 'loo' or 'integrated'")
        df = self.summary()
        arr = df.pivot(index="term", columns="head", values=measure).loc[list(self.term_names)]
        title = ("leave-one-term-out KL / (i+1)" if measure == "loo"
                 else "integrated contribution (sums to KL to uniform)")
        return term_contribution_bars(arr.to_numpy(), list(self.term_names), title=title,
                                      log=measure == "loo")

    def _repr_html_(self) -> str:
        from futurelens_tl.viz.layer0 import fig_to_html, html_page, html_table

        return html_page("Layer-0 term contributions", [
            fig_to_html(self.plot("loo")), fig_to_html(self.plot("integrated")),
            html_table(self.summary().pivot(index="head", columns="term", values="loo")),
        ])

    def show(self) -> Any:
        """Display the offline HTML view (in Jupyter) and return it."""
        return _display_html(self._repr_html_())


def _display_html(html: str) -> Any:
    try:
        from IPython.display import HTML, display

        obj = HTML(html)
        display(obj)
        return obj
    except ImportError:  # pragma: no cover
        return html


# ---------------------------------------------------------------------------------- main
@dataclass(eq=False, repr=False)
class Layer0Decomposition:
    """Folded layer-0 query/key weights and the analyses built on them (ref §2-§8).

    Build with :func:`decompose_first_layer`. All tensors are detached copies in the compute
    dtype; the object never runs the model.

    Attributes:
        W_Q: ``[head, d_model, d_head]`` folded ``C diag(gamma) W_Q`` (ref §2).
        W_K: ``[head, d_model, d_head]`` folded keys (GQA: the head's KV group).
        b_Q: ``[head, d_head]`` folded ``beta W_Q + b_Q``.
        b_K: ``[head, d_head]`` folded key bias (cancels from the pattern, ref §3).
        W_E: ``[d_vocab, d_model]`` token embeddings.
        W_pos: ``[n_ctx, d_model]`` learned positions.
        norm: ``"LN"``, ``"RMS"`` or ``None`` (sigma = 1).
        eps: Norm epsilon.
        attn_scale: ``sqrt(d')`` (1 when the model uses no attention scale).
        basis: ``"raw"`` or ``"processed"`` weights of the source model.
        fingerprint: Source model fingerprint.
        tokenizer: The model's tokenizer (for strings), or ``None``.
    """

    W_Q: Float[Tensor, "head d_model d_head"]
    W_K: Float[Tensor, "head d_model d_head"]
    b_Q: Float[Tensor, "head d_head"]
    b_K: Float[Tensor, "head d_head"]
    W_E: Float[Tensor, "d_vocab d_model"]
    W_pos: Float[Tensor, "n_ctx d_model"]
    norm: Literal["LN", "RMS"] | None
    eps: float
    attn_scale: float
    basis: str
    fingerprint: str
    tokenizer: Any = field(default=None, repr=False)
    _to_tokens: Any = field(default=None, repr=False)
    _cache: dict[str, Any] = field(default_factory=dict, repr=False)

    def __repr__(self) -> str:
        return (
            f"Layer0Decomposition(heads={self.n_heads}, d_head={self.d_head}, "
            f"d_model={self.d_model}, vocab={self.d_vocab}, n_ctx={self.n_ctx}, "
            f"norm={self.norm}, attn_scale={self.attn_scale:.4g}, basis={self.basis!r}, "
            f"fingerprint={self.fingerprint!r})"
        )

    # ------------------------------------------------------------------ sizes and objects
    @property
    def n_heads(self) -> int:
        return int(self.W_Q.shape[0])

    @property
    def d_head(self) -> int:
        return int(self.W_Q.shape[2])

    @property
    def d_model(self) -> int:
        return int(self.W_Q.shape[1])

    @property
    def d_vocab(self) -> int:
        return int(self.W_E.shape[0])

    @property
    def n_ctx(self) -> int:
        return int(self.W_pos.shape[0])

    @property
    def dtype(self) -> torch.dtype:
        return self.W_Q.dtype

    @property
    def QK(self) -> Any:
        """``W^QK_h = W~Q_h W~K_h^T`` as a TransformerLens ``FactoredMatrix`` ``[head, d, d]``."""
        from transformer_lens import FactoredMatrix

        return FactoredMatrix(self.W_Q, self.W_K.transpose(-1, -2))

    @property
    def b_QK(self) -> Float[Tensor, "head d_model"]:
        """``b^QK_h = b~Q_h W~K_h^T`` (ref §3)."""
        return torch.einsum("hk,hdk->hd", self.b_Q, self.W_K)

    def _center(self, x: Tensor) -> Tensor:
        return x - x.mean(-1, keepdim=True) if self.norm == "LN" else x

    def sigma(self, x: Float[Tensor, "... d_model"]) -> Float[Tensor, "..."]:
        """The norm's divisor for residual rows ``x`` (ref §2; 1 for a model without norm)."""
        if self.norm is None:
            return torch.ones(x.shape[:-1], dtype=x.dtype, device=x.device)
        xc = self._center(x)
        return (xc.pow(2).mean(-1) + self.eps).sqrt()

    # ------------------------------------------------------------------ validation
    def _check_head(self, head: int) -> int:
        if isinstance(head, bool) or not isinstance(head, (int, np.integer)):
            raise TypeError(f"head must be an int, got {type(head).__name__}")
        if not 0 <= int(head) < self.n_heads:
            raise ValueError(f"head={head} is out of range; allowed 0..{self.n_heads - 1}")
        return int(head)

    def _check_query_pos(self, query_pos: int) -> int:
        if isinstance(query_pos, bool) or not isinstance(query_pos, (int, np.integer)):
            raise TypeError(f"query_pos must be an int, got {type(query_pos).__name__}")
        if not 0 <= int(query_pos) < self.n_ctx:
            raise ValueError(
                f"query_pos={query_pos} is out of range; allowed 0..{self.n_ctx - 1} (n_ctx)"
            )
        return int(query_pos)

    @staticmethod
    def _check_sigma(sigma: str) -> str:
        if sigma not in ("mean", "max", "min"):
            raise ValueError(f"sigma={sigma!r} is not allowed; use 'mean', 'max' or 'min'")
        return sigma

    def _tokens(self, tokens: Any, arg: str = "tokens") -> Int[Tensor, "batch pos"]:
        if isinstance(tokens, (str, list)) and (
            isinstance(tokens, str) or (tokens and isinstance(tokens[0], str))
        ):
            if self._to_tokens is None:
                raise ValueError(f"{arg} is text but this decomposition has no tokenizer")
            return self._to_tokens(tokens, arg=arg).cpu()
        if isinstance(tokens, (list, tuple, np.ndarray)):
            tokens = torch.as_tensor(np.asarray(tokens))
        if not isinstance(tokens, Tensor):
            raise TypeError(f"{arg} must be token ids (tensor/list) or text, got "
                            f"{type(tokens).__name__}")
        if tokens.dtype.is_floating_point or tokens.dtype == torch.bool:
            raise TypeError(f"{arg} must hold integer token ids, got dtype {tokens.dtype}")
        if tokens.ndim == 1:
            tokens = tokens[None]
        if tokens.ndim != 2:
            raise ValueError(f"{arg} must be [batch, pos] or [pos] token ids, got shape "
                             f"{tuple(tokens.shape)}")
        if tokens.shape[-1] == 0:
            raise ValueError(f"{arg} is empty; give at least one token.")
        if int(tokens.min()) < 0 or int(tokens.max()) >= self.d_vocab:
            raise ValueError(
                f"{arg} holds token ids outside the vocabulary 0..{self.d_vocab - 1} "
                f"(min {int(tokens.min())}, max {int(tokens.max())})."
            )
        if tokens.shape[-1] > self.n_ctx:
            raise ValueError(
                f"{arg} is {tokens.shape[-1]} tokens long but n_ctx={self.n_ctx}; layer-0 "
                "positions exist only up to n_ctx - 1."
            )
        return tokens.long().to(self.W_E.device)

    # ------------------------------------------------------------------ the six terms (§4)
    def terms(
        self, tokens: Int[Tensor, "... pos"] | Sequence[int] | str
    ) -> Float[Tensor, "... term head query key"]:
        """The six terms ``T_ee, T_ep, T_pe, T_pp, T_e, T_p`` for actual sequences (ref §4).

        Uses the exact per-token ``sigma_i`` of each sequence. Entries with ``key > query`` are 0
        (masked). Terms are **not** divided by ``sqrt(d')``.

        Args:
            tokens: ``[pos]`` or ``[batch, pos]`` token ids (or text when a tokenizer is known).

        Returns:
            ``[term, head, query, key]`` for one sequence (``[pos]`` input), else
            ``[batch, term, head, query, key]``; term order :data:`TERM_NAMES`.

        Raises:
            ValueError: Ids outside the vocabulary, empty input or more than ``n_ctx`` tokens.

        Examples:
            >>> import torch
            >>> import futurelens_tl as fl
            >>> dec = fl.decompose_first_layer(fl.toy_model())
            >>> dec.terms(torch.tensor([1, 2, 3])).shape[:2]
            torch.Size([6, 4])
        """
        single = isinstance(tokens, Tensor) and tokens.ndim == 1 or (
            isinstance(tokens, (list, tuple)) and tokens and not isinstance(tokens[0], (list, str))
        )
        tok = self._tokens(tokens)
        out = self._terms(tok)
        return out[0] if single else out

    def _terms(self, tok: Tensor) -> Tensor:
        n = tok.shape[-1]
        e = self.W_E[tok]  # [b, n, d]
        p = self.W_pos[:n]  # [n, d]
        sig = self.sigma(e + p)  # [b, n]
        qe = torch.einsum("bnd,hdk->bhnk", e, self.W_Q)
        ke = torch.einsum("bnd,hdk->bhnk", e, self.W_K)
        qp = torch.einsum("nd,hdk->hnk", p, self.W_Q)[None]
        kp = torch.einsum("nd,hdk->hnk", p, self.W_K)[None]
        inv = (1.0 / sig)[:, None]  # [b, 1, n]
        ss = inv[..., :, None] * inv[..., None, :]  # [b, 1, q, k]
        t_ee = qe @ ke.transpose(-1, -2) * ss
        t_ep = qe @ kp.transpose(-1, -2) * ss
        t_pe = qp @ ke.transpose(-1, -2) * ss
        t_pp = (qp @ kp.transpose(-1, -2)) * ss
        bq = self.b_Q[None, :, None, :]  # [1, h, 1, k]
        t_e = ((bq * ke).sum(-1) * inv)[..., None, :].expand_as(t_ee)
        t_p = ((bq * kp).sum(-1) * inv)[..., None, :].expand_as(t_ee)
        out = torch.stack([t_ee, t_ep, t_pe, t_pp, t_e, t_p], dim=1)
        mask = torch.ones(n, n, dtype=torch.bool, device=out.device).tril()
        return out.masked_fill(~mask, 0.0)

    def attention(
        self, tokens: Int[Tensor, "... pos"] | Sequence[int] | str
    ) -> Float[Tensor, "... head query key"]:
        """Layer-0 attention pattern from the six terms: ``softmax_j(sum / sqrt(d'))`` (ref §4).

        Equals the model's ``blocks.0.attn.hook_pattern`` (an identity, not an approximation).

        Args:
            tokens: ``[pos]`` or ``[batch, pos]`` token ids.

        Returns:
            ``[head, query, key]`` (one sequence) or ``[batch, head, query, key]``.

        Examples:
            >>> import torch
            >>> import futurelens_tl as fl
            >>> dec = fl.decompose_first_layer(fl.toy_model())
            >>> bool(dec.attention(torch.tensor([1, 2, 3])).sum(-1).allclose(torch.ones(1)))
            True
        """
        t = self.terms(tokens)
        n = t.shape[-1]
        mask = torch.ones(n, n, dtype=torch.bool, device=t.device).tril()
        return _masked_softmax(t.sum(-4) / self.attn_scale, mask)

    def grouped_terms(
        self, tokens: Int[Tensor, "... pos"] | Sequence[int] | str
    ) -> dict[str, Tensor]:
        """The terms summed by group: ``{"position", "token", "mixed"}`` (ref §4).

        Returns:
            Dict of ``[head, query, key]`` (or with a leading batch axis) tensors.
        """
        t = self.terms(tokens)
        return {g: sum(t.select(-4, TERM_NAMES.index(n)) for n in names)  # type: ignore[misc]
                for g, names in TERM_GROUPS.items()}

    # ------------------------------------------------------------------ sigma table (§5)
    def sigma_table(
        self,
        dtype: torch.dtype = torch.float16,
        *,
        chunk_size: int = 128,
        verbose: bool = False,
    ) -> Float[Tensor, "n_ctx d_vocab"]:
        """``Sigma[j, v] = sqrt(Var(e_v + p_j) + eps)`` over (position, token) (ref §5).

        Computed in float32 (or the decomposition's dtype if wider) as one matmul
        ``(P C)(E C)^T`` plus two squared-norm vectors per chunk of positions; the root is taken
        before the cast to ``dtype``. ``[1024, 50257]`` is about 103 MB in float16.

        Args:
            dtype: Output dtype (float16 as in the paper's code, or float32/float64).
            chunk_size: Positions per chunk.
            verbose: Progress bar.

        Returns:
            ``[n_ctx, d_vocab]``; ``Sigma[i, t_i]`` equals the model's ``blocks.0.ln1.hook_scale``.

        Examples:
            >>> import futurelens_tl as fl
            >>> dec = fl.decompose_first_layer(fl.toy_model())
            >>> dec.sigma_table().shape == (dec.n_ctx, dec.d_vocab)
            True
        """
        if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
            raise ValueError(f"dtype={dtype!r} must be a floating torch dtype")
        if chunk_size <= 0:
            raise ValueError(f"chunk_size={chunk_size} must be positive")
        out = torch.empty(self.n_ctx, self.d_vocab, dtype=dtype, device=self.W_E.device)
        acc = None if "stats" in self._cache else self._new_stats()
        for a, sig in self._sigma_chunks(chunk_size, verbose):
            out[a:a + sig.shape[0]] = sig.to(dtype)
            if acc is not None:  # the statistics come for free with the same pass
                self._add_stats(acc, a, sig)
        if acc is not None:
            self._cache["stats"] = self._finish_stats(acc)
        return out

    def _sigma_chunks(self, chunk_size: int, verbose: bool) -> Iterable[tuple[int, Tensor]]:
        work = torch.float64 if self.dtype == torch.float64 else torch.float32
        ec = self._center(self.W_E.to(work))
        pc = self._center(self.W_pos.to(work))
        d = self.d_model
        e2 = ec.pow(2).sum(-1) / d
        p2 = pc.pow(2).sum(-1) / d
        starts = range(0, self.n_ctx, chunk_size)
        for a in progress(starts, verbose=verbose, desc="sigma table"):
            b = min(a + chunk_size, self.n_ctx)
            if self.norm is None:
                yield a, torch.ones(b - a, self.d_vocab, dtype=work, device=ec.device)
                continue
            var = (pc[a:b] @ ec.T).mul_(2.0 / d).add_(e2[None]).add_(p2[a:b, None])
            yield a, var.clamp_min_(0).add_(self.eps).sqrt_()

    def sigma_stats(self, *, chunk_size: int = 64, verbose: bool = False) -> dict[str, Tensor]:
        """Per-position statistics of the sigma table (ref §6.3), computed once and cached.

        Returns:
            Dict with ``r_mean``, ``r_lo``, ``r_hi`` (mean, 2.5th and 97.5th percentile over
            tokens of ``1 / Sigma[j, :]``; numpy linear interpolation), ``sigma_mean``,
            ``sigma_max``, ``sigma_min`` (over tokens, ``[n_ctx]`` each) and ``sigma_bar``
            (``[d_vocab]``, position-averaged token scale, float32 as computed) and ``r_bar``
            (``[d_vocab]``, ``mean_j 1 / Sigma[j, v]``).
        """
        if "stats" not in self._cache:
            acc = self._new_stats()
            for a, sig in self._sigma_chunks(chunk_size, verbose):
                self._add_stats(acc, a, sig)
            self._cache["stats"] = self._finish_stats(acc)
        return self._cache["stats"]

    def _new_stats(self) -> dict[str, Tensor]:
        work = torch.float64 if self.dtype == torch.float64 else torch.float32
        st = {k: torch.empty(self.n_ctx, dtype=work) for k in
              ("r_mean", "r_lo", "r_hi", "sigma_mean", "sigma_max", "sigma_min")}
        st["sigma_bar"] = torch.zeros(self.d_vocab, dtype=work)
        st["r_bar"] = torch.zeros(self.d_vocab, dtype=work)
        return st

    @staticmethod
    def _add_stats(st: dict[str, Tensor], a: int, sig: Tensor) -> None:
        b = a + sig.shape[0]
        sig = sig.cpu()
        st["sigma_bar"] += sig.sum(0)
        st["sigma_mean"][a:b] = sig.mean(-1)
        st["sigma_max"][a:b] = sig.amax(-1)
        st["sigma_min"][a:b] = sig.amin(-1)
        r = sig.reciprocal()
        st["r_bar"] += r.sum(0)
        st["r_mean"][a:b] = r.mean(-1)
        st["r_lo"][a:b] = _percentile_rows(r, 2.5)
        st["r_hi"][a:b] = _percentile_rows(r, 97.5)

    def _finish_stats(self, st: dict[str, Tensor]) -> dict[str, Tensor]:
        st["sigma_bar"] = st["sigma_bar"] / self.n_ctx
        st["r_bar"] = st["r_bar"] / self.n_ctx
        return st

    # ------------------------------------------------------------------ positions (§6.1, §6.3)
    def _pos_proj(self) -> tuple[Tensor, Tensor]:
        """``W_pos W~Q_h`` and ``W_pos W~K_h``, ``[head, n_ctx, d_head]`` each (cached)."""
        if "pos_proj" not in self._cache:
            self._cache["pos_proj"] = (torch.einsum("nd,hdk->hnk", self.W_pos, self.W_Q),
                                       torch.einsum("nd,hdk->hnk", self.W_pos, self.W_K))
        return self._cache["pos_proj"]

    def _pos_coeffs(self, query_pos: int, sigma: str) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        """``a_pp[h, j] = p_i W^QK p_j^T / sigma_bar_i`` and ``a_p[h, j] = b^QK p_j^T``, j <= i."""
        st = self.sigma_stats()
        i = query_pos
        qp, kp = self._pos_proj()
        kp = kp[:, : i + 1]
        sig_i = st[f"sigma_{sigma}"][i].to(self.dtype)
        a_pp = torch.einsum("hk,hnk->hn", qp[:, i], kp) / sig_i
        a_p = torch.einsum("hk,hnk->hn", self.b_Q, kp)
        return a_pp.cpu(), a_p.cpu(), st

    def positional_attention(
        self, query_pos: int, sigma: str = "mean"
    ) -> Float[Tensor, "head key"]:
        """Predicted positional attention from weights alone (ref §6.1).

        ``alpha_hat[h, j] = softmax_{j <= i} (1/sqrt(d')) mean_v (p_i W^QK p_j^T / sigma_bar_i
        + b^QK p_j^T) / Sigma[j, v]``, with the query scale ``sigma_bar_i`` = mean / max / min
        over tokens of ``Sigma[i, :]``. Evaluated exactly via per-position statistics (§6.3).
        The band over tokens is in :meth:`position_terms`.

        Args:
            query_pos: Query position ``i`` in ``0..n_ctx-1``.
            sigma: ``"mean"``, ``"max"`` or ``"min"`` query scale.

        Returns:
            ``[head, query_pos + 1]`` attention over key positions ``0..i``.

        Raises:
            ValueError: ``query_pos`` out of range or an unknown ``sigma``.

        Examples:
            >>> import futurelens_tl as fl
            >>> dec = fl.decompose_first_layer(fl.toy_model())
            >>> dec.positional_attention(10).shape
            torch.Size([4, 11])
        """
        i = self._check_query_pos(query_pos)
        self._check_sigma(sigma)
        a_pp, a_p, st = self._pos_coeffs(i, sigma)
        logits = (a_pp + a_p) * st["r_mean"][: i + 1].to(a_pp.dtype) / self.attn_scale
        return torch.softmax(logits, dim=-1)

    def position_terms(
        self, query_pos: int, sigma: str = "mean", band: tuple[float, float] = (2.5, 97.5)
    ) -> Any:
        """Weight-only position terms for one query position with a band over tokens (§6.1).

        ``T_pp[h, j](v) = p_i W^QK p_j^T / (sigma_bar_i Sigma[j, v])`` and
        ``T_p[h, j](v) = b^QK p_j^T / Sigma[j, v]``: mean over ``v`` and the 2.5-97.5 percentile
        band (ends swap for negative coefficients; exact with linear interpolation, §6.3).
        Not divided by ``sqrt(d')``.

        Args:
            query_pos: Query position ``i``.
            sigma: Query scale ``"mean"``, ``"max"`` or ``"min"``.
            band: Only ``(2.5, 97.5)`` is precomputed.

        Returns:
            DataFrame with ``head, key_pos, distance, term ('pp', 'p', 'pp+p'), mean, lo, hi``.
        """
        import pandas as pd

        i = self._check_query_pos(query_pos)
        self._check_sigma(sigma)
        if tuple(band) != (2.5, 97.5):
            raise ValueError(f"band={band!r}; only (2.5, 97.5) is supported (ref §6.1)")
        a_pp, a_p, st = self._pos_coeffs(i, sigma)
        rm, rl, rh = (st[k][: i + 1].to(a_pp.dtype) for k in ("r_mean", "r_lo", "r_hi"))
        frames = []
        for name, a in (("pp", a_pp), ("p", a_p), ("pp+p", a_pp + a_p)):
            lo = torch.where(a >= 0, a * rl, a * rh)
            hi = torch.where(a >= 0, a * rh, a * rl)
            hh, jj = np.meshgrid(np.arange(self.n_heads), np.arange(i + 1), indexing="ij")
            frames.append(pd.DataFrame({
                "head": hh.ravel(), "key_pos": jj.ravel(), "distance": i - jj.ravel(),
                "term": name, "mean": (a * rm).reshape(-1).numpy(),
                "lo": lo.reshape(-1).numpy(), "hi": hi.reshape(-1).numpy(),
            }))
        return pd.concat(frames, ignore_index=True)

    def position_logits(self, sigma: str = "mean") -> Float[Tensor, "head query key"]:
        """``mean_v (T_pp + T_p)`` for every (query, key) pair, ``[head, n_ctx, n_ctx]``.

        Entries with ``key > query`` are 0. Not divided by ``sqrt(d')``.
        """
        self._check_sigma(sigma)
        st = self.sigma_stats()
        q, k = self._pos_proj()
        sig_q = st[f"sigma_{sigma}"].to(self.dtype).to(q.device)
        r = st["r_mean"].to(self.dtype).to(q.device)
        pp = (q @ k.transpose(-1, -2)) / sig_q[None, :, None]
        bp = torch.einsum("hk,hnk->hn", self.b_Q, k)[:, None, :]
        out = (pp + bp) * r[None, None, :]
        return out.tril().cpu()

    def position_terms_by_distance(
        self, max_distance: int | None = None, sigma: str = "mean"
    ) -> Any:
        """Mean-over-tokens position logits against relative distance ``i - j`` (ref §6.1).

        For each head and distance ``Delta``, averages ``mean_v (T_pp + T_p)(i, i - Delta)``
        over all query positions ``i >= Delta``, after subtracting each query row's mean over
        its keys (a per-row constant does not change the softmax). A recency bias shows as
        values that fall with distance.

        Args:
            max_distance: Largest distance reported (default ``n_ctx - 1``).
            sigma: Query scale ``"mean"``, ``"max"`` or ``"min"``.

        Returns:
            DataFrame ``head, distance, logit, n_queries``.
        """
        import pandas as pd

        n = self.n_ctx
        max_distance = n - 1 if max_distance is None else int(max_distance)
        if not 0 <= max_distance < n:
            raise ValueError(f"max_distance={max_distance} is out of range; allowed 0..{n - 1}")
        z = self.position_logits(sigma).double()
        mask = torch.ones(n, n, dtype=torch.bool).tril()
        row_mean = z.sum(-1, keepdim=True) / mask.sum(-1)
        z = (z - row_mean) * mask
        rows = []
        for dist in range(max_distance + 1):
            diag = torch.diagonal(z, offset=-dist, dim1=-2, dim2=-1)  # [h, n - dist]
            for h in range(self.n_heads):
                rows.append({"head": h, "distance": dist, "logit": float(diag[h].mean()),
                             "n_queries": n - dist})
        return pd.DataFrame(rows)

    # ------------------------------------------------------------------ tokens (§6.2, §8, §11)
    def _sigma_bar(self) -> Tensor:
        return self.sigma_stats()["sigma_bar"].to(self.dtype).to(self.W_E.device)

    def _factors(self, head: int) -> tuple[Tensor, Tensor]:
        """``A_h = E W~Q_h / sigma_bar`` and ``B_h = E W~K_h / sigma_bar`` (ref §11)."""
        key = f"factors{head}"
        if key not in self._cache:
            sb = self._sigma_bar()[:, None]
            self._cache[key] = (self.W_E @ self.W_Q[head] / sb, self.W_E @ self.W_K[head] / sb)
        return self._cache[key]

    def token_scores(
        self, suffix: int | Sequence[int] | Tensor, head: int
    ) -> Float[Tensor, "... d_vocab"]:
        """Detokenization scores ``T_ee(s -> u) = e_s W^QK e_u^T / (sigma_bar_s sigma_bar_u)``.

        Over every prefix ``u`` of the vocabulary for the given suffix rows (ref §6.2), from
        the rank-``d'`` factors (never ``|V| x |V|``; ref §11). Not divided by ``sqrt(d')``.

        Args:
            suffix: One token id (returns ``[d_vocab]``) or several (``[n, d_vocab]``).
            head: Head index.

        Returns:
            Scores over prefixes.

        Examples:
            >>> import futurelens_tl as fl
            >>> dec = fl.decompose_first_layer(fl.toy_model())
            >>> dec.token_scores(5, head=0).shape == (dec.d_vocab,)
            True
        """
        h = self._check_head(head)
        ids = _as_int_list(suffix, "suffix", self.d_vocab)
        a, b = self._factors(h)
        out = a[ids] @ b.T
        single = isinstance(suffix, (int, np.integer)) or (
            isinstance(suffix, Tensor) and suffix.ndim == 0
        )
        return out[0] if single else out

    def bias_token_scores(self) -> Float[Tensor, "head d_vocab"]:
        """Bias-token term per key token: ``b^QK_h e_v^T * mean_j (1 / Sigma[j, v])`` (§6.2).

        The paper plots it against token frequency (Sec. 6.3). Not divided by ``sqrt(d')``.

        Returns:
            ``[head, d_vocab]``.
        """
        r_bar = self.sigma_stats()["r_bar"].to(self.dtype).to(self.W_E.device)
        return ((self.W_E @ self.b_QK.T).T * r_bar[None]).cpu()

    def _token_str(self, ids: Sequence[int]) -> list[str]:
        tk = self.tokenizer
        if tk is None:
            return [str(i) for i in ids]
        try:
            return [tk.decode([int(i)]) for i in ids]
        except Exception:  # pragma: no cover - exotic tokenizers
            return [str(i) for i in ids]

    def _suffix_ids(self, suffix: Any) -> list[int]:
        if isinstance(suffix, str):
            return [self._single_token(suffix)]
        if isinstance(suffix, (list, tuple)) and suffix and isinstance(suffix[0], str):
            return [self._single_token(s) for s in suffix]
        return _as_int_list(suffix, "suffix", self.d_vocab)

    def _single_token(self, text: str) -> int:
        tk = self.tokenizer
        if tk is None:
            raise ValueError(f"suffix={text!r} is text but no tokenizer is known; pass an id")
        ids = tk.encode(text, add_special_tokens=False)
        if len(ids) != 1:
            raise ValueError(f"suffix={text!r} is not a single token (tokenises to {ids})")
        return int(ids[0])

    def top_prefixes(
        self,
        suffix: int | str | Sequence[int] | Sequence[str] | Tensor,
        head: int,
        k: int = 10,
        *,
        chunk_size: int = 256,
    ) -> Any:
        """The ``k`` prefixes ``u`` with the highest ``T_ee(s -> u)`` for each suffix (ref §9.3).

        Suffix rows are evaluated in chunks against the factored keys (ref §11), then reduced
        with ``topk``.

        Args:
            suffix: Token id(s) or single-token string(s).
            head: Head index.
            k: Number of prefixes per suffix (``1..d_vocab``).
            chunk_size: Suffix rows per matmul.

        Returns:
            DataFrame ``suffix, suffix_str, rank, prefix, prefix_str, score, rendered``;
            ``rendered`` is prefix + suffix text with spaces shown as ``_`` (as in ref §9.3).

        Raises:
            ValueError: Out-of-range ids/head/k or a multi-token string.

        Examples:
            >>> import futurelens_tl as fl
            >>> dec = fl.decompose_first_layer(fl.toy_model())
            >>> len(dec.top_prefixes(5, head=0, k=3))
            3
        """
        import pandas as pd

        h = self._check_head(head)
        ids = self._suffix_ids(suffix)
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= self.d_vocab:
            raise ValueError(f"k={k!r} must be an int in 1..{self.d_vocab}")
        a, b = self._factors(h)
        vals, idx = [], []
        for c in range(0, len(ids), chunk_size):
            s = a[ids[c:c + chunk_size]] @ b.T
            v, i = torch.topk(s, k, dim=-1)
            vals.append(v.cpu())
            idx.append(i.cpu())
        vals_t, idx_t = torch.cat(vals), torch.cat(idx)
        uniq_pre = sorted(set(idx_t.reshape(-1).tolist()) | set(ids))
        strs = dict(zip(uniq_pre, self._token_str(uniq_pre), strict=True))
        rows = []
        for r, s in enumerate(ids):
            for rank in range(k):
                u = int(idx_t[r, rank])
                rows.append({
                    "suffix": s, "suffix_str": strs[s], "rank": rank + 1, "prefix": u,
                    "prefix_str": strs[u], "score": float(vals_t[r, rank]),
                    "rendered": (strs[u] + strs[s]).replace(" ", "_"),
                })
        return pd.DataFrame(rows)

    def detokenization_auroc(
        self,
        bigram_counts: BigramCounts | Tensor | np.ndarray | dict[tuple[int, int], int],
        heads: Sequence[int] | None = None,
        *,
        chunk_size: int = 256,
        verbose: bool = True,
    ) -> Float[Tensor, "head d_vocab"]:
        """Per-suffix detokenization AUROC for each head (ref §8).

        For suffix ``s`` and head ``h``, prefixes are ranked by ``T_ee(s -> u)``; positives are
        prefixes with ``c(u, s) > 0`` weighted by the count, negatives weight 1; the weighted
        Mann-Whitney statistic (ties count 1/2) equals ``sklearn.metrics.roc_auc_score`` with
        ``sample_weight``. Suffixes never seen get 0 (they stay in the mean, as in the paper).

        Args:
            bigram_counts: :class:`BigramCounts` (:func:`count_bigrams`), a dense or sparse
                ``[|V|, |V|]`` tensor indexed ``[prefix, suffix]``, or ``{(prefix, suffix): c}``.
            heads: Heads to score (default all).
            chunk_size: Suffix rows per chunk (memory ``~ 3 * chunk_size * |V|`` floats).
            verbose: Progress bar.

        Returns:
            ``[len(heads), d_vocab]`` AUROC per (head, suffix); ``.mean(-1)`` is the head score.
        """
        bc = _as_bigram_counts(bigram_counts, self.d_vocab)
        hs = list(range(self.n_heads)) if heads is None else [self._check_head(h) for h in heads]
        out = torch.zeros(len(hs), self.d_vocab, dtype=torch.float64)
        steps = [(hi, c) for hi in range(len(hs)) for c in range(0, self.d_vocab, chunk_size)]
        for hi, c in progress(steps, verbose=verbose, desc="AUROC"):
            a, b = self._factors(hs[hi])
            stop = min(c + chunk_size, self.d_vocab)
            scores = (a[c:stop] @ b.T).cpu()
            out[hi, c:stop] = _weighted_auroc_csr(scores, bc, c)
        return out

    # ------------------------------------------------------------------ contributions (§7)
    def contributions(
        self,
        texts: str | Sequence[str] | Tensor | Sequence[Sequence[int]],
        *,
        scaled: bool = False,
        n_nodes: int = 16,
        n_panels: int = 4,
        verbose: bool = True,
    ) -> Layer0Contributions:
        """Leave-one-term-out KL and additive integrated contributions of the six terms (§7).

        Per document and head, with ``S = sum_t T_t`` (exact per-token ``sigma_i``):
        ``C_t[i] = KL(softmax(S_i) || softmax(S_i - T_t,i)) / (i + 1)`` (PyTorch ``kl_div``
        ``reduction="mean"`` over the ``i + 1`` keys, as in the published code), with **no**
        ``1/sqrt(d')`` inside the softmaxes unless ``scaled=True``. The additive alternative
        ``I_t = z_t . (p(1) - int_0^1 p(tau) dtau)`` (Gauss-Legendre, ``n_panels x n_nodes``
        nodes) sums over terms to ``KL(softmax(z) || uniform)``. Computed in float64.

        Args:
            texts: Text(s) (each tokenised separately, BOS prepended by the model's
                tokenizer), a ``[batch, pos]`` tensor or a list of id sequences.
            scaled: Divide logits by ``sqrt(d')`` (the model's real pattern).
            n_nodes: Gauss-Legendre nodes per panel.
            n_panels: Panels on ``[0, 1]``.
            verbose: Progress bar.

        Returns:
            :class:`Layer0Contributions` averaged over documents per position.
        """
        seqs: list[Tensor]
        if isinstance(texts, str):
            seqs = [self._tokens(texts, "texts")[0]]
        elif isinstance(texts, Tensor):
            seqs = list(self._tokens(texts, "texts"))
        else:
            seqs = [self._tokens(t if isinstance(t, str) else list(t), "texts")[0] for t in texts]
        if not seqs:
            raise ValueError("texts is empty; give at least one document")
        n_max = max(int(s.shape[0]) for s in seqs)
        h = self.n_heads
        loo = torch.zeros(6, h, n_max, dtype=torch.float64)
        ig = torch.zeros(6, h, n_max, dtype=torch.float64)
        tot = torch.zeros(h, n_max, dtype=torch.float64)
        cnt = torch.zeros(n_max, dtype=torch.long)
        nodes, weights = _gauss_legendre_01(n_nodes, n_panels)
        for seq in progress(seqs, verbose=verbose, desc="contributions"):
            t = self._terms(seq[None])[0].double().cpu()  # [6, h, n, n]
            if scaled:
                t = t / self.attn_scale
            a, b, c = _contrib_one(t, nodes, weights)
            n = t.shape[-1]
            loo[..., :n] += a
            ig[..., :n] += b
            tot[:, :n] += c
            cnt[:n] += 1
        d = cnt.clamp_min(1).double()
        return Layer0Contributions(loo / d, ig / d, tot / d, cnt, scaled)

    # ------------------------------------------------------------------ views
    def default_query_pos(self) -> int:
        """Query position used by summaries: 500 (the paper's) or ``n_ctx - 1`` if smaller."""
        return min(500, self.n_ctx - 1)

    def to_dataframe(self, query_pos: int | None = None) -> Any:
        """One row per head: norms of ``W^QK``/``b^QK`` and predicted positional attention.

        Columns: ``head, qk_frobenius, bqk_norm, pos_attn_self, pos_attn_prev,
        pos_attn_expected_distance`` (at ``query_pos``, default :meth:`default_query_pos`),
        plus ``basis`` and ``norm``.
        """
        import pandas as pd

        i = self.default_query_pos() if query_pos is None else self._check_query_pos(query_pos)
        att = self.positional_attention(i).double()
        dist = torch.arange(i, -1, -1, dtype=torch.float64)
        wq, wk = self.W_Q.double().cpu(), self.W_K.double().cpu()
        gram = (wq.transpose(-1, -2) @ wq) * (wk.transpose(-1, -2) @ wk)  # elementwise
        qk = gram.sum((-1, -2)).clamp_min(0).sqrt()  # ||W_Q W_K^T||_F
        return pd.DataFrame({
            "head": np.arange(self.n_heads),
            "qk_frobenius": qk.numpy(),
            "bqk_norm": self.b_QK.double().norm(dim=-1).cpu().numpy(),
            "pos_attn_self": att[:, i].numpy(),
            "pos_attn_prev": att[:, i - 1].numpy() if i > 0 else np.zeros(self.n_heads),
            "pos_attn_expected_distance": (att * dist).sum(-1).numpy(),
            "basis": self.basis,
            "norm": str(self.norm),
        })

    def plot_position_heatmap(self, query_pos: int | None = None, sigma: str = "mean",
                              last: int | None = 64) -> Any:
        """Heatmap of ``mean_v T_pp`` over (head, key position) for one query (matplotlib)."""
        from futurelens_tl.viz.layer0 import position_heatmap

        i = self.default_query_pos() if query_pos is None else self._check_query_pos(query_pos)
        df = self.position_terms(i, sigma)
        arr = df[df.term == "pp"].pivot(index="head", columns="key_pos", values="mean")
        arr = arr.to_numpy()
        start = 0 if last is None else max(0, i + 1 - last)
        return position_heatmap(arr[:, start:], key_start=start, query_pos=i,
                                title=f"T_pp (mean over key tokens), query {i}")

    def plot_positional_attention(self, query_pos: int | None = None,
                                  last: int | None = 32) -> Any:
        """Predicted positional attention (mean/max/min query scale) per head (matplotlib)."""
        from futurelens_tl.viz.layer0 import positional_attention_curves

        i = self.default_query_pos() if query_pos is None else self._check_query_pos(query_pos)
        curves = {s: self.positional_attention(i, s).numpy() for s in ("mean", "max", "min")}
        start = 0 if last is None else max(0, i + 1 - last)
        return positional_attention_curves({k: v[:, start:] for k, v in curves.items()},
                                           key_start=start, query_pos=i)

    def plot_position_terms(self, query_pos: int | None = None, heads: Sequence[int] | None = None,
                            last: int | None = 64) -> Any:
        """``T_pp`` and ``T_p`` (mean and 95 % band over key tokens) per head (matplotlib)."""
        from futurelens_tl.viz.layer0 import position_term_bands

        i = self.default_query_pos() if query_pos is None else self._check_query_pos(query_pos)
        df = self.position_terms(i)
        if heads is not None:
            df = df[df["head"].isin([self._check_head(h) for h in heads])]
        if last is not None:
            df = df[df.key_pos > i - last]
        return position_term_bands(df, query_pos=i)

    def top_prefix_table_html(self, suffixes: Sequence[int] | Sequence[str], heads: Sequence[int],
                              k: int = 5) -> str:
        """HTML table: one row per (suffix, head), top-``k`` rendered prefix+suffix strings."""
        from futurelens_tl.viz.layer0 import top_prefix_table

        frames = []
        for h in heads:
            df = self.top_prefixes(list(suffixes) if not isinstance(suffixes, str) else suffixes,
                                   h, k)
            df["head"] = h
            frames.append(df)
        import pandas as pd

        return top_prefix_table(pd.concat(frames, ignore_index=True))

    def _repr_html_(self) -> str:
        from futurelens_tl.viz.layer0 import fig_to_html, html_page, html_table

        i = self.default_query_pos()
        parts = [
            f"<p>basis: <b>{self.basis}</b>, norm: <b>{self.norm}</b>, heads: {self.n_heads}, "
            f"d_head: {self.d_head}, vocab: {self.d_vocab}, n_ctx: {self.n_ctx}, "
            f"fingerprint: <code>{self.fingerprint}</code></p>",
            html_table(self.to_dataframe(i).round(4)),
            fig_to_html(self.plot_positional_attention(i)),
            fig_to_html(self.plot_position_heatmap(i)),
        ]
        return html_page("Layer-0 decomposition (weights only)", parts)

    def show(self) -> Any:
        """Display the offline HTML summary (Jupyter) and return it."""
        return _display_html(self._repr_html_())


def _contrib_one(
    t: Float[Tensor, "term head q k"], nodes: Tensor, weights: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """LOO KL / (i+1), integrated shares and KL-to-uniform for one sequence's terms."""
    n = t.shape[-1]
    mask = torch.ones(n, n, dtype=torch.bool).tril()
    z = t.sum(0)  # [h, n, n]
    logp = torch.log_softmax(z.masked_fill(~mask, float("-inf")), -1)
    p = logp.exp()
    row_len = torch.arange(1, n + 1, dtype=torch.float64)
    loo = []
    for k in range(t.shape[0]):
        logq = torch.log_softmax((z - t[k]).masked_fill(~mask, float("-inf")), -1)
        kl = torch.where(mask, p * (logp - logq), torch.zeros(()).double()).sum(-1)
        loo.append(kl / row_len)
    avg = torch.zeros_like(p)
    for tau, w in zip(nodes.tolist(), weights.tolist(), strict=True):
        avg += w * torch.softmax((tau * z).masked_fill(~mask, float("-inf")), -1)
    diff = (p - avg).masked_fill(~mask, 0.0)
    ig = (t * diff[None]).sum(-1)  # [term, h, n]
    total = torch.where(mask, p * logp, torch.zeros(()).double()).sum(-1) + row_len.log()
    return torch.stack(loo), ig, total


# ---------------------------------------------------------------------------------- builders
def decompose_first_layer(
    model: Any,
    *,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device | None = None,
    attn_scale: float | None = None,
) -> Layer0Decomposition:
    """Fold layer-0 norm and biases into per-head query/key weights, from weights alone.

    Folding (ref §2, §10): for LayerNorm ``W~ = C diag(gamma) W``, ``b~ = beta W + b``; for
    RMSNorm only ``diag(gamma)`` (§12.1); without a norm nothing. Correct on raw weights and on
    processed ones (``fold_ln``/``center_writing_weights``/compatibility mode), where
    ``gamma``/``beta`` are absent or trivial and ``C`` is idempotent. No forward pass is run.

    Args:
        model: A TransformerLens ``TransformerBridge`` or ``HookedTransformer`` (or a
            ``ModelView``) with additive learned positions.
        dtype: Compute dtype of the stored tensors (float32 default; float64 for checks).
        device: Where to keep the tensors (default: the model's device).
        attn_scale: Override the divisor of the attention logits (default: ``sqrt(d_head)``
            from the config, 1 for models that do not scale such as GPT-Neo).

    Returns:
        :class:`Layer0Decomposition`.

    Raises:
        NotImplementedError: For rotary, ALiBi or other non-additive position schemes: there
            ``W_pos`` does not exist and the key bias no longer cancels; the relative-offset
            form (ref §12.2) is not implemented yet.
        ValueError: For an unsupported norm type or non-floating ``dtype``.

    Examples:
        >>> import futurelens_tl as fl
        >>> dec = fl.decompose_first_layer(fl.toy_model())
        >>> dec.n_heads, dec.basis
        (4, 'raw')
    """
    view = as_view(model)
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ValueError(f"dtype={dtype!r} must be a floating torch dtype (e.g. torch.float32)")
    pos_type = view.positional_embedding_type
    if pos_type != "standard" or view.W_pos is None:
        raise NotImplementedError(
            f"decompose_first_layer supports additive learned positions only; this model uses "
            f"positional_embedding_type={pos_type!r}. With rotary/ALiBi positions no position "
            "vector enters the residual stream, the key bias no longer cancels and W^QK becomes "
            "a family indexed by the offset i - j (reference layer0-decomposition.md §12.2); "
            "that relative-offset decomposition is not implemented yet."
        )
    if attn_scale is not None and not (isinstance(attn_scale, (int, float)) and attn_scale > 0):
        raise ValueError(f"attn_scale={attn_scale!r} must be a positive number or None")
    norm = view.ln1(0)
    if norm.kind not in ("LN", "RMS", None):  # pragma: no cover - NormParams restricts this
        raise ValueError(f"unsupported layer-0 norm {norm.kind!r}")
    dev = torch.device(device) if device is not None else view.device
    with torch.no_grad():

        def get(x: Tensor) -> Tensor:
            return x.detach().to(dev, dtype).clone()

        W_Q, W_K = get(view.W_Q[0]), get(view.W_K[0])
        b_Q, b_K = get(view.b_Q[0]), get(view.b_K[0])
        if norm.kind is not None:
            if norm.b is not None:
                beta = get(norm.b)
                b_Q = b_Q + torch.einsum("d,hdk->hk", beta, W_Q)
                b_K = b_K + torch.einsum("d,hdk->hk", beta, W_K)
            if norm.w is not None:
                gamma = get(norm.w)
                W_Q = W_Q * gamma[None, :, None]
                W_K = W_K * gamma[None, :, None]
            if norm.kind == "LN":
                W_Q = W_Q - W_Q.mean(1, keepdim=True)
                W_K = W_K - W_K.mean(1, keepdim=True)
        W_E, W_pos = get(view.W_E), get(view.W_pos)
    tk = view.tokenizer
    return Layer0Decomposition(
        W_Q=W_Q, W_K=W_K, b_Q=b_Q, b_K=b_K, W_E=W_E, W_pos=W_pos,
        norm=norm.kind, eps=float(norm.eps),
        attn_scale=float(attn_scale) if attn_scale is not None else view.attn_scale,
        basis=view.basis,
        fingerprint=view.fingerprint, tokenizer=tk,
        _to_tokens=view.to_tokens if tk is not None else None,
    )


def detokenization_scores(
    model: Any,
    bigram_counts: BigramCounts | Tensor | np.ndarray | dict[tuple[int, int], int],
    *,
    verbose: bool = False,
) -> Float[Tensor, " n_heads"]:
    """Mean detokenization AUROC per layer-0 head (ref §8; subword-merge head score).

    Args:
        model: A TransformerLens model (or a :class:`Layer0Decomposition`).
        bigram_counts: See :meth:`Layer0Decomposition.detokenization_auroc`.
        verbose: Progress bar.

    Returns:
        ``[n_heads]`` mean over all suffixes (unseen suffixes count as 0, as in the paper).

    Examples:
        >>> import futurelens_tl as fl
        >>> from futurelens_tl.attention.layer0 import count_bigrams, detokenization_scores
        >>> model = fl.toy_model()
        >>> toks = model.to_tokens(["a cat sat", "the dog ran"])
        >>> detokenization_scores(model, count_bigrams(toks, model.cfg.d_vocab)).shape
        torch.Size([4])
    """
    dec = model if isinstance(model, Layer0Decomposition) else decompose_first_layer(model)
    auc = dec.detokenization_auroc(bigram_counts, verbose=verbose)
    return torch.nan_to_num(auc, nan=0.0).mean(-1).float()
