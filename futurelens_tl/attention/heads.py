"""Attention-head role tagging: scores, thresholds, survey stages and evidence.

``fl.tag_heads(model)`` scores every head for every role of :data:`ROLES`, tags the heads whose
score reaches the role's threshold, and attaches the stage of the attention-heads survey
(Zheng et al. 2024; reference ``head-roles.md`` §1) and the evidence each score rests on
(dataset, number of examples, seed; channels kept separate, §7). ``confirm=True`` adds causal
confirmation of the pattern- and attribution-tagged heads (:mod:`.confirm`).

Efficiency (only what was asked is run): every pattern role on synthetic data comes from
**one** forward per batch of one repeated-token dataset; rare-words and subword-merge share one
forward per batch of a text dataset (whose unigram counts also feed the copying score's token
sets); the effective embeddings are computed once for the whole vocabulary and shared by the
weight roles; all eleven task-prompt roles share **one** forward over all prompt sets
(:mod:`.scores_task`); retrieval is teacher-forced (one forward per batch); S-inhibition path
patching runs only when ``s_inhibition`` is asked for.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from futurelens_tl.attention import scores as S
from futurelens_tl.attention import tag_data as TD
from futurelens_tl.attention.datasets import (
    ProbeData,
    haystack_prompts,
    ioi_prompts,
    repeated_tokens,
)
from futurelens_tl.attention.head_tags import STAGES, HeadTags
from futurelens_tl.attention.scores_task import TASK_SETS, task_scores
from futurelens_tl.data import FORWARD_COUNTER
from futurelens_tl.models.view import ModelView, as_view

__all__ = ["ROLES", "STAGES", "HeadTags", "RoleSpec", "tag_heads"]

@dataclass(frozen=True)
class RoleSpec:
    """A role the toolkit ships.

    Attributes:
        name: Role key.
        stage: Survey stage key (``KR``/``ICI``/``LR``/``EP``) or ``"none"`` (not in the survey).
        channel: Evidence channel: ``pattern``, ``weights``, ``causal`` or ``attribution``
            (direct logit attribution on task prompts).
        data: What data it needs.
        definition: One-line score definition.
        reference: Section of ``head-roles.md``.
    """

    name: str
    stage: str
    channel: str
    data: str
    definition: str
    reference: str


ROLES: dict[str, RoleSpec] = {r.name: r for r in [
    RoleSpec("previous_token", "ICI", "pattern", "repeated random tokens",
             "mean_{i>=1} A[i, i-1]", "§3.3"),
    RoleSpec("duplicate_token", "ICI", "pattern", "repeated random tokens",
             "mass on earlier copies of the current token, over rows that have one", "§3.4"),
    RoleSpec("induction", "LR", "pattern", "repeated random tokens (varied offsets)",
             "mass on tokens after earlier copies of the current token, eligible rows only",
             "§3.2, §3.5"),
    RoleSpec("positional", "ICI", "pattern", "repeated random tokens",
             "fraction of queries whose argmax is at the best fixed offset <= 0", "§3.6"),
    RoleSpec("attention_sink", "none", "pattern", "repeated random tokens",
             "mean_{i>=1} A[i, 0]", "§3.8"),
    RoleSpec("current_token", "none", "pattern", "repeated random tokens",
             "mean_{i>=1} A[i, i]", "§2"),
    RoleSpec("rare_words", "ICI", "pattern", "text + unigram counts",
             "fraction of queries whose argmax (BOS excluded) is a rarest visible token", "§3.7"),
    RoleSpec("subword_merge", "ICI", "pattern", "text with multi-token words",
             "mass on earlier sub-tokens of the current word (continuation rows)", "§3.9"),
    RoleSpec("copying", "LR", "weights", "none",
             "sum Re(lambda) / sum |lambda| of the full OV circuit W_E W_OV W_U", "§4.1"),
    RoleSpec("successor", "LR", "weights", "ordinal token families",
             "fraction of ordinal tokens whose top in-family effective-OV logit is succ(t)",
             "§4.2"),
    RoleSpec("copy_suppression", "ICI", "weights", "vocabulary sample",
             "fraction of tokens whose own effective-OV logit is among the 10 most negative",
             "§4.3"),
    RoleSpec("retrieval", "ICI", "causal", "needle-in-a-haystack prompts",
             "copy-paste hits of the top-1 attended needle token during greedy decoding", "§5.2"),
    RoleSpec("name_mover", "ICI", "causal", "IOI prompts + ABC corruption",
             "direct-path patching effect on the IO-S logit difference at END / gap", "§5.1"),
    RoleSpec("s_inhibition", "LR", "causal", "IOI prompts + ABC corruption",
             "path patching to name-mover queries: logit-difference drop / gap", "§5.1"),
    # ---- task-prompt roles (issue 15), one shared forward (scores_task.py)
    RoleSpec("memory", "KR", "attribution", "fact prompts (subject -> attribute)",
             "DLA of answer - counterfactual answers from the subject tokens / gap", "§1, §6.1"),
    RoleSpec("constant", "KR", "pattern", "multiple-choice prompts",
             "mass on the option letters x evenness over the letters", "§1"),
    RoleSpec("single_letter", "KR", "pattern", "multiple-choice prompts",
             "mass on the option letters x share of the most attended letter", "§1"),
    RoleSpec("negative", "KR", "pattern", "yes/no prompts listing both options",
             "negative attention score NAS (Yu et al. 2024)", "§4.4"),
    RoleSpec("correct_letter", "LR", "pattern", "multiple-choice prompts",
             "mass on the correct option's letter", "§1"),
    RoleSpec("in_context", "LR", "pattern", "few-shot prompts",
             "mass from the answer position on the demonstrations' labels", "§1"),
    RoleSpec("semantic_induction", "ICI", "attribution", "few-shot prompts",
             "DLA of answer - other answers from the demonstrations / gap", "§1"),
    RoleSpec("syntactic", "ICI", "pattern", "hand-written dependency set",
             "best relation's word argmax accuracy - best fixed-offset baseline", "§3.10"),
    RoleSpec("amplification", "EP", "attribution", "task prompts",
             "DLA of the model's final answer (vs mean logit) / its margin", "§1"),
    RoleSpec("correct", "EP", "attribution", "fact prompts",
             "DLA of answer - counterfactual answers (all sources) / gap", "§1"),
    RoleSpec("mixed", "EP", "attribution", "task prompts",
             "amplification x spread of attention over non-BOS sources", "§1"),
]}
"""The role registry. ``copying`` is placed in latent reasoning because it is the OV half of
induction (Olsson et al.: prefix matching **and** copying); the survey lists it nowhere, the
reference calls it "supports induction / movers". Task roles sit where the survey's tables put
them (§1); their thresholds are ours unless stated (see each ``threshold_source``)."""

_PATTERN_SYN = set(S.PATTERN_ROLES_SYNTHETIC)
_PATTERN_TXT = set(S.PATTERN_ROLES_TEXT)


def _resolve_roles(roles: str | Iterable[str]) -> list[str]:
    if isinstance(roles, str):
        roles = list(ROLES) if roles == "all" else [roles]
    roles = list(roles)
    if not roles:
        raise ValueError("roles is empty; pass 'all' or role names from " + ", ".join(ROLES))
    bad = [r for r in roles if r not in ROLES]
    if bad:
        raise ValueError(f"unknown role(s) {bad}; known roles: {', '.join(ROLES)} (or 'all')")
    return list(dict.fromkeys(roles))


def _has_patterns(view: ModelView) -> str | None:
    name = view.attn_hook(0, "pattern")
    try:
        with torch.no_grad():
            _, cache = view.run_with_cache(torch.zeros(1, 2, dtype=torch.long, device=view.device),
                                           [name])
    except Exception as err:  # pragma: no cover - exotic models
        return f"{type(err).__name__}: {err}"
    FORWARD_COUNTER.passes += 1
    FORWARD_COUNTER.tokens += 2
    if name not in cache:
        return f"hook {name} produced no activation"
    return None


_TASK = set(TASK_SETS)
_DATA_KEYS = {"repeated", "text", "unigram_counts", "ioi", "haystack", "word_start",
              "copying_tokens", "facts", "choice", "yes_no", "few_shot", "syntax"}


def tag_heads(
    model: Any,
    roles: str | Iterable[str] = "all",
    data: dict[str, Any] | None = None,
    thresholds: dict[str, Any] | None = None,
    *,
    n_examples: int = 32,
    seq_len: int | None = None,
    batch_size: int = 16,
    families: Any = None,
    confirm: bool = False,
    seed: int = 0,
    verbose: bool = True,
) -> HeadTags:
    """Score every head for every role, tag those above threshold, attach stages and evidence.

    Args:
        model: A TransformerLens model (bridge or HookedTransformer) or ``ModelView``.
        roles: ``"all"``, one role, or a list of roles (see :data:`ROLES`).
        data: Optional overrides: ``{"repeated": ProbeData, "text": list[str] | ProbeData,
            "unigram_counts": Tensor[d_vocab], "ioi": ProbeData, "haystack": ProbeData,
            "word_start": Tensor[d_vocab], "copying_tokens": "all" | "frequent" | "weighted",
            "facts" / "choice" / "yes_no" / "few_shot" / "syntax": ProbeData}`` (task sets from
            :mod:`futurelens_tl.attention.prompts`). Defaults are generated with ``seed``
            (text: the toy corpus when importable).
        thresholds: Role -> threshold overrides.
        n_examples: Sequences per generated probe dataset.
        seq_len: Length of generated sequences (default ``min(n_ctx, 64)``).
        batch_size: Sequences per forward.
        families: Ordinal families for ``successor`` (lists of ids or words, or a dict).
        confirm: Resample-ablate the heads tagged by pattern and attribution roles on their own
            data, against random untagged heads (:func:`.confirm.confirm_roles`); results in
            ``HeadTags.confirmation`` and the ``confirmed`` column of ``to_dataframe()``.
        seed: Seed for every generated dataset.
        verbose: Progress bars.

    Returns:
        HeadTags.

    Raises:
        ValueError: Unknown role (the message lists the known ones), thresholds for unknown
            roles or non-numeric thresholds, data too short or without a repeat, a model whose
            attention patterns cannot be read when pattern roles are asked for (the message
            lists the roles that still work).

    Examples:
        >>> import futurelens_tl as fl
        >>> tags = fl.tag_heads(fl.toy_model(verbose=False), roles=["previous_token", "induction"],
        ...                     verbose=False)
        >>> tags.scores.shape[0]
        2
    """
    t0 = time.perf_counter()
    f0 = FORWARD_COUNTER.passes
    view = as_view(model)
    role_list = _resolve_roles(roles)
    want = set(role_list)
    thr_over = dict(thresholds or {})
    for r, v in thr_over.items():
        if r not in ROLES:
            raise ValueError(f"thresholds has unknown role {r!r}; known roles: {', '.join(ROLES)}")
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise ValueError(f"thresholds[{r!r}]={v!r} must be a finite number")
    data = dict(data or {})
    if set(data) - _DATA_KEYS:
        raise ValueError(f"data has unknown keys {sorted(set(data) - _DATA_KEYS)}; allowed "
                         f"{sorted(_DATA_KEYS)}")
    L, H = view.n_layers, view.n_heads
    n = seq_len or min(view.n_ctx, 64)
    if n > view.n_ctx:
        raise ValueError(f"seq_len={n} exceeds the model's n_ctx={view.n_ctx}")
    needs_pat = [r for r in role_list if ROLES[r].channel in ("pattern", "attribution")
                 or r == "retrieval"]
    if needs_pat:
        err = _has_patterns(view)
        if err is not None:
            ok = [r for r in ROLES if ROLES[r].channel == "weights" or r in ("name_mover",
                                                                                "s_inhibition")]
            raise ValueError(
                f"this model exposes no attention patterns ({err}), so roles {needs_pat} "
                f"cannot be scored; roles that still work: {ok}")
    bos = 0
    tok = view.tokenizer
    if tok is not None and getattr(tok, "bos_token_id", None) is not None:
        bos = int(tok.bos_token_id)

    view._wee_cache = {}  # type: ignore[attr-defined]  # effective embeddings, this call only
    try:
        return _tag(view, role_list, want, thr_over, data, L, H, n, bos, tok, n_examples,
                    batch_size, families, confirm, seed, verbose, t0, f0)
    finally:
        del view._wee_cache  # type: ignore[attr-defined]


def _tag(view: ModelView, role_list: list[str], want: set[str], thr_over: dict[str, Any],
         data: dict[str, Any], L: int, H: int, n: int, bos: int, tok: Any, n_examples: int,
         batch_size: int, families: Any, confirm: bool, seed: int, verbose: bool, t0: float,
         f0: int) -> HeadTags:
    results: dict[str, S.RoleScore] = {}
    unavailable: dict[str, str] = {}
    used: dict[str, ProbeData] = {}  # role -> the data it was scored on (for confirm)

    syn = [r for r in role_list if r in _PATTERN_SYN]
    if syn:
        rep = data.get("repeated")
        if rep is None:
            rep = repeated_tokens(n_examples, n, view.d_vocab, seed=seed, bos=bos)
        elif not isinstance(rep, ProbeData):
            rep = ProbeData(view.to_tokens(rep, arg="data['repeated']"), "user tokens", seed)
        results.update(S.pattern_scores(view, rep, roles=syn, batch_size=batch_size,
                                        verbose=verbose))
        used.update({r: rep for r in syn})
    txt = [r for r in role_list if r in _PATTERN_TXT]
    counts = data.get("unigram_counts")
    td = None
    if txt or ("copying" in want and counts is None and tok is not None):
        text = data.get("text")
        if text is None and tok is not None:
            text = TD._toy_texts(200, seed)
        if text is not None and tok is not None:
            td = text if isinstance(text, ProbeData) else ProbeData(
                TD._text_tokens(view, list(text), n, n_examples), "text", seed, {"n": n_examples})
            if counts is None:
                counts = torch.bincount(td.tokens.flatten().cpu(), minlength=view.d_vocab).float()
    if txt:
        if td is None:
            for r in txt:
                unavailable[r] = ("needs natural text and a tokenizer: pass data={'text': [...]} "
                                  "on a model with a tokenizer")
        else:
            ws = data.get("word_start")
            if ws is None:
                ws = TD._word_starts(view)
            results.update(S.pattern_scores(view, td, roles=txt, batch_size=batch_size,
                                            unigram_counts=counts, word_start=ws,
                                            verbose=verbose))
            used.update({r: td for r in txt})
            if "subword_merge" in txt:
                l0 = S.subword_merge_layer0(view, td.tokens)
                if l0 is not None:
                    results["subword_merge"].extras["layer0_detok_auroc"] = torch.cat(
                        [l0[None], torch.full((L - 1, H), float("nan"))])
    if "copying" in want:
        ts = data.get("copying_tokens", "all")
        results["copying"] = S.copying_scores(view, token_set=ts, counts=counts, seed=seed)
    if "successor" in want:
        fams = TD._families(view, families)
        if fams:
            results["successor"] = S.successor_scores(view, fams)
        else:
            unavailable["successor"] = ("no ordinal families: pass families=[[id, ...], ...] or "
                                        "use a tokenizer with single-token ordinals")
    if "copy_suppression" in want:
        results["copy_suppression"] = S.copy_suppression_scores(view, seed=seed)
    if "retrieval" in want:
        hs = data.get("haystack")
        if hs is None:
            hs = haystack_prompts(n_examples, min(n, view.n_ctx - 4), view.d_vocab, seed=seed,
                                  bos=bos)
        results["retrieval"] = S.retrieval_scores(view, hs, batch_size=batch_size,
                                                  verbose=verbose)
    ioi_roles = tuple(r for r in ("name_mover", "s_inhibition") if r in want)
    if ioi_roles:
        _ioi(view, data, ioi_roles, n_examples, seed, bos, verbose, results, unavailable)
    task = [r for r in role_list if r in _TASK]
    if task:
        needed = {TASK_SETS[r] for r in task}
        if "all" in needed:
            needed = (needed - {"all"}) | {"facts", "choice", "yes_no", "few_shot"}
        sets, problems = TD.task_sets(view, needed, seed, bos, data)
        res, bad = task_scores(view, sets, task, seed=seed) if sets else ({}, {})
        for r in task:
            s_name = TASK_SETS[r]
            if r in res:
                results[r] = res[r]
                results[r].channel = ROLES[r].channel
                used[r] = sets[s_name] if s_name in sets else sets[sorted(sets)[0]]
            else:
                unavailable[r] = problems.get(s_name) or bad.get(r) or "no prompt set"
    if "induction" in results and L > 1:
        TD._add_k_composition(view, results, thr_over)

    scores = torch.full((len(role_list), L, H), float("nan"))
    thr: dict[str, float | None] = {}
    src: dict[str, str] = {}
    evidence: dict[str, dict[str, Any]] = {}
    extras: dict[str, dict[str, Tensor]] = {}
    for i, r in enumerate(role_list):
        if r in results:
            rs = results[r]
            scores[i] = rs.scores.float().cpu()
            thr[r], src[r] = rs.threshold, rs.threshold_source
            evidence[r] = {"channel": rs.channel, **rs.evidence}
            extras[r] = {k: v.float().cpu() for k, v in rs.extras.items()}
        else:
            thr[r], src[r] = None, "unavailable"
            evidence[r] = {"channel": ROLES[r].channel, "dataset": None, "n_examples": 0,
                           "seed": seed}
        if r in thr_over:
            thr[r], src[r] = float(thr_over[r]), "user"
    tags = HeadTags(
        roles=role_list, scores=scores, thresholds=thr, threshold_sources=src,
        stages={r: ROLES[r].stage for r in role_list}, evidence=evidence, extras=extras,
        unavailable=unavailable, model_name=f"{type(view.model).__name__} {view.fingerprint}",
    )
    if confirm:
        from futurelens_tl.attention.confirm import confirm_roles  # noqa: PLC0415

        testable = {r: tags.tagged(r) for r in role_list
                    if ROLES[r].channel in ("pattern", "attribution") and r in used}
        tags.confirmation = confirm_roles(view, testable, used, seed=seed, verbose=verbose)
    tags.n_forwards = FORWARD_COUNTER.passes - f0
    tags.seconds = time.perf_counter() - t0
    return tags


def _ioi(view: ModelView, data: dict[str, Any], roles: tuple[str, ...], n_examples: int,
         seed: int, bos: int, verbose: bool, results: dict[str, S.RoleScore],
         unavailable: dict[str, str]) -> None:
    """Name mover / S-inhibition (§5.1): only the roles asked for are computed."""
    ioi = data.get("ioi")
    if ioi is None:
        try:
            ioi = ioi_prompts(n_examples, tokenizer=view.tokenizer, seed=seed, bos=bos)
        except ValueError:
            ioi = ioi_prompts(n_examples, d_vocab=view.d_vocab, seed=seed, bos=bos)
    try:
        res = S.ioi_scores(view, ioi, roles=roles, verbose=verbose)
    except ValueError as err:
        if data.get("ioi") is not None and "does not perform" not in str(err):
            raise
        for r in roles:
            unavailable[r] = str(err)
        return
    for r in roles:
        if r in res:
            results[r] = res[r]
