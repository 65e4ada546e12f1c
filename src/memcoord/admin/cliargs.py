"""Argument types, options and defaults shared by the command modules (cli.py, watch.py, tryout.py, makeroom.py),
so none imports another. Nothing here loads the config models at import: `memcoord status` starts without pydantic."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any

# The config file every command reads unless told otherwise (the unit's `memcoord run` too).
DEFAULT_CONFIG_PATH = Path("/etc/memcoord.toml")


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be greater than 0: {text!r}")
    return value


def positive_mib(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number of MiB: {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be greater than 0 MiB: {text!r}")
    return value


def config_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        type=Path,
        default=None,
        metavar="PATH",
        help="config file (default: /etc/memcoord.toml if present, else the built-in defaults)",
    )


def config_or_defaults(load: Callable[[Path], Any], path: Path | None) -> tuple[Any, str]:
    """The config: --config, else /etc/memcoord.toml if present, else the built-in defaults (and its label)."""
    from memcoord.core import config as config_mod

    if path is None and DEFAULT_CONFIG_PATH.exists():
        path = DEFAULT_CONFIG_PATH
    if path is None:
        return config_mod.Config(), "built-in defaults"
    return load(path), str(path)
