"""Synthetic in-context probe sets: sequences whose future is determined by the context.

The Future Lens paper asks (open question 1) whether a hidden state anticipates tokens that
the *context* determines. On natural text the next-next token is often predictable from the
next token alone (a bigram), so a token-fed lens can score without reading ``h`` at all. Here
the future is random per document and repeated inside it, so no n-gram counted on other
documents can know it and only information carried from the context can:

``repeat``
    ``BOS, r_1..r_k, r_1..r_k``: random tokens, then the same tokens again. Sources ``T`` lie
    in the second copy; ``y_N = r_{j+1+N}`` (induction).
``key_value``
    ``"Codes: apple=QZT-48, river=MWK-17, ... Again: river="``: random multi-token codes
    bound to keys, then a query. ``T`` is the query's ``=``; ``y_N`` is the N-th code token.
``counting``
    ``"one, two, three, ..."`` from a random start: the future is fixed by a known pattern
    (prior knowledge rather than copying), a contrast family.

Every set is built from token ids (pieces tokenised separately, so the repeated span has
exactly the same ids as its first occurrence) and fed to
:func:`futurelens_tl.lenses.future_data.build_features` with explicit positions and one
document per sequence (bootstrap intervals resample sequences).

Examples:
    >>> import futurelens_tl as fl
    >>> from futurelens_tl.probesets import probe_set
    >>> model = fl.toy_model(verbose=False)
    >>> ps = probe_set(model, "repeat", n_docs=4, length=8, seed=0)
    >>> ps.family, len(ps.positions) > 0, ps.windows.shape[0]
    ('repeat', True, 4)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from futurelens_tl.models.view import as_view

__all__ = ["FAMILIES", "ProbeSet", "probe_set"]

FAMILIES = ("repeat", "key_value", "counting")
_KEYS = ["apple", "river", "stone", "cloud", "tiger", "piano", "lemon", "castle", "rocket",
         "garden", "window", "silver", "forest", "candle", "mirror", "dragon"]
_NUMBERS = ["one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
            "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen"]
_LETTERS = "ABCDEFGHJKLMNPQRSTUVWXYZ"


@dataclass
class ProbeSet:
    """Token sequences plus the source positions where the future is set by the context.

    Attributes:
        family: One of :data:`FAMILIES`.
        windows: ``[n_docs, W]`` token ids, BOS first, right-padded with BOS.
        valid: ``[n_docs]`` real length of each sequence.
        positions: ``(doc, T)`` source positions.
        meta: Settings.
    """

    family: str
    windows: Tensor
    valid: Tensor
    positions: list[tuple[int, int]]
    meta: dict[str, Any] = field(default_factory=dict)

    def features(self, model: Any, *, n_max: int = 3, layers: Sequence[int] | None = None,
                 label_source: str = "model_greedy", verbose: bool = False) -> Any:
        """Future Lens features at :attr:`positions` (all in the test split)."""
        from futurelens_tl.lenses.future_data import build_features

        pos = [(w, t) for w, t in self.positions if t + 2 + n_max <= int(self.valid[w])]
        if not pos:
            raise ValueError(f"no {self.family} position leaves {n_max + 1} label tokens.")
        return build_features(model, self.windows, n_max=n_max, layers=layers, positions=pos,
                              docs=torch.arange(self.windows.shape[0]), splits=(0.0, 0.0, 1.0),
                              label_source=label_source, verbose=verbose)


def _pack(seqs: list[list[int]], bos: int) -> tuple[Tensor, Tensor]:
    width = max(len(s) for s in seqs)
    win = torch.full((len(seqs), width), bos, dtype=torch.long)
    for i, s in enumerate(seqs):
        win[i, : len(s)] = torch.tensor(s)
    return win, torch.tensor([len(s) for s in seqs])


def probe_set(model: Any, family: str, *, n_docs: int = 64, length: int = 12,
              seed: int = 0) -> ProbeSet:
    """Build ``n_docs`` sequences of one probe ``family`` for ``model``'s tokenizer.

    Args:
        model: The model (its tokenizer and vocabulary).
        family: ``"repeat"``, ``"key_value"`` or ``"counting"``.
        n_docs: Sequences (each its own document).
        length: Random tokens per copy (``repeat``), pairs (``key_value``) or numbers
            (``counting``).
        seed: Seed of every random choice.

    Returns:
        A :class:`ProbeSet`.

    Raises:
        ValueError: Unknown family, or sizes the family cannot meet.
    """
    if family not in FAMILIES:
        raise ValueError(f"family={family!r} is not one of {FAMILIES}.")
    if n_docs < 1 or length < 2:
        raise ValueError(f"n_docs={n_docs} must be >= 1 and length={length} >= 2.")
    view = as_view(model)
    tok = view.tokenizer
    if tok is None:
        raise ValueError("the model has no tokenizer; probe sets are built from text pieces.")
    bos = tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id
    g = torch.Generator().manual_seed(seed)

    def ids(text: str) -> list[int]:
        return tok(text, add_special_tokens=False)["input_ids"]

    seqs: list[list[int]] = []
    positions: list[tuple[int, int]] = []
    if family == "repeat":
        if length + 1 > view.n_ctx // 2:
            raise ValueError(f"length={length} too long for n_ctx={view.n_ctx}.")
        special = set(getattr(tok, "all_special_ids", []) or []) | {bos}
        pool = torch.tensor([i for i in range(min(view.d_vocab, len(tok))) if i not in special])
        for d in range(n_docs):
            r = pool[torch.randperm(len(pool), generator=g)[:length]].tolist()
            seqs.append([bos] + r + r)
            positions += [(d, length + j) for j in range(1, length)]  # T in the second copy
    elif family == "key_value":
        if length > len(_KEYS):
            raise ValueError(f"length={length} > {len(_KEYS)} keys available.")
        for d in range(n_docs):
            keys = [_KEYS[i] for i in torch.randperm(len(_KEYS), generator=g)[:length]]
            codes = ["".join(_LETTERS[int(i)] for i in torch.randint(0, len(_LETTERS), (3,),
                                                                      generator=g))
                     + "-" + str(int(torch.randint(10, 100, (1,), generator=g)))
                     for _ in keys]
            s = [bos] + ids("Codes:")
            for k, c in zip(keys, codes):
                s += ids(" " + k) + ids("=") + ids(c) + ids(",")
            q = int(torch.randint(0, length, (1,), generator=g))
            s += ids(" Again:") + ids(" " + keys[q]) + ids("=")
            positions.append((d, len(s) - 1))
            s += ids(codes[q]) + ids(".")
            seqs.append(s)
    else:
        if length + 4 > len(_NUMBERS):
            raise ValueError(f"length={length} too long for counting (max {len(_NUMBERS) - 4}).")
        for d in range(n_docs):
            start = int(torch.randint(0, len(_NUMBERS) - length, (1,), generator=g))
            s = [bos]
            for j, w in enumerate(_NUMBERS[start : start + length]):
                s += ids((" " if j else "") + w) + ids(",")
                if j >= 2:
                    positions.append((d, len(s) - 1))  # T = the comma after the j-th number
            seqs.append(s)
    win, valid = _pack(seqs, bos)
    if win.shape[1] > view.n_ctx:
        raise ValueError(f"sequences of {win.shape[1]} tokens exceed n_ctx={view.n_ctx}; "
                         "use a smaller length.")
    return ProbeSet(family=family, windows=win, valid=valid, positions=positions,
                    meta={"n_docs": n_docs, "length": length, "seed": seed})
