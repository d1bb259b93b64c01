"""Head-role tagging cost: forward passes and wall time of ``tag_heads(roles="all")``.

Model: a random GPT-2-small-shaped TransformerBridge (12 layers, 12 heads, d_model 768,
n_ctx 1024; vocabulary 50257 in the full run, 5000 in ``--quick``) booted natively (no
download). Wall time is reported as a multiple of one plain forward over the same data
(``n_examples`` sequences of ``seq_len`` tokens), measured in the same run. Patching cost is
reported per head (batched over heads) against the unbatched one-head-per-forward loop.
"""

from __future__ import annotations

import os
import time

import torch

os.environ.setdefault("FUTURELENS_NO_PROGRESS", "1")


def _model(quick: bool):
    from transformer_lens.config import TransformerBridgeConfig
    from transformer_lens.model_bridge import TransformerBridge

    cfg = TransformerBridgeConfig(
        d_model=256 if quick else 768, d_head=64, n_heads=4 if quick else 12,
        n_layers=4 if quick else 12, n_ctx=1024, d_vocab=5000 if quick else 50257,
        d_mlp=1024 if quick else 3072, act_fn="gelu", seed=0, normalization_type="LN",
        positional_embedding_type="standard")
    m = TransformerBridge.boot_native(cfg)
    m.eval()
    return m


def _time(fn, repeat: int = 1) -> float:
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def main(quick: bool = False) -> list[dict]:
    import futurelens_tl as fl
    from futurelens_tl.attention.patching import score_heads
    from futurelens_tl.data import FORWARD_COUNTER

    torch.manual_seed(0)
    model = _model(quick)
    view = fl.ModelView(model)
    n_examples, seq_len, bs = (8, 32, 8) if quick else (32, 64, 16)
    tok = torch.randint(1, view.d_vocab, (n_examples, seq_len))
    with torch.no_grad():
        model(tok[:bs])  # warm-up

    def plain():
        with torch.no_grad():
            for s in range(0, n_examples, bs):
                model(tok[s:s + bs])

    t_fwd = _time(plain, repeat=2)
    rows = []
    B = "heads"
    shape = f"{view.n_layers}L x {view.n_heads}H, d_model {view.d_model}, vocab {view.d_vocab}"

    pattern_roles = ["previous_token", "duplicate_token", "induction", "positional",
                     "attention_sink", "current_token"]
    f0 = FORWARD_COUNTER.passes
    t = time.perf_counter()
    fl.tag_heads(model, roles=pattern_roles, n_examples=n_examples, seq_len=seq_len,
                 batch_size=bs, verbose=False)
    t_pat = time.perf_counter() - t
    n_pat = FORWARD_COUNTER.passes - f0
    rows.append({"benchmark": B, "metric": "pattern roles (6): forward passes",
                 "value": n_pat, "unit": "passes", "target": f"{n_examples // bs} + 1",
                 "note": f"{shape}; {n_examples} x {seq_len} tokens, batch {bs}; +1 = hook check"})
    rows.append({"benchmark": B, "metric": "pattern roles (6): time / one forward over data",
                 "value": round(t_pat / t_fwd, 2), "unit": "x", "target": "<= 3",
                 "note": f"one forward over the data = {t_fwd:.2f} s"})

    f0 = FORWARD_COUNTER.passes
    t = time.perf_counter()
    tags = fl.tag_heads(model, roles="all", n_examples=n_examples, seq_len=seq_len,
                        batch_size=bs, verbose=False)
    t_all = time.perf_counter() - t
    rows.append({"benchmark": B, "metric": "tag_heads(all): forward passes",
                 "value": FORWARD_COUNTER.passes - f0, "unit": "passes", "target": "",
                 "note": "unavailable on a random tokenizer-less model: "
                         + ", ".join(sorted(tags.unavailable))})
    rows.append({"benchmark": B, "metric": "tag_heads(all): time / one forward over data",
                 "value": round(t_all / t_fwd, 2), "unit": "x", "target": "<= 3",
                 "note": f"{t_all:.1f} s total; {len(tags.roles) - len(tags.unavailable)} roles "
                         "scored; weight roles read the effective embeddings of the whole "
                         "vocabulary (a pass that stops after block 0); retrieval "
                         "teacher-forced"})

    # patching: batched over heads vs one head per forward
    clean, corr = tok[:4, :32], torch.randint(1, view.d_vocab, (4, 32))

    def metric(lg):
        return lg[:, -1].log_softmax(-1)[:, 5]

    n_heads_total = view.n_layers * view.n_heads
    t = time.perf_counter()
    res = score_heads(model, clean, corr, metric, verbose=False)
    t_b = time.perf_counter() - t
    heads = [(0, h) for h in range(view.n_heads)]
    t = time.perf_counter()
    score_heads(model, clean, corr, metric, heads=heads, heads_per_forward=1, verbose=False)
    t_1 = time.perf_counter() - t
    per_head_1 = (t_1) / len(heads)
    rows.append({"benchmark": B, "metric": "patching: ms per head (batched)",
                 "value": round(1000 * t_b / n_heads_total, 1), "unit": "ms",
                 "target": "< unbatched",
                 "note": f"{res.n_forwards} forwards for {n_heads_total} heads, batch 4 x 32"})
    rows.append({"benchmark": B, "metric": "patching: ms per head (one head per forward)",
                 "value": round(1000 * per_head_1, 1), "unit": "ms", "target": "",
                 "note": f"{len(heads)} heads, includes the 2 cache forwards"})
    return rows


if __name__ == "__main__":
    for r in main(quick=True):
        print(r)
