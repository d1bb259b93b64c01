"""The ``futurelens-tl`` command.

Subcommands:

* ``info``       model summary (architecture, basis, fingerprint) as JSON;
* ``report``     the main job: lenses trained, evaluated and compared, layer 0 decomposed,
                 heads tagged, all written to ``DIR/index.html`` with PNG/CSV/JSON beside it;
* ``toy``        train (or re-train) the embedded toy model into the cache;
* ``decompose``  layer-0 decomposition tables for a model;
* ``tag-heads``  head-role scores and tags as CSV.

Examples::

    futurelens-tl info --model toy
    futurelens-tl report --model toy --out report
    futurelens-tl report --model gpt2 --out gpt2-report --tuned-tokens 2000000
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any


def _load(args: argparse.Namespace) -> Any:
    from futurelens_tl.model import load_model

    return load_model(args.model, backend=args.backend, device=args.device, dtype=args.dtype)


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="toy",
                   help="'toy' (offline default), a TransformerLens model name, or a local HF dir")
    p.add_argument("--backend", default="auto", choices=["auto", "bridge", "hooked"])
    p.add_argument("--device", default=None, help="cpu, cuda, ... (default: cuda if available)")
    p.add_argument("--dtype", default=None, help="float32 (default), bfloat16, float16")


def cmd_info(args: argparse.Namespace) -> int:
    from futurelens_tl.model import as_view

    print(json.dumps(as_view(_load(args)).describe(), indent=2))
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from futurelens_tl.report import ReportConfig, build_report

    cfg = ReportConfig(
        model=args.model, out=Path(args.out), backend=args.backend, device=args.device,
        dtype=args.dtype, prompts=args.prompt or None, tuned_tokens=args.tuned_tokens,
        future_examples=args.future_examples, eval_windows=args.eval_windows,
        future_layers=args.future_layers, seed=args.seed, verbose=not args.quiet,
        stages=args.stages.split(",") if args.stages else None, texts=args.texts,
    )
    result = build_report(cfg)
    print(result.summary_table())
    print(f"\nwrote {result.index}")
    return 0


def cmd_toy(args: argparse.Namespace) -> int:
    from futurelens_tl.model import as_view
    from futurelens_tl.toy import toy_model

    model = toy_model(seed=args.seed, retrain=args.retrain, verbose=not args.quiet)
    print(json.dumps(as_view(model).describe(), indent=2))
    return 0


def cmd_decompose(args: argparse.Namespace) -> int:
    from futurelens_tl.attention.layer0 import decompose_first_layer

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    dec = decompose_first_layer(_load(args))
    dec.to_dataframe().to_csv(out / "layer0_positional.csv", index=False)
    print(f"wrote {out / 'layer0_positional.csv'}")
    return 0


def cmd_tag_heads(args: argparse.Namespace) -> int:
    from futurelens_tl.attention.heads import tag_heads

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    roles = args.roles.split(",") if args.roles != "all" else "all"
    tags = tag_heads(_load(args), roles=roles, seed=args.seed)
    tags.to_dataframe().to_csv(out / "head_roles.csv", index=False)
    print(f"wrote {out / 'head_roles.csv'}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="futurelens-tl", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True)

    p = sub.add_parser("info", help="model summary as JSON")
    _add_model_args(p)
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("report", help="the full report (main job)")
    _add_model_args(p)
    p.add_argument("--out", required=True, help="output directory (index.html goes there)")
    p.add_argument("--prompt", action="append", help="prompt for the lens grid (repeatable)")
    p.add_argument("--tuned-tokens", type=int, default=None,
                   help="tuned-lens training token budget (default: model-dependent)")
    p.add_argument("--future-examples", type=int, default=None,
                   help="Future Lens training contexts (default: model-dependent)")
    p.add_argument("--future-layers", default=None,
                   help="comma-separated source layers for the Future Lens (default: all)")
    p.add_argument("--eval-windows", type=int, default=None,
                   help="evaluation windows (default: model-dependent)")
    p.add_argument("--stages", default=None,
                   help="comma-separated subset of: lenses,future,layer0,heads")
    p.add_argument("--texts", default=None,
                   help="training/evaluation corpus (.txt with blank-line separated documents "
                        "or .jsonl); default: the toy corpus")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("toy", help="train or load the embedded toy model")
    p.add_argument("--retrain", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_toy)

    p = sub.add_parser("decompose", help="layer-0 decomposition tables")
    _add_model_args(p)
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_decompose)

    p = sub.add_parser("tag-heads", help="head-role scores and tags")
    _add_model_args(p)
    p.add_argument("--out", required=True)
    p.add_argument("--roles", default="all")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_tag_heads)
    return ap


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``futurelens-tl`` console script."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ValueError, TypeError, FileNotFoundError) as err:
        print(f"futurelens-tl {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
