"""Reliability guards on SmolLM2-135M (slow tier; skips with the reason when the extra is absent).

The same guarantees as ``tests/test_bad_inputs.py``, on the real Llama-architecture model
(RoPE, RMSNorm, GQA, vocabulary 49,152): a NaN weight deep in an MLP is caught and named,
another model of the same shape is refused, and a mixed-length batch of real text is exact on
its real cells with the padded cells flagged.
"""

from __future__ import annotations

import pytest
import torch

import futurelens_tl as fl
from futurelens_tl.model import as_view

pytestmark = pytest.mark.slow



TEXTS = ["The capital of France is Paris, and the capital of Germany is Berlin.",
         "One, two, three,", "Hello"]


def test_nan_mlp_weight_is_named_and_restoring_it_recovers(smollm2):
    logit = fl.LogitLens(smollm2)
    name, p = next((n, p) for n, p in smollm2.named_parameters()
                   if "mlp" in n.lower() and ".10." in n)
    saved = p.detach().clone()
    try:
        with torch.no_grad():
            p.view(-1)[0] = float("nan")
        with pytest.raises(fl.NonFiniteError, match=name.replace(".", r"\.")):
            fl.compare(smollm2, TEXTS[0], [logit])
        with pytest.raises(fl.NonFiniteError, match="non-finite weights"):
            fl.run_with_lenses(smollm2, TEXTS[1], [logit])
    finally:
        with torch.no_grad():
            p.copy_(saved)
    cmp = fl.compare(smollm2, TEXTS[0], [logit])  # restored: finite grid again
    assert all(x is not None for x in cmp.grid["lenses"][0]["entropy"][-1])


def test_mixed_length_batch_exact_on_real_cells(smollm2):
    view = as_view(smollm2)
    tuned = fl.TunedLens(smollm2)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for t in tuned.translators:
            t.weight.copy_(0.01 * torch.randn(t.weight.shape, generator=g))
    _, ro = fl.run_with_lenses(smollm2, TEXTS, [fl.LogitLens(smollm2), tuned], top_k=3)
    lengths = [view.to_tokens(t).shape[1] for t in TEXTS]
    assert ro.meta["lengths"] == lengths
    assert int((~ro.valid).sum()) == sum(max(lengths) - n for n in lengths)
    for b, text in enumerate(TEXTS):
        _, alone = fl.run_with_lenses(smollm2, text, [fl.LogitLens(smollm2), tuned], top_k=3)
        n = lengths[b]
        for name in ("logit", "tuned"):
            for layer in (0, 15, view.n_layers - 1):
                r, a = ro[name, layer], alone[name, layer]
                assert torch.allclose(r.top_probs[b, :n], a.top_probs[0], atol=1e-4)
                assert torch.equal(r.target_ids[b, :n], a.target_ids[0])
                assert (r.target_ids[b, n:] == -1).all()


def test_lens_of_an_edited_copy_is_refused(smollm2):
    other = fl.load_model("smollm2-135m", device="cpu", verbose=False)
    logit = fl.LogitLens(smollm2)
    fl.compare(other, TEXTS[1], [logit])  # same weights: the lens moves freely
    q = next(p for n, p in other.named_parameters() if "q_proj" in n)
    with torch.no_grad():
        q.mul_(1.01)
    with pytest.raises(fl.LensMismatchError, match="fingerprint"):
        fl.compare(other, TEXTS[1], [logit])
