"""ARCHITECTURE.md cannot drift from the code: every module of src/memcoord is named in it, and every file, module,
function, class and constant it names exists.

A module added without a line in ARCHITECTURE.md fails here, and so does a name there that a rename left behind.
"""

from __future__ import annotations

import builtins
import importlib
import inspect
import pkgutil
import re
from pathlib import Path
from types import ModuleType

import pytest

import memcoord

REPO = Path(__file__).resolve().parents[2]
SRC = REPO / "src" / "memcoord"
DOC = REPO / "ARCHITECTURE.md"
TEXT = DOC.read_text(encoding="utf-8")
INLINE = re.findall(r"`([^`\n]+)`", TEXT)
CODE_BLOCKS = re.findall(r"```\n(.*?)```", TEXT, flags=re.DOTALL)


def _modules() -> list[str]:
    """Every module of the package as a path below src/memcoord (cli.py, hypervisor/sim.py, policies/__init__.py);
    the package's own __init__.py is the package, not a module to describe."""
    paths = sorted(SRC.rglob("*.py"))
    return [p.relative_to(SRC).as_posix() for p in paths if p != SRC / "__init__.py"]


@pytest.mark.parametrize("module", _modules())
def test_every_module_is_named(module: str):
    # cli.py must not be satisfied by cliargs.py, nor sim.py by hypervisor/sim.py or sim_run.py.
    pattern = rf"(?<![\w/]){re.escape(module)}" if "/" not in module else rf"(?<![\w]){re.escape(module)}"
    assert re.search(pattern, TEXT), f"{module} is not named in ARCHITECTURE.md: add its line to the module map"


def _paths() -> list[str]:
    """Backquoted files and directories (`step.py`, `bench/policies/`, `etc/memcoord.toml`) and the *.md files."""
    quoted = [t for t in INLINE if re.fullmatch(r"[\w./-]+(\.py|\.toml|\.md|/)", t)]
    return sorted(set(quoted) | set(re.findall(r"\b[A-Z]+\.md\b", TEXT)))


def _exists(path: str) -> bool:
    """A path below src/memcoord or the repository, or a bare module name (`policy.py`) that names exactly one
    module of the package, in whichever wing it lives."""
    if (SRC / path).exists() or (REPO / path).exists():
        return True
    return "/" not in path and len(list(SRC.rglob(path))) == 1


@pytest.mark.parametrize("path", _paths())
def test_every_named_file_exists(path: str):
    assert _exists(path), f"ARCHITECTURE.md names {path}, which does not exist (or names more than one module)"


def _memcoord_modules() -> dict[str, ModuleType]:
    """Every module of the package by its short name (policy, sim, hypervisor) and its dotted one."""
    found: dict[str, ModuleType] = {"memcoord": memcoord}
    for info in pkgutil.walk_packages(memcoord.__path__, "memcoord."):
        module = importlib.import_module(info.name)
        found[info.name] = found[info.name.rsplit(".", 1)[1]] = module
    return found


MODULES = _memcoord_modules()


def _everywhere() -> dict[str, list[object]]:
    """Every top-level name of every module, and every attribute of every class defined in the package."""
    names: dict[str, list[object]] = {}
    for module in set(MODULES.values()):
        for name, value in vars(module).items():
            names.setdefault(name, []).append(value)
            if inspect.isclass(value) and value.__module__.startswith("memcoord"):
                for attr in dir(value):
                    names.setdefault(attr, []).append(getattr(value, attr))
    return names


EVERYWHERE = _everywhere()


def _resolves(dotted: str) -> bool:
    """`step`, `policy.decide`, `Service.tick`, `_Ledger.take`, `Snapshot.taken_at_s`, `time.monotonic`."""
    first, *rest = dotted.split(".")
    if first in MODULES:
        roots: list[object] = [MODULES[first]]
    elif first in EVERYWHERE:
        roots = EVERYWHERE[first]
    elif hasattr(builtins, first):
        roots = [getattr(builtins, first)]
    else:
        try:
            roots = [importlib.import_module(first)]
        except ImportError:
            return False
    for root in roots:
        value: object = root
        for attr in rest:
            if not hasattr(value, attr):
                break
            value = getattr(value, attr)
        else:
            return True
    return False


def _code_names() -> list[str]:
    """Names the document calls or spells as code: `name()`, `name(args)`, `Class.attr`, `CONSTANT`, `ClassName`,
    and every `name(` in its code blocks. Plain lowercase words (a method listed by name, a JSON field) are prose."""
    names = set()
    for token in INLINE:
        call = re.fullmatch(r"([A-Za-z_][\w.]*)\(.*", token)
        if call:
            names.add(call[1])
        elif re.fullmatch(r"(_?[A-Z][A-Za-z0-9_]*)(\.\w+)*", token):
            names.add(token)
    for block in CODE_BLOCKS:
        names.update(re.findall(r"([A-Za-z_][\w.]*)\(", block))
    return sorted(names)


@pytest.mark.parametrize("name", _code_names())
def test_every_named_function_class_and_constant_exists(name: str):
    assert _resolves(name), f"ARCHITECTURE.md names {name}, which is nowhere in src/memcoord"


def test_the_policy_rules_are_listed_in_the_order_decide_calls_them():
    source = inspect.getsource(MODULES["policy"].decide)
    section = TEXT.split("## The pure core", 1)[1].split("\n## ", 1)[0]
    # Functions (`_look_at()`) and the allocation's steps (`clamp()`), each at its first mention.
    listed = list(dict.fromkeys(n for n in re.findall(r"`(\w+)\(\)`", section) if re.search(rf"\b{n}\(", source)))
    assert len(listed) >= 6, listed
    assert listed == sorted(listed, key=lambda n: source.index(f"{n}(")), "rules listed out of decide()'s order"
