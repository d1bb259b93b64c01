"""Rotary (Llama-family) layer-0 decomposition (reference addendum "rotary models", §12.2-12.4).

Random HF models built from configs and booted on the TransformerLens bridge: Llama (perturbed
RMSNorm, GQA), Qwen2 (q/k biases), GPT-NeoX (partial rotary, LayerNorm with beta, biases), rope
scaling; identities to 1e-5 against ``blocks.0.attn.hook_pattern``, exact splits, a planted
previous-token head found by the positional kernel, and the AUROC against sklearn.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import boot_hf, make_word_tokenizer, native_bridge, perturb_norms

from futurelens_tl.attention.layer0 import (
    ROTARY_TERM_NAMES,
    count_bigrams,
    decompose_first_layer,
)
from futurelens_tl.model import as_view

PATTERN = "blocks.0.attn.hook_pattern"
SCORES = "blocks.0.attn.hook_attn_scores"
VOCAB = 61


def _llama(tmp_path, n_heads=4, n_kv=2, d_model=32, n_ctx=32, seed=0, **extra):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(num_hidden_layers=2, hidden_size=d_model, num_attention_heads=n_heads,
                      num_key_value_heads=n_kv, intermediate_size=2 * d_model, vocab_size=VOCAB,
                      max_position_embeddings=n_ctx, bos_token_id=0, eos_token_id=0,
                      pad_token_id=0, tie_word_embeddings=False, **extra)
    hf = LlamaForCausalLM(cfg)
    perturb_norms(hf, seed)
    return hf


def _qwen2(tmp_path, n_heads=4, n_kv=2, d_model=32, n_ctx=32, seed=0):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(seed)
    cfg = Qwen2Config(num_hidden_layers=2, hidden_size=d_model, num_attention_heads=n_heads,
                      num_key_value_heads=n_kv, intermediate_size=2 * d_model, vocab_size=VOCAB,
                      max_position_embeddings=n_ctx, bos_token_id=0, eos_token_id=0,
                      pad_token_id=0, tie_word_embeddings=False)
    hf = Qwen2ForCausalLM(cfg)
    perturb_norms(hf, seed)  # also perturbs the q/k/v biases
    return hf


def _neox(tmp_path, seed=0):
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    torch.manual_seed(seed)
    cfg = GPTNeoXConfig(num_hidden_layers=2, hidden_size=32, num_attention_heads=2,
                        intermediate_size=64, vocab_size=VOCAB, max_position_embeddings=32,
                        rotary_pct=0.25, bos_token_id=0, eos_token_id=0,
                        tie_word_embeddings=False)
    hf = GPTNeoXForCausalLM(cfg)
    perturb_norms(hf, seed)
    return hf


def _boot(hf, tmp_path, name):
    tok = make_word_tokenizer(tmp_path, VOCAB)
    return boot_hf(hf, tok, tmp_path / name)


def _random_tokens(view, batch=3, n=None, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, view.d_vocab, (batch, n or view.n_ctx), generator=g)


def _check_identity(model, dec=None):
    view = as_view(model)
    dec = dec or decompose_first_layer(model)
    tok = _random_tokens(view)
    _, cache = view.run_with_cache(tok, [PATTERN, SCORES])
    err = (dec.attention(tok) - cache[PATTERN]).abs().max().item()
    assert err < 1e-5, err
    # rotary terms sum to the raw score itself (key biases do not cancel under RoPE)
    n = tok.shape[1]
    mask = torch.ones(n, n, dtype=torch.bool).tril()
    raw = cache[SCORES]
    if bool((raw[..., mask] >= 0).all()) and torch.allclose(raw.sum(-1), torch.ones(1)):
        return dec, tok  # pragma: no cover - a bridge exposing the pattern under attn_scores
    total = dec.terms(tok).sum(1) / dec.attn_scale
    assert (total - raw)[..., mask].abs().max().item() < 1e-4
    return dec, tok


MODELS = {
    "llama_gqa": lambda p: _llama(p),
    "llama_mha": lambda p: _llama(p, n_kv=4),
    "qwen2_bias": lambda p: _qwen2(p),
    "neox_partial": lambda p: _neox(p),
}


@pytest.mark.parametrize("kind", list(MODELS))
def test_rotary_identity_against_hook_pattern(kind, tmp_path):
    """softmax(sum of rotary terms / sqrt(d')) == hook_pattern to 1e-5 (addendum)."""
    model = _boot(MODELS[kind](tmp_path), tmp_path, kind)
    dec, tok = _check_identity(model)
    assert dec.positions == "rotary" and dec.term_names == ROTARY_TERM_NAMES
    assert dec.W_pos is None and dec.reference == "uniform" and dec.notes
    view = as_view(model)
    assert dec.kv_group.tolist() == (torch.arange(view.n_heads)
                                     // (view.n_heads // view.n_kv_heads)).tolist()
    if kind == "neox_partial":
        assert dec.rope.rotary_dim == dec.d_head // 4 and dec.norm == "LN"
        assert dec.rope.pass_dims.numel() == dec.d_head - dec.rope.rotary_dim
    if kind == "qwen2_bias":
        assert dec.b_Q.abs().max() > 1e-3 and dec.b_K.abs().max() > 1e-3
    # exact splits: the four terms and the frequency split give the same score
    t = dec.terms(tok[0])
    f = dec.frequency_terms(tok[0])
    assert f.shape[0] == dec.rope.theta.numel() + 1
    assert torch.allclose(f.sum(0), t.sum(0), atol=1e-4)
    if kind != "neox_partial":
        assert f[-1].abs().max() == 0  # full rotary: no pass-through block
    # the "pp" term is the positional kernel f(i - j), the same for every query position
    kern = dec.positional_kernel()
    i = torch.arange(tok.shape[1])
    d = (i[:, None] - i[None, :]).clamp_min(0)
    mask = torch.ones_like(d, dtype=torch.bool).tril()
    pp = t[ROTARY_TERM_NAMES.index("pp")]
    assert torch.allclose(pp[:, mask], kern[:, d][:, mask], atol=1e-4)


def test_rotary_rope_scaling_linear(tmp_path):
    """A rope scaling the config declares is read from the model (inv_freq), identity holds."""
    try:
        hf = _llama(tmp_path, rope_scaling={"rope_type": "linear", "factor": 4.0})
    except Exception as err:  # pragma: no cover - transformers without this config key
        pytest.skip(f"rope_scaling not accepted: {err}")
    model = _boot(hf, tmp_path, "llama_linear")
    dec, _ = _check_identity(model)
    plain = decompose_first_layer(_boot(_llama(tmp_path), tmp_path, "llama_plain"))
    assert torch.allclose(dec.rope.theta, plain.rope.theta / 4.0, rtol=1e-6)


def test_native_rotary_bridge():
    """TransformerLens' own rotary (boot_native, rotary_cos/sin tables or its HF module)."""
    try:
        model = native_bridge(pos="rotary", normalization="RMS", n_kv_heads=2)
    except Exception as err:  # pragma: no cover
        pytest.skip(f"no native rotary bridge: {err}")
    perturb_norms(model)
    _check_identity(model)


def test_frequency_weighted_reference_keeps_the_sum(tmp_path):
    model = _boot(_qwen2(tmp_path), tmp_path, "qwen2")
    w = torch.arange(1, VOCAB + 1, dtype=torch.float32)
    uni = decompose_first_layer(model)
    wtd = decompose_first_layer(model, token_weights=w)
    assert wtd.reference == "frequency-weighted"
    tok = _random_tokens(as_view(model), batch=1, n=12)[0]
    assert torch.allclose(uni.terms(tok).sum(0), wtd.terms(tok).sum(0), atol=1e-4)
    assert not torch.allclose(uni.positional_kernel(), wtd.positional_kernel(), atol=1e-3)
    with pytest.raises(ValueError, match="token_weights"):
        decompose_first_layer(model, token_weights=torch.ones(3))


def _plant_prev_token_head(hf, amp=3.0):
    """Qwen2 head 0: token-free q/k, biases chosen so b_Q R(D) b_K^T peaks at D = 1."""
    attn = hf.model.layers[0].self_attn
    dh = hf.config.hidden_size // hf.config.num_attention_heads
    half = dh // 2
    theta = 1.0 / (hf.config.rope_theta ** (torch.arange(half, dtype=torch.float64) * 2 / dh)) \
        if hasattr(hf.config, "rope_theta") else None
    if theta is None:
        theta = 1.0 / (10000.0 ** (torch.arange(half, dtype=torch.float64) * 2 / dh))
    with torch.no_grad():
        attn.q_proj.weight[:dh] = 0
        attn.k_proj.weight[:dh] = 0
        bq = torch.zeros(dh, dtype=torch.float64)
        bk = torch.zeros(dh, dtype=torch.float64)
        bq[:half] = amp
        bk[:half] = amp * torch.cos(theta)
        bk[half:] = amp * torch.sin(theta)
        attn.q_proj.bias[:dh] = bq.float()
        attn.k_proj.bias[:dh] = bk.float()


def test_planted_previous_token_rotary_head(tmp_path):
    hf = _qwen2(tmp_path, n_heads=4, n_kv=4, d_model=64)
    _plant_prev_token_head(hf)
    model = _boot(hf, tmp_path, "qwen2_prev")
    dec, _ = _check_identity(model)
    kern = dec.positional_kernel()
    assert int(kern[0].argmax()) == 1  # the positional kernel finds the planted offset
    prof = dec.position_terms_by_distance(max_distance=10, query_pos=[20, 31])
    h0 = prof[(prof["head"] == 0) & (prof.query_pos == 20)].set_index("distance").logit
    assert h0.idxmax() == 1 and h0[1] > 0
    df = dec.to_dataframe(20)
    assert int(df.pos_attn_prev.idxmax()) == 0 and df.loc[0, "kernel_prev"] > 0
    # and the model really attends to the previous token there
    view = as_view(model)
    tok = _random_tokens(view, batch=4, n=24)
    _, cache = view.run_with_cache(tok, [PATTERN])
    obs = cache[PATTERN][:, 0, 20].mean(0)
    assert int(obs.argmax()) == 19
    pred = dec.positional_attention(20)[0]
    assert int(pred.argmax()) == 19 and abs(float(pred[19] - obs[19])) < 1e-4


def test_rotary_tokens_auroc_and_views(tmp_path):
    from sklearn.metrics import roc_auc_score

    model = _boot(_llama(tmp_path), tmp_path, "llama")
    dec = decompose_first_layer(model)
    view = as_view(model)
    # token scores are the exact Delta = 1 logit minus nothing: compare with the terms
    tok = torch.tensor([5, 9])
    t = dec.terms(tok).sum(0)[:, 1, 0]  # query token 9 at i=1 attending to 5 at j=0
    s = torch.stack([dec.token_scores(9, h)[5] for h in range(dec.n_heads)])
    assert torch.allclose(s, t, atol=1e-4)  # Llama: no biases, so T_ee(Delta=1) is the score
    top = dec.top_prefixes(9, head=1, k=4)
    assert float(top.score.iloc[0]) == pytest.approx(float(dec.token_scores(9, 1).max()))
    g = torch.Generator().manual_seed(0)
    docs = [torch.randint(0, VOCAB, (40,), generator=g) for _ in range(30)]
    bc = count_bigrams(docs, VOCAB, verbose=False)
    fast = dec.detokenization_auroc(bc, verbose=False)
    ref = dec.detokenization_auroc(bc, method="sklearn", verbose=False)
    assert torch.allclose(fast, ref, atol=1e-12, equal_nan=True)
    s_row = dec.token_scores(7, 2).double().numpy()
    y = np.zeros(VOCAB)
    wt = np.ones(VOCAB)
    for u in range(VOCAB):
        c = bc.get(u, 7)
        y[u], wt[u] = (1, c) if c else (0, 1)
    assert float(fast[2, 7]) == pytest.approx(roc_auc_score(y, s_row, sample_weight=wt), abs=1e-12)
    table = dec.detokenization_table(bc, auroc=fast)
    assert (table.ci_lo <= table.mean_auroc_seen).all() and (table.chance_seen == 0.5).all()
    assert table.chance_all.iloc[0] == pytest.approx(0.5 * table.n_seen.iloc[0] / VOCAB)
    # what has no analogue is said, not silently dropped
    with pytest.raises(ValueError, match="per-token"):
        dec.sigma_table()
    with pytest.raises(ValueError, match="sigma='mean'"):
        dec.positional_attention(5, sigma="max")
    assert torch.allclose(dec.token_sigma(),
                          (dec.W_E.pow(2).mean(-1) + dec.eps).sqrt())
    html = dec._repr_html_()
    assert "rotary" in html and "per-token" in html and "data:image/png;base64," in html
    contrib = dec.contributions(_random_tokens(view, batch=2, n=10), verbose=False)
    assert contrib.term_names == ROTARY_TERM_NAMES
    assert torch.allclose(contrib.integrated.sum(0), contrib.total, atol=1e-6)
    import matplotlib.pyplot as plt

    for fig in (dec.plot_position_heatmap(10), dec.plot_positional_attention(10),
                dec.plot_position_terms(10, heads=[0]), dec.plot_position_profile([10, 20], 8)):
        plt.close(fig)
    assert math.isfinite(float(dec.bias_token_scores().abs().max()))
