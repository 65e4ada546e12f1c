"""Config fuzzing: every input loads whole or raises ConfigError naming the key; never another exception.

Three generators: arbitrary text (and bytes, through `load`), TOML-shaped text built from the config's own
keys, and structured documents (known and unknown keys, values of every TOML type) dumped with tomli_w. A bad
file given to a running service on reload must leave the running config untouched (no partial config).
"""

from __future__ import annotations

import datetime as dt
import json
import math
import re
import tempfile
from pathlib import Path
from typing import Any

import tomli_w
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from memcoord import config as config_mod
from memcoord.config import Config, ConfigError, ConfigFileError, load, parse
from memcoord.hypervisor.sim import demo_host
from memcoord.service import Service

SETTINGS = settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])

SCHEMA: dict[str, list[str]] = {
    "libvirt": ["uri", "domains"],
    "loop": ["interval_s", "stats_period_s", "dry_run"],
    "guest": ["starving_mib", "wasteful_mib", "grow_step_mib", "reclaim_step_mib", "min_mib", "idle_tax_mib"],
    "host": ["min_available_mib"],
}
OVERRIDE_KEYS = ["min_mib", "max_mib", "enabled"]

# One config error line: "<path>: <key>[ = <value>]: <message>" (see config._describe), or a TOML syntax error.
SEGMENT = r'(?:[^\s."=:]+|"(?:[^"\\]|\\.)*")'
ERROR_LINE = re.compile(rf"^<string>: (?P<key>{SEGMENT}(?:\.{SEGMENT})*|\(top level\))(?: = .*)?: .+$", re.DOTALL)


def _segments(key: str) -> tuple[str, ...]:
    """The path a key in an error message names: bare parts as they are, quoted parts JSON/TOML-unescaped."""
    return tuple(json.loads(p) if p.startswith('"') else p for p in re.findall(SEGMENT, key))


def _check(text: str) -> Config | None:
    """Parse; a failure must be ConfigError (anything else propagates and fails the test)."""
    try:
        return parse(text)
    except ConfigError as exc:
        assert str(exc).startswith("<string>: "), str(exc)
        return None


scalars = (
    st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.integers(-5, 5000)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=20)
    | st.booleans()
    | st.datetimes(min_value=dt.datetime(1, 1, 1), max_value=dt.datetime(9999, 12, 31))
    | st.dates()
    | st.times()
)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=4,
)


@st.composite
def documents(draw: st.DrawFn) -> dict[str, Any]:
    """Config-shaped dicts: mostly real keys with values of any type, sometimes unknown keys and odd shapes."""
    doc: dict[str, Any] = {}
    for section, keys in SCHEMA.items():
        if draw(st.booleans()):
            continue
        if draw(st.integers(0, 9)) == 0:
            doc[section] = draw(values)  # a section that is not a table
            continue
        body = {k: draw(values) for k in draw(st.lists(st.sampled_from(keys), unique=True, max_size=len(keys)))}
        if draw(st.integers(0, 4)) == 0:
            body[draw(st.text(min_size=1, max_size=10))] = draw(values)
        doc[section] = body
    if draw(st.booleans()):
        domains: dict[str, Any] = {}
        for name in draw(st.lists(st.text(min_size=1, max_size=12), max_size=3, unique=True)):
            if draw(st.integers(0, 9)) == 0:
                domains[name] = draw(values)
            else:
                keys = draw(st.lists(st.sampled_from(OVERRIDE_KEYS), unique=True))
                domains[name] = {k: draw(values) for k in keys}
        doc["domains"] = domains
    if draw(st.integers(0, 9)) == 0:
        doc[draw(st.text(min_size=1, max_size=10))] = draw(values)
    return doc


def _paths(doc: Any, prefix: tuple[str, ...] = ()) -> set[tuple[str, ...]]:
    out = {prefix}
    if isinstance(doc, dict):
        for k, v in doc.items():
            out |= _paths(v, (*prefix, str(k)))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            out |= _paths(v, (*prefix, str(i)))
    return out


@SETTINGS
@given(documents())
def test_structured_documents_load_or_name_the_key(doc: dict[str, Any]) -> None:
    text = tomli_w.dumps(doc)
    try:
        config = parse(text)
    except ConfigError as exc:
        message = str(exc)
        paths = _paths(doc)
        for line in message.splitlines():
            m = ERROR_LINE.match(line)
            assert m, f"error line does not name a key: {line!r}"
            key = m.group("key")
            assert key == "(top level)" or _segments(key) in paths, f"{key!r} is not a key of the document: {line!r}"
    else:
        # Loaded whole: what was given is what is in effect.
        assert isinstance(config, Config)
        for section, keys in SCHEMA.items():
            body = doc.get(section, {})
            for k in keys:
                if k in body and not isinstance(body[k], list | float):
                    assert getattr(getattr(config, section), k) == body[k]


@SETTINGS
@given(st.text(max_size=300))
def test_arbitrary_text_loads_or_raises_config_error(text: str) -> None:
    _check(text)


LITERALS = [
    *("0", "-1", "1", "150", "1e400", "inf", "nan", "-inf", "1.5", "true", "false", "1979-05-27", "0x10", "1_000"),
    *("9223372036854775807", '"x"', "''", "[]", '["*"]', "[1, 2]", "{a = 1}"),
]


@st.composite
def toml_like(draw: st.DrawFn) -> str:
    """Lines assembled from real section headers, keys and TOML value literals, plus junk: near-valid text."""
    lines = []
    for _ in range(draw(st.integers(0, 12))):
        kind = draw(st.integers(0, 9))
        if kind < 2:
            section = draw(st.sampled_from([*SCHEMA, 'domains."web1"', "domains.db", "domains", "x"]))
            lines.append(f"[{section}]")
        elif kind < 8:
            key = draw(st.sampled_from([k for ks in SCHEMA.values() for k in ks] + OVERRIDE_KEYS + ["bogus"]))
            literal = draw(st.sampled_from(LITERALS))
            lines.append(f"{key} = {literal}")
        else:
            lines.append(draw(st.text(max_size=15)))
    return "\n".join(lines)


@SETTINGS
@given(toml_like())
def test_near_valid_toml_loads_or_raises_config_error(text: str) -> None:
    _check(text)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200))
def test_arbitrary_bytes_in_a_file_load_or_raise_config_error(data: bytes) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "memcoord.toml"
        path.write_bytes(data)
        try:
            load(path)
        except ConfigFileError as exc:
            raise AssertionError(f"a readable file reported as unreadable: {exc}") from None
        except ConfigError as exc:
            assert str(exc).startswith(str(path)), str(exc)


def test_every_error_is_listed_one_per_line_with_its_key() -> None:
    text = '[guest]\nmin_mib = -1\nwasteful_mib = "lots"\n[loop]\ninterval_s = nan\n[domains.web1]\nenabled = 3\n'
    try:
        parse(text)
    except ConfigError as exc:
        lines = str(exc).splitlines()
    else:
        raise AssertionError("loaded an invalid config")
    keys = [ERROR_LINE.match(line).group("key") for line in lines]  # type: ignore[union-attr]
    assert keys == ["loop.interval_s", "guest.wasteful_mib", "guest.min_mib", "domains.web1.enabled"], lines


def test_non_finite_numbers_are_refused() -> None:
    for literal in ("nan", "inf", "-inf", "1e400"):
        try:
            config = parse(f"[loop]\ninterval_s = {literal}\n")
        except ConfigError as exc:
            assert "loop.interval_s" in str(exc)
        else:
            raise AssertionError(f"interval_s = {literal} loaded as {config.loop.interval_s}")
    assert math.isfinite(parse("[loop]\ninterval_s = 3600.0\n").loop.interval_s)


@settings(max_examples=50, deadline=None)
@given(documents())
def test_a_bad_reload_keeps_the_running_config_whole(doc: dict[str, Any]) -> None:
    """SIGHUP with a broken file: the service keeps every value of the config it ran with."""
    text = tomli_w.dumps(doc)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "memcoord.toml"
        good = '[libvirt]\nuri = "sim:"\n[guest]\nmin_mib = 300\nstarving_mib = 100\n[host]\nmin_available_mib = 5\n'
        path.write_text(good)
        service = Service(path, config_mod.load(path), lambda _uri: demo_host())
        before = service.config
        path.write_text(text)
        service.reload()
        try:
            new = config_mod.load(path)
        except ConfigError:
            assert service.config is before
            assert service.reload_note.startswith("reload failed")
        else:
            assert service.config == new
            assert service.reload_note == ""
        finally:
            service.hypervisor.close()
