"""The evaluation package's shape: small rooms, no import of the world, no import circle through it.

Imports are read from the source (top-level and inside functions, `TYPE_CHECKING` blocks included: a circle
broken only by importing late is still a circle), so a new late import that closes a circle fails here.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "bora_diffusion"
MAX_LINES = 450


def modules(package: Path) -> dict[str, Path]:
    """Dotted module name -> file, for every module under `package` (a package is its __init__)."""
    found = {}
    for path in sorted(package.rglob("*.py")):
        parts = list(path.relative_to(package.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def imports(package: Path) -> dict[str, set[str]]:
    """Module -> the modules of the same top package it imports anywhere in its file. `from .x import y` counts
    the submodule x.y when there is one, else x. An import of a package from inside it is left out: importing
    any submodule runs its packages' __init__ anyway, so that edge is no design circle."""
    found = modules(package)
    top = package.name
    graph: dict[str, set[str]] = {}
    for name, path in found.items():
        here = name if path.name == "__init__.py" else name.rpartition(".")[0]
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                wanted = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = here.split(".")[: len(here.split(".")) - (node.level - 1)]
                    module = ".".join(base + ([node.module] if node.module else []))
                else:
                    module = node.module or ""
                wanted = [
                    f"{module}.{alias.name}" for alias in node.names if f"{module}.{alias.name}" in found
                ]
                wanted = wanted or [module]
            else:
                continue
            for target in wanted:
                while target and target not in found:  # a name inside a module: the module
                    target = target.rpartition(".")[0]
                if target.startswith(top) and target != name and not name.startswith(target + "."):
                    targets.add(target)
        graph[name] = targets
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
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
    return found


def evaluation_world_imports(graph: dict[str, set[str]], top: str) -> dict[str, set[str]]:
    return {
        name: {target for target in targets if target.startswith(f"{top}.world")}
        for name, targets in graph.items()
        if name.startswith(f"{top}.evaluation") and any(t.startswith(f"{top}.world") for t in targets)
    }


def test_no_evaluation_module_is_over_450_lines():
    sizes = {
        path.name: len(path.read_text(encoding="utf-8").splitlines())
        for path in (PACKAGE / "evaluation").glob("*.py")
    }
    assert len(sizes) > 10
    assert {name: lines for name, lines in sizes.items() if lines > MAX_LINES} == {}


def test_evaluation_imports_nothing_of_the_world():
    graph = imports(PACKAGE)
    assert "bora_diffusion.world.scoring" in graph  # the world plugs itself into evaluation, not the reverse
    assert "bora_diffusion.evaluation.scorer" in graph["bora_diffusion.world.scoring"]
    assert evaluation_world_imports(graph, "bora_diffusion") == {}


def test_no_import_circle_runs_through_evaluation():
    graph = imports(PACKAGE)
    assert "bora_diffusion.evaluation.renderers" in graph["bora_diffusion.evaluation.comparison"]
    through = [c for c in cycles(graph) if any(m.startswith("bora_diffusion.evaluation") for m in c)]
    assert through == []


def write(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return root / "pkg"


def test_the_scan_sees_late_imports_circles_and_world_imports(tmp_path):
    """The checks above can fail: a circle closed by an import inside a function or under TYPE_CHECKING, and an
    evaluation module that imports the world inside a function, are all found."""
    package = write(
        tmp_path,
        {
            "pkg/__init__.py": "",
            "pkg/evaluation/__init__.py": "from .chart import draw\n",
            "pkg/evaluation/chart.py": (
                "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .compare import Comparison\n"
            ),
            "pkg/evaluation/compare.py": "def save():\n    from .chart import draw\n",
            "pkg/evaluation/scorer.py": "def load():\n    from ..world.clip import register\n",
            "pkg/world/__init__.py": "",
            "pkg/world/clip.py": "import pkg.evaluation.scorer\n",
        },
    )
    graph = imports(package)
    assert graph["pkg.evaluation"] == {"pkg.evaluation.chart"}
    assert sorted(cycles(graph)) == [
        ["pkg.evaluation.chart", "pkg.evaluation.compare"],
        ["pkg.evaluation.scorer", "pkg.world.clip"],
    ]
    assert evaluation_world_imports(graph, "pkg") == {"pkg.evaluation.scorer": {"pkg.world.clip"}}


@pytest.mark.parametrize("path", sorted((PACKAGE / "evaluation").glob("*.py")), ids=lambda path: path.name)
def test_each_evaluation_module_says_its_job_in_a_docstring(path):
    docstring = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8")))
    assert docstring and len(docstring.splitlines()[0]) > 20
