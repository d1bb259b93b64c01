"""Deterministic synthetic English-like corpus for the embedded toy model.

The corpus is built so that every phenomenon the toolkit detects is present and has a known
ground truth:

* **Recurring multi-token invented entities** (``ToyCorpus.entities``): a fixed pool of
  invented names such as ``"Zorblax Quenty Vrill"``, always spelled the same and reused across
  documents. Their first word is unique in the pool, so the later words are predictable from the
  first one; this is what the Future Lens evaluation "on entity positions" uses.
* **Fixed multi-word phrases** (``ToyCorpus.phrases``): idioms that always continue the same way.
* **Names and codes invented per document** (induction): a fresh name or a random code /
  word sequence is introduced and repeated 2-4 times at *varying* distances (reference
  ``head-roles.md`` §7a: novel spans at varying offsets teach content-based copying rather than
  a fixed-offset positional shortcut).
* **Ordinal sequences** (``ToyCorpus.ordinal_families``): weekdays, months, number words and
  digits counted upwards from a random start (successor heads).
* **Rare words** (``ToyCorpus.rare_words``): a handful of words that occur in about 1% of the
  documents.

Everything is drawn from ``random.Random`` instances seeded explicitly (never the global RNG):
the *world* (entity pool) depends only on ``seed``; the documents depend on ``seed`` and
``doc_seed`` so that held-out documents share the world but not the text.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "CORPUS_VERSION",
    "ORDINAL_FAMILIES",
    "PHRASES",
    "RARE_WORDS",
    "ToyCorpus",
    "entity_positions",
    "iter_documents",
    "make_entities",
    "toy_corpus",
]

#: Bumped whenever the generator changes the texts it produces for a given seed.
CORPUS_VERSION = 1

ORDINAL_FAMILIES: dict[str, list[str]] = {
    "weekdays": ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"],
    "months": [
        "January", "February", "March", "April", "May", "June", "July", "August",
        "September", "October", "November", "December",
    ],
    "number_words": [
        "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
        "eleven", "twelve",
    ],
    "digits": [str(i) for i in range(1, 21)],
    "letters": list("ABCDEFGHIJKL"),
}

PHRASES: list[str] = [
    "once upon a time",
    "at the end of the day",
    "in the middle of the night",
    "as a matter of fact",
    "the quick brown fox jumps over the lazy dog",
    "better late than never",
    "on the other hand",
    "for the first time",
    "by the light of the moon",
    "happily ever after",
    "all of a sudden",
    "under the old oak tree",
]

RARE_WORDS: list[str] = [
    "xylophone", "quasar", "zeppelin", "marmalade", "obsidian", "kumquat", "gazebo", "nebula",
]

_NAMES = [
    "Anna", "Ben", "Clara", "David", "Emma", "Finn", "Grace", "Hugo", "Ida", "Jack", "Lena",
    "Max", "Nora", "Oscar", "Paula", "Rosa", "Sam", "Tom", "Vera", "Will",
]
_ANIMALS = ["cat", "dog", "bird", "horse", "fox", "rabbit", "owl", "goat", "fish", "bear"]
_ADJS = [
    "little", "big", "old", "young", "happy", "sad", "red", "green", "quiet", "loud", "brave",
    "tired", "clever", "small", "bright", "dark", "warm", "cold",
]
_NOUNS = [
    "house", "garden", "river", "book", "tree", "road", "boat", "window", "table", "door",
    "letter", "basket", "hill", "lamp", "cake", "ball", "bridge", "shop", "song", "box",
]
_PLACES = [
    "the village", "the forest", "the city", "the market", "the school", "the beach",
    "the castle", "the farm", "the station", "the park", "the harbor", "the library",
]
_VERBS_T = [
    "found", "saw", "painted", "carried", "opened", "liked", "built", "lost", "watched",
    "cleaned", "bought", "sold", "read", "wanted",
]
_VERBS_I = ["walked", "laughed", "slept", "sang", "waited", "danced", "smiled", "ran", "rested"]
_ADVS = ["slowly", "quickly", "quietly", "happily", "carefully", "again", "later", "today"]
_ROLES = [
    "the mayor of", "the captain from", "the famous singer from", "the old teacher in",
    "the baker of", "the doctor in",
]

_ONSETS = [
    "b", "br", "d", "dr", "f", "g", "gl", "k", "kr", "l", "m", "n", "p", "pl", "q", "r", "s",
    "st", "t", "tr", "v", "w", "z", "zh", "x", "sk", "th", "j",
]
_VOWELS = ["a", "e", "i", "o", "u", "y", "ou", "ae", "ei", "oo"]
_CODAS = ["", "", "", "n", "r", "x", "k", "l", "m", "s", "th", "sh", "nd", "rb", "q"]


def _syllable(rng: random.Random) -> str:
    return rng.choice(_ONSETS) + rng.choice(_VOWELS) + rng.choice(_CODAS)


def _invented_word(rng: random.Random, n_syll: tuple[int, int] = (2, 3)) -> str:
    n = rng.randint(*n_syll)
    return "".join(_syllable(rng) for _ in range(n))


def make_entities(seed: int = 0, n: int = 32) -> list[str]:
    """The fixed pool of invented multi-word entities of the world ``seed``.

    Each entity has 2 or 3 capitalised invented words; first words are unique in the pool so
    the continuation of an entity is determined by its first word.

    Args:
        seed: World seed.
        n: Number of entities.

    Returns:
        ``n`` entity strings such as ``"Zorblax Quenty Vrill"``.
    """
    rng = random.Random(f"futurelens-toy-entities-{seed}")
    out: list[str] = []
    firsts: set[str] = set()
    while len(out) < n:
        words = [_invented_word(rng, (2, 2)).capitalize() for _ in range(rng.choice((2, 2, 3)))]
        if words[0] in firsts or any(len(w) < 4 for w in words):
            continue
        firsts.add(words[0])
        out.append(" ".join(words))
    return out


@dataclass
class ToyCorpus:
    """The synthetic corpus and its ground truth.

    Attributes:
        texts: The documents.
        entities: Recurring invented multi-word entities (fixed per world seed).
        phrases: Fixed multi-word phrases.
        ordinal_families: Ordered sequences (weekdays, months, number words, digits, letters).
        rare_words: Words that occur in about 1% of documents.
        seed: World seed (entity pool).
        doc_seed: Seed of the document stream.
        version: Corpus generator version (``CORPUS_VERSION``).
    """

    texts: list[str]
    entities: list[str]
    phrases: list[str] = field(default_factory=lambda: list(PHRASES))
    ordinal_families: dict[str, list[str]] = field(
        default_factory=lambda: {k: list(v) for k, v in ORDINAL_FAMILIES.items()}
    )
    rare_words: list[str] = field(default_factory=lambda: list(RARE_WORDS))
    seed: int = 0
    doc_seed: int = 0
    version: int = CORPUS_VERSION

    def __len__(self) -> int:
        return len(self.texts)

    def entity_positions(self, text: str, tokenizer: Any, prepend_bos: bool = True) -> list[int]:
        """Token positions of ``text`` that lie inside one of the corpus entities.

        See :func:`entity_positions`.
        """
        return entity_positions(text, tokenizer, self.entities, prepend_bos=prepend_bos)


class _DocWriter:
    """Writes one document from templates (all randomness from ``rng``)."""

    def __init__(self, rng: random.Random, entities: Sequence[str]):
        self.rng = rng
        self.entities = entities

    # -- small pieces ---------------------------------------------------------------------
    def filler(self) -> str:
        r = self.rng
        kind = r.random()
        if kind < 0.3:
            s = (
                f"The {r.choice(_ADJS)} {r.choice(_ANIMALS)} {r.choice(_VERBS_T)} the "
                f"{r.choice(_NOUNS)} near {r.choice(_PLACES)}."
            )
        elif kind < 0.5:
            s = f"{r.choice(_NAMES)} {r.choice(_VERBS_I)} {r.choice(_ADVS)} in {r.choice(_PLACES)}."
        elif kind < 0.65:
            p = r.choice(PHRASES)
            s = f"{p[0].upper() + p[1:]}, {r.choice(_NAMES)} {r.choice(_VERBS_I)}."
        elif kind < 0.8:
            s = (
                f"It was a {r.choice(_ADJS)} day, and the {r.choice(_NOUNS)} was "
                f"{r.choice(_ADJS)}."
            )
        elif kind < 0.9:
            e = r.choice(self.entities)
            s = f"Everyone in {r.choice(_PLACES)} knew {e}."
        else:
            s = (
                f"{r.choice(_NAMES)} {r.choice(_VERBS_T)} a {r.choice(_ADJS)} "
                f"{r.choice(_NOUNS)}, {r.choice(PHRASES)}."
            )
        if r.random() < 0.012:
            s = s[:-1] + f" and a {r.choice(RARE_WORDS)}."
        return s

    def fillers(self, lo: int, hi: int) -> list[str]:
        return [self.filler() for _ in range(self.rng.randint(lo, hi))]

    def ordinal(self) -> str:
        r = self.rng
        fam_name = r.choice(list(ORDINAL_FAMILIES))
        fam = ORDINAL_FAMILIES[fam_name]
        n = r.randint(3, 6)
        start = r.randint(0, len(fam) - n)
        seq = fam[start : start + n]
        if fam_name == "weekdays":
            return f"On {seq[0]}, then " + ", then ".join(seq[1:]) + f", {r.choice(_NAMES)} worked."
        if fam_name == "months":
            return "From " + " to ".join(seq) + ", the farm was busy."
        if fam_name == "number_words":
            return f"{r.choice(_NAMES)} counted " + ", ".join(seq) + "."
        if fam_name == "digits":
            return "The pages were " + " ".join(seq) + "."
        return "The letters were " + " ".join(seq) + "."

    def novel_name(self) -> str:
        r = self.rng
        if r.random() < 0.5:
            return _invented_word(r, (2, 3)).capitalize()
        return f"{r.choice(_NAMES)} {_invented_word(r, (2, 3)).capitalize()}"

    def novel_code(self) -> str:
        r = self.rng
        kind = r.random()
        if kind < 0.35:
            return " ".join(_syllable(r) for _ in range(r.randint(3, 7)))
        if kind < 0.7:
            pool = _NOUNS + _ADJS + _ANIMALS + _VERBS_I
            return " ".join(r.choice(pool) for _ in range(r.randint(3, 8)))
        letters = "".join(r.choice("ABCDEFGHKMNPRSTVXZ") for _ in range(r.randint(2, 3)))
        return f"{letters}-{r.randint(10, 9999)}"

    # -- documents ------------------------------------------------------------------------
    def story(self) -> str:
        r = self.rng
        name = self.novel_name()
        ent = r.choice(self.entities)
        parts = [f"{r.choice(PHRASES).capitalize()}, {name} lived in {r.choice(_PLACES)}."]
        parts += self.fillers(0, 2)
        parts.append(f"{name} had a {r.choice(_ADJS)} {r.choice(_ANIMALS)}.")
        if r.random() < 0.6:
            parts.append(self.ordinal())
        parts += self.fillers(0, 3)
        parts.append(f"One day {name} met {ent}, {r.choice(_ROLES)} {r.choice(_PLACES)}.")
        for _ in range(r.randint(0, 2)):
            parts += self.fillers(0, 2)
            parts.append(f"Then {name} {r.choice(_VERBS_T)} the {r.choice(_NOUNS)}.")
        parts.append(f"{ent} {r.choice(_VERBS_I)}, {r.choice(PHRASES)}.")
        return " ".join(parts)

    def news(self) -> str:
        r = self.rng
        ents = r.sample(list(self.entities), r.randint(1, 3))
        parts = []
        for e in ents:
            parts.append(f"{e} {r.choice(_VERBS_T)} the {r.choice(_NOUNS)} in {r.choice(_PLACES)}.")
            parts += self.fillers(0, 2)
            if r.random() < 0.5:
                parts.append(f"Later, {e} {r.choice(_VERBS_I)} {r.choice(_ADVS)}.")
        if r.random() < 0.5:
            parts.append(self.ordinal())
        return " ".join(parts)

    def code_doc(self) -> str:
        r = self.rng
        code = self.novel_code()
        owner = self.novel_name() if r.random() < 0.5 else r.choice(_NAMES)
        parts = [f"{owner} wrote the secret code {code}."]
        for _ in range(r.randint(1, 3)):
            parts += self.fillers(0, 3)
            parts.append(
                r.choice(
                    [
                        f"Again {owner} wrote {code}.",
                        f"The code was {code}.",
                        f"{owner} said: {code}.",
                        f"Remember {code}.",
                    ]
                )
            )
        return " ".join(parts)

    def chant(self) -> str:
        r = self.rng
        pool = _NOUNS + _ADJS + _ANIMALS + _VERBS_I + _VERBS_T + [w.lower() for w in _NAMES]
        seq = " ".join(r.choice(pool) for _ in range(r.randint(4, 14)))
        who = r.choice(_NAMES)
        parts = self.fillers(0, 1) + [f"{who} sang: {seq}."]
        for _ in range(r.randint(1, 3)):
            parts += self.fillers(0, 2)
            parts.append(f"{r.choice(['Again', 'Then', 'Once more'])}: {seq}.")
        return " ".join(parts)

    def counting(self) -> str:
        parts = [self.ordinal() for _ in range(self.rng.randint(1, 3))]
        parts += self.fillers(0, 2)
        return " ".join(parts)

    def document(self) -> str:
        x = self.rng.random()
        if x < 0.32:
            return self.story()
        if x < 0.52:
            return self.news()
        if x < 0.72:
            return self.code_doc()
        if x < 0.88:
            return self.chant()
        return self.counting()


def iter_documents(seed: int = 0, doc_seed: int | None = None) -> Iterator[str]:
    """An endless, deterministic stream of documents.

    Args:
        seed: World seed (entity pool).
        doc_seed: Seed of the document stream (default: ``seed``).

    Yields:
        Document strings.
    """
    if doc_seed is None:
        doc_seed = seed
    rng = random.Random(f"futurelens-toy-docs-{seed}-{doc_seed}")
    writer = _DocWriter(rng, make_entities(seed))
    while True:
        yield writer.document()


def toy_corpus(n_docs: int = 2000, seed: int = 0, doc_seed: int | None = None) -> ToyCorpus:
    """Generate the synthetic corpus (deterministic given the seeds).

    Args:
        n_docs: Number of documents (>= 1).
        seed: World seed: fixes the entity pool. The toy model of seed ``s`` is trained on the
            documents of ``toy_corpus(seed=s)``.
        doc_seed: Seed of the documents (default ``seed``); pass another value for held-out
            documents of the same world (see :func:`futurelens_tl.toy.toy_texts`).

    Returns:
        A :class:`ToyCorpus` with the texts and the ground truth.

    Raises:
        ValueError: If ``n_docs`` < 1.
        TypeError: If a seed is not an int.

    Examples:
        >>> from futurelens_tl.toy import toy_corpus
        >>> corpus = toy_corpus(n_docs=3, seed=0)
        >>> len(corpus.texts), len(corpus.entities)
        (3, 32)
        >>> toy_corpus(n_docs=3, seed=0).texts == corpus.texts
        True
    """
    if not isinstance(n_docs, int) or isinstance(n_docs, bool) or n_docs < 1:
        raise ValueError(f"n_docs={n_docs!r} must be an int >= 1.")
    for nm, v in (("seed", seed), ("doc_seed", doc_seed)):
        if v is not None and (not isinstance(v, int) or isinstance(v, bool)):
            raise TypeError(f"{nm}={v!r} must be an int.")
    if doc_seed is None:
        doc_seed = seed
    stream = iter_documents(seed, doc_seed)
    texts = [next(stream) for _ in range(n_docs)]
    return ToyCorpus(texts=texts, entities=make_entities(seed), seed=seed, doc_seed=doc_seed)


def entity_positions(
    text: str, tokenizer: Any, entities: Sequence[str], prepend_bos: bool = True
) -> list[int]:
    """Token positions of ``text`` whose characters overlap an occurrence of an entity.

    Positions index the token sequence the model sees (``prepend_bos=True`` shifts them by one
    for the BOS token that TransformerLens prepends).

    Args:
        text: The text.
        tokenizer: A fast tokenizer (needs ``return_offsets_mapping``).
        entities: Entity strings (e.g. ``ToyCorpus.entities``).
        prepend_bos: Whether a BOS token precedes the text in the model input.

    Returns:
        Sorted token positions inside entities.
    """
    spans: list[tuple[int, int]] = []
    for e in entities:
        start = text.find(e)
        while start != -1:
            spans.append((start, start + len(e)))
            start = text.find(e, start + 1)
    if not spans:
        return []
    enc = tokenizer(text, return_offsets_mapping=True, add_special_tokens=False)
    shift = 1 if prepend_bos else 0
    out = []
    for i, (a, b) in enumerate(enc["offset_mapping"]):
        if any(a < e and b > s for s, e in spans):
            out.append(i + shift)
    return out
