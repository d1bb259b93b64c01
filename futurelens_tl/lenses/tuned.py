"""The tuned lens (Belrose et al. 2023): one residual affine translator per layer.

Reference ``lenses-and-transformerlens.md`` §B:

* ``TunedLens_l(h) = Unembed(h + A_l h + b_l)`` with ``Unembed`` = the model's final norm
  (statistics recomputed per row) + ``W_U``, ``b_U`` (§B.1). ``A_l``, ``b_l`` are
  zero-initialised, so an untrained tuned lens **is** the logit lens.
* Trained to minimise ``KL(P_final(t + token_shift) || P_lens(t))`` summed over the vocabulary
  and averaged over tokens (§B.2), each layer's loss back-propagated separately, gradients
  clipped to norm 1, SGD Nesterov 0.9 with effective lr 1.0 (PyTorch lr 0.1), weight decay 1e-3,
  linear decay (§B.3). All layers train from one no-grad forward per batch; the model is
  frozen (its weights are read detached, never modified).
* ``token_shift = k >= 1`` gives the k-ahead affine lens (``future-lens.md`` §8.2): position t is
  matched to the final distribution at t + k, and the final layer gets a translator too.

Layer mapping to the tuned-lens package (§B.1, §B.6): our layer ``l`` (``blocks.{l}.hook_resid_
post``; ``-1`` = embedding) is tuned-lens translator index ``l + 1`` (it reads ``resid_pre``).
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor

from futurelens_tl import data as _data
from futurelens_tl.lenses.artifacts import (
    ArtifactError,
    artifact_errors,
    atomic_write,
    check_header,
    load_artifact,
    load_tensor_file,
    read_json,
    save_artifact,
)
from futurelens_tl.lenses.base import (
    Lens,
    LensMismatchError,
    check_finite_params,
    model_fingerprint,
)
from futurelens_tl.lenses.distributed import DistContext, context
from futurelens_tl.lenses.trainer import Trainer, TrainerConfig, TrainResult, data_digest
from futurelens_tl.models._tl import tl_version
from futurelens_tl.models.view import LayerLike, as_view

__all__ = ["TunedLens"]

FORMAT = "futurelens_tl.tuned_lens"
FORMAT_VERSION = 1


def batch_indices(n: int, batch_size: int, step: int, seed: int) -> Tensor:
    """Window indices for ``step``: epochs of seeded permutations, a pure function of ``step``."""
    start = step * batch_size
    out = []
    while len(out) < batch_size:
        epoch, off = divmod(start + len(out), n)
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100_003 + epoch))
        take = min(batch_size - len(out), n - off)
        out.extend(perm[off : off + take].tolist())
    return torch.tensor(out, dtype=torch.long)


class TunedLens(Lens):
    """Per-layer residual affine translators in front of the model's own unembedding (§B.1).

    Args:
        model: TransformerLens model (or ModelView). The lens records its basis and fingerprint.
        layers: Covered layers (default all, ``-1 .. n_layers - 1``).
        token_shift: ``0`` = the tuned lens; ``k >= 1`` = k-ahead affine lens (future-lens.md
            §8.2), which also has a translator at the final layer.
        name: Label (default ``"tuned"``, or ``"tuned+k"`` for ``token_shift = k``).

    Examples:
        >>> import torch, futurelens_tl as fl
        >>> model = fl.toy_model(verbose=False)
        >>> untrained = fl.TunedLens(model)      # zero-initialised: equals the logit lens
        >>> h = torch.randn(3, untrained.view.d_model)
        >>> torch.allclose(untrained(h, 0), fl.LogitLens(model)(h, 0))
        True
    """

    name = "tuned"

    def __init__(self, model: Any, layers: Iterable[LayerLike] | None = None, *,
                 token_shift: int = 0, name: str | None = None):
        if isinstance(token_shift, bool) or not isinstance(token_shift, int) or token_shift < 0:
            raise ValueError(f"token_shift={token_shift!r} must be an int >= 0")
        if name is None and token_shift:
            name = f"tuned+{token_shift}"
        super().__init__(model, layers, name=name)
        view = self.view
        self.token_shift = token_shift
        self.n_ahead = token_shift
        n = view.n_layers + (1 if token_shift >= 1 else 0)
        d = view.d_model
        # on the unembedding's device: the last one when the model is sharded over devices;
        # skip_init: no Kaiming draw that is zeroed right after (1.4 s for SmolLM2's 31 layers)
        device = view.W_U.device
        self.translators = torch.nn.ModuleList(
            [torch.nn.utils.skip_init(torch.nn.Linear, d, d, bias=True, device=device,
                                      dtype=torch.float32)
             for _ in range(n)]
        )
        with torch.no_grad():
            for t in self.translators:
                t.weight.zero_()
                t.bias.zero_()
        self.basis = view.basis
        self.fingerprint = model_fingerprint(view)
        self.meta: dict[str, Any] = {"hyperparameters": {}, "data": {}}
        self.train_result: TrainResult | None = None

    # ------------------------------------------------------------------ readout
    def has_translator(self, layer: int) -> bool:
        """Whether ``layer`` has a translator (the final layer has none when token_shift=0)."""
        return 0 <= layer + 1 < len(self.translators)

    def transform(
        self, resid: Float[Tensor, "... d_model"], layer: int
    ) -> Float[Tensor, "... d_model"]:
        """``h + h @ A_l.T + b_l`` (identity at the final layer when ``token_shift = 0``)."""
        if not self.has_translator(layer):
            return resid
        t = self.translators[layer + 1]
        x = resid.to(device=t.weight.device, dtype=t.weight.dtype)
        return (x + F.linear(x, t.weight, t.bias)).to(resid.dtype)

    def trained_layers(self) -> list[int]:
        return [layer for layer in self.layers if self.has_translator(layer)]

    # ------------------------------------------------------------------ training
    @classmethod
    def fit(cls, model: Any, texts: str | os.PathLike[str] | Sequence[str] | Tensor, *,
            layers: Iterable[LayerLike] | None = None, token_shift: int = 0,
            name: str | None = None, **train_kwargs: Any) -> TunedLens:
        """Build a tuned lens on ``model`` and train it on ``texts`` (see :meth:`train_on`).

        Examples:
            >>> import futurelens_tl as fl
            >>> from futurelens_tl.toy import toy_texts
            >>> model = fl.toy_model(verbose=False)
            >>> lens = fl.TunedLens.fit(model, toy_texts(), tokens=4096, verbose=False)
            >>> lens.train_result.finished
            True
        """
        lens = cls(model, layers, token_shift=token_shift, name=name)
        lens.train_on(texts, **train_kwargs)
        return lens

    def train_on(
        self,
        texts: str | os.PathLike[str] | Sequence[str] | Tensor,
        *,
        tokens: int = 2**19,
        batch_size: int = 8,
        seq_len: int | None = None,
        lr: float = 1.0,
        momentum: float = 0.9,
        weight_decay: float = 1e-3,
        optimizer: str = "sgd",
        grad_clip: float = 1.0,
        checkpoint: str | os.PathLike[str] | None = None,
        checkpoint_every: int = 50,
        resume: bool = True,
        stop_after: int | None = None,
        seed: int = 0,
        verbose: bool = True,
        dist: DistContext | None = None,
        should_stop: Callable[[], bool] | None = None,
    ) -> TrainResult:
        """Train the translators in place to minimise ``KL(final || lens)`` (§B.2, §B.3).

        Data-parallel under ``torchrun`` (see :mod:`futurelens_tl.lenses.distributed` and
        ``docs/howto/distributed.md``): ``batch_size`` is the *global* batch; each rank runs the
        model on its contiguous shard of the step's windows, DDP averages the gradients, and the
        lens equals (to float rounding) the one a single process trains with the same arguments.

        Args:
            texts: Training corpus (string, list of strings, file, or ``[n, pos]`` windows).
            tokens: Token budget; ``steps = ceil(tokens / (batch_size * seq_len))``.
            batch_size: Windows per step (one model forward each).
            seq_len: Window length (default ``min(n_ctx, 128)``).
            lr: Effective learning rate (PyTorch lr = ``lr * (1 - momentum)`` for SGD).
            momentum: Nesterov momentum.
            weight_decay: Weight decay (pulls the translators towards the identity).
            optimizer: ``"sgd"`` (default, the tuned-lens recipe) or ``"adam"``.
            grad_clip: Global gradient-norm clip.
            checkpoint: Checkpoint file; an existing one is resumed when ``resume``. It
                records the model fingerprint, basis and a digest of the token windows, and a
                resume with another model, other weights or other data is refused.
            checkpoint_every: Steps between checkpoints.
            resume: Resume from ``checkpoint`` if it exists.
            stop_after: Stop after this many steps (the schedule still targets all steps).
            seed: Data-order seed (the same on every rank: it fixes the global batches).
            verbose: Progress bar (rank 0 only).
            dist: The data-parallel job (default: the current ``torch.distributed`` process
                group, a world of one when none is initialised).
            should_stop: Polled every step (e.g. "SIGTERM received"); when true on any rank the
                run checkpoints the step and returns early (``result.interrupted``).

        Returns:
            The :class:`~futurelens_tl.lenses.trainer.TrainResult` (also on
            ``self.train_result``).

        Raises:
            ValueError: Bad arguments or a corpus shorter than one window.
            TypeError: ``texts`` holds a non-string item (the message names its index).
            LensMismatchError: The model no longer matches the lens (fingerprint/basis), or
                ``checkpoint`` belongs to another model or other data.
            NonFiniteError: The lens's translators already hold NaN/inf.
            TrainingDivergedError: Loss or gradients became non-finite.
            DistributedTrainingError: Another rank died or timed out (the message says where
                the resumable checkpoint is).
        """
        view = self.view
        dist = context() if dist is None else dist
        self.check_model(view)
        check_finite_params(self, f"lens {self.name!r}")
        if isinstance(tokens, bool) or not isinstance(tokens, int) or tokens < 1:
            raise ValueError(f"tokens={tokens!r} must be an int >= 1 (the token budget)")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size={batch_size!r} must be an int >= 1")
        windows = _data.token_windows(view, texts, length=seq_len)
        T = windows.shape[1]
        if T <= self.token_shift:
            raise ValueError(f"windows of {T} tokens are too short for token_shift="
                             f"{self.token_shift}")
        steps = max(1, math.ceil(tokens / (batch_size * T)))
        layers = self.trained_layers()
        if not layers:
            raise ValueError(f"lens {self.name!r} has no trainable layer among {self.layers}")
        # what a resumed checkpoint must share with this run (besides the optimiser settings)
        identity = {"fingerprint": model_fingerprint(view), "basis": view.basis,
                    "data": data_digest(windows), "layers": list(layers),
                    "token_shift": self.token_shift, "batch_size": batch_size, "seq_len": T}
        cfg = TrainerConfig(
            steps=steps, lr=lr, momentum=momentum, weight_decay=weight_decay,
            optimizer=optimizer, grad_clip=grad_clip,
            checkpoint_path=None if checkpoint is None else os.fspath(checkpoint),
            checkpoint_every=checkpoint_every, resume=resume, stop_after=stop_after, seed=seed,
            verbose=verbose, desc=f"tuned lens ({self.name})", identity=identity,
        )
        readout = view.frozen_readout()
        shift = self.token_shift
        n_windows = windows.shape[0]
        # only translators of covered layers train; the others stay at zero
        for i, t in enumerate(self.translators):
            t.requires_grad_((i - 1) in layers)

        if batch_size < dist.world_size:
            raise ValueError(f"batch_size={batch_size} (the global batch) is smaller than "
                             f"world_size={dist.world_size}: every rank needs at least one "
                             "window per step")

        def step_fn(step: int) -> Iterator[tuple[str, Tensor]]:
            # the global batch is the same on every rank; this rank takes its contiguous shard
            # and yields its share of the global mean (DDP averages over ranks)
            lo, hi = dist.bounds(batch_size)
            idx = batch_indices(n_windows, batch_size, step, seed)[lo:hi]
            share = dist.share(hi - lo, batch_size)
            batch = windows[idx].to(view.device)
            with torch.no_grad():
                logits, resid = view.residuals(batch, layers)
                _data.FORWARD_COUNTER.passes += 1
                _data.FORWARD_COUNTER.tokens += batch.numel()
                tgt = torch.log_softmax(logits[:, shift:].float(), dim=-1)
                p_tgt = tgt.exp()
                neg_entropy = (p_tgt * tgt).sum(-1)
            for k, layer in enumerate(layers):
                h = resid[k][:, : T - shift]
                z = readout(self.transform(h, layer)).float()
                # KL(p || softmax z) = sum p log p - sum p z + logsumexp z  (sum p = 1): no
                # [rows, vocab] log-softmax is materialised for the backward pass
                kl = (neg_entropy - (p_tgt * z).sum(-1) + torch.logsumexp(z, dim=-1)).mean()
                yield f"layer {layer}", kl if share == 1.0 else kl * share

        trainer = Trainer(self, cfg, dist=dist)
        t0 = time.perf_counter()
        result = trainer.run(step_fn, should_stop)
        self.train_result = result
        self.meta = {
            "hyperparameters": {
                "tokens": tokens, "steps": steps, "batch_size": batch_size, "seq_len": T,
                "lr": lr, "momentum": momentum, "weight_decay": weight_decay,
                "optimizer": optimizer, "grad_clip": grad_clip, "seed": seed,
                "loss": "kl(final || lens)", "token_shift": shift,
            },
            "data": {
                "n_windows": int(n_windows), "window_tokens": int(windows.numel()),
                "digest": identity["data"],
                "tokens_seen": int(result.steps_done * batch_size * T),
                "world_size": dist.world_size,
                "source": "tensor" if isinstance(texts, Tensor) else
                (texts if isinstance(texts, str) and len(texts) < 200 else "texts"),
            },
            "train_seconds": time.perf_counter() - t0,
            "final_loss": result.history[-1] if result.history else None,
        }
        return result

    # ------------------------------------------------------------------ persistence
    def header(self) -> dict[str, Any]:
        view = self.view
        return {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "name": self.name,
            "fingerprint": self.fingerprint,
            "basis": self.basis,
            "hook": "resid_post",
            "layer_convention": "layer l = blocks.{l}.hook_resid_post; -1 = embedding; "
                                "tuned-lens translator index = l + 1",
            "layers": self.layers,
            "token_shift": self.token_shift,
            "d_model": view.d_model,
            "n_layers": view.n_layers,
            "n_translators": len(self.translators),
            "hyperparameters": self.meta.get("hyperparameters", {}),
            "data": self.meta.get("data", {}),
        }

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the lens to ``path`` (safetensors + JSON header; atomic).

        Examples:
            >>> import os, tempfile, futurelens_tl as fl
            >>> model = fl.toy_model(verbose=False)
            >>> lens = fl.TunedLens(model)
            >>> p = os.path.join(tempfile.mkdtemp(), "tuned.safetensors")
            >>> lens.save(p)
            >>> fl.TunedLens.load(p, model).layers == lens.layers
            True
        """
        tensors = {f"translators.{i}.{k}": v for i, t in enumerate(self.translators)
                   for k, v in t.state_dict().items()}
        save_artifact(path, tensors, self.header())

    @classmethod
    def load(cls, path: str | os.PathLike[str], model: Any, *, strict: bool = True) -> TunedLens:
        """Load a lens saved with :meth:`save` onto ``model``.

        Args:
            path: The ``.safetensors`` artifact.
            model: The model it was trained on.
            strict: Refuse another basis or fingerprint (``False`` only checks the shapes and
                warns nothing: for deliberate transfer experiments).

        Raises:
            ArtifactError: Missing, corrupt, truncated, foreign or edited file (header fields
                of the wrong type, unexpected tensors, a failed checksum, NaN/inf values).
            LensMismatchError: Trained on another model, basis or architecture.
        """
        tensors, header = load_artifact(path, expect_format=FORMAT, max_version=FORMAT_VERSION)
        check_header(header, model, what=f"tuned lens {os.fspath(path)!r}", strict=strict)
        with artifact_errors(path, "tuned lens artifact"):
            layers, shift, name = header["layers"], header.get("token_shift", 0), \
                header.get("name")
            if not isinstance(layers, list) or any(
                    isinstance(x, bool) or not isinstance(x, int) for x in layers):
                raise TypeError(f"layers={layers!r} is not a list of ints")
            if name is not None and not isinstance(name, str):
                raise TypeError(f"name={name!r} is not a string")
            lens = cls(model, layers, token_shift=shift, name=name)
            state = {k[len("translators."):]: v for k, v in tensors.items()
                     if k.startswith("translators.")}
            extra = sorted(k for k in tensors if not k.startswith("translators."))
            if extra:
                raise KeyError(f"unexpected tensors {extra}")
            lens.translators.load_state_dict(state, strict=True)
            hyper, data = header.get("hyperparameters", {}), header.get("data", {})
            if not isinstance(hyper, dict) or not isinstance(data, dict):
                raise TypeError("hyperparameters/data are not JSON objects")
        lens.meta = {"hyperparameters": hyper, "data": data}
        if not strict:
            lens.fingerprint = model_fingerprint(model)
            lens.basis = as_view(model).basis
        return lens

    # ------------------------------------------------------------------ tuned-lens package format
    def to_tuned_lens(self, directory: str | os.PathLike[str],
                      base_model_name_or_path: str = "unknown") -> None:
        """Export as a tuned-lens package directory: ``config.json`` + ``params.pt`` (§B.6).

        Our layer ``l`` becomes translator ``l + 1``. Our own metadata (basis, hook, token_shift,
        fingerprint, TL version) goes to a ``futurelens_meta.json`` sidecar.
        """
        d = os.fspath(directory)
        os.makedirs(d, exist_ok=True)
        view = self.view
        params = {}
        for i, t in enumerate(self.translators):
            params[f"{i}.weight"] = t.weight.detach().cpu().clone()
            params[f"{i}.bias"] = t.bias.detach().cpu().clone()
        config = {
            "base_model_name_or_path": base_model_name_or_path, "d_model": view.d_model,
            "num_hidden_layers": view.n_layers, "bias": True, "base_model_revision": None,
            "unembed_hash": None, "lens_type": "linear_tuned_lens",
        }
        sidecar = {**self.header(), "hook": "resid_pre",
                   "hook_note": "tuned-lens translator i reads blocks.{i}.hook_resid_pre "
                                "(= our layer i - 1, blocks.{i-1}.hook_resid_post)",
                   "transformer_lens": tl_version()}
        atomic_write(os.path.join(d, "params.pt"), lambda tmp: torch.save(params, tmp))
        for fname, obj in (("config.json", config), ("futurelens_meta.json", sidecar)):
            def write(tmp: str, obj: Any = obj) -> None:
                with open(tmp, "w", encoding="utf-8") as f:
                    json.dump(obj, f, indent=2, default=str)
            atomic_write(os.path.join(d, fname), write)

    @classmethod
    def from_tuned_lens(cls, directory: str | os.PathLike[str], model: Any, *,
                        allow_basis_mismatch: bool = False) -> TunedLens:
        """Load a tuned-lens package artifact (``config.json`` + ``params.pt``, §B.6).

        Published tuned lenses are fitted on raw HF hidden states, so the model must be in the
        raw basis unless the ``futurelens_meta.json`` sidecar says otherwise (or
        ``allow_basis_mismatch``). Extra keys in ``params.pt`` (e.g. an unembedding copy) are
        ignored.

        Raises:
            ArtifactError: Missing/corrupt files or missing translator keys.
            LensMismatchError: ``d_model`` / layer count / basis / fingerprint mismatch.
        """
        d = os.fspath(directory)
        cfg_path, params_path = os.path.join(d, "config.json"), os.path.join(d, "params.pt")
        for p in (cfg_path, params_path):
            if not os.path.isfile(p):
                raise ArtifactError(f"tuned-lens artifact {d!r} lacks {os.path.basename(p)}")
        config = read_json(cfg_path, "tuned-lens config")
        params = load_tensor_file(params_path, "tuned-lens params")
        if not isinstance(params, dict):
            raise ArtifactError(f"tuned-lens params {params_path!r} holds a "
                                f"{type(params).__name__}, expected a dict of tensors")
        view = as_view(model)
        sidecar: dict[str, Any] = {}
        side_path = os.path.join(d, "futurelens_meta.json")
        if os.path.isfile(side_path):
            sidecar = read_json(side_path, "tuned-lens sidecar")
        with artifact_errors(d, "tuned-lens artifact"):
            return cls._from_tuned_lens_parts(d, view, model, config, params, sidecar,
                                              allow_basis_mismatch)

    @classmethod
    def _from_tuned_lens_parts(cls, d: str, view: Any, model: Any, config: dict[str, Any],
                               params: dict[str, Any], sidecar: dict[str, Any],
                               allow_basis_mismatch: bool) -> TunedLens:
        if int(config.get("d_model", -1)) != view.d_model:
            raise LensMismatchError(f"tuned-lens artifact has d_model={config.get('d_model')}, "
                                    f"the model has {view.d_model}")
        n = int(config.get("num_hidden_layers", -1))
        if n != view.n_layers:
            raise LensMismatchError(f"tuned-lens artifact has num_hidden_layers={n}, the model "
                                    f"has {view.n_layers}")
        basis = sidecar.get("basis", "raw")
        if not allow_basis_mismatch and basis != view.basis:
            raise LensMismatchError(
                f"tuned-lens artifact {d!r} was fitted in the {basis!r} residual basis (published "
                f"tuned lenses: raw HF hidden states) but the model is in the {view.basis!r} "
                "basis. Load the model without weight processing (fl.load_model(name)), or pass "
                "allow_basis_mismatch=True."
            )
        if sidecar.get("fingerprint") not in (None, model_fingerprint(view)) and not \
                allow_basis_mismatch:
            raise LensMismatchError(
                f"tuned-lens artifact {d!r} was fitted on a model with fingerprint "
                f"{sidecar['fingerprint']}, this model's is {model_fingerprint(view)}")
        shift = int(sidecar.get("token_shift", 0))
        lens = cls(model, sidecar.get("layers"), token_shift=shift, name=sidecar.get("name"))
        with torch.no_grad():
            for i, t in enumerate(lens.translators):
                try:
                    w, b = params[f"{i}.weight"], params[f"{i}.bias"]
                except KeyError as err:
                    raise ArtifactError(f"tuned-lens params.pt lacks key {err}") from None
                if not isinstance(w, Tensor) or not isinstance(b, Tensor):
                    raise ArtifactError(f"tuned-lens params.pt key {i}.weight/bias is not a "
                                        "tensor")
                if tuple(w.shape) != (view.d_model, view.d_model) or tuple(b.shape) != (
                        view.d_model,):
                    raise ArtifactError(f"tuned-lens params.pt key {i}.weight/bias has shape "
                                        f"{tuple(w.shape)}/{tuple(b.shape)}")
                if not (bool(torch.isfinite(w).all()) and bool(torch.isfinite(b).all())):
                    raise ArtifactError(f"tuned-lens params.pt key {i}.weight/bias holds "
                                        "NaN/inf; refusing to load it")
                t.weight.copy_(w.float())
                t.bias.copy_(b.float())
        lens.meta = {"hyperparameters": sidecar.get("hyperparameters", {}),
                     "data": sidecar.get("data", {}), "tuned_lens_config": config}
        return lens


def kl_per_layer(model: Any, lenses: Sequence[Lens], tokens: Int[Tensor, "n pos"], *,
                 batch_size: int = 8) -> dict[str, dict[int, float]]:
    """Mean ``KL(final(t + n_ahead) || lens(t))`` per lens and layer over ``tokens`` (nats).

    One forward per batch; used by tests and benchmarks.
    """
    view = as_view(model)
    sums: dict[str, dict[int, float]] = {lens.name: {} for lens in lenses}
    count: dict[str, int] = {lens.name: 0 for lens in lenses}
    layers = sorted({x for lens in lenses for x in lens.layers})
    for _, logits, resid in _data.iter_batches(view, tokens, layers=layers,
                                               batch_size=batch_size, verbose=False):
        for lens in lenses:
            s = lens.n_ahead
            T = logits.shape[1]
            tgt = torch.log_softmax(logits[:, s:].float(), -1)
            with torch.no_grad():
                for layer in lens.layers:
                    lp = lens.log_probs(resid[layers.index(layer)][:, : T - s].clone(), layer)
                    kl = (tgt.exp() * (tgt - lp)).sum(-1)
                    sums[lens.name][layer] = sums[lens.name].get(layer, 0.0) + float(kl.sum())
            count[lens.name] += tgt.shape[0] * tgt.shape[1]
    return {k: {layer: v / count[k] for layer, v in d.items()} for k, d in sums.items()}
