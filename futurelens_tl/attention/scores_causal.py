"""Causal role scores: retrieval (teacher-forced decoding) and IOI path patching (§5).

Reference ``head-roles.md`` §5.1-§5.2.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from futurelens_tl.attention.datasets import ProbeData
from futurelens_tl.attention.role_score import RoleScore
from futurelens_tl.data import FORWARD_COUNTER, progress
from futurelens_tl.models.view import ModelView


# ---------------------------------------------------------------------------- causal scores
def retrieval_scores(
    view: ModelView, data: ProbeData, *, batch_size: int = 16, recall_min: float = 0.5,
    verbose: bool = True,
) -> RoleScore:
    """Retrieval score (Wu et al. 2024, reference §5.2) on token-level haystacks.

    **Teacher-forced** decoding: the prompt plus the answer (all but its last token) goes
    through the model once; decode step ``tau`` is the row that predicts answer token
    ``tau``, and the model's argmax there is the token it would generate. This equals greedy
    decoding exactly whenever greedy decoding reproduces the answer (the only samples whose
    hits can count fully) and costs one forward per batch instead of ``len(answer)``.
    At each step a head hits when its top-1 attended key lies in the needle span and the
    generated token equals the prompt token there; each hit adds ``1/needle_len``. A sample
    counts when its recall of the answer tokens is > ``recall_min``; score = mean per-sample
    score over counted samples (0 when none counts; ``evidence["n_counted"]``). Threshold 0.1
    (Wu et al.). Control: ``extras["chance"]`` = the expected score of a head whose top-1 key is
    uniform over the prompt (a hit needs the one matching needle position: ``1/P`` per
    correctly generated step, worth ``1/needle_len``).
    """
    if data.name != "haystack_prompts" or "needle_start" not in data.meta:
        raise ValueError("retrieval needs haystack_prompts(...) data (needle spans in meta)")
    L, H = view.n_layers, view.n_heads
    total = torch.zeros(L, H, dtype=torch.float64)
    n_counted = 0
    steps = data.meta["answer"].shape[1]
    needle_len = data.meta["needle"].shape[1]
    P = data.tokens.shape[1]
    if P + steps - 1 > view.n_ctx:
        raise ValueError("haystack prompts + answer exceed n_ctx; shorten the prompts")
    names = [view.attn_hook(layer, "pattern") for layer in range(L)]
    rows = torch.arange(P - 1, P - 1 + steps)
    chance_num = 0.0
    for s in progress(range(0, data.n, batch_size), verbose=verbose, desc="retrieval"):
        prompt = data.tokens[s:s + batch_size].to(view.device)
        answer = data.meta["answer"][s:s + batch_size].to(view.device)
        tok = torch.cat([prompt, answer[:, :-1]], 1)
        a0 = data.meta["needle_start"][s:s + batch_size].to(view.device)
        top: dict[int, Tensor] = {}

        def hook(p: Tensor, hook: Any, _top: dict[int, Tensor] = top) -> Tensor:
            _top[int(hook.name.split(".")[1])] = p[:, :, rows.to(p.device)].argmax(-1)
            return p

        with torch.no_grad():
            logits = view.run_with_hooks(tok, [(n, hook) for n in names])
        FORWARD_COUNTER.passes += 1
        FORWARD_COUNTER.tokens += tok.numel()
        gen = logits[:, rows.to(logits.device)].argmax(-1)  # [b, steps]
        score = torch.zeros(tok.shape[0], L, H, dtype=torch.float64, device=view.device)
        for layer in range(L):
            p = top[layer]  # [b, H, steps]
            inside = (p >= a0[:, None, None]) & (p < a0[:, None, None] + needle_len)
            same = tok[:, None, :].expand(-1, H, -1).gather(2, p) == gen[:, None, :]
            score[:, layer] = (inside & same).double().sum(-1) / needle_len
        recall = (gen[:, :, None] == answer[:, None, :]).any(1).float().mean(-1)
        ok = recall > recall_min
        total += score[ok].sum(0).cpu()
        n_counted += int(ok.sum())
        hit_rate = (gen == answer).double().mean(-1)[ok]
        chance_num += float((hit_rate * steps / (P * needle_len)).sum())
    sc = (total / max(n_counted, 1)).float()
    ev = {**data.describe(), "n_counted": n_counted, "decoding": "teacher-forced"}
    chance = torch.full((L, H), chance_num / max(n_counted, 1))
    return RoleScore("retrieval", sc, 0.1, "Wu et al. 2024 (> 0.1)", "causal", ev,
                     {"chance": chance})


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
    roles: tuple[str, ...] = ("name_mover", "s_inhibition"), verbose: bool = True,
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
    (10 % of the gap) and say so. Only the ``roles`` asked for are computed (S-inhibition path
    patching is by far the most expensive part: one batched forward per 32 sender heads).
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

    if "s_inhibition" not in roles:
        return res
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
