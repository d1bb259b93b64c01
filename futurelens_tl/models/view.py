"""The adapter over TransformerLens models: the floor the rest of the package stands on.

``ModelView`` is the only place in ``futurelens_tl`` that touches TransformerLens internals. It
normalises the differences between TransformerLens 4 ``TransformerBridge`` (also shipped by 3.x)
and TransformerLens 3.x ``HookedTransformer``:

* hook names (the legacy names that work on both lines),
* weights (grouped-query K/V expanded to ``n_heads``; ``W_pos`` is ``None`` for rotary models;
  missing biases are zeros; norm parameters are ``None`` when folded),
* the final readout ``ln_final`` + ``W_U`` + ``b_U`` with normalisation statistics recomputed for
  every residual row (never the cached final-layer scale; reference
  ``lenses-and-transformerlens.md`` §A.1-A.2),
* the residual basis (``"raw"`` HF residuals vs ``"processed"`` ones: compatibility mode,
  ``fold_ln``, centred writing weights; §C.6),
* a stable fingerprint for trained artifacts.

Layer convention (everywhere in the package): layer ``l`` is the output of block ``l``
(``blocks.{l}.hook_resid_post``); layer ``-1`` (alias ``"embed"``) is the embedding output
(``blocks.0.hook_resid_pre``).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, Literal

import torch
from jaxtyping import Float, Int
from torch import Tensor

from futurelens_tl.models._tl import tl_version
from futurelens_tl.models.weights import NormParams, WeightSurface

__all__ = [
    "Basis",
    "LayerLike",
    "ModelView",
    "NormParams",
    "as_view",
    "resid_hook_name",
]

Basis = Literal["raw", "processed"]
LayerLike = int | str


# TL 4.3 bridges around these HF architectures report use_attn_scale=True although the wrapped
# HF attention does not scale (GPT-Neo: reference layer0-decomposition.md §12.1).
_UNSCALED_HF_ARCHITECTURES = frozenset({"GPTNeoForCausalLM"})


def _attn_scale(backend: str, cfg: Any, d_head: int) -> float:
    """The divisor of attention scores: ``sqrt(d_head)`` unless the model does not scale.

    Bridge configs store ``attn_scale = -1`` meaning "unset"; non-positive values fall back to
    the default.
    """
    arch = getattr(cfg, "architecture", None) or getattr(cfg, "original_architecture", None)
    if backend == "bridge" and arch in _UNSCALED_HF_ARCHITECTURES:
        return 1.0
    if not bool(getattr(cfg, "use_attn_scale", True)):
        return 1.0
    try:
        s = float(getattr(cfg, "attn_scale", 0.0) or 0.0)
    except (TypeError, ValueError):
        s = 0.0
    return s if s > 0 else math.sqrt(d_head)


def resid_hook_name(layer: int) -> str:
    """Hook name of the residual stream at ``layer`` (``-1`` = embedding output)."""
    return "blocks.0.hook_resid_pre" if layer == -1 else f"blocks.{layer}.hook_resid_post"


class ModelView(WeightSurface):
    """Backend-neutral view of a TransformerLens model.

    Args:
        model: A ``TransformerBridge`` (TL 3.x/4.x) or a ``HookedTransformer`` (TL 3.x).

    Raises:
        TypeError: If ``model`` is neither.

    Examples:
        >>> import futurelens_tl as fl
        >>> view = fl.ModelView(fl.toy_model())
        >>> view.backend, view.basis
        ('bridge', 'raw')
        >>> view.resid_hook(-1), view.resid_hook(0)
        ('blocks.0.hook_resid_pre', 'blocks.0.hook_resid_post')
    """

    def __init__(self, model: Any):
        if isinstance(model, ModelView):  # pragma: no cover - use as_view
            model = model.model
        name = type(model).__name__
        if "Bridge" in name:
            self.backend: Literal["bridge", "hooked"] = "bridge"
        elif name == "HookedTransformer" or (
            hasattr(model, "cfg") and hasattr(model, "run_with_cache") and hasattr(model, "W_E")
        ):
            self.backend = "hooked"
        else:
            raise TypeError(
                f"model must be a TransformerLens TransformerBridge or HookedTransformer, got "
                f"{name}. Load one with fl.load_model(name_or_path) or fl.toy_model()."
            )
        self.model = model
        cfg = model.cfg
        self.cfg = cfg
        self.n_layers: int = int(cfg.n_layers)
        self.d_model: int = int(cfg.d_model)
        self.n_heads: int = int(cfg.n_heads)
        self.d_head: int = int(cfg.d_head)
        self.d_vocab: int = int(cfg.d_vocab)
        self.n_ctx: int = int(cfg.n_ctx)
        n_kv = getattr(cfg, "n_key_value_heads", None)
        self.n_kv_heads: int = int(n_kv) if n_kv else self.n_heads
        self.positional_embedding_type: str = str(
            getattr(cfg, "positional_embedding_type", "standard")
        )
        self.eps: float = float(getattr(cfg, "eps", 1e-5))
        self.attn_scale: float = _attn_scale(self.backend, cfg, self.d_head)
        self.use_attn_scale: bool = self.attn_scale != 1.0 or self.d_head == 1

    # ------------------------------------------------------------------ identity
    @property
    def tokenizer(self) -> Any:
        return getattr(self.model, "tokenizer", None)

    @property
    def compatibility_mode(self) -> bool:
        return bool(getattr(self.model, "compatibility_mode", False))

    @property
    def basis(self) -> Basis:
        """Residual basis: ``"raw"`` (HF hidden states) or ``"processed"`` (centred/folded).

        ``processed`` when the bridge is in compatibility mode, when LayerNorm was folded
        (``LNPre``/``RMSPre``), or when the writing weights were centred (every row of ``W_E``
        has mean zero to float precision: never true of trained or random raw weights).
        """
        if self.compatibility_mode or self.normalization_type in ("LNPre", "RMSPre"):
            return "processed"
        if self.normalization_type == "LN":
            row_mean = self.W_E.detach().float().mean(-1).abs().max()
            row_scale = self.W_E.detach().float().abs().mean()
            if row_mean <= 1e-6 * max(float(row_scale), 1e-12):
                return "processed"
        return "raw"

    @property
    def fingerprint(self) -> str:
        """A stable 16-hex-digit identifier of the architecture and weights.

        It hashes the architecture numbers and a strided sample of every weight of the
        normalised surface (W_E, W_pos, attention, unembedding), cast to bfloat16, so the same
        weights give the same fingerprint on bridge and HookedTransformer, on any device, and
        in fp32 or bf16. Processing (compatibility mode) changes weights and so the fingerprint;
        artifacts also record the basis, which is checked first for a clearer error.
        """
        h = hashlib.sha256()
        arch = {
            "n_layers": self.n_layers,
            "d_model": self.d_model,
            "n_heads": self.n_heads,
            "d_head": self.d_head,
            "d_vocab": self.d_vocab,
            "pos": self.positional_embedding_type,
        }
        h.update(json.dumps(arch, sort_keys=True).encode())
        tensors = [self.W_E, self.W_pos, self.W_Q, self.W_K, self.W_V, self.W_O, self.W_U]
        for t in tensors:
            if t is None:
                h.update(b"none")
                continue
            flat = t.detach().reshape(-1)
            step = max(1, flat.numel() // 4096)
            sample = flat[::step][:4096].to("cpu", torch.bfloat16).view(torch.int16)
            h.update(str(tuple(t.shape)).encode())
            h.update(sample.numpy().tobytes())
        return h.hexdigest()[:16]

    def describe(self) -> dict[str, Any]:
        """A JSON-ready summary of the model (what ``futurelens-tl info`` prints)."""
        n_params = sum(p.numel() for p in self.model.parameters())
        return {
            "backend": self.backend,
            "transformer_lens": tl_version(),
            "class": type(self.model).__name__,
            "n_layers": self.n_layers,
            "d_model": self.d_model,
            "n_heads": self.n_heads,
            "n_kv_heads": self.n_kv_heads,
            "d_head": self.d_head,
            "d_vocab": self.d_vocab,
            "n_ctx": self.n_ctx,
            "normalization_type": self.normalization_type,
            "positional_embedding_type": self.positional_embedding_type,
            "basis": self.basis,
            "fingerprint": self.fingerprint,
            "n_params": int(n_params),
            "dtype": str(self.dtype).replace("torch.", ""),
            "device": str(self.device),
        }

    # ------------------------------------------------------------------ layers and hooks
    def layer_index(self, layer: Any, *, arg: str = "layer") -> int:
        """Validate a layer (``-1``/``"embed"`` .. ``n_layers-1``) and return it as an int.

        Raises:
            ValueError: If the layer is out of range or an unknown string.
            TypeError: If it is neither int nor str.
        """
        if isinstance(layer, str):
            if layer == "embed":
                return -1
            try:
                layer = int(layer)
            except ValueError:
                raise ValueError(
                    f"{arg}={layer!r} is not a layer; use an int in -1..{self.n_layers - 1} "
                    "(-1 or 'embed' is the embedding output)."
                ) from None
        if isinstance(layer, bool) or not isinstance(layer, int):
            raise TypeError(f"{arg} must be an int or 'embed', got {type(layer).__name__}")
        if not -1 <= layer < self.n_layers:
            raise ValueError(
                f"{arg}={layer} is out of range for a {self.n_layers}-layer model; allowed "
                f"-1 ('embed') .. {self.n_layers - 1} (layer l = output of block l)."
            )
        return layer

    def layer_indices(self, layers: Any) -> list[int]:
        """Validate several layers; ``None`` means all of ``-1 .. n_layers-1``."""
        if layers is None:
            return list(range(-1, self.n_layers))
        if isinstance(layers, (int, str)):
            layers = [layers]
        out = [self.layer_index(x, arg="layers") for x in layers]
        if not out:
            raise ValueError("layers is empty; pass None for all layers or a non-empty list.")
        return out

    @staticmethod
    def resid_hook(layer: int) -> str:
        """Hook name of the residual stream at ``layer`` (see the module's layer convention)."""
        return resid_hook_name(layer)

    @staticmethod
    def attn_hook(layer: int, what: str = "pattern") -> str:
        """``blocks.{layer}.attn.hook_{what}`` (pattern, attn_scores, q, k, v, z)."""
        return f"blocks.{layer}.attn.hook_{what}"

    # ------------------------------------------------------------------ tokens and running
    def to_tokens(
        self,
        text: str | Sequence[str] | Tensor,
        *,
        prepend_bos: bool = True,
        arg: str = "text",
    ) -> Int[Tensor, "batch pos"]:
        """Tokenise (or validate) input; always ``[batch, pos]`` on the model's device.

        Raises:
            ValueError: On empty text, ids outside the vocabulary, or more than ``n_ctx``
                tokens (split long text with ``futurelens_tl.data.token_windows``).
            TypeError: On input that is neither text nor a tensor of token ids.
        """
        if isinstance(text, Tensor):
            tokens = text
            if tokens.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8):
                raise TypeError(f"{arg} must hold integer token ids, got dtype {tokens.dtype}")
            if tokens.ndim == 1:
                tokens = tokens[None]
            if tokens.ndim != 2:
                raise ValueError(f"{arg} must be [batch, pos] token ids, got {tuple(tokens.shape)}")
            if tokens.numel() and (int(tokens.min()) < 0 or int(tokens.max()) >= self.d_vocab):
                raise ValueError(
                    f"{arg} holds token ids outside the vocabulary 0..{self.d_vocab - 1} "
                    f"(min {int(tokens.min())}, max {int(tokens.max())})."
                )
            tokens = tokens.long().to(self.device)
        else:
            texts = [text] if isinstance(text, str) else list(text)
            if not texts or any(not isinstance(t, str) for t in texts):
                raise TypeError(f"{arg} must be a string, a list of strings or token ids")
            if any(t == "" for t in texts) and not prepend_bos:
                raise ValueError(f"{arg} is empty; give at least one character of text.")
            if self.tokenizer is None:
                raise ValueError("this model has no tokenizer; pass token ids instead of text")
            if any(t == "" for t in texts):
                raise ValueError(f"{arg} is empty; give at least one character of text.")
            # truncate=False: TransformerLens would otherwise cut at n_ctx silently.
            tokens = self.model.to_tokens(texts if len(texts) > 1 else texts[0],
                                          prepend_bos=prepend_bos, truncate=False)
            tokens = tokens.to(self.device)
        if tokens.shape[-1] == 0:
            raise ValueError(f"{arg} tokenises to nothing; give at least one token.")
        if tokens.shape[-1] > self.n_ctx:
            raise ValueError(
                f"{arg} is {tokens.shape[-1]} tokens long but the model's context is n_ctx="
                f"{self.n_ctx}; shorten it or split it with futurelens_tl.data.token_windows()."
            )
        return tokens

    def to_str_tokens(self, tokens: Int[Tensor, "... pos"]) -> list[str]:
        """Readable string per token of a 1-D (or ``[1, pos]``) token tensor."""
        t = tokens.reshape(-1) if tokens.ndim > 1 and tokens.shape[0] == 1 else tokens
        if t.ndim != 1:
            raise ValueError(f"to_str_tokens takes one sequence, got shape {tuple(tokens.shape)}")
        return [str(s) for s in self.model.to_str_tokens(t)]

    def forward(self, tokens: Int[Tensor, "batch pos"], **kwargs: Any) -> Tensor:
        """Plain forward pass returning logits."""
        return self.model(tokens, **kwargs)

    def run_with_cache(
        self,
        tokens: Int[Tensor, "batch pos"],
        names: Iterable[str] | Callable[[str], bool] | None = None,
        **kwargs: Any,
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """Run once, caching the hooks in ``names`` (a list or a predicate); a plain dict back."""
        if names is not None and not callable(names):
            wanted = set(names)
            names_filter: Callable[[str], bool] | None = wanted.__contains__
        else:
            names_filter = names  # type: ignore[assignment]
        logits, cache = self.model.run_with_cache(tokens, names_filter=names_filter, **kwargs)
        return logits, {k: cache[k] for k in cache.keys()}

    def run_with_hooks(
        self,
        tokens: Tensor,
        fwd_hooks: Sequence[tuple[str | Callable[[str], bool], Callable[..., Any]]],
        **kwargs: Any,
    ) -> Tensor:
        """``model.run_with_hooks`` with the legacy hook signature ``fn(tensor, hook)``."""
        return self.model.run_with_hooks(tokens, fwd_hooks=list(fwd_hooks), **kwargs)

    def residuals(
        self,
        tokens: Int[Tensor, "batch pos"],
        layers: Iterable[LayerLike] | None = None,
        **kwargs: Any,
    ) -> tuple[Float[Tensor, "batch pos d_vocab"], Float[Tensor, "layers batch pos d_model"]]:
        """Residual stream at ``layers`` (default all, ``-1..L-1``) from one forward pass.

        Returns:
            ``(logits, resid)`` with ``resid[k]`` the residual at ``layers[k]``.
        """
        idx = self.layer_indices(layers)
        names = [self.resid_hook(layer) for layer in idx]
        logits, cache = self.run_with_cache(tokens, names, **kwargs)
        return logits, torch.stack([cache[n] for n in names])

    @contextlib.contextmanager
    def isolated_hooks(self) -> Iterator[None]:
        """Temporarily detach every forward hook already on the model's hook points.

        A lens that runs the model from inside a hook (the Future Lens prompt methods under
        ``run_with_lenses``) would otherwise re-trigger the outer hooks on its inner run.
        """
        saved: list[tuple[Any, dict[int, Any]]] = []
        for hp in getattr(self.model, "hook_dict", {}).values():
            hooks = getattr(hp, "_forward_hooks", None)
            if hooks:
                saved.append((hp, dict(hooks)))
                hooks.clear()
        try:
            yield
        finally:
            for hp, hooks in saved:
                hp._forward_hooks.update(hooks)

    def freeze(self) -> ModelView:
        """Put the model in eval mode with ``requires_grad_(False)`` (trainers call this)."""
        self.model.eval()
        self.model.requires_grad_(False)
        return self

    def __repr__(self) -> str:
        return (
            f"ModelView({type(self.model).__name__}, L={self.n_layers}, d={self.d_model}, "
            f"H={self.n_heads}, V={self.d_vocab}, basis={self.basis})"
        )


def as_view(model: Any) -> ModelView:
    """Return ``model`` as a :class:`ModelView` (idempotent; cached on the model object)."""
    if isinstance(model, ModelView):
        return model
    view = getattr(model, "_futurelens_view", None)
    if isinstance(view, ModelView) and view.model is model:
        return view
    view = ModelView(model)
    try:
        object.__setattr__(model, "_futurelens_view", view)
    except Exception:  # pragma: no cover - exotic models refusing attributes
        pass
    return view

