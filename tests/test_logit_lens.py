from __future__ import annotations

import copy

import pytest
import torch
from conftest import hf_gpt2_bridge, native_bridge, tl_major

import futurelens_tl as fl
from futurelens_tl.model import as_view


@pytest.fixture(scope="module")
def gpt2(tmp_path_factory):
    return hf_gpt2_bridge(tmp_path_factory.mktemp("gpt2"))


def _tokens(view, n=2, T=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(1, view.d_vocab, (n, T), generator=g)


def test_last_layer_equals_model_logits(any_model):
    view = as_view(any_model)
    lens = fl.LogitLens(any_model)
    toks = _tokens(view)
    logits, resid = view.residuals(toks)
    L = view.n_layers
    lp = lens.log_probs(resid[-1], L - 1)
    assert torch.allclose(lp, torch.log_softmax(logits.float(), -1), atol=1e-5)


def test_recomputes_statistics_per_layer(gpt2):
    """Early layers read with the *cached final* scale would differ: we must not."""
    model = gpt2
    view = as_view(model)
    toks = _tokens(view)
    _, cache = view.run_with_cache(toks, ["blocks.0.hook_resid_post", "ln_final.hook_scale"])
    h = cache["blocks.0.hook_resid_post"]
    ln = model.ln_final
    hc = h - h.mean(-1, keepdim=True)
    manual = (hc / (hc.pow(2).mean(-1, keepdim=True) + view.eps).sqrt()) * ln.w + ln.b
    manual = manual @ view.W_U + view.b_U
    lens = fl.LogitLens(model)
    assert torch.allclose(lens(h, 0), manual, atol=1e-4)
    wrong = (hc / cache["ln_final.hook_scale"]) * ln.w + ln.b
    assert not torch.allclose(lens(h, 0), wrong @ view.W_U + view.b_U, atol=1e-3)


@pytest.mark.skipif(tl_major() < 4, reason="transformer_lens.tools.analysis.logit_lens is TL>=4.3")
@pytest.mark.parametrize("kind", ["native", "hf_gpt2"])
def test_matches_transformerlens_logit_lens(kind, gpt2):
    from transformer_lens.tools.analysis import logit_lens

    model = native_bridge() if kind == "native" else gpt2
    view = as_view(model)
    toks = _tokens(view, n=2, T=10)
    res = logit_lens(model, toks, positions=None, return_type="log_probs")
    # TL rows: 0_pre, 1_pre, ..., final_post = our layers -1, 0, ..., L-1
    assert res.labels[0] == "0_pre" and res.labels[-1] == "final_post"
    assert len(res.labels) == view.n_layers + 1
    _, resid = view.residuals(toks)
    lens = fl.LogitLens(model)
    for row, layer in enumerate(range(-1, view.n_layers)):
        ours = lens.log_probs(resid[row], layer)
        theirs = res.values[row].float()
        assert theirs.shape == ours.shape
        assert torch.allclose(ours, theirs, atol=1e-5), (layer, (ours - theirs).abs().max())


def test_raw_and_processed_basis_same_log_probs(tmp_path):
    raw = hf_gpt2_bridge(tmp_path)  # fresh: compatibility mode mutates a deep copy of it
    proc = copy.deepcopy(raw)
    proc.enable_compatibility_mode()
    vr, vp = as_view(raw), as_view(proc)
    assert vr.basis == "raw" and vp.basis == "processed"
    toks = _tokens(vr)
    _, rr = vr.residuals(toks)
    _, rp = vp.residuals(toks)
    assert not torch.allclose(rr[1], rp[1], atol=1e-3)  # residuals differ (centred)
    lr, lp = fl.LogitLens(raw), fl.LogitLens(proc)
    for i, layer in enumerate(range(-1, vr.n_layers)):
        a, b = lr.log_probs(rr[i], layer), lp.log_probs(rp[i], layer)
        assert torch.allclose(a, b, atol=1e-4), (layer, (a - b).abs().max())


def test_hooks_feed_sink_without_changing_forward(tiny_bridge):
    view = as_view(tiny_bridge)
    lens = fl.LogitLens(tiny_bridge)
    toks = _tokens(view)
    got = {}
    logits = view.run_with_hooks(toks, lens.hooks(lambda layer, x: got.__setitem__(layer, x)))
    ref, resid = view.residuals(toks)
    assert torch.allclose(logits, ref, atol=1e-5)
    assert sorted(got) == list(range(-1, view.n_layers))
    for i, layer in enumerate(range(-1, view.n_layers)):
        assert torch.allclose(got[layer], lens(resid[i], layer), atol=1e-5)


def test_bad_layer(tiny_bridge):
    lens = fl.LogitLens(tiny_bridge, layers=[0, 1])
    with pytest.raises(ValueError, match="out of range"):
        lens(torch.zeros(1, 32), 7)
    with pytest.raises(ValueError, match="not covered"):
        lens(torch.zeros(1, 32), -1)
    with pytest.raises(ValueError, match="out of range"):
        fl.LogitLens(tiny_bridge, layers=[5])


def test_unembed_bias_and_logits_at():
    """A non-zero b_U takes the fused addmm path; logits_at(ids) equals forward(...)[..., ids]."""
    model = native_bridge()
    view = as_view(model)
    with torch.no_grad():
        view.b_U.add_(torch.randn(view.d_vocab, generator=torch.Generator().manual_seed(1)))
    assert view.b_U.abs().sum() > 0
    toks = _tokens(view)
    logits, resid = view.residuals(toks)
    assert torch.allclose(view.readout(resid[-1]), logits, atol=1e-5)
    ids = torch.tensor([0, 7, 3, 60])
    tuned = fl.TunedLens(model)
    with torch.no_grad():
        for t in tuned.translators:
            t.weight.normal_(0, 0.05)
    for lens in (fl.LogitLens(model), tuned):
        for layer in (-1, 0):
            full = lens(resid[layer + 1], layer)
            assert torch.allclose(lens.logits_at(resid[layer + 1], layer, ids), full[..., ids],
                                  atol=1e-5)


def test_lens_of_another_model_is_refused_same_model_edits_are_read():
    """Issue 16: a logit lens built on one model was accepted on another of the same shape and
    silently read through the first model's unembedding."""
    a = native_bridge(seed=0)
    b = native_bridge(seed=1)  # same architecture, other weights
    lens = fl.LogitLens(a)
    toks = torch.randint(0, 61, (1, 6), generator=torch.Generator().manual_seed(0))
    with pytest.raises(fl.LensMismatchError, match="fingerprint"):
        fl.run_with_lenses(b, toks, [lens])
    with pytest.raises(fl.LensMismatchError, match="fingerprint"):
        fl.compare(b, toks, [lens])
    # an in-place edit (ablation) of the lens's own model is fine: it reads current weights
    view = as_view(a)
    with torch.no_grad():
        next(p for n, p in a.named_parameters() if "layers.1." in n).mul_(0.5)
    logits, ro = fl.run_with_lenses(a, toks, [lens], top_k=1)
    last = view.n_layers - 1
    assert torch.equal(ro["logit", last].top_ids[..., 0], logits.argmax(-1))
    # ... whereas a tuned lens (fitted to the weights) refuses the edited model
    c = native_bridge(seed=2)
    tuned = fl.TunedLens(c)
    with torch.no_grad():
        next(c.parameters()).add_(1.0)
    with pytest.raises(fl.LensMismatchError, match="other weights"):
        fl.run_with_lenses(c, toks, [tuned])


def test_fingerprint_is_cached_until_a_weight_changes(monkeypatch):
    from futurelens_tl.lenses.base import model_fingerprint
    from futurelens_tl.model import ModelView

    m = native_bridge(seed=4)
    calls = []
    orig = ModelView._mlp_and_norm_weights  # runs once per real computation of the hash
    monkeypatch.setattr(ModelView, "_mlp_and_norm_weights",
                        lambda self: calls.append(1) or orig(self))
    fp = model_fingerprint(m)
    for _ in range(5):
        assert model_fingerprint(m) == fp
    assert len(calls) == 1  # computed once, then cached
    with torch.no_grad():
        next(m.parameters()).add_(1.0)  # in place: the version counter moves
    fp2 = model_fingerprint(m)
    assert fp2 != fp and len(calls) == 2
    assert fp2 == ModelView(m).fingerprint  # a fresh view (no cache) agrees
