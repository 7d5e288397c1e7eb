"""Run a LaunchPlan: the gateway on the public port, mlx_lm.server behind it, restarts.

The runner that ties the pieces together, on one asyncio loop:

1. bind the public port (taken → exit 69 before anything starts), then stop a server an
   earlier launch left behind (:func:`~mlxpin.serve.process.reap_leftover`);
2. spawn the server (:class:`~mlxpin.serve.process.ServerProcess`) on a private address --
   a Unix-domain socket in a 0700 directory when the plan allows it, else a loopback port
   -- and only then import aiohttp and start the gateway on the bound port, so the two
   start-ups overlap;
3. warm it up (readiness polled from the spawn on), wait until it exits or we are told to
   stop; a crashed server is restarted as :class:`~mlxpin.serve.restart.RestartBudget`
   decides, and past its budget the launch ends with exit 70;
4. SIGTERM/SIGINT/SIGHUP stop the server's whole process group before mlxpin exits, so
   nothing is left behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import socket
import stat
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlxpin.errors import DiskError, PortInUseError, ServerCrashedError
from mlxpin.serve.backends import Upstream
from mlxpin.serve.plan import LaunchPlan, read_api_key
from mlxpin.serve.process import ServerProcess, ServerSpec, WarmUp, reap_leftover, warm_up
from mlxpin.serve.restart import GiveUp, RestartBudget, RestartPolicy
from mlxpin.serve.state import GatewayState

if TYPE_CHECKING:
    from aiohttp import web

__all__ = ["WARM_UP_ERRORS", "Supervisor", "SupervisorPolicy", "free_port", "run_plan"]

log = logging.getLogger("mlxpin.launch")

SupervisorPolicy = RestartPolicy
"""The launch's policy: readiness deadline, backoff, crash budget, stop timeout."""

WARM_UP_ERRORS = 20  # error answers in a row (5 s at 0.25 s) before a start counts as failed

#: Longest Unix socket path that fits sockaddr_un everywhere (macOS: 104 bytes with NUL).
_MAX_SOCKET_PATH = 100


def free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def bind_public(host: str, port: int) -> list[socket.socket]:
    """Listening sockets for ``host:port`` (every address it resolves to), as aiohttp
    would bind them; raises OSError if the address is taken."""
    bound: list[socket.socket] = []
    try:
        seen = set()
        for family, type_, proto, _, address in socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        ):
            if (family, address) in seen:
                continue
            seen.add((family, address))
            sock = socket.socket(family, type_, proto)
            bound.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(address)
            sock.listen(512)
            sock.setblocking(False)
    except BaseException:
        for sock in bound:
            sock.close()
        raise
    return bound


def private_socket_dir(plan: LaunchPlan) -> Path:
    """A fresh directory only this user can open, for the server's Unix socket."""
    wanted = plan.cwd.with_name(plan.cwd.name + ".private")
    if len(str(wanted / "server.sock")) > _MAX_SOCKET_PATH:
        return Path(tempfile.mkdtemp(prefix="mlxpin-"))  # 0700 by construction
    shutil.rmtree(wanted, ignore_errors=True)
    with contextlib.suppress(FileNotFoundError):
        wanted.unlink()  # a file or a link where the directory belongs
    wanted.parent.mkdir(parents=True, exist_ok=True)
    wanted.mkdir(mode=0o700)
    info = wanted.lstat()
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid():
        raise DiskError(wanted, "replaced while it was created: not a directory of ours")
    os.chmod(wanted, 0o700)  # whatever the umask
    return wanted


class Supervisor:
    def __init__(self, plan: LaunchPlan, environ: Mapping[str, str], policy: RestartPolicy) -> None:
        self.plan = plan
        self.environ = environ
        self.policy = policy
        self.state = GatewayState()
        self.api_key = read_api_key(environ)
        self.stopping = asyncio.Event()
        self.private_dir: Path | None = None
        self.private_port = 0
        self.upstream_model = plan.upstream_model  # what the gateway sends as "model"
        self.upstream = Upstream(plan.api_label, self.upstream_model, "")
        self.current: ServerProcess | None = None

    # ---------------------------------------------------------------- addresses

    def _choose_private_address(self) -> None:
        plan = self.plan
        if plan.private_socket:
            self.private_dir = private_socket_dir(plan)
            path = str(self.private_dir / "server.sock")
            self.upstream = Upstream(plan.api_label, self.upstream_model, "http://localhost", path)
        else:
            self.private_port = free_port(plan.private_host)
            url = f"http://{plan.private_host}:{self.private_port}"
            self.upstream = Upstream(plan.api_label, self.upstream_model, url)

    def _spec(self) -> ServerSpec:
        plan = self.plan
        if self.upstream.socket_path is not None:
            argv = plan.argv_unix(self.upstream.socket_path)
        else:
            argv = plan.argv(self.private_port)
        return ServerSpec(
            plan.name, tuple(argv), plan.environment(self.environ), plan.cwd, plan.upstream_model
        )

    # ------------------------------------------- what "the server" is (subclasses differ)

    def _new_process(self) -> ServerProcess:
        return ServerProcess(self._spec(), self.policy.stop_timeout_s)

    async def _reap_leftover(self) -> None:
        await reap_leftover(self._spec(), self.policy.stop_timeout_s)

    async def _watch(self, process: ServerProcess) -> str:
        """Once ready: return a reason to restart a server that still runs (never, here)."""
        await self.stopping.wait()
        return ""

    # ---------------------------------------------------------------- the run

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.add_signal_handler(signum, self.stopping.set)
        try:
            listeners = bind_public(self.plan.public_host, self.plan.public_port)
        except OSError as exc:
            raise PortInUseError(
                self.plan.name,
                self.plan.public_host,
                self.plan.public_port,
                exc.strerror or str(exc),
            ) from None
        runner: web.AppRunner | None = None
        first: ServerProcess | None = None
        try:
            # Only once the public port is ours: a server left behind by a launch that
            # died is stopped, while a second launch of a running model failed just above.
            await self._reap_leftover()
            self._choose_private_address()
            first = self._new_process()
            await first.start()
            runner = await self._start_gateway(listeners)
            return await self._supervise(first)
        finally:
            await self._shutdown(first, runner, listeners)

    async def _shutdown(
        self, process: ServerProcess | None, runner: web.AppRunner | None, listeners: list[Any]
    ) -> None:
        for current in (self.current, process):
            if current is not None:
                await current.stop()
                current.forget()
        if runner is not None:
            await runner.cleanup()
        for sock in listeners:
            sock.close()
        shutil.rmtree(self.plan.cwd, ignore_errors=True)
        if self.private_dir is not None:
            shutil.rmtree(self.private_dir, ignore_errors=True)

    async def _start_gateway(self, listeners: list[socket.socket]) -> web.AppRunner:
        from mlxpin.serve.gateway import GatewayConfig, serve_gateway
        from mlxpin.serve.listener import ListenerLimits

        plan = self.plan
        options = plan.gateway
        config = GatewayConfig(
            api_label=plan.api_label,
            aliases=plan.aliases,
            upstream_url=self.upstream.url,
            upstream_model=self.upstream_model,
            host=plan.public_host,
            port=plan.public_port,
            api_key=self.api_key,
            upstream_socket=self.upstream.socket_path,
            max_body_bytes=options.max_body,
            upstream_read_timeout_s=options.request_timeout,
            limits=ListenerLimits(options.max_connections, options.header_timeout),
        )
        return await serve_gateway(config, self.state, listeners)

    async def _supervise(self, first: ServerProcess) -> int:
        budget = RestartBudget(self.policy)
        process: ServerProcess | None = first
        while not self.stopping.is_set():
            started = time.monotonic()
            if process is None:
                process = self._new_process()
                await process.start()
            self.current = process
            code, was_ready = await self._run_once(process)
            process = None
            if self.stopping.is_set():
                break
            self.state.mark_restarting()
            decision = budget.after_exit(
                self.plan.name, code, started=started, now=time.monotonic(), was_ready=was_ready
            )
            if isinstance(decision, GiveUp):
                raise ServerCrashedError(decision.message, decision.hint)
            log.warning(
                "%s: mlx_lm.server exited with code %s; restarting in %.4g s",
                self.plan.name,
                code,
                decision.delay_s,
            )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stopping.wait(), timeout=decision.delay_s)
        log.info("%s: stopped", self.plan.name)
        return 0

    async def _attempt(self, timeout_s: float) -> str:
        from mlxpin.serve.upstream import warm_up_status

        upstream = Upstream(
            self.upstream.label,
            self.upstream.model,
            self.upstream.url,
            self.upstream.socket_path,
            self.state.epoch,
        )
        return await warm_up_status(upstream, self.state, timeout_s=timeout_s)

    async def _run_once(self, process: ServerProcess) -> tuple[int | None, bool]:
        """Warm the started server up, wait until it exits or we are told to stop."""
        exited: asyncio.Future[Any] = asyncio.ensure_future(process.wait())
        stop: asyncio.Future[Any] = asyncio.ensure_future(self.stopping.wait())
        warm = WarmUp(self._attempt, self.policy.ready_timeout_s, WARM_UP_ERRORS)
        was_ready = False
        try:
            outcome = await warm_up(self.plan.name, warm, exited, stop)
            if outcome == "ready":
                was_ready = True
                log.info(
                    "%s: ready: a warm-up completion succeeded (pid %d)",
                    self.plan.name,
                    process.pid,
                )
            elif outcome == "failed":
                await process.stop()
            reason = await self._wait_or_watch(process, exited, stop, was_ready)
        finally:
            stop.cancel()
        self.state.healthy = False  # /health says so at once, not after it is down
        if reason:
            log.error("%s: %s; stopping it", self.plan.name, reason)
        if exited.done() or reason:
            await process.stop()  # a rank group: no member outlives this start
            await asyncio.wait({exited}, timeout=5.0)
        if not exited.done():
            return None, was_ready
        code: int = exited.result()
        return code, was_ready

    async def _wait_or_watch(
        self,
        process: ServerProcess,
        exited: asyncio.Future[Any],
        stop: asyncio.Future[Any],
        was_ready: bool,
    ) -> str:
        """Wait until the server exits, we are told to stop, or (once ready) the watch
        gives a reason to restart it; that reason, or ""."""
        waiting: set[asyncio.Future[Any]] = {exited, stop}
        watch: asyncio.Future[str] | None = None
        if was_ready:
            watch = asyncio.ensure_future(self._watch(process))
            waiting.add(watch)
        await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
        if watch is None:
            return ""
        if not watch.done():
            watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watch
            return ""
        return "" if stop.done() else watch.result()


def run_plan(
    plan: LaunchPlan, environ: Mapping[str, str], policy: RestartPolicy | None = None
) -> int:
    supervisor_policy = policy or RestartPolicy()

    async def main() -> int:
        return await Supervisor(plan, environ, supervisor_policy).run()

    return asyncio.run(main())
