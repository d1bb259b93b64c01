"""The Future Lens (Pal et al. 2023): anticipate tokens N steps ahead from one hidden state.

Reference ``future-lens.md``. One :class:`FutureLens` holds one of the four published methods
(§2), its source layers and its lookaheads ``N`` (``N = 0`` is the next token ``x_{T+1}``,
``N = 1`` the token after it, ...):

``linear_hidden`` (§2.1, "Linear Model")
    ``h_T^l -> A h + b``, decoded by the model's frozen final norm + unembedding. Least squares
    on the **whole** training cache (fp64 normal equations, pitfall 4), then the reference SGD
    fine-tuning on ``KL(P_model^N || P_lens^N)`` with checkpoint selection on validation only.
    Blind: never sees ``x_{T+1..T+N}``.
``linear_vocab`` (§2.2, "Direct Vocab")
    ``h_T^l -> W h + c`` straight to logits (``d_model x d_vocab`` per map; ``rank=`` gives a
    low-rank factorisation). Blind.
``fixed_prompt`` (§2.3)
    ``h_T^l`` overwrites the residual at the last position of a fixed natural-language prompt at
    the same layer; for ``N >= 1`` the tokens ``x_{T+1..T+N}`` follow the prompt (teacher
    forcing). Ships the published prompts and the Patchscopes token-identity prompt (§8.1).
``learned_prompt`` (§2.4, the Future Lens proper)
    ``M = 10`` trainable vectors replace the token embeddings (``hook_embed``; learned
    positional embeddings are still added by the model, ours §2.4), ``h_T^l`` overwrites
    ``blocks.{l}.hook_resid_post[:, M-1]`` and the remaining blocks run on; teacher forcing for
    ``N >= 1``; loss ``KL(P_model(T+N) || P_lens)``, AdamW, trained on ``N = 1`` by default; one
    prompt per source layer. Cross-layer transplant (source ≠ target layer, as in the published
    demo) only through an explicit ``target_layer``.

Inputs of the prompt methods are ``M + N`` tokens without BOS and all rows of one batch share
one length, so no padding is involved. Features come from
:func:`~futurelens_tl.lenses.future_data.build_features` (one no-grad pass per batch for all
layers and methods) and are reused across methods and epochs.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

from futurelens_tl._io import sha256_hex
from futurelens_tl.data import progress
from futurelens_tl.lenses.artifacts import load_artifact, save_artifact
from futurelens_tl.lenses.base import Lens, LensMismatchError
from futurelens_tl.lenses.future_data import LABEL_SOURCES, FutureLensData, build_features
from futurelens_tl.lenses.trainer import EpochCheckpoint, TrainingDivergedError
from futurelens_tl.model import ModelView, as_view

__all__ = [
    "FIXED_PROMPTS",
    "FutureLens",
    "FutureLensConfig",
    "FutureLensData",
    "FutureTokenView",
    "METHODS",
    "PAPER_GPTJ_RESULTS",
    "build_features",
    "paper_figure",
]

METHODS = ("linear_hidden", "linear_vocab", "fixed_prompt", "learned_prompt")
FORMAT_VERSION = 1

#: Published fixed prompts (reference §2.3, ``module._COMPARE_CONTEXT``; index 0 is the authors'
#: best) and the Patchscopes token-identity prompt (§8.1). Exact strings, no trailing space.
FIXED_PROMPTS: dict[str, str] = {
    "hello": 'Hello! Could you please tell me more about "',
    "multi_tokens": 'The multi-tokens present here are "',
    "concepts": "The concepts in this hidden state listed are: (",
    "endoftext_concept": "<|endoftext|> This state is describing about the following concept:",
    "token_identity": "cat -> cat\n1135 -> 1135\nhello -> hello\n?",
}
_FIXED_BY_INDEX = list(FIXED_PROMPTS)[:4]

#: Best-layer precision@1 on GPT-J-6B (reference §5.1; block index of the best layer).
PAPER_GPTJ_RESULTS: dict[str, dict[int, float]] = {
    "learned_prompt": {1: 0.484, 2: 0.437, 3: 0.469},
    "fixed_prompt": {0: 0.966, 1: 0.187, 2: 0.283, 3: 0.342},
    "linear_hidden": {0: 0.979, 1: 0.292, 2: 0.190, 3: 0.158},
    "linear_vocab": {0: 0.857, 1: 0.275, 2: 0.194, 3: 0.147},
    "bigram": {1: 0.201},
}


# ====================================================================== configuration
@dataclass
class FutureLensConfig:
    """Every setting of Future Lens training and evaluation (defaults sized for small models).

    :meth:`paper_gptj` returns the official GPT-J settings (reference §2.5, §3, §4).

    Attributes:
        prompt_length: Soft-prompt length ``M`` (learned prompt).
        train_n: Lookaheads the learned prompt is trained on (official: ``(1,)``).
        prompt_init_std: Soft-prompt init ``normal(0, std)`` (official 0.02).
        prompt_lr: AdamW learning rate (official 5e-4).
        prompt_weight_decay: AdamW weight decay (official 1e-5).
        prompt_batch_size: Examples per micro-batch (official 2).
        prompt_grad_accum: Micro-batches per optimizer step (official 4).
        prompt_epochs: Passes over the training split (official 1).
        linear_ls: Least-squares initialisation of ``linear_hidden``.
        linear_ridge: Relative ridge added to ``XᵀX`` (times its mean diagonal).
        linear_lr: SGD learning rate (official ``0.5 * (1 - 0.9) = 0.05``).
        linear_momentum: Nesterov momentum (0.9).
        linear_weight_decay: SGD weight decay (1e-3).
        linear_clip: Gradient-norm clip per map (1.0).
        linear_batch_size: Examples per micro-batch (100).
        linear_grad_accum: Micro-batches per step (5).
        linear_epochs: KL fine-tuning epochs (official 3; 0 = least squares only).
        vocab_lr: AdamW learning rate of ``linear_vocab`` (unpublished; ours).
        vocab_epochs: Epochs of ``linear_vocab``.
        vocab_rank: Low-rank factorisation of ``linear_vocab`` (None = full).
        fixed_prompt: Name in :data:`FIXED_PROMPTS`, index 0..3, or a custom string.
        target_layer: Cross-layer transplant target (None = the source layer, the default).
        n_max: Largest lookahead cached in the features.
        label_source: ``"model_greedy"`` (default) or ``"corpus"``.
        window: Feature window length (None = ``min(n_ctx, 128)``).
        contexts_per_window: Source positions drawn per window.
        max_contexts: Cap on cached contexts (official: 100,000 train + 1,000 test).
        max_train_examples: Cap on the examples the learned prompt sees (official 10,000).
        splits: Train / validation / test fractions.
        feature_batch_size: Contexts per feature pass.
        eval_batch_size: Rows per evaluation forward.
        autocast: ``"bf16"`` for bf16 autocast on CUDA (official: bf16-mixed), None for fp32.
        seed: Seed of everything random (official 42).
    """

    prompt_length: int = 10
    train_n: tuple[int, ...] = (1,)
    prompt_init_std: float = 0.02
    prompt_lr: float = 5e-4
    prompt_weight_decay: float = 1e-5
    prompt_batch_size: int = 2
    prompt_grad_accum: int = 4
    prompt_epochs: int = 1
    linear_ls: bool = True
    linear_ridge: float = 1e-4
    linear_lr: float = 0.05
    linear_momentum: float = 0.9
    linear_weight_decay: float = 1e-3
    linear_clip: float = 1.0
    linear_batch_size: int = 100
    linear_grad_accum: int = 5
    linear_epochs: int = 3
    vocab_lr: float = 1e-3
    vocab_epochs: int = 3
    vocab_rank: int | None = None
    fixed_prompt: str | int = "hello"
    target_layer: int | None = None
    n_max: int = 3
    label_source: str = "model_greedy"
    window: int | None = None
    contexts_per_window: int = 1
    max_contexts: int | None = None
    max_train_examples: int | None = None
    splits: tuple[float, float, float] = (0.8, 0.1, 0.1)
    feature_batch_size: int = 16
    eval_batch_size: int = 256
    autocast: str | None = None
    seed: int = 0

    @classmethod
    def paper_gptj(cls) -> FutureLensConfig:
        """The official GPT-J-6B settings (reference §2.5, §3, §4).

        Soft prompt ``M = 10``, ``normal(0, 0.02)``, AdamW lr 5e-4 wd 1e-5, batch 2 × accum 4,
        1 epoch over the first 10,000 of 100,000 training examples, trained on N = 1,
        bf16-mixed, seed 42; linear maps: least squares then SGD Nesterov 0.9, lr 0.05, wd 1e-3,
        clip 1.0, batch 100 × accum 5, 3 epochs; evaluation N = 0..3 on 1,000 test examples,
        batch 8, top-k 10; contexts up to 1,024 tokens (windows of 1,025 + 11 labels),
        greedy labels; fixed prompt 0; same-layer transplant.

        Examples:
            >>> import futurelens_tl as fl
            >>> cfg = fl.FutureLensConfig.paper_gptj()
            >>> cfg.prompt_length, cfg.prompt_lr, cfg.seed
            (10, 0.0005, 42)
        """
        return cls(
            prompt_length=10, train_n=(1,), prompt_init_std=0.02, prompt_lr=5e-4,
            prompt_weight_decay=1e-5, prompt_batch_size=2, prompt_grad_accum=4,
            prompt_epochs=1, linear_ls=True, linear_ridge=1e-6, linear_lr=0.05,
            linear_momentum=0.9, linear_weight_decay=1e-3, linear_clip=1.0,
            linear_batch_size=100, linear_grad_accum=5, linear_epochs=3,
            fixed_prompt="hello", target_layer=None, n_max=3, label_source="model_greedy",
            window=1036, contexts_per_window=1, max_contexts=101_000,
            max_train_examples=10_000, splits=(100_000 / 101_000 * 0.99, 0.01 * 100_000 / 101_000,
                                               1_000 / 101_000),
            feature_batch_size=8, eval_batch_size=8 * 28, autocast="bf16", seed=42,
        )

    def replace(self, **kw: Any) -> FutureLensConfig:
        """A copy with some fields changed (unknown names raise ``TypeError``)."""
        names = {f.name for f in fields(self)}
        bad = sorted(set(kw) - names)
        if bad:
            raise TypeError(f"unknown FutureLensConfig field(s) {bad}; allowed: {sorted(names)}")
        return FutureLensConfig(**{**asdict(self), **kw})

    def validate(self) -> FutureLensConfig:
        if self.prompt_length < 1:
            raise ValueError(f"prompt_length={self.prompt_length} must be >= 1 (M soft vectors).")
        if not self.train_n or any(n < 0 for n in self.train_n):
            raise ValueError(f"train_n={self.train_n} must be a non-empty tuple of N >= 0.")
        if self.label_source not in LABEL_SOURCES:
            raise ValueError(f"label_source={self.label_source!r} is not one of {LABEL_SOURCES}.")
        if self.vocab_rank is not None and self.vocab_rank < 1:
            raise ValueError(f"vocab_rank={self.vocab_rank} must be >= 1 or None.")
        for nm in ("prompt_batch_size", "prompt_grad_accum", "linear_batch_size",
                   "linear_grad_accum", "eval_batch_size", "feature_batch_size"):
            if getattr(self, nm) < 1:
                raise ValueError(f"{nm}={getattr(self, nm)} must be >= 1.")
        if self.autocast not in (None, "bf16"):
            raise ValueError(f"autocast={self.autocast!r} must be None or 'bf16'.")
        return self


# ====================================================================== helpers
def _as_n_tuple(n_ahead: int | Iterable[int], arg: str = "n_ahead") -> tuple[int, ...]:
    vals = (n_ahead,) if isinstance(n_ahead, int) else tuple(n_ahead)
    if not vals:
        raise ValueError(f"{arg} is empty; give at least one lookahead N >= 0.")
    for v in vals:
        if isinstance(v, bool) or not isinstance(v, int):
            raise TypeError(f"{arg} must hold ints, got {v!r}")
        if v < 0:
            raise ValueError(f"{arg} holds N={v}; N must be >= 0 (0 = the next token).")
    return tuple(sorted(set(vals)))


def _kl(target_logp: Tensor, lens_logits: Tensor) -> Tensor:
    """``KL(P_target || P_lens)`` per row, fp32 (reference §2.4 batchmean = mean of this)."""
    lp = torch.log_softmax(lens_logits.float(), dim=-1)
    return (target_logp.exp() * (target_logp - lp)).sum(-1)


# ====================================================================== the lens
class FutureLens(Lens):
    """A Future Lens: predicts the token ``N`` steps after the next from ``h_T^l``.

    Build one with :meth:`fit` (or :meth:`load`, :meth:`load_official_prompt`). ``forward``
    returns logits for ``N = self.n_ahead`` (the first of ``n_aheads``); the prompt methods at
    ``N >= 1`` are token-fed: pass ``next_tokens=[..., N]`` (teacher forcing, the paper's
    protocol) or, without it, the lens generates ``x_{T+1..T+N}`` greedily from the
    transplanted prompt itself (free-running, as in the visualisation tool).

    Args:
        model: The TransformerLens model.
        method: One of :data:`METHODS`.
        layers: Source layers (default all blocks ``0 .. L-1``; ``-1`` = embedding output).
        n_ahead: Lookaheads (one map per (layer, N) for the linear methods).
        config: :class:`FutureLensConfig` (defaults for small models).
        name: Label in tables and grids.

    Examples:
        >>> import futurelens_tl as fl
        >>> model = fl.toy_model(verbose=False)
        >>> lens = fl.FutureLens(model, "fixed_prompt", layers=[0, 1], n_ahead=(0, 1))
        >>> lens.token_fed, lens.n_ahead
        (False, 0)
    """

    def __init__(
        self,
        model: Any,
        method: str = "learned_prompt",
        layers: Iterable[int] | None = None,
        n_ahead: int | Iterable[int] = (1, 2, 3),
        *,
        config: FutureLensConfig | None = None,
        name: str | None = None,
        fixed_prompt: str | int | Tensor | None = None,
    ):
        if method not in METHODS:
            raise ValueError(f"method={method!r} is not one of {METHODS}.")
        view = as_view(model)
        if layers is None:
            layers = list(range(view.n_layers))
        super().__init__(model, layers, name=name or f"future[{method}]")
        self.method = method
        self.config = (config or FutureLensConfig()).validate()
        self.n_aheads: tuple[int, ...] = _as_n_tuple(n_ahead)
        self.n_ahead = self.n_aheads[0]
        self.token_fed = self.is_prompt and self.n_ahead >= 1
        self.target_layer: int | None = None
        if self.config.target_layer is not None:
            self.target_layer = view.layer_index(self.config.target_layer, arg="target_layer")
        self.prompt_text: str | None = None
        self.prompt_key: str | None = None
        self.training_summary: dict[str, Any] = {}
        d, v, nl, nn = view.d_model, view.d_vocab, len(self.layers), len(self.n_aheads)
        if method == "linear_hidden":
            eye = torch.eye(d).expand(nl, nn, d, d).clone()
            self.A = torch.nn.Parameter(eye)
            self.b = torch.nn.Parameter(torch.zeros(nl, nn, d))
        elif method == "linear_vocab":
            r = self.config.vocab_rank
            n_params = nl * nn * (d * (r if r else v) + (r * v if r else 0) + v)
            if n_params > 50_000_000:
                warnings.warn(
                    f"linear_vocab allocates {n_params / 1e6:.0f}M parameters "
                    f"({n_params * 4 / 1e9:.2f} GB fp32) for {nl} layers x {nn} lookaheads; pass "
                    "config.vocab_rank=r for a low-rank map, or fewer layers.", stacklevel=2)
            if r:
                g = torch.Generator().manual_seed(self.config.seed)
                self.U = torch.nn.Parameter(torch.randn(nl, nn, d, r, generator=g) / math.sqrt(d))
                self.V = torch.nn.Parameter(torch.zeros(nl, nn, r, v))
            else:
                self.W = torch.nn.Parameter(torch.zeros(nl, nn, d, v))
            self.c = torch.nn.Parameter(torch.zeros(nl, nn, v))
        elif method == "fixed_prompt":
            self.set_fixed_prompt(self.config.fixed_prompt if fixed_prompt is None
                                  else fixed_prompt)
        else:
            g = torch.Generator().manual_seed(self.config.seed)
            m = self.config.prompt_length
            self.soft_prompt = torch.nn.Parameter(
                torch.randn(nl, m, d, generator=g) * self.config.prompt_init_std
            )
        self.to(view.device)

    # ------------------------------------------------------------------ properties
    @property
    def is_prompt(self) -> bool:
        return self.method in ("fixed_prompt", "learned_prompt")

    @property
    def prompt_length(self) -> int:
        if self.method == "learned_prompt":
            return int(self.soft_prompt.shape[1])
        if self.method == "fixed_prompt":
            return int(self.prompt_tokens.shape[0])
        raise AttributeError(f"{self.method} has no prompt")

    def set_fixed_prompt(self, prompt: str | int | Tensor) -> None:
        """Use a published prompt (name or index 0..3), a custom string or token ids.

        The prompt is tokenised without BOS (reference §2.3); the transplant goes to its last
        position.

        Raises:
            ValueError: Unknown index, or a prompt that tokenises to nothing.
        """
        if isinstance(prompt, Tensor):
            if prompt.numel() == 0:
                raise ValueError("fixed_prompt tokenises to nothing (0 token ids).")
            toks = self.view.to_tokens(prompt.reshape(1, -1), arg="fixed_prompt")[0]
            self.register_buffer("prompt_tokens", toks.clone(), persistent=True)
            self.prompt_text, self.prompt_key = None, "custom_ids"
            self.name = "future[fixed_prompt:custom_ids]"
            return
        if isinstance(prompt, bool):
            raise TypeError("fixed_prompt must be a name, an index 0..3 or a string")
        if isinstance(prompt, int):
            if not 0 <= prompt < len(_FIXED_BY_INDEX):
                raise ValueError(f"fixed_prompt={prompt} must be an index 0..3 or a string.")
            key: str | None = _FIXED_BY_INDEX[prompt]
        else:
            key = prompt if prompt in FIXED_PROMPTS else None
        text = FIXED_PROMPTS[key] if key else str(prompt)
        if text == "":
            raise ValueError("fixed_prompt='' tokenises to nothing; give a non-empty prompt.")
        toks = self.view.to_tokens(text, prepend_bos=False, arg="fixed_prompt")[0]
        if toks.numel() == 0:
            raise ValueError(f"fixed_prompt={text!r} tokenises to nothing.")
        self.register_buffer("prompt_tokens", toks.clone(), persistent=True)
        self.prompt_text, self.prompt_key = text, key or "custom"
        self.name = f"future[fixed_prompt:{self.prompt_key}]"

    def _li(self, layer: int) -> int:
        return self.layers.index(self.check_layer(layer))

    def _ni(self, n: int) -> int:
        if n not in self.n_aheads:
            raise ValueError(
                f"n_ahead={n} is not covered by {self.name!r}; it has maps for N in "
                f"{self.n_aheads}.")
        return self.n_aheads.index(n)

    def _check_n(self, n: int) -> int:
        if isinstance(n, bool) or not isinstance(n, int):
            raise TypeError(f"n_ahead must be an int, got {type(n).__name__}")
        if n < 0:
            raise ValueError(f"n_ahead={n} must be >= 0 (N=0 is the next token).")
        if not self.is_prompt:
            self._ni(n)
        return n

    # ------------------------------------------------------------------ readouts
    def _linear_logits(self, h: Tensor, li: Tensor, ni: int) -> Tensor:
        """Blind maps applied row-wise; ``li`` is the map index of each row."""
        if self.method == "linear_hidden":
            A, b = self.A[li, ni], self.b[li, ni]
            pred = torch.einsum("rd,rde->re", h.to(A.dtype), A) + b
            return self.view.readout(pred.to(self.view.dtype))
        c = self.c[li, ni]
        if hasattr(self, "W"):
            return torch.einsum("rd,rdv->rv", h.to(c.dtype), self.W[li, ni]) + c
        z = torch.einsum("rd,rdk->rk", h.to(c.dtype), self.U[li, ni])
        return torch.einsum("rk,rkv->rv", z, self.V[li, ni]) + c

    def _prompt_logits(
        self,
        h: Float[Tensor, "rows d_model"],
        prompt_idx: Int[Tensor, " rows"],
        patch_layer: Int[Tensor, " rows"],
        tail: Int[Tensor, "rows n"],
        *,
        all_positions: bool = False,
    ) -> Tensor:
        """Transplant ``h`` into the prompt and run on (reference §2.3-2.4, §7).

        Row ``r`` uses prompt ``prompt_idx[r]`` (learned) and is patched at layer
        ``patch_layer[r]``, position ``P-1``; the tokens ``tail[r]`` follow the prompt. Returns
        the logits at the last position (or at ``P-1 ..`` end when ``all_positions``).
        """
        view = self.view
        rows = h.shape[0]
        p = self.prompt_length
        if self.method == "fixed_prompt":
            head = self.prompt_tokens.to(view.device).expand(rows, p)
        else:
            head = torch.zeros(rows, p, dtype=torch.long, device=view.device)
        tokens = torch.cat([head, tail.to(view.device).long()], dim=1)
        hooks: list[tuple[str, Any]] = []
        if self.method == "learned_prompt":
            sp = self.soft_prompt[prompt_idx.to(self.soft_prompt.device)]

            def embed_hook(x: Tensor, hook: Any) -> Tensor:
                return torch.cat([sp.to(x.dtype), x[:, p:]], dim=1)

            hooks.append(("hook_embed", embed_hook))
        patch_layer = patch_layer.to(view.device)
        for layer in sorted(set(patch_layer.tolist())):
            sel = torch.nonzero(patch_layer == layer).flatten()

            def patch(x: Tensor, hook: Any, _sel: Tensor = sel) -> Tensor:
                x = x.clone()
                x[_sel, p - 1] = h[_sel].to(x.device, x.dtype)
                return x

            hooks.append((view.resid_hook(layer), patch))
        ctx = (torch.autocast("cuda", dtype=torch.bfloat16)
               if self.config.autocast == "bf16" and view.device.type == "cuda"
               else contextlib.nullcontext())
        with view.isolated_hooks(), ctx:
            logits = view.run_with_hooks(tokens, hooks)
        return logits[:, p - 1 :] if all_positions else logits[:, -1]

    def _row_indices(self, layers: Tensor) -> tuple[Tensor, Tensor]:
        """Prompt index and patch layer for each row's source layer."""
        idx = torch.tensor([self.layers.index(int(x)) for x in layers.tolist()], dtype=torch.long)
        patch = layers.clone() if self.target_layer is None else torch.full_like(
            layers, self.target_layer)
        return idx, patch

    def rows_logits(
        self,
        h: Float[Tensor, "rows d_model"],
        layers: Int[Tensor, " rows"],
        n_ahead: int,
        next_tokens: Int[Tensor, "rows n"] | None = None,
    ) -> Float[Tensor, "rows d_vocab"]:
        """Logits for ``N = n_ahead`` for rows from (possibly) different source layers.

        For prompt methods at ``N >= 1`` ``next_tokens[:, :N]`` are fed after the prompt
        (teacher forcing); ``None`` generates them greedily (free-running).
        """
        n_ahead = self._check_n(n_ahead)
        for x in set(layers.tolist()):
            self.check_layer(int(x))
        if not self.is_prompt:
            li = torch.tensor([self.layers.index(int(x)) for x in layers.tolist()],
                              device=h.device)
            return self._linear_logits(h, li, self._ni(n_ahead))
        pidx, patch = self._row_indices(layers.cpu())
        if n_ahead == 0:
            tail = torch.empty(h.shape[0], 0, dtype=torch.long)
        elif next_tokens is None:
            ids, _ = self._generate(h, pidx, patch, n_ahead)
            tail = ids
        else:
            if next_tokens.shape[-1] < n_ahead:
                raise ValueError(
                    f"next_tokens has {next_tokens.shape[-1]} tokens per row; N={n_ahead} "
                    f"needs the {n_ahead} tokens x_(T+1..T+N).")
            tail = next_tokens[:, :n_ahead]
        return self._prompt_logits(h, pidx, patch, tail)

    def forward(
        self,
        resid: Float[Tensor, "... d_model"],
        layer: int,
        *,
        n_ahead: int | None = None,
        next_tokens: Int[Tensor, "... n"] | None = None,
    ) -> Float[Tensor, "... d_vocab"]:
        """Logits for ``N = n_ahead`` (default ``self.n_ahead``) from residuals at ``layer``.

        Prompt methods at ``N >= 1``: ``next_tokens`` (same leading shape as ``resid``, at least
        ``N`` tokens) are the teacher-forced ``x_{T+1..T+N}``; when omitted the lens generates
        them greedily from the transplant (free-running mode).
        """
        layer = self.check_layer(layer)
        n = self.n_ahead if n_ahead is None else n_ahead
        lead = resid.shape[:-1]
        h = resid.reshape(-1, resid.shape[-1])
        nt = None if next_tokens is None else next_tokens.reshape(h.shape[0], -1)
        layers = torch.full((h.shape[0],), layer, dtype=torch.long)
        out = self.rows_logits(h, layers, n, nt)
        return out.reshape(*lead, out.shape[-1])

    # ------------------------------------------------------------------ continuation
    @torch.no_grad()
    def _generate(
        self, h: Tensor, pidx: Tensor, patch: Tensor, n_tokens: int
    ) -> tuple[Tensor, Tensor]:
        """Greedy free-running generation, full recompute with the patch on every pass."""
        rows = h.shape[0]
        ids = torch.empty(rows, 0, dtype=torch.long, device=self.view.device)
        probs = torch.empty(rows, 0, device=self.view.device)
        for _ in range(n_tokens):
            logits = self._prompt_logits(h, pidx, patch, ids)
            p = torch.softmax(logits.float(), -1)
            top = p.max(-1)
            ids = torch.cat([ids, top.indices[:, None]], 1)
            probs = torch.cat([probs, top.values[:, None]], 1)
        return ids, probs

    @torch.no_grad()
    def rows_continuation(
        self,
        h: Float[Tensor, "rows d_model"],
        layers: Int[Tensor, " rows"],
        n_tokens: int,
        *,
        batch_size: int | None = None,
    ) -> tuple[Int[Tensor, "rows n"], Float[Tensor, "rows n"]]:
        """Greedy ``n_tokens`` after the transplant, for rows from different source layers.

        All rows run together (chunks of ``batch_size``): ``n_tokens`` forward passes per chunk,
        each a full recompute of ``M + k`` tokens that patches position ``M-1`` (the official
        no-cache route, reference §7). Blind methods return their top-1 for ``N = 0..n-1``.
        """
        if isinstance(n_tokens, bool) or not isinstance(n_tokens, int) or n_tokens < 1:
            raise ValueError(f"n_tokens={n_tokens!r} must be an int >= 1.")
        bs = batch_size or self.config.eval_batch_size
        out_ids, out_p = [], []
        for s in range(0, h.shape[0], bs):
            hh, ll = h[s : s + bs].to(self.view.device), layers[s : s + bs].cpu()
            if self.is_prompt:
                pidx, patch = self._row_indices(ll)
                ids, p = self._generate(hh, pidx, patch, n_tokens)
            else:
                cols_i, cols_p = [], []
                for n in range(n_tokens):
                    pr = torch.softmax(self.rows_logits(hh, ll, n).float(), -1).max(-1)
                    cols_i.append(pr.indices)
                    cols_p.append(pr.values)
                ids, p = torch.stack(cols_i, 1), torch.stack(cols_p, 1)
            out_ids.append(ids)
            out_p.append(p)
        return torch.cat(out_ids), torch.cat(out_p)

    def continuation(
        self, resid: Float[Tensor, "rows d_model"], layer: int, n_tokens: int
    ) -> tuple[Int[Tensor, "rows n"], Float[Tensor, "rows n"]]:
        """Greedy free-running continuation of ``n_tokens`` tokens, batched over all rows.

        Returns:
            ``(ids, probs)``, each ``[rows, n_tokens]``: generated ids and their probabilities.

        Examples:
            >>> import torch, futurelens_tl as fl
            >>> model = fl.toy_model(verbose=False)
            >>> lens = fl.FutureLens(model, "fixed_prompt", layers=[1], n_ahead=0)
            >>> ids, p = lens.continuation(torch.zeros(3, model.cfg.d_model), 1, 2)
            >>> tuple(ids.shape)
            (3, 2)
        """
        layer = self.check_layer(layer)
        layers = torch.full((resid.shape[0],), layer, dtype=torch.long)
        return self.rows_continuation(resid, layers, n_tokens)

    def with_target_layer(self, target_layer: int) -> FutureLens:
        """Cross-layer copy (published demo, pitfall 12): every source uses prompt ``target``.

        The returned lens transplants states from every source layer into the prompt trained
        for ``target_layer`` at that layer. Its name carries ``->t`` so views show it.
        """
        if self.method != "learned_prompt":
            raise ValueError("with_target_layer needs a learned_prompt lens.")
        t = self.check_layer(target_layer)
        new = FutureLens(self.view, "learned_prompt", list(range(self.view.n_layers)),
                         self.n_aheads, config=self.config.replace(target_layer=t))
        sp = self.soft_prompt[self.layers.index(t)].detach().clone()
        new.soft_prompt.data.copy_(sp.expand(len(new.layers), *sp.shape))
        new.target_layer = t
        new.basis, new.fingerprint = self.basis, self.fingerprint
        new.training_summary = dict(self.training_summary)
        new.name = f"future[learned_prompt,->{t}]"
        return new

    # ------------------------------------------------------------------ fitting
    @classmethod
    def fit(
        cls,
        model: Any,
        texts: str | Sequence[str] | Tensor | None = None,
        method: str = "learned_prompt",
        layers: Iterable[int] | None = None,
        n_ahead: int | Iterable[int] = (1, 2, 3),
        *,
        config: FutureLensConfig | None = None,
        data: FutureLensData | None = None,
        verbose: bool = True,
        checkpoint: str | os.PathLike[str] | None = None,
        resume: bool = True,
        stop_after_epochs: int | None = None,
        **overrides: Any,
    ) -> FutureLens:
        """Fit a Future Lens of one method on a corpus (or on cached features).

        Args:
            model: The TransformerLens model (frozen here: ``requires_grad_(False)``).
            texts: Training corpus (ignored when ``data`` is given).
            method: ``"linear_hidden"``, ``"linear_vocab"``, ``"fixed_prompt"`` (no training)
                or ``"learned_prompt"``.
            layers: Source layers (default all blocks).
            n_ahead: Lookaheads N the lens serves (linear: one map per N; learned prompt: it is
                trained on ``config.train_n`` and evaluated on any N).
            config: Settings (:class:`FutureLensConfig`); keyword ``overrides`` replace fields.
            data: Cached features from :func:`build_features`, reused across methods.
            verbose: Progress bars.
            checkpoint: File for atomic end-of-epoch checkpoints (parameters, optimiser state,
                validation history and best-so-far state). An existing one written under the
                same settings is resumed (``resume``) and ends in the same parameters as an
                uninterrupted run; one written under other settings is refused.
            resume: Resume from ``checkpoint`` when it exists (``False`` starts over).
            stop_after_epochs: Stop after this many completed epochs (time-boxed jobs); the
                returned lens holds the best state so far and
                ``training_summary["finished"]`` is False.
            **overrides: :class:`FutureLensConfig` fields to replace (``prompt_lr=...``).

        Returns:
            The fitted lens (``basis``/``fingerprint`` set, ``training_summary`` filled).

        Raises:
            ValueError: Unknown method, bad layers or N, an empty corpus, features from
                another model.

        Examples:
            >>> import futurelens_tl as fl
            >>> from futurelens_tl.toy import toy_corpus
            >>> model = fl.toy_model(verbose=False)
            >>> lens = fl.FutureLens.fit(model, toy_corpus(40).texts, "linear_hidden",
            ...                          layers=[1], n_ahead=(1,), linear_epochs=0,
            ...                          verbose=False)
            >>> lens.training_summary["method"]
            'linear_hidden'
        """
        fixed = overrides.pop("fixed_prompt", None)
        if fixed is not None and not isinstance(fixed, Tensor):
            overrides["fixed_prompt"], fixed = fixed, None
        cfg = (config or FutureLensConfig()).replace(**overrides).validate()
        view = as_view(model)
        view.freeze()
        lens = cls(model, method, layers, n_ahead, config=cfg, fixed_prompt=fixed)
        n_needed = max(cfg.train_n if method == "learned_prompt" else lens.n_aheads)
        if method == "fixed_prompt":
            lens.basis, lens.fingerprint = view.basis, view.fingerprint
            lens.training_summary = {"method": method, "prompt": lens.prompt_text}
            return lens
        if data is None:
            if texts is None:
                raise ValueError("texts is None: give a corpus or cached features (data=).")
            data = build_features(
                model, texts, n_max=max(cfg.n_max, n_needed), layers=lens.layers,
                label_source=cfg.label_source, window=cfg.window,
                contexts_per_window=cfg.contexts_per_window, max_contexts=cfg.max_contexts,
                splits=cfg.splits, batch_size=cfg.feature_batch_size, seed=cfg.seed,
                verbose=verbose)
        data.check_model(model)
        # linear maps need labels for every N they serve; the learned prompt only for train_n
        for n in (cfg.train_n if method == "learned_prompt" else lens.n_aheads):
            data.check_n(n)
        for layer in lens.layers:
            data.layer_row(layer)
        if len(data.indices("train")) == 0:
            raise ValueError("the features have no training examples; check splits.")
        t0 = time.perf_counter()
        ck = EpochCheckpoint(checkpoint, lens._fit_settings(data), resume=resume,
                             stop_after=stop_after_epochs)
        if method == "linear_hidden":
            info = lens._fit_linear_hidden(data, verbose, ck)
        elif method == "linear_vocab":
            info = lens._fit_linear_vocab(data, verbose, ck)
        else:
            info = lens._fit_prompt(data, verbose, ck)
        info["resumed_from_epoch"] = ck.start_epoch if ck.state is not None else None
        lens.basis, lens.fingerprint = view.basis, view.fingerprint
        lens.training_summary = {
            "method": method, "train_s": time.perf_counter() - t0,
            "extract_s": data.meta.get("extract_s"), "data": data.summary(), **info,
        }
        return lens

    def _fit_settings(self, data: FutureLensData) -> dict[str, Any]:
        """What a fit depends on: a checkpoint written under other settings is refused."""
        digest = sha256_hex(*(t.detach().cpu().contiguous().numpy().tobytes()
                              for t in (data.tokens, data.labels, data.source_pos, data.split)),
                            length=16)
        return {
            "method": self.method, "layers": list(self.layers),
            "n_aheads": list(self.n_aheads), "fingerprint": self.view.fingerprint,
            "basis": self.view.basis, "data": digest,
            "config": json.loads(json.dumps(asdict(self.config), default=str)),
        }

    def _train_batches(self, idx: Tensor, bs: int, epoch: int) -> list[Tensor]:
        g = torch.Generator().manual_seed(self.config.seed * 1000 + epoch)
        perm = idx[torch.randperm(len(idx), generator=g)]
        return [perm[s : s + bs] for s in range(0, len(perm), bs)]

    def _blind_val_kl(self, data: FutureLensData, idx: Tensor) -> float:
        tot = 0.0
        with torch.no_grad():
            for j, n in enumerate(self.n_aheads):
                tlp = data.target_logprobs(self.view, n, idx)
                for i, layer in enumerate(self.layers):
                    h = data.sources[data.layer_row(layer), idx].to(self.view.device)
                    li = torch.full((len(idx),), i, device=self.view.device)
                    tot += float(_kl(tlp, self._linear_logits(h, li, j)).mean())
        return tot / (len(self.n_aheads) * len(self.layers))

    def _fit_linear_hidden(self, data: FutureLensData, verbose: bool,
                           ck: EpochCheckpoint) -> dict[str, Any]:
        cfg = self.config
        tr, va = data.indices("train"), data.indices("val")
        if cfg.linear_ls and ck.state is None:
            with torch.no_grad():
                for i, layer in enumerate(self.layers):
                    x = data.sources[data.layer_row(layer), tr].double()
                    xm = x.mean(0)
                    xc = x - xm
                    xtx = xc.T @ xc
                    ridge = cfg.linear_ridge * float(xtx.diagonal().mean()) + 1e-12
                    xtx += ridge * torch.eye(xtx.shape[0], dtype=xtx.dtype)
                    for j, n in enumerate(self.n_aheads):
                        y = data.targets[tr, n].double()
                        ym = y.mean(0)
                        a = torch.linalg.solve(xtx, xc.T @ (y - ym))
                        self.A.data[i, j] = a.to(self.A.dtype)
                        self.b.data[i, j] = (ym - xm @ a).to(self.b.dtype)
        opt = torch.optim.SGD([self.A, self.b], lr=cfg.linear_lr, momentum=cfg.linear_momentum,
                              nesterov=True, weight_decay=cfg.linear_weight_decay)
        if ck.state is None:
            best = self._blind_val_kl(data, va) if len(va) else float("nan")
            history = [best]
            best_state = {k: v.detach().clone() for k, v in self.state_dict().items()}
        else:
            history, best, best_state = self._restore(ck.state, opt)
        for epoch in ck.epochs(cfg.linear_epochs):
            batches = self._train_batches(tr, cfg.linear_batch_size, epoch)
            opt.zero_grad()
            for step, bidx in enumerate(progress(batches, verbose=verbose,
                                                 desc=f"linear_hidden epoch {epoch}")):
                loss = self._blind_loss(data, bidx) / cfg.linear_grad_accum
                loss.backward()
                if (step + 1) % cfg.linear_grad_accum == 0 or step == len(batches) - 1:
                    self._clip_per_map([self.A, self.b], cfg.linear_clip)
                    opt.step()
                    opt.zero_grad()
            diverged = False
            if len(va):
                val = self._blind_val_kl(data, va)
                history.append(val)
                diverged = not math.isfinite(val)  # stop; the best state so far is kept
                if val < best:
                    best = val
                    best_state = {k: v.detach().clone() for k, v in self.state_dict().items()}
            done = cfg.linear_epochs if diverged else epoch + 1
            self._checkpoint(ck, done, opt, history, best, best_state)
            if diverged:
                break
        self.load_state_dict(best_state)
        return {"val_kl_history": history, "best_val_kl": best, "finished": ck.finished,
                "n_train": len(tr), "n_val": len(va)}

    def _checkpoint(self, ck: EpochCheckpoint, epoch: int, opt: torch.optim.Optimizer,
                    history: list[float], best: float, best_state: Any, **extra: Any) -> None:
        ck.save(epoch, lens={k: v.detach().clone() for k, v in self.state_dict().items()},
                optimizer=opt.state_dict(), history=list(history), best=float(best),
                best_state=best_state, **extra)

    def _restore(self, state: dict[str, Any],
                 opt: torch.optim.Optimizer) -> tuple[list[float], float, Any]:
        self.load_state_dict(state["lens"])
        opt.load_state_dict(state["optimizer"])
        return list(state["history"]), float(state["best"]), state["best_state"]

    @staticmethod
    def _clip_per_map(params: list[torch.nn.Parameter], max_norm: float) -> None:
        grads = [p.grad for p in params if p.grad is not None]
        if not grads:
            return
        sq = sum(g.pow(2).flatten(2).sum(-1) for g in grads)  # [nl, nn]
        scale = (max_norm / (sq.sqrt() + 1e-6)).clamp(max=1.0)
        for g in grads:
            g.mul_(scale.view(*scale.shape, *([1] * (g.ndim - 2))))

    def _blind_loss(self, data: FutureLensData, bidx: Tensor) -> Tensor:
        dev = self.view.device
        loss = torch.zeros((), device=dev)
        for j, n in enumerate(self.n_aheads):
            tlp = data.target_logprobs(self.view, n, bidx)
            for i, layer in enumerate(self.layers):
                h = data.sources[data.layer_row(layer), bidx].to(dev)
                li = torch.full((len(bidx),), i, device=dev)
                loss = loss + _kl(tlp, self._linear_logits(h, li, j)).mean()
        return loss

    def _fit_linear_vocab(self, data: FutureLensData, verbose: bool,
                          ck: EpochCheckpoint) -> dict[str, Any]:
        cfg = self.config
        tr, va = data.indices("train"), data.indices("val")
        params = [p for p in self.parameters()]
        opt = torch.optim.AdamW(params, lr=cfg.vocab_lr, weight_decay=0.0)
        if ck.state is None:
            with torch.no_grad():  # bias = log of the mean model distribution (a unigram start)
                for j, n in enumerate(self.n_aheads):
                    mean_p = data.target_logprobs(self.view, n, tr).exp().mean(0)
                    self.c.data[:, j] = mean_p.clamp_min(1e-12).log().to(self.c.device)
            history = [self._blind_val_kl(data, va)] if len(va) else [float("nan")]
            best = history[0]
            best_state = {k: v.detach().clone() for k, v in self.state_dict().items()}
        else:
            history, best, best_state = self._restore(ck.state, opt)
        for epoch in ck.epochs(cfg.vocab_epochs):
            for bidx in progress(self._train_batches(tr, cfg.linear_batch_size, epoch),
                                 verbose=verbose, desc=f"linear_vocab epoch {epoch}"):
                loss = self._blind_loss(data, bidx)
                opt.zero_grad()
                loss.backward()
                opt.step()
            if len(va):
                val = self._blind_val_kl(data, va)
                history.append(val)
                if math.isfinite(val) and val < best:
                    best = val
                    best_state = {k: v.detach().clone() for k, v in self.state_dict().items()}
            self._checkpoint(ck, epoch + 1, opt, history, best, best_state)
        self.load_state_dict(best_state)
        return {"val_kl_history": history, "best_val_kl": best, "finished": ck.finished,
                "n_train": len(tr)}

    def _prompt_loss(self, data: FutureLensData, bidx: Tensor) -> Tensor:
        """Sum over source layers of the batchmean KL, averaged over ``train_n``."""
        dev = self.view.device
        nl, b = len(self.layers), len(bidx)
        rows_h = torch.cat([data.sources[data.layer_row(layer), bidx] for layer in self.layers])
        rows_l = torch.tensor(self.layers).repeat_interleave(b)
        pidx, patch = self._row_indices(rows_l)
        loss = torch.zeros((), device=dev)
        for n in self.config.train_n:
            tlp = data.target_logprobs(self.view, n, bidx).repeat(nl, 1)
            tail = data.labels[bidx, :n].repeat(nl, 1)
            logits = self._prompt_logits(rows_h.to(dev), pidx, patch, tail)
            loss = loss + _kl(tlp, logits).view(nl, b).mean(1).sum()
        return loss / len(self.config.train_n)

    def _fit_prompt(self, data: FutureLensData, verbose: bool,
                    ck: EpochCheckpoint) -> dict[str, Any]:
        cfg = self.config
        tr, va = data.indices("train"), data.indices("val")
        if cfg.max_train_examples is not None:
            tr = tr[: cfg.max_train_examples]
        opt = torch.optim.AdamW([self.soft_prompt], lr=cfg.prompt_lr,
                                weight_decay=cfg.prompt_weight_decay)

        def val_kl() -> float:
            if not len(va):
                return float("nan")
            with torch.no_grad():
                tot = sum(float(self._prompt_loss(data, va[s : s + 64])) * len(va[s : s + 64])
                          for s in range(0, len(va), 64))
            return tot / len(va) / len(self.layers)

        if ck.state is None:
            history = [val_kl()]
            best = history[0]
            best_state = self.soft_prompt.detach().clone()
            steps = 0
        else:
            history, best, best_state = self._restore(ck.state, opt)
            steps = int(ck.state["steps"])
        for epoch in ck.epochs(cfg.prompt_epochs):
            batches = self._train_batches(tr, cfg.prompt_batch_size, epoch)
            opt.zero_grad()
            for step, bidx in enumerate(progress(batches, verbose=verbose,
                                                 desc=f"learned_prompt epoch {epoch}")):
                loss = self._prompt_loss(data, bidx) / cfg.prompt_grad_accum
                if not torch.isfinite(loss):
                    where = (f" The state after epoch {epoch} is in checkpoint {ck.path!r}."
                             if ck.path and epoch > 0 else "")
                    raise TrainingDivergedError(
                        f"non-finite loss at epoch {epoch} step {step}; training stopped.{where}"
                        " Lower prompt_lr.")
                loss.backward()
                if (step + 1) % cfg.prompt_grad_accum == 0 or step == len(batches) - 1:
                    opt.step()
                    opt.zero_grad()
                    steps += 1
            val = val_kl()
            history.append(val)
            if len(va) == 0 or (math.isfinite(val) and val < best):
                best = val
                best_state = self.soft_prompt.detach().clone()
            self._checkpoint(ck, epoch + 1, opt, history, best, best_state, steps=steps)
        self.soft_prompt.data.copy_(best_state)
        return {"val_kl_history": history, "best_val_kl": best, "optimizer_steps": steps,
                "finished": ck.finished, "n_train": len(tr), "n_val": len(va)}

    # ------------------------------------------------------------------ evaluation
    def _evaluate(self, model: Any, texts: Any = None, **kw: Any) -> Any:
        """``fl.evaluate(model, lens, texts, ...)`` entry point; see :meth:`evaluate_many`."""
        return FutureLens.evaluate_many([self], model, texts, **kw)

    @staticmethod
    def evaluate_many(
        lenses: Sequence[FutureLens],
        model: Any,
        texts: Any = None,
        *,
        data: FutureLensData | None = None,
        n_ahead: int | Iterable[int] = (0, 1, 2, 3),
        k: int | Iterable[int] = tuple(range(1, 11)),
        split: str | None = "test",
        modes: Sequence[str] = ("teacher_forced", "free_running"),
        buckets: Sequence[float] = (0.0, 0.3, 0.6, 0.9, 1.0),
        baseline: bool = True,
        batch_size: int | None = None,
        verbose: bool = True,
        **feature_kw: Any,
    ) -> Any:
        """Evaluate several Future Lenses on the same cached features (reference §4).

        Returns a :class:`futurelens_tl.evaluation.LensEvaluation` whose long table has one row
        per (lens, layer, N, metric, k, mode[, bucket]):

        * ``mode="teacher_forced"`` (the paper's protocol): ``precision`` for every ``k``
          (label ``y_N`` among the lens's top-k), ``surprisal`` (``-ln P_model^N`` of the lens's
          top-1, nats) and ``precision`` at ``k=1`` per model-confidence ``bucket``
          (confidence = ``max P_model^N``; edges ``buckets``);
        * ``mode="free_running"``: the lens generates ``x_{T+1..}`` itself; ``match`` is the
          fraction whose N-th generated token equals ``y_N`` (never called precision@k);
        * ``mode="baseline"``: the bigram (``y_1`` from ``y_0``, N = 1 only; the fair baseline
          of token-fed N = 1).

        Every row records ``token_fed`` and ``label_source``. Linear lenses are evaluated only
        on the N they have maps for (a warning names the skipped ones).
        """
        if not lenses:
            raise ValueError("lenses is empty; give at least one FutureLens.")
        view = as_view(model)
        for lens in lenses:
            if not isinstance(lens, FutureLens):
                raise TypeError(f"lenses must hold FutureLens objects, got {type(lens).__name__}")
            lens.check_model(model)
        ns = _as_n_tuple(n_ahead)
        ks = _as_n_tuple(k, "k")
        if ks[0] < 1:
            raise ValueError(f"k={ks} must be >= 1.")
        bad_modes = set(modes) - {"teacher_forced", "free_running"}
        if bad_modes:
            raise ValueError(f"modes={tuple(modes)}: allowed 'teacher_forced', 'free_running'.")
        all_layers = sorted({x for lens in lenses for x in lens.layers})
        if data is None:
            if texts is None:
                raise ValueError("texts is None: give a corpus or cached features (data=).")
            cfg = lenses[0].config
            data = build_features(
                model, texts, n_max=max(ns), layers=all_layers,
                label_source=feature_kw.pop("label_source", cfg.label_source),
                window=feature_kw.pop("window", cfg.window), seed=feature_kw.pop("seed", cfg.seed),
                splits=feature_kw.pop("splits", (0.0, 0.0, 1.0)), verbose=verbose, **feature_kw)
        data.check_model(model)
        for n in ns:
            data.check_n(n)
        idx = data.indices(split)
        if len(idx) == 0:
            raise ValueError(f"the features have no examples in split={split!r}.")
        rows: list[dict[str, Any]] = []
        edges = list(buckets)
        for lens in lenses:
            bs = batch_size or lens.config.eval_batch_size
            lens_ns = [n for n in ns if lens.is_prompt or n in lens.n_aheads]
            skipped = [n for n in ns if n not in lens_ns]
            if skipped:
                warnings.warn(f"{lens.name}: no maps for N={skipped}; skipped.", stacklevel=2)
            for layer in lens.layers:
                data.layer_row(layer)
            with torch.no_grad():
                if "teacher_forced" in modes:
                    rows += _teacher_forced_rows(lens, view, data, idx, lens_ns, ks, edges, bs,
                                                 verbose)
                if "free_running" in modes and lens_ns:
                    rows += _free_running_rows(lens, view, data, idx, lens_ns, bs)
        if baseline and 1 in ns:
            rows += _bigram_rows(view, data, idx, ks)
        import pandas as pd

        table = pd.DataFrame(rows, columns=["lens", "method", "layer", "n_ahead", "metric", "k",
                                            "mode", "token_fed", "label_source", "bucket",
                                            "value", "n"])
        meta = {"label_source": data.label_source, "n_examples": len(idx), "split": split,
                "buckets": edges, "layer_convention": "block l = blocks.{l}.hook_resid_post "
                "(paper 'In-Layer' l+1)", "features": data.summary(),
                "fixed_prompts": {lens.name: lens.prompt_text for lens in lenses
                                  if lens.method == "fixed_prompt"},
                "cross_layer": {lens.name: lens.target_layer for lens in lenses
                                if lens.target_layer is not None}}
        return _make_evaluation(table, meta)

    # ------------------------------------------------------------------ future-token view
    @torch.no_grad()
    def future_view(
        self,
        model: Any,
        prompt: str | Int[Tensor, "1 pos"],
        n_tokens: int = 4,
        *,
        layers: Iterable[int] | None = None,
    ) -> FutureTokenView:
        """The future-token grid: layer x position cells with logit-lens top-1 + continuation.

        One forward caches every layer; then all (layer, position) cells run **together** as
        rows of one batch (one prefill-length pass per generated token), not one ``generate``
        call per cell (reference §4.4, §7). Cell colour = mean probability of the logit-lens
        top-1 and the generated tokens.

        Examples:
            >>> import futurelens_tl as fl
            >>> model = fl.toy_model(verbose=False)
            >>> lens = fl.FutureLens(model, "fixed_prompt", n_ahead=0)
            >>> v = lens.future_view(model, "Once upon a", n_tokens=2)
            >>> v.ids.shape[-1]
            3
        """
        self.check_model(model)
        view = as_view(model)
        toks = view.to_tokens(prompt, arg="prompt") if not isinstance(prompt, Tensor) else \
            view.to_tokens(prompt, arg="prompt")
        lays = self.layers if layers is None else [self.check_layer(x) for x in layers]
        _, resid = view.residuals(toks, lays)  # [L, 1, P, d]
        nl, p = len(lays), toks.shape[1]
        h = resid[:, 0].reshape(nl * p, -1)
        row_layers = torch.tensor(lays).repeat_interleave(p)
        top = torch.softmax(view.readout(h).float(), -1).max(-1)
        ids, probs = self.rows_continuation(h, row_layers, n_tokens)
        all_ids = torch.cat([top.indices[:, None], ids], 1).view(nl, p, -1).cpu()
        all_p = torch.cat([top.values[:, None], probs], 1).view(nl, p, -1).cpu()
        return FutureTokenView(
            layers=lays, input_tokens=view.to_str_tokens(toks[0]), ids=all_ids, probs=all_p,
            strings=[[[_decode(view, int(t)) for t in cell] for cell in row] for row in all_ids],
            lens_name=self.name, target_layer=self.target_layer)

    # ------------------------------------------------------------------ persistence
    def save(self, path: str | os.PathLike[str]) -> None:
        """Write safetensors + JSON header atomically (format, model, basis, layers, config)."""
        if self.basis is None or self.fingerprint is None:
            raise ValueError("save: the lens is not fitted (no basis/fingerprint); fit it first.")
        header = {
            "format": "future_lens", "format_version": FORMAT_VERSION, "kind": "future_lens",
            "method": self.method,
            "layers": self.layers, "n_aheads": list(self.n_aheads), "basis": self.basis,
            "fingerprint": self.fingerprint,
            "config": json.loads(json.dumps(asdict(self.config), default=str)),
            "prompt_text": self.prompt_text, "prompt_key": self.prompt_key,
            "target_layer": self.target_layer, "name": self.name,
            "training": json.loads(json.dumps(self.training_summary, default=str)),
        }
        save_artifact(path, dict(self.state_dict()), header)

    @classmethod
    def load(cls, path: str | os.PathLike[str], model: Any) -> FutureLens:
        """Load a saved lens onto ``model``; refuses another model or basis.

        Raises:
            LensMismatchError: Other basis or fingerprint.
            ValueError: Not a Future Lens artifact, or a newer format.
        """
        # Missing, truncated, corrupt, foreign or newer files raise ArtifactError (a ValueError).
        tensors, header = load_artifact(path, expect_format="future_lens",
                                        max_version=FORMAT_VERSION)
        view = as_view(model)
        if view.basis != header["basis"]:
            raise LensMismatchError(
                f"lens at {os.fspath(path)!r} was fitted in the {header['basis']!r} basis but the "
                f"model is in the {view.basis!r} basis; load the model the same way.")
        if view.fingerprint != header["fingerprint"]:
            raise LensMismatchError(
                f"lens at {os.fspath(path)!r} was fitted on model {header['fingerprint']} but this "
                f"model is {view.fingerprint}: another model or other weights.")
        cfg = FutureLensConfig(**{**header["config"],
                                  "train_n": tuple(header["config"]["train_n"]),
                                  "splits": tuple(header["config"]["splits"])})
        fixed = tensors.get("prompt_tokens") if header["method"] == "fixed_prompt" else None
        lens = cls(model, header["method"], header["layers"], header["n_aheads"], config=cfg,
                   fixed_prompt=fixed)
        lens.prompt_text, lens.prompt_key = header.get("prompt_text"), header.get("prompt_key")
        if header["method"] == "learned_prompt" and "soft_prompt" in tensors:
            lens.soft_prompt = torch.nn.Parameter(torch.zeros_like(tensors["soft_prompt"]))
        lens.load_state_dict({k: v.to(view.device) for k, v in tensors.items()})
        lens.target_layer = header.get("target_layer")
        lens.name = header.get("name", lens.name)
        lens.basis, lens.fingerprint = header["basis"], header["fingerprint"]
        lens.training_summary = header.get("training", {})
        return lens

    @classmethod
    def load_official_prompt(
        cls, path: str | os.PathLike[str] | Tensor, model: Any, layer: int = 13
    ) -> FutureLens:
        """Load the published GPT-J soft prompt ``gptj_soft_prefix.pt`` (reference §2.4).

        The tensor is ``[10, 4096]`` bf16, trained for source = target = block 13 in the raw HF
        GPT-J basis; it is loaded as fp32. ``path`` may also be a tensor (tests).

        Raises:
            ValueError: Wrong shape for the model, a processed-basis model, missing file.
        """
        view = as_view(model)
        if isinstance(path, Tensor):
            t = path
        else:
            if not os.path.exists(path):
                raise ValueError(f"path={os.fspath(path)!r} does not exist; download "
                                 "gptj_soft_prefix.pt (see docs/future_lens.md).")
            t = torch.load(path, map_location="cpu", weights_only=True)
            if isinstance(t, dict):
                tensors = [v for v in t.values() if isinstance(v, Tensor)]
                if len(tensors) != 1:
                    raise ValueError(f"{os.fspath(path)!r} holds {len(tensors)} tensors; "
                                     "expected one [M, d_model] soft prompt.")
                t = tensors[0]
        if not isinstance(t, Tensor) or t.ndim != 2 or t.shape[1] != view.d_model:
            shape = tuple(t.shape) if isinstance(t, Tensor) else type(t).__name__
            raise ValueError(f"the soft prompt has shape {shape}; expected [M, {view.d_model}] "
                             f"(M prompt vectors of the model's d_model).")
        if t.shape[0] < 1:
            raise ValueError("the soft prompt has length 0; M must be >= 1.")
        if view.basis != "raw":
            raise LensMismatchError(
                "the official prompt was fitted in the raw HF GPT-J basis but the model is in "
                "the processed basis; load it with fl.load_model(name) (raw, the default).")
        layer = view.layer_index(layer)
        cfg = FutureLensConfig(prompt_length=int(t.shape[0]))
        lens = cls(model, "learned_prompt", [layer], (0, 1, 2, 3), config=cfg,
                   name=f"future[official_prompt@{layer}]")
        lens.soft_prompt.data.copy_(t.float()[None].to(lens.soft_prompt.device))
        lens.basis, lens.fingerprint = view.basis, view.fingerprint
        lens.training_summary = {"method": "learned_prompt", "source": "official gptj prompt"}
        return lens

    def extra_repr(self) -> str:
        return (f"method={self.method!r}, layers={self.layers}, n_aheads={self.n_aheads}, "
                f"basis={self.basis}, target_layer={self.target_layer}")


# ====================================================================== evaluation helpers
def _decode(view: ModelView, tok: int) -> str:
    tk = view.tokenizer
    return tk.decode([tok]) if tk is not None else str(tok)


def _bucket_label(lo: float, hi: float) -> str:
    return f"{round(lo * 100)}-{round(hi * 100)}"


def _stack_rows(lens: FutureLens, data: FutureLensData, idx: Tensor) -> tuple[Tensor, Tensor]:
    """Sources of every (layer, example) pair as one row set (layer-major)."""
    h = torch.cat([data.sources[data.layer_row(layer), idx] for layer in lens.layers])
    lay = torch.tensor(lens.layers, dtype=torch.long).repeat_interleave(len(idx))
    return h, lay


def _teacher_forced_rows(lens: FutureLens, view: ModelView, data: FutureLensData, idx: Tensor,
                         ns: list[int], ks: tuple[int, ...], edges: list[float], bs: int,
                         verbose: bool) -> list[dict[str, Any]]:
    """All (layer, example) rows of one N run together, in chunks of ``bs`` rows (§7)."""
    out = []
    kmax = max(ks)
    nl, ne = len(lens.layers), len(idx)
    h_rows, lay_rows = _stack_rows(lens, data, idx)
    nt_rows = data.labels[idx].repeat(nl, 1)
    for n in progress(ns, verbose=verbose, desc=f"evaluate {lens.name}"):
        tlp = data.target_logprobs(view, n, idx)
        conf = tlp.max(-1).values.exp().cpu()
        y = data.labels[idx, n].repeat(nl)
        hits_all, top1_all = [], []
        for s in range(0, len(h_rows), bs):
            h = h_rows[s : s + bs].to(view.device)
            nt = nt_rows[s : s + bs] if lens.is_prompt else None
            logits = lens.rows_logits(h, lay_rows[s : s + bs], n, nt)
            top = logits.float().topk(min(kmax, logits.shape[-1]), -1).indices.cpu()
            hits_all.append(top == y[s : s + bs, None])
            top1_all.append(top[:, 0])
        hits = torch.cat(hits_all).view(nl, ne, -1)
        top1 = torch.cat(top1_all).view(nl, ne)
        cum_all = hits.cumsum(-1).clamp(max=1).double()
        for i, layer in enumerate(lens.layers):
            cum = cum_all[i]
            base = dict(lens=lens.name, method=lens.method, layer=layer, n_ahead=n,
                        mode="teacher_forced", token_fed=bool(lens.is_prompt and n >= 1),
                        label_source=data.label_source, bucket=None, n=ne)
            for k in ks:
                out.append({**base, "metric": "precision", "k": k,
                            "value": float(cum[:, min(k, cum.shape[1]) - 1].mean())})
            surpr = -tlp.gather(1, top1[i].to(tlp.device)[:, None])[:, 0]
            out.append({**base, "metric": "surprisal", "k": None,
                        "value": float(surpr.double().mean())})
            for lo, hi in zip(edges[:-1], edges[1:]):
                m = (conf >= lo) & ((conf < hi) if hi < edges[-1] else (conf <= hi))
                out.append({**base, "metric": "precision", "k": 1,
                            "bucket": _bucket_label(lo, hi), "n": int(m.sum()),
                            "value": float(cum[m, 0].mean()) if m.any() else float("nan")})
    return out


def _free_running_rows(lens: FutureLens, view: ModelView, data: FutureLensData, idx: Tensor,
                       ns: list[int], bs: int) -> list[dict[str, Any]]:
    """Greedy continuation of all (layer, example) rows at once; ``match`` per N."""
    out = []
    nl, ne = len(lens.layers), len(idx)
    h_rows, lay_rows = _stack_rows(lens, data, idx)
    if lens.is_prompt:
        ids, _ = lens.rows_continuation(h_rows, lay_rows, max(ns) + 1, batch_size=bs)
        gen_by_n = {n: ids[:, n].cpu() for n in ns}
    else:
        gen_by_n = {n: torch.cat([lens.rows_logits(h_rows[s:s + bs].to(view.device),
                                                   lay_rows[s:s + bs], n).argmax(-1).cpu()
                                  for s in range(0, len(h_rows), bs)]) for n in ns}
    for n in ns:
        tlp = data.target_logprobs(view, n, idx)
        gen = gen_by_n[n].view(nl, ne)
        for i, layer in enumerate(lens.layers):
            match = (gen[i] == data.labels[idx, n]).double().mean()
            surpr = -tlp.gather(1, gen[i].to(tlp.device)[:, None])[:, 0].double().mean()
            base = dict(lens=lens.name, method=lens.method, layer=layer, n_ahead=n,
                        mode="free_running", token_fed=False, label_source=data.label_source,
                        bucket=None, n=ne, k=None)
            out.append({**base, "metric": "match", "value": float(match)})
            out.append({**base, "metric": "surprisal", "value": float(surpr)})
    return out


def bigram_table(tokens: Int[Tensor, "n pos"], k: int = 10) -> dict[int, list[int]]:
    """Top-``k`` successors of every token seen in ``tokens`` (bigram counts, ties by id)."""
    a = tokens[:, :-1].reshape(-1)
    b = tokens[:, 1:].reshape(-1)
    v = int(tokens.max()) + 1
    pair, cnt = torch.unique(a * v + b, return_counts=True)
    first, second = pair // v, pair % v
    order = torch.argsort(first * (cnt.max() + 1) * v + (cnt.max() - cnt) * v + second)
    table: dict[int, list[int]] = {}
    for f, s in zip(first[order].tolist(), second[order].tolist()):
        lst = table.setdefault(f, [])
        if len(lst) < k:
            lst.append(s)
    return table


def _bigram_rows(view: ModelView, data: FutureLensData, idx: Tensor,
                 ks: tuple[int, ...]) -> list[dict[str, Any]]:
    if data.bigram_tokens is None:
        return []
    kmax = max(ks)
    prev, y = data.labels[idx, 0], data.labels[idx, 1]
    try:  # the shared n-gram model (metrics.py); unseen contexts fall back to the unigram
        from futurelens_tl.metrics import NgramBaseline

        bg = NgramBaseline(2, vocab_size=view.d_vocab).fit(data.bigram_tokens)
        top = bg.topk(prev, kmax)[0]
        hit = top == y[:, None]
        r = torch.where(hit.any(-1), hit.float().argmax(-1) + 1, torch.tensor(10**9))
    except ImportError:  # pragma: no cover - metrics.py missing
        table = bigram_table(data.bigram_tokens, kmax)
        ranks = []
        for p, t in zip(prev.tolist(), y.tolist()):
            succ = table.get(p, [])
            ranks.append(succ.index(t) + 1 if t in succ else 10**9)
        r = torch.tensor(ranks)
    base = dict(lens="bigram", method="bigram", layer=None, n_ahead=1, mode="baseline",
                token_fed=True, label_source=data.label_source, bucket=None, n=len(idx))
    return [{**base, "metric": "precision", "k": k, "value": float((r <= k).float().mean())}
            for k in ks]


def _make_evaluation(table: Any, meta: dict[str, Any]) -> Any:
    try:
        from futurelens_tl.evaluation import LensEvaluation
    except ImportError:  # the shared result class has not landed: minimal stand-in
        return _MiniEvaluation(table=table, meta=meta)
    try:
        return LensEvaluation(table=table, meta=meta)
    except TypeError:
        return _MiniEvaluation(table=table, meta=meta)


@dataclass
class _MiniEvaluation:
    table: Any
    meta: dict[str, Any] = field(default_factory=dict)

    def to_dataframe(self) -> Any:
        return self.table.copy()

    def plot(self, metric: str = "precision", k: int = 1) -> Any:
        return paper_figure(self, metric=metric, k=k)

    def _repr_html_(self) -> str:
        return self.table.to_html(max_rows=60)

    def show(self) -> Any:
        return self


def paper_figure(evaluation: Any, metric: str = "precision", k: int | None = 1) -> Any:
    """The paper's figure: ``metric`` against layer, one line per lens, one panel per N.

    Teacher-forced rows only; the bigram baseline is drawn as a dashed line in the N = 1 panel.
    x axis: block index ``l`` (paper "In-Layer" ``l + 1``).
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    df = evaluation.to_dataframe() if hasattr(evaluation, "to_dataframe") else evaluation
    sel = df[(df.metric == metric) & (df["mode"] == "teacher_forced") & df.bucket.isna()]
    if metric == "precision":
        sel = sel[sel.k == k]
    ns = sorted(sel.n_ahead.unique())
    if not ns:
        raise ValueError(f"no teacher-forced rows for metric={metric!r}, k={k}.")
    fig, axes = plt.subplots(1, len(ns), figsize=(4 * len(ns), 3.2), squeeze=False, sharey=True)
    for ax, n in zip(axes[0], ns):
        for name, g in sel[sel.n_ahead == n].groupby("lens"):
            g = g.sort_values("layer")
            ax.plot(g.layer, g.value, marker="o", ms=3, label=name)
        bl = df[(df["mode"] == "baseline") & (df.metric == metric) & (df.k == k)
                & (df.n_ahead == n)]
        if len(bl):
            ax.axhline(float(bl.value.iloc[0]), ls="--", c="gray", label="bigram")
        ax.set_title(f"N={n}")
        ax.set_xlabel("block l (paper In-Layer l+1)")
    axes[0][0].set_ylabel(f"{metric}@{k}" if metric == "precision" else metric)
    axes[0][-1].legend(fontsize=7)
    fig.tight_layout()
    return fig


# ====================================================================== the view
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
