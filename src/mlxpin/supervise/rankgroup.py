"""Run a DistributedPlan: `mlx.launch` and all its ranks as ONE server of the pool.

What `mlx.launch` does not do, and this module does:
- **One process group.** Its local ranks and ssh clients share `mlx.launch`'s process
  group; a SIGTERM to `mlx.launch` alone leaves local ranks serving, so the group is
  stopped with `killpg` (SIGTERM, then SIGKILL) until no member is left. A remote rank
  dies with its ssh connection.
- **Any exit is a crash.** `mlx.launch` exits 0 when a rank dies, and a rank that exits 0
  leaves it waiting: the first member to go restarts the whole group (pool's budget).
- **A progress watchdog.** A group can hang with every port open (mlx #3862, #4278):
  unless a completion went through since the last look, a 1-token probe is sent every
  `probe_interval_s`; one not done within `probe_timeout_s` restarts the group.
Rank 0 listens on a loopback port (ranks are not started through mlxpin's socket wrapper).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import time
from collections.abc import Mapping
from pathlib import Path

from mlxpin.gateway.addresses import free_port
from mlxpin.gateway.backends import GatewayState, Upstream
from mlxpin.plan.distributed import DistributedPlan
from mlxpin.supervise.process import Attempt, ServerProcess, ServerSpec, ps
from mlxpin.supervise.servers import WatchdogPolicy

log = logging.getLogger("mlxpin.launch")
DEFAULT_MODEL = "default_model"  # mlx_lm.server's name for its own --model


def group_members(pgid: int) -> dict[int, str]:
    """Live (non-zombie) processes of process group `pgid`: pid → command.

    `ps -A -o pid=,pgid=,stat=,command=` reads the same on Linux and macOS.
    """
    out = ps("-ww", "-A", "-o", "pid=,pgid=,stat=,command=", timeout_s=10.0)
    if out is None:
        return {}
    members: dict[int, str] = {}
    for line in out.splitlines():
        parts = line.split(None, 3)
        if len(parts) < 3 or not parts[0].isdigit() or not parts[1].isdigit():
            continue
        if int(parts[1]) == pgid and not parts[2].startswith("Z"):
            members[int(parts[0])] = parts[3] if len(parts) > 3 else ""
    return members


def _signal_group(pgid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signum)


async def stop_group(pgid: int, timeout_s: float) -> bool:
    """SIGTERM the group, SIGKILL what is left after `timeout_s`; True once it is empty.

    A stopped (SIGSTOP) process cannot act on SIGTERM: it is continued too, and killed
    when the grace period ends.
    """
    _signal_group(pgid, signal.SIGTERM)
    _signal_group(pgid, signal.SIGCONT)
    for signum, wait_s in ((signal.SIGTERM, timeout_s), (signal.SIGKILL, 10.0)):
        if signum == signal.SIGKILL:
            left = group_members(pgid)
            if not left:
                return True
            log.warning("killing %d process(es) of the group that ignored SIGTERM", len(left))
            _signal_group(pgid, signal.SIGKILL)
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            if not group_members(pgid):
                return True
            await asyncio.sleep(0.1)
    left = group_members(pgid)
    if left:
        log.error("process group %d still has members: %s", pgid, sorted(left))
    return not left


class RankGroupProcess(ServerProcess):
    """One start of `mlx.launch` and every rank it starts, as one server process."""

    def __init__(self, dplan: DistributedPlan, spec: ServerSpec, stop_timeout_s: float) -> None:
        super().__init__(spec, stop_timeout_s)
        self.dplan = dplan
        self.pgid: int | None = None

    # An open pipe that never carries data: mlx.launch polls its stdin to forward it to the
    # ranks, and on /dev/null (always readable, at EOF) that loop spins a whole core, which
    # the ranks then lack (enough, on a small machine, to miss the ring backend's ~15 s
    # connect window).
    stdin = asyncio.subprocess.PIPE

    @property
    def pidfile(self) -> Path:
        return group_pidfile(self.spec)

    def announce(self) -> None:
        self.dplan.hostfile_path.write_text(json.dumps(self.dplan.hostfile(), indent=2) + "\n")
        log.info(
            "%s: starting %d ranks with mlx.launch: %s",
            self.spec.name,
            len(self.dplan.ranks),
            " ".join(self.spec.argv),
        )

    async def start(self) -> None:
        await super().start()
        assert self.process is not None
        self.pgid = self.process.pid  # setsid: mlx.launch leads a new process group

    async def stop(self) -> None:
        """Stop the whole group (whether or not mlx.launch is still running)."""
        pgid, process = self.pgid, self.process
        if pgid is None or process is None:
            return
        if process.returncode is not None:
            log.error(
                "%s: mlx.launch exited with code %s (a rank ended): stopping the whole group",
                self.spec.name,
                process.returncode,
            )
        else:
            log.info("%s: stopping the whole group %d", self.spec.name, pgid)
        await stop_group(pgid, self.stop_timeout_s)
        if process.returncode is None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(process.wait(), timeout=5.0)
        if process.stdin is not None:
            process.stdin.close()
        self.pgid = None


def group_pidfile(spec: ServerSpec) -> Path:
    return spec.cwd.with_name(spec.cwd.name + ".group.pid")


class RankGroupServer:
    """A :class:`~mlxpin.supervise.servers.ModelServer`: `mlx.launch` and every rank it
    starts, watched for a member that exits and for progress."""

    def __init__(
        self, plan: DistributedPlan, environ: Mapping[str, str], watchdog: WatchdogPolicy
    ) -> None:
        server = plan.server
        # Rank 0 shares each request, "model" included, with every rank: a path only rank
        # 0's host has would send the others looking for it. "default_model" is what each
        # rank maps to its own --model.
        model = server.upstream_model if plan.same_paths else DEFAULT_MODEL
        port = free_port(server.private_host)  # ranks are not started on mlxpin's socket
        self.upstream = Upstream(server.api_label, model, f"http://{server.private_host}:{port}")
        self.spec = ServerSpec(
            server.name,
            tuple(plan.launch_argv(port)),
            server.environment(environ),
            server.cwd,
            server.upstream_model,
        )
        self.dplan = plan
        self.watchdog = watchdog

    def new_process(self, stop_timeout_s: float) -> ServerProcess:
        return RankGroupProcess(self.dplan, self.spec, stop_timeout_s)

    async def reap_leftover(self, stop_timeout_s: float) -> None:
        """Stop a group an earlier run left behind (mlxpin killed with -9: mlx.launch
        gets SIGTERM from the kernel on Linux, but its ranks do not)."""
        pidfile = group_pidfile(self.spec)
        try:
            pgid = int(pidfile.read_text())
        except (OSError, ValueError):
            return
        members = group_members(pgid) if pgid > 1 else {}
        ours = (str(self.spec.cwd), self.spec.model)
        if any(mark in cmd for cmd in members.values() for mark in ours):
            log.warning("%s: stopping ranks left running earlier (group %d)", self.spec.name, pgid)
            await stop_group(pgid, stop_timeout_s)
        pidfile.unlink(missing_ok=True)

    async def watch(self, process: ServerProcess, health: GatewayState, probe: Attempt) -> str:
        """Return why to restart the group: a member exited, or it stopped progressing."""
        assert isinstance(process, RankGroupProcess) and process.pgid is not None
        pgid, name = process.pgid, self.spec.name
        log.info(
            "%s: ready: %d ranks answered a warm-up completion (group %d)",
            name,
            len(self.dplan.ranks),
            pgid,
        )
        members = group_members(pgid)
        log.debug("%s: watching group %d: %s", name, pgid, members)
        last_probe = time.monotonic()
        completions = health.completions_ok
        while True:
            await asyncio.sleep(self.watchdog.member_poll_s)
            gone = sorted(set(members) - set(group_members(pgid)))
            if gone:
                return f"rank process(es) {gone} of group {pgid} exited"
            if time.monotonic() - last_probe < self.watchdog.probe_interval_s:
                continue
            last_probe = time.monotonic()
            if health.completions_ok != completions:  # clients proved progress
                completions = health.completions_ok
                continue
            started = time.monotonic()
            status = await probe(self.watchdog.probe_timeout_s)
            log.debug("%s: probe %s in %.2f s", name, status, time.monotonic() - started)
            if status != "ok":
                return (
                    f"no progress: a 1-token probe did not complete within "
                    f"{self.watchdog.probe_timeout_s:g} s"
                )
            completions = health.completions_ok

    def close(self) -> None:
        """Nothing to remove: rank 0 listens on a loopback port."""
