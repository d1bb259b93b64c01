from __future__ import annotations

import math

import pytest
import torch
from conftest import hf_gpt2_bridge, toy_or_skip

import futurelens_tl as fl
from futurelens_tl import data as fl_data
from futurelens_tl.model import as_view


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    model = hf_gpt2_bridge(tmp_path_factory.mktemp("m"))
    view = as_view(model)
    tuned = fl.TunedLens(model)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():  # a non-trivial tuned lens without training
        for t in tuned.translators:
            t.weight.copy_(0.1 * torch.randn(t.weight.shape, generator=g))
            t.bias.copy_(0.1 * torch.randn(t.bias.shape, generator=g))
    return model, view, fl.LogitLens(model), tuned


def _tokens(view, B=2, T=10, seed=1):
    return torch.randint(1, view.d_vocab, (B, T), generator=torch.Generator().manual_seed(seed))


def test_run_with_lenses_one_forward_and_matches_direct(setup):
    model, view, logit, tuned = setup
    toks = _tokens(view)
    calls = []
    model.blocks[0].hook_resid_pre.add_hook(lambda x, hook: calls.append(1))
    try:
        before = fl_data.FORWARD_COUNTER.passes
        logits, ro = fl.run_with_lenses(model, toks, [logit, tuned], top_k=4)
        assert fl_data.FORWARD_COUNTER.passes - before == 1
        assert len(calls) == 1  # exactly one model forward
    finally:
        model.blocks[0].hook_resid_pre.remove_hooks()
    ref_logits, resid = view.residuals(toks)
    assert torch.allclose(logits, ref_logits, atol=1e-5)
    final = torch.log_softmax(ref_logits.float(), -1)
    for lens in (logit, tuned):
        for i, layer in enumerate(range(-1, view.n_layers)):
            r = ro[lens.name, layer]
            lp = lens.log_probs(resid[i], layer)
            v, idx = lp.topk(4, -1)
            assert torch.equal(r.top_ids, idx)
            assert torch.allclose(r.top_probs, v.exp(), atol=1e-6)
            ent = -(lp.exp() * lp).sum(-1)
            assert torch.allclose(r.entropy, ent, atol=1e-5)
            kl = (final.exp() * (final - lp)).sum(-1)
            assert torch.allclose(r.kl, kl, atol=1e-5)
            # targets = next token; last position undefined
            nxt = toks[:, 1:]
            tlp = lp[:, :-1].gather(-1, nxt[..., None]).squeeze(-1)
            assert torch.allclose(r.target_log_probs[:, :-1], tlp, atol=1e-5)
            assert torch.isnan(r.target_log_probs[:, -1]).all()
            rank = (lp[:, :-1] > tlp[..., None]).sum(-1) + 1
            assert torch.equal(r.target_ranks[:, :-1], rank)
            assert r.log_probs is None
    df = ro.to_dataframe()
    assert len(df) == 2 * (view.n_layers + 1) * toks.numel()
    assert {"lens", "layer", "pos", "top1_id", "kl", "target_rank"} <= set(df.columns)


def test_positions_targets_and_log_probs(setup):
    model, view, logit, _ = setup
    toks = _tokens(view)
    tg = torch.randint(0, view.d_vocab, toks.shape, generator=torch.Generator().manual_seed(5))
    _, ro = fl.run_with_lenses(model, toks, logit, positions=[0, -1], top_k=2, targets=tg,
                               return_log_probs=True)
    assert ro.positions == [0, toks.shape[1] - 1]
    r = ro["logit"][0]
    assert r.log_probs.shape == (2, 2, view.d_vocab)
    want = r.log_probs.gather(-1, tg[:, [0, -1], None]).squeeze(-1)
    assert torch.allclose(r.target_log_probs, want)


def test_small_chunks_same_answer(setup, monkeypatch):
    model, view, logit, tuned = setup
    toks = _tokens(view)
    _, a = fl.run_with_lenses(model, toks, [tuned], top_k=3)
    import futurelens_tl.lenses.reduction as R

    monkeypatch.setattr(R, "CHUNK_FLOATS", view.d_vocab * 3)  # 3 rows per chunk
    _, b = fl.run_with_lenses(model, toks, [tuned], top_k=3)
    for layer in tuned.layers:
        assert torch.equal(a["tuned", layer].top_ids, b["tuned", layer].top_ids)
        assert torch.allclose(a["tuned", layer].kl, b["tuned", layer].kl, atol=1e-6)


def test_bad_input(setup):
    model, view, logit, _ = setup
    toks = _tokens(view)
    with pytest.raises(ValueError, match="position 99"):
        fl.run_with_lenses(model, toks, logit, positions=[99])
    with pytest.raises(ValueError, match="top_k=0"):
        fl.run_with_lenses(model, toks, logit, top_k=0)
    with pytest.raises(ValueError, match="out of range"):
        fl.run_with_lenses(model, toks, logit, layers=[17])
    with pytest.raises(ValueError, match="empty"):
        fl.run_with_lenses(model, "", logit)
    with pytest.raises(ValueError, match="unique"):
        fl.run_with_lenses(model, toks, [logit, fl.LogitLens(model)])
    with pytest.raises(TypeError, match="not a futurelens_tl Lens"):
        fl.run_with_lenses(model, toks, [object()])
    with pytest.raises(ValueError, match="k=0"):
        fl.compare(model, toks[:1], logit, k=0)
    with pytest.raises(ValueError, match="one sequence"):
        fl.compare(model, toks, logit)


def test_compare_grid_contents(setup, tmp_path):
    model, view, logit, tuned = setup
    short = fl.LogitLens(model, layers=[0, 1], name="short")
    toks = _tokens(view, B=1, T=8)
    cmp = fl.compare(model, toks, [logit, tuned, short], k=3)
    g = cmp.grid
    L, T = view.n_layers, 8
    assert g["rows"] == ["embed"] + [str(i) for i in range(L)]
    assert g["row_layers"] == list(range(-1, L))
    assert g["k"] == 3 and len(g["tokens"]) == T
    logits, resid = view.residuals(toks)
    final = torch.log_softmax(logits[0].float(), -1)
    nxt = toks[0, 1:].tolist()
    assert g["next_correct"] == [final[p].argmax().item() == nxt[p] for p in range(T - 1)] + [
        False]
    assert g["next_tokens"][-1] is None
    for panel, lens in zip(g["lenses"], (logit, tuned)):
        assert panel["name"] == lens.name
        for r, layer in enumerate(g["row_layers"]):
            lp = lens.log_probs(resid[r][0], layer)
            v, idx = lp.topk(3, -1)
            assert panel["top_ids"][r] == idx.tolist()
            assert torch.allclose(torch.tensor(panel["top_probs"][r]), v.exp(), atol=1e-6)
            kl = (final.exp() * (final - lp)).sum(-1)
            assert torch.allclose(torch.tensor(panel["kl"][r]), kl, atol=1e-5)
            for p in range(T - 1):
                assert panel["p_next"][r][p] == pytest.approx(lp[p, nxt[p]].exp().item(),
                                                              abs=1e-6)
                assert panel["rank_next"][r][p] == int((lp[p] > lp[p, nxt[p]]).sum()) + 1
            assert panel["p_next"][r][T - 1] is None
            tr = panel["tracked"]
            probs = torch.tensor(tr["probs"][r])
            assert torch.allclose(probs, lp.exp()[:, tr["ids"]], atol=1e-6)
        # tracked ids cover every top-k id shown
        shown = {i for row in panel["top_ids"] for cell in row for i in cell}
        assert shown <= set(panel["tracked"]["ids"])
    sp = g["lenses"][2]
    assert [any(row) for row in sp["available"]] == [layer in (0, 1) for layer in
                                                     g["row_layers"]]
    assert sp["entropy"][0][0] is None and sp["top_ids"][0][0] == []
    df = cmp.to_dataframe()
    assert len(df) == 2 * (L + 1) * T + 2 * T
    # rendering: offline, standalone page contains no network references
    from futurelens_tl.viz.lens_grid import validate_grid

    validate_grid(g)
    html = cmp.html()
    assert "tuned" in html
    p = tmp_path / "grid.html"
    cmp.save_html(p)
    text = p.read_text()
    assert "<html" in text.lower()
    assert "https://" not in text and "http://" not in text.replace("http://www.w3.org", "")
    cmp.save_png(tmp_path / "grid.png", lens="tuned", color="kl")
    assert (tmp_path / "grid.png").read_bytes()[:4] == b"\x89PNG"


def test_compare_continuation_hook(setup):
    model, view, logit, _ = setup

    class WithCont(fl.LogitLens):
        name = "cont"

        def continuation(self, resid, layer, n_tokens):
            ids = torch.arange(n_tokens).expand(resid.shape[0], -1)
            return ids, torch.full((resid.shape[0], n_tokens), 0.5)

    cmp = fl.compare(model, _tokens(view, B=1, T=5), [WithCont(model)], k=2, n_continuation=2)
    panel = cmp.grid["lenses"][0]
    assert len(panel["cont_tokens"]) == view.n_layers + 1
    assert panel["cont_probs"][0][0] == [0.5, 0.5]
    assert "free-running" in panel["note"]


def test_n_ahead_kl_uses_shifted_final(setup):
    model, view, _, _ = setup
    lens = fl.TunedLens(model, token_shift=2)
    toks = _tokens(view, B=1, T=6)
    _, ro = fl.run_with_lenses(model, toks, lens, top_k=1)
    logits, resid = view.residuals(toks)
    final = torch.log_softmax(logits[0].float(), -1)
    lp = lens.log_probs(resid[1][0], 0)
    kl = (final[2:].exp() * (final[2:] - lp[:-2])).sum(-1)
    assert torch.allclose(ro["tuned+2", 0].kl[0, :-2], kl, atol=1e-5)
    assert math.isnan(ro["tuned+2", 0].kl[0, -1].item())
    # target for n_ahead=2 at t is token t+3
    assert ro["tuned+2", 0].target_ids[0, :3].tolist() == toks[0, 3:6].tolist()


def test_compare_future_continuations_batched_equal_per_layer():
    """The grid's one batched continuation call equals the per-layer ``continuation`` calls."""
    import futurelens_tl as fl
    from futurelens_tl.compare import compare
    from futurelens_tl.lenses.future import FutureLens

    model = toy_or_skip()
    lens = FutureLens(model, "fixed_prompt", layers=[0, 2], n_ahead=0)
    cmp = compare(model, "On Monday, then Tuesday", [fl.LogitLens(model), lens], n_continuation=2)
    panel = cmp.grid["lenses"][1]
    view = fl.as_view(model)
    tokens = view.to_tokens("On Monday, then Tuesday")
    _, resid = view.residuals(tokens, [0, 2])
    for k, layer in enumerate([0, 2]):
        row = cmp.grid["row_layers"].index(layer)
        ids, probs = lens.continuation(resid[k, 0], layer, 2)
        expect = [[view.to_str_tokens(torch.tensor(r))[j] for j in range(2)] for r in ids.tolist()]
        assert panel["cont_tokens"][row] == expect
        torch.testing.assert_close(torch.tensor(panel["cont_probs"][row]), probs.float(),
                                   atol=1e-5, rtol=1e-4)


def test_mixed_length_texts_padded_cells_flagged_and_real_cells_exact(setup):
    """A batch of texts of different lengths: real cells equal each text run alone, padded cells
    are False in ``valid`` and carry no target / KL (issue 16)."""
    model, view, logit, tuned = setup
    texts = ["w1 w2 w3 w4 w5 w6 w7", "w8 w9 w10", "w11 w12 w13 w14 w15"]
    logits, ro = fl.run_with_lenses(model, texts, [logit, tuned], top_k=3)
    lengths = [view.to_tokens(t).shape[1] for t in texts]
    assert ro.meta["lengths"] == lengths
    T = max(lengths)
    want_valid = torch.arange(T)[None, :] < torch.tensor(lengths)[:, None]
    assert torch.equal(ro.valid.cpu(), want_valid)
    for b, text in enumerate(texts):
        _, alone = fl.run_with_lenses(model, text, [logit, tuned], top_k=3)
        L = lengths[b]
        for name in ("logit", "tuned"):
            for layer in (-1, 0, view.n_layers - 1):
                r, a = ro[name, layer], alone[name, layer]
                assert torch.equal(r.top_ids[b, :L], a.top_ids[0])
                assert torch.allclose(r.top_probs[b, :L], a.top_probs[0], atol=1e-5)
                assert torch.allclose(r.kl[b, :L], a.kl[0], atol=1e-5, equal_nan=True)
                assert torch.equal(r.target_ids[b, :L], a.target_ids[0])
                assert torch.equal(r.target_ranks[b, :L], a.target_ranks[0])
                # padded cells: no target, no KL
                assert (r.target_ids[b, L:] == -1).all()
                assert (r.target_ranks[b, L:] == 0).all()
                assert torch.isnan(r.kl[b, L:]).all()
    df = ro.to_dataframe()
    assert int((~df["valid"]).sum()) == 2 * (view.n_layers + 1) * int((~want_valid).sum())


def test_attention_mask_marks_padding_of_a_token_batch(setup):
    model, view, logit, _ = setup
    toks = _tokens(view, B=2, T=8)
    mask = torch.tensor([[1] * 8, [1] * 5 + [0] * 3])
    _, ro = fl.run_with_lenses(model, toks, logit, attention_mask=mask)
    assert torch.equal(ro.valid.cpu(), mask.bool())
    r = ro["logit", 0]
    assert (r.target_ids[1, 4:] == -1).all() and (r.target_ids[1, :4] == toks[1, 1:5]).all()
    assert torch.isnan(r.kl[1, 5:]).all() and torch.isfinite(r.kl[1, :5]).all()
    _, full = fl.run_with_lenses(model, toks, logit)
    assert full.valid.all()


def test_nan_weights_raise_instead_of_nan_grid(tmp_path):
    """Before issue 16, compare showed NaN probabilities and evaluate precision@1 = 1.0."""
    model = hf_gpt2_bridge(tmp_path)
    logit = fl.LogitLens(model)
    name, p = next((n, p) for n, p in model.named_parameters() if "h.1." in n or "blocks.1" in n)
    with torch.no_grad():
        p.fill_(float("nan"))
    with pytest.raises(fl.NonFiniteError, match="non-finite weights"):
        fl.compare(model, "w1 w2 w3", [logit])
    with pytest.raises(fl.NonFiniteError, match="non-finite weights"):
        fl.evaluate(model, logit, ["w1 w2 w3 w4 " * 8], seq_len=8, verbose=False)
