"""Detokenization AUROC per (head, suffix) against bigram counts (ref §8).

Positives are the prefixes ``u`` seen before suffix ``s`` (weighted by ``c(u, s)``), negatives the
rest (weight 1); ties count 1/2. That is ``sklearn.metrics.roc_auc_score`` with
``sample_weight`` (ref §8), which the tests use as the reference and ``method="sklearn"`` calls row
by row. The default path gives the same numbers far faster: per suffix row it needs only the rank
of each positive among all ``|V|`` scores: scores below the lowest positive are only counted, the
rest sorted (numpy's vectorised sort, threads over rows), each positive binary-searched;
suffixes never seen skip the row entirely (AUROC := 0, ref §8). On an accelerator the same
closed form runs batched with ``torch.sort``.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from futurelens_tl.attention.layer0.bigrams import BigramCounts
from futurelens_tl.progress import progress


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
    dev = scores.device
    out = torch.zeros(rows, dtype=torch.float64, device=dev)
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
    idx, w, valid = idx.to(dev), w.to(dev), valid.to(dev)
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
    n_neg = torch.from_numpy(v - nr).double().to(dev)
    auc = torch.where(p_tot > 0, num / (p_tot * n_neg), torch.zeros_like(num))
    return torch.where((n_neg == 0) & (p_tot > 0), torch.full_like(auc, float("nan")), auc)



def _auroc_sorted_rows(
    scores: np.ndarray, bc: BigramCounts, rows: np.ndarray, out: np.ndarray
) -> None:
    """Closed-form weighted AUROC for suffix ``rows`` given their score rows (numpy, in place).

    Only the ranks of the positives matter. Every score below the lowest positive is a negative
    below all of them, so it is counted (one comparison pass) rather than sorted; only the tail
    at or above the lowest positive is sorted, then each positive is placed by binary search
    among the tail and among the positives (ties count 1/2).
    """
    v = scores.shape[-1]
    for r, s in enumerate(rows):
        a, b = int(bc.indptr[s]), int(bc.indptr[s + 1])
        m = b - a
        if m == 0:
            continue
        if m == v:
            out[r] = np.nan
            continue
        row = scores[r]
        p = row[bc.prefix[a:b]]
        w = bc.count[a:b].astype(np.float64)
        tail = np.sort(row[row >= p.min()])
        n_below = v - tail.size
        lt = np.searchsorted(tail, p, "left") + n_below
        le = np.searchsorted(tail, p, "right") + n_below
        ps = np.sort(p)
        plt_ = np.searchsorted(ps, p, "left")
        ple = np.searchsorted(ps, p, "right")
        neg_lt = (lt - plt_).astype(np.float64)
        neg_eq = ((le - lt) - (ple - plt_)).astype(np.float64)
        out[r] = float((w * (neg_lt + 0.5 * neg_eq)).sum() / (w.sum() * (v - m)))


def _auroc_sklearn_rows(
    scores: np.ndarray, bc: BigramCounts, rows: np.ndarray, out: np.ndarray
) -> None:
    """Reference path: ``sklearn.metrics.roc_auc_score`` with ``sample_weight`` per row."""
    from sklearn.metrics import roc_auc_score

    v = scores.shape[-1]
    for r, s in enumerate(rows):
        a, b = int(bc.indptr[s]), int(bc.indptr[s + 1])
        if b == a:
            continue
        if b - a == v:
            out[r] = np.nan
            continue
        y = np.zeros(v, dtype=np.int8)
        wt = np.ones(v, dtype=np.float64)
        y[bc.prefix[a:b]] = 1
        wt[bc.prefix[a:b]] = bc.count[a:b]
        out[r] = roc_auc_score(y, scores[r], sample_weight=wt)


def auroc_table(
    factors: Callable[[int], tuple[Tensor, Tensor]],
    heads: list[int],
    bc: BigramCounts,
    *,
    chunk_size: int = 512,
    method: str = "fast",
    n_threads: int | None = None,
    verbose: bool = True,
) -> Float[Tensor, "head d_vocab"]:
    """AUROC for every (head, suffix): ``factors(h) -> (A_h, B_h)``, scores ``A_h[s] . B_h[u]``.

    Rows are streamed in chunks of ``chunk_size`` seen suffixes (never ``|V| x |V|``; ref §11).
    """
    if method not in ("fast", "sklearn"):
        raise ValueError(f"method={method!r}; allowed 'fast' or 'sklearn'")
    if not isinstance(chunk_size, int) or chunk_size <= 0:
        raise ValueError(f"chunk_size={chunk_size!r} must be a positive int")
    v = bc.vocab_size
    out = torch.zeros(len(heads), v, dtype=torch.float64)
    if method == "fast" and factors(heads[0])[0].device.type != "cpu":
        steps = [(hi, c) for hi in range(len(heads)) for c in range(0, v, chunk_size)]
        for hi, c in progress(steps, verbose=verbose, desc="AUROC"):
            a, b = factors(heads[hi])
            stop = min(c + chunk_size, v)
            out[hi, c:stop] = _weighted_auroc_csr(a[c:stop] @ b.T, bc, c).cpu()
        return out
    seen = np.nonzero(np.diff(bc.indptr) > 0)[0]
    n_threads = n_threads or max(1, min(torch.get_num_threads(), os.cpu_count() or 1))
    steps = [(hi, c) for hi in range(len(heads)) for c in range(0, len(seen), chunk_size)]
    pool = ThreadPoolExecutor(n_threads) if n_threads > 1 and method == "fast" else None
    fn = _auroc_sorted_rows if method == "fast" else _auroc_sklearn_rows
    try:
        for hi, c in progress(steps, verbose=verbose, desc="AUROC"):
            a, b = factors(heads[hi])
            rows = seen[c:c + chunk_size]
            s_np = (a[torch.from_numpy(rows)] @ b.T).float().numpy()
            res_np = np.zeros(len(rows), dtype=np.float64)
            if pool is None:
                fn(s_np, bc, rows, res_np)
            else:
                parts = [q for q in np.array_split(np.arange(len(rows)), n_threads) if q.size]
                futs = [pool.submit(fn, s_np[q[0]:q[-1] + 1], bc, rows[q[0]:q[-1] + 1],
                                    res_np[q[0]:q[-1] + 1]) for q in parts]
                for f in futs:
                    f.result()
            out[hi, torch.from_numpy(rows)] = torch.from_numpy(res_np)
    finally:
        if pool is not None:
            pool.shutdown()
    return out
