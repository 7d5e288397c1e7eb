"""`mlxpin _host check|receive`: what mlxpin answers on another host of a distributed model.

Run over ssh by the host that launches or prepares the model, with its lock (and for
`receive`, the files) on stdin; `check --file=PATH ...` checks only a pipeline host's
share. Prints one JSON line (`HostCheck`) on stdout, always, so the caller can name this
host's problem; the exit code is that answer's. Lean (its own argparse parser)
because the launch preflight waits for it.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from mlxpin.cli.output import settings_for
from mlxpin.errors import MlxpinError


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="mlxpin _host")
    parser.add_argument("action", choices=("check", "receive"))
    parser.add_argument("--verify", action="store_true")
    parser.add_argument("--cache-dir", type=Path)
    parser.add_argument(
        "--file",
        action="append",
        dest="files",
        metavar="PATH",
        help="check: only these files of the pin must be here (a pipeline host's share)",
    )
    args = parser.parse_args(argv)
    from mlxpin.commands.hosts import host_check, host_receive
    from mlxpin.plan.distributed import HostCheck

    try:
        settings = settings_for(None, None, args.cache_dir)
        if args.action == "check":
            answer = host_check(settings, sys.stdin.buffer.read(), args.verify, args.files)
        else:
            answer = host_receive(settings, sys.stdin.buffer)
    except MlxpinError as error:
        answer = HostCheck("", False, None, error.message, int(error.exit_code))
    print(json.dumps(answer.to_json(), sort_keys=True), flush=True)
    return answer.exit_code
