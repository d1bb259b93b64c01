"""The result of :func:`futurelens_tl.attention.heads.tag_heads`: scores, tags, evidence, views."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from futurelens_tl.models.view import as_view

__all__ = ["STAGES", "HeadTags"]

STAGES = {
    "KR": "knowledge recalling",
    "ICI": "in-context identification",
    "LR": "latent reasoning",
    "EP": "expression preparation",
    "none": "not in survey",
}


@dataclass
class HeadTags:
    """Every head's score for every role, the tags, stages and evidence.

    Attributes:
        roles: Role names, in the order of ``scores``.
        scores: ``[n_roles, n_layers, n_heads]``; NaN where a role could not be scored.
        thresholds: Role -> threshold used (``score >= threshold`` tags).
        threshold_sources: Role -> where the threshold comes from.
        stages: Role -> survey stage key (``ICI``, ``LR``, ...; ``none`` = not in survey).
        evidence: Role -> channel, dataset, number of examples, seed, and notes.
        extras: Role -> name -> ``[n_layers, n_heads]`` auxiliary statistics.
        unavailable: Role -> reason it could not be scored (its scores are NaN).
        model_name: Model class / fingerprint summary.
        n_forwards: Forward passes made.
        seconds: Wall time.
        confirmation: Role -> one record per tested head (``tag_heads(..., confirm=True)``):
            ``layer``, ``head``, ``tagged``, ``drop`` (metric drop under resample ablation),
            ``control_mean`` / ``control_max`` (the same for random untagged heads),
            ``confirmed`` (drop > 0 and above every control head), ``metric``.
    """

    roles: list[str]
    scores: Float[Tensor, "n_roles n_layers n_heads"]
    thresholds: dict[str, float | None]
    threshold_sources: dict[str, str]
    stages: dict[str, str]
    evidence: dict[str, dict[str, Any]]
    extras: dict[str, dict[str, Tensor]] = field(default_factory=dict)
    unavailable: dict[str, str] = field(default_factory=dict)
    model_name: str = ""
    n_forwards: int = 0
    seconds: float = 0.0
    confirmation: dict[str, list[dict[str, Any]]] = field(default_factory=dict)

    @property
    def n_layers(self) -> int:
        return int(self.scores.shape[1])

    @property
    def n_heads(self) -> int:
        return int(self.scores.shape[2])

    def score(self, role: str) -> Float[Tensor, "n_layers n_heads"]:
        """The ``[n_layers, n_heads]`` score of ``role``."""
        return self.scores[self._index(role)]

    def _index(self, role: str) -> int:
        if role not in self.roles:
            raise ValueError(f"role={role!r} is not in this result; roles: {self.roles}")
        return self.roles.index(role)

    @property
    def tags(self) -> Bool[Tensor, "n_roles n_layers n_heads"]:
        """``scores >= threshold`` per role (False for NaN or roles without a threshold)."""
        out = torch.zeros_like(self.scores, dtype=torch.bool)
        for i, r in enumerate(self.roles):
            t = self.thresholds.get(r)
            if t is not None:
                out[i] = torch.nan_to_num(self.scores[i], nan=-math.inf) >= t
        return out

    def tagged(self, role: str) -> list[tuple[int, int]]:
        """``(layer, head)`` pairs tagged with ``role``, highest score first."""
        i = self._index(role)
        idx = self.tags[i].nonzero().tolist()
        return sorted(((a, b) for a, b in idx), key=lambda lh: -float(self.scores[i][lh]))

    def top(self, role: str, k: int = 3) -> list[tuple[int, int, float]]:
        """The ``k`` best heads for ``role`` (tagged or not) as ``(layer, head, score)``."""
        s = torch.nan_to_num(self.score(role).detach(), nan=-math.inf).flatten()
        idx = s.argsort(descending=True)[:k]
        return [(int(i) // self.n_heads, int(i) % self.n_heads, float(s[i])) for i in idx]

    def heads_by_role(self) -> dict[str, list[tuple[int, int]]]:
        """Role -> tagged heads."""
        return {r: self.tagged(r) for r in self.roles}

    def dominant(self) -> list[list[str | None]]:
        """Per head, the tagged role with the largest ``score / threshold`` (None if untagged)."""
        tags = self.tags
        out: list[list[str | None]] = []
        for layer in range(self.n_layers):
            row: list[str | None] = []
            for h in range(self.n_heads):
                best, val = None, -math.inf
                for i, r in enumerate(self.roles):
                    t = self.thresholds.get(r)
                    if tags[i, layer, h] and t is not None:
                        v = float(self.scores[i, layer, h]) / max(abs(t), 1e-6)
                        if v > val:
                            best, val = r, v
                row.append(best)
            out.append(row)
        return out

    def to_dataframe(self) -> Any:
        """One row per (layer, head, role): stage, score, threshold, tagged, source, channel.

        ``confirmed`` is True/False for heads tested by ``confirm=True``, None otherwise.
        """
        import pandas as pd

        tags = self.tags
        conf = {(r, c["layer"], c["head"]): c["confirmed"]
                for r, recs in self.confirmation.items() for c in recs}
        rows = []
        for i, r in enumerate(self.roles):
            for layer in range(self.n_layers):
                for h in range(self.n_heads):
                    rows.append({
                        "layer": layer, "head": h, "role": r,
                        "stage": STAGES[self.stages[r]],
                        "score": float(self.scores[i, layer, h]),
                        "threshold": self.thresholds.get(r),
                        "tagged": bool(tags[i, layer, h]),
                        "source": self.threshold_sources.get(r, ""),
                        "channel": self.evidence.get(r, {}).get("channel", ""),
                        "confirmed": conf.get((r, layer, h)),
                    })
        return pd.DataFrame(rows)

    def summary(self) -> Any:
        """One row per role: threshold, number tagged, best head, score, interval, control.

        ``ci_low``/``ci_high`` where the role has an interval; ``control``/``control_value``:
        the role's control statistic at the best head (chance rate, random-head baseline...).
        """
        import pandas as pd

        rows = []
        for r in self.roles:
            best = self.top(r, 1)[0]
            ex = self.extras.get(r, {})
            lh = (best[0], best[1])
            ctrl = next((k for k in ("chance", "random_mean", "uniform_label_mass",
                                     "k_composition_baseline", "non_subject") if k in ex), None)
            rows.append({"role": r, "stage": STAGES[self.stages[r]],
                         "threshold": self.thresholds.get(r), "n_tagged": len(self.tagged(r)),
                         "best_head": f"L{best[0]}H{best[1]}", "best_score": best[2],
                         "ci_low": float(ex["ci_low"][lh]) if "ci_low" in ex else None,
                         "ci_high": float(ex["ci_high"][lh]) if "ci_high" in ex else None,
                         "control": ctrl,
                         "control_value": float(ex[ctrl][lh]) if ctrl else None,
                         "dataset": self.evidence.get(r, {}).get("dataset", ""),
                         "n_confirmed": (sum(bool(c["confirmed"]) for c in self.confirmation[r]
                                             if c["tagged"]) if r in self.confirmation
                                         else None),
                         "unavailable": self.unavailable.get(r, "")})
        return pd.DataFrame(rows)

    def confirmation_frame(self) -> Any:
        """One row per head tested by ``confirm=True`` (tagged heads and their controls)."""
        import pandas as pd

        return pd.DataFrame([{"role": r, **c} for r, recs in self.confirmation.items()
                             for c in recs])

    def _grid_html(self) -> str:
        from futurelens_tl.viz.heads import role_grid_html

        return role_grid_html(
            self.scores.numpy(), self.roles, self.dominant(),
            {r: self.thresholds.get(r) for r in self.roles},
            {r: STAGES[self.stages[r]] for r in self.roles},
            title=f"Head roles: {self.model_name}",
            notes={r: self.unavailable[r] for r in self.unavailable},
        )

    def plot(self) -> Any:
        """The role grid as a matplotlib figure (colour = dominant tagged role)."""
        from futurelens_tl.viz.heads import role_grid_figure

        return role_grid_figure(self.scores.numpy(), self.roles, self.dominant())

    def show(self) -> Any:
        """Layer x head grid coloured by dominant tagged role, all scores on hover (offline)."""
        return _HTMLBox(self._grid_html())

    def _repr_html_(self) -> str:
        return self._grid_html()

    def save_html(self, path: str) -> None:
        """Write the grid as a standalone offline HTML file (atomic)."""
        from futurelens_tl.viz.html import page, save_html

        save_html(page("Attention-head roles", self._grid_html()), path)  # report's CSP + style

    def save(self, path: str) -> None:
        """Save as safetensors (scores, extras) + JSON header (roles, thresholds, evidence).

        The write is atomic (temp file + ``os.replace``); :meth:`load` restores an equal object.
        """
        import json

        from safetensors.torch import save_file

        from futurelens_tl._io import atomic_write

        tensors = {"scores": self.scores.contiguous()}
        for r, ex in self.extras.items():
            for k, v in ex.items():
                tensors[f"extras/{r}/{k}"] = v.contiguous()
        header = {
            "format": "futurelens_tl.HeadTags", "version": 1, "roles": self.roles,
            "thresholds": self.thresholds, "threshold_sources": self.threshold_sources,
            "stages": self.stages, "evidence": self.evidence, "unavailable": self.unavailable,
            "model_name": self.model_name, "n_forwards": self.n_forwards,
            "seconds": self.seconds, "confirmation": self.confirmation,
        }
        atomic_write(path, lambda tmp: save_file(
            tensors, tmp, metadata={"header": json.dumps(header, default=str)}))

    @classmethod
    def load(cls, path: str) -> HeadTags:
        """Load a result written by :meth:`save`."""
        import json

        from safetensors import safe_open

        with safe_open(path, framework="pt") as f:
            meta = f.metadata() or {}
            if "header" not in meta:
                raise ValueError(f"{path!r} is not a HeadTags file (no header)")
            h = json.loads(meta["header"])
            if h.get("format") != "futurelens_tl.HeadTags":
                raise ValueError(f"{path!r} holds {h.get('format')!r}, not HeadTags")
            scores = f.get_tensor("scores")
            extras: dict[str, dict[str, Tensor]] = {}
            for k in f.keys():
                if k.startswith("extras/"):
                    _, r, name = k.split("/", 2)
                    extras.setdefault(r, {})[name] = f.get_tensor(k)
        return cls(roles=h["roles"], scores=scores, thresholds=h["thresholds"],
                   threshold_sources=h["threshold_sources"], stages=h["stages"],
                   evidence=h["evidence"], extras=extras, unavailable=h["unavailable"],
                   model_name=h["model_name"], n_forwards=h["n_forwards"],
                   seconds=h["seconds"], confirmation=h.get("confirmation", {}))

    def attention_view(self, model: Any, layer: int, head: int,
                       tokens: Int[Tensor, "..."] | str) -> Any:
        """One head's attention pattern via circuitsvis, its JS inlined (``local_src``; offline).

        Returns an object with ``_repr_html_`` (and ``.data`` = the HTML string).
        """
        view = as_view(model)
        tok = view.to_tokens(tokens, arg="tokens")[:1]
        if not (0 <= layer < view.n_layers and 0 <= head < view.n_heads):
            raise ValueError(f"(layer, head)=({layer}, {head}) out of range")
        name = view.attn_hook(layer, "pattern")
        with torch.no_grad():
            _, cache = view.run_with_cache(tok, [name])
        pat = cache[name][0, head:head + 1].float().cpu()
        try:
            strs = view.to_str_tokens(tok[0])
        except Exception:
            strs = [str(int(t)) for t in tok[0]]
        from futurelens_tl.viz.heads import attention_heads_html

        return _HTMLBox(attention_heads_html(pat.numpy(), strs, [f"L{layer}H{head}"]))


class _HTMLBox:
    def __init__(self, html: str):
        self.data = html

    def _repr_html_(self) -> str:
        return self.data

    def __str__(self) -> str:
        return self.data
