"""Lenses: run_with_lenses vs run_with_cache, extra peak memory, tuned-lens training throughput.

Targets (issue 3): on a GPT-2-small-shaped random model, batch 8 x 128, CPU,
``run_with_lenses`` with a logit + a tuned lens and top-10 readouts at every layer and position
takes at most 2x the model's own ``run_with_cache`` and at most 1 GB of extra peak memory;
tuned-lens training throughput is reported next to the plain forward's and next to the
FLOP-bound estimate for the translators plus unembedding (aim: within 1.5x of the bound).

Note on the 2x target: exact readouts of 2 lenses x (L+1) rows through the full 50257-token
unembedding are 2 (L+1) = 26 unembedding matmuls against one in the forward. The benchmark
times one such matmul on the same rows and reports the floor it implies (forward + 26 matmuls,
nothing else) beside the measured ratio, and run_with_lenses over that floor (the cost of the
reductions: top-k, entropy, KL, target rank).
"""

from __future__ import annotations

import gc
import threading
import time

import torch
from _common import gpt2_small_random, row, timeit

import futurelens_tl as fl
from futurelens_tl.model import as_view


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 2**20


def _peak_extra_mb(fn) -> float:
    """Peak RSS above the pre-call RSS while ``fn`` runs (sampled every 2 ms)."""
    gc.collect()
    base = _rss_mb()
    peak = [base]
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], _rss_mb())
            time.sleep(0.002)

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    try:
        fn()
    finally:
        stop.set()
        th.join()
    return peak[0] - base


def _timed_peak(fn) -> tuple[float, float]:
    t0 = time.perf_counter()
    mem = _peak_extra_mb(fn)
    return mem, time.perf_counter() - t0


def main(quick: bool = False) -> list[dict]:
    torch.manual_seed(0)
    model = gpt2_small_random(quick=quick)
    view = as_view(model)
    B, T = (8, 128) if not quick else (2, 32)
    name = ("GPT-2-small-shaped random model, batch 8x128, CPU" if not quick
            else "quick (2 layers, d 128, vocab 5000, batch 2x32)")
    tokens = torch.randint(0, view.d_vocab, (B, T))
    L, d, V = view.n_layers, view.d_model, view.d_vocab
    logit = fl.LogitLens(model)
    tuned = fl.TunedLens(model)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for t in tuned.translators:
            t.weight.copy_(0.01 * torch.randn(t.weight.shape, generator=g))
    names = [view.resid_hook(x) for x in range(-1, L)]
    rep = 1 if not quick else 3

    def cache() -> None:
        with torch.no_grad():
            model.run_with_cache(tokens, names_filter=lambda n: n in names)

    def lenses() -> None:
        fl.run_with_lenses(model, tokens, [logit, tuned], top_k=10)

    if quick:
        t_cache = timeit(cache, repeat=rep)
        t_lens = timeit(lenses, repeat=rep)
        mem_cache = _peak_extra_mb(cache)
        mem_lens = _peak_extra_mb(lenses)
    else:  # full size: run_with_lenses is half a minute, so one timed call, memory sampled
        t_cache = timeit(cache, repeat=3)  # median of 3 (a few seconds each; one is noisy)
        mem_cache = _peak_extra_mb(cache)
        mem_lens, t_lens = _timed_peak(lenses)
    # The floor of exact readouts: the unembedding matmuls alone, timed on the same rows.
    x = torch.randn(B * T, d)
    w_u = view.W_U.detach()
    t_unembed = timeit(lambda: x @ w_u, repeat=rep if quick else 3)
    n_read = 2 * (L + 1)
    floor = t_cache + n_read * t_unembed
    # FLOPs: forward ~ 2 * params_nonembed * tokens + unembed; each lens row one unembed
    n_params = sum(p.numel() for n, p in model.named_parameters()
                   if "embed" not in n.lower() and "pos" not in n.lower())
    rows_ = B * T
    f_fwd = 2 * n_params * rows_ + 2 * d * V * rows_
    f_lens = 2 * (L + 1) * (2 * d * V * rows_) + 2 * L * 2 * d * d * rows_
    out = [
        row(name, "run_with_cache (resid hooks, all layers)", t_cache, "s"),
        row(name, "run_with_lenses (logit+tuned, top-10, all layers/positions)", t_lens, "s"),
        row(name, "run_with_lenses / run_with_cache", t_lens / t_cache, "x", "<= 2",
            note=f"FLOP-bound ratio {(f_fwd + f_lens) / f_fwd:.1f}x: {n_read} full "
                 "unembeddings vs 1 in the forward"),
        row(name, "one unembedding matmul (all rows)", t_unembed, "s",
            note=f"{2 * B * T * d * V / t_unembed / 1e9:.0f} GFLOP/s"),
        row(name, "exact-readout floor / run_with_cache", floor / t_cache, "x",
            note=f"run_with_cache + {n_read} unembedding matmuls, nothing else"),
        row(name, "run_with_lenses / exact-readout floor", t_lens / floor, "x",
            note="the reductions' share: top-k, entropy, KL, target rank"),
        row(name, "extra peak RSS, run_with_cache", mem_cache, "MB"),
        row(name, "extra peak RSS, run_with_lenses", mem_lens, "MB", "<= 1024"),
    ]
    # ---------------------------------------------------------------- training throughput
    Bt, Tt = (1, 128) if not quick else (2, 32)
    windows = torch.randint(0, V, (Bt * 4, Tt), generator=g)
    steps = 1 if not quick else 3

    def fwd() -> None:
        with torch.no_grad():
            view.residuals(windows[:Bt])

    t_f = timeit(fwd, repeat=rep, warmup=1 if quick else 0)
    lens = fl.TunedLens(model)
    if quick:
        lens.train_on(windows, tokens=Bt * Tt, batch_size=Bt, verbose=False)  # warm-up
        lens = fl.TunedLens(model)
    t0 = time.perf_counter()
    lens.train_on(windows, tokens=Bt * Tt * steps, batch_size=Bt, verbose=False)
    t_train = (time.perf_counter() - t0) / steps
    # FLOP bound for translators + unembedding: per token and trained layer, forward
    # 2d^2 + 2dV, backward 2dV (grad wrt the translated hidden) + 2d^2 (grad of A).
    a = torch.randn(Bt * Tt, d)
    w = torch.randn(d, V)
    t_mm = timeit(lambda: a @ w, repeat=3 if quick else 1)
    flops_per_s = 2 * Bt * Tt * d * V / t_mm
    n_tr = L  # layers -1..L-2
    f_tok = n_tr * (4 * d * d + 4 * d * V)
    bound_tok_s = flops_per_s / f_tok
    train_tok_s = Bt * Tt / t_train
    out += [
        row(name, "plain forward throughput", Bt * Tt / t_f, "tok/s", note=f"batch {Bt}x{Tt}"),
        row(name, "tuned-lens training throughput", train_tok_s, "tok/s",
            note="one no-grad forward + all translators, KL loss, per-layer backward, SGD"),
        row(name, "FLOP-bound estimate (translators + unembedding)", bound_tok_s, "tok/s",
            note=f"measured matmul {flops_per_s / 1e9:.1f} GFLOP/s; excludes the forward"),
        row(name, "bound / training throughput", bound_tok_s / train_tok_s, "x", "<= 1.5"),
    ]
    return out


if __name__ == "__main__":
    import sys

    for r in main(quick="--quick" in sys.argv):
        print(r)
