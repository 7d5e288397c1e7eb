"""Run a LaunchPlan: the gateway on the public port, mlx_lm.server behind it, restarts.

The only module that starts the server process. One asyncio loop runs the gateway and
watches the child; a crashed server restarts with capped exponential backoff until a
restart budget is spent (then exit 70); SIGTERM/SIGINT stop the child (its whole
process group) before mlxpin exits, so nothing is left behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlxpin.errors import PortInUseError, ServerCrashedError
from mlxpin.serve.plan import LaunchPlan, read_api_key

log = logging.getLogger("mlxpin.launch")


@dataclass(frozen=True)
class SupervisorPolicy:
    ready_timeout_s: float = 900.0  # loading a 31B model from disk can take minutes
    backoff_initial_s: float = 1.0
    backoff_max_s: float = 60.0
    restart_budget: int = 5  # crashes tolerated ...
    budget_window_s: float = 600.0  # ... within this window
    stop_timeout_s: float = 10.0


WARM_UP_ERRORS = 20  # error answers in a row (5 s at 0.25 s) before a start counts as failed


def free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _die_with_parent() -> None:
    """In the child, before exec: get SIGTERM if mlxpin itself dies (Linux only)."""
    os.setsid()
    if sys.platform.startswith("linux"):
        import ctypes

        with contextlib.suppress(OSError, AttributeError):
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class Supervisor:
    def __init__(
        self, plan: LaunchPlan, environ: Mapping[str, str], policy: SupervisorPolicy
    ) -> None:
        from mlxpin.serve.gateway import GatewayConfig, GatewayState

        self.plan = plan
        self.environ = environ
        self.policy = policy
        self.private_port = free_port(plan.private_host)
        self.state = GatewayState()
        self.config = GatewayConfig(
            api_label=plan.api_label,
            aliases=plan.aliases,
            upstream_url=f"http://{plan.private_host}:{self.private_port}",
            upstream_model=plan.upstream_model,
            host=plan.public_host,
            port=plan.public_port,
            api_key=read_api_key(environ),
        )
        self.stopping = asyncio.Event()
        self.process: asyncio.subprocess.Process | None = None
        self.crashes: deque[float] = deque()
        self.was_ready = False

    async def run(self) -> int:
        from mlxpin.serve.gateway import start_gateway

        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.add_signal_handler(signum, self.stopping.set)
        try:
            runner = await start_gateway(self.config, self.state)
        except OSError as exc:
            raise PortInUseError(
                self.plan.name,
                self.plan.public_host,
                self.plan.public_port,
                exc.strerror or str(exc),
            ) from None
        # Only once the public port is ours: a server left behind by a launch that died
        # is stopped, while a second launch of a running model failed just above.
        await self._reap_leftover()
        try:
            return await self._supervise()
        finally:
            await self._stop_server()
            self.pidfile.unlink(missing_ok=True)
            await runner.cleanup()
            shutil.rmtree(self.plan.cwd, ignore_errors=True)

    async def _supervise(self) -> int:
        delay = self.policy.backoff_initial_s
        never_ready = 0  # failed starts in a row that never answered a warm-up
        while not self.stopping.is_set():
            started = time.monotonic()
            code = await self._run_once()
            if self.stopping.is_set():
                break
            self.state.mark_restarting()
            now = time.monotonic()
            self.crashes.append(now)
            while self.crashes and now - self.crashes[0] > self.policy.budget_window_s:
                self.crashes.popleft()
            never_ready = 0 if self.was_ready else never_ready + 1
            if never_ready > self.policy.restart_budget:
                raise ServerCrashedError(
                    f"{self.plan.name}: mlx_lm.server failed {never_ready} starts in a row "
                    f"without ever answering (last exit code {code}); giving up",
                    "read the server's log above: the model may not load with this mlx-lm",
                )
            if len(self.crashes) > self.policy.restart_budget:
                raise ServerCrashedError(
                    f"{self.plan.name}: mlx_lm.server exited {len(self.crashes)} times within "
                    f"{self.policy.budget_window_s:.0f} s (last exit code {code}); giving up",
                    "read the server's log above; `mlxpin launch --verify` re-checks the files",
                )
            if now - started > self.policy.budget_window_s:
                delay = self.policy.backoff_initial_s
            log.warning(
                "%s: mlx_lm.server exited with code %s; restarting in %.0f s",
                self.plan.name,
                code,
                delay,
            )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stopping.wait(), timeout=delay)
            delay = min(delay * 2, self.policy.backoff_max_s)
        log.info("%s: stopped", self.plan.name)
        return 0

    async def _run_once(self) -> int | None:
        """Start the server, warm it up, wait until it exits or we are told to stop."""

        if self.plan.cwd.exists():
            shutil.rmtree(self.plan.cwd, ignore_errors=True)
        self.plan.cwd.mkdir(parents=True, exist_ok=True)
        argv = self.plan.argv(self.private_port)
        log.info("%s: starting %s", self.plan.name, " ".join(argv))
        self.process = await asyncio.create_subprocess_exec(
            *argv,
            cwd=self.plan.cwd,
            env=self.plan.environment(self.environ),
            stdin=asyncio.subprocess.DEVNULL,
            preexec_fn=_die_with_parent,
        )
        self.pidfile.write_text(str(self.process.pid))
        exited: asyncio.Future[Any] = asyncio.ensure_future(self.process.wait())
        stop: asyncio.Future[Any] = asyncio.ensure_future(self.stopping.wait())
        self.was_ready = False
        try:
            if await self._warm_up(exited, stop):
                self.was_ready = True
                log.info(
                    "%s: ready: a warm-up completion succeeded (pid %d)",
                    self.plan.name,
                    self.process.pid,
                )
            await asyncio.wait({exited, stop}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop.cancel()
        if not exited.done():
            return None
        code: int = exited.result()
        return code

    async def _warm_up(self, exited: asyncio.Future[Any], stop: asyncio.Future[Any]) -> bool:
        """Send 1-token completions until one succeeds. A large model loads during the
        first one, so each attempt may take until the deadline; the server exiting or a
        stop request ends the wait at once."""
        from mlxpin.serve.gateway import upstream_of
        from mlxpin.serve.upstream import warm_up_status

        deadline = time.monotonic() + self.policy.ready_timeout_s
        errors_in_a_row = 0
        while not exited.done() and not stop.done():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                log.error("%s: not ready after %.0f s", self.plan.name, self.policy.ready_timeout_s)
                await self._stop_server()
                return False
            attempt: asyncio.Future[Any] = asyncio.ensure_future(
                warm_up_status(
                    upstream_of(self.config, self.state), self.state, timeout_s=remaining
                )
            )
            await asyncio.wait({attempt, exited, stop}, return_when=asyncio.FIRST_COMPLETED)
            if not attempt.done():
                attempt.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await attempt
                return False
            status = attempt.result()
            if status == "ok":
                return True
            errors_in_a_row = errors_in_a_row + 1 if status == "error" else 0
            if errors_in_a_row >= WARM_UP_ERRORS:
                log.error(
                    "%s: the server answers every warm-up with an error; restarting it",
                    self.plan.name,
                )
                await self._stop_server()
                return False
            await asyncio.wait({exited, stop}, timeout=0.25)  # not listening yet: retry
        return False

    @property
    def pidfile(self) -> Path:
        return self.plan.cwd.with_name(self.plan.cwd.name + ".server.pid")

    async def _reap_leftover(self) -> None:
        """Stop a server an earlier `mlxpin launch` left behind (killed with -9, say).

        On Linux the server dies with its parent anyway; macOS has no such signal, so
        without this a second launch would load a large model twice.
        """
        try:
            pid = int(self.pidfile.read_text())
        except (OSError, ValueError):
            return
        if pid > 1 and _is_our_server(pid, self.plan.upstream_model):
            log.warning("%s: stopping a server left running earlier (pid %d)", self.plan.name, pid)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGTERM)
            deadline = time.monotonic() + self.policy.stop_timeout_s
            while _alive(pid) and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)
        self.pidfile.unlink(missing_ok=True)

    async def _stop_server(self) -> None:
        process = self.process
        if process is None or process.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            await asyncio.wait_for(process.wait(), timeout=self.policy.stop_timeout_s)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            await process.wait()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _is_our_server(pid: int, model: str) -> bool:
    """Is `pid` an mlx_lm server started on this snapshot? (`ps` works on Linux and macOS.)"""
    try:
        command = subprocess.run(
            ["ps", "-o", "command=", "-p", str(pid)],
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return False
    return "mlx_lm" in command and model in command


def run_plan(
    plan: LaunchPlan, environ: Mapping[str, str], policy: SupervisorPolicy | None = None
) -> int:
    supervisor_policy = policy or SupervisorPolicy()

    async def main() -> int:
        return await Supervisor(plan, environ, supervisor_policy).run()

    return asyncio.run(main())
