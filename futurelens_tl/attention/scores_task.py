"""Task-prompt roles: knowledge recalling, expression preparation, in-context, syntactic (issue 15).

Reference ``head-roles.md`` §1 (stages), §3.10 (syntactic), §4.4 (NAS), §6.1 (direct
attribution). Every role here comes from **one** forward over all task prompts together
(:func:`task_scores`; the sets of :mod:`futurelens_tl.attention.prompts`, right-padded into one
batch). Inside the hooks each head's output at the answer position ``end`` is kept whole
(``[b, H, d_model]``) and restricted to chosen source positions (subject tokens,
demonstrations), using the exact decomposition ``out_h = sum_j A[end, j] (LN1(x_j) W_V + b_V)
W_O``. Direct logit attributions go through the final norm with the run's own scale frozen
(linear in the head output), so they add up to the model's logit differences.

Roles, scores and data (thresholds marked *ours* where none is published):

====================  =====  ============================================================
role                  stage  score (data)
====================  =====  ============================================================
memory                KR     DLA of (answer - counterfactual answers) through the head from
                             the subject tokens only, / the model's gap (fact prompts)
constant              KR     mass on the option letters x evenness of that mass over the
                             letters (normalised entropy) (multiple-choice prompts)
single_letter         KR     mass on the option letters x share of the most attended one
negative              KR     NAS, Yu et al. (yes/no prompts listing both options)
correct_letter        LR     mass on the correct option's letter (multiple choice)
in_context            LR     mass from ``end`` on the demonstrations' labels (few-shot)
semantic_induction    ICI    DLA of (answer - other answers) from the demonstrations / gap
syntactic             ICI    best relation's word-level argmax accuracy minus the best
                             fixed-offset / first-word baseline (hand-written dependency set)
amplification         EP     DLA of the model's own final answer (vs the mean logit) / the
                             answer's logit margin (all task prompts)
correct               EP     DLA of (answer - counterfactual answers), all sources / gap
mixed                 EP     amplification x spread of attention over non-BOS sources
====================  =====  ============================================================

Each score has a bootstrap interval over prompts (``extras["ci_low"]``/``["ci_high"]``, 95 %,
200 resamples) and its control in ``extras`` (counterfactual answers are built into the
attribution roles; chance rates for the pattern roles; the offset baseline for syntax).
Attribution roles need a model that performs the task (answer above the counterfactuals in
>= half the prompts with a positive mean gap); otherwise they are reported unavailable with
the measured accuracy.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from futurelens_tl.attention.datasets import ProbeData
from futurelens_tl.attention.role_score import RoleScore
from futurelens_tl.attention.scores_causal import _frozen_final
from futurelens_tl.data import FORWARD_COUNTER
from futurelens_tl.models.view import ModelView

__all__ = ["TASK_ROLES", "TASK_SETS", "task_scores"]

#: role -> the prompt set it reads.
TASK_SETS: dict[str, str] = {
    "memory": "facts", "correct": "facts", "constant": "choice", "single_letter": "choice",
    "correct_letter": "choice", "negative": "yes_no", "in_context": "few_shot",
    "semantic_induction": "few_shot", "syntactic": "syntax", "amplification": "all",
    "mixed": "all",
}
TASK_ROLES = tuple(TASK_SETS)
_NEEDS_TASK = {"memory", "correct", "semantic_induction"}
_EPS = 1e-6


def _boot(num: Tensor, den: Tensor | None, n_boot: int, seed: int) -> tuple[Tensor, Tensor, Tensor]:
    """Mean (or ratio of means) over rows with a percentile bootstrap; ``num`` ``[r, L, H]``."""
    r = num.shape[0]
    d = den if den is not None else torch.ones(r, dtype=num.dtype)
    est = num.mean(0) / d.mean().clamp_min(1e-12) if den is not None else num.mean(0)
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(r, (n_boot, r), generator=g)
    bn = num[idx].mean(1)  # [n_boot, L, H]
    bd = d[idx].mean(1)
    bs = bn / bd.clamp_min(1e-12)[:, None, None] if den is not None else bn
    lo, hi = torch.quantile(bs.float(), torch.tensor([0.025, 0.975]), dim=0)
    return est.float(), lo, hi


def _performs(logits_end: Tensor, cands: Tensor) -> tuple[bool, float, Tensor]:
    cl = logits_end.gather(1, cands)  # [r, K]
    gap = cl[:, 0] - cl[:, 1:].mean(1)
    acc = float((cl[:, 0] > cl[:, 1:].max(1).values).double().mean())
    return bool(gap.mean() > 0 and acc >= 0.5), acc, gap


def task_scores(
    view: ModelView,
    sets: dict[str, ProbeData],
    roles: list[str],
    *,
    n_boot: int = 200,
    seed: int = 0,
) -> tuple[dict[str, RoleScore], dict[str, str]]:
    """Score the task roles ``roles`` from one forward over the prompt ``sets``.

    Args:
        view: The model.
        sets: ``{"facts", "choice", "yes_no", "few_shot", "syntax"}`` -> ProbeData from
            :mod:`futurelens_tl.attention.prompts` (only the sets the roles read are needed).
        roles: Task roles (keys of :data:`TASK_SETS`).
        n_boot: Bootstrap resamples for the intervals.
        seed: Bootstrap seed.

    Returns:
        ``(scores, unavailable)``: RoleScores, and role -> reason for roles that could not be
        scored.
    """
    with torch.no_grad():
        return _task_scores(view, sets, roles, n_boot, seed)


def _task_scores(view: ModelView, sets: dict[str, ProbeData], roles: list[str], n_boot: int,
                 seed: int) -> tuple[dict[str, RoleScore], dict[str, str]]:
    L, H, dev = view.n_layers, view.n_heads, view.device
    names = [k for k in ("facts", "choice", "yes_no", "few_shot", "syntax") if k in sets]
    rows: dict[str, slice] = {}
    start = 0
    for k in names:
        rows[k] = slice(start, start + sets[k].n)
        start += sets[k].n
    n_len = max(sets[k].tokens.shape[1] for k in names)
    pad = int(sets[names[0]].tokens[0, 0])
    tokens = torch.full((start, n_len), pad, dtype=torch.long)
    end = torch.zeros(start, dtype=torch.long)
    src = torch.zeros(start, n_len, dtype=torch.bool)  # subject / demonstration positions
    for k in names:
        d = sets[k]
        tokens[rows[k], :d.tokens.shape[1]] = d.tokens
        end[rows[k]] = d.meta["end"]
        if k == "facts":
            src[rows[k], :d.tokens.shape[1]] = d.meta["subject"]
        if k == "few_shot":
            src[rows[k], :d.tokens.shape[1]] = d.meta["demo_x"] | d.meta["demo_y"]
    full_rows = torch.zeros(start, dtype=torch.bool)
    for k in ("yes_no", "syntax"):
        if k in rows:
            full_rows[rows[k]] = True
    tok_d, end_d, src_d = tokens.to(dev), end.to(dev), src.to(dev).float()
    ar = torch.arange(start, device=dev)
    o_end = torch.zeros(L, start, H, view.d_model)
    o_src = torch.zeros(L, start, H, view.d_model)
    a_end = torch.zeros(L, start, H, n_len)
    a_full: dict[int, Tensor] = {}
    resid: dict[int, Tensor] = {}

    def pre_hook(x: Tensor, hook: Any) -> Tensor:
        resid[int(hook.name.split(".")[1])] = x.detach()
        return x

    def pat_hook(p: Tensor, hook: Any) -> Tensor:
        layer = int(hook.name.split(".")[1])
        x = view.ln1(layer)(resid.pop(layer))
        v = torch.einsum("bnm,hmd->bnhd", x, view.W_V[layer]) + view.b_V[layer]
        row = p[ar, :, end_d].detach().float()  # [b, H, k]
        w_all = row
        w_src = row * src_d[:, None]
        vo = torch.einsum("bnhd,hdm->bnhm", v, view.W_O[layer])
        o_end[layer] = torch.einsum("bhn,bnhm->bhm", w_all.to(vo.dtype), vo).float().cpu()
        o_src[layer] = torch.einsum("bhn,bnhm->bhm", w_src.to(vo.dtype), vo).float().cpu()
        a_end[layer] = row.cpu()
        if bool(full_rows.any()):
            a_full[layer] = p[full_rows.to(dev)].detach().float().cpu()
        return p

    hooks = []
    for layer in range(L):
        hooks.append((f"blocks.{layer}.hook_resid_pre", pre_hook))
        hooks.append((view.attn_hook(layer, "pattern"), pat_hook))
    last = view.resid_hook(L - 1)
    fin: dict[str, Tensor] = {}

    def last_hook(x: Tensor, hook: Any) -> Tensor:
        fin["x"] = x[ar, end_d].detach()
        return x

    hooks.append((last, last_hook))
    with torch.no_grad():
        logits = view.run_with_hooks(tok_d, hooks)
    FORWARD_COUNTER.passes += 1
    FORWARD_COUNTER.tokens += tokens.numel()
    lend = logits[ar, end_d].float().cpu()  # [b, V]
    scale = view.ln_final.scale(fin["x"]).float().cpu()  # [b, 1]
    wu = view.W_U.detach().float().cpu()

    def dla(o: Tensor, dirs: Tensor, r: slice) -> Tensor:
        """``[rows, L, H]`` direct logit attribution of ``o[:, r]`` along ``dirs`` ``[rows, d]``."""
        ff = _frozen_final(view, o[:, r].to(dev), scale[r].to(dev)[None, :, None]).float().cpu()
        return torch.einsum("lbhm,bm->blh", ff, dirs)

    out: dict[str, RoleScore] = {}
    bad: dict[str, str] = {}
    want = set(roles)
    perf: dict[str, tuple[bool, float, Tensor]] = {}
    for k in ("facts", "choice", "few_shot", "yes_no"):
        if k in rows:
            perf[k] = _performs(lend[rows[k]], sets[k].meta["candidates"])

    def ev(k: str, **more: Any) -> dict[str, Any]:
        e = sets[k].describe()
        if k in perf:
            e["task_accuracy"] = perf[k][1]
            e["task_gap_logit"] = float(perf[k][2].mean())
        return {**e, **more}

    def add(role: str, num: Tensor, den: Tensor | None, thr: float | None, source: str,
            evidence: dict[str, Any], extras: dict[str, Tensor] | None = None) -> None:
        est, lo, hi = _boot(num.double(), None if den is None else den.double(), n_boot, seed)
        out[role] = RoleScore(role, est, thr, source, "task", evidence,
                              {"ci_low": lo, "ci_high": hi, **(extras or {})})

    def cf_dirs(k: str) -> Tensor:
        c = sets[k].meta["candidates"]
        return wu[:, c[:, 0]].T - wu[:, c[:, 1:]].mean(-1).T  # [r, d]

    ours = "none published; ours, {} ({})"
    for role, k in (("memory", "facts"), ("correct", "facts"), ("semantic_induction", "few_shot")):
        if role not in want:
            continue
        if k not in rows:
            bad[role] = f"needs the {k} prompt set"
            continue
        ok, acc, gap = perf[k]
        if not ok:
            bad[role] = (f"the model does not perform the {k} task (answer above the "
                         f"counterfactuals in {acc:.2f} of the prompts, mean gap "
                         f"{float(gap.mean()):.3f} logits); an attribution would be noise")
            continue
        r = rows[k]
        d = cf_dirs(k)
        num = dla(o_end if role == "correct" else o_src, d, r)
        extras = {}
        if role == "memory":
            extras["non_subject"] = (dla(o_end, d, r) - num).mean(0) / gap.mean()
        add(role, num, gap, 0.1, ours.format(0.1, "fraction of the model's answer-vs-"
                                             "counterfactual gap, as name movers"),
            ev(k, control="counterfactual answers of the same relation"), extras)

    if {"amplification", "mixed"} & want:
        r = slice(0, rows["syntax"].start) if "syntax" in rows else slice(0, start)
        top = lend[r].argmax(-1)
        d = wu[:, top].T - wu.mean(1)[None]
        margin = lend[r].gather(1, top[:, None])[:, 0] - lend[r].mean(-1)
        amp = dla(o_end, d, r)  # [rows, L, H]
        if "amplification" in want:
            add("amplification", amp, margin, 0.1,
                ours.format(0.1, "fraction of the final answer's margin over the mean logit"),
                {"dataset": "task prompts (facts, choice, yes/no, few-shot)",
                 "n_examples": int(top.numel()), "seed": seed,
                 "control": "mean logit over the vocabulary"})
        if "mixed" in want:
            a = a_end[:, r, :, 1:].permute(1, 0, 2, 3)  # [rows, L, H, k-1] non-BOS sources
            share = a / a.sum(-1, keepdim=True).clamp_min(1e-12)
            spread = 1 - share.max(-1).values
            num = amp * spread
            add("mixed", num, margin, 0.05,
                "none published (survey: aggregates several sources); ours, 0.05: "
                "amplification x (1 - largest non-BOS attention share)",
                {"dataset": "task prompts", "n_examples": int(top.numel()), "seed": seed},
                {"spread": spread.mean(0).float()})

    if {"constant", "single_letter", "correct_letter"} & want and "choice" in rows:
        r = rows["choice"]
        lab = sets["choice"].meta["labels"]  # [r, K]
        a = a_end[:, r].permute(1, 0, 2, 3)  # [rows, L, H, k]
        m = a.gather(-1, lab[:, None, None, :].expand(-1, L, H, -1))  # [rows, L, H, K]
        mass = m.sum(-1)
        share = m / mass[..., None].clamp_min(1e-12)
        K = lab.shape[1]
        ent = -(share * (share + _EPS).log()).sum(-1) / math.log(K)
        uniform = (K / (sets["choice"].meta["end"].float() + 1)).mean()
        e = ev("choice", control="uniform attention puts K/(end+1) on the letters")
        ch = {"uniform_label_mass": torch.full((L, H), float(uniform))}
        if "constant" in want:
            add("constant", mass * ent, None, 0.4,
                ours.format(0.4, "the stripe convention of §3.2"), e, ch)
        if "single_letter" in want:
            add("single_letter", mass * share.max(-1).values, None, 0.4,
                ours.format(0.4, "the stripe convention of §3.2"), e, ch)
        if "correct_letter" in want:
            cor = sets["choice"].meta["correct"]
            c = m.gather(-1, cor[:, None, None, None].expand(-1, L, H, 1))[..., 0]
            add("correct_letter", c, None, 0.4, ours.format(0.4, "the stripe convention"), e,
                {"chance": torch.full((L, H), float(uniform) / K)})

    if "negative" in want and "yes_no" in rows:
        d = sets["yes_no"]
        full = torch.stack([a_full[layer] for layer in range(L)], 1)  # [rows_full, L, H, q, k]
        sel = torch.zeros(start, dtype=torch.long)
        sel[full_rows] = torch.arange(int(full_rows.sum()))
        f = full[sel[rows["yes_no"]]]  # [r, L, H, q, k]
        num = []
        for i in range(d.n):
            y, n_, e = int(d.meta["yes_pos"][i]), int(d.meta["no_pos"][i]), int(d.meta["end"][i])
            q0 = max(y, n_)
            ay, an = f[i, :, :, q0:e + 1, y], f[i, :, :, q0:e + 1, n_]
            num.append(((ay + an) * ((an + _EPS) / (ay + _EPS)).log()).mean(-1))
        add("negative", torch.stack(num), None, 0.1,
            "none published (Yu et al. 2024 rank by NAS); ours, 0.1",
            ev("yes_no", control="NAS = 0 when Yes and No get equal attention"))

    if "in_context" in want and "few_shot" in rows:
        r = rows["few_shot"]
        dy = sets["few_shot"].meta["demo_y"].float()  # [r, n]
        a = a_end[:, r, :, :dy.shape[1]].permute(1, 0, 2, 3)
        mass = (a * dy[:, None, None]).sum(-1)
        chance = (dy.sum(-1) / (sets["few_shot"].meta["end"].float() + 1)).mean()
        add("in_context", mass, None, 0.4, ours.format(0.4, "the stripe convention"),
            ev("few_shot", control="uniform attention's mass on the labels"),
            {"chance": torch.full((L, H), float(chance))})

    if "syntactic" in want and "syntax" in rows:
        out["syntactic"] = _syntax(sets["syntax"], a_full, full_rows, rows["syntax"], L, H,
                                   n_boot, seed)
    for role in want - set(out) - set(bad):
        bad[role] = f"needs the {TASK_SETS[role]} prompt set"
    return out, bad


_MIN_ARCS = 20  # arcs a relation needs before it can decide a head's syntactic score


def _syntax(d: ProbeData, a_full: dict[int, Tensor], full_rows: Tensor, r: slice, L: int,
            H: int, n_boot: int, seed: int) -> RoleScore:
    """Clark et al. word-level argmax accuracy per relation vs best negative offset (§3.10)."""
    sel = torch.zeros(full_rows.shape[0], dtype=torch.long)
    sel[full_rows] = torch.arange(int(full_rows.sum()))
    idx = sel[r]
    words = d.meta["words"]  # [n, W, 2]
    rels = sorted({a[0] for arcs in d.meta["arcs"] for a in arcs})
    per_rel: dict[str, list[Tensor]] = {rel: [] for rel in rels}
    n_off = 4  # fixed word offsets -1..-4 (dobj/pobj arcs reach back 4 words); + the first word
    base_hits = {rel: torch.zeros(n_off + 1) for rel in rels}
    sent: dict[str, list[int]] = {rel: [] for rel in rels}
    for i in range(d.n):
        p = torch.stack([a_full[layer][idx[i]] for layer in range(L)])  # [L, H, q, k]
        for rel, qw, tw in d.meta["arcs"][i]:
            qa = int(words[i, qw, 1]) - 1  # causal: the last sub-token of the query word
            row = p[:, :, qa]  # [L, H, k]
            to_word = torch.stack([row[..., int(words[i, w, 0]):int(words[i, w, 1])].sum(-1)
                                   for w in range(qw)], -1)  # earlier words only, BOS dropped
            per_rel[rel].append((to_word.argmax(-1) == tw).float())
            sent[rel].append(i)
            for k in range(n_off):
                base_hits[rel][k] += float(qw - 1 - k == tw)
            base_hits[rel][n_off] += float(tw == 0)
    # The score is a max over relations: a relation with a handful of arcs lets any head that
    # matches them score ~1 - baseline by chance (on SmolLM2, 177 heads tied at one value).
    # Only relations with enough arcs compete.
    rels = [rel for rel in rels if len(per_rel[rel]) >= _MIN_ARCS] or rels
    accs = {rel: torch.stack(per_rel[rel]) for rel in rels}  # [n_arcs, L, H]
    base = {rel: float(base_hits[rel].max() / len(per_rel[rel])) for rel in rels}
    gains = torch.stack([accs[rel].mean(0) - base[rel] for rel in rels])  # [R, L, H]
    best = gains.max(0)
    # interval: bootstrap over sentences (per-sentence accuracy of each head's best relation)
    per_sent = torch.full((d.n, len(rels), L, H), float("nan"))
    for j, rel in enumerate(rels):
        ids = torch.tensor(sent[rel])
        for i in range(d.n):
            sel_i = ids == i
            if bool(sel_i.any()):
                per_sent[i, j] = accs[rel][sel_i].mean(0) - base[rel]
    chosen = per_sent.gather(1, best.indices[None, None].expand(d.n, 1, L, H))[:, 0]
    g = torch.Generator().manual_seed(seed)
    bidx = torch.randint(d.n, (n_boot, d.n), generator=g)
    boots = chosen[bidx].nanmean(1)  # [n_boot, L, H]
    lo, hi = torch.quantile(torch.nan_to_num(boots), torch.tensor([0.025, 0.975]), dim=0)
    extras = {"ci_low": lo, "ci_high": hi, "best_relation": best.indices.float()}
    for rel in rels:
        extras[f"acc_{rel}"] = accs[rel].mean(0)
        extras[f"baseline_{rel}"] = torch.full((L, H), base[rel])
    return RoleScore("syntactic", best.values.float(), 0.1,
                     "Voita et al. 2019: positional baseline + 10 points (unverified)", "task",
                     {**d.describe(), "relations": rels,
                      "control": "best of: fixed word offset -1..-3, always the first word (a "
                      "BOS-adjacent sink), per relation"}, extras)
