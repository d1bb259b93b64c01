"""The lens-grid data contract: validation, compact encoding, metrics, colours, a demo grid.

The grid is a plain JSON-ready dict produced by :func:`futurelens_tl.compare.compare` (see
:func:`validate_grid` for every key); :func:`cell_metric` and the colour helpers turn a cell
into the value and colour the HTML view (:mod:`.lens_grid`) and the static figure
(:mod:`.lens_grid_figure`) both draw, so the two always agree. Part of the leaf package
:mod:`futurelens_tl.viz`.
"""

from __future__ import annotations

import math
from typing import Any

from .html import (
    to_jsonable,
)

__all__ = ["CMAPS", "COLOR_MODES", "cell_metric", "demo_grid", "validate_grid"]

COLOR_MODES = ("prob", "rank", "kl", "entropy", "pinned")

# Colour maps as (position, "#rrggbb") stops, sampled from matplotlib's viridis, cividis and
# PuOr (all colour-blind safe). The same stops drive the Python pre-render and the page's JS.
CMAPS: dict[str, list[list[Any]]] = {
    "viridis": [
        [0.0, "#440154"], [0.125, "#472d7b"], [0.25, "#3b528b"], [0.375, "#2c728e"],
        [0.5, "#21918c"], [0.625, "#28ae80"], [0.75, "#5ec962"], [0.875, "#addc30"],
        [1.0, "#fde725"],
    ],
    "cividis": [
        [0.0, "#00224e"], [0.125, "#1f3a6e"], [0.25, "#4c546c"], [0.375, "#6a6c71"],
        [0.5, "#838579"], [0.625, "#a09d78"], [0.75, "#c0b76e"], [0.875, "#e1d15b"],
        [1.0, "#fee838"],
    ],
    "puor": [
        [0.0, "#2d004b"], [0.1, "#542788"], [0.2, "#8073ac"], [0.3, "#b2abd2"],
        [0.4, "#d8daeb"], [0.5, "#f7f7f7"], [0.6, "#fee0b6"], [0.7, "#fdb863"],
        [0.8, "#e08214"], [0.9, "#b35806"], [1.0, "#7f3b08"],
    ],
}

# Per colour mode: map, whether bright means "low value" (so bright = sharp / close to the
# final distribution in every mode), legend label, and the matplotlib colour map name.
_MODE_STYLE: dict[str, dict[str, Any]] = {
    "prob": {"cmap": "viridis", "reverse": False, "label": "top-1 probability",
             "mpl": "viridis"},
    "rank": {"cmap": "viridis", "reverse": True, "label": "rank of true next token (log)",
             "mpl": "viridis_r"},
    "kl": {"cmap": "cividis", "reverse": True, "label": "KL(final ‖ row), nats",
           "mpl": "cividis_r"},
    "entropy": {"cmap": "cividis", "reverse": True, "label": "entropy, nats",
                "mpl": "cividis_r"},
    "pinned": {"cmap": "viridis", "reverse": False, "label": "probability of pinned token",
               "mpl": "viridis"},
}

_PROB_DIGITS = 4
_CELL_CHARS = 7

# --------------------------------------------------------------------------- validation


def _shape_error(key: str, expected: str, got: Any) -> ValueError:
    return ValueError(f"grid[{key}] must be {expected}; got {got}")


def _check_nested(value: Any, dims: list[int | None], key: str, *, allow_none_leaf: bool) -> None:
    """Check that ``value`` is nested lists whose first len(dims) lengths match ``dims``."""

    def rec(v: Any, depth: int, where: str) -> None:
        if not isinstance(v, list):
            raise _shape_error(key + where, f"a list (dimension {depth} of {len(dims)})",
                               type(v).__name__)
        want = dims[depth]
        if want is not None and len(v) != want:
            raise _shape_error(key + where, f"of length {want} at dimension {depth}",
                               f"length {len(v)}")
        if depth + 1 < len(dims):
            for i, item in enumerate(v):
                if item is None and allow_none_leaf and depth + 1 == len(dims) - 1:
                    continue
                rec(item, depth + 1, f"{where}[{i}]")

    rec(value, 0, "")


def validate_grid(grid: dict[str, Any]) -> dict[str, Any]:
    """Check a lens-grid dict against the data contract and return a plain-JSON copy.

    The contract (produced by ``futurelens_tl.compare``; R rows, P positions, k top-k)::

        {"title": str, "prompt": str, "tokens": [str]*P, "next_tokens": [str|None]*P,
         "next_correct": [bool]*P, "rows": [str]*R, "row_layers": [int]*R, "k": int,
         "lenses": [{"name": str, "token_fed": bool, "note": str,
                     "available": R x P bools, "top_ids": R x P x k ints,
                     "top_tokens": R x P x k strs, "top_probs": R x P x k floats,
                     "p_next": R x P floats|None, "rank_next": R x P ints|None,
                     "entropy": R x P floats, "kl": R x P floats,
                     "cont_tokens": R x P x n strs (optional),
                     "cont_probs": R x P x n floats (optional),
                     "tracked": {"ids": [int]*T, "tokens": [str]*T,
                                 "probs": R x P x T floats} (optional)}, ...]}

    Numpy/torch arrays are accepted anywhere a nested list is (converted with ``tolist``).
    Individual values may be ``None`` (undefined, e.g. the rank at the last position).

    Args:
        grid: The grid dict.

    Returns:
        A validated copy with plain Python types; ``title``/``prompt``/``note`` default to ``""``.

    Raises:
        TypeError: If ``grid`` is not a dict.
        ValueError: Naming the missing or ill-shaped key.

    Examples:
        >>> validate_grid({"tokens": ["a"]})
        Traceback (most recent call last):
        ...
        ValueError: grid is missing required key 'next_tokens' ...
    """
    if not isinstance(grid, dict):
        raise TypeError(f"grid must be a dict (the lens-grid contract), got {type(grid).__name__}")
    required = ["tokens", "next_tokens", "next_correct", "rows", "row_layers", "k", "lenses"]
    for key in required:
        if key not in grid:
            raise ValueError(
                f"grid is missing required key {key!r} (required: {required}); "
                "see futurelens_tl.viz.lens_grid.validate_grid for the contract"
            )
    # tracked probabilities can be large (R x P x T, T ~ 200): convert them with numpy
    tracked_probs: dict[int, Any] = {}
    lenses_in = grid.get("lenses")
    if isinstance(lenses_in, list):
        grid = dict(grid)
        grid["lenses"] = lenses_in = list(lenses_in)
        for i, lens in enumerate(lenses_in):
            if isinstance(lens, dict) and isinstance(lens.get("tracked"), dict) \
                    and "probs" in lens["tracked"]:
                tr = dict(lens["tracked"])
                tracked_probs[i] = _as_float_array(tr.pop("probs"),
                                                   f"'lenses'][{i}]['tracked']['probs'")
                lenses_in[i] = dict(lens, tracked=tr)
    g = to_jsonable(grid)
    for i, arr in tracked_probs.items():
        g["lenses"][i]["tracked"]["probs"] = arr
    g.setdefault("title", "")
    g.setdefault("prompt", "")
    tokens = g["tokens"]
    if not isinstance(tokens, list) or not tokens or not all(isinstance(t, str) for t in tokens):
        raise _shape_error("'tokens'", "a non-empty list of strings", repr(tokens)[:80])
    P = len(tokens)
    _check_nested(g["next_tokens"], [P], "'next_tokens'", allow_none_leaf=False)
    _check_nested(g["next_correct"], [P], "'next_correct'", allow_none_leaf=False)
    rows = g["rows"]
    if not isinstance(rows, list) or not rows:
        raise _shape_error("'rows'", "a non-empty list of row labels", repr(rows)[:80])
    g["rows"] = [str(r) for r in rows]
    R = len(rows)
    _check_nested(g["row_layers"], [R], "'row_layers'", allow_none_leaf=False)
    k = g["k"]
    if not isinstance(k, int) or isinstance(k, bool) or k < 1:
        raise _shape_error("'k'", "an int >= 1", repr(k))
    lenses = g["lenses"]
    if not isinstance(lenses, list) or not lenses:
        raise _shape_error("'lenses'", "a non-empty list of lens dicts", repr(lenses)[:80])
    names = set()
    for i, lens in enumerate(lenses):
        where = f"'lenses'][{i}"
        if not isinstance(lens, dict):
            raise _shape_error(where, "a dict", type(lens).__name__)
        for key in ("name", "available", "top_ids", "top_tokens", "top_probs", "entropy", "kl"):
            if key not in lens:
                raise ValueError(f"grid['lenses'][{i}] is missing required key {key!r}")
        name = lens["name"]
        if not isinstance(name, str) or not name:
            raise _shape_error(where + "]['name'", "a non-empty string", repr(name))
        if name in names:
            raise ValueError(f"grid['lenses'][{i}]['name']={name!r} is not unique")
        names.add(name)
        lens.setdefault("note", "")
        lens.setdefault("token_fed", False)
        lens.setdefault("p_next", None)
        lens.setdefault("rank_next", None)
        for key in ("available", "entropy", "kl"):
            _check_nested(lens[key], [R, P], f"{where}]['{key}'", allow_none_leaf=False)
        for key in ("p_next", "rank_next"):
            if lens[key] is not None:
                _check_nested(lens[key], [R, P], f"{where}]['{key}'", allow_none_leaf=False)
        for key in ("top_ids", "top_tokens", "top_probs"):
            _check_nested(lens[key], [R, P, None], f"{where}]['{key}'", allow_none_leaf=False)
            for r in range(R):
                for p in range(P):
                    if len(lens[key][r][p]) > k:
                        raise _shape_error(f"{where}]['{key}'][{r}][{p}", f"at most k={k} long",
                                           f"length {len(lens[key][r][p])}")
        for key in ("cont_tokens", "cont_probs"):
            if lens.get(key) is not None:
                _check_nested(lens[key], [R, P, None], f"{where}]['{key}'",
                              allow_none_leaf=True)
        tracked = lens.get("tracked")
        if tracked is not None:
            if not isinstance(tracked, dict) or not {"ids", "tokens", "probs"} <= set(tracked):
                raise _shape_error(where + "]['tracked'", "a dict with ids, tokens, probs",
                                   repr(tracked)[:80])
            T = len(tracked["ids"])
            _check_nested(tracked["tokens"], [T], f"{where}]['tracked']['tokens'",
                          allow_none_leaf=False)
            arr = tracked["probs"]
            if arr.shape != (R, P, T):
                raise _shape_error(f"{where}]['tracked']['probs'", f"of shape {(R, P, T)} "
                                   "(rows, positions, tracked ids)", f"shape {arr.shape}")
            tracked["probs"] = arr.tolist()
    return g


def _as_float_array(value: Any, key: str) -> Any:
    import numpy as np

    if hasattr(value, "detach"):
        value = value.detach().float().cpu().numpy()
    try:
        return np.asarray(value, dtype=np.float64)
    except (ValueError, TypeError) as e:
        raise _shape_error(key, "a rectangular R x P x T array of floats", f"{e}") from None


def _round_grid(g: dict[str, Any]) -> dict[str, Any]:
    """Round probabilities and nats to 4 decimals (compact JSON payload)."""
    out = dict(g)
    out["lenses"] = []
    for lens in g["lenses"]:
        lens = dict(lens)
        for key in ("top_probs", "p_next", "entropy", "kl", "cont_probs"):
            if lens.get(key) is not None:
                lens[key] = to_jsonable(lens[key], digits=_PROB_DIGITS)
        if lens.get("tracked") is not None:
            import numpy as np

            tr = dict(lens["tracked"])
            tr["probs"] = np.round(np.asarray(tr["probs"], dtype=np.float64), _PROB_DIGITS)
            tr["probs"] = np.nan_to_num(tr["probs"], nan=0.0).tolist()
            lens["tracked"] = tr
        out["lenses"].append(lens)
    return out


def _encode_tracked(g: dict[str, Any]) -> dict[str, Any]:
    """Replace tracked probabilities by base64 little-endian uint16 in units of 1e-4.

    ``R x P x T`` numbers (T ~ 200) dominate the payload; 2 bytes each instead of ~7 JSON
    characters. :func:`grid_from_html` and the page's JS decode them.
    """
    import base64

    import numpy as np

    out = dict(g)
    out["lenses"] = []
    for lens in g["lenses"]:
        if lens.get("tracked") is not None:
            tr = dict(lens["tracked"])
            arr = np.asarray(tr.pop("probs"), dtype=np.float64)
            q = np.rint(np.clip(arr, 0.0, 1.0) * 10 ** _PROB_DIGITS).astype("<u2")
            tr["probs_u16"] = base64.b64encode(q.tobytes()).decode("ascii")
            tr["shape"] = list(arr.shape)
            lens = dict(lens, tracked=tr)
        out["lenses"].append(lens)
    return out


def _decode_tracked(g: dict[str, Any]) -> dict[str, Any]:
    import base64

    import numpy as np

    for lens in g["lenses"]:
        tr = lens.get("tracked")
        if tr is not None and "probs_u16" in tr:
            q = np.frombuffer(base64.b64decode(tr.pop("probs_u16")), dtype="<u2")
            arr = q.reshape(tr.pop("shape")).astype(np.float64) / 10 ** _PROB_DIGITS
            tr["probs"] = np.round(arr, _PROB_DIGITS).tolist()
    return g


# --------------------------------------------------------------------------- metrics / colours


def _num(v: Any) -> float | None:
    if v is None or isinstance(v, bool):
        return None
    v = float(v)
    return v if math.isfinite(v) else None


def cell_metric(lens: dict[str, Any], mode: str, r: int, p: int,
                pinned_id: int | None = None) -> float | None:
    """Value that colours one cell: the metric of reference §A.4 (``None`` when undefined).

    Args:
        lens: One validated lens dict of the grid.
        mode: One of :data:`COLOR_MODES`.
        r: Row index.
        p: Position index.
        pinned_id: Token id for ``mode="pinned"``.

    Returns:
        ``prob``: top-1 probability; ``rank``: log10 of the 1-based rank of the true next token;
        ``kl``/``entropy``: nats; ``pinned``: probability of ``pinned_id`` (from ``tracked`` or
        the top-k), ``None`` where unknown.
    """
    if not lens["available"][r][p]:
        return None
    if mode == "prob":
        probs = lens["top_probs"][r][p]
        return _num(probs[0]) if probs else None
    if mode == "rank":
        if lens.get("rank_next") is None:
            return None
        rank = _num(lens["rank_next"][r][p])
        return math.log10(rank) if rank is not None and rank >= 1 else None
    if mode in ("kl", "entropy"):
        return _num(lens[mode][r][p])
    if mode == "pinned":
        if pinned_id is None:
            return None
        tracked = lens.get("tracked")
        if tracked is not None and pinned_id in tracked["ids"]:
            return _num(tracked["probs"][r][p][tracked["ids"].index(pinned_id)])
        ids = lens["top_ids"][r][p]
        if pinned_id in ids:
            return _num(lens["top_probs"][r][p][ids.index(pinned_id)])
        return None
    raise ValueError(f"color={mode!r} is not a colour mode; allowed: {list(COLOR_MODES)}")


def _scale(values: list[float | None], mode: str) -> tuple[float, float]:
    """Shared (vmin, vmax) of a colour mode over all lens panels."""
    if mode in ("prob", "pinned"):
        return 0.0, 1.0
    finite = [v for v in values if v is not None]
    vmax = max(finite) if finite else 1.0
    if mode == "rank":
        return 0.0, max(vmax, 1.0)  # log10(rank) in [0, log10(max rank)], at least 1..10
    return 0.0, max(vmax, 1e-6)


def _hex(c: str) -> tuple[int, int, int]:
    return int(c[1:3], 16), int(c[3:5], 16), int(c[5:7], 16)


def _cmap_color(cmap: str, t: float) -> str:
    stops = CMAPS[cmap]
    t = min(max(t, 0.0), 1.0)
    for (t0, c0), (t1, c1) in zip(stops[:-1], stops[1:]):
        if t <= t1:
            f = 0.0 if t1 == t0 else (t - t0) / (t1 - t0)
            a, b = _hex(c0), _hex(c1)
            rgb = [round(x + (y - x) * f) for x, y in zip(a, b)]
            return "#" + "".join(f"{v:02x}" for v in rgb)
    return stops[-1][1]


def _text_color(bg: str) -> str:
    r, g, b = _hex(bg)
    lum = 0.2126 * r + 0.7152 * g + 0.0722 * b
    return "#111111" if lum > 140 else "#ffffff"


def _color_for(value: float | None, mode: str, vmin: float, vmax: float) -> str | None:
    if value is None:
        return None
    style = _MODE_STYLE[mode]
    t = 0.0 if vmax <= vmin else (value - vmin) / (vmax - vmin)
    if style["reverse"]:
        t = 1.0 - t
    return _cmap_color(style["cmap"], t)

# --------------------------------------------------------------------------- synthetic example


def demo_grid(*, n_layers: int = 4, n_pos: int = 6, k: int = 5, seed: int = 0) -> dict[str, Any]:
    """A synthetic, contract-conforming grid (logit, tuned, future lens) for docs and tests.

    Distributions over a 32-word vocabulary sharpen with depth toward the true next token;
    the "future" lens covers only the block outputs (not ``embed``) and carries a free-running
    continuation. No model is involved.

    Args:
        n_layers: Number of blocks (rows are ``embed, 0, ..., n_layers-1``).
        n_pos: Number of positions.
        k: Top-k size.
        seed: Seed of the random generator.

    Returns:
        A grid dict accepted by :func:`lens_grid_html`.

    Examples:
        >>> g = demo_grid(n_layers=2, n_pos=3)
        >>> (len(g["rows"]), len(g["tokens"]), [x["name"] for x in g["lenses"]])
        (3, 3, ['logit', 'tuned', 'future (N=1)'])
    """
    import numpy as np

    if n_layers < 1 or n_pos < 2 or not 1 <= k <= 32:
        raise ValueError(f"need n_layers >= 1, n_pos >= 2, 1 <= k <= 32; got {n_layers}, "
                         f"{n_pos}, {k}")
    vocab = (" the| cat| sat| on| mat|.|\n| a| dog| ran| to| park| and| then| slept| in| sun|"
             " Marty| Mc|Fly| from| Back| Future| time| machine|,| he| said| very| long_token_"
             "name| is| was").split("|")
    V = len(vocab)
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, V, size=n_pos + 1)
    R, P = n_layers + 1, n_pos

    def softmax(x):
        e = np.exp(x - x.max(-1, keepdims=True))
        return e / e.sum(-1, keepdims=True)

    base = rng.normal(size=(R, P, V))
    target = np.zeros((P, V))
    target[np.arange(P), ids[1:]] = 1.0
    final = None
    lenses = []
    for li, (name, gain, shift) in enumerate([("logit", 1.0, 0.0), ("tuned", 1.6, 0.8),
                                               ("future (N=1)", 1.2, 0.3)]):
        depth = (np.arange(R) / max(R - 1, 1))[:, None, None]
        logits = base * (1.5 - 0.5 * depth) + target[None] * (gain * 4.5 * depth**1.5 + shift)
        logits += rng.normal(scale=0.3, size=logits.shape)
        probs = softmax(logits)
        if li == 0:
            final = probs[-1]
        order = np.argsort(-probs, axis=-1)
        top = order[..., :k]
        available = np.ones((R, P), dtype=bool)
        if name.startswith("future"):
            available[0] = False
        p_next = probs[:, np.arange(P), ids[1:]]
        rank = (probs > p_next[..., None]).sum(-1) + 1
        ent = -(probs * np.log(probs)).sum(-1)
        kl = (final[None] * (np.log(final[None]) - np.log(probs))).sum(-1)
        tracked = sorted(set(top.ravel().tolist()))
        lens = {
            "name": name, "token_fed": name != "future (N=1)",
            "note": "free-running continuation" if name.startswith("future") else "",
            "available": available.tolist(),
            "top_ids": top.tolist(),
            "top_tokens": [[[vocab[i] for i in top[r, p]] for p in range(P)] for r in range(R)],
            "top_probs": np.take_along_axis(probs, top, -1).tolist(),
            "p_next": [[None if p == P - 1 else float(p_next[r, p]) for p in range(P)]
                       for r in range(R)],
            "rank_next": [[None if p == P - 1 else int(rank[r, p]) for p in range(P)]
                          for r in range(R)],
            "entropy": ent.tolist(), "kl": kl.tolist(),
            "tracked": {"ids": tracked, "tokens": [vocab[i] for i in tracked],
                        "probs": probs[..., tracked].tolist()},
        }
        if name.startswith("future"):
            cont = rng.integers(0, V, size=(R, P, 2))
            lens["cont_tokens"] = [[[vocab[i] for i in cont[r, p]] for p in range(P)]
                                   for r in range(R)]
            lens["cont_probs"] = rng.uniform(0.05, 0.9, size=(R, P, 2)).round(4).tolist()
        lenses.append(lens)
    for lens in lenses:  # unavailable cells carry no data
        for r in range(R):
            for p in range(P):
                if not lens["available"][r][p]:
                    for key in ("top_ids", "top_tokens", "top_probs"):
                        lens[key][r][p] = []
                    for key in ("p_next", "rank_next", "entropy", "kl"):
                        lens[key][r][p] = None
    assert final is not None
    next_tokens = [vocab[i] for i in ids[1:]]
    next_tokens[-1] = None  # no true next token after the prompt's last position
    correct = [bool(final[p].argmax() == ids[p + 1]) for p in range(P)]
    correct[-1] = False
    return {
        "title": "demo: logit | tuned | future lens",
        "prompt": "".join(vocab[i] for i in ids[:P]),
        "tokens": [vocab[i] for i in ids[:P]],
        "next_tokens": next_tokens,
        "next_correct": correct,
        "rows": ["embed"] + [str(i) for i in range(n_layers)],
        "row_layers": list(range(-1, n_layers)),
        "k": k,
        "lenses": lenses,
    }
