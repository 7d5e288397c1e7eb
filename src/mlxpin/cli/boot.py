"""`mlxpin launch` without the command-line framework: the boot path stays fast.

`mlxpin launch ...` is dispatched here by `mlxpin.entry` (argparse, stdlib only); the
typer command in `mlxpin.cli.launch` exists for `--help` and calls the same
`launch_main`. A test keeps their options identical.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlxpin.cli.output import CommandExit, Output, run_guarded, settings_for
from mlxpin.cli.render import human_size, short_commit
from mlxpin.config import Settings
from mlxpin.serve.plan import LaunchPlan, plan_launch


@dataclass(frozen=True)
class LaunchOptions:
    name: str | None = None
    dry_run: bool = False
    verify: bool = False
    max_restarts: int = 5
    restart_delay: float = 1.0
    ready_timeout: float = 900.0
    probe_interval: float = 30.0
    probe_timeout: float = 60.0
    cache_dir: Path | None = None
    manifest: Path | None = None
    lock_dir: Path | None = None
    as_json: bool = False
    quiet: bool = False
    verbose: bool = False


def plan_json(plan: LaunchPlan) -> dict[str, Any]:
    return {
        "name": plan.name,
        "api_label": plan.api_label,
        "aliases": list(plan.aliases),
        "public": {"host": plan.public_host, "port": plan.public_port},
        "private": (
            {"socket": "private, chosen at start"}
            if plan.private_socket
            else {"host": plan.private_host, "port": "chosen at start"}
        ),
        "argv": plan.shown_argv(),
        "env_set": dict(plan.env_set),
        "env_unset": list(plan.env_unset),
        "cwd": str(plan.cwd),
        "upstream_model": plan.upstream_model,
        "api_key_required": plan.api_key_required,
        "gateway": {
            "request_timeout": plan.gateway.request_timeout,
            "max_body": plan.gateway.max_body,
            "max_connections": plan.gateway.max_connections,
            "header_timeout": plan.gateway.header_timeout,
        },
        "runtime": None
        if plan.runtime is None
        else {
            "pinned": plan.runtime.pinned,
            "key": plan.runtime.key,
            "path": str(plan.runtime.path) if plan.runtime.path else None,
            "python": plan.runtime.python,
            "mlx_lm": plan.runtime.mlx_lm,
            "mlx": plan.runtime.mlx,
        },
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
    aliases = f" (aliases: {', '.join(plan.aliases)})" if plan.aliases else ""
    argv = plan.shown_argv()
    private = (
        "unix socket in a private 0700 directory  (mlx_lm.server)"
        if plan.private_socket
        else f"http://{plan.private_host}:<free port>  (mlx_lm.server)"
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
    def run() -> None:
        out = Output(options.as_json, options.quiet)
        settings = settings_for(options.manifest, options.lock_dir, options.cache_dir)
        if _is_distributed(settings, options.name):
            _launch_distributed(options, settings, out)
            return
        plan = plan_launch(settings, options.name, environ=os.environ, verify=options.verify)
        if options.dry_run:
            out.line(plan_text(plan))
            out.result({"ok": True, "plan": plan_json(plan)})
            return
        from mlxpin.serve.supervisor import SupervisorPolicy, run_plan

        policy = SupervisorPolicy(
            ready_timeout_s=options.ready_timeout,
            backoff_initial_s=options.restart_delay,
            restart_budget=options.max_restarts,
        )
        code = run_plan(plan, os.environ, policy)
        if code:
            raise CommandExit(code)

    return run_guarded(
        run,
        as_json=options.as_json,
        quiet=options.quiet,
        verbose=options.verbose,
        logs=not options.dry_run,
    )


def _is_distributed(settings: Settings, name: str | None) -> bool:
    try:  # most manifests never say the word: no second parse on the boot path
        if b"distributed" not in settings.manifest_path.read_bytes():
            return False
    except OSError:
        return False  # plan_launch reports the missing manifest
    from mlxpin.serve.distributed import distributed_spec

    return distributed_spec(settings, name)[1]


def _launch_distributed(options: LaunchOptions, settings: Settings, out: Output) -> None:
    from mlxpin.cli.distributed import distributed_json, distributed_text
    from mlxpin.serve.distributed import plan_distributed

    plan = plan_distributed(settings, options.name, environ=os.environ, verify=options.verify)
    if options.dry_run:
        out.line(distributed_text(plan))
        out.result({"ok": True, "plan": distributed_json(plan)})
        return
    from mlxpin.serve.rankgroup import WatchdogPolicy, run_distributed
    from mlxpin.serve.supervisor import SupervisorPolicy

    policy = SupervisorPolicy(
        ready_timeout_s=options.ready_timeout,
        backoff_initial_s=options.restart_delay,
        restart_budget=options.max_restarts,
    )
    watchdog = WatchdogPolicy(
        probe_interval_s=options.probe_interval, probe_timeout_s=options.probe_timeout
    )
    code = run_distributed(plan, os.environ, policy, watchdog)
    if code:
        raise CommandExit(code)


def _non_negative(kind: type[int] | type[float], minimum: float) -> Any:
    def parse(text: str) -> int | float:
        value = kind(text)
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum:g}")
        return value

    return parse


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mlxpin launch", add_help=False)
    p.add_argument("name", nargs="?")
    p.add_argument("--dry-run", action="store_true")
    p.add_argument("--verify", action="store_true")
    p.add_argument("--max-restarts", type=_non_negative(int, 0), default=5)
    p.add_argument("--restart-delay", type=_non_negative(float, 0.0), default=1.0)
    p.add_argument("--ready-timeout", type=_non_negative(float, 1.0), default=900.0)
    p.add_argument("--probe-interval", type=_non_negative(float, 0.1), default=30.0)
    p.add_argument("--probe-timeout", type=_non_negative(float, 0.1), default=60.0)
    p.add_argument("--cache-dir", type=Path)
    p.add_argument("--manifest", "-m", type=Path)
    p.add_argument("--lock-dir", type=Path)
    p.add_argument("--json", dest="as_json", action="store_true")
    p.add_argument("--quiet", "-q", action="store_true")
    p.add_argument("--verbose", "-v", action="store_true")
    return p


def main(argv: list[str]) -> int:
    """Entry for `mlxpin launch ARGS` (argv without the `launch` word)."""
    namespace = parser().parse_args(argv)  # exits 2 with a usage line on a bad flag
    return launch_main(LaunchOptions(**vars(namespace)))


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
