"""Regenerate the committed pinned toy checkpoint (futurelens_tl/toy/checkpoint/).

Usage (from the repo root; the pinned checkpoint was made with the defaults):

    nice -n 10 python scripts/train_toy_checkpoint.py            # long run (see docs/toy_model.md)
    python scripts/train_toy_checkpoint.py --steps 450 --out /tmp/toy  # the quick recipe
    python scripts/train_toy_checkpoint.py --init-from /tmp/toy --steps 600 --out /tmp/toy2
                                                                  # a second phase

The architecture and corpus are those of ``ToyConfig(seed=0)``; only the training length
(steps, learning-rate schedule) differs from the quick on-demand path, so ``fl.toy_model()``
recognises the pinned checkpoint as the seed-0 model.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys

import torch

from futurelens_tl.toy import CHECKPOINT_DIR, ToyConfig
from futurelens_tl.toy.train import train_toy


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--warmup", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--dtype", choices=["float32", "float16"], default="float32")
    ap.add_argument("--out", default=str(CHECKPOINT_DIR))
    ap.add_argument("--quiet", action="store_true")
    ap.add_argument("--repeat-frac", type=float, default=0.0,
                    help="fraction of rows that are repeated random-token spans")
    ap.add_argument("--init-from", default=None,
                    help="continue from this checkpoint (a second training phase)")
    args = ap.parse_args(argv)
    cfg = dataclasses.replace(
        ToyConfig(seed=args.seed), steps=args.steps, batch_size=args.batch_size, lr=args.lr,
        warmup=args.warmup,
    )
    meta = train_toy(cfg, args.out, verbose=not args.quiet, dtype=getattr(torch, args.dtype),
                     num_threads=args.threads, init_from=args.init_from,
                     repeat_frac=args.repeat_frac)
    print(json.dumps(meta["stats"], indent=1))
    size = sum(os.path.getsize(os.path.join(args.out, f)) for f in os.listdir(args.out))
    print(f"checkpoint {args.out}: {size / 1e6:.2f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
