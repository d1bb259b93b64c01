"""Weight-based role scores: OV copying, K-composition, successor, copy suppression (§4).

Reference ``head-roles.md`` §4. These need no forward pass through the stack beyond the
effective embeddings (one batched forward of lone tokens, :func:`effective_embeddings`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

from futurelens_tl.attention.role_score import RoleScore
from futurelens_tl.data import FORWARD_COUNTER
from futurelens_tl.models.view import ModelView

# ---------------------------------------------------------------------------- weight scores
TOKEN_SETS = ("all", "frequent", "weighted")


def _copy_ratio(small: Tensor) -> Tensor:
    ev = torch.linalg.eigvals(small)
    return ev.real.sum(-1) / ev.abs().sum(-1).clamp_min(1e-30)


def copying_scores(
    view: ModelView,
    *,
    token_set: str = "all",
    counts: Float[Tensor, " d_vocab"] | None = None,
    min_count: int = 5,
    effective: bool = True,
    baseline_samples: int = 16,
    seed: int = 0,
) -> RoleScore:
    r"""OV eigenvalue copying score $\sum\mathrm{Re}\,\lambda / \sum|\lambda|$ (§4.1, Elhage).

    The full OV circuit of head ``(l, h)`` on a token set ``S`` is
    $M = X_l[S]\,W_V W_O\,U[:, S]$ (rows: source token, columns: output token), with

    * $X_l$ = what the head actually reads for a lone token: the token embedding $W_E$ for
      layer 0 and the **effective embedding** $W_{EE}$ (token through block 0 with layer-0
      attention ablated, §4.3) for layers ``>= 1`` (raw $W_E$ is a weak proxy there and makes
      every induction head look anti-copying), passed through the layer's attention-input
      norm (centring, per-token scale, gain);
    * $U$ = the unembedding with the final norm's gain folded in (and centred under
      LayerNorm).

    The eigenvalues come from the small cyclic product $W_O\,(U[:,S]\,P\,X_l[S])\,W_V$
    (``d_head x d_head``, the same non-zero eigenvalues), so the vocabulary never appears as a
    matrix dimension; ``P`` weights the tokens.

    Token sets (``token_set``): ``"all"`` (the whole vocabulary, no data, Elhage et al.),
    ``"frequent"`` (tokens with ``counts >= min_count``) and ``"weighted"`` (every token seen,
    weighted by its frequency ``counts / sum(counts)``). With ``counts`` given, the two
    data-dependent sets are also computed and stored in ``extras`` (``frequent``,
    ``weighted``), whichever set the score uses.

    Control: ``extras["random_mean"]`` / ``extras["random_std"]`` are the score of Gaussian
    ``W_V``, ``W_O`` of the same shape read through the same layer's embeddings and
    unembedding (``baseline_samples`` draws): a head that does not beat ``random_mean + 2
    random_std`` carries no copying evidence. Threshold: none published (``> 0`` = copying);
    we tag at 0.5 and say so.

    Args:
        view: The model.
        token_set: ``"all"``, ``"frequent"`` or ``"weighted"``.
        counts: ``[d_vocab]`` token counts (needed for the data-dependent sets).
        min_count: Minimum count of a frequent token.
        effective: Use effective embeddings for layers >= 1 (``False``: raw ``W_E`` everywhere,
            the old, misleading input; kept for comparison).
        baseline_samples: Random heads per layer for the control.
        seed: Seed of the random heads.

    Returns:
        RoleScore ``copying``.

    Raises:
        ValueError: Unknown ``token_set``, or a data-dependent set without usable ``counts``.

    Examples:
        >>> import futurelens_tl as fl
        >>> from futurelens_tl.attention.scores import copying_scores
        >>> rs = copying_scores(fl.ModelView(fl.toy_model(verbose=False)), baseline_samples=2)
        >>> bool((rs.scores <= 1).all() and (rs.scores >= -1).all())
        True
    """
    if token_set not in TOKEN_SETS:
        raise ValueError(f"token_set={token_set!r}; allowed {TOKEN_SETS}")
    if token_set != "all" and counts is None:
        raise ValueError(f"token_set={token_set!r} needs counts (a [d_vocab] tensor)")
    L, H, V = view.n_layers, view.n_heads, view.d_vocab
    dev = view.device
    weights: dict[str, Tensor] = {"all": torch.ones(V, dtype=torch.float64, device=dev)}
    if counts is not None:
        c = torch.as_tensor(counts, dtype=torch.float64, device=dev).flatten()
        if c.numel() != V or bool((c < 0).any()):
            raise ValueError(f"counts must be a non-negative [d_vocab={V}] tensor")
        freq = (c >= min_count).double()
        if freq.sum() < 2 and token_set == "frequent":
            raise ValueError(f"fewer than 2 tokens have counts >= min_count={min_count}")
        weights["frequent"] = freq
        weights["weighted"] = c / c.sum().clamp_min(1e-30)

    def _normed(x: Tensor, layer: int) -> Tensor:
        """The linear part of ln1(layer) applied row by row (bias dropped)."""
        norm = view.ln1(layer)
        x = x.double()
        if norm.kind is None:
            return x
        if norm.kind == "LN":
            x = x - x.mean(-1, keepdim=True)
        x = x / (x.pow(2).mean(-1, keepdim=True) + norm.eps).sqrt()
        return x

    fin = view.ln_final
    wu = view.W_U.detach().double()
    if fin.w is not None:
        wu = wu * fin.w.detach().double()[:, None]
    if fin.kind == "LN":
        wu = wu - wu.mean(0, keepdim=True)
    with torch.no_grad():
        x0 = _normed(view.W_E.detach(), 0)
        if effective and L > 1:
            xe = _normed(effective_embeddings(view, torch.arange(V, device=dev)).detach(), 1)
        else:
            xe = x0
        # U[:, S] P X[S] before the per-layer gain: [d_model, d_model] per token set and input
        mids = {k: {"0": (wu * w[None]) @ x0, "e": (wu * w[None]) @ xe}
                for k, w in weights.items()}
        wv = view.W_V.detach().double()
        wo = view.W_O.detach().double()
        out: dict[str, Tensor] = {k: torch.zeros(L, H, dtype=torch.float64) for k in weights}
        g = torch.Generator().manual_seed(seed)
        rnd_mean = torch.zeros(L, H, dtype=torch.float64)
        rnd_std = torch.zeros(L, H, dtype=torch.float64)
        for layer in range(L):
            norm = view.ln1(layer)
            gain = (norm.w.detach().double() if norm.w is not None
                    else torch.ones(view.d_model, dtype=torch.float64, device=dev))
            for k in weights:
                mid = mids[k]["0" if layer == 0 else "e"] * gain[None]
                small = torch.einsum("hem,mn,hnf->hef", wo[layer], mid, wv[layer])
                out[k][layer] = _copy_ratio(small).cpu()
            if baseline_samples > 0:
                mid = mids[token_set]["0" if layer == 0 else "e"] * gain[None]
                rv = torch.randn(baseline_samples, view.d_model, view.d_head, generator=g,
                                 dtype=torch.float64).to(dev)
                ro = torch.randn(baseline_samples, view.d_head, view.d_model, generator=g,
                                 dtype=torch.float64).to(dev)
                r = _copy_ratio(torch.einsum("sem,mn,snf->sef", ro, mid, rv)).cpu()
                rnd_mean[layer] = r.mean()
                rnd_std[layer] = r.std() if baseline_samples > 1 else 0.0
    extras = {k: v.float() for k, v in out.items() if k != "all" and k != token_set}
    if baseline_samples > 0:
        extras["random_mean"] = rnd_mean.float()
        extras["random_std"] = rnd_std.float()
    n_tok = int((weights[token_set] > 0).sum())
    return RoleScore(
        "copying", out[token_set].float(), 0.5,
        "none published (Elhage et al. 2021: > 0 = copying); ours, 0.5", "weights",
        {"dataset": "none (weights only)" if token_set == "all" else "unigram counts",
         "n_examples": n_tok, "seed": seed, "token_set": token_set,
         "input": "W_E (layer 0), effective embeddings (layers >= 1)" if effective
         else "W_E (every layer)",
         "min_count": min_count if token_set == "frequent" else None,
         "control": f"{baseline_samples} Gaussian W_V, W_O per layer (random_mean, random_std)"},
        extras)


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


class _StopForward(Exception):
    """Raised by a hook to end a forward once the needed activation is stored."""


def effective_embeddings(
    view: ModelView, token_ids: Int[Tensor, " n"], batch_size: int = 4096
) -> Float[Tensor, "n d_model"]:
    """Effective embeddings $W_{EE}$ (reference §4.3), batched with hooks.

    The residual after block 0 for each lone token with positions and layer-0 attention
    zero-ablated. The forward stops right after block 0 (a hook raises once the residual is
    stored; TransformerLens removes its hooks on the way out), so the whole vocabulary of a
    30-layer model costs about one layer's work per batch instead of a full forward. Inside
    one ``tag_heads`` call the whole-vocabulary table is computed once and shared by the
    copying, successor and copy-suppression scores.
    """
    cache = getattr(view, "_wee_cache", None)  # set by tag_heads for the length of one call
    if cache is not None and "vocab" in cache:
        return cache["vocab"][token_ids.to(cache["vocab"].device).long()]
    out = []
    hooks: list[tuple[str, Callable[..., Any]]] = [
        (view.attn_hook(0, "z"), lambda z, hook: torch.zeros_like(z)),
    ]
    if view.W_pos is not None:
        hooks.append(("hook_pos_embed", lambda x, hook: torch.zeros_like(x)))
    name = view.resid_hook(0)
    store: list[Tensor] = []

    def grab(x: Tensor, hook: Any) -> Tensor:
        store.append(x.detach())
        raise _StopForward

    hooks.append((name, grab))
    ids = token_ids.to(view.device).long()
    with torch.no_grad():
        for s in range(0, len(ids), batch_size):
            chunk = ids[s:s + batch_size, None]
            store.clear()
            try:
                view.run_with_hooks(chunk, hooks)
            except _StopForward:
                pass
            FORWARD_COUNTER.tokens += chunk.numel()
            if not store:  # pragma: no cover - a backend that swallowed the exception
                raise RuntimeError(f"hook {name} did not fire; cannot read effective embeddings")
            out.append(store[0][:, 0])
    res = torch.cat(out)
    if cache is not None and len(ids) == view.d_vocab and bool(
            (ids == torch.arange(view.d_vocab, device=ids.device)).all()):
        cache["vocab"] = res
    return res


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
