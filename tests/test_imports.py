"""The import graph of lrpfx has no cycle, and its lowest floors import nothing above them.

Every ``.py`` file under ``lrpfx/`` and ``passes/`` (installed as ``lrpfx.passes``) is parsed
with ``ast``; every import of an lrpfx module counts, whether at the top of the file, inside a
function or under ``if TYPE_CHECKING:``. Package ``__init__`` modules that only import and
re-export are left out as nodes: they are the faces that import everything below them. A
package ``__init__`` that defines something (``lrpfx.frontend``: ``canonical``) is a module
like any other. Importing ``lrpfx.a.b`` is an edge to ``lrpfx.a.b`` only, not to ``lrpfx.a``.
"""

from __future__ import annotations

import ast
from pathlib import Path

import networkx as nx
import pytest

ROOT = Path(__file__).resolve().parent.parent
# the floors at the bottom: they may import each other and nothing else of lrpfx
LOW_FLOORS = {"lrpfx.meta", "lrpfx.errors", "lrpfx.rules.base", "lrpfx.rules.linear",
              "lrpfx.rules.ops", "lrpfx.rules.patterns", "lrpfx.patterns.store",
              "lrpfx.patterns.moments", "lrpfx.runtime", "lrpfx.targets", "lrpfx.outputs",
              "lrpfx.language.targets"}


def _files() -> dict[str, Path]:
    """Module name -> file, for every module of the lrpfx source tree."""
    files = {}
    for top, package in ((ROOT / "lrpfx", "lrpfx"), (ROOT / "passes", "lrpfx.passes")):
        for path in sorted(top.rglob("*.py")):
            if "passes" in path.relative_to(top).parts[:1] and package == "lrpfx":
                continue  # lrpfx/passes is a link to passes/ in a development checkout
            parts = path.relative_to(top).with_suffix("").parts
            name = ".".join((package, *parts))
            files[name.removesuffix(".__init__")] = path
    return files


def _face(path: Path) -> bool:
    """Whether a package ``__init__`` only imports and re-exports (its docstring aside)."""
    body = ast.parse(path.read_text()).body
    return all(
        isinstance(s, ast.Import | ast.ImportFrom)
        or isinstance(s, ast.Expr) and isinstance(s.value, ast.Constant)
        or isinstance(s, ast.Assign) and [ast.unparse(t) for t in s.targets] == ["__all__"]
        for s in body
    )


FILES = _files()
PACKAGES = {name for name, path in FILES.items() if path.name == "__init__.py"}
FACES = {name for name in PACKAGES if _face(FILES[name])}


def _imports(name: str, path: Path) -> set[str]:
    """The lrpfx modules (or packages) that module ``name`` imports, anywhere in its file."""
    package = name if name in PACKAGES else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                found.add(sub if sub in FILES else base)
    return {m for m in found if m == "lrpfx" or m.startswith("lrpfx.")}


def _graph() -> nx.DiGraph:
    graph = nx.DiGraph()
    for name, path in FILES.items():
        if name in FACES:
            continue
        graph.add_node(name)
        for target in _imports(name, path):
            if target not in FACES and target != name:
                graph.add_edge(name, target)
    return graph


def test_the_module_graph_is_read():
    graph = _graph()
    assert {"lrpfx", "lrpfx.ops", "lrpfx.passes", "lrpfx.patterns"} <= FACES
    assert {"lrpfx.compiler", "lrpfx.passes.check", "lrpfx.frontend", "lrpfx.frontend.fx",
            "lrpfx.patterns.store"} <= set(graph)
    assert graph.has_edge("lrpfx.passes.check", "lrpfx.diagnostics")
    assert graph.has_edge("lrpfx.compiler", "lrpfx.frontend")  # from lrpfx.frontend import ...
    assert graph.has_edge("lrpfx.rules.patterns", "lrpfx.patterns.store")  # TYPE_CHECKING
    assert not graph.has_edge("lrpfx.frontend.fx", "lrpfx.frontend")  # no implicit parents


def test_no_import_cycle():
    graph = _graph()
    try:
        cycle = nx.find_cycle(graph)
    except nx.NetworkXNoCycle:
        return
    pytest.fail("import cycle: " + " -> ".join([a for a, _ in cycle] + [cycle[-1][1]]))


def test_the_low_floors_import_nothing_above_them():
    graph = _graph()
    assert set(graph) >= LOW_FLOORS
    upward = {(a, b) for a in LOW_FLOORS for b in graph.successors(a) if b not in LOW_FLOORS}
    assert not upward, f"low floors importing upward: {sorted(upward)}"
