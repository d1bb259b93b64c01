r"""``python -m futurelens_tl.train_lens``: train a tuned lens, data-parallel under ``torchrun``.

One process trains as usual; under ``torchrun`` (or any launcher that sets ``RANK``,
``WORLD_SIZE``, ``MASTER_ADDR``, ``MASTER_PORT``) every process joins one ``torch.distributed``
job (gloo on CPU, nccl on GPU), trains on its shard of each global batch, and rank 0 alone
shows progress, writes checkpoints and the artifact (atomically). The lens is the one a single
process trains with the same arguments (see ``docs/howto/distributed.md``).

Examples::

    python -m futurelens_tl.train_lens --model toy --texts toy --out tuned.safetensors
    torchrun --nproc_per_node=2 -m futurelens_tl.train_lens --model toy --texts toy \
        --tokens 65536 --batch-size 8 --checkpoint ck.pt --out tuned.safetensors
    torchrun --nproc_per_node=8 -m futurelens_tl.train_lens --model smollm2-135m \
        --texts lee --dist-backend nccl --out smollm2-tuned.safetensors

``futurelens_tl.cli`` delegates its ``train-lens`` subcommand to :func:`train_lens_main`.
Exit status: 0 done (or stopped at ``--stop-after``), 1 a training error (message on stderr,
prefixed by the rank), 2 bad arguments.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from typing import Any

__all__ = ["build_parser", "main", "train_lens_main"]


def build_parser(prog: str = "python -m futurelens_tl.train_lens") -> argparse.ArgumentParser:
    """The argument parser (shared with ``futurelens-tl train-lens``)."""
    p = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    m = p.add_argument_group("model")
    m.add_argument("--model", default="toy",
                   help="'toy', a registered/TransformerLens model name, or a local HF dir")
    m.add_argument("--backend", default="auto", choices=["auto", "bridge", "hooked"])
    m.add_argument("--device", default=None,
                   help="training device (default: cuda:LOCAL_RANK if CUDA is available, else "
                        "cpu)")
    m.add_argument("--dtype", default=None, help="model dtype (default float32)")
    d = p.add_argument_group("data")
    d.add_argument("--texts", default="toy",
                   help="'toy' (the toy corpus), a corpus name known to fl.corpus (e.g. 'lee'), "
                        "or a .txt (blank-line separated) / .jsonl file")
    d.add_argument("--seq-len", type=int, default=None, help="window length (default "
                   "min(n_ctx, 128))")
    t = p.add_argument_group("lens and training")
    t.add_argument("--lens", default="tuned", choices=["tuned"], help="what to train")
    t.add_argument("--token-shift", type=int, default=0,
                   help="0 = tuned lens; k >= 1 = k-ahead affine lens")
    t.add_argument("--layers", default=None, help="comma-separated layers (default all)")
    t.add_argument("--tokens", type=int, default=2**19, help="token budget")
    t.add_argument("--batch-size", type=int, default=8,
                   help="GLOBAL windows per step (split over the processes)")
    t.add_argument("--lr", type=float, default=1.0)
    t.add_argument("--momentum", type=float, default=0.9)
    t.add_argument("--weight-decay", type=float, default=1e-3)
    t.add_argument("--optimizer", default="sgd", choices=["sgd", "adam"])
    t.add_argument("--grad-clip", type=float, default=1.0)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--checkpoint", default=None, help="checkpoint file (resumed if present)")
    t.add_argument("--checkpoint-every", type=int, default=50)
    t.add_argument("--no-resume", action="store_true", help="ignore an existing checkpoint")
    t.add_argument("--stop-after", type=int, default=None,
                   help="stop after this many steps (time-boxed jobs)")
    o = p.add_argument_group("output and job")
    o.add_argument("--out", default=None, help="lens artifact (.safetensors), written by rank 0")
    o.add_argument("--summary", default=None, help="JSON summary file (rank 0)")
    o.add_argument("--dist-backend", default="auto", choices=["auto", "gloo", "nccl"])
    o.add_argument("--timeout", type=float, default=1800.0,
                   help="seconds a rank waits for a hung peer before failing")
    o.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def _texts(source: str) -> Any:
    if source == "toy":
        from futurelens_tl.toy import toy_texts

        return toy_texts()
    if os.path.exists(source):
        return source
    import futurelens_tl as fl

    corpus = getattr(fl, "corpus", None)
    if corpus is None:
        raise ValueError(f"--texts {source!r} is neither 'toy' nor an existing file")
    return corpus(source)


def _load_model(args: argparse.Namespace, ctx: Any, device: str) -> Any:
    """Load on every rank; the first process of each node first (it may fill a cache)."""
    import torch

    from futurelens_tl.models import load_model

    def load() -> Any:
        return load_model(args.model, backend=args.backend, device=device, dtype=args.dtype,
                          verbose=not args.quiet)

    if not ctx.is_distributed:
        return load()
    model = load() if ctx.local_rank == 0 else None
    torch.distributed.barrier()
    if model is None:
        model = load()
    torch.distributed.barrier()  # timings start together
    return model


def train_lens_main(argv: Sequence[str] | None = None, *, prog: str | None = None) -> int:
    """Run the entry with ``argv`` (default ``sys.argv[1:]``); returns the exit status."""
    import torch

    from futurelens_tl.lenses import distributed as D

    parser = build_parser(prog or "python -m futurelens_tl.train_lens")
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    backend = None if args.dist_backend == "auto" else args.dist_backend
    own_group = not (torch.distributed.is_available() and torch.distributed.is_initialized())
    try:
        ctx = D.init_distributed(backend, timeout_s=args.timeout, device=args.device)
    except ValueError as err:
        parser.error(str(err))
    device = args.device or str(D.default_device(ctx))
    tag = f"[rank {ctx.rank}/{ctx.world_size}] " if ctx.is_distributed else ""
    try:
        from futurelens_tl.lenses.tuned import TunedLens

        model = _load_model(args, ctx, device)
        layers = None if args.layers is None else [int(x) for x in args.layers.split(",")]
        lens = TunedLens(model, layers, token_shift=args.token_shift)
        from futurelens_tl.data import token_windows

        # tokenised before the clock starts (every rank cuts the same windows)
        windows = token_windows(model, _texts(args.texts), length=args.seq_len)
        t0 = time.perf_counter()
        with D.StopOnSignal() as stop:
            result = lens.train_on(
                windows, tokens=args.tokens, batch_size=args.batch_size,
                seq_len=args.seq_len, lr=args.lr, momentum=args.momentum,
                weight_decay=args.weight_decay, optimizer=args.optimizer,
                grad_clip=args.grad_clip, checkpoint=args.checkpoint,
                checkpoint_every=args.checkpoint_every, resume=not args.no_resume,
                stop_after=args.stop_after, seed=args.seed, verbose=not args.quiet, dist=ctx,
                should_stop=stop)
        seconds = time.perf_counter() - t0
        if result.interrupted:
            where = (f"rank 0 saved it to {args.checkpoint!r}; relaunch the same command, with "
                     "any number of processes, to resume" if args.checkpoint else
                     "no --checkpoint was given, so a relaunch starts over")
            print(f"{tag}futurelens_tl.train_lens: stopped by signal {stop.received} after step "
                  f"{result.steps_done}/{lens.meta['hyperparameters']['steps']}; {where}.",
                  file=sys.stderr, flush=True)
            return 1
        lens.meta["data"]["source"] = args.texts
        hp = lens.meta["hyperparameters"]
        ran = result.steps_done - (result.resumed_from or 0)
        summary = {
            "world_size": ctx.world_size, "backend": ctx.backend, "device": device,
            "steps_done": result.steps_done, "steps": hp["steps"], "finished": result.finished,
            "resumed_from": result.resumed_from, "batch_size": hp["batch_size"],
            "seq_len": hp["seq_len"], "train_seconds": seconds,
            "tokens_per_second": ran * hp["batch_size"] * hp["seq_len"] / max(seconds, 1e-9),
            "final_loss": lens.meta.get("final_loss"), "out": args.out,
        }
        if ctx.is_main:
            if args.out:
                lens.save(args.out)
            if args.summary:
                from futurelens_tl.lenses.artifacts import atomic_write

                def write(tmp: str) -> None:
                    with open(tmp, "w", encoding="utf-8") as f:
                        json.dump(summary, f, indent=2)

                atomic_write(args.summary, write)
            print(json.dumps(summary), flush=True)
        return 0
    except (ValueError, FloatingPointError, RuntimeError) as err:
        # DistributedTrainingError, TrainingDivergedError, ArtifactError, LensMismatchError, ...
        print(f"{tag}futurelens_tl.train_lens: error: {type(err).__name__}: {err}",
              file=sys.stderr, flush=True)
        return 1
    finally:
        if own_group:
            try:
                D.shutdown()
            except Exception:  # a dead peer can make the teardown itself fail
                pass


def main() -> None:
    """Console entry: ``sys.exit(train_lens_main())``."""
    sys.exit(train_lens_main())


if __name__ == "__main__":
    main()
