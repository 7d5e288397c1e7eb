"""Fill a partial file from a ByteSource, hashing the bytes as they arrive.

Every file starts on one connection. A file of at least `min_size` bytes from a source
that can send byte ranges (the Hub, a mirror) may get more, adaptively: after each
measuring window the connections double, up to `connections`, for as long as doubling
raised the throughput (a CDN or a peer that caps each connection), and quadruple after a
doubling that nearly doubled it; when a step did not pay, fetch goes back to the last
level that did, and tries again after RETRY_STEP_S (then twice as long, and so on): one
window may have caught a new connection's slow start. A step is tried only while the
file's bytes still to come would take at least WORTH_S at the measured rate: a trial
costs a split and a window, so on a link one connection already fills, a file that ends
soon is never split. A new connection takes the back half of the first range with two
minimum parts still to come (so ranges at the front end first and the hashed prefix
follows), and a range that finishes early hands its connection half of such a range, at
the end of the largest one left, so every connection stays busy to the end.

Each range is written in place (`pwrite`). The hash covers the file in order, while it
downloads: a thread of the file's own reads the bytes written without a gap from the
start back (from the page cache) and hashes them, so no connection waits for hashing (a
small file's one connection hashes from memory). Ranges that end together leave most of
the file to hash after the last byte came; the fsync before publishing overlaps that.

Without `<partial>.ranges` the partial file is a prefix of the file and resumes at its
end. Once a file is split, every range's progress is kept there (written before a new
range writes anything, then at most once a second), so a killed fetch resumes every
range where it stopped. Nothing is trusted because it arrived: fetch compares the hash
with the lock before the blob is published.
"""

from __future__ import annotations

import collections
import contextlib
import json
import logging
import os
import stat as stat_mod
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Protocol, runtime_checkable

from mlxpin.config import DEFAULT_HUB_DEADLINE_S, Settings
from mlxpin.errors import ConfigError, MlxpinError
from mlxpin.project.lockfile import LockedFile, LockedModel
from mlxpin.store.sources import ByteSource
from mlxpin.util.hashing import OidHasher, oid_algorithm
from mlxpin.util.parallel import Cancelled, CancelToken
from mlxpin.util.retry import ClosedEarly, retry

log = logging.getLogger("mlxpin.fetch")

NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
ATTEMPTS = 5
RETRY_DELAY_S = 0.25  # doubles per attempt: 0.25 + 0.5 + 1 + 2 s before giving up
SAVE_EVERY_S = 1.0
WINDOW_S = 0.05  # how long the throughput of one level of connections is measured
GAIN = 1.5  # doubling the connections must raise the throughput at least this much
LINEAR = 1.8  # a doubling that raised it this much (a cap per connection) is followed by x4
WORTH_S = 2.0  # a step is tried only while the rest of the file would take this long
RETRY_STEP_S = 0.2  # a step that did not pay is tried again after this, doubling
READ_BACK = 4 << 20
HANDED = 4 << 20  # the most bytes writers hand a file's hashing thread at a time
# At the end, a new range takes half of the largest one left down to this: under a
# per-connection cap the last range's time on its one connection is the fetch's tail.
TAIL_PART = 1 << 20
FLUSH_EVERY = 32 << 20
_DATASYNC = getattr(os, "fdatasync", os.fsync)  # macOS has no fdatasync
PIPELINE_MIN = 4 << 20  # files at least this large are hashed on a thread of their own
MiB = 1024 * 1024
# Extra connections for the whole process (the HTTP client pools at most 100).
_EXTRA = threading.BoundedSemaphore(48)


@dataclass(frozen=True)
class RangePolicy:
    connections: int = 8  # at most this many ranges (and connections) per large file
    min_size: int = 64 * MiB  # smaller files come over one connection
    # A connection slower than this (bytes/s, averaged over the window) is given up on,
    # its resume point kept: a peer trickling a byte every 30 s never ends otherwise.
    min_rate: tuple[int, int] = (1024, 120)

    @classmethod
    def from_settings(cls, settings: Settings) -> RangePolicy:
        rate, _, window = settings.fetch_min_rate.partition(":")
        return cls(
            connections=_count("MLXPIN_FETCH_CONNECTIONS", settings.fetch_connections, 8, 64),
            min_size=_count("MLXPIN_RANGED_MIN_MB", settings.ranged_min_mb, 64, 1 << 30) * MiB,
            min_rate=(
                _count("MLXPIN_FETCH_MIN_RATE", rate, 1024, 1 << 30),
                _count("MLXPIN_FETCH_MIN_RATE (window)", window, 120, 86400),
            ),
        )

    def parts_for(self, size: int) -> int:
        """The most ranges for a file: up to `connections`, none smaller than
        min_size/connections (nor than 16 MiB when min_size is larger)."""
        if self.connections < 2 or size < self.min_size:
            return 1
        return max(1, min(self.connections, size // self.min_part()))

    def min_part(self) -> int:
        return max(1, min(16 * MiB, self.min_size // self.connections))


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
class RangedSource(ByteSource, Protocol):
    """A ByteSource that can also send a byte range [start, end) of a file."""

    ranges: RangePolicy | None

    def open_range(
        self, file: LockedFile, start: int, end: int
    ) -> contextlib.AbstractContextManager[tuple[int, Iterator[bytes]]]: ...


@dataclass
class _Part:
    start: int
    end: int  # lowered when a new range takes the back of this one
    done: int = 0

    @property
    def left(self) -> int:
        return self.end - self.start - self.done


@dataclass(frozen=True)
class Filled:
    oid: str  # the hash of what the partial file now holds
    received: int  # bytes that came over the wire in this run
    resumed: bool  # some bytes came from an earlier run


class _NoRanges(Exception):
    """The server ignored a Range request: start over on one connection."""


class _Hash:
    """A file's hash over the bytes written without a gap from its start. A large file's
    is extended by a thread of its own, so no connection ever waits for hashing, and the
    prefix moves on even when the range at its end has finished (hashlib releases the
    GIL): it hashes the chunks writers hand it at the end of the prefix from memory (up
    to HANDED bytes, never blocking a writer) and reads the rest back from the page
    cache. A small file's is extended by its writer, from memory."""

    def __init__(self, job: _Job) -> None:
        self.job = job
        self.hasher = OidHasher(oid_algorithm(job.file.oid), job.file.size)
        self.more = threading.Event()
        self.failure: BaseException | None = None
        # Chunks written at the end of what is hashed or handed, in order (under job.lock):
        # never a buffer that is written to again.
        self.handed: collections.deque[tuple[int, bytes | memoryview]] = collections.deque()
        self.handed_bytes = 0
        self.handed_end = 0
        self.thread: threading.Thread | None = None
        if job.file.size >= PIPELINE_MIN:
            self.thread = threading.Thread(target=self._follow, name="mlxpin-hash", daemon=True)
            self.thread.start()

    def _follow(self) -> None:
        try:
            while self.thread is not None:
                self.more.wait()
                self.more.clear()
                self.job.extend()
        except BaseException as exc:  # raised by oid(), in the fetching thread
            self.failure = exc

    def update(self, data: bytes | memoryview) -> None:
        self.hasher.update(data)

    def hand(self, at: int, view: memoryview) -> None:
        """Keep a chunk just written at `at` for the thread (held under job.lock)."""
        if at == self.handed_end and self.handed_bytes + len(view) <= HANDED:
            self.handed.append((at, view))
            self.handed_bytes += len(view)
            self.handed_end = at + len(view)

    def take(self, at: int) -> bytes | memoryview | None:
        """The handed bytes from `at` on, if they are at hand (held under job.lock)."""
        while self.handed:
            offset, view = self.handed.popleft()
            self.handed_bytes -= len(view)
            if offset + len(view) > at:
                if offset <= at:
                    return view[at - offset :]
                self.handed.appendleft((offset, view))
                self.handed_bytes += len(view)
                return None
        return None

    def oid(self) -> str:
        self.close()
        if self.failure is not None:
            raise self.failure
        self.job.extend()
        return self.hasher.oid()

    def close(self) -> None:
        thread, self.thread = self.thread, None
        if thread is not None:
            self.more.set()
            thread.join()


class _Flusher:
    """Sends a large file's bytes to disk while the rest still arrives (on a thread of its
    own, every FLUSH_EVERY bytes), so the fsync before publishing finds little to write:
    the page cache would otherwise hold them all until then."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.due = threading.Event()
        self.closing = False
        self.thread = threading.Thread(target=self._run, name="mlxpin-flush", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while self.due.wait() and not self.closing:
            self.due.clear()
            with contextlib.suppress(OSError):  # the final fsync says what went wrong
                _DATASYNC(self.fd)

    def close(self) -> None:
        self.closing = True
        self.due.set()
        self.thread.join()


class _Job:
    """One file's transfer: its ranges, the partial file, and the in-order hash."""

    def __init__(self, file: LockedFile, fd: int, parts: list[_Part], sidecar: Path) -> None:
        self.file = file
        self.fd = fd
        self.parts = parts  # in file order, covering it
        self.sidecar = sidecar
        self.lock = threading.Lock()
        self.hashed = 0  # the hash covers [0, hashed)
        self.hashing = False  # a thread is extending the hash
        self.received = 0
        self.saved = 0.0
        self.unflushed = 0
        self.hash = _Hash(self)
        self.flusher = _Flusher(fd) if self.hash.thread is not None else None

    def write(self, part: _Part, chunk: bytes) -> int:
        """Write the next bytes of `part` (as many as still belong to it); a small file's
        writer hashes them at once if they extend the hashed prefix. Returns how many
        were taken."""
        view = memoryview(chunk)
        following = self.hash.thread is not None
        with self.lock:
            at = part.start + part.done
            view = view[: max(0, part.end - at)]
            written = 0
            while written < len(view):
                written += os.pwrite(self.fd, view[written:], at + written)
            part.done += len(view)
            self.received += len(view)
            self.unflushed += len(view)
            if self.flusher is not None and self.unflushed >= FLUSH_EVERY:
                self.unflushed = 0
                self.flusher.due.set()
            mine = not following and not self.hashing and self.hashed == at
            self.hashing |= mine
            if following:
                self.hash.hand(at, view)
        if mine:
            self.hash.update(view)
            self.extend(at + len(view))
        elif following:
            self.hash.more.set()
        if len(self.parts) > 1:
            self.save()
        return len(view)

    def close(self) -> None:
        self.hash.close()
        if self.flusher is not None:
            self.flusher.close()

    def catch_up(self) -> None:
        """Hash what lies written past the hashed prefix (a large file's thread does)."""
        if self.hash.thread is not None:
            self.hash.more.set()
        else:
            self.extend()

    def extend(self, at: int | None = None) -> None:
        """Hash what lies written past the hashed prefix. With `at`, the caller holds the
        turn and has hashed up to `at`; without, it takes the turn if it is free."""
        if at is None:
            with self.lock:
                if self.hashing:
                    return
                self.hashing, at = True, self.hashed
        while True:
            with self.lock:
                self.hashed = at
                end = self._written_from(at)
                if end == at:
                    self.hashing = False
                    self.hash.handed_end = at  # caught up: writers may hand chunks again
                    return
            while at < end:
                with self.lock:
                    data = self.hash.take(at)
                if data is None:
                    data = os.pread(self.fd, min(READ_BACK, end - at), at)
                if not data:
                    raise OSError(0, "the partial file shrank", str(self.sidecar.with_suffix("")))
                self.hash.update(data)
                at += len(data)

    def _written_from(self, at: int) -> int:
        """The end of the bytes written without a gap from `at` (held under the lock)."""
        for part in self.parts:
            if part.end <= at:
                continue
            at = max(at, part.start + part.done)
            if part.left:
                break
        return at

    def split(self, min_part: int, least: int | None = None) -> _Part | None:
        """A new range: the back half of the first range with 2 * `min_part` left, else of
        the largest one with 2 * `least` left (the tail), if any. The first, not the
        largest: front ranges end early and the hashed prefix moves on meanwhile, where
        ranges of one size would all end with the last byte, leaving the file to hash."""
        floor = min_part if least is None else least
        with self.lock:
            worth = (p for p in self.parts if p.left >= 2 * min_part)
            chosen = next(worth, None) or max(self.parts, key=lambda p: p.left)
            if chosen.left < 2 * floor:
                return None
            middle = chosen.end - chosen.left // 2
            new = _Part(middle, chosen.end)
            chosen.end = middle
            self.parts.insert(self.parts.index(chosen) + 1, new)
        self.save(force=True)  # before the new range writes a byte
        return new

    def save(self, force: bool = False) -> None:
        """Keep every range's progress beside the partial (at most once a second)."""
        now = time.monotonic()
        if not force and now - self.saved < SAVE_EVERY_S:
            return
        with self.lock:
            self.saved = now
            data = {"size": self.file.size, "parts": [[p.start, p.end, p.done] for p in self.parts]}
            tmp = self.sidecar.with_name(f"{self.sidecar.name}.tmp-{threading.get_ident()}")
            # Not fsync'd: after a power cut the hash check catches stale progress.
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | NOFOLLOW, 0o644)
            with os.fdopen(fd, "w") as handle:
                json.dump(data, handle)
            os.replace(tmp, self.sidecar)


@dataclass(frozen=True)
class Transfer:
    """One file on its way from a source into its partial file (`cancel` stops it)."""

    source: ByteSource
    lock: LockedModel
    file: LockedFile
    partial: Path
    progress: Progress
    cancel: CancelToken


def fill(transfer: Transfer) -> Filled:
    """Fill the partial file with the file's bytes, resuming what an earlier run left;
    returns the hash of what it holds (the caller compares it with the lock)."""
    source, partial = transfer.source, transfer.partial
    policy = source.ranges if isinstance(source, RangedSource) else None
    try:
        return _fill(transfer, policy)
    except _NoRanges:
        name, path = transfer.lock.name, transfer.file.path
        log.info("%s: the server ignores ranges; %s on one connection", name, path)
        for stale in (partial, partial.with_name(partial.name + ".ranges")):
            with contextlib.suppress(FileNotFoundError):
                stale.unlink()
        return _fill(transfer, None)


def _fill(transfer: Transfer, policy: RangePolicy | None) -> Filled:
    file, partial = transfer.file, transfer.partial
    sidecar = partial.with_name(partial.name + ".ranges")
    parts = _load(sidecar, file.size) if policy is not None else None
    if parts is None:
        parts = [_Part(0, file.size, _prefix(partial, file.size))]
    fd = os.open(partial, os.O_RDWR | os.O_CREAT | NOFOLLOW, 0o644)
    job: _Job | None = None
    try:
        st = os.fstat(fd)
        if not stat_mod.S_ISREG(st.st_mode):
            raise OSError(0, "not a regular file", str(partial))
        # Progress without its bytes; a range split off past the end has none yet.
        if any(p.done and p.start + p.done > st.st_size for p in parts):
            parts = [_Part(0, file.size)]
        if st.st_size > file.size:
            os.ftruncate(fd, file.size)
        job = _Job(file, fd, parts, sidecar)
        already = sum(p.done for p in parts)
        transfer.progress.advance(already)
        if already:
            log.debug("%s: resuming %s with %d bytes there", transfer.lock.name, file.path, already)
        limit = 1 if policy is None else policy.parts_for(file.size)
        if limit < 2 and len(parts) == 1:
            _pull(transfer, job, parts[0])
        else:
            assert policy is not None
            _drive(transfer, job, limit, policy.min_part())
        oid = _hash_and_sync(job)
    finally:
        if job is not None:
            job.close()
        os.close(fd)
    with contextlib.suppress(FileNotFoundError):
        sidecar.unlink()
    return Filled(oid, job.received, already > 0)


def _hash_and_sync(job: _Job) -> str:
    """The file's hash, while its bytes go to disk. A split file's ranges end together,
    so most of it is hashed (read back) after its last byte came: fsync overlaps that."""
    if job.hash.thread is None:
        oid = job.hash.oid()
        os.fsync(job.fd)
        return oid
    failed: list[OSError] = []

    def sync() -> None:
        try:
            os.fsync(job.fd)
        except OSError as exc:  # raised below, in the fetching thread
            failed.append(exc)

    syncing = threading.Thread(target=sync, name="mlxpin-fsync")
    syncing.start()
    try:
        oid = job.hash.oid()
    finally:
        syncing.join()
    if failed:
        raise failed[0]
    return oid


def _drive(transfer: Transfer, job: _Job, limit: int, min_part: int) -> None:
    """Run the ranges' connections; double them while that raises the throughput."""
    lock, cancel = transfer.lock, transfer.cancel
    stop = CancelToken()  # this file's: a failed range stops the others
    ranges = replace(transfer, cancel=stop)
    wake = threading.Event()
    failures: list[BaseException] = []
    running: list[tuple[_Part, threading.Thread]] = []

    def run(part: _Part, extra: bool) -> None:
        try:
            _pull(ranges, job, part)
        except BaseException as exc:  # handed to the driving thread
            failures.append(exc)
            stop.cancel()
        finally:
            if extra:
                _EXTRA.release()
            wake.set()

    def start(part: _Part, extra: bool) -> None:
        thread = threading.Thread(target=run, args=(part, extra), name="mlxpin-range")
        running.append((part, thread))
        thread.start()

    for part in job.parts:
        if part.left:
            start(part, False)
    level = max(1, len(running))
    rate = 0.0  # of the last level that paid
    paid = level
    window: tuple[float, int] | None = None  # (start, bytes received by then)
    growing = limit > level
    again, pause = 0.0, RETRY_STEP_S  # after a step that did not pay: when to try anew
    try:
        while any(thread.is_alive() for _, thread in running):
            wake.wait(0.01)
            wake.clear()
            if failures or cancel.cancelled:
                break
            busy = sum(1 for part, thread in running if thread.is_alive() and part.left)
            while busy < level and _EXTRA.acquire(blocking=False):
                new = job.split(min_part, min(min_part, TAIL_PART))
                if new is None:
                    _EXTRA.release()
                    break
                start(new, True)
                busy += 1
            now = time.monotonic()
            if not growing:
                if not again or now < again:
                    continue
                # One window is a short sample: a step may have failed on noise or on a
                # new connection's slow start. Measure the level running now, then step.
                level = paid = max(paid, busy)
                rate, window, again, growing = 0.0, None, 0.0, level < limit
                continue
            if window is None:
                if all(p.done or not p.left for p, t in running if t.is_alive()):
                    window = (now, job.received)  # every connection is flowing
            elif now - window[0] >= WINDOW_S:
                measured = (job.received - window[1]) / (now - window[0])
                log.debug(
                    "%s: %s: %.0f MB/s on %d", lock.name, job.file.path, measured / 1e6, level
                )
                if measured >= rate * GAIN:
                    step = 4 if rate and measured >= rate * LINEAR else 2
                    rate, paid, level, window = measured, level, min(limit, level * step), None
                else:
                    level, growing = paid, False
                    again, pause = now + pause, pause * 2
                if growing and sum(p.left for p in job.parts) < measured * WORTH_S:
                    level, growing = paid, False  # the file ends soon: not worth a trial
                    again = 0.0
                growing = growing and level < limit
    finally:
        stop.cancel()
        for _, thread in running:
            thread.join()
        if len(job.parts) > 1:
            job.save(force=True)
    cancel.raise_if_cancelled()
    if failures:
        raise next((f for f in failures if not isinstance(f, Cancelled)), failures[0])


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
        if part.start != position or not 0 <= part.done <= part.end - part.start:
            return None
        position = part.end
    return parts if position == size else None


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


def _pull(transfer: Transfer, job: _Job, part: _Part) -> None:
    """Receive one range, retrying and resuming it where it stopped (until
    `transfer.cancel`)."""
    source, lock, file, progress = transfer.source, transfer.lock, transfer.file, transfer.progress
    stop = transfer.cancel
    job.catch_up()  # resumed bytes at the front: hash them before more arrive

    def attempt() -> None:
        if not part.left:
            return
        at, asked = part.start + part.done, part.end
        if asked == file.size or not isinstance(source, RangedSource):
            opened = source.open(file, at)  # to the end: a plain GET from 0
        else:
            opened = source.open_range(file, at, asked)
        with opened as (start, chunks):
            if start != at:
                if at == 0:
                    raise source.give_up(file, "the server answered an unexpected range")
                raise _NoRanges()
            since, got = time.monotonic(), 0
            for chunk in chunks:
                stop.raise_if_cancelled()
                got += len(chunk)
                if time.monotonic() - since >= window:
                    if got < rate * window:
                        job.save(force=True)
                        raise source.give_up(file, f"too slow: {got} bytes in {window} s")
                    since, got = time.monotonic(), 0
                taken = job.write(part, chunk)
                progress.advance(taken)
                if taken < len(chunk) and part.end == asked:
                    raise source.mismatch_hint(lock, file, _overrun(file, asked))
                if not part.left:
                    break  # done, or the rest of this range went to another connection
        if part.left:
            raise ClosedEarly()

    def failure(exc: Exception) -> MlxpinError | None:
        if isinstance(exc, ClosedEarly) or source.interrupted(exc):
            return source.give_up(file, str(exc) or "connection closed early")
        return None

    rate, window = (getattr(source, "ranges", None) or RangePolicy()).min_rate
    limited_until = time.monotonic() + getattr(source, "deadline_s", DEFAULT_HUB_DEADLINE_S)

    def pause(exc: Exception, delay: float) -> None:
        if asked(exc) is not None and time.monotonic() + delay >= limited_until:
            raise source.give_up(file, str(exc))
        where = part.start + part.done
        said = log.debug if said_once else log.info  # one line per range, not per retry
        said("%s: %s interrupted at byte %d (%s), retrying", lock.name, file.path, where, exc)
        said_once.append(True)
        stop.wait(delay)

    def asked(exc: Exception) -> float | None:
        wait = getattr(exc, "retry_after", None)
        return wait if isinstance(wait, float) else None

    said_once: list[bool] = []
    retry(attempt, ATTEMPTS, RETRY_DELAY_S, failure, pause, max_delay=8.0, asked=asked)


def _overrun(file: LockedFile, end: int) -> str:
    if end == file.size:
        return f"are longer than the locked {file.size} bytes"
    return f"run past the requested range's end (byte {end})"
