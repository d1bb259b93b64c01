"""The logit lens: the model's own final norm (statistics recomputed per row) + unembedding.

Reference ``lenses-and-transformerlens.md`` §A.1: for a residual ``h`` at any layer,
``LL(h) = log_softmax(out(norm_final(h) @ W_U + b_U))``, where the mean/variance (or RMS) of
``norm_final`` are computed from ``h`` itself, never the cached final-layer ``hook_scale``
(§A.2), and ``ln_final``, ``W_U``, ``b_U`` are used in their current processing state.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from jaxtyping import Float
from torch import Tensor

from futurelens_tl.lenses.base import Lens
from futurelens_tl.models.view import LayerLike

__all__ = ["LogitLens"]


class LogitLens(Lens):
    """Read every residual with the model's final norm and unembedding (§A.1).

    The logit lens needs no fitting: ``basis`` is ``None`` (its log-probs are invariant to
    weight processing, §C.6, so it reads raw and processed models alike). It still records
    the fingerprint of the model it was built on and refuses another model
    (:class:`~futurelens_tl.lenses.base.LensMismatchError`): its readout is *that* model's
    final norm and unembedding. In-place edits of the same model (ablations) are fine: it
    always reads the current weights.

    Args:
        model: TransformerLens model (or :class:`~futurelens_tl.model.ModelView`).
        layers: Covered layers (default all: ``-1`` = embedding .. ``n_layers - 1``).
        name: Label (default ``"logit"``).

    Examples:
        >>> import torch, futurelens_tl as fl
        >>> model = fl.toy_model(verbose=False)
        >>> lens = fl.LogitLens(model)
        >>> tokens = lens.view.to_tokens("The cat")
        >>> logits, resid = lens.view.residuals(tokens)
        >>> L = lens.view.n_layers
        >>> torch.allclose(lens(resid[-1], L - 1), logits, atol=1e-4)
        True
    """

    name = "logit"
    weight_bound = False

    def __init__(self, model: Any, layers: Iterable[LayerLike] | None = None, *,
                 name: str | None = None):
        super().__init__(model, layers, name=name)

    def transform(
        self, resid: Float[Tensor, "... d_model"], layer: int
    ) -> Float[Tensor, "... d_model"]:
        """Identity: the logit lens reads the residual as it is."""
        return resid
