"""futurelens_tl: lenses, first-layer attention and head roles for TransformerLens models.

Public API (see ``docs/`` and DESIGN.md §3)::

    import futurelens_tl as fl
    model = fl.toy_model()          # offline default; fl.load_model("gpt2") for real models
    logit, tuned = fl.LogitLens(model), fl.TunedLens.fit(model, texts)
    future = fl.FutureLens.fit(model, texts, method="learned_prompt")
    cmp = fl.compare(model, "Marty McFly from", [logit, tuned, future])
    ev = fl.evaluate(model, future, texts)
    dec = fl.decompose_first_layer(model)
    tags = fl.tag_heads(model)

Names are imported lazily so that ``import futurelens_tl`` stays fast and never imports
TransformerLens internals it does not need.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS: dict[str, str] = {
    "load_model": "futurelens_tl.models",
    "known_models": "futurelens_tl.models",
    "ModelView": "futurelens_tl.models",
    "as_view": "futurelens_tl.models",
    "toy_model": "futurelens_tl.toy",
    "corpus": "futurelens_tl.corpora",
    "Lens": "futurelens_tl.lenses.base",
    "LensMismatchError": "futurelens_tl.lenses.base",
    "LogitLens": "futurelens_tl.lenses.logit",
    "TunedLens": "futurelens_tl.lenses.tuned",
    "FutureLens": "futurelens_tl.lenses.future",
    "FutureLensConfig": "futurelens_tl.lenses.future",
    "run_with_lenses": "futurelens_tl.compare",
    "compare": "futurelens_tl.compare",
    "LensComparison": "futurelens_tl.compare",
    "LensReadouts": "futurelens_tl.compare",
    "evaluate": "futurelens_tl.evaluation",
    "LensEvaluation": "futurelens_tl.evaluation",
    "decompose_first_layer": "futurelens_tl.attention.layer0",
    "Layer0Decomposition": "futurelens_tl.attention.layer0",
    "tag_heads": "futurelens_tl.attention.heads",
    "HeadTags": "futurelens_tl.attention.heads",
    "score_heads": "futurelens_tl.attention.patching",
    "token_windows": "futurelens_tl.data",
    "metrics": "futurelens_tl.metrics",
}

__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'futurelens_tl' has no attribute {name!r}")
    mod = importlib.import_module(module)
    value = mod if name == "metrics" else getattr(mod, name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
