"""Run the socialfeat CLI with extra registry entries (test-only registration, e.g. entries served by
tests/weights_server.py): ``python registered.py ENTRIES_JSON [--wait-for-go] ARGS...``.

ENTRIES_JSON is a list of PretrainedCfg keyword dicts; an entry may replace a released one (the
production registry is untouched outside this process). ``--wait-for-go`` prints 'ready' once
imports are done and waits for a line on stdin, so that several processes can start at once.
"""

from __future__ import annotations

import json
import sys

from socialfeat.cli import main
from socialfeat.models.registry import PretrainedCfg, register_pretrained

if __name__ == "__main__":
    for entry in json.loads(sys.argv[1]):
        entry["label_names"] = tuple(entry.get("label_names", ()))
        register_pretrained(PretrainedCfg(**entry), replace=True)
    args = sys.argv[2:]
    if args[:1] == ["--wait-for-go"]:
        print("ready", flush=True)
        sys.stdin.readline()
        args = args[1:]
    main(args, prog_name="socialfeat")
