"""The `mlxpin` executable: the argparse command line (`mlxpin.cli.app`), stdlib only."""

from __future__ import annotations

import sys


def main() -> None:
    argv = sys.argv[1:]
    if argv[:1] == ["_host"]:  # run over ssh by another host (see mlxpin.cli.hostagent)
        from mlxpin.cli.hostagent import main as host_agent

        raise SystemExit(host_agent(argv[1:]))
    from mlxpin.cli.app import main as cli

    raise SystemExit(cli(argv))
