"""ModelView: the adapter every other module stands on, tested on every backend."""

from __future__ import annotations

import pytest
import torch
from conftest import hf_gpt2_bridge, hf_llama_bridge, hooked_model, native_bridge, tl_major
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import futurelens_tl as fl
from futurelens_tl.model import ModelView, NormParams, as_view


def _check_readout_identity(model, tokens, atol=1e-5):
    view = as_view(model)
    logits, resid = view.residuals(tokens)
    assert resid.shape == (view.n_layers + 1, *tokens.shape, view.d_model)
    ours = torch.log_softmax(view.readout(resid[-1]), -1)
    theirs = torch.log_softmax(logits, -1)
    torch.testing.assert_close(ours, theirs, atol=atol, rtol=0)


@pytest.mark.parametrize("backend", ["native", "hf_gpt2", "hf_llama", "hooked"])
def test_readout_identity_and_weights(backend, tmp_path):
    model = {
        "native": lambda: native_bridge(),
        "hf_gpt2": lambda: hf_gpt2_bridge(tmp_path),
        "hf_llama": lambda: hf_llama_bridge(tmp_path),
        "hooked": lambda: hooked_model(n_kv_heads=2),
    }[backend]()
    view = as_view(model)
    tokens = torch.randint(1, view.d_vocab, (2, 9), generator=torch.Generator().manual_seed(1))
    _check_readout_identity(model, tokens)
    L, H, d, dh = view.n_layers, view.n_heads, view.d_model, view.d_head
    for w in (view.W_Q, view.W_K, view.W_V):
        assert w.shape == (L, H, d, dh)  # GQA expanded to n_heads
    assert view.W_O.shape == (L, H, dh, d)
    for b in (view.b_Q, view.b_K, view.b_V):
        assert b.shape == (L, H, dh)
    assert view.W_U.shape == (d, view.d_vocab) and view.b_U.shape == (view.d_vocab,)
    if backend == "hf_llama":
        assert view.W_pos is None and view.ln_final.kind == "RMS" and view.ln_final.b is None
        assert view.n_kv_heads == 2
        # query head h uses kv head h // (H / n_kv)
        torch.testing.assert_close(view.W_K[:, 1], view.W_K[:, 0])
        torch.testing.assert_close(view.W_K[:, 2], model.W_K[:, 1])
    else:
        assert view.W_pos.shape == (view.n_ctx, d) and view.ln_final.kind == "LN"
    assert view.basis == "raw"
    # ln1 reproduces the model's own ln1 scale (recomputed stats)
    _, cache = view.run_with_cache(tokens, ["blocks.0.hook_resid_pre", "blocks.0.ln1.hook_scale"])
    torch.testing.assert_close(
        view.ln1(0).scale(cache["blocks.0.hook_resid_pre"]), cache["blocks.0.ln1.hook_scale"],
        atol=1e-5, rtol=1e-5,
    )


def test_residuals_match_cache_one_forward(tiny_bridge):
    view = as_view(tiny_bridge)
    tokens = torch.randint(0, view.d_vocab, (3, 8))
    calls = []
    with tiny_bridge.hooks(fwd_hooks=[("hook_embed", lambda x, hook: calls.append(1))]):
        logits, resid = view.residuals(tokens, layers=[-1, 0, "1"])
    assert len(calls) == 1
    _, cache = tiny_bridge.run_with_cache(tokens)
    torch.testing.assert_close(resid[0], cache["blocks.0.hook_resid_pre"])
    torch.testing.assert_close(resid[1], cache["blocks.0.hook_resid_post"])
    torch.testing.assert_close(resid[2], cache["blocks.1.hook_resid_post"])


def test_processed_basis_detected_and_logprobs_invariant(tmp_path):
    model = hf_gpt2_bridge(tmp_path)
    tokens = torch.randint(1, 61, (2, 10), generator=torch.Generator().manual_seed(0))
    raw = as_view(model)
    fp_raw = raw.fingerprint
    _, r_raw = raw.residuals(tokens)
    lp_raw = torch.log_softmax(raw.readout(r_raw), -1)
    model.enable_compatibility_mode()
    proc = ModelView(model)
    assert proc.basis == "processed"
    assert proc.fingerprint != fp_raw
    _, r_proc = proc.residuals(tokens)
    # residuals are centred in the processed basis ...
    torch.testing.assert_close(r_proc, r_raw - r_raw.mean(-1, keepdim=True), atol=2e-5, rtol=1e-4)
    # ... but logit-lens log-probs are invariant at every layer (reference §C.6)
    lp_proc = torch.log_softmax(proc.readout(r_proc), -1)
    torch.testing.assert_close(lp_proc, lp_raw, atol=2e-5, rtol=0)


def test_hooked_fold_ln_is_processed():
    model = hooked_model(normalization="LNPre")
    view = as_view(model)
    assert view.basis == "processed"
    assert view.ln_final.w is None and view.ln_final.b is None


def test_fingerprint_stable_and_sensitive():
    a, b, c = native_bridge(seed=0), native_bridge(seed=0), native_bridge(seed=1)
    fa = as_view(a).fingerprint
    assert fa == as_view(a).fingerprint == as_view(b).fingerprint
    assert fa != as_view(c).fingerprint
    assert len(fa) == 16
    # dtype-robust: the same weights in bf16 keep the fingerprint
    assert ModelView(a.to(torch.bfloat16)).fingerprint == fa


def test_layer_validation(tiny_bridge):
    view = as_view(tiny_bridge)
    assert view.layer_index("embed") == -1 and view.layer_index(1) == 1
    assert view.layer_indices(None) == [-1, 0, 1]
    with pytest.raises(ValueError, match="out of range"):
        view.layer_index(2)
    with pytest.raises(ValueError, match="out of range"):
        view.layer_index(-2)
    with pytest.raises(ValueError, match="not a layer"):
        view.layer_index("mid")
    with pytest.raises(TypeError):
        view.layer_index(1.0)
    with pytest.raises(ValueError, match="empty"):
        view.layer_indices([])


def test_to_tokens_errors(gpt2_bridge):
    view = as_view(gpt2_bridge)
    with pytest.raises(ValueError, match="empty"):
        view.to_tokens("")
    with pytest.raises(ValueError, match="n_ctx"):
        view.to_tokens(" ".join(["w1"] * 40))
    with pytest.raises(ValueError, match="outside the vocabulary"):
        view.to_tokens(torch.tensor([[1, 2, 999]]))
    with pytest.raises(TypeError, match="integer token ids"):
        view.to_tokens(torch.tensor([[1.0, 2.0]]))
    assert view.to_str_tokens(view.to_tokens("w1 w2")) == ["<|endoftext|>", "w1", "w2"]


def test_norm_params_math():
    x = torch.randn(4, 16)
    w, b = torch.rand(16) + 0.5, torch.randn(16)
    ln = NormParams("LN", w, b, 1e-5)
    torch.testing.assert_close(ln(x), torch.nn.functional.layer_norm(x, (16,), w, b, 1e-5))
    rms = NormParams("RMS", w, None, 1e-6)
    torch.testing.assert_close(rms(x), x / (x.pow(2).mean(-1, keepdim=True) + 1e-6).sqrt() * w)


def test_load_model_errors():
    with pytest.raises(ValueError, match="backend"):
        fl.load_model("gpt2", backend="jax")
    with pytest.raises(ValueError, match="dtype"):
        fl.load_model("gpt2", dtype="int8")
    with pytest.raises(ValueError, match="dtype=float16 on device='cpu'"):
        fl.load_model("gpt2", device="cpu", dtype="float16")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA"):
            fl.load_model("gpt2", device="cuda")
    with pytest.raises(ValueError, match="not a torch device"):
        fl.load_model("gpt2", device="gpu0")
    if tl_major() >= 4:
        with pytest.raises(ValueError, match=r"transformer-lens 4.*3\.9"):
            fl.load_model("gpt2", backend="hooked")


def test_load_model_unknown_name_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ValueError, match="local Hugging Face folder"):
        fl.load_model("no-such-org/no-such-model-xyz", device="cpu")


def test_load_model_local_path(tmp_path):
    model = hf_gpt2_bridge(tmp_path)
    loaded = fl.load_model(str(tmp_path / "hf_gpt2"), device="cpu")
    assert as_view(loaded).fingerprint == as_view(model).fingerprint
    assert as_view(loaded).basis == "raw"
    processed = fl.load_model(str(tmp_path / "hf_gpt2"), device="cpu", process_weights=True)
    assert as_view(processed).basis == "processed"


def test_not_a_model():
    with pytest.raises(TypeError, match="TransformerBridge or HookedTransformer"):
        ModelView(torch.nn.Linear(2, 2))


@settings(max_examples=12, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    n_layers=st.integers(1, 3),
    n_heads=st.sampled_from([1, 2, 4]),
    d_head=st.sampled_from([4, 8]),
    kv_div=st.sampled_from([1, 2, 4]),
    norm=st.sampled_from(["LN", "RMS"]),
    pos=st.sampled_from(["standard", "rotary"]),
    seed=st.integers(0, 3),
)
def test_fuzz_native_configs(n_layers, n_heads, d_head, kv_div, norm, pos, seed):
    """Readout identity and normalised weight surface on random small native configs."""
    n_kv = max(1, n_heads // kv_div)
    model = native_bridge(n_layers=n_layers, d_model=n_heads * d_head, n_heads=n_heads,
                          d_vocab=37, n_kv_heads=n_kv if n_kv != n_heads else None,
                          normalization=norm, pos=pos, seed=seed)
    from conftest import perturb_norms

    perturb_norms(model, seed)
    view = ModelView(model)
    tokens = torch.randint(0, 37, (2, 6), generator=torch.Generator().manual_seed(seed))
    _check_readout_identity(model, tokens, atol=3e-5)
    assert view.W_K.shape == (n_layers, n_heads, n_heads * d_head, d_head)
    assert (view.W_pos is None) == (pos == "rotary")
    assert view.ln_final.kind == norm
    assert view.n_kv_heads == n_kv


def test_hooked_backend_loads_a_local_gpt2_directory(tmp_path):
    """TL 3: load_model(dir, backend='hooked') builds the model offline, raw or processed."""
    if tl_major() >= 4:
        pytest.skip("HookedTransformer needs TransformerLens 3.x")
    from transformers import GPT2LMHeadModel

    hf_gpt2_bridge(tmp_path)  # writes tmp_path / "hf_gpt2" (perturbed norms)
    path = tmp_path / "hf_gpt2"
    hf = GPT2LMHeadModel.from_pretrained(str(path)).eval()
    toks = torch.randint(1, 61, (2, 9), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = torch.log_softmax(hf(toks).logits, -1)
    raw = fl.load_model(str(path), backend="hooked", device="cpu")
    proc = fl.load_model(str(path), backend="hooked", device="cpu", process_weights=True)
    assert type(raw).__name__ == "HookedTransformer"
    assert as_view(raw).basis == "raw" and as_view(proc).basis == "processed"
    for model in (raw, proc):
        got = torch.log_softmax(model(toks), -1)
        assert torch.allclose(got, want, atol=1e-4)
