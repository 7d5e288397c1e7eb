"""`mlxpin serve` (many models behind one endpoint; the boot path, like `launch`) and `ps`."""

from __future__ import annotations

import os
import shlex
from argparse import Namespace
from dataclasses import dataclass
from typing import Any

from mlxpin.cli.boot import RunOptions, options_from
from mlxpin.cli.output import Common
from mlxpin.cli.render import share_text
from mlxpin.errors import human_size
from mlxpin.plan.launch import PRIVATE_PORT_SHOWN
from mlxpin.plan.serve import SERVER_OVERHEAD_BYTES, ServePlan


@dataclass(frozen=True)
class ServeOptions(RunOptions):
    names: tuple[str, ...] = ()
    host: str | None = None
    port: int | None = None


def serve_plan_text(plan: ServePlan) -> str:
    limit = plan.max_loaded if plan.max_loaded is not None else "unlimited"
    lines = [
        f"endpoint   http://{plan.host}:{plan.port}/v1  ({len(plan.models)} models)",
        f"budget     {human_size(plan.budget or 0)} ({plan.budget_source}); max_loaded {limit}; "
        f"start_timeout {plan.start_timeout:g} s",
        f"overhead   {human_size(SERVER_OVERHEAD_BYTES)} per server, added to each cost",
    ]
    for m in plan.models:
        ttl = f"idle_ttl {m.idle_ttl:g} s" if m.idle_ttl else "idle_ttl never"
        extra = ", preload" if m.preload else ""
        aliases = f" (aliases: {', '.join(m.launch.aliases)})" if m.launch.aliases else ""
        lines.append("")
        lines.append(
            f"{m.name}: {m.launch.api_label}{aliases}  cost {human_size(m.cost)} "
            f"(weights {human_size(m.weights)}), {ttl}{extra}"
        )
        if m.group is None:
            lines.append("  argv     " + shlex.join(m.launch.shown_argv()))
            continue
        hosts = ", ".join(h.host for h in m.group.hosts)
        mode = "pipeline" if m.group.pipeline else "tensor"
        lines.append(f"  ranks    {len(m.group.ranks)} ({mode}, {m.group.backend}) on {hosts}")
        for share in m.group.shares:
            lines.append(f"  host     {share.host} holds {share_text(share)}")
        lines.append("  argv     " + shlex.join(m.group.launch_argv(PRIVATE_PORT_SHOWN)))
    return "\n".join(lines)


def serve_main(options: ServeOptions) -> int:
    from mlxpin.commands import serve

    def run() -> int:
        plan = serve.plan(
            options.settings(),
            options.names,
            os.environ,
            host=options.host,
            port=options.port,
            verify=options.verify,
        )
        if options.dry_run:
            out = options.output()
            out.line(serve_plan_text(plan))
            out.result({"ok": True, "plan": plan.to_json()})
            return 0
        return serve.run(plan, os.environ, options.policy())

    return options.guarded(run)


def serve_command(args: Namespace, common: Common) -> int:
    args.names = tuple(args.names)
    return serve_main(options_from(args, ServeOptions))


def ps_command(args: Namespace, common: Common) -> None:
    from mlxpin.commands.serve import status as endpoint_status
    from mlxpin.plan.launch import read_api_key
    from mlxpin.project.manifest import load_manifest

    host, port = args.host, args.port
    if host is None or port is None:
        table = load_manifest(common.settings().manifest_path).serve
        host, port = host or table.host, port or table.port
    status = endpoint_status(host, port, read_api_key(os.environ))
    out = common.output()
    out.line(ps_table(status))
    out.result(status)


def logs_command(args: Namespace, common: Common) -> None:
    import contextlib
    import sys

    from mlxpin.commands.logs import show_log

    def write(data: bytes) -> None:
        sys.stdout.buffer.write(data)
        sys.stdout.flush()

    with contextlib.suppress(KeyboardInterrupt):
        show_log(common.settings(), args.name, args.lines, write, follow=args.follow)


def ps_table(status: dict[str, Any]) -> str:
    import time

    budget = status.get("budget", {})
    rows = [("NAME", "LABEL", "STATE", "PID", "COST", "IN FLIGHT", "RESTARTS", "LAST USED")]
    now = float(status.get("time") or time.time())
    for m in status.get("models", []):
        last = m.get("last_used")
        used = "never" if last is None else f"{max(0.0, now - float(last)):.0f} s ago"
        rows.append(
            (
                str(m["name"]),
                str(m["api_label"]),
                str(m["state"]) + (f" ({m['reason']})" if m.get("reason") else ""),
                "-" if m.get("pid") is None else str(m["pid"]),
                human_size(int(m["cost"])),
                str(m["in_flight"]),
                str(m["restarts"]),
                used,
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    lines = [
        "  ".join(cell.ljust(w) for cell, w in zip(r[:-1], widths, strict=False)) + "  " + r[-1]
        for r in rows
    ]
    limit = status.get("max_loaded")
    held, total = int(budget.get("used") or 0), budget.get("total")
    of = "no budget (launch)" if total is None else human_size(int(total))
    lines.append(
        f"budget {human_size(held)} of {of}"
        f"; loaded {status.get('loaded')} of {limit if limit is not None else 'unlimited'}"
    )
    return "\n".join(lines)
