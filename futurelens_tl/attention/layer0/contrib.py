"""Which term drives each head: leave-one-term-out KL and integrated shares (ref §7).

The leave-one-out measure copies the published code (no ``1/sqrt(d')`` inside the softmaxes
unless ``scaled=True``; ``kl_div`` ``reduction="mean"``, i.e. divided by the row length). The
additive alternative (the author's blog note, ref §7) is integrated gradients from the uniform
pattern: the shares sum exactly to ``KL(softmax(z) || uniform)``. Works for the six absolute terms
and the four rotary ones alike (``term_names``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from jaxtyping import Float, Int
from torch import Tensor

from futurelens_tl.attention.layer0._util import _display_html, _gauss_legendre_01
from futurelens_tl.progress import progress


@dataclass(repr=False)
class Layer0Contributions:
    """Per-term contributions to layer-0 attention (ref §7), averaged over documents.

    Attributes:
        loo: ``[term, head, pos]`` leave-one-term-out ``KL(P || Q_t) / (i + 1)`` (mean over
            documents that reach position ``i``).
        integrated: ``[term, head, pos]`` additive integrated-gradient shares ``I_t``; they sum
            over terms to ``total``.
        total: ``[head, pos]`` ``KL(softmax(z) || uniform_{i+1})`` (unnormalised by ``i + 1``).
        n_docs: ``[pos]`` number of documents covering each position.
        scaled: Whether the logits were divided by ``sqrt(d')`` (the paper's code does not).
        term_names: Names along the ``term`` axis (the decomposition's ``term_names``).
    """

    loo: Float[Tensor, "term head pos"]
    integrated: Float[Tensor, "term head pos"]
    total: Float[Tensor, "head pos"]
    n_docs: Int[Tensor, " pos"]
    scaled: bool
    term_names: tuple[str, ...] = ("ee", "ep", "pe", "pp", "e", "p")

    def __repr__(self) -> str:
        t, h, n = self.loo.shape
        return (f"Layer0Contributions(terms={list(self.term_names)}, heads={h}, positions={n}, "
                f"documents={int(self.n_docs.max()) if n else 0}, scaled={self.scaled})")

    def to_dataframe(self) -> Any:
        """Long table: ``term, head, position, loo, integrated, total, n_docs``."""
        import pandas as pd

        t, h, n = self.loo.shape
        ti, hi, pi = np.meshgrid(np.arange(t), np.arange(h), np.arange(n), indexing="ij")
        return pd.DataFrame({
            "term": np.array(self.term_names)[ti.ravel()],
            "head": hi.ravel(),
            "position": pi.ravel(),
            "loo": self.loo.reshape(-1).cpu().numpy(),
            "integrated": self.integrated.reshape(-1).cpu().numpy(),
            "total": self.total[hi.ravel(), pi.ravel()].cpu().numpy(),
            "n_docs": self.n_docs[pi.ravel()].cpu().numpy(),
        })

    def summary(self, skip_first: bool = True) -> Any:
        """Per (head, term) mean over positions (position 0 dropped: a single key)."""
        import pandas as pd

        sl = slice(1, None) if skip_first and self.loo.shape[-1] > 1 else slice(None)
        loo = self.loo[..., sl].mean(-1).cpu().numpy()
        ig = self.integrated[..., sl].mean(-1).cpu().numpy()
        rows = []
        for ti, name in enumerate(self.term_names):
            for h in range(loo.shape[1]):
                rows.append({"head": h, "term": name, "loo": float(loo[ti, h]),
                             "integrated": float(ig[ti, h])})
        return pd.DataFrame(rows)

    def plot(self, measure: str = "loo") -> Any:
        """Per-head bars of each term's mean contribution (matplotlib figure)."""
        from futurelens_tl.viz.layer0 import term_contribution_bars

        if measure not in ("loo", "integrated"):
            raise ValueError(f"measure={measure!r}; allowed 'loo' or 'integrated'")
        df = self.summary()
        arr = df.pivot(index="term", columns="head", values=measure).loc[list(self.term_names)]
        title = ("leave-one-term-out KL / (i+1)" if measure == "loo"
                 else "integrated contribution (sums to KL to uniform)")
        return term_contribution_bars(arr.to_numpy(), list(self.term_names), title=title,
                                      log=measure == "loo")

    def _repr_html_(self) -> str:
        from futurelens_tl.viz.layer0 import fig_to_html, html_page, html_table

        return html_page("Layer-0 term contributions", [
            fig_to_html(self.plot("loo")), fig_to_html(self.plot("integrated")),
            html_table(self.summary().pivot(index="head", columns="term", values="loo")),
            "<p>Control: a term that is constant along keys gets exactly 0 in both measures; "
            "the leave-one-out values do not add up (the integrated ones sum to the KL of the "
            "pattern from uniform, the attention's total departure from no preference).</p>",
        ])

    def show(self) -> Any:
        """Display the offline HTML view (in Jupyter) and return it."""
        return _display_html(self._repr_html_())



def _contrib_one(
    t: Float[Tensor, "term head q k"], nodes: Tensor, weights: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """LOO KL / (i+1), integrated shares and KL-to-uniform for one sequence's terms."""
    n = t.shape[-1]
    mask = torch.ones(n, n, dtype=torch.bool).tril()
    z = t.sum(0)  # [h, n, n]
    logp = torch.log_softmax(z.masked_fill(~mask, float("-inf")), -1)
    p = logp.exp()
    row_len = torch.arange(1, n + 1, dtype=torch.float64)
    loo = []
    for k in range(t.shape[0]):
        logq = torch.log_softmax((z - t[k]).masked_fill(~mask, float("-inf")), -1)
        kl = torch.where(mask, p * (logp - logq), torch.zeros(()).double()).sum(-1)
        loo.append(kl / row_len)
    avg = torch.zeros_like(p)
    for tau, w in zip(nodes.tolist(), weights.tolist(), strict=True):
        avg += w * torch.softmax((tau * z).masked_fill(~mask, float("-inf")), -1)
    diff = (p - avg).masked_fill(~mask, 0.0)
    ig = (t * diff[None]).sum(-1)  # [term, h, n]
    total = torch.where(mask, p * logp, torch.zeros(()).double()).sum(-1) + row_len.log()
    return torch.stack(loo), ig, total



class _ContributionsMixin:
    """:meth:`contributions` of :class:`Layer0Decomposition`."""

    def contributions(
        self,
        texts: str | Sequence[str] | Tensor | Sequence[Sequence[int]],
        *,
        scaled: bool = False,
        n_nodes: int = 16,
        n_panels: int = 4,
        verbose: bool = True,
    ) -> Layer0Contributions:
        """Leave-one-term-out KL and additive integrated contributions of the terms (§7).

        Per document and head, with ``S = sum_t T_t`` (exact per-token ``sigma_i``):
        ``C_t[i] = KL(softmax(S_i) || softmax(S_i - T_t,i)) / (i + 1)`` (PyTorch ``kl_div``
        ``reduction="mean"`` over the ``i + 1`` keys, as in the published code), with **no**
        ``1/sqrt(d')`` inside the softmaxes unless ``scaled=True``. The additive alternative
        ``I_t = z_t . (p(1) - int_0^1 p(tau) dtau)`` (Gauss-Legendre, ``n_panels x n_nodes``
        nodes) sums over terms to ``KL(softmax(z) || uniform)``. Computed in float64.

        Args:
            texts: Text(s) (each tokenised separately, BOS prepended by the model's
                tokenizer), a ``[batch, pos]`` tensor or a list of id sequences.
            scaled: Divide logits by ``sqrt(d')`` (the model's real pattern).
            n_nodes: Gauss-Legendre nodes per panel.
            n_panels: Panels on ``[0, 1]``.
            verbose: Progress bar.

        Returns:
            :class:`Layer0Contributions` averaged over documents per position.
        """
        seqs: list[Tensor]
        if isinstance(texts, str):
            seqs = [self._tokens(texts, "texts")[0]]
        elif isinstance(texts, Tensor):
            seqs = list(self._tokens(texts, "texts"))
        else:
            seqs = [self._tokens(t if isinstance(t, str) else list(t), "texts")[0] for t in texts]
        if not seqs:
            raise ValueError("texts is empty; give at least one document")
        n_max = max(int(s.shape[0]) for s in seqs)
        h = self.n_heads
        n_t = len(self.term_names)
        loo = torch.zeros(n_t, h, n_max, dtype=torch.float64)
        ig = torch.zeros(n_t, h, n_max, dtype=torch.float64)
        tot = torch.zeros(h, n_max, dtype=torch.float64)
        cnt = torch.zeros(n_max, dtype=torch.long)
        nodes, weights = _gauss_legendre_01(n_nodes, n_panels)
        for seq in progress(seqs, verbose=verbose, desc="contributions"):
            t = self._terms(seq[None])[0].double().cpu()  # [term, h, n, n]
            if scaled:
                t = t / self.attn_scale
            a, b, c = _contrib_one(t, nodes, weights)
            n = t.shape[-1]
            loo[..., :n] += a
            ig[..., :n] += b
            tot[:, :n] += c
            cnt[:n] += 1
        d = cnt.clamp_min(1).double()
        return Layer0Contributions(loo / d, ig / d, tot / d, cnt, scaled, self.term_names)

