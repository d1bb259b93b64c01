"""The futurelens-tl command: usage errors before loading, exit codes, help, train-lens, report.

The bad-input catalogue below is one parametrized table per entry point; a new flag or command
joins it. Every row must exit with status 2, name the flag, and neither load a model nor leave
an output folder behind.
"""

from __future__ import annotations

import re
import stat

import pytest

from futurelens_tl import cli
from futurelens_tl import progress as P


@pytest.fixture(autouse=True)
def _reset_quiet():
    yield
    P.set_quiet(False)


@pytest.fixture
def no_loading(monkeypatch):
    """Fail the test if anything tries to load a model."""
    import futurelens_tl.model as M

    def boom(*a, **k):
        raise AssertionError("a model was loaded before the flags were validated")

    monkeypatch.setattr(M, "load_model", boom)


@pytest.fixture
def files(tmp_path):
    (tmp_path / "afile").write_text("x")
    (tmp_path / "bad.jsonl").write_text('{"body": "no text key"}\n')
    (tmp_path / "notjson.jsonl").write_text("{oops\n")
    (tmp_path / "one.txt").write_text("a single document\n")
    return tmp_path


REPORT_BAD = [
    (["--texts", "{d}/missing.txt"], "--texts", "no such file"),
    (["--texts", "{d}/bad.jsonl"], "--texts", "no string 'text' field"),
    (["--texts", "{d}/notjson.jsonl"], "--texts", "not JSON"),
    (["--texts", "{d}/one.txt"], "--texts", "at least 2"),
    (["--roles", "previous_token,telepathy"], "--roles", "telepathy"),
    (["--out", "{d}/afile"], "--out", "not a folder"),
    (["--future-layers", "a,b"], "--future-layers", "not a layer"),
    (["--future-layers", "0,0"], "--future-layers", "repeats"),
    (["--future-layers", "-2"], "--future-layers", "not a layer"),
    (["--tuned-tokens", "0"], "--tuned-tokens", "must be >= 1"),
    (["--eval-windows", "0"], "--eval-windows", "must be >= 1"),
    (["--future-examples", "0"], "--future-examples", "must be >= 1"),
    (["--dtype", "int8"], "--dtype", "invalid choice"),
    (["--stages", "lenses,bogus"], "--stages", "bogus"),
    (["--model", "{d}/no-such-dir/"], "--model", "no such file"),
    (["--model", "{d}/afile"], "--model", "not a .gguf"),
    (["--seed", "-1"], "--seed", "must be >= 0"),
    (["--device", "tpu"], "--device", "allowed"),
    (["--prompt", "  "], "--prompts", "non-empty"),
]


@pytest.mark.parametrize("extra,flag,message", REPORT_BAD,
                         ids=[" ".join(r[0]).replace("{d}/", "") for r in REPORT_BAD])
def test_report_usage_errors_exit_2_before_loading(no_loading, files, capsys, extra, flag,
                                                   message):
    out = files / "report"
    argv = ["report", "--out", str(out), *[a.format(d=files) for a in extra]]
    with pytest.raises(SystemExit) as exc:
        raise SystemExit(cli.main(argv))
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert flag in err and message in err, err
    assert "Traceback" not in err
    if "--out" not in extra:
        assert not out.exists()
    assert not [p for p in files.iterdir() if ".partial-" in p.name]


OTHER_BAD = [
    (["tag-heads", "--out", "{d}/h", "--roles", "bogus"], "--roles"),
    (["tag-heads", "--out", "{d}/afile"], "--out"),
    (["decompose", "--out", "{d}/afile"], "--out"),
    (["train-lens", "--out", "{d}/lens.txt"], "--out"),
    (["train-lens", "--out", "{d}/l.safetensors", "--tokens", "0"], "--tokens"),
    (["train-lens", "--out", "{d}/l.safetensors", "--texts", "{d}/missing.txt"], "--texts"),
    (["train-lens", "--out", "{d}/l.safetensors", "--layers", "x"], "--layers"),
    (["info", "--model", "{d}/nothing.gguf"], "--model"),
    (["toy", "--seed", "x"], "--seed"),
]


@pytest.mark.parametrize("argv,flag", OTHER_BAD, ids=[" ".join(r[0][:3]) for r in OTHER_BAD])
def test_other_commands_usage_errors(no_loading, files, capsys, argv, flag):
    with pytest.raises(SystemExit) as exc:
        raise SystemExit(cli.main([a.format(d=files) for a in argv]))
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert flag in err and "Traceback" not in err, err
    assert not (files / "h").exists()


def test_runtime_error_exits_1_with_message(monkeypatch, tmp_path, capsys):
    import futurelens_tl.models as M

    def fail(*a, **k):
        raise RuntimeError("weights are corrupt")

    monkeypatch.setattr(M, "load_model", fail)
    code = cli.main(["report", "--out", str(tmp_path / "r"), "--stages", "layer0"])
    err = capsys.readouterr().err
    assert code == 1 and "RuntimeError: weights are corrupt" in err and "Traceback" not in err
    assert not (tmp_path / "r").exists()
    assert [p.name for p in tmp_path.iterdir()] == []  # the staging folder is gone too


def test_version_and_help(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["--version"])
    assert exc.value.code == 0
    assert re.fullmatch(r"futurelens-tl \S+\n", capsys.readouterr().out)
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    top = capsys.readouterr().out
    assert "``" not in top and ":func:" not in top  # plain text, no RST
    for name in ("report", "train-lens", "info", "toy", "decompose", "tag-heads"):
        assert name in top


def test_every_option_has_help_and_a_default():
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    checked = 0
    for name, p in sub.choices.items():
        for a in p._actions:
            if not a.option_strings or a.dest == "help":
                continue
            assert a.help, (name, a.dest)
            text = p.formatter_class("x")._get_help_string(a)
            assert a.required or "default" in text, (name, a.dest, text)
            checked += 1
    assert checked > 30


def test_quiet_switch_is_global(no_loading, tmp_path):
    assert cli.main(["--quiet", "report", "--out", str(tmp_path / "f"), "--roles", "x"]) == 2
    assert P.is_quiet()
    P.set_quiet(False)
    assert cli.main(["report", "--quiet", "--out", str(tmp_path / "f"), "--roles", "x"]) == 2
    assert P.is_quiet()


def test_train_lens_is_a_thin_fit_and_save(tmp_path, monkeypatch):
    import futurelens_tl as fl
    import futurelens_tl.model as M
    from futurelens_tl.toy import toy_texts

    model = fl.toy_model(verbose=False)
    monkeypatch.setattr(M, "load_model", lambda name, **kw: model if name == "toy" else None)

    docs = toy_texts("train", n=12, seed=3)
    (tmp_path / "corpus.txt").write_text("\n\n".join(docs))
    out = tmp_path / "tuned.safetensors"
    assert cli.main(["train-lens", "--quiet", "--out", str(out), "--tokens", "1024",
                     "--layers", "0,1", "--seed", "3", "--texts",
                     str(tmp_path / "corpus.txt")]) == 0
    lens = fl.TunedLens.load(out, model)
    ref = fl.TunedLens.fit(model, docs, layers=[0, 1], tokens=1024, seed=3, verbose=False)
    assert lens.layers == ref.layers == [0, 1]
    for a, b in zip(lens.translators, ref.translators):
        for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items()):
            assert ka == kb and (va == vb).all()
    from futurelens_tl._io import file_mode

    assert stat.S_IMODE(out.stat().st_mode) == file_mode()  # the umask's mode, not 0600


# ---------------------------------------------------------------------------------- report
def test_failed_report_leaves_no_partial_folder(monkeypatch, tmp_path):
    from futurelens_tl import report as R
    from futurelens_tl.report import build

    def boom(rep, state):
        assert (rep.out / "tables" / "model.json").exists()  # work happens in the staging dir
        raise RuntimeError("stage failed")

    monkeypatch.setattr(build, "_stage_layer0", boom)
    with pytest.raises(RuntimeError, match="stage failed"):
        R.build_report(R.ReportConfig(out=tmp_path / "rep", stages=["layer0"], verbose=False))
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_report_second_run_reads_features_and_lenses_from_cache(monkeypatch, tmp_path):
    import os

    from futurelens_tl import report as R
    from futurelens_tl.lenses import future_data

    monkeypatch.setenv("FUTURELENS_CACHE", str(tmp_path / "cache"))
    calls = []
    real = future_data.build_features
    monkeypatch.setattr(future_data, "build_features",
                        lambda *a, **k: calls.append(1) or real(*a, **k))
    old = os.umask(0o022)
    try:
        cfg = R.ReportConfig(out=tmp_path / "rep", stages=["future"], verbose=False,
                             future_examples=4, future_layers="1")
        first = R.build_report(cfg)
        assert len(calls) == 2 and first.cache_hits == []
        table = tmp_path / "rep" / "tables" / "future_precision_at_1.csv"
        before = table.read_text()
        second = R.build_report(cfg)
    finally:
        os.umask(old)
    assert len(calls) == 2  # nothing rebuilt
    assert set(second.cache_hits) == {"future features (train)", "future features (test)",
                                      "future lens (learned prompt)",
                                      "future lens (linear hidden)"}
    assert table.read_text() == before  # the cached lenses give the same numbers
    for f in second.files + [second.index]:
        assert stat.S_IMODE(f.stat().st_mode) == 0o644, f
    assert stat.S_IMODE((tmp_path / "rep").stat().st_mode) == 0o755
    assert not [p for p in tmp_path.iterdir() if ".partial-" in p.name]


def test_report_figures_get_integer_layer_ticks():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from futurelens_tl.report import _flat_columns, tidy_figure

    fig, (a, b) = plt.subplots(1, 2)
    a.plot([0, 1, 2, 3], [0.1, 0.2, 0.3, 0.4], label="tuned")
    a.set_xlabel("layer (-1 = embed)")
    a.legend()
    b.plot([-1, 0, 1], [1, 2, 3])
    b.set_xlabel("layer (-1 = embed)")
    tidy_figure(fig)
    fig.canvas.draw()
    ticks = [t for t in a.get_xticks() if a.get_xlim()[0] <= t <= a.get_xlim()[1]]
    assert ticks and all(float(t).is_integer() for t in ticks)
    assert a.get_xlabel() == "layer"  # no embed point: no embed label
    assert b.get_xlabel() == "layer (-1 = embed)"
    plt.close(fig)

    import pandas as pd

    piv = pd.DataFrame({"layer": [0, 0, 1], "n_ahead": [1, 2, 1], "value": [0.1, 0.2, 0.3]}
                       ).pivot_table(index="layer", columns="n_ahead", values="value")
    flat = _flat_columns(piv, prefix="N=")
    assert list(flat.columns) == ["layer", "N=1", "N=2"]


def test_rotary_model_layer0_section_says_not_available(monkeypatch, tmp_path):
    from futurelens_tl import report as R
    from futurelens_tl.attention import layer0

    def rotary(model):
        raise NotImplementedError("decompose_first_layer supports additive learned positions "
                                  "only; this model uses positional_embedding_type='rotary'")

    monkeypatch.setattr(layer0, "decompose_first_layer", rotary)
    res = R.build_report(R.ReportConfig(out=tmp_path / "rep", stages=["layer0"], verbose=False))
    page = res.index.read_text()
    assert "Not available for this model" in page and "rotary" in page
