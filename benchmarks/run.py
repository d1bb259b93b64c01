"""Run every ``benchmarks/bench_*.py`` and write ``BENCHMARKS.md``.

Each benchmark module exposes ``main(quick: bool) -> list[dict]``; every dict is one row with
keys ``benchmark``, ``metric``, ``value``, ``unit`` and optional ``target`` and ``note``.
Ratios are measured within one run on one machine, so they compare like with like.

Usage::

    python benchmarks/run.py            # all benchmarks, full size
    python benchmarks/run.py --quick    # small sizes (smoke test)
    python benchmarks/run.py -k layer0  # only modules whose name contains 'layer0'
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import platform
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    return (f"{cpu}, {torch.get_num_threads()} torch threads, torch {torch.__version__}, "
            f"Python {platform.python_version()}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true", help="small sizes")
    ap.add_argument("-k", default="", help="substring filter on module names")
    ap.add_argument("--out", default=str(HERE.parent / "BENCHMARKS.md"))
    args = ap.parse_args(argv)
    results: dict[str, list[dict]] = {}
    old = {}
    json_path = HERE / "results.json"
    if json_path.exists():
        old = json.loads(json_path.read_text())
    for path in sorted(HERE.glob("bench_*.py")):
        if args.k not in path.stem:
            continue
        spec = importlib.util.spec_from_file_location(path.stem, path)
        mod = importlib.util.module_from_spec(spec)
        sys.modules[path.stem] = mod
        spec.loader.exec_module(mod)
        t0 = time.perf_counter()
        print(f"== {path.stem}", flush=True)
        rows = mod.main(quick=args.quick)
        print(f"   done in {time.perf_counter() - t0:.1f}s", flush=True)
        results[path.stem] = {"rows": rows, "machine": machine(), "quick": args.quick,
                              "date": time.strftime("%Y-%m-%d")}
    merged = {**old, **results}
    json_path.write_text(json.dumps(merged, indent=1, default=float))
    write_markdown(merged, Path(args.out))
    write_markdown(merged, HERE.parent / "docs" / "benchmarks.md")  # the docs site's page
    print(f"wrote {args.out} and docs/benchmarks.md")
    return 0


def fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def write_markdown(results: dict, out: Path) -> None:
    lines = ["# Benchmarks", "",
             "Written by `python benchmarks/run.py` (do not edit by hand). Each section is one "
             "benchmark module; ratios are measured in the same run on the same machine.", ""]
    for name, res in sorted(results.items()):
        lines += [f"## {name}", "", f"Machine: {res['machine']}; date {res['date']}"
                  + ("; **quick sizes**" if res.get("quick") else ""), "",
                  "| benchmark | metric | value | unit | target | note |",
                  "|---|---|---|---|---|---|"]
        for r in res["rows"]:
            keys = ("benchmark", "metric", "value", "unit", "target", "note")
            lines.append("| " + " | ".join(fmt(r.get(k, "")) for k in keys) + " |")
        lines.append("")
    out.write_text("\n".join(lines))


if __name__ == "__main__":
    raise SystemExit(main())
