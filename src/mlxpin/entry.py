"""The `mlxpin` executable: boot-time `launch` goes straight to the lean parser."""

from __future__ import annotations

import sys


def main() -> None:
    argv = sys.argv[1:]
    if argv[:1] == ["launch"] and not {"-h", "--help"} & set(argv):
        from mlxpin.cli.boot import main as launch

        raise SystemExit(launch(argv[1:]))
    if argv[:1] == ["serve"] and not {"-h", "--help"} & set(argv):
        from mlxpin.cli.serveboot import main as serve

        raise SystemExit(serve(argv[1:]))
    if argv[:1] == ["_host"]:  # run over ssh by another host (see mlxpin.cli.hostagent)
        from mlxpin.cli.hostagent import main as host_agent

        raise SystemExit(host_agent(argv[1:]))
    from mlxpin.cli.app import main as cli

    cli()
