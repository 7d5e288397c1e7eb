"""Fetch one large file over several ranged connections at once.

A CDN or a peer often caps each connection well below the link; `hf_transfer` and
`hf_xet` exist for that reason. Here a file of at least `min_size` bytes is split into up
to `connections` byte ranges, each pulled on its own connection straight into its place
in the partial file (`pwrite`), each retried and resumed on its own. What every range
has received is kept beside the partial (`<partial>.ranges`, rewritten at most once a
second), so an interrupted fetch resumes every range where it stopped.

Nothing is trusted because it arrived: once every range is complete, fetch hashes the
whole partial file against the lock before the blob is published, exactly as for a
single-connection download (and starts afresh once when resumed bytes do not match).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import os
import stat as stat_mod
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

from mlxpin.config import Settings
from mlxpin.errors import ConfigError, MlxpinError
from mlxpin.project.lockfile import LockedFile, LockedModel
from mlxpin.util.parallel import Cancelled, CancelToken, run_parallel
from mlxpin.util.retry import ClosedEarly, retry

log = logging.getLogger("mlxpin.fetch")

NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
ATTEMPTS = 5
SAVE_EVERY_S = 1.0
MiB = 1024 * 1024


@dataclass(frozen=True)
class RangePolicy:
    connections: int = 8  # ranges (and connections) per large file
    min_size: int = 64 * MiB  # smaller files come over one connection

    @classmethod
    def from_settings(cls, settings: Settings) -> RangePolicy:
        return cls(
            connections=_count("MLXPIN_FETCH_CONNECTIONS", settings.fetch_connections, 8, 64),
            min_size=_count("MLXPIN_RANGED_MIN_MB", settings.ranged_min_mb, 64, 1 << 30) * MiB,
        )

    def parts_for(self, size: int) -> int:
        """How many ranges: up to `connections`, none smaller than min_size/connections
        (nor than 16 MiB when min_size is larger)."""
        if self.connections < 2 or size < self.min_size:
            return 1
        min_part = max(1, min(16 * MiB, self.min_size // self.connections))
        return max(1, min(self.connections, size // min_part))


def _count(name: str, raw: str, default: int, high: int) -> int:
    if not raw:
        return default
    if not raw.isdigit() or not 1 <= int(raw) <= high:
        raise ConfigError(
            f"{name}={raw!r} is not a whole number from 1 to {high}",
            f"set it to a number in that range, or unset it (default {default})",
        )
    return int(raw)


class Progress(Protocol):
    def advance(self, nbytes: int) -> None: ...


@runtime_checkable
class RangedSource(Protocol):
    """A ByteSource that can also send a byte range [start, end) of a file."""

    ranges: RangePolicy | None

    def open_range(
        self, file: LockedFile, start: int, end: int
    ) -> contextlib.AbstractContextManager[tuple[int, Iterator[bytes]]]: ...

    def interrupted(self, exc: Exception) -> bool: ...

    def give_up(self, file: LockedFile, cause: str) -> MlxpinError: ...

    def mismatch_hint(self, lock: LockedModel, file: LockedFile, problem: str) -> MlxpinError: ...


@dataclass
class _Part:
    start: int
    end: int
    done: int = 0

    @property
    def size(self) -> int:
        return self.end - self.start


@dataclass(frozen=True)
class RangedFill:
    received: int  # bytes that came over the wire in this run
    resumed: bool  # some bytes came from an earlier run


class _NoRanges(Exception):
    """The server ignored a Range request: fall back to one connection."""


def split(size: int, prefix: int, count: int) -> list[_Part]:
    """`count` ranges over [0, size); bytes before `prefix` are already there."""
    bounds = [size * i // count for i in range(count + 1)]
    parts = []
    for start, end in itertools.pairwise(bounds):
        parts.append(_Part(start, end, max(0, min(prefix, end) - start)))
    return parts


def _load(sidecar: Path, size: int) -> list[_Part] | None:
    try:
        data = json.loads(sidecar.read_bytes())
        parts = [_Part(int(s), int(e), int(d)) for s, e, d in data["parts"]]
        if data["size"] != size:
            return None
    except (OSError, ValueError, KeyError, TypeError):
        return None
    position = 0
    for part in parts:  # contiguous, in order, covering the file
        if part.start != position or not 0 <= part.done <= part.size:
            return None
        position = part.end
    return parts if position == size else None


class _Saver:
    """Writes the ranges' progress beside the partial, at most once a second."""

    def __init__(self, sidecar: Path, size: int, parts: list[_Part]) -> None:
        self.sidecar = sidecar
        self.size = size
        self.parts = parts
        self.lock = threading.Lock()
        self.last = 0.0

    def save(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self.last < SAVE_EVERY_S:
            return
        with self.lock:
            self.last = now
            data = {"size": self.size, "parts": [[p.start, p.end, p.done] for p in self.parts]}
            tmp = self.sidecar.with_name(self.sidecar.name + f".tmp-{threading.get_ident()}")
            # Not fsync'd: after a power cut the final hash check catches stale progress.
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | NOFOLLOW, 0o644)
            with os.fdopen(fd, "w") as handle:
                json.dump(data, handle)
            os.replace(tmp, self.sidecar)


def fill_ranged(
    source: object,
    lock: LockedModel,
    file: LockedFile,
    partial: Path,
    progress: Progress,
    cancel: CancelToken,
) -> RangedFill | None:
    """Fill `partial` completely over several ranges; None when this file or source does
    not use ranges (the caller then streams it over one connection)."""
    if not isinstance(source, RangedSource) or source.ranges is None:
        return None
    count = source.ranges.parts_for(file.size)
    if count < 2:
        return None
    sidecar = partial.with_name(partial.name + ".ranges")
    parts = _load(sidecar, file.size)
    if parts is None:
        prefix = _prefix(partial, file.size)
        parts = split(file.size, prefix, count)
    saver = _Saver(sidecar, file.size, parts)
    already = sum(p.done for p in parts)
    if already == file.size:
        with contextlib.suppress(FileNotFoundError):
            sidecar.unlink()
        return RangedFill(0, True)
    saver.save(force=True)  # before the partial grows to full size
    fd = os.open(partial, os.O_RDWR | os.O_CREAT | NOFOLLOW, 0o644)
    try:
        if not stat_mod.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(0, "not a regular file", str(partial))
        if os.fstat(fd).st_size != file.size:
            os.ftruncate(fd, file.size)
        progress.advance(already)
        received = [0]
        counter = threading.Lock()

        def pull(part: _Part) -> None:
            got = _pull(source, lock, file, fd, part, progress, saver, cancel)
            with counter:
                received[0] += got

        pending = [p for p in parts if p.done < p.size]
        log.debug("%s: %s over %d ranges", lock.name, file.path, len(pending))
        try:
            run_parallel(pull, pending, workers=len(pending), cancel=cancel)
        finally:
            saver.save(force=True)
        os.fsync(fd)
    except _NoRanges:
        log.info(
            "%s: the server ignores ranges; fetching %s over one connection", lock.name, file.path
        )
        os.close(fd)
        fd = -1
        for path in (partial, sidecar):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        return None
    finally:
        if fd >= 0:
            os.close(fd)
    with contextlib.suppress(FileNotFoundError):
        sidecar.unlink()
    return RangedFill(received[0], already > 0)


def _prefix(partial: Path, size: int) -> int:
    """Bytes a single-connection fetch left in the partial file (a prefix of the file)."""
    try:
        st = os.lstat(partial)
    except FileNotFoundError:
        return 0
    if not stat_mod.S_ISREG(st.st_mode) or st.st_size > size:
        partial.unlink()
        return 0
    return st.st_size


def _pull(
    source: RangedSource,
    lock: LockedModel,
    file: LockedFile,
    fd: int,
    part: _Part,
    progress: Progress,
    saver: _Saver,
    cancel: CancelToken,
) -> int:
    received = 0

    def attempt() -> None:
        nonlocal received
        if part.done == part.size:
            return
        wanted = part.start + part.done
        with source.open_range(file, wanted, part.end) as (start, chunks):
            if start != wanted:
                raise _NoRanges()
            for chunk in chunks:
                cancel.raise_if_cancelled()
                if part.done + len(chunk) > part.size:
                    raise source.mismatch_hint(
                        lock, file, f"overran the range {part.start}-{part.end - 1}"
                    )
                view = memoryview(chunk)
                while view:
                    written = os.pwrite(fd, view, part.start + part.done)
                    view = view[written:]
                    part.done += written
                received += len(chunk)
                progress.advance(len(chunk))
                saver.save()
        if part.done != part.size:
            raise ClosedEarly()

    def failure(exc: Exception) -> MlxpinError | None:
        if isinstance(exc, _NoRanges | Cancelled | MlxpinError):
            return None
        if isinstance(exc, ClosedEarly) or source.interrupted(exc):
            return source.give_up(file, str(exc) or "connection closed early")
        return None

    def pause(exc: Exception, delay: float) -> None:
        where = part.start + part.done
        log.info("%s: %s range %d- interrupted (%s), retrying", lock.name, file.path, where, exc)
        cancel.wait(delay)

    retry(attempt, ATTEMPTS, 0.25, failure, pause, max_delay=8.0)
    return received
