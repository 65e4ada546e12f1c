"""The daemon's config: validated by the pydantic models in a short-lived child process of the same interpreter
(`python -m memcoord.daemon.validate PATH`), and held here as a read-only view over the JSON that child prints.

`memcoord run` runs for months and validates its file only at start and on a reload; pydantic and the built
models would stay in its memory all that time (about 13 MiB, bench/daemon_rss.py --breakdown). So the daemon
never imports them. The view has no list of keys of its own: any key the models have is an attribute here,
nested sections are views, lists are tuples, and what the config means (floors, ceilings, which domains are
managed, the metrics address) comes from the same mixins as the models' (config_rules.py). Views are
immutable, hashable and equal by value, as the frozen models are (the policy caches on the guest section).
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from memcoord.core.config_rules import (
    FIELDS_SET_KEY,
    VALIDATE_COMMAND,
    ConfigError,
    ConfigFileError,
    ConfigRules,
    MetricsRules,
)

# The child imports pydantic and builds the models (well under a second); bounded far below systemd's watchdog
# (30 s), which a reload inside the loop must not starve.
VALIDATE_TIMEOUT_S = 10.0


class Section:
    """One validated section (or the whole config): its keys as read-only attributes."""

    __slots__ = ("_fields_set", "_hash_key", "_values")

    def __init__(self, values: Mapping[str, Any], fields_set: frozenset[str]) -> None:
        object.__setattr__(self, "_values", dict(values))
        object.__setattr__(self, "_fields_set", frozenset(fields_set))
        object.__setattr__(self, "_hash_key", tuple(sorted(self._values.items(), key=lambda item: item[0])))

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        try:
            return self._values[name]
        except KeyError:
            raise AttributeError(f"{type(self).__name__} has no key {name!r}") from None

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"{type(self).__name__} is read-only")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"{type(self).__name__} is read-only")

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and self._hash_key == other._hash_key  # type: ignore[attr-defined]

    def __hash__(self) -> int:
        return hash(self._hash_key)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in self._values.items())})"

    @property
    def model_fields_set(self) -> frozenset[str]:
        """The keys the file set in this section (the others have their defaults), as on the models."""
        return self._fields_set

    def model_copy(self, update: Mapping[str, Any] | None = None) -> Section:
        """A copy with some keys replaced (not validated, as the models' model_copy)."""
        update = dict(update or {})
        unknown = set(update) - set(self._values)
        if unknown:
            raise AttributeError(f"{type(self).__name__} has no key {sorted(unknown)[0]!r}")
        return type(self)({**self._values, **update}, self._fields_set | set(update))

    def model_dump(self, mode: str = "json", exclude_none: bool = False) -> dict[str, Any]:
        """The values as JSON data, as the models' model_dump(mode="json") gives them."""
        if mode != "json":
            raise ValueError("a config view dumps only as JSON data (mode='json')")
        return {k: _dump(v, exclude_none) for k, v in self._values.items() if not (exclude_none and v is None)}


class MetricsView(MetricsRules, Section):
    __slots__ = ()


class ConfigView(ConfigRules, Section):
    """The whole config, as the daemon runs on it."""

    __slots__ = ()


# Which sections have behaviour of their own (the same mixins as their models); any other section is a Section.
_SECTION_TYPES: dict[str, type[Section]] = {"metrics": MetricsView}


class FrozenMapping(Mapping[str, Any]):
    """A table of sections by name (`[domains."NAME"]`): read-only, hashable, equal by value."""

    __slots__ = ("_hash_key", "_items")

    def __init__(self, items: Mapping[str, Any]) -> None:
        self._items = dict(items)
        self._hash_key = tuple(sorted(self._items.items(), key=lambda item: item[0]))

    def __getitem__(self, key: str) -> Any:
        return self._items[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, FrozenMapping):
            return self._hash_key == other._hash_key
        return isinstance(other, Mapping) and dict(self._items) == dict(other)

    def __hash__(self) -> int:
        return hash(self._hash_key)

    def __repr__(self) -> str:
        return f"FrozenMapping({self._items!r})"


def _dump(value: Any, exclude_none: bool) -> Any:
    if isinstance(value, Section):
        return value.model_dump(exclude_none=exclude_none)
    if isinstance(value, FrozenMapping):
        return {k: _dump(v, exclude_none) for k, v in value.items()}
    if isinstance(value, tuple):
        return [_dump(v, exclude_none) for v in value]
    return value


def _build(value: Any, section_type: type[Section] = Section, top: bool = False) -> Any:
    if isinstance(value, dict):
        if FIELDS_SET_KEY in value:
            fields_set = frozenset(value[FIELDS_SET_KEY])
            values = {
                k: _domains(v)
                if top and k == "domains"
                else _build(v, _SECTION_TYPES.get(k, Section) if top else Section)
                for k, v in value.items()
                if k != FIELDS_SET_KEY
            }
            return section_type(values, fields_set)
        return FrozenMapping({k: _build(v) for k, v in value.items()})
    if isinstance(value, list):
        return tuple(_build(v) for v in value)
    return value


def _domains(value: dict[str, Any]) -> FrozenMapping:
    """`[domains]` is a mapping by its place in the model, whatever its keys: a domain may be named like the
    marker of a section."""
    return FrozenMapping({name: _build(override) for name, override in value.items()})


def from_tree(tree: Mapping[str, Any]) -> ConfigView:
    """The view over a validated config's JSON data (config.to_tree)."""
    view = _build(dict(tree), ConfigView, top=True)
    if not isinstance(view, ConfigView):
        raise ValueError("not a validated config: its sections are not marked")
    return view


def load(path: Path | str, timeout_s: float = VALIDATE_TIMEOUT_S) -> ConfigView:
    """Validate the file in a child process (the same interpreter and memcoord) and return the view of it.

    Raises as config.load does, with the same messages: ConfigFileError when the file cannot be read,
    ConfigError when it is invalid, and also when the child could not validate it (did not start, timed out,
    crashed): the file is then not known to be good.
    """
    cmd = [*VALIDATE_COMMAND, str(path)]
    try:
        done = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout_s, check=False)
    except subprocess.TimeoutExpired:
        raise ConfigError(f"{path}: not validated: the validating process took more than {timeout_s:g} s") from None
    except OSError as exc:
        raise ConfigError(f"{path}: not validated: cannot start {cmd[0]}: {exc.strerror or exc}") from None
    try:
        result = json.loads(done.stdout)
    except ValueError:
        result = None
    if isinstance(result, dict):
        if done.returncode == os.EX_OK and isinstance(result.get("config"), dict):
            return from_tree(result["config"])
        if done.returncode == os.EX_NOINPUT and "error" in result:
            raise ConfigFileError(str(result["error"]))
        if done.returncode == os.EX_CONFIG and "error" in result:
            raise ConfigError(str(result["error"]))
    stderr = done.stderr.decode("utf-8", "replace").strip().splitlines()
    raise ConfigError(
        f"{path}: not validated: the validating process ({' '.join(cmd)}) exited with {done.returncode}"
        + (f": {stderr[-1]}" if stderr else "")
    )
