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

import io
import json
import re
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO, BinaryIO

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


class BundleWriter:
    """Appends members to a tar stream; `close` writes the end-of-archive blocks."""

    def __init__(self, out: BinaryIO) -> None:
        self.out = out
        self.written = 0

    def add_bytes(self, name: str, data: bytes) -> None:
        self.add_file(name, io.BytesIO(data), len(data), 0o644)

    def add_file(self, name: str, handle: BinaryIO, size: int, mode: int = 0o444) -> None:
        """Copy exactly `size` bytes from `handle` (ValueError if it holds fewer)."""
        header, padding = _header(name, size, mode), bytes(-size % BLOCK)
        self.out.write(header)
        remaining = size
        while remaining:
            data = handle.read(min(CHUNK, remaining))
            if not data:
                raise ValueError(f"{name}: file ended {remaining} bytes early")
            self.out.write(data)
            remaining -= len(data)
        self.out.write(padding)
        self.written += len(header) + size + len(padding)

    def close(self) -> None:
        self.out.write(bytes(2 * BLOCK))
        self.written += 2 * BLOCK
        self.out.flush()


# --- reading -----------------------------------------------------------------------------


class _Refused(Exception):
    """(member or None, problem), raised through tarfile, which takes a HeaderError for the end."""


class _End(Exception):
    """Both end-of-archive blocks were read."""


class _StrictInfo(tarfile.TarInfo):
    """Only what the writer writes: regular files, each after at most one pax header."""

    @classmethod
    def fromtarfile(cls, tar: tarfile.TarFile) -> _StrictInfo:
        stream = tar.fileobj
        assert stream is not None
        after_pax = stream.tell() != tar.offset  # called back by the pax header's reader
        block = stream.read(BLOCK)
        if len(block) < BLOCK:
            raise _Refused(None, _TRUNCATED)
        if block == bytes(BLOCK):
            if after_pax:
                raise _Refused(None, "an extended header without a member")
            if len(stream.read(BLOCK)) < BLOCK:  # the second end-of-archive block
                raise _Refused(None, _TRUNCATED)
            raise _End
        try:
            info = cls.frombuf(block, tar.encoding, tar.errors)
        except (tarfile.HeaderError, UnicodeError) as exc:
            raise _Refused(None, f"a damaged tar header ({exc})") from None
        info.offset = stream.tell() - BLOCK
        if info.type == tarfile.XHDTYPE and (after_pax or info.size > 64 * 1024):
            raise _Refused(None, "an oversized or repeated extended header")
        if info.type not in (tarfile.REGTYPE, tarfile.AREGTYPE, tarfile.XHDTYPE):
            raise _Refused(info.name, "is not a regular file (links are refused)")
        try:
            member = info._proc_member(tar)  # type: ignore[attr-defined]
        except (tarfile.HeaderError, ValueError) as exc:
            raise _Refused(None, f"a malformed extended header ({exc})") from None
        if member.size < 0 or member.sparse is not None:
            raise _Refused(member.name, "a malformed extended header")
        return member  # type: ignore[no-any-return]


@dataclass(frozen=True)
class Member:
    name: str
    size: int
    data: IO[bytes]


class BundleReader:
    """Reads members in order from a stream (a file or a pipe); strict about what it takes.

    Anything but regular files with our member names, a bad header checksum or a stream
    that ends early raises BundleError naming the member. `current` is the member being
    read, if any.
    """

    def __init__(self, stream: BinaryIO, label: str) -> None:
        self.stream = stream
        self.label = label
        self.tar: tarfile.TarFile | None = None
        self.current: Member | None = None

    @property
    def received(self) -> int:
        """Bytes of the archive read so far (all of it, after the last `next`)."""
        return 0 if self.tar is None or self.tar.fileobj is None else self.tar.fileobj.tell()

    def next(self) -> Member | None:
        """The next member, or None at the end of the archive."""
        current, self.current = self.current, None
        where = "the start" if current is None else f"the member after {current.name}"
        try:
            if self.tar is None:
                self.tar = tarfile.open(  # noqa: SIM115 - read until the end by `next`
                    fileobj=self.stream, mode="r|", bufsize=CHUNK, tarinfo=_StrictInfo
                )
            info = self.tar.next()
        except _End:
            return None
        except _Refused as exc:
            raise BundleError(self.label, exc.args[0] or where, exc.args[1]) from None
        except tarfile.ReadError:  # skipping the rest of `current` hit the end of the stream
            raise BundleError(self.label, current.name if current else where, _TRUNCATED) from None
        except tarfile.TarError as exc:
            raise BundleError(self.label, where, f"a damaged tar header ({exc})") from None
        if info is None:
            return None
        if info.name != INDEX_MEMBER and not _BLOB_RE.fullmatch(info.name):
            match = _LOCK_RE.fullmatch(info.name)
            if match is None or not NAME_RE.fullmatch(match.group(1)):
                raise BundleError(
                    self.label, info.name, "is not a member an mlxpin bundle can hold"
                )
        data = self.tar.extractfile(info)
        assert data is not None
        self.current = Member(info.name, info.size, data)
        return self.current

    def chunks(self, member: Member) -> Iterator[bytes]:
        """The rest of the member's bytes, in chunks of at most CHUNK."""
        try:
            while data := member.data.read(CHUNK):
                yield data
        except tarfile.ReadError:
            raise BundleError(self.label, member.name, _TRUNCATED) from None

    def read_small(self, member: Member, limit: int) -> bytes:
        if member.size > limit:
            raise BundleError(self.label, member.name, f"is larger than {limit} bytes")
        return b"".join(self.chunks(member))
