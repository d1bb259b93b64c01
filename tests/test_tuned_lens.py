from __future__ import annotations

import json
import os

import pytest
import torch
from conftest import native_bridge, toy_or_skip

import futurelens_tl as fl
from futurelens_tl.lenses.artifacts import ArtifactError
from futurelens_tl.lenses.base import NonFiniteError
from futurelens_tl.lenses.trainer import Trainer, TrainerConfig, TrainingDivergedError
from futurelens_tl.lenses.tuned import kl_per_layer
from futurelens_tl.model import as_view


def _windows(view, n=32, T=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(1, view.d_vocab, (n, T), generator=g)


@pytest.fixture(scope="module")
def model():
    return native_bridge(n_layers=2, d_model=32, d_vocab=61, seed=3)


@pytest.fixture(scope="module")
def trained(model):
    view = as_view(model)
    lens = fl.TunedLens(model)
    lens.train_on(_windows(view), tokens=8 * 16 * 6, batch_size=8, verbose=False)
    return lens


def test_untrained_equals_logit_lens(model):
    view = as_view(model)
    tuned, logit = fl.TunedLens(model), fl.LogitLens(model)
    _, resid = view.residuals(_windows(view, n=2))
    for i, layer in enumerate(range(-1, view.n_layers)):
        assert torch.equal(tuned(resid[i], layer), logit(resid[i], layer))
    assert tuned.has_translator(view.n_layers - 2) and not tuned.has_translator(view.n_layers - 1)
    assert len(tuned.translators) == view.n_layers


def test_training_beats_logit_lens_every_layer_but_last(model, trained):
    view = as_view(model)
    held_out = _windows(view, n=16, seed=123)
    kl = kl_per_layer(model, [fl.LogitLens(model), trained], held_out)
    L = view.n_layers
    for layer in range(-1, L - 1):
        assert kl["tuned"][layer] < kl["logit"][layer], (layer, kl)
    assert kl["tuned"][L - 1] == pytest.approx(kl["logit"][L - 1], abs=1e-6)
    assert kl["logit"][L - 1] == pytest.approx(0.0, abs=1e-5)
    assert trained.train_result.finished
    assert trained.meta["hyperparameters"]["lr"] == 1.0
    assert trained.meta["hyperparameters"]["steps"] == 6


def test_one_forward_per_step(model):
    view = as_view(model)
    fl_data = __import__("futurelens_tl.data", fromlist=["FORWARD_COUNTER"])
    before = fl_data.FORWARD_COUNTER.passes
    lens = fl.TunedLens(model)
    lens.train_on(_windows(view), tokens=8 * 16 * 3, batch_size=8, verbose=False)
    assert fl_data.FORWARD_COUNTER.passes - before == 3
    # the model itself is untouched and gets no gradients
    assert all(p.grad is None for p in model.parameters())


def test_save_load_round_trip_bit_exact(model, trained, tmp_path):
    p = tmp_path / "tuned.safetensors"
    trained.save(p)
    loaded = fl.TunedLens.load(p, model)
    for a, b in zip(trained.translators.state_dict().values(),
                    loaded.translators.state_dict().values()):
        assert torch.equal(a, b)
    h = torch.randn(5, 32)
    assert torch.equal(trained(h, 0), loaded(h, 0))
    assert loaded.meta["hyperparameters"] == trained.meta["hyperparameters"]
    assert not [f for f in os.listdir(tmp_path) if f.endswith(".tmp")]


def test_resume_reproduces_uninterrupted(model, tmp_path):
    view = as_view(model)
    w = _windows(view)
    kw = dict(tokens=8 * 16 * 4, batch_size=8, verbose=False, seed=7)
    full = fl.TunedLens(model)
    full.train_on(w, **kw)
    ck = tmp_path / "ck.pt"
    part = fl.TunedLens(model)
    r1 = part.train_on(w, checkpoint=ck, checkpoint_every=2, stop_after=3, **kw)
    assert r1.steps_done == 3 and not r1.finished and ck.exists()
    assert not all(torch.equal(a, b) for a, b in zip(
        full.translators.state_dict().values(), part.translators.state_dict().values()))
    resumed = fl.TunedLens(model)  # fresh process stand-in
    r2 = resumed.train_on(w, checkpoint=ck, checkpoint_every=2, **kw)
    assert r2.resumed_from == 3 and r2.finished
    for a, b in zip(full.translators.state_dict().values(),
                    resumed.translators.state_dict().values()):
        assert torch.equal(a, b)
    # other settings refuse to resume
    with pytest.raises(ValueError, match="other settings"):
        fl.TunedLens(model).train_on(w, checkpoint=ck, **{**kw, "seed": 8})


def test_nan_guard_names_step_and_layer_and_keeps_checkpoint(model, tmp_path):
    view = as_view(model)
    lens = fl.TunedLens(model)
    with torch.no_grad():
        lens.translators[1].weight.fill_(1e38)  # layer 0: finite weights, overflowing readout
    ck = tmp_path / "ck.pt"
    with pytest.raises(TrainingDivergedError, match=r"layer 0.*step 1"):
        lens.train_on(_windows(view), tokens=8 * 16 * 2, batch_size=8, verbose=False,
                      checkpoint=ck)
    assert ck.exists()
    # parameters that are already NaN/inf are refused before any step, naming the tensor
    with torch.no_grad():
        lens.translators[1].weight.fill_(float("inf"))
    with pytest.raises(NonFiniteError, match=r"translators\.1\.weight"):
        lens.train_on(_windows(view), tokens=8 * 16 * 2, batch_size=8, verbose=False)


def test_trainer_nan_guard_keeps_last_good_checkpoint(tmp_path):
    lin = torch.nn.Linear(2, 1)
    ck = tmp_path / "ck.pt"

    def step_fn(step):
        loss = (lin(torch.ones(3, 2)) - 1).pow(2).mean()
        yield "g", loss * (float("nan") if step == 3 else 1.0)

    tr = Trainer(lin, TrainerConfig(steps=10, checkpoint_path=str(ck), checkpoint_every=1,
                                    verbose=False))
    with pytest.raises(TrainingDivergedError, match=r"'g' is nan at step 4"):
        tr.run(step_fn)
    state = torch.load(ck, weights_only=True)
    assert state["step"] == 3
    assert all(torch.isfinite(v).all() for v in state["module"].values())
    assert torch.equal(state["module"]["weight"], lin.weight.detach())


def test_mismatch_refused(model, trained, tmp_path):
    p = tmp_path / "tuned.safetensors"
    trained.save(p)
    other = native_bridge(n_layers=2, d_model=32, d_vocab=61, seed=4)
    with pytest.raises(fl.LensMismatchError, match="fingerprint"):
        fl.TunedLens.load(p, other)
    with pytest.raises(fl.LensMismatchError, match="fingerprint"):
        trained.check_model(other)
    with pytest.raises(fl.LensMismatchError, match="fingerprint"):
        fl.run_with_lenses(other, torch.tensor([[1, 2, 3]]), [trained])
    bigger = native_bridge(n_layers=3, d_model=32, d_vocab=61, seed=3)
    with pytest.raises(fl.LensMismatchError, match="n_layers"):
        fl.TunedLens.load(p, bigger)
    trained_copy = fl.TunedLens.load(p, model)
    trained_copy.basis = "processed"  # as if fitted on a compatibility-mode model
    with pytest.raises(fl.LensMismatchError, match="basis"):
        trained_copy.check_model(model)


def test_corrupt_and_truncated_artifacts(model, trained, tmp_path):
    p = tmp_path / "tuned.safetensors"
    trained.save(p)
    raw = p.read_bytes()
    (tmp_path / "trunc.safetensors").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(ArtifactError, match="corrupt or truncated"):
        fl.TunedLens.load(tmp_path / "trunc.safetensors", model)
    (tmp_path / "junk.safetensors").write_bytes(b"\x00" * 64)
    with pytest.raises(ArtifactError):
        fl.TunedLens.load(tmp_path / "junk.safetensors", model)
    with pytest.raises(ArtifactError, match="does not exist"):
        fl.TunedLens.load(tmp_path / "missing.safetensors", model)
    from safetensors.torch import save_file

    save_file({"x": torch.zeros(2)}, str(tmp_path / "foreign.safetensors"))
    with pytest.raises(ArtifactError, match="header"):
        fl.TunedLens.load(tmp_path / "foreign.safetensors", model)


def test_failed_write_leaves_nothing(model, trained, tmp_path, monkeypatch):
    import safetensors.torch as st

    def boom(tensors, path, metadata=None):
        with open(path, "wb") as f:
            f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(st, "save_file", boom)
    p = tmp_path / "tuned.safetensors"
    with pytest.raises(OSError, match="disk full"):
        trained.save(p)
    assert os.listdir(tmp_path) == []


def test_tuned_lens_package_format_import(model, tmp_path):
    view = as_view(model)
    d = view.d_model
    g = torch.Generator().manual_seed(0)
    params = {}
    for i in range(view.n_layers):
        params[f"{i}.weight"] = 0.05 * torch.randn(d, d, generator=g)
        params[f"{i}.bias"] = 0.05 * torch.randn(d, generator=g)
    params["unembed.unembedding.weight"] = torch.randn(61, d)  # extra keys are ignored
    (tmp_path / "lens").mkdir()
    torch.save(params, tmp_path / "lens" / "params.pt")
    (tmp_path / "lens" / "config.json").write_text(json.dumps({
        "base_model_name_or_path": "tiny", "d_model": d, "num_hidden_layers": view.n_layers,
        "bias": True, "lens_type": "linear_tuned_lens", "unemebd_hash": "x"}))
    lens = fl.TunedLens.from_tuned_lens(tmp_path / "lens", model)
    _, resid = view.residuals(_windows(view, n=2))
    for layer in range(-1, view.n_layers - 1):
        i = layer + 1  # tuned-lens translator i reads resid_pre i = our resid_post i-1
        h = resid[layer + 1]
        expected = view.readout(h + h @ params[f"{i}.weight"].T + params[f"{i}.bias"])
        assert torch.allclose(lens(h, layer), expected, atol=1e-5)
    # round trip through our exporter, with the sidecar
    lens.to_tuned_lens(tmp_path / "out")
    meta = json.loads((tmp_path / "out" / "futurelens_meta.json").read_text())
    assert meta["basis"] == "raw" and meta["hook"] == "resid_pre"
    back = fl.TunedLens.from_tuned_lens(tmp_path / "out", model)
    for a, b in zip(lens.translators.state_dict().values(),
                    back.translators.state_dict().values()):
        assert torch.equal(a, b)
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "config.json").write_text(json.dumps({"d_model": d + 1, "num_hidden_layers": 2}))
    torch.save(params, bad / "params.pt")
    with pytest.raises(fl.LensMismatchError, match="d_model"):
        fl.TunedLens.from_tuned_lens(bad, model)


def test_token_shift_lens(model):
    view = as_view(model)
    lens = fl.TunedLens(model, token_shift=1)
    assert lens.name == "tuned+1" and lens.n_ahead == 1
    assert len(lens.translators) == view.n_layers + 1
    assert lens.has_translator(view.n_layers - 1)
    w = _windows(view)
    before = kl_per_layer(model, [lens], w[:8])["tuned+1"]
    lens.train_on(w, tokens=8 * 16 * 4, batch_size=8, verbose=False)
    after = kl_per_layer(model, [lens], w[:8])["tuned+1"]
    for layer in range(-1, view.n_layers):
        assert after[layer] < before[layer]


def test_bad_arguments(model):
    view = as_view(model)
    with pytest.raises(ValueError, match="token_shift"):
        fl.TunedLens(model, token_shift=-1)
    lens = fl.TunedLens(model)
    with pytest.raises(ValueError, match="tokens"):
        lens.train_on(_windows(view), tokens=0)
    with pytest.raises(ValueError, match="batch_size"):
        lens.train_on(_windows(view), batch_size=0)
    with pytest.raises(ValueError, match="optimizer"):
        lens.train_on(_windows(view), optimizer="lbfgs")


@pytest.mark.slow
def test_toy_tuned_beats_logit_lens_every_layer_but_last():
    from futurelens_tl.toy import toy_texts

    model = toy_or_skip()
    train = fl.token_windows(model, toy_texts("train"), length=64)
    test = fl.token_windows(model, toy_texts("test"), length=64, max_windows=16)
    lens = fl.TunedLens.fit(model, train, tokens=64 * 8 * 6, verbose=False, seed=0)
    kl = kl_per_layer(model, [fl.LogitLens(model), lens], test)
    L = as_view(model).n_layers
    for layer in range(-1, L - 1):
        assert kl["tuned"][layer] < kl["logit"][layer], (layer, kl)
    assert kl["tuned"][L - 1] == pytest.approx(kl["logit"][L - 1], abs=1e-6)


def test_first_step_loss_is_logit_lens_kl(model):
    """The training loss is KL(final || lens): at step 1 (zero translators) = logit-lens KL."""
    from futurelens_tl.lenses.tuned import batch_indices

    view = as_view(model)
    w = _windows(view)
    lens = fl.TunedLens(model)
    res = lens.train_on(w, tokens=8 * 16, batch_size=8, verbose=False, seed=5)
    batch = w[batch_indices(w.shape[0], 8, 0, 5)]
    kl = kl_per_layer(model, [fl.LogitLens(model)], batch)["logit"]
    for layer in range(-1, view.n_layers - 1):
        assert res.history[0][f"layer {layer}"] == pytest.approx(kl[layer], rel=1e-5, abs=1e-6)
