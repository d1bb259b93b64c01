"""Build a :class:`Layer0Decomposition` from a model's weights (ref §2, §10; addendum)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from futurelens_tl.attention.layer0.bigrams import BigramCounts
from futurelens_tl.attention.layer0.core import Layer0Decomposition
from futurelens_tl.attention.layer0.rotary import rope_spec
from futurelens_tl.models.view import as_view

_ROTARY_NOTES = (
    "sigma is an exact per-token scale (token_sigma()); the (position, token) sigma table, its "
    "statistics and the mean/max/min query-scale curves have no analogue",
    "terms are ee, ep, pe, pp around the reference token x_bar (T_e and T_p are absorbed: query "
    "and key biases sit inside q_bar and k_bar, and key biases do not cancel under RoPE)",
    "position analyses use the positional kernel f(Delta) = q_bar M(Delta) k_bar^T, exact and the "
    "same for every query position",
)


def _unsupported(view: Any) -> str | None:
    cfg = view.cfg
    flags = {
        "use_qk_norm": "q/k norms act on q and k per token (OLMo-2, Qwen3)",
        "rmsnorm_uses_offset": "RMSNorm with a (1 + gamma) gain (Gemma)",
        "post_embedding_ln": "a norm between the embedding and layer 0 (BLOOM)",
        "use_normalization_before_and_after": "a second norm around the attention",
    }
    for name, why in flags.items():
        if getattr(cfg, name, False) is True:
            return f"{name}=True: {why}"
    scale = getattr(cfg, "scale_embedding", None)
    if scale not in (None, False) and scale != 1:
        return f"scale_embedding={scale!r}: embeddings scaled before layer 0 (Gemma)"
    return None


def _check_finite(tensors: dict[str, Tensor]) -> None:
    for name, t in tensors.items():
        if t is not None and not bool(torch.isfinite(t).all()):
            bad = int((~torch.isfinite(t)).sum())
            raise ValueError(
                f"the model's layer-0 {name} holds {bad} non-finite value(s) (NaN/inf); every "
                "score, ranking and AUROC would be meaningless (a NaN sorts first in top_prefixes)."
                " Load intact weights."
            )


def decompose_first_layer(
    model: Any,
    *,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device | None = None,
    attn_scale: float | None = None,
    token_weights: Tensor | np.ndarray | None = None,
) -> Layer0Decomposition:
    """Fold layer-0 norm and biases into per-head query/key weights, from weights alone.

    Folding (ref §2, §10): for LayerNorm ``W~ = C diag(gamma) W``, ``b~ = beta W + b``; for
    RMSNorm only ``diag(gamma)`` (§12.1); without a norm nothing. Correct on raw weights and on
    processed ones (``fold_ln``/``center_writing_weights``/compatibility mode), where
    ``gamma``/``beta`` are absent or trivial and ``C`` is idempotent. No forward pass is run.

    Position schemes: learned absolute positions (GPT-2 family, ref §4) and rotary positions
    (Llama, Mistral, Qwen2 with q/k biases, GPT-NeoX/Pythia and other partial-rotary models,
    any fixed rope scaling; reference addendum "rotary models"). For rotary models RoPE is read
    from the model's own rotary module (``inv_freq`` and ``attention_scaling``), GQA heads use
    their KV group's keys, and the terms are split around a reference token ``x_bar``: the
    uniform mean normalised embedding, or the ``token_weights``-weighted one
    (``reference="frequency-weighted"``, e.g. unigram counts of a corpus).

    Args:
        model: A TransformerLens ``TransformerBridge`` or ``HookedTransformer`` (or a
            ``ModelView``).
        dtype: Compute dtype of the stored tensors (float32 default; float64 for checks).
        device: Where to keep the tensors (default: the model's device).
        attn_scale: Override the divisor of the attention logits (default: ``sqrt(d_head)``
            from the config, 1 for models that do not scale such as GPT-Neo).
        token_weights: Rotary models: ``[d_vocab]`` non-negative weights of the reference
            token mean (default uniform).

    Returns:
        :class:`Layer0Decomposition`.

    Raises:
        NotImplementedError: ALiBi or other position schemes, dynamic rope scaling, q/k norms,
            Gemma-style norms/embedding scales: there the score is not this bilinear form.
        ValueError: Non-finite weights, bad ``token_weights``, an unsupported norm type or a
            non-floating ``dtype``.

    Examples:
        >>> import futurelens_tl as fl
        >>> dec = fl.decompose_first_layer(fl.toy_model())
        >>> dec.n_heads, dec.basis, dec.positions
        (4, 'raw', 'absolute')
    """
    view = as_view(model)
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ValueError(f"dtype={dtype!r} must be a floating torch dtype (e.g. torch.float32)")
    pos_type = view.positional_embedding_type
    rotary = pos_type == "rotary"
    if not rotary and (pos_type != "standard" or view.W_pos is None):
        raise NotImplementedError(
            f"decompose_first_layer supports learned absolute and rotary positions; this model "
            f"uses positional_embedding_type={pos_type!r} (ALiBi adds -m_h (i - j) to the "
            "scores: reference layer0-decomposition.md §12.4; not implemented)."
        )
    why = _unsupported(view)
    if why is not None:
        raise NotImplementedError(f"layer-0 decomposition does not cover this model: {why}")
    if attn_scale is not None and not (isinstance(attn_scale, (int, float)) and attn_scale > 0):
        raise ValueError(f"attn_scale={attn_scale!r} must be a positive number or None")
    norm = view.ln1(0)
    if norm.kind not in ("LN", "RMS", None):  # pragma: no cover - NormParams restricts this
        raise ValueError(f"unsupported layer-0 norm {norm.kind!r}")
    dev = torch.device(device) if device is not None else view.device
    with torch.no_grad():

        def get(x: Tensor) -> Tensor:
            return x.detach().to(dev, dtype).clone()

        W_Q, W_K = get(view.W_Q[0]), get(view.W_K[0])
        b_Q, b_K = get(view.b_Q[0]), get(view.b_K[0])
        if norm.kind is not None:
            if norm.b is not None:
                beta = get(norm.b)
                b_Q = b_Q + torch.einsum("d,hdk->hk", beta, W_Q)
                b_K = b_K + torch.einsum("d,hdk->hk", beta, W_K)
            if norm.w is not None:
                gamma = get(norm.w)
                W_Q = W_Q * gamma[None, :, None]
                W_K = W_K * gamma[None, :, None]
            if norm.kind == "LN":
                W_Q = W_Q - W_Q.mean(1, keepdim=True)
                W_K = W_K - W_K.mean(1, keepdim=True)
        W_E = get(view.W_E)
        W_pos = None if rotary else get(view.W_pos)
    _check_finite({"W_E": W_E, "W_pos": W_pos, "W_Q": W_Q, "W_K": W_K, "b_Q": b_Q, "b_K": b_K})
    weights = _token_weights(token_weights, W_E.shape[0], dev, dtype) if rotary else None
    if token_weights is not None and not rotary:
        raise ValueError("token_weights applies to rotary models (the reference token); "
                         "absolute models average over the sigma table (ref §6.1)")
    tk = view.tokenizer
    group = view.n_heads // view.n_kv_heads
    return Layer0Decomposition(
        W_Q=W_Q, W_K=W_K, b_Q=b_Q, b_K=b_K, W_E=W_E, W_pos=W_pos,
        norm=norm.kind, eps=float(norm.eps),
        attn_scale=float(attn_scale) if attn_scale is not None else view.attn_scale,
        basis=view.basis,
        fingerprint=view.fingerprint, tokenizer=tk,
        _to_tokens=view.to_tokens if tk is not None else None,
        rope=rope_spec(view) if rotary else None,
        context=view.n_ctx,
        kv_group=torch.arange(view.n_heads) // group,
        reference=(None if not rotary else
                   "uniform" if weights is None else "frequency-weighted"),
        token_weights=weights,
        notes=_ROTARY_NOTES if rotary else (),
    )


def _token_weights(w: Any, vocab: int, dev: torch.device, dtype: torch.dtype) -> Tensor | None:
    if w is None:
        return None
    t = torch.as_tensor(np.asarray(w) if not isinstance(w, Tensor) else w).to(dev, dtype)
    if t.shape != (vocab,):
        raise ValueError(f"token_weights must have shape [{vocab}] (d_vocab), got "
                         f"{tuple(t.shape)}")
    if not bool(torch.isfinite(t).all()) or bool((t < 0).any()) or float(t.sum()) <= 0:
        raise ValueError("token_weights must be finite, non-negative and not all zero")
    return t


def detokenization_scores(
    model: Any,
    bigram_counts: BigramCounts | Tensor | np.ndarray | dict[tuple[int, int], int],
    *,
    verbose: bool = False,
) -> Float[Tensor, " n_heads"]:
    """Mean detokenization AUROC per layer-0 head (ref §8; subword-merge head score).

    Args:
        model: A TransformerLens model (or a :class:`Layer0Decomposition`).
        bigram_counts: See :meth:`Layer0Decomposition.detokenization_auroc`.
        verbose: Progress bar.

    Returns:
        ``[n_heads]`` mean over all suffixes (unseen suffixes count as 0, as in the paper).

    Examples:
        >>> import futurelens_tl as fl
        >>> from futurelens_tl.attention.layer0 import count_bigrams, detokenization_scores
        >>> model = fl.toy_model()
        >>> toks = model.to_tokens(["a cat sat", "the dog ran"])
        >>> detokenization_scores(model, count_bigrams(toks, model.cfg.d_vocab)).shape
        torch.Size([4])
    """
    dec = model if isinstance(model, Layer0Decomposition) else decompose_first_layer(model)
    auc = dec.detokenization_auroc(bigram_counts, verbose=verbose)
    return torch.nan_to_num(auc, nan=0.0).mean(-1).float()
