"""Role scorers: every function returns a :class:`RoleScore` with an ``[n_layers, n_heads]`` score.

Three evidence channels, kept separate (reference ``head-roles.md`` §7):

* **pattern** scores read ``blocks.{l}.attn.hook_pattern``; all of them for one probe dataset
  come from **one** no-grad forward per batch (:func:`pattern_scores`), reduced layer by layer
  inside the hook so no layer's patterns are kept after the reduction;
* **weights** scores (copying, successor, copy suppression, K-composition) live in
  :mod:`futurelens_tl.attention.scores_weights`;
* **causal** scores (retrieval, IOI name movers and S-inhibition) live in
  :mod:`futurelens_tl.attention.scores_causal`; task-prompt roles (memory, negative,
  amplification, in-context, syntactic, ...) in :mod:`futurelens_tl.attention.scores_task`.

This module keeps the pattern scores and re-exports the others, so ``scores.copying_scores``
and friends stay where users found them.

Conventions: ``A[b, h, i, j]`` attention from query ``i`` to key ``j``; position 0 is BOS.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from jaxtyping import Bool, Float, Int, Shaped
from torch import Tensor

from futurelens_tl.attention.datasets import ProbeData
from futurelens_tl.attention.role_score import RoleScore
from futurelens_tl.attention.scores_causal import ioi_scores, retrieval_scores
from futurelens_tl.attention.scores_weights import (
    copy_suppression_scores,
    copying_scores,
    effective_embeddings,
    k_composition_baseline,
    k_composition_scores,
    subword_merge_layer0,
    successor_scores,
)
from futurelens_tl.data import FORWARD_COUNTER, progress
from futurelens_tl.models.view import ModelView

__all__ = [
    "RoleScore",
    "copy_suppression_scores",
    "copying_scores",
    "duplicate_mask",
    "effective_embeddings",
    "induction_mask",
    "ioi_scores",
    "k_composition_baseline",
    "k_composition_scores",
    "pattern_scores",
    "retrieval_scores",
    "subword_merge_layer0",
    "successor_scores",
    "tl_detection_score",
]


# ---------------------------------------------------------------------------- detection masks
def duplicate_mask(tokens: Int[Tensor, "batch pos"]) -> Bool[Tensor, "batch pos pos"]:
    """``D[b, i, j] = (t_j == t_i) and j < i`` (TL ``duplicate_token_head`` pattern)."""
    eq = tokens[:, :, None] == tokens[:, None, :]
    return eq & torch.ones_like(eq[0]).tril(-1)


def induction_mask(tokens: Int[Tensor, "batch pos"]) -> Bool[Tensor, "batch pos pos"]:
    """``D[b, i, j] = D_dup[b, i, j-1]`` for ``j >= 1`` (TL ``induction_head`` pattern)."""
    dup = duplicate_mask(tokens)
    out = torch.zeros_like(dup)
    out[:, :, 1:] = dup[:, :, :-1]
    return out & torch.ones_like(out[0]).tril()


def previous_mask(n: int, device: torch.device | None = None) -> Bool[Tensor, "pos pos"]:
    """``D[i, i-1] = 1`` (TL ``previous_token_head`` pattern)."""
    return torch.ones(n, n, dtype=torch.bool, device=device).tril(-1) & ~torch.ones(
        n, n, dtype=torch.bool, device=device).tril(-2)


def tl_detection_score(
    pattern: Float[Tensor, "batch head pos pos"],
    detection: Shaped[Tensor, "batch pos pos"],
    *,
    exclude_bos: bool = False,
    exclude_current_token: bool = False,
    error_measure: str = "mul",
) -> Float[Tensor, "batch head"]:
    """TransformerLens ``compute_head_attention_similarity_score``, batched over prompts and heads.

    Reference ``head-roles.md`` §3.1: ``mul`` = ``sum(A*D)/sum(A)`` after zeroing the BOS column
    and/or the diagonal; ``abs`` = ``1 - round(L * mean|A - D|, 3)``. ``detect_head`` on a list
    of prompts is the mean over prompts of these per-prompt values.
    """
    a = pattern.float()
    d = detection.float()[:, None]
    n = a.shape[-1]
    if error_measure == "mul":
        if exclude_bos:
            a = a.clone()
            a[..., 0] = 0
        if exclude_current_token:
            a = a * (1 - torch.eye(n, device=a.device))
        return (a * d).sum((-1, -2)) / a.sum((-1, -2))
    if error_measure != "abs":
        raise ValueError(f"error_measure={error_measure!r}; allowed 'mul', 'abs'")
    e = (a - d).abs()
    if exclude_bos:
        e = e.clone()
        e[..., 0] = 0
    if exclude_current_token:
        e = e * (1 - torch.eye(n, device=e.device))
    return 1 - torch.round(e.mean((-1, -2)) * n, decimals=3)


# ---------------------------------------------------------------------------- pattern scores
PATTERN_ROLES_SYNTHETIC = ("previous_token", "duplicate_token", "induction", "positional",
                           "attention_sink", "current_token")
PATTERN_ROLES_TEXT = ("rare_words", "subword_merge")


class _Acc:
    """Sums and counts per (layer, head) for the pattern reductions."""

    def __init__(self, n_layers: int, n_heads: int, names: Sequence[str]):
        self.sum = {k: torch.zeros(n_layers, n_heads, dtype=torch.float64) for k in names}
        self.cnt = {k: torch.zeros(n_layers, n_heads, dtype=torch.float64) for k in names}

    def add(self, name: str, layer: int, total: Tensor, count: Tensor | float | int) -> None:
        self.sum[name][layer] += total.detach().double().cpu()
        self.cnt[name][layer] += (count.detach().double().cpu() if isinstance(count, Tensor)
                                  else float(count))

    def mean(self, name: str) -> Tensor:
        c = self.cnt[name]
        out = self.sum[name] / c.clamp_min(1e-12)
        out[c == 0] = float("nan")
        return out.float()


def pattern_scores(
    view: ModelView,
    data: ProbeData,
    *,
    roles: Sequence[str] = PATTERN_ROLES_SYNTHETIC,
    batch_size: int = 16,
    unigram_counts: Shaped[Tensor, " d_vocab"] | None = None,
    word_start: Bool[Tensor, " d_vocab"] | None = None,
    tl_options: dict[str, Any] | None = None,
    verbose: bool = True,
) -> dict[str, RoleScore]:
    r"""All attention-pattern role scores for one probe dataset from one forward per batch.

    Scores (reference ``head-roles.md`` §3):

    * ``previous_token``: $\\mathrm{mean}_{i\\ge1} A[i,i-1]$ (ARENA, threshold 0.4, §3.3); the
      value without the ``i = 1`` row (whose previous token is BOS) is in ``extras``.
    * ``duplicate_token``: mass on earlier copies of the current token, averaged over rows that
      have one (§3.4; no published threshold: 0.4 is our stripe convention of §3.2).
    * ``induction``: mass on tokens after earlier copies of the current token, averaged over
      **eligible rows only** (the corrected measure of §3.2; on unique-token repeats it equals the
      prefix-matching score of §3.5 without the reference code's end-of-repeat quirk); extras
      ``non_bos_mass`` (1 - mean BOS mass on those rows) flags sink-dominated heads.
    * ``positional``: fraction of queries ``i >= 1`` whose argmax is at the best fixed offset
      $\\Delta \\le 0$ (§3.6, Voita 0.9); ``extras["best_offset"]``.
    * ``attention_sink``: $\\mathrm{mean}_{i\\ge1} A[i,0]$ (§3.8; ARENA 0.4).
    * ``current_token``: $\\mathrm{mean}_{i\\ge1} A[i,i]$ (ARENA 0.4).
    * ``rare_words``: fraction of queries with >= 2 visible non-BOS tokens whose argmax (BOS
      excluded) is a rarest visible token by ``unigram_counts`` (§3.7, causal adaptation);
      ``extras["chance"]`` is the chance rate.
    * ``subword_merge``: mass on earlier sub-tokens of the current word (current token
      excluded), over continuation tokens (§3.9); ``word_start[t]`` marks tokens that begin a
      word.

    TL-compatible ``detect_head`` values (``mul``/``abs`` with ``tl_options``) of the previous,
    duplicate and induction patterns are in the extras ``tl_<measure>``.

    Raises:
        ValueError: Unknown role; a role whose data lacks what it needs (no repeat for
            duplicate/induction, missing counts or word starts).
    """
    roles = tuple(roles)
    unknown = set(roles) - set(PATTERN_ROLES_SYNTHETIC) - set(PATTERN_ROLES_TEXT)
    if unknown:
        raise ValueError(f"pattern_scores: unknown roles {sorted(unknown)}")
    tokens = data.tokens
    if tokens.ndim != 2 or tokens.shape[1] < 3:
        raise ValueError(f"data.tokens must be [batch, pos >= 3], got {tuple(tokens.shape)}")
    if {"duplicate_token", "induction"} & set(roles):
        if not bool(duplicate_mask(tokens).any()):
            raise ValueError(
                f"data {data.name!r} has no repeated token, so duplicate-token and induction "
                "scores are undefined; use repeated_tokens(...) (induction needs a repeat)."
            )
    if "rare_words" in roles and unigram_counts is None:
        raise ValueError("rare_words needs unigram_counts (a [d_vocab] tensor of token counts)")
    if "subword_merge" in roles and word_start is None:
        raise ValueError("subword_merge needs word_start (a [d_vocab] bool: token starts a word)")
    tl_opts = {"exclude_bos": False, "exclude_current_token": False, "error_measure": "mul"}
    tl_opts.update(tl_options or {})
    L, H = view.n_layers, view.n_heads
    names = ["prev", "prev_no_bos", "dup", "ind", "ind_bos", "sink", "cur", "rare", "rare_chance",
             "sub", "tl_prev", "tl_dup", "tl_ind"]
    acc = _Acc(L, H, names)
    n_pos = tokens.shape[1]
    offsets_hist = torch.zeros(L, H, n_pos, dtype=torch.float64)
    hook_names = [view.attn_hook(layer, "pattern") for layer in range(L)]
    want = set(roles)
    dev = view.device

    for start in progress(range(0, tokens.shape[0], batch_size), verbose=verbose,
                          desc=f"patterns ({data.name})"):
        tok = tokens[start:start + batch_size].to(dev)
        b, n = tok.shape
        ctx: dict[str, Tensor] = {}
        ar = torch.arange(n, device=dev)
        if want & {"duplicate_token", "induction"}:
            ctx["dup"] = duplicate_mask(tok)
            ctx["ind"] = induction_mask(tok)
        if "previous_token" in want:
            ctx["prev"] = previous_mask(n, dev).expand(b, n, n)
        if "rare_words" in want:
            cnt = unigram_counts.to(dev).double()[tok]  # type: ignore[union-attr]
            cnt[:, 0] = float("inf")
            vis = torch.ones(n, n, dtype=torch.bool, device=dev).tril()
            cmat = torch.where(vis, cnt[:, None, :], torch.full_like(cnt[:, None, :], math.inf))
            mn = cmat.min(-1).values  # [b, q]
            ctx["rarest"] = (cmat == mn[..., None]) & vis
            # rows with >= 2 candidates that are not all tied (otherwise any argmax "hits")
            ncand_vis = vis[None].sum(-1) - 1
            ctx["rare_rows"] = (ar >= 2)[None] & (ctx["rarest"][:, :, 1:].sum(-1) < ncand_vis)
        if "subword_merge" in want:
            ws = word_start.to(dev)[tok].clone()  # type: ignore[union-attr]
            ws[:, 0] = True
            idx = torch.where(ws, ar.expand(b, n), torch.zeros_like(tok))
            wstart = torch.cummax(idx, dim=1).values  # [b, q] start of the current word
            kk = ar[None, None, :]
            ctx["sub"] = (kk >= wstart[..., None]) & (kk < ar[None, :, None]) & (
                wstart[..., None] >= 1)

        def hook(pattern: Tensor, hook: Any, _ctx: dict[str, Tensor] = ctx, n: int = n,
                 ar: Tensor = ar) -> Tensor:
            layer = int(hook.name.split(".")[1])
            a = pattern.detach().float()  # [b, h, q, k]
            rows = slice(1, None)
            if "previous_token" in want:
                diag = a.diagonal(offset=-1, dim1=-2, dim2=-1)  # [b, h, n-1] rows 1..n-1
                acc.add("prev", layer, diag.sum((0, 2)), diag.shape[0] * diag.shape[2])
                acc.add("prev_no_bos", layer, diag[..., 1:].sum((0, 2)),
                        diag.shape[0] * (diag.shape[2] - 1))
                acc.add("tl_prev", layer, tl_detection_score(a, _ctx["prev"], **tl_opts).sum(0),
                        a.shape[0])
            if "attention_sink" in want:
                acc.add("sink", layer, a[:, :, rows, 0].sum((0, 2)), a.shape[0] * (n - 1))
            if "current_token" in want:
                d0 = a.diagonal(dim1=-2, dim2=-1)[..., 1:]
                acc.add("cur", layer, d0.sum((0, 2)), d0.shape[0] * d0.shape[2])
            for key, role in (("dup", "duplicate_token"), ("ind", "induction")):
                if role in want:
                    m = _ctx[key]
                    elig = m.any(-1)  # [b, q]
                    mass = (a * m[:, None].float()).sum(-1)  # [b, h, q]
                    acc.add(key, layer, (mass * elig[:, None]).sum((0, 2)), elig.sum().float())
                    acc.add("tl_" + key, layer, tl_detection_score(a, m, **tl_opts).sum(0),
                            a.shape[0])
                    if key == "ind":
                        bos = (a[..., 0] * elig[:, None]).sum((0, 2))
                        acc.add("ind_bos", layer, bos, elig.sum().float())
            if "positional" in want:
                am = a[:, :, rows].argmax(-1)  # [b, h, n-1]
                off = (torch.arange(1, n, device=a.device) - am)  # distance back, 0..n-1
                hist = torch.nn.functional.one_hot(off, n_pos).sum((0, 2)).double().cpu()
                offsets_hist[layer] += hist
            if "rare_words" in want:
                a2 = a.clone()
                a2[..., 0] = -1.0
                am = a2.argmax(-1)  # [b, h, q]
                rar = _ctx["rarest"]  # [b, q, k]
                hit = rar[:, None].expand(-1, a.shape[1], -1, -1).gather(-1, am[..., None])[..., 0]
                r = _ctx["rare_rows"]
                acc.add("rare", layer, (hit & r[:, None]).sum((0, 2)).float(), r.sum().float())
                ncand = ar.clamp_min(1).float()
                chance = (rar[:, :, 1:].sum(-1).float() / ncand)[r]
                acc.add("rare_chance", layer, chance.sum().expand(a.shape[1]), r.sum().float())
            if "subword_merge" in want:
                m = _ctx["sub"]
                elig = m.any(-1)
                mass = (a * m[:, None].float()).sum(-1)
                acc.add("sub", layer, (mass * elig[:, None]).sum((0, 2)), elig.sum().float())
            return pattern

        with torch.no_grad():
            view.run_with_hooks(tok, [(name, hook) for name in hook_names])
        FORWARD_COUNTER.passes += 1
        FORWARD_COUNTER.tokens += tok.numel()

    ev = data.describe()
    out: dict[str, RoleScore] = {}
    if "previous_token" in want:
        out["previous_token"] = RoleScore(
            "previous_token", acc.mean("prev"), 0.4, "ARENA 1.2 previous-token detector (0.4)",
            "pattern", ev,
            {"without_bos_row": acc.mean("prev_no_bos"), "tl_" + tl_opts["error_measure"]:
             acc.mean("tl_prev")})
    if "duplicate_token" in want:
        out["duplicate_token"] = RoleScore(
            "duplicate_token", acc.mean("dup"), 0.4,
            "none published (Wang et al. rank); 0.4 = our eligible-row stripe convention (§3.2)",
            "pattern", ev, {"tl_" + tl_opts["error_measure"]: acc.mean("tl_dup")})
    if "induction" in want:
        out["induction"] = RoleScore(
            "induction", acc.mean("ind"), 0.4,
            "ARENA 1.2 induction stripe (0.4), applied to the eligible-row mean (§3.2)",
            "pattern", ev,
            {"tl_" + tl_opts["error_measure"]: acc.mean("tl_ind"),
             "non_bos_mass": 1 - acc.mean("ind_bos")})
    if "attention_sink" in want:
        out["attention_sink"] = RoleScore(
            "attention_sink", acc.mean("sink"), 0.4, "ARENA 1.2 first-token detector (0.4)",
            "pattern", ev)
    if "current_token" in want:
        out["current_token"] = RoleScore(
            "current_token", acc.mean("cur"), 0.4, "ARENA 1.2 current-token detector (0.4)",
            "pattern", ev)
    if "positional" in want:
        tot = offsets_hist.sum(-1, keepdim=True).clamp_min(1)
        frac = offsets_hist / tot
        best = frac.max(-1)
        out["positional"] = RoleScore(
            "positional", best.values.float(), 0.9,
            "Voita et al. 2019 (>= 90 % of argmaxes at one offset; unverified details)",
            "pattern", ev, {"best_offset": -best.indices.float()})
    if "rare_words" in want:
        out["rare_words"] = RoleScore(
            "rare_words", acc.mean("rare"), 0.5,
            "none published (Voita et al. 2019): ours, 0.5; compare with extras['chance']",
            "pattern", ev, {"chance": acc.mean("rare_chance")})
    if "subword_merge" in want:
        out["subword_merge"] = RoleScore(
            "subword_merge", acc.mean("sub"), 0.4,
            "none published (TL Head_Detector demo ranks): 0.4 = our stripe convention",
            "pattern", ev)
    return out
