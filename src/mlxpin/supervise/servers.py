"""What a model of the pool runs: one `mlx_lm.server`, or (rankgroup) a group of ranks.

The pool (`serve.pool`) decides when a model starts and stops; a :class:`ModelServer`
says how: the process to spawn, where it answers (a private Unix socket or loopback
port), how to stop one an earlier run left behind, and what to watch once it is ready
(a reason to restart a server that still runs: never, for one server; a rank that
exited or stopped making progress, for a rank group).
"""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Protocol

from mlxpin.gateway.addresses import free_port, private_socket_dir
from mlxpin.gateway.backends import Upstream
from mlxpin.gateway.state import GatewayState
from mlxpin.plan.launch import LaunchPlan
from mlxpin.supervise.process import Attempt, ServerProcess, ServerSpec, reap_leftover

__all__ = ["ModelServer", "SingleServer"]


class ModelServer(Protocol):
    """How one model of the pool is run (see the module docstring)."""

    @property
    def upstream(self) -> Upstream:
        """Where its server answers, and the "model" string it expects (epoch 0)."""

    def new_process(self, stop_timeout_s: float) -> ServerProcess:
        """A process for one start (not yet spawned)."""

    async def reap_leftover(self, stop_timeout_s: float) -> None:
        """Stop a server of this model that an earlier run left behind."""

    async def watch(self, process: ServerProcess, health: GatewayState, probe: Attempt) -> str:
        """Once ready: return a reason to restart a server that still runs."""

    def close(self) -> None:
        """Remove what the server's address needed (its private socket directory)."""


class SingleServer:
    """One `mlx_lm.server` on a private socket (or a loopback port, where the runtime
    cannot serve on a socket)."""

    def __init__(self, launch: LaunchPlan, environ: Mapping[str, str]) -> None:
        self.private_dir: Path | None = None
        socket_path: str | None = None
        if launch.private_socket:  # a Unix socket in a 0700 directory: only we can reach it
            self.private_dir = private_socket_dir(launch.cwd)
            socket_path = str(self.private_dir / "server.sock")
            url = "http://localhost"
            argv = launch.argv_unix(socket_path)
        else:
            port = free_port(launch.private_host)
            url = f"http://{launch.private_host}:{port}"
            argv = launch.argv(port)
        self.spec = ServerSpec(
            launch.name, tuple(argv), launch.environment(environ), launch.cwd, launch.upstream_model
        )
        self.upstream = Upstream(launch.api_label, launch.upstream_model, url, socket_path)

    def new_process(self, stop_timeout_s: float) -> ServerProcess:
        return ServerProcess(self.spec, stop_timeout_s)

    async def reap_leftover(self, stop_timeout_s: float) -> None:
        await reap_leftover(self.spec, stop_timeout_s)

    async def watch(self, process: ServerProcess, health: GatewayState, probe: Attempt) -> str:
        await asyncio.Event().wait()  # one server: its exit is all there is to watch
        return ""

    def close(self) -> None:
        if self.private_dir is not None:
            shutil.rmtree(self.private_dir, ignore_errors=True)
