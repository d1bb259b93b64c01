"""GGUF checkpoints as Hugging Face folders: dequantize once, cache a float32 copy.

transformers reads GGUF files (with the ``gguf`` package) and dequantizes them to float32
(``reference/real-models.md``). That takes ~35 s for SmolLM2-135M, so the result is saved once
as a safetensors HF folder under ``<cache>/models/<stem>-<sha>`` and booted from there later
(seconds). The folder name holds a hash of the GGUF bytes and of the overrides, and
``futurelens_gguf.json`` is written last, inside a temporary folder that is renamed into place:
an interrupted conversion leaves no folder that looks complete.

Quantized weights dequantize to the model's real weights up to quantization error (Q4_1: 4-bit
blocks with a scale and a minimum per 32 weights); say so wherever numbers are reported.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from futurelens_tl.models._hf import quiet_transformers
from futurelens_tl.paths import cache_root

__all__ = ["FORMAT", "dequantized_dir", "gguf_key"]

FORMAT = 1
_META = "futurelens_gguf.json"


def gguf_key(path: str | os.PathLike[str], overrides: dict[str, Any] | None = None) -> str:
    """16 hex digits naming a GGUF file's bytes, the overrides and this cache format."""
    h = hashlib.sha256(json.dumps({"format": FORMAT, "overrides": overrides or {}},
                                  sort_keys=True).encode())
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()[:16]


def _complete(folder: Path, key: str) -> bool:
    try:
        meta = json.loads((folder / _META).read_text())
    except (OSError, ValueError):
        return False
    return meta.get("key") == key and meta.get("format") == FORMAT


def dequantized_dir(
    gguf_path: str | os.PathLike[str],
    *,
    bos_token: str | None = None,
    architectures: list[str] | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    verbose: bool = True,
) -> Path:
    """A float32 HF folder (config, safetensors weights, tokenizer) for a GGUF file, cached.

    Args:
        gguf_path: The ``.gguf`` file.
        bos_token: Replace the tokenizer's BOS (GGUF metadata can name the chat-start token;
            SmolLM2's real BOS is ``<|endoftext|>``).
        architectures: Set ``config.architectures`` (some repacks lack it).
        cache_dir: Cache root (default ``$FUTURELENS_CACHE`` or the user cache dir).
        verbose: Show transformers' conversion progress.

    Raises:
        FileNotFoundError: If ``gguf_path`` is not a file.
        ImportError: If the ``gguf`` package is missing (with the install command).
    """
    src = Path(gguf_path)
    if not src.is_file():
        raise FileNotFoundError(f"gguf_path={os.fspath(gguf_path)!r} is not a file")
    overrides = {"bos_token": bos_token, "architectures": architectures}
    key = gguf_key(src, overrides)
    root = cache_root(cache_dir) / "models"
    folder = root / f"{src.stem}-{key}"
    if _complete(folder, key):
        return folder
    try:
        import gguf  # noqa: F401  (transformers needs it; fail here with the command)
    except ImportError as err:
        raise ImportError(
            "reading .gguf files needs the 'gguf' package: pip install gguf "
            "(or pip install -e '.[real]')"
        ) from err
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    with quiet_transformers(not verbose):
        tok = AutoTokenizer.from_pretrained(src.parent, gguf_file=src.name)
        hf = AutoModelForCausalLM.from_pretrained(src.parent, gguf_file=src.name,
                                                  dtype=torch.float32)
    # save_pretrained refuses a GGUF-quantized model until the quantizer is dropped; the
    # weights are already dequantized float32 tensors.
    hf.hf_quantizer = None
    if hasattr(hf.config, "quantization_config"):
        del hf.config.quantization_config
    if architectures:
        hf.config.architectures = list(architectures)
    if bos_token is not None:
        tok.bos_token = bos_token
        hf.config.bos_token_id = tok.convert_tokens_to_ids(bos_token)
        if getattr(hf, "generation_config", None) is not None:
            hf.generation_config.bos_token_id = hf.config.bos_token_id
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=root))
    try:
        hf.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        meta = {"format": FORMAT, "key": key, "source": str(src), "overrides": overrides,
                "note": "float32 dequantization of a quantized GGUF checkpoint"}
        (tmp / _META).write_text(json.dumps(meta, indent=1))
        umask = os.umask(0)
        os.umask(umask)
        tmp.chmod(0o777 & ~umask)  # mkdtemp makes it 0700; cached models are ordinary files
        try:
            os.replace(tmp, folder)
        except OSError:  # another process finished first, or a stale partial folder
            if not _complete(folder, key):
                shutil.rmtree(folder, ignore_errors=True)
                os.replace(tmp, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder
