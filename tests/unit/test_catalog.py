"""The journal catalog (memcoord/buildtime/catalog.py): every MESSAGE_ID the sources define has an entry (the real
journalctl reading the file: tests/integration/test_catalog_journalctl.py)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from memcoord.buildtime import catalog
from memcoord.core.model import Action
from memcoord.daemon.journal import LIFECYCLE_IDS, MESSAGE_ID_SET_MEMORY_FAILED, MESSAGE_ID_SET_MEMORY_UNKNOWN

SRC = Path(catalog.__file__).resolve().parents[1]
# A MESSAGE_ID as the sources write one: 32 hex digits in quotes.
ID_LITERAL = re.compile(r"""["']([0-9a-f]{32})["']""")


def ids_in_sources() -> set[str]:
    """Every 32-hex-digit string literal in the package but the catalog itself: where a new MESSAGE_ID appears."""
    found = set()
    for path in SRC.rglob("*.py"):
        if path.resolve() != Path(catalog.__file__).resolve():
            found |= set(ID_LITERAL.findall(path.read_text(encoding="utf-8")))
    return found


def entries(text: str) -> dict[str, str]:
    """The catalog's entries by MESSAGE_ID."""
    parts = re.split(r"^-- ([0-9a-f]{32})$", text, flags=re.MULTILINE)
    return dict(zip(parts[1::2], parts[2::2], strict=True))


def test_every_message_id_in_the_sources_has_an_entry() -> None:
    ids = ids_in_sources()
    defined = (
        {a.message_id for a in Action}
        | set(LIFECYCLE_IDS.values())
        | {MESSAGE_ID_SET_MEMORY_FAILED, MESSAGE_ID_SET_MEMORY_UNKNOWN}
    )
    assert defined <= ids, defined - ids  # the scan sees the IDs where they are defined
    found = entries(catalog.render())
    assert set(found) == ids, {"without an entry": ids - set(found), "not in the sources": set(found) - ids}
    for mid, body in found.items():
        assert re.search(r"^Subject: \S", body, re.MULTILINE), mid
        assert len(body.split("\n\n", 1)[1].strip()) > 80, f"{mid}: no explanation"


def test_a_kind_without_an_explanation_stops_the_build(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delitem(catalog.ACTIONS, Action.TAX)
    monkeypatch.delitem(catalog.LIFECYCLE, "ready")
    with pytest.raises(ValueError, match="action tax, event ready"):
        catalog.render()
