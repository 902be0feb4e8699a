"""The shape of the package, checked: no room too big to read, no import circle, no method named by string.

These are the rules of docs/architecture.md; each check reports every offender at once so a failure says what
to fix.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

from bora_diffusion import adapters

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "bora_diffusion"
MAX_LINES = 450


def _modules() -> dict[str, Path]:
    """Dotted module name -> file, for every module of the package (a package is its __init__)."""
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(module: str, path: Path, known: set[str]) -> set[str]:
    """The package modules `module` imports, at module level or inside functions (what runs at some point),
    leaving out `if TYPE_CHECKING:` blocks, which never run."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    targets: set[str] = set()

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child):
                for other in child.orelse:
                    visit(other)
                continue
            if isinstance(child, ast.Import):
                targets.update(alias.name for alias in child.names)
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    anchor = package.split(".")[: len(package.split(".")) - (child.level - 1)]
                    base = ".".join([*anchor, base] if base else anchor)
                targets.add(base)
                # `from . import train` imports the submodule train
                targets.update(f"{base}.{alias.name}" for alias in child.names)
            visit(child)

    visit(ast.parse(path.read_text()))
    return {target for target in targets if target in known and target != module}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []

    def connect(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for other in graph[node]:
            if other not in index:
                connect(other)
                low[node] = min(low[node], low[other])
            elif other in on_stack:
                low[node] = min(low[node], index[other])
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
            connect(node)
    return found


def import_graph() -> dict[str, set[str]]:
    modules = _modules()
    graph = {name: _imports(name, path, set(modules)) for name, path in modules.items()}
    # A module's import of its own package's __init__ is how Python loads it, not a dependency: drop the edges
    # from a package's modules up to the packages above them.
    for name, targets in graph.items():
        graph[name] = {t for t in targets if not name.startswith(t + ".")}
    return graph


def test_the_cycle_finder_finds_a_cycle_and_a_clean_graph_has_none():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set(), "c": {"a", "b"}}) == []


def test_the_scan_sees_imports_inside_functions_and_leaves_type_checking_out(tmp_path):
    source = tmp_path / "compare.py"
    source.write_text(
        "from typing import TYPE_CHECKING\nfrom . import chart\nif TYPE_CHECKING:\n    from .scorer import S\n"
        "def save():\n    from ..world.scenes import draw\n"
    )
    known = {"pkg.ev.chart", "pkg.ev.scorer", "pkg.world.scenes", "pkg.ev"}
    assert _imports("pkg.ev.compare", source, known) == {"pkg.ev", "pkg.ev.chart", "pkg.world.scenes"}


def test_no_module_is_over_450_lines():
    sizes = {name: len(path.read_text().splitlines()) for name, path in _modules().items()}
    assert sizes, "no modules found"
    assert {name: n for name, n in sizes.items() if n > MAX_LINES} == {}


def test_no_import_circle_among_the_packages_modules():
    graph = import_graph()
    assert "bora_diffusion.adapters" in graph["bora_diffusion.config"]  # the scan sees imports
    assert _cycles(graph) == []


def _named_methods(node: ast.AST, methods: set[str]) -> list[str]:
    """Method ids written as string constants in `node`: a constant, or the items of a tuple/list/set."""
    items = node.elts if isinstance(node, ast.Tuple | ast.List | ast.Set) else [node]
    return [i.value for i in items if isinstance(i, ast.Constant) and i.value in methods]


def _is_method_table(node: ast.AST, methods: set[str]) -> bool:
    """`GROUPED = ("lora", "ortho")`: an upper-case constant whose items are all method ids. A tuple of other
    names that happens to hold one (the slot spaces "in", "out", "ortho") is not one, nor a setting's lower-case
    default list of methods to compare."""
    if not isinstance(node, ast.Assign) or not isinstance(node.value, ast.Tuple | ast.List | ast.Set):
        return False
    names = [target.id for target in node.targets if isinstance(target, ast.Name)]
    items = node.value.elts
    every_item_a_method = len(_named_methods(node.value, methods)) == len(items)
    return bool(names and items) and all(name.isupper() for name in names) and every_item_a_method


def method_name_uses(path: Path, methods: set[str]) -> list[str]:
    """Where a file compares a value with a method id, keys a table by method ids or names a list of them:
    `method == "bora_block"`, `method in ("dora", "bora_bidim")`, `{"bora_block": ...}`, `GROUPED = ("lora",)`.
    A method's facts belong on its class."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Compare):
            named = [m for side in (node.left, *node.comparators) for m in _named_methods(side, methods)]
        elif isinstance(node, ast.Dict):
            named = [m for key in node.keys if key is not None for m in _named_methods(key, methods)]
        elif _is_method_table(
            node, methods
        ):  # a constant listing methods by id, where a class attribute belongs
            named = _named_methods(node.value, methods)
        else:
            continue
        found += [(node.lineno, name) for name in named]
    return [f"{path.relative_to(ROOT)}:{line} {name}" for line, name in sorted(found)]


def test_no_method_name_is_compared_as_a_string_outside_its_own_file():
    methods = set(adapters.available())
    sample = ROOT / "tests" / "data_method_names.py"
    try:
        sample.write_text('x = method == "bora_block"\ny = {"lora": 1}\nz = "sbora_fa"\nW = ("ortho",)\n')
        assert method_name_uses(sample, methods) == [
            "tests/data_method_names.py:1 bora_block",
            "tests/data_method_names.py:2 lora",
            "tests/data_method_names.py:4 ortho",
        ]
    finally:
        sample.unlink()
    files = [*sorted(PACKAGE.rglob("*.py")), ROOT / "app.py", ROOT / "tests" / "conftest.py"]
    # A method's own file may name itself (adapters/<file>.py: `method = "lora"` is not a comparison anyway).
    offenders = [use for path in files for use in method_name_uses(path, methods)]
    assert offenders == []


def test_the_generic_scorer_knows_nothing_of_the_world():
    """evaluation/ scores any concept with any CLIP; the world (the demo domain) plugs itself in from world/."""
    graph = import_graph()
    assert "bora_diffusion.evaluation.scorer" in graph["bora_diffusion.world.scoring"]
    into_world = {
        name: sorted(t for t in targets if t.startswith("bora_diffusion.world"))
        for name, targets in graph.items()
        if name.startswith("bora_diffusion.evaluation")
    }
    assert {name: targets for name, targets in into_world.items() if targets} == {}


def _first_line(path: Path) -> str:
    docstring = ast.get_docstring(ast.parse(path.read_text())) or ""
    return docstring.splitlines()[0] if docstring else ""


def test_every_module_says_its_job_in_a_docstring():
    missing = sorted(name for name, path in _modules().items() if len(_first_line(path)) < 20)
    assert missing == []


def test_the_architecture_page_names_every_module():
    """docs/architecture.md gives each module one line; a new module without one fails here."""
    page = (ROOT / "docs" / "architecture.md").read_text()
    named = set(re.findall(r"`(?:[\w/]+/)?(\w+\.py)`", page)) | set(re.findall(r"`(\w+\.py)`", page))
    unnamed = sorted(
        str(path.relative_to(PACKAGE))
        for path in PACKAGE.rglob("*.py")
        if path.name not in ("__init__.py", "__main__.py") and path.name not in named
    )
    assert unnamed == []
