"""The ``Lens`` base class: a readout ``resid at layer l -> logits`` that knows its model.

Every lens (logit, tuned, future) is a ``torch.nn.Module`` with:

* ``name``: a short label used in tables and grids;
* ``layers``: the layers it covers (package convention: ``-1`` = embedding output, ``l`` =
  output of block ``l``);
* ``basis`` / ``fingerprint``: the residual basis it was fitted in (``None`` for lenses whose
  log-probs do not depend on it, such as the logit lens) and the fingerprint of the model it
  was built on (every lens records it; :meth:`Lens.check_model` refuses another model);
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

from futurelens_tl.errors import NonFiniteError
from futurelens_tl.models.view import Basis, LayerLike, ModelView, as_view

__all__ = ["Lens", "LensMismatchError", "NonFiniteError", "check_finite_params",
           "model_fingerprint", "nonfinite_params"]


class LensMismatchError(ValueError):
    """A lens was fitted on another model, basis or layer set than the one it is used with."""


def model_fingerprint(model: Any) -> str:
    """``ModelView.fingerprint`` of ``model`` (cached on the view until a weight changes).

    Examples:
        >>> import futurelens_tl as fl
        >>> from futurelens_tl.lenses.base import model_fingerprint
        >>> model = fl.toy_model(verbose=False)
        >>> model_fingerprint(model) == fl.as_view(model).fingerprint
        True
    """
    return as_view(model).fingerprint  # the view caches it until a weight changes


def nonfinite_params(module: Any, limit: int = 5) -> list[str]:
    """Names of parameters/buffers of ``module`` holding NaN or inf (at most ``limit``)."""
    bad = []
    named = list(module.named_parameters()) + list(module.named_buffers())
    for name, t in named:
        if t.is_floating_point() and not bool(torch.isfinite(t.detach()).all()):
            n_bad = int((~torch.isfinite(t.detach())).sum())
            bad.append(f"{name} ({n_bad} of {t.numel()} values non-finite)")
            if len(bad) >= limit:
                break
    return bad


def check_finite_params(module: Any, what: str) -> None:
    """Raise :class:`NonFiniteError` if any parameter of ``module`` is NaN/inf.

    Examples:
        >>> import torch
        >>> from futurelens_tl.lenses.base import check_finite_params
        >>> lin = torch.nn.Linear(2, 2)
        >>> with torch.no_grad():
        ...     _ = lin.weight.fill_(float("nan"))
        >>> from futurelens_tl.lenses.base import NonFiniteError
        >>> try:
        ...     check_finite_params(lin, "lens 'x'")
        ... except NonFiniteError as err:
        ...     print(str(err)[:64])
        lens 'x' has non-finite parameters: weight (4 of 4 values non-fi
    """
    bad = nonfinite_params(module)
    if bad:
        raise NonFiniteError(
            f"{what} has non-finite parameters: {', '.join(bad)}. Every number read through "
            "it would be NaN; re-train or re-load it (a diverged fit raises "
            "TrainingDivergedError instead of returning such a lens)."
        )


def explain_nonfinite(view: ModelView, lenses: Iterable[Any] = ()) -> str:
    """A sentence naming the non-finite model weights and lens parameters (error path only)."""
    parts = []
    bad = nonfinite_params(view.model)
    if bad:
        parts.append(f"the model has non-finite weights: {', '.join(bad)}")
    for lens in lenses:
        lb = nonfinite_params(lens)
        if lb:
            parts.append(f"lens {getattr(lens, 'name', '?')!r} has non-finite parameters: "
                         f"{', '.join(lb)}")
    if not parts:
        return ("no weight is NaN/inf, so activations overflowed (try float32, or check the "
                "input tokens)")
    return "; ".join(parts)


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
    #: Whether the lens holds parameters fitted to the model's weights (then in-place weight
    #: edits of the same model are refused too); ``False`` for the logit lens, which reads the
    #: model's current weights and is only refused on *another* model.
    weight_bound: bool = True

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
        dup = sorted({x for x in self.layers if self.layers.count(x) > 1})
        if dup:
            raise ValueError(
                f"layers={self.layers} repeats layer(s) {dup}; give each layer once (a "
                "repeated layer would be read, trained and counted twice)."
            )
        if name is not None:
            self.name = name
        self.basis: Basis | None = None
        # Every lens remembers the model it was built on (the logit lens too: its readout is
        # that model's final norm + unembedding), so using it on another model is refused.
        self.fingerprint: str | None = model_fingerprint(self.view)

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
        """Raise :class:`LensMismatchError` unless ``model`` is the model the lens was built on.

        The lens reads through its own model's final norm and unembedding, so using it with
        another model would silently mix two models. The check compares the cached
        :func:`model_fingerprint` (recomputed only after a weight changed), and the residual
        basis for lenses fitted in one.
        """
        view = as_view(model)
        if self.basis is not None and view.basis != self.basis:
            raise LensMismatchError(
                f"lens {self.name!r} was fitted in the {self.basis!r} residual basis but the model "
                f"is in the {view.basis!r} basis. Affine lenses are not invariant to weight "
                "processing (centring/folding); load the model the same way it was loaded for "
                "training (fl.load_model(...) gives the raw basis; process_weights=True the "
                "processed one)."
            )
        if view is self.view and not self.weight_bound:
            return  # reads this very model's current weights: nothing fitted to go stale
        if self.fingerprint is not None:
            have = model_fingerprint(view)
            if have != self.fingerprint:
                raise LensMismatchError(
                    f"lens {self.name!r} ({type(self).__name__}) was built on a model with "
                    f"fingerprint {self.fingerprint} but this model's fingerprint is {have}: "
                    "another model or other weights. Build (or train) the lens on this model, or "
                    "use the model it was built on."
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
