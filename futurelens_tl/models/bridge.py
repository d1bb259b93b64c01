"""TransformerLens ``TransformerBridge`` construction (TL 4.x; also shipped by TL 3.9)."""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["load_bridge"]


def load_bridge(name: str, dev: torch.device, dtype: torch.dtype, process: bool) -> Any:
    """Boot a bridge around a local HF folder or a hub name, raw basis unless ``process``.

    ``process`` turns on compatibility mode (fold LN, centred writing weights): logit-lens
    log-probs are unchanged, trained affine lenses are not (reference
    ``lenses-and-transformerlens.md`` §C.6).
    """
    from transformer_lens.model_bridge import TransformerBridge

    bridge = TransformerBridge.boot_transformers(name, device=str(dev), dtype=dtype)
    if process:
        bridge.enable_compatibility_mode()
    bridge.eval()
    return bridge
