"""One model server process: start it, warm it up, stop it, reap one left behind.

A server runs in a fresh, empty ``cwd`` with exactly ``env``, in a process group of its
own that dies with mlxpin on Linux (PR_SET_PDEATHSIG); it is stopped with SIGTERM to the
group, then SIGKILL. Warm-up polls from the moment of the spawn with a short, growing
pause, so readiness is noticed within ms of the server binding, not on a fixed tick.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["Attempt", "ServerProcess", "ServerSpec", "reap_leftover", "warm_up"]

log = logging.getLogger("mlxpin.launch")

#: Pauses between warm-up attempts while the server is not listening yet.
POLL_FIRST_S = 0.005
POLL_MAX_S = 0.05
#: Pause after an error answer (the server listens but cannot answer yet).
ERROR_PAUSE_S = 0.25


@dataclass(frozen=True)
class ServerSpec:
    """How to start one server."""

    name: str
    argv: tuple[str, ...]
    env: Mapping[str, str]
    cwd: Path
    model: str
    """The exact --model string (recognises a leftover server of the same snapshot)."""
    log_file: Path | None = None
    """Where its output also goes (rotated), each line copied to our stderr as ``[label]``."""
    label: str = ""

    @property
    def pidfile(self) -> Path:
        return self.cwd.with_name(self.cwd.name + ".server.pid")


def _die_with_parent() -> None:
    """In the child, before exec: get SIGTERM if mlxpin itself dies (Linux only)."""
    os.setsid()
    if sys.platform.startswith("linux"):
        import ctypes

        with contextlib.suppress(OSError, AttributeError):
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class ServerProcess:
    """One start of a server: spawn, wait, stop."""

    stdin: int = asyncio.subprocess.DEVNULL

    def __init__(self, spec: ServerSpec, stop_timeout_s: float) -> None:
        self.spec = spec
        self.stop_timeout_s = stop_timeout_s
        self.process: asyncio.subprocess.Process | None = None
        self.pump: asyncio.Task[None] | None = None

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    @property
    def pidfile(self) -> Path:
        return self.spec.pidfile

    def announce(self) -> None:
        log.info("%s: starting %s", self.spec.name, " ".join(self.spec.argv))

    async def start(self) -> None:
        spec = self.spec
        shutil.rmtree(spec.cwd, ignore_errors=True)
        spec.cwd.mkdir(parents=True, exist_ok=True)
        self.announce()
        piped = spec.log_file is not None
        self.process = await asyncio.create_subprocess_exec(
            *spec.argv,
            cwd=spec.cwd,
            env=dict(spec.env),
            stdin=self.stdin,
            stdout=asyncio.subprocess.PIPE if piped else None,
            stderr=asyncio.subprocess.STDOUT if piped else None,
            preexec_fn=_die_with_parent,
        )
        try:  # best-effort: it only helps reap a server left behind (macOS)
            self.pidfile.write_text(str(self.process.pid))
        except OSError as exc:
            log.warning("%s: cannot write %s: %s", spec.name, self.pidfile, exc)
        if piped and self.process.stdout is not None:
            assert spec.log_file is not None
            self.pump = asyncio.create_task(
                pump_output(self.process.stdout, spec.log_file, spec.label or spec.name)
            )

    async def wait(self) -> int:
        assert self.process is not None
        code = await self.process.wait()
        if self.pump is not None:  # its last lines, before anyone reports the exit
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self.pump), 1.0)
        return code

    async def stop(self) -> None:
        """SIGTERM to its process group, SIGKILL after the timeout."""
        process = self.process
        if process is None or process.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
            os.killpg(process.pid, signal.SIGCONT)  # a stopped (hung) one acts on it now
        try:
            await asyncio.wait_for(process.wait(), timeout=self.stop_timeout_s)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            await process.wait()

    def forget(self) -> None:
        with contextlib.suppress(OSError):
            self.pidfile.unlink(missing_ok=True)


#: A model log is rotated at this size, keeping this many old files (NAME.log.1, ...).
LOG_MAX_BYTES = 10 * 1024 * 1024
LOG_BACKUPS = 3
#: After copying what a server wrote, wait this long before reading again: a busy server
#: logs a line per request, and one read and two writes then carry many requests' lines
#: (~0.1 ms of the gateway's loop per request at 8 concurrent clients otherwise).
PUMP_PAUSE_S = 0.05


class RotatingLog:
    """A server's log file, rotated as logging's RotatingFileHandler would (NAME.log.1, ...)
    but written a chunk at a time: no LogRecord, format, seek and two stats per line (the
    engine logs a line per request, and that cost ~0.1 ms of the gateway's loop each)."""

    def __init__(self, path: Path, max_bytes: int = LOG_MAX_BYTES, backups: int = LOG_BACKUPS):
        self.path, self.max_bytes, self.backups = path, max_bytes, backups
        path.parent.mkdir(parents=True, exist_ok=True)
        self.file = path.open("ab")
        self.size = self.file.tell()

    def write(self, data: bytes) -> None:
        if self.size and self.size + len(data) >= self.max_bytes:
            self.rotate()
        self.file.write(data)
        self.file.flush()
        self.size += len(data)

    def rotate(self) -> None:
        self.file.close()
        for index in range(self.backups - 1, 0, -1):
            older = self.path.with_name(f"{self.path.name}.{index}")
            if older.exists():
                os.replace(older, self.path.with_name(f"{self.path.name}.{index + 1}"))
        os.replace(self.path, self.path.with_name(self.path.name + ".1"))
        self.file = self.path.open("ab")
        self.size = 0

    def close(self) -> None:
        self.file.close()


async def pump_output(stream: asyncio.StreamReader, path: Path, label: str) -> None:
    """Copy a server's output line by line to its rotating ``path`` and, prefixed with
    ``[label]``, to our stderr (the combined stream a service unit logs)."""
    try:
        logfile: RotatingLog | None = RotatingLog(path)
    except OSError as exc:
        log.warning("%s: cannot write its log %s: %s", label, path, exc)
        logfile = None
    prefix, rest = f"[{label}] ", b""

    def emit(lines: list[bytes]) -> None:
        nonlocal logfile
        texts = [line.decode("utf-8", "replace") for line in lines if line]
        if not texts:
            return
        if logfile is not None:
            try:
                logfile.write("".join(text + "\n" for text in texts).encode())
            except OSError as exc:
                log.warning("%s: cannot write its log %s: %s", label, path, exc)
                logfile = None
        sys.stderr.write("".join(prefix + text + "\n" for text in texts))
        sys.stderr.flush()

    try:
        while chunk := await stream.read(65536):  # not readline: a \r-only bar has no end
            *lines, rest = (rest + chunk).replace(b"\r", b"\n").split(b"\n")
            emit(lines)
            await asyncio.sleep(PUMP_PAUSE_S)
        emit([rest])
    finally:
        if logfile is not None:
            logfile.close()


Attempt = Callable[[float], Awaitable[str]]
"""One warm-up completion with a timeout: "ok", "unreachable" or "error"."""


async def warm_up(
    name: str,
    attempt: Attempt,
    exited: asyncio.Future[Any],
    *,
    ready_timeout_s: float,
    max_errors: int,
) -> str:
    """1-token completions until one succeeds: "ready"; "gone" (the server exited); or
    "failed" (deadline passed, or ``max_errors`` error answers in a row: the caller stops
    it). The first completion loads the model and may take minutes."""
    deadline = time.monotonic() + ready_timeout_s
    errors_in_a_row = 0
    pause = POLL_FIRST_S
    while not exited.done():
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            log.error("%s: not ready after %.0f s", name, ready_timeout_s)
            return "failed"
        trying: asyncio.Future[str] = asyncio.ensure_future(attempt(remaining))
        await asyncio.wait({trying, exited}, return_when=asyncio.FIRST_COMPLETED)
        if not trying.done():
            trying.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await trying
            return "gone"
        status = trying.result()
        if status == "ok":
            return "ready"
        if status == "error":
            errors_in_a_row += 1
            if errors_in_a_row >= max_errors:
                log.error("%s: the server answers every warm-up with an error; restarting it", name)
                return "failed"
            wait_s = ERROR_PAUSE_S
        else:
            errors_in_a_row = 0
            wait_s, pause = pause, min(pause * 2, POLL_MAX_S)
        await asyncio.wait({exited}, timeout=wait_s)
    return "gone"


# --------------------------------------------------------------------------- leftovers


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def ps(*args: str, timeout_s: float = 5.0) -> str | None:
    """What `ps ARGS` prints (the same options read the same on Linux and macOS), or None
    when it cannot be run."""
    try:
        return subprocess.run(
            ["ps", *args], capture_output=True, text=True, timeout=timeout_s, check=False
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None


def is_our_server(pid: int, model: str) -> bool:
    """Is `pid` an mlx_lm server started on this snapshot?"""
    command = ps("-ww", "-o", "command=", "-p", str(pid))  # -ww: never cut at $COLUMNS
    if command is None:
        return False
    launcher = "mlx_lm" in command or "mlxpin.serve.uds_server" in command
    return launcher and model in command


async def reap_leftover(spec: ServerSpec, stop_timeout_s: float) -> None:
    """Stop a server an earlier `mlxpin launch` left behind (killed with -9, say).

    On Linux the server dies with its parent anyway; macOS has no such signal, so
    without this a second launch would load a large model twice.
    """
    try:
        pid = int(spec.pidfile.read_text())
    except (OSError, ValueError):
        return
    if pid > 1 and is_our_server(pid, spec.model):
        log.warning("%s: stopping a server left running earlier (pid %d)", spec.name, pid)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGTERM)
        deadline = time.monotonic() + stop_timeout_s
        while _alive(pid) and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)
    with contextlib.suppress(OSError):
        spec.pidfile.unlink(missing_ok=True)
