"""Modeling-free head discovery: activation patching, ablation and directional steering.

Reference ``head-roles.md`` §6.1. Every method intervenes on one head's activation at a
``blocks.{l}.attn.hook_{site}`` hook (``site="z"`` by default: the head's output before
``W_O``, so patching ``z`` equals patching ``hook_result``) and is **batched over heads**: the
base input is replicated ``k`` times and batch block ``r`` gets head ``heads[r]`` patched, with
one hook per layer, so ``n_layers * n_heads`` heads cost ``ceil(L*H/k)`` forwards instead of
``L*H``.

* :func:`score_heads` - patching (``"denoise"``: run corrupted, patch in clean; ``"noise"``: run
  clean, patch in corrupted) and ablation (``"zero"``, ``"mean"``, ``"resample"``).
* :func:`directional_effects` - add / subtract ``alpha * u`` in each head's output.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

from futurelens_tl.data import FORWARD_COUNTER, progress
from futurelens_tl.models.view import ModelView, as_view

__all__ = ["HeadEffects", "directional_effects", "score_heads"]

Metric = Callable[[Tensor], Tensor]
_METHODS = ("denoise", "noise", "zero", "mean", "resample")
_SITES = ("z", "q", "k", "v")


@dataclass
class HeadEffects:
    """Per-head effect of an intervention on a metric.

    Attributes:
        effect: ``[n_layers, n_heads]`` metric after the intervention minus the metric of the
            run it intervened on (``m_patched - m_base``).
        normalized: For patching, ``(m_patched - m_corr) / (m_clean - m_corr)`` (denoise) or
            ``(m_clean - m_patched) / (m_clean - m_corr)`` (noise): 1 = the head alone restores
            (denoise) or destroys (noise) the whole clean-corrupted gap. For ablation
            ``-effect / |m_clean|``.
        method: ``denoise``, ``noise``, ``zero``, ``mean``, ``resample`` or ``add``/``subtract``.
        site: Hook site (``z``, ``q``, ``k``, ``v``).
        clean_metric: Metric on the clean run.
        corrupted_metric: Metric on the corrupted run (patching only).
        n_forwards: Forward passes used.
        evidence: Number of examples, positions, seed, heads per forward.
    """

    effect: Float[Tensor, "n_layers n_heads"]
    normalized: Float[Tensor, "n_layers n_heads"]
    method: str
    site: str
    clean_metric: float
    corrupted_metric: float | None
    n_forwards: int
    evidence: dict[str, Any] = field(default_factory=dict)
    control_mean: Float[Tensor, "n_layers n_heads"] | None = None
    control_std: Float[Tensor, "n_layers n_heads"] | None = None

    @property
    def control_z(self) -> Float[Tensor, "n_layers n_heads"] | None:
        """``(effect - control_mean) / control_std`` (random-direction control), or None."""
        if self.control_mean is None or self.control_std is None:
            return None
        return (self.effect - self.control_mean) / self.control_std.clamp_min(1e-12)

    def to_dataframe(self) -> Any:
        """One row per head: layer, head, effect, normalized, method, site (and the control)."""
        import pandas as pd

        L, H = self.effect.shape
        return pd.DataFrame([
            {"layer": layer, "head": h, "effect": float(self.effect[layer, h]),
             "normalized": float(self.normalized[layer, h]), "method": self.method,
             "site": self.site,
             **({} if self.control_mean is None else {
                 "control_mean": float(self.control_mean[layer, h]),
                 "control_std": float(self.control_std[layer, h])})}  # type: ignore[index]
            for layer in range(L) for h in range(H)
        ])

    def top(self, k: int = 5) -> list[tuple[int, int, float]]:
        """The ``k`` heads with the largest normalized effect as ``(layer, head, value)``."""
        flat = torch.nan_to_num(self.normalized, nan=-math.inf).flatten()
        idx = flat.argsort(descending=True)[:k]
        H = self.effect.shape[1]
        return [(int(i) // H, int(i) % H, float(flat[i])) for i in idx]

    def show(self) -> Any:
        """Layer x head heatmap of the normalized effect (offline HTML)."""
        from futurelens_tl.viz.heads import heatmap_html

        return _HTML(heatmap_html(self.normalized.numpy(), title=f"{self.method} ({self.site})"))

    def _repr_html_(self) -> str:
        from futurelens_tl.viz.heads import heatmap_html

        return heatmap_html(self.normalized.numpy(), title=f"{self.method} ({self.site})")


class _HTML:
    def __init__(self, html: str):
        self.data = html

    def _repr_html_(self) -> str:
        return self.data


def _metric_rows(metric: Metric, logits: Tensor, b: int, k: int) -> Tensor:
    """Apply ``metric`` to each of the ``k`` blocks of ``b`` rows; returns ``[k]`` means."""
    out = []
    for r in range(k):
        m = metric(logits[r * b:(r + 1) * b])
        m = torch.as_tensor(m, dtype=torch.float64)
        out.append(m.double().mean())
    return torch.stack(out)


def _all_heads(view: ModelView) -> list[tuple[int, int]]:
    return [(layer, h) for layer in range(view.n_layers) for h in range(view.n_heads)]


def _check_heads(view: ModelView, heads: Sequence[tuple[int, int]] | None) -> list[tuple[int, int]]:
    if heads is None:
        return _all_heads(view)
    out = []
    for lh in heads:
        if not (isinstance(lh, tuple | list) and len(lh) == 2):
            raise TypeError(f"heads must be (layer, head) pairs, got {lh!r}")
        layer, h = int(lh[0]), int(lh[1])
        if not (0 <= layer < view.n_layers and 0 <= h < view.n_heads):
            raise ValueError(f"head {(layer, h)} out of range ({view.n_layers} layers x "
                             f"{view.n_heads} heads)")
        out.append((layer, h))
    return out


def _intervene(
    view: ModelView,
    base: Int[Tensor, "batch pos"],
    heads: list[tuple[int, int]],
    new_value: Callable[[int, int, Tensor, int], Tensor],
    metric: Metric,
    *,
    site: str,
    positions: Tensor | None,
    heads_per_forward: int,
    verbose: bool,
    desc: str,
) -> tuple[Tensor, int]:
    """Core: metric for each head with ``new_value(layer, head, current [b,pos,d], block)``."""
    b = base.shape[0]
    vals = torch.full((view.n_layers, view.n_heads), float("nan"), dtype=torch.float64)
    n_fwd = 0
    chunks = [heads[i:i + heads_per_forward] for i in range(0, len(heads), heads_per_forward)]
    for chunk in progress(chunks, verbose=verbose, desc=desc):
        k = len(chunk)
        tokens = base.repeat(k, 1)
        by_layer: dict[int, list[tuple[int, int]]] = {}
        for r, (layer, h) in enumerate(chunk):
            by_layer.setdefault(layer, []).append((r, h))

        def make_hook(layer: int, items: list[tuple[int, int]]) -> Callable[..., Tensor]:
            def hook(act: Tensor, hook: Any) -> Tensor:
                act = act.clone()
                for r, h in items:
                    rows = slice(r * b, (r + 1) * b)
                    cur = act[rows, :, h]
                    new = new_value(layer, h, cur, r).to(act.dtype)
                    if positions is None:
                        act[rows, :, h] = new
                    else:
                        act[rows, positions, h] = new[:, positions]
                return act
            return hook

        hooks = [(view.attn_hook(layer, site), make_hook(layer, items))
                 for layer, items in by_layer.items()]
        with torch.no_grad():
            logits = view.run_with_hooks(tokens, hooks)
        n_fwd += 1
        FORWARD_COUNTER.passes += 1
        FORWARD_COUNTER.tokens += tokens.numel()
        m = _metric_rows(metric, logits, b, k)
        for r, (layer, h) in enumerate(chunk):
            vals[layer, h] = m[r]
    return vals, n_fwd


def _cache_site(view: ModelView, tokens: Tensor, site: str) -> tuple[Tensor, dict[int, Tensor]]:
    names = [view.attn_hook(layer, site) for layer in range(view.n_layers)]
    with torch.no_grad():
        logits, cache = view.run_with_cache(tokens, names)
    FORWARD_COUNTER.passes += 1
    FORWARD_COUNTER.tokens += tokens.numel()
    acts = {layer: cache[names[layer]] for layer in range(view.n_layers)}
    for layer, a in acts.items():
        if a.ndim != 4 or a.shape[2] != view.n_heads:
            raise ValueError(
                f"hook {names[layer]} has shape {tuple(a.shape)}, not [batch, pos, "
                f"{view.n_heads}, d]; site={site!r} cannot be patched per head on this model "
                "(grouped K/V heads?). Use site='z'."
            )
    return logits, acts


def score_heads(
    model: Any,
    clean: Int[Tensor, "batch pos"],
    corrupted: Int[Tensor, "cbatch cpos"] | None = None,
    metric: Metric | None = None,
    *,
    method: str = "denoise",
    site: str = "z",
    heads: Sequence[tuple[int, int]] | None = None,
    positions: int | Sequence[int] | None = None,
    reference: Int[Tensor, "ref pos"] | None = None,
    n_resample: int = 3,
    heads_per_forward: int | None = None,
    seed: int = 0,
    verbose: bool = True,
) -> HeadEffects:
    """Per-head causal effect by activation patching or ablation, batched over heads.

    Reference ``head-roles.md`` §6.1.

    Args:
        model: A TransformerLens model (bridge or HookedTransformer) or a ``ModelView``.
        clean: Clean token ids ``[batch, pos]``.
        corrupted: Corrupted token ids of the same shape (patching methods only).
        metric: ``metric(logits [b, pos, vocab]) -> scalar or [b]``; larger = more clean-like
            (e.g. the logit difference of the right and wrong answers at the last position).
        method: ``"denoise"`` (run corrupted, patch in the clean activation: sufficiency),
            ``"noise"`` (run clean, patch in the corrupted one: necessity), ``"zero"``,
            ``"mean"`` (mean over ``reference`` or ``clean``, per position) or ``"resample"``
            (activation of another example of ``reference``/``clean``, averaged over
            ``n_resample`` permutations).
        site: ``"z"`` (head output before ``W_O``; default), ``"q"``, ``"k"`` or ``"v"``.
        heads: ``(layer, head)`` pairs to score (default all); others are NaN.
        positions: Positions to patch (default all).
        reference: Reference tokens for mean/resample ablation (default ``clean``).
        n_resample: Number of resampling draws.
        heads_per_forward: Heads patched per forward (default: ``max(1, 256 // batch)``).
        seed: Seed of the resampling permutations.
        verbose: Progress bar.

    Returns:
        HeadEffects with ``effect`` and ``normalized`` ``[n_layers, n_heads]``.

    Raises:
        ValueError: Unknown method/site, mismatched shapes, a missing ``corrupted`` for
            patching, or a metric that is not callable.

    Examples:
        >>> import torch, futurelens_tl as fl
        >>> model = fl.toy_model(verbose=False)
        >>> clean = torch.randint(1, 100, (2, 12)); corrupted = torch.randint(1, 100, (2, 12))
        >>> metric = lambda logits: logits[:, -1].log_softmax(-1)[:, 5]
        >>> res = fl.score_heads(model, clean, corrupted, metric, verbose=False)
        >>> tuple(res.effect.shape) == (model.cfg.n_layers, model.cfg.n_heads)
        True
    """
    view = as_view(model)
    if method not in _METHODS:
        raise ValueError(f"method={method!r} is not one of {_METHODS}")
    if site not in _SITES:
        raise ValueError(f"site={site!r} is not one of {_SITES}")
    if metric is None or not callable(metric):
        raise ValueError("metric must be a callable logits -> scalar or [batch]")
    clean = view.to_tokens(clean, arg="clean")
    heads_l = _check_heads(view, heads)
    if method in ("denoise", "noise"):
        if corrupted is None:
            raise ValueError(f"method={method!r} needs corrupted tokens of the same shape")
        corrupted = view.to_tokens(corrupted, arg="corrupted")
        if corrupted.shape != clean.shape:
            raise ValueError(f"corrupted has shape {tuple(corrupted.shape)} but clean has "
                             f"{tuple(clean.shape)}; they must match")
    pos: Tensor | None = None
    if positions is not None:
        pos = torch.as_tensor([positions] if isinstance(positions, int) else list(positions),
                              dtype=torch.long, device=view.device)
        if pos.numel() == 0 or int(pos.max()) >= clean.shape[1] or int(pos.min()) < -clean.shape[1]:
            raise ValueError(f"positions={positions} out of range for length {clean.shape[1]}")
    b = clean.shape[0]
    k = heads_per_forward or max(1, 256 // b)
    clean_logits, clean_acts = _cache_site(view, clean, site)
    with torch.no_grad():
        m_clean = float(_metric_rows(metric, clean_logits, b, 1)[0])
    n_fwd = 1
    m_corr: float | None = None
    ev: dict[str, Any] = {"n_examples": b, "seq_len": int(clean.shape[1]), "seed": seed,
                          "heads_per_forward": k,
                          "positions": None if pos is None else pos.tolist()}
    if method in ("denoise", "noise"):
        corr_logits, corr_acts = _cache_site(view, corrupted, site)  # type: ignore[arg-type]
        n_fwd += 1
        m_corr = float(_metric_rows(metric, corr_logits, b, 1)[0])
        src = clean_acts if method == "denoise" else corr_acts
        base = corrupted if method == "denoise" else clean
        vals, nf = _intervene(view, base, heads_l, lambda layer, h, cur, r: src[layer][:, :, h],
                              metric, site=site, positions=pos, heads_per_forward=k,
                              verbose=verbose, desc=f"patching ({method})")
        n_fwd += nf
        gap = m_clean - m_corr
        m_base = m_corr if method == "denoise" else m_clean
        effect = vals - m_base
        if abs(gap) < 1e-12:
            norm = torch.full_like(vals, float("nan"))
        elif method == "denoise":
            norm = (vals - m_corr) / gap
        else:
            norm = (m_clean - vals) / gap
        return HeadEffects(effect.float(), norm.float(), method, site, m_clean, m_corr, n_fwd, ev)

    ref = clean if reference is None else view.to_tokens(reference, arg="reference")
    if method == "zero":
        vals, nf = _intervene(view, clean, heads_l, lambda layer, h, cur, r: torch.zeros_like(cur),
                              metric, site=site, positions=pos, heads_per_forward=k,
                              verbose=verbose, desc="zero ablation")
        n_fwd += nf
    else:  # mean and resample ablation read the reference distribution's activations
        if ref.shape[1] != clean.shape[1]:
            what = "mean ablation" if method == "mean" else "resampling"
            raise ValueError(f"reference must have the same length as clean for {what}")
        if reference is None:
            ref_acts = clean_acts
        else:
            _, ref_acts = _cache_site(view, ref, site)
            n_fwd += 1
    if method == "mean":
        means = {layer: a.mean(0, keepdim=True) for layer, a in ref_acts.items()}
        vals, nf = _intervene(
            view, clean, heads_l,
            lambda layer, h, cur, r: means[layer][:, :, h].expand_as(cur), metric, site=site,
            positions=pos, heads_per_forward=k, verbose=verbose, desc="mean ablation")
        n_fwd += nf
    elif method == "resample":
        g = torch.Generator().manual_seed(seed)
        draws = []
        for _ in range(max(1, n_resample)):
            perm = torch.randint(ref.shape[0], (b,), generator=g)
            if reference is None and b > 1:  # another example, never the same one
                perm = (torch.arange(b) + torch.randint(1, b, (b,), generator=g)) % b
            perm = perm.to(view.device)
            v, nf = _intervene(
                view, clean, heads_l,
                lambda layer, h, cur, r, _p=perm: ref_acts[layer][_p][:, :, h], metric,
                site=site, positions=pos, heads_per_forward=k, verbose=verbose,
                desc="resample ablation")
            n_fwd += nf
            draws.append(v)
        vals = torch.stack(draws).mean(0)
        ev["n_resample"] = n_resample
    effect = vals - m_clean
    norm = -effect / max(abs(m_clean), 1e-12)
    return HeadEffects(effect.float(), norm.float(), method, site, m_clean, None, n_fwd, ev)


def directional_effects(
    model: Any,
    tokens: Int[Tensor, "batch pos"],
    direction: Float[Tensor, "..."],
    metric: Metric,
    *,
    alpha: float = 1.0,
    sigma_scale: bool = False,
    n_random: int = 0,
    heads: Sequence[tuple[int, int]] | None = None,
    positions: int | Sequence[int] | None = None,
    heads_per_forward: int | None = None,
    seed: int = 0,
    verbose: bool = True,
) -> tuple[HeadEffects, HeadEffects]:
    """Directional addition and subtraction in each head's output (reference §6.1, §6.2).

    Adds (and separately subtracts) ``alpha * u`` to ``hook_z`` of one head at a time, batched
    over heads, and reports the metric change. ``direction`` is ``[d_head]`` (same for every
    head) or ``[n_layers, n_heads, d_head]`` (per head, e.g. probe directions from
    :func:`futurelens_tl.attention.probes.probe_heads`); it is normalised to unit length.

    With ``sigma_scale=True`` the shift is ITI's ``alpha * sigma * u`` (Li et al. 2023):
    ``sigma`` = standard deviation of the head's clean activations projected on ``u`` (over
    examples and the steered positions), so ``alpha`` is in units of the head's natural spread
    (ITI uses ``alpha = 15``). ``n_random > 0`` adds the control of §6.2: the same intervention
    along ``n_random`` random unit directions per head (seeded; each scaled by its own
    ``sigma`` when ``sigma_scale``), whose mean and std land in ``control_mean`` /
    ``control_std`` (``control_z`` = how many control stds the real direction beats).

    Returns:
        ``(added, subtracted)`` HeadEffects (``effect = m_steered - m_clean``); ``evidence``
        holds ``alpha``, ``sigma_scale`` and the per-head ``sigma`` when used.

    Raises:
        ValueError: If ``direction`` has the wrong shape, or ``n_random`` is negative.

    Examples:
        >>> import torch, futurelens_tl as fl
        >>> model = fl.toy_model(verbose=False)
        >>> tok = torch.randint(1, 100, (2, 8))
        >>> metric = lambda logits: logits[:, -1].log_softmax(-1)[:, 5]
        >>> from futurelens_tl.attention.patching import directional_effects
        >>> add, sub = directional_effects(model, tok, torch.ones(model.cfg.d_head), metric,
        ...     alpha=2.0, sigma_scale=True, n_random=1, heads=[(1, 0)], verbose=False)
        >>> add.control_mean is not None
        True
    """
    view = as_view(model)
    tokens = view.to_tokens(tokens, arg="tokens")
    d = torch.as_tensor(direction, dtype=view.dtype, device=view.device)
    if d.shape == (view.d_head,):
        d = d.expand(view.n_layers, view.n_heads, view.d_head)
    if d.shape != (view.n_layers, view.n_heads, view.d_head):
        raise ValueError(f"direction has shape {tuple(d.shape)}; allowed [d_head={view.d_head}] "
                         f"or [n_layers, n_heads, d_head]")
    if isinstance(n_random, bool) or not isinstance(n_random, int) or n_random < 0:
        raise ValueError(f"n_random={n_random!r} must be an int >= 0")
    u = d / d.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    heads_l = _check_heads(view, heads)
    pos = None
    if positions is not None:
        pos = torch.as_tensor([positions] if isinstance(positions, int) else list(positions),
                              dtype=torch.long, device=view.device)
    b = tokens.shape[0]
    k = heads_per_forward or max(1, 256 // b)
    if sigma_scale:
        logits, zs = _cache_site(view, tokens, "z")
        z_all = torch.stack([zs[layer] for layer in range(view.n_layers)])  # [L, b, pos, H, dh]
        if pos is not None:
            z_all = z_all[:, :, pos]
    else:
        with torch.no_grad():
            logits = view.forward(tokens)
        FORWARD_COUNTER.passes += 1
        z_all = None
    m_clean = float(_metric_rows(metric, logits, b, 1)[0])

    def _sigma(dirs: Tensor) -> Tensor:
        """``[L, H]`` std of the clean activations projected on ``dirs`` (1 without scaling)."""
        if z_all is None:
            return torch.ones(view.n_layers, view.n_heads, device=view.device, dtype=dirs.dtype)
        proj = torch.einsum("lbphd,lhd->lhbp", z_all.to(dirs.dtype), dirs)
        return proj.flatten(2).std(-1)

    def _run(dirs: Tensor, sign: float, name: str) -> tuple[Tensor, int]:
        shift = alpha * _sigma(dirs)[..., None] * dirs  # [L, H, dh]
        return _intervene(view, tokens, heads_l,
                          lambda layer, h, cur, r, _s=sign: cur + _s * shift[layer, h],
                          metric, site="z", positions=pos, heads_per_forward=k,
                          verbose=verbose, desc=f"directional {name}")

    g = torch.Generator().manual_seed(seed)
    rand = [torch.randn(view.n_layers, view.n_heads, view.d_head, generator=g).to(u)
            for _ in range(n_random)]
    rand = [r / r.norm(dim=-1, keepdim=True).clamp_min(1e-12) for r in rand]
    sig = _sigma(u)
    out = []
    for sign, name in ((1.0, "add"), (-1.0, "subtract")):
        vals, nf = _run(u, sign, name)
        eff = (vals - m_clean).float()
        ctrl = [(_run(r, sign, f"{name} (random control)")) for r in rand]
        nf += sum(c[1] for c in ctrl)
        cm = cs = None
        if ctrl:
            cv = torch.stack([(c[0] - m_clean).float() for c in ctrl])
            cm = cv.mean(0)
            cs = cv.std(0) if len(ctrl) > 1 else torch.zeros_like(cm)
        ev = {"n_examples": b, "alpha": alpha, "sigma_scale": sigma_scale,
              "n_random": n_random, "seed": seed}
        if sigma_scale:
            ev["sigma"] = sig.float().cpu().tolist()
        out.append(HeadEffects(eff, eff / max(abs(m_clean), 1e-12), name, "z", m_clean, None,
                               nf + 1, ev, cm, cs))
    return out[0], out[1]
