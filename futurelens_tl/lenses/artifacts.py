"""Lens artifacts: safetensors + a JSON header, written atomically, verified on load.

Layout of an artifact file (``*.safetensors``): the tensors, plus the safetensors metadata key
``"futurelens"`` holding a JSON header::

    {"format": "futurelens_tl.tuned_lens", "format_version": 1, "fingerprint": "...",
     "basis": "raw", "hook": "resid_post", "layers": [...], "hyperparameters": {...},
     "data": {...}, "transformer_lens": "4.3.0", ...}

Writes go to a temporary file in the same directory and are moved into place with
``os.replace``, so a crash never leaves a half-written artifact under the final name.
Shared by the tuned lens and the Future Lens (DESIGN.md §4 "Artifacts").
"""

from __future__ import annotations

import json
import os
from typing import Any

import torch
from torch import Tensor

from futurelens_tl._io import atomic_write  # the one atomic-write helper (re-exported)
from futurelens_tl.lenses.base import LensMismatchError
from futurelens_tl.model import ModelView, as_view, tl_version

__all__ = [
    "ArtifactError",
    "atomic_write",
    "check_header",
    "load_artifact",
    "load_checkpoint",
    "save_artifact",
    "save_checkpoint",
]

HEADER_KEY = "futurelens"


class ArtifactError(ValueError):
    """An artifact or checkpoint file is missing, truncated, corrupt or of another format."""


def save_artifact(
    path: str | os.PathLike[str], tensors: dict[str, Tensor], header: dict[str, Any]
) -> None:
    """Write ``tensors`` and ``header`` to ``path`` as safetensors, atomically.

    Args:
        path: Destination file (conventionally ``*.safetensors``).
        tensors: Name -> tensor (moved to CPU, made contiguous).
        header: JSON-serialisable header; ``format`` and ``format_version`` are required.
    """
    from safetensors.torch import save_file

    if "format" not in header or "format_version" not in header:
        raise ValueError("header must contain 'format' and 'format_version'")
    header = {"transformer_lens": tl_version(), **header}
    meta = {HEADER_KEY: json.dumps(header, sort_keys=True, default=str)}
    cpu = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    atomic_write(path, lambda tmp: save_file(cpu, tmp, metadata=meta))


def load_artifact(
    path: str | os.PathLike[str], *, expect_format: str | None = None,
    max_version: int | None = None,
) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Read an artifact written by :func:`save_artifact`.

    Raises:
        ArtifactError: Missing file, truncated/corrupt safetensors, missing or invalid header,
            another artifact format, or a newer format version than this code reads.
    """
    from safetensors import safe_open

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ArtifactError(f"artifact {path!r} does not exist (or is not a file)")
    try:
        with safe_open(path, framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as err:  # SafetensorError, OSError, ...
        raise ArtifactError(
            f"artifact {path!r} is corrupt or truncated and cannot be read as safetensors "
            f"({type(err).__name__}: {err}). Re-create it with .save(path)."
        ) from None
    if HEADER_KEY not in meta:
        raise ArtifactError(
            f"artifact {path!r} is a safetensors file without a futurelens_tl header; it was "
            "not written by futurelens_tl (for tuned-lens package directories use "
            "TunedLens.from_tuned_lens)."
        )
    try:
        header = json.loads(meta[HEADER_KEY])
    except json.JSONDecodeError as err:
        raise ArtifactError(f"artifact {path!r} has a corrupt JSON header: {err}") from None
    if expect_format is not None and header.get("format") != expect_format:
        raise ArtifactError(
            f"artifact {path!r} holds format {header.get('format')!r}, expected "
            f"{expect_format!r}"
        )
    if max_version is not None and int(header.get("format_version", 0)) > max_version:
        raise ArtifactError(
            f"artifact {path!r} has format_version {header.get('format_version')}, newer than "
            f"this futurelens_tl reads ({max_version}); upgrade futurelens_tl."
        )
    return tensors, header


def check_header(header: dict[str, Any], model: Any, *, what: str = "lens",
                 strict: bool = True) -> ModelView:
    """Check that ``header``'s basis and fingerprint match ``model``.

    Raises:
        LensMismatchError: Basis or fingerprint differ (``strict``), or ``d_model`` /
            ``n_layers`` differ (always).
    """
    view = as_view(model)
    for key, have in (("d_model", view.d_model), ("n_layers", view.n_layers)):
        if key in header and int(header[key]) != have:
            raise LensMismatchError(
                f"{what} was trained on a model with {key}={header[key]}, this model has "
                f"{key}={have}: another architecture."
            )
    if strict and header.get("basis") not in (None, view.basis):
        raise LensMismatchError(
            f"{what} was fitted in the {header['basis']!r} residual basis but the model is in the "
            f"{view.basis!r} basis. Affine lenses are not invariant to weight processing; load "
            "the model the way it was loaded for training (fl.load_model(...) = raw basis, "
            "process_weights=True = processed)."
        )
    if strict and header.get("fingerprint") not in (None, view.fingerprint):
        raise LensMismatchError(
            f"{what} was fitted on a model with fingerprint {header['fingerprint']} but this "
            f"model's fingerprint is {view.fingerprint}: another model or other weights. Train "
            "the lens on this model or load the model it was trained on."
        )
    return view


# ---------------------------------------------------------------------- checkpoints
def save_checkpoint(path: str | os.PathLike[str], state: dict[str, Any]) -> None:
    """Atomically ``torch.save`` a training checkpoint (tensors, ints, floats, dicts, lists)."""
    atomic_write(path, lambda tmp: torch.save(state, tmp))


def load_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Load a checkpoint written by :func:`save_checkpoint` (``weights_only``).

    Raises:
        ArtifactError: Missing, truncated or corrupt file.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ArtifactError(f"checkpoint {path!r} does not exist")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise ArtifactError(
            f"checkpoint {path!r} is corrupt or truncated ({type(err).__name__}: {err}); delete "
            "it to start over."
        ) from None
