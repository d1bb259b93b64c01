"""Probing tagger: one linear probe per head on ``hook_z`` (reference ``head-roles.md`` §6.2).

The ITI recipe (Li et al. 2023): features are each head's output before ``W_O`` at chosen
positions (``blocks.{l}.attn.hook_z``, stacked to ``[n, n_layers, n_heads, d_head]`` from one
forward per batch), split by group (e.g. by question) into folds, one logistic regression per
(layer, head) fitted on the training folds only (standardisation included), held-out accuracy
and AUROC per head, and a unit direction per head (mass mean: mean of the positive class minus
mean of the negative class) usable with
:func:`futurelens_tl.attention.patching.directional_effects`. Decodability is not use: confirm
probe-tagged heads causally.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from jaxtyping import Float, Int
from torch import Tensor

from futurelens_tl.data import FORWARD_COUNTER, progress
from futurelens_tl.models.view import as_view

__all__ = ["ProbeResult", "head_features", "probe_heads"]


@dataclass
class ProbeResult:
    """Held-out probe quality per head.

    Attributes:
        accuracy: ``[n_layers, n_heads]`` mean held-out accuracy over folds.
        auroc: ``[n_layers, n_heads]`` mean held-out AUROC (binary labels; NaN otherwise).
        directions: ``[n_layers, n_heads, d_head]`` unit mass-mean directions (binary labels).
        chance: Majority-class rate.
        evidence: Number of examples, folds, positions, seed, method.
    """

    accuracy: Float[Tensor, "n_layers n_heads"]
    auroc: Float[Tensor, "n_layers n_heads"]
    directions: Float[Tensor, "n_layers n_heads d_head"]
    chance: float
    evidence: dict[str, Any] = field(default_factory=dict)

    def top(self, k: int = 5) -> list[tuple[int, int, float]]:
        """The ``k`` heads with the best held-out accuracy as ``(layer, head, accuracy)``."""
        flat = torch.nan_to_num(self.accuracy, nan=-math.inf).flatten()
        idx = flat.argsort(descending=True, stable=True)[:k]
        H = self.accuracy.shape[1]
        return [(int(i) // H, int(i) % H, float(flat[i])) for i in idx]

    def to_dataframe(self) -> Any:
        """One row per head: layer, head, accuracy, auroc."""
        import pandas as pd

        L, H = self.accuracy.shape
        return pd.DataFrame([
            {"layer": layer, "head": h, "accuracy": float(self.accuracy[layer, h]),
             "auroc": float(self.auroc[layer, h])} for layer in range(L) for h in range(H)])

    def _repr_html_(self) -> str:
        from futurelens_tl.viz.heads import heatmap_html

        return heatmap_html(self.accuracy.numpy(), title="held-out probe accuracy")

    def show(self) -> Any:
        """Layer x head heatmap of held-out accuracy (offline HTML)."""
        from futurelens_tl.attention.patching import _HTML

        return _HTML(self._repr_html_())


def head_features(
    model: Any,
    tokens: Int[Tensor, "batch pos"],
    positions: int | Int[Tensor, " batch"] = -1,
    *,
    batch_size: int = 32,
    verbose: bool = True,
) -> Float[Tensor, "batch n_layers n_heads d_head"]:
    """Per-head ``hook_z`` at one position per example, from one forward per batch.

    Args:
        model: TransformerLens model or ModelView.
        tokens: ``[batch, pos]``.
        positions: One position for all examples (negative counts from the end) or a
            ``[batch]`` tensor.
        batch_size: Examples per forward.
        verbose: Progress bar.
    """
    view = as_view(model)
    tokens = view.to_tokens(tokens, arg="tokens")
    n, length = tokens.shape
    pos = torch.as_tensor(positions, dtype=torch.long)
    pos = pos.expand(n) if pos.ndim == 0 else pos
    if pos.shape != (n,):
        raise ValueError(f"positions must be an int or a [{n}] tensor, got {tuple(pos.shape)}")
    pos = torch.where(pos < 0, pos + length, pos)
    if int(pos.min()) < 0 or int(pos.max()) >= length:
        raise ValueError(f"positions out of range for sequences of length {length}")
    names = [view.attn_hook(layer, "z") for layer in range(view.n_layers)]
    out = []
    for s in progress(range(0, n, batch_size), verbose=verbose, desc="head features"):
        tok = tokens[s:s + batch_size]
        p = pos[s:s + batch_size].to(view.device)
        with torch.no_grad():
            _, cache = view.run_with_cache(tok, names)
        FORWARD_COUNTER.passes += 1
        FORWARD_COUNTER.tokens += tok.numel()
        ar = torch.arange(tok.shape[0], device=view.device)
        out.append(torch.stack([cache[nm][ar, p] for nm in names], 1).float().cpu())
    return torch.cat(out)


def _folds(n: int, groups: np.ndarray | None, n_folds: int, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    if groups is None:
        groups = np.arange(n)
    uniq = np.unique(groups)
    if len(uniq) < n_folds:
        raise ValueError(f"need at least n_folds={n_folds} groups, got {len(uniq)}")
    perm = rng.permutation(uniq)
    fold_of = {g: i % n_folds for i, g in enumerate(perm)}
    f = np.array([fold_of[g] for g in groups])
    return [np.nonzero(f == i)[0] for i in range(n_folds)]


def _auroc(y: np.ndarray, s: np.ndarray) -> float:
    pos, neg = s[y == 1], s[y == 0]
    if len(pos) == 0 or len(neg) == 0:
        return float("nan")
    order = np.argsort(np.concatenate([pos, neg]), kind="mergesort")
    ranks = np.empty(len(order))
    ranks[order] = np.arange(1, len(order) + 1)
    # average ranks of ties
    allv = np.concatenate([pos, neg])
    for v in np.unique(allv):
        m = allv == v
        if m.sum() > 1:
            ranks[m] = ranks[m].mean()
    return float((ranks[: len(pos)].sum() - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg)))


def probe_heads(
    model: Any,
    tokens: Int[Tensor, "batch pos"] | None,
    labels: Int[Tensor, " n_labels"],
    *,
    positions: int | Int[Tensor, " batch"] = -1,
    groups: Int[Tensor, " batch"] | None = None,
    features: Float[Tensor, "batch n_layers n_heads d_head"] | None = None,
    n_folds: int = 2,
    method: str = "logreg",
    C: float = 1.0,
    seed: int = 0,
    verbose: bool = True,
) -> ProbeResult:
    """Fit one linear probe per head on ``hook_z`` and report held-out accuracy (ITI recipe).

    Args:
        model: TransformerLens model or ModelView.
        tokens: ``[batch, pos]`` inputs (ignored when ``features`` is given).
        labels: Integer class labels ``[batch]``.
        positions: Position(s) whose ``hook_z`` is probed (default the last token).
        groups: Group id per example (e.g. question id); folds never split a group.
        features: Precomputed :func:`head_features` output.
        n_folds: Cross-validation folds (ITI README: 2).
        method: ``"logreg"`` (scikit-learn ``LogisticRegression(max_iter=1000)`` with
            standardisation fitted on the training fold) or ``"torch"`` (full-batch
            logistic regression, no scikit-learn needed).
        C: Inverse L2 strength.
        seed: Seed of the fold split and the probes.
        verbose: Progress bars.

    Returns:
        ProbeResult (tag the top-K heads by ``accuracy``).

    Raises:
        ValueError: Mismatched lengths, a single class, too few groups, unknown method.

    Examples:
        >>> import torch, futurelens_tl as fl
        >>> from futurelens_tl.attention.probes import probe_heads
        >>> model = fl.toy_model(verbose=False)
        >>> tokens = torch.randint(1, 100, (40, 8)); labels = (tokens[:, 3] % 2)
        >>> res = probe_heads(model, tokens, labels, verbose=False)
        >>> res.accuracy.shape == (model.cfg.n_layers, model.cfg.n_heads)
        True
    """
    if method not in ("logreg", "torch"):
        raise ValueError(f"method={method!r}; allowed 'logreg', 'torch'")
    y = torch.as_tensor(labels).long().cpu().numpy()
    n_in = len(features) if features is not None else (len(tokens) if tokens is not None else 0)
    if features is None and tokens is None:
        raise ValueError("give tokens or features")
    if len(y) != n_in:
        raise ValueError(f"labels has {len(y)} entries but there are {n_in} examples")
    classes = np.unique(y)
    if len(classes) < 2:
        raise ValueError("labels has a single class; probes need at least two")
    if features is None:
        features = head_features(model, tokens, positions, verbose=verbose)
    n, L, H, d = features.shape
    g = None if groups is None else torch.as_tensor(groups).cpu().numpy()
    folds = _folds(n, g, n_folds, seed)
    X = features.numpy().astype(np.float64)
    acc = np.zeros((L, H))
    auc = np.full((L, H), np.nan)
    binary = len(classes) == 2
    heads = [(layer, h) for layer in range(L) for h in range(H)]
    for layer, h in progress(heads, verbose=verbose, desc="probes"):
        xs = X[:, layer, h]
        accs, aucs = [], []
        for i in range(n_folds):
            te = folds[i]
            tr = np.concatenate([folds[j] for j in range(n_folds) if j != i])
            if len(np.unique(y[tr])) < 2 or len(te) == 0:
                continue
            mu, sd = xs[tr].mean(0), xs[tr].std(0) + 1e-8
            xtr, xte = (xs[tr] - mu) / sd, (xs[te] - mu) / sd
            if method == "logreg":
                from sklearn.linear_model import LogisticRegression

                clf = LogisticRegression(max_iter=1000, C=C, random_state=seed)
                clf.fit(xtr, y[tr])
                pred = clf.predict(xte)
                score = clf.decision_function(xte) if binary else None
            else:
                pred, score = _torch_logreg(xtr, y[tr], xte, C, seed, len(classes), classes)
            accs.append(float((pred == y[te]).mean()))
            if binary and score is not None:
                aucs.append(_auroc((y[te] == classes[1]).astype(int), np.asarray(score)))
        acc[layer, h] = np.mean(accs) if accs else np.nan
        if aucs:
            auc[layer, h] = np.nanmean(aucs)
    dirs = torch.zeros(L, H, d)
    if binary:
        pos_m = features[torch.as_tensor(y == classes[1])].mean(0)
        neg_m = features[torch.as_tensor(y == classes[0])].mean(0)
        diff = pos_m - neg_m
        dirs = diff / diff.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    chance = float(np.bincount(y - y.min()).max() / n)
    return ProbeResult(torch.tensor(acc, dtype=torch.float32),
                       torch.tensor(auc, dtype=torch.float32), dirs, chance,
                       {"n_examples": n, "n_folds": n_folds, "seed": seed, "method": method,
                        "grouped": groups is not None})


def _torch_logreg(xtr: np.ndarray, ytr: np.ndarray, xte: np.ndarray, C: float, seed: int,
                  n_cls: int, classes: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    torch.manual_seed(seed)
    xt = torch.tensor(xtr, dtype=torch.float32)
    yt = torch.tensor(np.searchsorted(classes, ytr))
    lin = torch.nn.Linear(xt.shape[1], n_cls)
    opt = torch.optim.LBFGS(lin.parameters(), max_iter=50, line_search_fn="strong_wolfe")

    def closure() -> Tensor:
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(lin(xt), yt) + (
            0.5 / (C * len(xt))) * lin.weight.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        out = lin(torch.tensor(xte, dtype=torch.float32))
    pred = classes[out.argmax(-1).numpy()]
    score = (out[:, 1] - out[:, 0]).numpy() if n_cls == 2 else None
    return pred, score
