"""The :class:`Layer0Decomposition` result: folded weights, terms on sequences, the identity.

Reference: ``shared/reference/layer0-decomposition.md`` ("ref §n"; the rotary extension is its
addendum "rotary (Llama-family) models" and §12.2-12.4). The analyses live in mixins, one file per
concern: :mod:`.sigma` (ref §5), :mod:`.positions` (§6.1, §6.3), :mod:`.tokens` (§6.2, §8, §11),
:mod:`.contrib` (§7) and :mod:`.views`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
from jaxtyping import Float, Int
from torch import Tensor

from futurelens_tl.attention.layer0._util import _masked_softmax
from futurelens_tl.attention.layer0.contrib import _ContributionsMixin
from futurelens_tl.attention.layer0.positions import _PositionsMixin
from futurelens_tl.attention.layer0.rotary import RopeSpec
from futurelens_tl.attention.layer0.sigma import _SigmaMixin
from futurelens_tl.attention.layer0.tokens import _TokensMixin
from futurelens_tl.attention.layer0.views import _ViewsMixin

TERM_NAMES: tuple[str, ...] = ("ee", "ep", "pe", "pp", "e", "p")
"""Order of the six terms along the ``term`` axis of absolute-position models (ref §4)."""

ROTARY_TERM_NAMES: tuple[str, ...] = ("ee", "ep", "pe", "pp")
"""Rotary models: token-token, query token x offset, offset x key token, positional kernel."""

TERM_GROUPS: dict[str, tuple[str, ...]] = {
    "position": ("pp", "p"),
    "token": ("ee", "e"),
    "mixed": ("ep", "pe"),
}
"""Grouping of the six terms (ref §4): position-related, token-related and mixed."""


@dataclass(eq=False, repr=False)
class Layer0Decomposition(
    _SigmaMixin, _PositionsMixin, _TokensMixin, _ContributionsMixin, _ViewsMixin
):
    """Folded layer-0 query/key weights and the analyses built on them (ref §2-§8, addendum).

    Build with :func:`decompose_first_layer`. All tensors are detached copies in the compute
    dtype; the object never runs the model.

    Two position schemes share this object (``positions``):

    * ``"absolute"`` (learned positions, GPT-2 family): six terms ``ee, ep, pe, pp, e, p``
      (ref §4) with the per-(position, token) sigma table (ref §5).
    * ``"rotary"`` (RoPE, Llama family): no position vector enters the residual, ``sigma`` is an
      exact per-token constant and the score is an exact function of (query token, key token,
      ``Delta = i - j``). With the reference token ``x_bar`` (``reference``: the uniform or the
      frequency-weighted mean normalised embedding) and ``delta = x_hat - x_bar`` the four terms
      ``ee = dq M(D) dk``, ``ep = dq M(D) k_bar``, ``pe = q_bar M(D) dk``,
      ``pp = q_bar M(D) k_bar = f(Delta)`` (the positional kernel, the ``T_pp`` analogue) sum
      exactly to the score; biases (Qwen2) sit inside ``q_bar``/``k_bar``. ``notes`` says what
      has no analogue.

    Attributes:
        W_Q: ``[head, d_model, d_head]`` folded ``C diag(gamma) W_Q`` (ref §2).
        W_K: ``[head, d_model, d_head]`` folded keys (GQA: the head's KV group).
        b_Q: ``[head, d_head]`` folded ``beta W_Q + b_Q``.
        b_K: ``[head, d_head]`` folded key bias (cancels from absolute patterns, ref §3; not
            from rotary ones).
        W_E: ``[d_vocab, d_model]`` token embeddings.
        W_pos: ``[n_ctx, d_model]`` learned positions, ``None`` for rotary models.
        norm: ``"LN"``, ``"RMS"`` or ``None`` (sigma = 1).
        eps: Norm epsilon.
        attn_scale: ``sqrt(d')`` (1 when the model uses no attention scale).
        basis: ``"raw"`` or ``"processed"`` weights of the source model.
        fingerprint: Source model fingerprint.
        tokenizer: The model's tokenizer (for strings), or ``None``.
        rope: :class:`RopeSpec` of rotary models, else ``None``.
        context: ``n_ctx`` (rotary models have no ``W_pos`` to read it from).
        kv_group: ``[head]`` KV head each query head reads (GQA).
        reference: Which ``x_bar`` splits rotary terms: ``"uniform"`` or
            ``"frequency-weighted"`` (``None`` for absolute models).
        token_weights: ``[d_vocab]`` weights of the reference mean (rotary), or ``None``.
        notes: What does not carry over to this model (said, not silently dropped).
    """

    W_Q: Float[Tensor, "head d_model d_head"]
    W_K: Float[Tensor, "head d_model d_head"]
    b_Q: Float[Tensor, "head d_head"]
    b_K: Float[Tensor, "head d_head"]
    W_E: Float[Tensor, "d_vocab d_model"]
    W_pos: Float[Tensor, "n_ctx d_model"] | None
    norm: Literal["LN", "RMS"] | None
    eps: float
    attn_scale: float
    basis: str
    fingerprint: str
    tokenizer: Any = field(default=None, repr=False)
    _to_tokens: Any = field(default=None, repr=False)
    rope: RopeSpec | None = None
    context: int | None = None
    kv_group: Tensor | None = None
    reference: str | None = None
    token_weights: Tensor | None = field(default=None, repr=False)
    notes: tuple[str, ...] = ()
    _cache: dict[str, Any] = field(default_factory=dict, repr=False)

    def __repr__(self) -> str:
        extra = (f", positions='rotary', rotary_dim={self.rope.rotary_dim}, "
                 f"reference={self.reference!r}" if self.rope is not None else "")
        return (
            f"Layer0Decomposition(heads={self.n_heads}, d_head={self.d_head}, "
            f"d_model={self.d_model}, vocab={self.d_vocab}, n_ctx={self.n_ctx}, "
            f"norm={self.norm}, attn_scale={self.attn_scale:.4g}, basis={self.basis!r}"
            f"{extra}, fingerprint={self.fingerprint!r})"
        )

    # ------------------------------------------------------------------ sizes and objects
    @property
    def positions(self) -> str:
        """``"absolute"`` (learned positions) or ``"rotary"``."""
        return "rotary" if self.rope is not None else "absolute"

    @property
    def term_names(self) -> tuple[str, ...]:
        """Names along the ``term`` axis of :meth:`terms` (six absolute, four rotary)."""
        return ROTARY_TERM_NAMES if self.rope is not None else TERM_NAMES

    @property
    def term_groups(self) -> dict[str, tuple[str, ...]]:
        """Position / token / mixed grouping of :attr:`term_names`."""
        return {g: tuple(n for n in names if n in self.term_names)
                for g, names in TERM_GROUPS.items()}

    @property
    def n_heads(self) -> int:
        return int(self.W_Q.shape[0])

    @property
    def d_head(self) -> int:
        return int(self.W_Q.shape[2])

    @property
    def d_model(self) -> int:
        return int(self.W_Q.shape[1])

    @property
    def d_vocab(self) -> int:
        return int(self.W_E.shape[0])

    @property
    def n_ctx(self) -> int:
        if self.W_pos is not None:
            return int(self.W_pos.shape[0])
        return int(self.context or 0)

    @property
    def dtype(self) -> torch.dtype:
        return self.W_Q.dtype

    @property
    def QK(self) -> Any:
        """``W^QK_h = W~Q_h W~K_h^T`` as a TransformerLens ``FactoredMatrix`` ``[head, d, d]``.

        Rotary models: this is ``W^QK(Delta = 0)``; the family is ``W~Q M(Delta) W~K^T``.
        """
        from transformer_lens import FactoredMatrix

        return FactoredMatrix(self.W_Q, self.W_K.transpose(-1, -2))

    @property
    def b_QK(self) -> Float[Tensor, "head d_model"]:
        """``b^QK_h = b~Q_h W~K_h^T`` (ref §3; rotary: at ``Delta = 0``)."""
        return torch.einsum("hk,hdk->hd", self.b_Q, self.W_K)

    def _center(self, x: Tensor) -> Tensor:
        return x - x.mean(-1, keepdim=True) if self.norm == "LN" else x

    def sigma(self, x: Float[Tensor, "... d_model"]) -> Float[Tensor, "..."]:
        """The norm's divisor for residual rows ``x`` (ref §2; 1 for a model without norm)."""
        if self.norm is None:
            return torch.ones(x.shape[:-1], dtype=x.dtype, device=x.device)
        xc = self._center(x)
        return (xc.pow(2).mean(-1) + self.eps).sqrt()

    def token_sigma(self) -> Float[Tensor, " d_vocab"]:
        """Rotary models: the exact per-token norm scale ``sigma_v`` (no position table)."""
        if "token_sigma" not in self._cache:
            self._cache["token_sigma"] = self.sigma(self.W_E)
        return self._cache["token_sigma"]

    def _x_hat(self) -> Float[Tensor, "d_vocab d_model"]:
        """Rotary models: normalised token rows ``e_v / sigma_v`` (centring inside ``W~``)."""
        return self.W_E / self.token_sigma()[:, None]

    def _reference_qk(self) -> tuple[Tensor, Tensor]:
        """Rotary models: ``q_bar = x_bar W~Q + b~Q`` and ``k_bar``, ``[head, d_head]`` each."""
        if "ref_qk" not in self._cache:
            w = self.token_weights
            xh = self._x_hat()
            if w is None:
                xbar = xh.mean(0)
            else:
                w = w.to(xh.device, xh.dtype)
                xbar = (w[:, None] * xh).sum(0) / w.sum()
            self._cache["ref_qk"] = (
                torch.einsum("d,hdk->hk", xbar, self.W_Q) + self.b_Q,
                torch.einsum("d,hdk->hk", xbar, self.W_K) + self.b_K,
                xbar,
            )
        q, k, _ = self._cache["ref_qk"]
        return q, k

    def _require_absolute(self, what: str) -> None:
        if self.rope is not None:
            raise ValueError(
                f"{what} does not apply to rotary models: no position vector enters the "
                "residual stream, so sigma is an exact per-token scale (token_sigma()) rather "
                "than a (position, token) table; use positional_kernel() / position_terms() "
                "for the positional part (reference addendum 'rotary models')."
            )

    # ------------------------------------------------------------------ validation
    def _check_head(self, head: int) -> int:
        if isinstance(head, bool) or not isinstance(head, (int, np.integer)):
            raise TypeError(f"head must be an int, got {type(head).__name__}")
        if not 0 <= int(head) < self.n_heads:
            raise ValueError(f"head={head} is out of range; allowed 0..{self.n_heads - 1}")
        return int(head)

    def _check_query_pos(self, query_pos: int) -> int:
        if isinstance(query_pos, bool) or not isinstance(query_pos, (int, np.integer)):
            raise TypeError(f"query_pos must be an int, got {type(query_pos).__name__}")
        if not 0 <= int(query_pos) < self.n_ctx:
            raise ValueError(
                f"query_pos={query_pos} is out of range; allowed 0..{self.n_ctx - 1} (n_ctx)"
            )
        return int(query_pos)

    @staticmethod
    def _check_sigma(sigma: str) -> str:
        if sigma not in ("mean", "max", "min"):
            raise ValueError(f"sigma={sigma!r} is not allowed; use 'mean', 'max' or 'min'")
        return sigma

    def _tokens(self, tokens: Any, arg: str = "tokens") -> Int[Tensor, "batch pos"]:
        if isinstance(tokens, (str, list)) and (
            isinstance(tokens, str) or (tokens and isinstance(tokens[0], str))
        ):
            if self._to_tokens is None:
                raise ValueError(f"{arg} is text but this decomposition has no tokenizer")
            return self._to_tokens(tokens, arg=arg).cpu()
        if isinstance(tokens, (list, tuple, np.ndarray)):
            tokens = torch.as_tensor(np.asarray(tokens))
        if not isinstance(tokens, Tensor):
            raise TypeError(f"{arg} must be token ids (tensor/list) or text, got "
                            f"{type(tokens).__name__}")
        if tokens.dtype.is_floating_point or tokens.dtype == torch.bool:
            raise TypeError(f"{arg} must hold integer token ids, got dtype {tokens.dtype}")
        if tokens.ndim == 1:
            tokens = tokens[None]
        if tokens.ndim != 2:
            raise ValueError(f"{arg} must be [batch, pos] or [pos] token ids, got shape "
                             f"{tuple(tokens.shape)}")
        if tokens.shape[-1] == 0:
            raise ValueError(f"{arg} is empty; give at least one token.")
        if int(tokens.min()) < 0 or int(tokens.max()) >= self.d_vocab:
            raise ValueError(
                f"{arg} holds token ids outside the vocabulary 0..{self.d_vocab - 1} "
                f"(min {int(tokens.min())}, max {int(tokens.max())})."
            )
        if tokens.shape[-1] > self.n_ctx:
            raise ValueError(
                f"{arg} is {tokens.shape[-1]} tokens long but n_ctx={self.n_ctx}; layer-0 "
                "positions exist only up to n_ctx - 1."
            )
        return tokens.long().to(self.W_E.device)

    # ------------------------------------------------------------------ terms (§4, addendum)
    def terms(
        self, tokens: Int[Tensor, "... pos"] | Sequence[int] | str
    ) -> Float[Tensor, "... term head query key"]:
        """The exact terms of every layer-0 logit for actual sequences (ref §4; addendum).

        Absolute models: ``T_ee, T_ep, T_pe, T_pp, T_e, T_p`` with the exact per-token
        ``sigma_i`` of each sequence; their sum differs from the raw score by query-only terms.
        Rotary models: ``ee, ep, pe, pp`` (:attr:`term_names`) around the reference token; their
        sum **is** the raw score ``q_i R(i-j) k_j`` (key biases do not cancel there). Entries with
        ``key > query`` are 0 (masked). Terms are **not** divided by ``sqrt(d')``.

        Args:
            tokens: ``[pos]`` or ``[batch, pos]`` token ids (or text when a tokenizer is known).

        Returns:
            ``[term, head, query, key]`` for one sequence (``[pos]`` input), else
            ``[batch, term, head, query, key]``; term order :attr:`term_names`.

        Raises:
            ValueError: Ids outside the vocabulary, empty input or more than ``n_ctx`` tokens.

        Examples:
            >>> import torch
            >>> import futurelens_tl as fl
            >>> dec = fl.decompose_first_layer(fl.toy_model())
            >>> dec.terms(torch.tensor([1, 2, 3])).shape[:2]
            torch.Size([6, 4])
        """
        single = isinstance(tokens, Tensor) and tokens.ndim == 1 or (
            isinstance(tokens, (list, tuple)) and tokens and not isinstance(tokens[0], (list, str))
        )
        tok = self._tokens(tokens)
        out = self._terms(tok)
        return out[0] if single else out

    def _terms(self, tok: Tensor) -> Tensor:
        if self.rope is not None:
            return self._rotary_terms(tok)
        n = tok.shape[-1]
        e = self.W_E[tok]  # [b, n, d]
        p = self.W_pos[:n]  # [n, d]
        sig = self.sigma(e + p)  # [b, n]
        qe = torch.einsum("bnd,hdk->bhnk", e, self.W_Q)
        ke = torch.einsum("bnd,hdk->bhnk", e, self.W_K)
        qp = torch.einsum("nd,hdk->hnk", p, self.W_Q)[None]
        kp = torch.einsum("nd,hdk->hnk", p, self.W_K)[None]
        inv = (1.0 / sig)[:, None]  # [b, 1, n]
        ss = inv[..., :, None] * inv[..., None, :]  # [b, 1, q, k]
        t_ee = qe @ ke.transpose(-1, -2) * ss
        t_ep = qe @ kp.transpose(-1, -2) * ss
        t_pe = qp @ ke.transpose(-1, -2) * ss
        t_pp = (qp @ kp.transpose(-1, -2)) * ss
        bq = self.b_Q[None, :, None, :]  # [1, h, 1, k]
        t_e = ((bq * ke).sum(-1) * inv)[..., None, :].expand_as(t_ee)
        t_p = ((bq * kp).sum(-1) * inv)[..., None, :].expand_as(t_ee)
        out = torch.stack([t_ee, t_ep, t_pe, t_pp, t_e, t_p], dim=1)
        mask = torch.ones(n, n, dtype=torch.bool, device=out.device).tril()
        return out.masked_fill(~mask, 0.0)

    def _rotary_qk(self, tok: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Rotated ``dq_i, dk_j, q_bar_i, k_bar_j`` at their positions, ``[b, h, n, d']``."""
        rope = self.rope
        assert rope is not None
        n = tok.shape[-1]
        qb, kb = self._reference_qk()
        xbar = self._cache["ref_qk"][2]
        dx = self._x_hat()[tok] - xbar  # [b, n, d]
        pos = torch.arange(n)
        dq = rope.rotate(torch.einsum("bnd,hdk->bhnk", dx, self.W_Q), pos)
        dk = rope.rotate(torch.einsum("bnd,hdk->bhnk", dx, self.W_K), pos)
        qr = rope.rotate(qb[:, None, :].expand(-1, n, -1), pos)[None]
        kr = rope.rotate(kb[:, None, :].expand(-1, n, -1), pos)[None]
        return dq, dk, qr, kr

    def _rotary_terms(self, tok: Tensor) -> Tensor:
        n = tok.shape[-1]
        dq, dk, qr, kr = self._rotary_qk(tok)
        t_ee = dq @ dk.transpose(-1, -2)
        t_ep = (dq @ kr.transpose(-1, -2))
        t_pe = (qr @ dk.transpose(-1, -2))
        t_pp = (qr @ kr.transpose(-1, -2)).expand_as(t_ee)
        out = torch.stack([t_ee, t_ep.expand_as(t_ee), t_pe.expand_as(t_ee), t_pp], dim=1)
        mask = torch.ones(n, n, dtype=torch.bool, device=out.device).tril()
        return out.masked_fill(~mask, 0.0)

    def frequency_terms(
        self, tokens: Int[Tensor, "... pos"] | Sequence[int] | str
    ) -> Float[Tensor, "... freq head query key"]:
        """Rotary models: the score split by RoPE frequency (addendum, exact).

        ``s_ij = sum_k [cos(Delta theta_k) A_k + sin(Delta theta_k) B_k] + pass-through``: entry
        ``k`` is the contribution of the ``k``-th rotated pair (``theta_k`` descending from
        ``theta_0 = 1``: high frequencies first); the last entry is the pass-through block of
        partial-rotary models (zero for full rotary). The sum over ``freq`` equals the sum of
        :meth:`terms`. Not divided by ``sqrt(d')``.

        Returns:
            ``[n_pairs + 1, head, query, key]`` (one sequence) or with a leading batch axis.
        """
        if self.rope is None:
            raise ValueError("frequency_terms applies to rotary models only")
        single = isinstance(tokens, Tensor) and tokens.ndim == 1 or (
            isinstance(tokens, (list, tuple)) and tokens and not isinstance(tokens[0], (list, str))
        )
        tok = self._tokens(tokens)
        dq, dk, qr, kr = self._rotary_qk(tok)
        q, k = dq + qr, dk + kr  # [b, h, n, d']
        g = self.rope.pair_groups().to(q.device)
        n_f = int(self.rope.theta.numel()) + 1
        prod = q[..., :, None, :] * k[..., None, :, :]  # [b, h, q, k, d']
        out = torch.zeros(*prod.shape[:-1], n_f, dtype=prod.dtype, device=prod.device)
        out.index_add_(-1, g, prod)
        n = tok.shape[-1]
        mask = torch.ones(n, n, dtype=torch.bool, device=out.device).tril()
        out = out.masked_fill(~mask[..., None], 0.0).permute(0, 4, 1, 2, 3)
        return out[0] if single else out

    def attention(
        self, tokens: Int[Tensor, "... pos"] | Sequence[int] | str
    ) -> Float[Tensor, "... head query key"]:
        """Layer-0 attention pattern from the terms: ``softmax_j(sum / sqrt(d'))`` (ref §4).

        Equals the model's ``blocks.0.attn.hook_pattern`` (an identity, not an approximation),
        for absolute and rotary models.

        Args:
            tokens: ``[pos]`` or ``[batch, pos]`` token ids.

        Returns:
            ``[head, query, key]`` (one sequence) or ``[batch, head, query, key]``.

        Examples:
            >>> import torch
            >>> import futurelens_tl as fl
            >>> dec = fl.decompose_first_layer(fl.toy_model())
            >>> bool(dec.attention(torch.tensor([1, 2, 3])).sum(-1).allclose(torch.ones(1)))
            True
        """
        t = self.terms(tokens)
        n = t.shape[-1]
        mask = torch.ones(n, n, dtype=torch.bool, device=t.device).tril()
        return _masked_softmax(t.sum(-4) / self.attn_scale, mask)

    def grouped_terms(
        self, tokens: Int[Tensor, "... pos"] | Sequence[int] | str
    ) -> dict[str, Tensor]:
        """The terms summed by group: ``{"position", "token", "mixed"}`` (ref §4).

        Returns:
            Dict of ``[head, query, key]`` (or with a leading batch axis) tensors.
        """
        t = self.terms(tokens)
        names = self.term_names
        return {g: sum(t.select(-4, names.index(n)) for n in ns)  # type: ignore[misc]
                for g, ns in self.term_groups.items()}
