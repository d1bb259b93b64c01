"""The ``Lens`` base class: a readout ``resid at layer l -> logits`` that knows its model.

Every lens (logit, tuned, future) is a ``torch.nn.Module`` with:

* ``name``: a short label used in tables and grids;
* ``layers``: the layers it covers (package convention: ``-1`` = embedding output, ``l`` =
  output of block ``l``);
* ``basis`` / ``fingerprint``: the residual basis and model fingerprint it was fitted on
  (``None`` for lenses that need no fitting, such as the logit lens);
* ``token_fed``: whether the lens also sees the tokens between the source and the target
  (Future Lens prompt methods at N >= 1; reference ``future-lens.md`` §4.2);
* ``forward(resid, layer)``: logits over the vocabulary.

Lenses plug into TransformerLens runs through :meth:`Lens.hooks`, which returns
``(hook_name, fn)`` pairs for ``model.run_with_hooks`` / ``model.hooks(...)``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

from futurelens_tl.model import Basis, LayerLike, ModelView, as_view

__all__ = ["Lens", "LensMismatchError"]


class LensMismatchError(ValueError):
    """A lens was fitted on another model, basis or layer set than the one it is used with."""


class Lens(torch.nn.Module):
    """Base class of every lens.

    Subclasses override :meth:`transform` (hidden-space translation, identity by default) or
    :meth:`forward` (when the readout is not ``final_norm + unembed`` of a hidden state).

    Args:
        model: The TransformerLens model (or :class:`ModelView`) the lens reads.
        layers: Covered layers (default: all, ``-1 .. n_layers-1``).
        name: Label for tables and grids.
    """

    name: str = "lens"
    token_fed: bool = False
    #: How many tokens past the next one the lens predicts (0 = the next token).
    n_ahead: int = 0

    def __init__(
        self,
        model: Any,
        layers: Iterable[LayerLike] | None = None,
        *,
        name: str | None = None,
    ):
        super().__init__()
        # Stored outside nn.Module registration: the lens must not own the model's parameters.
        object.__setattr__(self, "_view", as_view(model))
        self.layers: list[int] = self.view.layer_indices(layers)
        if name is not None:
            self.name = name
        self.basis: Basis | None = None
        self.fingerprint: str | None = None

    @property
    def view(self) -> ModelView:
        return self._view  # type: ignore[attr-defined]

    # ------------------------------------------------------------------ readout
    def transform(
        self, resid: Float[Tensor, "... d_model"], layer: int
    ) -> Float[Tensor, "... d_model"]:
        """Map a residual at ``layer`` into the final residual's space (identity here)."""
        return resid

    def forward(
        self, resid: Float[Tensor, "... d_model"], layer: int
    ) -> Float[Tensor, "... d_vocab"]:
        """Logits read from ``resid`` taken at ``layer`` (a new tensor: readers may modify it)."""
        self.check_layer(layer)
        return self.view.readout(self.transform(resid, layer))

    def logits_at(
        self, resid: Float[Tensor, "... d_model"], layer: int, ids: Int[Tensor, " n"]
    ) -> Float[Tensor, "... n"]:
        """Logits of the token ``ids`` only: ``forward(resid, layer)[..., ids]``.

        Lenses that read through ``final_norm + unembed`` (those that override only
        :meth:`transform`) skip the other ``d_vocab - n`` columns.
        """
        if type(self).forward is Lens.forward:
            self.check_layer(layer)
            return self.view.unembed_at(self.view.final_norm(self.transform(resid, layer)), ids)
        return self.forward(resid, layer)[..., ids]

    def log_probs(
        self, resid: Float[Tensor, "... d_model"], layer: int
    ) -> Float[Tensor, "... d_vocab"]:
        """Log-probabilities (nats) of :meth:`forward`, computed in float32."""
        return torch.log_softmax(self.forward(resid, layer).float(), dim=-1)

    # ------------------------------------------------------------------ checks
    def check_layer(self, layer: int) -> int:
        layer = self.view.layer_index(layer)
        if layer not in self.layers:
            raise ValueError(
                f"layer={layer} is not covered by lens {self.name!r}; it covers {self.layers}."
            )
        return layer

    def check_model(self, model: Any) -> None:
        """Raise :class:`LensMismatchError` unless ``model`` matches what the lens was fit on."""
        view = as_view(model)
        if self.basis is not None and view.basis != self.basis:
            raise LensMismatchError(
                f"lens {self.name!r} was fitted in the {self.basis!r} residual basis but the model "
                f"is in the {view.basis!r} basis. Affine lenses are not invariant to weight "
                "processing (centring/folding); load the model the same way it was loaded for "
                "training (fl.load_model(...) gives the raw basis; process_weights=True the "
                "processed one)."
            )
        if self.fingerprint is not None and view.fingerprint != self.fingerprint:
            raise LensMismatchError(
                f"lens {self.name!r} was fitted on a model with fingerprint {self.fingerprint} but "
                f"this model's fingerprint is {view.fingerprint}: another model or other weights. "
                "Train the lens on this model, or load the model it was trained on."
            )

    # ------------------------------------------------------------------ hooks
    def hooks(
        self,
        sink: Callable[[int, Tensor], None],
        layers: Iterable[LayerLike] | None = None,
    ) -> list[tuple[str, Callable[..., Any]]]:
        """TransformerLens forward hooks that hand ``(layer, logits)`` to ``sink``.

        The hooks read the residual at each covered layer, apply the lens, and pass the logits
        to ``sink`` without modifying the forward pass. Use them with
        ``model.run_with_hooks(tokens, fwd_hooks=lens.hooks(sink))``; see
        :func:`futurelens_tl.run_with_lenses` for the reduced, memory-bounded version.
        """
        wanted = self.layers if layers is None else [self.check_layer(x) for x in layers]
        out = []
        for layer in wanted:

            def fn(resid: Tensor, hook: Any, _layer: int = layer) -> None:
                with torch.no_grad():
                    sink(_layer, self.forward(resid, _layer))

            out.append((self.view.resid_hook(layer), fn))
        return out

    def extra_repr(self) -> str:
        return f"name={self.name!r}, layers={self.layers}, basis={self.basis}"
