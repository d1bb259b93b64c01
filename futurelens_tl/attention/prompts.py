"""Natural-language task prompts for the knowledge, expression and in-context roles (issue 15).

Reference ``head-roles.md`` §1 (survey stages KR / ICI / LR / EP), §3.10 (syntactic heads),
§4.4 (negative attention score). Every prompt is built from **segments** tokenized one by one
and concatenated, so the token span of every tagged segment (subject, option letters, yes/no
options, demonstrations, words) is known exactly. Prompts of a set are right-padded to one
length (causal attention: padding after ``end`` never changes positions ``<= end``); ``end`` is
the position that predicts the answer.

All sets are small, hand-written and deterministic (``seed`` only shuffles and samples):

* :func:`fact_prompts` - subject -> attribute facts (memory / correct heads); for the toy
  tokenizer the toy corpus' recurring entities (first words -> next word) instead;
* :func:`choice_prompts` - multiple choice with letter labels (constant, single-letter,
  correct-letter heads);
* :func:`yes_no_prompts` - questions listing both options "Yes" and "No" (negative heads);
* :func:`few_shot_prompts` - ``x: y`` demonstrations of one relation, then a query
  (in-context and semantic-induction heads);
* :func:`dependency_sentences` - templated sentences with hand-written dependency arcs
  (det, amod, nsubj, dobj, pobj; syntactic heads).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

import torch

from futurelens_tl.attention.datasets import ProbeData

__all__ = [
    "FACTS",
    "choice_prompts",
    "dependency_sentences",
    "fact_prompts",
    "few_shot_prompts",
    "yes_no_prompts",
]

#: (prompt before the subject, subject, prompt after the subject, answer, relation).
FACTS: list[tuple[str, str, str, str, str]] = [
    ("", "The Eiffel Tower", " is located in the city of", " Paris", "city"),
    ("", "The Colosseum", " is located in the city of", " Rome", "city"),
    ("", "Big Ben", " is located in the city of", " London", "city"),
    ("", "The Brandenburg Gate", " is located in the city of", " Berlin", "city"),
    ("", "The Statue of Liberty", " is located in the city of", " New", "city"),
    ("", "The Kremlin", " is located in the city of", " Moscow", "city"),
    ("", "The Acropolis", " is located in the city of", " Athens", "city"),
    ("", "The Sagrada Familia", " is located in the city of", " Barcelona", "city"),
    ("The capital of ", "France", " is the city of", " Paris", "capital"),
    ("The capital of ", "Italy", " is the city of", " Rome", "capital"),
    ("The capital of ", "Germany", " is the city of", " Berlin", "capital"),
    ("The capital of ", "Japan", " is the city of", " Tokyo", "capital"),
    ("The capital of ", "Spain", " is the city of", " Madrid", "capital"),
    ("The capital of ", "Russia", " is the city of", " Moscow", "capital"),
    ("The capital of ", "Greece", " is the city of", " Athens", "capital"),
    ("The capital of ", "England", " is the city of", " London", "capital"),
    ("", "Albert Einstein", " was a famous", " physicist", "job"),
    ("", "William Shakespeare", " was a famous", " writer", "job"),
    ("", "Pablo Picasso", " was a famous", " painter", "job"),
    ("", "Wolfgang Amadeus Mozart", " was a famous", " composer", "job"),
    ("The native language of people from ", "France", " is", " French", "language"),
    ("The native language of people from ", "Germany", " is", " German", "language"),
    ("The native language of people from ", "Spain", " is", " Spanish", "language"),
    ("The native language of people from ", "Italy", " is", " Italian", "language"),
    ("The native language of people from ", "Japan", " is", " Japanese", "language"),
    ("The native language of people from ", "Russia", " is", " Russian", "language"),
]

_QUESTIONS: list[tuple[str, str, list[str]]] = [
    ("What color is the sky on a clear day?", "blue", ["green", "red", "brown"]),
    ("What color is fresh grass?", "green", ["blue", "purple", "white"]),
    ("What color is snow?", "white", ["black", "green", "orange"]),
    ("How many legs does a dog have?", "four", ["two", "six", "eight"]),
    ("Which animal barks?", "dog", ["cat", "fish", "bird"]),
    ("Which animal says meow?", "cat", ["dog", "cow", "horse"]),
    ("What do bees make?", "honey", ["milk", "bread", "cheese"]),
    ("Which season is the coldest?", "winter", ["summer", "spring", "autumn"]),
    ("What is frozen water called?", "ice", ["steam", "sand", "glass"]),
    ("Which planet do we live on?", "Earth", ["Mars", "Venus", "Jupiter"]),
    ("What do you use to write on paper?", "pen", ["spoon", "shoe", "cup"]),
    ("Which meal is eaten in the morning?", "breakfast", ["dinner", "supper", "lunch"]),
]

_YES_NO: list[tuple[str, str]] = [
    ("Is Paris in France?", " Yes"), ("Is Rome in Spain?", " No"),
    ("Is the sun hot?", " Yes"), ("Is ice hot?", " No"),
    ("Do fish live in water?", " Yes"), ("Do cats have wings?", " No"),
    ("Is two more than one?", " Yes"), ("Is five less than three?", " No"),
    ("Is snow white?", " Yes"), ("Is grass purple?", " No"),
    ("Can birds fly?", " Yes"), ("Can a stone swim?", " No"),
    ("Is Berlin in Germany?", " Yes"), ("Is Tokyo in France?", " No"),
    ("Is the sea salty?", " Yes"), ("Is milk black?", " No"),
]

_RELATIONS: dict[str, list[tuple[str, str]]] = {
    "capital": [("France", " Paris"), ("Italy", " Rome"), ("Germany", " Berlin"),
                ("Japan", " Tokyo"), ("Spain", " Madrid"), ("Russia", " Moscow"),
                ("Greece", " Athens"), ("England", " London")],
    "opposite": [("hot", " cold"), ("big", " small"), ("up", " down"), ("fast", " slow"),
                 ("old", " new"), ("day", " night"), ("good", " bad"), ("open", " closed")],
    "plural": [("dog", " dogs"), ("cat", " cats"), ("car", " cars"), ("house", " houses"),
               ("tree", " trees"), ("book", " books"), ("bird", " birds"), ("cup", " cups")],
}

_DEP_WORDS = {
    "det": ["the", "a"],
    "adj": ["old", "small", "big", "young", "happy", "tired"],
    "noun": ["man", "dog", "cat", "girl", "boy", "bird", "woman", "child"],
    "verb": ["saw", "found", "liked", "followed", "helped", "watched"],
    "place": ["park", "house", "garden", "room", "car", "boat"],
    "prep": ["in", "near", "behind"],
}


class _Builder:
    """Concatenate separately tokenized segments, recording the span of each tagged one."""

    def __init__(self, tokenizer: Any, bos: int):
        self.tok = tokenizer
        self.ids: list[int] = [bos]
        self.spans: dict[str, list[tuple[int, int]]] = {}

    def add(self, text: str, tag: str | None = None) -> tuple[int, int]:
        ids = self.tok.encode(text, add_special_tokens=False) if text else []
        a = len(self.ids)
        self.ids.extend(int(i) for i in ids)
        span = (a, len(self.ids))
        if tag is not None:
            self.spans.setdefault(tag, []).append(span)
        return span


def _first(tokenizer: Any, text: str) -> int:
    ids = tokenizer.encode(text, add_special_tokens=False)
    if not ids:
        raise ValueError(f"{text!r} tokenizes to nothing")
    return int(ids[0])


def _pad(rows: list[list[int]], pad: int) -> torch.Tensor:
    n = max(len(r) for r in rows)
    return torch.tensor([r + [pad] * (n - len(r)) for r in rows], dtype=torch.long)


def _bos(tokenizer: Any, bos: int | None) -> int:
    if bos is not None:
        return int(bos)
    b = getattr(tokenizer, "bos_token_id", None)
    return int(b) if b is not None else 0


def _mask(n_rows: int, length: int, spans: list[list[tuple[int, int]]]) -> torch.Tensor:
    m = torch.zeros(n_rows, length, dtype=torch.bool)
    for i, row in enumerate(spans):
        for a, b in row:
            m[i, a:b] = True
    return m


def _finish(name: str, rows: list[list[int]], ends: list[int], seed: int, pad: int,
            params: dict[str, Any], meta: dict[str, Any]) -> ProbeData:
    tokens = _pad(rows, pad)
    meta = {"end": torch.tensor(ends, dtype=torch.long), **meta}
    return ProbeData(tokens, name, seed, {"n": len(rows), **params}, meta)


def fact_prompts(tokenizer: Any, *, n: int | None = None, seed: int = 0,
                 bos: int | None = None, facts: Sequence[tuple[str, str, str, str, str]]
                 | None = None) -> ProbeData:
    """Factual prompts (memory and correct heads).

    ``meta`` has ``subject`` (bool ``[n, pos]``), ``answer`` (first answer
    token) and ``candidates`` (``[n, K]``: the answer first, then the other answers of the same
    relation, the counterfactual control).

    Args:
        tokenizer: A Hugging Face tokenizer.
        n: Number of prompts (default: all facts).
        seed: Shuffle seed.
        bos: BOS id (default the tokenizer's).
        facts: ``(before, subject, after, answer, relation)`` tuples (default :data:`FACTS`).

    Raises:
        ValueError: If a relation has answers whose first tokens collide.
    """
    b = _bos(tokenizer, bos)
    facts = list(facts if facts is not None else FACTS)
    random.Random(seed).shuffle(facts)
    facts = facts[:n] if n else facts
    by_rel: dict[str, list[int]] = {}
    for f in facts:
        t = _first(tokenizer, f[3])
        if t not in by_rel.setdefault(f[4], []):
            by_rel[f[4]].append(t)
    rows, ends, subj, ans, cands = [], [], [], [], []
    k = min(len(v) for v in by_rel.values())
    if k < 2:
        raise ValueError("every relation needs >= 2 distinct answers (the counterfactual control)")
    for before, subject, after, answer, rel in facts:
        bld = _Builder(tokenizer, b)
        bld.add(before)
        bld.add(subject, "subject")
        bld.add(after)
        rows.append(bld.ids)
        ends.append(len(bld.ids) - 1)
        subj.append(bld.spans["subject"])
        a = _first(tokenizer, answer)
        ans.append(a)
        others = [t for t in by_rel[rel] if t != a][:k - 1]
        cands.append([a, *others])
    tokens_len = max(len(r) for r in rows)
    return _finish("fact_prompts", rows, ends, seed, b, {"k": k},
                   {"subject": _mask(len(rows), tokens_len, subj),
                    "answer": torch.tensor(ans), "candidates": torch.tensor(cands)})


def toy_fact_prompts(tokenizer: Any, entities: Sequence[str], *, n: int = 32, seed: int = 0,
                     bos: int | None = None) -> ProbeData:
    """The toy corpus' entities as facts (the toy model's parametric knowledge).

    All words but the last are the subject (the prompt), the last word's first
    token the answer; candidates are other entities' last words.
    """
    b = _bos(tokenizer, bos)
    ents = [e.split() for e in entities if len(e.split()) >= 2]
    random.Random(seed).shuffle(ents)
    ents = ents[:n]
    finals = list(dict.fromkeys(_first(tokenizer, " " + e[-1]) for e in ents))
    rows, ends, subj, ans, cands = [], [], [], [], []
    k = min(4, len(finals))
    for i, e in enumerate(ents):
        bld = _Builder(tokenizer, b)
        bld.add(" " + " ".join(e[:-1]), "subject")
        rows.append(bld.ids)
        ends.append(len(bld.ids) - 1)
        subj.append(bld.spans["subject"])
        a = _first(tokenizer, " " + e[-1])
        others = [t for t in finals if t != a]
        random.Random(seed + i).shuffle(others)
        ans.append(a)
        cands.append([a, *others[:k - 1]])
    length = max(len(r) for r in rows)
    return _finish("fact_prompts", rows, ends, seed, b, {"k": k, "source": "toy entities"},
                   {"subject": _mask(len(rows), length, subj), "answer": torch.tensor(ans),
                    "candidates": torch.tensor(cands)})


def choice_prompts(tokenizer: Any, *, n: int = 24, seed: int = 0, bos: int | None = None,
                   letters: str = "ABCD") -> ProbeData:
    r"""Multiple-choice prompts ``Question: ...\nA. x\nB. y ...\nAnswer:``.

    The correct letter is drawn per prompt. ``meta``:
    ``labels`` (``[n, K]`` position of each letter token),
    ``correct`` (index of the right letter), ``answer`` (token of `` <letter>``) and
    ``candidates`` (the letter tokens, right one first).
    """
    b = _bos(tokenizer, bos)
    rng = random.Random(seed)
    rows, ends, labels, correct, ans, cands = [], [], [], [], [], []
    letter_tok = [_first(tokenizer, " " + c) for c in letters]
    for i in range(n):
        q, right, wrong = _QUESTIONS[i % len(_QUESTIONS)]
        opts = [right, *rng.sample(wrong, len(letters) - 1)]
        rng.shuffle(opts)
        bld = _Builder(tokenizer, b)
        bld.add(f"Question: {q}\n")
        pos = []
        for c, o in zip(letters, opts, strict=True):
            pos.append(bld.add(c, "label")[0])
            bld.add(f". {o}\n")
        bld.add("Answer:")
        rows.append(bld.ids)
        ends.append(len(bld.ids) - 1)
        labels.append(pos)
        ci = opts.index(right)
        correct.append(ci)
        ans.append(letter_tok[ci])
        cands.append([letter_tok[ci], *[t for j, t in enumerate(letter_tok) if j != ci]])
    return _finish("choice_prompts", rows, ends, seed, b, {"letters": letters},
                   {"labels": torch.tensor(labels), "correct": torch.tensor(correct),
                    "answer": torch.tensor(ans), "candidates": torch.tensor(cands)})


def yes_no_prompts(tokenizer: Any, *, n: int = 16, seed: int = 0,
                   bos: int | None = None) -> ProbeData:
    r"""Yes/no questions listing both options: ``Question: <q> Answer Yes or No.\nAnswer:``.

    The option order alternates. ``meta``:
    ``yes_pos``/``no_pos`` (first token of each option in the prompt), ``answer``,
    ``candidates`` (right option first).
    """
    b = _bos(tokenizer, bos)
    items = list(_YES_NO)
    random.Random(seed).shuffle(items)
    rows, ends, yp, np_, ans, cands = [], [], [], [], [], []
    yes_t, no_t = _first(tokenizer, " Yes"), _first(tokenizer, " No")
    for i in range(n):
        q, a = items[i % len(items)]
        bld = _Builder(tokenizer, b)
        bld.add(f"Question: {q} Answer")
        order = [("Yes", "yes"), ("No", "no")] if i % 2 == 0 else [("No", "no"), ("Yes", "yes")]
        bld.add(" " + order[0][0], order[0][1])
        bld.add(" or")
        bld.add(" " + order[1][0], order[1][1])
        bld.add(".\nAnswer:")
        rows.append(bld.ids)
        ends.append(len(bld.ids) - 1)
        yp.append(bld.spans["yes"][0][0])
        np_.append(bld.spans["no"][0][0])
        right = yes_t if a == " Yes" else no_t
        ans.append(right)
        cands.append([right, no_t if right == yes_t else yes_t])
    return _finish("yes_no_prompts", rows, ends, seed, b, {},
                   {"yes_pos": torch.tensor(yp), "no_pos": torch.tensor(np_),
                    "answer": torch.tensor(ans), "candidates": torch.tensor(cands)})


def few_shot_prompts(tokenizer: Any, *, n: int = 24, shots: int = 3, seed: int = 0,
                     bos: int | None = None) -> ProbeData:
    r"""Few-shot prompts ``x1: y1\nx2: y2\n...\nx:`` of one relation (capital, opposite, plural).

    ``meta``:
    ``demo_x`` / ``demo_y`` (bool ``[n, pos]``), ``answer`` (first token of ``y``) and
    ``candidates`` (the right ``y`` first, then other ``y`` of the same relation).
    """
    b = _bos(tokenizer, bos)
    rng = random.Random(seed)
    rels = list(_RELATIONS)
    rows, ends, dx, dy, ans, cands = [], [], [], [], [], []
    for i in range(n):
        pairs = _RELATIONS[rels[i % len(rels)]]
        chosen = rng.sample(pairs, shots + 1)
        bld = _Builder(tokenizer, b)
        for x, y in chosen[:shots]:
            bld.add(x, "x")
            bld.add(":")
            bld.add(y, "y")
            bld.add("\n")
        bld.add(chosen[shots][0])
        bld.add(":")
        rows.append(bld.ids)
        ends.append(len(bld.ids) - 1)
        dx.append(bld.spans["x"])
        dy.append(bld.spans["y"])
        a = _first(tokenizer, chosen[shots][1])
        others = list(dict.fromkeys(_first(tokenizer, y) for _, y in pairs))
        others = [t for t in others if t != a]
        rng.shuffle(others)
        ans.append(a)
        cands.append([a, *others[:3]])
    length = max(len(r) for r in rows)
    return _finish("few_shot_prompts", rows, ends, seed, b, {"shots": shots},
                   {"demo_x": _mask(n, length, dx), "demo_y": _mask(n, length, dy),
                    "answer": torch.tensor(ans), "candidates": torch.tensor(cands)})


def dependency_sentences(tokenizer: Any, *, n: int = 32, seed: int = 0,
                         bos: int | None = None) -> ProbeData:
    """``The old man quickly saw a small dog in the big park`` with its dependency arcs.

    Adjectives (0-2 per noun), the adverb and the place adjective are optional, so every
    relation occurs at several word offsets (otherwise a fixed-offset baseline is perfect).
    Relations: det, amod, nsubj, dobj, pobj. ``meta["words"]`` is ``[n, W, 2]`` (token span of
    each word; padding ``(0, 0)``), ``meta["arcs"]`` a per-sentence list of ``(relation,
    query word, target word)``: the query is the later word of the arc, the target the earlier
    one (causal adaptation of Clark et al., §3.10).
    """
    b = _bos(tokenizer, bos)
    rng = random.Random(seed)
    rows, ends, words, arcs = [], [], [], []
    for _ in range(n):
        seq: list[tuple[str, str]] = []  # (word, role)

        def np_(kind: str, seq: list[tuple[str, str]] = seq) -> tuple[int, list[int], int]:
            det = len(seq)
            seq.append((rng.choice(_DEP_WORDS["det"]), "det"))
            adjs = []
            for _ in range(rng.randint(0, 2)):
                adjs.append(len(seq))
                seq.append((rng.choice(_DEP_WORDS["adj"]), "adj"))
            noun = len(seq)
            seq.append((rng.choice(_DEP_WORDS[kind]), kind))
            return det, adjs, noun

        a: list[tuple[str, int, int]] = []
        d1, adj1, n1 = np_("noun")
        if rng.random() < 0.5:
            seq.append((rng.choice(["quickly", "slowly", "often"]), "adv"))
        v = len(seq)
        seq.append((rng.choice(_DEP_WORDS["verb"]), "verb"))
        d2, adj2, n2 = np_("noun")
        pr = len(seq)
        seq.append((rng.choice(_DEP_WORDS["prep"]), "prep"))
        d3, adj3, n3 = np_("place")
        for det, adjs, noun in ((d1, adj1, n1), (d2, adj2, n2), (d3, adj3, n3)):
            a.append(("det", noun, det))
            a.extend(("amod", noun, j) for j in adjs)
        a += [("nsubj", v, n1), ("dobj", n2, v), ("pobj", n3, pr)]
        bld = _Builder(tokenizer, b)
        spans = [bld.add((" " if k else "") + (w.capitalize() if k == 0 else w))
                 for k, (w, _) in enumerate(seq)]
        rows.append(bld.ids)
        ends.append(len(bld.ids) - 1)
        words.append(spans)
        arcs.append(a)
    W = max(len(w) for w in words)
    wt = torch.zeros(n, W, 2, dtype=torch.long)
    for i, w in enumerate(words):
        wt[i, :len(w)] = torch.tensor(w)
    return _finish("dependency_sentences", rows, ends, seed, b, {},
                   {"words": wt, "arcs": arcs})
