"""The sigma table ``Sigma[j, v]`` and its per-position statistics (ref §5, §6.3).

Absolute-position models only: rotary models have an exact per-token scale instead
(:meth:`Layer0Decomposition.token_sigma`).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from futurelens_tl.attention.layer0._util import _percentile_rows
from futurelens_tl.progress import progress


class _SigmaMixin:
    """Sigma table and statistics of :class:`Layer0Decomposition` (absolute positions)."""

    W_E: Any
    W_pos: Any
    _cache: dict[str, Any]

    # ------------------------------------------------------------------ sigma table (§5)
    def sigma_table(
        self,
        dtype: torch.dtype = torch.float16,
        *,
        chunk_size: int = 128,
        verbose: bool = False,
    ) -> Float[Tensor, "n_ctx d_vocab"]:
        """``Sigma[j, v] = sqrt(Var(e_v + p_j) + eps)`` over (position, token) (ref §5).

        Computed in float32 (or the decomposition's dtype if wider) as one matmul
        ``(P C)(E C)^T`` plus two squared-norm vectors per chunk of positions; the root is taken
        before the cast to ``dtype``. ``[1024, 50257]`` is about 103 MB in float16.

        Args:
            dtype: Output dtype (float16 as in the paper's code, or float32/float64).
            chunk_size: Positions per chunk.
            verbose: Progress bar.

        Returns:
            ``[n_ctx, d_vocab]``; ``Sigma[i, t_i]`` equals the model's ``blocks.0.ln1.hook_scale``.

        Examples:
            >>> import futurelens_tl as fl
            >>> dec = fl.decompose_first_layer(fl.toy_model())
            >>> dec.sigma_table().shape == (dec.n_ctx, dec.d_vocab)
            True
        """
        self._require_absolute("sigma_table")
        if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
            raise ValueError(f"dtype={dtype!r} must be a floating torch dtype")
        if chunk_size <= 0:
            raise ValueError(f"chunk_size={chunk_size} must be positive")
        out = torch.empty(self.n_ctx, self.d_vocab, dtype=dtype, device=self.W_E.device)
        acc = None if "stats" in self._cache else self._new_stats()
        for a, sig in self._sigma_chunks(chunk_size, verbose):
            out[a:a + sig.shape[0]] = sig.to(dtype)
            if acc is not None:  # the statistics come for free with the same pass
                self._add_stats(acc, a, sig)
        if acc is not None:
            self._cache["stats"] = self._finish_stats(acc)
        return out

    def _sigma_chunks(self, chunk_size: int, verbose: bool) -> Iterable[tuple[int, Tensor]]:
        work = torch.float64 if self.dtype == torch.float64 else torch.float32
        ec = self._center(self.W_E.to(work))
        pc = self._center(self.W_pos.to(work))
        d = self.d_model
        e2 = ec.pow(2).sum(-1) / d
        p2 = pc.pow(2).sum(-1) / d
        starts = range(0, self.n_ctx, chunk_size)
        for a in progress(starts, verbose=verbose, desc="sigma table"):
            b = min(a + chunk_size, self.n_ctx)
            if self.norm is None:
                yield a, torch.ones(b - a, self.d_vocab, dtype=work, device=ec.device)
                continue
            var = (pc[a:b] @ ec.T).mul_(2.0 / d).add_(e2[None]).add_(p2[a:b, None])
            yield a, var.clamp_min_(0).add_(self.eps).sqrt_()

    def sigma_stats(self, *, chunk_size: int = 64, verbose: bool = False) -> dict[str, Tensor]:
        """Per-position statistics of the sigma table (ref §6.3), computed once and cached.

        Returns:
            Dict with ``r_mean``, ``r_lo``, ``r_hi`` (mean, 2.5th and 97.5th percentile over
            tokens of ``1 / Sigma[j, :]``; numpy linear interpolation), ``sigma_mean``,
            ``sigma_max``, ``sigma_min`` (over tokens, ``[n_ctx]`` each) and ``sigma_bar``
            (``[d_vocab]``, position-averaged token scale, float32 as computed) and ``r_bar``
            (``[d_vocab]``, ``mean_j 1 / Sigma[j, v]``).
        """
        self._require_absolute("sigma_stats")
        if "stats" not in self._cache:
            acc = self._new_stats()
            for a, sig in self._sigma_chunks(chunk_size, verbose):
                self._add_stats(acc, a, sig)
            self._cache["stats"] = self._finish_stats(acc)
        return self._cache["stats"]

    def _new_stats(self) -> dict[str, Tensor]:
        work = torch.float64 if self.dtype == torch.float64 else torch.float32
        st = {k: torch.empty(self.n_ctx, dtype=work) for k in
              ("r_mean", "r_lo", "r_hi", "sigma_mean", "sigma_max", "sigma_min")}
        st["sigma_bar"] = torch.zeros(self.d_vocab, dtype=work)
        st["r_bar"] = torch.zeros(self.d_vocab, dtype=work)
        return st

    @staticmethod
    def _add_stats(st: dict[str, Tensor], a: int, sig: Tensor) -> None:
        b = a + sig.shape[0]
        sig = sig.cpu()
        st["sigma_bar"] += sig.sum(0)
        st["sigma_mean"][a:b] = sig.mean(-1)
        st["sigma_max"][a:b] = sig.amax(-1)
        st["sigma_min"][a:b] = sig.amin(-1)
        r = sig.reciprocal()
        st["r_bar"] += r.sum(0)
        st["r_mean"][a:b] = r.mean(-1)
        st["r_lo"][a:b] = _percentile_rows(r, 2.5)
        st["r_hi"][a:b] = _percentile_rows(r, 97.5)

    def _finish_stats(self, st: dict[str, Tensor]) -> dict[str, Tensor]:
        st["sigma_bar"] = st["sigma_bar"] / self.n_ctx
        st["r_bar"] = st["r_bar"] / self.n_ctx
        return st

