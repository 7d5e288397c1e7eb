"""`mlxpin serve` (many models behind one endpoint) and `mlxpin ps` (what it is doing)."""

from __future__ import annotations

from dataclasses import asdict
from typing import Annotated, Any

import typer

from mlxpin.cli.app import Common, verb
from mlxpin.cli.launch import RUN
from mlxpin.cli.serveboot import ServeOptions, ps_table, serve_main

HostOpt = Annotated[
    str | None,
    typer.Option(
        "--host", help="Listen address (default: [serve] host, else 127.0.0.1).", show_default=False
    ),
]
PortOpt = Annotated[
    int | None,
    typer.Option(
        "--port",
        min=1,
        max=65535,
        help="Port (default: [serve] port, else 8080).",
        show_default=False,
    ),
]


@verb("serve", guard=False, groups={"run": RUN})
def serve_command(
    names: Annotated[
        list[str] | None,
        typer.Argument(
            help="Models to serve (default: every model of the manifest).", show_default=False
        ),
    ] = None,
    *,
    run: dict[str, Any],
    host: HostOpt = None,
    port: PortOpt = None,
    common: Common,
) -> None:
    """Serve many pinned models behind one endpoint, each started on demand.

    Within [serve] memory_budget and max_loaded, least recently used idle models are
    stopped to make room; idle models stop after idle_ttl. Makes no network request.
    Refuses before starting anything (every model's problem at once): 78 stale lock or a
    model larger than the budget, 66 not fetched, 69 port taken or mlx_lm.server missing.
    """
    options = ServeOptions(names=tuple(names or ()), host=host, port=port, **run, **asdict(common))
    raise typer.Exit(serve_main(options))


@verb("ps", uses=("manifest",))
def ps_command(
    host: HostOpt = None,
    port: PortOpt = None,
    *,
    common: Common,
) -> None:
    """Show what a running `mlxpin serve` is doing: each model's state, pid, cost, use.

    Asks the endpoint of the manifest's [serve] table (or --host/--port) on its
    /mlxpin/status route, with MLXPIN_API_KEY when it is set.
    """
    import os

    from mlxpin.commands.serve import status as endpoint_status
    from mlxpin.plan.launch import read_api_key
    from mlxpin.project.manifest import load_manifest

    out = common.output()
    chosen_host, chosen_port = host, port
    if chosen_host is None or chosen_port is None:
        table = load_manifest(common.settings().manifest_path).serve
        chosen_host = chosen_host or table.host
        chosen_port = chosen_port or table.port
    status = endpoint_status(chosen_host, chosen_port, read_api_key(os.environ))
    out.line(ps_table(status))
    out.result(status)
