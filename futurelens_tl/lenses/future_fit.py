"""Future Lens fitting: least squares + SGD (linear_hidden), AdamW (linear_vocab, learned prompt).

Reference ``future-lens.md`` §2.1, §2.2, §2.4, §2.5. :class:`FitMixin` is mixed into
:class:`~futurelens_tl.lenses.future.FutureLens`; it holds the training loops, their
checkpoints (end-of-epoch, exact resume) and divergence checks.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict
from typing import Any

import torch
from torch import Tensor

from futurelens_tl._io import sha256_hex
from futurelens_tl.lenses.future_config import FutureLensConfig, _kl
from futurelens_tl.lenses.future_data import FutureLensData, build_features
from futurelens_tl.lenses.trainer import EpochCheckpoint, TrainingDivergedError
from futurelens_tl.models.view import as_view
from futurelens_tl.progress import progress

__all__ = ["FitMixin"]


def _diverged(what: str, epoch: int, step: int | None, ck: EpochCheckpoint,
              hint: str) -> TrainingDivergedError:
    where = f" at epoch {epoch}" + (f" step {step}" if step is not None else "")
    kept = (f" The state after epoch {epoch} is in checkpoint {ck.path!r}."
            if ck.path and epoch > 0 else "")
    return TrainingDivergedError(f"non-finite {what}{where}; training stopped.{kept} {hint}")


_NAN_HINT = ("Check the model's weights and the cached features for NaN/inf "
             "(torch.isfinite(data.sources).all()).")


#: Relative ridge values tried (selection on the validation split) when ``linear_ridge=None``.
RIDGE_GRID = (1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0)


class FitMixin:
    """Training routines of :class:`~futurelens_tl.lenses.future.FutureLens`."""

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
    ) -> Any:
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
        tr = data.indices("train")
        lens.source_mean = torch.stack([data.sources[data.layer_row(x), tr].mean(0)
                                        for x in lens.layers]).cpu()
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
        if getattr(lens, "_ridge_chosen", None):
            info["ridge"] = lens._ridge_chosen
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
            self._least_squares(data, tr, va)
            if not (torch.isfinite(self.A).all() and torch.isfinite(self.b).all()):
                raise _diverged("least-squares map (linear_hidden)", 0, None, ck, _NAN_HINT)
        opt = torch.optim.SGD([self.A, self.b], lr=cfg.linear_lr, momentum=cfg.linear_momentum,
                              nesterov=True, weight_decay=cfg.linear_weight_decay)
        if ck.state is None:
            best = self._blind_val_kl(data, va) if len(va) else float("nan")
            if len(va) and not math.isfinite(best):
                raise _diverged("validation KL of the initial map", 0, None, ck, _NAN_HINT)
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
                if not torch.isfinite(loss):
                    raise _diverged("loss (linear_hidden)", epoch, step, ck, "Lower linear_lr.")
                loss.backward()
                if (step + 1) % cfg.linear_grad_accum == 0 or step == len(batches) - 1:
                    self._clip_per_map([self.A, self.b], cfg.linear_clip)
                    opt.step()
                    opt.zero_grad()
            if len(va):
                val = self._blind_val_kl(data, va)
                history.append(val)
                if not math.isfinite(val):
                    raise _diverged("validation KL (linear_hidden)", epoch, None, ck,
                                    "Lower linear_lr.")
                if val < best:
                    best = val
                    best_state = {k: v.detach().clone() for k, v in self.state_dict().items()}
            self._checkpoint(ck, epoch + 1, opt, history, best, best_state)
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
            if cfg.vocab_ls:
                self._least_squares(data, tr, va)
            else:
                with torch.no_grad():  # bias = log of the mean model distribution (unigram)
                    for j, n in enumerate(self.n_aheads):
                        mean_p = data.target_logprobs(self.view, n, tr).exp().mean(0)
                        self.c.data[:, j] = mean_p.clamp_min(1e-12).log().to(self.c.device)
            history = [self._blind_val_kl(data, va)] if len(va) else [float("nan")]
            if len(va) and not math.isfinite(history[0]):
                raise _diverged("validation KL of the initial map", 0, None, ck, _NAN_HINT)
            best = history[0]
            best_state = {k: v.detach().clone() for k, v in self.state_dict().items()}
        else:
            history, best, best_state = self._restore(ck.state, opt)
        for epoch in ck.epochs(cfg.vocab_epochs):
            for bidx in progress(self._train_batches(tr, cfg.linear_batch_size, epoch),
                                 verbose=verbose, desc=f"linear_vocab epoch {epoch}"):
                loss = self._blind_loss(data, bidx)
                if not torch.isfinite(loss):
                    raise _diverged("loss (linear_vocab)", epoch, None, ck, "Lower vocab_lr.")
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

    @torch.no_grad()
    def _least_squares(self, data: FutureLensData, tr: Tensor, va: Tensor,
                       chunk: int = 1024) -> None:
        """Closed-form start of the blind maps on the **whole** training split (pitfall 4).

        ``linear_hidden`` regresses the final residual ``h^{L-1}_{T+N}`` on ``h_T^l`` (§2.1);
        ``linear_vocab`` regresses the model's log-probs ``log P_model^N`` (ours; the paper's
        recipe is unpublished, §2.2: from a zero ``W`` small data trains little more than the
        bias, so every layer scored one unigram guess). Both use fp64 normal equations on
        centred data, with the vocabulary targets streamed in chunks. The ridge (relative to
        the mean diagonal of ``XᵀX``) is ``config.linear_ridge`` or, when that is None, the
        value of :data:`RIDGE_GRID` with the lowest **validation** KL per (layer, N) (with few
        examples per dimension the unregularised fit overfits badly). A low-rank
        ``linear_vocab`` takes the top-``r`` SVD factors of the solution.
        """
        cfg, view = self.config, self.view
        vocab = self.method == "linear_vocab"
        grid = ((cfg.linear_ridge,) if cfg.linear_ridge is not None or not len(va)
                else RIDGE_GRID)
        grid = tuple(1e-4 if r is None else r for r in grid)
        chosen: dict[str, float] = {}
        for i, layer in enumerate(self.layers):
            x = data.sources[data.layer_row(layer), tr].double()
            xm = x.mean(0)
            xc = x - xm
            evals, q = torch.linalg.eigh(xc.T @ xc)
            scale = float(evals.clamp_min(0).mean())
            for j, n in enumerate(self.n_aheads):
                if vocab:
                    ym = torch.zeros(view.d_vocab, dtype=torch.float64)
                    for s in range(0, len(tr), chunk):
                        ym += data.target_logprobs(view, n, tr[s:s + chunk]).double().cpu().sum(0)
                    ym /= len(tr)
                    xty = torch.zeros(x.shape[1], view.d_vocab, dtype=torch.float64)
                    for s in range(0, len(tr), chunk):
                        z = data.target_logprobs(view, n, tr[s:s + chunk]).double().cpu()
                        xty += xc[s:s + chunk].T @ (z - ym)
                else:
                    y = data.targets[tr, n].double()
                    ym = y.mean(0)
                    xty = xc.T @ (y - ym)
                qty = q.T @ xty
                best = (math.inf, None)
                for r in grid:
                    a = q @ (qty / (evals.clamp_min(0) + r * scale + 1e-12)[:, None])
                    self._set_map(i, j, a, ym - xm @ a)
                    if len(grid) == 1:
                        break
                    kl = self._map_val_kl(data, va, i, j, n, layer)
                    if kl < best[0]:
                        best = (kl, r)
                if len(grid) > 1 and best[1] is not None:
                    r = best[1]
                    a = q @ (qty / (evals.clamp_min(0) + r * scale + 1e-12)[:, None])
                    self._set_map(i, j, a, ym - xm @ a)
                chosen[f"{layer}/{n}"] = float(r)
        self._ridge_chosen = chosen

    def _set_map(self, i: int, j: int, a: Tensor, c: Tensor) -> None:
        if not (torch.isfinite(a).all() and torch.isfinite(c).all()):
            raise _diverged(f"least-squares map ({self.method})", 0, None,
                            EpochCheckpoint(None, {}), _NAN_HINT)
        if self.method == "linear_hidden":
            self.A.data[i, j] = a.to(self.A.dtype)
            self.b.data[i, j] = c.to(self.b.dtype)
            return
        if hasattr(self, "W"):
            self.W.data[i, j] = a.to(self.W.dtype)
        else:
            u, sv, vh = torch.linalg.svd(a, full_matrices=False)
            r = self.U.shape[-1]
            self.U.data[i, j] = (u[:, :r] * sv[:r].sqrt()).to(self.U.dtype)
            self.V.data[i, j] = (sv[:r].sqrt()[:, None] * vh[:r]).to(self.V.dtype)
        self.c.data[i, j] = c.to(self.c.dtype)

    def _map_val_kl(self, data: FutureLensData, va: Tensor, i: int, j: int, n: int,
                    layer: int) -> float:
        dev = self.view.device
        h = data.sources[data.layer_row(layer), va].to(dev)
        li = torch.full((len(va),), i, device=dev)
        return float(_kl(data.target_logprobs(self.view, n, va),
                         self._linear_logits(h, li, j)).mean())

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
                    raise _diverged("loss", epoch, step, ck, "Lower prompt_lr.")
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

