"""Shared benchmark helpers: a GPT-2-small-shaped random model and a timer."""

from __future__ import annotations

import gc
import os
import resource
import time
import warnings
from collections.abc import Callable

warnings.filterwarnings("ignore")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("FUTURELENS_NO_PROGRESS", "1")


def gpt2_small_random(seed: int = 0, n_layers: int = 12, quick: bool = False):
    """A random TL-native bridge shaped like GPT-2 small (d 768, 12 heads, vocab 50257)."""
    from transformer_lens.config import TransformerBridgeConfig
    from transformer_lens.model_bridge import TransformerBridge

    cfg = TransformerBridgeConfig(
        d_model=768 if not quick else 128, d_head=64 if not quick else 32,
        n_heads=12 if not quick else 4, n_layers=n_layers if not quick else 2,
        n_ctx=1024 if not quick else 256, d_vocab=50257 if not quick else 5000,
        d_mlp=3072 if not quick else 512, act_fn="gelu_new", seed=seed,
    )
    model = TransformerBridge.boot_native(cfg)
    model.eval()
    model.requires_grad_(False)
    return model


def timeit(fn: Callable[[], object], repeat: int = 5, warmup: int = 1) -> float:
    """Median wall time of ``fn`` in seconds."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        gc.collect()
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far, in MB (Linux: ru_maxrss is in kB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def row(benchmark: str, metric: str, value, unit: str, target: str = "", note: str = "") -> dict:
    return {"benchmark": benchmark, "metric": metric, "value": value, "unit": unit,
            "target": target, "note": note}
