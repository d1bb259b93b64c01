"""Error types shared across floors (a leaf: imports nothing of the package)."""

from __future__ import annotations

__all__ = ["NonFiniteError"]


class NonFiniteError(ValueError):
    """NaN or infinite values where a result needs finite numbers (weights, logits, readouts).

    The one error type for non-finite inputs across the package: model weights or lens
    parameters holding NaN/inf, a readout that produced NaN. (Training that *becomes*
    non-finite raises :class:`~futurelens_tl.lenses.trainer.TrainingDivergedError`.) The
    message names the tensors at fault where they can be found.
    """
