"""`mlxpin launch`: the boot command."""

from __future__ import annotations

import os
import shlex
from typing import Annotated, Any

import typer

from mlxpin.cli import (
    JsonOpt,
    LockDirOpt,
    ManifestOpt,
    Output,
    QuietOpt,
    VerboseOpt,
    app,
    guarded,
    settings_for,
)
from mlxpin.cli.store import CacheDirOpt
from mlxpin.launch import LaunchPlan, plan_launch
from mlxpin.render import human_size, short_commit


def plan_json(plan: LaunchPlan) -> dict[str, Any]:
    return {
        "name": plan.name,
        "api_label": plan.api_label,
        "aliases": list(plan.aliases),
        "public": {"host": plan.public_host, "port": plan.public_port},
        "private": {"host": plan.private_host, "port": "chosen at start"},
        "argv": [*plan.server_command, *plan.server_args, "--port", "<private port>"],
        "env_set": dict(plan.env_set),
        "env_unset": list(plan.env_unset),
        "cwd": str(plan.cwd),
        "upstream_model": plan.upstream_model,
        "api_key_required": plan.api_key_required,
        "snapshots": [
            {
                "name": s.name,
                "role": s.role,
                "path": str(s.path),
                "commit": s.commit,
                "tree_hash": s.tree_hash,
                "files": s.files,
                "total_size": s.total_size,
            }
            for s in plan.snapshots
        ],
    }


def plan_text(plan: LaunchPlan) -> str:
    lines = [
        f"model      {plan.name}",
        f"label      {plan.api_label}"
        + (f" (aliases: {', '.join(plan.aliases)})" if plan.aliases else ""),
        f"public     http://{plan.public_host}:{plan.public_port}/v1  (gateway)",
        f"private    http://{plan.private_host}:<free port>  (mlx_lm.server)",
        "argv       "
        + shlex.join([*plan.server_command, *plan.server_args, "--port", "<private port>"]),
        "env        " + " ".join(f"{k}={v}" for k, v in plan.env_set),
        "env unset  " + " ".join(plan.env_unset),
        f"cwd        {plan.cwd}  (emptied at start)",
        f"api key    {'required (MLXPIN_API_KEY)' if plan.api_key_required else 'not required'}",
    ]
    for snap in plan.snapshots:
        pin = short_commit(snap.commit) if snap.commit else snap.tree_hash[:19]
        lines.append(
            f"{snap.role:<10} {snap.path}  ({snap.name}, {pin}, {snap.files} files, "
            f"{human_size(snap.total_size)}, verified)"
        )
    return "\n".join(lines)


@app.command("launch")
@guarded
def launch_command(
    name: Annotated[
        str | None,
        typer.Argument(
            help="Model to launch (default: $MLXPIN_MODEL, else the manifest's only model).",
            show_default=False,
        ),
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Print the plan (argv, env, cwd, snapshots) and exit.")
    ] = False,
    verify: Annotated[
        bool, typer.Option("--verify", help="Re-hash every file against the lock before starting.")
    ] = False,
    max_restarts: Annotated[
        int,
        typer.Option(
            "--max-restarts", min=0, help="Crashes tolerated within 10 minutes before exiting 70."
        ),
    ] = 5,
    restart_delay: Annotated[
        float,
        typer.Option(
            "--restart-delay", min=0.0, help="First restart delay in seconds (doubles, max 60)."
        ),
    ] = 1.0,
    ready_timeout: Annotated[
        float,
        typer.Option(
            "--ready-timeout", min=1.0, help="Seconds the server may take to answer its warm-up."
        ),
    ] = 900.0,
    cache_dir: CacheDirOpt = None,
    manifest: ManifestOpt = None,
    lock_dir: LockDirOpt = None,
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
    verbose: VerboseOpt = False,
) -> None:
    """Boot one locked, fetched model offline: mlx_lm.server behind a label-checking gateway.

    Makes no network request. Refuses with exit 78 if the lock is stale or missing, 66 if
    the snapshot is not fetched, 69 if mlx_lm.server is missing or the port is taken.
    """
    out = Output(as_json, quiet)
    settings = settings_for(manifest, lock_dir, cache_dir)
    plan = plan_launch(settings, name, environ=os.environ, verify=verify)
    if dry_run:
        out.line(plan_text(plan))
        out.result({"ok": True, "plan": plan_json(plan)})
        return
    from mlxpin.supervisor import SupervisorPolicy, run_plan

    policy = SupervisorPolicy(
        ready_timeout_s=ready_timeout,
        backoff_initial_s=restart_delay,
        restart_budget=max_restarts,
    )
    code = run_plan(plan, os.environ, policy)
    raise typer.Exit(code)
