"""The result type every role scorer returns (reference ``head-roles.md`` §7: evidence kept)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from jaxtyping import Float
from torch import Tensor

__all__ = ["RoleScore"]


@dataclass
class RoleScore:
    """One role's score for every head.

    Attributes:
        role: Role name (see :data:`futurelens_tl.attention.heads.ROLES`).
        scores: ``[n_layers, n_heads]``; NaN where the role does not apply to a head.
        threshold: Default tagging threshold (``score >= threshold``), or None (rank only).
        threshold_source: Where the threshold comes from (paper, or "none published: ...").
        channel: ``"pattern"``, ``"weights"``, ``"causal"`` or ``"probe"``.
        evidence: Dataset name, number of examples, seed and other facts the score rests on.
        extras: Further ``[n_layers, n_heads]`` statistics (TL-compatible scores, best offset,
            non-BOS mass, chance rates, ...).
    """

    role: str
    scores: Float[Tensor, "n_layers n_heads"]
    threshold: float | None
    threshold_source: str
    channel: str
    evidence: dict[str, Any] = field(default_factory=dict)
    extras: dict[str, Tensor] = field(default_factory=dict)
