"""The futurelens-tl command line (see ``futurelens-tl --help``).

Exit status: 0 success, 2 usage error (a bad flag or value, checked before any model is
loaded), 1 runtime error (the message is printed; set ``FUTURELENS_DEBUG=1`` for the
traceback), 130 interrupted.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import traceback
from pathlib import Path
from typing import Any

__all__ = ["UsageError", "build_parser", "main"]

DESCRIPTION = """\
Lenses (logit, tuned, Future Lens), weight-only layer-0 attention decomposition and
attention-head role tagging for TransformerLens models.

examples:
  futurelens-tl report --model toy --out report
  futurelens-tl report --model smollm2-135m --texts corpus.txt --out smollm2-report
  futurelens-tl train-lens --model toy --out tuned.safetensors --tokens 65536
  futurelens-tl tag-heads --model toy --roles previous_token,induction --out heads

exit status: 0 ok, 2 usage error (checked before loading a model), 1 runtime error.
"""

DTYPES = ("float32", "bfloat16", "float16")


class UsageError(ValueError):
    """A command-line value is invalid (exit status 2)."""


class _Formatter(argparse.RawDescriptionHelpFormatter):
    """Keep the hand-wrapped description; append ``(default: X)`` unless the help states it."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if ("default" in text or action.default is None or action.default is argparse.SUPPRESS
                or not action.option_strings or action.nargs == 0 and action.default is not False):
            return text
        if action.default is False:  # a switch
            return text + " (default: off)"
        return text + " (default: %(default)s)"


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("futurelens-tl")
    except Exception:  # pragma: no cover - running from a source tree without metadata
        return "unknown"


# ------------------------------------------------------------------------- argument types
def positive_int(text: str) -> int:
    """Argparse type: an integer >= 1 (``0`` is refused, never silently replaced)."""
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"{text} must be >= 1")
    return v


def nonnegative_int(text: str) -> int:
    """Argparse type: an integer >= 0."""
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if v < 0:
        raise argparse.ArgumentTypeError(f"{text} must be >= 0")
    return v


def layer_list(text: str) -> list[int]:
    """Argparse type: comma-separated layers (integers >= -1; -1 = embedding)."""
    from futurelens_tl.report import ReportUsageError, parse_layers

    try:
        layers = parse_layers(text, arg="layers")
    except ReportUsageError as err:
        raise argparse.ArgumentTypeError(str(err)) from None
    assert layers is not None
    return layers


def _check_roles(roles: str) -> str | list[str]:
    from futurelens_tl.report import ReportConfig, ReportUsageError

    try:
        return ReportConfig(roles=roles)._roles()
    except ReportUsageError as err:
        raise UsageError(str(err).replace("roles=", "--roles ", 1)) from None


def _check_model(args: argparse.Namespace) -> None:
    from futurelens_tl.report import ReportConfig, ReportUsageError

    cfg = ReportConfig(model=args.model, backend=args.backend, device=args.device,
                       dtype=args.dtype)
    try:
        cfg.validate_model()
    except ReportUsageError as err:
        raise UsageError(_flagify(str(err))) from None


def _check_out_dir(out: str) -> Path:
    p = Path(out).expanduser()
    if p.exists() and not p.is_dir():
        raise UsageError(f"--out {out!r} exists and is not a folder")
    return p


def _check_out_file(out: str, suffix: str) -> Path:
    p = Path(out).expanduser()
    if p.is_dir():
        raise UsageError(f"--out {out!r} is a folder; give a file name ending in {suffix}")
    if p.suffix != suffix:
        raise UsageError(f"--out {out!r} must end in {suffix}")
    return p


def _flagify(message: str) -> str:
    """``tuned_tokens=0 must ...`` -> ``--tuned-tokens 0 must ...`` for CLI messages."""
    head, sep, rest = message.partition("=")
    if sep and head.isidentifier():
        return f"--{head.replace('_', '-')} {rest}"
    return message


# ------------------------------------------------------------------------------- commands
def _load(args: argparse.Namespace) -> Any:
    from futurelens_tl.models import load_model

    return load_model(args.model, backend=args.backend, device=args.device, dtype=args.dtype,
                      verbose=not args.quiet)


def cmd_info(args: argparse.Namespace) -> int:
    _check_model(args)
    from futurelens_tl.models.view import as_view

    print(json.dumps(as_view(_load(args)).describe(), indent=2))
    return 0


def _report_config(args: argparse.Namespace) -> Any:
    from futurelens_tl.report import ReportConfig

    return ReportConfig(
        model=args.model, out=Path(args.out), backend=args.backend, device=args.device,
        dtype=args.dtype, prompts=args.prompt or None, tuned_tokens=args.tuned_tokens,
        future_examples=args.future_examples, eval_windows=args.eval_windows,
        future_layers=args.future_layers, seed=args.seed, verbose=not args.quiet,
        stages=args.stages.split(",") if args.stages else None, texts=args.texts,
        roles=args.roles, use_cache=not args.retrain,
    )


def cmd_report(args: argparse.Namespace) -> int:
    from futurelens_tl.report import ReportUsageError, build_report

    cfg = _report_config(args)
    try:
        cfg.validate()  # every flag, before the model is loaded
    except ReportUsageError as err:
        raise UsageError(_flagify(str(err))) from None
    try:
        result = build_report(cfg)
    except ReportUsageError as err:  # a value that needs the model to check (layer range)
        raise UsageError(_flagify(str(err))) from None
    print(result.summary_table())
    if result.cache_hits:
        print("from the cache: " + ", ".join(result.cache_hits))
    print(f"\nwrote {result.index}")
    return 0


def cmd_train_lens(args: argparse.Namespace) -> int:
    _check_model(args)
    out = _check_out_file(args.out, ".safetensors")
    texts = None
    if args.texts:
        from futurelens_tl.report import ReportConfig, ReportUsageError

        cfg = ReportConfig(texts=args.texts)
        try:  # a corpus name: its train split; a file: every document
            texts = cfg._texts()["train"] if cfg._corpus_name() else cfg._file_docs()
        except ReportUsageError as err:
            raise UsageError(_flagify(str(err))) from None
    import futurelens_tl as fl

    model = _load(args)
    if texts is None:
        from futurelens_tl.toy import toy_texts

        texts = toy_texts("train", n=400, seed=args.seed)
    lens = fl.TunedLens.fit(model, texts, layers=args.layers, tokens=args.tokens,
                            seed=args.seed, verbose=not args.quiet)
    lens.save(out)
    print(f"wrote {out}")
    return 0


def cmd_toy(args: argparse.Namespace) -> int:
    from futurelens_tl.models.view import as_view
    from futurelens_tl.toy import toy_model

    model = toy_model(seed=args.seed, retrain=args.retrain, verbose=not args.quiet)
    print(json.dumps(as_view(model).describe(), indent=2))
    return 0


def cmd_decompose(args: argparse.Namespace) -> int:
    _check_model(args)
    out = _check_out_dir(args.out)
    from futurelens_tl._io import atomic_write
    from futurelens_tl.attention.layer0 import decompose_first_layer

    df = decompose_first_layer(_load(args)).to_dataframe()
    path = atomic_write(out / "layer0_positional.csv", lambda tmp: df.to_csv(tmp, index=False))
    print(f"wrote {path}")
    return 0


def cmd_tag_heads(args: argparse.Namespace) -> int:
    _check_model(args)
    out = _check_out_dir(args.out)
    roles = _check_roles(args.roles)
    from futurelens_tl._io import atomic_write
    from futurelens_tl.attention.heads import tag_heads

    df = tag_heads(_load(args), roles=roles, seed=args.seed, verbose=not args.quiet).to_dataframe()
    path = atomic_write(out / "head_roles.csv", lambda tmp: df.to_csv(tmp, index=False))
    print(f"wrote {path}")
    return 0


# --------------------------------------------------------------------------------- parser
def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--quiet", action="store_true", default=argparse.SUPPRESS,
                   help="no progress bars (default: off; also FUTURELENS_NO_PROGRESS=1)")


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="toy", metavar="NAME_OR_PATH",
                   help="'toy' (offline default), a registry name such as 'smollm2-135m', a "
                        "TransformerLens model name, a local Hugging Face folder or a .gguf file")
    p.add_argument("--backend", default="auto", choices=["auto", "bridge", "hooked"],
                   help="TransformerLens backend: bridge (TL 4 and 3.9) or hooked (TL 3.x)")
    p.add_argument("--device", default=None,
                   help="cpu, cuda, cuda:N or mps (default: cuda if available, else cpu)")
    p.add_argument("--dtype", default=None, choices=DTYPES,
                   help="weight dtype (default: float32)")
    _add_common(p)


def build_parser() -> argparse.ArgumentParser:
    """The ``futurelens-tl`` argument parser (every option has help text and a default)."""
    ap = argparse.ArgumentParser(prog="futurelens-tl", description=DESCRIPTION,
                                 formatter_class=_Formatter)
    ap.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    ap.add_argument("--quiet", action="store_true", help="no progress bars, for every command")
    sub = ap.add_subparsers(dest="command", required=True, metavar="COMMAND", title="commands")

    def add(name: str, help: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=help, description=help, formatter_class=_Formatter)

    p = add("report", "the main job: lenses trained (cached), evaluated and compared, the "
                      "Future Lens, layer 0 decomposed, heads tagged; writes DIR/index.html "
                      "(offline) with PNG, CSV and JSON files beside it")
    _add_model_args(p)
    p.add_argument("--out", required=True, metavar="DIR",
                   help="output folder (created; index.html goes there); must not be a file")
    p.add_argument("--prompt", action="append", metavar="TEXT",
                   help="prompt for the lens grid, repeatable (default: 3 toy prompts, or 2 "
                        "English prompts for real models)")
    p.add_argument("--tuned-tokens", type=positive_int, default=None, metavar="N",
                   help="tuned-lens training tokens (default: 131072 toy, 4096 otherwise)")
    p.add_argument("--future-examples", type=positive_int, default=None, metavar="N",
                   help="Future Lens training documents (default: 200 toy, 40 otherwise)")
    p.add_argument("--future-layers", type=layer_list, default=None, metavar="L,L,...",
                   help="comma-separated Future Lens source layers (default: every block)")
    p.add_argument("--eval-windows", type=positive_int, default=None, metavar="N",
                   help="evaluation windows of the lens comparison (default: 48 toy, 16 "
                        "otherwise)")
    p.add_argument("--stages", default=None, metavar="S,S,...",
                   help="comma-separated subset of: lenses,future,layer0,heads (default: all)")
    p.add_argument("--texts", default=None, metavar="CORPUS_OR_FILE",
                   help="training/evaluation text: a corpus name ('lee': its train/held-out "
                        "split) or a .txt with blank-line separated documents or a .jsonl with "
                        "a 'text' field, last 10%% held out (default: the toy corpus for the "
                        "toy model, 'lee' otherwise)")
    p.add_argument("--roles", default="all", metavar="ROLES",
                   help="head roles to tag: 'all' or a comma-separated subset")
    p.add_argument("--seed", type=nonnegative_int, default=0,
                   help="seed of every random choice (data, initialisation, splits)")
    p.add_argument("--retrain", action="store_true",
                   help="ignore cached lenses and features: retrain and overwrite them")
    p.set_defaults(func=cmd_report)

    p = add("train-lens", "train a tuned lens and save it as .safetensors")
    _add_model_args(p)
    p.add_argument("--out", required=True, metavar="FILE.safetensors",
                   help="where the lens goes (load it with fl.TunedLens.load(path, model))")
    p.add_argument("--texts", default=None, metavar="CORPUS_OR_FILE",
                   help="training text: a corpus name ('lee': its train split), a .txt or a "
                        ".jsonl (default: the toy corpus)")
    p.add_argument("--tokens", type=positive_int, default=2**17, metavar="N",
                   help="training token budget")
    p.add_argument("--layers", type=layer_list, default=None, metavar="L,L,...",
                   help="layers to train translators for (default: all)")
    p.add_argument("--seed", type=nonnegative_int, default=0, help="training seed")
    p.set_defaults(func=cmd_train_lens)

    p = add("info", "model summary (architecture, basis, fingerprint) as JSON")
    _add_model_args(p)
    p.set_defaults(func=cmd_info)

    p = add("toy", "train or load the embedded toy model")
    p.add_argument("--retrain", action="store_true",
                   help="train again even if a cached model exists")
    p.add_argument("--seed", type=nonnegative_int, default=0, help="training seed")
    _add_common(p)
    p.set_defaults(func=cmd_toy)

    p = add("decompose", "layer-0 decomposition tables as CSV")
    _add_model_args(p)
    p.add_argument("--out", required=True, metavar="DIR",
                   help="output folder (layer0_positional.csv goes there)")
    p.set_defaults(func=cmd_decompose)

    p = add("tag-heads", "head-role scores and tags as CSV")
    _add_model_args(p)
    p.add_argument("--out", required=True, metavar="DIR",
                   help="output folder (head_roles.csv goes there)")
    p.add_argument("--roles", default="all", metavar="ROLES",
                   help="'all' or a comma-separated subset of the known roles")
    p.add_argument("--seed", type=nonnegative_int, default=0, help="seed of the probe data")
    p.set_defaults(func=cmd_tag_heads)
    return ap


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``futurelens-tl`` console script; returns the exit status."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    parser = build_parser()
    args = parser.parse_args(argv)  # argparse exits with status 2 on a malformed flag
    args.quiet = bool(getattr(args, "quiet", False))
    from futurelens_tl.progress import set_quiet

    if args.quiet:
        set_quiet(True)
    prog = f"futurelens-tl {args.command}"
    try:
        return int(args.func(args) or 0)
    except UsageError as err:
        print(f"usage: {prog} --help\n{prog}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except Exception as err:
        if os.environ.get("FUTURELENS_DEBUG"):
            traceback.print_exc()
        print(f"{prog}: error: {type(err).__name__}: {err}", file=sys.stderr)
        if not os.environ.get("FUTURELENS_DEBUG"):
            print("(set FUTURELENS_DEBUG=1 for the traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
