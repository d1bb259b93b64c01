"""The house (DESIGN.md §2): one-way imports, small rooms.

Reads every module's imports (module level and inside functions) with :mod:`ast`. A cycle
between modules, an import from a higher floor, or a file over the size limit fails here, so the
map in ``docs/architecture.md`` stays true.
"""

from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "futurelens_tl"

# Floor of each room: a module may import only from its own floor or lower ones. Keys are
# paths below futurelens_tl; "x.*" is every module inside package x, "x" the package itself.
# The adapter (models.*) is the floor; the registry and the public facades (models, model)
# stand above the entries they load (toy).
FLOORS = {
    "paths": 0, "progress": 0, "_io": 0, "errors": 0, "viz.*": 0, "viz": 0, "metrics": 0,
    "models.*": 1,
    "data": 2, "corpora": 2, "toy": 2, "toy.*": 2,
    "models.registry": 2.5, "models": 2.5, "model": 2.5,
    "lenses": 3, "lenses.*": 3, "attention": 3, "attention.*": 3, "probesets": 3,
    "results": 3,
    "compare": 4, "evaluation": 4,
    "crossmodel": 5, "report": 5, "report.*": 5, "train_lens": 5, "cli": 6,
}
# files allowed past MAX_LINES, each with its reason
MAX_LINES = 650
LARGE_OK: dict[str, str] = {}


def _modules() -> dict[str, Path]:
    out = {}
    for path in PKG.rglob("*.py"):
        rel = path.relative_to(PKG.parent).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _imports(path: Path, name: str, known: set[str]) -> set[str]:
    tree = ast.parse(path.read_text())
    found = set()
    pkg_parts = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    for node in ast.walk(tree):
        targets = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = pkg_parts[: len(pkg_parts) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            targets = [mod] + [f"{mod}.{a.name}" for a in node.names]
        for t in targets:
            while t and t not in known:
                t = t.rpartition(".")[0]
            if t and t != name and t != "futurelens_tl":
                found.add(t)
    return found


def _graph() -> dict[str, set[str]]:
    mods = _modules()
    known = set(mods)
    return {m: _imports(p, m, known) for m, p in mods.items() if m != "futurelens_tl"}


def _room(mod: str) -> str:
    return mod.split(".")[1]


def _floor(mod: str) -> float | None:
    parts = mod.split(".")[1:]
    if ".".join(parts) in FLOORS:
        return FLOORS[".".join(parts)]
    for i in range(len(parts) - 1, 0, -1):
        key = ".".join(parts[:i]) + ".*"
        if key in FLOORS:
            return FLOORS[key]
    return None


def test_every_room_has_a_floor():
    missing = sorted(m for m in _graph() if _floor(m) is None)
    assert not missing, f"give these modules a floor in FLOORS: {missing}"


def test_imports_point_down_or_sideways():
    bad = []
    for mod, deps in _graph().items():
        for dep in deps:
            if _floor(dep) > _floor(mod):
                bad.append(f"{mod} -> {dep}")
    assert not bad, "imports from a higher floor:\n" + "\n".join(sorted(bad))


def test_no_import_cycles():
    graph = _graph()
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    cycles: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in graph:
                continue
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            # a package importing its own submodules (re-exports) is not a cycle
            if len(comp) > 1 and not all(c.startswith(min(comp, key=len)) for c in comp):
                cycles.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    assert not cycles, f"import cycles: {cycles}"


def test_the_adapter_imports_no_entry():
    for mod, deps in _graph().items():
        if mod.startswith("futurelens_tl.models.") and mod != "futurelens_tl.models.registry":
            assert not [d for d in deps if _room(d) in ("toy", "data", "lenses")], (mod, deps)


def test_rooms_are_small():
    big = {str(p.relative_to(PKG.parent)): n for p in PKG.rglob("*.py")
           if (n := len(p.read_text().splitlines())) > MAX_LINES}
    big = {k: v for k, v in big.items() if k not in LARGE_OK}
    assert not big, f"files over {MAX_LINES} lines (split them, or give a reason): {big}"
