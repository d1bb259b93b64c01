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


# ---------------------------------------------------------------------- fused unembed + reduce
from futurelens_tl.lenses import _fused_kernel  # noqa: E402
from futurelens_tl.lenses.reduction import Unembedding, fused_unembed_stats  # noqa: E402

NATIVE = [False] + ([True] if _fused_kernel.kernel() is not None else [])


def _plain(z, f, t, valid):
    """The plain definitions on full logits (metrics.py), the reference of the fused path."""
    lp = torch.log_softmax(z, -1)
    flp = torch.log_softmax(f, -1)
    return lp, M.kl_divergence(flp, lp), valid


@pytest.fixture
def unembed_case():
    g = torch.Generator().manual_seed(1)
    rows, d, V = 45, 24, 1237  # several row blocks and vocab tiles, a ragged last tile
    W = 2 * torch.randn(d, V, generator=g)
    b = torch.randn(V, generator=g)
    x = torch.randn(rows, d, generator=g)
    x[5] *= 30  # a sharp row: logits spanning > 64 nats (the running maximum is re-based)
    W[:, 900] = 40 * x[5] / x[5].norm()  # ... and its maximum far out in a late tile
    W[:, 11] = W[:, 10]  # an exact tie between two tokens
    b[11] = b[10]
    f = 3 * torch.randn(rows, V, generator=g)
    t = torch.randint(0, V, (rows, 2), generator=g)
    t[3, 0] = -1
    t[6, 1] = -1
    t[8, 0] = 10  # the target tied with token 11: the tie is not "strictly larger"
    valid = torch.ones(rows, dtype=torch.bool)
    valid[-3:] = False
    return x, W, b, f, t, valid


@pytest.mark.parametrize("native", NATIVE)
@pytest.mark.parametrize(("bias", "layout"), [(False, "row"), (True, "row"), (False, "col")])
def test_fused_matches_definitions(unembed_case, native, bias, layout):
    x, W, b, f, t, valid = unembed_case
    if layout == "col":  # an HF-tied unembedding: lm_head.weight.T, column-major
        W = W.t().contiguous().t()
    U = Unembedding(W, b if bias else None)
    z = x @ W + (b if bias else 0)
    assert z[5].max() - z[5, :256].max() > 64  # the re-base path is taken
    final = FinalDistribution.from_logits(f, valid)
    track = torch.tensor([0, 10, 900])
    st = fused_unembed_stats(x, U, 6, final=final, targets=t, track_ids=track, native=native,
                             row_block=16, vocab_chunk=512)
    lp, kl, _ = _plain(z, f, t, valid)
    # top-k: values exact; ids equal the definition up to the order of exact ties
    ref_v, ref_i = torch.sort(lp, dim=-1, descending=True, stable=True)
    assert torch.allclose(st["top_log_probs"], ref_v[:, :6], atol=2e-5)
    assert torch.equal(st["top_ids"], ref_i[:, :6])  # ties: the lower id first
    assert torch.allclose(st["log_normalizer"], torch.logsumexp(z, -1), atol=2e-5)
    assert torch.allclose(st["entropy"], M.entropy(lp), atol=2e-5)
    assert torch.allclose(st["kl"][valid], kl[valid], atol=5e-5)
    assert torch.isnan(st["kl"][~valid]).all()
    assert torch.allclose(st["tracked_probs"], lp.exp()[:, track], atol=1e-6)
    for j in range(2):
        ok = t[:, j] >= 0
        want = lp[ok].gather(-1, t[ok, j, None])[:, 0]
        assert torch.allclose(st["target_log_probs"][ok, j], want, atol=2e-5)
        assert torch.equal(st["target_ranks"][ok, j], M.rank_of(lp[ok], t[ok, j]))
        assert torch.isnan(st["target_log_probs"][~ok, j]).all()
        assert (st["target_ranks"][~ok, j] == 0).all()
    assert st["target_ranks"][8, 0] == M.rank_of(lp[8:9], t[8:9, 0])[0]
    # the same statistics as the plain chunked path, which keeps [rows, vocab] logits
    ref = logit_stats(z.clone(), 6, final=final, targets=t)
    assert torch.equal(st["target_ranks"], ref["target_ranks"])


@pytest.mark.parametrize("native", NATIVE)
def test_fused_soft_cap_partial_ranks_and_nan_rows(unembed_case, native):
    x, W, _, f, t, _ = unembed_case
    x = x.clone()
    x[2] = math.nan
    U = Unembedding(W, None, soft_cap=5.0)
    z = 5.0 * torch.tanh((x @ W) / 5.0)
    st = fused_unembed_stats(x, U, 3, targets=t, ranks=1, native=native, vocab_chunk=300)
    lp = torch.log_softmax(z, -1)
    ok = torch.isfinite(lp).all(-1)
    assert torch.allclose(st["entropy"][ok], M.entropy(lp[ok]), atol=2e-5)
    assert st["target_ranks"].shape == (x.shape[0], 1)
    good = ok & (t[:, 0] >= 0)
    # ranks on the logits themselves: the saturated cap makes near-equal logits that a
    # log-softmax would round together
    assert torch.equal(st["target_ranks"][good, 0], M.rank_of(z[good], t[good, 0]))
    assert torch.isnan(st["entropy"][2]) and torch.isnan(st["log_normalizer"][2])
    one = fused_unembed_stats(x, U, 3, targets=t[:, 0], native=native)
    assert one["target_ranks"].shape == (x.shape[0],)
    assert torch.equal(one["target_ranks"][good], st["target_ranks"][good, 0])


def test_native_equals_torch_fallback(unembed_case):
    if len(NATIVE) < 2:
        pytest.skip("no C compiler here: only the torch fallback runs")
    x, W, b, f, t, valid = unembed_case
    U = Unembedding(W, b)
    final = FinalDistribution.from_logits(f, valid)
    a = fused_unembed_stats(x, U, 4, final=final, targets=t, native=True, vocab_chunk=512)
    c = fused_unembed_stats(x, U, 4, final=final, targets=t, native=False, vocab_chunk=512)
    assert torch.equal(a["top_ids"], c["top_ids"])
    assert torch.equal(a["target_ranks"], c["target_ranks"])
    for key in ("top_log_probs", "entropy", "kl", "target_log_probs", "log_normalizer"):
        assert torch.allclose(a[key].nan_to_num(), c[key].nan_to_num(), atol=2e-5), key


@pytest.mark.parametrize("native", NATIVE)
def test_approximate_readout_recall_on_a_random_model(native):
    """bf16 matmul + float32 re-scoring: top-10 recall >= 0.99, re-scored log-probs exact."""
    g = torch.Generator().manual_seed(3)
    rows, d, V = 200, 128, 6000
    W = torch.randn(d, V, generator=g) / d**0.5
    x = 3 * torch.randn(rows, d, generator=g)
    z = x @ W
    U = Unembedding(W)
    st = fused_unembed_stats(x, U, 10, approximate=True, native=native)
    ex = fused_unembed_stats(x, U, 10, native=native)
    hit = (st["top_ids"][:, :, None] == ex["top_ids"][:, None, :]).any(-1).float().mean()
    assert hit >= 0.99
    # the re-scored top logits are the float32 ones (normalised by the bf16 log Z)
    lz = st["log_normalizer"][:, None]
    assert torch.allclose(st["top_log_probs"] + lz, z.gather(1, st["top_ids"]), atol=1e-4)
    assert (st["log_normalizer"] - ex["log_normalizer"]).abs().max() < 0.05
    assert (st["entropy"] - ex["entropy"]).abs().max() < 0.05


def test_run_with_lenses_readout_modes(tmp_path):
    """readout='approximate' on a model: exact re-scored top-k, same cells; bad modes raise."""
    from conftest import hf_gpt2_bridge

    import futurelens_tl as fl

    model = hf_gpt2_bridge(tmp_path, vocab=613)
    toks = torch.randint(1, 613, (2, 12), generator=torch.Generator().manual_seed(0))
    lens = fl.LogitLens(model)
    _, ex = fl.run_with_lenses(model, toks, lens, top_k=5)
    _, ap = fl.run_with_lenses(model, toks, lens, top_k=5, readout="approximate")
    for layer in lens.layers:
        a, e = ap["logit", layer], ex["logit", layer]
        hit = (a.top_ids[..., :, None] == e.top_ids[..., None, :]).any(-1).float().mean()
        assert hit >= 0.95
        assert torch.allclose(a.entropy, e.entropy, atol=0.05)
        assert torch.equal(a.target_ids, e.target_ids)
    with pytest.raises(ValueError, match="readout"):
        fl.run_with_lenses(model, toks, lens, readout="fast")
