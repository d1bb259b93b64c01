"""What the report caches (lenses, Future Lens features), keyed by every setting they depend on."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from futurelens_tl._io import atomic_write, sha256_hex
from futurelens_tl.report.config import CACHE_VERSION
from futurelens_tl.report.page import _Report, cache_root


# ---------------------------------------------------------------------------------- cache
def _cache_dir(state: dict[str, Any]) -> Path:
    return cache_root() / "report" / state["view"].fingerprint


def _key(state: dict[str, Any], *parts: Any) -> str:
    """Cache key: model fingerprint + basis + corpus + every setting in ``parts``."""
    view = state["view"]
    return sha256_hex(CACHE_VERSION, view.fingerprint, view.basis, state["corpus_id"], *parts,
                      length=16)


def _cached(rep: _Report, label: str, path: Path, train: Any, load: Any) -> Any:
    if rep.cfg.use_cache and path.exists():
        try:
            obj = load(path)
            rep.cache_hits.append(label)
            return obj
        except Exception:  # stale or foreign artifact: retrain and overwrite atomically
            pass
    obj = train()
    path.parent.mkdir(parents=True, exist_ok=True)
    obj.save(path)
    return obj


_FEATURE_TENSORS = ("tokens", "source_pos", "labels", "sources", "targets", "split",
                    "bigram_tokens", "doc", "corpus_labels")


def save_features(data: Any, path: str | os.PathLike[str]) -> None:
    """Write a :class:`~futurelens_tl.lenses.future_data.FutureLensData` (safetensors, atomic)."""
    from safetensors.torch import save_file

    tensors = {k: getattr(data, k).detach().cpu().contiguous() for k in _FEATURE_TENSORS
               if getattr(data, k, None) is not None}
    if data.train_seqs is not None:  # ragged: one flat tensor plus the lengths
        tensors["train_seqs_flat"] = torch.tensor([t for s in data.train_seqs for t in s],
                                                  dtype=torch.long)
        tensors["train_seqs_len"] = torch.tensor([len(s) for s in data.train_seqs],
                                                 dtype=torch.long)
    header = {"layers": list(data.layers), "n_max": int(data.n_max),
              "label_source": data.label_source, "fingerprint": data.fingerprint,
              "basis": data.basis, "n_forward": int(data.n_forward),
              "label_passes": int(data.label_passes),
              "meta": json.loads(json.dumps(data.meta, default=str)),
              "checksum": sha256_hex(*(tensors[k] for k in sorted(tensors)))}
    atomic_write(path, lambda tmp: save_file(tensors, tmp,
                                             metadata={"futurelens_features": json.dumps(header)}))


def load_features(path: str | os.PathLike[str], model: Any) -> Any:
    """Read what :func:`save_features` wrote; refuse other models and corrupt tensors."""
    from safetensors import safe_open

    from futurelens_tl.lenses.future_data import FutureLensData

    with safe_open(os.fspath(path), framework="pt") as f:
        header = json.loads(f.metadata()["futurelens_features"])
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    if sha256_hex(*(tensors[k] for k in sorted(tensors))) != header["checksum"]:
        raise ValueError(f"{path}: feature tensors do not match their checksum")
    train_seqs = None
    if "train_seqs_len" in tensors:
        parts = torch.split(tensors["train_seqs_flat"], tensors["train_seqs_len"].tolist())
        train_seqs = [p.tolist() for p in parts]
    data = FutureLensData(
        **{k: tensors.get(k) for k in _FEATURE_TENSORS}, train_seqs=train_seqs,
        layers=header["layers"],
        n_max=header["n_max"], label_source=header["label_source"],
        fingerprint=header["fingerprint"], basis=header["basis"],
        n_forward=header["n_forward"], label_passes=header["label_passes"], meta=header["meta"])
    data.check_model(model)
    return data


def _features_cached(rep: _Report, state: dict[str, Any], split: str,
                     settings: dict[str, Any], kw: dict[str, Any]) -> Any:
    from futurelens_tl.lenses.future_data import build_features

    path = _cache_dir(state) / f"features_{split}_{_key(state, settings)}.safetensors"
    if rep.cfg.use_cache and path.exists():
        try:
            data = load_features(path, state["model"])
            rep.cache_hits.append(f"future features ({split})")
            return data
        except Exception:  # corrupt or foreign: rebuild and overwrite atomically
            pass
    data = build_features(state["model"], _corpus(state, split, settings["n_docs"]),
                          verbose=rep.cfg.verbose, **kw)
    save_features(data, path)
    return data


def _corpus(state: dict[str, Any], split: str, n: int) -> list[str]:
    """Training or held-out documents: ``texts`` (a corpus or a file), else the toy corpus."""
    texts = state["parsed"]["texts"]
    if texts:
        return texts["train" if split == "train" else "test"][:n]
    from futurelens_tl.toy import toy_texts

    return toy_texts(split, n=n, seed=state["seed"])
