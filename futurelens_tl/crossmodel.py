"""One Future Lens protocol, several models: one tidy table and one figure.

The Future Lens paper studied one model (GPT-J-6B) and asks (open question 2) how the
anticipation of later tokens varies across models. :func:`future_protocol` is the protocol
of ``docs/future_lens.md`` for one model — document-grouped features, the chosen methods
fitted on the training documents, teacher-forced evaluation on held-out documents with the
``mean_h`` / ``shuffled_h`` / ``no_patch`` controls, n-gram baselines counted on the training
documents and document-bootstrap intervals — and :func:`cross_model` runs it on several models
(the toy, SmolLM2, any local model) and stacks the results with ``model`` and relative
``depth = (l + 1) / L`` columns.

Examples:
    >>> import futurelens_tl as fl
    >>> from futurelens_tl.crossmodel import cross_model
    >>> from futurelens_tl.toy import toy_corpus
    >>> toy = fl.toy_model(verbose=False)
    >>> res = cross_model({"toy": (toy, toy_corpus(16).texts, toy_corpus(6, doc_seed=9).texts)},
    ...                   methods=("linear_hidden",), layers=[1, 3], n_ahead=(1,),
    ...                   linear_epochs=0, n_boot=50, window=48)
    >>> sorted(res.table.model.unique()), "depth" in res.table
    (['toy'], True)
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from futurelens_tl.models.view import as_view

__all__ = ["CrossModelResult", "cross_model", "future_protocol"]


def future_protocol(
    model: Any,
    train_texts: Sequence[str],
    test_texts: Sequence[str],
    *,
    methods: Sequence[str] = ("learned_prompt", "linear_hidden"),
    layers: Sequence[int] | None = None,
    n_ahead: Sequence[int] = (0, 1, 2, 3),
    k: Sequence[int] = (1, 5),
    window: int = 64,
    train_contexts_per_window: int = 2,
    test_contexts_per_window: int = 4,
    val_fraction: float = 0.15,
    filter: str | None = None,
    baseline_texts: Sequence[str] | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    verbose: bool = False,
    **config: Any,
) -> Any:
    """Fit ``methods`` on ``train_texts`` and evaluate them on ``test_texts`` with controls.

    Args:
        model: The model.
        train_texts: Training documents (validation is a document-grouped part of them).
        test_texts: Held-out documents.
        methods: Future Lens methods to fit (``fixed_prompt`` takes ``fixed_prompt=...``).
        layers: Source layers (default every block).
        n_ahead: Lookaheads N scored; blind maps are fitted for each, the learned prompt on
            ``train_n`` (default ``(1,)``, the paper's).
        k: Top-k values of precision.
        window: Window length (per document, never across documents).
        train_contexts_per_window: Source positions per training window.
        test_contexts_per_window: Source positions per held-out window.
        val_fraction: Fraction of training documents held out for model selection.
        filter: Evaluation filter (``"greedy_correct"``, see ``evaluate_many``).
        baseline_texts: Documents the n-gram baselines are counted on (default
            ``train_texts``; never the held-out ones).
        n_boot: Bootstrap resamples of documents.
        seed: Seed of positions, splits, prompt init and bootstrap.
        verbose: Progress bars.
        **config: :class:`~futurelens_tl.lenses.future.FutureLensConfig` fields.

    Returns:
        A :class:`~futurelens_tl.lenses.future_eval.FutureLensEvaluation` (its ``meta`` adds
        timings).
    """
    from futurelens_tl.lenses.future import FutureLens
    from futurelens_tl.lenses.future_data import build_features, doc_windows

    view = as_view(model)
    lays = list(range(view.n_layers)) if layers is None else list(layers)
    n_max = max(n_ahead)
    t0 = time.perf_counter()
    train = build_features(model, list(train_texts), n_max=n_max, layers=lays, window=window,
                           contexts_per_window=train_contexts_per_window,
                           splits=(1 - val_fraction, val_fraction, 0.0), seed=seed,
                           verbose=verbose)
    test = build_features(model, list(test_texts), n_max=n_max, layers=lays, window=window,
                          contexts_per_window=test_contexts_per_window, splits=(0.0, 0.0, 1.0),
                          seed=seed + 1, verbose=verbose)
    # n-grams counted on every training document (not only the sampled windows)
    wins, valid, _ = doc_windows(view, list(baseline_texts or train_texts), window)
    seqs = [w[: int(v)].tolist() for w, v in zip(wins, valid)]
    t_feat = time.perf_counter() - t0
    lenses, fit_s = [], {}
    for method in methods:
        t1 = time.perf_counter()
        ns = tuple(n_ahead) if method != "learned_prompt" else tuple(n for n in n_ahead if n)
        lenses.append(FutureLens.fit(model, None, method, layers=lays, n_ahead=ns or (1,),
                                     data=train, verbose=verbose, seed=seed, **config))
        fit_s[method] = time.perf_counter() - t1
    t1 = time.perf_counter()
    ev = FutureLens.evaluate_many(lenses, model, data=test, n_ahead=tuple(n_ahead), k=tuple(k),
                                  modes=("teacher_forced",), baseline_seqs=seqs, filter=filter,
                                  n_boot=n_boot, seed=seed, verbose=verbose)
    ev.meta.update(features_s=t_feat, fit_s=fit_s, eval_s=time.perf_counter() - t1,
                   n_train=len(train.indices("train")), n_val=len(train.indices("val")),
                   n_test=len(test), training={ln.name: ln.training_summary for ln in lenses})
    return ev


@dataclass
class CrossModelResult:
    """Stacked evaluations of several models.

    Attributes:
        table: The long evaluation table with ``model``, ``n_layers`` and ``depth`` columns.
        evaluations: Each model's own evaluation.
    """

    table: Any
    evaluations: dict[str, Any] = field(default_factory=dict)

    def to_dataframe(self) -> Any:
        return self.table.copy()

    def figure(self, metric: str = "precision", k: int = 1) -> Any:
        """``metric`` against relative depth, one panel per N, one line per (model, lens).

        Controls are dotted; each model's bigram is a dashed line in its colour.
        """
        import matplotlib

        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt

        t = self.table[(self.table.metric == metric) & self.table.bucket.isna()]
        if metric == "precision":
            t = t[t.k == k]
        ns = sorted(t.n_ahead.dropna().unique())
        fig, axes = plt.subplots(1, len(ns), figsize=(4.2 * len(ns), 3.4), squeeze=False,
                                 sharey=True)
        colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
        for ax, n in zip(axes[0], ns):
            tn = t[t.n_ahead == n]
            for mi, (mname, tm) in enumerate(tn.groupby("model", sort=False)):
                col = colours[mi % len(colours)]
                lines = tm[tm["mode"] == "teacher_forced"]
                for j, (lens, g) in enumerate(lines.groupby("lens", sort=False)):
                    g = g.sort_values("depth")
                    ctl = g["control"].notna().any()
                    ax.plot(g.depth, g.value, ls=":" if ctl else ["-", "--", "-."][j % 3],
                            marker="" if ctl else "o", ms=3, color=col, alpha=0.6 if ctl else 1,
                            label=f"{mname}: {lens}")
                bg = tm[(tm["mode"] == "baseline") & (tm.lens == "bigram")]
                if len(bg):
                    ax.axhline(float(bg.value.iloc[0]), ls="--", color=col, lw=0.8,
                               label=f"{mname}: bigram")
            ax.set_title(f"N={int(n)}")
            ax.set_xlabel("relative depth (l+1)/L")
        axes[0][0].set_ylabel(f"{metric}@{k}" if metric == "precision" else metric)
        axes[0][-1].legend(fontsize=5)
        fig.tight_layout()
        return fig


def cross_model(runs: Mapping[str, tuple[Any, Sequence[str], Sequence[str]]],
                **protocol: Any) -> CrossModelResult:
    """Run :func:`future_protocol` on each ``name -> (model, train_texts, test_texts)``.

    Keyword arguments go to :func:`future_protocol` (the same protocol for every model;
    ``layers`` may be a dict ``name -> layers``).

    Returns:
        :class:`CrossModelResult`.
    """
    import pandas as pd

    if not runs:
        raise ValueError("runs is empty; give at least one name -> (model, train, test).")
    layers = protocol.pop("layers", None)
    parts, evals = [], {}
    for name, (model, train, test) in runs.items():
        lays = layers.get(name) if isinstance(layers, Mapping) else layers
        ev = future_protocol(model, train, test, layers=lays, **protocol)
        nl = as_view(model).n_layers
        t = ev.to_dataframe()
        t.insert(0, "model", name)
        t["n_layers"] = nl
        t["depth"] = (t.layer.astype(float) + 1) / nl
        parts.append(t)
        evals[name] = ev
    return CrossModelResult(table=pd.concat(parts, ignore_index=True), evaluations=evals)
