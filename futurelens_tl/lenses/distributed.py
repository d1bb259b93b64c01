"""Data-parallel lens training on ``torch.distributed`` (``torchrun``), CPU- and GPU-ready.

Nothing here is home-made collective code: process groups come from
:func:`torch.distributed.init_process_group` (``gloo`` on CPU, ``nccl`` on GPU), gradients are
averaged by :class:`torch.nn.parallel.DistributedDataParallel`'s reducer, and the few scalars the
trainer needs on every rank (per-layer losses, a resume state) travel by
:func:`torch.distributed.all_reduce` / :func:`torch.distributed.broadcast_object_list`.

The recipe (DESIGN.md §4 "Scale-out"):

* **Global batch.** A step's global batch is a pure function of the step index and the data
  seed (the same on every rank); :func:`shard` gives rank ``r`` its contiguous, balanced slice.
  A run on ``W`` processes therefore sees exactly the windows a 1-process run with the same
  ``batch_size`` sees, and a checkpoint resumes under any world size.
* **Loss scaling.** Each rank yields its *local share* ``W * sum(local losses) / n_global`` so
  that DDP's average over ranks is the global-batch mean (:meth:`DistContext.share`); unequal
  shards are weighted exactly.
* **Gradient sync.** The tuned-lens recipe back-propagates each layer's loss separately
  (reference ``lenses-and-transformerlens.md`` §B.2); gradients accumulate locally, then one
  :class:`GradSync` call runs a zero-valued forward/backward through a DDP wrapper of the lens,
  which all-reduces the accumulated gradients (the documented ``no_sync`` accumulation pattern,
  with the accumulation steps taken outside the DDP forward).
* **Rank 0 only** shows progress and writes checkpoints and artifacts (atomically); a resume
  state is read on rank 0 and broadcast.
* **Seeds.** Data order uses the run seed on every rank; anything random per rank uses
  :func:`rank_seed`.
* **Failure.** A collective that fails because a peer died (killed, out of memory) raises
  :class:`DistributedTrainingError` naming the rank, the step and the checkpoint to resume from.

Examples:
    >>> from futurelens_tl.lenses.distributed import context, shard
    >>> ctx = context()                      # no process group: a world of one
    >>> ctx.rank, ctx.world_size, ctx.is_main
    (0, 1, True)
    >>> import torch
    >>> shard(torch.arange(5), rank=1, world_size=2).tolist()
    [3, 4]
"""

from __future__ import annotations

import contextlib
import datetime
import os
import signal
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
from jaxtyping import Float
from torch import Tensor

__all__ = [
    "DistContext",
    "DistributedTrainingError",
    "GradSync",
    "StopOnSignal",
    "all_reduce_mean",
    "broadcast_object",
    "context",
    "default_device",
    "guard_collective",
    "init_distributed",
    "main_only",
    "rank_seed",
    "shard",
    "shard_bounds",
    "shutdown",
]

T = TypeVar("T")


class DistributedTrainingError(RuntimeError):
    """A collective failed (a peer process died or timed out); the message says how to resume."""


def rank_seed(seed: int, rank: int = 0) -> int:
    """Per-rank seed derived from the run seed (rank 0 keeps ``seed``).

    Examples:
        >>> rank_seed(7), rank_seed(7, 1)
        (7, 1000010)
    """
    return int(seed) + 1_000_003 * int(rank)


@dataclass(frozen=True)
class DistContext:
    """Where this process stands in a data-parallel job.

    Attributes:
        rank: Global rank (0 = the main process: progress, checkpoints, artifacts).
        world_size: Number of processes.
        local_rank: Rank on this node (selects the GPU under ``torchrun``).
        backend: Process-group backend (``"gloo"``, ``"nccl"``) or ``None`` for a world of one.
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None

    def __post_init__(self) -> None:
        if self.world_size < 1 or not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank={self.rank} must be in 0..world_size-1 (world_size="
                             f"{self.world_size})")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1

    def bounds(self, n_global: int) -> tuple[int, int]:
        """This rank's ``[start, stop)`` of a global batch of ``n_global`` rows."""
        return shard_bounds(n_global, self.rank, self.world_size)

    def share(self, n_local: int, n_global: int) -> float:
        """Factor turning a local *mean* into the rank's share of the global mean under DDP.

        DDP averages gradients over ranks, so a rank holding ``n_local`` of ``n_global`` rows
        must yield ``local_mean * world_size * n_local / n_global``. ``1.0`` in a world of one.
        """
        if self.world_size == 1 and n_local == n_global:
            return 1.0
        return self.world_size * n_local / n_global


def context() -> DistContext:
    """The current process group as a :class:`DistContext` (a world of one if none is set up).

    Reads :mod:`torch.distributed`'s default group; ``LOCAL_RANK`` comes from the environment
    (``torchrun`` sets it).
    """
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        return DistContext(rank=dist.get_rank(), world_size=dist.get_world_size(),
                           local_rank=int(os.environ.get("LOCAL_RANK", 0)),
                           backend=str(dist.get_backend()))
    return DistContext()


def default_device(ctx: DistContext | None = None) -> torch.device:
    """``cuda:LOCAL_RANK`` when CUDA is available, else ``cpu``."""
    ctx = context() if ctx is None else ctx
    if torch.cuda.is_available():
        return torch.device("cuda", ctx.local_rank % torch.cuda.device_count())
    return torch.device("cpu")


def init_distributed(backend: str | None = None, *, timeout_s: float = 1800.0,
                     device: str | torch.device | None = None) -> DistContext:
    """Join the job ``torchrun`` (or any launcher setting ``RANK``/``WORLD_SIZE``) started.

    Does nothing (returns a world of one) when ``WORLD_SIZE`` is unset or 1 and no group exists;
    returns the existing group's context when one is already initialised.

    Args:
        backend: ``"gloo"``, ``"nccl"`` or ``None`` = nccl when the training device is CUDA,
            else gloo.
        timeout_s: Collective timeout: how long a rank waits for a hung (not dead) peer.
        device: Training device; CUDA devices are made current (``torch.cuda.set_device``).

    Raises:
        ValueError: ``backend="nccl"`` without CUDA, or an unknown backend.
    """
    dist = torch.distributed
    if dist.is_initialized():
        return context()
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistContext()
    if not dist.is_available():  # pragma: no cover - torch built without distributed
        raise RuntimeError("WORLD_SIZE > 1 but this torch build has no torch.distributed")
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device is not None:
        dev = torch.device(device)
    elif torch.cuda.is_available():
        dev = torch.device("cuda", local % torch.cuda.device_count())
    else:
        dev = torch.device("cpu")
    if backend is None:
        backend = "nccl" if dev.type == "cuda" else "gloo"
    if backend not in ("gloo", "nccl"):
        raise ValueError(f"backend={backend!r} is not one of 'gloo', 'nccl'")
    if backend == "nccl" and dev.type != "cuda":
        raise ValueError(f"backend='nccl' needs a CUDA device (got device={str(dev)!r}); use "
                         "backend='gloo' on CPU")
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    dist.init_process_group(backend=backend, timeout=datetime.timedelta(seconds=timeout_s))
    return context()


def shutdown() -> None:
    """Destroy the default process group if one exists (call once, at the end of the job)."""
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def shard_bounds(n_global: int, rank: int, world_size: int) -> tuple[int, int]:
    """Contiguous, balanced ``[start, stop)`` of ``n_global`` rows for ``rank`` (array_split).

    The first ``n_global % world_size`` ranks get one extra row.

    Raises:
        ValueError: ``n_global < world_size`` (a rank would get no rows).
    """
    if n_global < world_size:
        raise ValueError(f"a global batch of {n_global} rows cannot feed world_size={world_size} "
                         "ranks (each needs at least one); raise batch_size or use fewer "
                         "processes")
    base, extra = divmod(n_global, world_size)
    start = rank * base + min(rank, extra)
    return start, start + base + (1 if rank < extra else 0)


def shard(items: Tensor | Sequence[Any], rank: int | None = None,
          world_size: int | None = None) -> Any:
    """This rank's contiguous slice of a global batch (see :func:`shard_bounds`).

    Args:
        items: The global batch (tensor rows or a sequence), identical on every rank.
        rank: Default: from :func:`context`.
        world_size: Default: from :func:`context`.
    """
    if rank is None or world_size is None:
        ctx = context()
        rank = ctx.rank if rank is None else rank
        world_size = ctx.world_size if world_size is None else world_size
    start, stop = shard_bounds(len(items), rank, world_size)
    return items[start:stop]


def main_only(fn: Callable[..., T], *args: Any, ctx: DistContext | None = None,
              **kwargs: Any) -> T | None:
    """Call ``fn(*args, **kwargs)`` on rank 0 only (artifact writes, prints); ``None`` elsewhere."""
    ctx = context() if ctx is None else ctx
    return fn(*args, **kwargs) if ctx.is_main else None


@contextlib.contextmanager
def guard_collective(ctx: DistContext, what: str, hint: str = "") -> Iterator[None]:
    """Turn a failed collective into a :class:`DistributedTrainingError` with a clear message.

    gloo raises ``Connection closed by peer`` / ``Connection reset``, NCCL a watchdog timeout or
    ``DistBackendError`` when a peer dies; the message adds which rank, what it was doing and
    ``hint`` (where the resumable checkpoint is).
    """
    if not ctx.is_distributed:
        yield
        return
    try:
        yield
    except DistributedTrainingError:
        raise
    except RuntimeError as err:  # DistBackendError is a RuntimeError subclass
        raise DistributedTrainingError(
            f"rank {ctx.rank}/{ctx.world_size}: a collective failed during {what} ("
            f"{type(err).__name__}: {str(err).strip().splitlines()[0] if str(err) else ''}). "
            "Another rank probably died (killed, out of memory) or timed out; the whole job "
            f"stops.{(' ' + hint) if hint else ''}"
        ) from err


def all_reduce_mean(values: Float[Tensor, " n"], ctx: DistContext | None = None
                    ) -> Float[Tensor, " n"]:
    """Mean of ``values`` over ranks (a copy; ``values`` itself in a world of one)."""
    ctx = context() if ctx is None else ctx
    if not ctx.is_distributed:
        return values
    out = values.detach().clone()
    if ctx.backend == "gloo":
        out = out.cpu()  # gloo reduces CPU tensors
    torch.distributed.all_reduce(out, op=torch.distributed.ReduceOp.SUM)
    return (out / ctx.world_size).to(values.device)


def broadcast_object(obj: T, ctx: DistContext | None = None, src: int = 0) -> T:
    """``obj`` from rank ``src`` on every rank (pickled; for resume states and small metadata).

    Tensors inside arrive on the CPU (they are moved there before sending).
    """
    ctx = context() if ctx is None else ctx
    if not ctx.is_distributed:
        return obj
    box = [_to_cpu(obj) if ctx.rank == src else None]
    torch.distributed.broadcast_object_list(box, src=src)
    return box[0]  # type: ignore[return-value]


def _to_cpu(obj: Any) -> Any:
    if isinstance(obj, Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_cpu(v) for v in obj)
    return obj


class StopOnSignal:
    """Context manager: the first SIGTERM/SIGINT asks training to stop cleanly (a ``should_stop``).

    ``torchrun`` answers a dead worker by sending SIGTERM to the others (and SIGKILL 30 s
    later); a batch scheduler pre-empts jobs the same way. With this installed, a rank that
    gets the signal finishes its step, every rank agrees to stop (the flag rides on the loss
    all-reduce), and rank 0 checkpoints the step instead of dying mid-step. A second signal
    gets the default behaviour. Outside the main thread it installs nothing.

    Examples:
        >>> from futurelens_tl.lenses.distributed import StopOnSignal
        >>> with StopOnSignal() as stop:
        ...     stop()
        False
    """

    def __init__(self, signals: Sequence[int] = (signal.SIGTERM, signal.SIGINT)):
        self.signals = tuple(signals)
        self.received: int | None = None
        self._old: dict[int, Any] = {}

    def __call__(self) -> bool:
        return self.received is not None

    def _handle(self, signum: int, frame: Any) -> None:
        self.received = signum
        for sig, old in self._old.items():  # the next signal behaves as before
            signal.signal(sig, old)

    def __enter__(self) -> StopOnSignal:
        if threading.current_thread() is threading.main_thread():
            for sig in self.signals:
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)
        self._old = {}


class _AllParams(torch.nn.Module):
    """Holds the lens; its forward touches every trainable parameter with weight zero."""

    def __init__(self, module: torch.nn.Module):
        super().__init__()
        self.lens = module

    def forward(self) -> Tensor:
        params = [p for p in self.lens.parameters() if p.requires_grad]
        return torch.stack([p.sum() for p in params]).sum() * 0.0


class GradSync:
    """DDP wrapper over a lens's trainable parameters: all-reduce accumulated gradients.

    Build it once (after the parameters are final on every rank: it broadcasts rank 0's values,
    the usual DDP start), back-propagate any number of losses locally, then call
    :meth:`__call__` once per optimiser step: DDP's reducer averages every trainable
    parameter's accumulated ``.grad`` over ranks in buckets. In a world of one it does nothing.

    Args:
        module: The lens (any ``nn.Module``; only parameters with ``requires_grad`` sync).
        ctx: The job (default :func:`context`).

    Examples:
        >>> import torch
        >>> from futurelens_tl.lenses.distributed import GradSync
        >>> lin = torch.nn.Linear(2, 2)
        >>> sync = GradSync(lin)                  # world of one: a no-op
        >>> lin(torch.ones(1, 2)).sum().backward()
        >>> g = lin.weight.grad.clone(); sync(); torch.equal(g, lin.weight.grad)
        True
    """

    def __init__(self, module: torch.nn.Module, ctx: DistContext | None = None):
        self.ctx = context() if ctx is None else ctx
        self.ddp: torch.nn.parallel.DistributedDataParallel | None = None
        if self.ctx.is_distributed:
            # device_ids=None: valid for CPU modules and for modules on any one or more devices
            self.ddp = torch.nn.parallel.DistributedDataParallel(
                _AllParams(module), device_ids=None, find_unused_parameters=False)

    def __call__(self) -> None:
        if self.ddp is not None:
            self.ddp().backward()
