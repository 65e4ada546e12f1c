"""What README.md and RELIABILITY.md say that the code decides: the numbers of cases the property tests run, and
what the hardening figure leaves out."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _table_rows(markdown: str) -> list[list[str]]:
    """The cells of every table row (header and rule rows included: they name no test file)."""
    return [
        [c.strip() for c in line.strip().strip("|").split("|")]
        for line in markdown.splitlines()
        if line.startswith("|")
    ]


def _max_examples(test_file: str) -> set[int]:
    """max_examples of every hypothesis test in tests/unit/<test_file>."""
    module = importlib.import_module(f"tests.unit.{Path(test_file).stem}")
    return {
        fn._hypothesis_internal_use_settings.max_examples
        for name, fn in vars(module).items()
        if name.startswith("test_") and hasattr(fn, "hypothesis")
    }


def test_the_case_counts_in_reliability_are_the_tests_own() -> None:
    """Every count a hypothesis row states is a max_examples of its file, and every max_examples of a file is
    stated in a row naming it ("500 cases each" once stood for 500, 200 and 50)."""
    stated: dict[str, set[int]] = {}
    checked = 0
    for cells in _table_rows((ROOT / "RELIABILITY.md").read_text()):
        files = re.findall(r"`tests/unit/(test_\w+\.py)`", " ".join(cells[1:2]))
        if not files:
            continue
        numbers = {int(n) for n in re.findall(r"\d+", cells[0])}
        for f in files:
            stated.setdefault(f, set()).update(numbers)
            if "hypothesis" in cells[0]:
                checked += 1
                assert numbers <= _max_examples(f), f"RELIABILITY.md: {cells[0]!r} but {f} runs {_max_examples(f)}"
    assert checked >= 2, "no hypothesis rows found: the table changed shape"
    for f in stated:
        if _max_examples(f):
            assert _max_examples(f) <= stated[f], f"{f} runs {_max_examples(f)} cases, RELIABILITY.md says {stated[f]}"


def test_the_hardening_figure_says_the_libvirt_group_is_root_equivalent() -> None:
    """Wherever README gives the `systemd-analyze security` exposure, it says what that leaves out."""
    readme = (ROOT / "README.md").read_text()
    blocks = [b for b in re.split(r"\n\s*\n|\n- ", readme) if "systemd-analyze security" in b and "1." in b]
    assert blocks, "README no longer gives the systemd-analyze figure"
    for block in blocks:
        assert "libvirt" in block and "root-equivalent" in block, block
