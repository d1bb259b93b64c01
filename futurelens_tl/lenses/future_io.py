"""Future Lens persistence: safetensors + JSON header, and the published GPT-J soft prompt.

Reference ``future-lens.md`` §2.4 (``gptj_soft_prefix.pt``); DESIGN §4 (artifacts). Mixed into
:class:`~futurelens_tl.lenses.future.FutureLens`.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict
from typing import Any

import torch
from torch import Tensor

from futurelens_tl.lenses.artifacts import (
    artifact_errors,
    load_artifact,
    load_tensor_file,
    save_artifact,
)
from futurelens_tl.lenses.base import LensMismatchError, model_fingerprint
from futurelens_tl.lenses.future_config import FORMAT_VERSION, FutureLensConfig
from futurelens_tl.models.view import as_view

__all__ = ["IOMixin"]


class IOMixin:
    """``save`` / ``load`` / ``load_official_prompt`` of a Future Lens."""

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write safetensors + JSON header atomically (format, model, basis, layers, config)."""
        if self.basis is None or self.fingerprint is None:
            raise ValueError("save: the lens is not fitted (no basis/fingerprint); fit it first.")
        header = {
            "format": "future_lens", "format_version": FORMAT_VERSION, "kind": "future_lens",
            "method": self.method,
            "layers": self.layers, "n_aheads": list(self.n_aheads), "basis": self.basis,
            "fingerprint": self.fingerprint,
            "config": json.loads(json.dumps(asdict(self.config), default=str)),
            "prompt_text": self.prompt_text, "prompt_key": self.prompt_key,
            "target_layer": self.target_layer, "name": self.name,
            "training": json.loads(json.dumps(self.training_summary, default=str)),
        }
        tensors = dict(self.state_dict())
        if self.source_mean is not None:
            tensors["source_mean"] = self.source_mean.detach().cpu()
        save_artifact(path, tensors, header)

    @classmethod
    def load(cls, path: str | os.PathLike[str], model: Any) -> Any:
        """Load a saved lens onto ``model``; refuses another model or basis.

        Raises:
            LensMismatchError: Other basis or fingerprint.
            ValueError: Not a Future Lens artifact, or a newer format.
        """
        # Missing, truncated, corrupt, foreign or newer files raise ArtifactError (a ValueError).
        tensors, header = load_artifact(path, expect_format="future_lens",
                                        max_version=FORMAT_VERSION)
        with artifact_errors(path, "future lens artifact"):
            view = as_view(model)
            if view.basis != header["basis"]:
                raise LensMismatchError(
                    f"lens at {os.fspath(path)!r} was fitted in the {header['basis']!r} basis "
                    f"but the model is in the {view.basis!r} basis; load the model the same "
                    "way.")
            if model_fingerprint(view) != header["fingerprint"]:
                raise LensMismatchError(
                    f"lens at {os.fspath(path)!r} was fitted on model {header['fingerprint']} but "
                    f"this model is {model_fingerprint(view)}: another model or other weights.")
            cfg = FutureLensConfig(**{**header["config"],
                                      "train_n": tuple(header["config"]["train_n"]),
                                      "splits": tuple(header["config"]["splits"])})
            fixed = tensors.get("prompt_tokens") if header["method"] == "fixed_prompt" else None
            lens = cls(model, header["method"], header["layers"], header["n_aheads"], config=cfg,
                       fixed_prompt=fixed)
            lens.prompt_text, lens.prompt_key = header.get("prompt_text"), header.get("prompt_key")
            if header["method"] == "learned_prompt" and "soft_prompt" in tensors:
                lens.soft_prompt = torch.nn.Parameter(torch.zeros_like(tensors["soft_prompt"]))
            source_mean = tensors.pop("source_mean", None)
            lens.load_state_dict({k: v.to(view.device) for k, v in tensors.items()})
            lens.source_mean = source_mean
            lens.target_layer = header.get("target_layer")
            lens.name = header.get("name", lens.name)
            lens.basis, lens.fingerprint = header["basis"], header["fingerprint"]
            lens.training_summary = header.get("training", {})
        return lens

    @classmethod
    def load_official_prompt(
        cls, path: str | os.PathLike[str] | Tensor, model: Any, layer: int = 13
    ) -> Any:
        """Load the published GPT-J soft prompt ``gptj_soft_prefix.pt`` (reference §2.4).

        The tensor is ``[10, 4096]`` bf16, trained for source = target = block 13 in the raw HF
        GPT-J basis; it is loaded as fp32. ``path`` may also be a tensor (tests).

        Raises:
            ValueError: Wrong shape for the model, a processed-basis model, missing file.
        """
        view = as_view(model)
        if isinstance(path, Tensor):
            t = path
        else:
            if not os.path.exists(path):
                raise ValueError(f"path={os.fspath(path)!r} does not exist; download "
                                 "gptj_soft_prefix.pt (see docs/future_lens.md).")
            t = load_tensor_file(path, "soft prompt")
            if isinstance(t, dict):
                tensors = [v for v in t.values() if isinstance(v, Tensor)]
                if len(tensors) != 1:
                    raise ValueError(f"{os.fspath(path)!r} holds {len(tensors)} tensors; "
                                     "expected one [M, d_model] soft prompt.")
                t = tensors[0]
        if not isinstance(t, Tensor) or t.ndim != 2 or t.shape[1] != view.d_model:
            shape = tuple(t.shape) if isinstance(t, Tensor) else type(t).__name__
            raise ValueError(f"the soft prompt has shape {shape}; expected [M, {view.d_model}] "
                             f"(M prompt vectors of the model's d_model).")
        if t.shape[0] < 1:
            raise ValueError("the soft prompt has length 0; M must be >= 1.")
        if view.basis != "raw":
            raise LensMismatchError(
                "the official prompt was fitted in the raw HF GPT-J basis but the model is in "
                "the processed basis; load it with fl.load_model(name) (raw, the default).")
        layer = view.layer_index(layer)
        cfg = FutureLensConfig(prompt_length=int(t.shape[0]))
        lens = cls(model, "learned_prompt", [layer], (0, 1, 2, 3), config=cfg,
                   name=f"future[official_prompt@{layer}]")
        lens.soft_prompt.data.copy_(t.float()[None].to(lens.soft_prompt.device))
        lens.basis, lens.fingerprint = view.basis, model_fingerprint(view)
        lens.training_summary = {"method": "learned_prompt", "source": "official gptj prompt"}
        return lens

