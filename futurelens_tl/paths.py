"""Where futurelens_tl keeps what it caches (a leaf: imports nothing of the package)."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["cache_root"]


def cache_root(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """The cache root: ``cache_dir`` if given, else ``$FUTURELENS_CACHE``, else the user cache.

    Everything cached below it is keyed by a fingerprint of what produced it (toy checkpoints,
    dequantized GGUF models, report stages), so deleting the folder only costs recomputation.
    """
    if cache_dir is not None:
        return Path(cache_dir)
    env = os.environ.get("FUTURELENS_CACHE")
    if env:
        return Path(env)
    import platformdirs

    return Path(platformdirs.user_cache_dir("futurelens_tl"))
