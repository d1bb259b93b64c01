"""Reduce lens readouts to statistics without keeping ``[rows, vocab]`` log-probs.

Every lens readout ends here: :func:`reduce_readout` reads a lens on rows of residuals, chunk by
chunk over rows, and :func:`logit_stats` turns one chunk of logits into top-k ids and
probabilities, entropy, ``KL(final || lens)``, target log-probs and 1-based full-vocabulary
ranks (reference ``lenses-and-transformerlens.md`` §A.3: "computed over the full vocabulary but
processed in vocabulary chunks").

Why it is fused. On a CPU the unembedding matmul runs near peak FLOP rate, so every extra
elementwise pass over ``[rows, vocab]`` shows: the plain definitions (``log_softmax``, then
``p = exp(lp)``, ``-(p * lp).sum()``, ``(exp(f) * (f - lp)).sum()``) cost about as much as the
matmul. Here one chunk of logits ``z`` is shifted in place by its row maximum ``m`` and read
in four passes (top-k, ``exp`` into a reused buffer, two row-dot products):

* ``s0 = sum exp(z - m)``, ``log Z = m + log s0``;
* ``H = log s0 - sum exp(z - m) (z - m) / s0``;
* ``KL(final || lens) = sum_v p_v log p_v - sum_v p_v (z - m)_v + log s0``, with the final
  distribution's probabilities and negative entropy computed **once** per run
  (:class:`FinalDistribution`) instead of once per lens and layer;
* the target's log-prob and rank are read from ``z - m`` (shift-invariant).

The fused path (issue 17, P1). For lenses that read through the final norm and unembedding
(logit, tuned) :func:`reduce_readout` goes further: :func:`fused_unembed_stats` never builds a
chunk of ``[rows, vocab]`` logits at all. It makes one ``[256, 8192]`` tile with the matmul
and reduces it while it is in cache with an online softmax (running maximum, ``sum exp``,
``sum exp * z``, ``sum p_final * z``, a strict rank count and a group-pruned running top-k),
in a small C kernel (:mod:`futurelens_tl.lenses._fused_kernel`, torch-op fallback). The
statistics are the same definitions (tests/test_reduction.py checks them against metrics.py).
An opt-in approximate readout (bfloat16 tile matmul, float32 re-scoring of the top-k
candidates) trades exactness of ``log Z``/entropy/KL/rank for speed; exact is the default.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

__all__ = ["CHUNK_FLOATS", "FinalDistribution", "Unembedding", "fused_unembed_stats", "logit_stats",
           "reduce_readout", "scratch_for"]

#: Rows per chunk are chosen so one chunk of logits holds about this many floats (128 MB).
CHUNK_FLOATS = 2**25


@dataclass
class FinalDistribution:
    """The model's final distribution on a set of rows, prepared once for many KL readouts.

    Attributes:
        probs: ``[rows, vocab]`` float32 probabilities (rows marked invalid hold zeros).
        neg_entropy: ``[rows]`` ``sum_v p_v log p_v`` (NaN on invalid rows, so every KL read
            against such a row is NaN).
        log_normalizer: ``[rows]`` ``logsumexp`` of the final logits.
        logits: ``[rows, vocab]`` the final logits (kept by reference, for :meth:`log_prob`).
    """

    probs: Float[Tensor, "rows vocab"]
    neg_entropy: Float[Tensor, " rows"]
    log_normalizer: Float[Tensor, " rows"]
    logits: Float[Tensor, "rows vocab"]

    @classmethod
    def from_logits(
        cls,
        logits: Float[Tensor, "rows vocab"],
        valid: Bool[Tensor, " rows"] | None = None,
    ) -> FinalDistribution:
        """Prepare the final distribution of ``logits`` rows (``valid=False`` rows give NaN KL)."""
        with torch.no_grad():
            z = logits.float()
            m = z.amax(-1, keepdim=True)
            probs = torch.sub(z, m).exp_()  # one [rows, vocab] allocation, the result itself
            s0 = probs.sum(-1, keepdim=True)
            probs.div_(s0)
            lse = (m + s0.log())[:, 0]
            # sum p log p = sum p z - lse, in row blocks (no second [rows, vocab] temporary). A
            # masked id (z = -inf, p = 0) gives 0 * -inf = NaN: those rows alone take xlogy.
            neg_h = torch.cat([(probs[i : i + 256] * z[i : i + 256]).sum(-1)
                               for i in range(0, z.shape[0], 256)]) - lse
            bad = torch.isnan(neg_h)
            if bool(bad.any()):
                neg_h[bad] = torch.xlogy(probs[bad], probs[bad]).sum(-1)
            if valid is not None:
                probs[~valid] = 0.0
                neg_h = torch.where(valid, neg_h, torch.full_like(neg_h, math.nan))
        return cls(probs, neg_h, lse, z)

    def log_prob(self, ids: Int[Tensor, " rows"]) -> Float[Tensor, " rows"]:
        """``log P_final(ids)`` per row (the Future Lens surprisal is its negative)."""
        return self.logits.gather(-1, ids[:, None]).squeeze(-1) - self.log_normalizer

    def rows(self, start: int, stop: int) -> FinalDistribution:
        return FinalDistribution(self.probs[start:stop], self.neg_entropy[start:stop],
                                 self.log_normalizer[start:stop], self.logits[start:stop])


def _rowdot(a: Tensor, b: Tensor, out: Tensor) -> Tensor:
    """``sum_v a[r, v] * b[r, v]`` per row; ``out`` is a same-shaped scratch buffer."""
    return torch.mul(a, b, out=out).sum(-1)


def logit_stats(
    logits: Float[Tensor, "rows vocab"],
    k: int = 1,
    *,
    final: FinalDistribution | None = None,
    targets: Int[Tensor, " rows *n"] | None = None,
    ranks: bool | int = True,
    track_ids: Int[Tensor, " n_track"] | None = None,
    keep_log_probs: bool = False,
    scratch: Tensor | None = None,
) -> dict[str, Tensor]:
    """Statistics of one chunk of lens logits, in float32 (reference §A.3).

    ``logits`` is **overwritten** (shifted by its row maximum); pass a fresh tensor.

    Args:
        logits: ``[rows, vocab]`` lens logits.
        k: Top-k size.
        final: The model's final distribution on the same rows, for ``KL(final || lens)``.
        targets: ``[rows]`` or ``[rows, n]`` target ids, ``-1`` where there is none.
        ranks: Also return the 1-based full-vocabulary rank of each target (``True``), of none
            (``False``), or of the first ``n`` target columns (an int; each costs one pass).
        track_ids: Token ids whose probabilities to return for every row.
        keep_log_probs: Also return the ``[rows, vocab]`` log-probs.
        scratch: A ``[>= rows, vocab]`` float32 buffer to reuse (avoids page faults per chunk).

    Returns:
        ``top_ids``, ``top_log_probs`` ``[rows, k]``; ``entropy`` and ``log_normalizer``
        (``logsumexp`` of the logits) ``[rows]``; with ``final``:
        ``kl``; with ``targets``: ``target_log_probs`` (NaN where the id is -1) and
        ``target_ranks`` (0 where the id is -1); with ``track_ids``: ``tracked_probs``; with
        ``keep_log_probs``: ``log_probs``.
    """
    z = logits if logits.dtype == torch.float32 else logits.float()
    rows = z.shape[0]
    buf = (scratch[:rows] if scratch is not None and scratch.shape[0] >= rows
           and scratch.shape[1:] == z.shape[1:] else torch.empty_like(z))
    top_v, top_i = z.topk(k, dim=-1)
    m = top_v[:, :1]
    z.sub_(m)  # z <- z - m  (every entry <= 0; the top entry is 0)
    e = torch.exp(z, out=buf)
    s0 = e.sum(-1)
    log_s0 = s0.log()
    out: dict[str, Tensor] = {"top_ids": top_i, "top_log_probs": (top_v - m) - log_s0[:, None],
                              "log_normalizer": m[:, 0] + log_s0}
    if track_ids is not None:
        out["tracked_probs"] = e[:, track_ids] / s0[:, None]
    # entropy = log s0 - sum e (z - m) / s0  (buf is consumed here)
    out["entropy"] = log_s0 - _rowdot(e, z, buf) / s0
    if final is not None:
        kl = final.neg_entropy - _rowdot(final.probs, z, buf) + log_s0
        out["kl"] = kl.clamp_min(0.0)  # NaN rows stay NaN
    if targets is not None:
        t = targets if targets.ndim == 2 else targets[:, None]
        valid = t >= 0
        zt = z.gather(-1, t.clamp_min(0))
        out["target_log_probs"] = torch.where(valid, zt - log_s0[:, None],
                                              torch.full_like(zt, math.nan))
        n_rank = t.shape[1] if ranks is True else int(ranks)
        if n_rank:
            # A float 0/1 compare into the scratch buffer, then a float sum: about 5x faster
            # than summing a bool tensor (which converts it to int64 first). Exact below 2^24.
            r = torch.stack([torch.gt(z, zt[:, j : j + 1], out=buf).sum(-1)
                             for j in range(n_rank)], dim=-1).long() + 1
            out["target_ranks"] = torch.where(valid[:, :n_rank], r, torch.zeros_like(r))
        if targets.ndim == 1:
            out = {key: (v[:, 0] if key in ("target_log_probs", "target_ranks") else v)
                   for key, v in out.items()}
    if keep_log_probs:
        out["log_probs"] = z - log_s0[:, None]
    return out


def _native() -> object | None:
    from futurelens_tl.lenses._fused_kernel import kernel

    return kernel()


def _fusable(lens: torch.nn.Module) -> bool:
    """Whether ``lens`` reads ``unembed(final_norm(transform(resid)))`` in float32."""
    from futurelens_tl.lenses.base import Lens

    return (isinstance(lens, Lens) and type(lens).forward is Lens.forward
            and lens.view.W_U.dtype == torch.float32)


def scratch_for(rows: int, vocab: int, device: torch.device | str = "cpu",
                chunk_floats: int | None = None) -> Tensor:
    """One float32 scratch buffer sized for :func:`reduce_readout` on ``rows`` rows."""
    chunk = max(1, min(rows, (chunk_floats or CHUNK_FLOATS) // max(vocab, 1)))
    return torch.empty(chunk, vocab, dtype=torch.float32, device=device)


def reduce_readout(
    lens: torch.nn.Module,
    layer: int,
    resid: Float[Tensor, "rows d_model"],
    k: int = 1,
    *,
    final: FinalDistribution | None = None,
    targets: Int[Tensor, "rows ..."] | None = None,
    ranks: bool | int = True,
    track_ids: Tensor | None = None,
    keep_log_probs: bool = False,
    chunk_floats: int | None = None,
    scratch: Tensor | None = None,
    unembed: Unembedding | None = None,
    approximate: bool = False,
) -> dict[str, Tensor]:
    """Read ``lens`` at ``layer`` on ``resid`` rows and reduce, without ``[rows, vocab]`` logits.

    Lenses that read through the model's final norm and unembedding (those that override only
    ``transform``: the logit and tuned lenses) take the fused path, :func:`fused_unembed_stats`
    (tiles of logits reduced while in cache; pass ``unembed`` from
    :meth:`Unembedding.from_view` to prepare the weights once for many calls; ``approximate``
    selects its bfloat16 readout). Other lenses (and ``keep_log_probs=True``) are read chunk by
    chunk over rows and reduced by :func:`logit_stats`:

    The lens logits of one chunk (about ``chunk_floats`` floats, default :data:`CHUNK_FLOATS`)
    exist at a time, plus one scratch buffer of the same size; results are
    concatenated over rows. Same keys as :func:`logit_stats`. Pass a ``scratch`` from
    :func:`scratch_for` to reuse one buffer over many calls (a fresh 128 MB buffer costs its page
    faults on every call).
    """
    if not keep_log_probs and _fusable(lens):
        lens.check_layer(layer)
        with torch.no_grad():
            x = lens.view.final_norm(lens.transform(resid, layer))
        return fused_unembed_stats(x, unembed or Unembedding.from_view(lens.view, approximate),
                                   k, final=final, targets=targets, ranks=ranks,
                                   track_ids=track_ids, approximate=approximate)
    if approximate:
        raise ValueError(f"readout='approximate' needs a lens that reads through the final norm "
                         f"and unembedding; {type(lens).__name__} overrides forward")
    rows = resid.shape[0]
    V = lens.view.d_vocab
    chunk = max(1, min(rows, (chunk_floats or CHUNK_FLOATS) // max(V, 1)))
    parts: dict[str, list[Tensor]] = {}
    if scratch is None or scratch.shape[0] < chunk or scratch.shape[1] != V:
        scratch = torch.empty(chunk, V, dtype=torch.float32, device=resid.device)
    with torch.no_grad():
        for s in range(0, rows, chunk):
            z = lens(resid[s : s + chunk], layer)
            st = logit_stats(
                z, k,
                final=None if final is None else final.rows(s, s + chunk),
                targets=None if targets is None else targets[s : s + chunk],
                ranks=ranks, track_ids=track_ids, keep_log_probs=keep_log_probs,
                scratch=scratch,
            )
            for key, v in st.items():
                parts.setdefault(key, []).append(v)
    return {key: torch.cat(v) for key, v in parts.items()}


# ---------------------------------------------------------------------- fused unembed + reduce
#: Rows of one fused tile (the unembedding matmul stays efficient from about 256 rows up).
ROW_BLOCK = 256
#: Vocabulary columns of one fused tile (256 x 8192 float32 = 8 MB: cache resident).
VOCAB_CHUNK = 8192
#: Group count of the two-level top-k (groups are the columns ``j mod TOPK_GROUPS`` of a tile).
TOPK_GROUPS = 256
#: Re-base the running softmax maximum when a tile exceeds it by more than this (exp < 2^92).
_REBASE = 64.0


@dataclass
class Unembedding:
    """The final norm's output space -> logits map, prepared once for many fused readouts.

    Attributes:
        W_U: ``[d_model, d_vocab]`` float32 unembedding (detached).
        b_U: ``[d_vocab]`` bias, or ``None`` when it is all zero (GPT-2 has none).
        soft_cap: Output logit soft-cap (``cap * tanh(z / cap)``), or ``None``.
        W_lo: bfloat16 copy of ``W_U`` for the approximate readout (else ``None``).
        W_T: ``W_U`` transposed, contiguous (made on first use by the approximate re-scoring).
    """

    W_U: Float[Tensor, "d_model d_vocab"]
    b_U: Float[Tensor, " d_vocab"] | None = None
    soft_cap: float | None = None
    W_lo: Tensor | None = None
    W_T: Tensor | None = None

    @classmethod
    def from_view(cls, view: object, approximate: bool = False) -> Unembedding:
        """Read ``W_U``/``b_U``/soft-cap from a :class:`~futurelens_tl.model.ModelView`."""
        W = view.W_U.detach()  # type: ignore[attr-defined]
        b = view.b_U.detach()  # type: ignore[attr-defined]
        cap = getattr(view.cfg, "output_logits_soft_cap", -1.0) or -1.0  # type: ignore[attr-defined]
        return cls(W, b if bool(b.any()) else None, float(cap) if cap > 0 else None,
                   W.to(torch.bfloat16) if approximate else None)

    def columns(self, ids: Tensor) -> Tensor:
        """``W_U[:, ids]`` in the memory layout of ``W_U``'s own column slices.

        An HF-tied ``W_U`` is ``lm_head.weight.T`` (column-major): its columns are gathered as
        rows of the transpose (fast), and the gemm on them then runs the same kernel as the
        tiles, so a target's logit equals the tile's value bit for bit.
        """
        if self.W_U.stride(0) == 1 and self.W_U.stride(1) != 1:
            return self.W_U.t()[ids].t()
        return self.W_U.index_select(1, ids)

    def rows_of_transpose(self) -> Tensor:
        """``W_U.T`` as a contiguous ``[d_vocab, d_model]`` matrix (free when column-major)."""
        if self.W_T is None:
            wt = self.W_U.t()
            self.W_T = wt if wt.is_contiguous() else wt.contiguous()
        return self.W_T

    def logits_at(self, x: Tensor, ids: Tensor) -> Tensor:
        """Exact float32 logits of ``ids`` (``[n]`` shared, or ``[rows, n]`` per row)."""
        if ids.ndim == 1:
            z = x @ self.columns(ids)
            if self.b_U is not None:
                z = z + self.b_U[ids]
        else:  # per-row ids: gather rows of W_U^T, one small dot product per (row, id)
            cols = self.rows_of_transpose()[ids]  # [rows, n, d]
            z = torch.bmm(cols, x[:, :, None])[..., 0]
            if self.b_U is not None:
                z = z + self.b_U[ids]
        return self._cap(z)

    def _cap(self, z: Tensor) -> Tensor:
        if self.soft_cap is not None:
            z = z.div(self.soft_cap).tanh_().mul_(self.soft_cap)
        return z


def _target_logits(xb: Tensor, U: Unembedding, tc: Tensor) -> Tensor:
    """``[n, m]`` logits of per-row ids ``tc`` through a gemm on their columns.

    The same matmul routine and row block as the tiles, so the values match the tiles' own
    (a token tied with the target then compares equal, not larger).
    """
    n, m = tc.shape
    cols = U.columns(tc.reshape(-1))  # [d, n m]
    if U.b_U is not None:
        z = torch.addmm(U.b_U[tc.reshape(-1)], xb, cols)
    else:
        z = xb @ cols
    z = z.view(n, n, m).diagonal(dim1=0, dim2=1).t()  # z[i, i, :]
    return U._cap(z.contiguous())


def _group_topk(z: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Exact row top-k of a tile via group maxima (columns ``j mod G`` form group ``j``).

    Each of the top-k entries lies in a group whose maximum is among the k largest group
    maxima, so the top-k of the ``k * (w / G)`` entries of those groups is the row top-k (ties
    may resolve to another index of equal value). About 2x cheaper than ``topk`` on a wide tile.
    """
    n, w = z.shape
    G = TOPK_GROUPS
    if w % G or w // G < 2 or G < 4 * k:
        return z.topk(min(k, w), dim=-1)
    s = w // G
    gm = z.view(n, s, G).amax(1)
    gi = gm.topk(k, dim=-1).indices  # [n, k] groups
    idx = (gi[:, :, None] + torch.arange(0, w, G, device=z.device)).reshape(n, k * s)
    tv, ti = z.gather(1, idx).topk(k, dim=-1)
    return tv, idx.gather(1, ti)


def fused_unembed_stats(
    x: Float[Tensor, "rows d_model"],
    unembed: Unembedding,
    k: int = 1,
    *,
    final: FinalDistribution | None = None,
    targets: Int[Tensor, " rows *n"] | None = None,
    ranks: bool | int = True,
    track_ids: Int[Tensor, " n_track"] | None = None,
    approximate: bool = False,
    candidates: int | None = None,
    row_block: int = ROW_BLOCK,
    vocab_chunk: int = VOCAB_CHUNK,
    native: bool = True,
) -> dict[str, Tensor]:
    """Unembed final-normed rows ``x`` and reduce, one ``[row_block, vocab_chunk]`` tile at a time.

    Same keys and definitions as :func:`logit_stats` (reference ``lenses-and-transformerlens.md``
    §A.3), but the ``[rows, vocab]`` logits never exist: each tile of logits is produced by the
    matmul and read while it is in cache (top-k candidates, ``sum exp``, the entropy and KL
    row-dots, the rank count) with an online softmax (a running maximum per row, re-based only
    when a tile exceeds it by more than 64 nats). The plain version writes the whole chunk of
    logits to memory and reads it back five times; on a CPU that costs about as much as the
    matmul.

    Ranks count the tokens whose logit is strictly larger than the target's; the target's logit
    is the one the tile matmul itself produced (read from its tile), so a token tied with the
    target does not count.

    ``approximate=True`` (opt-in) makes the tile matmul in bfloat16 (``unembed.W_lo``, AMX /
    AVX512-BF16 on recent x86), keeps the top ``candidates`` (default ``2 k + 8``) ids of the
    bfloat16 logits and re-scores them in float32: top-k ids and log-probs use the exact logits of
    the candidates; ``log Z``, entropy, KL and ranks come from the bfloat16 logits (errors of
    order ``2^-8 |z|``).

    Args:
        x: ``[rows, d_model]`` outputs of the final norm (float32).
        unembed: :class:`Unembedding` of the model.
        k: Top-k size.
        final: The model's final distribution on the same rows (for ``KL(final || lens)``).
        targets: ``[rows]`` or ``[rows, n]`` target ids, ``-1`` where there is none.
        ranks: Ranks of every target column (``True``), none, or the first ``n`` columns.
        track_ids: Token ids whose probabilities to return for every row.
        approximate: bfloat16 matmul + float32 re-scoring of a candidate set (see above).
        candidates: Candidate count of the approximate top-k.
        row_block: Rows per tile.
        vocab_chunk: Vocabulary columns per tile.
        native: Reduce each tile with the C kernel of
            :mod:`futurelens_tl.lenses._fused_kernel` when it can be built (CPU); ``False``
            (or no compiler) uses torch ops with the same results.

    Returns:
        The keys of :func:`logit_stats` (without ``log_probs``).

    Examples:
        >>> import torch
        >>> from futurelens_tl.lenses.reduction import Unembedding, fused_unembed_stats, logit_stats
        >>> g = torch.Generator().manual_seed(0)
        >>> W, x = torch.randn(16, 1000, generator=g), torch.randn(5, 16, generator=g)
        >>> a = fused_unembed_stats(x, Unembedding(W), 3, vocab_chunk=256)
        >>> b = logit_stats(x @ W, 3)
        >>> torch.equal(a["top_ids"], b["top_ids"]), torch.allclose(a["entropy"], b["entropy"])
        (True, True)
    """
    rows, V = x.shape[0], unembed.W_U.shape[1]
    k = min(k, V)
    if approximate and unembed.W_lo is None:
        unembed = Unembedding(unembed.W_U, unembed.b_U, unembed.soft_cap,
                              unembed.W_U.to(torch.bfloat16))
    kc = min(V, candidates or 2 * k + 8) if approximate else k
    t2 = None if targets is None else (targets if targets.ndim == 2 else targets[:, None])
    n_rank = 0 if t2 is None else (t2.shape[1] if ranks is True else int(ranks))
    parts: dict[str, list[Tensor]] = {}
    rb = max(1, min(rows, row_block))
    vc = max(1, min(V, vocab_chunk))
    zbuf = torch.empty(rb, vc, dtype=torch.float32, device=x.device)
    lib = _native() if native and x.device.type == "cpu" else None
    ebuf = zbuf if lib is not None else torch.empty_like(zbuf)
    with torch.no_grad():
        for r0 in range(0, rows, rb):
            xb = x[r0 : r0 + rb].float().contiguous()
            fb = None if final is None else final.rows(r0, r0 + rb)
            tb = None if t2 is None else t2[r0 : r0 + rb]
            if lib is not None:
                st = _native_block(lib, xb, unembed, k, kc, zbuf, fb, tb, n_rank, approximate)
            else:
                st = _fused_block(xb, unembed, k, kc, zbuf, ebuf, fb, tb, n_rank, approximate)
            if track_ids is not None:
                st["tracked_probs"] = (unembed.logits_at(xb, track_ids)
                                       - st["log_normalizer"][:, None]).exp()
            for key, v in st.items():
                parts.setdefault(key, []).append(v)
    out = {key: torch.cat(v) for key, v in parts.items()}
    if targets is not None and targets.ndim == 1:
        out = {key: (v[:, 0] if key in ("target_log_probs", "target_ranks") else v)
               for key, v in out.items()}
    return out


def _tile_logits(xb: Tensor, x_lo: Tensor | None, U: Unembedding, v0: int, z: Tensor) -> Tensor:
    """Logits of columns ``v0 .. v0 + w`` into the buffer ``z`` (``[n, w]``)."""
    w = z.shape[1]
    if x_lo is not None:
        z.copy_(x_lo @ U.W_lo[:, v0 : v0 + w])  # type: ignore[index]
        if U.b_U is not None:
            z.add_(U.b_U[v0 : v0 + w])
    elif U.b_U is not None:
        torch.addmm(U.b_U[v0 : v0 + w], xb, U.W_U[:, v0 : v0 + w], out=z)
    else:
        torch.mm(xb, U.W_U[:, v0 : v0 + w], out=z)
    if U.soft_cap is not None:
        z.div_(U.soft_cap).tanh_().mul_(U.soft_cap)
    return z


def _finish(xb: Tensor, U: Unembedding, k: int, kc: int, top_v: Tensor, top_i: Tensor, m: Tensor,
            s0: Tensor, s1: Tensor, skl: Tensor | None, final: FinalDistribution | None,
            t: Tensor | None, zt: Tensor | None, zself: Tensor | None, cnt: Tensor | None,
            n_rank: int, approximate: bool) -> dict[str, Tensor]:
    """Statistics of one row block from the online state (``top_v/top_i``: candidates)."""
    log_s0 = s0.log()
    lse = m + log_s0
    if approximate:  # re-score the bfloat16 candidates in float32
        sel = top_v.topk(min(kc, top_v.shape[1]), dim=-1).indices
        ids = top_i.gather(1, sel)
        tv, sel = U.logits_at(xb, ids).topk(k, dim=-1)
        ti = ids.gather(1, sel)
    else:
        tv, sel = top_v.topk(k, dim=-1)
        ti = top_i.gather(1, sel)
    out: dict[str, Tensor] = {"top_ids": ti, "top_log_probs": tv - lse[:, None],
                              "log_normalizer": lse, "entropy": log_s0 - s1 / s0}
    if final is not None:
        out["kl"] = (final.neg_entropy - skl + log_s0).clamp_min(0.0)
    if t is not None:
        valid = t >= 0
        z_t = zt if approximate else zself
        out["target_log_probs"] = torch.where(valid, z_t - lse[:, None],
                                              torch.full_like(z_t, math.nan))
        if n_rank:
            r = (cnt + 1).long()
            out["target_ranks"] = torch.where(valid[:, :n_rank], r, torch.zeros_like(r))
    bad = ~torch.isfinite(xb).all(1)
    if bool(bad.any()):  # a non-finite residual row: every statistic NaN, as the plain path
        for key in ("top_log_probs", "log_normalizer", "entropy", "kl", "target_log_probs"):
            if key in out:
                out[key] = out[key].masked_fill(bad.view(-1, *[1] * (out[key].ndim - 1)),
                                                math.nan)
    return out


def _native_block(lib: object, xb: Tensor, U: Unembedding, k: int, kc: int, zbuf: Tensor,
                  final: FinalDistribution | None, t: Tensor | None, n_rank: int,
                  approximate: bool) -> dict[str, Tensor]:
    """One row block through the C tile kernel (:mod:`futurelens_tl.lenses._fused_kernel`)."""
    from futurelens_tl.lenses import _fused_kernel as K

    n, V = xb.shape[0], U.W_U.shape[1]
    f64 = dict(dtype=torch.float64, device=xb.device)
    m = torch.full((n,), -math.inf, device=xb.device)
    s0, s1, skl, psum = (torch.zeros(n, **f64) for _ in range(4))
    topv = torch.full((n, kc), -math.inf, device=xb.device)
    topi = torch.full((n, kc), -1, dtype=torch.long, device=xb.device)
    gm = torch.empty(n, K.GROUPS, device=xb.device)
    x_lo = xb.to(torch.bfloat16) if approximate else None
    pf = None if final is None else final.probs
    if pf is not None and (pf.dtype != torch.float32 or pf.stride(1) != 1):
        pf = pf.float().contiguous()
    zt = zself = cnt = tgt = None
    if t is not None:
        tgt = t.contiguous()
        zt = _target_logits(xb, U, t.clamp_min(0)).contiguous()
        zself = torch.full_like(zt, math.nan)
        cnt = torch.zeros(n, max(n_rank, 1), **f64)
    for v0 in range(0, V, zbuf.shape[1]):
        w = min(zbuf.shape[1], V - v0)
        z = _tile_logits(xb, x_lo, U, v0, zbuf[:n, :w])
        K.tile(lib, z, v0, pf, zt, tgt, n_rank, gm, m, s0, s1, skl, psum, cnt, zself, topv,
               topi)
    return _finish(xb, U, k, kc, topv, topi, m, s0.float(), s1.float(),
                   None if final is None else skl.float(), final, t, zt, zself,
                   None if cnt is None else cnt[:, :n_rank], n_rank, approximate)


def _fused_block(xb: Tensor, U: Unembedding, k: int, kc: int, zbuf: Tensor, ebuf: Tensor,
                 final: FinalDistribution | None, t: Tensor | None, n_rank: int,
                 approximate: bool) -> dict[str, Tensor]:
    """One row block with torch ops (the fallback of :func:`_native_block`)."""
    n, V = xb.shape[0], U.W_U.shape[1]
    dev = xb.device
    m = torch.full((n,), -math.inf, device=dev)  # running reference maximum per row
    s0 = torch.zeros(n, device=dev)  # sum exp(z - m)
    s1 = torch.zeros(n, device=dev)  # sum exp(z - m) (z - m)
    skl = torch.zeros(n, device=dev)  # sum p_final (z - m)
    cand_v: list[Tensor] = []
    cand_i: list[Tensor] = []
    x_lo = xb.to(torch.bfloat16) if approximate else None
    if t is not None:
        tc = t.clamp_min(0)
        # The rank threshold: the targets' logits from a gemm on their own columns (same
        # routine as the tiles); the exact value is re-read from the tile below.
        zt = _target_logits(xb, U, tc)
        zself = torch.full_like(zt, math.nan)
        cnt = torch.zeros(n, n_rank, device=dev)
    for v0 in range(0, V, zbuf.shape[1]):
        w = min(zbuf.shape[1], V - v0)
        z = _tile_logits(xb, x_lo, U, v0, zbuf[:n, :w])
        e = ebuf[:n, :w]
        tv, ti = _group_topk(z, kc)
        tmax = tv[:, 0]
        up = tmax > m + _REBASE
        if bool(up.any()):  # first tile, or a tile far above the running maximum: re-base
            new = torch.where(up, tmax, m)
            d = m - new  # <= 0, -inf on the first tile
            f = torch.where(torch.isfinite(d), d.exp(), torch.zeros_like(d))
            dd = torch.where(torch.isfinite(d), d, torch.zeros_like(d))
            s1 = f * (s1 + s0 * dd)
            s0 = f * s0
            if final is not None and v0 > 0:
                skl = skl + dd * final.probs[:, :v0].sum(-1)
            m = new
        cand_v.append(tv)
        cand_i.append(ti + v0)
        if t is not None:
            inside = (tc >= v0) & (tc < v0 + w)
            if bool(inside.any()):
                at = (tc - v0).clamp(0, w - 1)
                zself = torch.where(inside, z.gather(1, at), zself)
            # Ranks on the raw logits (a shift could round two near-equal logits together). A
            # float 0/1 compare + float sum, as in logit_stats.
            for j in range(n_rank):
                cnt[:, j] += torch.gt(z, zt[:, j : j + 1], out=e).sum(-1)
            if n_rank and bool(inside.any()):  # a target above its own threshold: uncount it
                own = z.gather(1, at[:, :n_rank]) > zt[:, :n_rank]
                cnt -= (own & inside[:, :n_rank]).float()
        z.sub_(m[:, None])  # z <- z - m
        torch.exp(z, out=e)
        s0 = s0 + e.sum(-1)
        s1 = s1 + torch.mul(e, z, out=e).sum(-1)
        if final is not None:
            skl = skl + torch.mul(final.probs[:, v0 : v0 + w], z, out=e).sum(-1)
    return _finish(xb, U, k, kc, torch.cat(cand_v, 1), torch.cat(cand_i, 1), m, s0, s1, skl,
                   final, t, zt if t is not None else None, zself if t is not None else None,
                   cnt if t is not None else None, n_rank, approximate)
