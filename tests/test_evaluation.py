from __future__ import annotations

import pandas as pd
import pytest
import torch
from conftest import hf_gpt2_bridge

import futurelens_tl as fl
from futurelens_tl import metrics as M
from futurelens_tl.evaluation import COLUMNS, LensEvaluation, _row
from futurelens_tl.model import as_view


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    model = hf_gpt2_bridge(tmp_path_factory.mktemp("m"))
    view = as_view(model)
    windows = torch.randint(1, view.d_vocab, (6, 12), generator=torch.Generator().manual_seed(0))
    return model, view, windows


def _value(ev, **kw):
    t = ev.table
    for k, v in kw.items():
        t = t[t[k] == v]
    assert len(t) == 1, (kw, t)
    return float(t["value"].iloc[0])


def test_metrics_against_direct_computation(setup):
    model, view, w = setup
    lens = fl.LogitLens(model)
    ev = fl.evaluate(model, lens, w, k=(1, 3), n_ahead=(0, 1), batch_size=4, verbose=False)
    assert list(ev.table.columns[: len(COLUMNS)]) == COLUMNS
    logits, resid = view.residuals(w)
    final = torch.log_softmax(logits.float(), -1)
    L = view.n_layers
    for n in (0, 1):
        Tn = w.shape[1] - 1 - n
        f = final[:, n : n + Tn]
        label = f.argmax(-1)
        corpus = w[:, 1 + n : 1 + n + Tn]
        for i, layer in enumerate(range(-1, L)):
            lp = lens.log_probs(resid[i][:, :Tn], layer)
            for k in (1, 3):
                want = M.precision_at_k(lp, label, k).item()
                got = _value(ev, layer=layer, n_ahead=n, metric="precision", k=k)
                assert got == pytest.approx(want, abs=1e-6)
            pred = lp.argmax(-1)
            assert _value(ev, layer=layer, n_ahead=n, metric="surprisal") == pytest.approx(
                M.surprisal(f, pred).mean().item(), abs=1e-4)
            assert _value(ev, layer=layer, n_ahead=n, metric="kl") == pytest.approx(
                M.kl_divergence(f, lp).mean().item(), abs=1e-4)
            assert _value(ev, layer=layer, n_ahead=n, metric="entropy") == pytest.approx(
                M.entropy(lp).mean().item(), abs=1e-4)
            assert _value(ev, layer=layer, n_ahead=n, metric="ce") == pytest.approx(
                M.cross_entropy(lp, corpus).mean().item(), abs=1e-4)
    # at the last layer, N=0, the logit lens IS the model
    assert _value(ev, layer=L - 1, n_ahead=0, metric="precision", k=1) == 1.0
    assert _value(ev, layer=L - 1, n_ahead=0, metric="kl") == pytest.approx(0.0, abs=1e-5)
    # bigram baseline rows: direct computation
    bg = M.NgramBaseline(2, vocab_size=view.d_vocab).fit(w)
    Tn = w.shape[1] - 1
    want = M.precision_at_k(bg.predict_log_probs(w[:, :Tn]), final[:, :Tn].argmax(-1), 1)
    assert _value(ev, mode="baseline", n_ahead=0, metric="precision", k=1) == pytest.approx(
        want.item())
    assert "in-sample" in ev.meta["baseline"]


def test_corpus_labels_and_buckets(setup):
    model, view, w = setup
    lens = fl.LogitLens(model, layers=[view.n_layers - 1])
    ev = fl.evaluate(model, lens, w, k=1, label_source="corpus", buckets=(0, 0.5, 1.0),
                     baseline=False, verbose=False)
    logits, _ = view.residuals(w)
    acc = (logits[:, :-1].argmax(-1) == w[:, 1:]).float().mean().item()
    plain = ev.table[ev.table["bucket"].isna()]
    assert float(plain[plain["metric"] == "precision"]["value"].iloc[0]) == pytest.approx(acc)
    b = ev.table[ev.table["bucket"].notna()]
    assert int(b["n"].sum()) == w.shape[0] * (w.shape[1] - 1)
    assert set(ev.table["label_source"]) == {"corpus"}


def test_delegation_and_concat(setup):
    model, view, w = setup
    seen = {}

    class Delegating(fl.LogitLens):
        name = "deleg"

        def _evaluate(self, model, texts, **kw):
            seen.update(kw)
            return LensEvaluation(pd.DataFrame([_row(
                lens="deleg", method="x", layer=0, n_ahead=1, metric="precision", k=1,
                mode="teacher_forced", token_fed=True, label_source="model_greedy",
                value=0.5, n=3)]), {"who": "deleg"})

    ev = fl.evaluate(model, [fl.LogitLens(model), Delegating(model)], w, n_ahead=(0, 1),
                     verbose=False, max_windows=2)
    assert seen["n_ahead"] == (0, 1) and seen["k"] == (1, 5, 10)
    assert set(ev.table["lens"]) == {"logit", "bigram", "deleg"}
    assert "teacher_forced" in set(ev.table["mode"])


def test_result_views_and_round_trip(setup, tmp_path):
    model, view, w = setup
    ev = fl.evaluate(model, fl.LogitLens(model), w, k=(1, 5), verbose=False)
    piv = ev.pivot("precision", k=1)
    assert list(piv.index) == list(range(-1, view.n_layers))
    fig = ev.plot("kl")
    assert len(fig.axes) == 1
    html = ev._repr_html_()
    assert "data:image/png;base64," in html and "http" not in html
    p = tmp_path / "ev.csv"
    ev.save(p)
    back = LensEvaluation.load(p)
    pd.testing.assert_frame_equal(back.table, ev.table, check_dtype=False)
    assert back.meta["label_source"] == "model_greedy"
    with pytest.raises(ValueError, match="not in this evaluation"):
        ev.pivot("precision", k=7)
    with pytest.raises(ValueError, match="metric='bleu'"):
        ev.pivot("bleu")


def test_bad_input(setup):
    model, view, w = setup
    lens = fl.LogitLens(model)
    with pytest.raises(ValueError, match="label_source"):
        fl.evaluate(model, lens, w, label_source="gold", verbose=False)
    with pytest.raises(ValueError, match="k=0"):
        fl.evaluate(model, lens, w, k=0, verbose=False)
    with pytest.raises(ValueError, match="n_ahead"):
        fl.evaluate(model, lens, w, n_ahead=(-1,), verbose=False)
    with pytest.raises(ValueError, match="out of range"):
        fl.evaluate(model, lens, w, layers=[9], verbose=False)
    with pytest.raises(ValueError, match="columns"):
        LensEvaluation(pd.DataFrame({"lens": ["x"]}), {})
    with pytest.raises(ValueError, match="mode"):
        LensEvaluation(pd.DataFrame([_row(mode="weird", value=1.0)]), {})
