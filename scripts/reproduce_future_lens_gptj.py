"""Reproduce the Future Lens on GPT-J-6B (Pal et al. 2023) and print our table next to theirs.

Needs a GPU with ~40 GB (fp32 GPT-J extraction) or ~16 GB (bf16), the Hugging Face hub, and a
corpus. NOT run in CI. Reference ``future-lens.md`` §2.5 (settings), §3 (data), §4 (protocol),
§5 (published numbers), §5.7 (acceptance targets).

Usage::

    python scripts/reproduce_future_lens_gptj.py --texts pile_sample.jsonl \
        [--official-prompt gptj_soft_prefix.pt] [--n-train 10000] [--n-test 1000] \
        [--layers 0-27] [--methods learned_prompt,fixed_prompt,linear_hidden] [--quick]

``--texts`` is a ``.jsonl`` file with a ``text`` field (e.g. Pile documents; the paper used
Pile shard 0), or a plain text file with blank-line separated documents. ``--official-prompt``
evaluates the published block-13 soft prompt (``demo/gptj_soft_prefix.pt`` in
github.com/KoyenaPal/future-lens) alongside ours and runs the "Marty McFly from" readout.
"""

from __future__ import annotations

import argparse
import json
import time

import futurelens_tl as fl
from futurelens_tl.data import load_texts
from futurelens_tl.lenses.future import (
    PAPER_GPTJ_RESULTS,
    FutureLens,
    FutureLensConfig,
    build_features,
)


def parse_layers(spec: str, n_layers: int) -> list[int]:
    if spec == "all":
        return list(range(n_layers))
    out: list[int] = []
    for part in spec.split(","):
        if "-" in part:
            a, b = part.split("-")
            out += list(range(int(a), int(b) + 1))
        else:
            out.append(int(part))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--model", default="EleutherAI/gpt-j-6B")
    ap.add_argument("--texts", required=True)
    ap.add_argument("--official-prompt", default=None)
    ap.add_argument("--n-train", type=int, default=10_000)
    ap.add_argument("--n-test", type=int, default=1_000)
    ap.add_argument("--layers", default="all")
    ap.add_argument("--methods", default="learned_prompt,fixed_prompt,linear_hidden")
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--quick", action="store_true", help="200 train / 100 test, 3 layers")
    ap.add_argument("--out", default="future_lens_gptj_results.json")
    args = ap.parse_args()

    cfg = FutureLensConfig.paper_gptj()
    n_train, n_test = args.n_train, args.n_test
    if args.quick:
        n_train, n_test, args.layers = 200, 100, "2,13,20"
    n_total = n_train + n_test + max(n_test // 10, 10)
    cfg = cfg.replace(max_contexts=n_total, max_train_examples=n_train,
                      splits=(n_train / n_total, 1 - (n_train + n_test) / n_total,
                              n_test / n_total))
    t0 = time.time()
    model = fl.load_model(args.model, dtype=args.dtype)  # raw basis (the official prompt's)
    view = fl.as_view(model)
    layers = parse_layers(args.layers, view.n_layers)
    print(f"loaded {args.model} in {time.time() - t0:.0f}s: {view}")

    texts = load_texts(args.texts)
    t0 = time.time()
    data = build_features(model, texts, n_max=3, layers=layers, label_source=cfg.label_source,
                          window=min(cfg.window or view.n_ctx, view.n_ctx),
                          max_contexts=cfg.max_contexts, splits=cfg.splits,
                          batch_size=cfg.feature_batch_size, seed=cfg.seed)
    print(f"features: {data.summary()} in {time.time() - t0:.0f}s")

    lenses = []
    for method in args.methods.split(","):
        t0 = time.time()
        n_ahead = (1, 2, 3) if method == "learned_prompt" else (0, 1, 2, 3)
        lens = FutureLens.fit(model, None, method, layers=layers, n_ahead=n_ahead,
                              config=cfg, data=data)
        print(f"fitted {method} in {time.time() - t0:.0f}s")
        lenses.append(lens)
    if args.official_prompt:
        official = FutureLens.load_official_prompt(args.official_prompt, model, layer=13)
        lenses.append(official)
        view_grid = official.with_target_layer(13).future_view(model, "Marty McFly from", 4)
        print("Marty McFly from ->", view_grid.to_dataframe().query("layer == 13").future.tolist())
    ev = FutureLens.evaluate_many(lenses, model, data=data, n_ahead=(0, 1, 2, 3),
                                  batch_size=cfg.eval_batch_size)
    df = ev.to_dataframe()
    p1 = df[(df.metric == "precision") & (df.k == 1) & df.bucket.isna()
            & df["mode"].isin(["teacher_forced", "baseline"])]
    print("\nBest-layer precision@1 (teacher-forced; block index, paper In-Layer = block + 1)")
    print(f"{'method':<34}{'N':>3}{'ours':>8}{'@block':>8}{'paper':>8}")
    results = []
    for (name, method, n), g in p1.groupby(["lens", "method", "n_ahead"]):
        best = g.loc[g.value.idxmax()]
        paper = PAPER_GPTJ_RESULTS.get(str(method), {}).get(int(n))
        layer = "" if best.layer is None or str(best.layer) == "<NA>" else int(best.layer)
        print(f"{name:<34}{int(n):>3}{best.value:>8.3f}{layer!s:>8}"
              f"{'' if paper is None else f'{paper:.3f}':>8}")
        results.append({"lens": name, "n_ahead": int(n), "ours": float(best.value),
                        "layer": layer, "paper": paper})
    with open(args.out, "w") as f:
        json.dump({"results": results, "meta": ev.meta}, f, indent=1, default=str)
    ev.plot("precision", k=1).savefig(args.out.replace(".json", ".png"), dpi=120)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
