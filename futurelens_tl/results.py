"""Result objects of the lens drivers (``run_with_lenses``, ``compare``, ``evaluate``).

* :class:`LayerReadout` / :class:`LensReadouts`: reduced readouts of :func:`run_with_lenses`;
* :class:`LensComparison`: the side-by-side grid of :func:`compare`;
* :class:`LensEvaluation`: the long table of :func:`evaluate` (columns in :data:`COLUMNS`).

They live below the drivers so that lenses producing their own evaluations (the Future Lens)
can build them without importing the drivers above them. Plain dataclasses of tensors and
frames; views are rendered by ``viz`` from ``show()`` / ``save_html()``.
"""

from __future__ import annotations

import base64
import html
import io
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

__all__ = ["COLUMNS", "MODES", "LayerReadout", "LensComparison", "LensEvaluation",
           "LensReadouts"]


@dataclass
class LayerReadout:
    """Reduced readout of one lens at one layer, for every ``[batch, position]`` cell.

    Attributes:
        top_ids: ``[batch, pos, k]`` top-k token ids.
        top_probs: ``[batch, pos, k]`` their probabilities.
        entropy: ``[batch, pos]`` entropy (nats).
        kl: ``[batch, pos]`` KL(final(t + n_ahead) || lens(t)) (nats; NaN where undefined).
        target_ids: ``[batch, pos]`` target token ids (-1 where undefined), or None.
        target_log_probs: ``[batch, pos]`` log-prob of the target (NaN where undefined).
        target_ranks: ``[batch, pos]`` 1-based full-vocabulary rank (0 where undefined).
        log_probs: ``[batch, pos, vocab]`` only with ``return_log_probs=True``.
    """

    top_ids: Tensor
    top_probs: Tensor
    entropy: Tensor
    kl: Tensor
    target_ids: Tensor | None = None
    target_log_probs: Tensor | None = None
    target_ranks: Tensor | None = None
    log_probs: Tensor | None = None


@dataclass
class LensReadouts:
    """Per lens and layer reduced readouts from :func:`run_with_lenses`.

    Index with ``readouts["logit"][3]`` or ``readouts["logit", 3]``.

    Attributes:
        data: ``{lens name: {layer: LayerReadout}}``.
        positions: Positions that were read (``[P]`` ints).
        k: Top-k size.
        meta: Lens metadata (``n_ahead``, ``token_fed``) and run info (``lengths``: the real
            length of each sequence).
        valid: ``[batch, P]`` bool, ``False`` at padded cells (position past the end of a
            shorter sequence of a mixed-length batch); every cell is valid for equal lengths.
            Values at invalid cells are padding artefacts: filter them out
            (``to_dataframe()`` has a ``valid`` column).
    """

    data: dict[str, dict[int, LayerReadout]]
    positions: list[int]
    k: int
    meta: dict[str, Any] = field(default_factory=dict)
    valid: Tensor | None = None

    def __getitem__(self, key: str | tuple[str, int]) -> Any:
        if isinstance(key, tuple):
            name, layer = key
            return self[name][layer]
        if key not in self.data:
            raise KeyError(f"no lens named {key!r}; have {list(self.data)}")
        return self.data[key]

    def __iter__(self) -> Any:
        return iter(self.data)

    def __len__(self) -> int:
        return len(self.data)

    @property
    def lenses(self) -> list[str]:
        return list(self.data)

    def to_dataframe(self) -> Any:
        """Long table: one row per lens, layer, batch, position (top-1, target stats, KL...)."""
        import pandas as pd

        frames = []
        for name, layers in self.data.items():
            for layer, r in layers.items():
                B, P = r.entropy.shape
                d = {
                    "lens": name, "layer": layer,
                    "batch": torch.arange(B).repeat_interleave(P).numpy(),
                    "pos": torch.tensor(self.positions).repeat(B).numpy(),
                    "top1_id": r.top_ids[..., 0].reshape(-1).cpu().numpy(),
                    "top1_prob": r.top_probs[..., 0].reshape(-1).float().cpu().numpy(),
                    "entropy": r.entropy.reshape(-1).float().cpu().numpy(),
                    "kl": r.kl.reshape(-1).float().cpu().numpy(),
                }
                if self.valid is not None:
                    d["valid"] = self.valid.reshape(-1).cpu().numpy()
                if r.target_ids is not None:
                    d["target_id"] = r.target_ids.reshape(-1).cpu().numpy()
                    d["target_log_prob"] = r.target_log_probs.reshape(-1).float().cpu().numpy()
                    d["target_rank"] = r.target_ranks.reshape(-1).cpu().numpy()
                frames.append(pd.DataFrame(d))
        return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


# ---------------------------------------------------------------------- validation helpers


@dataclass
class LensComparison:
    """Side-by-side lens readouts for one prompt: the layer x position grid (§A.4).

    Attributes:
        grid: The JSON-ready lens-grid dict (contract in ``futurelens_tl.viz.lens_grid``).
        meta: Model fingerprint, basis, lens metadata.
    """

    grid: dict[str, Any]
    meta: dict[str, Any] = field(default_factory=dict)

    def to_dataframe(self) -> Any:
        """One row per lens, layer, position: top-1, probabilities, target stats, KL."""
        import pandas as pd

        g = self.grid
        rows = []
        for lens in g["lenses"]:
            for r, (label, layer) in enumerate(zip(g["rows"], g["row_layers"])):
                for p, tok in enumerate(g["tokens"]):
                    if not lens["available"][r][p]:
                        continue
                    rows.append({
                        "lens": lens["name"], "layer": layer, "row": label, "pos": p,
                        "token": tok, "next_token": g["next_tokens"][p],
                        "top1": lens["top_tokens"][r][p][0],
                        "top1_id": lens["top_ids"][r][p][0],
                        "top1_prob": lens["top_probs"][r][p][0],
                        "p_next": lens["p_next"][r][p] if lens.get("p_next") else None,
                        "rank_next": lens["rank_next"][r][p] if lens.get("rank_next") else None,
                        "entropy": lens["entropy"][r][p], "kl": lens["kl"][r][p],
                    })
        return pd.DataFrame(rows)

    def html(self, color: str = "prob", *, standalone: bool = False,
             height: int | None = None) -> str:
        from futurelens_tl.viz.lens_grid import lens_grid_html

        return lens_grid_html(self.grid, color=color, standalone=standalone, height=height)

    def _repr_html_(self) -> str:
        return self.html()

    def show(self, color: str = "prob") -> Any:
        """Display the interactive grid in Jupyter (offline; inline JS/CSS)."""
        h = self.html(color)
        try:
            from IPython.display import HTML, display

            display(HTML(h))
        except ImportError:  # pragma: no cover
            pass
        return h

    def save_html(self, path: str | os.PathLike[str], color: str = "prob") -> None:
        """Write a standalone offline HTML page (atomic)."""
        from futurelens_tl.lenses.artifacts import atomic_write

        text = self.html(color, standalone=True)

        def write(tmp: str) -> None:
            with open(tmp, "w", encoding="utf-8") as f:
                f.write(text)

        atomic_write(path, write)

    def figure(self, lens: str | None = None, color: str = "prob") -> Any:
        """A static matplotlib figure of one lens panel (default: the first)."""
        from futurelens_tl.viz.lens_grid import lens_grid_figure

        return lens_grid_figure(self.grid, lens=lens, color=color)

    def save_png(self, path: str | os.PathLike[str], lens: str | None = None,
                 color: str = "prob", dpi: int = 120) -> None:
        import matplotlib.pyplot as plt

        from futurelens_tl.lenses.artifacts import atomic_write

        fig = self.figure(lens=lens, color=color)
        try:
            atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=dpi))
        finally:
            plt.close(fig)


COLUMNS = [
    "lens", "method", "layer", "n_ahead", "metric", "k", "mode", "token_fed",
    "label_source", "bucket", "value", "n",
]
MODES = ("same_position", "teacher_forced", "free_running", "baseline")
_LOWER_IS_BETTER = {"surprisal", "kl", "ce", "entropy"}


@dataclass
class LensEvaluation:
    """Per-layer lens metrics as a long table.

    Attributes:
        table: pandas DataFrame with columns :data:`COLUMNS` (``k``, ``bucket``, ``layer`` may be
            NA).
        meta: JSON-ready run description (model fingerprint, corpus size, label source, ...).
    """

    table: Any
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        import pandas as pd

        if not isinstance(self.table, pd.DataFrame):
            self.table = pd.DataFrame(self.table)
        missing = [c for c in COLUMNS if c not in self.table.columns]
        if missing:
            raise ValueError(f"table is missing columns {missing}; required: {COLUMNS}")
        bad = set(self.table["mode"].dropna()) - set(MODES)
        if bad:
            raise ValueError(f"table has unknown mode(s) {sorted(bad)}; allowed: {MODES}")
        self.table = self.table[COLUMNS + [c for c in self.table.columns if c not in COLUMNS]]
        for c in ("layer", "k", "n_ahead", "n"):
            self.table[c] = pd.to_numeric(self.table[c]).astype("Int64")
        self.table["value"] = self.table["value"].astype(float)
        for c in ("lens", "method", "metric", "mode", "label_source", "bucket"):
            col = self.table[c].astype(object)
            self.table[c] = col.where(col.notna(), None)

    # ------------------------------------------------------------------ tables
    def to_dataframe(self) -> Any:
        """A copy of the long table."""
        return self.table.copy()

    def _select(self, metric: str, k: int | None) -> Any:
        t = self.table
        if metric not in set(t["metric"]):
            raise ValueError(
                f"metric={metric!r} is not in this evaluation; it has {sorted(set(t['metric']))}"
            )
        t = t[t["metric"] == metric]
        if metric == "precision":
            k = 1 if k is None else k
            if k not in set(t["k"].dropna().astype(int)):
                raise ValueError(
                    f"k={k} is not in this evaluation; it has {sorted(set(t['k'].dropna()))}"
                )
            t = t[t["k"] == k]
        return t

    def pivot(self, metric: str = "precision", k: int | None = None, n_ahead: int | None = None,
              bucket: str | None = None) -> Any:
        """A ``layer x lens`` table of one metric (columns ``lens/method[/N=n]``).

        Baseline rows are dropped (see ``to_dataframe()``); rows with a bucket are used only
        when ``bucket`` is given.
        """
        t = self._select(metric, k)
        t = t[t["mode"] != "baseline"]
        t = t[t["bucket"].isna()] if bucket is None else t[t["bucket"] == bucket]
        if n_ahead is not None:
            t = t[t["n_ahead"] == n_ahead]
        multi_n = t["n_ahead"].nunique() > 1
        col = t["lens"].astype(str)
        plain = t["method"].astype(str).isin(["", "None", "nan"]) | (t["method"] == t["lens"])
        col = col.where(plain, col + "/" + t["method"].astype(str))
        if multi_n:
            col = col + "/N=" + t["n_ahead"].astype(str)
        t = t.assign(column=col)
        return t.pivot_table(index="layer", columns="column", values="value", aggfunc="mean")

    # ------------------------------------------------------------------ figures
    def plot(self, metric: str = "precision", k: int | None = 1, *, ax: Any = None,
             title: str | None = None) -> Any:
        """One panel per ``n_ahead``, one line per lens/method, baselines as horizontal lines.

        This is the Future Lens paper's figure (precision@1 per layer and N) when called on a
        Future Lens evaluation.

        Returns:
            A matplotlib Figure.
        """
        import matplotlib

        matplotlib.use("Agg", force=False) if matplotlib.get_backend() == "" else None
        import matplotlib.pyplot as plt

        t = self._select(metric, k if metric == "precision" else None)
        t = t[t["bucket"].isna()]
        ns = sorted(set(t["n_ahead"].dropna().astype(int))) or [0]
        if ax is None:
            fig, axes = plt.subplots(1, len(ns), figsize=(4.2 * len(ns), 3.4), squeeze=False,
                                     sharey=True)
            axes = list(axes[0])
        else:
            fig, axes = ax.figure, [ax] * len(ns)
        for a, n in zip(axes, ns):
            tn = t[t["n_ahead"] == n]
            lines = tn[tn["mode"] != "baseline"]
            for (lens, method, mode), g in lines.groupby(["lens", "method", "mode"], dropna=False,
                                                         sort=False):
                g = g.sort_values("layer")
                label = str(lens) if str(method) in ("", "nan", "None", str(lens)) else \
                    f"{lens}/{method}"
                if mode not in ("same_position",):
                    label += f" ({mode})"
                a.plot(g["layer"].astype(float), g["value"], marker="o", ms=3, label=label)
            for _, row in tn[tn["mode"] == "baseline"].iterrows():
                a.axhline(row["value"], ls="--", color="gray", lw=1,
                          label=f"{row['method'] or 'baseline'}")
            a.set_xlabel("layer (-1 = embed)")
            a.set_title(f"N={n}" if len(ns) > 1 or n else (title or metric))
            a.grid(alpha=0.3)
        ylabel = f"precision@{k}" if metric == "precision" else f"{metric} (nats)" \
            if metric in _LOWER_IS_BETTER else metric
        axes[0].set_ylabel(ylabel)
        axes[-1].legend(fontsize=7, loc="best")
        if title:
            fig.suptitle(title)
        fig.tight_layout()
        return fig

    def _figure_png(self, metric: str, k: int | None) -> str:
        import matplotlib.pyplot as plt

        fig = self.plot(metric, k)
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=90)
        plt.close(fig)
        return base64.b64encode(buf.getvalue()).decode()

    def _repr_html_(self) -> str:
        parts = ["<div class='futurelens-eval'>",
                 f"<h4>LensEvaluation ({html.escape(str(self.meta.get('title', '')))})</h4>"]
        metrics = [m for m in ("precision", "surprisal", "kl", "entropy", "ce")
                   if m in set(self.table["metric"])]
        for m in metrics:
            k = 1 if m == "precision" else None
            try:
                png = self._figure_png(m, k)
            except Exception as err:  # pragma: no cover - figure failures must not hide the table
                parts.append(f"<p>figure for {m} failed: {html.escape(str(err))}</p>")
                continue
            parts.append(f"<img alt='{m}' src='data:image/png;base64,{png}'/>")
        try:
            piv = self.pivot(metrics[0]) if metrics else self.table
            parts.append(piv.round(4).to_html())
        except ValueError:
            parts.append(self.table.head(50).to_html())
        parts.append("</div>")
        return "\n".join(parts)

    def show(self) -> Any:
        """Display the figures (inline base64 PNG) and a table in Jupyter; returns the HTML."""
        h = self._repr_html_()
        try:
            from IPython.display import HTML, display

            display(HTML(h))
        except ImportError:  # pragma: no cover
            pass
        return h

    # ------------------------------------------------------------------ persistence
    def save(self, path: str | os.PathLike[str]) -> None:
        """Write ``path`` (CSV table) and ``path + '.json'`` (meta), atomically."""
        from futurelens_tl._io import atomic_write, write_text

        path = os.fspath(path)
        atomic_write(path, lambda tmp: self.table.to_csv(tmp, index=False))
        write_text(path + ".json", json.dumps(self.meta, indent=2, default=str))

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> LensEvaluation:
        """Read what :meth:`save` wrote."""
        import pandas as pd

        path = os.fspath(path)
        table = pd.read_csv(path, dtype={"bucket": "object", "method": "object"})
        meta: dict[str, Any] = {}
        if os.path.exists(path + ".json"):
            with open(path + ".json", encoding="utf-8") as f:
                meta = json.load(f)
        for c in ("lens", "method", "label_source", "metric", "mode"):
            table[c] = table[c].astype(object)
        return cls(table, meta)

    @classmethod
    def concat(cls, evals: Sequence[LensEvaluation]) -> LensEvaluation:
        """Stack several evaluations (tables concatenated, metas listed under ``parts``)."""
        import pandas as pd

        if not evals:
            raise ValueError("evals is empty")
        table = pd.concat([e.table for e in evals], ignore_index=True)
        return cls(table, {"parts": [e.meta for e in evals]})


