"""Data-parallel lens training (torch.distributed + DDP, gloo on CPU).

Fast tier: sharding, loss shares, the world-of-one path, error paths, the entry in one process.
Slow tier: real 2-process jobs (``torchrun --standalone`` and hand-launched ranks, gloo):
2 processes == 1 process with the same global batch (to 1e-5, uneven shards), a killed rank
fails the job with a clear error and a checkpoint that resumes under another world size.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from conftest import native_bridge, toy_or_skip

import futurelens_tl as fl
from futurelens_tl.lenses import distributed as D
from futurelens_tl.lenses.artifacts import load_checkpoint
from futurelens_tl.lenses.trainer import Trainer, TrainerConfig

REPO = Path(__file__).resolve().parents[1]
# a small run of the toy model: 5 windows of 32 tokens per step (shards 3 + 2 on two ranks)
RUN = dict(tokens=5 * 32 * 6, batch_size=5, seq_len=32, seed=3, checkpoint_every=2)
ARGV = ["--model", "toy", "--texts", "toy", "--tokens", str(RUN["tokens"]), "--batch-size",
        str(RUN["batch_size"]), "--seq-len", str(RUN["seq_len"]), "--seed", str(RUN["seed"]),
        "--checkpoint-every", str(RUN["checkpoint_every"]), "--quiet", "--timeout", "120"]


def _max_diff(a: fl.TunedLens, b: fl.TunedLens) -> float:
    sa, sb = a.translators.state_dict(), b.translators.state_dict()
    return max(float((sa[k] - sb[k]).abs().max()) for k in sa)


# ---------------------------------------------------------------------- fast tier
def test_shards_are_contiguous_balanced_and_cover_the_batch():
    for n in (2, 5, 8, 13):
        for world in (1, 2, 3):
            if n < world:
                continue
            spans = [D.shard_bounds(n, r, world) for r in range(world)]
            assert spans[0][0] == 0 and spans[-1][1] == n
            assert all(a[1] == b[0] for a, b in zip(spans, spans[1:]))
            sizes = [b - a for a, b in spans]
            assert max(sizes) - min(sizes) <= 1
    assert D.shard(torch.arange(5), 0, 2).tolist() == [0, 1, 2]
    with pytest.raises(ValueError, match="world_size=3"):
        D.shard_bounds(2, 0, 3)


def test_rank_shares_average_to_the_global_mean():
    """What DDP computes (mean over ranks of local mean * share) is the global-batch mean."""
    x = torch.randn(7, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    for world in (1, 2, 3):
        parts = []
        for r in range(world):
            ctx = D.DistContext(rank=r, world_size=world)
            lo, hi = ctx.bounds(len(x))
            parts.append(x[lo:hi].mean() * ctx.share(hi - lo, len(x)))
        assert float(sum(parts) / world) == pytest.approx(float(x.mean()), abs=1e-12)
    # a plain local mean (no share) would be wrong for uneven shards: the control
    plain = (x[:4].mean() + x[4:].mean()) / 2
    assert abs(float(plain - x.mean())) > 1e-3


def test_world_of_one_is_the_plain_path():
    ctx = D.context()
    assert (ctx.rank, ctx.world_size, ctx.is_main, ctx.is_distributed) == (0, 1, True, False)
    assert D.init_distributed() == D.DistContext()  # WORLD_SIZE unset: nothing to join
    v = torch.tensor([1.0, 2.0])
    assert D.all_reduce_mean(v) is v and D.broadcast_object({"a": 1}) == {"a": 1}
    assert D.main_only(lambda: 5) == 5
    assert D.main_only(lambda: 5, ctx=D.DistContext(rank=1, world_size=2)) is None
    assert D.rank_seed(4, 0) == 4 and D.rank_seed(4, 1) != D.rank_seed(4, 2)


def test_guard_turns_a_failed_collective_into_a_clear_error():
    ctx = D.DistContext(rank=1, world_size=2, backend="gloo")
    with pytest.raises(D.DistributedTrainingError, match=r"rank 1/2.*all-reduce.*peer.*resume"):
        with D.guard_collective(ctx, "the all-reduce", "relaunch to resume"):
            raise RuntimeError("[gloo] Connection closed by peer [127.0.0.1]:1234")
    with pytest.raises(RuntimeError, match="closed by peer"):  # world of one: untouched
        with D.guard_collective(D.DistContext(), "x"):
            raise RuntimeError("Connection closed by peer")


def test_config_world_mismatch_and_too_small_batch_are_refused():
    lin = torch.nn.Linear(2, 1)
    with pytest.raises(ValueError, match="world_size=2"):
        Trainer(lin, TrainerConfig(steps=1, world_size=2))
    model = native_bridge(n_layers=1, d_model=16, n_heads=2, d_vocab=23, seed=1)
    windows = torch.randint(1, 23, (4, 8), generator=torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="batch_size=1.*world_size=2"):
        fl.TunedLens(model).train_on(windows, batch_size=1, tokens=8, verbose=False,
                                     dist=D.DistContext(rank=0, world_size=2))


def test_checkpoint_holds_no_per_rank_state(tmp_path):
    """A checkpoint's settings exclude rank/world size, so it resumes under any world size."""
    model = native_bridge(n_layers=1, d_model=16, n_heads=2, d_vocab=23, seed=1)
    windows = torch.randint(1, 23, (8, 8), generator=torch.Generator().manual_seed(0))
    ck = tmp_path / "ck.pt"
    kw = dict(tokens=4 * 8 * 4, batch_size=4, verbose=False, checkpoint=ck, checkpoint_every=1)
    fl.TunedLens(model).train_on(windows, stop_after=2, **kw)
    state = load_checkpoint(ck)
    assert state["step"] == 2
    assert "rank" not in state["config"] and "world_size" not in state["config"]
    assert "generator" not in state  # the generator is re-derived per step and rank
    resumed = fl.TunedLens(model)
    res = resumed.train_on(windows, **kw)
    ref = fl.TunedLens(model)
    ref.train_on(windows, **{**kw, "checkpoint": None})
    assert res.resumed_from == 2 and _max_diff(resumed, ref) == 0.0


def test_only_rank_0_writes_checkpoints(tmp_path):
    from futurelens_tl.lenses.trainer import EpochCheckpoint

    other = D.DistContext(rank=1, world_size=2)
    EpochCheckpoint(tmp_path / "e1.pt", {"a": 1}, dist=other).save(1, x=torch.ones(1))
    lin = torch.nn.Linear(2, 1)
    Trainer(lin, TrainerConfig(steps=1, checkpoint_path=str(tmp_path / "s1.pt")),
            dist=other).save()
    assert not list(tmp_path.iterdir())
    EpochCheckpoint(tmp_path / "e0.pt", {"a": 1}).save(1, x=torch.ones(1))
    Trainer(lin, TrainerConfig(steps=1, checkpoint_path=str(tmp_path / "s0.pt"))).save()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["e0.pt", "s0.pt"]


def test_stop_request_checkpoints_the_step_and_resumes_exactly(tmp_path):
    model = native_bridge(n_layers=1, d_model=16, n_heads=2, d_vocab=23, seed=1)
    windows = torch.randint(1, 23, (8, 8), generator=torch.Generator().manual_seed(0))
    ck = tmp_path / "ck.pt"
    kw = dict(tokens=4 * 8 * 5, batch_size=4, verbose=False, checkpoint=ck, checkpoint_every=0)
    with D.StopOnSignal() as stop:
        calls = []

        def should_stop():
            calls.append(1)
            if len(calls) == 2:
                os.kill(os.getpid(), signal.SIGTERM)  # caught: a flag, not a dead process
            return stop()

        lens = fl.TunedLens(model)
        res = lens.train_on(windows, should_stop=should_stop, **kw)
    assert stop.received == signal.SIGTERM
    assert res.interrupted and not res.finished and res.steps_done == 2
    assert load_checkpoint(ck)["step"] == 2  # saved although checkpoint_every=0
    resumed = fl.TunedLens(model)
    assert resumed.train_on(windows, **kw).resumed_from == 2
    ref = fl.TunedLens(model)
    ref.train_on(windows, **{**kw, "checkpoint": None})
    assert _max_diff(resumed, ref) == 0.0


def test_entry_one_process_equals_the_api(tmp_path, capsys):
    model = toy_or_skip()
    from futurelens_tl.toy import toy_texts
    from futurelens_tl.train_lens import train_lens_main

    small = ["--model", "toy", "--texts", "toy", "--tokens", "256", "--batch-size", "2",
             "--seq-len", "32", "--quiet"]
    out = tmp_path / "lens.safetensors"
    assert train_lens_main(small + ["--out", str(out), "--summary", str(tmp_path / "s.json")]) == 0
    printed = capsys.readouterr().out
    assert '"world_size": 1' in printed and (tmp_path / "s.json").exists()
    ref = fl.TunedLens.fit(model, toy_texts(), tokens=256, batch_size=2, seq_len=32,
                           verbose=False)
    assert _max_diff(fl.TunedLens.load(out, model), ref) == 0.0
    assert train_lens_main(small + ["--batch-size", "0"]) == 1  # a clear ValueError, exit 1
    assert "batch_size=0" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        train_lens_main(["--optimizer", "nope"])
    assert exc.value.code == 2


# ---------------------------------------------------------------------- slow tier: 2 processes
def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    env.update(PYTHONPATH=os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]),
               OMP_NUM_THREADS="1", FUTURELENS_NO_PROGRESS="1", HF_HUB_OFFLINE="1",
               TRANSFORMERS_OFFLINE="1")
    return env


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _reference(model, **over):
    from futurelens_tl.toy import toy_texts

    lens = fl.TunedLens(model)
    kw = {**RUN, **over}
    kw.pop("checkpoint_every")
    lens.train_on(toy_texts(), verbose=False, **kw)
    return lens


@pytest.mark.slow
def test_two_processes_equal_one_process_under_torchrun(tmp_path):
    model = toy_or_skip()
    out = tmp_path / "ddp.safetensors"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "futurelens_tl.train_lens", *ARGV, "--out", str(out),
           "--checkpoint", str(tmp_path / "ck.pt")]
    proc = subprocess.run(cmd, env=_env(), cwd=tmp_path, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count('"world_size": 2') == 1  # rank 0 alone reports
    two = fl.TunedLens.load(out, model)
    assert two.meta["data"]["world_size"] == 2
    one = _reference(model)
    assert _max_diff(two, one) <= 1e-5
    # control: what one rank alone would learn from its shard (3 of 5 windows) is far off, so
    # the equality above is the gradient all-reduce at work, not an accident of the data
    assert _max_diff(two, _reference(model, batch_size=3, tokens=3 * 32 * 6)) > 1e-3
    assert not [f for f in os.listdir(tmp_path) if f.endswith(".tmp")]


KILLER = """
import os, signal, sys
import futurelens_tl.lenses.tuned as T
_orig = T.batch_indices
def batch_indices(n, b, step, seed):
    if os.environ["RANK"] == "1" and step == {kill_at}:
        os.kill(os.getpid(), signal.SIGKILL)   # rank 1 dies fetching step {kill_at}'s batch
    return _orig(n, b, step, seed)
T.batch_indices = batch_indices
from futurelens_tl.train_lens import train_lens_main
sys.exit(train_lens_main(sys.argv[1:]))
"""


def _launch(script: Path, argv: list[str], world: int, cwd: Path) -> list[subprocess.Popen]:
    port = _free_port()
    procs = []
    for rank in range(world):
        env = _env()
        env.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world),
                   LOCAL_WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        procs.append(subprocess.Popen([sys.executable, str(script), *argv], env=env, cwd=cwd,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    return procs


@pytest.mark.slow
def test_killed_rank_fails_clearly_and_resumes_on_one_process(tmp_path):
    model = toy_or_skip()
    kill_at = 3
    script = tmp_path / "killer.py"
    script.write_text(textwrap.dedent(KILLER.format(kill_at=kill_at)))
    ck = tmp_path / "ck.pt"
    procs = _launch(script, [*ARGV, "--checkpoint", str(ck), "--out", str(tmp_path / "x.st")],
                    2, tmp_path)
    try:
        outs = [p.communicate(timeout=300) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert procs[1].returncode == -signal.SIGKILL
    assert procs[0].returncode == 1, outs[0][1][-3000:]
    err = outs[0][1]
    assert "DistributedTrainingError" in err and "rank 0/2" in err, err[-3000:]
    assert f"saved the last completed step ({kill_at})" in err and "any number of processes" \
        in err, err[-3000:]
    assert not (tmp_path / "x.st").exists()  # no artifact from a failed job
    state = load_checkpoint(ck)
    assert state["step"] == kill_at  # nothing lost: the last completed step, not step 2
    # resume under another world size (1 process) and finish: the uninterrupted lens
    lens = fl.TunedLens(model)
    from futurelens_tl.toy import toy_texts

    kw = dict(RUN)
    res = lens.train_on(toy_texts(), verbose=False, checkpoint=ck, **kw)
    assert res.resumed_from == kill_at and res.finished
    assert _max_diff(lens, _reference(model)) <= 1e-5


@pytest.mark.slow
def test_one_process_checkpoint_resumes_on_two(tmp_path):
    model = toy_or_skip()
    from futurelens_tl.toy import toy_texts

    ck = tmp_path / "ck.pt"
    fl.TunedLens(model).train_on(toy_texts(), verbose=False, checkpoint=ck, stop_after=2, **RUN)
    script = tmp_path / "entry.py"
    script.write_text("import sys\nfrom futurelens_tl.train_lens import train_lens_main\n"
                      "sys.exit(train_lens_main(sys.argv[1:]))\n")
    out = tmp_path / "lens.safetensors"
    procs = _launch(script, [*ARGV, "--checkpoint", str(ck), "--out", str(out)], 2, tmp_path)
    try:
        outs = [p.communicate(timeout=300) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert [p.returncode for p in procs] == [0, 0], outs[0][1][-3000:] + outs[1][1][-3000:]
    assert '"resumed_from": 2' in outs[0][0] and outs[1][0].strip() == ""
    assert _max_diff(fl.TunedLens.load(out, model), _reference(model)) <= 1e-5


# ---------------------------------------------------------------------- models split over devices
@pytest.mark.slow
def test_device_map_loaded_model_trains_the_same_lens_on_the_unembedding_device(tmp_path):
    """A bridge booted with an HF ``device_map`` trains the plain-load lens, on W_U's device.

    Only the CPU exists here, and transformers does not dispatch a one-device map, so this
    checks the load arguments and the lens placement only; a real cross-device split is
    untested (docs/howto/distributed.md says so).
    """
    from conftest import make_word_tokenizer
    from transformer_lens.model_bridge import TransformerBridge
    from transformers import GPT2Config, GPT2LMHeadModel

    from futurelens_tl.model import as_view

    torch.manual_seed(0)
    tok = make_word_tokenizer(tmp_path, 61)
    hf = GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=32, n_head=4, n_positions=32,
                                    vocab_size=61, bos_token_id=0, eos_token_id=0))
    hf.save_pretrained(tmp_path / "m")
    tok.save_pretrained(tmp_path / "m")
    plain = TransformerBridge.boot_transformers(str(tmp_path / "m"), device="cpu")
    device_map = {"transformer.wte": "cpu", "transformer.wpe": "cpu", "transformer.h.0": "cpu",
                  "transformer.h.1": "cpu", "transformer.ln_f": "cpu", "lm_head": "cpu"}
    mapped = TransformerBridge.boot_transformers(str(tmp_path / "m"), device_map=device_map)
    assert getattr(mapped.cfg, "n_devices", 1) == 1  # one device: no real split (see above)
    assert as_view(mapped).fingerprint == as_view(plain).fingerprint
    w = torch.randint(1, 61, (8, 16), generator=torch.Generator().manual_seed(0))
    lenses = []
    for model in (mapped, plain):
        lens = fl.TunedLens(model)
        assert all(p.device == as_view(model).W_U.device for p in lens.parameters())
        lens.train_on(w, tokens=8 * 16 * 3, batch_size=4, verbose=False)
        lenses.append(lens)
    assert _max_diff(*lenses) <= 1e-6
    assert float(lenses[0].translators[1].weight.detach().abs().max()) > 1e-6  # it trained (from 0)
