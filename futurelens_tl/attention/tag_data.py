"""Default data and evidence helpers for :func:`futurelens_tl.attention.heads.tag_heads`.

Text windows (the toy corpus when importable), ordinal families, word starts, the default task
prompt sets, and the K-composition evidence attached to induction tags (§3.5, §7).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from futurelens_tl.attention import scores as S
from futurelens_tl.attention.datasets import (
    ProbeData,
    _single_token_ids,
    ordinal_families_from_tokenizer,
)
from futurelens_tl.models.view import ModelView


def _text_tokens(view: ModelView, texts: Sequence[str], length: int, n: int) -> Tensor:
    from futurelens_tl.data import token_windows

    return token_windows(view.model, texts, length=length, max_windows=n)


def _toy_texts(n_docs: int, seed: int) -> list[str] | None:
    try:
        from futurelens_tl.toy import toy_corpus  # noqa: PLC0415
    except Exception:
        return None
    try:
        c = toy_corpus(n_docs=n_docs, seed=seed)
    except Exception:  # pragma: no cover
        return None
    texts = getattr(c, "texts", None) or getattr(c, "documents", None)
    return list(texts) if texts else None


def _families(view: ModelView, families: Any) -> list[list[int]]:
    if families is not None:
        if isinstance(families, dict):
            families = list(families.values())
        out = []
        for f in families:
            f = list(f)
            if f and isinstance(f[0], str):
                if view.tokenizer is None:
                    raise ValueError("families given as words need a model with a tokenizer")
                got = _single_token_ids(view.tokenizer, f)
                if len(got) == len(f):
                    out.append([got[w] for w in f])
            else:
                out.append([int(t) for t in f])
        return out
    if view.tokenizer is None:
        return []
    fams = ordinal_families_from_tokenizer(view.tokenizer)
    try:  # the toy corpus' families (words), when this is the toy tokenizer
        from futurelens_tl.toy import toy_corpus  # noqa: PLC0415

        toy = getattr(toy_corpus(n_docs=1), "ordinal_families", None) or {}
        for words in toy.values():
            for prefix in (" ", ""):
                got = _single_token_ids(view.tokenizer, [prefix + w for w in words])
                if len(words) >= 3 and len(got) == len(words):
                    fam = [got[prefix + w] for w in words]
                    if fam not in fams:
                        fams.append(fam)
                    break
    except Exception:
        pass
    return fams


def _add_k_composition(view: ModelView, results: dict[str, S.RoleScore],
                       thr_over: dict[str, Any]) -> None:
    """Circuit evidence for induction (§3.5, §7): K-composition with an earlier head.

    Partners are the tagged previous-token heads when ``previous_token`` was scored and tags
    any, else every earlier head. Adds ``k_composition`` (best partner's score),
    ``k_composition_partner`` (its ``layer * n_heads + head``; NaN in layer 0) and
    ``k_composition_baseline`` (Gaussian heads of the same shape) to the induction extras.
    """
    L, H = view.n_layers, view.n_heads
    kc = S.k_composition_scores(view)  # [L1, H1, L2, H2]
    partners = torch.ones(L, H, dtype=torch.bool)
    source = "every earlier head"
    prev = results.get("previous_token")
    if prev is not None:
        t = thr_over.get("previous_token", prev.threshold)
        tagged = torch.nan_to_num(prev.scores.float().cpu(), nan=-math.inf) >= t
        if tagged.any():
            partners, source = tagged, "tagged previous-token heads"
    layers = torch.arange(L)
    earlier = (layers[:, None] < layers[None, :])[:, None, :, None]  # [L1, 1, L2, 1]
    masked = torch.where(partners[:, :, None, None] & earlier, kc,
                         torch.full_like(kc, -math.inf))
    best, idx = masked.reshape(L * H, L, H).max(0)
    ok = torch.isfinite(best)
    ind = results["induction"]
    ind.extras["k_composition"] = torch.where(ok, best, torch.full_like(best, math.nan))
    ind.extras["k_composition_partner"] = torch.where(ok, idx.float(),
                                                      torch.full_like(best, math.nan))
    base = S.k_composition_baseline(view)
    ind.extras["k_composition_baseline"] = torch.full((L, H), base)
    ind.evidence["k_composition"] = (
        f"weights: max K-composition with {source} in earlier layers; random-head baseline "
        f"{base:.3f} (Olsson et al.: induction = prefix matching + copying + K-composition)")


def _word_starts(view: ModelView) -> Tensor:
    """``[d_vocab]`` bool: the token starts a word (its text begins with a space or ``Ġ``)."""
    tok = view.tokenizer
    out = torch.zeros(view.d_vocab, dtype=torch.bool)
    if tok is None:
        return out
    ids = list(range(min(view.d_vocab, len(tok))))
    pieces = tok.convert_ids_to_tokens(ids)
    for i, p in enumerate(pieces):
        if p is None:
            continue
        s = str(p)
        if s.startswith(("Ġ", " ", "▁")) or not s[:1].isalnum():
            out[i] = True
    return out


def task_sets(view: ModelView, needed: set[str], seed: int, bos: int,
              given: dict[str, Any]) -> tuple[dict[str, ProbeData], dict[str, str]]:
    """The task prompt sets ``needed`` (values of ``scores_task.TASK_SETS``).

    User data first, else the defaults of :mod:`futurelens_tl.attention.prompts` (toy entities
    as facts on the toy tokenizer). Returns ``(sets, problems)``: set name -> why it could not
    be built.
    """
    from futurelens_tl.attention import prompts as P  # noqa: PLC0415

    tok = view.tokenizer
    sets: dict[str, ProbeData] = {}
    problems: dict[str, str] = {}
    makers = {"choice": P.choice_prompts, "yes_no": P.yes_no_prompts,
              "few_shot": P.few_shot_prompts, "syntax": P.dependency_sentences}
    for k in sorted(needed):
        if k in given:
            sets[k] = given[k]
            continue
        if tok is None:
            problems[k] = f"needs a tokenizer (natural-language prompts) or data={{{k!r}: ...}}"
            continue
        try:
            if k == "facts":
                ents = _toy_entities(tok)
                sets[k] = (P.toy_fact_prompts(tok, ents, seed=seed, bos=bos) if ents
                           else P.fact_prompts(tok, seed=seed, bos=bos))
            else:
                sets[k] = makers[k](tok, seed=seed, bos=bos)
        except Exception as err:  # a tokenizer that cannot build the prompts
            problems[k] = f"could not build the {k} prompts: {type(err).__name__}: {err}"
    total = sum(int(d.tokens.shape[1]) for d in sets.values())
    if sets and max(int(d.tokens.shape[1]) for d in sets.values()) > view.n_ctx:
        raise ValueError(f"task prompts ({total} tokens) exceed n_ctx={view.n_ctx}")
    return sets, problems


def _toy_entities(tok: Any) -> list[str]:
    """The toy corpus' entities when ``tok`` is the toy tokenizer, else ``[]``."""
    try:
        from futurelens_tl.toy import toy_corpus, toy_tokenizer  # noqa: PLC0415

        same = toy_tokenizer().get_vocab() == tok.get_vocab()
    except Exception:
        return []
    return list(toy_corpus(n_docs=1).entities) if same else []
