"""Probing tagger: the planted head whose output carries the label is ranked first."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_heads import D_VOCAB, planted_model

from futurelens_tl.attention.probes import _auroc, head_features, probe_heads


@pytest.fixture(scope="module")
def probe_task():
    m = planted_model("probe")
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(1, D_VOCAB, (96, 12), generator=g)
    tokens[:, 0] = 0
    labels = (tokens[:, 1] % 2).long()  # parity of the token at position 1
    return m, tokens, labels


@pytest.mark.parametrize("method", ["logreg", pytest.param("torch", marks=pytest.mark.slow)])
def test_planted_head_ranked_first(probe_task, method):
    m, tokens, labels = probe_task
    res = probe_heads(m, tokens, labels, positions=-1, method=method, seed=0, verbose=False)
    assert res.top(1)[0][:2] == (0, 0)
    assert res.accuracy[0, 0] > 0.9
    assert res.auroc[0, 0] > 0.9
    others = torch.cat([res.accuracy[0, 1:], res.accuracy[1]])
    assert others.max() < res.accuracy[0, 0] - 0.1
    assert res.directions.shape == (2, 2, 64)
    assert abs(res.chance - 0.5) < 0.1


def test_shuffled_labels_control(probe_task):
    m, tokens, labels = probe_task
    feats = head_features(m, tokens, -1, verbose=False)
    perm = torch.randperm(len(labels), generator=torch.Generator().manual_seed(1))
    res = probe_heads(m, None, labels[perm], features=feats, seed=0, verbose=False)
    assert res.accuracy.max() < 0.75  # nothing decodes shuffled labels


def test_groups_never_split():
    from futurelens_tl.attention.probes import _folds

    groups = np.repeat(np.arange(10), 3)
    folds = _folds(30, groups, 2, seed=0)
    for f in folds:
        for g in np.unique(groups[f]):
            assert set(np.nonzero(groups == g)[0]) <= set(f)


def test_auroc_matches_sklearn():
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 50)
    s = rng.normal(size=50).round(1)
    assert _auroc(y, s) == pytest.approx(roc_auc_score(y, s))


def test_bad_input(probe_task):
    m, tokens, labels = probe_task
    with pytest.raises(ValueError, match="single class"):
        probe_heads(m, tokens, torch.zeros(len(tokens), dtype=torch.long), verbose=False)
    with pytest.raises(ValueError, match="labels has 3 entries"):
        probe_heads(m, tokens, labels[:3], verbose=False)
    with pytest.raises(ValueError, match="method="):
        probe_heads(m, tokens, labels, method="svm", verbose=False)
