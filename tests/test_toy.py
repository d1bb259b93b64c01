"""Tests of the embedded toy model: corpus, tokenizer, pinned checkpoint, training."""

from __future__ import annotations

import dataclasses
import re
import time
from collections import Counter
from pathlib import Path

import pytest
import torch
from conftest import tl_major

from futurelens_tl.toy import (
    CHECKPOINT_DIR,
    ORDINAL_FAMILIES,
    RARE_WORDS,
    TOY_PROMPTS,
    ToyConfig,
    entity_positions,
    toy_checkpoint_path,
    toy_corpus,
    toy_model,
    toy_stats,
    toy_texts,
    toy_tokenizer,
)
from futurelens_tl.toy.train import read_meta

# ---------------------------------------------------------------------------------- corpus


@pytest.fixture(scope="module")
def corpus():
    return toy_corpus(n_docs=600, seed=0)


def test_corpus_deterministic_and_seeded(corpus):
    again = toy_corpus(n_docs=600, seed=0)
    assert again.texts == corpus.texts and again.entities == corpus.entities
    other_world = toy_corpus(n_docs=50, seed=1)
    assert other_world.entities != corpus.entities
    assert other_world.texts != corpus.texts[:50]
    heldout = toy_corpus(n_docs=50, seed=0, doc_seed=7)
    assert heldout.entities == corpus.entities
    assert not set(heldout.texts) & set(corpus.texts)
    assert toy_texts("test", n=5) != toy_texts("train", n=5)
    assert toy_texts("train", n=5) == corpus.texts[:5]


def test_corpus_entities_recur_and_are_predictable(corpus):
    firsts = [e.split()[0] for e in corpus.entities]
    assert len(set(firsts)) == len(firsts)  # first word determines the entity
    assert all(len(e.split()) >= 2 for e in corpus.entities)
    docs_with = Counter()
    for t in corpus.texts:
        for e in corpus.entities:
            if e in t:
                docs_with[e] += 1
    # every entity recurs across many documents, always spelled the same
    assert min(docs_with[e] for e in corpus.entities) >= 5
    # whenever an entity's first word appears, the full entity follows
    for t in corpus.texts:
        for e in corpus.entities:
            first = e.split()[0]
            assert len(re.findall(rf"\b{first}\b", t)) == t.count(e)


def test_corpus_induction_spans_repeat_at_varying_distances(corpus):
    gaps = set()
    n_repeated = 0
    for t in corpus.texts:
        m = re.search(r"wrote the secret code (.+?)\. ", t) or re.search(r"sang: (.+?)\. ", t)
        if not m:
            continue
        span = m.group(1)
        starts = [i.start() for i in re.finditer(re.escape(span), t)]
        if len(starts) >= 2:
            n_repeated += 1
            gaps.update(b - a for a, b in zip(starts, starts[1:]))
    assert n_repeated >= 150
    assert len(gaps) >= 50  # no fixed offset: the copy distance varies


def test_corpus_ordinals_phrases_rare_words(corpus):
    text = " ".join(corpus.texts)
    assert "Monday, then Tuesday, then Wednesday" in text or "Tuesday, then Wednesday" in text
    assert re.search(r"counted (\w+), (\w+), (\w+)", text)
    for fam in ("months", "number_words", "digits"):
        seq = ORDINAL_FAMILIES[fam]
        found = any(
            f"{seq[i]}{sep}{seq[i + 1]}" in text
            for i in range(len(seq) - 1)
            for sep in (" to ", ", ", " ")
        )
        assert found, fam
    for p in corpus.phrases[:5]:
        assert p in text.lower()
    n_rare_docs = sum(any(w in t for w in RARE_WORDS) for t in corpus.texts)
    assert 1 <= n_rare_docs <= 0.1 * len(corpus.texts)


def test_corpus_bad_input():
    with pytest.raises(ValueError, match="n_docs"):
        toy_corpus(n_docs=0)
    with pytest.raises(TypeError, match="seed"):
        toy_corpus(n_docs=2, seed="a")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="split"):
        toy_texts("val")  # type: ignore[arg-type]


# ------------------------------------------------------------------------------- tokenizer


@pytest.fixture(scope="module")
def tok():
    return toy_tokenizer()


def test_tokenizer_round_trip_and_readable(tok):
    assert tok.bos_token == "<|endoftext|>" and tok.bos_token_id == 0
    assert tok.eos_token_id == 0 and tok.pad_token_id == 0
    for t in toy_texts("test", n=30):
        ids = tok(t, add_special_tokens=False)["input_ids"]
        assert tok.decode(ids) == t
        pieces = [tok.decode([i]) for i in ids]
        assert "".join(pieces) == t
        assert not any("Ġ" in p for p in pieces)
    # ordinal members are single tokens (successor heads work on tokens)
    for fam in ORDINAL_FAMILIES.values():
        for w in fam:
            assert len(tok(" " + w, add_special_tokens=False)["input_ids"]) == 1, w


def test_tokenizer_training_is_deterministic(tmp_path):
    from futurelens_tl.toy.tokenizer import train_tokenizer

    a = train_tokenizer(400, seed=3, n_docs=200, save_dir=tmp_path / "a")
    b = train_tokenizer(400, seed=3, n_docs=200, save_dir=tmp_path / "b")
    assert a.get_vocab() == b.get_vocab()
    assert (tmp_path / "a" / "tokenizer.json").read_bytes() == (
        tmp_path / "b" / "tokenizer.json"
    ).read_bytes()


def test_entity_positions(tok, corpus):
    e = corpus.entities[0]
    text = f"One day Anna met {e}, the mayor."
    pos = entity_positions(text, tok, corpus.entities)
    assert pos
    ids = [0] + tok(text, add_special_tokens=False)["input_ids"]
    assert "".join(tok.decode([ids[p]]) for p in pos).strip() == e
    assert corpus.entity_positions("No entity here.", tok) == []


# ------------------------------------------------------------------------ pinned checkpoint


@pytest.fixture(scope="module")
def model():
    return toy_model(verbose=False)


def test_pinned_checkpoint_is_small_and_used():
    meta = read_meta(CHECKPOINT_DIR)
    assert meta is not None and meta["config"]["seed"] == 0
    size = sum(f.stat().st_size for f in CHECKPOINT_DIR.iterdir() if f.is_file())
    assert size < 5_000_000
    assert toy_checkpoint_path() == CHECKPOINT_DIR
    t0 = time.time()
    toy_model(verbose=False)
    assert time.time() - t0 < 30  # loads, never trains


def test_toy_model_is_raw_gpt2_style(model):
    from futurelens_tl.model import as_view

    view = as_view(model)
    assert view.backend == "bridge" and view.basis == "raw"
    assert (view.n_layers, view.d_model, view.n_heads, view.d_vocab) == (4, 128, 4, 1536)
    assert view.W_pos is not None and view.W_pos.shape == (128, 128)
    assert view.normalization_type == "LN"
    ln = view.ln1(0)
    assert ln.kind == "LN" and ln.w is not None and ln.b is not None
    assert float(ln.b.detach().abs().max()) > 0
    assert float(view.b_Q.detach().abs().max()) > 0
    assert float(view.b_O.detach().abs().max()) > 0
    assert "Ġ" not in "".join(model.to_str_tokens(TOY_PROMPTS[0]))


def test_bridge_matches_hugging_face(model):
    from transformers import GPT2LMHeadModel

    hf = GPT2LMHeadModel.from_pretrained(str(CHECKPOINT_DIR), torch_dtype=torch.float32).eval()
    tokens = model.to_tokens(TOY_PROMPTS[:2], padding_side="right")[:, :20]
    with torch.no_grad():
        ours = model(tokens)
        ref = hf(tokens).logits
    torch.testing.assert_close(ours, ref, atol=1e-4, rtol=1e-4)


def _heldout_loss(model, texts):
    tot, n = 0.0, 0
    with torch.no_grad():
        for t in texts:
            toks = model.to_tokens(t)[:, :128]
            logp = model(toks).log_softmax(-1)
            nll = -logp[0, :-1].gather(-1, toks[0, 1:, None])[:, 0]
            tot += float(nll.sum())
            n += nll.numel()
    return tot / n


def test_beats_unigram_and_bigram_baselines(model):
    stats = toy_stats()
    loss = _heldout_loss(model, toy_texts("test", n=12))
    assert loss < stats["unigram_loss"] - 1.0
    assert loss < stats["bigram_loss"]
    assert abs(loss - stats["heldout_loss"]) < 0.3  # the recorded number is reproducible


def test_predicts_entity_continuations(model, tok, corpus):
    """Later entity words are predicted from the first one (the future-lens phenomenon)."""
    hits, total = 0, 0
    for e in corpus.entities[:16]:
        words = e.split()
        toks = model.to_tokens(f"One day Tom met {e}")
        pos = entity_positions(f"One day Tom met {e}", tok, [e])
        with torch.no_grad():
            pred = model(toks)[0].argmax(-1)
        for p in pos[:-1]:
            total += 1
            hits += int(pred[p] == toks[0, p + 1])
        assert len(words) >= 2
    assert hits / total > 0.8


def test_predicts_ordinal_successors(model):
    """After two members of an ordinal family the model predicts the next one (successors)."""
    hits, total = 0, 0
    cases = [("weekdays", "On {}, then {}, then"), ("number_words", "Anna counted {}, {},"),
             ("months", "From {} to {} to")]
    for fam, tmpl in cases:
        seq = ORDINAL_FAMILIES[fam]
        for i in range(len(seq) - 2):
            toks = model.to_tokens(tmpl.format(seq[i], seq[i + 1]))
            with torch.no_grad():
                pred = int(model(toks)[0, -1].argmax())
            target = model.to_single_token(" " + seq[i + 2])
            hits += int(pred == target)
            total += 1
    assert hits / total > 0.8, (hits, total)


def induction_pattern_scores(model, lengths=(7, 12, 19, 26), n=8, seed=0):
    """Mean attention on the induction stripe per [layer, head], varied repeat lengths."""
    g = torch.Generator().manual_seed(seed)
    cfg = model.cfg
    scores = torch.zeros(cfg.n_layers, cfg.n_heads)
    names = [f"blocks.{layer}.attn.hook_pattern" for layer in range(cfg.n_layers)]
    for L in lengths:
        pre = int(torch.randint(0, 16, (1,), generator=g))
        r = torch.randint(257, cfg.d_vocab, (n, L), generator=g)
        p = torch.randint(257, cfg.d_vocab, (n, pre), generator=g)
        x = torch.cat([torch.zeros(n, 1, dtype=torch.long), p, r, r], 1)
        with torch.no_grad():
            _, cache = model.run_with_cache(x, names_filter=lambda nm: nm in names)
        q = torch.arange(1 + pre + L, 1 + pre + 2 * L)
        for layer, nm in enumerate(names):
            scores[layer] += cache[nm][:, :, q, q - L + 1].mean((0, 2))
    return scores / len(lengths)


def test_pinned_checkpoint_has_induction_head(model):
    scores = induction_pattern_scores(model)
    assert float(scores.max()) > 0.3, scores
    # content-based, not positional: layer 0 cannot do induction (no previous-token info yet)
    assert float(scores[0].max()) < float(scores.max())
    stats = toy_stats()
    assert abs(stats["induction"]["best_score"] - float(scores.max())) < 0.15
    # and it is used: the second copy of a random sequence is predicted much better
    g = torch.Generator().manual_seed(1)
    r = torch.randint(257, model.cfg.d_vocab, (8, 20), generator=g)
    x = torch.cat([torch.zeros(8, 1, dtype=torch.long), r, r], 1)
    with torch.no_grad():
        logp = model(x).log_softmax(-1)
    nll = -logp[:, :-1].gather(-1, x[:, 1:, None])[..., 0]
    first, second = float(nll[:, 1:20].mean()), float(nll[:, 21:40].mean())
    assert second < first - 2.0, (first, second)


@pytest.mark.hooked
def test_hooked_backend_matches_bridge(model):
    if tl_major() >= 4:
        pytest.skip("HookedTransformer needs TransformerLens 3.x")
    hooked = toy_model("hooked", verbose=False)
    tokens = model.to_tokens(TOY_PROMPTS[0])
    with torch.no_grad():
        torch.testing.assert_close(hooked(tokens), model(tokens), atol=1e-5, rtol=1e-5)
        _, c1 = hooked.run_with_cache(tokens, names_filter="blocks.1.hook_resid_post")
        _, c2 = model.run_with_cache(tokens, names_filter="blocks.1.hook_resid_post")
    torch.testing.assert_close(
        c1["blocks.1.hook_resid_post"], c2["blocks.1.hook_resid_post"], atol=1e-5, rtol=1e-5
    )


def test_hooked_backend_refused_on_tl4():
    if tl_major() < 4:
        pytest.skip("TL 3.x has HookedTransformer")
    with pytest.raises(ValueError, match="hooked"):
        toy_model("hooked", verbose=False)


def test_toy_model_bad_input():
    with pytest.raises(ValueError, match="backend"):
        toy_model("tl", verbose=False)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="seed"):
        toy_model(seed=1.5, verbose=False)  # type: ignore[arg-type]


# -------------------------------------------------------------------------------- training

TINY = ToyConfig(
    seed=5, vocab_size=320, tokenizer_docs=150, n_layer=1, d_model=32, n_head=2, d_mlp=64,
    n_ctx=32, steps=4, batch_size=4, warmup=2,
)


def test_quick_training_is_deterministic_and_cached(tmp_path):
    a = toy_checkpoint_path(config=TINY, cache_dir=tmp_path / "a", verbose=False)
    b = toy_checkpoint_path(config=TINY, cache_dir=tmp_path / "b", verbose=False)
    assert a != b
    wa = (a / "model.safetensors").read_bytes()
    assert wa == (b / "model.safetensors").read_bytes()  # bit-identical
    c = toy_checkpoint_path(
        config=dataclasses.replace(TINY, seed=6), cache_dir=tmp_path / "a", verbose=False
    )
    assert (c / "model.safetensors").read_bytes() != wa
    # a second request is served from the cache, not retrained
    mtime = (a / "model.safetensors").stat().st_mtime_ns
    assert toy_checkpoint_path(config=TINY, cache_dir=tmp_path / "a", verbose=False) == a
    assert (a / "model.safetensors").stat().st_mtime_ns == mtime
    meta = read_meta(a)
    assert meta["key"] == TINY.key() and meta["stats"]["steps"] == 4
    assert Path(a).name == TINY.key()
    # and it loads as a TransformerLens model
    from futurelens_tl.toy import load_toy_checkpoint

    m = load_toy_checkpoint(a)
    assert m.cfg.d_model == 32 and m.cfg.n_layers == 1


@pytest.mark.slow
def test_continued_training_phase(tmp_path):
    from futurelens_tl.toy.train import train_toy

    first = toy_checkpoint_path(config=TINY, cache_dir=tmp_path, verbose=False)
    meta = train_toy(dataclasses.replace(TINY, steps=3), tmp_path / "phase2", verbose=False,
                     init_from=first)
    assert meta["stats"]["steps"] == 7 and len(meta["stats"]["phases"]) == 2
    assert (tmp_path / "phase2" / "model.safetensors").read_bytes() != (
        first / "model.safetensors"
    ).read_bytes()
    with pytest.raises(ValueError, match="init_from"):
        train_toy(dataclasses.replace(TINY, d_model=64, n_head=2), tmp_path / "bad",
                  verbose=False, init_from=first)
