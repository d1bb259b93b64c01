from __future__ import annotations

import math

import pytest
import torch

from futurelens_tl import metrics as M


def _rand(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def test_rank_and_topk_hits_against_sort():
    x = _rand(5, 7, 50)
    labels = torch.randint(0, 50, (5, 7), generator=torch.Generator().manual_seed(1))
    r = M.rank_of(x, labels)
    order = x.argsort(-1, descending=True)
    expected = (order == labels[..., None]).float().argmax(-1) + 1
    assert torch.equal(r, expected)
    hits = M.topk_hits(x, labels, (1, 5, 10))
    for j, k in enumerate((1, 5, 10)):
        topk = x.topk(k, -1).indices
        assert torch.equal(hits[..., j], (topk == labels[..., None]).any(-1))
    # cumulative
    assert (hits[..., 0] <= hits[..., 1]).all() and (hits[..., 1] <= hits[..., 2]).all()
    p = M.precision_at_k(x, labels, (1, 5))
    assert torch.allclose(p, hits[..., :2].float().reshape(-1, 2).mean(0))
    assert M.precision_at_k(x, labels, 1).ndim == 0


def test_kl_entropy_surprisal_known_values():
    p = torch.log(torch.tensor([0.5, 0.5]))
    q = torch.log(torch.tensor([0.25, 0.75]))
    expected = 0.5 * math.log(0.5 / 0.25) + 0.5 * math.log(0.5 / 0.75)
    assert M.kl_divergence(p, q).item() == pytest.approx(expected, abs=1e-6)
    assert M.kl_divergence(p, p).item() == pytest.approx(0.0, abs=1e-7)
    assert M.entropy(torch.zeros(8)).item() == pytest.approx(math.log(8), abs=1e-6)
    lp = torch.log(torch.tensor([[0.7, 0.2, 0.1]]))
    assert M.surprisal(lp, torch.tensor([2])).item() == pytest.approx(-math.log(0.1), abs=1e-6)
    # logits in, same answer as log-probs in
    x = _rand(3, 11)
    assert torch.allclose(M.kl_divergence(x, x.flip(-1)),
                          torch.nn.functional.kl_div(torch.log_softmax(x.flip(-1), -1),
                                                     torch.log_softmax(x, -1),
                                                     log_target=True, reduction="none").sum(-1),
                          atol=1e-6)


def test_topk_agreement():
    a = torch.tensor([[3.0, 2, 1, 0], [0.0, 1, 2, 3]])
    b = torch.tensor([[3.0, 0, 1, 2], [0.0, 1, 2, 3]])
    assert M.topk_agreement(a, b, 1).tolist() == [1.0, 1.0]
    assert M.topk_agreement(a, b, 2).tolist() == [0.5, 1.0]


def test_bad_input():
    x = _rand(2, 10)
    with pytest.raises(ValueError, match="k=0"):
        M.precision_at_k(x, torch.tensor([1, 2]), 0)
    with pytest.raises(ValueError, match="labels"):
        M.rank_of(x, torch.tensor([1, 2, 3]))
    with pytest.raises(ValueError, match="same shape"):
        M.kl_divergence(x, x[:, :5])
    with pytest.raises(ValueError, match="known metrics"):
        M.get_metric("accuracy")
    assert M.get_metric("kl") is M.kl_divergence


def test_bigram_counts_and_boundaries():
    seqs = torch.tensor([[1, 2, 1, 2, 1, 3], [4, 4, 4, 4, 4, 1]])
    bg = M.NgramBaseline(2, vocab_size=6).fit(seqs)
    lp = bg.predict_log_probs(torch.tensor([1, 4]))
    # after 1: 2 twice, 3 once (row 0); the final "1" of row 1 has no successor
    assert lp[0].exp()[2].item() == pytest.approx(2 / 3)
    assert lp[0].exp()[3].item() == pytest.approx(1 / 3)
    # after 4: four 4s and one 1; the pair (3, 4) across rows is NOT counted
    assert lp[1].exp()[4].item() == pytest.approx(4 / 5)
    assert bg.predict_log_probs(torch.tensor([3])).exp().sum().item() == pytest.approx(1.0)
    ids, probs = bg.topk(torch.tensor([1]), 1)
    assert ids.tolist() == [[2]]
    # add-k smoothing: no -inf
    sm = M.NgramBaseline(2, vocab_size=6, add_k=1.0).fit(seqs)
    assert torch.isfinite(sm.predict_log_probs(torch.tensor([1]))).all()
    assert sm.predict_log_probs(torch.tensor(1)).exp()[2].item() == pytest.approx(3 / 9)
    # precision on its own training data equals the argmax frequency
    p = bg.precision_at_k(seqs, 1)
    # row0 contexts 1,2,1,2,1 -> labels 2,1,2,1,3: pred(1)=2 (3 of those right: 2,2 -> 2 hits,
    # 3 miss), pred(2)=1 -> 2 hits; row1: labels 4,4,4,4,1 after 4 -> 4 hits
    assert p.item() == pytest.approx((2 + 2 + 4) / 10)


def test_trigram():
    seqs = [[1, 2, 3, 1, 2, 3, 1, 2, 4]]
    tg = M.NgramBaseline(3).fit(seqs)
    lp = tg.predict_log_probs(torch.tensor([[1, 2]]))
    assert lp.exp()[0, 3].item() == pytest.approx(2 / 3)


def test_confidence_buckets():
    conf = torch.tensor([0.1, 0.2, 0.5, 0.95, 1.0, 0.9])
    hits = torch.tensor([0, 1, 1, 1, 1, 0])
    df = M.confidence_buckets(conf, hits)
    assert df["n"].tolist() == [2, 1, 0, 3]
    assert df["precision"].iloc[0] == pytest.approx(0.5)
    assert df["precision"].iloc[3] == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="edges"):
        M.confidence_buckets(conf, hits, edges=(0.5, 0.2))
