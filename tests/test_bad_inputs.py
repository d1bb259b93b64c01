"""THE catalogue of bad inputs: one parametrized table per public entry point.

Every row is an input a new user could plausibly pass, and the clear, early, named error it
must raise instead of a silent wrong result (issue 16). A new public entry point joins this file
with its own ``CASES_<ENTRY>`` table and one parametrized test over it.

Each row: ``(case id, call(env), expected exception type, regex the message must match)``.
The message regex pins what the user is told (the argument, the value, what is allowed, or the
tensor at fault), not just the exception type.
"""

from __future__ import annotations

import json
import os
import types
from pathlib import Path

import pytest
import torch
from conftest import make_word_tokenizer, native_bridge

import futurelens_tl as fl
from futurelens_tl.data import load_texts, token_windows
from futurelens_tl.lenses.artifacts import ArtifactError, load_artifact
from futurelens_tl.lenses.base import LensMismatchError, NonFiniteError
from futurelens_tl.metrics import (
    NgramBaseline,
    confidence_buckets,
    entropy,
    kl_divergence,
    precision_at_k,
    rank_of,
)

V = 61
# Tests run with runtime type checking (jaxtyping + beartype): where an annotation already
# rejects an input, the checker's TypeError may come first (beartype samples list items).
TC = r"|Type-check error"


def _words(n: int, seed: int = 0) -> str:
    g = torch.Generator().manual_seed(seed)
    return " ".join(f"w{int(i)}" for i in torch.randint(1, V - 1, (n,), generator=g))


def _poison(model, where: str = "layers.1.", value: float = float("nan")) -> str:
    """Set the first parameter whose name contains ``where`` to ``value``; return its name."""
    name, p = next((n, p) for n, p in model.named_parameters() if where in n)
    with torch.no_grad():
        p.fill_(value)
    return name


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bad_inputs")
    tok = make_word_tokenizer(tmp, V)
    model = native_bridge(d_vocab=V, seed=0, tokenizer=tok)
    other = native_bridge(d_vocab=V, seed=1, tokenizer=tok)  # same shape, other weights
    nan_model = native_bridge(d_vocab=V, seed=2, tokenizer=tok)
    nan_param = _poison(nan_model)
    nan_lens = fl.TunedLens(model, name="nan_tuned")
    with torch.no_grad():
        nan_lens.translators[1].bias.fill_(float("nan"))  # layer 0
    tuned = fl.TunedLens(model)
    g = torch.Generator().manual_seed(0)
    windows = torch.randint(1, V, (16, 12), generator=g)
    tuned.train_on(windows, tokens=8 * 12 * 2, batch_size=8, verbose=False)
    art = tmp / "tuned.safetensors"
    tuned.save(art)
    ck = tmp / "ck.pt"
    fl.TunedLens(model).train_on(windows, tokens=8 * 12 * 4, batch_size=8, verbose=False,
                                 checkpoint=ck, stop_after=1)
    bad_jsonl = tmp / "bad.jsonl"
    bad_jsonl.write_text(json.dumps({"text": "w1 w2"}) + "\n" + json.dumps({"body": "x"}) + "\n")
    return types.SimpleNamespace(
        tmp=tmp, model=model, other=other, nan_model=nan_model, nan_param=nan_param,
        logit=fl.LogitLens(model), other_logit=fl.LogitLens(other), nan_lens=nan_lens,
        nan_model_logit=fl.LogitLens(nan_model), tuned=tuned, art=art, ck=ck,
        windows=windows, toks=windows[:2], texts=[_words(40, s) for s in range(4)],
        bad_jsonl=bad_jsonl,
    )


def _check(env, call, exc, match):
    with pytest.raises(exc, match=match):
        call(env)


def _ids(cases):
    return [c[0] for c in cases]


# ---------------------------------------------------------------------- run_with_lenses
def _rwl(e, **kw):
    return fl.run_with_lenses(e.model, kw.pop("tokens", e.toks), kw.pop("lenses", [e.logit]),
                              **kw)


CASES_RUN_WITH_LENSES = [
    ("targets=-7", lambda e: _rwl(e, targets=-7), ValueError, r"outside 0\.\.d_vocab-1"),
    ("targets=99999", lambda e: _rwl(e, targets=99999), ValueError, r"max 99999"),
    ("targets tensor <-1", lambda e: _rwl(e, targets=torch.full((2, 12), -7)), ValueError,
     r"min -7"),
    ("targets float", lambda e: _rwl(e, targets=torch.zeros(2, 12)), TypeError,
     r"integer token ids"),
    ("targets unknown string", lambda e: _rwl(e, targets="prev"), ValueError, r"'prev'"),
    ("targets wrong shape", lambda e: _rwl(e, targets=torch.zeros(3, 5, dtype=torch.long)),
     ValueError, r"shape \(3, 5\)"),
    ("top_k=0", lambda e: _rwl(e, top_k=0), ValueError, r"top_k=0"),
    ("top_k bool", lambda e: _rwl(e, top_k=True), TypeError, r"top_k must be an int"),
    ("position out of range", lambda e: _rwl(e, positions=99), ValueError, r"position 99"),
    ("no lenses", lambda e: _rwl(e, lenses=[]), ValueError, r"non-empty list"),
    ("not a lens", lambda e: _rwl(e, lenses=["logit"]), TypeError, r"lenses\[0\] is a str"),
    ("duplicate lens names", lambda e: _rwl(e, lenses=[e.logit, fl.LogitLens(e.model)]),
     ValueError, r"unique"),
    ("logit lens of another model", lambda e: _rwl(e, lenses=[e.other_logit]),
     LensMismatchError, r"fingerprint"),
    ("tuned lens of another model",
     lambda e: fl.run_with_lenses(e.other, e.toks, [e.tuned]), LensMismatchError,
     r"fingerprint"),
    ("NaN model weights", lambda e: fl.run_with_lenses(e.nan_model, e.toks,
                                                        [e.nan_model_logit]),
     NonFiniteError, r"non-finite weights: layers\.1\."),
    ("NaN lens parameters", lambda e: _rwl(e, lenses=[e.nan_lens]), NonFiniteError,
     r"translators\.1\.bias"),
    ("left-padded attention_mask",
     lambda e: _rwl(e, attention_mask=torch.tensor([[0] * 2 + [1] * 10, [1] * 12])),
     ValueError, r"not right-padded"),
    ("empty text", lambda e: _rwl(e, tokens=""), ValueError, r"empty"),
    ("token id out of vocab", lambda e: _rwl(e, tokens=torch.tensor([[0, V]])), ValueError,
     r"outside the vocabulary"),
]


@pytest.mark.parametrize("case,call,exc,match", CASES_RUN_WITH_LENSES,
                         ids=_ids(CASES_RUN_WITH_LENSES))
def test_run_with_lenses(env, case, call, exc, match):
    _check(env, call, exc, match)


# ---------------------------------------------------------------------- compare
def _cmp(e, **kw):
    return fl.compare(kw.pop("model", e.model), kw.pop("prompt", "w1 w2 w3 w4"),
                      kw.pop("lenses", [e.logit]), **kw)


CASES_COMPARE = [
    ("k=0", lambda e: _cmp(e, k=0), ValueError, r"k=0"),
    ("k > vocab", lambda e: _cmp(e, k=V + 1), ValueError, r"d_vocab=61"),
    ("batch of prompts", lambda e: _cmp(e, prompt=["w1 w2", "w3 w4"]), (ValueError, TypeError),
     r"one sequence" + TC),
    ("lens of another model", lambda e: _cmp(e, lenses=[e.other_logit]), LensMismatchError,
     r"fingerprint"),
    ("NaN model weights", lambda e: _cmp(e, model=e.nan_model, lenses=[e.nan_model_logit]),
     NonFiniteError, r"layers\.1\."),
    ("NaN lens parameters", lambda e: _cmp(e, lenses=[e.nan_lens]), NonFiniteError,
     r"translators\.1\.bias"),
    ("layers select nothing", lambda e: _cmp(e, lenses=[fl.LogitLens(e.model, [0])],
                                             layers=[1]), ValueError, r"selects no layer"),
]


@pytest.mark.parametrize("case,call,exc,match", CASES_COMPARE, ids=_ids(CASES_COMPARE))
def test_compare(env, case, call, exc, match):
    _check(env, call, exc, match)


# ---------------------------------------------------------------------- evaluate
def _ev(e, **kw):
    return fl.evaluate(kw.pop("model", e.model), kw.pop("lenses", [e.logit]),
                       kw.pop("texts", e.texts), seq_len=kw.pop("seq_len", 12),
                       verbose=False, **kw)


CASES_EVALUATE = [
    ("NaN model weights", lambda e: _ev(e, model=e.nan_model, lenses=[e.nan_model_logit]),
     NonFiniteError, r"non-finite weights: layers\.1\."),
    ("NaN lens parameters", lambda e: _ev(e, lenses=[e.nan_lens]), NonFiniteError,
     r"translators\.1\.bias"),
    ("lens of another model", lambda e: _ev(e, lenses=[e.other_logit]), LensMismatchError,
     r"fingerprint"),
    ("non-string text", lambda e: _ev(e, texts=["w1 w2 w3", 42]), TypeError,
     r"texts\[1\]" + TC),
    ("missing file path", lambda e: _ev(e, texts="/nonexistent/corpus.txt"),
     FileNotFoundError, r"/nonexistent/corpus\.txt"),
    ("k=0", lambda e: _ev(e, k=0), ValueError, r"k=0"),
    ("n_ahead=-1", lambda e: _ev(e, n_ahead=-1), ValueError, r"n_ahead"),
    ("label_source", lambda e: _ev(e, label_source="gold"), ValueError, r"'gold'"),
    ("duplicate lens names", lambda e: _ev(e, lenses=[e.logit, fl.LogitLens(e.model)]),
     ValueError, r"unique"),
    ("lenses not a list", lambda e: _ev(e, lenses="logit"), TypeError, r"got str"),
    ("windows too short", lambda e: _ev(e, n_ahead=20), ValueError, r"too short"),
]


@pytest.mark.parametrize("case,call,exc,match", CASES_EVALUATE, ids=_ids(CASES_EVALUATE))
def test_evaluate(env, case, call, exc, match):
    _check(env, call, exc, match)


# ---------------------------------------------------------------------- lens constructors
CASES_LENS_INIT = [
    ("LogitLens layers=[0, 0]", lambda e: fl.LogitLens(e.model, [0, 0]), ValueError,
     r"repeats layer\(s\) \[0\]"),
    ("LogitLens layer 99", lambda e: fl.LogitLens(e.model, [99]), ValueError, r"99"),
    ("TunedLens token_shift=-1", lambda e: fl.TunedLens(e.model, token_shift=-1), ValueError,
     r"token_shift=-1"),
    ("lens on a non-model", lambda e: fl.LogitLens("gpt2"), TypeError, r"TransformerBridge"),
]


@pytest.mark.parametrize("case,call,exc,match", CASES_LENS_INIT, ids=_ids(CASES_LENS_INIT))
def test_lens_init(env, case, call, exc, match):
    _check(env, call, exc, match)


# ---------------------------------------------------------------------- TunedLens.fit
def _fit(e, texts=None, **kw):
    kw = {"tokens": 8 * 12, "batch_size": 8, "seq_len": 12, "verbose": False, **kw}
    return fl.TunedLens.fit(e.model, e.windows if texts is None else texts, **kw)


CASES_TUNED_FIT = [
    ("layers=[0, 0]", lambda e: _fit(e, layers=[0, 0]), ValueError, r"repeats layer"),
    ("non-string text", lambda e: _fit(e, texts=["w1 w2 w3 w4", None]), TypeError,
     r"texts\[1\] is a NoneType" + TC),
    ("missing path", lambda e: _fit(e, texts=Path("/nonexistent.txt")), FileNotFoundError,
     r"does not exist"),
    ("path-like string that is no file", lambda e: _fit(e, texts="/nonexistent.txt"),
     FileNotFoundError, r"looks like a file path"),
    ("tokens=0", lambda e: _fit(e, tokens=0), ValueError, r"tokens=0"),
    ("batch_size=0", lambda e: _fit(e, batch_size=0), ValueError, r"batch_size=0"),
    ("resume on other data", lambda e: fl.TunedLens(e.model).train_on(
        e.windows.flip(0), tokens=8 * 12 * 4, batch_size=8, verbose=False, checkpoint=e.ck),
     LensMismatchError, r"training data"),
    ("resume on other weights", lambda e: fl.TunedLens(e.other).train_on(
        e.windows, tokens=8 * 12 * 4, batch_size=8, verbose=False, checkpoint=e.ck),
     LensMismatchError, r"model weights \(fingerprint\)"),
    ("resume with other batch size", lambda e: fl.TunedLens(e.model).train_on(
        e.windows, tokens=8 * 12 * 4, batch_size=4, verbose=False, checkpoint=e.ck),
     LensMismatchError, r"batch_size"),
]


@pytest.mark.parametrize("case,call,exc,match", CASES_TUNED_FIT, ids=_ids(CASES_TUNED_FIT))
def test_tuned_fit(env, case, call, exc, match):
    _check(env, call, exc, match)


# ---------------------------------------------------------------------- TunedLens artifacts
def _rewrite(e, name, edit_tensors=None, edit_header=None):
    """Copy the saved artifact with its tensors and/or header edited (checksum kept as saved)."""
    from safetensors.torch import save_file

    tensors, header = load_artifact(e.art)
    if edit_tensors:
        edit_tensors(tensors)
    if edit_header:
        edit_header(header)
    out = e.tmp / name
    save_file(tensors, out, metadata={"futurelens": json.dumps(header)})
    return out


def _flip_bytes(e, name, n=64):
    data = bytearray(e.art.read_bytes())
    start = len(data) - 4 * 32 * 8  # inside the tensor data (the end of the file)
    for i in range(start, start + n):
        data[i] ^= 0xFF
    out = e.tmp / name
    out.write_bytes(bytes(data))
    return out


def _nan_tensor(t):
    t["translators.1.weight"][0, 0] = float("nan")


def _load(path_fn):
    return lambda e: fl.TunedLens.load(path_fn(e), e.model)


def _drop_digest(h):
    del h["tensors_sha256"]


CASES_TUNED_LOAD = [
    ("64 flipped bytes", _load(lambda e: _flip_bytes(e, "flip.safetensors")), ArtifactError,
     r"integrity check"),
    ("tensor set to NaN", _load(lambda e: _rewrite(e, "nan.safetensors", _nan_tensor)),
     ArtifactError, r"integrity check"),
    ("tensor set to NaN, checksum removed",
     _load(lambda e: _rewrite(e, "nan2.safetensors", _nan_tensor, _drop_digest)),
     ArtifactError, r"non-finite"),
    ("tensor edited", _load(lambda e: _rewrite(
        e, "edit.safetensors", lambda t: t["translators.1.bias"].add_(1e-3))), ArtifactError,
     r"integrity check"),
    ("header layers not a list", _load(lambda e: _rewrite(
        e, "h1.safetensors", edit_header=lambda h: h.update(layers="all"))), ArtifactError,
     r"invalid header"),
    ("header layers missing", _load(lambda e: _rewrite(
        e, "h2.safetensors", edit_header=lambda h: h.pop("layers"))), ArtifactError,
     r"KeyError: 'layers'"),
    ("header token_shift a string", _load(lambda e: _rewrite(
        e, "h3.safetensors", edit_header=lambda h: h.update(token_shift="1"))), ArtifactError,
     r"token_shift"),
    ("header d_model a string", _load(lambda e: _rewrite(
        e, "h4.safetensors", edit_header=lambda h: h.update(d_model="32"))), ArtifactError,
     r"d_model"),
    ("header format_version a string", _load(lambda e: _rewrite(
        e, "h5.safetensors", edit_header=lambda h: h.update(format_version="1"))),
     ArtifactError, r"format_version"),
    ("extra tensor", _load(lambda e: _rewrite(
        e, "x.safetensors", lambda t: t.update(extra=torch.zeros(2)), _drop_digest)),
     ArtifactError, r"unexpected tensors"),
    ("missing file", _load(lambda e: e.tmp / "nope.safetensors"), ArtifactError,
     r"does not exist"),
    ("not safetensors", _load(lambda e: (e.tmp / "junk.safetensors").write_bytes(b"junk" * 9)
                              and e.tmp / "junk.safetensors"), ArtifactError, r"corrupt"),
    ("other model", lambda e: fl.TunedLens.load(e.art, e.other), LensMismatchError,
     r"fingerprint"),
    ("save a NaN lens", lambda e: e.nan_lens.save(e.tmp / "nan_lens.safetensors"),
     NonFiniteError, r"translators\.1\.bias"),
]


@pytest.mark.parametrize("case,call,exc,match", CASES_TUNED_LOAD, ids=_ids(CASES_TUNED_LOAD))
def test_tuned_load(env, case, call, exc, match):
    _check(env, call, exc, match)


# ---------------------------------------------------------------------- from_tuned_lens
def _package(e, name, edit=None):
    d = e.tmp / name
    e.tuned.to_tuned_lens(d)
    if edit:
        edit(d)
    return d


CASES_FROM_TUNED_LENS = [
    ("corrupt meta JSON", lambda e: fl.TunedLens.from_tuned_lens(_package(
        e, "p1", lambda d: (d / "futurelens_meta.json").write_text("{not json")), e.model),
     ArtifactError, r"not valid JSON"),
    ("meta JSON a list", lambda e: fl.TunedLens.from_tuned_lens(_package(
        e, "p2", lambda d: (d / "futurelens_meta.json").write_text("[1, 2]")), e.model),
     ArtifactError, r"expected an object"),
    ("corrupt config JSON", lambda e: fl.TunedLens.from_tuned_lens(_package(
        e, "p3", lambda d: (d / "config.json").write_text("")), e.model), ArtifactError,
     r"config"),
    ("params.pt a pickle of objects", lambda e: fl.TunedLens.from_tuned_lens(_package(
        e, "p4", lambda d: torch.save({"0.weight": types.SimpleNamespace()},
                                      d / "params.pt")), e.model), ArtifactError,
     r"weights_only"),
    ("params.pt NaN", lambda e: fl.TunedLens.from_tuned_lens(_package(
        e, "p5", lambda d: torch.save({**torch.load(d / "params.pt"),
                                       "1.bias": torch.full((32,), float("nan"))},
                                      d / "params.pt")), e.model), ArtifactError, r"NaN"),
    ("meta layers edited", lambda e: fl.TunedLens.from_tuned_lens(_package(
        e, "p6", lambda d: (d / "futurelens_meta.json").write_text(
            json.dumps({"layers": "x"}))), e.model), ArtifactError, r"invalid header"),
]


@pytest.mark.parametrize("case,call,exc,match", CASES_FROM_TUNED_LENS,
                         ids=_ids(CASES_FROM_TUNED_LENS))
def test_from_tuned_lens(env, case, call, exc, match):
    _check(env, call, exc, match)


# ---------------------------------------------------------------------- texts / windows
CASES_TEXTS = [
    ("non-string item", lambda e: load_texts(["ok", 3]), TypeError,
     r"texts\[1\] is a int" + TC),
    ("bytes", lambda e: load_texts(b"w1 w2"), TypeError, r"got bytes" + TC),
    ("an int", lambda e: load_texts(42), TypeError, r"got int" + TC),
    ("missing absolute path", lambda e: token_windows(e.model, "/nonexistent.txt"),
     FileNotFoundError, r"looks like a file path"),
    ("missing relative path", lambda e: load_texts("data/missing.jsonl"), FileNotFoundError,
     r"data/missing\.jsonl"),
    ("missing pathlib.Path", lambda e: load_texts(Path("missing_corpus")), FileNotFoundError,
     r"does not exist"),
    ("jsonl without text key", lambda e: load_texts(e.bad_jsonl), ValueError,
     r"bad\.jsonl:2 has no 'text' field"),
    ("only blank texts", lambda e: load_texts(["", "  "]), ValueError, r"empty"),
    ("length=1", lambda e: token_windows(e.model, e.texts, length=1), ValueError,
     r"length=1"),
    ("length a string", lambda e: token_windows(e.model, e.texts, length="8"), TypeError,
     r"length must be an int" + TC),
    ("max_windows=0", lambda e: token_windows(e.model, e.texts, max_windows=0), ValueError,
     r"max_windows=0"),
    ("corpus shorter than a window", lambda e: token_windows(e.model, "w1 w2", length=12),
     ValueError, r"fewer than one window"),
]


@pytest.mark.parametrize("case,call,exc,match", CASES_TEXTS, ids=_ids(CASES_TEXTS))
def test_texts(env, case, call, exc, match):
    _check(env, call, exc, match)


# ---------------------------------------------------------------------- metrics
NAN_ROW = torch.tensor([[float("nan"), 0.0, 1.0]])

CASES_METRICS = [
    ("rank_of NaN scores", lambda e: rank_of(NAN_ROW, torch.tensor([0])), NonFiniteError,
     r"NaN"),
    ("precision NaN scores", lambda e: precision_at_k(NAN_ROW, torch.tensor([0])),
     NonFiniteError, r"rank every label first"),
    ("label out of range", lambda e: rank_of(torch.zeros(1, 3), torch.tensor([3])), ValueError,
     r"outside 0\.\.vocab-1=2"),
    ("negative label", lambda e: rank_of(torch.zeros(1, 3), torch.tensor([-1])), ValueError,
     r"min -1"),
    ("float labels", lambda e: rank_of(torch.zeros(1, 3), torch.tensor([1.0])), TypeError,
     r"integer token ids" + TC),
    ("kl NaN", lambda e: kl_divergence(NAN_ROW, torch.zeros(1, 3)), NonFiniteError, r"p_log"),
    ("entropy +inf", lambda e: entropy(torch.tensor([float("inf"), 0.0])), NonFiniteError,
     r"\+inf"),
    ("buckets NaN confidence", lambda e: confidence_buckets(torch.tensor([0.5, float("nan")]),
                                                            torch.tensor([1, 0])),
     NonFiniteError, r"NaN"),
    ("bigram negative ids", lambda e: NgramBaseline(2).fit(torch.tensor([[1, -1, 2]])),
     ValueError, r"negative id -1"),
    ("bigram float ids", lambda e: NgramBaseline(2).fit(torch.tensor([[1.5, 2.0]])),
     TypeError, r"integer token ids" + TC),
]


@pytest.mark.parametrize("case,call,exc,match", CASES_METRICS, ids=_ids(CASES_METRICS))
def test_metrics(env, case, call, exc, match):
    _check(env, call, exc, match)


# ---------------------------------------------------------------------- what must keep working
def test_good_inputs_still_work(env):
    """Controls for the table above: the same entry points accept the valid neighbours."""
    _, ro = _rwl(env, targets=-1)  # -1 = "no target", documented
    assert (ro["logit", 0].target_ranks == 0).all()
    _, ro = _rwl(env, targets=5)  # one id for every cell
    assert (ro["logit", 0].target_ids == 5).all()
    lens = fl.TunedLens.load(env.art, env.model)
    for a, b in zip(lens.translators.parameters(), env.tuned.translators.parameters()):
        assert torch.equal(a, b)
    assert load_texts(["/nonexistent.txt"]) == ["/nonexistent.txt"]  # a list is always text
    assert load_texts("w1 w2 w3") == ["w1 w2 w3"]
    cwd = os.getcwd()
    os.chdir(env.tmp)
    try:
        (env.tmp / "corpus file.txt").write_text("w1 w2\n\nw3")
        assert load_texts("corpus file.txt") == ["w1 w2", "w3"]  # an existing file is read
    finally:
        os.chdir(cwd)


# ---------------------------------------------------------------------- FutureLens artifacts
@pytest.fixture(scope="module")
def future_art(env):
    lens = fl.FutureLens(env.model, "linear_hidden", [0], (1,))
    lens.basis = as_basis = fl.as_view(env.model).basis
    assert as_basis == "raw"
    path = env.tmp / "future.safetensors"
    lens.save(path)
    return path


def _future_rewrite(e, src, name, edit_tensors=None, edit_header=None):
    from safetensors.torch import save_file

    tensors, header = load_artifact(src)
    if edit_tensors:
        edit_tensors(tensors)
    if edit_header:
        edit_header(header)
    out = e.tmp / name
    save_file(tensors, out, metadata={"futurelens": json.dumps(header)})
    return out


def _first_nan(t):
    k = sorted(t)[0]
    t[k].view(-1)[0] = float("nan")


CASES_FUTURE_LOAD = [
    ("tensor set to NaN", lambda e, a: _future_rewrite(e, a, "f1.safetensors", _first_nan),
     ArtifactError, r"integrity check"),
    ("64 flipped bytes", lambda e, a: (e.tmp / "f2.safetensors").write_bytes(
        a.read_bytes()[:-200] + bytes(b ^ 0xFF for b in a.read_bytes()[-200:-136])
        + a.read_bytes()[-136:]) and e.tmp / "f2.safetensors", ArtifactError,
     r"integrity check"),
    pytest.param("config edited", lambda e, a: _future_rewrite(
        e, a, "f3.safetensors", edit_header=lambda h: h["config"].update(bogus=1)),
        ArtifactError, r"invalid header"),
    pytest.param("basis missing", lambda e, a: _future_rewrite(
        e, a, "f4.safetensors", edit_header=lambda h: h.pop("basis")),
        ArtifactError, r"invalid header"),
]


@pytest.mark.parametrize("case,make,exc,match", CASES_FUTURE_LOAD,
                         ids=[getattr(c, "values", c)[0] for c in CASES_FUTURE_LOAD])
def test_future_load(env, future_art, case, make, exc, match):
    path = make(env, future_art)
    with pytest.raises(exc, match=match):
        fl.FutureLens.load(path, env.model)


def test_official_prompt_pickle_is_an_artifact_error(env):
    path = env.tmp / "prompt.pt"
    torch.save({"prompt": types.SimpleNamespace(x=1)}, path)
    with pytest.raises(ArtifactError, match="weights_only"):
        fl.FutureLens.load_official_prompt(path, env.model, layer=0)
