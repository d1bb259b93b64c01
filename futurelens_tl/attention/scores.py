"""Role scorers: every function returns a :class:`RoleScore` with an ``[n_layers, n_heads]`` score.

Three evidence channels, kept separate (reference ``head-roles.md`` §7):

* **pattern** scores read ``blocks.{l}.attn.hook_pattern``; all of them for one probe dataset
  come from **one** no-grad forward per batch (:func:`pattern_scores`), reduced layer by layer
  inside the hook so no layer's patterns are kept after the reduction;
* **weights** scores (copying, successor, copy suppression) need no forward through the stack
  beyond the effective embeddings (one batched forward of lone tokens);
* **causal** scores (retrieval by greedy decoding, IOI name movers and S-inhibition by
  patching) live here too and use :mod:`futurelens_tl.attention.patching` helpers.

Conventions: ``A[b, h, i, j]`` attention from query ``i`` to key ``j``; position 0 is BOS.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from jaxtyping import Bool, Float, Int, Shaped
from torch import Tensor

from futurelens_tl.attention.datasets import ProbeData
from futurelens_tl.data import FORWARD_COUNTER, progress
from futurelens_tl.model import ModelView

__all__ = [
    "RoleScore",
    "copy_suppression_scores",
    "copying_scores",
    "effective_embeddings",
    "ioi_scores",
    "k_composition_baseline",
    "k_composition_scores",
    "pattern_scores",
    "retrieval_scores",
    "subword_merge_layer0",
    "successor_scores",
    "tl_detection_score",
]


@dataclass
class RoleScore:
    """One role's score for every head.

    Attributes:
        role: Role name (see :data:`futurelens_tl.attention.heads.ROLES`).
        scores: ``[n_layers, n_heads]``; NaN where the role does not apply to a head.
        threshold: Default tagging threshold (``score >= threshold``), or None (rank only).
        threshold_source: Where the threshold comes from (paper, or "none published: ...").
        channel: ``"pattern"``, ``"weights"``, ``"causal"`` or ``"probe"``.
        evidence: Dataset name, number of examples, seed and other facts the score rests on.
        extras: Further ``[n_layers, n_heads]`` statistics (TL-compatible scores, best offset,
            non-BOS mass, chance rates, ...).
    """

    role: str
    scores: Float[Tensor, "n_layers n_heads"]
    threshold: float | None
    threshold_source: str
    channel: str
    evidence: dict[str, Any] = field(default_factory=dict)
    extras: dict[str, Tensor] = field(default_factory=dict)


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


# ---------------------------------------------------------------------------- weight scores
def copying_scores(view: ModelView) -> RoleScore:
    r"""OV eigenvalue copying score $\\sum\\mathrm{Re}\\,\\lambda / \\sum|\\lambda|$ (§4.1, Elhage).

    Uses the full circuit $W_E W_V W_O W_U$ via its small cyclic product
    $W_O W_U W_E W_V$ (``d_head x d_head``, the same non-zero eigenvalues). Needs no data.
    Threshold: none published (positive = copying); we tag at 0.5, and say so.
    """
    we = view.W_E.detach().double()
    wu = view.W_U.detach().double()
    wv = view.W_V.detach().double()
    wo = view.W_O.detach().double()
    mid = wu @ we  # [d_model, d_model] (U then E in the cyclic product)
    small = torch.einsum("lhem,mn,lhnf->lhef", wo, mid, wv)  # W_O (W_U W_E) W_V
    ev = torch.linalg.eigvals(small)
    score = ev.real.sum(-1) / ev.abs().sum(-1).clamp_min(1e-30)
    return RoleScore("copying", score.float(), 0.5,
                     "none published (Elhage et al. 2021: > 0 = copying); ours, 0.5", "weights",
                     {"dataset": "none (weights only)", "n_examples": 0, "seed": None})


def _reading_weights(view: ModelView, layer: int, w: Tensor) -> Tensor:
    """Fold block ``layer``'s attention-input norm into reading weights ``[H, d_model, d_head]``.

    The gain scales rows; LayerNorm's centring projects out the all-ones direction (what TL's
    ``fold_ln`` + ``center_weights`` do), so raw and processed bases give the same scores.
    """
    norm = view.ln1(layer)
    w = w.double()
    if norm.w is not None:
        w = w * norm.w.detach().double()[None, :, None]
    if norm.kind == "LN":
        w = w - w.mean(1, keepdim=True)
    return w


def k_composition_scores(view: ModelView) -> Float[Tensor, "n_layers n_heads n_layers n_heads"]:
    r"""K-composition of every head pair, from the weights alone (§3.5).

    The score is $\lVert W_{OV}^A W_{QK}^{B\top}\rVert_F /
    (\lVert W_{OV}^A\rVert_F \lVert W_{QK}^{B}\rVert_F)$.
    ``out[l1, h1, l2, h2]`` is how much head ``(l1, h1)``'s output feeds the keys of head
    ``(l2, h2)``; zero unless ``l2 > l1`` (TL ``all_composition_scores("K")`` convention). The
    attention-input norms are folded into ``W_V``, ``W_Q`` and ``W_K`` (:func:`_reading_weights`)
    and, under LayerNorm, ``W_O`` is centred, so the raw and processed bases give the same
    scores and match TL on a processed model.
    Computed exactly from ``d_head x d_head`` Gram matrices (no ``d_model x d_model`` product):
    $\lVert W_V W_O W_K W_Q^\top\rVert_F^2 = \mathrm{tr}(M^\top G_V M G_Q)$ with
    $M = W_O W_K$, $G_V = W_V^\top W_V$, $G_Q = W_Q^\top W_Q$. Needs no data.
    """
    L, H = view.n_layers, view.n_heads
    wv = torch.stack([_reading_weights(view, x, view.W_V[x].detach()) for x in range(L)])
    wo = view.W_O.detach().double()  # [L, H, dh, d]
    if view.ln1(0).kind == "LN":  # the mean direction is invisible to every LN reader
        wo = wo - wo.mean(-1, keepdim=True)  # (TL's center_writing_weights)
    gv = wv.transpose(-1, -2) @ wv
    ov_norm = torch.einsum("lhab,lhba->lh", gv, wo @ wo.transpose(-1, -2)).clamp_min(0).sqrt()
    out = torch.zeros(L, H, L, H, dtype=torch.float64)
    for l2 in range(1, L):
        wk = _reading_weights(view, l2, view.W_K[l2].detach())  # [H, d, dh]
        wq = _reading_weights(view, l2, view.W_Q[l2].detach())
        gq = wq.transpose(-1, -2) @ wq
        gk = wk.transpose(-1, -2) @ wk
        qk_norm = torch.einsum("hab,hba->h", gk, gq).clamp_min(0).sqrt()  # [H]
        m = torch.einsum("aei,bid->abed", wo[:l2].reshape(-1, *wo.shape[2:]), wk)  # [A, H, dh, dh]
        t = torch.einsum("aeg,abgh->abeh", gv[:l2].reshape(-1, *gv.shape[2:]), m) @ gq
        num = (m * t).sum((-1, -2)).clamp_min(0).sqrt()  # [A, H]
        den = ov_norm[:l2].reshape(-1, 1) * qk_norm[None]
        out[:l2, :, l2] = (num / den.clamp_min(1e-30)).reshape(l2, H, H)
    return out.float()


def k_composition_baseline(view: ModelView, n_samples: int = 16, seed: int = 0) -> float:
    """Mean K-composition of Gaussian matrices shaped like this model's heads (random baseline).

    Scores near this value carry no evidence of composition (§7: compare to a random baseline
    where no threshold is published).
    """
    g = torch.Generator().manual_seed(seed)
    d, dh = view.d_model, view.d_head
    vals = []
    for _ in range(n_samples):
        wv, wo, wk, wq = (torch.randn(*shape, generator=g, dtype=torch.float64)
                          for shape in ((d, dh), (dh, d), (d, dh), (d, dh)))
        ov = wv @ wo
        qk_t = wk @ wq.T
        vals.append(float(torch.linalg.norm(ov @ qk_t) / (torch.linalg.norm(ov)
                                                             * torch.linalg.norm(qk_t))))
    return sum(vals) / len(vals)


def effective_embeddings(
    view: ModelView, token_ids: Int[Tensor, " n"], batch_size: int = 1024
) -> Float[Tensor, "n d_model"]:
    """Effective embeddings $W_{EE}$ (reference §4.3), batched with hooks.

    The residual after block 0 for each lone token with positions and layer-0 attention
    zero-ablated (one forward per batch of tokens).
    """
    out = []
    hooks: list[tuple[str, Callable[..., Any]]] = [
        (view.attn_hook(0, "z"), lambda z, hook: torch.zeros_like(z)),
    ]
    if view.W_pos is not None:
        hooks.append(("hook_pos_embed", lambda x, hook: torch.zeros_like(x)))
    name = view.resid_hook(0)
    store: list[Tensor] = []
    hooks.append((name, lambda x, hook: store.append(x.detach()) or x))
    ids = token_ids.to(view.device).long()
    with torch.no_grad():
        for s in range(0, len(ids), batch_size):
            chunk = ids[s:s + batch_size, None]
            store.clear()
            view.run_with_hooks(chunk, hooks)
            FORWARD_COUNTER.passes += 1
            FORWARD_COUNTER.tokens += chunk.numel()
            out.append(store[0][:, 0])
    return torch.cat(out)


def _head_ov_out(view: ModelView, layer: int, x: Float[Tensor, "n d_model"]
                 ) -> Float[Tensor, "n n_heads d_model"]:
    """Each head's output for a lone source vector ``x`` (attention 1 on it): LN1, W_V+b_V, W_O."""
    xn = view.ln1(layer)(x)
    v = torch.einsum("nm,hmd->nhd", xn, view.W_V[layer]) + view.b_V[layer]
    return torch.einsum("nhd,hdm->nhm", v, view.W_O[layer])


def successor_scores(
    view: ModelView, families: Sequence[Sequence[int]]
) -> RoleScore:
    """Successor score (Gould et al. 2023, reference §4.2).

    Fraction of ordinal tokens ``t`` whose top-1 logit among ``t``'s family, through the
    head's effective OV circuit (effective embedding -> LN1 -> OV -> final LN -> ``W_U``),
    is ``succ(t)``.

    The last member of each family has no successor and is skipped. No threshold is published
    (best head per model); we tag at 0.5 and record that.

    Raises:
        ValueError: If no family has at least 3 tokens.
    """
    fams = [list(map(int, f)) for f in families if len(f) >= 3]
    if not fams:
        raise ValueError("successor needs ordinal families (lists of >= 3 token ids in order); "
                         "pass families=... or a model whose tokenizer has single-token ordinals")
    all_ids = torch.tensor(sorted({t for f in fams for t in f}))
    wee = effective_embeddings(view, all_ids)
    pos = {t: i for i, t in enumerate(all_ids.tolist())}
    L, H = view.n_layers, view.n_heads
    hits = torch.zeros(L, H)
    total = 0
    with torch.no_grad():
        for layer in range(L):
            o = _head_ov_out(view, layer, wee)  # [n, H, d]
            normed = view.ln_final(o)
            for f in fams:
                sub = normed @ view.W_U[:, f] + view.b_U[f]  # [n, H, |f|] family columns only
                for k, t in enumerate(f[:-1]):
                    top = sub[pos[t]].argmax(-1)  # [H]
                    hits[layer] += (top == k + 1).float().cpu()
                    if layer == 0:
                        total += 1
    return RoleScore("successor", hits / max(total, 1), 0.5,
                     "none published (Gould et al.: best head per model); ours, 0.5", "weights",
                     {"dataset": "ordinal families", "n_examples": total, "seed": None,
                      "n_families": len(fams)})


def copy_suppression_scores(
    view: ModelView, token_ids: Int[Tensor, " n"] | None = None, *, k: int = 10,
    max_tokens: int = 512, seed: int = 0, chunk: int = 64,
) -> RoleScore:
    """Copy-suppression OV and QK statistics with effective embeddings (McDougall et al., §4.3).

    Tokens: ``token_ids`` or a seeded sample of ``max_tokens`` vocabulary ids; ranks are taken
    within that sample.

    * OV (the score): fraction of source tokens ``s`` whose own logit, through the head's OV
      circuit and the final LN + ``W_U``, is among the ``k`` most negative outputs.
    * QK (``extras["qk"]``): query = unembedding direction of ``t`` (through LN1 with the final
      LN's scale left out; the exact row scaling is unverified in the reference), key = LN1 of
      ``W_EE[s]``; fraction of ``t`` whose row maximum is ``s = t``.
    ``extras["chance"]`` = ``k / n`` for the OV statistic. Threshold: none published; 0.5 is
    ours (the paper's head reaches 0.847 on GPT-2 small).
    """
    g = torch.Generator().manual_seed(seed)
    if token_ids is None:
        n = min(view.d_vocab, max_tokens)
        token_ids = torch.randperm(view.d_vocab, generator=g)[:n].sort().values
    ids = token_ids.long()
    wee = effective_embeddings(view, ids)
    L, H = view.n_layers, view.n_heads
    ov = torch.zeros(L, H)
    qk = torch.zeros(L, H)
    idx = ids.to(view.device)
    wu_s, bu_s = view.W_U[:, idx], view.b_U[idx]
    with torch.no_grad():
        for layer in range(L):
            hits = torch.zeros(H)
            for c0 in range(0, len(idx), chunk):  # [chunk, H, n] logits at a time
                o = _head_ov_out(view, layer, wee[c0:c0 + chunk])
                logits = view.ln_final(o) @ wu_s + bu_s  # only the sampled columns
                ar = torch.arange(logits.shape[0], device=logits.device)
                own = logits[ar, :, c0 + ar]  # [chunk, H]
                rank_from_bottom = (logits < own[..., None]).sum(-1)  # [chunk, H]
                hits += (rank_from_bottom < k).float().sum(0).cpu()
            ov[layer] = hits / len(idx)
            u = view.W_U[:, idx].T  # [n, d]
            un = view.ln1(layer)(u)
            q = torch.einsum("nm,hmd->nhd", un, view.W_Q[layer]) + view.b_Q[layer]
            kk = torch.einsum("nm,hmd->nhd", view.ln1(layer)(wee), view.W_K[layer]) + view.b_K[
                layer]
            sc = torch.einsum("thd,shd->hts", q, kk)
            qk[layer] = (sc.argmax(-1) == torch.arange(len(idx), device=sc.device)).float().mean(
                -1).cpu()
    n_tok = len(ids)
    return RoleScore("copy_suppression", ov, 0.5,
                     "none published (McDougall et al. 2023: reference 84.7 %); ours, 0.5",
                     "weights",
                     {"dataset": "vocabulary sample", "n_examples": n_tok, "seed": seed, "k": k},
                     {"qk": qk, "chance": torch.full((L, H), min(1.0, k / n_tok))})


def subword_merge_layer0(view: ModelView, tokens: Int[Tensor, "batch pos"]) -> Tensor | None:
    """Per-head mean detokenization AUROC of layer 0 (weights; ``layer0-decomposition.md`` §8).

    Calls :func:`futurelens_tl.attention.layer0.detokenization_scores` with the bigram counts of
    ``tokens`` (used only to evaluate the weight-only score). Returns ``[n_heads]``, or None when
    the layer-0 module is unavailable or does not apply (e.g. rotary positions).
    """
    try:
        from futurelens_tl.attention.layer0 import (  # noqa: PLC0415
            count_bigrams,
            detokenization_scores,
        )

        counts = count_bigrams(tokens.cpu(), view.d_vocab, verbose=False)
        res = detokenization_scores(view.model, counts)
    except Exception:  # module not landed, or the decomposition does not apply to this model
        return None
    t = torch.as_tensor(res, dtype=torch.float32).reshape(-1)
    return t if t.numel() == view.n_heads else None


# ---------------------------------------------------------------------------- causal scores
def retrieval_scores(
    view: ModelView, data: ProbeData, *, batch_size: int = 16, recall_min: float = 0.5,
    verbose: bool = True,
) -> RoleScore:
    """Retrieval score (Wu et al. 2024, reference §5.2) on token-level haystacks.

    Greedy decoding of ``len(answer)`` tokens (one forward per step over the whole batch, only
    the last query row of every pattern kept). At each step a head hits when its top-1
    attended key lies in the needle span and the generated token equals the prompt token
    there; each hit adds ``1/needle_len``. A sample counts when its recall of the answer
    tokens is > ``recall_min``; score = mean per-sample score over counted samples (0 when
    none counts; ``evidence["n_counted"]``). Threshold 0.1 (Wu et al.).
    """
    if data.name != "haystack_prompts" or "needle_start" not in data.meta:
        raise ValueError("retrieval needs haystack_prompts(...) data (needle spans in meta)")
    L, H = view.n_layers, view.n_heads
    total = torch.zeros(L, H, dtype=torch.float64)
    n_counted = 0
    steps = data.meta["answer"].shape[1]
    needle_len = data.meta["needle"].shape[1]
    names = [view.attn_hook(layer, "pattern") for layer in range(L)]
    for s in progress(range(0, data.n, batch_size), verbose=verbose, desc="retrieval"):
        tok = data.tokens[s:s + batch_size].to(view.device)
        b = tok.shape[0]
        a0 = data.meta["needle_start"][s:s + batch_size].to(view.device)
        answer = data.meta["answer"][s:s + batch_size].to(view.device)
        score = torch.zeros(b, L, H, device=view.device, dtype=torch.float64)
        gen = []
        for _step in range(steps):
            last: dict[int, Tensor] = {}

            def hook(p: Tensor, hook: Any, _last: dict[int, Tensor] = last) -> Tensor:
                _last[int(hook.name.split(".")[1])] = p[:, :, -1].argmax(-1)  # [b, H]
                return p

            with torch.no_grad():
                logits = view.run_with_hooks(tok, [(n, hook) for n in names])
            FORWARD_COUNTER.passes += 1
            FORWARD_COUNTER.tokens += tok.numel()
            nxt = logits[:, -1].argmax(-1)
            gen.append(nxt)
            for layer in range(L):
                p = last[layer]  # [b, H]
                inside = (p >= a0[:, None]) & (p < a0[:, None] + needle_len)
                same = tok.gather(1, p) == nxt[:, None]
                score[:, layer] += (inside & same).double() / needle_len
            tok = torch.cat([tok, nxt[:, None]], 1)
            if tok.shape[1] > view.n_ctx:
                raise ValueError("haystack prompts + answer exceed n_ctx; shorten the prompts")
        g = torch.stack(gen, 1)
        recall = (g[:, :, None] == answer[:, None, :]).any(1).float().mean(-1)
        ok = recall > recall_min
        total += score[ok].sum(0).cpu()
        n_counted += int(ok.sum())
    sc = (total / max(n_counted, 1)).float()
    ev = {**data.describe(), "n_counted": n_counted}
    return RoleScore("retrieval", sc, 0.1, "Wu et al. 2024 (> 0.1)", "causal", ev)


def _logit_diff(logits: Tensor, end: Tensor, io: Tensor, s: Tensor) -> Tensor:
    ar = torch.arange(logits.shape[0], device=logits.device)
    last = logits[ar, end]
    return last[ar, io] - last[ar, s]


def _frozen_final(view: ModelView, delta: Tensor, scale: Tensor) -> Tensor:
    """The final norm applied to an additive piece ``delta`` with the clean run's scale frozen."""
    ln = view.ln_final
    if ln.kind == "LN":
        delta = delta - delta.mean(-1, keepdim=True)
    if ln.kind is not None:
        delta = delta / scale
        if ln.w is not None:
            delta = delta * ln.w
    return delta


def ioi_scores(
    view: ModelView, data: ProbeData, *, n_receivers: int = 3, heads_per_forward: int = 32,
    verbose: bool = True,
) -> dict[str, RoleScore]:
    """Name-mover and S-inhibition scores on IOI prompts with an ABC corruption (§5.1).

    * ``name_mover``: path patching from each head to the logits along the direct path only:
      the change of the IO-S logit difference at END when the head's output at END is replaced
      by its corrupted value, through the final norm with the clean scale frozen, divided by the
      clean-corrupted gap (positive = the head writes IO over S). ``extras["attn_end_to_io"]``
      is the cheap attention signature.
    * ``s_inhibition``: path patching from each sender head to the **queries** of the top
      ``n_receivers`` name movers at END: the receiver queries are recomputed from the clean
      residual plus the sender's corrupted-minus-clean output (LN1 re-applied), everything else
      stays clean; score = drop of the logit difference / gap. Heads in or after the last
      receiver layer are NaN. ``extras["attn_end_to_s2"]``.

    Thresholds: none published (roles are ranked by path-patching magnitude); we tag at 0.1
    (10 % of the gap) and say so.
    """
    need = {"io", "s", "end_pos", "s2_pos", "io_pos", "corrupted"}
    if data.name != "ioi_prompts" or not need <= set(data.meta):
        raise ValueError("name_mover / s_inhibition need ioi_prompts(...) data")
    L, H = view.n_layers, view.n_heads
    dev = view.device
    clean = data.tokens.to(dev)
    corr = data.meta["corrupted"].to(dev)
    io, s = data.meta["io"].to(dev), data.meta["s"].to(dev)
    end = data.meta["end_pos"].to(dev)
    b = clean.shape[0]
    ar = torch.arange(b, device=dev)
    z_names = [view.attn_hook(layer, "z") for layer in range(L)]
    p_names = [view.attn_hook(layer, "pattern") for layer in range(L)]
    pre_names = [f"blocks.{layer}.hook_resid_pre" for layer in range(L)]
    last = view.resid_hook(L - 1)
    with torch.no_grad():
        lc, cc = view.run_with_cache(clean, z_names + p_names + pre_names + [last])
        lr, cr = view.run_with_cache(corr, z_names)
    FORWARD_COUNTER.passes += 2
    FORWARD_COUNTER.tokens += 2 * clean.numel()
    ld_clean = _logit_diff(lc, end, io, s).double()
    ld_corr = _logit_diff(lr, end, io, s).double()
    gap = float((ld_clean - ld_corr).mean())
    acc = float((ld_clean > 0).double().mean())
    if not (gap > 0 and float(ld_clean.mean()) > 0 and acc >= 0.6):
        raise ValueError(
            f"the model does not perform the IOI task on these prompts (clean IO-S logit "
            f"difference {float(ld_clean.mean()):.3f}, accuracy {acc:.2f}, clean-corrupted gap "
            f"{gap:.3f}); name-mover / S-inhibition scores would be noise")
    scale = view.ln_final.scale(cc[last][ar, end])  # [b, 1]
    udiff = (view.W_U[:, io] - view.W_U[:, s]).T  # [b, d_model]
    nm = torch.zeros(L, H, dtype=torch.float64)
    attn_io = torch.zeros(L, H)
    attn_s2 = torch.zeros(L, H)
    with torch.no_grad():
        for layer in range(L):
            dz = cc[z_names[layer]][ar, end] - cr[z_names[layer]][ar, end]  # [b, H, d_head]
            out = torch.einsum("bhd,hdm->bhm", dz, view.W_O[layer])
            de = (_frozen_final(view, out, scale[:, None]) * udiff[:, None]).sum(-1)  # [b, H]
            nm[layer] = de.double().mean(0).cpu() / gap
            pat = cc[p_names[layer]]  # [b, H, q, k]
            attn_io[layer] = pat[ar, :, end, data.meta["io_pos"].to(dev)].mean(0).cpu()
            attn_s2[layer] = pat[ar, :, end, data.meta["s2_pos"].to(dev)].mean(0).cpu()
    ev = {**data.describe(), "gap_logit_diff": gap, "clean_logit_diff": float(ld_clean.mean()),
          "ioi_accuracy": acc}
    res = {"name_mover": RoleScore(
        "name_mover", nm.float(), 0.1,
        "none published (Wang et al. 2022 rank by path patching); ours, 0.1 of the gap",
        "causal", ev, {"attn_end_to_io": attn_io})}

    # S-inhibition: path patching to the name movers' queries
    flat = torch.nan_to_num(nm, nan=-math.inf).flatten()
    order = flat.argsort(descending=True)[:n_receivers]
    receivers = [(int(i) // H, int(i) % H) for i in order if int(i) // H > 0]
    sinh = torch.full((L, H), float("nan"), dtype=torch.float64)
    if receivers:
        max_rl = max(r[0] for r in receivers)
        senders = [(layer, h) for layer in range(max_rl) for h in range(H)]
        wq = view.W_Q
        bq_unused = None
        del bq_unused
        for i0 in progress(range(0, len(senders), heads_per_forward), verbose=verbose,
                           desc="S-inhibition path patching"):
            chunk = senders[i0:i0 + heads_per_forward]
            k = len(chunk)
            # delta of each sender's output at END: [k, b, d_model]
            deltas = torch.stack([
                torch.einsum("bd,dm->bm",
                             cr[z_names[sl]][ar, end, sh] - cc[z_names[sl]][ar, end, sh],
                             view.W_O[sl, sh]) for sl, sh in chunk])

            def make_hook(rl: int, rheads: list[int], _chunk: list[tuple[int, int]] = chunk,
                          _deltas: Tensor = deltas) -> Callable[..., Tensor]:
                def hook(q: Tensor, hook: Any) -> Tensor:
                    q = q.clone()
                    resid = cc[pre_names[rl]][ar, end]  # [b, d]
                    ln = view.ln1(rl)
                    base = ln(resid)
                    for r, (sl, _sh) in enumerate(_chunk):
                        if sl >= rl:
                            continue
                        dq = ln(resid + _deltas[r]) - base  # [b, d]
                        rows = slice(r * b, (r + 1) * b)
                        for rh in rheads:
                            q[rows][ar, end, rh] += dq @ wq[rl, rh]
                    return q
                return hook

            by_l: dict[int, list[int]] = {}
            for rl, rh in receivers:
                by_l.setdefault(rl, []).append(rh)
            hooks = [(view.attn_hook(rl, "q"), make_hook(rl, rh)) for rl, rh in by_l.items()]
            with torch.no_grad():
                logits = view.run_with_hooks(clean.repeat(k, 1), hooks)
            FORWARD_COUNTER.passes += 1
            FORWARD_COUNTER.tokens += k * clean.numel()
            for r, (sl, sh) in enumerate(chunk):
                lg = logits[r * b:(r + 1) * b]
                ld = _logit_diff(lg, end, io, s).double().mean()
                sinh[sl, sh] = (float(ld_clean.mean()) - ld) / gap
    res["s_inhibition"] = RoleScore(
        "s_inhibition", sinh.float(), 0.1,
        "none published (Wang et al. 2022 rank by path patching to name-mover queries); "
        "ours, 0.1 of the gap", "causal", {**ev, "receivers": receivers},
        {"attn_end_to_s2": attn_s2})
    return res
