"""The weight surface of a TransformerLens model, backend-neutral (part of ``ModelView``).

Weights come out normalised: grouped-query K/V expanded to ``n_heads``, missing biases as
zeros, ``W_pos`` ``None`` for rotary models, norm gains ``None`` when folded (LNPre/RMSPre)
and ``1 + w`` where the HF norm multiplies by it (Gemma). The readout ``final norm + unembed``
recomputes normalisation statistics for every residual row (reference
``lenses-and-transformerlens.md`` §A.1-A.2), never the cached final-layer scale.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import torch
from jaxtyping import Float, Int
from torch import Tensor

__all__ = ["NormParams", "WeightSurface"]


@dataclass(frozen=True)
class NormParams:
    """A normalisation layer as plain tensors.

    Attributes:
        kind: ``"LN"`` (centre + scale), ``"RMS"`` (scale only) or ``None`` (no norm).
        w: Gain ``[d_model]``, or ``None`` when folded into the next weights (LNPre/RMSPre).
        b: Bias ``[d_model]``, or ``None``.
        eps: Epsilon inside the square root.
    """

    kind: Literal["LN", "RMS"] | None
    w: Tensor | None
    b: Tensor | None
    eps: float

    def __call__(self, x: Float[Tensor, "... d_model"]) -> Float[Tensor, "... d_model"]:
        """Apply the norm with statistics recomputed from ``x`` itself, row by row."""
        if self.kind is None:
            return x
        if self.kind == "LN":
            x = x - x.mean(-1, keepdim=True)
        scale = (x.pow(2).mean(-1, keepdim=True) + self.eps).sqrt()
        x = x / scale
        if self.w is not None:
            x = x * self.w
        if self.b is not None:
            x = x + self.b
        return x

    def scale(self, x: Float[Tensor, "... d_model"]) -> Float[Tensor, "... 1"]:
        """The per-row divisor (sigma) this norm would use for ``x``."""
        if self.kind == "LN":
            x = x - x.mean(-1, keepdim=True)
        return (x.pow(2).mean(-1, keepdim=True) + self.eps).sqrt()


class WeightSurface:
    """Weights, norms and the final readout; mixed into :class:`~futurelens_tl.models.ModelView`.

    Expects ``model``, ``cfg``, ``backend``, ``n_layers``, ``n_heads``, ``d_head``, ``d_model``,
    ``d_vocab`` and ``eps`` on the instance (``ModelView.__init__`` sets them).
    """

    model: Any
    cfg: Any
    backend: str
    n_layers: int
    n_heads: int
    d_head: int
    d_model: int
    d_vocab: int
    eps: float

    @property
    def device(self) -> torch.device:
        return self.W_E.device

    @property
    def dtype(self) -> torch.dtype:
        return self.W_E.dtype

    @property
    def normalization_type(self) -> str | None:
        """TransformerLens normalisation label: ``LN``, ``LNPre``, ``RMS``, ``RMSPre`` or None."""
        return getattr(self.cfg, "normalization_type", None)

    def _expand_kv(self, w: Tensor | None, head_dim: int) -> Tensor | None:
        if w is None:
            return None
        n = w.shape[head_dim]
        if n != self.n_heads:
            if self.n_heads % n:
                raise ValueError(f"cannot expand {n} key/value heads to {self.n_heads} heads")
            w = w.repeat_interleave(self.n_heads // n, dim=head_dim)
        return w

    def _param(self, name: str) -> Tensor | None:
        try:
            return getattr(self.model, name)
        except (AttributeError, KeyError, NotImplementedError, TypeError):
            return None

    @property
    def W_E(self) -> Float[Tensor, "d_vocab d_model"]:
        return self.model.W_E

    @property
    def W_pos(self) -> Float[Tensor, "n_ctx d_model"] | None:
        """Learned absolute positions, or ``None`` for rotary/ALiBi/no-position models."""
        if self.positional_embedding_type not in ("standard",):
            return None
        w = self._param("W_pos")
        if w is None:  # TL 3.9 bridges expose it only on the component
            pos = getattr(self.model, "pos_embed", None)
            w = getattr(pos, "W_pos", None)
            if w is None and pos is not None:
                w = getattr(getattr(pos, "_original_component", None), "weight", None)
        return w

    @property
    def W_U(self) -> Float[Tensor, "d_model d_vocab"]:
        return self.model.W_U

    @property
    def b_U(self) -> Float[Tensor, " d_vocab"]:
        b = self._param("b_U")
        if b is None:
            return torch.zeros(self.d_vocab, device=self.device, dtype=self.dtype)
        return b

    @property
    def W_Q(self) -> Float[Tensor, "n_layers n_heads d_model d_head"]:
        return self.model.W_Q

    @property
    def W_K(self) -> Float[Tensor, "n_layers n_heads d_model d_head"]:
        return self._expand_kv(self.model.W_K, -3)

    @property
    def W_V(self) -> Float[Tensor, "n_layers n_heads d_model d_head"]:
        return self._expand_kv(self.model.W_V, -3)

    @property
    def W_O(self) -> Float[Tensor, "n_layers n_heads d_head d_model"]:
        return self.model.W_O

    def _bias(self, name: str, shape: tuple[int, ...]) -> Tensor:
        b = self._param(name)
        if b is None:
            return torch.zeros(shape, device=self.device, dtype=self.dtype)
        return b

    @property
    def b_Q(self) -> Float[Tensor, "n_layers n_heads d_head"]:
        return self._bias("b_Q", (self.n_layers, self.n_heads, self.d_head))

    @property
    def b_K(self) -> Float[Tensor, "n_layers n_heads d_head"]:
        return self._expand_kv(self._bias("b_K", (self.n_layers, self.n_heads, self.d_head)), -2)

    @property
    def b_V(self) -> Float[Tensor, "n_layers n_heads d_head"]:
        return self._expand_kv(self._bias("b_V", (self.n_layers, self.n_heads, self.d_head)), -2)

    @property
    def b_O(self) -> Float[Tensor, "n_layers d_model"]:
        return self._bias("b_O", (self.n_layers, self.d_model))

    def _norm_module_params(self, module: Any, kind_label: str | None) -> NormParams:
        if kind_label is None:
            return NormParams(None, None, None, self.eps)
        kind: Literal["LN", "RMS"] = "RMS" if kind_label.startswith("RMS") else "LN"
        folded = kind_label.endswith("Pre")
        w = None if folded else getattr(module, "w", None)
        if w is not None and self._gain_offset:
            w = w + self._gain_offset
        b = None if (folded or kind == "RMS") else getattr(module, "b", None)
        eps = float(getattr(getattr(module, "cfg", None), "eps", self.eps) or self.eps)
        return NormParams(kind, w, b, eps)

    @property
    def _gain_offset(self) -> float:
        """1.0 where the wrapped HF norm multiplies by ``(1 + w)`` (Gemma), else 0.0.

        HookedTransformer's Gemma conversion adds the 1 to the stored weight; a bridge keeps the
        HF weight, so a lens reading ``w`` alone would be off by tens of logits
        (``reference/real-models.md``, "Gemma bug").
        """
        arch = str(getattr(self.cfg, "architecture", None)
                   or getattr(self.cfg, "original_architecture", None) or "")
        return 1.0 if self.backend == "bridge" and arch.startswith("Gemma") else 0.0

    @property
    def ln_final(self) -> NormParams:
        """The final norm as plain parameters (``w``/``b`` are ``None`` when folded)."""
        module = getattr(self.model, "ln_final", None)
        label = self.normalization_type if module is not None else None
        final_rms = getattr(self.cfg, "final_rms", False)
        if final_rms and label == "LN":  # pragma: no cover - rare architectures
            label = "RMS"
        return self._norm_module_params(module, label)

    def ln1(self, layer: int) -> NormParams:
        """Block ``layer``'s attention-input norm as plain parameters."""
        module = getattr(self.model.blocks[layer], "ln1", None)
        label = self.normalization_type if module is not None else None
        return self._norm_module_params(module, label)

    # ------------------------------------------------------------------ readout
    def final_norm(self, resid: Float[Tensor, "... d_model"]) -> Float[Tensor, "... d_model"]:
        """Apply the model's final norm with statistics recomputed for each row of ``resid``."""
        return self.ln_final(resid)

    def unembed(self, x: Float[Tensor, "... d_model"]) -> Float[Tensor, "... d_vocab"]:
        """``x @ W_U + b_U`` followed by the model's output transform (soft-cap), if any."""
        flat = x.reshape(-1, x.shape[-1])
        b = self.b_U
        # Each [rows, vocab] pass shows next to the matmul on CPU: skip an all-zero bias (GPT-2
        # has none) and fuse a real one (addmm) instead of a separate "+ b_U".
        if bool(b.any()):
            logits = torch.addmm(b.to(flat.dtype), flat, self.W_U)
        else:
            logits = flat @ self.W_U
        logits = logits.reshape(*x.shape[:-1], self.W_U.shape[-1])
        cap = getattr(self.cfg, "output_logits_soft_cap", -1.0) or -1.0
        if cap > 0:
            logits = cap * torch.tanh(logits / cap)
        return logits

    def unembed_at(
        self, x: Float[Tensor, "... d_model"], ids: Int[Tensor, " n"]
    ) -> Float[Tensor, "... n"]:
        """:meth:`unembed` restricted to the token ``ids`` (``O(n d)`` per row, not ``O(V d)``)."""
        logits = x @ self.W_U[:, ids] + self.b_U[ids]
        cap = getattr(self.cfg, "output_logits_soft_cap", -1.0) or -1.0
        if cap > 0:
            logits = cap * torch.tanh(logits / cap)
        return logits

    def readout(self, resid: Float[Tensor, "... d_model"]) -> Float[Tensor, "... d_vocab"]:
        """Logits the model would output if ``resid`` were its final residual."""
        return self.unembed(self.final_norm(resid))

    def frozen_readout(self) -> Callable[[Tensor], Tensor]:
        """:meth:`readout` with the model's weights detached (gradients reach ``x`` only).

        Trainers back-propagate into lens parameters through the readout; detaching the norm and
        unembedding weights once keeps the model out of every graph.
        """
        ln = self.ln_final
        norm = NormParams(ln.kind, None if ln.w is None else ln.w.detach(),
                          None if ln.b is None else ln.b.detach(), ln.eps)
        W_U = self.W_U.detach()
        b_U = self.b_U.detach()
        cap = getattr(self.cfg, "output_logits_soft_cap", -1.0) or -1.0

        def readout(x: Tensor) -> Tensor:
            logits = norm(x) @ W_U + b_U
            if cap > 0:
                logits = cap * torch.tanh(logits / cap)
            return logits

        return readout
