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

import json
import re
import tarfile
from collections.abc import Iterator
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


def blob_member(oid: str) -> str:
    return f"blobs/{oid_algorithm(oid)}/{oid_hex(oid)}"


def lock_member(name: str) -> str:
    return f"locks/{name}.toml"


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


# --- writing -----------------------------------------------------------------------------


def _header(name: str, size: int, mode: int) -> bytes:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mode = mode
    info.mtime = 0
    info.type = tarfile.REGTYPE
    info.uname = info.gname = ""
    return info.tobuf(tarfile.PAX_FORMAT, "utf-8", "strict")


def _padding(size: int) -> bytes:
    return b"\0" * (-size % BLOCK)


class BundleWriter:
    """Appends members to a tar stream; `close` writes the end-of-archive blocks."""

    def __init__(self, out: BinaryIO) -> None:
        self.out = out
        self.written = 0
        self._buffer = bytearray(CHUNK)

    def _write(self, data: bytes | memoryview) -> None:
        self.out.write(data)
        self.written += len(data)

    def add_bytes(self, name: str, data: bytes) -> None:
        self._write(_header(name, len(data), 0o644))
        self._write(data)
        self._write(_padding(len(data)))

    def add_file(self, name: str, handle: BinaryIO, size: int) -> None:
        """Copy exactly `size` bytes from `handle` (ValueError if it holds fewer)."""
        self._write(_header(name, size, 0o444))
        remaining = size
        view = memoryview(self._buffer)
        while remaining:
            count = handle.readinto(view[: min(CHUNK, remaining)])  # type: ignore[attr-defined]
            if not count:
                raise ValueError(f"{name}: file ended {remaining} bytes early")
            self._write(view[:count])
            remaining -= count
        self._write(_padding(size))

    def close(self) -> None:
        self._write(b"\0" * (2 * BLOCK))
        self.out.flush()


# --- reading -----------------------------------------------------------------------------


@dataclass
class Member:
    name: str
    size: int
    consumed: int = 0


class BundleReader:
    """Reads members in order from a stream (a file or a pipe); strict about what it takes.

    Anything but regular files with our member names, a bad header checksum or a stream
    that ends early raises BundleError naming the member.
    """

    def __init__(self, stream: BinaryIO, label: str) -> None:
        self.stream = stream
        self.label = label
        self.received = 0
        self._current: Member | None = None

    def _read_exact(self, size: int, member: str) -> bytes:
        data = self.stream.read(size)
        if data is None:
            data = b""
        while len(data) < size:
            more = self.stream.read(size - len(data))
            if not more:
                raise BundleError(self.label, member, "the bundle ends early (truncated)")
            data += more
        self.received += size
        return data

    def _finish_current(self) -> None:
        member = self._current
        if member is None:
            return
        for _ in self.chunks(member):
            pass
        self._read_exact(-member.size % BLOCK, member.name)
        self._current = None

    def next(self) -> Member | None:
        """The next member, or None at the end of the archive."""
        where = "the start" if self._current is None else f"the member after {self._current.name}"
        self._finish_current()
        pax: dict[str, str] = {}
        while True:
            block = self._read_exact(BLOCK, where)
            if block == b"\0" * BLOCK:
                if pax:
                    raise BundleError(self.label, where, "an extended header without a member")
                self._read_exact(BLOCK, where)  # the second end-of-archive block
                return None
            try:
                info = tarfile.TarInfo.frombuf(block, "utf-8", "strict")
            except (tarfile.HeaderError, UnicodeDecodeError) as exc:
                raise BundleError(self.label, where, f"a damaged tar header ({exc})") from None
            if info.type == tarfile.XHDTYPE and not pax:
                if info.size > 64 * 1024:
                    raise BundleError(self.label, where, "an oversized extended header")
                raw = self._read_exact(info.size + (-info.size % BLOCK), where)[: info.size]
                pax = _parse_pax(raw, self.label, where)
                continue
            name = pax.get("path", info.name)
            size = int(pax["size"]) if "size" in pax else info.size
            if info.type not in (tarfile.REGTYPE, tarfile.AREGTYPE):
                raise BundleError(self.label, name, "is not a regular file (links are refused)")
            if name != INDEX_MEMBER and not _BLOB_RE.fullmatch(name):
                match = _LOCK_RE.fullmatch(name)
                if match is None or not NAME_RE.fullmatch(match.group(1)):
                    raise BundleError(self.label, name, "is not a member an mlxpin bundle can hold")
            self._current = Member(name, size)
            return self._current

    @property
    def current(self) -> Member | None:
        """The member being read (its bytes not yet all consumed), if any."""
        return self._current

    def chunks(self, member: Member) -> Iterator[bytes]:
        """The rest of the member's bytes, in chunks of at most CHUNK."""
        while member.consumed < member.size:
            want = min(CHUNK, member.size - member.consumed)
            data = self.stream.read(want)
            if not data:
                raise BundleError(self.label, member.name, "the bundle ends early (truncated)")
            member.consumed += len(data)
            self.received += len(data)
            yield data

    def read_small(self, member: Member, limit: int) -> bytes:
        if member.size > limit:
            raise BundleError(self.label, member.name, f"is larger than {limit} bytes")
        return b"".join(self.chunks(member))


def _parse_pax(raw: bytes, label: str, where: str) -> dict[str, str]:
    fields: dict[str, str] = {}
    pos = 0
    try:
        while pos < len(raw):
            space = raw.index(b" ", pos)
            length = int(raw[pos:space])
            record = raw[space + 1 : pos + length - 1].decode("utf-8")
            key, _, value = record.partition("=")
            fields[key] = value
            pos += length
        if "size" in fields and (not fields["size"].isdigit()):
            raise ValueError("size")
    except (ValueError, UnicodeDecodeError):
        raise BundleError(label, where, "a malformed extended header") from None
    return {k: v for k, v in fields.items() if k in ("path", "size")}
