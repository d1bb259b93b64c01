"""Future Lens speed and memory (reference future-lens.md §7).

* Feature extraction: one forward pass over the training contexts for all layers and methods
  (counted with ``FORWARD_COUNTER``), extraction time vs training time, peak memory.
* Evaluation of the learned prompt over all layers and N = 0..3 (teacher-forced): our batched
  implementation against an unbatched per-example, per-layer, per-N loop written the way the
  official code works (one forward of batch 1 per (example, layer, N), patch every re-run), on
  the same model and data, in one run. Also checks both give the same precision@1.
"""

from __future__ import annotations

import os
import resource
import time

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("FUTURELENS_NO_PROGRESS", "1")


def _model():
    import futurelens_tl as fl

    try:
        from futurelens_tl.toy import CHECKPOINT_DIR

        if CHECKPOINT_DIR.exists():  # never train the toy model inside a benchmark
            return fl.toy_model(verbose=False), "toy"
    except Exception:
        pass
    if True:  # toy checkpoint unavailable: a random GPT-2-style native bridge
        from transformer_lens.config import TransformerBridgeConfig
        from transformer_lens.model_bridge import TransformerBridge

        cfg = TransformerBridgeConfig(d_model=128, d_head=32, n_heads=4, n_layers=4, n_ctx=128,
                                      d_vocab=1536, d_mlp=512, act_fn="gelu", seed=0,
                                      normalization_type="LN",
                                      positional_embedding_type="standard")
        return TransformerBridge.boot_native(cfg).eval(), "random-native-4L"


def _texts(model, n: int) -> torch.Tensor | list[str]:
    if getattr(model, "tokenizer", None) is None:
        g = torch.Generator().manual_seed(0)
        t = torch.randint(1, model.cfg.d_vocab, (n, 64), generator=g)
        t[:, 0] = 0
        return t
    try:
        from futurelens_tl.toy import toy_corpus

        return toy_corpus(n_docs=n, doc_seed=12345).texts
    except Exception:
        g = torch.Generator().manual_seed(0)
        t = torch.randint(1, model.cfg.d_vocab, (n, 64), generator=g)
        t[:, 0] = 0
        return t


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def official_style_eval(lens, model, data, idx, ns) -> dict[tuple[int, int], float]:
    """Per example, per layer, per N: a batch-1 forward with hooks (official ``test_step``)."""
    from futurelens_tl.model import as_view

    view = as_view(model)
    m = lens.prompt_length
    out = {}
    for layer in lens.layers:
        li = lens.layers.index(layer)
        for n in ns:
            hits = 0
            for i in idx.tolist():
                h = data.sources[data.layer_row(layer), i]
                toks = torch.cat([torch.zeros(m, dtype=torch.long), data.labels[i, :n]])[None]

                def emb(x, hook, _li=li):
                    return torch.cat([lens.soft_prompt[_li][None].to(x.dtype), x[:, m:]], 1)

                def patch(x, hook, _h=h):
                    x = x.clone()
                    x[0, m - 1] = _h
                    return x

                with torch.no_grad():
                    logits = view.run_with_hooks(toks, [("hook_embed", emb),
                                                        (view.resid_hook(layer), patch)])
                hits += int(logits[0, -1].argmax()) == int(data.labels[i, n])
            out[(layer, n)] = hits / len(idx)
    return out


def main(quick: bool = False) -> list[dict]:
    import futurelens_tl as fl
    from futurelens_tl.data import FORWARD_COUNTER
    from futurelens_tl.lenses.future import FutureLens, build_features

    torch.manual_seed(0)
    model, kind = _model()
    view = fl.as_view(model)
    n_docs = 60 if quick else 400
    rows: list[dict] = []
    bench = "future_lens"

    FORWARD_COUNTER.reset()
    rss0 = _peak_rss_mb()
    t0 = time.perf_counter()
    data = build_features(model, _texts(model, n_docs), n_max=3, contexts_per_window=4,
                          batch_size=32, verbose=False, splits=(0.8, 0.1, 0.1))
    t_feat = time.perf_counter() - t0
    n_batches = -(-len(data) // 32)
    rows += [
        dict(benchmark=bench, metric="contexts", value=len(data), unit="",
             target="", note=f"model={kind}, L={view.n_layers}, d={view.d_model}"),
        dict(benchmark=bench, metric="feature passes per batch (all layers, all methods)",
             value=FORWARD_COUNTER.passes / n_batches, unit="passes", target="1",
             note=f"{FORWARD_COUNTER.passes} passes for {n_batches} batches; greedy labels took "
             f"{data.label_passes} extra logits-only passes"),
        dict(benchmark=bench, metric="feature extraction time", value=data.meta["extract_s"],
             unit="s", target="", note=f"label generation {data.meta['label_s']:.2f}s; "
             f"total build {t_feat:.2f}s"),
    ]
    passes_after_extract = FORWARD_COUNTER.passes
    train_times = {}
    lenses = {}
    for method, kw in [("linear_hidden", dict(linear_epochs=1, n_ahead=(0, 1, 2, 3))),
                       ("learned_prompt", dict(prompt_epochs=1, prompt_batch_size=16,
                                               prompt_grad_accum=1, prompt_lr=1e-2))]:
        nk = kw.pop("n_ahead", (1, 2, 3))
        t0 = time.perf_counter()
        lenses[method] = FutureLens.fit(model, None, method, n_ahead=nk, data=data,
                                        verbose=False, **kw)
        train_times[method] = time.perf_counter() - t0
        rows.append(dict(benchmark=bench, metric=f"training time {method}",
                         value=train_times[method], unit="s", target="",
                         note=f"all {view.n_layers} layers, cached features"))
    rows.append(dict(benchmark=bench, metric="context passes during training",
                     value=FORWARD_COUNTER.passes - passes_after_extract, unit="passes",
                     target="0", note="training reuses the cache"))
    cache_mb = (data.sources.numel() + data.targets.numel()) * 4 / 1e6
    rows.append(dict(benchmark=bench, metric="peak RSS (process)", value=_peak_rss_mb(),
                     unit="MB", target="", note=f"{rss0:.0f} MB before extraction; "
                     f"feature cache {cache_mb:.1f} MB"))

    lens = lenses["learned_prompt"]
    idx = data.indices("test")[: (12 if quick else 40)]
    sub = data.subset(idx)
    ns = (0, 1, 2, 3)
    t0 = time.perf_counter()
    ev = FutureLens.evaluate_many([lens], model, data=sub, split=None, n_ahead=ns,
                                  modes=("teacher_forced",), baseline=False, controls=(),
                                  n_boot=0, verbose=False)
    t_batched = time.perf_counter() - t0
    t0 = time.perf_counter()
    ref = official_style_eval(lens, model, sub, torch.arange(len(sub)), ns)
    t_loop = time.perf_counter() - t0
    df = ev.to_dataframe()
    p1 = df[(df.metric == "precision") & (df.k == 1) & df.bucket.isna()]
    agree = all(abs(float(p1[(p1.layer == la) & (p1.n_ahead == n)].value.iloc[0]) - v) < 1e-9
                for (la, n), v in ref.items())
    rows += [
        dict(benchmark=bench, metric="eval batched (all layers, N=0..3, 10 metrics)",
             value=t_batched, unit="s", target="",
             note=f"{len(idx)} examples x {len(lens.layers)} layers x 4 N"),
        dict(benchmark=bench, metric="eval official-style loop (precision@1 only)",
             value=t_loop, unit="s", target="", note="batch-1 forward per (example, layer, N)"),
        dict(benchmark=bench, metric="eval speed-up batched vs loop", value=t_loop / t_batched,
             unit="x", target=">= 10", note=f"same precision@1: {agree}"),
    ]
    return rows


if __name__ == "__main__":
    for r in main(quick=True):
        print(r)
