"""A small, generic lens trainer: optimiser, schedule, progress, checkpoints, resume, NaN guard.

Used by the tuned lens and reusable by the Future Lens. The trainer owns no data: the caller
passes ``step_fn(step)``, which fetches the batch for that step **deterministically from the
step index** (so a resumed run sees exactly the batches the uninterrupted run would have seen)
and yields ``(key, loss)`` pairs, one per independently trained group (e.g. one per layer).
Each loss is back-propagated as soon as it is yielded, so only one group's graph is alive at a
time (the tuned-lens recipe, reference ``lenses-and-transformerlens.md`` §B.2).

Optimiser defaults are the tuned-lens recipe (§B.3): SGD with Nesterov momentum 0.9, an
*effective* learning rate of 1.0 (PyTorch lr = lr * (1 - momentum) = 0.1), weight decay 1e-3,
linear decay to zero without warm-up, gradient clipping to norm 1.0. ``optimizer="adam"`` gives
AMSGrad Adam with lr 1e-3 and a linear warm-up of ``min(1000, steps // 5)`` steps.

Scale-out (:mod:`futurelens_tl.lenses.distributed`): under ``torchrun`` the trainer runs
data-parallel. Every rank calls ``step_fn(step)`` on its shard of the step's global batch and
yields its *local share* of each loss (:meth:`~futurelens_tl.lenses.distributed.DistContext.share`:
DDP's average over ranks is then the global-batch mean); gradients accumulate locally over the
groups and are all-reduced once per step by a DDP wrapper of the module
(:class:`~futurelens_tl.lenses.distributed.GradSync`); loss values are averaged over ranks, so the
history, the progress bar and the divergence guard agree on every rank. Only rank 0 shows
progress and writes checkpoints (atomic); a checkpoint holds no per-rank state, so it resumes
under any world size. A rank whose peer dies raises
:class:`~futurelens_tl.lenses.distributed.DistributedTrainingError`; rank 0 first saves the last
completed step.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import Tensor

from futurelens_tl.lenses.artifacts import load_checkpoint, save_checkpoint
from futurelens_tl.lenses.distributed import (
    DistContext,
    DistributedTrainingError,
    GradSync,
    all_reduce_mean,
    broadcast_object,
    context,
    guard_collective,
    rank_seed,
)
from futurelens_tl.progress import progress

__all__ = ["EpochCheckpoint", "TrainResult", "Trainer", "TrainerConfig", "TrainingDivergedError",
           "check_identity", "data_digest", "rank_seed"]


def data_digest(*tensors: Tensor) -> str:
    """16-hex SHA-256 of the tensors' shapes and bytes: the identity of a training corpus.

    Checkpoints record it so a resume on other data is refused (a pure function of the token
    windows: tokeniser, text and window length all enter through them).

    Examples:
        >>> import torch
        >>> from futurelens_tl.lenses.trainer import data_digest
        >>> w = torch.arange(12).view(3, 4)
        >>> data_digest(w) == data_digest(w.clone()), data_digest(w) == data_digest(w + 1)
        (True, False)
    """
    import hashlib

    h = hashlib.sha256()
    for t in tensors:
        c = t.detach().to("cpu").contiguous()
        h.update(f"{c.dtype}|{tuple(c.shape)}|".encode())
        h.update(c.reshape(-1).view(torch.uint8).numpy().tobytes() if c.numel() else b"")
    return h.hexdigest()[:16]


def check_identity(path: Any, mine: dict[str, Any] | None, theirs: dict[str, Any] | None) -> None:
    """Refuse to resume ``path`` if it was written for another model or other data.

    ``mine``/``theirs``: ``{"fingerprint": ..., "basis": ..., "data": ..., ...}`` of this run
    and of the checkpoint. A checkpoint without an identity (written before identities were
    recorded) is refused when this run has one: its model and data cannot be confirmed.
    """
    if not mine:
        return
    from futurelens_tl.lenses.base import LensMismatchError

    if not theirs:
        raise LensMismatchError(
            f"checkpoint {path!r} records no model/data identity, so resuming it cannot be "
            "confirmed to continue the same run; delete it or pass resume=False to start over."
        )
    labels = {"fingerprint": "model weights (fingerprint)", "basis": "residual basis",
              "data": "training data (digest of the token windows)"}
    diff = {k: (theirs.get(k), v) for k, v in mine.items() if theirs.get(k) != v}
    if diff:
        what = ", ".join(f"{labels.get(k, k)}: checkpoint {a!r} vs now {b!r}"
                         for k, (a, b) in diff.items())
        raise LensMismatchError(
            f"checkpoint {path!r} belongs to another run ({what}). Resuming would mix two "
            "models or two corpora; use the same model and data, or delete the checkpoint / "
            "pass resume=False to start over."
        )


def check_settings(path: Any, mine: dict[str, Any], theirs: dict[str, Any]) -> None:
    """Refuse to resume checkpoint ``path`` written under settings ``theirs`` != ``mine``."""
    diff = {k: (theirs.get(k), v) for k, v in mine.items() if theirs.get(k) != v}
    if diff:
        raise ValueError(
            f"checkpoint {path!r} was written with other settings (checkpoint vs now: {diff}); "
            "resume with the same settings, or delete it / pass resume=False to start over."
        )


class TrainingDivergedError(FloatingPointError):
    """A loss or gradient became NaN/inf; the message names the step and the group (layer)."""


@dataclass
class TrainerConfig:
    """Optimisation settings (defaults: the tuned-lens SGD recipe, §B.3).

    Attributes:
        steps: Total optimiser steps (the schedule decays to 0 at ``steps``).
        lr: Effective learning rate. For SGD, PyTorch sees ``lr * (1 - momentum)``.
        momentum: SGD momentum (Nesterov) / Adam beta1.
        weight_decay: L2 weight decay.
        optimizer: ``"sgd"`` or ``"adam"``.
        warmup_steps: Linear warm-up steps (default: 0 for SGD, ``min(1000, steps//5)`` Adam).
        grad_clip: Clip the global gradient norm to this (``0`` = off).
        checkpoint_path: Where to write checkpoints (``None`` = no checkpoints).
        checkpoint_every: Write a checkpoint every this many steps (and at the end).
        resume: Continue from ``checkpoint_path`` if it exists.
        stop_after: Stop (and checkpoint) after this many completed steps (time-boxed jobs,
            tests of resume); the schedule still targets ``steps``.
        seed: Seed for anything random the step function asks for via
            :attr:`Trainer.generator` (re-seeded every step from ``seed``, the rank and the step,
            so a resumed run, under any world size, draws what the uninterrupted one drew).
        verbose: Progress bar (rank 0 only).
        desc: Progress-bar label.
        rank: Expected rank (``None`` = from the process group; a mismatch is an error).
        world_size: Expected number of processes (``None`` = from the process group).
        identity: What the run trains on, written into checkpoints and checked on resume
            (:func:`check_identity`): model ``fingerprint``, ``basis``, ``data`` digest
            (:func:`data_digest`) and anything else that fixes the data order (batch size,
            window length, layers). ``None`` = unchecked.
    """

    steps: int
    lr: float = 1.0
    momentum: float = 0.9
    weight_decay: float = 1e-3
    optimizer: str = "sgd"
    warmup_steps: int | None = None
    grad_clip: float = 1.0
    checkpoint_path: str | None = None
    checkpoint_every: int = 0
    resume: bool = True
    stop_after: int | None = None
    seed: int = 0
    verbose: bool = True
    desc: str = "train"
    rank: int | None = None
    world_size: int | None = None
    identity: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        if isinstance(self.steps, bool) or not isinstance(self.steps, int) or self.steps < 1:
            raise ValueError(f"steps={self.steps!r} must be an int >= 1")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ValueError(f"lr={self.lr} must be a positive finite number")
        if not 0 <= self.momentum < 1:
            raise ValueError(f"momentum={self.momentum} must be in [0, 1)")
        if self.weight_decay < 0:
            raise ValueError(f"weight_decay={self.weight_decay} must be >= 0")
        if self.optimizer not in ("sgd", "adam"):
            raise ValueError(f"optimizer={self.optimizer!r} is not one of 'sgd', 'adam'")
        if self.checkpoint_every < 0:
            raise ValueError(f"checkpoint_every={self.checkpoint_every} must be >= 0")
        if self.stop_after is not None and self.stop_after < 0:
            raise ValueError(f"stop_after={self.stop_after} must be >= 0")
        if self.world_size is not None and self.world_size < 1:
            raise ValueError(f"world_size={self.world_size} must be >= 1")
        if self.rank is not None and not 0 <= self.rank < (self.world_size or self.rank + 1):
            raise ValueError(f"rank={self.rank} must be in 0..world_size-1={self.world_size - 1}")

    def schedule_fingerprint(self) -> dict[str, Any]:
        """Settings a resumed run must share with the interrupted one (not the world size)."""
        d = asdict(self)
        for k in ("checkpoint_path", "checkpoint_every", "resume", "stop_after", "verbose",
                  "desc", "rank", "world_size", "identity"):
            d.pop(k)
        return d


@dataclass
class TrainResult:
    """What :meth:`Trainer.run` returns.

    Attributes:
        steps_done: Completed optimiser steps (== ``config.steps`` unless ``stop_after``).
        history: Per step, the mean of each group's loss (``{"step": s, key: loss, ...}``).
        resumed_from: Step the run resumed from (``None`` if it started fresh).
        finished: Whether all ``config.steps`` are done.
        interrupted: Whether ``should_stop`` (e.g. a SIGTERM from the launcher) ended the run
            early; the checkpoint then holds the last step.
    """

    steps_done: int
    history: list[dict[str, float]] = field(default_factory=list)
    resumed_from: int | None = None
    finished: bool = False
    interrupted: bool = False


class Trainer:
    """Train ``module``'s parameters with a step function (see the module docstring).

    Args:
        module: The trainable module (its parameters that require grad are optimised).
        config: :class:`TrainerConfig`.
        extra_state: Optional callables ``(get, set)`` for state the caller wants checkpointed
            alongside (e.g. a data-order permutation); ``get()`` returns tensors/plain data
            (rank 0's is saved and broadcast on resume: it must not differ between ranks).
        dist: The data-parallel job (default: the current ``torch.distributed`` group, or a
            world of one).

    Examples:
        >>> import torch
        >>> from futurelens_tl.lenses.trainer import Trainer, TrainerConfig
        >>> lin = torch.nn.Linear(2, 1)
        >>> def step_fn(step):
        ...     x = torch.ones(4, 2)
        ...     yield "all", (lin(x) - 1.0).pow(2).mean()
        >>> res = Trainer(lin, TrainerConfig(steps=5, verbose=False)).run(step_fn)
        >>> res.steps_done, res.finished
        (5, True)
    """

    def __init__(self, module: torch.nn.Module, config: TrainerConfig,
                 extra_state: tuple[Callable[[], Any], Callable[[Any], None]] | None = None,
                 dist: DistContext | None = None):
        self.dist = context() if dist is None else dist
        for key, have in (("rank", self.dist.rank), ("world_size", self.dist.world_size)):
            want = getattr(config, key)
            if want is not None and want != have:
                raise ValueError(f"TrainerConfig.{key}={want} but this process has {key}={have} "
                                 "(from torch.distributed); leave it None to take the job's")
        self.module = module
        self.config = config
        self.extra_state = extra_state
        self.params = [p for p in module.parameters() if p.requires_grad]
        if not self.params:
            raise ValueError("module has no trainable parameters")
        self.names = {id(p): n for n, p in module.named_parameters() if p.requires_grad}
        c = config
        if c.optimizer == "sgd":
            self.optimizer: torch.optim.Optimizer = torch.optim.SGD(
                self.params, lr=c.lr * (1 - c.momentum), momentum=c.momentum, nesterov=True,
                weight_decay=c.weight_decay)
            warm = c.warmup_steps or 0
        else:
            self.optimizer = torch.optim.Adam(self.params, lr=c.lr, betas=(c.momentum, 0.999),
                                              amsgrad=True, weight_decay=c.weight_decay)
            warm = c.warmup_steps if c.warmup_steps is not None else min(1000, c.steps // 5)
        total = c.steps

        def factor(s: int) -> float:
            if warm and s < warm:
                return (s + 1) / warm
            return max(0.0, 1.0 - s / total)

        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, factor)
        self.generator = torch.Generator().manual_seed(rank_seed(c.seed, self.dist.rank))
        self.step = 0
        self.history: list[dict[str, float]] = []

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict[str, Any]:
        return {
            "module": {k: v.detach().clone() for k, v in self.module.state_dict().items()},
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "step": self.step,
            "history": self.history,
            "config": self.config.schedule_fingerprint(),
            "identity": self.config.identity,
            "extra": self.extra_state[0]() if self.extra_state else None,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        check_identity(self.config.checkpoint_path, self.config.identity, state.get("identity"))
        check_settings(self.config.checkpoint_path, self.config.schedule_fingerprint(),
                       state.get("config", {}))
        self.module.load_state_dict(state["module"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.step = int(state["step"])
        self.history = list(state["history"])
        if self.extra_state and state.get("extra") is not None:
            self.extra_state[1](state["extra"])

    def save(self) -> None:
        """Write a checkpoint now (rank 0 only; atomic)."""
        if self.config.checkpoint_path and self.dist.is_main:
            save_checkpoint(self.config.checkpoint_path, self.state_dict())

    def _resume_state(self) -> dict[str, Any] | None:
        """The checkpoint to resume from: read on rank 0, broadcast to every rank."""
        c = self.config
        state: dict[str, Any] | None = None
        error: Exception | None = None
        if self.dist.is_main and c.checkpoint_path and os.path.exists(c.checkpoint_path):
            try:
                state = load_checkpoint(c.checkpoint_path)
            except Exception as err:  # every rank must learn of it, or the others hang
                error = err
        with guard_collective(self.dist, "the resume broadcast"):
            state, error = broadcast_object((state, error), self.dist)
        if error is not None:
            raise error
        return state

    def _resume_hint(self) -> str:
        c = self.config
        if not c.checkpoint_path:
            return ("No checkpoint was configured (pass checkpoint=...), so the run starts over "
                    "when relaunched.")
        if self.dist.is_main:
            return (f"Rank 0 saved the last completed step ({self.step}) to {c.checkpoint_path!r}"
                    "; relaunch the same command, with any number of processes, to resume.")
        return (f"Rank 0 writes checkpoints to {c.checkpoint_path!r} (every {c.checkpoint_every} "
                "steps, and the last completed step when a peer fails); relaunch the same "
                "command, with any number of processes, to resume.")

    # ------------------------------------------------------------------ loop
    def _diverged(self, msg: str) -> TrainingDivergedError:
        # parameters and optimiser state are still those of the last completed step
        where = ""
        if self.config.checkpoint_path:
            self.save()
            where = (f" The last good state (after step {self.step}) is in checkpoint "
                     f"{self.config.checkpoint_path!r}.")
        return TrainingDivergedError(
            f"{msg} at step {self.step + 1}; training stopped.{where} Lower the learning rate, "
            "check the data (empty or repeated windows) and the model dtype (try float32)."
        )

    def run(self, step_fn: Callable[[int], Iterable[tuple[str, Tensor]]],
            should_stop: Callable[[], bool] | None = None) -> TrainResult:
        """Run (or resume) training until ``config.steps`` (or ``stop_after``).

        Args:
            step_fn: See the module docstring.
            should_stop: Polled once per step on every rank (e.g. "a SIGTERM arrived"); when it
                is true on any rank, every rank finishes the step, rank 0 checkpoints it and the
                run returns with ``interrupted=True`` (the flag rides on the loss all-reduce:
                no extra collective).
        """
        c = self.config
        resumed: int | None = None
        if c.checkpoint_path and c.resume:
            state = self._resume_state()
            if state is not None:
                self.load_state_dict(state)
                resumed = self.step
        with guard_collective(self.dist, "the DDP set-up (parameter broadcast)"):
            sync = GradSync(self.module, self.dist)
        end = c.steps if c.stop_after is None else min(c.steps, c.stop_after)
        bar = progress(range(self.step, end), verbose=c.verbose and self.dist.is_main,
                       desc=c.desc, total=end - self.step)
        for _ in bar:
            self.optimizer.zero_grad(set_to_none=True)
            self.generator.manual_seed(rank_seed(c.seed, self.dist.rank) * 1_000_033 + self.step)
            keys: list[str] = []
            values: list[Tensor] = []
            for key, loss in step_fn(self.step):
                # local shares: back-propagated at once (one group's graph alive at a time),
                # checked after the rank average so every rank takes the same branch
                loss.backward()
                keys.append(key)
                values.append(loss.detach().float().reshape(()))
            if should_stop is not None:
                device = values[0].device if values else torch.device("cpu")
                values.append(torch.tensor(float(bool(should_stop())), device=device))
            try:
                with guard_collective(self.dist, f"the gradient all-reduce of step "
                                      f"{self.step + 1}"):
                    sync()
                    mean = all_reduce_mean(torch.stack(values), self.dist) if values else None
            except DistributedTrainingError as err:
                self.save()  # rank 0: parameters are still those after the last full step
                raise DistributedTrainingError(f"{err} {self._resume_hint()}") from err.__cause__
            reduced = [] if mean is None else mean.tolist()
            stop_now = should_stop is not None and reduced.pop() > 0
            losses: dict[str, float] = dict(zip(keys, reduced))
            for key, value in losses.items():
                if not math.isfinite(value):
                    raise self._diverged(f"loss for {key!r} is {value}")
            for p in self.params:
                if p.grad is not None and not torch.isfinite(p.grad).all():
                    raise self._diverged(f"gradient of parameter {self.names[id(p)]!r} is not "
                                         "finite")
            if c.grad_clip:
                torch.nn.utils.clip_grad_norm_(self.params, c.grad_clip)
            self.optimizer.step()
            self.scheduler.step()
            self.step += 1
            self.history.append({"step": float(self.step), **losses})
            if losses and hasattr(bar, "set_postfix"):
                bar.set_postfix(loss=f"{sum(losses.values()) / len(losses):.4f}")
            if c.checkpoint_every and self.step % c.checkpoint_every == 0:
                self.save()
            if stop_now:
                self.save()
                return TrainResult(self.step, self.history, resumed, self.step >= c.steps,
                                   interrupted=self.step < end)
        if c.checkpoint_path and (self.step == end):
            self.save()
        return TrainResult(self.step, self.history, resumed, self.step >= c.steps)


class EpochCheckpoint:
    """Epoch-boundary checkpoints for epoch-based trainers (the Future Lens fits).

    The caller saves its whole state at the end of every epoch (parameters, optimiser state,
    validation history, best-so-far state); batches must be a function of the epoch index, so a
    run resumed from epoch ``e`` sees exactly the batches the uninterrupted run saw and ends in
    the same parameters. An interrupted epoch is redone from its start.

    Args:
        path: Checkpoint file (``None`` = no checkpoints; every method becomes a no-op).
        settings: JSON-like description of everything the result depends on (method, layers,
            config, model fingerprint, data digest); a checkpoint written under other settings
            is refused.
        resume: Load ``path`` if it exists.
        stop_after: Stop after this many completed epochs (time-boxed jobs); ``None`` = never.
        dist: The job (default: the current ``torch.distributed`` group); only rank 0 writes.

    Attributes:
        state: The loaded checkpoint (``None`` when starting fresh).
        finished: After :meth:`epochs` is exhausted: whether every epoch ran.
    """

    def __init__(self, path: str | os.PathLike[str] | None, settings: dict[str, Any],
                 resume: bool = True, stop_after: int | None = None,
                 dist: DistContext | None = None):
        if stop_after is not None and (isinstance(stop_after, bool) or stop_after < 0):
            raise ValueError(f"stop_after={stop_after!r} must be None or an int >= 0")
        self.path = None if path is None else os.fspath(path)
        self.settings = settings
        self.stop_after = stop_after
        self.dist = context() if dist is None else dist
        self.state: dict[str, Any] | None = None
        self.finished = True
        if self.path and resume and os.path.exists(self.path):
            state = load_checkpoint(self.path)
            check_settings(self.path, settings, state.get("settings", {}))
            self.state = state

    @property
    def start_epoch(self) -> int:
        return 0 if self.state is None else int(self.state["epoch"])

    def epochs(self, total: int) -> Iterator[int]:
        """Epochs still to run: from the checkpoint's to ``total``, ending early at ``stop_after``.

        Sets :attr:`finished` (False when ``stop_after`` cut the run short).
        """
        self.finished = True
        for epoch in range(self.start_epoch, total):
            if self.stop_after is not None and epoch >= self.stop_after:
                self.finished = False
                return
            yield epoch

    def save(self, epoch: int, **state: Any) -> None:
        """Atomically write the state after ``epoch`` completed epochs (rank 0 only)."""
        if self.path and self.dist.is_main:
            save_checkpoint(self.path, {"settings": self.settings, "epoch": int(epoch), **state})
