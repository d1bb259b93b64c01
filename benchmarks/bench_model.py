"""ModelView overhead: residual capture + readout vs the model's own run_with_cache."""

from __future__ import annotations

import torch
from _common import gpt2_small_random, row, timeit

from futurelens_tl.model import as_view


def main(quick: bool = False) -> list[dict]:
    torch.manual_seed(0)
    model = gpt2_small_random(quick=quick)
    view = as_view(model)
    tokens = torch.randint(0, view.d_vocab, (8, 128 if not quick else 32))
    name = "GPT-2-small-shaped random model, batch 8x128" if not quick else "quick"
    with torch.inference_mode():
        t_fwd = timeit(lambda: model(tokens))
        t_cache = timeit(lambda: model.run_with_cache(tokens))
        t_resid = timeit(lambda: view.residuals(tokens))
        _, resid = view.residuals(tokens)
        t_readout_final = timeit(lambda: view.readout(resid[-1]))
        logits = model(tokens)
        err = float((torch.log_softmax(view.readout(resid[-1]), -1)
                     - torch.log_softmax(logits, -1)).abs().max())
    return [
        row(name, "forward (logits only)", t_fwd, "s"),
        row(name, "run_with_cache (all hooks)", t_cache, "s"),
        row(name, "ModelView.residuals (all layers, one forward)", t_resid, "s"),
        row(name, "residuals / run_with_cache", t_resid / t_cache, "x", "<= 1"),
        row(name, "readout of final residual / forward", t_readout_final / t_fwd, "x",
            note="final norm + unembed applied by ModelView"),
        row(name, "max |log-prob diff| readout vs model", err, "nats", "<= 1e-5"),
    ]


if __name__ == "__main__":
    for r in main():
        print(r)
