"""Future Lens (reference future-lens.md): identities, data pipeline, evaluation, bad input.

Tiny offline models only (conftest); the toy-model headline test is in
``test_future_lens_toy.py``.
"""

from __future__ import annotations

import math
import os

import pytest
import torch
from conftest import hf_gpt2_bridge, native_bridge

import futurelens_tl as fl
from futurelens_tl.data import FORWARD_COUNTER
from futurelens_tl.lenses.base import LensMismatchError
from futurelens_tl.lenses.future import (
    FIXED_PROMPTS,
    FutureLens,
    FutureLensConfig,
    bigram_table,
    build_features,
)


def _windows(n=40, width=24, vocab=61, seed=0):
    g = torch.Generator().manual_seed(seed)
    toks = torch.randint(1, vocab, (n, width), generator=g)
    toks[:, 0] = 0
    return toks


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return hf_gpt2_bridge(tmp_path_factory.mktemp("fl"), n_layers=2)


@pytest.fixture(scope="module")
def data(model):
    return build_features(model, _windows(), n_max=3, verbose=False, batch_size=16)


# ---------------------------------------------------------------- data pipeline
def test_features_match_direct_forward(model, data):
    """Sources, targets and greedy labels equal a plain per-example TL forward."""
    view = fl.as_view(model)
    for i in [0, 7, 31]:
        t = int(data.source_pos[i])
        seq = data.tokens[i, : t + 1 + data.n_max][None]
        logits, cache = view.run_with_cache(seq)
        # greedy labels: y_N = argmax at T+N, and the sequence continues with them
        assert torch.equal(logits[0, t : t + 4].argmax(-1), data.labels[i])
        assert torch.equal(seq[0, t + 1 :], data.labels[i, :3])
        for k, layer in enumerate(data.layers):
            ref = cache[view.resid_hook(layer)][0, t]
            torch.testing.assert_close(data.sources[k, i], ref, atol=1e-5, rtol=1e-5)
        final = cache[view.resid_hook(view.n_layers - 1)][0, t : t + 4]
        torch.testing.assert_close(data.targets[i], final, atol=1e-5, rtol=1e-5)
        # P_model^N recomputed from the cached residual equals the model's own logits
        lp = data.target_logprobs(model, 2, torch.tensor([i]))
        torch.testing.assert_close(lp[0], torch.log_softmax(logits[0, t + 2], -1),
                                   atol=1e-4, rtol=1e-4)


def test_padding_does_not_change_features(model):
    """Right-padded batches (mixed T) equal unpadded one-at-a-time runs (pitfall 7)."""
    w = _windows(6, 20, seed=3)
    batched = build_features(model, w, n_max=2, batch_size=6, verbose=False)
    single = build_features(model, w, n_max=2, batch_size=1, verbose=False)
    assert batched.source_pos.unique().numel() >= 4  # really mixed lengths
    assert torch.equal(batched.labels, single.labels)
    torch.testing.assert_close(batched.sources, single.sources, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(batched.targets, single.targets, atol=1e-5, rtol=1e-5)


def test_one_feature_pass_for_all_layers_and_methods(model):
    FORWARD_COUNTER.reset()
    d = build_features(model, _windows(30), n_max=2, batch_size=10, verbose=False,
                       label_source="corpus")
    assert FORWARD_COUNTER.passes == 3 == d.n_forward
    assert d.label_passes == 0
    for method in ("linear_hidden", "linear_vocab", "learned_prompt"):
        FutureLens.fit(model, None, method, n_ahead=(1, 2), data=d, verbose=False,
                       linear_epochs=1, vocab_epochs=1, prompt_batch_size=8)
    assert FORWARD_COUNTER.passes == 3  # training reuses the cache: no further context passes


def test_corpus_labels_are_the_text(model):
    w = _windows(10, 16, seed=5)
    d = build_features(model, w, n_max=2, label_source="corpus", verbose=False)
    for i in range(len(d)):
        t = int(d.source_pos[i])
        assert torch.equal(d.labels[i], w[i, t + 1 : t + 4])


def test_splits_are_disjoint_and_seeded(model):
    a = build_features(model, _windows(30), n_max=1, verbose=False, seed=1)
    b = build_features(model, _windows(30), n_max=1, verbose=False, seed=1)
    assert torch.equal(a.split, b.split) and torch.equal(a.source_pos, b.source_pos)
    assert set(a.split.tolist()) == {0, 1, 2}
    assert len(a.indices("train")) + len(a.indices("val")) + len(a.indices("test")) == len(a)


# ---------------------------------------------------------------- identities
def test_transplant_into_identical_context_reproduces_distribution(model):
    """Fixed prompt = the context itself; its own h_T^l -> the original P(next) (and N=1)."""
    view = fl.as_view(model)
    ctx = torch.tensor([5, 9, 13, 2, 44, 7])
    logits, cache = view.run_with_cache(ctx[None])
    nxt = torch.tensor([[17, 23]])
    logits_full = view.forward(torch.cat([ctx[None], nxt], 1))
    for layer in (0, 1):
        lens = FutureLens(model, "fixed_prompt", [layer], (0, 1, 2), fixed_prompt=ctx)
        h = cache[view.resid_hook(layer)][0, -1][None]
        got0 = lens(h, layer, n_ahead=0)
        torch.testing.assert_close(got0[0], logits[0, -1], atol=1e-4, rtol=1e-4)
        got2 = lens(h, layer, n_ahead=2, next_tokens=nxt)
        torch.testing.assert_close(got2[0], logits_full[0, -1], atol=1e-4, rtol=1e-4)


def test_learned_prompt_equal_to_embeddings_is_identity(any_model):
    """A soft prompt equal to a context's token embeddings + own transplant = the model.

    On every backend (native bridge, HF GPT-2 bridge, TL 3 HookedTransformer): the soft prompt
    replaces the ``hook_embed`` output and positions are still added.
    """
    model = any_model
    view = fl.as_view(model)
    ctx = torch.tensor([3, 8, 21, 34, 55, 1, 12, 30, 40, 6])
    logits = view.forward(torch.cat([ctx, torch.tensor([11])])[None])
    _, cache = view.run_with_cache(ctx[None])
    lens = FutureLens(model, "learned_prompt", [0, 1], (0, 1))
    with torch.no_grad():
        lens.soft_prompt.copy_(view.W_E[ctx].expand(2, -1, -1))
    for layer in (0, 1):
        h = cache[view.resid_hook(layer)][0, -1][None]
        torch.testing.assert_close(lens(h, layer, n_ahead=0)[0], logits[0, -2],
                                   atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(
            lens(h, layer, n_ahead=1, next_tokens=torch.tensor([[11]]))[0], logits[0, -1],
            atol=1e-4, rtol=1e-4)


def test_linear_hidden_identity_at_last_layer_is_logit_lens(model, data):
    view = fl.as_view(model)
    last = view.n_layers - 1
    lens = FutureLens(model, "linear_hidden", [last], (0,))  # A = I, b = 0 at construction
    h = data.sources[data.layer_row(last)]
    got = lens(h, last, n_ahead=0)
    torch.testing.assert_close(got, view.readout(h), atol=1e-5, rtol=1e-5)
    # and the logit lens on the last layer is the model's own next-token distribution
    torch.testing.assert_close(torch.log_softmax(got, -1), data.target_logprobs(model, 0),
                               atol=1e-4, rtol=1e-4)


def test_least_squares_uses_whole_training_set(model, data):
    """LS init equals the closed-form fit over ALL training rows (pitfall 4)."""
    lens = FutureLens.fit(model, None, "linear_hidden", [1], (1,), data=data, linear_epochs=0,
                          linear_ridge=0.0, verbose=False)
    tr = data.indices("train")
    x = data.sources[data.layer_row(1), tr].double()
    y = data.targets[tr, 1].double()
    x1 = torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype)], 1)
    sol = torch.linalg.lstsq(x1, y).solution
    pred = (x1 @ sol).float()
    ours = x.float() @ lens.A[0, 0] + lens.b[0, 0]
    torch.testing.assert_close(ours, pred, atol=2e-3, rtol=2e-3)


# ---------------------------------------------------------------- continuation and hooks
def test_batched_continuation_equals_per_row_loop(model):
    """All rows in one batch == the official per-example loop (patch every full re-run)."""
    view = fl.as_view(model)
    torch.manual_seed(0)
    lens = FutureLens(model, "learned_prompt", [0, 1], (1,))
    with torch.no_grad():
        lens.soft_prompt.normal_(0, 1.0)
    h = torch.randn(6, view.d_model) * 3
    layers = torch.tensor([0, 1, 0, 1, 1, 0])
    ids, probs = lens.rows_continuation(h, layers, 3, batch_size=4)
    for r in range(6):
        seq = torch.empty(0, dtype=torch.long)
        for _ in range(3):
            lg = lens(h[r][None], int(layers[r]), n_ahead=len(seq),
                      next_tokens=seq[None] if len(seq) else None)
            if len(seq) == 0:
                lg = lens(h[r][None], int(layers[r]), n_ahead=0)
            seq = torch.cat([seq, lg.argmax(-1)])
            p = torch.softmax(lg[0].detach(), -1).max()
            assert math.isclose(float(p), float(probs[r, len(seq) - 1]), rel_tol=1e-4)
        assert torch.equal(seq, ids[r])
    # forward without next_tokens at N >= 1 is the free-running readout
    free = lens(h[:2], 0, n_ahead=2)
    teach = lens(h[:2], 0, n_ahead=2, next_tokens=lens.continuation(h[:2], 0, 2)[0])
    torch.testing.assert_close(free, teach)


def test_hooks_inside_a_run_do_not_leak(model):
    """A prompt lens run from inside a TL hook (run_with_lenses) sees isolated hooks."""
    view = fl.as_view(model)
    lens = FutureLens(model, "fixed_prompt", n_ahead=0, fixed_prompt=torch.tensor([4, 5, 6]))
    toks = torch.randint(0, 61, (2, 5))
    got = {}
    out = view.run_with_hooks(toks, lens.hooks(lambda layer, x: got.__setitem__(layer, x)))
    assert sum(len(hp._forward_hooks) for hp in model.hook_dict.values()) == 0
    _, cache = view.run_with_cache(toks)
    for layer in lens.layers:
        torch.testing.assert_close(got[layer], lens(cache[view.resid_hook(layer)], layer))
    torch.testing.assert_close(out, view.forward(toks))


# ---------------------------------------------------------------- training and evaluation
@pytest.mark.parametrize("method, kw", [
    ("linear_hidden", dict(n_ahead=(1, 2), linear_epochs=3, linear_batch_size=8)),
    ("linear_vocab", dict(n_ahead=(1,), vocab_epochs=3, vocab_rank=4, linear_batch_size=8)),
    ("learned_prompt", dict(prompt_epochs=3, prompt_batch_size=16, prompt_lr=1e-2)),
])
def test_fit_resume_reproduces_uninterrupted(model, data, tmp_path, method, kw):
    """Epoch checkpoints: stopped after 1 epoch, resumed in a fresh lens == uninterrupted."""
    full = FutureLens.fit(model, None, method, layers=[0, 1], data=data, verbose=False, **kw)
    ck = tmp_path / f"{method}.pt"
    part = FutureLens.fit(model, None, method, layers=[0, 1], data=data, verbose=False,
                          checkpoint=ck, stop_after_epochs=1, **kw)
    assert ck.exists() and not part.training_summary["finished"]
    assert len(part.training_summary["val_kl_history"]) == 2  # init + one epoch
    resumed = FutureLens.fit(model, None, method, layers=[0, 1], data=data, verbose=False,
                             checkpoint=ck, **kw)
    s = resumed.training_summary
    assert s["finished"] and s["resumed_from_epoch"] == 1
    assert s["val_kl_history"] == full.training_summary["val_kl_history"]
    for (name, a), b in zip(full.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name
    assert not [f for f in os.listdir(tmp_path) if f.endswith(".tmp")]
    # other settings (another lr, other layers) refuse the checkpoint
    with pytest.raises(ValueError, match="other settings"):
        FutureLens.fit(model, None, method, layers=[1], data=data, verbose=False,
                       checkpoint=ck, **kw)


def test_learned_prompt_divergence_names_epoch_and_keeps_checkpoint(model, data, tmp_path,
                                                                    monkeypatch):
    from futurelens_tl.lenses.trainer import TrainingDivergedError

    seen = {"epoch": -1}
    batches, loss = FutureLens._train_batches, FutureLens._prompt_loss

    def spy_batches(self, idx, bs, epoch):
        seen["epoch"] = epoch
        return batches(self, idx, bs, epoch)

    def nan_in_epoch_1(self, d, bidx):  # training losses only (validation runs under no_grad)
        out = loss(self, d, bidx)
        return out * math.nan if seen["epoch"] == 1 and torch.is_grad_enabled() else out

    monkeypatch.setattr(FutureLens, "_train_batches", spy_batches)
    monkeypatch.setattr(FutureLens, "_prompt_loss", nan_in_epoch_1)
    ck = tmp_path / "lp.pt"
    with pytest.raises(TrainingDivergedError, match=r"epoch 1 step 0.*checkpoint"):
        FutureLens.fit(model, None, "learned_prompt", layers=[1], data=data, verbose=False,
                       checkpoint=ck, prompt_epochs=2, prompt_batch_size=16)
    kept = torch.load(ck, weights_only=True)
    assert kept["epoch"] == 1 and torch.isfinite(kept["lens"]["soft_prompt"]).all()


def test_fit_all_methods_and_evaluate_contract(model, data):
    lenses = [
        FutureLens.fit(model, None, "linear_hidden", n_ahead=(0, 1, 2), data=data,
                       linear_epochs=1, verbose=False),
        FutureLens.fit(model, None, "linear_vocab", n_ahead=(0, 1, 2), data=data,
                       vocab_epochs=1, vocab_rank=4, verbose=False),
        FutureLens.fit(model, None, "fixed_prompt", data=data, verbose=False,
                       fixed_prompt="w1 w2 w3"),
        FutureLens.fit(model, None, "learned_prompt", data=data, prompt_batch_size=16,
                       prompt_epochs=2, prompt_lr=1e-2, verbose=False),
    ]
    lp = lenses[-1]
    hist = lp.training_summary["val_kl_history"]
    assert min(hist[1:]) <= hist[0]  # selected on validation, never worse than the init
    assert lp.token_fed and not lenses[0].token_fed
    ev = FutureLens.evaluate_many(lenses, model, data=data, n_ahead=(0, 1, 2), verbose=False,
                                  batch_size=64)
    df = ev.to_dataframe()
    assert set(df["mode"]) == {"teacher_forced", "free_running", "baseline"}
    assert set(df["label_source"]) == {"model_greedy"}
    assert df[df["mode"] == "free_running"].metric.isin(["match", "surprisal"]).all()
    tf = df[(df["mode"] == "teacher_forced") & df.bucket.isna() & (df.metric == "precision")]
    assert set(tf.k.dropna()) == set(range(1, 11))
    # precision@k is cumulative in k
    for _, g in tf.groupby(["lens", "layer", "n_ahead"]):
        v = g.sort_values("k").value.to_numpy()
        assert (v[1:] >= v[:-1] - 1e-12).all()
    # token_fed: prompt methods at N >= 1 only
    fed = df[(df["mode"] == "teacher_forced")]
    assert (fed.token_fed == ((fed.method.isin(["fixed_prompt", "learned_prompt"]))
                              & (fed.n_ahead >= 1))).all()
    # one bucket label format for both evaluation paths (metrics.confidence_buckets)
    from futurelens_tl.metrics import confidence_buckets

    ref = confidence_buckets(torch.tensor([0.5]), torch.tensor([1]))["bucket"].tolist()
    assert sorted(df.bucket.dropna().unique()) == sorted(ref)
    # n-gram baselines at every N: bigram and trigram, plus the blind skip-bigram at N >= 1
    base = df[(df["mode"] == "baseline") & (df.metric == "precision") & (df.k == 1)]
    assert sorted(map(tuple, base[["lens", "n_ahead"]].values.tolist())) == sorted(
        [(b, n) for n in (0, 1, 2) for b in ("bigram", "trigram")]
        + [("skip_bigram", n) for n in (1, 2)])
    # bucket counts add up to n
    b = df[df.bucket.notna() & (df.lens == lp.name) & (df.layer == 0) & (df.n_ahead == 1)]
    assert int(b.n.sum()) == len(data.indices("test"))
    # every lens row has its controls (no_patch for prompt methods only) and an interval
    rows = df[(df["mode"] == "teacher_forced") & (df.metric == "precision") & (df.k == 1)
              & df.bucket.isna() & (df.layer == 0) & (df.n_ahead == 1)]
    for lens in lenses[1:]:
        got = set(rows[rows.method == lens.method].control.fillna("-"))
        want = {"-", "mean_h", "shuffled_h"} | ({"no_patch"} if lens.is_prompt else set())
        assert got == want, (lens.name, got)
    assert (rows.ci_low <= rows.value + 1e-12).all() and (rows.value <= rows.ci_high + 1e-12).all()
    fig = ev.plot("precision", k=1)
    assert len(fig.axes) == 3


def test_evaluate_via_fl_evaluate_and_surprisal_identity(model, data):
    """Surprisal of the logit lens (identity map, last layer, N=0) is -log max P_model."""
    last = fl.as_view(model).n_layers - 1
    lens = FutureLens(model, "linear_hidden", [last], (0,))
    lens.basis, lens.fingerprint = fl.as_view(model).basis, fl.as_view(model).fingerprint
    ev = lens._evaluate(model, data=data, n_ahead=(0,), verbose=False, split=None)
    df = ev.to_dataframe()
    row = df[(df.metric == "surprisal") & (df["mode"] == "teacher_forced")]
    expected = -data.target_logprobs(model, 0).max(-1).values.mean()
    assert math.isclose(float(row.value.iloc[0]), float(expected), rel_tol=1e-4)
    p1 = df[(df.metric == "precision") & (df.k == 1) & df.bucket.isna()
            & (df["mode"] == "teacher_forced")]
    assert float(p1.value.iloc[0]) == 1.0  # greedy labels: the logit lens at the top is exact


def test_bigram_table_known_answer():
    toks = torch.tensor([[0, 1, 2, 1, 2, 1, 3]])
    t = bigram_table(toks, 2)
    assert t[1] == [2, 3] and t[0] == [1] and t[2] == [1]


# ---------------------------------------------------------------- persistence
def test_save_load_round_trip_and_refusals(model, data, tmp_path):
    lens = FutureLens.fit(model, None, "learned_prompt", [0, 1], (1, 2), data=data,
                          prompt_batch_size=8, verbose=False)
    path = tmp_path / "fl.safetensors"
    lens.save(path)
    back = FutureLens.load(path, model)
    assert torch.equal(back.soft_prompt, lens.soft_prompt)
    assert back.layers == lens.layers and back.n_aheads == lens.n_aheads
    h = data.sources[1, :4]
    nt = data.labels[:4]
    torch.testing.assert_close(back(h, 0, n_ahead=1, next_tokens=nt),
                               lens(h, 0, n_ahead=1, next_tokens=nt))
    other = native_bridge(n_layers=2, d_vocab=61)
    with pytest.raises(LensMismatchError):
        FutureLens.load(path, other)
    with pytest.raises(LensMismatchError):
        back.check_model(other)
    lin = FutureLens.fit(model, None, "linear_hidden", [1], (1,), data=data, linear_epochs=0,
                         verbose=False)
    lin.save(tmp_path / "lin.safetensors")
    lin2 = FutureLens.load(tmp_path / "lin.safetensors", model)
    assert torch.equal(lin2.A, lin.A)
    fx = FutureLens.fit(model, None, "fixed_prompt", data=data, fixed_prompt=torch.tensor([1, 2]),
                        verbose=False)
    fx.save(tmp_path / "fx.safetensors")
    assert torch.equal(FutureLens.load(tmp_path / "fx.safetensors", model).prompt_tokens,
                       fx.prompt_tokens)


def test_load_refuses_processed_basis(tmp_path):
    m = hf_gpt2_bridge(tmp_path)
    d = build_features(m, _windows(20), n_max=1, verbose=False)
    lens = FutureLens.fit(m, None, "learned_prompt", [0], (1,), data=d, prompt_batch_size=8,
                          verbose=False)
    lens.save(tmp_path / "a.safetensors")
    m.enable_compatibility_mode()
    assert fl.as_view(m).basis == "processed"
    with pytest.raises(LensMismatchError, match="basis"):
        FutureLens.load(tmp_path / "a.safetensors", m)
    with pytest.raises(ValueError):
        d.check_model(m)


def test_save_is_atomic_on_failure(model, data, tmp_path, monkeypatch):
    lens = FutureLens.fit(model, None, "linear_hidden", [1], (1,), data=data, linear_epochs=0,
                          verbose=False)
    path = tmp_path / "x.safetensors"
    import safetensors.torch as st

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(st, "save_file", boom)
    with pytest.raises(OSError):
        lens.save(path)
    assert not path.exists() and os.listdir(tmp_path) == []


# ---------------------------------------------------------------- GPT-J path (no download)
def test_paper_gptj_config_values():
    c = FutureLensConfig.paper_gptj()
    assert (c.prompt_length, c.train_n, c.prompt_init_std) == (10, (1,), 0.02)
    assert (c.prompt_lr, c.prompt_weight_decay) == (5e-4, 1e-5)
    assert (c.prompt_batch_size, c.prompt_grad_accum, c.prompt_epochs) == (2, 4, 1)
    assert c.max_train_examples == 10_000 and c.seed == 42 and c.autocast == "bf16"
    assert (c.linear_lr, c.linear_momentum, c.linear_weight_decay, c.linear_clip) == \
        (0.05, 0.9, 1e-3, 1.0)
    assert (c.linear_batch_size, c.linear_grad_accum, c.linear_epochs) == (100, 5, 3)
    assert c.fixed_prompt == "hello" and c.target_layer is None and c.n_max == 3
    assert FIXED_PROMPTS["hello"] == 'Hello! Could you please tell me more about "'


def test_official_prompt_loader_validates(model, tmp_path):
    d = fl.as_view(model).d_model
    fake = torch.randn(10, d).to(torch.bfloat16)
    torch.save(fake, tmp_path / "gptj_soft_prefix.pt")
    lens = FutureLens.load_official_prompt(tmp_path / "gptj_soft_prefix.pt", model, layer=1)
    assert lens.soft_prompt.dtype == torch.float32 and lens.layers == [1]
    torch.testing.assert_close(lens.soft_prompt[0], fake.float())
    with pytest.raises(ValueError, match="shape"):
        FutureLens.load_official_prompt(torch.randn(10, d + 1), model)
    with pytest.raises(ValueError, match="out of range"):
        FutureLens.load_official_prompt(fake, model, layer=13)
    with pytest.raises(ValueError, match="does not exist"):
        FutureLens.load_official_prompt(tmp_path / "missing.pt", model)


# ---------------------------------------------------------------- views
def test_future_view_batched_and_cross_layer(model, data):
    lens = FutureLens.fit(model, None, "learned_prompt", [0, 1], (1,), data=data,
                          prompt_batch_size=8, verbose=False)
    toks = torch.tensor([[0, 5, 9, 13]])
    v = lens.future_view(model, toks, n_tokens=3)
    assert tuple(v.ids.shape) == (2, 4, 4)
    view = fl.as_view(model)
    _, cache = view.run_with_cache(toks)
    h = cache[view.resid_hook(1)][0, 2][None]
    ids, probs = lens.continuation(h, 1, 3)
    assert torch.equal(v.ids[1, 2, 1:], ids[0].cpu())
    assert int(v.ids[1, 2, 0]) == int(view.readout(h).argmax())
    df = v.to_dataframe()
    assert len(df) == 8 and df.cross_layer_target.isna().all()
    assert "<table" in v._repr_html_()
    cross = lens.with_target_layer(1)
    assert cross.target_layer == 1 and "->1" in cross.name
    vc = cross.future_view(model, toks, n_tokens=2)
    assert "cross-layer" in vc._repr_html_()
    # the cross-layer lens uses block 1's prompt at block 1 for a block-0 source
    h0 = cache[view.resid_hook(0)][0, 2][None]
    same = FutureLens(model, "fixed_prompt", [1], (0,), fixed_prompt=torch.tensor([1]))
    assert same.prompt_length == 1
    lg = cross(h0, 0, n_ahead=0)
    ref = lens.rows_logits(h0, torch.tensor([1]), 0)  # block-1 prompt, patched at block 1
    torch.testing.assert_close(lg, ref)


# ---------------------------------------------------------------- bad input
def test_bad_input(model, data):
    with pytest.raises(ValueError, match="method"):
        FutureLens(model, "linear")
    with pytest.raises(ValueError, match="N=-1"):
        FutureLens(model, "linear_hidden", n_ahead=(-1,))
    with pytest.raises(ValueError, match="out of range"):
        FutureLens(model, "linear_hidden", layers=[5])
    with pytest.raises(ValueError, match="prompt_length"):
        FutureLens(model, "learned_prompt", config=FutureLensConfig(prompt_length=0))
    with pytest.raises(ValueError, match="beyond what the data supports"):
        FutureLens.fit(model, None, "linear_hidden", n_ahead=(4,), data=data, verbose=False)
    with pytest.raises(ValueError, match="beyond what the data supports"):
        FutureLens.fit(model, None, "learned_prompt", data=data, train_n=(4,), verbose=False)
    with pytest.raises(ValueError, match="beyond what the data supports"):
        FutureLens.evaluate_many([FutureLens(model, "learned_prompt")], model, data=data,
                                 n_ahead=(0, 4), verbose=False)
    with pytest.raises(ValueError, match="beyond what the data supports"):
        build_features(model, _windows(5, 5), n_max=3, verbose=False)
    with pytest.raises(ValueError, match="n_ctx"):
        build_features(model, _windows(5, 40), n_max=1, verbose=False)
    with pytest.raises(ValueError, match="empty"):
        build_features(model, [], n_max=1, verbose=False)
    with pytest.raises(ValueError, match="nothing"):
        FutureLens(model, "fixed_prompt", fixed_prompt=torch.tensor([], dtype=torch.long))
    with pytest.raises(ValueError, match="nothing"):
        FutureLens(model, "fixed_prompt", fixed_prompt="")
    with pytest.raises(ValueError, match="label_source"):
        build_features(model, _windows(5), label_source="gold", verbose=False)
    lens = FutureLens(model, "linear_hidden", [1], (1,))
    with pytest.raises(ValueError, match="not covered"):
        lens(torch.zeros(1, fl.as_view(model).d_model), 1, n_ahead=2)
    with pytest.raises(ValueError, match="not covered"):
        lens(torch.zeros(1, fl.as_view(model).d_model), 0)
    with pytest.raises(ValueError, match="not fitted"):
        lens.save("/tmp/never.safetensors")
    assert not os.path.exists("/tmp/never.safetensors")
    with pytest.raises(TypeError, match="unknown FutureLensConfig"):
        FutureLensConfig().replace(lr=1)
