"""`python -m memcoord.daemon.validate PATH`: validate a config file with the pydantic models and print the result as
one JSON object on stdout, for the daemon (config_view.load), which does not import pydantic itself.

    {"config": {...}}   exit 0: the validated config (config.to_tree)
    {"error": "..."}    exit 78 (EX_CONFIG): what is wrong, the same text `check-config` prints
    {"error": "..."}    exit 66 (EX_NOINPUT): the file cannot be read

`python -m memcoord.daemon.validate --metadata`: check the keys of a domain's memcoord metadata element, given as one
JSON object of texts on stdin (`{"min_mib": "1024"}`), for the daemon's ChildMetadataValidator
(domain_settings.py):

    {"values": {...}, "problems": [...]}   exit 0: domain_settings.check_metadata's result
    exit 65 (EX_DATAERR): stdin is not such an object
"""

from __future__ import annotations

import json
import os
import sys

from memcoord.core import config as config_mod


def check_metadata(text: str) -> int:
    from memcoord.hypervisor.domain_settings import check_metadata

    try:
        data = json.loads(text)
    except ValueError:
        data = None
    if not isinstance(data, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in data.items()):
        print("expected one JSON object of texts on stdin", file=sys.stderr)
        return os.EX_DATAERR
    checked = check_metadata(data)
    sys.stdout.write(json.dumps({"values": dict(checked.values), "problems": list(checked.problems)}))
    return os.EX_OK


def main(argv: list[str]) -> int:
    if argv == ["--metadata"]:
        return check_metadata(sys.stdin.read())
    if len(argv) != 1:
        print("usage: python -m memcoord.daemon.validate PATH | --metadata", file=sys.stderr)
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
