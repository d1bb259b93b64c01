"""Models: the TransformerLens adapter at the bottom, the registry of named models above it.

* ``view``     — :class:`ModelView`, the only code that touches TransformerLens internals;
* ``bridge`` / ``hooked`` — building TL 4 ``TransformerBridge`` / TL 3 ``HookedTransformer``;
* ``gguf``     — GGUF files as cached float32 Hugging Face folders;
* ``registry`` — :func:`load_model` and the named entries (``"toy"``, ``"smollm2-135m"``).

Nothing in the adapter imports an entry: the toy model and SmolLM2 are loaded lazily by the
registry.
"""

from futurelens_tl.models._tl import tl_major, tl_version
from futurelens_tl.models.hooked import hooked_from_hf_dir, hooked_from_hf_gpt2
from futurelens_tl.models.registry import (
    ModelEntry,
    ModelUnavailableError,
    known_models,
    load_model,
    smollm2_gguf,
)
from futurelens_tl.models.view import (
    Basis,
    LayerLike,
    ModelView,
    NormParams,
    as_view,
    resid_hook_name,
)

__all__ = [
    "Basis",
    "LayerLike",
    "ModelEntry",
    "ModelUnavailableError",
    "ModelView",
    "NormParams",
    "as_view",
    "hooked_from_hf_dir",
    "hooked_from_hf_gpt2",
    "known_models",
    "load_model",
    "resid_hook_name",
    "smollm2_gguf",
    "tl_major",
    "tl_version",
]
