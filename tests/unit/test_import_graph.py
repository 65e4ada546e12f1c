"""The import graph of src/memcoord, read with `ast`: no cycle between its modules.

Module-level imports (run when the module is imported, class bodies included) and function-level imports (run when
the function is called, the way the CLI defers heavy modules) are listed separately. A cycle of module-level imports
breaks on a partly initialised module depending on which module is imported first; a cycle through function-level
imports works but hides that two modules are one idea split in two. `if TYPE_CHECKING:` imports never run and are
left out.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src"
PACKAGE = "memcoord"


@dataclass
class Graph:
    modules: set[str] = field(default_factory=set)
    module_level: dict[str, set[str]] = field(default_factory=dict)
    function_level: dict[str, set[str]] = field(default_factory=dict)


def _module_name(path: Path) -> str:
    parts = path.relative_to(SRC).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(tree: ast.Module) -> Iterator[tuple[ast.Import | ast.ImportFrom, bool]]:
    """Every import statement with whether it runs at module level."""

    def walk(node: ast.AST, in_function: bool) -> Iterator[tuple[ast.Import | ast.ImportFrom, bool]]:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child):
                yield from (x for stmt in child.orelse for x in walk(ast.Module([stmt], []), in_function))
                continue
            if isinstance(child, ast.Import | ast.ImportFrom):
                yield child, not in_function
            yield from walk(
                child, in_function or isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda)
            )

    yield from walk(tree, False)


def _targets(node: ast.Import | ast.ImportFrom, importer: str, is_package: bool, modules: set[str]) -> set[str]:
    """The memcoord modules an import statement loads."""
    if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
        return {n for n in names if n in modules}
    if node.level:
        base = importer.split(".") if is_package else importer.split(".")[:-1]
        base = base[: len(base) - (node.level - 1)]
        origin = ".".join(base + ([node.module] if node.module else []))
    else:
        origin = node.module or ""
    found = set()
    for alias in node.names:
        sub = f"{origin}.{alias.name}"
        if sub in modules:
            found.add(sub)  # `from . import config`: the submodule
        elif origin in modules:
            found.add(origin)  # `from .config import Config`: the module holding the name
    return found


def build_graph() -> Graph:
    paths = sorted((SRC / PACKAGE).rglob("*.py"))
    g = Graph(modules={_module_name(p) for p in paths})
    for path in paths:
        name = _module_name(path)
        g.module_level[name] = set()
        g.function_level[name] = set()
        for node, at_module_level in _imports(ast.parse(path.read_text(), str(path))):
            targets = _targets(node, name, path.name == "__init__.py", g.modules) - {name}
            (g.module_level if at_module_level else g.function_level)[name] |= targets
    return g


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted; sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return sorted(found)


def _union(*graphs: dict[str, set[str]]) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for g in graphs:
        for k, vs in g.items():
            out.setdefault(k, set()).update(vs)
    return out


GRAPH = build_graph()


def test_the_graph_is_read():
    """The reader finds the imports it must find, at the level they are at (else the cycle checks check nothing)."""
    assert {
        "memcoord.cli",
        "memcoord.daemon.service",
        "memcoord.core.policy",
        "memcoord.hypervisor.libvirt",
    } <= GRAPH.modules
    assert "memcoord.admin.cliargs" in GRAPH.module_level["memcoord.cli"]  # DEFAULT_CONFIG_PATH, ...
    assert "memcoord.core.config" in GRAPH.function_level["memcoord.cli"]  # deferred: status starts without pydantic
    assert "memcoord.daemon.service" in GRAPH.function_level["memcoord.cli"]  # deferred in _cmd_run
    assert "memcoord.daemon.service" not in GRAPH.module_level["memcoord.cli"]
    assert sum(map(len, GRAPH.module_level.values())) > 20


def test_the_cycle_finder_finds_cycles():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_cycle_in_module_level_imports():
    assert cycles(GRAPH.module_level) == []


def _runtime_graph() -> dict[str, set[str]]:
    """Module- and function-level imports together, without a package's function-level imports of its own
    submodules: a factory in a package (hypervisor.connect) importing its adapters, which import the package's
    port, is the ordinary shape, and Python imports a package before its submodules anyway."""
    deferred = {
        k: {v for v in vs if not v.startswith(k + ".") or k not in PACKAGES} for k, vs in GRAPH.function_level.items()
    }
    return _union(GRAPH.module_level, deferred)


PACKAGES = {_module_name(p) for p in (SRC / PACKAGE).rglob("__init__.py")}


def test_no_cycle_counting_function_level_imports():
    assert cycles(_runtime_graph()) == []


# The wings of ARCHITECTURE.md ("The house"): its layering table says which wing may import which.
ARCHITECTURE = Path(__file__).resolve().parents[2] / "ARCHITECTURE.md"


def _layering() -> dict[str, set[str]]:
    block = ARCHITECTURE.read_text(encoding="utf-8").split("```layering\n", 1)[1].split("```", 1)[0]
    rows = [line.split() for line in block.splitlines()[1:] if line.strip()]
    return {row[0]: set(row[1:]) - {"-"} for row in rows}


LAYERING = _layering()


def wing(module: str) -> str:
    """memcoord.core.policy -> core; memcoord.cli -> cli; memcoord (the package) -> memcoord."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def test_every_module_is_in_a_wing_of_the_table():
    wings = {wing(m) for m in GRAPH.modules} - {"memcoord"}
    assert wings == set(LAYERING), f"wings in src/memcoord {sorted(wings)} vs ARCHITECTURE.md {sorted(LAYERING)}"


def test_the_table_is_a_strict_order():
    """No wing may import one that may import it back: the table is a layering, not a web."""
    for name, allowed in LAYERING.items():
        assert name not in allowed
        for other in allowed:
            assert name not in LAYERING[other], f"{name} and {other} may import each other"


def violations(edges: dict[str, set[str]], layering: dict[str, set[str]]) -> list[str]:
    """The imports `layering` does not allow, as "importer -> imported"."""
    wrong = []
    for importer, targets in edges.items():
        src = wing(importer)
        for target in sorted(targets):
            dst = wing(target)
            if dst in (src, "memcoord"):  # its own wing; the package itself (__version__)
                continue
            if src == "memcoord" or dst not in layering.get(src, set()):
                wrong.append(f"{importer} -> {target}")
    return sorted(wrong)


def test_each_wing_imports_only_the_wings_below_it():
    """Module- and function-level imports alike: a deferred import still ties the wings at run time."""
    assert violations(_union(GRAPH.module_level, GRAPH.function_level), LAYERING) == []


def test_the_layering_check_sees_a_wrong_import():
    edges = {
        "memcoord.core.policy": {"memcoord.core.model", "memcoord.daemon.journal"},
        "memcoord.daemon.service": {"memcoord.core.policy", "memcoord.admin.status"},
        "memcoord": {"memcoord.core.model"},
    }
    assert violations(edges, LAYERING) == [
        "memcoord -> memcoord.core.model",
        "memcoord.core.policy -> memcoord.daemon.journal",
        "memcoord.daemon.service -> memcoord.admin.status",
    ]
