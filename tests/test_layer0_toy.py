"""Layer-0 decomposition on the embedded toy model (real byte-level BPE subwords).

Skips (rather than training for minutes) when the pinned toy checkpoint is not available.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import toy_or_skip

import futurelens_tl as fl
from futurelens_tl.attention.layer0 import count_bigrams, detokenization_scores


@pytest.fixture(scope="module")
def toy():
    return toy_or_skip()


def test_toy_identity_and_detokenization_heads(toy, capsys):
    from futurelens_tl.toy import toy_texts

    view = fl.as_view(toy)
    dec = fl.decompose_first_layer(toy)
    tokens = view.to_tokens(toy_texts("test", n=2))[:, :64]
    _, cache = view.run_with_cache(tokens, ["blocks.0.attn.hook_pattern"])
    assert (dec.attention(tokens) - cache["blocks.0.attn.hook_pattern"]).abs().max() < 1e-5

    tk = toy.tokenizer
    seqs = [tk(t, add_special_tokens=False)["input_ids"] for t in toy_texts("train", n=400)]
    bigrams = count_bigrams(seqs, dec.d_vocab, verbose=False)
    auc = dec.detokenization_auroc(bigrams, verbose=False)
    seen = torch.from_numpy(bigrams.suffix_totals() > 0)
    mean_all = auc.nan_to_num(0).mean(-1)
    mean_seen = auc[:, seen].nanmean(-1)
    order = torch.argsort(mean_seen, descending=True).tolist()
    with capsys.disabled():
        print("\nlayer-0 detokenization AUROC on the toy model (head: all suffixes / seen only):")
        for h in order:
            print(f"  head {h}: {mean_all[h]:.3f} / {mean_seen[h]:.3f}")
    assert ((auc.nan_to_num(0) >= 0) & (auc.nan_to_num(0) <= 1)).all()
    # the trained model's best layer-0 head ranks real prefixes above chance
    assert mean_seen[order[0]] > 0.5
    assert torch.allclose(detokenization_scores(dec, bigrams), mean_all.float(), atol=1e-6)
    # its top-10 prefixes of the 50 most frequent suffixes hold more observed prefixes than a
    # random ranking would (10 * n_seen_prefixes / |V| per suffix)
    best = order[0]
    totals = bigrams.suffix_totals()
    suffixes = [int(v) for v in totals.argsort()[::-1][:50]]
    top = dec.top_prefixes(suffixes, best, k=10)
    hits = sum(bigrams.get(int(u), int(s)) > 0 for u, s in zip(top.prefix, top.suffix))
    n_pos = np.diff(bigrams.indptr)[suffixes]
    expected = float((10 * n_pos / dec.d_vocab).sum())
    with capsys.disabled():
        print(f"  head {best}: {hits} observed prefixes in the top-10 of 50 frequent suffixes "
              f"(random ranking: {expected:.1f})")
    assert hits > expected


def test_toy_fixed_query_profile_shows_recency(toy):
    """Issue 14: every fixed-query profile z[i, i-d] - z[i, i] falls with distance on the toy,
    while the old average over different query sets per distance rises (the inverted profile)."""
    dec = fl.decompose_first_layer(toy)
    df = dec.position_terms_by_distance(max_distance=10, query_pos=[20, 60, 100])
    assert (df[df.distance == 0].logit == 0).all()
    at10 = df[df.distance == 10].pivot(index="query_pos", columns="head", values="logit")
    assert (at10.to_numpy() < -1.0).all()  # every head, every fixed query: recency
    # the pitfall, reproduced: centred rows averaged over all queries i >= d per distance
    z = dec.position_logits().double()
    n = z.shape[-1]
    mask = torch.ones(n, n, dtype=torch.bool).tril()
    zc = (z - z.sum(-1, keepdim=True) / mask.sum(-1)) * mask
    old = torch.stack([torch.diagonal(zc, offset=-d, dim1=-2, dim2=-1).mean(-1)
                       for d in range(11)], -1)
    assert (old[:, 10] > old[:, 0]).all()  # rises: it would have read as anti-recency
    assert dec.default_query_pos() == dec.n_ctx // 2
