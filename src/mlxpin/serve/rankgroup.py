"""Run a DistributedPlan: `mlx.launch` and all its ranks as ONE unit behind the gateway.

What `mlx.launch` does not do, and this module does:
- **One process group.** `mlx.launch` starts in a session of its own; its local ranks
  and its ssh clients (one per remote rank) share that process group. A SIGTERM to
  `mlx.launch` alone leaves local ranks serving (re-parented to init), so the group is
  always stopped with `killpg` (SIGTERM, then SIGKILL), and stopping waits until no
  member is left. A remote rank dies with its ssh connection (the pty hangs up).
- **Any exit is a crash.** `mlx.launch` exits 0 when a rank dies, and a rank that exits
  0 leaves it waiting: once the group is ready, the members are watched, and the first
  one to go (or `mlx.launch` returning, whatever its code) stops and restarts the whole
  group under the supervisor's crash budget (exit 70 past it).
- **A progress watchdog.** A group can hang with every port open (mlx #3862, #4278):
  unless a completion went through the gateway since the last look, a 1-token probe is
  sent every `probe_interval_s`; one that does not complete within `probe_timeout_s`
  kills the group (SIGKILL to the group if SIGTERM is ignored, e.g. a SIGSTOPped rank)
  and restarts it.

Restart policy, gateway, warm-up and budget are `Supervisor`'s; only how "the server"
is started, watched and stopped differs.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlxpin.serve.distributed import DistributedPlan
from mlxpin.serve.supervisor import Supervisor, SupervisorPolicy, _die_with_parent

log = logging.getLogger("mlxpin.launch")
DEFAULT_MODEL = "default_model"  # mlx_lm.server's name for its own --model


@dataclass(frozen=True)
class WatchdogPolicy:
    probe_interval_s: float = 30.0
    probe_timeout_s: float = 60.0
    member_poll_s: float = 0.5


def group_members(pgid: int) -> dict[int, str]:
    """Live (non-zombie) processes of process group `pgid`: pid → command.

    `ps -A -o pid=,pgid=,stat=,command=` reads the same on Linux and macOS.
    """
    try:
        out = subprocess.run(
            ["ps", "-ww", "-A", "-o", "pid=,pgid=,stat=,command="],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        ).stdout
    except (OSError, subprocess.SubprocessError):
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


class RankGroupSupervisor(Supervisor):
    """Supervisor whose "server" is `mlx.launch` and every rank it starts."""

    def __init__(
        self,
        plan: DistributedPlan,
        environ: Mapping[str, str],
        policy: SupervisorPolicy,
        watchdog: WatchdogPolicy,
    ) -> None:
        super().__init__(plan.server, environ, policy)
        if not plan.same_paths:
            # Rank 0 shares each request, "model" included, with every rank: a path only
            # rank 0's host has would send the others looking for it. "default_model" is
            # what each rank maps to its own --model.
            self.config = dataclasses.replace(self.config, upstream_model=DEFAULT_MODEL)
        self.dplan = plan
        self.watchdog = watchdog
        self.pgid: int | None = None
        self.stop_reason: str | None = None

    @property
    def pidfile(self) -> Path:
        return self.plan.cwd.with_name(self.plan.cwd.name + ".group.pid")

    async def _run_once(self) -> int | None:
        if self.plan.cwd.exists():
            shutil.rmtree(self.plan.cwd, ignore_errors=True)
        self.plan.cwd.mkdir(parents=True, exist_ok=True)
        hostfile = self.dplan.hostfile()
        self.dplan.hostfile_path.write_text(json.dumps(hostfile, indent=2) + "\n")
        argv = self.dplan.launch_argv(self.private_port)
        log.info(
            "%s: starting %d ranks with mlx.launch: %s",
            self.plan.name,
            len(self.dplan.ranks),
            " ".join(argv),
        )
        self.process = await asyncio.create_subprocess_exec(
            *argv,
            cwd=self.plan.cwd,
            env=self.plan.environment(self.environ),
            # An open pipe that never carries data: mlx.launch polls its stdin to forward
            # it to the ranks, and on /dev/null (always readable, at EOF) that loop spins a
            # whole core, which the ranks then lack (enough, on a small machine, to miss
            # the ring backend's ~15 s connect window).
            stdin=asyncio.subprocess.PIPE,
            preexec_fn=_die_with_parent,  # setsid: mlx.launch leads a new process group
        )
        self.pgid = self.process.pid
        self.pidfile.write_text(str(self.pgid))
        exited: asyncio.Future[Any] = asyncio.ensure_future(self.process.wait())
        stop: asyncio.Future[Any] = asyncio.ensure_future(self.stopping.wait())
        self.was_ready = False
        self.stop_reason = None
        try:
            if await self._warm_up(exited, stop):
                self.was_ready = True
                log.info(
                    "%s: ready: %d ranks answered a warm-up completion (group %d)",
                    self.plan.name,
                    len(self.dplan.ranks),
                    self.pgid,
                )
                watch: asyncio.Future[Any] = asyncio.ensure_future(self._watch())
                try:
                    await asyncio.wait({exited, stop, watch}, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    watch.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await watch
            else:
                await asyncio.wait({exited, stop}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop.cancel()
        self.state.healthy = False  # /health says so at once, not after the group is down
        if self.stop_reason:
            log.error("%s: %s; stopping the whole group", self.plan.name, self.stop_reason)
        elif exited.done() and not self.stopping.is_set():
            log.error(
                "%s: mlx.launch exited with code %s (a rank ended): stopping the whole group",
                self.plan.name,
                exited.result(),
            )
        await self._stop_server()  # whatever happened, no rank outlives this start
        if self.stopping.is_set():
            return None
        code: int = exited.result() if exited.done() else -1
        return code

    async def _watch(self) -> None:
        """Return (with stop_reason set) when a member exits or the group stops progressing."""
        assert self.pgid is not None
        members = group_members(self.pgid)
        log.debug("%s: watching group %d: %s", self.plan.name, self.pgid, members)
        last_probe = time.monotonic()
        completions = self.state.completions_ok
        while True:
            await asyncio.sleep(self.watchdog.member_poll_s)
            alive = group_members(self.pgid)
            gone = sorted(set(members) - set(alive))
            if gone:
                self.stop_reason = f"rank process(es) {gone} of group {self.pgid} exited"
                return
            if time.monotonic() - last_probe < self.watchdog.probe_interval_s:
                continue
            last_probe = time.monotonic()
            if self.state.completions_ok != completions:  # clients proved progress
                completions = self.state.completions_ok
                continue
            if not await self._probe():
                self.stop_reason = (
                    f"no progress: a 1-token probe did not complete within "
                    f"{self.watchdog.probe_timeout_s:g} s"
                )
                return
            completions = self.state.completions_ok

    async def _probe(self) -> bool:
        from mlxpin.serve.gateway import warm_up_status

        started = time.monotonic()
        status = await warm_up_status(
            self.config, self.state, timeout_s=self.watchdog.probe_timeout_s
        )
        log.debug("%s: probe %s in %.2f s", self.plan.name, status, time.monotonic() - started)
        return status == "ok"

    async def _stop_server(self) -> None:
        pgid = self.pgid
        if pgid is None:
            return
        await stop_group(pgid, self.policy.stop_timeout_s)
        process = self.process
        if process is not None and process.returncode is None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(process.wait(), timeout=5.0)
        if process is not None and process.stdin is not None:
            process.stdin.close()
        self.pgid = None

    async def _reap_leftover(self) -> None:
        """Stop a group an earlier launch left behind (mlxpin killed with -9: mlx.launch
        gets SIGTERM from the kernel on Linux, but its ranks do not)."""
        try:
            pgid = int(self.pidfile.read_text())
        except (OSError, ValueError):
            return
        members = group_members(pgid) if pgid > 1 else {}
        ours = (str(self.plan.cwd), self.plan.upstream_model)
        if any(mark in cmd for cmd in members.values() for mark in ours):
            log.warning("%s: stopping ranks left running earlier (group %d)", self.plan.name, pgid)
            await stop_group(pgid, self.policy.stop_timeout_s)
        self.pidfile.unlink(missing_ok=True)


def run_distributed(
    plan: DistributedPlan,
    environ: Mapping[str, str],
    policy: SupervisorPolicy | None = None,
    watchdog: WatchdogPolicy | None = None,
) -> int:
    async def main() -> int:
        supervisor = RankGroupSupervisor(
            plan, environ, policy or SupervisorPolicy(), watchdog or WatchdogPolicy()
        )
        return await supervisor.run()

    return asyncio.run(main())
