"""Byte-level BPE tokenizer of the toy model, trained with ``tokenizers`` on the toy corpus.

One special token, ``<|endoftext|>`` (id 0), serves as BOS, EOS and PAD, as in GPT-2. The
``ByteLevel`` decoder is set so single tokens decode as ``' cat'`` rather than ``'Ġcat'``
(reference ``lenses-and-transformerlens.md`` §C.7), and the tokenizer is saved to and reloaded
from a directory because TransformerLens reloads tokenizers by ``name_or_path``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from futurelens_tl.toy.corpus import toy_corpus

__all__ = ["BOS_TOKEN", "load_tokenizer", "train_tokenizer"]

BOS_TOKEN = "<|endoftext|>"


def train_tokenizer(
    vocab_size: int = 1536,
    seed: int = 0,
    n_docs: int = 4000,
    save_dir: str | os.PathLike | None = None,
) -> Any:
    """Train the byte-level BPE on ``toy_corpus(n_docs, seed)`` (deterministic).

    Args:
        vocab_size: Vocabulary size including the 256 byte tokens and ``<|endoftext|>``.
        seed: Corpus (world) seed.
        n_docs: Number of corpus documents to train on.
        save_dir: If given, save the tokenizer there (``tokenizer.json`` + config) and return
            the tokenizer reloaded from that directory (what TransformerLens needs).

    Returns:
        A ``transformers.PreTrainedTokenizerFast``.

    Raises:
        ValueError: If ``vocab_size`` < 300.
    """
    if not isinstance(vocab_size, int) or vocab_size < 300:
        raise ValueError(f"vocab_size={vocab_size!r} must be an int >= 300.")
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    texts = toy_corpus(n_docs=n_docs, seed=seed).texts
    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=[BOS_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tk.train_from_iterator(texts, trainer=trainer, length=len(texts))
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tk,
        bos_token=BOS_TOKEN,
        eos_token=BOS_TOKEN,
        unk_token=BOS_TOKEN,
        pad_token=BOS_TOKEN,
        model_max_length=1024,
    )
    if save_dir is None:
        return fast
    fast.save_pretrained(str(save_dir))
    return load_tokenizer(save_dir)


def load_tokenizer(path: str | os.PathLike) -> Any:
    """Reload a saved toy tokenizer from a directory.

    Args:
        path: Directory written by :func:`train_tokenizer` (or a model checkpoint directory).

    Returns:
        A ``transformers.PreTrainedTokenizerFast``.

    Raises:
        ValueError: If the directory has no ``tokenizer.json``.
    """
    if not (Path(path) / "tokenizer.json").exists():
        raise ValueError(f"path={os.fspath(path)!r} has no tokenizer.json.")
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(path))
