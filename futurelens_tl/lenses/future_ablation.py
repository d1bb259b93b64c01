"""Future-information ablation: does the model itself use what a linear Future Lens reads?

The Future Lens paper's open question 3 asks whether the future information a lens decodes
from ``h_T^l`` is *used* by the model. Here the subspace that a fitted ``linear_hidden`` lens
reads at block ``l`` — the top-``rank`` left singular vectors of its map ``A`` (``h -> h A``
reads ``h`` only through them; reference §2.1) — is projected out of ``h_T^l`` (around the
training mean, so the state stays on-distribution), and the model runs on. Measured at the
model's own positions ``T + N`` (on ``BOS + prefix + y_0..y_{N-1}``, teacher-fed greedy
labels): ``kl`` from the clean distribution, ``ce`` of the label ``y_N`` and the model's
``precision@1`` against it. The control is a **random** subspace of the same rank (several
draws); a lens subspace that matters more than random ones is used by the model downstream.

Examples:
    >>> import futurelens_tl as fl
    >>> from futurelens_tl.lenses.future import FutureLens, build_features
    >>> from futurelens_tl.lenses.future_ablation import future_information_ablation
    >>> from futurelens_tl.toy import toy_corpus
    >>> model = fl.toy_model(verbose=False)
    >>> data = build_features(model, toy_corpus(12).texts, n_max=1, layers=[1], window=48,
    ...                       verbose=False, splits=(0.6, 0.2, 0.2))
    >>> lens = FutureLens.fit(model, None, "linear_hidden", layers=[1], n_ahead=(1,),
    ...                       data=data, linear_epochs=0, verbose=False)
    >>> df = future_information_ablation(model, lens, data, 1, rank=4, n_random=1, n_boot=20)
    >>> sorted(df.subspace.unique())
    ['clean', 'lens', 'random']
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from futurelens_tl.lenses.future_data import FutureLensData
from futurelens_tl.lenses.future_stats import grouped_bootstrap
from futurelens_tl.models.view import as_view

__all__ = ["future_information_ablation", "lens_subspace"]


def lens_subspace(lens: Any, layer: int, n_ahead: int, rank: int) -> Tensor:
    """``[d_model, rank]`` orthonormal basis of what ``lens`` reads from ``h`` at (layer, N)."""
    if lens.method != "linear_hidden":
        raise ValueError(f"lens.method={lens.method!r}: the ablation needs a linear_hidden lens.")
    a = lens.A[lens._li(layer), lens._ni(n_ahead)].detach().double().cpu()
    if not 0 <= rank <= a.shape[0]:
        raise ValueError(f"rank={rank} must lie in 0..d_model={a.shape[0]}.")
    u, _, _ = torch.linalg.svd(a, full_matrices=False)
    return u[:, :rank]


@torch.no_grad()
def _run_ablated(view: Any, data: FutureLensData, idx: Tensor, layer: int, basis: Tensor | None,
                 mean: Tensor, n_max: int, bs: int) -> Tensor:
    """``log P`` at ``T + 0..n_max`` with ``h_T^l`` projected off ``basis`` (None = clean)."""
    out = []
    for s in range(0, len(idx), bs):
        b = idx[s : s + bs]
        t = data.source_pos[b]
        seq = data.tokens[b, : int(t.max()) + 1 + n_max].to(view.device)
        rows = torch.arange(len(b), device=view.device)
        td = t.to(view.device)

        def hook(x: Tensor, hook: Any, rows: Tensor = rows, td: Tensor = td) -> Tensor:
            if basis is None:
                return x
            x = x.clone()
            h = x[rows, td].double()
            p = basis.to(x.device)
            c = (h - mean.to(x.device)) @ p
            x[rows, td] = (h - c @ p.T).to(x.dtype)
            return x

        with view.isolated_hooks():
            logits = view.run_with_hooks(seq, [(view.resid_hook(layer), hook)])
        pos = td[:, None] + torch.arange(n_max + 1, device=view.device)[None]
        out.append(torch.log_softmax(logits[rows[:, None], pos].float(), -1).cpu())
    return torch.cat(out)


def future_information_ablation(
    model: Any,
    lens: Any,
    data: FutureLensData,
    layer: int,
    *,
    rank: int = 8,
    n_ahead: int | None = None,
    n_random: int = 3,
    split: str | None = "test",
    n_boot: int = 1000,
    seed: int = 0,
    batch_size: int = 32,
) -> Any:
    """Project the lens's subspace (or random ones) out of ``h_T^l`` and score the model.

    Args:
        model: The model.
        lens: A fitted ``linear_hidden`` :class:`~futurelens_tl.lenses.future.FutureLens`.
        data: Features (sources, positions, labels) cached from ``model``.
        layer: Block ``l`` to ablate at (position ``T`` only).
        rank: Directions removed.
        n_ahead: Which map's subspace (default the lens's largest N).
        n_random: Random subspaces of the same rank (the control).
        split: Split of ``data`` to use.
        n_boot: Bootstrap resamples of documents.
        seed: Seed of the random subspaces and the bootstrap.
        batch_size: Contexts per forward.

    Returns:
        pandas DataFrame: ``subspace`` (``lens`` / ``random``), ``draw``, ``rank``,
        ``n_ahead``, ``metric`` (``kl``, ``ce``, ``precision``), ``value``, ``ci_low``,
        ``ci_high``, ``n``; a ``clean`` row per N and metric gives the unablated value.
    """
    import pandas as pd

    view = as_view(model)
    lens.check_model(model)
    n_lens = max(lens.n_aheads) if n_ahead is None else n_ahead
    basis = lens_subspace(lens, layer, n_lens, rank)
    idx = data.indices(split)
    if not len(idx):
        raise ValueError(f"no examples in split={split!r}.")
    if getattr(lens, "source_mean", None) is not None:  # the lens's training mean
        mean = lens.source_mean[lens._li(layer)].double()
    else:
        tr = data.indices("train")
        src = data.sources[data.layer_row(layer)]
        mean = (src[tr] if len(tr) else src).double().mean(0)
    n_max = data.n_max
    clean = _run_ablated(view, data, idx, layer, None, mean, n_max, batch_size)
    g = torch.Generator().manual_seed(seed)
    runs = [("lens", 0, basis)] + [
        ("random", i, torch.linalg.qr(torch.randn(basis.shape[0], rank, generator=g,
                                                  dtype=torch.float64))[0])
        for i in range(n_random)]
    labels = data.labels[idx]
    recs, vals = [], []
    for name, draw, b in [("clean", 0, None)] + runs:
        lp = clean if b is None else _run_ablated(view, data, idx, layer, b, mean, n_max,
                                                  batch_size)
        for n in range(n_max + 1):
            y = labels[:, n]
            per = {"kl": (clean[:, n].exp() * (clean[:, n] - lp[:, n])).sum(-1),
                   "ce": -lp[:, n].gather(1, y[:, None])[:, 0],
                   "precision": (lp[:, n].argmax(-1) == y).double()}
            for metric, v in per.items():
                recs.append({"subspace": name, "draw": draw, "rank": rank, "n_ahead": n,
                             "metric": metric, "n": len(idx), "layer": layer,
                             "lens_n_ahead": n_lens})
                vals.append(v.double())
    est, lo, hi = grouped_bootstrap(torch.stack(vals), data.doc[idx], n_boot=n_boot, seed=seed)
    df = pd.DataFrame(recs)
    df["value"], df["ci_low"], df["ci_high"] = est.tolist(), lo.tolist(), hi.tolist()
    return df
