"""The main job: one command that exercises every capability and writes an offline report.

``futurelens-tl report --model toy --out DIR`` (or :func:`build_report`) runs these stages, each
timed, with a progress bar over them:

1. ``model``   load (or train and cache) the model; its summary;
2. ``lenses``  train (cached) the tuned lens; evaluate it against the logit lens and the bigram
               baseline; the side-by-side grid for a few prompts (logit | tuned | future);
3. ``future``  cache Future Lens features once, train (cached) the learned prompt and the
               linear-hidden map, evaluate both teacher-forced and free-running (the paper's
               figure);
4. ``layer0``  the weight-only layer-0 decomposition: positional attention, T^pp heatmap, term
               contributions, detokenization AUROC per head and top prefixes;
5. ``heads``   head-role tagging: the layer x head grid and the full score table.

Every setting is validated by :meth:`ReportConfig.validate` **before** anything is loaded
(a missing ``texts`` file, an unknown role, ``out`` being a regular file, non-integer
``future_layers``, a zero budget: :class:`ReportUsageError`). The report is built in a hidden
staging folder beside ``out`` and moved into place only when complete, so a failed run leaves
no partial output folder.

Outputs in ``DIR``: ``index.html`` (every asset inlined, opens offline), ``figures/*.png``,
``tables/*.csv`` and ``tables/*.json``. Trained lenses **and the Future Lens features** are
cached under ``$FUTURELENS_CACHE/report/<model fingerprint>/`` (default: the user cache dir),
keyed by a sha256 of every setting they depend on (corpus, budgets, layers, seed), so a second
run with the same settings only evaluates.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from futurelens_tl._io import atomic_write, dir_mode, sha256_hex, write_text
from futurelens_tl.progress import progress

__all__ = ["STAGES", "ReportConfig", "ReportResult", "ReportUsageError", "build_report"]

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
        tuned_tokens: Tuned-lens training tokens (default 131072 toy, 1048576 otherwise).
        future_examples: Future Lens training documents (default 200 toy, 2000 otherwise).
        future_layers: Future Lens source layers, ``"0,1,2"`` or a list (default: all blocks).
        eval_windows: Evaluation windows of the lens comparison (default 48 toy, 64 otherwise).
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

            try:
                train, test = (corpus(name, s, download=False) for s in ("train", "heldout"))
            except FileNotFoundError as err:
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


def cache_root() -> Path:
    """``$FUTURELENS_CACHE`` or the user cache folder (:func:`futurelens_tl.paths.cache_root`)."""
    from futurelens_tl.paths import cache_root as root

    return root()


_cache_root = cache_root  # old private name


def _round_frame(df: Any, digits: int = 3) -> Any:
    """Round float columns (3 significant decimals) for display."""
    import pandas as pd

    out = df.copy()
    for c in out.columns:
        if pd.api.types.is_float_dtype(out[c]):
            out[c] = out[c].round(digits)
    return out


def _flat_columns(df: Any, *, prefix: str | None = None) -> Any:
    """A pivot table for display: index back as a labelled column, column labels named.

    ``prefix`` names the pivoted values (``"N="`` turns columns ``0, 1`` into ``N=0, N=1``).
    """
    df = df.copy()
    if df.columns.nlevels > 1:
        df.columns = [" ".join(str(x) for x in c if str(x) != "") for c in df.columns]
    else:
        df.columns = [f"{prefix}{c}" if prefix else str(c) for c in df.columns]
    df.columns.name = None
    return df.reset_index()


def tidy_figure(fig: Any) -> Any:
    """Report style for every figure: integer layer ticks, readable legends.

    A layer axis (``xlabel`` starting with ``layer``/``block``) gets integer ticks; its
    ``-1 = embed`` label is kept only when a point sits at ``x = -1``.
    """
    from matplotlib.ticker import MaxNLocator

    for ax in fig.axes:
        label = ax.get_xlabel()
        if label.lower().startswith(("layer", "block", "source layer")):
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            xs = [x for line in ax.get_lines() for x in line.get_xdata()
                  if len(line.get_xdata()) > 1]
            if "embed" in label and not any(float(x) < 0 for x in xs):
                ax.set_xlabel(re.sub(r"\s*\(-1 = embed\)", "", label))
        leg = ax.get_legend()
        if leg is not None:
            leg.set_frame_on(True)
            leg.get_frame().set_alpha(0.9)
            for t in leg.get_texts():
                t.set_fontsize(8)
    return fig


class _Report:
    def __init__(self, cfg: ReportConfig, staging: Path):
        from futurelens_tl.viz.report import Section

        self.cfg = cfg
        self.out = staging
        (self.out / "figures").mkdir(parents=True, exist_ok=True)
        (self.out / "tables").mkdir(parents=True, exist_ok=True)
        self.sections: list[Section] = []
        self.Section = Section
        self.timings: dict[str, float] = {}
        self.files: list[Path] = []
        self.cache_hits: list[str] = []
        self.substeps: dict[str, float] = {}  # finer timings inside a stage (seconds)
        self.cpu: dict[str, float] = {}

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        t0, c0 = time.perf_counter(), time.process_time()
        yield
        self.timings[name] = time.perf_counter() - t0
        self.cpu[name] = time.process_time() - c0  # CPU seconds: comparable across loads

    def figure(self, fig: Any, name: str, alt: str, *, inline: bool = True) -> str:
        """Save ``fig`` as PNG beside the report; return it inlined (base64) if ``inline``."""
        import matplotlib.pyplot as plt

        from futurelens_tl.viz.figures import save_figure
        from futurelens_tl.viz.html import figure_html

        tidy_figure(fig)
        path = self.out / "figures" / f"{name}.png"
        save_figure(fig, path)
        self.files.append(path)
        html = figure_html(fig, alt=alt) if inline else ""
        plt.close(fig)
        return html

    def table(self, df: Any, name: str, *, max_rows: int = 30, caption: str | None = None) -> str:
        from futurelens_tl.viz.html import dataframe_html

        path = self.out / "tables" / f"{name}.csv"
        atomic_write(path, lambda tmp: df.to_csv(tmp, index=False))
        self.files.append(path)
        if max_rows < 1:
            return ""
        return dataframe_html(_round_frame(df).head(max_rows), caption=caption,
                              float_format="{:.3g}")

    def json(self, obj: Any, name: str) -> None:
        path = self.out / "tables" / f"{name}.json"
        write_text(path, json.dumps(obj, indent=2, default=str))
        self.files.append(path)

    def add(self, title: str, html: str, *, level: int = 2, note: str | None = None) -> None:
        self.sections.append(self.Section(title, html, level=level, note=note))


def _budgets(cfg: ReportConfig, is_toy: bool) -> dict[str, Any]:
    return {
        "tuned_tokens": cfg.tuned_tokens or (2**17 if is_toy else 2**20),
        "future_docs": cfg.future_examples or (200 if is_toy else 2000),
        "eval_windows": cfg.eval_windows or (48 if is_toy else 64),
    }


def _publish(staging: Path, out: Path) -> None:
    """Move the finished report from ``staging`` into ``out`` (file by file if ``out`` exists)."""
    if not out.exists():
        out.parent.mkdir(parents=True, exist_ok=True)
        os.replace(staging, out)
        return
    for src in sorted(staging.rglob("*")):
        if src.is_file():
            dst = out / src.relative_to(staging)
            dst.parent.mkdir(parents=True, exist_ok=True)
            os.replace(src, dst)
    shutil.rmtree(staging, ignore_errors=True)


def build_report(cfg: ReportConfig) -> ReportResult:
    """Validate ``cfg``, run the stages of the module docstring, write ``cfg.out/index.html``.

    Raises:
        ReportUsageError: On an invalid setting, before anything is loaded or written.

    Examples:
        >>> import tempfile
        >>> from futurelens_tl.report import ReportConfig, build_report
        >>> res = build_report(ReportConfig(out=Path(tempfile.mkdtemp()) / "r", stages=["layer0"],
        ...                                 verbose=False))  # doctest: +SKIP
    """
    parsed = cfg.validate()
    stages = parsed["stages"]
    out = Path(cfg.out).expanduser()
    anc = out.parent
    while not anc.exists():
        anc = anc.parent
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=anc))
    os.chmod(staging, dir_mode())  # mkdtemp makes it 0700; the published folder is normal
    try:
        torch.manual_seed(cfg.seed)
        rep = _Report(cfg, staging)
        state: dict[str, Any] = {"parsed": parsed}
        bar = progress(["model", *stages], verbose=cfg.verbose, desc="report")
        for name in bar:
            bar.set_postfix_str(name)
            with rep.stage(name):
                {"model": _stage_model, "lenses": _stage_lenses, "future": _stage_future,
                 "layer0": _stage_layer0, "heads": _stage_heads}[name](rep, state)
        if "lenses" in stages:  # the grid needs every lens, so it is drawn once all are trained
            with rep.stage("grid"):
                _stage_grid(rep, state)
        rep.add("Stage timings", rep.table(_timings_frame(rep.timings, rep.cpu), "timings"),
                note="Cached lenses and features: " + (", ".join(rep.cache_hits) or "none")
                     + ".")
        from futurelens_tl.viz.report import write_report

        view = state["view"]
        write_report(
            rep.out / "index.html", f"futurelens_tl report: {state['model_name']}",
            rep.sections,
            subtitle="Lenses side by side, the Future Lens, layer-0 attention from weights, "
                     "head roles.",
            meta={"model": state["model_name"], "fingerprint": view.fingerprint,
                  "basis": view.basis, "generated": time.strftime("%Y-%m-%d %H:%M")},
        )
        rep.json({**rep.timings, **rep.substeps,
                  **{f"{k} (cpu s)": v for k, v in rep.cpu.items()}}, "timings")
        _publish(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    files = [out / p.relative_to(staging) for p in rep.files]
    return ReportResult(index=out / "index.html", timings=rep.timings, files=files,
                        cache_hits=rep.cache_hits, cpu=rep.cpu)


def _timings_frame(timings: dict[str, float], cpu: dict[str, float] | None = None) -> Any:
    import pandas as pd

    cpu = cpu or {}
    df = pd.DataFrame({"stage": [*timings, "total"],
                       "seconds": [round(v, 1) for v in timings.values()]
                       + [round(sum(timings.values()), 1)],
                       "cpu_seconds": [round(cpu.get(k, float("nan")), 1) for k in timings]
                       + [round(sum(cpu.values()), 1)]})
    return df


# ---------------------------------------------------------------------------------- cache
def _cache_dir(state: dict[str, Any]) -> Path:
    return cache_root() / "report" / state["view"].fingerprint


def _key(state: dict[str, Any], *parts: Any) -> str:
    """Cache key: model fingerprint + basis + corpus + every setting in ``parts``."""
    view = state["view"]
    return sha256_hex(CACHE_VERSION, view.fingerprint, view.basis, state["corpus_id"], *parts,
                      length=16)


def _cached(rep: _Report, label: str, path: Path, train: Any, load: Any) -> Any:
    if rep.cfg.use_cache and path.exists():
        try:
            obj = load(path)
            rep.cache_hits.append(label)
            return obj
        except Exception:  # stale or foreign artifact: retrain and overwrite atomically
            pass
    obj = train()
    path.parent.mkdir(parents=True, exist_ok=True)
    obj.save(path)
    return obj


_FEATURE_TENSORS = ("tokens", "source_pos", "labels", "sources", "targets", "split",
                    "bigram_tokens", "doc", "corpus_labels")


def save_features(data: Any, path: str | os.PathLike[str]) -> None:
    """Write a :class:`~futurelens_tl.lenses.future_data.FutureLensData` (safetensors, atomic)."""
    from safetensors.torch import save_file

    tensors = {k: getattr(data, k).detach().cpu().contiguous() for k in _FEATURE_TENSORS
               if getattr(data, k, None) is not None}
    if data.train_seqs is not None:  # ragged: one flat tensor plus the lengths
        tensors["train_seqs_flat"] = torch.tensor([t for s in data.train_seqs for t in s],
                                                  dtype=torch.long)
        tensors["train_seqs_len"] = torch.tensor([len(s) for s in data.train_seqs],
                                                 dtype=torch.long)
    header = {"layers": list(data.layers), "n_max": int(data.n_max),
              "label_source": data.label_source, "fingerprint": data.fingerprint,
              "basis": data.basis, "n_forward": int(data.n_forward),
              "label_passes": int(data.label_passes),
              "meta": json.loads(json.dumps(data.meta, default=str)),
              "checksum": sha256_hex(*(tensors[k] for k in sorted(tensors)))}
    atomic_write(path, lambda tmp: save_file(tensors, tmp,
                                             metadata={"futurelens_features": json.dumps(header)}))


def load_features(path: str | os.PathLike[str], model: Any) -> Any:
    """Read what :func:`save_features` wrote; refuse other models and corrupt tensors."""
    from safetensors import safe_open

    from futurelens_tl.lenses.future_data import FutureLensData

    with safe_open(os.fspath(path), framework="pt") as f:
        header = json.loads(f.metadata()["futurelens_features"])
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    if sha256_hex(*(tensors[k] for k in sorted(tensors))) != header["checksum"]:
        raise ValueError(f"{path}: feature tensors do not match their checksum")
    train_seqs = None
    if "train_seqs_len" in tensors:
        parts = torch.split(tensors["train_seqs_flat"], tensors["train_seqs_len"].tolist())
        train_seqs = [p.tolist() for p in parts]
    data = FutureLensData(
        **{k: tensors.get(k) for k in _FEATURE_TENSORS}, train_seqs=train_seqs,
        layers=header["layers"],
        n_max=header["n_max"], label_source=header["label_source"],
        fingerprint=header["fingerprint"], basis=header["basis"],
        n_forward=header["n_forward"], label_passes=header["label_passes"], meta=header["meta"])
    data.check_model(model)
    return data


# --------------------------------------------------------------------------------- stages
def _corpus(state: dict[str, Any], split: str, n: int) -> list[str]:
    """Training or held-out documents: ``texts`` (a corpus or a file), else the toy corpus."""
    texts = state["parsed"]["texts"]
    if texts:
        return texts["train" if split == "train" else "test"][:n]
    from futurelens_tl.toy import toy_texts

    return toy_texts(split, n=n, seed=state["seed"])


def _stage_model(rep: _Report, state: dict[str, Any]) -> None:
    import pandas as pd

    from futurelens_tl.model import as_view, load_model
    from futurelens_tl.viz.html import dataframe_html

    cfg = rep.cfg
    model = load_model(cfg.model, backend=cfg.backend, device=cfg.device, dtype=cfg.dtype,
                       verbose=cfg.verbose)
    view = as_view(model)
    texts = state["parsed"]["texts"]
    state.update(model=model, view=view, is_toy=cfg.model == "toy", seed=cfg.seed,
                 model_name=cfg.model, corpus_id=texts["id"] if texts else "toy-corpus")
    state["budgets"] = _budgets(cfg, state["is_toy"])
    desc = view.describe()
    extra = ""
    if state["is_toy"]:
        from futurelens_tl.toy import toy_stats

        stats = toy_stats(cfg.seed)
        desc["toy_training"] = stats
        keys = ("heldout_loss", "unigram_loss", "bigram_loss", "steps", "tokens", "train_time_s")
        rows = {k: stats[k] for k in keys if k in stats}
        ind = stats.get("induction")
        if isinstance(ind, dict):  # one readable row per induction statistic, never raw JSON
            rows.update({f"induction: {k}": v for k, v in ind.items()
                         if isinstance(v, (int, float, str))})
        if rows:
            vals = [f"{v:.3g}" if isinstance(v, float) else str(v) for v in rows.values()]
            extra = "<h4>What the toy model learned</h4>" + dataframe_html(
                pd.DataFrame({"statistic": list(rows), "value": vals}),
                caption="held-out loss in nats/token against the unigram and bigram "
                        "baselines; induction: attention and loss on repeated random tokens")
    rep.json(desc, "model")
    table = pd.DataFrame({"field": list(desc), "value": [
        f"{v:.4g}" if isinstance(v, float) else str(v) for v in desc.values()]})
    rep.add("Model", dataframe_html(table[table.field != "toy_training"]) + extra)


def _stage_lenses(rep: _Report, state: dict[str, Any]) -> None:
    import futurelens_tl as fl

    model, b = state["model"], state["budgets"]
    train = _corpus(state, "train", 400)
    key = _key(state, "tuned", b["tuned_tokens"], state["seed"], 400)
    tuned = _cached(
        rep, "tuned lens", _cache_dir(state) / f"tuned_{key}.safetensors",
        lambda: fl.TunedLens.fit(model, train, tokens=b["tuned_tokens"], seed=state["seed"],
                                 verbose=rep.cfg.verbose),
        lambda p: fl.TunedLens.load(p, model),
    )
    logit = fl.LogitLens(model)
    state.update(logit=logit, tuned=tuned)
    test = _corpus(state, "test", 200)
    ev = fl.evaluate(model, [logit, tuned], test, k=(1, 5, 10), max_windows=b["eval_windows"],
                     baseline_texts=train)
    parts = [
        "<p>Same-position readouts on held-out text: precision@k against the model's own "
        "next-token prediction, KL(final &#8214; lens) in nats, and the bigram baseline "
        "(counted on the training corpus; dashed line) as the control.</p>",
        rep.figure(ev.plot("precision", k=1), "lens_precision_at_1", "precision@1 by layer"),
        rep.figure(ev.plot("kl", k=None), "lens_kl", "KL to the final distribution by layer"),
        rep.table(_flat_columns(ev.pivot("kl")), "lens_kl_by_layer",
                  caption="KL(final || lens) in nats per layer (lower is closer to the output)"),
    ]
    atomic_write(rep.out / "tables" / "lens_evaluation_long.csv",
                 lambda tmp: ev.to_dataframe().to_csv(tmp, index=False))
    rep.add("Logit lens and tuned lens", "".join(parts))


def _stage_future(rep: _Report, state: dict[str, Any]) -> None:
    from futurelens_tl.lenses.future import FutureLens

    model, view, b = state["model"], state["view"], state["budgets"]
    layers = state["parsed"]["future_layers"] or list(range(view.n_layers))
    bad = [x for x in layers if not -1 <= x < view.n_layers]
    if bad:
        raise ReportUsageError(f"future_layers={layers}: {bad} out of range for this model "
                               f"(layers -1 .. {view.n_layers - 1})")
    n_docs = b["future_docs"]
    common = {"n_max": 3, "window": 64, "layers": layers, "batch_size": 64}
    train_set = {**common, "contexts_per_window": 6, "seed": state["seed"],
                 "splits": (0.9, 0.1, 0.0), "n_docs": n_docs}
    test_set = {**common, "contexts_per_window": 4, "seed": state["seed"] + 1,
                "splits": (0.0, 0.0, 1.0), "n_docs": max(8, n_docs // 4)}

    def build(settings: dict[str, Any], split: str) -> Any:
        kw = {k: v for k, v in settings.items() if k != "n_docs"}
        return _features_cached(rep, state, split, settings, kw)

    t0 = time.perf_counter()
    data = build(train_set, "train")
    test = build(test_set, "test")
    test.bigram_tokens = data.bigram_tokens  # bigram counted on the training corpus
    test.train_seqs = data.train_seqs  # n-gram baselines: the training documents
    rep.substeps["future: features"] = time.perf_counter() - t0
    tag = _key(state, "future", train_set)
    t0 = time.perf_counter()
    lp = _cached(
        rep, "future lens (learned prompt)",
        _cache_dir(state) / f"future_learned_{tag}.safetensors",
        lambda: FutureLens.fit(model, None, "learned_prompt", layers=layers, n_ahead=(1, 2, 3),
                               data=data, verbose=rep.cfg.verbose, prompt_batch_size=32,
                               prompt_grad_accum=1, prompt_lr=3e-2, prompt_epochs=2),
        lambda p: FutureLens.load(p, model),
    )
    rep.substeps["future: learned prompt"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    lin = _cached(
        rep, "future lens (linear hidden)",
        _cache_dir(state) / f"future_linear_{tag}.safetensors",
        lambda: FutureLens.fit(model, None, "linear_hidden", layers=layers, n_ahead=(0, 1, 2, 3),
                               data=data, verbose=rep.cfg.verbose, linear_epochs=1),
        lambda p: FutureLens.load(p, model),
    )
    rep.substeps["future: linear hidden"] = time.perf_counter() - t0
    state["future"] = lp
    t0 = time.perf_counter()
    ev = FutureLens.evaluate_many([lp, lin], model, data=test, n_ahead=(0, 1, 2, 3),
                                  k=tuple(range(1, 11)), verbose=rep.cfg.verbose)
    rep.substeps["future: evaluation"] = time.perf_counter() - t0
    df = ev.to_dataframe()
    p1 = df[(df.metric == "precision") & (df.k == 1) & df.bucket.isna()]
    piv = _flat_columns(p1.pivot_table(index=["method", "mode", "layer"], columns="n_ahead",
                                       values="value"), prefix="N=")
    parts = [
        "<p>Pal et al. (2023): predict the token N positions after the next one from a single "
        "hidden state h<sub>T</sub><sup>l</sup>. <b>Teacher-forced</b> (the paper's protocol, "
        "token-fed for N &#8805; 1) and <b>free-running</b> greedy generation are reported "
        "separately; the bigram baseline (dashed) is the control for token-fed N = 1. Labels: "
        "the model's own greedy continuation. x axis: block l (paper In-Layer l+1).</p>",
        rep.figure(ev.plot("precision", k=1), "future_precision_at_1",
                   "precision@1 per layer, one panel per N"),
        rep.figure(ev.plot("surprisal", k=None), "future_surprisal", "surprisal per layer"),
        rep.table(piv, "future_precision_at_1",
                  caption="precision@1 per method, mode and source layer; columns: N tokens "
                          "after the next one"),
    ]
    atomic_write(rep.out / "tables" / "future_evaluation_long.csv",
                 lambda tmp: df.to_csv(tmp, index=False))
    rep.add("Future Lens", "".join(parts))


def _features_cached(rep: _Report, state: dict[str, Any], split: str,
                     settings: dict[str, Any], kw: dict[str, Any]) -> Any:
    from futurelens_tl.lenses.future_data import build_features

    path = _cache_dir(state) / f"features_{split}_{_key(state, settings)}.safetensors"
    if rep.cfg.use_cache and path.exists():
        try:
            data = load_features(path, state["model"])
            rep.cache_hits.append(f"future features ({split})")
            return data
        except Exception:  # corrupt or foreign: rebuild and overwrite atomically
            pass
    data = build_features(state["model"], _corpus(state, split, settings["n_docs"]),
                          verbose=rep.cfg.verbose, **kw)
    save_features(data, path)
    return data


def _stage_grid(rep: _Report, state: dict[str, Any]) -> None:
    import futurelens_tl as fl

    prompts = rep.cfg.prompts
    if not prompts:
        if state["is_toy"]:
            from futurelens_tl.toy import TOY_PROMPTS

            prompts = list(TOY_PROMPTS[:3])
        else:
            prompts = ["Marty McFly from", "The Eiffel Tower is located in the city of"]
    lenses = [state[k] for k in ("logit", "tuned", "future") if k in state]
    parts = ["<p>One shared layer &#215; position grid per prompt: cell text is the top-1 "
             "token (whitespace shown as &#9251;), colour is switchable (probability, rank of "
             "the true next token, KL, entropy, a pinned token) on one scale across lenses; "
             "hover for the top-k; click a token to pin its trajectory. Future Lens cells add "
             "the free-running continuation.</p>"]
    grids = []
    for i, prompt in enumerate(prompts):
        title = f"Prompt {i + 1}: {prompt}"
        cmp = fl.compare(state["model"], prompt, lenses, title=title)
        parts.append(cmp.html())  # the grid shows ``title`` as its heading
        cmp.save_png(rep.out / "figures" / f"grid_{i}.png")
        rep.files.append(rep.out / "figures" / f"grid_{i}.png")
        grids.append(cmp.grid)
    rep.json(grids, "grids")
    rep.sections.insert(1, rep.Section("Lenses side by side", "".join(parts)))


def _esc(text: str) -> str:
    from futurelens_tl.viz.html import escape

    return escape(text)


def _stage_layer0(rep: _Report, state: dict[str, Any]) -> None:
    import pandas as pd

    from futurelens_tl.attention.layer0 import (
        count_bigrams,
        decompose_first_layer,
        detokenization_scores,
    )
    from futurelens_tl.data import token_windows

    model, view = state["model"], state["view"]
    try:
        dec = decompose_first_layer(model)
    except NotImplementedError as err:
        rep.add("Layer-0 attention from weights",
                f"<p>Not available for this model: {_esc(str(err))}</p>",
                note=f"positional embedding: {view.positional_embedding_type}")
        return
    texts = _corpus(state, "train", 300)
    windows = token_windows(model, texts, length=min(view.n_ctx, 64))
    counts = count_bigrams(windows, view.d_vocab)
    auroc = detokenization_scores(dec, counts)  # mean AUROC per head, unseen suffixes = 0
    flat = auroc.reshape(-1)
    auroc_df = pd.DataFrame({"head": range(flat.numel()),
                             "mean_auroc": [round(float(x), 3) for x in flat]})
    best = int(flat.argmax())
    contrib = dec.contributions(windows[:16])
    q = dec.default_query_pos()
    suffixes = [int(t) for t in windows[0, 2:7]]
    parts = [
        "<p>Kamoda et al. (2025): layer-0 attention decomposed exactly into token, position and "
        "mixed terms from the weights alone (no forward pass).</p>",
        rep.figure(dec.plot_positional_attention(q), "layer0_positional_attention",
                   "predicted positional attention"),
        rep.figure(dec.plot_position_heatmap(q), "layer0_Tpp", "T^pp heatmap"),
        rep.figure(contrib.plot("loo"), "layer0_contributions", "term contributions"),
        "<h4>Detokenization AUROC per head</h4>",
        rep.table(auroc_df, "layer0_detokenization_auroc",
                  caption="Mean AUROC over suffix tokens: does the head's token-token score "
                          "rank a suffix's frequent corpus prefixes above the others? 0.5 = "
                          "chance (the control). Below 0.5 means the head attends away from "
                          "frequent prefixes (it is not a detokenization head); suffixes never "
                          "seen in the corpus count as 0, which pulls heads below chance on a "
                          "small corpus."),
        f"<h4>Top prefixes (head {best}, the highest AUROC)</h4>",
        dec.top_prefix_table_html(suffixes, [best], k=5),
    ]
    rep.table(dec.to_dataframe(q), "layer0_positional", max_rows=0)
    rep.add("Layer-0 attention from weights", "".join(parts))


def _stage_heads(rep: _Report, state: dict[str, Any]) -> None:
    from futurelens_tl.attention.heads import tag_heads

    tags = tag_heads(state["model"], roles=state["parsed"]["roles"], seed=state["seed"],
                     verbose=rep.cfg.verbose)
    df = tags.to_dataframe()
    tagged = df[df.tagged] if "tagged" in df else df
    rep.figure(tags.plot(), "head_roles", "head-role grid", inline=False)  # PNG file only
    parts = [
        "<p>Every head scored for every role of the attention-heads survey (Zheng et al. 2024); "
        "colour = dominant tagged role, hover for all scores. Thresholds and their sources are "
        "in the table.</p>",
        tags._repr_html_(),
        "<h4>Tagged heads</h4>",
        rep.table(tagged, "head_roles_tagged", max_rows=60),
    ]
    rep.table(df, "head_roles_all", max_rows=0)
    rep.add("Attention-head roles", "".join(parts))
