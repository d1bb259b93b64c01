"""Fine-tuned vs original: per-head role-score deltas of two models of the same shape (issue 15).

The survey lists comparing a model before and after fine-tuning among the modeling-required
discovery methods (``head-roles.md`` §1, §6.2). :func:`compare_heads` tags both models with the
**same** data and seed and subtracts the scores. Its control is the data-resampling noise of
the scores themselves: model ``a`` is tagged again on data drawn with other seeds, and a head's
change counts only when ``|delta|`` exceeds the 95th percentile (over heads and noise seeds) of
``|a(seed') - a(seed)|`` for that role. Weight-only roles have no data noise, so any change of
their score is real (the weights changed); they use a floor of ``1e-6``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from jaxtyping import Bool, Float
from torch import Tensor

from futurelens_tl.models.view import as_view

__all__ = ["HeadComparison", "compare_heads"]


@dataclass
class HeadComparison:
    """Role scores of two models, their per-head deltas and the noise control.

    Attributes:
        roles: Roles compared (those scored on both models).
        scores_a: ``[n_roles, n_layers, n_heads]`` scores of the original model.
        scores_b: The same for the other (e.g. fine-tuned) model.
        noise: ``[n_roles]`` change threshold per role: 95th percentile of the data-resampling
            noise ``|a(seed') - a(seed)|`` (``1e-6`` floor).
        names: ``(name_a, name_b)``.
        evidence: Seeds, number of examples, unavailable roles.
    """

    roles: list[str]
    scores_a: Float[Tensor, "n_roles n_layers n_heads"]
    scores_b: Float[Tensor, "n_roles n_layers n_heads"]
    noise: Float[Tensor, " n_roles"]
    names: tuple[str, str] = ("a", "b")
    evidence: dict[str, Any] = field(default_factory=dict)

    @property
    def delta(self) -> Float[Tensor, "n_roles n_layers n_heads"]:
        """``scores_b - scores_a``."""
        return self.scores_b - self.scores_a

    @property
    def changed(self) -> Bool[Tensor, "n_roles n_layers n_heads"]:
        """``|delta| > noise`` of the role (False where either score is NaN)."""
        d = torch.nan_to_num(self.delta.abs(), nan=-math.inf)
        return d > self.noise[:, None, None]

    def role_delta(self, role: str) -> Float[Tensor, "n_layers n_heads"]:
        """The ``[n_layers, n_heads]`` delta of one role."""
        if role not in self.roles:
            raise ValueError(f"role={role!r} is not in this comparison; roles: {self.roles}")
        return self.delta[self.roles.index(role)]

    def top_changes(self, k: int = 10) -> list[tuple[str, int, int, float]]:
        """The ``k`` largest changes beyond noise as ``(role, layer, head, delta)``."""
        d = torch.where(self.changed, self.delta.abs() / self.noise.clamp_min(1e-6)[:, None, None],
                        torch.full_like(self.delta, -1.0))
        flat = d.flatten()
        order = flat.argsort(descending=True)[:k]
        L, H = self.scores_a.shape[1:]
        out = []
        for i in order.tolist():
            if flat[i] < 0:
                break
            r, rest = divmod(i, L * H)
            layer, h = divmod(rest, H)
            out.append((self.roles[r], layer, h, float(self.delta[r, layer, h])))
        return out

    def to_dataframe(self) -> Any:
        """One row per (role, layer, head): score_a, score_b, delta, noise, changed."""
        import pandas as pd

        ch = self.changed
        L, H = self.scores_a.shape[1:]
        return pd.DataFrame([
            {"role": r, "layer": layer, "head": h, "score_a": float(self.scores_a[i, layer, h]),
             "score_b": float(self.scores_b[i, layer, h]),
             "delta": float(self.delta[i, layer, h]), "noise": float(self.noise[i]),
             "changed": bool(ch[i, layer, h])}
            for i, r in enumerate(self.roles) for layer in range(L) for h in range(H)])

    def _repr_html_(self) -> str:
        from futurelens_tl.viz.heads import heatmap_html

        parts = [heatmap_html(self.delta[i].numpy(),
                              title=f"{r}: {self.names[1]} - {self.names[0]} "
                                    f"(noise {float(self.noise[i]):.3g})")
                 for i, r in enumerate(self.roles)]
        return "<div>" + "".join(parts) + "</div>"

    def show(self) -> Any:
        """One layer x head delta heatmap per role (offline HTML)."""
        from futurelens_tl.attention.patching import _HTML

        return _HTML(self._repr_html_())


def compare_heads(
    model_a: Any,
    model_b: Any,
    roles: str | Iterable[str] = ("previous_token", "duplicate_token", "induction",
                                  "attention_sink", "copying"),
    *,
    noise_seeds: Sequence[int] = (1, 2),
    seed: int = 0,
    names: tuple[str, str] = ("original", "fine-tuned"),
    verbose: bool = False,
    **tag_kwargs: Any,
) -> HeadComparison:
    """Per-head role-score deltas of two models of the same shape, with a noise control.

    Args:
        model_a: The original model.
        model_b: The other model (same layers, heads and vocabulary), e.g. after fine-tuning.
        roles: Roles to compare (as for :func:`futurelens_tl.tag_heads`).
        noise_seeds: Data seeds for the noise control (model ``a`` re-tagged with each).
        seed: The data seed both models are tagged with.
        names: Labels of the two models.
        verbose: Progress bars.
        **tag_kwargs: Passed to :func:`futurelens_tl.tag_heads` (``n_examples``, ``data``...).
            ``data`` given here is used for every run, so the noise control then only covers
            the roles whose data is generated.

    Returns:
        HeadComparison.

    Raises:
        ValueError: If the shapes differ, or ``noise_seeds`` is empty or contains ``seed``.

    Examples:
        >>> import copy, futurelens_tl as fl
        >>> from futurelens_tl.attention.compare_heads import compare_heads
        >>> a = fl.toy_model(verbose=False)
        >>> cmp = compare_heads(a, copy.deepcopy(a), roles=["copying"], noise_seeds=(1,))
        >>> bool(cmp.changed.any())  # an identical copy changes nothing
        False
    """
    from futurelens_tl.attention.heads import tag_heads  # noqa: PLC0415

    va, vb = as_view(model_a), as_view(model_b)
    shape_a = (va.n_layers, va.n_heads, va.d_model, va.d_vocab)
    shape_b = (vb.n_layers, vb.n_heads, vb.d_model, vb.d_vocab)
    if shape_a != shape_b:
        raise ValueError(f"models differ in shape (n_layers, n_heads, d_model, d_vocab): "
                         f"{shape_a} vs {shape_b}; compare_heads needs the same architecture")
    noise_seeds = list(noise_seeds)
    if not noise_seeds or seed in noise_seeds:
        raise ValueError(f"noise_seeds={noise_seeds} must be non-empty and exclude seed={seed}")
    ta = tag_heads(model_a, roles, seed=seed, verbose=verbose, **tag_kwargs)
    tb = tag_heads(model_b, roles, seed=seed, verbose=verbose, **tag_kwargs)
    keep = [r for r in ta.roles if r not in ta.unavailable and r not in tb.unavailable]
    ia = torch.tensor([ta.roles.index(r) for r in keep], dtype=torch.long)
    ib = torch.tensor([tb.roles.index(r) for r in keep], dtype=torch.long)
    diffs = []
    for s in noise_seeds:
        tn = tag_heads(model_a, keep, seed=s, verbose=verbose, **tag_kwargs)
        diffs.append((tn.scores - ta.scores[ia]).abs())
    dd = torch.nan_to_num(torch.stack(diffs), nan=0.0)  # [S, R, L, H]
    noise = torch.quantile(dd.permute(1, 0, 2, 3).flatten(1), 0.95, dim=1).clamp_min(1e-6)
    return HeadComparison(
        roles=keep, scores_a=ta.scores[ia], scores_b=tb.scores[ib], noise=noise, names=names,
        evidence={"seed": seed, "noise_seeds": noise_seeds,
                  "unavailable": {**ta.unavailable, **tb.unavailable},
                  "datasets": {r: ta.evidence[r].get("dataset") for r in keep}})
