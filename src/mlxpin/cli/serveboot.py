"""`mlxpin serve` and `mlxpin ps` without the command-line framework (boot path).

`mlxpin serve ...` is dispatched here by `mlxpin.entry`, like `launch`; the typer
commands in `mlxpin.cli.serve` exist for `--help` and call the same functions.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlxpin.cli.boot import _non_negative
from mlxpin.cli.output import CommandExit, Output, run_guarded, settings_for
from mlxpin.cli.render import human_size
from mlxpin.errors import ConfigError, UnavailableError
from mlxpin.serve.serveplan import SERVER_OVERHEAD_BYTES, ServePlan, plan_serve


@dataclass(frozen=True)
class ServeOptions:
    names: tuple[str, ...] = ()
    dry_run: bool = False
    verify: bool = False
    host: str | None = None
    port: int | None = None
    max_restarts: int = 5
    restart_delay: float = 1.0
    ready_timeout: float = 900.0
    cache_dir: Path | None = None
    manifest: Path | None = None
    lock_dir: Path | None = None
    as_json: bool = False
    quiet: bool = False
    verbose: bool = False


def serve_plan_json(plan: ServePlan) -> dict[str, Any]:
    return {
        "endpoint": {"host": plan.host, "port": plan.port},
        "budget": {
            "total": plan.budget,
            "source": plan.budget_source,
            "physical_memory": plan.physical_memory or None,
            "per_server_overhead": SERVER_OVERHEAD_BYTES,
        },
        "max_loaded": plan.max_loaded,
        "start_timeout": plan.start_timeout,
        "api_key_required": plan.api_key_required,
        "models": [
            {
                "name": m.name,
                "api_label": m.launch.api_label,
                "aliases": list(m.launch.aliases),
                "argv": m.launch.shown_argv(),
                "private": "unix socket" if m.launch.private_socket else "loopback port",
                "upstream_model": m.launch.upstream_model,
                "weights": m.weights,
                "cost": m.cost,
                "idle_ttl": m.idle_ttl,
                "preload": m.preload,
                "snapshots": [
                    {
                        "name": s.name,
                        "role": s.role,
                        "path": str(s.path),
                        "commit": s.commit,
                        "total_size": s.total_size,
                    }
                    for s in m.launch.snapshots
                ],
            }
            for m in plan.models
        ],
    }


def serve_plan_text(plan: ServePlan) -> str:
    limit = plan.max_loaded if plan.max_loaded is not None else "unlimited"
    lines = [
        f"endpoint   http://{plan.host}:{plan.port}/v1  ({len(plan.models)} models)",
        f"budget     {human_size(plan.budget)} ({plan.budget_source}); max_loaded {limit}; "
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
        lines.append("  argv     " + shlex.join(m.launch.shown_argv()))
    return "\n".join(lines)


def serve_main(options: ServeOptions) -> int:
    def run() -> None:
        out = Output(options.as_json, options.quiet)
        settings = settings_for(options.manifest, options.lock_dir, options.cache_dir)
        plan = plan_serve(
            settings,
            options.names,
            environ=os.environ,
            host=options.host,
            port=options.port,
            verify=options.verify,
        )
        if options.dry_run:
            out.line(serve_plan_text(plan))
            out.result({"ok": True, "plan": serve_plan_json(plan)})
            return
        from mlxpin.serve.pool import PoolPolicy
        from mlxpin.serve.poolserver import run_serve

        policy = PoolPolicy(
            ready_timeout_s=options.ready_timeout,
            backoff_initial_s=options.restart_delay,
            restart_budget=options.max_restarts,
        )
        code = run_serve(plan, os.environ, policy)
        if code:
            raise CommandExit(code)

    return run_guarded(
        run,
        as_json=options.as_json,
        quiet=options.quiet,
        verbose=options.verbose,
        logs=not options.dry_run,
    )


def _port(text: str) -> int:
    value = int(text)
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError("must be from 1 to 65535")
    return value


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mlxpin serve", add_help=False)
    p.add_argument("names", nargs="*")
    p.add_argument("--dry-run", action="store_true")
    p.add_argument("--verify", action="store_true")
    p.add_argument("--host")
    p.add_argument("--port", type=_port)
    p.add_argument("--max-restarts", type=_non_negative(int, 0), default=5)
    p.add_argument("--restart-delay", type=_non_negative(float, 0.0), default=1.0)
    p.add_argument("--ready-timeout", type=_non_negative(float, 1.0), default=900.0)
    p.add_argument("--cache-dir", type=Path)
    p.add_argument("--manifest", "-m", type=Path)
    p.add_argument("--lock-dir", type=Path)
    p.add_argument("--json", dest="as_json", action="store_true")
    p.add_argument("--quiet", "-q", action="store_true")
    p.add_argument("--verbose", "-v", action="store_true")
    return p


def main(argv: list[str]) -> int:
    """Entry for `mlxpin serve ARGS` (argv without the `serve` word)."""
    namespace = vars(parser().parse_args(argv))
    namespace["names"] = tuple(namespace["names"])
    return serve_main(ServeOptions(**namespace))


# --------------------------------------------------------------------------- ps


def fetch_status(host: str, port: int, api_key: str | None, timeout: float = 5.0) -> Any:
    shown = f"[{host}]" if ":" in host else host
    if host in ("0.0.0.0", "::"):  # noqa: S104 (where a listener on every address answers)
        shown = "127.0.0.1"
    url = f"http://{shown}:{port}/mlxpin/status"
    request = urllib.request.Request(url)
    if api_key:
        request.add_header("Authorization", f"Bearer {api_key}")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
            return json.loads(response.read())
    except urllib.error.HTTPError as exc:
        if exc.code == 401:
            raise ConfigError(
                f"{url}: the endpoint wants an API key",
                "set MLXPIN_API_KEY (or MLXPIN_API_KEY_FILE) to the key it was started with",
            ) from None
        raise UnavailableError(
            f"{url}: answered {exc.code}; is this an `mlxpin serve` endpoint?",
            "check --host/--port, or the [serve] table of the manifest",
        ) from None
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        raise UnavailableError(
            f"nothing answers at {url} ({reason})",
            "start it with `mlxpin serve`, or point --host/--port at it",
        ) from None


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
    held, total = int(budget.get("used", 0)), int(budget.get("total", 0))
    lines.append(
        f"budget {human_size(held)} of {human_size(total)}"
        f"; loaded {status.get('loaded')} of {limit if limit is not None else 'unlimited'}"
    )
    return "\n".join(lines)
