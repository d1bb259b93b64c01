"""Future Lens on SmolLM2-135M (slow tier; skips with the reason when the real extra is absent).

Guarantees only (no fragile ranking): with the published fixed prompt 0 on held-out Lee text,
the transplant at the last block reproduces the model's own next token (N = 0 precision@1 is
exactly 1 against greedy labels), and at N >= 1 the last block's scores equal their controls
(h provably cannot matter there; ``h_matters`` is False).
"""

from __future__ import annotations

import pytest
from conftest import require_real_extra, smollm2_or_skip

import futurelens_tl as fl
from futurelens_tl.lenses.future import FutureLens, build_features

pytestmark = pytest.mark.slow


def test_fixed_prompt_identities_on_smollm2():
    require_real_extra()
    try:
        docs = fl.corpus("lee", "heldout")[:8]
    except (FileNotFoundError, RuntimeError) as err:
        pytest.skip(f"Lee corpus unavailable: {err}")
    model = smollm2_or_skip()
    last = fl.as_view(model).n_layers - 1
    data = build_features(model, [" ".join(d.split()[:30]) for d in docs], n_max=1,
                          layers=[14, last], window=40, splits=(0.0, 0.0, 1.0), verbose=False)
    fx = FutureLens.fit(model, None, "fixed_prompt", layers=[14, last], fixed_prompt="hello",
                        verbose=False)
    ev = fx.evaluate_many([fx], model, data=data, n_ahead=(0, 1), k=(1,), n_boot=100,
                          modes=("teacher_forced",), baseline_seqs=data.tokens.tolist(),
                          verbose=False)
    df = ev.to_dataframe()
    p1 = df[(df.metric == "precision") & (df.k == 1) & df.bucket.isna()]
    own = p1[p1.lens == fx.name].set_index(["layer", "n_ahead"])
    assert own.value[(last, 0)] == 1.0
    assert not own.h_matters[(last, 1)] and own.h_matters[(14, 1)]
    for c in ("mean_h", "no_patch", "shuffled_h"):
        ctl = p1[p1.lens == f"{fx.name} [{c}]"].set_index(["layer", "n_ahead"])
        assert abs(ctl.value[(last, 1)] - own.value[(last, 1)]) < 1e-12, c
