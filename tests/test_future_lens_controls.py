"""Future Lens controls, statistics and protocol details (reference future-lens.md §3-4).

Tiny offline models only (conftest). What is asserted would be false if the code were wrong:
identities of the controls where h provably cannot matter, leakage-free document splits,
bootstrap and n-gram known answers, and the issue-12 / issue-16 regressions.
"""

from __future__ import annotations

import math

import pytest
import torch
from conftest import hf_gpt2_bridge

import futurelens_tl as fl
from futurelens_tl.lenses.future import FIXED_PROMPTS, FutureLens, build_features
from futurelens_tl.lenses.future_stats import NgramTable, grouped_bootstrap


def _docs(n_docs=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [" ".join(f"w{int(i)}" for i in torch.randint(1, 60, (int(n),), generator=g))
            for n in torch.randint(15, 40, (n_docs,), generator=g)]


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return hf_gpt2_bridge(tmp_path_factory.mktemp("flc"), n_layers=2)


@pytest.fixture(scope="module")
def data(model):
    return build_features(model, _docs(), n_max=2, window=16, contexts_per_window=3,
                          verbose=False, splits=(0.5, 0.25, 0.25), seed=3)


# ---------------------------------------------------------------- splits and data
def test_splits_are_grouped_by_document(model, data):
    """No document (hence no window, no token of text) is shared by two splits."""
    assert data.meta["grouping"] == "document"
    for a, b in [(0, 1), (0, 2), (1, 2)]:
        da = set(data.doc[data.split == a].tolist())
        db = set(data.doc[data.split == b].tolist())
        assert da and db and not (da & db)
    # contexts never cross a document: the prefix holds no BOS after position 0
    bos = int(data.tokens[0, 0])
    for i in range(len(data)):
        t = int(data.source_pos[i])
        assert (data.tokens[i, 1 : t + 1] != bos).all()
    # the n-gram baselines are counted on the training documents only
    n_train_tokens = sum(len(s) for s in data.train_seqs)
    docs = _docs()
    tok = fl.as_view(model).tokenizer
    train_docs = sorted(set(data.doc[data.split == 0].tolist()))
    expected = sum(len(tok(docs[d], add_special_tokens=False)["input_ids"]) for d in train_docs)
    windows_per_doc = [math.ceil(len(tok(docs[d], add_special_tokens=False)["input_ids"]) / 15)
                       for d in train_docs]
    assert n_train_tokens == expected + sum(windows_per_doc)  # + one BOS per window


def test_greedy_correct_filter(model, data):
    m = data.greedy_correct(0)
    assert torch.equal(m, data.labels[:, 0] == data.corpus_labels[:, 0])
    m2 = data.greedy_correct(2)
    assert (m2 <= m).all()
    lens = FutureLens.fit(model, None, "linear_hidden", layers=[1], n_ahead=(0,), data=data,
                          linear_epochs=0, verbose=False)
    if m[data.indices("test")].any():
        ev = lens.evaluate_many([lens], model, data=data, n_ahead=(0,), k=(1,),
                                filter="greedy_correct", modes=("teacher_forced",),
                                controls=(), n_boot=0)
        assert ev.meta["n_examples"] == int(m[data.indices("test")].sum())


# ---------------------------------------------------------------- statistics
def test_grouped_bootstrap_known_answers():
    v = torch.tensor([[1.0, 1.0, 0.0, 0.0, 1.0, 0.0]])
    docs = torch.tensor([0, 0, 1, 1, 2, 2])
    est, lo, hi = grouped_bootstrap(v, docs, n_boot=500, seed=1)
    assert float(est[0]) == 0.5 and 0 <= float(lo[0]) <= 0.5 <= float(hi[0]) <= 1
    # constant values: a zero-width interval
    est, lo, hi = grouped_bootstrap(torch.ones(1, 6), docs, n_boot=100)
    assert float(lo[0]) == float(hi[0]) == 1.0
    # weights select a sub-population (a confidence bucket)
    w = torch.tensor([[1.0, 0.0, 1.0, 0.0, 0.0, 0.0]])
    est, _, _ = grouped_bootstrap(v, docs, weights=w, n_boot=50)
    assert float(est[0]) == 0.5
    # grouping matters: perfectly correlated documents give a wider interval than examples
    vals = torch.tensor([1.0] * 20 + [0.0] * 20)[None]
    by_doc = grouped_bootstrap(vals, torch.arange(40) // 20, n_boot=400, seed=0)
    by_ex = grouped_bootstrap(vals, torch.arange(40), n_boot=400, seed=0)
    assert float(by_doc[2] - by_doc[1]) > 2 * float(by_ex[2] - by_ex[1])


def test_ngram_table_matches_brute_force():
    g = torch.Generator().manual_seed(0)
    seqs = torch.randint(0, 6, (5, 30), generator=g).tolist()
    for order, gap in [(2, 0), (2, 2), (3, 0)]:
        tab = NgramTable(order, gap).fit(seqs)
        m = order - 1
        for ctx in [(1,), (3,), (2, 4), (5, 5)]:
            key = ctx[-m:]
            counts: dict[int, int] = {}
            for s in seqs:
                for t in range(m - 1, len(s) - 1 - gap):
                    if tuple(s[t - m + 1 : t + 1]) == key:
                        counts[s[t + 1 + gap]] = counts.get(s[t + 1 + gap], 0) + 1
            if counts:
                best = sorted(counts.items(), key=lambda x: (-x[1], x[0]))[0][0]
                assert tab.topk([list(ctx)], 1)[0] == [best], (order, gap, ctx)
    # back-off: an unseen trigram context uses the bigram of its last token
    tri, bi = NgramTable(3).fit([[1, 2, 3, 9, 2, 3]]), NgramTable(2).fit([[1, 2, 3, 9, 2, 3]])
    assert tri.topk([[7, 2]], 1) == bi.topk([[2]], 1) == [[3]]


# ---------------------------------------------------------------- controls
def test_controls_are_identities_where_h_cannot_matter(model, data):
    """Patching the last block cannot change N >= 1 logits: lens == mean_h == no_patch."""
    last = fl.as_view(model).n_layers - 1
    lp = FutureLens.fit(model, None, "learned_prompt", layers=[0, last], data=data,
                        prompt_batch_size=16, prompt_epochs=1, verbose=False)
    ev = lp.evaluate_many([lp], model, data=data, n_ahead=(0, 1, 2), k=(1, 3),
                          modes=("teacher_forced",), n_boot=200, verbose=False)
    df = ev.to_dataframe()
    own = df[(df.lens == lp.name) & (df["mode"] == "teacher_forced") & df.bucket.isna()]
    assert set(own[own.layer == last].query("n_ahead >= 1").h_matters) == {False}
    assert set(own[own.layer == 0].h_matters) == {True}
    assert set(own[(own.layer == last) & (own.n_ahead == 0)].h_matters) == {True}
    key = ["layer", "n_ahead", "metric", "k"]
    for c in ("mean_h", "no_patch", "shuffled_h"):
        ctl = df[(df.lens == f"{lp.name} [{c}]") & (df.control == c)]
        m = own[(own.layer == last) & (own.n_ahead >= 1)].merge(ctl, on=key)
        assert len(m) and ((m.value_x - m.value_y).abs() < 1e-6).all(), c
    # ... while at N = 0 at the last block the patched state *is* the readout: the control
    # loses the model's own prediction (a real h reproduces P_model exactly).
    p0 = own[(own.layer == last) & (own.n_ahead == 0) & (own.metric == "precision")
             & (own.k == 1)].value.iloc[0]
    assert p0 == 1.0
    gain = ev.gain(lp.name, "mean_h")
    g_last = gain[(gain.layer == last) & (gain.n_ahead >= 1)]
    assert (g_last.delta.abs() < 1e-12).all()


def test_mean_h_control_of_a_blind_lens_is_one_constant_guess(model, data):
    lens = FutureLens.fit(model, None, "linear_hidden", layers=[1], n_ahead=(1,), data=data,
                          linear_epochs=0, verbose=False)
    ev = lens.evaluate_many([lens], model, data=data, n_ahead=(1,), k=(1,),
                            modes=("teacher_forced",), n_boot=0, verbose=False)
    df = ev.to_dataframe()
    row = df[(df.control == "mean_h") & (df.metric == "precision") & df.bucket.isna()]
    idx = data.indices("test")
    with torch.no_grad():
        mean = data.sources[data.layer_row(1), data.indices("train")].mean(0)
        guess = int(lens(mean[None], 1, n_ahead=1).argmax(-1))
    expected = float((data.labels[idx, 1] == guess).double().mean())
    assert math.isclose(float(row.value.iloc[0]), expected, abs_tol=1e-12)
    torch.testing.assert_close(lens.source_mean[0], mean)


def test_surprisal_label_identity(model, data):
    """Both surprisals of the identity map at the last block (the logit lens) at N = 0."""
    last = fl.as_view(model).n_layers - 1
    lens = FutureLens(model, "linear_hidden", [last], (0,))
    lens.basis, lens.fingerprint = fl.as_view(model).basis, fl.as_view(model).fingerprint
    ev = lens._evaluate(model, data=data, n_ahead=(0,), k=(1,), split=None, n_boot=0,
                        modes=("teacher_forced",), verbose=False)
    df = ev.to_dataframe()
    tlp = data.target_logprobs(model, 0)
    own = df[df.lens == lens.name]
    official = float(own[own.metric == "surprisal"].value.iloc[0])
    label = float(own[own.metric == "surprisal_label"].value.iloc[0])
    y = data.labels[:, 0]
    assert math.isclose(official, float(-tlp.max(-1).values.mean()), rel_tol=1e-5)
    assert math.isclose(label, float(-tlp.gather(1, y[:, None]).mean()), rel_tol=1e-5)
    assert math.isclose(float(own[own.metric == "kl"].value.iloc[0]), 0.0, abs_tol=1e-4)


# ---------------------------------------------------------------- protocol details
def test_linear_vocab_default_trains_beyond_the_bias():
    """With the least-squares start, layers differ and the KL is far below the unigram's."""
    from conftest import toy_or_skip

    from futurelens_tl.toy import toy_corpus

    toy = toy_or_skip()
    d = build_features(toy, toy_corpus(40, seed=0).texts, n_max=1, layers=[1, 3], window=64,
                       contexts_per_window=4, verbose=False, splits=(0.7, 0.15, 0.15))
    lv = FutureLens.fit(toy, None, "linear_vocab", layers=[1, 3], n_ahead=(1,), data=d,
                        vocab_epochs=1, verbose=False)
    uni = FutureLens.fit(toy, None, "linear_vocab", layers=[1, 3], n_ahead=(1,), data=d,
                         vocab_epochs=0, vocab_ls=False, verbose=False)
    assert lv.W.abs().sum() > 0
    assert lv.training_summary["best_val_kl"] < 0.8 * uni.training_summary["best_val_kl"]
    h = d.sources[1, d.indices("test")]
    assert lv(h, 3, n_ahead=1).argmax(-1).unique().numel() > 1  # not one constant guess


def test_generic_prompt_is_shipped():
    from conftest import toy_or_skip

    assert FIXED_PROMPTS["generic"] == "Please, tell me something about"
    lens = FutureLens(toy_or_skip(), "fixed_prompt", fixed_prompt="generic")
    assert lens.prompt_key == "generic" and lens.prompt_length >= 5


def test_compare_logit_lens_beside_a_blind_future_lens(model, data):
    """Issue 12: N = 0 of a blind lens's continuation is the model's own readout."""
    fut = FutureLens.fit(model, None, "linear_hidden", n_ahead=(1, 2), data=data,
                         linear_epochs=0, verbose=False)
    prompt = torch.tensor([[0, 5, 7, 9, 11]])
    cmp = fl.compare(model, prompt, [fl.LogitLens(model), fut], n_continuation=3)
    panel = cmp.grid["lenses"][1]
    assert len(panel["cont_tokens"][-1][0]) == 3
    view = fl.as_view(model)
    _, resid = view.residuals(prompt, [1])
    ids, _ = fut.continuation(resid[0, 0], 1, 3)
    assert torch.equal(ids[:, 0], view.readout(resid[0, 0]).argmax(-1))
    assert torch.equal(ids[:, 1], fut(resid[0, 0], 1, n_ahead=1).argmax(-1))
    with pytest.raises(ValueError, match="n_ahead=3 is not covered"):
        fut.continuation(resid[0, 0], 1, 4)


def test_non_finite_features_raise_training_diverged(model, data):
    """Issue 16: NaN weights -> NaN features -> TrainingDivergedError, not a NaN map."""
    from futurelens_tl.lenses.trainer import TrainingDivergedError

    bad = data.subset(torch.arange(len(data)))
    bad.sources = bad.sources.clone()
    bad.sources[:, bad.indices("train")[0]] = math.nan
    for method in ("linear_hidden", "linear_vocab"):
        with pytest.raises(TrainingDivergedError, match="non-finite"):
            FutureLens.fit(model, None, method, layers=[1], n_ahead=(1,), data=bad,
                           linear_epochs=1, vocab_epochs=1, verbose=False)


def test_one_forward_for_every_n_equals_per_n_runs(model, data):
    """Causal attention: logits at M-1+N of one pass == the per-N teacher-forced runs."""
    lp = FutureLens(model, "learned_prompt", layers=[0, 1], n_ahead=(1, 2))
    fx = FutureLens(model, "fixed_prompt", layers=[0, 1], n_ahead=(1,), fixed_prompt="w3 w4 w5")
    idx = torch.arange(6)
    h = torch.cat([data.sources[0, idx], data.sources[1, idx]])
    lay = torch.tensor([0] * 6 + [1] * 6)
    nt = data.labels[idx].repeat(2, 1)
    for lens in (lp, fx):
        for patch in (True, False):
            alln = lens.rows_logits_all_n(h, lay, nt, 2, patch=patch)
            for n in range(3):
                torch.testing.assert_close(alln[:, n], lens.rows_logits(h, lay, n, nt,
                                                                        patch=patch),
                                           atol=1e-5, rtol=1e-5)


def test_future_information_ablation_identities(model, data):
    """Rank 0 changes nothing; removing every direction sets h_T to the training mean."""
    from futurelens_tl.lenses.future_ablation import future_information_ablation

    lens = FutureLens.fit(model, None, "linear_hidden", layers=[0], n_ahead=(1,), data=data,
                          linear_epochs=0, verbose=False)
    none = future_information_ablation(model, lens, data, 0, rank=0, n_random=1, n_boot=0)
    assert (none[none.metric == "kl"].value.abs() < 1e-6).all()
    d = fl.as_view(model).d_model
    full = future_information_ablation(model, lens, data, 0, rank=d, n_random=1, n_boot=0)
    view = fl.as_view(model)
    idx = data.indices("test")
    mean = lens.source_mean[0]
    torch.testing.assert_close(mean, data.sources[data.layer_row(0), data.indices("train")].mean(0))
    i = int(idx[0])
    t = int(data.source_pos[i])
    seq = data.tokens[i : i + 1, : t + 1 + data.n_max]

    def hook(x, hook):
        x = x.clone()
        x[0, t] = mean
        return x

    logits = view.run_with_hooks(seq, [(view.resid_hook(0), hook)])
    clean = torch.log_softmax(view.forward(seq)[0, t + 1].float(), -1)
    abl = torch.log_softmax(logits[0, t + 1].float(), -1)
    want = float((clean.exp() * (clean - abl)).sum())
    one = data.subset(torch.tensor([i]))
    single = future_information_ablation(model, lens, one, 0, rank=d, n_random=0, n_boot=0)
    got = single[(single.subspace == "lens") & (single.metric == "kl")
                 & (single.n_ahead == 1)].value.iloc[0]
    assert want > 1e-6 and abs(got - want) < 1e-4 * max(1.0, want)
    assert len(full[(full.subspace == "random") & (full.metric == "kl")]) == data.n_max + 1
