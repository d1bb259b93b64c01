"""Head-role scores: TransformerLens parity, planted heads, synthetic-pattern oracles, errors."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import hf_gpt2_bridge, native_bridge, perturb_norms

import futurelens_tl as fl
from futurelens_tl.attention import scores as S
from futurelens_tl.attention.datasets import (
    ProbeData,
    duplicate_tokens,
    haystack_prompts,
    ioi_prompts,
    ordinal_sequences,
    repeated_tokens,
)
from futurelens_tl.attention.heads import ROLES, tag_heads
from futurelens_tl.model import as_view

D_MODEL, N_CTX, D_VOCAB = 128, 31, 24


def _orth_rows(n: int, dim: int, g: torch.Generator) -> torch.Tensor:
    """``n`` orthogonal zero-mean rows of squared norm ``dim`` in ``dim`` dimensions."""
    x = torch.randn(dim, dim, generator=g, dtype=torch.float64)
    x = x - x.mean(0, keepdim=True)
    q, _ = torch.linalg.qr(x)
    rows = q[:, :n].T
    rows = rows - rows.mean(1, keepdim=True)
    rows = rows / rows.norm(dim=1, keepdim=True) * math.sqrt(dim)
    return rows.float()


def planted_model(kind: str = "roles", seed: int = 0):
    """A 2-layer native bridge whose layer-0 heads are set by hand.

    Positions live in dims 0..63 and tokens in dims 64..127, each part zero-mean with squared
    norm 64, so LayerNorm (gain 1, bias 0) is the identity on every embedding sum.

    kind="roles": L0H0 = previous-token head through positions (q_i . k_j = c [j = i-1]);
    L0H1 = duplicate-token head through token embeddings (+c for the same token, -2c for
    itself). kind="probe": L0H0 attends to position 1 and its value copies the token there
    (W_O = 0 so no other head sees it); L0H1 random. Layer 1: Q = K = 0 (uniform attention).
    """
    m = native_bridge(n_layers=2, d_model=D_MODEL, n_heads=2, d_vocab=D_VOCAB, n_ctx=N_CTX,
                      seed=seed)
    g = torch.Generator().manual_seed(seed)
    half = D_MODEL // 2
    P = _orth_rows(N_CTX, half, g)  # [n_ctx, 64]
    E = _orth_rows(D_VOCAB, half, g)  # [vocab, 64]
    dh = D_MODEL // 2
    params = dict(m.named_parameters())

    def p(name):
        hits = [v for k, v in params.items() if k.endswith(name)]
        assert len(hits) == 1, (name, [k for k in params if name.split(".")[0] in k])
        return hits[0]

    c = 40.0 * math.sqrt(D_MODEL // 2)  # survives the 1/sqrt(d_head) attention scale
    with torch.no_grad():
        p("tok_embed._original_component.weight").copy_(
            torch.cat([torch.zeros(D_VOCAB, half), E], 1))
        p("pos._original_component.weight").copy_(torch.cat([P, torch.zeros(N_CTX, half)], 1))
        for name, prm in params.items():
            if "ln" in name and name.endswith("weight"):
                prm.fill_(1.0)
            if "ln" in name and name.endswith("bias"):
                prm.zero_()
        pre = "layers.{l}._original_component.attn._original_component.{w}._original_component."
        wq = torch.zeros(D_MODEL, D_MODEL)  # nn.Linear layout [out = head*dh + e, in]
        wk = torch.zeros(D_MODEL, D_MODEL)
        bq = torch.zeros(D_MODEL)
        wv = p(pre.format(l=0, w="v") + "weight").clone()
        wo = p(pre.format(l=0, w="o") + "weight").clone()
        Pn = P / half  # x @ Pn.T -> one-hot position coordinates (P P^T = 64 I)
        En = E / half
        if kind == "roles":
            # head 0: q_i = c e_i, k_j = e_{j+1}
            for i in range(N_CTX - 1):
                wq[i, :half] = c * Pn[i]
                wk[i + 1, :half] = Pn[i]
            # head 1: token match (+c), self position (-2c)
            for t in range(D_VOCAB):
                wq[dh + t, half:] = c * En[t]
                wk[dh + t, half:] = En[t]
            for i in range(min(N_CTX, dh - D_VOCAB)):
                wq[dh + D_VOCAB + i, :half] = -2 * c * Pn[i]
                wk[dh + D_VOCAB + i, :half] = Pn[i]
            assert N_CTX <= dh - D_VOCAB + 8  # positions beyond the budget never occur below
        else:
            # head 0: constant query, key = position 1 only; value copies the token
            bq[0] = c
            wk[0, :half] = Pn[1]
            wv[:dh] = 0
            for t in range(D_VOCAB):
                wv[t, half:] = En[t]
            wo[:, :dh] = 0
            wq[dh:] = p(pre.format(l=0, w="q") + "weight")[dh:]
            wk[dh:] = p(pre.format(l=0, w="k") + "weight")[dh:]
        p(pre.format(l=0, w="q") + "weight").copy_(wq)
        p(pre.format(l=0, w="k") + "weight").copy_(wk)
        p(pre.format(l=0, w="q") + "bias").copy_(bq)
        p(pre.format(l=0, w="k") + "bias").zero_()
        p(pre.format(l=0, w="v") + "weight").copy_(wv)
        p(pre.format(l=0, w="o") + "weight").copy_(wo)
        p(pre.format(l=1, w="q") + "weight").zero_()
        p(pre.format(l=1, w="k") + "weight").zero_()
        p(pre.format(l=1, w="q") + "bias").zero_()
        p(pre.format(l=1, w="k") + "bias").zero_()
    return m


# ---------------------------------------------------------------- TransformerLens parity
def _word_prompts(n, length, seed):
    d = repeated_tokens(n, length, 60, seed=seed, bos=0, min_repeat=3)
    # the word tokenizer maps "w{k}" to id k + 1
    return d, [" ".join(f"w{int(t) - 1}" for t in row[1:]) for row in d.tokens]


@pytest.fixture(scope="module")
def word_model(tmp_path_factory):
    return hf_gpt2_bridge(tmp_path_factory.mktemp("heads"), n_ctx=32)


@pytest.mark.parametrize("opts", [
    {},
    {"exclude_bos": True, "exclude_current_token": True},
    {"error_measure": "abs"},
])
def test_detect_head_parity(word_model, opts):
    from transformer_lens.head_detector import detect_head

    model = word_model
    data, texts = _word_prompts(2, 21, seed=1)
    assert torch.equal(fl.ModelView(model).to_tokens(texts), data.tokens)
    ours = S.pattern_scores(fl.ModelView(model), data,
                            roles=["previous_token", "duplicate_token", "induction"],
                            tl_options=opts, verbose=False)
    key = "tl_" + opts.get("error_measure", "mul")
    for role, name in [("previous_token", "previous_token_head"),
                       ("duplicate_token", "duplicate_token_head"),
                       ("induction", "induction_head")]:
        theirs = detect_head(model, texts, name, **opts)
        torch.testing.assert_close(ours[role].extras[key], theirs.float(), atol=2e-6, rtol=1e-5)


def test_synthetic_pattern_oracles():
    """Reference §3.2 on [BOS] + r + r, |r| = 50: the 0.495 cap, BOS-dominated heads."""
    n = 50
    L = 2 * n + 1
    g = torch.Generator().manual_seed(0)
    r = torch.randperm(200, generator=g)[:n] + 1
    tokens = torch.cat([torch.zeros(1, dtype=torch.long), r, r])[None]
    perfect = torch.zeros(L, L)
    perfect[:, 0] = 1.0
    for i in range(n + 1, L):
        perfect[i] = 0
        perfect[i, i - n + 1] = 1.0
    bosdom = torch.zeros(L, L)
    bosdom[:, 0] = 1.0
    for i in range(n + 1, L):
        bosdom[i, 0] = 0.99
        bosdom[i, i - n + 1] = 0.01
    uniform = torch.ones(L, L).tril()
    uniform = uniform / uniform.sum(-1, keepdim=True)
    A = torch.stack([perfect, bosdom, uniform])[None]  # [1, 3, L, L]
    D = S.induction_mask(tokens)
    mul = S.tl_detection_score(A, D)[0]
    assert mul[0].item() == pytest.approx(50 / 101, abs=1e-6)
    ex = S.tl_detection_score(A, D, exclude_bos=True)[0]
    assert ex[0].item() == pytest.approx(1.0) and ex[1].item() == pytest.approx(1.0)
    assert mul[2].item() == pytest.approx(0.007, abs=1e-3)
    # corrected measure: eligible rows only
    elig = D.any(-1)[0]
    mass = (A[0] * D[0].float()).sum(-1)[:, elig].mean(-1)
    assert mass[0].item() == pytest.approx(1.0) and mass[1].item() == pytest.approx(0.01)


# ---------------------------------------------------------------- planted heads
def test_planted_heads_patterns():
    m = planted_model("roles")
    view = fl.ModelView(m)
    data = repeated_tokens(16, 30, D_VOCAB, seed=0)
    _, cache = view.run_with_cache(data.tokens, [view.attn_hook(0, "pattern")])
    a = cache[view.attn_hook(0, "pattern")]
    assert a[:, 0].diagonal(-1, -2, -1).mean() > 0.95  # the planted previous-token head


def test_planted_heads_tagged_exactly():
    m = planted_model("roles")
    tags = tag_heads(m, roles=["previous_token", "duplicate_token", "induction", "positional",
                               "attention_sink"], n_examples=24, seq_len=30, verbose=False)
    assert tags.tagged("previous_token") == [(0, 0)]
    assert tags.tagged("duplicate_token") == [(0, 1)]
    assert tags.score("previous_token")[0, 0] > 0.95
    assert tags.score("duplicate_token")[0, 1] > 0.9
    assert tags.tagged("induction") == []
    assert (0, 0) in tags.tagged("positional")
    assert tags.extras["positional"]["best_offset"][0, 0].item() == -1
    assert (0, 1) not in tags.tagged("positional")
    df = tags.to_dataframe()
    assert set(df.columns) >= {"layer", "head", "role", "stage", "score", "threshold", "tagged",
                               "source"}
    row = df[(df.role == "previous_token") & (df.layer == 0) & (df["head"] == 0)].iloc[0]
    assert row.tagged and row.stage == "in-context identification" and "ARENA" in row.source
    assert tags.dominant()[0][0] in ("previous_token", "positional")
    assert tags.dominant()[0][1] == "duplicate_token"
    assert tags.evidence["previous_token"]["dataset"] == "repeated_tokens"
    assert tags.evidence["previous_token"]["n_examples"] == 24
    assert tags.evidence["previous_token"]["seed"] == 0


def test_save_load_round_trip(tmp_path):
    m = planted_model("roles")
    tags = tag_heads(m, roles=["previous_token", "induction", "copying"], n_examples=8,
                     seq_len=30, thresholds={"copying": 0.2}, verbose=False)
    path = tmp_path / "tags.safetensors"
    tags.save(str(path))
    back = type(tags).load(str(path))
    assert torch.equal(back.scores, tags.scores) and back.roles == tags.roles
    assert back.thresholds == tags.thresholds and back.evidence == tags.evidence
    assert torch.equal(back.extras["induction"]["tl_mul"], tags.extras["induction"]["tl_mul"])
    assert back.threshold_sources["copying"] == "user"
    assert back.to_dataframe().equals(tags.to_dataframe())


def test_one_forward_per_batch_for_pattern_roles():
    from futurelens_tl.data import FORWARD_COUNTER

    m = planted_model("roles")
    before = FORWARD_COUNTER.passes
    tags = tag_heads(m, roles=["previous_token", "duplicate_token", "induction", "positional",
                               "attention_sink", "current_token"], n_examples=20,
                     batch_size=8, seq_len=30, verbose=False)
    assert FORWARD_COUNTER.passes - before == 3 + 1  # ceil(20/8) batches + the pattern check
    assert tags.n_forwards == 4


def test_show_offline_and_hover():
    m = planted_model("roles")
    tags = tag_heads(m, roles=["previous_token", "duplicate_token"], n_examples=8, seq_len=30,
                     verbose=False)
    html = tags._repr_html_()
    assert "previous_token = 0.9" in html or "previous_token = 1.000" in html
    assert "http://" not in html and "https://" not in html and "<script src" not in html
    try:
        from futurelens_tl.viz.html import assert_offline
    except ImportError:  # pragma: no cover
        assert_offline = None
    if assert_offline is not None:
        assert_offline(html)
    import matplotlib

    matplotlib.use("Agg")
    fig = tags.plot()
    assert fig.axes[0].get_xlabel() == "head"
    av = tags.attention_view(m, 0, 0, repeated_tokens(1, 12, D_VOCAB, seed=0).tokens)
    assert "cdn" not in av.data.lower() and "unpkg" not in av.data.lower()
    if assert_offline is not None:
        assert_offline(av.data)


# ---------------------------------------------------------------- weights / causal scores
def test_copying_score_matches_eigenvalues():
    """The cyclic d_head product has the eigenvalues of the full |V| x |V| circuit (§4.1)."""
    m = native_bridge(n_layers=1, d_model=16, n_heads=2, d_vocab=20)
    perturb_norms(m)
    v = fl.ModelView(m)
    rs = S.copying_scores(v, baseline_samples=0)
    x = v.W_E.double()
    x = x - x.mean(-1, keepdim=True)
    x = x / (x.pow(2).mean(-1, keepdim=True) + v.ln1(0).eps).sqrt() * v.ln1(0).w.double()
    u = v.W_U.double() * v.ln_final.w.double()[:, None]
    u = u - u.mean(0, keepdim=True)
    full = x @ v.W_V[0, 1].double() @ v.W_O[0, 1].double() @ u  # [V, V]
    ev = torch.linalg.eigvals(full)
    ev = ev[ev.abs() > 1e-8 * ev.abs().max()]
    expect = ev.real.sum() / ev.abs().sum()
    assert rs.scores[0, 1].item() == pytest.approx(expect.item(), abs=1e-4)


def test_effective_embeddings_hook_matches_manual():
    m = native_bridge(n_layers=2, d_model=32, n_heads=4, d_vocab=30)
    v = fl.ModelView(m)
    ids = torch.tensor([3, 7, 11])
    wee = S.effective_embeddings(v, ids)
    # manual: resid_pre = W_E[t]; attention output = b_O only (z zeroed); then MLP0
    names = ["blocks.0.hook_resid_post", "blocks.0.hook_resid_pre"]
    with torch.no_grad():
        _, cache = v.run_with_cache(
            ids[:, None], names,
        )
    assert wee.shape == (3, 32)
    assert not torch.allclose(wee, cache["blocks.0.hook_resid_post"][:, 0])  # ablation acts
    # the ablated attention contributes exactly b_O, the position contributes nothing
    mlp_in = v.W_E[ids] + v.b_O[0]
    blk = m.blocks[0]
    with torch.no_grad():
        expect = mlp_in + blk.mlp(blk.ln2(mlp_in[:, None]))[:, 0]
    torch.testing.assert_close(wee, expect, atol=1e-4, rtol=1e-4)


def test_successor_planted_shift():
    """A one-layer model whose head maps token t to t+1 in the unembedding scores 1.0."""
    V = 12
    m = native_bridge(n_layers=1, d_model=32, n_heads=2, d_vocab=V)
    v = fl.ModelView(m)
    fam = [[1, 2, 3, 4, 5, 6]]
    rs_random = S.successor_scores(v, fam)
    assert 0 <= rs_random.scores.max() <= 1
    assert rs_random.evidence["n_examples"] == 5
    with pytest.raises(ValueError, match="ordinal families"):
        S.successor_scores(v, [[1, 2]])


def test_datasets_deterministic_and_varied():
    a = repeated_tokens(8, 30, 100, seed=3)
    b = repeated_tokens(8, 30, 100, seed=3)
    assert torch.equal(a.tokens, b.tokens)
    assert len(set(a.meta["repeat_len"].tolist())) > 1  # varied offsets (reference §7a)
    for row, n, p in zip(a.tokens, a.meta["repeat_len"], a.meta["prefix_len"]):
        n, p = int(n), int(p)
        assert torch.equal(row[1 + p:1 + p + n], row[1 + p + n:])
    assert not torch.equal(a.tokens, repeated_tokens(8, 30, 100, seed=4).tokens)
    four = repeated_tokens(3, 41, 200, seed=0, n_repeats=4, min_repeat=10, max_repeat=10)
    assert torch.equal(four.tokens[:, 1:11], four.tokens[:, 31:41])


def test_induction_score_is_prefix_matching_on_four_repeats():
    """PM(h) = 1/(3L) sum_{j>L} sum_k A[j, kL + (j mod L) + 1] (reference §3.5, quirk fixed)."""
    Lr = 10
    d = repeated_tokens(1, 4 * Lr + 1, 200, seed=0, n_repeats=4, min_repeat=Lr, max_repeat=Lr)
    n = 4 * Lr + 1
    g = torch.Generator().manual_seed(0)
    A = torch.rand(1, 1, n, n, generator=g).tril()
    A = A / A.sum(-1, keepdim=True)
    pm = 0.0
    for j in range(Lr + 1, n):  # queries of repeats 2-4 (1-based positions after BOS)
        jj = j - 1  # 0-based index inside r-sequence
        for k in range(jj // Lr):
            pm += float(A[0, 0, j, k * Lr + (jj % Lr) + 2])
    pm /= 3 * Lr
    D = S.induction_mask(d.tokens)
    elig = D.any(-1)[0]
    ours = (A[0, 0] * D[0].float()).sum(-1)[elig].mean()
    assert ours.item() == pytest.approx(pm, abs=1e-6)
    d = duplicate_tokens(4, 20, 100, seed=0)
    assert bool(S.duplicate_mask(d.tokens).any())
    h = haystack_prompts(3, 30, 100, seed=0, needle_len=5, cue_len=2)
    for row, s, nd in zip(h.tokens, h.meta["needle_start"], h.meta["needle"]):
        assert torch.equal(row[int(s):int(s) + 5], nd) and torch.equal(row[-2:], nd[:2])
    io = ioi_prompts(5, d_vocab=50, seed=0)
    t, c = io.tokens, io.meta["corrupted"]
    assert torch.equal(t[:, 1], io.meta["io"]) and torch.equal(t[:, 6], io.meta["s"])
    assert (c[:, 1] != t[:, 1]).all() and (c[:, 6] != t[:, 6]).all()
    o = ordinal_sequences([[5, 6, 7]], 2, 6, seed=0)
    assert o.tokens.shape == (2, 6)


def test_ioi_prompts_with_tokenizer(gpt2_tokenizer):
    d = ioi_prompts(6, tokenizer=gpt2_tokenizer, seed=0, bos=gpt2_tokenizer.bos_token_id)
    for row, io, s, p1, p2 in zip(d.tokens, d.meta["io"], d.meta["s"], d.meta["s1_pos"],
                                  d.meta["s2_pos"]):
        assert row[p1] == s and row[p2] == s and io in row.tolist()
    text = gpt2_tokenizer.decode(d.tokens[0, 1:])
    assert text.count(gpt2_tokenizer.decode([int(d.meta["s"][0])]).strip()) == 2


# ---------------------------------------------------------------- bad input
def test_bad_input_messages():
    m = native_bridge(n_layers=1, d_model=16, n_heads=2, d_vocab=40, n_ctx=32)
    with pytest.raises(ValueError, match="known roles: previous_token"):
        tag_heads(m, roles=["previous_tokn"], verbose=False)
    with pytest.raises(ValueError, match="thresholds has unknown role 'nope'"):
        tag_heads(m, roles=["previous_token"], thresholds={"nope": 0.3}, verbose=False)
    with pytest.raises(ValueError, match="must be a finite number"):
        tag_heads(m, roles=["previous_token"], thresholds={"previous_token": "x"},
                  verbose=False)
    no_repeat = ProbeData(torch.arange(10)[None], "plain", 0)
    with pytest.raises(ValueError, match="induction needs a repeat"):
        tag_heads(m, roles=["induction"], data={"repeated": no_repeat}, verbose=False)
    with pytest.raises(ValueError, match="n_ctx"):
        tag_heads(m, roles=["induction"], seq_len=64, verbose=False)
    with pytest.raises(ValueError, match="data has unknown keys"):
        tag_heads(m, data={"wat": 1}, verbose=False)
    with pytest.raises(ValueError, match="repeat lengths"):
        repeated_tokens(2, 6, 50, min_repeat=4)
    assert set(ROLES) >= {"previous_token", "duplicate_token", "induction", "positional",
                          "attention_sink", "rare_words", "successor", "copying",
                          "copy_suppression", "retrieval", "subword_merge", "name_mover",
                          "s_inhibition"}


def test_no_patterns_error_lists_working_roles(monkeypatch):
    m = native_bridge(n_layers=1, d_model=16, n_heads=2, d_vocab=40, n_ctx=32)
    view = fl.ModelView(m)

    def broken(tokens, names=None, **kw):
        raise RuntimeError("attention implementation does not expose hook_pattern")

    monkeypatch.setattr(view, "run_with_cache", broken)
    object.__setattr__(m, "_futurelens_view", view)
    with pytest.raises(ValueError, match="roles that still work: .*copying"):
        tag_heads(m, roles=["previous_token"], verbose=False)
    tags = tag_heads(m, roles=["copying"], verbose=False)  # weight roles still work
    assert tags.scores.shape == (1, 1, 2)


def test_unavailable_roles_are_explained():
    m = native_bridge(n_layers=1, d_model=16, n_heads=2, d_vocab=40, n_ctx=32)
    tags = tag_heads(m, roles=["rare_words", "successor", "copying"], verbose=False)
    assert "tokenizer" in tags.unavailable["rare_words"]
    assert "families" in tags.unavailable["successor"]
    assert torch.isnan(tags.score("rare_words")).all()
    assert tags.tagged("rare_words") == []
    assert "unavailable" in tags.summary().columns


def test_pattern_scores_match_cached_patterns_on_every_backend(any_model):
    """Previous/sink/induction scores equal direct reductions of TL's own cached patterns."""
    view = fl.ModelView(any_model)
    data = repeated_tokens(4, 21, view.d_vocab, seed=5)
    res = S.pattern_scores(view, data, roles=["previous_token", "attention_sink", "induction"],
                           batch_size=3, verbose=False)
    names = [view.attn_hook(layer, "pattern") for layer in range(view.n_layers)]
    _, cache = view.run_with_cache(data.tokens, names)
    D = S.induction_mask(data.tokens).float()
    elig = D.any(-1)
    for layer, name in enumerate(names):
        a = cache[name].float()
        prev = a.diagonal(-1, -2, -1).mean((0, 2))
        sink = a[:, :, 1:, 0].mean((0, 2))
        ind = (a * D[:, None]).sum(-1).permute(1, 0, 2)[:, elig].mean(-1)
        torch.testing.assert_close(res["previous_token"].scores[layer], prev, atol=1e-5, rtol=0)
        torch.testing.assert_close(res["attention_sink"].scores[layer], sink, atol=1e-5, rtol=0)
        torch.testing.assert_close(res["induction"].scores[layer], ind, atol=1e-5, rtol=0)
    tags = tag_heads(any_model, roles=["copying", "copy_suppression", "retrieval"],
                     n_examples=4, seq_len=24, verbose=False)
    assert torch.isfinite(tags.scores).all()


def test_k_composition_matches_transformer_lens_and_is_basis_invariant(tmp_path):
    """Ours on the raw model == ours on the processed model == TL's on the processed model."""
    from futurelens_tl.attention.scores import k_composition_baseline, k_composition_scores

    raw = hf_gpt2_bridge(tmp_path, n_layers=3)  # LayerNorm gains and biases perturbed
    proc = fl.load_model(str(tmp_path / "hf_gpt2"), device="cpu", process_weights=True)
    ours_raw = k_composition_scores(as_view(raw))
    ours_proc = k_composition_scores(as_view(proc))
    if not hasattr(proc, "all_composition_scores"):
        pytest.skip("this TransformerLens has no all_composition_scores on the model")
    theirs = proc.all_composition_scores("K")
    theirs = getattr(theirs, "scores", theirs).detach()
    assert torch.allclose(ours_proc, theirs, atol=1e-5)
    assert torch.allclose(ours_raw, ours_proc, atol=1e-5)
    # TL on the RAW model differs (no norm folding): the test can tell the bases apart
    raw_tl = raw.all_composition_scores("K")
    assert not torch.allclose(ours_raw, getattr(raw_tl, "scores", raw_tl).detach(), atol=1e-3)
    # zero unless the reading head is in a later layer; random init sits at the baseline
    assert (ours_raw[1, :, 0] == 0).all() and (ours_raw[2, :, :2] == 0).all()
    base = k_composition_baseline(as_view(raw))
    assert abs(float(ours_raw[0, :, 1].mean()) - base) < 0.05
