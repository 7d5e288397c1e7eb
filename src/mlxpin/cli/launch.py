"""`mlxpin launch`: the boot command (and the options it shares with `serve`)."""

from __future__ import annotations

from dataclasses import asdict
from typing import Annotated, Any

import typer

from mlxpin.cli.app import Common, Group, verb
from mlxpin.cli.boot import LaunchOptions, launch_main

DryRunOpt = Annotated[
    bool, typer.Option("--dry-run", help="Print the plan (argv, snapshots, ...) offline and exit.")
]
VerifyOpt = Annotated[
    bool, typer.Option("--verify", help="Re-hash every file against the lock before starting.")
]
MaxRestartsOpt = Annotated[
    int,
    typer.Option(
        "--max-restarts",
        min=0,
        help="Crashes of a model within 10 minutes before giving up on it "
        "(launch exits 70; serve marks it failed).",
    ),
]
RestartDelayOpt = Annotated[
    float,
    typer.Option(
        "--restart-delay", min=0.0, help="First restart delay in seconds (doubles, max 60)."
    ),
]
ReadyTimeoutOpt = Annotated[
    float,
    typer.Option(
        "--ready-timeout", min=1.0, help="Seconds a server may take to answer its warm-up."
    ),
]
# The options of `RunOptions`, which `launch` and `serve` share, by name.
RUN = Group(
    {
        "dry_run": (DryRunOpt, False),
        "verify": (VerifyOpt, False),
        "max_restarts": (MaxRestartsOpt, 5),
        "restart_delay": (RestartDelayOpt, 1.0),
        "ready_timeout": (ReadyTimeoutOpt, 900.0),
    },
    dict,
)


@verb("launch", guard=False, groups={"run": RUN})
def launch_command(
    name: Annotated[
        str | None,
        typer.Argument(
            help="Model to launch (default: $MLXPIN_MODEL, else the manifest's only model).",
            show_default=False,
        ),
    ] = None,
    *,
    run: dict[str, Any],
    probe_interval: Annotated[
        float,
        typer.Option(
            "--probe-interval",
            min=0.1,
            help="Distributed: seconds between progress probes when no request completed.",
        ),
    ] = 30.0,
    probe_timeout: Annotated[
        float,
        typer.Option(
            "--probe-timeout",
            min=0.1,
            help="Distributed: a 1-token probe slower than this restarts the whole group.",
        ),
    ] = 60.0,
    common: Common,
) -> None:
    """Boot one locked, fetched model offline: mlx_lm.server behind a label-checking gateway.

    Makes no network request. Refuses with exit 78 if the lock is stale or missing, 66 if
    the snapshot is not fetched, 69 if mlx_lm.server is missing or the port is taken.
    """
    options = LaunchOptions(
        name=name,
        probe_interval=probe_interval,
        probe_timeout=probe_timeout,
        **run,
        **asdict(common),
    )
    raise typer.Exit(launch_main(options))
