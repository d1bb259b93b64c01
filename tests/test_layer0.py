"""Tests for the weight-only layer-0 decomposition (reference layer0-decomposition.md).

Identities against TransformerLens' own activations on every backend, known answers on planted
models, closed forms against sklearn/numpy, and clear errors on bad input.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import (
    boot_hf,
    hf_gpt2_bridge,
    hooked_model,
    make_word_tokenizer,
    native_bridge,
    perturb_norms,
    tl_major,
)

import futurelens_tl as fl
from futurelens_tl.attention.layer0 import (
    TERM_NAMES,
    BigramCounts,
    _percentile_rows,
    _weighted_auroc_csr,
    _weighted_auroc_rows,
    count_bigrams,
    decompose_first_layer,
    detokenization_scores,
)
from futurelens_tl.model import as_view

PATTERN = "blocks.0.attn.hook_pattern"
SCORES = "blocks.0.attn.hook_attn_scores"
SCALE = "blocks.0.ln1.hook_scale"


def _hooked_processed():
    model = hooked_model()
    if not hasattr(model, "process_weights_"):
        pytest.skip("this HookedTransformer has no process_weights_")
    model.process_weights_(fold_ln=True, center_writing_weights=True, center_unembed=True)
    return model


def _make(kind, tmp_path):
    if kind == "native":
        m = native_bridge()
        perturb_norms(m)
        return m
    if kind == "native_rms":
        m = native_bridge(normalization="RMS")
        perturb_norms(m)
        return m
    if kind == "native_gqa":
        m = native_bridge(n_kv_heads=2)
        perturb_norms(m)
        return m
    if kind == "hf_raw":
        return hf_gpt2_bridge(tmp_path)
    if kind == "hf_compat":
        m = hf_gpt2_bridge(tmp_path)
        m.enable_compatibility_mode()
        return m
    if kind == "hooked":
        return hooked_model()
    if kind == "hooked_processed":
        return _hooked_processed()
    if kind == "hooked_rms":
        return hooked_model(normalization="RMS")
    raise AssertionError(kind)


BACKENDS = ["native", "native_rms", "native_gqa", "hf_raw", "hf_compat", "hooked",
            "hooked_processed", "hooked_rms"]


@pytest.mark.parametrize("kind", BACKENDS)
def test_identity_pattern_and_sigma(kind, tmp_path):
    """softmax(sum of six terms / sqrt(d')) == hook_pattern to 1e-5 (ref §4, §9.1)."""
    model = _make(kind, tmp_path)
    view = as_view(model)
    dec = decompose_first_layer(model)
    assert dec.basis == view.basis
    if kind in ("hf_compat", "hooked_processed"):
        assert dec.basis == "processed"
    if kind in ("hf_raw", "native"):
        assert dec.basis == "raw"
        # non-trivial LN gamma/beta and Q biases: the folded query bias differs from b_Q
        assert not torch.allclose(dec.b_Q, view.b_Q[0].detach(), atol=1e-3)
    g = torch.Generator().manual_seed(1)
    tok = torch.randint(0, view.d_vocab, (3, view.n_ctx), generator=g)
    _, cache = view.run_with_cache(tok, [PATTERN, SCALE])
    att = dec.attention(tok)
    err = (att - cache[PATTERN]).abs().max().item()
    assert err < 1e-5, err
    # one sequence -> [head, q, k]; [term, head, q, k]
    assert dec.terms(tok[0]).shape == (6, view.n_heads, view.n_ctx, view.n_ctx)
    assert torch.allclose(dec.attention(tok[0]), att[0])
    # sigma table consistency: Sigma[i, t_i] = hook_scale (ref §5, §10)
    table = dec.sigma_table(torch.float32)
    sig = table[torch.arange(view.n_ctx)[None], tok]
    assert torch.allclose(sig, cache[SCALE][..., 0], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kind", ["native", "hf_raw", "hf_compat", "hooked", "hooked_processed"])
def test_scores_differ_by_query_only_terms(kind, tmp_path):
    """Raw scores minus (six-term sum / sqrt(d')) is constant along keys (ref §3, §10)."""
    model = _make(kind, tmp_path)
    view = as_view(model)
    dec = decompose_first_layer(model)
    tok = torch.randint(0, view.d_vocab, (2, 12), generator=torch.Generator().manual_seed(3))
    _, cache = view.run_with_cache(tok, [SCORES, "blocks.0.attn.hook_q", "blocks.0.attn.hook_k"])
    scores = cache[SCORES]
    if kind == "native" or not bool((scores < 0).any()):
        # TL 4.3 native bridges expose the softmaxed pattern under hook_attn_scores;
        # rebuild raw scores from hook_q / hook_k instead (also checks the i-only terms).
        q, k = cache["blocks.0.attn.hook_q"], cache["blocks.0.attn.hook_k"]
        if q.ndim == 4 and q.shape[1] == tok.shape[1]:  # [b, pos, head, d_head]
            q, k = q.transpose(1, 2), k.transpose(1, 2)
        if k.shape[1] != q.shape[1]:
            k = k.repeat_interleave(q.shape[1] // k.shape[1], dim=1)
        scores = q @ k.transpose(-1, -2) / dec.attn_scale
    diff = scores - dec.terms(tok).sum(1) / dec.attn_scale
    n = tok.shape[1]
    mask = torch.ones(n, n, dtype=torch.bool).tril()
    hi = diff.masked_fill(~mask, -1e30).amax(-1)
    lo = diff.masked_fill(~mask, 1e30).amin(-1)
    assert (hi - lo).abs().max().item() < 1e-5
    # and the difference is not trivially zero when Q/K biases are present (i-only terms exist)
    if kind in ("hf_raw", "native"):
        assert diff.masked_fill(~mask, 0).abs().max().item() > 1e-4


def test_gpt_neo_no_attn_scale_no_qk_bias(tmp_path):
    """GPT-Neo: no q/k bias but LN beta (so T_e, T_p exist) and no 1/sqrt(d') (ref §12.1)."""
    from transformers import GPTNeoConfig, GPTNeoForCausalLM

    torch.manual_seed(0)
    tok = make_word_tokenizer(tmp_path, 61)
    cfg = GPTNeoConfig(vocab_size=61, max_position_embeddings=16, hidden_size=32, num_layers=2,
                       num_heads=4, attention_types=[[["global", "local"], 1]], window_size=8,
                       intermediate_size=64, bos_token_id=0, eos_token_id=0)
    hf = GPTNeoForCausalLM(cfg)
    perturb_norms(hf)
    assert hf.transformer.h[0].attn.attention.q_proj.bias is None
    model = boot_hf(hf, tok, tmp_path / "neo")
    view = as_view(model)
    dec = decompose_first_layer(model)
    assert dec.attn_scale == 1.0
    x = torch.randint(0, 61, (2, 16), generator=torch.Generator().manual_seed(0))
    _, cache = view.run_with_cache(x, [PATTERN])
    assert (dec.attention(x) - cache[PATTERN]).abs().max().item() < 1e-5
    assert dec.terms(x[0])[TERM_NAMES.index("e")].abs().max() > 0  # beta W_Q != 0
    with pytest.raises(ValueError, match="attn_scale"):
        decompose_first_layer(model, attn_scale=0.0)
    assert decompose_first_layer(model, attn_scale=2.0).attn_scale == 2.0


def test_no_bias_model_has_zero_bias_terms(tmp_path):
    """RMSNorm without biases: b^QK = 0 so T_e = T_p = 0 (ref §12.1)."""
    model = native_bridge(normalization="RMS")
    dec = decompose_first_layer(model)
    assert dec.norm == "RMS"
    dec.b_Q.zero_()  # the native bridge has Q biases; emulate a bias-free model's fold
    tok = torch.randint(0, 61, (8,))
    t = dec.terms(tok)
    assert t[TERM_NAMES.index("e")].abs().max() == 0
    assert t[TERM_NAMES.index("p")].abs().max() == 0


def test_alibi_raises_clear_error():
    try:
        model = native_bridge(pos="alibi")
    except Exception as err:  # pragma: no cover - TL without a native ALiBi config
        pytest.skip(f"no native ALiBi bridge: {err}")
    with pytest.raises(NotImplementedError, match="alibi"):
        decompose_first_layer(model)


def test_non_finite_weights_raise():
    """Issue 16: NaN weights would rank NaN first in top_prefixes; refuse them up front."""
    model = native_bridge()
    with torch.no_grad():
        as_view(model).W_E[3, 0] = float("nan")
    with pytest.raises(ValueError, match="non-finite"):
        decompose_first_layer(model)


def test_grouped_terms_sum_to_total():
    model = native_bridge()
    perturb_norms(model)
    dec = decompose_first_layer(model)
    tok = torch.randint(0, 61, (10,))
    groups = dec.grouped_terms(tok)
    assert set(groups) == {"position", "token", "mixed"}
    assert torch.allclose(sum(groups.values()), dec.terms(tok).sum(0), atol=1e-5)
    pp = dec.terms(tok)[TERM_NAMES.index("pp")]
    assert torch.allclose(groups["position"] - pp, dec.terms(tok)[TERM_NAMES.index("p")],
                          atol=1e-5)


def test_qk_objects_match_definitions():
    model = native_bridge()
    perturb_norms(model)
    dec = decompose_first_layer(model, dtype=torch.float64)
    view = as_view(model)
    ln = view.ln1(0)
    c = torch.eye(32, dtype=torch.float64) - 1.0 / 32
    wq = c @ torch.diag(ln.w.double()) @ view.W_Q[0, 1].double()
    wk = c @ torch.diag(ln.w.double()) @ view.W_K[0, 1].double()
    assert torch.allclose(dec.QK[1].AB, wq @ wk.T, atol=1e-10)
    bq = ln.b.double() @ view.W_Q[0, 1].double() + view.b_Q[0, 1].double()
    assert torch.allclose(dec.b_QK[1], bq @ wk.T, atol=1e-10)


# ------------------------------------------------------------------ sigma statistics (§6.3)
def test_sigma_stats_match_numpy():
    model = native_bridge(d_vocab=97, n_ctx=20)
    perturb_norms(model)
    dec = decompose_first_layer(model)
    st = dec.sigma_stats(chunk_size=7)
    table = dec.sigma_table(torch.float64).numpy()
    r = 1.0 / table
    np.testing.assert_allclose(st["r_mean"].numpy(), r.mean(1), rtol=1e-5)
    np.testing.assert_allclose(st["r_lo"].numpy(), np.percentile(r, 2.5, axis=1), rtol=1e-5)
    np.testing.assert_allclose(st["r_hi"].numpy(), np.percentile(r, 97.5, axis=1), rtol=1e-5)
    np.testing.assert_allclose(st["sigma_max"].numpy(), table.max(1), rtol=1e-5)
    np.testing.assert_allclose(st["sigma_bar"].numpy(), table.mean(0), rtol=1e-5)
    np.testing.assert_allclose(st["r_bar"].numpy(), r.mean(0), rtol=1e-5)
    bt = dec.bias_token_scores()
    ref = (dec.W_E.double() @ dec.b_QK[1].double()).numpy() * r.mean(0)
    np.testing.assert_allclose(bt[1].numpy(), ref, rtol=1e-4, atol=1e-6)
    assert dec.sigma_table().dtype == torch.float16
    for n in (1, 2, 7, 1001):
        x = torch.randn(5, n, dtype=torch.float64)
        for q in (0.0, 2.5, 50.0, 97.5, 100.0):
            np.testing.assert_allclose(_percentile_rows(x, q).numpy(),
                                       np.percentile(x.numpy(), q, axis=1), rtol=1e-12)


def test_position_terms_band_matches_brute_force():
    """Band over key tokens (mean, 2.5/97.5 %) equals brute force over the sigma table."""
    model = native_bridge(d_vocab=53, n_ctx=16)
    perturb_norms(model)
    dec = decompose_first_layer(model, dtype=torch.float64)
    i = 11
    df = dec.position_terms(i, sigma="max")
    table = dec.sigma_table(torch.float64)
    p = dec.W_pos
    sig_i = table[i].max()
    for h in range(dec.n_heads):
        a_pp = (p[i] @ dec.QK[h].AB @ p[: i + 1].T) / sig_i
        a_p = dec.b_QK[h] @ p[: i + 1].T
        vals = (a_pp + a_p)[:, None] / table[: i + 1]  # [j, v]
        got = df[(df["head"] == h) & (df.term == "pp+p")].sort_values("key_pos")
        np.testing.assert_allclose(got["mean"], vals.mean(1).numpy(), rtol=1e-8, atol=1e-10)
        np.testing.assert_allclose(got["lo"], np.percentile(vals.numpy(), 2.5, axis=1),
                                   rtol=1e-8, atol=1e-10)
        np.testing.assert_allclose(got["hi"], np.percentile(vals.numpy(), 97.5, axis=1),
                                   rtol=1e-8, atol=1e-10)
    # alpha_hat (ref §6.1) from the same brute force
    att = dec.positional_attention(i, sigma="max")
    h = 2
    a = (p[i] @ dec.QK[h].AB @ p[: i + 1].T) / sig_i + dec.b_QK[h] @ p[: i + 1].T
    logits = (a[:, None] / table[: i + 1]).mean(1) / dec.attn_scale
    assert torch.allclose(att[h], torch.softmax(logits, -1), atol=1e-10)
    by_d = dec.position_terms_by_distance(max_distance=5)
    assert set(by_d.distance) == set(range(6)) and len(by_d) == 6 * dec.n_heads


# ------------------------------------------------------------------ planted models
def _planted_bridge(tmp_path, plant, *, n_ctx=16, vocab=61, d_model=32, n_heads=4, seed=0):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    tok = make_word_tokenizer(tmp_path, vocab)
    cfg = GPT2Config(n_layer=1, n_embd=d_model, n_head=n_heads, n_positions=n_ctx,
                     vocab_size=vocab, bos_token_id=0, eos_token_id=0)
    hf = GPT2LMHeadModel(cfg)
    with torch.no_grad():
        plant(hf)
    return boot_hf(hf, tok, tmp_path / "planted")


OMEGAS = (0.32304777, 1.20868579, 1.96664355, 2.73353899)


def _plant_prev_token(hf):
    """Head 0 attends to the previous position through W_pos alone (sinusoids + rotation)."""
    d, dh, n = 32, 8, hf.config.n_positions
    h = hf.transformer
    h.wte.weight.normal_(0, 0.01)
    pos = torch.arange(n, dtype=torch.float32)
    wpe = torch.zeros(n, d)
    for k in range(8):
        w = OMEGAS[k % 4] * (1 + 0.1 * (k // 4))
        wpe[:, 2 * k] = torch.cos(w * pos)
        wpe[:, 2 * k + 1] = torch.sin(w * pos)
    wpe[:, 16:] = -wpe[:, :16]  # every row has mean zero and the same norm
    h.wpe.weight.copy_(wpe)
    blk = h.h[0]
    blk.ln_1.weight.fill_(1.0)
    blk.ln_1.bias.zero_()
    w = blk.attn.c_attn.weight  # [d, 3d]: x @ W = [q | k | v]
    blk.attn.c_attn.bias.zero_()
    w[:, :dh].zero_()
    w[:, d:d + dh].zero_()
    g = 3.0
    for k in range(4):
        om = OMEGAS[k]
        c, s = math.cos(om), math.sin(om)
        # q = R(-om) [cos om i, sin om i] = [cos om(i-1), sin om(i-1)]
        w[2 * k, 2 * k] = g * c
        w[2 * k + 1, 2 * k] = g * s
        w[2 * k, 2 * k + 1] = -g * s
        w[2 * k + 1, 2 * k + 1] = g * c
        w[2 * k, d + 2 * k] = 1.0
        w[2 * k + 1, d + 2 * k + 1] = 1.0


def test_planted_previous_token_head(tmp_path):
    model = _planted_bridge(tmp_path, _plant_prev_token)
    view = as_view(model)
    dec = decompose_first_layer(model)
    n = view.n_ctx
    tok = torch.randint(0, view.d_vocab, (16, n), generator=torch.Generator().manual_seed(0))
    _, cache = view.run_with_cache(tok, [PATTERN])
    observed = cache[PATTERN][:, 0].mean(0)  # [q, k], head 0
    for i in range(1, n):
        pred = dec.positional_attention(i)[0]
        assert int(pred.argmax()) == i - 1, (i, pred)
        assert pred[i - 1] > 0.9
        assert int(observed[i, : i + 1].argmax()) == i - 1
        assert torch.allclose(pred, observed[i, : i + 1], atol=0.02)
    # T_pp at the query carries it: the heat map row peaks at i-1
    df = dec.position_terms(n - 1)
    pp = df[(df["head"] == 0) & (df.term == "pp")].set_index("key_pos")["mean"]
    assert int(pp.idxmax()) == n - 2
    dist = dec.position_terms_by_distance(max_distance=4)
    d0 = dist[dist["head"] == 0].set_index("distance")["logit"]
    assert int(d0.idxmax()) == 1
    frame = dec.to_dataframe(query_pos=n - 1)
    assert frame.loc[0, "pos_attn_prev"] > 0.9


SUFFIX, PREFIX = 7, 3


def _plant_token_pair(hf):
    """Head 1: suffix token SUFFIX attends to prefix token PREFIX (rank-1 QK on embeddings)."""
    d, dh = 32, 8
    h = hf.transformer
    h.wpe.weight.normal_(0, 0.02)
    e = h.wte.weight
    blk = h.h[0]
    blk.ln_1.weight.fill_(1.0)
    blk.ln_1.bias.zero_()
    w = blk.attn.c_attn.weight
    blk.attn.c_attn.bias.zero_()
    u = e[PREFIX] - e[PREFIX].mean()
    s = e[SUFFIX] - e[SUFFIX].mean()
    w[:, dh:2 * dh].zero_()
    w[:, d + dh:d + 2 * dh].zero_()
    w[:, dh] = 2.0 * s / s.norm()
    w[:, d + dh] = 2.0 * u / u.norm()


def test_planted_token_pair_top_prefix(tmp_path):
    model = _planted_bridge(tmp_path, _plant_token_pair)
    view = as_view(model)
    dec = decompose_first_layer(model)
    top = dec.top_prefixes(SUFFIX, head=1, k=5)
    assert list(top["rank"]) == [1, 2, 3, 4, 5]
    assert int(top.iloc[0]["prefix"]) == PREFIX
    assert top.iloc[0]["rendered"] == f"w{PREFIX - 1}w{SUFFIX - 1}"
    scores = dec.token_scores(SUFFIX, head=1)
    assert int(scores.argmax()) == PREFIX
    assert torch.allclose(torch.tensor(top["score"].to_numpy(), dtype=scores.dtype),
                          torch.topk(scores, 5).values)
    # several suffixes at once, in chunks, agree with one at a time
    many = dec.top_prefixes([SUFFIX, 1, 2, 9], head=1, k=3, chunk_size=2)
    assert many[many.suffix == SUFFIX]["prefix"].tolist() == top["prefix"][:3].tolist()
    # forward pass agrees: from SUFFIX, head 1 attends most to PREFIX
    g = torch.Generator().manual_seed(0)
    others = [t for t in range(view.d_vocab) if t not in (PREFIX, SUFFIX)]
    for trial in range(5):
        seq = torch.tensor(others)[torch.randperm(len(others), generator=g)[:12]]
        jb = int(torch.randint(0, 10, (1,), generator=g))
        seq[jb] = PREFIX
        seq[11] = SUFFIX
        _, cache = view.run_with_cache(seq[None], [PATTERN])
        assert int(cache[PATTERN][0, 1, 11].argmax()) == jb, trial
    # the AUROC for that suffix is 1 when PREFIX is the only observed prefix
    auc = dec.detokenization_auroc({(PREFIX, SUFFIX): 5}, heads=[1], verbose=False)
    assert auc[0, SUFFIX].item() == 1.0
    assert auc[0, PREFIX].item() == 0.0  # unseen suffix -> 0 (ref §8)


# ------------------------------------------------------------------ AUROC and bigrams (§8)
def test_weighted_auroc_matches_sklearn():
    from sklearn.metrics import roc_auc_score

    g = torch.Generator().manual_seed(0)
    rows, v = 6, 40
    scores = torch.randn(rows, v, generator=g).round(decimals=1)  # ties on purpose
    counts = torch.randint(0, 4, (rows, v), generator=g) * (torch.rand(rows, v, generator=g) < .3)
    counts[5] = 0  # unseen suffix
    got = _weighted_auroc_rows(scores, counts.double())
    r_i, u_i = np.nonzero(counts.numpy())
    bc = BigramCounts.from_pairs(u_i, r_i, counts.numpy()[r_i, u_i], v)
    got_csr = _weighted_auroc_csr(scores, bc, 0)
    assert torch.allclose(got, got_csr, atol=1e-12)
    for r in range(rows - 1):
        y = (counts[r] > 0).numpy()
        w = np.where(y, counts[r].numpy(), 1)
        ref = roc_auc_score(y, scores[r].numpy(), sample_weight=w)
        assert abs(got[r].item() - ref) < 1e-12
    assert got[5].item() == 0.0


def test_detokenization_auroc_end_to_end_vs_sklearn():
    from sklearn.metrics import roc_auc_score

    model = native_bridge(d_vocab=37)
    perturb_norms(model)
    dec = decompose_first_layer(model)
    g = torch.Generator().manual_seed(2)
    docs = [torch.randint(0, 37, (int(n),), generator=g) for n in torch.randint(2, 30, (40,))]
    bc = count_bigrams(docs, 37, verbose=False)
    dense = torch.zeros(37, 37, dtype=torch.long)
    for d in docs:
        for a, b in zip(d[:-1].tolist(), d[1:].tolist(), strict=True):
            dense[a, b] += 1
    assert torch.equal(bc.dense_rows(0, 37).long(), dense.T)
    auc = dec.detokenization_auroc(bc, chunk_size=10, verbose=False)
    for h in range(dec.n_heads):
        for s in (0, 5, 17, 36):
            y = (dense[:, s] > 0).numpy()
            scores = dec.token_scores(s, h).double().numpy()
            if y.any():
                ref = roc_auc_score(y, scores, sample_weight=np.where(y, dense[:, s].numpy(), 1))
            else:
                ref = 0.0
            assert abs(auc[h, s].item() - ref) < 1e-9
    # other input formats give the same answer
    auc2 = dec.detokenization_auroc(dense, verbose=False)
    auc3 = dec.detokenization_auroc(dense.to_sparse(), verbose=False)
    assert torch.equal(auc, auc2) and torch.equal(auc, auc3)
    means = detokenization_scores(dec, bc)
    assert torch.allclose(means, auc.mean(-1).float())
    assert torch.allclose(detokenization_scores(model, bc), means, atol=1e-6)


def test_count_bigrams_known_answer():
    c = count_bigrams([[1, 2, 1, 2], torch.tensor([2, 1]), np.array([3])], vocab_size=4,
                      verbose=False)
    assert (c.get(1, 2), c.get(2, 1), c.get(1, 1), c.get(3, 1)) == (2, 2, 0, 0)
    assert c.nnz == 2
    assert list(c.suffix_totals()) == [0, 2, 2, 0]
    with pytest.raises(ValueError, match="outside the vocabulary"):
        count_bigrams([[0, 5]], vocab_size=4)
    with pytest.raises(ValueError, match="vocab_size"):
        BigramCounts.from_pairs(np.array([0]), np.array([9]), np.array([1]), 4)


# ------------------------------------------------------------------ contributions (§7)
@pytest.mark.filterwarnings("ignore:reduction")
def test_contributions_loo_and_integrated():
    model = native_bridge()
    perturb_norms(model)
    dec = decompose_first_layer(model)
    g = torch.Generator().manual_seed(0)
    docs = [torch.randint(0, 61, (n,), generator=g).tolist() for n in (9, 14)]
    res = dec.contributions(docs, verbose=False)
    assert res.loo.shape == (6, 4, 14)
    assert res.n_docs.tolist() == [2] * 9 + [1] * 5
    # additive: sum over terms equals KL(softmax(z) || uniform) (ref §7)
    assert torch.allclose(res.integrated.sum(0), res.total, atol=1e-5)
    # LOO reference straight from torch.nn.functional.kl_div(reduction="mean"), no 1/sqrt(d')
    t = dec.terms(torch.tensor(docs[1])).double()
    z = t.sum(0)
    for i in (3, 13):
        for k in (0, 3, 5):
            full = torch.log_softmax(z[:, i, : i + 1], -1)
            abl = torch.log_softmax((z - t[k])[:, i, : i + 1], -1)
            ref = torch.nn.functional.kl_div(abl, full.exp(), reduction="none").sum(-1) / (i + 1)
            mean_ref = torch.stack([torch.nn.functional.kl_div(abl[h], full[h].exp(),
                                                               reduction="mean")
                                    for h in range(4)])
            assert torch.allclose(ref, mean_ref)
            if i >= 9:  # only the second document reaches it
                assert torch.allclose(res.loo[k, :, i], ref, atol=1e-10)
    # cancelled query-only constants get zero integrated share: shift a term row by a constant
    scaled = dec.contributions(docs, scaled=True, verbose=False)
    assert torch.allclose(scaled.integrated.sum(0), scaled.total, atol=1e-6)
    assert (scaled.total <= res.total + 1e-9).all()  # scaled logits are flatter
    df = res.to_dataframe()
    assert len(df) == 6 * 4 * 14 and set(df.term) == set(TERM_NAMES)
    summ = res.summary()
    assert len(summ) == 24


def test_contribution_query_constant_gets_zero_share():
    from futurelens_tl.attention.layer0._util import _gauss_legendre_01
    from futurelens_tl.attention.layer0.contrib import _contrib_one

    g = torch.Generator().manual_seed(0)
    t = torch.randn(3, 2, 7, 7, generator=g, dtype=torch.float64)
    t[2] = torch.randn(2, 7, 1, generator=g, dtype=torch.float64).expand(2, 7, 7)  # i-only
    nodes, w = _gauss_legendre_01(16, 4)
    loo, ig, tot = _contrib_one(t, nodes, w)
    assert torch.allclose(ig[2], torch.zeros(2, 7, dtype=torch.float64), atol=1e-12)
    assert torch.allclose(loo[2], torch.zeros(2, 7, dtype=torch.float64), atol=1e-12)
    assert torch.allclose(ig.sum(0), tot, atol=1e-8)


# ------------------------------------------------------------------ views and errors
def test_views_offline_html(tmp_path):
    model = hf_gpt2_bridge(tmp_path)
    dec = decompose_first_layer(model)
    html = dec._repr_html_()
    assert "data:image/png;base64," in html and "http" not in html.replace("http-equiv", "")
    df = dec.to_dataframe()
    assert len(df) == 4 and (df.basis == "raw").all()
    assert abs(df.loc[0, "qk_frobenius"] - torch.linalg.matrix_norm(dec.QK[0].AB).item()) < 1e-4
    res = dec.contributions(torch.randint(0, 61, (2, 10)), verbose=False)
    h2 = res._repr_html_()
    assert "data:image/png;base64," in h2
    tbl = dec.top_prefix_table_html([5, 6], heads=[0, 1], k=3)
    assert "<table" in tbl and "#3" in tbl
    import matplotlib.pyplot as plt

    for fig in (dec.plot_position_heatmap(10), dec.plot_positional_attention(10),
                dec.plot_position_terms(10, heads=[0])):
        plt.close(fig)


def test_bad_input_errors():
    model = native_bridge()
    dec = decompose_first_layer(model)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        dec.terms(torch.tensor([0, 61]))
    with pytest.raises(ValueError, match="n_ctx"):
        dec.attention(torch.zeros(33, dtype=torch.long))
    with pytest.raises(ValueError, match="query_pos=32"):
        dec.positional_attention(32)
    with pytest.raises(ValueError, match="query_pos=-1"):
        dec.position_terms(-1)
    with pytest.raises(ValueError, match="sigma="):
        dec.positional_attention(3, sigma="median")
    with pytest.raises(ValueError, match="head=4"):
        dec.top_prefixes(3, head=4)
    with pytest.raises(ValueError, match="suffix"):
        dec.token_scores(99, head=0)
    with pytest.raises(ValueError, match="k="):
        dec.top_prefixes(3, head=0, k=0)
    with pytest.raises(TypeError, match="integer token ids|parameter 'tokens'"):
        dec.terms(torch.zeros(3))
    with pytest.raises(ValueError, match="vocab_size"):
        dec.detokenization_auroc(BigramCounts.from_pairs([1], [2], [1], 7), verbose=False)
    with pytest.raises(TypeError, match="bigram_counts"):
        dec.detokenization_auroc("counts", verbose=False)
    with pytest.raises(ValueError, match="dtype"):
        decompose_first_layer(model, dtype=torch.int64)
    with pytest.raises(TypeError):
        decompose_first_layer(object())


def test_no_norm_model_sigma_is_one():
    """A model without LayerNorm: sigma = 1 and the identity still holds (handled)."""
    if tl_major() >= 4:
        model = native_bridge(normalization=None)
    else:
        model = hooked_model(normalization=None)
    view = as_view(model)
    dec = decompose_first_layer(model)
    assert dec.norm is None
    assert torch.equal(dec.sigma_table(torch.float32), torch.ones(view.n_ctx, view.d_vocab))
    tok = torch.randint(0, view.d_vocab, (2, 12))
    _, cache = view.run_with_cache(tok, [PATTERN])
    assert (dec.attention(tok) - cache[PATTERN]).abs().max() < 1e-5


def test_public_export():
    assert fl.decompose_first_layer is decompose_first_layer
    assert fl.Layer0Decomposition.__name__ == "Layer0Decomposition"
