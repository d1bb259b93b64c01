"""Deterministic probe datasets for head-role scoring (reference ``head-roles.md`` §3-§5).

Every generator takes a ``seed`` and explicit sizes and returns a :class:`ProbeData`: the token
ids ``[batch, pos]`` (position 0 is BOS), the name of the generator, its arguments and
per-row metadata the scorers need (repeat offsets, IOI positions, needle spans, ...).

* :func:`repeated_tokens` - ``[BOS] + prefix + r + r`` with **varied** prefix and repeat lengths
  (reference §7a: fixed offsets let positional heads pass as induction heads).
* :func:`duplicate_tokens` - random tokens where some positions copy an earlier token at a
  random distance (duplicates without a fixed offset).
* :func:`ioi_prompts` - IOI-style templates (Wang et al. 2022) with an ABC corruption, from a
  tokenizer's single-token names, or a token-level version for models without a tokenizer.
* :func:`ordinal_sequences` - runs of consecutive members of ordinal token families.
* :func:`haystack_prompts` - token-level needle-in-a-haystack prompts (Wu et al. 2024, scaled down).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from jaxtyping import Int
from torch import Tensor

__all__ = [
    "ProbeData",
    "duplicate_tokens",
    "haystack_prompts",
    "ioi_prompts",
    "ordinal_families_from_tokenizer",
    "ordinal_sequences",
    "repeated_tokens",
]


@dataclass
class ProbeData:
    """Token ids plus what generated them.

    Attributes:
        tokens: ``[batch, pos]`` token ids; column 0 is BOS.
        name: Generator name (``"repeated_tokens"``, ...).
        seed: Seed used.
        params: Generator arguments (JSON-ready).
        meta: Per-row metadata tensors/lists used by the scorers.
    """

    tokens: Int[Tensor, "batch pos"]
    name: str
    seed: int
    params: dict[str, Any] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def n(self) -> int:
        """Number of sequences."""
        return int(self.tokens.shape[0])

    def describe(self) -> dict[str, Any]:
        """Evidence record: dataset name, number of examples, length, seed, parameters."""
        return {
            "dataset": self.name,
            "n_examples": self.n,
            "seq_len": int(self.tokens.shape[1]),
            "seed": self.seed,
            **{k: v for k, v in self.params.items() if isinstance(v, (int, float, str, bool))},
        }


def _check_int(name: str, value: Any, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < low:
        raise ValueError(f"{name}={value} must be >= {low}")
    return value


def _pool(d_vocab: int, bos: int, exclude: Sequence[int] = ()) -> Tensor:
    bad = {bos, *exclude}
    return torch.tensor([t for t in range(d_vocab) if t not in bad], dtype=torch.long)


def repeated_tokens(
    n: int,
    length: int,
    d_vocab: int,
    *,
    seed: int = 0,
    bos: int = 0,
    min_repeat: int | None = None,
    max_repeat: int | None = None,
    exclude: Sequence[int] = (),
    n_repeats: int = 2,
) -> ProbeData:
    """``[BOS] + prefix + r + r`` with varied repeat length ``|r|`` and prefix length.

    Each row draws ``|r|`` uniformly from ``min_repeat..max_repeat`` (default ``length//4`` ..
    ``(length-1)//2``) and fills the rest with a random prefix, so the second copy of ``r`` sits
    at a different offset in every row (reference ``head-roles.md`` §7a). Tokens of a row are
    distinct (drawn without replacement) when the vocabulary allows it, so the only duplicates
    are the repeat itself.

    Args:
        n: Number of sequences.
        length: Sequence length including BOS.
        d_vocab: Vocabulary size (ids ``0..d_vocab-1``).
        seed: Random seed.
        bos: BOS id (excluded from the random tokens).
        min_repeat: Shortest repeat.
        max_repeat: Longest repeat.
        exclude: Further ids never drawn.
        n_repeats: Copies of ``r`` (2 by default; 4 gives the prefix-matching dataset of
            Olsson/Bansal et al., on which the induction score *is* the prefix-matching score
            with unique tokens, without the reference code's end-of-repeat quirk).

    Returns:
        ProbeData with ``meta["repeat_len"]`` and ``meta["prefix_len"]`` (``[n]`` tensors).

    Raises:
        ValueError: If ``length`` leaves no room for a repeat of at least 2 tokens.

    Examples:
        >>> from futurelens_tl.attention.datasets import repeated_tokens
        >>> d = repeated_tokens(4, 21, 100, seed=0)
        >>> d.tokens.shape
        torch.Size([4, 21])
    """
    _check_int("n", n, 1)
    _check_int("length", length, 5)
    _check_int("d_vocab", d_vocab, 4)
    _check_int("n_repeats", n_repeats, 2)
    cap = (length - 1) // n_repeats
    lo = min_repeat if min_repeat is not None else max(2, length // (2 * n_repeats))
    hi = max_repeat if max_repeat is not None else cap
    if not 2 <= lo <= hi <= cap:
        raise ValueError(
            f"repeat lengths min_repeat={lo}, max_repeat={hi} must satisfy 2 <= min <= max <= "
            f"(length-1)//n_repeats = {cap} for length={length}, n_repeats={n_repeats}."
        )
    g = torch.Generator().manual_seed(seed)
    pool = _pool(d_vocab, bos, exclude)
    rows, rep, pre = [], [], []
    for _ in range(n):
        r_len = int(torch.randint(lo, hi + 1, (1,), generator=g))
        p_len = length - 1 - n_repeats * r_len
        need = p_len + r_len
        if need <= len(pool):
            ids = pool[torch.randperm(len(pool), generator=g)[:need]]
        else:
            ids = pool[torch.randint(len(pool), (need,), generator=g)]
        prefix, r = ids[:p_len], ids[p_len:]
        rows.append(torch.cat([torch.tensor([bos]), prefix, *([r] * n_repeats)]))
        rep.append(r_len)
        pre.append(p_len)
    return ProbeData(
        torch.stack(rows),
        "repeated_tokens",
        seed,
        {"n": n, "length": length, "min_repeat": lo, "max_repeat": hi, "d_vocab": d_vocab,
         "n_repeats": n_repeats},
        {"repeat_len": torch.tensor(rep), "prefix_len": torch.tensor(pre)},
    )


def duplicate_tokens(
    n: int,
    length: int,
    d_vocab: int,
    *,
    seed: int = 0,
    bos: int = 0,
    p_duplicate: float = 0.3,
    exclude: Sequence[int] = (),
) -> ProbeData:
    """Random tokens where each position copies an earlier token with probability ``p_duplicate``.

    The copied position is uniform over earlier non-BOS positions, so duplicates appear at
    varied distances (no fixed-offset stripe).

    Examples:
        >>> from futurelens_tl.attention.datasets import duplicate_tokens
        >>> duplicate_tokens(2, 16, 50, seed=1).tokens.shape
        torch.Size([2, 16])
    """
    _check_int("n", n, 1)
    _check_int("length", length, 3)
    if not 0.0 <= p_duplicate <= 1.0:
        raise ValueError(f"p_duplicate={p_duplicate} must be in [0, 1]")
    g = torch.Generator().manual_seed(seed)
    pool = _pool(d_vocab, bos, exclude)
    out = torch.empty(n, length, dtype=torch.long)
    out[:, 0] = bos
    for b in range(n):
        fresh = pool[torch.randperm(len(pool), generator=g)] if length <= len(pool) else pool[
            torch.randint(len(pool), (length,), generator=g)]
        k = 0
        for i in range(1, length):
            if i > 1 and float(torch.rand((), generator=g)) < p_duplicate:
                out[b, i] = out[b, int(torch.randint(1, i, (1,), generator=g))]
            else:
                out[b, i] = fresh[k % len(fresh)]
                k += 1
    return ProbeData(out, "duplicate_tokens", seed,
                     {"n": n, "length": length, "p_duplicate": p_duplicate, "d_vocab": d_vocab})


_NAMES = [
    "Mary", "John", "Tom", "James", "Dan", "Sid", "Martin", "Amy", "Anna", "Paul", "Kate", "Mark",
    "Lisa", "Ben", "Emma", "Alex", "Sam", "Max", "Lucy", "Jack", "Sarah", "David", "Laura", "Bob",
    "Alice", "Eve", "Tim", "Rose", "Adam", "Ella", "Mia", "Leo", "Zoe", "Ian", "Eric", "Nina",
]
_IOI_TEMPLATES = [
    "When{A} and{B} went to the store,{S} gave a drink to",
    "Then,{A} and{B} had a long argument, and afterwards{S} said to",
    "After{A} and{B} went to the park,{S} gave a ball to",
    "When{A} and{B} got a snack at the house,{S} decided to give it to",
    "Friends{A} and{B} found a book at the school.{S} gave the book to",
]


def _single_token_ids(tokenizer: Any, words: Sequence[str]) -> dict[str, int]:
    out: dict[str, int] = {}
    for w in words:
        ids = tokenizer.encode(w, add_special_tokens=False)
        unk = getattr(tokenizer, "unk_token_id", None)
        if len(ids) == 1 and ids[0] != unk and tokenizer.decode(ids).strip() == w.strip():
            out[w] = int(ids[0])
    return out


def ioi_prompts(
    n: int,
    *,
    tokenizer: Any = None,
    d_vocab: int | None = None,
    seed: int = 0,
    bos: int = 0,
) -> ProbeData:
    """IOI prompts with an ABC corruption (reference ``head-roles.md`` §5.1).

    With a tokenizer: templates such as "When A and B went to the store, B gave a drink to",
    names that are single tokens with a leading space, answer = IO (`` A``), subject S = B.
    Rows of one template share a length; templates that tokenise to different lengths are
    dropped to keep one batch. Without a tokenizer (``d_vocab`` given): a token-level template
    ``[BOS, A, f1, B, f2, f3, S2=B, f4, f5]`` with fixed filler ids, same roles.

    ``meta``: ``io``/``s`` token ids, positions ``io_pos``, ``s1_pos``, ``s2_pos``, ``end_pos``,
    and ``corrupted`` (same prompts with IO, S1, S2 replaced by three other names).

    Raises:
        ValueError: If fewer than 5 single-token names exist, or neither argument is given.

    Examples:
        >>> from futurelens_tl.attention.datasets import ioi_prompts
        >>> d = ioi_prompts(8, d_vocab=100, seed=0)
        >>> d.meta["corrupted"].shape == d.tokens.shape
        True
    """
    _check_int("n", n, 1)
    g = torch.Generator().manual_seed(seed)
    if tokenizer is None:
        if d_vocab is None:
            raise ValueError("ioi_prompts needs a tokenizer or d_vocab (token-level template)")
        pool = _pool(d_vocab, bos)
        if len(pool) < 12:
            raise ValueError(f"d_vocab={d_vocab} is too small for token-level IOI prompts (>= 13)")
        filler = pool[:5]
        names = pool[5:]
        rows, corr, io_l, s_l = [], [], [], []
        for _ in range(n):
            a, b, c, d, e = names[torch.randperm(len(names), generator=g)[:5]].tolist()
            f = filler.tolist()
            rows.append([bos, a, f[0], b, f[1], f[2], b, f[3], f[4]])
            corr.append([bos, c, f[0], d, f[1], f[2], e, f[3], f[4]])
            io_l.append(a)
            s_l.append(b)
        meta = {
            "io": torch.tensor(io_l), "s": torch.tensor(s_l),
            "io_pos": torch.full((n,), 1), "s1_pos": torch.full((n,), 3),
            "s2_pos": torch.full((n,), 6), "end_pos": torch.full((n,), 8),
            "corrupted": torch.tensor(corr),
        }
        return ProbeData(torch.tensor(rows), "ioi_prompts", seed,
                         {"n": n, "kind": "token-level"}, meta)
    name_ids = _single_token_ids(tokenizer, [" " + x for x in _NAMES])
    if len(name_ids) < 5:
        raise ValueError(
            f"the tokenizer has only {len(name_ids)} single-token names (need >= 5) for IOI "
            "prompts; pass data=... with your own ProbeData or use d_vocab for token level."
        )
    names = list(name_ids)
    rows, corr, metas = [], [], []
    templ_len: int | None = None
    tries = 0
    while len(rows) < n and tries < 50 * n:
        tries += 1
        t = _IOI_TEMPLATES[int(torch.randint(len(_IOI_TEMPLATES), (1,), generator=g))]
        a, b, c, d, e = (names[i] for i in torch.randperm(len(names), generator=g)[:5].tolist())
        toks, ctoks, pos = _fill_template(tokenizer, t, (a, b, b), (c, d, e), name_ids, bos)
        if toks is None:
            continue
        if templ_len is None:
            templ_len = len(toks)
        if len(toks) != templ_len:
            continue
        rows.append(toks)
        corr.append(ctoks)
        metas.append((name_ids[a], name_ids[b], *pos))
    if len(rows) < n:
        raise ValueError("could not build enough IOI prompts of one length with this tokenizer")
    m = torch.tensor(metas)
    meta = {"io": m[:, 0], "s": m[:, 1], "io_pos": m[:, 2], "s1_pos": m[:, 3],
            "s2_pos": m[:, 4], "end_pos": torch.full((n,), templ_len - 1),
            "corrupted": torch.tensor(corr)}
    return ProbeData(torch.tensor(rows), "ioi_prompts", seed, {"n": n, "kind": "templates"}, meta)


def _fill_template(tokenizer: Any, template: str, clean: tuple[str, str, str],
                   corrupt: tuple[str, str, str], ids: dict[str, int], bos: int
                   ) -> tuple[list[int] | None, list[int], tuple[int, int, int]]:
    parts = template.replace("{A}", "\0A\0").replace("{B}", "\0B\0").replace("{S}", "\0S\0")
    pieces = parts.split("\0")
    toks, ctoks, pos = [bos], [bos], {}
    slot = {"A": 0, "B": 1, "S": 2}
    for p in pieces:
        if p in slot:
            i = slot[p]
            pos[p] = len(toks)
            toks.append(ids[clean[i]])
            ctoks.append(ids[corrupt[i]])
        elif p:
            e = tokenizer.encode(p, add_special_tokens=False)
            toks.extend(e)
            ctoks.extend(e)
    if len(pos) != 3:
        return None, [], (0, 0, 0)
    return toks, ctoks, (pos["A"], pos["B"], pos["S"])


_ORDINAL_WORDS = [
    [" one", " two", " three", " four", " five", " six", " seven", " eight", " nine", " ten"],
    [" 1", " 2", " 3", " 4", " 5", " 6", " 7", " 8", " 9", " 10"],
    ["1", "2", "3", "4", "5", "6", "7", "8", "9"],
    [" first", " second", " third", " fourth", " fifth", " sixth", " seventh", " eighth"],
    [" Monday", " Tuesday", " Wednesday", " Thursday", " Friday", " Saturday", " Sunday"],
    [" January", " February", " March", " April", " May", " June", " July", " August",
     " September", " October", " November", " December"],
    [" A", " B", " C", " D", " E", " F", " G", " H", " I", " J", " K", " L", " M"],
    [" I", " II", " III", " IV", " V", " VI", " VII", " VIII"],
]


def ordinal_families_from_tokenizer(tokenizer: Any, min_size: int = 3) -> list[list[int]]:
    """Ordinal token families (numbers, number words, days, months, letters, Roman numerals).

    Only words that are single tokens are kept, and a family keeps the longest run of
    consecutive single-token members (so ``succ(t)`` is always defined inside the run).

    Returns:
        A list of families, each a list of token ids in order (length ``>= min_size``).
    """
    fams: list[list[int]] = []
    for words in _ORDINAL_WORDS:
        ids = [_single_token_ids(tokenizer, [w]).get(w) for w in words]
        best: list[int] = []
        cur: list[int] = []
        for i in ids:
            if i is None:
                cur = []
            else:
                cur = cur + [i]
                if len(cur) > len(best):
                    best = cur
        if len(best) >= min_size and len(set(best)) == len(best):
            fams.append(best)
    return fams


def ordinal_sequences(
    families: Sequence[Sequence[int]], n: int, length: int, *, seed: int = 0, bos: int = 0
) -> ProbeData:
    """Runs of consecutive family members (wrapping), e.g. ``[BOS] Monday Tuesday ...``.

    Examples:
        >>> from futurelens_tl.attention.datasets import ordinal_sequences
        >>> ordinal_sequences([[5, 6, 7, 8]], 2, 5, seed=0).tokens.shape
        torch.Size([2, 5])
    """
    if not families or any(len(f) < 2 for f in families):
        raise ValueError("families must be a non-empty list of families with >= 2 tokens each")
    g = torch.Generator().manual_seed(seed)
    rows = []
    for _ in range(n):
        f = families[int(torch.randint(len(families), (1,), generator=g))]
        s = int(torch.randint(len(f), (1,), generator=g))
        rows.append([bos] + [int(f[(s + i) % len(f)]) for i in range(length - 1)])
    return ProbeData(torch.tensor(rows), "ordinal_sequences", seed, {"n": n, "length": length})


def haystack_prompts(
    n: int,
    length: int,
    d_vocab: int,
    *,
    needle_len: int = 6,
    cue_len: int = 2,
    seed: int = 0,
    bos: int = 0,
    exclude: Sequence[int] = (),
) -> ProbeData:
    """Token-level needle-in-a-haystack prompts (scaled-down Wu et al. 2024, §5.2).

    ``[BOS] + haystack[:d] + needle + haystack[d:] + needle[:cue_len]``: random distinct tokens,
    the needle inserted at a random depth, and the prompt ends with the needle's first
    ``cue_len`` tokens, so continuing it means copying the rest of the needle from context.

    ``meta``: ``needle_start``, ``needle`` (``[n, needle_len]``) and ``answer``
    (``needle[cue_len:]``, what greedy decoding should produce).

    Examples:
        >>> from futurelens_tl.attention.datasets import haystack_prompts
        >>> haystack_prompts(2, 30, 100, seed=0).tokens.shape
        torch.Size([2, 30])
    """
    _check_int("needle_len", needle_len, 2)
    if not 1 <= cue_len < needle_len:
        raise ValueError(f"cue_len={cue_len} must be in 1..needle_len-1={needle_len - 1}")
    hay = length - 1 - needle_len - cue_len
    if hay < 1:
        raise ValueError(f"length={length} is too short for needle_len={needle_len} + cue")
    g = torch.Generator().manual_seed(seed)
    pool = _pool(d_vocab, bos, exclude)
    rows, starts, needles = [], [], []
    for _ in range(n):
        need = hay + needle_len
        if need <= len(pool):
            ids = pool[torch.randperm(len(pool), generator=g)[:need]]
        else:
            ids = pool[torch.randint(len(pool), (need,), generator=g)]
        needle, h = ids[:needle_len], ids[needle_len:]
        d = int(torch.randint(0, hay + 1, (1,), generator=g))
        rows.append(torch.cat([torch.tensor([bos]), h[:d], needle, h[d:], needle[:cue_len]]))
        starts.append(1 + d)
        needles.append(needle)
    nd = torch.stack(needles)
    return ProbeData(
        torch.stack(rows), "haystack_prompts", seed,
        {"n": n, "length": length, "needle_len": needle_len, "cue_len": cue_len},
        {"needle_start": torch.tensor(starts), "needle": nd, "answer": nd[:, cue_len:]},
    )
