"""Content hashes as the Hub computes them, and the tree hash over a pin's files."""

from __future__ import annotations

import binascii
import hashlib
from collections.abc import Iterable
from pathlib import Path
from typing import Protocol

CHUNK = 1024 * 1024


class _Hasher(Protocol):
    def update(self, data: bytes | memoryview, /) -> None: ...
    def hexdigest(self) -> str: ...


class OidHasher:
    """Incremental hash for an oid: `gitsha1:` (git blob sha1) or `sha256:`.

    A git blob sha1 covers a header with the size, so the expected size must be known
    before the first byte.
    """

    def __init__(self, algorithm: str, size: int) -> None:
        self.algorithm = algorithm
        self._hash: _Hasher
        if algorithm == "gitsha1":
            self._hash = hashlib.sha1(usedforsecurity=False)
            self._hash.update(b"blob %d\0" % size)
        elif algorithm == "sha256":
            self._hash = hashlib.sha256()
        else:
            raise ValueError(f"unknown oid algorithm {algorithm!r}")

    def update(self, data: bytes | memoryview) -> None:
        self._hash.update(data)

    def oid(self) -> str:
        return f"{self.algorithm}:{self._hash.hexdigest()}"


def oid_algorithm(oid: str) -> str:
    return oid.split(":", 1)[0]


def oid_hex(oid: str) -> str:
    return oid.split(":", 1)[1]


def hash_file(path: Path, algorithm: str, size: int | None = None) -> str:
    """Hash a whole file, streaming (memory does not grow with the file)."""
    if size is None:
        size = path.stat().st_size
    hasher = OidHasher(algorithm, size)
    with path.open("rb") as handle:
        while chunk := handle.read(CHUNK):
            hasher.update(chunk)
    return hasher.oid()


def tree_hash(entries: Iterable[tuple[str, int, str]]) -> str:
    """SRI-style sha256 over sorted (path, size, oid); paths never hold tabs or newlines."""
    lines = "".join(f"{path}\t{size}\t{oid}\n" for path, size, oid in sorted(entries))
    digest = hashlib.sha256(lines.encode())
    return "sha256-" + binascii.b2a_base64(digest.digest(), newline=False).decode("ascii")
