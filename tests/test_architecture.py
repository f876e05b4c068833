"""The import graph of the installed packages: layers import downward only, no circles.

Every ``import`` statement of every module counts (read with ``ast``: inside functions and
``if TYPE_CHECKING:`` blocks too), and so does what the import system runs on the way: importing
``detector.core.boxes`` first runs ``detector/__init__.py`` and ``detector/core/__init__.py``.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TOP_PACKAGES = ("detector", "proposals", "svm", "bbox_regression")
BASE = "detector.core"
LOWER_PACKAGES = ("proposals", "svm", "bbox_regression")

# Layers, lowest first: a package may import its own modules and those of lower layers only.
LAYERS: list[tuple[str, ...]] = [
    (BASE,),
    LOWER_PACKAGES,
    ("detector.config",),
    ("detector.visualization",),  # drawing and plots: the base layer only, so inference can draw
    ("detector.data",),
    ("detector.features",),
    ("detector.head",),
    ("detector.model",),
    ("detector.inference",),
    ("detector.evaluation",),
    ("detector.engine",),
    ("detector.analysis",),
    ("detector.cli",),
]


def module_files() -> dict[str, Path]:
    """Dotted module name -> file, for every module of the project's packages."""
    found = {}
    for package in TOP_PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join(parts)] = path
    return found


def _parents(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def _resolve(base: str, names: list[str], modules: dict[str, Path]) -> set[str]:
    """The project modules an import of ``names`` from ``base`` loads (with their packages)."""
    loaded: set[str] = set()
    targets = [f"{base}.{n}" if f"{base}.{n}" in modules else base for n in names] or [base]
    for target in targets:
        if target in modules:
            loaded.add(target)
            loaded.update(p for p in _parents(target) if p in modules)
    return loaded


def import_graph() -> dict[str, set[str]]:
    """Module -> the project modules executing it imports (every import statement counted)."""
    modules = module_files()
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        edges: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    edges |= _resolve(alias.name, [], modules)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(anchor + ([base] if base else []))
                edges |= _resolve(base, [a.name for a in node.names], modules)
        edges.discard(name)
        graph[name] = edges
    return graph


def layer_of(module: str) -> tuple[int, str] | None:
    """(rank, package) of the layer a module belongs to; None for the ``detector`` package itself."""
    for rank, packages in enumerate(LAYERS):
        for package in packages:
            if module == package or module.startswith(package + "."):
                return rank, package
    return None


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one node (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = [0]

    def visit(node: str) -> None:
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for nxt in graph.get(node, ()):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def package_graph(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    """The module graph collapsed onto layer packages (``detector.core``, ``svm``, ...)."""
    packages: dict[str, set[str]] = {}
    for module, targets in graph.items():
        source = layer_of(module)
        if source is None:
            continue
        for target in targets:
            destination = layer_of(target)
            if destination is not None and destination[1] != source[1]:
                packages.setdefault(source[1], set()).add(destination[1])
    return packages


def test_every_module_belongs_to_a_layer():
    unplaced = [m for m in module_files() if m not in TOP_PACKAGES and layer_of(m) is None]
    assert unplaced == [], f"modules outside every layer of LAYERS: {unplaced}"


def test_no_circle_between_modules():
    assert cycles(import_graph()) == []


def test_no_circle_between_packages():
    assert cycles(package_graph(import_graph())) == []


def test_layers_import_downward_only():
    upward = []
    for module, targets in import_graph().items():
        source = layer_of(module)
        for target in targets:
            destination = layer_of(target)
            if source is not None and destination is not None and destination[0] > source[0]:
                upward.append(f"{module} -> {target}")
    assert upward == []


def test_lower_packages_import_only_the_base_layer_of_detector():
    wrong = [f"{module} -> {target}" for module, targets in import_graph().items()
             if module.split(".")[0] in LOWER_PACKAGES
             for target in targets
             if target.startswith("detector") and target != "detector" and not target.startswith(BASE)]
    assert wrong == []


def test_base_layer_imports_nothing_else_of_the_project():
    wrong = [f"{module} -> {target}" for module, targets in import_graph().items()
             if module.startswith(BASE) for target in targets
             if target not in ("detector",) and not target.startswith(BASE)]
    assert wrong == []


def test_package_init_files_import_no_stage_eagerly():
    """``detector/__init__.py`` exports lazily: importing it loads no other project module."""
    graph = import_graph()
    assert graph["detector"] == set()


@pytest.mark.parametrize("source,expected", [
    ("import detector.core.boxes\n", {"detector", "detector.core", "detector.core.boxes"}),
    ("from detector.core import boxes\n", {"detector", "detector.core", "detector.core.boxes"}),
    ("from svm.mining import train_svms\n", {"svm", "svm.mining"}),
])
def test_resolution_counts_packages_run_on_the_way(source, expected):
    """The walker itself: a planted import resolves to the modules Python would execute."""
    modules = module_files()
    node = ast.parse(source).body[0]
    if isinstance(node, ast.Import):
        got = _resolve(node.names[0].name, [], modules)
    else:
        got = _resolve(node.module, [a.name for a in node.names], modules)
    assert got == expected


def test_cycle_finder_finds_a_planted_circle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []
