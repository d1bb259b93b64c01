"""Future Lens settings, published prompts and the paper's headline numbers.

Reference ``future-lens.md`` §2.3 (fixed prompts), §2.5 (hyperparameters), §5.1 (results).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass, fields
from typing import Any

import torch
from torch import Tensor

from futurelens_tl.lenses.future_data import LABEL_SOURCES

__all__ = ["FIXED_PROMPTS", "FutureLensConfig", "METHODS", "PAPER_GPTJ_RESULTS"]

METHODS = ("linear_hidden", "linear_vocab", "fixed_prompt", "learned_prompt")
FORMAT_VERSION = 1

#: Published fixed prompts (reference §2.3, ``module._COMPARE_CONTEXT``; index 0 is the authors'
#: best), the Patchscopes token-identity prompt (§8.1) and the generic prompt of the seed
#: paper ("Please, tell me something about"). Exact strings, no trailing space.
FIXED_PROMPTS: dict[str, str] = {
    "hello": 'Hello! Could you please tell me more about "',
    "multi_tokens": 'The multi-tokens present here are "',
    "concepts": "The concepts in this hidden state listed are: (",
    "endoftext_concept": "<|endoftext|> This state is describing about the following concept:",
    "token_identity": "cat -> cat\n1135 -> 1135\nhello -> hello\n?",
    "generic": "Please, tell me something about",
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
        linear_ridge: Relative ridge added to ``XᵀX`` (times its mean diagonal); None picks
            it per (layer, N) on the validation split (``future_fit.RIDGE_GRID``).
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
        vocab_ls: Start ``linear_vocab`` from the ridge regression of the model's log-probs
            on ``h`` (ours; without it small data trains only the bias).
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
    linear_ridge: float | None = None
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
    vocab_ls: bool = True
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

