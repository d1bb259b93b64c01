"""Lenses: readouts of the residual stream (logit lens, tuned lens, Future Lens)."""

from futurelens_tl.lenses.base import Lens, LensMismatchError

__all__ = ["Lens", "LensMismatchError"]
