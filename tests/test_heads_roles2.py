"""Head roles II (issue 15): task-prompt roles, causal confirmation, steering control, comparison.

Identities against TransformerLens' own activations (direct attributions from ``hook_z``,
attention masses from ``hook_pattern``), planted attention for the syntactic score, known
answers on the toy model (its induction heads are confirmed by resample ablation) and a
fine-tune with a known effect for the model comparison.
"""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import native_bridge, toy_or_skip

import futurelens_tl as fl
from futurelens_tl.attention import prompts as P
from futurelens_tl.attention.compare_heads import compare_heads
from futurelens_tl.attention.datasets import ioi_prompts, repeated_tokens
from futurelens_tl.attention.heads import ROLES, tag_heads
from futurelens_tl.attention.patching import directional_effects
from futurelens_tl.attention.scores_task import TASK_ROLES, _syntax, task_scores


@pytest.fixture(scope="module")
def toy():
    return toy_or_skip()


@pytest.fixture(scope="module")
def toy_sets(toy):
    from futurelens_tl.toy import toy_corpus

    tk = toy.tokenizer
    return {"facts": P.toy_fact_prompts(tk, toy_corpus(n_docs=1).entities, n=12),
            "choice": P.choice_prompts(tk, n=8), "yes_no": P.yes_no_prompts(tk, n=8),
            "few_shot": P.few_shot_prompts(tk, n=8), "syntax": P.dependency_sentences(tk, n=8)}


def test_every_role_has_stage_threshold_source(toy):
    tags = tag_heads(toy, roles=list(TASK_ROLES), verbose=False)
    assert tags.n_forwards == 2  # the hook check + ONE forward for all eleven task roles
    for r in TASK_ROLES:
        assert ROLES[r].stage in ("KR", "ICI", "LR", "EP")
        if r in tags.unavailable:
            assert "does not perform" in tags.unavailable[r]
            continue
        assert tags.thresholds[r] is not None and tags.threshold_sources[r]
        ex = tags.extras[r]
        assert torch.all(ex["ci_low"] <= tags.score(r) + 1e-6)
        assert torch.all(tags.score(r) <= ex["ci_high"] + 1e-6)
    assert {ROLES[r].stage for r in TASK_ROLES} == {"KR", "ICI", "LR", "EP"}


def test_attributions_equal_hook_z_direct_logit_attribution(toy, toy_sets):
    """correct = DLA(hook_z W_O at end, answer - counterfactuals) / gap; memory + rest = it."""
    view = fl.ModelView(toy)
    res, bad = task_scores(view, toy_sets, ["correct", "memory"], n_boot=10)
    assert "correct" in res, bad
    d = toy_sets["facts"]
    L = view.n_layers
    names = [view.attn_hook(layer, "z") for layer in range(L)] + [view.resid_hook(L - 1)]
    with torch.no_grad():
        logits, cache = view.run_with_cache(d.tokens, names)
    ar, end, cand = torch.arange(d.n), d.meta["end"], d.meta["candidates"]
    scale = view.ln_final.scale(cache[names[-1]][ar, end])
    u = view.W_U[:, cand[:, 0]].T - view.W_U[:, cand[:, 1:]].mean(-1).T
    cl = logits[ar, end].gather(1, cand)
    gap = (cl[:, 0] - cl[:, 1:].mean(1)).mean()
    for layer in range(L):
        o = torch.einsum("bhd,hdm->bhm", cache[names[layer]][ar, end], view.W_O[layer])
        o = (o - o.mean(-1, keepdim=True)) / scale[:, None] * view.ln_final.w
        expect = (o * u[:, None]).sum(-1).mean(0) / gap
        torch.testing.assert_close(res["correct"].scores[layer], expect.float(), atol=2e-4,
                                   rtol=1e-3)
    total = res["memory"].scores + res["memory"].extras["non_subject"]
    torch.testing.assert_close(total, res["correct"].scores, atol=2e-4, rtol=1e-3)


def test_pattern_task_roles_equal_cached_patterns(toy, toy_sets):
    view = fl.ModelView(toy)
    res, _ = task_scores(view, toy_sets, ["correct_letter", "in_context", "negative"], n_boot=10)
    names = [view.attn_hook(layer, "pattern") for layer in range(view.n_layers)]
    for key, role in (("choice", "correct_letter"), ("few_shot", "in_context"),
                      ("yes_no", "negative")):
        d = toy_sets[key]
        with torch.no_grad():
            _, cache = view.run_with_cache(d.tokens, names)
        for layer, name in enumerate(names):
            a = cache[name].float()  # [b, H, q, k]
            vals = []
            for i in range(d.n):
                e = int(d.meta["end"][i])
                if role == "correct_letter":
                    pos = int(d.meta["labels"][i, int(d.meta["correct"][i])])
                    vals.append(a[i, :, e, pos])
                elif role == "in_context":
                    vals.append((a[i, :, e] * d.meta["demo_y"][i].float()).sum(-1))
                else:
                    y, n = int(d.meta["yes_pos"][i]), int(d.meta["no_pos"][i])
                    ay, an = a[i, :, max(y, n):e + 1, y], a[i, :, max(y, n):e + 1, n]
                    vals.append(((ay + an) * ((an + 1e-6) / (ay + 1e-6)).log()).mean(-1))
            torch.testing.assert_close(res[role].scores[layer], torch.stack(vals).mean(0),
                                       atol=1e-4, rtol=1e-4)


def test_syntactic_score_on_planted_attention(toy):
    """A determiner oracle (each noun attends to its determiner) beats the offset baseline;
    a previous-word head does not."""
    d = P.dependency_sentences(toy.tokenizer, n=16, seed=3)
    n, T = d.tokens.shape
    pat = torch.zeros(n, 2, T, T)
    pat[:, :, :, 0] = 1.0  # idle rows rest on BOS
    words = d.meta["words"]
    for i in range(n):
        for rel, qw, tw in d.meta["arcs"][i]:
            if rel != "det":
                continue
            q = int(words[i, qw, 1]) - 1
            pat[i, 0, q] = 0
            pat[i, 0, q, int(words[i, tw, 0])] = 1.0
        for w in range(1, int((words[i, :, 1] > 0).sum())):
            q = int(words[i, w, 1]) - 1
            pat[i, 1, q] = 0
            pat[i, 1, q, int(words[i, w - 1, 0])] = 1.0
    rs = _syntax(d, {0: pat}, torch.ones(n, dtype=torch.bool), slice(0, n), 1, 2, 50, 0)
    rels = rs.evidence["relations"]
    assert rs.extras["acc_det"][0, 0] == 1.0
    assert rels[int(rs.extras["best_relation"][0, 0])] == "det"
    assert rs.scores[0, 0] == pytest.approx(1.0 - rs.extras["baseline_det"][0, 0].item())
    assert rs.scores[0, 0] > 0.3 >= rs.threshold
    assert rs.scores[0, 1] <= 1e-6  # previous word never beats the best fixed offset
    assert rs.extras["ci_low"][0, 0] <= rs.scores[0, 0] <= rs.extras["ci_high"][0, 0]


def test_confirm_toy_induction_heads(toy):
    tags = tag_heads(toy, roles=["induction"], confirm=True, verbose=False)
    recs = tags.confirmation["induction"]
    tagged = [r for r in recs if r["tagged"]]
    assert tagged and all(r["confirmed"] for r in tagged)
    assert all(not r["confirmed"] for r in recs if not r["tagged"])
    assert all(r["drop"] > 5 * r["control_mean"] for r in tagged)
    df = tags.to_dataframe()
    assert df[df.role == "induction"].confirmed.dropna().any()
    assert tags.summary().set_index("role").loc["induction", "n_confirmed"] == len(tagged)


def test_sigma_scaling_and_random_control(toy):
    view = fl.ModelView(toy)
    tok = repeated_tokens(4, 16, view.d_vocab, seed=0).tokens
    u = torch.randn(view.d_head, generator=torch.Generator().manual_seed(0))

    def metric(logits):
        return logits[:, -1].log_softmax(-1)[:, 7]

    add, _ = directional_effects(toy, tok, u, metric, alpha=3.0, sigma_scale=True,
                                 n_random=3, heads=[(1, 2)], verbose=False)
    with torch.no_grad():
        _, cache = view.run_with_cache(tok, [view.attn_hook(1, "z")])
    un = u / u.norm()
    sigma = (cache[view.attn_hook(1, "z")][:, :, 2] @ un).flatten().std()
    plain, _ = directional_effects(toy, tok, u, metric, alpha=3.0 * float(sigma),
                                   heads=[(1, 2)], verbose=False)
    assert add.effect[1, 2].item() == pytest.approx(plain.effect[1, 2].item(), abs=1e-4)
    assert add.evidence["sigma"][1][2] == pytest.approx(float(sigma), rel=1e-4)
    assert add.control_mean is not None and torch.isfinite(add.control_mean[1, 2])
    assert add.control_std[1, 2] > 0 and torch.isfinite(add.control_z[1, 2])
    assert torch.isnan(add.effect[0, 0])  # only the asked head is steered
    with pytest.raises(ValueError, match="n_random"):
        directional_effects(toy, tok, u, metric, n_random=-1, verbose=False)


def test_compare_heads_after_a_short_fine_tune(toy):
    """Fine-tune only L2H0's queries and keys towards the previous token: only it changes."""
    tuned = copy.deepcopy(toy)
    view = fl.ModelView(tuned)
    params = dict(tuned.named_parameters())
    qk = [params[k] for k in params if ".h.2." in k and (".attn.q." in k or ".attn.k." in k)]
    assert len(qk) == 4
    for p in tuned.parameters():
        p.requires_grad_(False)
    dh = view.d_head
    masks = []
    for p in qk:
        p.requires_grad_(True)
        m = torch.zeros_like(p)
        m[:dh] = 1.0  # head 0's rows (nn.Linear layout: out = head * d_head + e)
        masks.append(m)
    opt = torch.optim.Adam(qk, lr=3e-2)
    name = view.attn_hook(2, "pattern")
    for step in range(25):
        tok = repeated_tokens(8, 24, view.d_vocab, seed=100 + step).tokens
        store = {}

        def keep(p, hook, _s=store):
            _s["p"] = p
            return p

        view.run_with_hooks(tok, [(name, keep)])
        loss = -(store["p"][:, 0].diagonal(-1, -2, -1) + 1e-6).log().mean()
        opt.zero_grad()
        loss.backward()
        for p, m in zip(qk, masks, strict=True):
            p.grad *= m
        opt.step()
    for p in tuned.parameters():
        p.requires_grad_(False)
    cmp = compare_heads(toy, tuned, roles=["previous_token", "copying"], noise_seeds=(1,),
                        n_examples=16, seq_len=32)
    d = cmp.role_delta("previous_token")
    assert d[2, 0] > 0.15 and d[2, 0] > 3 * cmp.noise[0] and bool(cmp.changed[0, 2, 0])
    assert d.abs().argmax().item() == 2 * view.n_heads  # the largest change is L2H0
    assert torch.equal(d[:2], torch.zeros_like(d[:2]))  # upstream heads cannot move
    assert not cmp.changed[1].any()  # OV weights untouched: copying identical
    assert cmp.top_changes(1)[0][:3] == ("previous_token", 2, 0)
    df = cmp.to_dataframe()
    assert set(df.columns) >= {"role", "layer", "head", "delta", "noise", "changed"}
    other = native_bridge(n_layers=1, d_model=16, n_heads=2, d_vocab=40)
    with pytest.raises(ValueError, match="differ in shape"):
        compare_heads(toy, other, roles=["copying"])


def test_only_the_asked_ioi_role_runs(monkeypatch):
    """Issue 15 bug: name_mover alone ran S-inhibition path patching (530 s on SmolLM2)."""
    from futurelens_tl.attention import scores as S
    from futurelens_tl.attention import scores_causal as C

    seen = []
    real = C.ioi_scores

    def spy(view, data, **kw):
        seen.append(kw.get("roles"))
        return real(view, data, **kw)

    monkeypatch.setattr(S, "ioi_scores", spy)
    m = native_bridge(n_layers=2, d_model=16, n_heads=2, d_vocab=40, n_ctx=32)
    tags = tag_heads(m, roles=["name_mover"], verbose=False)
    assert seen == [("name_mover",)]
    assert tags.roles == ["name_mover"]  # scored or unavailable, never S-inhibition
    calls = []

    def progress_spy(*a, **k):
        calls.append(k.get("desc"))
        return a[0]

    monkeypatch.setattr(C, "progress", progress_spy)
    d = ioi_prompts(8, d_vocab=40, seed=0)
    try:
        C.ioi_scores(fl.ModelView(m), d, roles=("name_mover",), verbose=False)
    except ValueError as err:  # a random model does not do IOI: nothing else may run
        assert "does not perform" in str(err)
    assert "S-inhibition path patching" not in calls
