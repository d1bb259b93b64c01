"""Run lenses side by side: :func:`run_with_lenses` (reduced readouts) and :func:`compare`.

* :func:`run_with_lenses` makes **one** model forward (residual hooks for every layer any lens
  covers), then reads every lens at every layer and reduces the readout chunk by chunk (over
  rows of ``batch x position``) into top-k ids/probs, the target's log-prob and 1-based
  full-vocabulary rank, entropy and ``KL(final || lens)`` (reference
  ``lenses-and-transformerlens.md`` §A.3). The ``[layers, batch, pos, vocab]`` tensor is never
  built unless ``return_log_probs=True``.
* :func:`compare` builds the canonical layer x position grid for one prompt and several lenses
  (§A.4) as a JSON-ready dict (the lens-grid contract rendered by
  ``futurelens_tl.viz.lens_grid``) and wraps it in :class:`LensComparison`.

Conventions: log-probs in nats; KL of a lens with ``n_ahead = N`` at position t is taken
against the model's final distribution at ``t + N`` (NaN where ``t + N`` is past the end); the
default target at position t is the true input token ``t + 1 + N``.

Reliability: NaN/inf model weights, lens parameters or readouts raise
:class:`~futurelens_tl.lenses.base.NonFiniteError` naming the tensors at fault (never NaN
probabilities in a grid); a batch of texts of different lengths is right-padded and the padded
cells are flagged in :attr:`LensReadouts.valid` (their targets, target log-probs, ranks and
KL are undefined: -1 / NaN / 0 / NaN).
"""

from __future__ import annotations

import math
import sys
import types
from collections.abc import Sequence
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

from futurelens_tl import data as _data
from futurelens_tl.lenses.base import (
    Lens,
    NonFiniteError,
    check_finite_params,
    explain_nonfinite,
    model_fingerprint,
)
from futurelens_tl.lenses.reduction import (
    FinalDistribution,
    Unembedding,
    _fusable,
    reduce_readout,
    scratch_for,
)
from futurelens_tl.models.view import ModelView, as_view
from futurelens_tl.results import LayerReadout, LensComparison, LensReadouts

__all__ = ["LayerReadout", "LensComparison", "LensReadouts", "compare", "run_with_lenses"]

def _as_lenses(lenses: Any, view: ModelView) -> list[Lens]:
    if isinstance(lenses, Lens):
        lenses = [lenses]
    if not isinstance(lenses, (list, tuple)) or not lenses:
        raise ValueError("lenses must be a Lens or a non-empty list of Lens objects")
    out = []
    for i, lens in enumerate(lenses):
        if not isinstance(lens, Lens):
            raise TypeError(f"lenses[{i}] is a {type(lens).__name__}, not a futurelens_tl Lens")
        lens.check_model(view)
        check_finite_params(lens, f"lens {lens.name!r}")
        out.append(lens)
    names = [lens.name for lens in out]
    if len(set(names)) != len(names):
        raise ValueError(f"lens names must be unique, got {names}; pass name=... when building")
    return out


def _check_k(k: Any, vocab: int, arg: str = "top_k") -> int:
    if isinstance(k, bool) or not isinstance(k, int):
        raise TypeError(f"{arg} must be an int, got {type(k).__name__}")
    if k < 1 or k > vocab:
        raise ValueError(f"{arg}={k} must be in 1..d_vocab={vocab}")
    return k


def _positions(positions: Any, T: int) -> list[int]:
    if positions is None:
        return list(range(T))
    if isinstance(positions, int) and not isinstance(positions, bool):
        positions = [positions]
    if isinstance(positions, Tensor):
        positions = positions.reshape(-1).tolist()
    if isinstance(positions, range):
        positions = list(positions)
    if not isinstance(positions, (list, tuple)) or not positions:
        raise ValueError(f"positions={positions!r} must be None, an int or a non-empty list")
    out = []
    for p in positions:
        if isinstance(p, bool) or not isinstance(p, int):
            raise TypeError(f"positions must hold ints, got {p!r}")
        if not -T <= p < T:
            raise ValueError(f"position {p} is out of range for a sequence of {T} tokens "
                             f"(allowed {-T}..{T - 1})")
        out.append(p % T)
    return out


# ---------------------------------------------------------------------- core reduction
def _final_for(final_logits: Tensor, positions: list[int], n_ahead: int,
               lengths: Tensor | None = None, view: ModelView | None = None
               ) -> FinalDistribution:
    """The final distribution at ``t + n_ahead`` for each read position t (NaN rows past the end).

    ``final_logits`` is ``[batch, T, vocab]``; rows come out batch-major like the readouts.
    ``lengths`` (``[batch]``, real sequence lengths) marks rows past a padded sequence's end
    invalid too.
    """
    B, T, V = final_logits.shape
    src = torch.tensor(positions, device=final_logits.device) + n_ahead
    ok = (src < T)[None, :].expand(B, -1)
    if lengths is not None:
        ok = src[None, :] < lengths[:, None].to(src.device)
    if n_ahead == 0 and positions == list(range(T)):
        rows = final_logits.reshape(-1, V)  # a view: no copy
    else:
        rows = final_logits[:, src.clamp_max(T - 1)].reshape(-1, V)
    f = FinalDistribution.from_logits(rows, ok.reshape(-1))
    if not bool(torch.isfinite(f.log_normalizer).all()):
        raise NonFiniteError(
            "the model's own logits are NaN/inf, so no lens readout can be compared with them: "
            + (explain_nonfinite(view) if view is not None else "check the model's weights")
        )
    return f


def _check_readout(red: dict[str, Tensor], view: ModelView, lens: Lens, layer: int,
                   resid: Tensor) -> None:
    """Raise :class:`NonFiniteError` when a readout holds NaN/inf (cheap: one value per row)."""
    if bool(torch.isfinite(red["log_z"]).all()):
        return
    if not bool(torch.isfinite(resid).all()):
        where = f"the model's residual at layer {layer} is NaN/inf"
    else:
        where = f"lens {lens.name!r} produced NaN/inf logits at layer {layer}"
    raise NonFiniteError(f"{where}: {explain_nonfinite(view, [lens])}.")


def _reduce(
    lens: Lens,
    layer: int,
    resid: Float[Tensor, "rows d_model"],
    final: FinalDistribution | None,
    targets: Int[Tensor, " rows"] | None,
    k: int,
    *,
    keep_log_probs: bool = False,
    track_ids: Tensor | None = None,
    scratch: Tensor | None = None,
    unembed: Unembedding | None = None,
    approximate: bool = False,
) -> dict[str, Tensor]:
    """Read ``lens`` at ``layer`` on ``resid`` rows, reduced, under the grid builders' keys.

    The work is :func:`futurelens_tl.lenses.reduction.reduce_readout` (fused tiles for lenses
    that read through the final norm + unembedding).
    """
    st = reduce_readout(lens, layer, resid, k, final=final, targets=targets,
                        track_ids=track_ids, keep_log_probs=keep_log_probs, scratch=scratch,
                        unembed=unembed, approximate=approximate)
    out = {"top_ids": st["top_ids"], "top_probs": st["top_log_probs"].exp(),
           "entropy": st["entropy"]}
    rename = {"kl": "kl", "log_normalizer": "log_z", "target_log_probs": "tlp",
              "target_ranks": "rank", "log_probs": "lp", "tracked_probs": "tracked"}
    out.update({short: st[key] for key, short in rename.items() if key in st})
    return out


def _forward(view: ModelView, tokens: Tensor, layers: list[int]) -> tuple[Tensor, Tensor]:
    with torch.no_grad():
        logits, resid = view.residuals(tokens, layers)
    _data.FORWARD_COUNTER.passes += 1
    _data.FORWARD_COUNTER.tokens += tokens.numel()
    return logits, resid


def _check_targets(targets: Any, vocab: int) -> Any:
    """Validate ``targets`` once (type, dtype, id range) before any forward pass."""
    if targets is None or isinstance(targets, str):
        if isinstance(targets, str) and targets not in ("next", "none"):
            raise ValueError(f"targets={targets!r} must be 'next', 'none', None, a token id or "
                             "a tensor of token ids")
        return targets
    if isinstance(targets, bool):
        raise TypeError("targets must be 'next', None, a token id or a tensor, got bool")
    if isinstance(targets, int):
        targets = torch.tensor(targets)
    if not isinstance(targets, Tensor):
        raise TypeError(f"targets must be 'next', None, a token id or a tensor, got "
                        f"{type(targets).__name__}")
    if targets.is_floating_point() or targets.is_complex() or targets.dtype == torch.bool:
        raise TypeError(f"targets must hold integer token ids, got dtype {targets.dtype}")
    if targets.ndim > 2:
        raise ValueError(f"targets has shape {tuple(targets.shape)}; expected a token id, "
                         "[pos], [batch, pos] or [batch, n_positions]")
    if targets.numel():
        lo, hi = int(targets.min()), int(targets.max())
        if lo < -1 or hi >= vocab:
            raise ValueError(
                f"targets holds ids outside 0..d_vocab-1={vocab - 1} (min {lo}, max {hi}); use "
                "-1 to mark a cell without a target."
            )
    return targets


def _targets_for(tokens: Tensor, positions: list[int], n_ahead: int,
                 targets: Any, lengths: Tensor | None = None) -> Tensor | None:
    """``[B, P]`` target ids (-1 where undefined, including padded cells)."""
    B, T = tokens.shape
    pos = torch.tensor(positions, device=tokens.device)
    if targets is None or (isinstance(targets, str) and targets == "none"):
        return None
    end = (torch.full((B,), T, device=tokens.device) if lengths is None
           else lengths.to(tokens.device))
    if isinstance(targets, str):
        idx = pos + 1 + n_ahead
        ok = idx[None, :] < end[:, None]
        t = tokens[:, idx.clamp_max(T - 1)]
        return torch.where(ok, t, torch.full_like(t, -1))
    t = targets.to(tokens.device).long()
    if t.ndim == 0:
        t = t.expand(B, len(positions))
    elif t.ndim == 1:
        t = t[None].expand(B, -1)
    if t.shape == (B, T):
        t = t[:, pos]
    elif t.shape != (B, len(positions)):
        raise ValueError(f"targets has shape {tuple(targets.shape)}; expected [batch, pos]="
                         f"{B, T} or [batch, n_positions]={B, len(positions)}")
    ok = pos[None, :] < end[:, None]
    return torch.where(ok, t, torch.full_like(t, -1))


def _batch_tokens(view: ModelView, tokens: Any,
                  attention_mask: Tensor | None) -> tuple[Tensor, Tensor | None]:
    """``[B, T]`` ids and the real length of each row (``None`` when no row is padded).

    Texts of different lengths are tokenised one by one and right-padded (pad id, else EOS),
    so every real token is computed exactly as it would be alone (causal attention never looks
    right). A given ``attention_mask`` must be right-padded (ones then zeros per row).
    """
    if isinstance(tokens, (list, tuple)) and len(tokens) > 1 and all(
            isinstance(t, str) for t in tokens):
        rows = [view.to_tokens(t, arg=f"tokens[{i}]")[0] for i, t in enumerate(tokens)]
        lens = [int(r.shape[0]) for r in rows]
        if len(set(lens)) > 1 and attention_mask is None:
            tok = view.tokenizer
            pad = next((x for x in (getattr(tok, "pad_token_id", None),
                                    getattr(tok, "eos_token_id", None)) if x is not None), 0)
            T = max(lens)
            toks = torch.full((len(rows), T), int(pad), dtype=torch.long, device=view.device)
            for i, r in enumerate(rows):
                toks[i, : r.shape[0]] = r
            return toks, torch.tensor(lens, device=view.device)
    toks = view.to_tokens(tokens, arg="tokens")
    if attention_mask is None:
        return toks, None
    if not isinstance(attention_mask, Tensor) or attention_mask.shape != toks.shape:
        raise ValueError(f"attention_mask must be a [batch, pos]={tuple(toks.shape)} tensor of "
                         "0/1")
    m = attention_mask.to(toks.device).long()
    if bool(((m != 0) & (m != 1)).any()):
        raise ValueError("attention_mask must hold only 0 and 1")
    lengths = m.sum(-1)
    right = torch.arange(toks.shape[1], device=toks.device)[None, :] < lengths[:, None]
    if not bool((right.long() == m).all()):
        raise ValueError(
            "attention_mask is not right-padded (each row must be ones, then zeros); left "
            "padding shifts positions and is not supported: right-pad the batch, or pass the "
            "texts as a list and let run_with_lenses pad them."
        )
    if bool((lengths < 1).any()):
        raise ValueError("attention_mask has a row without any real token")
    return toks, None if bool((lengths == toks.shape[1]).all()) else lengths


def run_with_lenses(
    model: Any,
    tokens: Int[Tensor, "batch pos"] | str | Sequence[str],
    lenses: Any,
    *,
    positions: int | Sequence[int] | None = None,
    top_k: int = 10,
    targets: str | int | Tensor | None = "next",
    layers: Sequence[int] | None = None,
    return_log_probs: bool = False,
    attention_mask: Int[Tensor, "batch pos"] | None = None,
    readout: str = "exact",
) -> tuple[Float[Tensor, "batch pos vocab"], LensReadouts]:
    """Run the model once and read every lens at every covered layer, reduced.

    Args:
        model: TransformerLens model.
        tokens: ``[batch, pos]`` ids, or text (tokenised with BOS). A list of texts of
            different lengths is right-padded; the padded cells are ``False`` in
            ``readouts.valid``.
        lenses: A lens or a list of lenses (unique names).
        positions: Positions to read (default all; negative counts from the end).
        top_k: Top-k tokens/probs to keep per cell.
        targets: ``"next"`` (default: the true token ``t + 1 + n_ahead``), ``None``/``"none"``,
            one token id for every cell, or a ``[pos]`` / ``[batch, pos]`` /
            ``[batch, n_positions]`` tensor of ids in ``0..d_vocab-1`` (``-1`` = no target).
        layers: Restrict to these layers (default: every layer each lens covers).
        return_log_probs: Also keep the full ``[batch, P, vocab]`` log-probs per lens/layer.
        attention_mask: For a padded ``[batch, pos]`` token tensor: 1 at real tokens, 0 at
            padding (right padding only). Padded cells get no target and no KL.
        readout: ``"exact"`` (default: float32, every statistic exact) or ``"approximate"``
            (opt-in: bfloat16 unembedding with float32 re-scoring of a top-k candidate set;
            top-k ids/probs and target log-probs use exact logits, ``log Z``, entropy, KL and
            ranks the bfloat16 ones; see ``docs/howto/fast_readout.md`` for measured recall
            and errors). Lenses that do not read through the final norm + unembedding (the
            Future Lens) are always read exactly.

    Returns:
        ``(logits, readouts)``: the model's own logits ``[batch, pos, vocab]`` and a
        :class:`LensReadouts`.

    Raises:
        ValueError: Empty prompt, positions / layers out of range, ``top_k < 1``, target ids
            outside ``-1..d_vocab-1``, a left-padded ``attention_mask``.
        TypeError: Targets that are not integer token ids.
        LensMismatchError: A lens built on another model (fingerprint) or basis.
        NonFiniteError: NaN/inf in the model's logits, a residual or a lens readout (the
            message names the non-finite weights or lens parameters).

    Examples:
        >>> import futurelens_tl as fl
        >>> model = fl.toy_model(verbose=False)
        >>> logits, ro = fl.run_with_lenses(model, "On Monday, then", [fl.LogitLens(model)],
        ...                                 top_k=3)
        >>> ro["logit", 0].top_ids.shape[-1]
        3
    """
    view = as_view(model)
    lens_list = _as_lenses(lenses, view)
    k = _check_k(top_k, view.d_vocab)
    targets = _check_targets(targets, view.d_vocab)
    toks, lengths = _batch_tokens(view, tokens, attention_mask)
    B, T = toks.shape
    pos = _positions(positions, T)
    want = None if layers is None else set(view.layer_indices(layers))
    per_lens: dict[str, list[int]] = {}
    for lens in lens_list:
        ls = [x for x in lens.layers if want is None or x in want]
        per_lens[lens.name] = ls
    all_layers = sorted({x for ls in per_lens.values() for x in ls})
    if not all_layers:
        raise ValueError(f"layers={layers!r} selects no layer any lens covers")
    logits, resid = _forward(view, toks, all_layers)
    pos_t = torch.tensor(pos, device=toks.device)
    data: dict[str, dict[int, LayerReadout]] = {}
    meta: dict[str, Any] = {"lenses": {}, "batch": B, "seq_len": T}
    V = view.d_vocab
    finals: dict[int, FinalDistribution] = {}  # one per distinct n_ahead, shared by lenses
    if readout not in ("exact", "approximate"):
        raise ValueError(f"readout={readout!r} must be 'exact' or 'approximate'")
    approx = readout == "approximate"
    scratch = scratch_for(B * len(pos), V, logits.device)  # one buffer for every readout
    valid = (torch.ones(B, len(pos), dtype=torch.bool, device=toks.device) if lengths is None
             else pos_t[None, :] < lengths[:, None])
    meta["lengths"] = [T] * B if lengths is None else lengths.tolist()
    unembed = Unembedding.from_view(view, approximate=approx)  # weights prepared once
    for lens in lens_list:
        n = int(getattr(lens, "n_ahead", 0) or 0)
        if n not in finals:
            finals[n] = _final_for(logits, pos, n, lengths, view)
        f = finals[n]
        tgt = _targets_for(toks, pos, n, targets, lengths)
        tflat = None if tgt is None else tgt.reshape(-1)
        data[lens.name] = {}
        meta["lenses"][lens.name] = {"n_ahead": n, "token_fed": bool(lens.token_fed),
                                     "class": type(lens).__name__}
        for layer in per_lens[lens.name]:
            h = resid[all_layers.index(layer)][:, pos_t].reshape(B * len(pos), -1)
            fast = approx and not return_log_probs and _fusable(lens)
            red = _reduce(lens, layer, h, f, tflat, k, keep_log_probs=return_log_probs,
                          scratch=scratch, unembed=unembed, approximate=fast)
            _check_readout(red, view, lens, layer, h)
            shp = (B, len(pos))
            data[lens.name][layer] = LayerReadout(
                top_ids=red["top_ids"].reshape(*shp, k),
                top_probs=red["top_probs"].reshape(*shp, k),
                entropy=red["entropy"].reshape(shp),
                kl=red["kl"].reshape(shp),
                target_ids=None if tgt is None else tgt,
                target_log_probs=None if tgt is None else red["tlp"].reshape(shp),
                target_ranks=None if tgt is None else red["rank"].reshape(shp),
                log_probs=red["lp"].reshape(*shp, V) if return_log_probs else None,
            )
    return logits, LensReadouts(data, pos, k, meta, valid)


# ---------------------------------------------------------------------- compare
def _row_label(layer: int) -> str:
    return "embed" if layer == -1 else str(layer)


def compare(
    model: Any,
    prompt: str | Int[Tensor, "..."],
    lenses: Any,
    *,
    k: int = 5,
    layers: Sequence[int] | None = None,
    title: str | None = None,
    max_tracked: int = 200,
    n_continuation: int = 3,
) -> LensComparison:
    """Read several lenses on one prompt into the shared layer x position grid.

    Args:
        model: TransformerLens model.
        prompt: Text (tokenised with BOS) or a 1-D / ``[1, pos]`` token tensor.
        lenses: Lenses to show side by side (one panel each, one shared colour scale).
        k: Top-k tokens per cell (hover table).
        layers: Rows to show (default: every layer any lens covers).
        title: Page title.
        max_tracked: Cap on tracked token ids (union of the grid's top-k) whose probability
            is stored at every cell for pinned-token trajectories.
        n_continuation: Tokens of free-running continuation for lenses with a
            ``continuation`` method (the Future Lens).

    Returns:
        :class:`LensComparison`.

    Raises:
        ValueError: Empty prompt, a batch of prompts, ``k`` out of range, no layer selected.
        LensMismatchError: A lens built on another model (fingerprint) or basis.
        NonFiniteError: NaN/inf in the model's logits, a residual or a lens readout (the grid
            would show NaN probabilities); the message names the tensors at fault.

    Examples:
        >>> import futurelens_tl as fl
        >>> model = fl.toy_model(verbose=False)
        >>> cmp = fl.compare(model, "On Monday, then", [fl.LogitLens(model)], k=3)
        >>> cmp.grid["rows"][0], cmp.grid["k"]
        ('embed', 3)
    """
    view = as_view(model)
    lens_list = _as_lenses(lenses, view)
    k = _check_k(k, view.d_vocab, "k")
    toks = view.to_tokens(prompt, arg="prompt")
    if toks.shape[0] != 1:
        raise ValueError(f"prompt must be one sequence, got a batch of {toks.shape[0]}")
    T = toks.shape[1]
    want = None if layers is None else set(view.layer_indices(layers))
    row_layers = sorted({x for lens in lens_list for x in lens.layers
                         if want is None or x in want})
    if not row_layers:
        raise ValueError(f"layers={layers!r} selects no layer any lens covers")
    logits, resid = _forward(view, toks, row_layers)
    str_tokens = view.to_str_tokens(toks[0])
    next_ids = toks[0, 1:].tolist() + [None]
    final_top = logits[0].argmax(-1).tolist()
    grid: dict[str, Any] = {
        "title": title or "lens comparison",
        "prompt": prompt if isinstance(prompt, str) else "".join(str_tokens),
        "tokens": str_tokens,
        "next_tokens": str_tokens[1:] + [None],
        "next_correct": [bool(n is not None and final_top[p] == n)
                         for p, n in enumerate(next_ids)],
        "rows": [_row_label(x) for x in row_layers],
        "row_layers": row_layers,
        "k": k,
        "lenses": [],
    }
    tok_str = _decoder(view)
    R, V = len(row_layers), view.d_vocab
    finals: dict[int, FinalDistribution] = {}  # one per distinct n_ahead, shared by lenses
    for lens in lens_list:
        n = int(getattr(lens, "n_ahead", 0) or 0)
        if n not in finals:
            finals[n] = _final_for(logits, list(range(T)), n, view=view)
        f = finals[n]
        tgt = _targets_for(toks, list(range(T)), n, "next")[0]
        panel: dict[str, Any] = {
            "name": lens.name, "token_fed": bool(lens.token_fed),
            "note": getattr(lens, "grid_note", "") or (
                f"predicts {n} token(s) past the next" if n else ""),
            "available": [], "top_ids": [], "top_tokens": [], "top_probs": [],
            "p_next": [], "rank_next": [], "entropy": [], "kl": [],
        }
        reds: dict[int, dict[str, Tensor]] = {}
        for layer in row_layers:
            if layer not in lens.layers:
                continue
            h = resid[row_layers.index(layer)][0]
            reds[layer] = _reduce(lens, layer, h, f, tgt, k)
            _check_readout(reds[layer], view, lens, layer, h)
        ids_union: list[int] = []
        seen: set[int] = set()
        for layer in row_layers:  # union of top-k ids in row order, capped
            if layer in reds:
                for i in reds[layer]["top_ids"].reshape(-1).tolist():
                    if i not in seen and len(ids_union) < max_tracked:
                        seen.add(i)
                        ids_union.append(i)
        track = torch.tensor(ids_union, dtype=torch.long, device=toks.device)
        tracked_probs = []
        has_cont = callable(getattr(lens, "continuation", None)) and n_continuation > 0
        cont_tokens: list[Any] = []
        cont_probs: list[Any] = []
        cont_by_layer: dict[int, tuple[Tensor, Tensor]] = {}
        covered = [layer for layer in row_layers if layer in reds]
        if has_cont and covered and callable(getattr(lens, "rows_continuation", None)):
            # One batched call over every (layer, position) cell of the grid.
            hs = torch.cat([resid[row_layers.index(layer)][0] for layer in covered])
            src = torch.tensor(covered, device=hs.device).repeat_interleave(T)
            all_ids, all_probs = lens.rows_continuation(hs, src, n_continuation)
            for j, layer in enumerate(covered):
                cont_by_layer[layer] = (all_ids[j * T:(j + 1) * T], all_probs[j * T:(j + 1) * T])
        for layer in row_layers:
            if layer not in reds:
                panel["available"].append([False] * T)
                for key in ("top_ids", "top_tokens", "top_probs"):
                    panel[key].append([[] for _ in range(T)])
                for key in ("p_next", "rank_next", "entropy", "kl"):
                    panel[key].append([None] * T)
                tracked_probs.append([[0.0] * len(ids_union) for _ in range(T)])
                cont_tokens.append([None] * T)
                cont_probs.append([None] * T)
                continue
            red = reds[layer]
            h = resid[row_layers.index(layer)][0]
            # Tracked ids after the fact: their logits only, normalised by the first pass's
            # log Z (no second full-vocabulary readout).
            tp = (lens.logits_at(h, layer, track).float() - red["log_z"][:, None]).exp()
            tracked_probs.append(tp.tolist())
            ids = red["top_ids"].tolist()
            panel["available"].append([True] * T)
            panel["top_ids"].append(ids)
            panel["top_tokens"].append([[tok_str(i) for i in row] for row in ids])
            panel["top_probs"].append(red["top_probs"].tolist())
            panel["p_next"].append([_num(math.exp(x)) for x in red["tlp"].tolist()])
            panel["rank_next"].append([int(x) if x > 0 else None
                                       for x in red["rank"].tolist()])
            panel["entropy"].append([_num(x) for x in red["entropy"].tolist()])
            panel["kl"].append([_num(x) for x in red["kl"].tolist()])
            if has_cont:
                c_ids, c_probs = (cont_by_layer[layer] if layer in cont_by_layer
                                  else lens.continuation(h, layer, n_continuation))
                cont_tokens.append([[tok_str(i) for i in row] for row in c_ids.tolist()])
                cont_probs.append(c_probs.tolist())
        panel["tracked"] = {"ids": ids_union, "tokens": [tok_str(i) for i in ids_union],
                            "probs": tracked_probs}
        if has_cont:
            panel["cont_tokens"] = cont_tokens
            panel["cont_probs"] = cont_probs
            panel["note"] = panel["note"] or "free-running continuation"
        grid["lenses"].append(panel)
    meta = {
        "fingerprint": model_fingerprint(view), "basis": view.basis, "n_layers": view.n_layers,
        "lenses": {lens.name: {"class": type(lens).__name__, "n_ahead": lens.n_ahead,
                               "layers": list(lens.layers)} for lens in lens_list},
        "d_vocab": V, "rows": R,
    }
    return LensComparison(grid, meta)


def _num(x: float) -> float | None:
    return None if (x is None or math.isnan(x) or math.isinf(x)) else float(x)


def _decoder(view: ModelView) -> Any:
    tok = view.tokenizer
    cache: dict[int, str] = {}

    def dec(i: int) -> str:
        if i not in cache:
            cache[i] = tok.decode([i]) if tok is not None else f"<{i}>"
        return cache[i]

    return dec


class _CallableModule(types.ModuleType):
    """A module that calls :func:`compare`.

    Importing ``futurelens_tl.compare`` binds the *module* to ``futurelens_tl.compare``,
    shadowing the lazily exported function of the same name; a callable module makes
    ``fl.compare(model, prompt, lenses)`` work whichever import happened first.
    """

    def __call__(self, *args: Any, **kwargs: Any) -> LensComparison:
        return compare(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
