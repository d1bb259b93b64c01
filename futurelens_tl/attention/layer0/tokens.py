"""Token-token analyses: detokenization scores, top prefixes, AUROC (ref §6.2, §8, §11).

Absolute models use the position-averaged scale ``sigma_bar_v`` (ref §6.2). Rotary models need no
averaging: ``sigma_v`` is exact and the score of suffix ``s`` attending to the prefix ``u`` right
before it is ``T_ee(s -> u; Delta=1) = x_hat_s W~Q M(1) W~K^T x_hat_u^T`` (ref §12.2; ``distance``
selects another offset). Everything is evaluated from rank-``d'`` factors, never ``|V| x |V|``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from futurelens_tl.attention.layer0._util import _as_int_list
from futurelens_tl.attention.layer0.auroc import auroc_table
from futurelens_tl.attention.layer0.bigrams import BigramCounts, _as_bigram_counts


class _TokensMixin:
    """Token analyses of :class:`Layer0Decomposition`."""

    W_E: Any
    W_Q: Any
    W_K: Any
    rope: Any
    tokenizer: Any
    _cache: dict[str, Any]

    def _sigma_bar(self) -> Tensor:
        return self.sigma_stats()["sigma_bar"].to(self.dtype).to(self.W_E.device)

    def _check_offset(self, distance: int) -> int:
        if isinstance(distance, bool) or not isinstance(distance, (int, np.integer)) or not (
            0 <= distance < self.n_ctx
        ):
            raise ValueError(f"distance={distance!r} must be an int in 0..{self.n_ctx - 1}")
        if self.rope is None and distance != 1:
            raise ValueError("distance applies to rotary models; absolute-position token "
                             "scores do not depend on the offset (ref §6.2)")
        return int(distance)

    def _factors(self, head: int, distance: int = 1) -> tuple[Tensor, Tensor]:
        """``A_h``, ``B_h`` with ``T_ee(s -> u) = A_h[s] . B_h[u]`` (ref §11).

        Absolute: ``E W~Q_h / sigma_bar`` and ``E W~K_h / sigma_bar``. Rotary: the query factor
        rotated by the offset, ``x_hat W~Q_h M(Delta)`` and ``x_hat W~K_h`` (exact ``sigma_v``).
        """
        key = f"factors{head}:{distance}"
        if key not in self._cache:
            if self.rope is None:
                sb = self._sigma_bar()[:, None]
                self._cache[key] = (self.W_E @ self.W_Q[head] / sb,
                                    self.W_E @ self.W_K[head] / sb)
            else:
                xh = self._x_hat()
                self._cache[key] = (self.rope.rotate(xh @ self.W_Q[head], distance),
                                    self.rope.rotate(xh @ self.W_K[head], 0))
        return self._cache[key]

    def token_scores(
        self, suffix: int | Sequence[int] | Tensor, head: int, *, distance: int = 1
    ) -> Float[Tensor, "... d_vocab"]:
        """Detokenization scores ``T_ee(s -> u)`` over every prefix ``u`` (ref §6.2, §12.2).

        Absolute: ``e_s W^QK e_u^T / (sigma_bar_s sigma_bar_u)``. Rotary: the exact
        ``x_hat_s W~Q M(distance) W~K^T x_hat_u^T`` (default: the adjacent prefix, offset 1).
        From the rank-``d'`` factors (never ``|V| x |V|``; ref §11). Not divided by ``sqrt(d')``.

        Args:
            suffix: One token id (returns ``[d_vocab]``) or several (``[n, d_vocab]``).
            head: Head index.
            distance: Rotary models: query-key offset ``i - j``.

        Returns:
            Scores over prefixes.

        Examples:
            >>> import futurelens_tl as fl
            >>> dec = fl.decompose_first_layer(fl.toy_model())
            >>> dec.token_scores(5, head=0).shape == (dec.d_vocab,)
            True
        """
        h = self._check_head(head)
        dist = self._check_offset(distance)
        ids = _as_int_list(suffix, "suffix", self.d_vocab)
        a, b = self._factors(h, dist)
        out = a[ids] @ b.T
        single = isinstance(suffix, (int, np.integer)) or (
            isinstance(suffix, Tensor) and suffix.ndim == 0
        )
        return out[0] if single else out

    def bias_token_scores(self, *, distance: int = 1) -> Float[Tensor, "head d_vocab"]:
        """Bias-token term per key token (§6.2): absolute ``b^QK_h e_v^T mean_j 1/Sigma[j, v]``.

        Rotary: ``b~Q_h M(distance) W~K_h^T x_hat_v^T`` (zero without a query bias, as in
        Llama). The paper plots it against token frequency (Sec. 6.3). Not divided by
        ``sqrt(d')``.

        Returns:
            ``[head, d_vocab]``.
        """
        if self.rope is not None:
            dist = self._check_offset(distance)
            bq = self.rope.rotate(self.b_Q[:, None, :], dist)[:, 0]  # [h, d']
            keys = self.rope.rotate(torch.einsum("vd,hdk->hvk", self._x_hat(), self.W_K), 0)
            return torch.einsum("hk,hvk->hv", bq, keys).cpu()
        r_bar = self.sigma_stats()["r_bar"].to(self.dtype).to(self.W_E.device)
        return ((self.W_E @ self.b_QK.T).T * r_bar[None]).cpu()

    def _token_str(self, ids: Sequence[int]) -> list[str]:
        tk = self.tokenizer
        if tk is None:
            return [str(i) for i in ids]
        try:
            return [tk.decode([int(i)]) for i in ids]
        except Exception:  # pragma: no cover - exotic tokenizers
            return [str(i) for i in ids]

    def _suffix_ids(self, suffix: Any) -> list[int]:
        if isinstance(suffix, str):
            return [self._single_token(suffix)]
        if isinstance(suffix, (list, tuple)) and suffix and isinstance(suffix[0], str):
            return [self._single_token(s) for s in suffix]
        return _as_int_list(suffix, "suffix", self.d_vocab)

    def _single_token(self, text: str) -> int:
        tk = self.tokenizer
        if tk is None:
            raise ValueError(f"suffix={text!r} is text but no tokenizer is known; pass an id")
        ids = tk.encode(text, add_special_tokens=False)
        if len(ids) != 1:
            raise ValueError(f"suffix={text!r} is not a single token (tokenises to {ids})")
        return int(ids[0])

    def top_prefixes(
        self,
        suffix: int | str | Sequence[int] | Sequence[str] | Tensor,
        head: int,
        k: int = 10,
        *,
        distance: int = 1,
        chunk_size: int = 256,
    ) -> Any:
        """The ``k`` prefixes ``u`` with the highest ``T_ee(s -> u)`` for each suffix (ref §9.3).

        Suffix rows are evaluated in chunks against the factored keys (ref §11), then reduced
        with ``topk``.

        Args:
            suffix: Token id(s) or single-token string(s).
            head: Head index.
            k: Number of prefixes per suffix (``1..d_vocab``).
            distance: Rotary models: query-key offset (default 1, the adjacent prefix).
            chunk_size: Suffix rows per matmul.

        Returns:
            DataFrame ``suffix, suffix_str, rank, prefix, prefix_str, score, rendered``;
            ``rendered`` is prefix + suffix text with spaces shown as ``_`` (as in ref §9.3).

        Raises:
            ValueError: Out-of-range ids/head/k or a multi-token string.

        Examples:
            >>> import futurelens_tl as fl
            >>> dec = fl.decompose_first_layer(fl.toy_model())
            >>> len(dec.top_prefixes(5, head=0, k=3))
            3
        """
        import pandas as pd

        h = self._check_head(head)
        ids = self._suffix_ids(suffix)
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= self.d_vocab:
            raise ValueError(f"k={k!r} must be an int in 1..{self.d_vocab}")
        a, b = self._factors(h, self._check_offset(distance))
        vals, idx = [], []
        for c in range(0, len(ids), chunk_size):
            s = a[ids[c:c + chunk_size]] @ b.T
            v, i = torch.topk(s, k, dim=-1)
            vals.append(v.cpu())
            idx.append(i.cpu())
        vals_t, idx_t = torch.cat(vals), torch.cat(idx)
        uniq_pre = sorted(set(idx_t.reshape(-1).tolist()) | set(ids))
        strs = dict(zip(uniq_pre, self._token_str(uniq_pre), strict=True))
        rows = []
        for r, s in enumerate(ids):
            for rank in range(k):
                u = int(idx_t[r, rank])
                rows.append({
                    "suffix": s, "suffix_str": strs[s], "rank": rank + 1, "prefix": u,
                    "prefix_str": strs[u], "score": float(vals_t[r, rank]),
                    "rendered": (strs[u] + strs[s]).replace(" ", "_"),
                })
        return pd.DataFrame(rows)

    def detokenization_auroc(
        self,
        bigram_counts: BigramCounts | Tensor | np.ndarray | dict[tuple[int, int], int],
        heads: Sequence[int] | None = None,
        *,
        distance: int = 1,
        chunk_size: int = 512,
        method: str = "fast",
        verbose: bool = True,
    ) -> Float[Tensor, "head d_vocab"]:
        """Per-suffix detokenization AUROC for each head (ref §8).

        For suffix ``s`` and head ``h``, prefixes are ranked by ``T_ee(s -> u)``; positives are
        prefixes with ``c(u, s) > 0`` weighted by the count, negatives weight 1: exactly
        ``sklearn.metrics.roc_auc_score`` with ``sample_weight`` (``method="sklearn"`` calls it
        row by row; the default closed form gives the same numbers, one sort per suffix row).
        Suffixes never seen get 0 (they stay in the mean, as in the paper); a suffix preceded by
        every token gets NaN (no negatives).

        Args:
            bigram_counts: :class:`BigramCounts` (:func:`count_bigrams`), a dense or sparse
                ``[|V|, |V|]`` tensor indexed ``[prefix, suffix]``, or ``{(prefix, suffix): c}``.
            heads: Heads to score (default all).
            distance: Rotary models: query-key offset (default 1).
            chunk_size: Seen suffix rows per chunk (memory ``~ 2 * chunk_size * |V|`` floats).
            method: ``"fast"`` (default) or ``"sklearn"`` (reference, slow).
            verbose: Progress bar.

        Returns:
            ``[len(heads), d_vocab]`` AUROC per (head, suffix); ``.mean(-1)`` is the head score.
        """
        bc = _as_bigram_counts(bigram_counts, self.d_vocab)
        hs = list(range(self.n_heads)) if heads is None else [self._check_head(h) for h in heads]
        if not hs:
            raise ValueError("heads is empty; pass None for all heads")
        dist = self._check_offset(distance)
        return auroc_table(lambda h: self._factors(h, dist), hs, bc, chunk_size=chunk_size,
                           method=method, verbose=verbose)

    def detokenization_table(
        self,
        bigram_counts: BigramCounts | Tensor | np.ndarray | dict[tuple[int, int], int],
        *,
        auroc: Tensor | None = None,
        verbose: bool = False,
    ) -> Any:
        """Per-head detokenization AUROC with its controls and 95 % intervals (ref §8, §9.2).

        Columns: ``mean_auroc`` (the paper's: all suffixes, unseen = 0) with its chance level
        ``chance_all = 0.5 * frac_seen`` (a random ranking scores 0.5 on every seen suffix and
        0 on the unseen ones); ``mean_auroc_seen`` (seen suffixes only, chance 0.5) with a
        normal-approximation 95 % interval over suffixes (``ci_lo``, ``ci_hi``);
        ``weighted_auroc`` (weighted by suffix frequency, the post-paper variant);
        ``n_seen``. A head below chance on seen suffixes ranks the observed prefixes *below*
        unobserved ones (it attends away from the preceding subword: to itself or by
        position), which the paper also finds for several GPT-2 heads.

        Args:
            bigram_counts: As in :meth:`detokenization_auroc`.
            auroc: A precomputed :meth:`detokenization_auroc` result (all heads) to reuse.
            verbose: Progress bar.

        Returns:
            DataFrame, one row per head.
        """
        import pandas as pd

        bc = _as_bigram_counts(bigram_counts, self.d_vocab)
        auc = self.detokenization_auroc(bc, verbose=verbose) if auroc is None else auroc
        totals = torch.from_numpy(bc.suffix_totals()).double()
        seen = totals > 0
        n_seen = int(seen.sum())
        a_seen = auc[:, seen].double()
        ok = ~torch.isnan(a_seen)
        m = torch.where(ok, a_seen, 0).sum(-1) / ok.sum(-1).clamp_min(1)
        var = (torch.where(ok, a_seen - m[:, None], 0) ** 2).sum(-1) / (ok.sum(-1) - 1).clamp_min(1)
        half = 1.96 * (var / ok.sum(-1).clamp_min(1)).sqrt()
        w = torch.where(ok, totals[seen][None].expand_as(a_seen), 0)
        return pd.DataFrame({
            "head": np.arange(auc.shape[0]),
            "mean_auroc": auc.nan_to_num(0).mean(-1).numpy(),
            "chance_all": 0.5 * n_seen / self.d_vocab,
            "mean_auroc_seen": m.numpy(),
            "ci_lo": (m - half).numpy(),
            "ci_hi": (m + half).numpy(),
            "chance_seen": 0.5,
            "weighted_auroc": ((torch.where(ok, a_seen, 0) * w).sum(-1)
                               / w.sum(-1).clamp_min(1e-300)).numpy(),
            "n_seen": n_seen,
        })
