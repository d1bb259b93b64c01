"""Rotary position embeddings as a relative rotation (reference addendum "rotary models", §12.2).

RoPE rotates each query/key pair ``(a, b)`` of a head by the angle ``pos * theta_k`` (and scales
by the module's ``attention_scaling`` ``m`` where the rope type declares one, e.g. YaRN). Writing
a pair as the complex number ``q_a + i q_b``, the rotated product is
``Re(Q conj(K) m^2 exp(i theta_k (i - j)))``: a function of the offset ``Delta = i - j`` only.
:class:`RopeSpec` holds what that needs (pairs, ``theta_k``, ``m``) and rotates vectors.

The frequencies come from the model itself, never from a re-derivation of the config: the Hugging
Face rotary module's ``inv_freq``/``attention_scaling`` (TransformerLens bridges; any rope scaling
the config declares is already inside ``inv_freq``) or TransformerLens'
``rotary_cos``/``rotary_sin``
tables (``HookedTransformer``). Both are checked against the model's own position tables; a rope
that is not one fixed rotation per offset (dynamic NTK) raises ``NotImplementedError``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

__all__ = ["RopeSpec", "rope_spec"]


@dataclass(frozen=True)
class RopeSpec:
    """RoPE of one attention layer as pairs of head dimensions and angular frequencies.

    Attributes:
        pair_a: ``[n_pairs]`` first dimension of each rotated pair.
        pair_b: ``[n_pairs]`` second dimension (``a + rotary_dim/2`` for rotate-half, ``a + 1``
            for adjacent pairs).
        theta: ``[n_pairs]`` float64 angle per position step.
        scale: ``m``: cos/sin are multiplied by it (scores by ``m^2``); 1 for plain RoPE.
        d_head: Head width; dimensions not in a pair pass through unrotated.
        layout: ``"rotate_half"`` (Llama / GPT-NeoX) or ``"adjacent"`` (GPT-J / GLM / Cohere).
        rope_type: The config's rope type (``"default"``, ``"linear"``, ``"llama3"``, ...).
    """

    pair_a: Tensor
    pair_b: Tensor
    theta: Tensor
    scale: float
    d_head: int
    layout: str
    rope_type: str

    @property
    def rotary_dim(self) -> int:
        return 2 * int(self.theta.numel())

    @property
    def pass_dims(self) -> Tensor:
        """Head dimensions that are not rotated (partial rotary: Pythia, GPT-J, Phi)."""
        used = torch.zeros(self.d_head, dtype=torch.bool)
        used[self.pair_a] = True
        used[self.pair_b] = True
        return torch.nonzero(~used).reshape(-1)

    def rotate(
        self, x: Float[Tensor, "... n d_head"], pos: Tensor | float | int
    ) -> Float[Tensor, "... n d_head"]:
        """Rotate ``x`` as RoPE does at position(s) ``pos`` (broadcast over the ``n`` axis).

        ``pos`` may be negative or any offset: ``rotate(q, i) . rotate(k, j)`` equals
        ``rotate(q, i - j) . rotate(k, 0)``. Pass-through dimensions are scaled by nothing; the
        rotated ones by ``m``.
        """
        p = torch.as_tensor(pos, dtype=torch.float64).reshape(-1, 1)  # [n or 1, 1]
        ang = p * self.theta[None, :]  # [n, pairs] float64
        c = (torch.cos(ang) * self.scale).to(x.dtype).to(x.device)
        s = (torch.sin(ang) * self.scale).to(x.dtype).to(x.device)
        xa, xb = x[..., self.pair_a], x[..., self.pair_b]
        out = x.clone()
        out[..., self.pair_a] = xa * c - xb * s
        out[..., self.pair_b] = xb * c + xa * s
        return out

    def pair_groups(self) -> Tensor:
        """``[d_head]`` index of the frequency each dimension belongs to (``n_pairs`` = pass)."""
        g = torch.full((self.d_head,), self.theta.numel(), dtype=torch.long)
        k = torch.arange(self.theta.numel())
        g[self.pair_a] = k
        g[self.pair_b] = k
        return g


def _find_hf_rotary(model: Any) -> Any | None:
    for mod in model.modules():
        inv = getattr(mod, "inv_freq", None)
        if isinstance(inv, Tensor) and inv.ndim == 1 and callable(getattr(mod, "forward", None)):
            return mod
    return None


def _layout(cfg: Any) -> str:
    if getattr(cfg, "rotary_interleaved_cos_sin", False) or getattr(
        cfg, "rotary_adjacent_pairs", False
    ):
        return "adjacent"
    return "rotate_half"


def _pairs(layout: str, n_pairs: int) -> tuple[Tensor, Tensor]:
    k = torch.arange(n_pairs)
    if layout == "adjacent":
        return 2 * k, 2 * k + 1
    return k, k + n_pairs


def _rope_type(cfg: Any) -> str:
    rp = getattr(cfg, "rope_parameters", None) or getattr(cfg, "rope_scaling", None) or {}
    if isinstance(rp, dict):
        return str(rp.get("rope_type", rp.get("type", "default")))
    return "default"


def _check_tables(spec: RopeSpec, cos: Tensor, sin: Tensor, what: str) -> None:
    """The model's own ``cos``/``sin`` tables ``[n, n_pairs]`` must be ``m exp(i pos theta)``."""
    n = cos.shape[0]
    ang = torch.arange(n, dtype=torch.float64)[:, None] * spec.theta[None]
    tol = 1e-3 + 4 * float(torch.finfo(cos.dtype).eps) * n
    err = max(float((cos.double() - spec.scale * torch.cos(ang)).abs().max()),
              float((sin.double() - spec.scale * torch.sin(ang)).abs().max()))
    if err > tol * max(spec.scale, 1.0):
        raise NotImplementedError(
            f"the model's rotary tables ({what}, rope_type={spec.rope_type!r}) are not one fixed "
            f"rotation per offset (max deviation {err:.2e}); layer-0 scores are then not a "
            "function of (query token, key token, i - j) and the weight-only decomposition "
            "does not apply (dynamic rope scaling changes the frequencies with the length)."
        )


def rope_spec(view: Any, n_check: int = 2048) -> RopeSpec:
    """Read RoPE of layer 0 from a model (no forward pass of the model).

    Args:
        view: A ``ModelView``.
        n_check: Positions of the model's own tables checked against the relative form.

    Returns:
        :class:`RopeSpec`.

    Raises:
        NotImplementedError: No rotary module/table is found, or the rope is not a fixed
            relative rotation.
    """
    cfg, d_head = view.cfg, view.d_head
    n = max(2, min(int(view.n_ctx), n_check))
    hf = _find_hf_rotary(view.model)
    layout = _layout(cfg)
    if hf is not None:
        theta = hf.inv_freq.detach().double().cpu()
        scale = float(getattr(hf, "attention_scaling", 1.0) or 1.0)
        a, b = _pairs(layout, theta.numel())
        spec = RopeSpec(a, b, theta, scale, d_head, layout, _rope_type(cfg))
        with torch.no_grad():
            dummy = torch.zeros(1, n, 1, d_head, dtype=torch.float32,
                                device=hf.inv_freq.device)
            try:
                cos, sin = hf(dummy, torch.arange(n, device=dummy.device)[None])
            except TypeError:  # pragma: no cover - rotary modules with other signatures
                cos = sin = None
        if cos is not None:
            cos, sin = cos.reshape(n, -1).cpu(), sin.reshape(n, -1).cpu()
            half = theta.numel()
            if cos.shape[-1] == 2 * half and layout == "adjacent" and getattr(
                cfg, "rotary_interleaved_cos_sin", False
            ):
                cos, sin = cos[:, 0::2], sin[:, 0::2]
            else:
                cos, sin = cos[:, :half], sin[:, :half]
            _check_tables(spec, cos, sin, type(hf).__name__)
        return spec
    cos, sin, layout, what = _tl_tables(view, layout)
    rot = int(cos.shape[-1])
    half = rot // 2
    a, b = _pairs(layout, half)
    cos_p = cos[:, a].detach().double().cpu()
    sin_p = sin[:, a].detach().double().cpu()
    theta = torch.atan2(sin_p[1], cos_p[1])
    spec = RopeSpec(a, b, theta, float(cos_p[0, 0]), d_head, layout, _rope_type(cfg))
    _check_tables(spec, cos_p[:n], sin_p[:n], what)
    return spec


def _tl_tables(view: Any, layout: str) -> tuple[Tensor, Tensor, str, str]:
    """TransformerLens' own RoPE tables.

    ``HookedTransformer`` ``rotary_cos/sin`` (layout from the config) or the native bridge's
    ``NativeRotary`` ``cos_cached/sin_cached`` (adjacent pairs).
    """
    attn = view.model.blocks[0].attn
    cos, sin = getattr(attn, "rotary_cos", None), getattr(attn, "rotary_sin", None)
    if isinstance(cos, Tensor) and isinstance(sin, Tensor):
        return cos, sin, layout, "TransformerLens rotary_cos/sin"
    for mod in view.model.modules():
        cos, sin = getattr(mod, "cos_cached", None), getattr(mod, "sin_cached", None)
        if isinstance(cos, Tensor) and isinstance(sin, Tensor) and type(mod).__name__ == (
            "NativeRotary"
        ):
            return cos, sin, "adjacent", "TransformerLens NativeRotary"
    raise NotImplementedError(
        "no rotary frequencies found on this model (neither a Hugging Face rotary module "
        "with inv_freq nor TransformerLens rotary tables)"
    )
