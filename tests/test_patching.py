"""score_heads / directional_effects: batched-over-heads results equal one-head-at-a-time runs."""

from __future__ import annotations

import pytest
import torch
from conftest import native_bridge

import futurelens_tl as fl
from futurelens_tl.attention.patching import directional_effects, score_heads


@pytest.fixture(scope="module")
def model():
    return native_bridge(n_layers=2, d_model=32, n_heads=4, d_vocab=50, n_ctx=16, seed=1)


def _metric(logits):
    return logits[:, -1].log_softmax(-1)[:, 7]


def _one_head(model, base, layer, head, value):
    """Reference: patch a single head with one plain hook, unbatched."""
    view = fl.ModelView(model)

    def hook(z, hook):
        z = z.clone()
        z[:, :, head] = value
        return z

    with torch.no_grad():
        logits = view.run_with_hooks(base, [(view.attn_hook(layer, "z"), hook)])
    return float(_metric(logits).double().mean())


def test_denoise_batched_equals_single(model):
    g = torch.Generator().manual_seed(0)
    clean = torch.randint(1, 50, (3, 10), generator=g)
    corr = torch.randint(1, 50, (3, 10), generator=g)
    res = score_heads(model, clean, corr, _metric, method="denoise", heads_per_forward=5,
                      verbose=False)
    view = fl.ModelView(model)
    names = [view.attn_hook(layer, "z") for layer in range(2)]
    _, cc = view.run_with_cache(clean, names)
    for layer, head in [(0, 0), (0, 3), (1, 2)]:
        want = _one_head(model, corr, layer, head, cc[names[layer]][:, :, head])
        assert res.effect[layer, head].item() == pytest.approx(want - res.corrupted_metric,
                                                               abs=1e-4)
    # patching every head of the last layer at once with clean z reproduces the clean metric
    assert res.n_forwards == 2 + 2  # two caches + ceil(8 / 5) patched forwards


def test_noise_and_identity(model):
    g = torch.Generator().manual_seed(1)
    clean = torch.randint(1, 50, (2, 8), generator=g)
    # patching clean into clean changes nothing
    res = score_heads(model, clean, clean.clone(), _metric, method="noise", verbose=False)
    assert torch.allclose(res.effect, torch.zeros_like(res.effect), atol=1e-5)
    assert torch.isnan(res.normalized).all()  # zero gap: normalised effect undefined


def test_zero_and_mean_ablation(model):
    g = torch.Generator().manual_seed(2)
    clean = torch.randint(1, 50, (4, 8), generator=g)
    z = score_heads(model, clean, metric=_metric, method="zero", verbose=False)
    want = _one_head(model, clean, 1, 1, 0.0)
    assert z.effect[1, 1].item() == pytest.approx(want - z.clean_metric, abs=1e-4)
    m = score_heads(model, clean, metric=_metric, method="mean", verbose=False)
    view = fl.ModelView(model)
    _, cc = view.run_with_cache(clean, [view.attn_hook(0, "z")])
    mean = cc[view.attn_hook(0, "z")].mean(0, keepdim=True)[:, :, 2].expand(4, -1, -1)
    want = _one_head(model, clean, 0, 2, mean)
    assert m.effect[0, 2].item() == pytest.approx(want - m.clean_metric, abs=1e-4)
    r = score_heads(model, clean, metric=_metric, method="resample", n_resample=2, seed=0,
                    verbose=False)
    assert torch.isfinite(r.effect).all() and r.evidence["n_resample"] == 2
    r2 = score_heads(model, clean, metric=_metric, method="resample", n_resample=2, seed=0,
                     verbose=False)
    assert torch.equal(r.effect, r2.effect)  # seeded


def test_positions_and_heads_subset(model):
    g = torch.Generator().manual_seed(3)
    clean = torch.randint(1, 50, (2, 8), generator=g)
    corr = torch.randint(1, 50, (2, 8), generator=g)
    res = score_heads(model, clean, corr, _metric, heads=[(1, 0)], positions=[7],
                      verbose=False)
    assert torch.isnan(res.effect[0]).all() and torch.isfinite(res.effect[1, 0])
    view = fl.ModelView(model)
    _, cc = view.run_with_cache(clean, [view.attn_hook(1, "z")])

    def hook(zz, hook):
        zz = zz.clone()
        zz[:, 7, 0] = cc[view.attn_hook(1, "z")][:, 7, 0]
        return zz

    with torch.no_grad():
        lg = view.run_with_hooks(corr, [(view.attn_hook(1, "z"), hook)])
    want = float(_metric(lg).double().mean())
    assert res.effect[1, 0].item() == pytest.approx(want - res.corrupted_metric, abs=1e-4)
    df = res.to_dataframe()
    assert len(df) == 8 and "normalized" in df.columns
    assert "<table" in res._repr_html_()


def test_directional(model):
    g = torch.Generator().manual_seed(4)
    tokens = torch.randint(1, 50, (2, 8), generator=g)
    u = torch.randn(8, generator=g)
    add, sub = directional_effects(model, tokens, u, _metric, alpha=3.0, verbose=False)
    un = u / u.norm()
    view = fl.ModelView(model)

    def hook(z, hook):
        z = z.clone()
        z[:, :, 1] += 3.0 * un
        return z

    with torch.no_grad():
        base = float(_metric(view.forward(tokens)).double().mean())
        lg = view.run_with_hooks(tokens, [(view.attn_hook(0, "z"), hook)])
    want = float(_metric(lg).double().mean()) - base
    assert add.effect[0, 1].item() == pytest.approx(want, abs=1e-4)
    assert add.method == "add" and sub.method == "subtract"


def test_bad_input(model):
    clean = torch.randint(1, 50, (2, 8))
    with pytest.raises(ValueError, match="method='nope'"):
        score_heads(model, clean, clean, _metric, method="nope")
    with pytest.raises(ValueError, match="needs corrupted"):
        score_heads(model, clean, None, _metric, method="denoise")
    with pytest.raises(ValueError, match="must match"):
        score_heads(model, clean, clean[:, :5], _metric)
    with pytest.raises(ValueError, match="metric must be a callable"):
        score_heads(model, clean, clean, None)
    with pytest.raises(ValueError, match="site="):
        score_heads(model, clean, clean, _metric, site="pattern")
    with pytest.raises(ValueError, match="out of range"):
        score_heads(model, clean, clean, _metric, heads=[(5, 0)])
