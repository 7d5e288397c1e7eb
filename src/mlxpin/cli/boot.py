"""`mlxpin launch` (and the options it shares with `serve`): the boot path, kept light."""

from __future__ import annotations

import json
import os
import shlex
from argparse import Namespace
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any, TypeVar

from mlxpin.cli.output import CommandExit, Common, Output, run_guarded
from mlxpin.cli.render import share_text, short_commit
from mlxpin.errors import human_size
from mlxpin.plan.launch import PRIVATE_PORT_SHOWN, LaunchPlan

if TYPE_CHECKING:  # a --dry-run builds no policy; a plain model needs no distributed code
    from mlxpin.plan.distributed import DistributedPlan
    from mlxpin.supervise.restart import RestartPolicy


@dataclass(frozen=True)
class RunOptions(Common):
    """What `launch` and `serve` share: planning, restarts, where things are, output."""

    dry_run: bool = False
    verify: bool = False
    max_restarts: int = 5
    restart_delay: float = 1.0
    ready_timeout: float = 900.0

    def policy(self) -> RestartPolicy:
        from mlxpin.supervise.restart import RestartPolicy

        return RestartPolicy(
            ready_timeout_s=self.ready_timeout,
            backoff_initial_s=self.restart_delay,
            restart_budget=self.max_restarts,
        )

    def guarded(self, run: Callable[[], int]) -> int:
        """Run ``run`` (its code is the exit code) with errors rendered, not raised."""

        def body() -> None:
            code = run()
            if code:
                raise CommandExit(code)

        return run_guarded(
            body,
            as_json=self.as_json,
            quiet=self.quiet,
            verbose=self.verbose,
            logs=not self.dry_run,
        )


@dataclass(frozen=True)
class LaunchOptions(RunOptions):
    name: str | None = None
    probe_interval: float = 30.0
    probe_timeout: float = 60.0


def plan_text(plan: LaunchPlan) -> str:
    aliases = f" (aliases: {', '.join(plan.aliases)})" if plan.aliases else ""
    argv = plan.shown_argv()
    server = plan.engine.replace("-", "_") + ".server"
    private = (
        f"unix socket in a private 0700 directory  ({server})"
        if plan.private_socket
        else f"http://{plan.private_host}:<free port>  ({server})"
    )
    key = "required (bearer key from the environment)" if plan.api_key_required else "not required"
    lines = [
        f"model      {plan.name}",
        f"label      {plan.api_label}{aliases}",
        f"public     http://{plan.public_host}:{plan.public_port}/v1  (gateway)",
        f"private    {private}",
        "argv       " + shlex.join(argv),
        "env        " + " ".join(f"{k}={v}" for k, v in plan.env_set),
        "env unset  " + " ".join(plan.env_unset),
        f"cwd        {plan.cwd}  (emptied at start)",
        f"api key    {key}",
        f"limits     request_timeout {plan.gateway.request_timeout:g} s, "
        f"max_body {human_size(plan.gateway.max_body)}, "
        f"max_connections {plan.gateway.max_connections}, "
        f"header_timeout {plan.gateway.header_timeout:g} s",
    ]
    if plan.runtime is not None:
        lines.append(f"runtime    {plan.runtime.describe()}")
    for snap in plan.snapshots:
        pin = short_commit(snap.commit) if snap.commit else snap.tree_hash[:19]
        lines.append(
            f"{snap.role:<10} {snap.path}  ({snap.name}, {pin}, {snap.files} files, "
            f"{human_size(snap.total_size)}, verified)"
        )
    return "\n".join(lines)


def launch_main(options: LaunchOptions) -> int:
    from mlxpin.commands import launch

    def run() -> int:
        chosen = launch.plan(options.settings(), options.name, os.environ, verify=options.verify)
        if options.dry_run:
            _show(chosen, options.output())
            return 0
        from mlxpin.supervise.runner import run_plan

        watchdog = (options.probe_interval, options.probe_timeout)
        return run_plan(chosen, os.environ, options.policy(), watchdog)

    return options.guarded(run)


def _show(chosen: LaunchPlan | DistributedPlan, out: Output) -> None:
    out.line(plan_text(chosen) if isinstance(chosen, LaunchPlan) else distributed_text(chosen))
    out.result({"ok": True, "plan": chosen.to_json()})


def distributed_text(plan: DistributedPlan) -> str:
    mode = "pipeline-parallel" if plan.pipeline else "tensor-parallel"
    lines = [
        plan_text(plan.server),
        f"ranks      {len(plan.ranks)} over {plan.backend}, {mode}; rank 0 serves HTTP here",
        "launcher   " + shlex.join(plan.launch_argv(PRIVATE_PORT_SHOWN)),
        f"hostfile   {plan.hostfile_path}  (written at start)",
    ]
    lines += ["  " + line for line in json.dumps(plan.hostfile(), indent=2).splitlines()]
    for rank in plan.ranks:
        where = "this host" if rank.local else "over ssh"
        lines.append(f"rank {rank.rank:<5} {rank.ssh} ({where}, {', '.join(rank.ips) or 'no ip'})")
        lines.append(f"  snapshot {plan.path_of(rank.rank)}  (verified there)")
        lines.append("  argv     " + shlex.join(plan.rank_argv(rank.rank, PRIVATE_PORT_SHOWN)))
        if plan.rank_files is not None:
            lines.append("  reads    " + ", ".join(plan.rank_files[rank.rank]))
    for check, share in zip(plan.hosts, plan.shares_in_host_order(), strict=True):
        if share is not None:
            lines.append(f"host       {check.host} holds {share_text(share)}")
    return "\n".join(lines)


Options = TypeVar("Options", bound=Common)


def options_from(args: Namespace, kind: type[Options]) -> Options:
    """The parsed arguments as ``kind`` (every field of it is an argument)."""
    given: dict[str, Any] = {f.name: getattr(args, f.name, f.default) for f in fields(kind)}
    return kind(**given)


def launch_command(args: Namespace, common: Common) -> int:
    return launch_main(options_from(args, LaunchOptions))
