"""Training, evaluation and on-disk format of the toy GPT-2 model.

The model is a Hugging Face ``GPT2LMHeadModel`` (learned absolute positions, LayerNorm, biases,
tied embeddings, GELU MLP, no dropout) trained on CPU on the endless document stream of
:func:`futurelens_tl.toy.corpus.iter_documents`. A checkpoint directory holds the Hugging Face
files (``config.json``, ``model.safetensors``, tokenizer files) plus ``futurelens_toy.json``
with the format version, the cache key, the configuration and the training statistics (loss vs
unigram and bigram baselines, induction score). It loads with the public
``TransformerBridge.boot_transformers(dir)`` and keeps the raw (Hugging Face) residual basis.

Training is deterministic given the seed on a fixed machine and thread count: the model init,
the data order and the optimizer draw no randomness from global state other than the
``torch.manual_seed(seed)`` set at the start.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Int
from torch import Tensor

from futurelens_tl.toy.corpus import CORPUS_VERSION, iter_documents

__all__ = [
    "FORMAT_VERSION",
    "META_FILE",
    "ToyConfig",
    "baseline_losses",
    "evaluate_loss",
    "induction_scores",
    "read_meta",
    "token_stream",
    "train_toy",
]

#: Version of the checkpoint directory layout / training recipe (part of the cache key).
FORMAT_VERSION = 1
META_FILE = "futurelens_toy.json"
#: Offset between the training and the held-out document seeds.
HELDOUT_OFFSET = 1_000_003


@dataclass(frozen=True)
class ToyConfig:
    """Corpus, tokenizer, architecture and training hyperparameters of a toy model.

    The *architecture* fields (``model_fields``) decide whether a checkpoint "matches" a
    request; the training fields only change how long it was trained.
    """

    seed: int = 0
    vocab_size: int = 1536
    tokenizer_docs: int = 4000
    n_layer: int = 4
    d_model: int = 128
    n_head: int = 4
    d_mlp: int = 512
    n_ctx: int = 128
    steps: int = 450
    batch_size: int = 32
    lr: float = 2e-3
    warmup: int = 30
    weight_decay: float = 0.05
    min_lr_frac: float = 0.1

    @staticmethod
    def model_fields() -> tuple[str, ...]:
        return ("seed", "vocab_size", "tokenizer_docs", "n_layer", "d_model", "n_head", "d_mlp",
                "n_ctx")

    def model_dict(self) -> dict[str, Any]:
        d = {k: getattr(self, k) for k in self.model_fields()}
        d["corpus_version"] = CORPUS_VERSION
        d["format_version"] = FORMAT_VERSION
        return d

    def key(self) -> str:
        """Cache key: corpus version + format version + the whole configuration."""
        d = dataclasses.asdict(self)
        d["corpus_version"] = CORPUS_VERSION
        d["format_version"] = FORMAT_VERSION
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]

    def validate(self) -> None:
        for k in ("vocab_size", "tokenizer_docs", "n_layer", "d_model", "n_head", "d_mlp",
                  "n_ctx", "steps", "batch_size"):
            v = getattr(self, k)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"{k}={v!r} must be a positive int.")
        if self.d_model % self.n_head:
            raise ValueError(
                f"d_model={self.d_model} must be divisible by n_head={self.n_head}."
            )
        if not isinstance(self.seed, int) or isinstance(self.seed, bool):
            raise TypeError(f"seed={self.seed!r} must be an int.")


def hf_config(cfg: ToyConfig) -> Any:
    """The ``transformers.GPT2Config`` of a toy configuration."""
    from transformers import GPT2Config

    return GPT2Config(
        vocab_size=cfg.vocab_size,
        n_positions=cfg.n_ctx,
        n_embd=cfg.d_model,
        n_layer=cfg.n_layer,
        n_head=cfg.n_head,
        n_inner=cfg.d_mlp,
        activation_function="gelu_new",
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        bos_token_id=0,
        eos_token_id=0,
        tie_word_embeddings=True,
    )


def token_stream(tokenizer: Any, seed: int, doc_seed: int, chunk: int = 256) -> Iterator[int]:
    """Endless token ids of the document stream, each document preceded by BOS."""
    docs = iter_documents(seed, doc_seed)
    bos = int(tokenizer.bos_token_id)
    while True:
        texts = [next(docs) for _ in range(chunk)]
        for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]:
            yield bos
            yield from ids


def batches(
    tokenizer: Any,
    cfg: ToyConfig,
    doc_seed: int,
    repeat_frac: float = 0.0,
    rng_seed: int = 0,
    skip_tokens: int = 0,
    counter: dict[str, int] | None = None,
) -> Iterator[Int[Tensor, "batch pos"]]:
    """Endless ``[batch, n_ctx]`` windows; every window starts with BOS (as TL prepends it).

    With ``repeat_frac > 0`` that fraction of rows (drawn from a generator seeded with
    ``rng_seed``) is a repeated random-token row instead: BOS, 0-40 corpus tokens, then a random
    span of 4-30 merged BPE tokens repeated until the window is full. The span length varies
    between rows, so only content-based copying (induction), not a fixed-offset positional head,
    lowers the loss (reference ``head-roles.md`` §7a). ``skip_tokens`` corpus tokens are skipped
    first; ``counter["tokens"]`` counts the corpus tokens consumed.
    """
    stream = token_stream(tokenizer, cfg.seed, doc_seed)
    for _ in range(skip_tokens):
        next(stream)
    counter = {} if counter is None else counter
    counter.setdefault("tokens", 0)
    bos = int(tokenizer.bos_token_id)
    n = cfg.n_ctx - 1
    g = torch.Generator().manual_seed(rng_seed)
    lo = min(257, cfg.vocab_size - 1)
    while True:
        rows = []
        for _ in range(cfg.batch_size):
            if repeat_frac > 0 and float(torch.rand((), generator=g)) < repeat_frac:
                pre = int(torch.randint(0, 41, (), generator=g))
                L = int(torch.randint(4, 31, (), generator=g))
                span = torch.randint(lo, cfg.vocab_size, (L,), generator=g).tolist()
                body = [next(stream) for _ in range(pre)]
                counter["tokens"] += pre
                while len(body) < n:
                    body += span
                rows.append([bos] + body[:n])
                continue
            body = [next(stream) for _ in range(n)]
            counter["tokens"] += n
            rows.append([bos] + body)
        yield torch.tensor(rows, dtype=torch.long)


def _lr_at(step: int, cfg: ToyConfig) -> float:
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    frac = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    cos = 0.5 * (1 + math.cos(math.pi * min(1.0, frac)))
    return cfg.lr * (cfg.min_lr_frac + (1 - cfg.min_lr_frac) * cos)


@torch.no_grad()
def evaluate_loss(model: Any, tokenizer: Any, cfg: ToyConfig, n_batches: int = 8) -> float:
    """Mean next-token loss (nats) of a HF model on held-out documents."""
    model.eval()
    it = batches(tokenizer, dataclasses.replace(cfg, batch_size=16), cfg.seed + HELDOUT_OFFSET)
    losses = [float(model(x, labels=x).loss) for x, _ in zip(it, range(n_batches))]
    return sum(losses) / len(losses)


def baseline_losses(
    tokenizer: Any, cfg: ToyConfig, n_train_docs: int = 4000, n_test_docs: int = 500
) -> dict[str, float]:
    """Unigram and bigram cross-entropy (nats/token) on held-out documents.

    Counts come from ``n_train_docs`` training documents; the unigram model uses add-one
    smoothing, the bigram model interpolates (0.9 / 0.1) with the unigram one. The unigram
    *entropy* of the training distribution is returned too.
    """
    v = cfg.vocab_size

    def ids(doc_seed: int, n: int) -> list[int]:
        it = token_stream(tokenizer, cfg.seed, doc_seed, chunk=n)
        out = []
        bos = int(tokenizer.bos_token_id)
        docs = 0
        for t in it:
            if t == bos:
                docs += 1
                if docs > n:
                    break
            out.append(t)
        return out

    train = torch.tensor(ids(cfg.seed, n_train_docs))
    test = torch.tensor(ids(cfg.seed + HELDOUT_OFFSET, n_test_docs))
    uni = torch.bincount(train, minlength=v).double() + 1.0
    p_uni = uni / uni.sum()
    big = torch.zeros(v, v, dtype=torch.float64)
    big.index_put_((train[:-1], train[1:]), torch.ones(len(train) - 1, dtype=torch.float64),
                   accumulate=True)
    rows = big.sum(1, keepdim=True)
    p_big = torch.where(rows > 0, big / rows.clamp_min(1), p_uni)
    p_big = 0.9 * p_big + 0.1 * p_uni
    prev, nxt = test[:-1], test[1:]
    return {
        "unigram_entropy": float(-(p_uni * p_uni.log()).sum()),
        "unigram_loss": float(-p_uni[nxt].log().mean()),
        "bigram_loss": float(-p_big[prev, nxt].log().mean()),
    }


@torch.no_grad()
def induction_scores(
    model: Any,
    cfg: ToyConfig,
    lengths: tuple[int, ...] = (7, 12, 19, 26),
    n_seqs: int = 16,
    seed: int = 0,
) -> dict[str, Any]:
    """Induction attention and second-copy loss drop on repeated random tokens.

    Sequences are ``[BOS] + prefix + r + r`` with a random prefix of 0-15 tokens and repeat
    lengths ``lengths`` (varied, so a fixed-offset positional head cannot pass; reference
    ``head-roles.md`` §7a). Tokens are drawn from the merged BPE tokens (ids >= 257). A head's
    score is its mean attention, over second-copy positions, on the token right after the
    previous occurrence of the current token (the induction stripe; TL ``detect_head`` style).

    Returns:
        ``{"head_scores": [[layer][head]], "best_head": [l, h], "best_score": float,
        "first_copy_loss": float, "second_copy_loss": float}``.
    """
    g = torch.Generator().manual_seed(seed)
    model.eval()
    max_len = max(2, (cfg.n_ctx - 16) // 2)  # prefix (<16) + two copies must fit n_ctx
    lengths = tuple(sorted({min(L, max_len) for L in lengths}))
    scores = torch.zeros(cfg.n_layer, cfg.n_head)
    first, second, count = 0.0, 0.0, 0
    for L in lengths:
        pre = int(torch.randint(0, 16, (1,), generator=g))
        r = torch.randint(257, cfg.vocab_size, (n_seqs, L), generator=g)
        p = torch.randint(257, cfg.vocab_size, (n_seqs, pre), generator=g)
        x = torch.cat([torch.zeros(n_seqs, 1, dtype=torch.long), p, r, r], dim=1)
        out = model(x, output_attentions=True)
        logp = out.logits.log_softmax(-1)
        nll = -logp[:, :-1].gather(-1, x[:, 1:, None])[..., 0]  # loss of predicting pos i+1
        s1 = 1 + pre  # first copy start
        s2 = s1 + L  # second copy start
        first += float(nll[:, s1 : s2 - 1].mean())
        second += float(nll[:, s2 : s2 + L - 1].mean())
        q = torch.arange(s2, s2 + L)
        k = q - L + 1
        for layer, att in enumerate(out.attentions):  # [batch, head, q, k]
            scores[layer] += att[:, :, q, k].mean(dim=(0, 2))
        count += 1
    scores /= count
    flat = int(scores.argmax())
    return {
        "head_scores": [[round(float(v), 4) for v in row] for row in scores],
        "best_head": [flat // cfg.n_head, flat % cfg.n_head],
        "best_score": float(scores.max()),
        "first_copy_loss": first / count,
        "second_copy_loss": second / count,
    }


def _model_key(cfg: ToyConfig) -> str:
    return hashlib.sha256(json.dumps(cfg.model_dict(), sort_keys=True).encode()).hexdigest()[:16]


def _build_model(cfg: ToyConfig) -> Any:
    from transformers import GPT2LMHeadModel

    hf = hf_config(cfg)
    hf._attn_implementation = "eager"  # output_attentions for the induction score
    torch.manual_seed(cfg.seed)
    return GPT2LMHeadModel(hf)


def train_toy(
    cfg: ToyConfig,
    out_dir: str | os.PathLike,
    *,
    verbose: bool = True,
    dtype: torch.dtype = torch.float32,
    num_threads: int | None = 2,
    init_from: str | os.PathLike | None = None,
    repeat_frac: float = 0.0,
) -> dict[str, Any]:
    """Train a toy model and write its checkpoint directory atomically.

    The model is trained in a temporary sibling directory that replaces ``out_dir`` with
    ``os.replace`` only when complete, so an interrupted run never leaves a half-written
    checkpoint.

    Args:
        cfg: Configuration (``cfg.steps`` x ``cfg.batch_size`` windows of ``cfg.n_ctx`` tokens).
        out_dir: Destination checkpoint directory.
        verbose: Show a progress bar.
        dtype: Storage dtype of the saved weights (``float32`` or ``float16``; loaders cast
            back to float32).
        num_threads: ``torch.set_num_threads`` during training (restored afterwards); ``None``
            leaves it unchanged.
        init_from: Continue training from this checkpoint directory (same architecture and
            tokenizer): a new phase of ``cfg.steps`` steps with a fresh optimizer and schedule,
            on the documents that follow those the earlier phases consumed. The metadata
            records every phase (``stats.phases``) and the total steps and tokens.
        repeat_frac: Fraction of training rows replaced by repeated random-token rows (an
            induction curriculum; see :func:`batches`). 0 for the pure corpus.

    Returns:
        The metadata written to ``futurelens_toy.json``.
    """
    from futurelens_tl.progress import progress
    from futurelens_tl.toy.tokenizer import train_tokenizer

    cfg.validate()
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".toy-train-", dir=out_dir.parent))
    old_threads = torch.get_num_threads()
    if num_threads:
        torch.set_num_threads(num_threads)
    try:
        t0 = time.time()
        tok = train_tokenizer(cfg.vocab_size, cfg.seed, cfg.tokenizer_docs, save_dir=tmp)
        model = _build_model(cfg)
        phases: list[dict[str, Any]] = []
        done_steps = 0
        if init_from is not None:
            from safetensors.torch import load_file

            prev = read_meta(init_from)
            if prev is None or prev.get("model_key") != _model_key(cfg):
                raise ValueError(
                    f"init_from={os.fspath(init_from)!r} is not a checkpoint of this "
                    "architecture/corpus (model_key mismatch)."
                )
            pst, pcfg = prev["stats"], prev["config"]
            phases = list(pst.get("phases") or [
                {"steps": pst["steps"], "batch_size": pcfg["batch_size"], "lr": pcfg["lr"],
                 "warmup": pcfg["warmup"], "time_s": pst.get("train_time_s", 0.0)}
            ])
            done_steps = sum(ph["steps"] for ph in phases)
            state = load_file(str(Path(init_from) / "model.safetensors"))
            missing, _ = model.load_state_dict(
                {k: v.float() for k, v in state.items()}, strict=False
            )
            if [m for m in missing if "lm_head" not in m]:
                raise ValueError(f"init_from checkpoint lacks weights: {missing}")
        if not 0.0 <= repeat_frac < 1.0:
            raise ValueError(f"repeat_frac={repeat_frac!r} must be in [0, 1).")
        phases.append({"steps": cfg.steps, "batch_size": cfg.batch_size, "lr": cfg.lr,
                       "warmup": cfg.warmup, "repeat_frac": repeat_frac})
        decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
        no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]
        opt = torch.optim.AdamW(
            [{"params": decay, "weight_decay": cfg.weight_decay},
             {"params": no_decay, "weight_decay": 0.0}],
            lr=cfg.lr, betas=(0.9, 0.98),
        )
        # continue on the corpus documents after those the earlier phases consumed
        done_tokens = sum(
            ph.get("stream_tokens", ph["steps"] * ph["batch_size"] * (cfg.n_ctx - 1))
            for ph in phases[:-1]
        )
        counter: dict[str, int] = {}
        data = batches(tok, cfg, cfg.seed, repeat_frac, rng_seed=cfg.seed * 7919 + done_steps,
                       skip_tokens=done_tokens, counter=counter)
        model.train()
        bar = progress(range(cfg.steps), verbose=verbose, desc="training toy model")
        ema = None
        for step in bar:
            for group in opt.param_groups:
                group["lr"] = _lr_at(step, cfg)
            x = next(data)
            loss = model(x, labels=x).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
            lv = loss.item()
            ema = lv if ema is None else 0.95 * ema + 0.05 * lv
            if hasattr(bar, "set_postfix") and step % 10 == 0:
                bar.set_postfix(loss=f"{ema:.3f}")
        train_time = time.time() - t0
        phases[-1]["time_s"] = round(train_time, 1)
        phases[-1]["stream_tokens"] = counter["tokens"]
        model.eval()
        heldout = evaluate_loss(model, tok, cfg)
        base = baseline_losses(tok, cfg, n_train_docs=cfg.tokenizer_docs,
                               n_test_docs=min(500, cfg.tokenizer_docs))
        ind = induction_scores(model, cfg)
        meta = {
            "format_version": FORMAT_VERSION,
            "corpus_version": CORPUS_VERSION,
            "key": cfg.key(),
            "model_key": _model_key(cfg),
            "config": dataclasses.asdict(cfg),
            "model_name": f"futurelens-toy-s{cfg.seed}",
            "stats": {
                "steps": sum(ph["steps"] for ph in phases),
                "tokens": sum(ph["steps"] * ph["batch_size"] for ph in phases) * cfg.n_ctx,
                "phases": phases,
                "train_time_s": round(sum(ph.get("time_s", 0.0) for ph in phases), 1),
                "final_train_loss_ema": ema,
                "heldout_loss": heldout,
                **base,
                "induction": ind,
                "torch": torch.__version__,
                "threads": torch.get_num_threads(),
            },
        }
        model.config._attn_implementation = "eager"
        if dtype != torch.float32:
            model = model.to(dtype)
        model.save_pretrained(str(tmp), safe_serialization=True)
        with open(tmp / META_FILE, "w") as f:
            json.dump(meta, f, indent=1)
        os.chmod(tmp, 0o755)
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(tmp, out_dir)
        return meta
    finally:
        torch.set_num_threads(old_threads)
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def read_meta(path: str | os.PathLike) -> dict[str, Any] | None:
    """The ``futurelens_toy.json`` metadata of a checkpoint directory, or None."""
    p = Path(path) / META_FILE
    if not p.exists():
        return None
    try:
        with open(p) as f:
            return json.load(f)
    except (OSError, json.JSONDecodeError):
        return None
