"""Argument types and defaults shared by the command modules (cli.py, watch.py, tryout.py), so neither imports the
other. Nothing here loads the config models: `memcoord status` starts without pydantic."""

from __future__ import annotations

import argparse
from pathlib import Path

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
