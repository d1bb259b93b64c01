"""The README's commands are the ones CI runs (a drift here means CI tests something else)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _bash_blocks(text: str) -> list[str]:
    return [b.strip() for b in re.findall(r"```bash\n(.*?)```", text, flags=re.S)]


def test_readme_test_command_is_what_ci_runs():
    readme = (ROOT / "README.md").read_text()
    blocks = _bash_blocks(readme)
    tests = [b for b in blocks if "pytest" in b]
    report = [b for b in blocks if "futurelens-tl report --model toy" in b]
    assert len(tests) == 1 and len(report) == 1, blocks
    ci = (ROOT / ".ci" / "run").read_text()
    assert tests[0] in ci.splitlines(), "README's test command must appear verbatim in .ci/run"
    # both commands install the same way and pin the CPU torch wheel
    assert "torch==2.13.0" in tests[0] and "torch==2.13.0" in report[0]


def test_no_module_level_hookedtransformer_import():
    pattern = re.compile(
        r"^(from transformer_lens import .*HookedTransformer"
        r"|import transformer_lens\.HookedTransformer)", re.M)
    for path in (ROOT / "futurelens_tl").rglob("*.py"):
        assert not pattern.search(path.read_text()), path


def _python_blocks(text: str) -> list[str]:
    return [b for b in re.findall(r"```python\n(.*?)```", text, flags=re.S)]


@pytest.mark.slow
def test_readme_python_snippet_runs_as_written(tmp_path, monkeypatch):
    """The README's notebook snippet runs on the toy model exactly as printed."""
    blocks = _python_blocks((ROOT / "README.md").read_text())
    assert blocks, "README.md has no ```python block"
    monkeypatch.chdir(tmp_path)  # it writes grid.html
    for block in blocks:
        exec(compile(block, "README.md", "exec"), {"__name__": "__readme__"})
    assert (tmp_path / "grid.html").exists()


def test_docs_cite_only_files_that_exist():
    """Docs pages name repository files (``*.md``, ``*.py``, ``*.ipynb``) that exist."""
    names = {p.name for p in ROOT.rglob("*") if ".git" not in p.parts}
    missing = []
    for page in [ROOT / "README.md", *(ROOT / "docs").rglob("*.md")]:
        for ref in re.findall(r"`([\w./-]+\.(?:md|py|ipynb))`", page.read_text()):
            if Path(ref).name not in names:
                missing.append(f"{page.relative_to(ROOT)}: {ref}")
    assert not missing, missing
