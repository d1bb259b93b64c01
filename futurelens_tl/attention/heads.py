"""Attention-head role tagging: scores, thresholds, survey stages and evidence.

``fl.tag_heads(model)`` scores every head for every role of :data:`ROLES`, tags the heads whose
score reaches the role's threshold, and attaches the stage of the attention-heads survey
(Zheng et al. 2024; reference ``head-roles.md`` §1) and the evidence each score rests on
(dataset, number of examples, seed; channels kept separate, §7).

Efficiency: every pattern role on synthetic data (previous-token, duplicate-token, induction,
positional, sink, current-token) comes from **one** forward per batch of one repeated-token
dataset; rare-words and subword-merge share one forward per batch of a text dataset; weight
roles need one batched forward of lone tokens (effective embeddings); causal roles (retrieval,
name mover, S-inhibition) batch their interventions over heads.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from futurelens_tl.attention import scores as S
from futurelens_tl.attention.datasets import (
    ProbeData,
    _single_token_ids,
    haystack_prompts,
    ioi_prompts,
    ordinal_families_from_tokenizer,
    repeated_tokens,
)
from futurelens_tl.data import FORWARD_COUNTER
from futurelens_tl.model import ModelView, as_view

__all__ = ["ROLES", "STAGES", "HeadTags", "RoleSpec", "tag_heads"]

STAGES = {
    "KR": "knowledge recalling",
    "ICI": "in-context identification",
    "LR": "latent reasoning",
    "EP": "expression preparation",
    "none": "not in survey",
}


@dataclass(frozen=True)
class RoleSpec:
    """A role the toolkit ships.

    Attributes:
        name: Role key.
        stage: Survey stage key (``KR``/``ICI``/``LR``/``EP``) or ``"none"`` (not in the survey).
        channel: Evidence channel: ``pattern``, ``weights`` or ``causal``.
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
]}
"""The role registry. ``copying`` is placed in latent reasoning because it is the OV half of
induction (Olsson et al.: prefix matching **and** copying); the survey lists it nowhere, the
reference calls it "supports induction / movers"."""

_PATTERN_SYN = set(S.PATTERN_ROLES_SYNTHETIC)
_PATTERN_TXT = set(S.PATTERN_ROLES_TEXT)


@dataclass
class HeadTags:
    """Every head's score for every role, the tags, stages and evidence.

    Attributes:
        roles: Role names, in the order of ``scores``.
        scores: ``[n_roles, n_layers, n_heads]``; NaN where a role could not be scored.
        thresholds: Role -> threshold used (``score >= threshold`` tags).
        threshold_sources: Role -> where the threshold comes from.
        stages: Role -> survey stage key (``ICI``, ``LR``, ...; ``none`` = not in survey).
        evidence: Role -> channel, dataset, number of examples, seed, and notes.
        extras: Role -> name -> ``[n_layers, n_heads]`` auxiliary statistics.
        unavailable: Role -> reason it could not be scored (its scores are NaN).
        model_name: Model class / fingerprint summary.
        n_forwards: Forward passes made.
        seconds: Wall time.
    """

    roles: list[str]
    scores: Float[Tensor, "n_roles n_layers n_heads"]
    thresholds: dict[str, float | None]
    threshold_sources: dict[str, str]
    stages: dict[str, str]
    evidence: dict[str, dict[str, Any]]
    extras: dict[str, dict[str, Tensor]] = field(default_factory=dict)
    unavailable: dict[str, str] = field(default_factory=dict)
    model_name: str = ""
    n_forwards: int = 0
    seconds: float = 0.0

    @property
    def n_layers(self) -> int:
        return int(self.scores.shape[1])

    @property
    def n_heads(self) -> int:
        return int(self.scores.shape[2])

    def score(self, role: str) -> Float[Tensor, "n_layers n_heads"]:
        """The ``[n_layers, n_heads]`` score of ``role``."""
        return self.scores[self._index(role)]

    def _index(self, role: str) -> int:
        if role not in self.roles:
            raise ValueError(f"role={role!r} is not in this result; roles: {self.roles}")
        return self.roles.index(role)

    @property
    def tags(self) -> Bool[Tensor, "n_roles n_layers n_heads"]:
        """``scores >= threshold`` per role (False for NaN or roles without a threshold)."""
        out = torch.zeros_like(self.scores, dtype=torch.bool)
        for i, r in enumerate(self.roles):
            t = self.thresholds.get(r)
            if t is not None:
                out[i] = torch.nan_to_num(self.scores[i], nan=-math.inf) >= t
        return out

    def tagged(self, role: str) -> list[tuple[int, int]]:
        """``(layer, head)`` pairs tagged with ``role``, highest score first."""
        i = self._index(role)
        idx = self.tags[i].nonzero().tolist()
        return sorted(((a, b) for a, b in idx), key=lambda lh: -float(self.scores[i][lh]))

    def top(self, role: str, k: int = 3) -> list[tuple[int, int, float]]:
        """The ``k`` best heads for ``role`` (tagged or not) as ``(layer, head, score)``."""
        s = torch.nan_to_num(self.score(role), nan=-math.inf).flatten()
        idx = s.argsort(descending=True)[:k]
        return [(int(i) // self.n_heads, int(i) % self.n_heads, float(s[i])) for i in idx]

    def heads_by_role(self) -> dict[str, list[tuple[int, int]]]:
        """Role -> tagged heads."""
        return {r: self.tagged(r) for r in self.roles}

    def dominant(self) -> list[list[str | None]]:
        """Per head, the tagged role with the largest ``score / threshold`` (None if untagged)."""
        tags = self.tags
        out: list[list[str | None]] = []
        for layer in range(self.n_layers):
            row: list[str | None] = []
            for h in range(self.n_heads):
                best, val = None, -math.inf
                for i, r in enumerate(self.roles):
                    t = self.thresholds.get(r)
                    if tags[i, layer, h] and t is not None:
                        v = float(self.scores[i, layer, h]) / max(abs(t), 1e-6)
                        if v > val:
                            best, val = r, v
                row.append(best)
            out.append(row)
        return out

    def to_dataframe(self) -> Any:
        """One row per (layer, head, role): stage, score, threshold, tagged, source, channel."""
        import pandas as pd

        tags = self.tags
        rows = []
        for i, r in enumerate(self.roles):
            for layer in range(self.n_layers):
                for h in range(self.n_heads):
                    rows.append({
                        "layer": layer, "head": h, "role": r,
                        "stage": STAGES[self.stages[r]],
                        "score": float(self.scores[i, layer, h]),
                        "threshold": self.thresholds.get(r),
                        "tagged": bool(tags[i, layer, h]),
                        "source": self.threshold_sources.get(r, ""),
                        "channel": self.evidence.get(r, {}).get("channel", ""),
                    })
        return pd.DataFrame(rows)

    def summary(self) -> Any:
        """One row per role: stage, threshold, number tagged, best head and its score."""
        import pandas as pd

        rows = []
        for r in self.roles:
            best = self.top(r, 1)[0]
            rows.append({"role": r, "stage": STAGES[self.stages[r]],
                         "threshold": self.thresholds.get(r), "n_tagged": len(self.tagged(r)),
                         "best_head": f"L{best[0]}H{best[1]}", "best_score": best[2],
                         "dataset": self.evidence.get(r, {}).get("dataset", ""),
                         "unavailable": self.unavailable.get(r, "")})
        return pd.DataFrame(rows)

    def _grid_html(self) -> str:
        from futurelens_tl.viz.heads import role_grid_html

        return role_grid_html(
            self.scores.numpy(), self.roles, self.dominant(),
            {r: self.thresholds.get(r) for r in self.roles},
            {r: STAGES[self.stages[r]] for r in self.roles},
            title=f"Head roles: {self.model_name}",
            notes={r: self.unavailable[r] for r in self.unavailable},
        )

    def plot(self) -> Any:
        """The role grid as a matplotlib figure (colour = dominant tagged role)."""
        from futurelens_tl.viz.heads import role_grid_figure

        return role_grid_figure(self.scores.numpy(), self.roles, self.dominant())

    def show(self) -> Any:
        """Layer x head grid coloured by dominant tagged role, all scores on hover (offline)."""
        return _HTMLBox(self._grid_html())

    def _repr_html_(self) -> str:
        return self._grid_html()

    def save_html(self, path: str) -> None:
        """Write the grid as a standalone offline HTML file (atomic)."""
        from futurelens_tl.viz.html import page, save_html

        save_html(page("Attention-head roles", self._grid_html()), path)  # report's CSP + style

    def save(self, path: str) -> None:
        """Save as safetensors (scores, extras) + JSON header (roles, thresholds, evidence).

        The write is atomic (temp file + ``os.replace``); :meth:`load` restores an equal object.
        """
        import json

        from safetensors.torch import save_file

        tensors = {"scores": self.scores.contiguous()}
        for r, ex in self.extras.items():
            for k, v in ex.items():
                tensors[f"extras/{r}/{k}"] = v.contiguous()
        header = {
            "format": "futurelens_tl.HeadTags", "version": 1, "roles": self.roles,
            "thresholds": self.thresholds, "threshold_sources": self.threshold_sources,
            "stages": self.stages, "evidence": self.evidence, "unavailable": self.unavailable,
            "model_name": self.model_name, "n_forwards": self.n_forwards,
            "seconds": self.seconds,
        }
        from futurelens_tl._io import atomic_write

        atomic_write(path, lambda tmp: save_file(
            tensors, tmp, metadata={"header": json.dumps(header, default=str)}))

    @classmethod
    def load(cls, path: str) -> HeadTags:
        """Load a result written by :meth:`save`."""
        import json

        from safetensors import safe_open

        with safe_open(path, framework="pt") as f:
            meta = f.metadata() or {}
            if "header" not in meta:
                raise ValueError(f"{path!r} is not a HeadTags file (no header)")
            h = json.loads(meta["header"])
            if h.get("format") != "futurelens_tl.HeadTags":
                raise ValueError(f"{path!r} holds {h.get('format')!r}, not HeadTags")
            scores = f.get_tensor("scores")
            extras: dict[str, dict[str, Tensor]] = {}
            for k in f.keys():
                if k.startswith("extras/"):
                    _, r, name = k.split("/", 2)
                    extras.setdefault(r, {})[name] = f.get_tensor(k)
        return cls(roles=h["roles"], scores=scores, thresholds=h["thresholds"],
                   threshold_sources=h["threshold_sources"], stages=h["stages"],
                   evidence=h["evidence"], extras=extras, unavailable=h["unavailable"],
                   model_name=h["model_name"], n_forwards=h["n_forwards"],
                   seconds=h["seconds"])

    def attention_view(self, model: Any, layer: int, head: int,
                       tokens: Int[Tensor, "..."] | str) -> Any:
        """One head's attention pattern via circuitsvis, its JS inlined (``local_src``; offline).

        Returns an object with ``_repr_html_`` (and ``.data`` = the HTML string).
        """
        view = as_view(model)
        tok = view.to_tokens(tokens, arg="tokens")[:1]
        if not (0 <= layer < view.n_layers and 0 <= head < view.n_heads):
            raise ValueError(f"(layer, head)=({layer}, {head}) out of range")
        name = view.attn_hook(layer, "pattern")
        with torch.no_grad():
            _, cache = view.run_with_cache(tok, [name])
        pat = cache[name][0, head:head + 1].float().cpu()
        try:
            strs = view.to_str_tokens(tok[0])
        except Exception:
            strs = [str(int(t)) for t in tok[0]]
        from futurelens_tl.viz.heads import attention_heads_html

        return _HTMLBox(attention_heads_html(pat.numpy(), strs, [f"L{layer}H{head}"]))


class _HTMLBox:
    def __init__(self, html: str):
        self.data = html

    def _repr_html_(self) -> str:
        return self.data

    def __str__(self) -> str:
        return self.data


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
    seed: int = 0,
    verbose: bool = True,
) -> HeadTags:
    """Score every head for every role, tag those above threshold, attach stages and evidence.

    Args:
        model: A TransformerLens model (bridge or HookedTransformer) or ``ModelView``.
        roles: ``"all"``, one role, or a list of roles (see :data:`ROLES`).
        data: Optional overrides: ``{"repeated": ProbeData, "text": list[str] | ProbeData,
            "unigram_counts": Tensor[d_vocab], "ioi": ProbeData, "haystack": ProbeData}``.
            Defaults are generated with ``seed`` (text: the toy corpus when importable).
        thresholds: Role -> threshold overrides.
        n_examples: Sequences per generated probe dataset.
        seq_len: Length of generated sequences (default ``min(n_ctx, 64)``; longer gives
            cleaner stripes).
        batch_size: Sequences per forward.
        families: Ordinal families for ``successor`` (lists of ids or words, or a dict).
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
    thr_over = dict(thresholds or {})
    for r, v in thr_over.items():
        if r not in ROLES:
            raise ValueError(f"thresholds has unknown role {r!r}; known roles: {', '.join(ROLES)}")
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise ValueError(f"thresholds[{r!r}]={v!r} must be a finite number")
    data = dict(data or {})
    known_data = {"repeated", "text", "unigram_counts", "ioi", "haystack", "word_start"}
    if set(data) - known_data:
        raise ValueError(f"data has unknown keys {sorted(set(data) - known_data)}; allowed "
                         f"{sorted(known_data)}")
    L, H = view.n_layers, view.n_heads
    n = seq_len or min(view.n_ctx, 64)
    if n > view.n_ctx:
        raise ValueError(f"seq_len={n} exceeds the model's n_ctx={view.n_ctx}")
    pattern_roles = [r for r in role_list if ROLES[r].channel == "pattern"] + [
        r for r in role_list if r in ("retrieval",)]
    if pattern_roles:
        err = _has_patterns(view)
        if err is not None:
            ok = [r for r in ROLES if ROLES[r].channel != "pattern" and r != "retrieval"]
            raise ValueError(
                f"this model exposes no attention patterns ({err}), so roles {pattern_roles} "
                f"cannot be scored; roles that still work: {ok}")
    bos = 0
    tok = view.tokenizer
    if tok is not None and getattr(tok, "bos_token_id", None) is not None:
        bos = int(tok.bos_token_id)

    results: dict[str, S.RoleScore] = {}
    unavailable: dict[str, str] = {}

    syn = [r for r in role_list if r in _PATTERN_SYN]
    if syn:
        rep = data.get("repeated")
        if rep is None:
            rep = repeated_tokens(n_examples, n, view.d_vocab, seed=seed, bos=bos)
        elif not isinstance(rep, ProbeData):
            rep = ProbeData(view.to_tokens(rep, arg="data['repeated']"), "user tokens", seed)
        results.update(S.pattern_scores(view, rep, roles=syn, batch_size=batch_size,
                                        verbose=verbose))
    txt = [r for r in role_list if r in _PATTERN_TXT]
    if txt:
        reason = None
        text = data.get("text")
        if text is None:
            text = _toy_texts(200, seed) if tok is not None else None
        if text is None or tok is None:
            reason = ("needs natural text and a tokenizer: pass data={'text': [...]} on a model "
                      "with a tokenizer")
        if reason is None:
            if isinstance(text, ProbeData):
                td = text
            else:
                td = ProbeData(_text_tokens(view, list(text), n, n_examples), "text", seed,
                               {"n": n_examples})
            counts = data.get("unigram_counts")
            if counts is None:
                counts = torch.bincount(td.tokens.flatten().cpu(), minlength=view.d_vocab).float()
            ws = data.get("word_start")
            if ws is None:
                ws = _word_starts(view)
            results.update(S.pattern_scores(view, td, roles=txt, batch_size=batch_size,
                                            unigram_counts=counts, word_start=ws,
                                            verbose=verbose))
            if "subword_merge" in txt:
                l0 = S.subword_merge_layer0(view, td.tokens)
                if l0 is not None:
                    results["subword_merge"].extras["layer0_detok_auroc"] = torch.cat(
                        [l0[None], torch.full((L - 1, H), float("nan"))])
        else:
            for r in txt:
                unavailable[r] = reason
    if "copying" in role_list:
        results["copying"] = S.copying_scores(view)
    if "successor" in role_list:
        fams = _families(view, families)
        if fams:
            results["successor"] = S.successor_scores(view, fams)
        else:
            unavailable["successor"] = ("no ordinal families: pass families=[[id, ...], ...] or "
                                        "use a tokenizer with single-token ordinals")
    if "copy_suppression" in role_list:
        results["copy_suppression"] = S.copy_suppression_scores(view, seed=seed)
    if "retrieval" in role_list:
        hs = data.get("haystack")
        if hs is None:
            hl = min(n, view.n_ctx - 4)
            hs = haystack_prompts(n_examples, hl, view.d_vocab, seed=seed, bos=bos)
        results["retrieval"] = S.retrieval_scores(view, hs, batch_size=batch_size,
                                                  verbose=verbose)
    if {"name_mover", "s_inhibition"} & set(role_list):
        ioi = data.get("ioi")
        if ioi is None:
            try:
                ioi = ioi_prompts(n_examples, tokenizer=tok, seed=seed, bos=bos)
            except ValueError:
                ioi = ioi_prompts(n_examples, d_vocab=view.d_vocab, seed=seed, bos=bos)
        try:
            res = S.ioi_scores(view, ioi, verbose=verbose)
        except ValueError as err:
            if data.get("ioi") is not None and "does not perform" not in str(err):
                raise
            res = {}
            for r in ("name_mover", "s_inhibition"):
                unavailable[r] = str(err)
        for r in ("name_mover", "s_inhibition"):
            if r in role_list and r in res:
                results[r] = res[r]

    if "induction" in results and L > 1:
        _add_k_composition(view, results, thr_over)

    scores = torch.full((len(role_list), L, H), float("nan"))
    thr: dict[str, float | None] = {}
    src: dict[str, str] = {}
    evidence: dict[str, dict[str, Any]] = {}
    extras: dict[str, dict[str, Tensor]] = {}
    for i, r in enumerate(role_list):
        spec = ROLES[r]
        if r in results:
            rs = results[r]
            scores[i] = rs.scores.float().cpu()
            thr[r] = rs.threshold
            src[r] = rs.threshold_source
            evidence[r] = {"channel": rs.channel, **rs.evidence}
            extras[r] = {k: v.float().cpu() for k, v in rs.extras.items()}
        else:
            thr[r] = None
            src[r] = "unavailable"
            evidence[r] = {"channel": spec.channel, "dataset": None, "n_examples": 0,
                           "seed": seed}
        if r in thr_over:
            thr[r] = float(thr_over[r])
            src[r] = "user"
    return HeadTags(
        roles=role_list, scores=scores, thresholds=thr, threshold_sources=src,
        stages={r: ROLES[r].stage for r in role_list}, evidence=evidence, extras=extras,
        unavailable=unavailable, model_name=f"{type(view.model).__name__} {view.fingerprint}",
        n_forwards=FORWARD_COUNTER.passes - f0, seconds=time.perf_counter() - t0,
    )


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
