"""What a model of the pool runs: one `mlx_lm.server`, or (rankgroup) `mlx.launch` and its
ranks. The pool decides when; a :class:`ModelServer` says how: the process to spawn,
where it answers, how to stop one an earlier run left behind, and what to watch once it
is ready (for a rank group: a member that exits, or no progress).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from mlxpin.gateway.addresses import free_port, private_socket_dir
from mlxpin.gateway.backends import GatewayState, Upstream
from mlxpin.plan.launch import LaunchPlan
from mlxpin.plan.serve import PoolModelPlan
from mlxpin.supervise.liveness import Liveness, watch_liveness
from mlxpin.supervise.process import Attempt, ServerProcess, ServerSpec, reap_leftover

__all__ = ["ModelServer", "SingleServer", "WatchdogPolicy", "model_server"]


@dataclass(frozen=True)
class WatchdogPolicy:
    """How a rank group is probed for progress (see `supervise.rankgroup`)."""

    probe_interval_s: float = 30.0
    probe_timeout_s: float = 60.0
    member_poll_s: float = 0.5
    single: Liveness = field(default_factory=Liveness, kw_only=True)  # one server's watchdog


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


def model_server(
    plan: PoolModelPlan, environ: Mapping[str, str], watchdog: WatchdogPolicy
) -> ModelServer:
    """A rank group for a distributed model (imported only then), else one server."""
    if plan.group is None:
        return SingleServer(plan.launch, environ, watchdog.single)
    from mlxpin.supervise.rankgroup import RankGroupServer

    return RankGroupServer(plan.group, environ, watchdog)


class SingleServer:
    """One `mlx_lm.server` on a private socket (or a loopback port, where the runtime
    cannot serve on a socket)."""

    def __init__(
        self, launch: LaunchPlan, environ: Mapping[str, str], liveness: Liveness | None = None
    ) -> None:
        self.liveness = liveness or Liveness()
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
            launch.name,
            tuple(argv),
            launch.environment(environ),
            launch.cwd,
            launch.upstream_model,
            launch.log_file,
            launch.api_label,
        )
        # A pinned mlx_vlm.server is uvicorn on a port: it drops idle connections after 5 s.
        keepalive = 30.0 if socket_path or launch.engine == "mlx-lm" else 4.0
        self.upstream = Upstream(
            launch.api_label,
            launch.upstream_model,
            url,
            socket_path,
            role=launch.role,
            keepalive_s=keepalive,
        )

    def new_process(self, stop_timeout_s: float) -> ServerProcess:
        path = self.upstream.socket_path
        # The last start's socket file: the warm-up waits for the new one to appear.
        with contextlib.suppress(OSError):
            if path is not None and stat.S_ISSOCK(os.lstat(path).st_mode):
                os.unlink(path)
        return ServerProcess(self.spec, stop_timeout_s)

    async def reap_leftover(self, stop_timeout_s: float) -> None:
        await reap_leftover(self.spec, stop_timeout_s)

    async def watch(self, process: ServerProcess, health: GatewayState, probe: Attempt) -> str:
        return await watch_liveness(self.spec.name, lambda: self.upstream, health, self.liveness)

    def close(self) -> None:
        if self.private_dir is not None:
            shutil.rmtree(self.private_dir, ignore_errors=True)
