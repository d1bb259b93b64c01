"""The fused readout reduction equals the plain definitions (metrics.py) row by row."""

from __future__ import annotations

import math

import pytest
import torch

from futurelens_tl import metrics as M
from futurelens_tl.lenses.reduction import FinalDistribution, logit_stats


@pytest.fixture
def case():
    g = torch.Generator().manual_seed(0)
    rows, V = 37, 211
    z = 6 * torch.randn(rows, V, generator=g)
    f = 4 * torch.randn(rows, V, generator=g)
    t = torch.randint(0, V, (rows, 2), generator=g)
    t[3, 0] = -1  # no target on this row
    t[5, 1] = -1
    z[7, 10] = z[7, 11] = z[7].max() + 1  # a tie at the top
    t[7, 0] = 11
    valid = torch.ones(rows, dtype=torch.bool)
    valid[-4:] = False  # no final distribution past the end
    return z, f, t, valid


def test_logit_stats_match_definitions(case):
    z, f, t, valid = case
    final = FinalDistribution.from_logits(f, valid)
    track = torch.tensor([0, 5, 9])
    st = logit_stats(z.clone(), 5, final=final, targets=t, track_ids=track, keep_log_probs=True)
    lp = torch.log_softmax(z, -1)
    flp = torch.log_softmax(f, -1)
    top_v, top_i = lp.topk(5, -1)
    assert torch.equal(st["top_ids"], top_i)
    assert torch.allclose(st["top_log_probs"], top_v, atol=1e-5)
    assert torch.allclose(st["log_normalizer"], torch.logsumexp(z, -1), atol=1e-5)
    assert torch.allclose(st["entropy"], M.entropy(lp), atol=1e-5)
    kl = M.kl_divergence(flp, lp)
    assert torch.allclose(st["kl"][valid], kl[valid], atol=1e-5)
    assert torch.isnan(st["kl"][~valid]).all()
    assert torch.allclose(st["tracked_probs"], lp.exp()[:, track], atol=1e-6)
    assert torch.allclose(st["log_probs"], lp, atol=1e-5)
    for j in range(2):
        ok = t[:, j] >= 0
        want_lp = lp[ok].gather(-1, t[ok, j, None])[:, 0]
        assert torch.allclose(st["target_log_probs"][ok, j], want_lp, atol=1e-5)
        assert torch.equal(st["target_ranks"][ok, j], M.rank_of(lp[ok], t[ok, j]))
        assert torch.isnan(st["target_log_probs"][~ok, j]).all()
        assert (st["target_ranks"][~ok, j] == 0).all()
    assert st["target_ranks"][7, 0] == 1  # tied with the top: no strictly larger score


def test_one_dim_targets_and_partial_ranks(case):
    z, f, t, _ = case
    a = logit_stats(z.clone(), 1, targets=t[:, 0])
    assert a["target_ranks"].shape == a["target_log_probs"].shape == (z.shape[0],)
    b = logit_stats(z.clone(), 1, targets=t, ranks=1)
    assert b["target_ranks"].shape == (z.shape[0], 1)
    assert torch.equal(b["target_ranks"][:, 0], a["target_ranks"])
    c = logit_stats(z.clone(), 1, targets=t, ranks=False)
    assert "target_ranks" not in c


def test_final_distribution_log_prob_and_masked_vocab():
    f = torch.tensor([[0.0, 1.0, -math.inf], [2.0, 0.0, 0.0]])
    final = FinalDistribution.from_logits(f)
    assert torch.isfinite(final.neg_entropy).all()  # 0 log 0 = 0 on the masked id
    want = torch.log_softmax(f, -1).gather(-1, torch.tensor([[1], [0]]))[:, 0]
    assert torch.allclose(final.log_prob(torch.tensor([1, 0])), want)


def test_logit_stats_bf16_input_upcast(case):
    z, *_ = case
    st = logit_stats(z.bfloat16(), 3)
    ref = torch.log_softmax(z.bfloat16().float(), -1)
    assert st["entropy"].dtype == torch.float32
    assert torch.allclose(st["entropy"], M.entropy(ref), atol=1e-5)
