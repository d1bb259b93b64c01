"""Tuned-lens training side by side with the tuned-lens 0.2.0 package (issue 17, P2).

Same model (a random HF GPT-2: 4 layers, d_model 256, the full 50257-token vocabulary, made by
``../shared/peer/peer_make_model.py``), same data (its jsonl), same token budget (steps x 4096
tokens of 128-token windows), in one benchmark run:

* the peer: ``python -m tuned_lens train`` in its own venv, run as its users run it by
  ``../shared/peer/peer_tuned_lens.sh`` (end-to-end wall time of the command; its own progress
  bar gives the training-loop time);
* ours: ``fl.load_model(folder)`` + ``fl.TunedLens.fit`` with the same optimiser settings as the
  peer's defaults (SGD, Nesterov-style momentum 0.9, lr 1, weight decay 1e-3), 32 x 128 tokens
  per step.

Both lenses are then scored by the same code on held-out text (new documents drawn like the
training ones, another seed): ``KL(final || lens)`` averaged over the translated layers and all
positions, with a 95% interval over windows, next to the logit lens (the control every tuned
lens must beat). The peer's ``params.pt`` maps one to one onto our translators (``h + A h + b``
for hidden state ``i`` = our layer ``i - 1``).

Target: ours >= 2x the peer's tokens/s with equal or lower held-out KL. Skips (one row saying
why) when ``../shared/peer`` or the peer venv cannot be had. ``--quick`` runs 2 steps.
"""

from __future__ import annotations

import json
import math
import os
import random
import re
import subprocess
import sys
import time
from pathlib import Path

import torch
from _common import row

import futurelens_tl as fl
from futurelens_tl.data import token_windows

HERE = Path(__file__).resolve().parent


def _peer_dir() -> Path:
    """``shared/peer`` beside the checkout (``FUTURELENS_SHARED`` overrides)."""
    cands = [Path(os.environ["FUTURELENS_SHARED"])] if os.environ.get("FUTURELENS_SHARED") else []
    cands += [HERE.parent.parent / "shared", HERE.parent / "shared",
              HERE.parent.parent.parent / "shared"]
    for c in cands:
        if (c / "peer" / "peer_tuned_lens.sh").exists():
            return c / "peer"
    return cands[0] / "peer" if cands else HERE.parent.parent / "shared" / "peer"


PEER = _peer_dir()
NAME = "tuned-lens 0.2.0 vs ours, random HF GPT-2 (4 layers, d 256, vocab 50257), CPU"
TOKENS_PER_STEP = 4096


def _work() -> Path:
    root = Path(os.environ.get("FUTURELENS_CACHE", Path.home() / ".cache" / "futurelens_tl"))
    return root / "peer_bench"


def _heldout_texts(tok_vocab: list[str], n: int = 24) -> list[str]:
    """New documents drawn like peer_make_model.py's (another seed): held-out text."""
    words = ([w for w in open("/usr/share/dict/words").read().split()]
             if os.path.exists("/usr/share/dict/words")
             else [w for w in tok_vocab if w.isalpha()][:5000])
    rng = random.Random(12345)
    return [" ".join(rng.choice(words) for _ in range(300)) for _ in range(n)]


def _peer_progress_seconds(log: str) -> float | None:
    """Elapsed time of the last tqdm bar in the peer's log (its training loop), if any."""
    best = None
    for m in re.finditer(r"(\d+)/(\d+) \[(?:(\d+):)?(\d+):(\d+)<", log):
        done, total = int(m.group(1)), int(m.group(2))
        if done == total and total > 1:
            h = int(m.group(3) or 0)
            best = 3600 * h + 60 * int(m.group(4)) + int(m.group(5))
    return None if best is None else float(best)


def _mean_kl(model, lens, windows: torch.Tensor, layers: list[int]) -> tuple[float, float]:
    """Mean KL(final || lens) over layers and positions; 95% half-width over windows."""
    per_window = []
    for i in range(0, windows.shape[0], 8):
        _, ro = fl.run_with_lenses(model, windows[i : i + 8], lens, targets=None, top_k=1,
                                   layers=layers)
        kl = torch.stack([ro[lens.name, ly].kl for ly in layers])  # [layers, b, pos]
        per_window.append(kl.mean(dim=(0, 2)))
    w = torch.cat(per_window).double()
    half = 1.96 * float(w.std()) / math.sqrt(max(len(w), 1)) if len(w) > 1 else float("nan")
    return float(w.mean()), half


def main(quick: bool = False) -> list[dict]:
    steps = 2 if quick else 20
    budget = steps * TOKENS_PER_STEP
    if not (PEER / "peer_tuned_lens.sh").exists():
        return [row(NAME, "skipped", 0, "", note=f"{PEER} is absent")]
    work = _work()
    work.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    if not (work / "model" / "config.json").exists():
        r = subprocess.run([sys.executable, str(PEER / "peer_make_model.py"), str(work)],
                           capture_output=True, text=True, env=env)
        if r.returncode:
            return [row(NAME, "skipped", 0, "", note="peer_make_model.py failed: "
                        + r.stderr.strip().splitlines()[-1][:200])]
    out = work / f"peer_lens_{steps}"
    t0 = time.perf_counter()
    r = subprocess.run(["bash", str(PEER / "peer_tuned_lens.sh"), str(work / "model"),
                        str(work / "data.jsonl"), str(out), str(steps)],
                       capture_output=True, text=True, env=env, timeout=7200)
    t_peer = time.perf_counter() - t0
    log = (out.parent / (out.name + ".log"))
    log_text = log.read_text() if log.exists() else ""
    if r.returncode or not (out / "params.pt").exists():
        tail = (r.stderr or log_text or "no output").strip().splitlines()[-1:] or [""]
        return [row(NAME, "skipped", 0, "", note=f"the peer run failed: {tail[0][:200]}")]
    t_peer_loop = _peer_progress_seconds(log_text)
    # ---------------------------------------------------------------- ours, same budget
    texts = [json.loads(line)["text"] for line in open(work / "data.jsonl")]
    t0 = time.perf_counter()
    model = fl.load_model(str(work / "model"), verbose=False)
    t1 = time.perf_counter()
    ours = fl.TunedLens.fit(model, texts, tokens=budget, batch_size=32, seq_len=128,
                            verbose=False)
    t_ours = time.perf_counter() - t0
    t_fit = time.perf_counter() - t1
    # ---------------------------------------------------------------- the peer's lens, scored here
    peer = fl.TunedLens(model, name="peer")
    state = torch.load(out / "params.pt", map_location="cpu", weights_only=True)
    with torch.no_grad():
        for i, t in enumerate(peer.translators):
            t.weight.copy_(state[f"{i}.weight"].float())
            t.bias.copy_(state[f"{i}.bias"].float())
    view = ours.view
    vocab = list(view.tokenizer.get_vocab()) if view.tokenizer is not None else []
    held = token_windows(model, _heldout_texts(vocab, 8 if quick else 24), length=128)
    layers = ours.trained_layers()
    kl_ours, h_ours = _mean_kl(model, ours, held, layers)
    kl_peer, h_peer = _mean_kl(model, peer, held, layers)
    kl_logit, h_logit = _mean_kl(model, fl.LogitLens(model), held, layers)
    tps_peer = budget / t_peer
    tps_ours = budget / t_ours
    rows = [
        row(NAME, "token budget", budget, "tokens", note=f"{steps} steps x {TOKENS_PER_STEP}"),
        row(NAME, "peer: python -m tuned_lens train (end to end)", t_peer, "s",
            note="its own venv: torch 2.13 CPU, transformers 4.46.3"),
        row(NAME, "ours: load_model + TunedLens.fit (end to end)", t_ours, "s"),
        row(NAME, "peer tokens/s (end to end)", tps_peer, "tok/s"),
        row(NAME, "ours tokens/s (end to end)", tps_ours, "tok/s"),
        row(NAME, "ours / peer tokens/s (end to end)", tps_ours / tps_peer, "x", ">= 2"),
    ]
    if t_peer_loop:
        rows.append(row(NAME, "peer tokens/s (its training loop, from its progress bar)",
                        budget / t_peer_loop, "tok/s", note="excludes its start-up and loading"))
    rows.append(row(NAME, "ours tokens/s (TunedLens.fit: tokenise, cache, train)",
                    budget / t_fit, "tok/s", note="excludes load_model"))
    rows += [
        row(NAME, "held-out KL, ours", kl_ours, "nats", note=f"+- {h_ours:.3g} (95%, windows)"),
        row(NAME, "held-out KL, peer", kl_peer, "nats", note=f"+- {h_peer:.3g} (95%, windows)"),
        row(NAME, "held-out KL, logit lens (control)", kl_logit, "nats",
            note=f"+- {h_logit:.3g}; a tuned lens must be below it"),
        row(NAME, "held-out KL ours - peer", kl_ours - kl_peer, "nats", "<= 0",
            note=f"{held.shape[0]} windows x 128 tokens, layers {layers[0]}..{layers[-1]}"),
    ]
    return rows


if __name__ == "__main__":
    for r_ in main(quick="--quick" in sys.argv):
        print(r_)
