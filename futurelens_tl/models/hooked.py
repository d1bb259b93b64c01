"""TransformerLens 3.x ``HookedTransformer`` construction from local Hugging Face folders.

TL 3's ``from_pretrained`` only knows official model names and asks the hub for them; these
builders read a local folder instead, so TL 3 works offline on the toy model, on dequantized
GGUF folders and on any local folder of an architecture TL 3 converts. TL 4 removed
``HookedTransformer``: every function here raises a clear ``ValueError`` there.
"""

from __future__ import annotations

import json
import os
import tempfile
from typing import Any

import torch

from futurelens_tl.models._tl import tl_major, tl_version

__all__ = ["hooked_from_hf_dir", "hooked_from_hf_gpt2", "load_hooked", "require_hooked"]


def require_hooked() -> None:
    """Raise a helpful ``ValueError`` when ``HookedTransformer`` is unavailable (TL >= 4)."""
    if tl_major() >= 4:
        raise ValueError(
            f"backend='hooked' needs TransformerLens 3.x, but transformer-lens {tl_version()} is "
            "installed, which removed HookedTransformer. Use backend='bridge' (the default), or "
            "`pip install 'transformer-lens==3.9.*'`."
        )


def _no_processing(model: Any, state_dict: dict[str, torch.Tensor], process: bool) -> Any:
    model.load_and_process_state_dict(
        state_dict, fold_ln=process, center_writing_weights=process, center_unembed=process,
        fold_value_biases=process,
    )
    model.eval()
    return model


def hooked_from_hf_gpt2(path: str | os.PathLike[str], name: str | None = None,
                        tokenizer: Any = None, process_weights: bool = False) -> Any:
    """A TL 3.x ``HookedTransformer`` from a local Hugging Face GPT-2 directory, hub-free.

    Builds the ``HookedTransformerConfig`` from the directory's ``config.json`` and converts
    the weights with TL's own ``convert_gpt2_weights``. Raw basis unless ``process_weights``
    (fold LN, centre writing weights and the unembedding).
    """
    require_hooked()
    import transformer_lens
    from transformer_lens.pretrained.weight_conversions import convert_gpt2_weights
    from transformers import AutoTokenizer, GPT2LMHeadModel

    path = os.fspath(path)
    hf = GPT2LMHeadModel.from_pretrained(path, torch_dtype=torch.float32)
    c = hf.config
    cfg = transformer_lens.HookedTransformerConfig(
        n_layers=c.n_layer, d_model=c.n_embd, n_ctx=c.n_positions, d_head=c.n_embd // c.n_head,
        n_heads=c.n_head, d_mlp=c.n_inner or 4 * c.n_embd, d_vocab=c.vocab_size,
        act_fn=c.activation_function, eps=c.layer_norm_epsilon, normalization_type="LN",
        positional_embedding_type="standard", original_architecture="GPT2LMHeadModel",
        model_name=name or os.path.basename(os.path.normpath(path)), default_prepend_bos=True,
        tokenizer_prepends_bos=False, dtype=torch.float32, device="cpu",
    )
    if tokenizer is None:
        tokenizer = AutoTokenizer.from_pretrained(path)
    model = transformer_lens.HookedTransformer(cfg, tokenizer=tokenizer)
    return _no_processing(model, convert_gpt2_weights(hf, cfg), process_weights)


def hooked_from_hf_dir(path: str | os.PathLike[str], process_weights: bool = False,
                       dtype: torch.dtype = torch.float32) -> Any:
    """A TL 3.x ``HookedTransformer`` from any local HF folder of an architecture TL 3 converts.

    GPT-2 folders go through :func:`hooked_from_hf_gpt2`; others (Llama, Mistral, Qwen2, ...)
    through TL 3's own ``get_pretrained_model_config`` / ``get_pretrained_state_dict`` with the
    folder's HF model in memory, so nothing is fetched (reference ``real-models.md``).

    Raises:
        ValueError: On TL >= 4, or an architecture TL 3 cannot convert (the message names it).
    """
    require_hooked()
    path = os.fspath(path)
    with open(os.path.join(path, "config.json")) as f:
        hf_cfg = json.load(f)
    if hf_cfg.get("model_type") == "gpt2":
        return hooked_from_hf_gpt2(path, process_weights=process_weights)
    import transformer_lens
    from transformer_lens import loading_from_pretrained as loading
    from transformers import AutoModelForCausalLM, AutoTokenizer

    hf = AutoModelForCausalLM.from_pretrained(path, torch_dtype=dtype)
    tok = AutoTokenizer.from_pretrained(path)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            # TL 3.9 guesses the architecture from the *name* when it contains "llama" or
            # "gemma" and then reads no config (AttributeError); a neutral link name avoids it.
            link = os.path.join(tmp, "model")
            os.symlink(os.path.abspath(path), link)
            cfg = loading.get_pretrained_model_config(
                link, hf_cfg=hf.config.to_dict(), fold_ln=process_weights, device="cpu",
                dtype=dtype, default_prepend_bos=True,
            )
            state_dict = loading.get_pretrained_state_dict(link, cfg, hf)
    except Exception as err:
        arch = (hf_cfg.get("architectures") or [hf_cfg.get("model_type")])[0]
        raise ValueError(
            f"TransformerLens {tl_version()} cannot build a HookedTransformer for {arch} from "
            f"{path!r} ({type(err).__name__}: {err}). Use backend='bridge', which wraps the HF "
            "model itself."
        ) from err
    model = transformer_lens.HookedTransformer(cfg, tokenizer=tok)
    return _no_processing(model, state_dict, process_weights)


def load_hooked(name: str, dev: torch.device, dtype: torch.dtype, process: bool) -> Any:
    """A ``HookedTransformer`` from a local folder or an official TL 3 model name."""
    require_hooked()
    if os.path.isfile(os.path.join(name, "config.json")):
        return hooked_from_hf_dir(name, process_weights=process).to(dev).to(dtype)
    import transformer_lens

    cls = transformer_lens.HookedTransformer
    if process:
        return cls.from_pretrained(name, device=str(dev), dtype=dtype)
    return cls.from_pretrained_no_processing(name, device=str(dev), dtype=dtype)
