"""The embedded offline default model: ``fl.toy_model()``.

A small GPT-2-architecture model (4 layers, d_model 128, 4 heads, d_mlp 512, n_ctx 128,
learned absolute positions, LayerNorm, biases, tied embeddings) trained on CPU on a
deterministic synthetic English-like corpus (:func:`toy_corpus`) with a byte-level BPE
tokenizer (1536 tokens, ``<|endoftext|>`` = BOS/EOS/PAD). The corpus contains every phenomenon
the toolkit detects: recurring multi-token invented entities (future lens), fixed phrases,
per-document invented names and codes repeated at varying distances (induction), ordinal
sequences (successor heads) and rare words.

Where the model comes from, in order:

1. the **pinned checkpoint** committed in ``futurelens_tl/toy/checkpoint/`` (seed 0, trained
   longer by ``scripts/train_toy_checkpoint.py`` so that it has an induction head), when the
   requested seed/architecture matches and neither ``quick`` nor ``retrain`` is set;
2. the **user cache** (``platformdirs.user_cache_dir("futurelens_tl")/toy/<key>``, or
   ``$FUTURELENS_CACHE/toy/<key>``), ``<key>`` hashing corpus version + format version + the
   whole configuration;
3. otherwise it is **trained** (quick path: ~2-4 minutes on a 2-core CPU) and cached
   atomically.

What the pinned checkpoint learns (``checkpoint/futurelens_toy.json``, :func:`toy_stats`,
``docs/toy_model.md``): 1950 steps (8 M tokens, about 38 minutes of single-thread CPU on a busy
machine, in four phases, the last two with an induction curriculum of repeated random spans of
varying length). Held-out loss 1.41 nats/token vs 5.46 (unigram) and 3.27 (bigram baseline);
induction heads in layer 1 (best L1H3: 0.53 mean attention on the induction stripe of repeated
random tokens with varied repeat lengths; second-copy loss 3.40 vs 7.74 on the first copy);
entity continuations and ordinal successors are predicted (tested in ``tests/test_toy.py``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from futurelens_tl.paths import cache_root
from futurelens_tl.toy.corpus import (
    CORPUS_VERSION,
    ORDINAL_FAMILIES,
    PHRASES,
    RARE_WORDS,
    ToyCorpus,
    entity_positions,
    make_entities,
    toy_corpus,
)
from futurelens_tl.toy.train import FORMAT_VERSION, HELDOUT_OFFSET, ToyConfig, read_meta

__all__ = [
    "CHECKPOINT_DIR",
    "CORPUS_VERSION",
    "FORMAT_VERSION",
    "ORDINAL_FAMILIES",
    "PHRASES",
    "RARE_WORDS",
    "TOY_PROMPTS",
    "ToyConfig",
    "ToyCorpus",
    "entity_positions",
    "load_toy_checkpoint",
    "make_entities",
    "toy_checkpoint_path",
    "toy_corpus",
    "toy_model",
    "toy_stats",
    "toy_texts",
    "toy_tokenizer",
]

#: Directory of the committed pinned checkpoint (seed 0).
CHECKPOINT_DIR = Path(__file__).resolve().parent / "checkpoint"


def _prompts() -> list[str]:
    ents = make_entities(0)
    return [
        # an entity starts: the future lens can predict its later words from the first one
        f"One day Anna met {ents[0]}, the mayor of the village.",
        # a per-document invented code, repeated: induction copies it
        "Tom wrote the secret code vek mo taz ri lu. Later Tom said: vek mo taz ri lu.",
        # ordinal sequences: successor heads
        "On Monday, then Tuesday, then Wednesday, then Thursday, Sam worked.",
        "Clara counted three, four, five, six, seven.",
        # a fixed phrase
        "The quick brown fox jumps over the lazy dog, happily ever after.",
    ]


#: Prompts for demos and reports (entity, induction, successor, fixed phrase), for seed 0.
TOY_PROMPTS: list[str] = _prompts()


def _model_key(cfg: ToyConfig) -> str:
    import hashlib
    import json

    return hashlib.sha256(json.dumps(cfg.model_dict(), sort_keys=True).encode()).hexdigest()[:16]


def _pinned_matches(cfg: ToyConfig) -> bool:
    meta = read_meta(CHECKPOINT_DIR)
    return bool(meta) and meta.get("model_key") == _model_key(cfg)


def toy_checkpoint_path(
    *,
    seed: int = 0,
    retrain: bool = False,
    quick: bool = False,
    cache_dir: str | os.PathLike | None = None,
    verbose: bool = True,
    config: ToyConfig | None = None,
) -> Path:
    """Directory of the toy checkpoint for ``seed``, training and caching it if needed.

    Args:
        seed: Corpus/world and training seed.
        retrain: Train again into the cache even if a checkpoint exists.
        quick: Skip the pinned checkpoint and use the quick on-demand path (cache or train).
        cache_dir: Cache root (default ``$FUTURELENS_CACHE`` or the user cache dir).
        verbose: Progress bar while training.
        config: A custom :class:`ToyConfig` (its ``seed`` wins over ``seed``); implies the
            cache path unless its architecture equals the pinned one and ``quick`` is False.

    Returns:
        A Hugging Face model directory (config, weights, tokenizer, ``futurelens_toy.json``).

    Raises:
        TypeError: If ``seed`` is not an int.
    """
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise TypeError(f"seed={seed!r} must be an int.")
    cfg = config if config is not None else ToyConfig(seed=seed)
    cfg.validate()
    if not retrain and not quick and _pinned_matches(cfg):
        return CHECKPOINT_DIR
    path = cache_root(cache_dir) / "toy" / cfg.key()
    meta = read_meta(path)
    if retrain or meta is None or meta.get("key") != cfg.key():
        from futurelens_tl.toy.train import train_toy

        train_toy(cfg, path, verbose=verbose)
    return path


def toy_model(
    backend: str = "bridge",
    *,
    seed: int = 0,
    retrain: bool = False,
    quick: bool = False,
    cache_dir: str | os.PathLike | None = None,
    verbose: bool = True,
) -> Any:
    """The embedded offline default model (raw residual basis), as a TransformerLens model.

    Loads the committed pinned checkpoint for ``seed=0`` (about a second), otherwise the user
    cache, otherwise trains the quick path on CPU (a few minutes) and caches it. Never touches
    the network.

    Args:
        backend: ``"bridge"`` (``TransformerBridge.boot_transformers`` on the checkpoint
            directory; TL 3.9 and 4.x) or ``"hooked"`` (``HookedTransformer`` with the same
            raw, unprocessed weights; TL 3.x only).
        seed: Corpus/world and training seed.
        retrain: Retrain into the cache even if a checkpoint exists.
        quick: Ignore the pinned checkpoint; use the quick on-demand path (cache or train).
        cache_dir: Cache root (default ``$FUTURELENS_CACHE`` or the user cache dir).
        verbose: Progress bar while training.

    Returns:
        A ``TransformerBridge`` or ``HookedTransformer`` in eval mode, float32 on CPU, with the
        toy tokenizer attached.

    Raises:
        ValueError: Unknown ``backend``; ``backend="hooked"`` on TransformerLens >= 4.
        TypeError: Non-int ``seed``.

    Examples:
        >>> import futurelens_tl as fl
        >>> model = fl.toy_model()
        >>> model.cfg.n_layers, model.cfg.d_model, model.cfg.n_heads
        (4, 128, 4)
        >>> model.to_str_tokens("On Monday, then Tuesday")[:4]
        ['<|endoftext|>', 'On', ' Monday', ',']
    """
    if backend not in ("bridge", "hooked"):
        raise ValueError(f"backend={backend!r} is not one of 'bridge', 'hooked'.")
    path = toy_checkpoint_path(
        seed=seed, retrain=retrain, quick=quick, cache_dir=cache_dir, verbose=verbose
    )
    return load_toy_checkpoint(path, backend=backend)


def load_toy_checkpoint(path: str | os.PathLike, backend: str = "bridge") -> Any:
    """Load a toy checkpoint directory as a TransformerLens model (float32, CPU, eval)."""
    import torch

    path = Path(path)
    meta = read_meta(path) or {}
    name = meta.get("model_name", "futurelens-toy")
    if backend == "hooked":
        from futurelens_tl.models.hooked import hooked_from_hf_gpt2, require_hooked

        require_hooked()
        from futurelens_tl.toy.tokenizer import load_tokenizer

        return hooked_from_hf_gpt2(path, name, tokenizer=load_tokenizer(path))
    from transformer_lens.model_bridge import TransformerBridge

    from futurelens_tl.models._hf import quiet_transformers

    with quiet_transformers(True):  # a 0.1 s local load: no "Loading weights" bar in notebooks
        bridge = TransformerBridge.boot_transformers(str(path), device="cpu",
                                                     dtype=torch.float32)
    try:
        bridge.cfg.model_name = name
    except Exception:  # pragma: no cover - frozen config on some TL versions
        pass
    bridge.eval()
    return bridge


def toy_tokenizer(seed: int = 0, cache_dir: str | os.PathLike | None = None) -> Any:
    """The toy model's tokenizer (from the pinned checkpoint for seed 0, else trained).

    Args:
        seed: Corpus seed.
        cache_dir: Cache root for tokenizers of other seeds.

    Returns:
        A ``transformers.PreTrainedTokenizerFast`` with the ``ByteLevel`` decoder.

    Examples:
        >>> from futurelens_tl.toy import toy_tokenizer
        >>> tok = toy_tokenizer()
        >>> tok.decode(tok("Hello Monday")["input_ids"])
        'Hello Monday'
    """
    from futurelens_tl.toy.tokenizer import load_tokenizer, train_tokenizer

    cfg = ToyConfig(seed=seed)
    if _pinned_matches(cfg):
        return load_tokenizer(CHECKPOINT_DIR)
    d = cache_root(cache_dir) / "toy" / f"tokenizer-{_model_key(cfg)}"
    if (d / "tokenizer.json").exists():
        return load_tokenizer(d)
    d.parent.mkdir(parents=True, exist_ok=True)
    import shutil
    import tempfile

    tmp = Path(tempfile.mkdtemp(prefix=".tok-", dir=d.parent))
    train_tokenizer(cfg.vocab_size, seed, cfg.tokenizer_docs, save_dir=tmp)
    if d.exists():
        shutil.rmtree(tmp, ignore_errors=True)
    else:
        os.replace(tmp, d)
    return load_tokenizer(d)


def toy_texts(split: str = "train", n: int = 200, seed: int = 0) -> list[str]:
    """Documents of the toy corpus: training or held-out (same world, other document seed).

    Args:
        split: ``"train"`` (the documents the model was trained on first) or ``"test"``
            (held-out documents, never seen in training).
        n: Number of documents.
        seed: World seed.

    Returns:
        ``n`` document strings.

    Raises:
        ValueError: Unknown ``split`` or ``n`` < 1.

    Examples:
        >>> from futurelens_tl.toy import toy_texts
        >>> len(toy_texts("test", n=5))
        5
    """
    if split not in ("train", "test"):
        raise ValueError(f"split={split!r} is not one of 'train', 'test'.")
    doc_seed = seed if split == "train" else seed + HELDOUT_OFFSET
    return toy_corpus(n_docs=n, seed=seed, doc_seed=doc_seed).texts


def toy_stats(seed: int = 0) -> dict[str, Any]:
    """Training statistics of the pinned checkpoint (or an empty dict if it does not match).

    Keys include ``heldout_loss``, ``unigram_loss``, ``bigram_loss``, ``unigram_entropy``,
    ``induction`` (best head and score), ``steps``, ``tokens`` and ``train_time_s``.
    """
    if not _pinned_matches(ToyConfig(seed=seed)):
        return {}
    return dict((read_meta(CHECKPOINT_DIR) or {}).get("stats", {}))
