"""How the tests are laid out: shared helpers live in tests/helpers (or are conftest fixtures), and no module
under tests/ imports a test module, a conftest or a helper kept beside the tests: only tests.helpers."""

from __future__ import annotations

import ast
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]
HELPERS = TESTS / "helpers"


def forbidden_imports(path: Path, source: str) -> list[str]:
    """The imports of one module under tests/ that are not of tests.helpers, as "file:line: import"."""
    in_helpers = HELPERS in path.parents
    wrong = []
    for node in ast.walk(ast.parse(source, str(path))):
        if isinstance(node, ast.ImportFrom):
            if node.level:  # relative: only between helpers
                names = [f"{'.' * node.level}{node.module or ''}"]
                ok = [in_helpers]
            else:
                module = node.module or ""
                names = [module]
                ok = [
                    not module.startswith("tests") or module == "tests.helpers" or module.startswith("tests.helpers.")
                ]
                if module == "tests":  # from tests import x
                    names = [f"tests.{a.name}" for a in node.names]
                    ok = [a.name == "helpers" for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
            ok = [not n.startswith("tests") or n == "tests.helpers" or n.startswith("tests.helpers.") for n in names]
        else:
            continue
        wrong += [
            f"{path.relative_to(TESTS.parent)}:{node.lineno}: {n}"
            for n, good in zip(names, ok, strict=True)
            if not good
        ]
    return wrong


def test_no_test_module_imports_another_test_module() -> None:
    modules = sorted(TESTS.rglob("*.py"))
    assert len(modules) > 50 and (HELPERS / "__init__.py") in modules  # the walk sees the tree
    wrong = [w for path in modules for w in forbidden_imports(path, path.read_text(encoding="utf-8"))]
    assert wrong == [], "import shared code from tests.helpers (or make it a conftest fixture)"


def test_the_check_sees_each_kind_of_forbidden_import() -> None:
    test_module = TESTS / "unit" / "test_x.py"
    source = (
        "from tests.unit.test_policy import dom\n"
        "from tests.conftest import NotifySocket\n"
        "import tests.e2e.realguest\n"
        "from tests import unit\n"
        "from .conftest import REPO\n"
        "from tests.helpers.snapshots import dom\n"
        "from tests.helpers import cli\n"
        "import pytest\n"
    )
    assert [w.split(": ", 1)[1] for w in forbidden_imports(test_module, source)] == [
        "tests.unit.test_policy",
        "tests.conftest",
        "tests.e2e.realguest",
        "tests.unit",
        ".conftest",
    ]
    assert forbidden_imports(HELPERS / "x.py", "from .cli import memcoord\n") == []
