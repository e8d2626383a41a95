"""The import graph of core/ and app/, read from the source: no circles, and core stays below app.

An import counts wherever it is written (module level or inside a function), except in an
`if __name__ == "__main__":` shim or under `if TYPE_CHECKING:` (neither runs on import)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _modules() -> dict[str, Path]:
    out = {}
    for f in [*ROOT.glob("core/**/*.py"), *ROOT.glob("app/**/*.py")]:
        name = ".".join(f.relative_to(ROOT).with_suffix("").parts)
        out[name.removesuffix(".__init__")] = f
    return out


def _skipped(tree: ast.AST) -> set[int]:
    skip = set()
    for n in ast.walk(tree):
        if isinstance(n, ast.If) and (getattr(n.test, "id", "") == "TYPE_CHECKING"
                                      or getattr(getattr(n.test, "left", None), "id", "") == "__name__"):
            skip |= {id(x) for x in ast.walk(n)}
    return skip


def _imports(name: str, path: Path) -> set[str]:
    """Every module `name` imports (absolute names, packages and submodules alike)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    skip, found = _skipped(tree), set()
    for n in ast.walk(tree):
        if id(n) in skip:
            continue
        if isinstance(n, ast.Import):
            found |= {a.name for a in n.names}
        elif isinstance(n, ast.ImportFrom):
            base = n.module or ""
            if n.level:
                parts = package.split(".")[: len(package.split(".")) - n.level + 1]
                base = ".".join(parts + ([base] if base else []))
            found |= {base} | {f"{base}.{a.name}" for a in n.names}
    return found


def _circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected groups of more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while not group or group[-1] != v:
                group.append(stack.pop())
                on.discard(group[-1])
            if len(group) > 1:
                out.append(sorted(group))

    for v in graph:
        if v not in index:
            visit(v)
    return out


def test_no_import_circles_and_core_never_imports_the_web_layer():
    mods = _modules()
    imports = {m: _imports(m, f) for m, f in mods.items()}
    graph = {m: {t for t in found if t in mods and t != m} for m, found in imports.items()}
    assert _circles(graph) == []
    for m, found in imports.items():
        if m.startswith("core"):
            web = sorted(t for t in found if t.split(".")[0] in ("app", "gradio", "plotly"))
            assert web == [], f"{m} imports {web}"
