"""Lens artifacts: safetensors + a JSON header, written atomically, verified on load.

Layout of an artifact file (``*.safetensors``): the tensors, plus the safetensors metadata key
``"futurelens"`` holding a JSON header::

    {"format": "futurelens_tl.tuned_lens", "format_version": 1, "fingerprint": "...",
     "basis": "raw", "hook": "resid_post", "layers": [...], "hyperparameters": {...},
     "data": {...}, "transformer_lens": "4.3.0", "tensors_sha256": "...", ...}

Integrity: ``tensors_sha256`` is the SHA-256 of every tensor's name, dtype, shape and raw bytes
(:func:`tensors_digest`), verified on load, so a flipped byte in the tensor data or a tensor
edited after saving is refused. Non-finite parameters are refused on save
(:class:`~futurelens_tl.lenses.base.NonFiniteError`) and on load. Every problem with a file
(missing, truncated, corrupt, foreign, edited header, unexpected tensors) raises
:class:`ArtifactError`; a file that is fine but fitted on another model raises
:class:`~futurelens_tl.lenses.base.LensMismatchError`. Lens loaders wrap their header parsing
in :func:`artifact_errors` so a hand-edited header gives an ``ArtifactError`` too, never a raw
``KeyError``/``TypeError``.

Writes go to a temporary file in the same directory and are moved into place with
``os.replace``, so a crash never leaves a half-written artifact under the final name.
Shared by the tuned lens and the Future Lens (DESIGN.md §4 "Artifacts").
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor

from futurelens_tl._io import atomic_write  # the one atomic-write helper (re-exported)
from futurelens_tl.lenses.base import LensMismatchError, NonFiniteError, model_fingerprint
from futurelens_tl.models._tl import tl_version
from futurelens_tl.models.view import ModelView, as_view

__all__ = [
    "ArtifactError",
    "artifact_errors",
    "atomic_write",
    "check_header",
    "load_artifact",
    "load_checkpoint",
    "load_tensor_file",
    "read_json",
    "save_artifact",
    "save_checkpoint",
    "tensors_digest",
]

HEADER_KEY = "futurelens"
DIGEST_KEY = "tensors_sha256"


class ArtifactError(ValueError):
    """An artifact or checkpoint file is missing, truncated, corrupt, edited or foreign."""


def tensors_digest(tensors: dict[str, Tensor]) -> str:
    """SHA-256 (hex) of the tensors' names, dtypes, shapes and raw bytes, in name order.

    Examples:
        >>> import torch
        >>> from futurelens_tl.lenses.artifacts import tensors_digest
        >>> a = {"w": torch.zeros(2, 2)}
        >>> tensors_digest(a) == tensors_digest({"w": torch.zeros(2, 2)})
        True
        >>> tensors_digest(a) == tensors_digest({"w": torch.tensor([[0.0, 0.0], [0.0, 1e-30]])})
        False
    """
    h = hashlib.sha256()
    for key in sorted(tensors):
        t = tensors[key].detach().to("cpu").contiguous().reshape(-1)
        h.update(f"{key}|{t.dtype}|{tuple(tensors[key].shape)}|".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def _nonfinite_keys(tensors: dict[str, Tensor]) -> list[str]:
    return [k for k, v in sorted(tensors.items())
            if v.is_floating_point() and not bool(torch.isfinite(v).all())]


@contextlib.contextmanager
def artifact_errors(path: Any, what: str = "artifact") -> Iterator[None]:
    """Turn a raw error while interpreting a loaded header/state into :class:`ArtifactError`.

    Wrap the code that builds a lens from ``load_artifact``'s header and tensors::

        with artifact_errors(path, "future lens"):
            cfg = FutureLensConfig(**header["config"])
            lens.load_state_dict(tensors)

    ``KeyError`` (a missing header field), ``TypeError`` / ``ValueError`` (a field of the wrong
    type or value), ``RuntimeError`` (``load_state_dict`` with unexpected/missing/misshapen
    tensors), ``IndexError`` and ``AttributeError`` become one ``ArtifactError`` naming the file;
    :class:`ArtifactError`, :class:`LensMismatchError` and :class:`NonFiniteError` pass through.

    Examples:
        >>> from futurelens_tl.lenses.artifacts import artifact_errors
        >>> from futurelens_tl.lenses.artifacts import ArtifactError
        >>> try:
        ...     with artifact_errors("lens.safetensors"):
        ...         {}["config"]
        ... except ArtifactError as err:
        ...     print(str(err)[:60])
        artifact 'lens.safetensors' has an invalid header or unexpec
    """
    try:
        yield
    except (ArtifactError, LensMismatchError, NonFiniteError):
        raise
    except (KeyError, TypeError, ValueError, RuntimeError, IndexError, AttributeError) as err:
        raise ArtifactError(
            f"{what} {os.fspath(path)!r} has an invalid header or unexpected tensors "
            f"({type(err).__name__}: {err}); it was edited or written by an incompatible "
            "version. Re-create it with .save(path)."
        ) from None


def read_json(path: str | os.PathLike[str], what: str = "file") -> dict[str, Any]:
    """Read a JSON object from ``path``; any problem is an :class:`ArtifactError`."""
    path = os.fspath(path)
    try:
        with open(path, encoding="utf-8") as f:
            obj = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ArtifactError(f"{what} {path!r} is missing or not valid JSON "
                            f"({type(err).__name__}: {err})") from None
    if not isinstance(obj, dict):
        raise ArtifactError(f"{what} {path!r} holds a JSON {type(obj).__name__}, expected an "
                            "object")
    return obj


def load_tensor_file(path: str | os.PathLike[str], what: str = "file") -> Any:
    """``torch.load(path, weights_only=True)`` on CPU; any failure is an :class:`ArtifactError`.

    ``weights_only`` refuses pickled code (a pickle of arbitrary objects is refused, never run);
    a missing, truncated or foreign file raises ``ArtifactError`` naming it.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ArtifactError(f"{what} {path!r} does not exist (or is not a file)")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise ArtifactError(
            f"{what} {path!r} cannot be loaded as plain tensors ({type(err).__name__}: "
            f"{str(err).splitlines()[0] if str(err) else ''}); it is corrupt, truncated, or a "
            "pickle of other objects (refused: loading is weights_only)."
        ) from None


def save_artifact(
    path: str | os.PathLike[str], tensors: dict[str, Tensor], header: dict[str, Any]
) -> None:
    """Write ``tensors`` and ``header`` to ``path`` as safetensors, atomically.

    Args:
        path: Destination file (conventionally ``*.safetensors``).
        tensors: Name -> tensor (moved to CPU, made contiguous).
        header: JSON-serialisable header; ``format`` and ``format_version`` are required.
            ``tensors_sha256`` is added (:func:`tensors_digest`).

    Raises:
        NonFiniteError: A floating-point tensor holds NaN/inf (nothing is written).
    """
    from safetensors.torch import save_file

    if "format" not in header or "format_version" not in header:
        raise ValueError("header must contain 'format' and 'format_version'")
    cpu = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    bad = _nonfinite_keys(cpu)
    if bad:
        raise NonFiniteError(
            f"refusing to save {os.fspath(path)!r}: tensor(s) {bad} hold NaN/inf. A lens with "
            "non-finite parameters reads NaN everywhere; re-train it."
        )
    header = {"transformer_lens": tl_version(), **header, DIGEST_KEY: tensors_digest(cpu)}
    meta = {HEADER_KEY: json.dumps(header, sort_keys=True, default=str)}
    atomic_write(path, lambda tmp: save_file(cpu, tmp, metadata=meta))


def load_artifact(
    path: str | os.PathLike[str], *, expect_format: str | None = None,
    max_version: int | None = None,
) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Read an artifact written by :func:`save_artifact`.

    Raises:
        ArtifactError: Missing file, truncated/corrupt safetensors, missing or invalid header,
            another artifact format, a newer format version than this code reads, tensor data
            that does not match the header's ``tensors_sha256`` (flipped bytes, edited
            tensors), or non-finite floating-point tensors. Files written before checksums
            existed (no ``tensors_sha256``) are read without the checksum test.
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
    if not isinstance(header, dict):
        raise ArtifactError(f"artifact {path!r} has a JSON header that is not an object")
    if expect_format is not None and header.get("format") != expect_format:
        raise ArtifactError(
            f"artifact {path!r} holds format {header.get('format')!r}, expected "
            f"{expect_format!r}"
        )
    version = header.get("format_version", 0)
    if isinstance(version, bool) or not isinstance(version, int):
        raise ArtifactError(f"artifact {path!r} has format_version={version!r}, not an int")
    if max_version is not None and version > max_version:
        raise ArtifactError(
            f"artifact {path!r} has format_version {version}, newer than "
            f"this futurelens_tl reads ({max_version}); upgrade futurelens_tl."
        )
    if DIGEST_KEY in header:
        if tensors_digest(tensors) != header[DIGEST_KEY]:
            raise ArtifactError(
                f"artifact {path!r} failed its integrity check: the tensor data does not match "
                f"the {DIGEST_KEY} recorded when it was saved (corrupted bytes or tensors "
                "edited after saving). Re-create it with .save(path) or restore a good copy."
            )
    bad = _nonfinite_keys(tensors)
    if bad:
        raise ArtifactError(f"artifact {path!r} holds non-finite values (NaN/inf) in tensor(s) "
                            f"{bad}; refusing to load it.")
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
        if key in header and (isinstance(header[key], bool) or not isinstance(header[key], int)):
            raise ArtifactError(f"{what} has header field {key}={header[key]!r}, not an int")
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
    if strict and header.get("fingerprint") is not None:
        have = model_fingerprint(view)
        if header["fingerprint"] != have:
            raise LensMismatchError(
                f"{what} was fitted on a model with fingerprint {header['fingerprint']} but this "
                f"model's fingerprint is {have}: another model or other weights. Train "
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
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise ArtifactError(
            f"checkpoint {path!r} is corrupt or truncated ({type(err).__name__}: {err}); delete "
            "it to start over."
        ) from None
    if not isinstance(state, dict):
        raise ArtifactError(f"checkpoint {path!r} holds a {type(state).__name__}, not a "
                            "training state; delete it to start over.")
    return state
