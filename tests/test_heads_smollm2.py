"""Head roles on SmolLM2-135M (slow tier; skips with the reason when the real extra is absent).

Known answers on a real Llama-family model (RoPE, RMSNorm, GQA 9q/3kv): an induction head is
tagged, backed by positive OV copying through the effective embeddings (above the random-head
control) and confirmed by resample ablation against heads of its own layer; the model performs
the factual prompts, so the knowledge / expression attribution roles are available.
"""

from __future__ import annotations

import pytest
import torch

import futurelens_tl as fl

pytestmark = pytest.mark.slow



def test_induction_head_tagged_copying_and_confirmed(smollm2):
    tags = fl.tag_heads(smollm2, roles=["previous_token", "induction", "copying"],
                        n_examples=8, seq_len=64, confirm=True, verbose=False)
    ind = tags.tagged("induction")
    assert ind, tags.top("induction", 3)
    best = ind[0]
    assert tags.score("induction")[best] > 0.5
    cp = tags.extras["copying"]
    assert tags.score("copying")[best] > cp["random_mean"][best]
    assert any(tags.score("copying")[lh] > cp["random_mean"][lh] + 2 * cp["random_std"][lh]
               for lh in ind)  # at least one induction head copies beyond the control
    recs = {(c["layer"], c["head"]): c for c in tags.confirmation["induction"]}
    assert recs[best]["confirmed"], recs[best]
    assert tags.tagged("previous_token"), tags.top("previous_token", 3)


def test_task_roles_available_on_a_real_model(smollm2):
    tags = fl.tag_heads(smollm2, roles=["memory", "correct", "amplification", "negative"],
                        verbose=False)
    assert tags.n_forwards == 2  # the hook check + one forward over every task prompt
    for r in ("memory", "correct", "amplification"):
        assert r not in tags.unavailable, tags.unavailable.get(r)
        assert torch.isfinite(tags.score(r)).all()
    assert tags.evidence["correct"]["task_accuracy"] >= 0.5
