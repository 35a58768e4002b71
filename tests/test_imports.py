"""Import hygiene of src/rehydrate: no import cycles between its modules
(imports anywhere in a file count, the lazy ones inside functions too), and
no module imports another's underscore names: a helper two modules share
lives, under a public name, in the lower one."""

from __future__ import annotations

import ast
import os
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"


def _modules(src: Path, package: str) -> dict:
    """{dotted module name: path} of every module of ``package`` under ``src``."""
    mods = {}
    for root, _, files in os.walk(src / package):
        for f in files:
            if f.endswith(".py"):
                path = Path(root) / f
                name = ".".join(path.relative_to(src).with_suffix("").parts)
                mods[name.removesuffix(".__init__")] = path
    return mods


def _target(mods: dict, cur: str, node: ast.ImportFrom) -> str:
    """The module a ``from ... import`` names, relative levels resolved."""
    if not node.level:
        return node.module or ""
    base = cur if mods[cur].name == "__init__.py" else cur.rpartition(".")[0]
    parts = base.split(".")
    base = ".".join(parts[: len(parts) - (node.level - 1)])
    return base + ("." + node.module if node.module else "")


def _cycles(edges: dict) -> list:
    """The strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(edges[v]):
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
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return sorted(out)


def analyse(src: Path, package: str = "rehydrate"):
    """(cycles, private-name imports) of ``package`` under ``src``."""
    mods = _modules(src, package)
    pkgs = {m for m, p in mods.items() if p.name == "__init__.py"}
    edges, private = {m: set() for m in mods}, []
    inside = (lambda t: t == package or t.startswith(package + "."))
    for m, path in sorted(mods.items()):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom):
                t = _target(mods, m, node)
                if not inside(t):
                    continue
                for alias in node.names:
                    if f"{t}.{alias.name}" in mods:  # from . import module
                        edges[m].add(f"{t}.{alias.name}")
                    elif t in mods:
                        edges[m].add(t)
                        name = alias.name
                        if name.startswith("_") and not name.startswith("__") and t != m:
                            private.append(f"{m} imports {t}.{name}")
            elif isinstance(node, ast.Import):
                edges[m].update(a.name for a in node.names if a.name in mods)
    # A package's __init__ re-exports its modules, so an edge into one is no
    # dependency on a module; cycles are looked for between modules.
    edges = {m: {t for t in ts if t != m and t not in pkgs} for m, ts in edges.items()}
    return _cycles(edges), private


def test_no_import_cycles():
    cycles, _ = analyse(SRC)
    assert cycles == [], "\n".join(" <-> ".join(c) for c in cycles)


def test_no_module_imports_another_modules_private_names():
    _, private = analyse(SRC)
    assert private == [], "\n".join(private)


def test_the_analysis_finds_a_cycle_and_a_private_import(tmp_path):
    pkg = tmp_path / "fake"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("from .a import f\n")
    (pkg / "a.py").write_text("from . import b\n\n_x = 1\n\ndef f():\n    return b\n")
    # Lazy, inside a function, and two levels up: still an edge, still private.
    (pkg / "b.py").write_text("def g():\n    from .a import _x\n    return _x\n")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "sub" / "c.py").write_text("from .. import a\nfrom ..b import g\n")
    (pkg / "sub" / "d.py").write_text("import fake.sub.c\nfrom .c import __doc__\n")
    cycles, private = analyse(tmp_path, "fake")
    assert cycles == [["fake.a", "fake.b"]]
    assert private == ["fake.b imports fake.a._x"]


def test_the_analysis_passes_a_clean_package(tmp_path):
    pkg = tmp_path / "fake"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("from .a import f\nfrom .b import g\n")
    (pkg / "low.py").write_text("def helper():\n    return 1\n")
    (pkg / "a.py").write_text("from .low import helper\n\ndef f():\n    return helper()\n")
    # Importing the package itself (its __init__ imports b) is no cycle.
    (pkg / "b.py").write_text("def g():\n    import fake\n    from . import a\n    return a, fake\n")
    assert analyse(tmp_path, "fake") == ([], [])
