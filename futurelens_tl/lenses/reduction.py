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
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

__all__ = ["CHUNK_FLOATS", "FinalDistribution", "logit_stats", "reduce_readout", "scratch_for"]

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
) -> dict[str, Tensor]:
    """Read ``lens`` at ``layer`` on ``resid`` rows and reduce chunk by chunk over rows.

    The lens logits of one chunk (about ``chunk_floats`` floats, default :data:`CHUNK_FLOATS`)
    exist at a time, plus one scratch buffer of the same size; results are
    concatenated over rows. Same keys as :func:`logit_stats`. Pass a ``scratch`` from
    :func:`scratch_for` to reuse one buffer over many calls (a fresh 128 MB buffer costs its page
    faults on every call).
    """
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
