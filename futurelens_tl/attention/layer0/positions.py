"""Weight-only position analyses (ref §6.1, §6.3; rotary: the addendum's positional kernel).

Absolute models: ``T_pp``/``T_p`` with the query scale fixed and the key scale varying over the
sigma table. Rotary models: the positional kernel ``f_h(Delta) = q_bar M(Delta) k_bar^T`` of the
reference token (exact; biases included) and, for bands, ``q_bar M(Delta) k_v^T`` over key tokens.

Profiles against distance are **fixed-query** (:meth:`position_terms_by_distance`): averaging a
position logit over different query sets per distance inverts the recency profile on the toy
model (reference addendum, "positional profile pitfall").
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from futurelens_tl.attention.layer0._util import _percentile_rows


class _PositionsMixin:
    """Position analyses of :class:`Layer0Decomposition`."""

    W_Q: Any
    W_K: Any
    W_pos: Any
    b_Q: Any
    rope: Any
    _cache: dict[str, Any]

    # ------------------------------------------------------------------ shared pieces
    def _pos_proj(self) -> tuple[Tensor, Tensor]:
        """``W_pos W~Q_h`` and ``W_pos W~K_h``, ``[head, n_ctx, d_head]`` each (cached)."""
        if "pos_proj" not in self._cache:
            self._cache["pos_proj"] = (torch.einsum("nd,hdk->hnk", self.W_pos, self.W_Q),
                                       torch.einsum("nd,hdk->hnk", self.W_pos, self.W_K))
        return self._cache["pos_proj"]

    def _pos_coeffs(self, query_pos: int, sigma: str) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        """``a_pp[h, j] = p_i W^QK p_j^T / sigma_bar_i`` and ``a_p[h, j] = b^QK p_j^T``, j <= i."""
        st = self.sigma_stats()
        i = query_pos
        qp, kp = self._pos_proj()
        kp = kp[:, : i + 1]
        sig_i = st[f"sigma_{sigma}"][i].to(self.dtype)
        a_pp = torch.einsum("hk,hnk->hn", qp[:, i], kp) / sig_i
        a_p = torch.einsum("hk,hnk->hn", self.b_Q, kp)
        return a_pp.cpu(), a_p.cpu(), st

    def positional_kernel(self, max_distance: int | None = None) -> Float[Tensor, "head delta"]:
        """Rotary models: ``f_h(Delta) = q_bar M(Delta) k_bar^T`` for ``Delta = 0..max`` (addendum).

        The pure positional kernel of the reference token (:attr:`reference`), the ``T_pp``
        analogue; exact, query-position independent. Not divided by ``sqrt(d')``.

        Args:
            max_distance: Largest offset (default ``n_ctx - 1``).

        Returns:
            ``[head, max_distance + 1]``.
        """
        if self.rope is None:
            raise ValueError("positional_kernel applies to rotary models; absolute models have "
                             "T_pp over (query, key) positions: see position_terms()")
        m = self._check_distance(max_distance)
        qb, kb = self._reference_qk()
        d = torch.arange(m + 1)
        qr = self.rope.rotate(qb[:, None, :].expand(-1, m + 1, -1), d)  # [h, D, d']
        k0 = self.rope.rotate(kb[:, None, :], 0)  # [h, 1, d']
        return (qr * k0).sum(-1).cpu()

    def _check_distance(self, max_distance: int | None) -> int:
        n = self.n_ctx
        m = n - 1 if max_distance is None else max_distance
        if isinstance(m, bool) or not isinstance(m, (int, np.integer)) or not 0 <= m < n:
            raise ValueError(f"max_distance={max_distance!r} is out of range; allowed 0..{n - 1}")
        return int(m)

    def _position_row(self, query_pos: int, sigma: str = "mean") -> Tensor:
        """Mean-over-tokens position logit of query ``i`` over keys ``0..i``, ``[head, i + 1]``."""
        if self.rope is not None:
            f = self.positional_kernel(query_pos)  # [h, Delta]
            return f.flip(-1)  # key j = i - Delta
        a_pp, a_p, st = self._pos_coeffs(query_pos, sigma)
        return (a_pp + a_p) * st["r_mean"][: query_pos + 1].to(a_pp.dtype)

    # ------------------------------------------------------------------ public
    def positional_attention(
        self, query_pos: int, sigma: str = "mean"
    ) -> Float[Tensor, "head key"]:
        """Predicted positional attention from weights alone (ref §6.1; rotary: addendum).

        Absolute: ``alpha_hat[h, j] = softmax_{j <= i} (1/sqrt(d')) mean_v (p_i W^QK p_j^T /
        sigma_bar_i + b^QK p_j^T) / Sigma[j, v]``, with the query scale ``sigma_bar_i`` = mean /
        max / min over tokens of ``Sigma[i, :]``, evaluated exactly via per-position statistics
        (§6.3). Rotary: ``softmax_{j <= i} f(i - j) / sqrt(d')`` with the positional kernel of
        the reference token; ``sigma`` must be ``"mean"`` there (sigma is exact per token, no
        query-scale choice exists).

        Args:
            query_pos: Query position ``i`` in ``0..n_ctx-1``.
            sigma: ``"mean"``, ``"max"`` or ``"min"`` query scale (absolute models).

        Returns:
            ``[head, query_pos + 1]`` attention over key positions ``0..i``.

        Raises:
            ValueError: ``query_pos`` out of range or an unknown ``sigma``.

        Examples:
            >>> import futurelens_tl as fl
            >>> dec = fl.decompose_first_layer(fl.toy_model())
            >>> dec.positional_attention(10).shape
            torch.Size([4, 11])
        """
        i = self._check_query_pos(query_pos)
        self._check_sigma(sigma)
        if self.rope is not None and sigma != "mean":
            raise ValueError(f"sigma={sigma!r}: rotary models have an exact per-token scale; "
                             "only sigma='mean' (the reference token) is defined")
        return torch.softmax(self._position_row(i, sigma) / self.attn_scale, dim=-1)

    def position_terms(
        self, query_pos: int, sigma: str = "mean", band: tuple[float, float] = (2.5, 97.5),
        *, max_distance: int | None = None,
    ) -> Any:
        """Weight-only position terms for one query position with a band over tokens (§6.1).

        Absolute: ``T_pp[h, j](v) = p_i W^QK p_j^T / (sigma_bar_i Sigma[j, v])`` and
        ``T_p[h, j](v) = b^QK p_j^T / Sigma[j, v]``: mean over ``v`` and the 2.5-97.5 percentile
        band (ends swap for negative coefficients; exact with linear interpolation, §6.3).
        Rotary: term ``"pp"`` is ``f(i - j)`` (``mean`` column) with the band of
        ``q_bar M(i - j) k_v^T`` over key tokens ``v`` (reference query, real keys).
        Not divided by ``sqrt(d')``.

        Args:
            query_pos: Query position ``i``.
            sigma: Query scale ``"mean"``, ``"max"`` or ``"min"`` (absolute models).
            band: Only ``(2.5, 97.5)`` is precomputed.
            max_distance: Only keys ``j >= i - max_distance`` (default all).

        Returns:
            DataFrame with ``head, key_pos, distance, term, mean, lo, hi``; terms ``pp``, ``p``,
            ``pp+p`` (absolute) or ``pp`` (rotary).
        """
        import pandas as pd

        i = self._check_query_pos(query_pos)
        self._check_sigma(sigma)
        if tuple(band) != (2.5, 97.5):
            raise ValueError(f"band={band!r}; only (2.5, 97.5) is supported (ref §6.1)")
        m = i if max_distance is None else min(self._check_distance(max_distance), i)
        if self.rope is not None:
            return self._rotary_position_terms(i, m)
        a_pp, a_p, st = self._pos_coeffs(i, sigma)
        rm, rl, rh = (st[k][: i + 1].to(a_pp.dtype) for k in ("r_mean", "r_lo", "r_hi"))
        frames = []
        keep = slice(i - m, i + 1)
        for name, a in (("pp", a_pp), ("p", a_p), ("pp+p", a_pp + a_p)):
            lo = torch.where(a >= 0, a * rl, a * rh)[:, keep]
            hi = torch.where(a >= 0, a * rh, a * rl)[:, keep]
            hh, jj = np.meshgrid(np.arange(self.n_heads), np.arange(i - m, i + 1), indexing="ij")
            frames.append(pd.DataFrame({
                "head": hh.ravel(), "key_pos": jj.ravel(), "distance": i - jj.ravel(),
                "term": name, "mean": (a * rm)[:, keep].reshape(-1).numpy(),
                "lo": lo.reshape(-1).numpy(), "hi": hi.reshape(-1).numpy(),
            }))
        return pd.concat(frames, ignore_index=True)

    def _rotary_position_terms(self, i: int, m: int, chunk: int = 32) -> Any:
        import pandas as pd

        qb, _ = self._reference_qk()
        f = self.positional_kernel(m)  # [h, m + 1]
        keys = self.rope.rotate(torch.einsum("vd,hdk->hvk", self._x_hat(), self.W_K)
                                + self.b_K[:, None, :], 0)  # [h, V, d']
        lo = torch.empty_like(f)
        hi = torch.empty_like(f)
        for a in range(0, m + 1, chunk):
            d = torch.arange(a, min(a + chunk, m + 1))
            qr = self.rope.rotate(qb[:, None, :].expand(-1, d.numel(), -1), d)  # [h, c, d']
            s = (qr @ keys.transpose(-1, -2)).cpu()  # [h, c, V]
            lo[:, d] = _percentile_rows(s, 2.5).to(lo.dtype)
            hi[:, d] = _percentile_rows(s, 97.5).to(hi.dtype)
        hh, dd = np.meshgrid(np.arange(self.n_heads), np.arange(m + 1), indexing="ij")
        return pd.DataFrame({
            "head": hh.ravel(), "key_pos": i - dd.ravel(), "distance": dd.ravel(), "term": "pp",
            "mean": f.reshape(-1).numpy(), "lo": lo.reshape(-1).numpy(),
            "hi": hi.reshape(-1).numpy(),
        }).sort_values(["head", "key_pos"], ignore_index=True)

    def position_logits(self, sigma: str = "mean") -> Float[Tensor, "head query key"]:
        """Mean-over-tokens position logits for every (query, key), ``[head, n_ctx, n_ctx]``.

        Absolute: ``mean_v (T_pp + T_p)``; rotary: the Toeplitz matrix ``f(i - j)``. Entries with
        ``key > query`` are 0. Not divided by ``sqrt(d')``.
        """
        self._check_sigma(sigma)
        if self.rope is not None:
            f = self.positional_kernel()
            n = f.shape[-1]
            idx = (torch.arange(n)[:, None] - torch.arange(n)[None, :]).clamp_min(0)
            return (f[:, idx]).tril()
        st = self.sigma_stats()
        q, k = self._pos_proj()
        sig_q = st[f"sigma_{sigma}"].to(self.dtype).to(q.device)
        r = st["r_mean"].to(self.dtype).to(q.device)
        pp = (q @ k.transpose(-1, -2)) / sig_q[None, :, None]
        bp = torch.einsum("hk,hnk->hn", self.b_Q, k)[:, None, :]
        out = (pp + bp) * r[None, None, :]
        return out.tril().cpu()

    def position_terms_by_distance(
        self,
        max_distance: int | None = None,
        sigma: str = "mean",
        *,
        query_pos: int | Sequence[int] | None = None,
    ) -> Any:
        """Fixed-query relative position profile ``z[i, i - Delta] - z[i, i]`` (ref §6.1, addendum).

        ``z`` is the mean-over-tokens position logit (absolute: ``mean_v (T_pp + T_p)`` with
        query scale ``sigma``; rotary: the positional kernel ``f``). For each requested query
        position ``i`` the profile is read along that one row, relative to the self key, so a
        recency bias shows as values that fall below 0 with distance. Every query in the set
        contributes at every distance (``max_distance <= min(query_pos)``), so the ``mean`` over
        queries never mixes different query sets per distance (the pitfall that inverted the
        profile before). A per-row constant does not change the softmax, so the profile is what
        the pattern sees.

        Args:
            max_distance: Largest distance (default ``min(query_pos)``, at most 64 for the
                default query).
            sigma: Query scale ``"mean"``, ``"max"`` or ``"min"`` (absolute models).
            query_pos: Query position(s) (default :meth:`default_query_pos`).

        Returns:
            DataFrame ``head, query_pos, distance, key_pos, logit`` (one row per query), plus
            ``logit_mean`` (mean over the query positions at that head and distance).

        Examples:
            >>> import futurelens_tl as fl
            >>> dec = fl.decompose_first_layer(fl.toy_model())
            >>> df = dec.position_terms_by_distance(max_distance=3, query_pos=[50, 100])
            >>> sorted(df.distance.unique().tolist()), float(df[df.distance == 0].logit.abs().max())
            ([0, 1, 2, 3], 0.0)
        """
        import pandas as pd

        self._check_sigma(sigma)
        qs = ([self.default_query_pos()] if query_pos is None else
              [query_pos] if isinstance(query_pos, (int, np.integer)) else list(query_pos))
        if not qs:
            raise ValueError("query_pos is empty; give at least one query position")
        qs = [self._check_query_pos(int(q)) for q in qs]
        lim = min(qs)
        if max_distance is None:
            max_distance = min(lim, 64) if query_pos is None else lim
        m = self._check_distance(max_distance)
        if m > lim:
            raise ValueError(f"max_distance={m} exceeds the smallest query position {lim}: every "
                             "query must reach every distance (fixed query set)")
        if self.rope is not None and sigma != "mean":
            raise ValueError("rotary models: only sigma='mean' is defined")
        frames = []
        for i in qs:
            row = self._position_row(i, sigma).double()  # [h, i + 1]
            prof = (row[:, i - m: i + 1].flip(-1) - row[:, i: i + 1]).numpy()  # [h, m + 1]
            hh, dd = np.meshgrid(np.arange(self.n_heads), np.arange(m + 1), indexing="ij")
            frames.append(pd.DataFrame({
                "head": hh.ravel(), "query_pos": i, "distance": dd.ravel(),
                "key_pos": i - dd.ravel(), "logit": prof.reshape(-1),
            }))
        df = pd.concat(frames, ignore_index=True)
        df["logit_mean"] = df.groupby(["head", "distance"])["logit"].transform("mean")
        return df
