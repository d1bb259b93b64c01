"""The model registry and loader path (issue: real pretrained models offline).

Default tier: a tiny random Llama-config model (RoPE, RMSNorm, GQA, tied embeddings) saved as a
Hugging Face folder goes through the same ``fl.load_model`` path as SmolLM2, with no download.
"""

from __future__ import annotations

import time
import zipfile

import pytest
import torch
from conftest import make_word_tokenizer, perturb_norms, tl_major

import futurelens_tl as fl
from futurelens_tl.model import as_view


def _tiny_llama_dir(tmp, vocab=61, seed=0, tied=True):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    tok = make_word_tokenizer(tmp, vocab)
    cfg = LlamaConfig(num_hidden_layers=2, hidden_size=32, num_attention_heads=4,
                      num_key_value_heads=2, intermediate_size=64, vocab_size=vocab,
                      max_position_embeddings=64, bos_token_id=0, eos_token_id=0,
                      pad_token_id=0, tie_word_embeddings=tied, rope_theta=1e5)
    hf = LlamaForCausalLM(cfg)
    perturb_norms(hf, seed)
    hf.eval()
    d = tmp / "tiny_llama"
    hf.save_pretrained(d)
    tok.save_pretrained(d)
    return d, hf


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory):
    return _tiny_llama_dir(tmp_path_factory.mktemp("llama"))


def test_known_models_lists_the_entries():
    names = fl.known_models()
    assert {"toy", "smollm2-135m"} <= set(names)
    assert all(isinstance(v, str) and v for v in names.values())


@pytest.mark.parametrize("offline", ["1", None])
def test_unknown_name_fails_fast_with_known_names(monkeypatch, offline):
    if offline:
        monkeypatch.setenv("HF_HUB_OFFLINE", offline)
    else:
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
        monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
        # an endpoint nothing listens on: the probe must fail at once, not retry for minutes
        monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    start = time.perf_counter()
    with pytest.raises(fl.models.ModelUnavailableError, match="'toy', 'smollm2-135m'"):
        fl.load_model("no-such-org/no-such-model-xyz", device="cpu")
    assert time.perf_counter() - start < 5.0


def test_path_like_names_that_do_not_exist(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        fl.load_model(str(tmp_path / "missing.gguf"), device="cpu")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        fl.load_model("./no/such/folder", device="cpu")
    with pytest.raises(ValueError, match="did you mean 'toy'"):
        fl.load_model("TOY", device="cpu")


def test_tiny_llama_folder_loads_with_hf_logits(tiny_llama):
    """RoPE + RMSNorm + GQA + tied embeddings through the loader path: logits equal HF's."""
    d, hf = tiny_llama
    model = fl.load_model(str(d), device="cpu")
    view = as_view(model)
    assert (view.normalization_type, view.positional_embedding_type) == ("RMS", "rotary")
    assert view.n_kv_heads == 2 and view.W_K.shape[1] == view.n_heads == 4
    assert view.basis == "raw"
    toks = torch.randint(1, 61, (2, 11), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = hf(toks).logits
        got, resid = view.residuals(toks)
    torch.testing.assert_close(got, want, atol=1e-4, rtol=0)
    # the final RMSNorm recomputed per row reproduces the model's own logits from the last layer
    torch.testing.assert_close(view.readout(resid[-1]), got, atol=1e-5, rtol=0)
    # and the logit lens at every layer is that readout (statistics per layer, not cached)
    lens = fl.LogitLens(model)
    for k, layer in enumerate(range(-1, view.n_layers)):
        torch.testing.assert_close(lens(resid[k], layer), view.readout(resid[k]), atol=1e-5,
                                   rtol=0)


@pytest.mark.skipif(tl_major() < 4, reason="transformer_lens.tools.analysis.logit_lens is TL>=4.3")
def test_tiny_llama_logit_lens_matches_transformerlens(tiny_llama):
    from transformer_lens.tools.analysis import logit_lens

    model = fl.load_model(str(tiny_llama[0]), device="cpu")
    toks = torch.randint(1, 61, (1, 9), generator=torch.Generator().manual_seed(2))
    res = logit_lens(model, toks, positions=None, return_type="log_probs")
    view = as_view(model)
    _, resid = view.residuals(toks)
    ours = torch.stack([fl.LogitLens(model).log_probs(resid[k], layer)
                        for k, layer in enumerate(range(-1, view.n_layers))])
    theirs = res.values if hasattr(res, "values") else res.log_probs
    theirs = theirs.reshape(ours.shape[0], -1, ours.shape[-1])
    torch.testing.assert_close(ours.reshape(theirs.shape), theirs, atol=1e-4, rtol=0)


def test_tiny_llama_on_hooked_backend(tiny_llama):
    """TL 3: a local Llama folder becomes a HookedTransformer offline, logits equal HF's."""
    if tl_major() >= 4:
        with pytest.raises(ValueError, match="3.9"):
            fl.load_model(str(tiny_llama[0]), backend="hooked", device="cpu")
        return
    d, hf = tiny_llama
    model = fl.load_model(str(d), backend="hooked", device="cpu")
    assert type(model).__name__ == "HookedTransformer"
    toks = torch.randint(1, 61, (2, 7), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        torch.testing.assert_close(model(toks), hf(toks).logits, atol=1e-4, rtol=0)
    assert as_view(model).basis == "raw"


def test_gemma_norm_gain_is_one_plus_w(tmp_path):
    """Gemma's RMSNorm multiplies by (1 + w): the readout must too (else off by many logits)."""
    transformers = pytest.importorskip("transformers")
    if not hasattr(transformers, "Gemma2Config"):
        pytest.skip("this transformers has no Gemma2")
    from transformers import Gemma2Config, Gemma2ForCausalLM

    torch.manual_seed(0)
    tok = make_word_tokenizer(tmp_path, 61)
    cfg = Gemma2Config(num_hidden_layers=2, hidden_size=32, num_attention_heads=4,
                       num_key_value_heads=2, head_dim=8, intermediate_size=64, vocab_size=61,
                       max_position_embeddings=64, bos_token_id=0, eos_token_id=0,
                       pad_token_id=0, sliding_window=16, final_logit_softcapping=None)
    hf = Gemma2ForCausalLM(cfg)
    perturb_norms(hf, 0)
    hf.eval()
    hf.save_pretrained(tmp_path / "gemma")
    tok.save_pretrained(tmp_path / "gemma")
    try:
        model = fl.load_model(str(tmp_path / "gemma"), device="cpu")
    except ValueError as err:  # pragma: no cover - TL without a Gemma2 adapter
        pytest.skip(f"this TransformerLens cannot boot Gemma2: {err}")
    view = as_view(model)
    toks = torch.randint(1, 61, (1, 8), generator=torch.Generator().manual_seed(0))
    logits, resid = view.residuals(toks)
    torch.testing.assert_close(view.readout(resid[-1]), logits, atol=1e-4, rtol=0)


# ---------------------------------------------------------------------- corpora
def _fake_gensim_wheel(directory, train, heldout):
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "gensim-4.4.0-cp311-cp311-manylinux_2_28_x86_64.whl"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("gensim/test/test_data/lee_background.cor", "\n".join(train) + "\n")
        z.writestr("gensim/test/test_data/lee.cor", "\n".join(heldout) + "\n\n")
    return path


def test_corpus_reads_splits_from_a_wheel_without_installing(tmp_path, monkeypatch):
    import futurelens_tl.corpora as corpora

    monkeypatch.setattr(corpora, "_installed", lambda info, member: None)
    _fake_gensim_wheel(tmp_path / "wheels", ["doc a one.", "doc b two."], ["held c."])
    assert fl.corpus("lee", cache_dir=str(tmp_path), download=False) == ["doc a one.",
                                                                         "doc b two."]
    assert fl.corpus("lee", "heldout", cache_dir=str(tmp_path), download=False) == ["held c."]
    assert len(fl.corpus("lee", "all", cache_dir=str(tmp_path), download=False)) == 3


def test_corpus_errors(tmp_path, monkeypatch):
    import futurelens_tl.corpora as corpora

    monkeypatch.setattr(corpora, "_installed", lambda info, member: None)
    with pytest.raises(ValueError, match="unknown"):
        fl.corpus("no-such-corpus")
    with pytest.raises(ValueError, match="split='test'"):
        fl.corpus("lee", "test", cache_dir=str(tmp_path))
    with pytest.raises(FileNotFoundError, match="pip download --no-deps gensim==4.4.0"):
        fl.corpus("lee", cache_dir=str(tmp_path), download=False)
