"""The README's commands are the ones CI runs (a drift here means CI tests something else)."""

from __future__ import annotations

import re
from pathlib import Path

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
