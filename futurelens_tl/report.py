"""The main job: one command that exercises every capability and writes an offline report.

``futurelens-tl report --model toy --out DIR`` (or :func:`build_report`) runs these stages, each
timed, with a progress bar over them:

1. ``model``   load (or train and cache) the model; its summary;
2. ``lenses``  train (cached) the tuned lens; evaluate it against the logit lens and the bigram
               baseline; the side-by-side grid for a few prompts (logit | tuned | future);
3. ``future``  cache Future Lens features once, train (cached) the learned prompt and the
               linear-hidden map, evaluate both teacher-forced and free-running (the paper's
               figure);
4. ``layer0``  the weight-only layer-0 decomposition: positional attention, T^pp heatmap, term
               contributions, detokenization AUROC per head and top prefixes;
5. ``heads``   head-role tagging: the layer x head grid and the full score table.

Outputs in ``DIR``: ``index.html`` (every asset inlined, opens offline), ``figures/*.png``,
``tables/*.csv`` and ``tables/*.json``. Trained lenses are cached under
``$FUTURELENS_CACHE/report/<fingerprint>/`` (default: the user cache dir) so a second run only
evaluates.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from futurelens_tl.data import progress
from futurelens_tl.model import as_view, load_model

__all__ = ["STAGES", "ReportConfig", "ReportResult", "build_report"]

STAGES = ("lenses", "future", "layer0", "heads")


@dataclass
class ReportConfig:
    """What :func:`build_report` does; ``None`` budgets pick a model-dependent default."""

    model: str = "toy"
    out: Path = Path("report")
    backend: str = "auto"
    device: str | None = None
    dtype: str | None = None
    prompts: list[str] | None = None
    tuned_tokens: int | None = None
    future_examples: int | None = None
    future_layers: str | None = None
    eval_windows: int | None = None
    seed: int = 0
    verbose: bool = True
    stages: list[str] | None = None
    texts: str | None = None


@dataclass
class ReportResult:
    """Where the report went and how long each stage took (seconds)."""

    index: Path
    timings: dict[str, float] = field(default_factory=dict)
    files: list[Path] = field(default_factory=list)

    def summary_table(self) -> str:
        total = sum(self.timings.values())
        lines = ["stage        seconds", "-----------  -------"]
        lines += [f"{k:<11}  {v:7.1f}" for k, v in self.timings.items()]
        lines += ["-----------  -------", f"{'total':<11}  {total:7.1f}"]
        return "\n".join(lines)


def _cache_root() -> Path:
    env = os.environ.get("FUTURELENS_CACHE")
    if env:
        return Path(env)
    import platformdirs

    return Path(platformdirs.user_cache_dir("futurelens_tl"))


class _Report:
    def __init__(self, cfg: ReportConfig):
        from futurelens_tl.viz.report import Section

        self.cfg = cfg
        self.out = Path(cfg.out)
        (self.out / "figures").mkdir(parents=True, exist_ok=True)
        (self.out / "tables").mkdir(parents=True, exist_ok=True)
        self.sections: list[Section] = []
        self.Section = Section
        self.timings: dict[str, float] = {}
        self.files: list[Path] = []

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        t0 = time.perf_counter()
        yield
        self.timings[name] = time.perf_counter() - t0

    def figure(self, fig: Any, name: str, alt: str) -> str:
        """Save ``fig`` as PNG beside the report and return it inlined (base64) as HTML."""
        import matplotlib.pyplot as plt

        from futurelens_tl.viz.figures import save_figure
        from futurelens_tl.viz.html import figure_html

        path = self.out / "figures" / f"{name}.png"
        save_figure(fig, path)
        self.files.append(path)
        html = figure_html(fig, alt=alt)
        plt.close(fig)
        return html

    def table(self, df: Any, name: str, *, max_rows: int = 30) -> str:
        from futurelens_tl.viz.html import dataframe_html

        path = self.out / "tables" / f"{name}.csv"
        tmp = path.with_suffix(".csv.tmp")
        df.to_csv(tmp, index=False)
        os.replace(tmp, path)
        self.files.append(path)
        return dataframe_html(df.head(max_rows))

    def json(self, obj: Any, name: str) -> None:
        path = self.out / "tables" / f"{name}.json"
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(obj, indent=2, default=str))
        os.replace(tmp, path)
        self.files.append(path)

    def add(self, title: str, html: str, *, level: int = 2, note: str | None = None) -> None:
        self.sections.append(self.Section(title, html, level=level, note=note))


def _budgets(cfg: ReportConfig, is_toy: bool) -> dict[str, Any]:
    return {
        "tuned_tokens": cfg.tuned_tokens or (2**17 if is_toy else 2**20),
        "future_docs": cfg.future_examples or (600 if is_toy else 2000),
        "eval_windows": cfg.eval_windows or (48 if is_toy else 64),
    }


def build_report(cfg: ReportConfig) -> ReportResult:
    """Run the stages of the module docstring and write ``cfg.out/index.html``.

    Examples:
        >>> from futurelens_tl.report import ReportConfig, build_report
        >>> res = build_report(ReportConfig(out=Path(tempfile.mkdtemp()), stages=["layer0"],
        ...                                 verbose=False))  # doctest: +SKIP
    """
    stages = list(STAGES) if not cfg.stages else list(cfg.stages)
    unknown = sorted(set(stages) - set(STAGES))
    if unknown:
        raise ValueError(f"stages={unknown} unknown; allowed: {', '.join(STAGES)}")
    torch.manual_seed(cfg.seed)
    rep = _Report(cfg)
    bar = progress(["model", *stages], verbose=cfg.verbose, desc="report")
    state: dict[str, Any] = {}
    for name in bar:
        if hasattr(bar, "set_postfix_str"):
            bar.set_postfix_str(name)
        with rep.stage(name):
            {"model": _stage_model, "lenses": _stage_lenses, "future": _stage_future,
             "layer0": _stage_layer0, "heads": _stage_heads}[name](rep, state)
    if "lenses" in stages:  # the grid needs every lens, so it is drawn once all are trained
        with rep.stage("grid"):
            _stage_grid(rep, state)
    rep.add("Stage timings", rep.table(_timings_frame(rep.timings), "timings"))
    from futurelens_tl.viz.report import write_report

    view = state["view"]
    index = write_report(
        rep.out / "index.html", f"futurelens_tl report: {state['model_name']}", rep.sections,
        subtitle="Lenses side by side, the Future Lens, layer-0 attention from weights, "
                 "head roles.",
        meta={"model": state["model_name"], "fingerprint": view.fingerprint,
              "basis": view.basis, "generated": time.strftime("%Y-%m-%d %H:%M")},
    )
    rep.json(rep.timings, "timings")
    return ReportResult(index=index, timings=rep.timings, files=rep.files)


def _timings_frame(timings: dict[str, float]) -> Any:
    import pandas as pd

    df = pd.DataFrame({"stage": list(timings), "seconds": [round(v, 1) for v in timings.values()]})
    return pd.concat([df, pd.DataFrame({"stage": ["total"],
                                        "seconds": [round(sum(timings.values()), 1)]})])


# --------------------------------------------------------------------------------- stages
def _corpus(state: dict[str, Any], split: str, n: int) -> list[str]:
    """Training or held-out text: ``--texts FILE`` (last 10 % held out), else the toy corpus.

    Any tokenizer can read the toy corpus; use real text for real models.
    """
    path = state.get("texts")
    if path:
        from futurelens_tl.data import load_texts

        texts = load_texts(path)
        cut = max(1, len(texts) // 10)
        return (texts[:-cut] if split == "train" else texts[-cut:])[:n]
    from futurelens_tl.toy import toy_texts

    return toy_texts(split, n=n, seed=state["seed"])


def _stage_model(rep: _Report, state: dict[str, Any]) -> None:
    from futurelens_tl.viz.html import dataframe_html

    cfg = rep.cfg
    model = load_model(cfg.model, backend=cfg.backend, device=cfg.device, dtype=cfg.dtype)
    view = as_view(model)
    state.update(model=model, view=view, is_toy=cfg.model == "toy", seed=cfg.seed,
                 model_name=cfg.model, texts=cfg.texts)
    state["budgets"] = _budgets(cfg, state["is_toy"])
    desc = view.describe()
    extra = ""
    if state["is_toy"]:
        from futurelens_tl.toy import toy_stats

        stats = toy_stats(cfg.seed)
        desc["toy_training"] = stats
        keys = ("heldout_loss", "unigram_loss", "bigram_loss", "steps", "tokens", "train_time_s")
        rows = {k: stats[k] for k in keys if k in stats}
        if "induction" in stats:
            rows["induction"] = json.dumps(stats["induction"], default=str)
        if rows:
            import pandas as pd

            extra = "<h4>What the toy model learned</h4>" + dataframe_html(
                pd.DataFrame({"statistic": list(rows), "value": [str(v) for v in rows.values()]}))
    rep.json(desc, "model")
    import pandas as pd

    table = pd.DataFrame({"field": list(desc), "value": [str(v) for v in desc.values()]})
    rep.add("Model", dataframe_html(table[table.field != "toy_training"]) + extra)


def _cached(path: Path, train: Any, load: Any) -> Any:
    if path.exists():
        try:
            return load(path)
        except Exception:  # stale or foreign artifact: retrain and overwrite atomically
            pass
    obj = train()
    path.parent.mkdir(parents=True, exist_ok=True)
    obj.save(path)
    return obj


def _stage_lenses(rep: _Report, state: dict[str, Any]) -> None:
    import futurelens_tl as fl

    model, view, b = state["model"], state["view"], state["budgets"]
    train = _corpus(state, "train", 400)
    cache = _cache_root() / "report" / view.fingerprint
    tuned = _cached(
        cache / f"tuned_{b['tuned_tokens']}_{state['seed']}.safetensors",
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
        "(counted on the training corpus).</p>",
        rep.figure(ev.plot("precision", k=1), "lens_precision_at_1", "precision@1 by layer"),
        rep.figure(ev.plot("kl", k=None), "lens_kl", "KL to the final distribution by layer"),
        rep.table(ev.pivot("kl"), "lens_kl_by_layer"),
    ]
    ev.to_dataframe().to_csv(rep.out / "tables" / "lens_evaluation_long.csv", index=False)
    rep.add("Logit lens and tuned lens", "".join(parts))


def _stage_future(rep: _Report, state: dict[str, Any]) -> None:
    from futurelens_tl.lenses.future import FutureLens
    from futurelens_tl.lenses.future_data import build_features

    model, view, b = state["model"], state["view"], state["budgets"]
    layers = ([int(x) for x in rep.cfg.future_layers.split(",")] if rep.cfg.future_layers
              else list(range(view.n_layers)))
    n_docs = b["future_docs"]
    train = _corpus(state, "train", n_docs)
    data = build_features(model, train, n_max=3, window=64, contexts_per_window=6,
                          layers=layers, seed=state["seed"], splits=(0.9, 0.1, 0.0),
                          batch_size=64, verbose=rep.cfg.verbose)
    test = build_features(model, _corpus(state, "test", 150), n_max=3, window=64,
                          contexts_per_window=4, layers=layers, seed=state["seed"] + 1,
                          splits=(0.0, 0.0, 1.0), batch_size=64, verbose=rep.cfg.verbose)
    test.bigram_tokens = data.bigram_tokens  # bigram counted on the training corpus
    test.train_seqs = data.train_seqs  # n-gram baselines: the training documents
    cache = _cache_root() / "report" / view.fingerprint
    tag = f"{n_docs}_{'-'.join(map(str, layers))}_{state['seed']}"
    lp = _cached(
        cache / f"future_learned_{tag}.safetensors",
        lambda: FutureLens.fit(model, None, "learned_prompt", layers=layers, n_ahead=(1, 2, 3),
                               data=data, verbose=rep.cfg.verbose, prompt_batch_size=32,
                               prompt_grad_accum=1, prompt_lr=3e-2, prompt_epochs=2),
        lambda p: FutureLens.load(p, model),
    )
    lin = _cached(
        cache / f"future_linear_{tag}.safetensors",
        lambda: FutureLens.fit(model, None, "linear_hidden", layers=layers, n_ahead=(0, 1, 2, 3),
                               data=data, verbose=rep.cfg.verbose, linear_epochs=1),
        lambda p: FutureLens.load(p, model),
    )
    state["future"] = lp
    ev = FutureLens.evaluate_many([lp, lin], model, data=test, n_ahead=(0, 1, 2, 3),
                                  k=tuple(range(1, 11)), verbose=rep.cfg.verbose)
    df = ev.to_dataframe()
    parts = [
        "<p>Pal et al. (2023): predict the token N positions after the next one from a single "
        "hidden state h<sub>T</sub><sup>l</sup>. <b>Teacher-forced</b> (the paper's protocol, "
        "token-fed for N &#8805; 1) and <b>free-running</b> greedy generation are reported "
        "separately; the bigram baseline is the fair comparison for token-fed N = 1. Labels: "
        "the model's own greedy continuation. x axis: block l (paper In-Layer l+1).</p>",
        rep.figure(ev.plot("precision", k=1), "future_precision_at_1",
                   "precision@1 per layer, one panel per N"),
        rep.figure(ev.plot("surprisal", k=None), "future_surprisal", "surprisal per layer"),
        rep.table(df[(df.metric == "precision") & (df.k == 1) & df.bucket.isna()]
                  .pivot_table(index=["method", "mode", "layer"], columns="n_ahead",
                               values="value").reset_index(), "future_precision_at_1"),
    ]
    df.to_csv(rep.out / "tables" / "future_evaluation_long.csv", index=False)
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
             "token, colour is switchable (probability, rank of the true next token, KL, "
             "entropy, a pinned token) on one scale across lenses; hover for the top-k; click "
             "a token to pin its trajectory. Future Lens cells add the free-running "
             "continuation.</p>"]
    grids = []
    for i, prompt in enumerate(prompts):
        cmp = fl.compare(state["model"], prompt, lenses)
        parts.append(cmp.html())
        cmp.save_png(rep.out / "figures" / f"grid_{i}.png")
        rep.files.append(rep.out / "figures" / f"grid_{i}.png")
        grids.append(cmp.grid)
    rep.json(grids, "grids")
    rep.sections.insert(1, rep.Section("Lenses side by side", "".join(parts)))


def _stage_layer0(rep: _Report, state: dict[str, Any]) -> None:
    import pandas as pd

    from futurelens_tl.attention.layer0 import (
        count_bigrams,
        decompose_first_layer,
        detokenization_scores,
    )
    from futurelens_tl.data import token_windows

    model, view = state["model"], state["view"]
    if view.positional_embedding_type != "standard":
        rep.add("Layer-0 attention from weights",
                "<p>Skipped: the weight-only decomposition needs learned absolute positions "
                f"(this model uses {view.positional_embedding_type}).</p>")
        return
    dec = decompose_first_layer(model)
    texts = _corpus(state, "train", 300)
    windows = token_windows(model, texts, length=min(view.n_ctx, 64))
    counts = count_bigrams(windows, view.d_vocab)
    auroc = detokenization_scores(dec, counts)  # mean AUROC per head, unseen suffixes = 0
    auroc_df = pd.DataFrame({"head": range(view.n_heads),
                             "mean_auroc": [round(float(x), 4) for x in auroc.reshape(-1)]})
    best = int(auroc.reshape(-1).argmax())
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
        rep.table(auroc_df, "layer0_detokenization_auroc"),
        f"<h4>Top prefixes (head {best}, the highest AUROC)</h4>",
        dec.top_prefix_table_html(suffixes, [best], k=5),
    ]
    rep.table(dec.to_dataframe(q), "layer0_positional")
    rep.add("Layer-0 attention from weights", "".join(parts))


def _stage_heads(rep: _Report, state: dict[str, Any]) -> None:
    from futurelens_tl.attention.heads import tag_heads

    tags = tag_heads(state["model"], seed=state["seed"], verbose=rep.cfg.verbose)
    df = tags.to_dataframe()
    tagged = df[df.tagged] if "tagged" in df else df
    parts = [
        "<p>Every head scored for every role of the attention-heads survey (Zheng et al. 2024); "
        "colour = dominant tagged role, hover for all scores. Thresholds and their sources are "
        "in the table.</p>",
        tags._repr_html_(),
        rep.figure(tags.plot(), "head_roles", "head-role grid"),
        "<h4>Tagged heads</h4>",
        rep.table(tagged, "head_roles_tagged", max_rows=60),
    ]
    rep.table(df, "head_roles_all", max_rows=0)
    rep.add("Attention-head roles", "".join(parts))
