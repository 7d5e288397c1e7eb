"""Run a pool behind its gateway: `mlxpin serve` (many models on demand) and `mlxpin
launch` (one resident model), with the operator routes, signals and a clean exit.

Routes on top of the gateway's (all need the API key when one is set):

- ``GET /mlxpin/status``: every model's name, label, state, pid, cost, last use, requests
  in flight, restarts, and the budget used/total (what `mlxpin ps` prints);
- ``POST /mlxpin/models/{label}/load``: start it now (waits for its warm-up);
- ``POST /mlxpin/models/{label}/unload``: stop it once its requests in flight are done.

SIGTERM/SIGINT/SIGHUP stop the gateway and every server's process group.
"""

from __future__ import annotations

import asyncio
import json
import logging
import signal
from collections.abc import Mapping
from typing import TYPE_CHECKING

from mlxpin.errors import PortInUseError
from mlxpin.gateway.addresses import bind_public, raise_open_files_limit
from mlxpin.gateway.aio import import_aiohttp
from mlxpin.gateway.apierrors import ApiError
from mlxpin.gateway.backends import Unavailable
from mlxpin.plan.launch import LaunchPlan
from mlxpin.plan.serve import ServePlan, launch_serve_plan
from mlxpin.supervise.pool import Pool, PoolPolicy, ServerFactory, Slot, single_server

if TYPE_CHECKING:  # aiohttp is imported once the preloaded servers are spawned
    from aiohttp import web

    from mlxpin.gateway.app import Gateway
    from mlxpin.plan.distributed import DistributedPlan

log = logging.getLogger("mlxpin.serve")

STATUS_PATH = "/mlxpin/status"
MODEL_ACTION_PATH = "/mlxpin/models/{label}/{action}"


def _dumps(obj: object) -> str:
    return json.dumps(obj, separators=(",", ":"))


def pool_app(gateway: Gateway, pool: Pool, *, operator: bool = True) -> web.Application:
    """The gateway's application plus the pool's status route and (``operator``) its
    load/unload routes."""
    from aiohttp import web

    from mlxpin.gateway.app import api_error_response

    app = gateway.app()

    async def status(_request: web.Request) -> web.Response:
        return web.json_response(dict(pool.status()), dumps=_dumps)

    def slot_of(label: str) -> Slot | ApiError:
        route = gateway.table.by_label.get(label)
        if route is None:
            return ApiError(
                404,
                f"The model '{label[:200]}' does not exist. Available: {gateway.table.available}",
                "model_not_found",
                "model",
            )
        return pool.by_label[route.api_label]

    async def action(request: web.Request) -> web.StreamResponse:
        slot = slot_of(request.match_info["label"])
        if isinstance(slot, ApiError):
            return api_error_response(slot)
        what = request.match_info["action"]
        if what == "load":
            try:
                await pool.load(slot)
            except Unavailable as exc:
                headers: tuple[tuple[str, str], ...] = ()
                if exc.retry_after_s is not None:
                    headers = (("Retry-After", str(max(1, round(exc.retry_after_s)))),)
                return api_error_response(
                    ApiError(exc.status, exc.message, exc.code, headers=headers)
                )
        elif what == "unload":
            await pool.unload(slot)
        else:
            return api_error_response(
                ApiError(404, f"Unknown action {what!r}: use load or unload", "not_found")
            )
        model = next(m for m in pool.status()["models"] if m["name"] == slot.name)  # type: ignore[attr-defined]
        return web.json_response({"ok": True, "model": model}, dumps=_dumps)

    app.router.add_get(STATUS_PATH, status)
    if operator:
        app.router.add_post(MODEL_ACTION_PATH, action)
    return app


async def run_pool(
    plan: ServePlan, environ: Mapping[str, str], policy: PoolPolicy, servers: ServerFactory
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
    who = "serve" if launched is None else launched.name
    try:
        listeners = bind_public(plan.host, plan.port)
    except OSError as exc:
        raise PortInUseError(who, plan.host, plan.port, exc.strerror or str(exc)) from None
    pool: Pool | None = None
    runner = None
    try:
        # Only once the public port is ours: a server left behind by a run that died is
        # stopped (in begin), while a second run of the same endpoint failed just above.
        pool = Pool(plan, environ, policy, servers=servers, on_fatal=stopping.set)
        await pool.begin()  # preloaded servers are spawned now, while the gateway imports
        import_aiohttp()
        from mlxpin.gateway.app import Gateway, serve
        from mlxpin.gateway.listener import ListenerLimits

        gateway = Gateway(pool, api_key=plan.api_key)
        limits = ListenerLimits(plan.max_connections, plan.header_timeout)
        app = pool_app(gateway, pool, operator=launched is None)
        runner = await serve(app, plan.host, plan.port, limits, sockets=listeners)
        _log_listening(plan)
        await stopping.wait()
        log.info("stopping")
    finally:
        if pool is not None:
            await pool.close()
        if runner is not None:
            await runner.cleanup()
        for sock in listeners:
            sock.close()
    if pool.fatal is not None:
        raise pool.fatal
    return 0


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
    policy: PoolPolicy,
    watchdog: tuple[float, ...] = (),
) -> int:
    """Run ``plan`` on a fresh event loop. A distributed model runs as a rank group,
    probed as ``watchdog`` says: (interval, timeout) in seconds, or () for the defaults."""
    servers: ServerFactory = single_server
    if any(m.group is not None for m in plan.models):
        from mlxpin.supervise.rankgroup import WatchdogPolicy, group_servers

        servers = group_servers(WatchdogPolicy(*watchdog))
    return asyncio.run(run_pool(plan, environ, policy, servers))


def run_plan(
    plan: LaunchPlan | DistributedPlan,
    environ: Mapping[str, str],
    policy: PoolPolicy,
    watchdog: tuple[float, ...] = (),
) -> int:
    """`mlxpin launch`: one model, resident, behind its own gateway (70 past its budget)."""
    return run_pool_plan(launch_serve_plan(plan), environ, policy, watchdog)
