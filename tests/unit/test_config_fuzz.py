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
from types import UnionType
from typing import Any, Literal, Union, get_args, get_origin

import tomli_w
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel
from pydantic.fields import FieldInfo

from memcoord.core import config as config_mod
from memcoord.core.config import Config, ConfigError, ConfigFileError, load, parse
from memcoord.daemon.service import Service
from memcoord.sim.host import demo_host

SETTINGS = settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _sections(model: type[BaseModel]) -> tuple[dict[str, dict[str, FieldInfo]], dict[str, FieldInfo]]:
    """The config's schema from the pydantic model: {section: {key: field}} for the table sections, and the
    fields of a `[domains.NAME]` table (the one dict-of-tables section)."""
    tables: dict[str, dict[str, FieldInfo]] = {}
    per_name: dict[str, FieldInfo] = {}
    for name, f in model.model_fields.items():
        if isinstance(f.annotation, type) and issubclass(f.annotation, BaseModel):
            tables[name] = dict(f.annotation.model_fields)
        elif get_origin(f.annotation) is dict:
            key_type, value_type = get_args(f.annotation)
            assert key_type is str and issubclass(value_type, BaseModel), f"{name}: {f.annotation}"
            assert not per_name, "a second dict-of-tables section: give the fuzzer its name"
            per_name = dict(value_type.model_fields)
            tables_name = name
        else:
            raise AssertionError(f"top-level config key {name} is not a section: {f.annotation}")
    assert per_name and tables_name == "domains", "the fuzzer writes overrides under [domains.NAME]"
    return tables, per_name


SCHEMA, OVERRIDE_FIELDS = _sections(Config)
OVERRIDE_KEYS = list(OVERRIDE_FIELDS)


def _bounds(f: FieldInfo) -> tuple[float | None, float | None]:
    """The field's numeric range from its constraints (gt/ge, lt/le), as closed bounds for integers and floats."""
    low = high = None
    for m in f.metadata:
        low = getattr(m, "ge", low)
        high = getattr(m, "le", high)
        if getattr(m, "gt", None) is not None:
            low = m.gt
        if getattr(m, "lt", None) is not None:
            high = m.lt
    return low, high


def typed(f: FieldInfo) -> st.SearchStrategy[Any]:
    """Values of the field's type, around and inside its constraints (so valid configs load often, and each bound
    is tried from both sides). A field of a type this does not know fails the test: extend it, do not skip it."""
    annotation = f.annotation
    args = [a for a in get_args(annotation) if a is not type(None)]
    if get_origin(annotation) in (Union, UnionType) and len(args) == 1:
        annotation = args[0]  # `int | None`: TOML has no null; absent is how a file says None
    low, high = _bounds(f)
    if annotation is bool:
        return st.booleans()
    if annotation is int:
        lo = int(low) if low is not None else -(2**40)
        hi = int(high) if high is not None else 2**40
        edges = [v for b in (low, high) if b is not None for v in (int(b) - 1, int(b), int(b) + 1)]
        return st.integers(lo, hi) | st.integers(max(lo, 0), min(hi, 100_000)) | st.sampled_from(edges or [0])
    if annotation is float:
        edges = [v for b in (low, high) if b is not None for v in (b - 1e-9, b, b + 1e-9)]
        inside = st.floats(low, high, allow_nan=False, allow_infinity=False)
        return inside | st.sampled_from(edges or [0.0])
    if get_origin(annotation) is Literal:
        return st.sampled_from(get_args(annotation)) | st.text(max_size=12)
    if annotation is str:
        return st.text(max_size=30) | st.sampled_from(["", "127.0.0.1", "[::1]:9749", "/run/x", "*"])
    if get_origin(annotation) is tuple and get_args(annotation)[1:] == (Ellipsis,):
        return st.lists(st.text(max_size=12), max_size=4)
    raise AssertionError(f"no value strategy for a config field of type {f.annotation!r}")


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
    """Config-shaped dicts: mostly real keys with values of any type, sometimes unknown keys and odd shapes.
    Half of them are well-typed (every value of its key's type, near its bounds), so that valid configs load
    often enough for the "what was given is in effect" check to run."""
    well_typed = draw(st.booleans())

    def value(f: FieldInfo) -> Any:
        return draw(typed(f) if well_typed else typed(f) | values)

    doc: dict[str, Any] = {}
    for section, keys in SCHEMA.items():
        if draw(st.booleans()):
            continue
        if not well_typed and draw(st.integers(0, 9)) == 0:
            doc[section] = draw(values)  # a section that is not a table
            continue
        chosen = draw(st.lists(st.sampled_from(list(keys)), unique=True, max_size=3 if well_typed else len(keys)))
        body = {k: value(keys[k]) for k in chosen}
        if not well_typed and draw(st.integers(0, 4)) == 0:
            body[draw(st.text(min_size=1, max_size=10))] = draw(values)
        doc[section] = body
    if draw(st.booleans()):
        domains: dict[str, Any] = {}
        for name in draw(st.lists(st.text(min_size=1, max_size=12), max_size=3, unique=True)):
            if not well_typed and draw(st.integers(0, 9)) == 0:
                domains[name] = draw(values)
            else:
                keys = draw(st.lists(st.sampled_from(OVERRIDE_KEYS), unique=True))
                domains[name] = {k: value(OVERRIDE_FIELDS[k]) for k in keys}
        doc["domains"] = domains
    if not well_typed and draw(st.integers(0, 9)) == 0:
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
                if k in body:
                    given_value = tuple(body[k]) if isinstance(body[k], list) else body[k]
                    assert getattr(getattr(config, section), k) == given_value, (section, k)
        for name, body in doc.get("domains", {}).items():
            for k, v in body.items():
                assert getattr(config.domains[name], k) == v, (name, k)


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


def test_the_fuzzed_schema_is_the_models() -> None:
    """Every key of the model is fuzzed, with a value strategy of its type: a new key needs no edit here."""
    fuzzed = {(section, k) for section, keys in SCHEMA.items() for k in keys}
    assert ("metrics", "port") in fuzzed and ("guest", "starving_pct") in fuzzed and ("timeline", "max_mib") in fuzzed
    for section, keys in SCHEMA.items():
        model = type(getattr(Config(), section))
        assert set(keys) == set(model.model_fields), section
        for f in keys.values():
            typed(f)
    assert set(SCHEMA) | {"domains"} == set(Config.model_fields)
    assert _bounds(SCHEMA["loop"]["interval_s"]) == (0, 3600) and _bounds(SCHEMA["metrics"]["port"]) == (1, 65535)
    for f in OVERRIDE_FIELDS.values():
        typed(f)
