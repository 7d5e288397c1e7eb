"""The bundle format: one uncompressed tar that carries locks and exactly their bytes.

Version 1, members in this order (``tar -tf bundle.tar`` lists them)::

    mlxpin-bundle.json        the index: {"format": "mlxpin-bundle", "version": 1,
                              "models": [{name, lock, repo, path, commit, tree_hash,
                              files, total_size}], "blobs": N, "bytes": B}
    locks/<name>.toml         each model's lock, byte for byte as `mlxpin lock` writes it
    blobs/<algo>/<hex>        each distinct file content once, named by its oid
                              (sha256 for LFS and local files, gitsha1 for plain files)

Weights do not compress, so there is no compression; members are plain ustar regular
files (a pax header only for a file of 8 GiB or more), mode 0444/0644, mtime 0, owner
0, so the same pins always give the same bytes. The writer streams (memory does not grow
with the model); the reader accepts only what the writer produces and never lets a
member's name choose where bytes go: blobs are placed by the oid in the lock.
"""

from __future__ import annotations

import contextlib
import fcntl
import io
import json
import os
import re
import tarfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import BinaryIO

from mlxpin.errors import BundleError
from mlxpin.project.lockfile import LockedModel
from mlxpin.project.validate import NAME_RE
from mlxpin.util.hashing import CHUNK, oid_algorithm, oid_hex

FORMAT = "mlxpin-bundle"
VERSION = 1
INDEX_MEMBER = "mlxpin-bundle.json"
MAX_INDEX_BYTES = 16 << 20
MAX_LOCK_BYTES = 64 << 20
BLOCK = 512
_BLOB_RE = re.compile(r"blobs/(?:sha256/[0-9a-f]{64}|gitsha1/[0-9a-f]{40})")
_LOCK_RE = re.compile(r"locks/([^/]+)\.toml")
_TRUNCATED = "the bundle ends early (truncated)"


def blob_member(oid: str) -> str:
    return f"blobs/{oid_algorithm(oid)}/{oid_hex(oid)}"


def lock_member(name: str) -> str:
    return f"locks/{name}.toml"


def _bundle_member(name: str) -> bool:
    if name == INDEX_MEMBER or _BLOB_RE.fullmatch(name):
        return True
    match = _LOCK_RE.fullmatch(name)
    return match is not None and NAME_RE.fullmatch(match.group(1)) is not None


# --- the index ---------------------------------------------------------------------------


@dataclass(frozen=True)
class IndexModel:
    name: str
    lock: str  # member name
    tree_hash: str


@dataclass(frozen=True)
class BundleIndex:
    version: int
    models: tuple[IndexModel, ...]
    blobs: int
    bytes: int


def render_index(locks: tuple[LockedModel, ...], blobs: int, nbytes: int) -> bytes:
    data = {
        "format": FORMAT,
        "version": VERSION,
        "models": [
            {
                "name": lock.name,
                "lock": lock_member(lock.name),
                "repo": lock.original.repo,
                "path": lock.original.path,
                "commit": lock.commit,
                "tree_hash": lock.tree_hash,
                "files": len(lock.files),
                "total_size": lock.total_size,
            }
            for lock in locks
        ],
        "blobs": blobs,
        "bytes": nbytes,
    }
    return (json.dumps(data, indent=1, sort_keys=True) + "\n").encode()


def parse_index(data: bytes, label: str) -> BundleIndex:
    def bad(problem: str) -> BundleError:
        return BundleError(label, INDEX_MEMBER, problem)

    try:
        raw = json.loads(data)
    except (UnicodeDecodeError, ValueError):
        raise bad("is not JSON") from None
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        raise bad("is not an mlxpin bundle index")
    if raw.get("version") != VERSION:
        raise BundleError(
            label,
            INDEX_MEMBER,
            f"bundle format version {raw.get('version')!r} is not supported (this mlxpin "
            f"reads version {VERSION}); import it with the mlxpin that exported it",
        )
    models: list[IndexModel] = []
    entries = raw.get("models")
    if not isinstance(entries, list) or not entries:
        raise bad("lists no models")
    for entry in entries:
        if not isinstance(entry, dict):
            raise bad("has a malformed model entry")
        name, tree = entry.get("name"), entry.get("tree_hash")
        if not isinstance(name, str) or not NAME_RE.fullmatch(name) or not isinstance(tree, str):
            raise bad(f"has a malformed model entry {name!r}")
        if entry.get("lock") != lock_member(name) or any(m.name == name for m in models):
            raise bad(f"model {name!r} is listed twice or with another lock member")
        models.append(IndexModel(name, lock_member(name), tree))
    blobs, nbytes = raw.get("blobs"), raw.get("bytes")
    for value in (blobs, nbytes):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise bad("has malformed blob counts")
    assert isinstance(blobs, int) and isinstance(nbytes, int)
    return BundleIndex(VERSION, tuple(models), blobs, nbytes)


def _widen_pipe(stream: BinaryIO) -> None:
    """A pipe of 1 MiB instead of 64 KiB: 16 times fewer reads, writes and wake-ups."""
    with contextlib.suppress(OSError, ValueError, AttributeError):
        fcntl.fcntl(stream.fileno(), fcntl.F_SETPIPE_SZ, 1 << 20)  # Linux only


# --- writing -----------------------------------------------------------------------------


def _header(name: str, size: int, mode: int) -> bytes:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mode = mode
    info.mtime = 0
    info.type = tarfile.REGTYPE
    info.uname = info.gname = ""
    return info.tobuf(tarfile.PAX_FORMAT, "utf-8", "strict")


class BundleWriter:
    """Appends members to a tar stream; `close` writes the end-of-archive blocks."""

    def __init__(self, out: BinaryIO) -> None:
        self.out = out
        self.written = 0
        _widen_pipe(out)

    def add_bytes(self, name: str, data: bytes) -> None:
        self.add_file(name, io.BytesIO(data), len(data), 0o644)

    def add_file(self, name: str, handle: BinaryIO, size: int, mode: int = 0o444) -> None:
        """Copy exactly `size` bytes from `handle` (ValueError if it holds fewer)."""
        header, padding = _header(name, size, mode), bytes(-size % BLOCK)
        self.out.write(header)
        remaining = size - self._send(handle, size)
        while remaining:
            data = handle.read(min(CHUNK, remaining))
            if not data:
                raise ValueError(f"{name}: file ended {remaining} bytes early")
            self.out.write(data)
            remaining -= len(data)
        self.out.write(padding)
        self.written += len(header) + size + len(padding)

    def _send(self, handle: BinaryIO, size: int) -> int:
        """Copy what the kernel can copy without us (sendfile: a file to a pipe or file);
        returns the bytes sent, 0 where it does not apply."""
        try:
            out, source, start = self.out.fileno(), handle.fileno(), handle.tell()
            self.out.flush()
        except (OSError, ValueError):  # no descriptor (a buffer in memory)
            return 0
        sent = 0
        with contextlib.suppress(OSError):  # not supported here: the loop copies
            while sent < size and (step := os.sendfile(out, source, start + sent, size - sent)):
                sent += step
        handle.seek(start + sent)
        return sent

    def close(self) -> None:
        self.out.write(bytes(2 * BLOCK))
        self.written += 2 * BLOCK
        self.out.flush()


# --- reading -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Member:
    name: str
    size: int


def _pax(data: bytes) -> dict[str, str]:
    """The records of a pax extended header ("<length> <key>=<value>\n" each)."""
    fields: dict[str, str] = {}
    while data:
        length = int(data[: data.index(b" ")])
        if length < 1:
            raise ValueError("not a pax record")
        record, data = data[:length], data[length:]
        key, equals, value = record[record.index(b" ") + 1 :].partition(b"=")
        if not equals or not value.endswith(b"\n"):
            raise ValueError("not a pax record")
        fields[key.decode()] = value[:-1].decode()
    return fields


class BundleReader:
    """Reads members in order from a stream (a file or a pipe); strict about what it takes:
    only what the writer writes, regular files each after at most one pax header, with
    our member names (or those `accepts` takes). Anything else, a bad header checksum or
    a stream that ends early raises BundleError naming the member. `current` is the member
    being read, if any.
    """

    def __init__(
        self, stream: BinaryIO, label: str, accepts: Callable[[str], bool] = _bundle_member
    ) -> None:
        self.stream = stream
        self.label = label
        self.accepts = accepts
        _widen_pipe(stream)
        self.current: Member | None = None
        self.received = 0  # bytes of the archive read so far
        self._left = 0  # of the current member's bytes and padding

    def _read(self, size: int, where: str) -> bytes:
        data = self.stream.read(size)
        self.received += len(data)
        if len(data) < size:
            raise BundleError(self.label, where, _TRUNCATED)
        return data

    def _header(self, where: str) -> tarfile.TarInfo | None:
        block = self._read(BLOCK, where)
        if block == bytes(BLOCK):
            return None
        try:
            return tarfile.TarInfo.frombuf(block, "utf-8", "strict")
        except (tarfile.HeaderError, UnicodeError) as exc:
            raise BundleError(self.label, where, f"a damaged tar header ({exc})") from None

    def next(self) -> Member | None:
        """The next member, or None at the end of the archive."""
        current, self.current = self.current, None
        where = "the start" if current is None else f"the member after {current.name}"
        while self._left:  # what the caller did not read of the last member
            self._left -= len(
                self._read(min(CHUNK, self._left), current.name if current else where)
            )
        info = self._header(where)
        if info is None:
            self._read(BLOCK, where)  # the second end-of-archive block
            return None
        if info.type == tarfile.XHDTYPE:
            if info.size > 64 * 1024:
                raise BundleError(self.label, where, "an oversized or repeated extended header")
            data = self._read(info.size + -info.size % BLOCK, where)[: info.size]
            extended = self._header(where)
            if extended is None:
                raise BundleError(self.label, where, "an extended header without a member")
            if extended.type == tarfile.XHDTYPE:
                raise BundleError(self.label, where, "an oversized or repeated extended header")
            try:
                fields = _pax(data)
                extended.name = fields.get("path", extended.name)
                extended.size = int(fields.get("size", extended.size))
            except (ValueError, UnicodeError):
                raise BundleError(self.label, where, "a malformed extended header") from None
            info = extended
        if info.type not in (tarfile.REGTYPE, tarfile.AREGTYPE):
            raise BundleError(self.label, info.name, "is not a regular file (links are refused)")
        if info.size < 0:
            raise BundleError(self.label, where, "a malformed extended header")
        if not self.accepts(info.name):
            raise BundleError(self.label, info.name, "is not a member an mlxpin bundle can hold")
        self.current = Member(info.name, info.size)
        self._left = info.size + -info.size % BLOCK
        return self.current

    def chunks(self, member: Member) -> Iterator[bytes]:
        """The rest of the member's bytes, in chunks of at most CHUNK."""
        while self.current is member and self._left > -member.size % BLOCK:
            data = self._read(min(CHUNK, self._left - -member.size % BLOCK), member.name)
            self._left -= len(data)
            yield data

    def read_small(self, member: Member, limit: int) -> bytes:
        if member.size > limit:
            raise BundleError(self.label, member.name, f"is larger than {limit} bytes")
        return b"".join(self.chunks(member))
