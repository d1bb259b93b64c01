"""Future Lens evaluation with its controls, baselines and document-grouped intervals.

Reference ``future-lens.md`` §4 (protocol). A result table without its controls is not a
result, so every teacher-forced evaluation carries, next to each lens and layer:

``mean_h``
    ``h_T^l`` replaced by the **training** mean of ``h`` at that layer (the lens's own fit
    data; features without a training split fall back to the evaluation mean, noted in
    ``meta``). Whatever a lens scores here it scores without any information from ``h``.
``shuffled_h``
    ``h`` taken from another example (preferably another document) at the same layer.
``no_patch``
    prompt methods only: the prompt runs with **no** transplant at all.

and as baselines at **every** N (fitted on the training documents only): ``bigram``
(``y_N`` from the last token before it, which the token-fed lenses also see), ``trigram``
(the last two tokens, backing off to the bigram) and, for ``N >= 1``, ``skip_bigram``
(``y_N`` from ``x_T`` alone: the baseline of a *blind* lens). Rows record ``h_matters``: a
prompt method that patches the last block at ``N >= 1`` cannot be influenced by ``h`` at all
(the patched position feeds no later block), so its score there is the prompt's alone.

Metrics (per lens, layer, N): ``precision`` for every ``k``; ``surprisal`` — the paper's
definition, ``-ln P_model^N(argmax P_lens^N)`` (how plausible the lens's guess is to the
model, §4.1); ``surprisal_label`` — ``-ln P_lens^N(y_N)``, the lens's surprisal of the correct
token; ``kl`` — ``KL(P_model^N || P_lens^N)``, the training objective; and ``precision@1`` per
model-confidence bucket (labels as :func:`futurelens_tl.metrics.confidence_buckets`). Every row
has a percentile bootstrap interval ``ci_low .. ci_high`` that resamples **documents**.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from jaxtyping import Int
from torch import Tensor

from futurelens_tl.lenses.future_config import _as_n_tuple
from futurelens_tl.lenses.future_data import FutureLensData, build_features
from futurelens_tl.lenses.future_stats import NgramTable, grouped_bootstrap
from futurelens_tl.models.view import ModelView, as_view
from futurelens_tl.results import COLUMNS, LensEvaluation

__all__ = ["CONTROLS", "FutureLensEvaluation", "bigram_table", "bucket_labels", "evaluate_many",
           "paper_figure"]

CONTROLS = ("mean_h", "shuffled_h", "no_patch")
EXTRA_COLUMNS = ["control", "h_matters", "ci_low", "ci_high"]
FILTERS = (None, "greedy_correct", "greedy_correct_all")


def bucket_labels(edges: Sequence[float]) -> list[str]:
    """Bucket labels ``[lo, hi)`` / ``[lo, hi]`` (last), as in ``metrics.confidence_buckets``."""
    e = [float(x) for x in edges]
    return [f"[{lo:g}, {hi:g}{']' if i == len(e) - 2 else ')'}"
            for i, (lo, hi) in enumerate(zip(e, e[1:]))]


def _bucket_masks(conf: Tensor, edges: Sequence[float]) -> list[Tensor]:
    e = [float(x) for x in edges]
    if len(e) < 2 or any(b <= a for a, b in zip(e, e[1:])):
        raise ValueError(f"buckets={tuple(edges)} must be >= 2 strictly increasing numbers.")
    out = []
    for i, (lo, hi) in enumerate(zip(e, e[1:])):
        lo_t, hi_t = torch.tensor(lo, dtype=conf.dtype), torch.tensor(hi, dtype=conf.dtype)
        last = i == len(e) - 2
        out.append((conf >= lo_t) & ((conf <= hi_t) if last else (conf < hi_t)))
    return out


@dataclass
class FutureLensEvaluation(LensEvaluation):
    """A :class:`~futurelens_tl.results.LensEvaluation` that keeps per-example hits.

    Extra columns: ``control`` (None for the lens itself, else :data:`CONTROLS`),
    ``h_matters``, ``ci_low``/``ci_high`` (document bootstrap). ``hits1`` maps
    ``(lens label, layer, N)`` to per-example precision@1 hits (paired comparisons), ``groups``
    holds each example's document.
    """

    hits1: dict[tuple[Any, Any, int], Tensor] = field(default_factory=dict, repr=False)
    groups: Tensor | None = field(default=None, repr=False)

    def controls(self, n_ahead: int = 1, k: int = 1, metric: str = "precision") -> Any:
        """Layer x (lens, controls, baselines) table of ``metric`` as ``value [lo, hi]``."""
        t = self.table[(self.table.metric == metric) & self.table.bucket.isna()
                       & (self.table.n_ahead == n_ahead)
                       & (self.table["mode"].isin(["teacher_forced", "baseline"]))]
        if metric == "precision":
            t = t[t.k == k]
        cell = t.apply(lambda r: f"{r.value:.3f} [{r.ci_low:.3f}, {r.ci_high:.3f}]", axis=1)
        t = t.assign(cell=cell, layer=t.layer.astype(object).where(t.layer.notna(), "all"))
        return t.pivot_table(index="layer", columns="lens", values="cell", aggfunc="first")

    def gain(self, lens: str, against: str = "mean_h", *, n_boot: int = 1000, ci: float = 0.95,
             seed: int = 0) -> Any:
        """Paired precision@1 difference ``lens - against`` per (layer, N), document bootstrap.

        ``against`` is a control name (``"mean_h"``, ``"shuffled_h"``, ``"no_patch"``), a
        baseline (``"bigram"``, ``"trigram"``, ``"skip_bigram"``) or another lens label.
        """
        import pandas as pd

        if self.groups is None:
            raise ValueError("this evaluation keeps no per-example hits (loaded from disk?).")
        other = f"{lens} [{against}]" if against in CONTROLS else against
        recs, vals = [], []
        for (name, layer, n), h in self.hits1.items():
            if name != lens:
                continue
            ref = self.hits1.get((other, layer, n), self.hits1.get((other, None, n)))
            if ref is None:
                continue
            recs.append({"lens": lens, "against": against, "layer": layer, "n_ahead": n})
            vals.append(h.double() - ref.double())
        if not recs:
            raise ValueError(f"no rows to compare: lens={lens!r} against={against!r}; lenses "
                             f"here: {sorted({str(k[0]) for k in self.hits1})}")
        est, lo, hi = grouped_bootstrap(torch.stack(vals), self.groups, n_boot=n_boot, ci=ci,
                                        seed=seed)
        df = pd.DataFrame(recs)
        df["delta"], df["ci_low"], df["ci_high"] = est.tolist(), lo.tolist(), hi.tolist()
        return df


# ====================================================================== scoring
class _Collector:
    """Rows plus their per-example value vectors; intervals computed once at the end."""

    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []
        self.vals: list[Tensor] = []
        self.wts: list[Tensor | None] = []
        self.hits1: dict[tuple[Any, Any, int], Tensor] = {}

    def add(self, base: dict[str, Any], metric: str, k: int | None, v: Tensor,
            w: Tensor | None = None, bucket: str | None = None) -> None:
        n = int(v.numel() if w is None else w.sum())
        self.rows.append({**base, "metric": metric, "k": k, "bucket": bucket, "n": n})
        self.vals.append(v.double().cpu())
        self.wts.append(None if w is None else w.double().cpu())

    def finish(self, groups: Tensor, n_boot: int, ci: float, seed: int) -> list[dict[str, Any]]:
        if not self.rows:
            return []
        v = torch.stack(self.vals)
        w = torch.stack([torch.ones(v.shape[1], dtype=torch.float64) if x is None else x
                         for x in self.wts])
        est, lo, hi = grouped_bootstrap(v, groups, weights=w, n_boot=n_boot, ci=ci, seed=seed)
        for r, e, a, b in zip(self.rows, est.tolist(), lo.tolist(), hi.tolist()):
            r.update(value=e, ci_low=a, ci_high=b)
        return self.rows


def _row_stats(logits: Tensor, tlp: Tensor, y: Tensor, kmax: int) -> dict[str, Tensor]:
    """Per-row teacher-forced statistics of one chunk (``logits``, ``tlp`` are ``[r, V]``)."""
    lp = torch.log_softmax(logits.float(), -1)
    top = lp.topk(min(kmax, lp.shape[-1]), -1).indices
    return {"hits": (top == y[:, None]).cumsum(-1).clamp(max=1).double().cpu(),
            "surprisal": -tlp.gather(1, top[:, :1])[:, 0].double().cpu(),
            "surprisal_label": -lp.gather(1, y[:, None])[:, 0].double().cpu(),
            "kl": (tlp.exp() * (tlp - lp)).sum(-1).double().cpu()}


def _add_scored(col: _Collector, base: dict[str, Any], st: dict[str, Tensor],
                ks: tuple[int, ...], edges: Sequence[float] | None, conf: Tensor) -> None:
    """Rows of one (variant, layer, N) from its per-example statistics."""
    hits = st["hits"]
    for k in ks:
        col.add(base, "precision", k, hits[:, min(k, hits.shape[1]) - 1])
    for m in ("surprisal", "surprisal_label", "kl"):
        col.add(base, m, None, st[m])
    if edges is not None:
        for lab, msk in zip(bucket_labels(edges), _bucket_masks(conf, edges)):
            col.add(base, "precision", 1, hits[:, 0], w=msk.double(), bucket=lab)
    col.hits1[(base["lens"], base["layer"], base["n_ahead"])] = hits[:, 0]


def _shuffle_index(doc: Tensor, seed: int) -> Tensor:
    """A permutation sending each example to one from another document where possible."""
    ne = len(doc)
    g = torch.Generator().manual_seed(seed + 17)
    rnd = torch.randperm(ne, generator=g)
    order = rnd[torch.argsort(doc[rnd], stable=True)]  # grouped by doc, random within
    perm = torch.empty(ne, dtype=torch.long)
    perm[order] = order.roll(ne // 2) if ne > 1 else order
    return perm


def _mean_source(lens: Any, data: FutureLensData, layer: int) -> tuple[Tensor, str]:
    sm = getattr(lens, "source_mean", None)
    if sm is not None and layer in lens.layers:
        return sm[lens.layers.index(layer)], "lens training data"
    tr = data.indices("train")
    row = data.layer_row(layer)
    if len(tr):
        return data.sources[row, tr].mean(0), "features' training split"
    return data.sources[row].mean(0), "evaluation features (no training split; in-sample)"


def _teacher_forced(lens: Any, view: ModelView, data: FutureLensData, idx: Tensor,
                    ns: list[int], ks: tuple[int, ...], edges: Sequence[float], bs: int,
                    controls: Sequence[str], col: _Collector, notes: dict[str, Any],
                    seed: int) -> None:
    """Every (variant, layer, N) of one lens; rows of all layers batched together (§7)."""
    nl, ne = len(lens.layers), len(idx)
    lay_rows = torch.tensor(lens.layers, dtype=torch.long).repeat_interleave(ne)
    real = torch.cat([data.sources[data.layer_row(layer), idx] for layer in lens.layers])
    variants: dict[str | None, Tensor] = {None: real}
    for c in controls:
        if c == "no_patch" and not lens.is_prompt:
            continue
        if c == "mean_h":
            means = []
            for layer in lens.layers:
                m, src = _mean_source(lens, data, layer)
                means.append(m.expand(ne, -1))
                notes.setdefault("mean_h_source", {})[lens.name] = src
            variants[c] = torch.cat(means)
        elif c == "shuffled_h":
            perm = _shuffle_index(data.doc[idx], seed)
            variants[c] = torch.cat([data.sources[data.layer_row(layer), idx[perm]]
                                     for layer in lens.layers])
        elif c == "no_patch":
            variants[c] = real
    nt_rows = data.labels[idx].repeat(nl, 1)
    ex_rows = torch.arange(ne).repeat(nl)
    last = view.n_layers - 1
    tlps = {n: data.target_logprobs(view, n, idx) for n in ns}
    for c, h_all in variants.items():
        stats: dict[int, list[dict[str, Tensor]]] = {n: [] for n in ns}
        for s in range(0, len(h_all), bs):
            h = h_all[s : s + bs].to(view.device)
            lay, ex = lay_rows[s : s + bs], ex_rows[s : s + bs]
            if lens.is_prompt:  # one forward serves every N (causal: position M-1+N)
                alln = lens.rows_logits_all_n(h, lay, nt_rows[s : s + bs], max(ns),
                                              patch=c != "no_patch")
                per_n = {n: alln[:, n] for n in ns}
            else:
                per_n = {n: lens.rows_logits(h, lay, n) for n in ns}
            for n in ns:
                tlp = tlps[n][ex.to(tlps[n].device)]
                y = data.labels[idx, n][ex].to(tlp.device)
                stats[n].append(_row_stats(per_n[n].to(tlp.device), tlp, y, max(ks)))
        for n in ns:
            st = {key: torch.cat([x[key] for x in stats[n]]).view(nl, ne, -1).squeeze(-1)
                  for key in stats[n][0]}
            st["hits"] = st["hits"].view(nl, ne, -1)
            conf = tlps[n].max(-1).values.exp().cpu()
            for i, layer in enumerate(lens.layers):
                target = lens.target_layer if lens.target_layer is not None else layer
                matters = not (lens.is_prompt and n >= 1 and target == last)
                label = lens.name if c is None else f"{lens.name} [{c}]"
                base = dict(lens=label, method=lens.method, layer=layer, n_ahead=n,
                            mode="teacher_forced", token_fed=bool(lens.is_prompt and n >= 1),
                            label_source=data.label_source, control=c,
                            h_matters=bool(matters) if c is None else None)
                _add_scored(col, base, {key: v[i] for key, v in st.items()}, ks,
                            edges if c is None else None, conf)


def _free_running(lens: Any, view: ModelView, data: FutureLensData, idx: Tensor,
                  ns: list[int], bs: int, col: _Collector) -> None:
    """Greedy continuation of all (layer, example) rows at once; ``match`` per N."""
    nl, ne = len(lens.layers), len(idx)
    h_rows = torch.cat([data.sources[data.layer_row(layer), idx] for layer in lens.layers])
    lay_rows = torch.tensor(lens.layers, dtype=torch.long).repeat_interleave(ne)
    if lens.is_prompt:
        ids, _ = lens.rows_continuation(h_rows, lay_rows, max(ns) + 1, batch_size=bs)
        gen_by_n = {n: ids[:, n].cpu() for n in ns}
    else:
        gen_by_n = {n: torch.cat([lens.rows_logits(h_rows[s:s + bs].to(view.device),
                                                   lay_rows[s:s + bs], n).argmax(-1).cpu()
                                  for s in range(0, len(h_rows), bs)]) for n in ns}
    for n in ns:
        tlp = data.target_logprobs(view, n, idx)
        gen = gen_by_n[n].view(nl, ne)
        for i, layer in enumerate(lens.layers):
            base = dict(lens=lens.name, method=lens.method, layer=layer, n_ahead=n,
                        mode="free_running", token_fed=False, label_source=data.label_source,
                        control=None, h_matters=None)
            col.add(base, "match", None, (gen[i] == data.labels[idx, n]).double())
            col.add(base, "surprisal", None, -tlp.gather(1, gen[i].to(tlp.device)[:, None])[:, 0])


def _baselines(view: ModelView, data: FutureLensData, idx: Tensor, ns: list[int],
               ks: tuple[int, ...], seqs: list[list[int]], col: _Collector) -> None:
    """Bigram / trigram (token-fed context) and skip-bigram (blind) at every N."""
    kmax = max(ks)
    tok, t = data.tokens[idx], data.source_pos[idx]
    ar = torch.arange(len(idx))
    for n in ns:
        tlp = data.target_logprobs(view, n, idx)
        y = data.labels[idx, n]
        last = tok[ar, t + n]  # the last token before y_N (x_T at N = 0, else y_{N-1})
        prev = tok[ar, t + n - 1]
        specs = [("bigram", NgramTable(2), last[:, None], n >= 1),
                 ("trigram", NgramTable(3), torch.stack([prev, last], 1), n >= 1)]
        if n >= 1:
            specs.append(("skip_bigram", NgramTable(2, gap=n), tok[ar, t][:, None], False))
        for name, tab, ctx, fed in specs:
            top = torch.tensor(tab.fit(seqs).topk(ctx, kmax))
            hits = (top == y[:, None]).cumsum(-1).clamp(max=1).double()
            base = dict(lens=name, method=name, layer=None, n_ahead=n, mode="baseline",
                        token_fed=fed, label_source=data.label_source, control=None,
                        h_matters=None)
            for k in ks:
                col.add(base, "precision", k, hits[:, k - 1])
            col.add(base, "surprisal", None, -tlp.gather(1, top[:, :1].to(tlp.device))[:, 0])
            col.hits1[(name, None, n)] = hits[:, 0]


def evaluate_many(
    lenses: Sequence[Any],
    model: Any,
    texts: Any = None,
    *,
    data: FutureLensData | None = None,
    n_ahead: int | Iterable[int] = (0, 1, 2, 3),
    k: int | Iterable[int] = tuple(range(1, 11)),
    split: str | None = "test",
    modes: Sequence[str] = ("teacher_forced", "free_running"),
    controls: Sequence[str] = CONTROLS,
    filter: str | None = None,
    buckets: Sequence[float] = (0.0, 0.3, 0.6, 0.9, 1.0),
    baseline: bool = True,
    baseline_seqs: Sequence[Sequence[int]] | None = None,
    n_boot: int = 1000,
    ci: float = 0.95,
    batch_size: int | None = None,
    seed: int = 0,
    verbose: bool = True,
    **feature_kw: Any,
) -> FutureLensEvaluation:
    """Evaluate Future Lenses with controls, baselines and document-bootstrap intervals.

    See the module docstring (reference ``future-lens.md`` §4) for the rows produced.

    Args:
        lenses: Future Lenses fitted on ``model``.
        model: The model.
        texts: Corpus, when ``data`` is not given (then all of it is the test split and the
            n-gram baselines are counted in-sample, noted in ``meta``; pass
            ``baseline_seqs``).
        data: Cached features (:func:`~futurelens_tl.lenses.future_data.build_features`).
        n_ahead: Lookaheads N.
        k: Top-k values of precision.
        split: Which split of ``data`` to score (None = all).
        modes: ``"teacher_forced"`` (the paper's protocol) and/or ``"free_running"``
            (``match`` of the lens's own greedy continuation; never called precision).
        controls: Subset of :data:`CONTROLS` (teacher-forced mode only).
        filter: None, ``"greedy_correct"`` (keep contexts whose greedy next token equals the
            text's, the paper's selection, §3) or ``"greedy_correct_all"`` (every label
            through ``y_{max N}`` equals the text).
        buckets: Model-confidence bucket edges (confidence = ``max P_model^N``).
        baseline: Add the n-gram baseline rows.
        baseline_seqs: Token sequences to count the n-grams on (default the training
            documents of ``data``).
        n_boot: Bootstrap resamples of documents (0 = no intervals).
        ci: Interval coverage.
        batch_size: Rows per forward (default the lens's ``eval_batch_size``).
        seed: Seed of the bootstrap and of the shuffled-h pairing.
        verbose: Progress bars while caching features.
        **feature_kw: Passed to ``build_features`` when ``texts`` is given.

    Returns:
        :class:`FutureLensEvaluation`.

    Raises:
        ValueError: No lenses, bad N / k / modes / controls / filter, an empty split.
    """
    from futurelens_tl.lenses.future import FutureLens

    if not lenses:
        raise ValueError("lenses is empty; give at least one FutureLens.")
    view = as_view(model)
    for lens in lenses:
        if not isinstance(lens, FutureLens):
            raise TypeError(f"lenses must hold FutureLens objects, got {type(lens).__name__}")
        lens.check_model(model)
    ns, ks = _as_n_tuple(n_ahead), _as_n_tuple(k, "k")
    if ks[0] < 1:
        raise ValueError(f"k={ks} must be >= 1.")
    if set(modes) - {"teacher_forced", "free_running"}:
        raise ValueError(f"modes={tuple(modes)}: allowed 'teacher_forced', 'free_running'.")
    if set(controls) - set(CONTROLS):
        raise ValueError(f"controls={tuple(controls)}: allowed {CONTROLS}.")
    if filter not in FILTERS:
        raise ValueError(f"filter={filter!r} is not one of {FILTERS}.")
    if data is None:
        if texts is None:
            raise ValueError("texts is None: give a corpus or cached features (data=).")
        cfg = lenses[0].config
        data = build_features(
            model, texts, n_max=max(ns), layers=sorted({x for ln in lenses for x in ln.layers}),
            label_source=feature_kw.pop("label_source", cfg.label_source),
            window=feature_kw.pop("window", cfg.window), seed=feature_kw.pop("seed", cfg.seed),
            splits=feature_kw.pop("splits", (0.0, 0.0, 1.0)), verbose=verbose, **feature_kw)
    elif feature_kw:
        feature_kw.pop("label_source", None)
        if feature_kw:
            raise TypeError(f"unexpected keyword arguments {sorted(feature_kw)} with data=.")
    data.check_model(model)
    for n in ns:
        data.check_n(n)
    idx = data.indices(split)
    n_before = len(idx)
    if filter is not None:
        mask = data.greedy_correct(0 if filter == "greedy_correct" else max(ns))
        idx = idx[mask[idx]]
    if len(idx) == 0:
        raise ValueError(f"the features have no examples in split={split!r} "
                         f"(filter={filter!r}: {n_before} before filtering).")
    col, notes = _Collector(), {}
    for lens in lenses:
        bs = batch_size or lens.config.eval_batch_size
        lens_ns = [n for n in ns if lens.is_prompt or n in lens.n_aheads]
        if len(lens_ns) < len(ns):
            warnings.warn(f"{lens.name}: no maps for N={sorted(set(ns) - set(lens_ns))}; "
                          "skipped.", stacklevel=2)
        for layer in lens.layers:
            data.layer_row(layer)
        with torch.no_grad():
            if "teacher_forced" in modes and lens_ns:
                _teacher_forced(lens, view, data, idx, lens_ns, ks, buckets, bs, controls,
                                col, notes, seed)
            if "free_running" in modes and lens_ns:
                _free_running(lens, view, data, idx, lens_ns, bs, col)
    if baseline:
        seqs = baseline_seqs if baseline_seqs is not None else data.train_seqs
        if seqs:
            notes["baseline_fit"] = ("baseline_seqs" if baseline_seqs is not None
                                     else "training documents of the features")
        else:
            seqs = [row.tolist() for row in data.tokens[idx]]
            notes["baseline_fit"] = "in-sample: evaluation contexts (no training documents)"
            warnings.warn("n-gram baselines are counted on the evaluation contexts themselves "
                          "(in-sample, optimistic); pass baseline_seqs=.", stacklevel=2)
        _baselines(view, data, idx, list(ns), ks, [list(s) for s in seqs], col)
    import pandas as pd

    rows = col.finish(data.doc[idx], n_boot, ci, seed)
    table = pd.DataFrame(rows, columns=COLUMNS + EXTRA_COLUMNS)
    meta = {"label_source": data.label_source, "n_examples": len(idx), "split": split,
            "filter": filter, "n_before_filter": n_before,
            "n_docs": int(data.doc[idx].unique().numel()), "buckets": list(buckets),
            "controls": list(controls), "bootstrap": {"n_boot": n_boot, "ci": ci,
                                                      "groups": "document", "seed": seed},
            "surprisal": "-ln P_model^N(argmax P_lens^N) (paper, §4.1)",
            "surprisal_label": "-ln P_lens^N(y_N) (the correct token under the lens)",
            "layer_convention": "block l = blocks.{l}.hook_resid_post (paper 'In-Layer' l+1)",
            "features": data.summary(), **notes,
            "fixed_prompts": {ln.name: ln.prompt_text for ln in lenses
                              if ln.method == "fixed_prompt"},
            "cross_layer": {ln.name: ln.target_layer for ln in lenses
                            if ln.target_layer is not None}}
    return FutureLensEvaluation(table=table, meta=meta, hits1=col.hits1, groups=data.doc[idx])


def bigram_table(tokens: Int[Tensor, "n pos"], k: int = 10) -> dict[int, list[int]]:
    """Top-``k`` successors of every token seen in ``tokens`` (bigram counts, ties by id)."""
    a = tokens[:, :-1].reshape(-1)
    b = tokens[:, 1:].reshape(-1)
    v = int(tokens.max()) + 1
    pair, cnt = torch.unique(a * v + b, return_counts=True)
    first, second = pair // v, pair % v
    order = torch.argsort(first * (cnt.max() + 1) * v + (cnt.max() - cnt) * v + second)
    table: dict[int, list[int]] = {}
    for f, s in zip(first[order].tolist(), second[order].tolist()):
        lst = table.setdefault(f, [])
        if len(lst) < k:
            lst.append(s)
    return table


def paper_figure(evaluation: Any, metric: str = "precision", k: int | None = 1) -> Any:
    """The paper's figure: ``metric`` against layer, one line per lens, one panel per N.

    Teacher-forced rows only; controls are drawn dotted, n-gram baselines as dashed
    horizontal lines in every panel. x axis: block index ``l`` (paper "In-Layer" ``l + 1``).
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    df = evaluation.to_dataframe() if hasattr(evaluation, "to_dataframe") else evaluation
    sel = df[(df.metric == metric) & (df["mode"] == "teacher_forced") & df.bucket.isna()]
    if metric == "precision":
        sel = sel[sel.k == k]
    ns = sorted(sel.n_ahead.unique())
    if not ns:
        raise ValueError(f"no teacher-forced rows for metric={metric!r}, k={k}.")
    fig, axes = plt.subplots(1, len(ns), figsize=(4 * len(ns), 3.2), squeeze=False, sharey=True)
    for ax, n in zip(axes[0], ns):
        for name, g in sel[sel.n_ahead == n].groupby("lens"):
            g = g.sort_values("layer")
            ctl = "control" in g and g["control"].notna().any()
            ax.plot(g.layer, g.value, marker="" if ctl else "o", ms=3, ls=":" if ctl else "-",
                    label=name)
            if "ci_low" in g and not ctl:
                ax.fill_between(g.layer.astype(float), g.ci_low, g.ci_high, alpha=0.15)
        bl = df[(df["mode"] == "baseline") & (df.metric == metric) & (df.n_ahead == n)]
        if metric == "precision":
            bl = bl[bl.k == k]
        for (_, row), ls in zip(bl.iterrows(), ("--", "-.", (0, (1, 3)))):
            ax.axhline(float(row.value), ls=ls, c="gray", lw=1, label=row.lens)
        ax.set_title(f"N={n}")
        ax.set_xlabel("block l (paper In-Layer l+1)")
    axes[0][0].set_ylabel(f"{metric}@{k}" if metric == "precision" else metric)
    axes[0][-1].legend(fontsize=6)
    fig.tight_layout()
    return fig
