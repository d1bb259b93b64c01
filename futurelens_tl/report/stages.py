"""The report's stages: model, lenses, future, grid, layer0, heads."""

from __future__ import annotations

import time
from typing import Any

from futurelens_tl._io import atomic_write
from futurelens_tl.report.cache import _cache_dir, _cached, _corpus, _features_cached, _key
from futurelens_tl.report.config import ReportUsageError, _budgets
from futurelens_tl.report.page import _flat_columns, _Report


# --------------------------------------------------------------------------------- stages
def _stage_model(rep: _Report, state: dict[str, Any]) -> None:
    import pandas as pd

    from futurelens_tl.models import load_model
    from futurelens_tl.models.view import as_view
    from futurelens_tl.viz.html import dataframe_html

    cfg = rep.cfg
    model = load_model(cfg.model, backend=cfg.backend, device=cfg.device, dtype=cfg.dtype,
                       verbose=cfg.verbose)
    view = as_view(model)
    texts = state["parsed"]["texts"]
    state.update(model=model, view=view, is_toy=cfg.model == "toy", seed=cfg.seed,
                 model_name=cfg.model, corpus_id=texts["id"] if texts else "toy-corpus")
    state["budgets"] = _budgets(cfg, state["is_toy"])
    desc = view.describe()
    extra = ""
    if state["is_toy"]:
        from futurelens_tl.toy import toy_stats

        stats = toy_stats(cfg.seed)
        desc["toy_training"] = stats
        keys = ("heldout_loss", "unigram_loss", "bigram_loss", "steps", "tokens", "train_time_s")
        rows = {k: stats[k] for k in keys if k in stats}
        ind = stats.get("induction")
        if isinstance(ind, dict):  # one readable row per induction statistic, never raw JSON
            rows.update({f"induction: {k}": v for k, v in ind.items()
                         if isinstance(v, (int, float, str))})
        if rows:
            vals = [f"{v:.3g}" if isinstance(v, float) else str(v) for v in rows.values()]
            extra = "<h4>What the toy model learned</h4>" + dataframe_html(
                pd.DataFrame({"statistic": list(rows), "value": vals}),
                caption="held-out loss in nats/token against the unigram and bigram "
                        "baselines; induction: attention and loss on repeated random tokens")
    rep.json(desc, "model")
    table = pd.DataFrame({"field": list(desc), "value": [
        f"{v:.4g}" if isinstance(v, float) else str(v) for v in desc.values()]})
    rep.add("Model", dataframe_html(table[table.field != "toy_training"]) + extra)


def _stage_lenses(rep: _Report, state: dict[str, Any]) -> None:
    import futurelens_tl as fl

    model, b = state["model"], state["budgets"]
    train = _corpus(state, "train", 400)
    key = _key(state, "tuned", b["tuned_tokens"], state["seed"], 400)
    tuned = _cached(
        rep, "tuned lens", _cache_dir(state) / f"tuned_{key}.safetensors",
        lambda: fl.TunedLens.fit(model, train, tokens=b["tuned_tokens"], seed=state["seed"],
                                 verbose=rep.cfg.verbose),
        lambda p: fl.TunedLens.load(p, model),
    )
    logit = fl.LogitLens(model)
    state.update(logit=logit, tuned=tuned)
    test = _corpus(state, "test", 200)
    ev = fl.evaluate(model, [logit, tuned], test, k=(1, 5, 10), max_windows=b["eval_windows"],
                     baseline_texts=train)
    parts = [
        "<p>Same-position readouts on held-out text: precision@k against the model's own "
        "next-token prediction, KL(final &#8214; lens) in nats, and the bigram baseline "
        "(counted on the training corpus; dashed line) as the control.</p>",
        rep.figure(ev.plot("precision", k=1), "lens_precision_at_1", "precision@1 by layer"),
        rep.figure(ev.plot("kl", k=None), "lens_kl", "KL to the final distribution by layer"),
        rep.table(_flat_columns(ev.pivot("kl")), "lens_kl_by_layer",
                  caption="KL(final || lens) in nats per layer (lower is closer to the output)"),
    ]
    atomic_write(rep.out / "tables" / "lens_evaluation_long.csv",
                 lambda tmp: ev.to_dataframe().to_csv(tmp, index=False))
    rep.add("Logit lens and tuned lens", "".join(parts))


def _stage_future(rep: _Report, state: dict[str, Any]) -> None:
    from futurelens_tl.lenses.future import FutureLens

    model, view, b = state["model"], state["view"], state["budgets"]
    layers = state["parsed"]["future_layers"] or (
        list(range(view.n_layers)) if state["is_toy"] or view.n_layers <= 6
        else sorted({round(i * (view.n_layers - 2) / 4) for i in range(5)}))
    bad = [x for x in layers if not -1 <= x < view.n_layers]
    if bad:
        raise ReportUsageError(f"future_layers={layers}: {bad} out of range for this model "
                               f"(layers -1 .. {view.n_layers - 1})")
    n_docs = b["future_docs"]
    common = {"n_max": 3, "window": 64, "layers": layers, "batch_size": 64}
    train_set = {**common, "contexts_per_window": 6, "seed": state["seed"],
                 "splits": (0.9, 0.1, 0.0), "n_docs": n_docs}
    test_set = {**common, "contexts_per_window": 4, "seed": state["seed"] + 1,
                "splits": (0.0, 0.0, 1.0), "n_docs": max(8, n_docs // 4)}

    def build(settings: dict[str, Any], split: str) -> Any:
        kw = {k: v for k, v in settings.items() if k != "n_docs"}
        return _features_cached(rep, state, split, settings, kw)

    t0 = time.perf_counter()
    data = build(train_set, "train")
    test = build(test_set, "test")
    test.bigram_tokens = data.bigram_tokens  # bigram counted on the training corpus
    test.train_seqs = data.train_seqs  # n-gram baselines: the training documents
    rep.substeps["future: features"] = time.perf_counter() - t0
    tag = _key(state, "future", train_set)
    t0 = time.perf_counter()
    lp = _cached(
        rep, "future lens (learned prompt)",
        _cache_dir(state) / f"future_learned_{tag}.safetensors",
        lambda: FutureLens.fit(model, None, "learned_prompt", layers=layers, n_ahead=(1, 2, 3),
                               data=data, verbose=rep.cfg.verbose, prompt_batch_size=32,
                               prompt_grad_accum=1, prompt_lr=3e-2, prompt_epochs=2),
        lambda p: FutureLens.load(p, model),
    )
    rep.substeps["future: learned prompt"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    lin = _cached(
        rep, "future lens (linear hidden)",
        _cache_dir(state) / f"future_linear_{tag}.safetensors",
        lambda: FutureLens.fit(model, None, "linear_hidden", layers=layers, n_ahead=(0, 1, 2, 3),
                               data=data, verbose=rep.cfg.verbose, linear_epochs=1),
        lambda p: FutureLens.load(p, model),
    )
    rep.substeps["future: linear hidden"] = time.perf_counter() - t0
    state["future"] = lp
    t0 = time.perf_counter()
    ev = FutureLens.evaluate_many([lp, lin], model, data=test, n_ahead=(0, 1, 2, 3),
                                  k=tuple(range(1, 11)), verbose=rep.cfg.verbose)
    rep.substeps["future: evaluation"] = time.perf_counter() - t0
    df = ev.to_dataframe()
    p1 = df[(df.metric == "precision") & (df.k == 1) & df.bucket.isna()]
    piv = _flat_columns(p1.pivot_table(index=["method", "mode", "layer"], columns="n_ahead",
                                       values="value"), prefix="N=")
    parts = [
        "<p>Pal et al. (2023): predict the token N positions after the next one from a single "
        "hidden state h<sub>T</sub><sup>l</sup>. <b>Teacher-forced</b> (the paper's protocol, "
        "token-fed for N &#8805; 1) and <b>free-running</b> greedy generation are reported "
        "separately; the bigram baseline (dashed) is the control for token-fed N = 1. Labels: "
        "the model's own greedy continuation. x axis: block l (paper In-Layer l+1).</p>",
        rep.figure(ev.plot("precision", k=1), "future_precision_at_1",
                   "precision@1 per layer, one panel per N"),
        rep.figure(ev.plot("surprisal", k=None), "future_surprisal", "surprisal per layer"),
        rep.table(piv, "future_precision_at_1",
                  caption="precision@1 per method, mode and source layer; columns: N tokens "
                          "after the next one"),
    ]
    atomic_write(rep.out / "tables" / "future_evaluation_long.csv",
                 lambda tmp: df.to_csv(tmp, index=False))
    rep.add("Future Lens", "".join(parts))


def _stage_grid(rep: _Report, state: dict[str, Any]) -> None:
    import futurelens_tl as fl

    prompts = rep.cfg.prompts
    if not prompts:
        if state["is_toy"]:
            from futurelens_tl.toy import TOY_PROMPTS

            prompts = list(TOY_PROMPTS[:3])
        else:
            prompts = ["Marty McFly from", "The Eiffel Tower is located in the city of"]
    lenses = [state[k] for k in ("logit", "tuned", "future") if k in state]
    parts = ["<p>One shared layer &#215; position grid per prompt: cell text is the top-1 "
             "token (whitespace shown as &#9251;), colour is switchable (probability, rank of "
             "the true next token, KL, entropy, a pinned token) on one scale across lenses; "
             "hover for the top-k; click a token to pin its trajectory. Future Lens cells add "
             "the free-running continuation.</p>"]
    grids = []
    for i, prompt in enumerate(prompts):
        title = f"Prompt {i + 1}: {prompt}"
        cmp = fl.compare(state["model"], prompt, lenses, title=title)
        parts.append(cmp.html())  # the grid shows ``title`` as its heading
        cmp.save_png(rep.out / "figures" / f"grid_{i}.png")
        rep.files.append(rep.out / "figures" / f"grid_{i}.png")
        grids.append(cmp.grid)
    rep.json(grids, "grids")
    rep.sections.insert(1, rep.Section("Lenses side by side", "".join(parts)))


def _esc(text: str) -> str:
    from futurelens_tl.viz.html import escape

    return escape(text)


def _stage_layer0(rep: _Report, state: dict[str, Any]) -> None:
    import pandas as pd

    from futurelens_tl.attention.layer0 import (
        count_bigrams,
        decompose_first_layer,
        detokenization_scores,
    )
    from futurelens_tl.data import token_windows

    model, view = state["model"], state["view"]
    try:
        dec = decompose_first_layer(model)
    except NotImplementedError as err:
        rep.add("Layer-0 attention from weights",
                f"<p>Not available for this model: {_esc(str(err))}</p>",
                note=f"positional embedding: {view.positional_embedding_type}")
        return
    texts = _corpus(state, "train", 300)
    windows = token_windows(model, texts, length=min(view.n_ctx, 64))
    counts = count_bigrams(windows, view.d_vocab)
    auroc = detokenization_scores(dec, counts)  # mean AUROC per head, unseen suffixes = 0
    flat = auroc.reshape(-1)
    auroc_df = pd.DataFrame({"head": range(flat.numel()),
                             "mean_auroc": [round(float(x), 3) for x in flat]})
    best = int(flat.argmax())
    contrib = dec.contributions(windows[:16])
    q = dec.default_query_pos()
    suffixes = [int(t) for t in windows[0, 2:7]]
    parts = [
        "<p>Kamoda et al. (2025): layer-0 attention decomposed exactly into token, position and "
        "mixed terms from the weights alone (no forward pass).</p>",
        rep.figure(dec.plot_positional_attention(q), "layer0_positional_attention",
                   "predicted positional attention"),
        rep.figure(dec.plot_position_heatmap(q), "layer0_Tpp", "T^pp heatmap"),
        rep.figure(contrib.plot("loo"), "layer0_contributions", "term contributions"),
        "<h4>Detokenization AUROC per head</h4>",
        rep.table(auroc_df, "layer0_detokenization_auroc",
                  caption="Mean AUROC over suffix tokens: does the head's token-token score "
                          "rank a suffix's frequent corpus prefixes above the others? 0.5 = "
                          "chance (the control). Below 0.5 means the head attends away from "
                          "frequent prefixes (it is not a detokenization head); suffixes never "
                          "seen in the corpus count as 0, which pulls heads below chance on a "
                          "small corpus."),
        f"<h4>Top prefixes (head {best}, the highest AUROC)</h4>",
        dec.top_prefix_table_html(suffixes, [best], k=5),
    ]
    rep.table(dec.to_dataframe(q), "layer0_positional", max_rows=0)
    rep.add("Layer-0 attention from weights", "".join(parts))


def _stage_heads(rep: _Report, state: dict[str, Any]) -> None:
    from futurelens_tl.attention.heads import tag_heads

    tags = tag_heads(state["model"], roles=state["parsed"]["roles"], seed=state["seed"],
                     verbose=rep.cfg.verbose)
    df = tags.to_dataframe()
    tagged = df[df.tagged] if "tagged" in df else df
    rep.figure(tags.plot(), "head_roles", "head-role grid", inline=False)  # PNG file only
    parts = [
        "<p>Every head scored for every role of the attention-heads survey (Zheng et al. 2024); "
        "colour = dominant tagged role, hover for all scores. Thresholds and their sources are "
        "in the table.</p>",
        tags._repr_html_(),
        "<h4>Tagged heads</h4>",
        rep.table(tagged, "head_roles_tagged", max_rows=60),
    ]
    rep.table(df, "head_roles_all", max_rows=0)
    rep.add("Attention-head roles", "".join(parts))
