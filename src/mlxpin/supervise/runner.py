"""Run a pool behind its gateway: `mlxpin serve` (many models on demand) and `mlxpin
launch` (one resident model), with the operator routes (``GET /mlxpin/status``, what
`mlxpin ps` prints; ``POST /mlxpin/models/{label or name}/load|unload``; all behind the API key),
signals (SIGTERM/SIGINT/SIGHUP stop every server's process group) and a clean exit.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
import socket
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

from mlxpin.config import is_true
from mlxpin.errors import PortInUseError
from mlxpin.gateway.addresses import bind_public, raise_open_files_limit
from mlxpin.gateway.aio import event_loop_factory, import_aiohttp
from mlxpin.gateway.apierrors import ApiError
from mlxpin.gateway.backends import Unavailable
from mlxpin.plan.launch import LaunchPlan
from mlxpin.plan.serve import ServePlan, launch_serve_plan
from mlxpin.store.inuse import InUse
from mlxpin.supervise.pool import Pool
from mlxpin.supervise.restart import RestartPolicy
from mlxpin.supervise.servers import WatchdogPolicy

if TYPE_CHECKING:  # aiohttp is imported once the preloaded servers are spawned
    from aiohttp import web

    from mlxpin.gateway.app import Gateway
    from mlxpin.plan.distributed import DistributedPlan
    from mlxpin.supervise.console import Console

log = logging.getLogger("mlxpin.serve")

STATUS_PATH = "/mlxpin/status"
#: Set (1/true/yes): `GET /metrics` needs no API key, so a scraper can do without it.
METRICS_PUBLIC = "MLXPIN_METRICS_PUBLIC"
MODEL_ACTION_PATH = "/mlxpin/models/{label}/{action}"


def pool_app(
    gateway: Gateway, pool: Pool, *, operator: bool = True, console: Console | None = None
) -> web.Application:
    """The gateway's application plus the pool's status route, (``operator``) its
    load/unload routes and (``console``) metrics, the status page and logs."""
    from aiohttp import web

    from mlxpin.gateway.app import api_error_response, compact_dumps
    from mlxpin.supervise.console import OPERATOR, status_json

    app = gateway.app()
    app[OPERATOR] = operator

    async def status(request: web.Request) -> web.Response:
        if console is not None and request.query.get("detail") == "1":
            return web.json_response(text=status_json(console, operator))
        return web.json_response(dict(pool.status()), dumps=compact_dumps)

    async def action(request: web.Request) -> web.StreamResponse:
        label = request.match_info["label"]  # or the model's manifest name
        route = gateway.table.by_label.get(label)
        slot = pool.by_label[route.api_label] if route is not None else pool.slots.get(label)
        if slot is None:
            return api_error_response(gateway.table.not_found(label))
        what = request.match_info["action"]
        if what == "load":
            try:
                await pool.load(slot)
            except Unavailable as exc:
                return api_error_response(exc.error)
        elif what == "unload":
            await pool.unload(slot)
        else:
            return api_error_response(
                ApiError(404, f"Unknown action {what!r}: use load or unload", "not_found")
            )
        return web.json_response({"ok": True, "model": slot.status()}, dumps=compact_dumps)

    app.router.add_get(STATUS_PATH, status)
    if console is not None:
        console.routes(app)
    if operator:
        app.router.add_post(MODEL_ACTION_PATH, action)
    return app


async def run_pool(
    plan: ServePlan, environ: Mapping[str, str], policy: RestartPolicy, watchdog: WatchdogPolicy
) -> int:
    """Bind the public port (taken: exit 69 before anything starts), start the pool and
    the gateway, run until a signal -- or until a model whose policy says so has spent
    its crash budget (raises ServerCrashedError, exit 70)."""
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        loop.add_signal_handler(signum, stopping.set)
    raise_open_files_limit()  # before the gateway sizes its connection cap from it
    launched = plan.launched
    try:
        listeners = bind_public(plan.host, plan.port)
    except OSError as exc:
        who = None if launched is None else launched.name
        raise PortInUseError(who, plan.host, plan.port, exc.strerror or str(exc)) from None
    pool: Pool | None = None
    runner = None
    waiting: socket.socket | None = None  # a client accepted early, until aiohttp has it
    try:
        # Only once the public port is ours: a server left behind by a run that died is
        # stopped (in begin), while a second run of the same endpoint failed just above.
        pool = Pool(plan, environ, policy, watchdog=watchdog, on_fatal=stopping.set)
        await pool.begin()  # preloaded servers are spawned now, while the gateway imports
        # So is the model of a request already waiting on the port (serve only).
        waiting, release = (
            (None, None) if launched is not None else await _head_start(listeners, pool)
        )
        import_aiohttp()
        from mlxpin.gateway.app import Gateway, serve
        from mlxpin.gateway.listener import ListenerLimits
        from mlxpin.supervise.console import Console

        gateway = Gateway(pool, api_key=plan.api_key)
        public = is_true(environ.get(METRICS_PUBLIC))
        console = Console(gateway, pool, plan.api_key, metrics_public=public)
        limits = ListenerLimits(plan.max_connections, plan.header_timeout)
        app = pool_app(gateway, pool, operator=launched is None, console=console)
        runner = await serve(app, plan.host, plan.port, limits, sockets=listeners)
        if waiting is not None:
            await _hand_over(runner, waiting)
            waiting = None
        if release is not None:
            release()
        _log_listening(plan)
        # Everything imported and built so far lives as long as the process: a full
        # collection scanned it all (~40,000 objects, ~20 ms on the gateway's one thread,
        # a stall for every request in flight). Frozen, it is never scanned again.
        gc.freeze()
        await stopping.wait()
        log.info("stopping")
    finally:
        if pool is not None:
            await pool.close()
        if runner is not None:
            await runner.cleanup()
        for sock in listeners:
            sock.close()
        if waiting is not None:
            waiting.close()
    if pool.fatal is not None:
        raise pool.fatal
    return 0


async def _head_start(
    listeners: list[socket.socket], pool: Pool
) -> tuple[socket.socket | None, Callable[[], None] | None]:
    """A connection already waiting on the public port, and the release of the start of
    the model its request names (see :mod:`mlxpin.gateway.waiting`)."""
    from mlxpin.gateway.routing import RoutingTable
    from mlxpin.gateway.waiting import accept_waiting, peek, requested_label

    conn = accept_waiting(listeners)
    if conn is None:
        return None, None
    label = requested_label(peek(conn), RoutingTable(pool.routes()), pool.plan.api_key)
    return conn, None if label is None else await pool.head_start(label)


async def _hand_over(runner: web.AppRunner, conn: socket.socket) -> None:
    """Give the serving gateway a connection accepted before, as if it had accepted it."""
    assert runner.server is not None
    await asyncio.get_running_loop().connect_accepted_socket(runner.server, conn)


def _log_listening(plan: ServePlan) -> None:
    if plan.launched is not None:
        label = plan.launched.launch.api_label
        log.info("gateway for %r listening on %s:%s", label, plan.host, plan.port)
        return
    log.info(
        "serving %d models on http://%s:%d/v1 (budget %d bytes, max_loaded %s)",
        len(plan.models),
        plan.host,
        plan.port,
        plan.budget,
        plan.max_loaded if plan.max_loaded is not None else "unlimited",
    )


def run_pool_plan(
    plan: ServePlan,
    environ: Mapping[str, str],
    policy: RestartPolicy,
    watchdog: tuple[float, ...] = (),
) -> int:
    """Run ``plan`` on a fresh event loop. A distributed model runs as a rank group,
    probed as ``watchdog`` says: (interval, timeout) in seconds, or () for the defaults."""
    checks = [m.launch.start_check for m in plan.models if m.launch.start_check is not None]
    with contextlib.ExitStack() as stack:
        if checks:  # gc keeps what the servers booted with while they may start
            in_use = stack.enter_context(InUse(checks[0].layout))
            for lock in (lock for check in checks for lock in check.locks):
                in_use.add(lock)
        with asyncio.Runner(loop_factory=event_loop_factory(environ)) as runner:
            return runner.run(run_pool(plan, environ, policy, WatchdogPolicy(*watchdog)))


def run_plan(
    plan: LaunchPlan | DistributedPlan,
    environ: Mapping[str, str],
    policy: RestartPolicy,
    watchdog: tuple[float, ...] = (),
) -> int:
    """`mlxpin launch`: one model, resident, behind its own gateway (70 past its budget)."""
    return run_pool_plan(launch_serve_plan(plan), environ, policy, watchdog)
