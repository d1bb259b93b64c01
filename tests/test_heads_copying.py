"""OV copying score with effective embeddings (reference head-roles.md §4.1, §4.3; issue 15).

A planted copying head must score ~ +1 and an anti-copying head ~ -1 *through the effective
embeddings* (a strong random MLP0 makes W_EE differ from W_E, so the raw-W_E score is wrong);
on the toy model the layer-1 induction heads must come out copying.
"""

from __future__ import annotations

import pytest
import torch
from conftest import native_bridge, toy_or_skip

import futurelens_tl as fl
from futurelens_tl.attention import scores as S

V, D, H = 24, 32, 2


def _p(m, suffix):
    hits = [p for k, p in m.named_parameters() if k.endswith(suffix)]
    assert len(hits) == 1, suffix
    return hits[0]


def planted_copier(seed: int = 0):
    """Layer 1: head 0 copies (W_V W_O = P P^T), head 1 anti-copies (-P P^T); W_U = W_EE^T."""
    m = native_bridge(n_layers=2, d_model=D, n_heads=H, d_vocab=V, seed=seed)
    g = torch.Generator().manual_seed(seed)
    dh = D // H
    with torch.no_grad():
        for k, p in m.named_parameters():
            if ("ln" in k) and k.endswith("weight"):
                p.fill_(1.0)
            elif k.endswith("bias"):
                p.zero_()
        # a strong MLP0, so that effective embeddings are far from W_E
        _p(m, "layers.0._original_component.mlp._original_component.fc_in."
              "_original_component.weight").copy_(3 * torch.randn(4 * D, D, generator=g))
        _p(m, "layers.0._original_component.mlp._original_component.fc_out."
              "_original_component.weight").copy_(torch.randn(D, 4 * D, generator=g))
        pre = "layers.1._original_component.attn._original_component.{}._original_component.weight"
        wv = torch.zeros(D, D)
        wo = torch.zeros(D, D)
        for h, sign in ((0, 1.0), (1, -1.0)):
            for e in range(dh):
                wv[h * dh + e, e] = 1.0  # v_e = x_e
                wo[e, h * dh + e] = sign  # out_e = +/- v_e
        _p(m, pre.format("v")).copy_(wv)
        _p(m, pre.format("o")).copy_(wo)
    view = fl.ModelView(m)
    wee = S.effective_embeddings(view, torch.arange(V))
    with torch.no_grad():
        _p(m, "head._original_component.weight").copy_(wee - wee.mean(-1, keepdim=True))
    return m


def test_planted_copying_and_anti_copying_heads():
    m = planted_copier()
    view = fl.ModelView(m)
    rs = S.copying_scores(view)
    assert rs.scores[1, 0].item() == pytest.approx(1.0, abs=1e-3)
    assert rs.scores[1, 1].item() == pytest.approx(-1.0, abs=1e-3)
    assert rs.evidence["token_set"] == "all" and "effective" in rs.evidence["input"]
    # the raw-W_E input (the old bug) does not see the planted structure
    raw = S.copying_scores(view, effective=False)
    assert raw.scores[1, 0].item() < 0.9
    # control: random heads read through the same circuit sit far from +-1
    assert abs(rs.extras["random_mean"][1, 0].item()) < 0.5
    assert rs.scores[1, 0] > rs.extras["random_mean"][1, 0] + 2 * rs.extras["random_std"][1, 0]


def test_token_sets_frequent_and_weighted():
    m = planted_copier()
    view = fl.ModelView(m)
    counts = torch.zeros(V)
    counts[:6] = torch.tensor([50.0, 20, 9, 5, 5, 1])
    rs = S.copying_scores(view, token_set="frequent", counts=counts, min_count=5)
    assert rs.evidence["n_examples"] == 5 and rs.evidence["token_set"] == "frequent"
    # the planted heads copy on every token set (P X^T X P^T is PSD on any subset)
    for score in (rs.scores, rs.extras["weighted"]):
        assert score[1, 0].item() == pytest.approx(1.0, abs=1e-3)
        assert score[1, 1].item() == pytest.approx(-1.0, abs=1e-3)
    # restricting to a subset changes the generic heads' scores (the set matters)
    allv = S.copying_scores(view)
    assert not torch.allclose(allv.scores[0], rs.scores[0], atol=1e-3)
    with pytest.raises(ValueError, match="needs counts"):
        S.copying_scores(view, token_set="weighted")
    with pytest.raises(ValueError, match="token_set"):
        S.copying_scores(view, token_set="rare")


def test_toy_induction_heads_copy():
    """Issue 15: with W_EE the toy's induction heads copy (+0.96/+0.98), raw W_E said < 0."""
    model = toy_or_skip()
    tags = fl.tag_heads(model, roles=["induction", "copying"], verbose=False)
    ind = tags.tagged("induction")
    assert ind, "the pinned toy has induction heads"
    cp = tags.score("copying")
    for layer, h in ind:
        assert cp[layer, h] > 0.5
    assert tags.evidence["copying"]["token_set"] in ("all", "frequent", "weighted")
    assert "frequent" in tags.extras["copying"] or "weighted" in tags.extras["copying"]


def test_effective_embeddings_stop_early_and_leave_no_hooks():
    m = native_bridge(n_layers=3, d_model=D, n_heads=H, d_vocab=V, seed=1)
    view = fl.ModelView(m)
    tok = torch.randint(0, V, (2, 7), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        before = m(tok)
    wee = S.effective_embeddings(view, torch.arange(V), batch_size=10)
    assert wee.shape == (V, D) and torch.isfinite(wee).all()
    with torch.no_grad():
        after = m(tok)
    torch.testing.assert_close(before, after)  # the aborted forwards removed their hooks
    again = S.effective_embeddings(view, torch.arange(V))
    torch.testing.assert_close(wee, again)
