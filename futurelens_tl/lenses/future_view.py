"""Future-token grid view (reference ``future-lens.md`` §4.4)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import Tensor

__all__ = ["FutureTokenView"]


@dataclass
class FutureTokenView:
    """Layer x position grid of the logit-lens top-1 followed by the Future Lens continuation.

    Attributes:
        layers: Row layers.
        input_tokens: Column labels (the prompt's tokens).
        ids: ``[layers, pos, 1 + n]`` token ids (logit-lens top-1, then the continuation).
        probs: ``[layers, pos, 1 + n]`` their probabilities.
        strings: Decoded ids.
        lens_name: The lens.
        target_layer: Cross-layer transplant target (None = same layer).
    """

    layers: list[int]
    input_tokens: list[str]
    ids: Tensor
    probs: Tensor
    strings: list[list[list[str]]]
    lens_name: str
    target_layer: int | None = None

    @property
    def mean_prob(self) -> Tensor:
        return self.probs.mean(-1)

    def to_dataframe(self) -> Any:
        import pandas as pd

        recs = []
        for i, layer in enumerate(self.layers):
            for j, tok in enumerate(self.input_tokens):
                recs.append({"layer": layer, "pos": j, "token": tok,
                             "logit_lens": self.strings[i][j][0],
                             "future": "".join(self.strings[i][j][1:]),
                             "mean_prob": float(self.mean_prob[i, j]),
                             "cross_layer_target": self.target_layer})
        return pd.DataFrame(recs)

    def _repr_html_(self) -> str:
        import html

        title = html.escape(self.lens_name) + (
            f" — cross-layer transplant into block {self.target_layer}"
            if self.target_layer is not None else "")
        head = "".join(f"<th>{html.escape(t)}</th>" for t in self.input_tokens)
        body = []
        for i in reversed(range(len(self.layers))):
            cells = []
            for j in range(len(self.input_tokens)):
                p = float(self.mean_prob[i, j])
                s = self.strings[i][j]
                tip = html.escape(" | ".join(f"{t!r}: {float(q):.2f}"
                                             for t, q in zip(s, self.probs[i, j])))
                cells.append(f"<td title='{tip}' style='background:rgba(31,119,180,{p:.2f})'>"
                             f"<b>{html.escape(s[0])}</b>{html.escape(''.join(s[1:]))}</td>")
            body.append(f"<tr><th>block {self.layers[i]}</th>{''.join(cells)}</tr>")
        return (f"<div><p>{title}</p><table style='font-family:monospace;font-size:11px'>"
                f"<tr><th></th>{head}</tr>{''.join(body)}</table></div>")

    def show(self) -> Any:
        try:
            from IPython.display import HTML

            return HTML(self._repr_html_())
        except ImportError:  # pragma: no cover
            return self._repr_html_()
