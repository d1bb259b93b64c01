"""Tables, figures and the offline HTML view of :class:`Layer0Decomposition`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from futurelens_tl.attention.layer0._util import _display_html


class _ViewsMixin:
    """Views of :class:`Layer0Decomposition` (figures come from :mod:`futurelens_tl.viz.layer0`)."""

    W_Q: Any
    W_K: Any
    rope: Any
    notes: tuple[str, ...]

    def default_query_pos(self) -> int:
        """Query position used by summaries: 500 (the paper's), or ``n_ctx // 2`` if smaller.

        The middle of a short context, not its end: the last positions are rarely trained (on
        the toy model the fixed-query profile of position ``n_ctx - 1`` is inverted while every
        earlier query shows the recency bias; GPT-2's last position embeddings are undertrained
        too, ref §9.6).
        """
        return min(500, self.n_ctx // 2)

    def to_dataframe(self, query_pos: int | None = None) -> Any:
        """One row per head: norms of ``W^QK``/``b^QK`` and predicted positional attention.

        Columns: ``head, qk_frobenius, bqk_norm, pos_attn_self, pos_attn_prev,
        pos_attn_expected_distance`` (at ``query_pos``, default :meth:`default_query_pos`),
        plus ``basis``, ``norm`` and ``positions``; rotary models add ``kv_group`` and the
        positional kernel relative to self, ``kernel_prev = f(1) - f(0)`` (negative: the
        reference token prefers itself over its predecessor). ``W^QK`` is taken at offset 0.
        """
        import pandas as pd

        i = self.default_query_pos() if query_pos is None else self._check_query_pos(query_pos)
        att = self.positional_attention(i).double()
        dist = torch.arange(i, -1, -1, dtype=torch.float64)
        wq, wk = self.W_Q.double().cpu(), self.W_K.double().cpu()
        gram = (wq.transpose(-1, -2) @ wq) * (wk.transpose(-1, -2) @ wk)  # elementwise
        qk = gram.sum((-1, -2)).clamp_min(0).sqrt()  # ||W_Q W_K^T||_F
        cols: dict[str, Any] = {
            "head": np.arange(self.n_heads),
            "qk_frobenius": qk.numpy(),
            "bqk_norm": self.b_QK.double().norm(dim=-1).cpu().numpy(),
            "pos_attn_self": att[:, i].numpy(),
            "pos_attn_prev": att[:, i - 1].numpy() if i > 0 else np.zeros(self.n_heads),
            "pos_attn_expected_distance": (att * dist).sum(-1).numpy(),
            "basis": self.basis,
            "norm": str(self.norm),
            "positions": self.positions,
        }
        if self.rope is not None:
            f = self.positional_kernel(min(1, self.n_ctx - 1)).double()
            cols["kv_group"] = self.kv_group.cpu().numpy()
            cols["kernel_prev"] = (f[:, -1] - f[:, 0]).numpy()
        return pd.DataFrame(cols)

    def plot_position_heatmap(self, query_pos: int | None = None, sigma: str = "mean",
                              last: int | None = 64) -> Any:
        """Heatmap of the mean-over-tokens position logit over (head, key) for one query.

        Absolute: ``mean_v T_pp``; rotary: the positional kernel ``f(i - j)`` (matplotlib).
        """
        from futurelens_tl.viz.layer0 import position_heatmap

        i = self.default_query_pos() if query_pos is None else self._check_query_pos(query_pos)
        start = 0 if last is None else max(0, i + 1 - last)
        if self.rope is not None:
            arr = self._position_row(i).numpy()
            title = f"positional kernel f(i - j) ({self.reference} reference token), query {i}"
        else:
            df = self.position_terms(i, sigma)
            arr = df[df.term == "pp"].pivot(index="head", columns="key_pos", values="mean")
            arr = arr.to_numpy()
            title = f"T_pp (mean over key tokens), query {i}"
        return position_heatmap(arr[:, start:], key_start=start, query_pos=i, title=title)

    def plot_positional_attention(self, query_pos: int | None = None,
                                  last: int | None = 32) -> Any:
        """Predicted positional attention per head (matplotlib).

        Absolute: one curve per query scale (mean / max / min of ``Sigma[i, :]``); rotary: the
        reference-token curve (sigma is exact per token, no query-scale choice).
        """
        from futurelens_tl.viz.layer0 import positional_attention_curves

        i = self.default_query_pos() if query_pos is None else self._check_query_pos(query_pos)
        scales = ("mean",) if self.rope is not None else ("mean", "max", "min")
        curves = {s: self.positional_attention(i, s).numpy() for s in scales}
        start = 0 if last is None else max(0, i + 1 - last)
        label = "reference token" if self.rope is not None else "sigma_i={}"
        return positional_attention_curves({k: v[:, start:] for k, v in curves.items()},
                                           key_start=start, query_pos=i, label=label)

    def plot_position_terms(self, query_pos: int | None = None, heads: Sequence[int] | None = None,
                            last: int | None = 64) -> Any:
        """Position terms (mean and 95 % band over key tokens) per head (matplotlib)."""
        from futurelens_tl.viz.layer0 import position_term_bands

        i = self.default_query_pos() if query_pos is None else self._check_query_pos(query_pos)
        df = self.position_terms(i, max_distance=None if last is None else min(i, last - 1))
        if heads is not None:
            df = df[df["head"].isin([self._check_head(h) for h in heads])]
        return position_term_bands(df, query_pos=i)

    def plot_position_profile(self, query_pos: int | Sequence[int] | None = None,
                              max_distance: int | None = None) -> Any:
        """Fixed-query relative profile ``z[i, i - Delta] - z[i, i]`` per head (matplotlib)."""
        from futurelens_tl.viz.layer0 import position_profile_lines

        df = self.position_terms_by_distance(max_distance, query_pos=query_pos)
        return position_profile_lines(df)

    def top_prefix_table_html(self, suffixes: Sequence[int] | Sequence[str], heads: Sequence[int],
                              k: int = 5) -> str:
        """HTML table: one row per (suffix, head), top-``k`` rendered prefix+suffix strings."""
        import pandas as pd

        from futurelens_tl.viz.layer0 import top_prefix_table

        frames = []
        for h in heads:
            df = self.top_prefixes(list(suffixes) if not isinstance(suffixes, str) else suffixes,
                                   h, k)
            df["head"] = h
            frames.append(df)
        return top_prefix_table(pd.concat(frames, ignore_index=True))

    def _repr_html_(self) -> str:
        from futurelens_tl.viz.layer0 import fig_to_html, html_page, html_table, notes_html

        i = self.default_query_pos()
        extra = (f", positions: <b>rotary</b> (rotary_dim {self.rope.rotary_dim}, "
                 f"rope {self.rope.rope_type}), reference token: <b>{self.reference}</b>"
                 if self.rope is not None else ", positions: <b>absolute</b>")
        parts = [
            f"<p>basis: <b>{self.basis}</b>, norm: <b>{self.norm}</b>{extra}, heads: "
            f"{self.n_heads}, d_head: {self.d_head}, vocab: {self.d_vocab}, n_ctx: {self.n_ctx}, "
            f"fingerprint: <code>{self.fingerprint}</code></p>",
            notes_html(self.notes),
            html_table(self.to_dataframe(i).round(4)),
            fig_to_html(self.plot_positional_attention(i)),
            fig_to_html(self.plot_position_heatmap(i)),
        ]
        return html_page("Layer-0 decomposition (weights only)", parts)

    def show(self) -> Any:
        """Display the offline HTML summary (Jupyter) and return it."""
        return _display_html(self._repr_html_())
