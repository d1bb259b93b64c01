"""Evaluate lenses per layer on a corpus: :func:`evaluate` -> :class:`LensEvaluation`.

The result is one LONG table (one row per lens, method, layer, n_ahead, metric, k, mode,
bucket) so logit, tuned and Future Lens results concatenate and plot together. Columns:

``lens, method, layer, n_ahead, metric, k, mode, token_fed, label_source, bucket, value, n``

* ``mode``: ``"same_position"`` (the lens at position t predicts token t+1+n_ahead from the
  model's own forward), ``"teacher_forced"`` / ``"free_running"`` (Future Lens prompt methods),
  ``"baseline"`` (n-gram baseline; ``layer`` is NA);
* ``metric``: ``precision`` (with ``k``), ``surprisal``, ``kl``, ``entropy``, ``ce`` (nats);
* ``label_source``: ``"model_greedy"`` (argmax of the model's own distribution at the target
  position; the Future Lens convention, future-lens.md §4.1) or ``"corpus"`` (the true token).
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

__all__ = ["COLUMNS", "LensEvaluation", "evaluate"]

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
        path = os.fspath(path)
        tmp = path + ".tmp"
        self.table.to_csv(tmp, index=False)
        os.replace(tmp, path)
        tmpm = path + ".json.tmp"
        with open(tmpm, "w", encoding="utf-8") as f:
            json.dump(self.meta, f, indent=2, default=str)
        os.replace(tmpm, path + ".json")

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


def _row(**kw: Any) -> dict[str, Any]:
    out = {c: None for c in COLUMNS}
    out.update(kw)
    return out


def _nan_to_none(x: float) -> float | None:
    return None if (x is None or (isinstance(x, float) and math.isnan(x))) else x


def evaluate(*args: Any, **kwargs: Any) -> LensEvaluation:
    """Not implemented yet (being written); the :class:`LensEvaluation` contract is final."""
    raise NotImplementedError("fl.evaluate is being implemented (issue 3)")


_ = (Tensor, torch)
