"""`python -m memcoord.validate PATH`: validate a config file with the pydantic models and print the result as
one JSON object on stdout, for the daemon (config_view.load), which does not import pydantic itself.

    {"config": {...}}   exit 0: the validated config (config.to_tree)
    {"error": "..."}    exit 78 (EX_CONFIG): what is wrong, the same text `check-config` prints
    {"error": "..."}    exit 66 (EX_NOINPUT): the file cannot be read
"""

from __future__ import annotations

import json
import os
import sys

from . import config as config_mod


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m memcoord.validate PATH", file=sys.stderr)
        return os.EX_USAGE
    try:
        config = config_mod.load(argv[0])
    except config_mod.ConfigFileError as exc:
        result, code = {"error": str(exc)}, os.EX_NOINPUT
    except config_mod.ConfigError as exc:
        result, code = {"error": str(exc)}, os.EX_CONFIG
    else:
        result, code = {"config": config_mod.to_tree(config)}, os.EX_OK
    # ASCII JSON: a message may quote a value with characters that do not encode (a lone surrogate).
    sys.stdout.write(json.dumps(result))
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
