"""TransformerLens version facts (the one place that reads the installed version)."""

from __future__ import annotations

import importlib.metadata

__all__ = ["tl_major", "tl_version"]


def tl_version() -> str:
    """Installed TransformerLens version string (``"0"`` if it cannot be read)."""
    try:
        return importlib.metadata.version("transformer-lens")
    except importlib.metadata.PackageNotFoundError:  # pragma: no cover - dependency missing
        return "0"


def tl_major() -> int:
    try:
        return int(tl_version().split(".")[0])
    except ValueError:  # pragma: no cover
        return 0

