"""Causal confirmation of pattern- and attribution-tagged heads (``head-roles.md`` §6.1, §7).

A tag that rests on an attention pattern or a direct attribution says what a head *reads* or
*writes*, not that the model *uses* it. :func:`confirm_roles` resample-ablates every tagged
head of a role on that role's own data (each head's ``hook_z`` replaced by its value on
another example, averaged over draws; Chan et al. 2022) and measures the drop of a role metric:

* repeated-token roles (previous-token, duplicate-token, induction): mean log-probability of
  the correct next token on the rows that continue a repeat (the induction behaviour);
* other pattern roles: ``-KL(clean || ablated)`` of the next-token distributions;
* task roles: the answer-vs-counterfactual logit gap at the answer position
  (``-KL`` for syntactic heads).

Control: the same ablation of up to ``n_control`` random **untagged heads of the same layer**
(seeded; layer-matched because depth alone changes ablation effects a lot: ablating an early
head disturbs everything downstream). A tag is *confirmed* when its drop is positive and larger
than every control head's drop in its layer. On models with few heads per layer the control is
small; the records keep ``control_mean``/``control_max`` so a reader can judge.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from futurelens_tl.attention.datasets import ProbeData
from futurelens_tl.attention.patching import score_heads
from futurelens_tl.data import FORWARD_COUNTER
from futurelens_tl.models.view import ModelView

__all__ = ["confirm_roles", "role_metric"]

_REPEAT_ROLES = {"previous_token", "duplicate_token", "induction"}


def role_metric(view: ModelView, role: str, data: ProbeData
                ) -> tuple[Callable[[Tensor], Tensor], str]:
    """The metric (larger = more clean-like) used to confirm ``role`` on ``data``."""
    tok = data.tokens.to(view.device)
    if role in _REPEAT_ROLES and "repeat_len" in data.meta:
        dup = (tok[:, :, None] == tok[:, None, :]).tril(-1).any(-1)  # the token is a repeat
        rows = dup[:, 1:].float()
        target = tok[:, 1:]

        def logprob(logits: Tensor) -> Tensor:
            lp = logits[:, :-1].log_softmax(-1).gather(-1, target[..., None])[..., 0]
            return (lp * rows).sum(-1) / rows.sum(-1).clamp_min(1)

        return logprob, "log p(next token) on repeated rows"
    if "candidates" in data.meta and "end" in data.meta:
        end = data.meta["end"].to(view.device)
        cand = data.meta["candidates"].to(view.device)
        ar = torch.arange(tok.shape[0], device=view.device)

        def gap(logits: Tensor) -> Tensor:
            cl = logits[ar, end].gather(1, cand)
            return cl[:, 0] - cl[:, 1:].mean(1)

        return gap, "answer - counterfactual logit gap at end"
    with torch.no_grad():
        ref = view.forward(tok).log_softmax(-1)
    FORWARD_COUNTER.passes += 1
    FORWARD_COUNTER.tokens += tok.numel()

    def neg_kl(logits: Tensor) -> Tensor:
        lp = logits.log_softmax(-1)
        return -(ref.exp() * (ref - lp)).sum(-1).mean(-1)

    return neg_kl, "-KL(clean || ablated)"


def confirm_roles(
    view: ModelView,
    tagged: dict[str, list[tuple[int, int]]],
    data: dict[str, ProbeData],
    *,
    n_control: int = 8,
    n_resample: int = 2,
    max_examples: int = 16,
    seed: int = 0,
    verbose: bool = False,
) -> dict[str, list[dict[str, Any]]]:
    """Resample-ablate each role's tagged heads and random untagged controls on the role's data.

    Args:
        view: The model.
        tagged: Role -> tagged ``(layer, head)`` pairs.
        data: Role -> the ProbeData the role was scored on.
        n_control: Random untagged heads per tagged layer (the control).
        n_resample: Resampling draws per head.
        max_examples: Examples used per role (the first ones of its data).
        seed: Seed of the control heads and the resampling.
        verbose: Progress bars.

    Returns:
        Role -> records (``layer``, ``head``, ``tagged``, ``drop``, ``control_mean``,
        ``control_max``, ``confirmed``, ``metric``, ``method``); see
        :attr:`futurelens_tl.attention.head_tags.HeadTags.confirmation`.
    """
    out: dict[str, list[dict[str, Any]]] = {}
    all_heads = [(a, b) for a in range(view.n_layers) for b in range(view.n_heads)]
    for role, heads in tagged.items():
        if not heads or role not in data:
            continue
        d = data[role]
        sub = ProbeData(d.tokens[:max_examples], d.name, d.seed, d.params,
                        {k: (v[:max_examples] if isinstance(v, Tensor) and v.ndim >= 1
                             and v.shape[0] == d.n else v) for k, v in d.meta.items()})
        metric, mname = role_metric(view, role, sub)
        tagged_set = set(heads)
        rng = random.Random(f"{seed}-{role}")
        controls: list[tuple[int, int]] = []
        for layer in sorted({lh[0] for lh in heads}):  # layer-matched controls
            pool = [lh for lh in all_heads if lh[0] == layer and lh not in tagged_set]
            controls += rng.sample(pool, min(n_control, len(pool)))
        if not controls:  # every head of those layers is tagged: fall back to any layer
            pool = [lh for lh in all_heads if lh not in tagged_set]
            controls = rng.sample(pool, min(n_control, len(pool)))
        res = score_heads(view, sub.tokens, metric=metric, method="resample",
                          heads=list(heads) + controls, n_resample=n_resample, seed=seed,
                          verbose=verbose)
        drop = -res.effect  # m_clean - m_ablated
        recs = []
        for lh, is_tag in [(h, True) for h in heads] + [(h, False) for h in controls]:
            same = [c for c in controls if c[0] == lh[0]] or controls
            cd = torch.tensor([float(drop[c]) for c in same])
            cmax, cmean = float(cd.max()), float(cd.mean())
            v = float(drop[lh])
            recs.append({"layer": int(lh[0]), "head": int(lh[1]), "tagged": is_tag, "drop": v,
                         "control_mean": cmean, "control_max": cmax,
                         "confirmed": bool(is_tag and v > 0 and v > cmax), "metric": mname,
                         "method": f"resample ablation of hook_z ({n_resample} draws, "
                                   f"{sub.n} examples of {d.name})"})
        out[role] = recs
    return out
