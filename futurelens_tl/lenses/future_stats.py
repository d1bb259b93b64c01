"""Statistics for Future Lens results: document-grouped bootstrap intervals and n-gram baselines.

* :func:`grouped_bootstrap` — percentile intervals of ratio estimates (precision, mean
  surprisal, ...) resampling **documents** with replacement, not examples: contexts cut from
  one document are correlated, so an example-level bootstrap would be too narrow. One weight
  matrix serves every row of a result table (vectorised).
* :class:`NgramTable` — a sparse n-gram model (bigram, trigram, skip-bigram) counted on the
  training documents, with back-off to lower orders and to the unigram. The Future Lens paper
  drew a bigram only at ``N = 1`` (reference ``future-lens.md`` §4.1: 0.201 on the Pile) and
  never computed a trigram; here every ``N`` gets both.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import torch
from jaxtyping import Float, Int
from torch import Tensor

__all__ = ["NgramTable", "bootstrap_weights", "grouped_bootstrap"]


def bootstrap_weights(n_groups: int, n_boot: int, seed: int = 0) -> Float[Tensor, "boot groups"]:
    """How often each group is drawn in each of ``n_boot`` resamples (multinomial counts).

    Examples:
        >>> w = bootstrap_weights(5, 3, seed=0)
        >>> tuple(w.shape), w.sum(1).tolist()
        ((3, 5), [5.0, 5.0, 5.0])
    """
    if n_groups < 1 or n_boot < 1:
        raise ValueError(f"n_groups={n_groups} and n_boot={n_boot} must be >= 1.")
    g = torch.Generator().manual_seed(int(seed))
    draws = torch.randint(0, n_groups, (n_boot, n_groups), generator=g)
    w = torch.zeros(n_boot, n_groups, dtype=torch.float64)
    w.scatter_add_(1, draws, torch.ones_like(draws, dtype=torch.float64))
    return w


def grouped_bootstrap(
    values: Float[Tensor, "rows n"],
    groups: Int[Tensor, " n"],
    *,
    weights: Float[Tensor, "rows n"] | None = None,
    n_boot: int = 1000,
    ci: float = 0.95,
    seed: int = 0,
) -> tuple[Float[Tensor, " rows"], Float[Tensor, " rows"], Float[Tensor, " rows"]]:
    """Point estimate and percentile CI of ``sum(w v) / sum(w)`` per row, resampling groups.

    Args:
        values: Per-example values, one row per estimate (e.g. hits@1 of one layer).
        groups: Group (document) id of each example.
        weights: Per-example inclusion weights (default 1; a 0/1 mask gives a sub-population
            such as a confidence bucket).
        n_boot: Resamples (0 = no interval: NaN bounds).
        ci: Coverage of the interval.
        seed: Seed of the resampling.

    Returns:
        ``(estimate, low, high)``, each ``[rows]``; NaN where a row has no weight.

    Examples:
        >>> import torch
        >>> v = torch.tensor([[1., 1., 0., 0.]])
        >>> est, lo, hi = grouped_bootstrap(v, torch.tensor([0, 0, 1, 1]), n_boot=200)
        >>> float(est[0]), bool(lo[0] <= 0.5 <= hi[0])
        (0.5, True)
    """
    v = values.double()
    if v.ndim != 2 or groups.shape[0] != v.shape[1]:
        raise ValueError(f"values {tuple(v.shape)} and groups {tuple(groups.shape)} must be "
                         "[rows, n] and [n].")
    w = torch.ones_like(v) if weights is None else weights.double()
    _, inv = torch.unique(groups, return_inverse=True)
    n_groups = int(inv.max()) + 1 if inv.numel() else 0
    onehot = torch.zeros(v.shape[1], max(n_groups, 1), dtype=torch.float64)
    if inv.numel():
        onehot[torch.arange(v.shape[1]), inv] = 1.0
    num, den = (w * v) @ onehot, w @ onehot  # [rows, groups]
    tot = den.sum(1)
    est = torch.where(tot > 0, num.sum(1) / tot.clamp_min(1e-300), torch.nan)
    if n_boot <= 0 or n_groups == 0:
        nan = torch.full_like(est, torch.nan)
        return est, nan, nan
    bw = bootstrap_weights(n_groups, n_boot, seed).T  # [groups, boot]
    bn, bd = num @ bw, den @ bw
    boot = torch.where(bd > 0, bn / bd.clamp_min(1e-300), torch.nan)
    a = (1 - ci) / 2
    lo = torch.nanquantile(boot, a, dim=1)
    hi = torch.nanquantile(boot, 1 - a, dim=1)
    return est, lo, hi


class NgramTable:
    """Sparse n-gram successor table with back-off (ties broken by token id).

    ``NgramTable(order=3)`` predicts ``x_{t+1}`` from ``(x_{t-1}, x_t)``, backing off to the
    bigram ``x_t`` and then to the unigram when a context was never seen. ``gap=g`` skips
    ``g`` tokens (``order=2, gap=1`` predicts ``x_{t+2}`` from ``x_t``: the blind baseline of
    a lens that does not see ``x_{t+1}``).

    Examples:
        >>> import torch
        >>> tab = NgramTable(2).fit([[1, 2, 1, 2, 1, 3]])
        >>> tab.topk([[1]], 2)
        [[2, 3]]
        >>> NgramTable(3).fit([[5, 1, 2, 7, 1, 2, 9, 1, 4]]).topk([[7, 1], [8, 1]], 1)
        [[2], [2]]
    """

    def __init__(self, order: int = 2, gap: int = 0):
        if order < 1 or gap < 0:
            raise ValueError(f"order={order} must be >= 1 and gap={gap} >= 0.")
        self.order, self.gap = int(order), int(gap)
        self.tables: list[dict[tuple[int, ...], Counter]] = []
        self.unigram: Counter = Counter()
        self.n_tokens = 0

    def fit(self, seqs: Sequence[Sequence[int]] | Tensor) -> NgramTable:
        """Count every order ``1..order`` (and the gap) in ``seqs`` (one sequence per document)."""
        rows = seqs.tolist() if isinstance(seqs, Tensor) else [list(map(int, s)) for s in seqs]
        self.tables = [dict() for _ in range(self.order - 1)]  # index m-1: context length m
        for s in rows:
            self.unigram.update(s)
            self.n_tokens += len(s)
            for m in range(1, self.order):
                tab = self.tables[m - 1]
                for t in range(m - 1, len(s) - 1 - self.gap):
                    ctx = tuple(s[t - m + 1 : t + 1])
                    tab.setdefault(ctx, Counter())[s[t + 1 + self.gap]] += 1
        if not self.n_tokens:
            raise ValueError("seqs is empty; give at least one non-empty sequence.")
        self._uni = [t for t, _ in sorted(self.unigram.items(), key=lambda x: (-x[1], x[0]))]
        return self

    def _succ(self, ctx: tuple[int, ...], k: int) -> list[int]:
        out: list[int] = []
        for m in range(min(len(ctx), self.order - 1), 0, -1):  # longest context first
            c = self.tables[m - 1].get(ctx[len(ctx) - m :])
            if c:
                for t, _ in sorted(c.items(), key=lambda x: (-x[1], x[0])):
                    if t not in out:
                        out.append(t)
                if len(out) >= k:
                    return out[:k]
        for t in self._uni:
            if len(out) >= k:
                break
            if t not in out:
                out.append(t)
        return out[:k]

    def topk(self, contexts: Sequence[Sequence[int]] | Tensor, k: int = 1) -> list[list[int]]:
        """Top-``k`` predictions after each context (its last ``order - 1`` tokens are used)."""
        if not self.tables and not self.unigram:
            raise ValueError("NgramTable is not fitted; call .fit(seqs) first.")
        ctxs = contexts.tolist() if isinstance(contexts, Tensor) else contexts
        cache: dict[tuple[int, ...], list[int]] = {}
        out = []
        for c in ctxs:
            key = tuple(int(x) for x in c)[-(self.order - 1):] if self.order > 1 else ()
            if key not in cache:
                cache[key] = self._succ(key, k)
            out.append(cache[key])
        return out
