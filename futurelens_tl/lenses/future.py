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
import math
import warnings
from collections.abc import Iterable
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

from futurelens_tl.lenses.base import Lens
from futurelens_tl.lenses.future_config import (
    _FIXED_BY_INDEX,
    FIXED_PROMPTS,
    METHODS,
    PAPER_GPTJ_RESULTS,
    FutureLensConfig,
    _as_n_tuple,
)
from futurelens_tl.lenses.future_data import FutureLensData, build_features
from futurelens_tl.lenses.future_fit import FitMixin
from futurelens_tl.lenses.future_io import IOMixin
from futurelens_tl.lenses.future_view import FutureTokenView
from futurelens_tl.models.view import ModelView, as_view

__all__ = [
    "FIXED_PROMPTS",
    "FutureLens",
    "FutureLensConfig",
    "FutureLensData",
    "FutureTokenView",
    "METHODS",
    "PAPER_GPTJ_RESULTS",
    "bigram_table",  # noqa: F822 (lazy, see __getattr__)
    "build_features",
    "paper_figure",  # noqa: F822
]


def _decode(view: ModelView, tok: int) -> str:
    tk = view.tokenizer
    return tk.decode([tok]) if tk is not None else str(tok)


def __getattr__(name: str) -> Any:
    # evaluation helpers stand above the lens (they build result objects): imported lazily
    if name in ("paper_figure", "bigram_table", "FutureLensEvaluation"):
        from futurelens_tl.lenses import future_eval

        return getattr(future_eval, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# ====================================================================== the lens
class FutureLens(FitMixin, IOMixin, Lens):
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
        #: ``[len(layers), d_model]`` training mean of ``h`` per source layer (set by ``fit``;
        #: the ``mean_h`` control of the evaluation replaces ``h`` by it).
        self.source_mean: Tensor | None = None
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
        patch: bool = True,
    ) -> Tensor:
        """Transplant ``h`` into the prompt and run on (reference §2.3-2.4, §7).

        Row ``r`` uses prompt ``prompt_idx[r]`` (learned) and is patched at layer
        ``patch_layer[r]``, position ``P-1``; the tokens ``tail[r]`` follow the prompt. Returns
        the logits at the last position (or at ``P-1 ..`` end when ``all_positions``).
        ``patch=False`` runs the prompt without any transplant (the ``no_patch`` control).
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
        for layer in sorted(set(patch_layer.tolist())) if patch else []:
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
        *,
        patch: bool = True,
    ) -> Float[Tensor, "rows d_vocab"]:
        """Logits for ``N = n_ahead`` for rows from (possibly) different source layers.

        For prompt methods at ``N >= 1`` ``next_tokens[:, :N]`` are fed after the prompt
        (teacher forcing); ``None`` generates them greedily (free-running). ``patch=False``
        (prompt methods) runs the prompt without transplanting ``h`` (the no-patch control).
        """
        n_ahead = self._check_n(n_ahead)
        for x in set(layers.tolist()):
            self.check_layer(int(x))
        if not self.is_prompt:
            if not patch:
                raise ValueError(f"patch=False needs a prompt method; {self.method} has no "
                                 "prompt (use the mean_h / shuffled_h controls).")
            li = torch.tensor([self.layers.index(int(x)) for x in layers.tolist()],
                              device=h.device)
            return self._linear_logits(h, li, self._ni(n_ahead))
        pidx, patch_at = self._row_indices(layers.cpu())
        if n_ahead == 0:
            tail = torch.empty(h.shape[0], 0, dtype=torch.long)
        elif next_tokens is None:
            ids, _ = self._generate(h, pidx, patch_at, n_ahead)
            tail = ids
        else:
            if next_tokens.shape[-1] < n_ahead:
                raise ValueError(
                    f"next_tokens has {next_tokens.shape[-1]} tokens per row; N={n_ahead} "
                    f"needs the {n_ahead} tokens x_(T+1..T+N).")
            tail = next_tokens[:, :n_ahead]
        return self._prompt_logits(h, pidx, patch_at, tail, patch=patch)

    def rows_logits_all_n(
        self,
        h: Float[Tensor, "rows d_model"],
        layers: Int[Tensor, " rows"],
        next_tokens: Int[Tensor, "rows n"],
        n_max: int,
        *,
        patch: bool = True,
    ) -> Float[Tensor, "rows n1 d_vocab"]:
        """Teacher-forced logits for every ``N = 0..n_max`` at once (``[rows, n_max+1, V]``).

        Prompt methods need **one** forward over ``prompt + x_{T+1..T+n_max}``: with causal
        attention the logits at position ``M-1+N`` depend only on the prompt, the transplant
        and ``x_{T+1..T+N}``, so they equal the per-N runs of :meth:`rows_logits` (the official
        code recomputes one forward per N, reference §7). Blind methods stack their per-N maps
        (every N must be covered).
        """
        if not self.is_prompt:
            return torch.stack([self.rows_logits(h, layers, n) for n in range(n_max + 1)], 1)
        for x in set(layers.tolist()):
            self.check_layer(int(x))
        if next_tokens.shape[-1] < n_max:
            raise ValueError(f"next_tokens has {next_tokens.shape[-1]} tokens per row; "
                             f"n_max={n_max} needs {n_max}.")
        pidx, patch_at = self._row_indices(layers.cpu())
        return self._prompt_logits(h, pidx, patch_at, next_tokens[:, :n_max],
                                   all_positions=True, patch=patch)

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
        no-cache route, reference §7). Blind methods return their top-1 for ``N = 0..n-1``; a
        lookahead they have no map for is ``N = 0`` read as the model's own next-token readout
        of ``h`` (the logit lens: frozen final norm + unembedding), and any other uncovered N
        raises ``ValueError``.
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
                    if n == 0 and 0 not in self.n_aheads:  # N=0: the model's own readout
                        lg = self.view.readout(hh.to(self.view.dtype))
                    else:
                        lg = self.rows_logits(hh, ll, n)
                    pr = torch.softmax(lg.float(), -1).max(-1)
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
    # ------------------------------------------------------------------ evaluation
    def _evaluate(self, model: Any, texts: Any = None, **kw: Any) -> Any:
        """``fl.evaluate(model, lens, texts, ...)`` entry point; see :meth:`evaluate_many`."""
        return FutureLens.evaluate_many([self], model, texts, **kw)

    @staticmethod
    def evaluate_many(lenses: Any, model: Any, texts: Any = None, **kw: Any) -> Any:
        """Evaluate several Future Lenses on the same features, with controls and intervals.

        See :func:`futurelens_tl.lenses.future_eval.evaluate_many` (reference §4): one long
        table with the lens rows, their ``mean_h`` / ``shuffled_h`` / ``no_patch`` control
        rows, n-gram baselines at every N, and document-bootstrap intervals.
        """
        from futurelens_tl.lenses.future_eval import evaluate_many

        return evaluate_many(lenses, model, texts, **kw)

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

    def extra_repr(self) -> str:
        return (f"method={self.method!r}, layers={self.layers}, n_aheads={self.n_aheads}, "
                f"basis={self.basis}, target_layer={self.target_layer}")


