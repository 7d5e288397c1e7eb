"""The Hub as a ByteSource for fetch, and the protocol details the mirror and the dev hub
serve (git blob ids, LFS pointers, byte ranges)."""

from __future__ import annotations

import contextlib
import hashlib
import re
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Literal

from mlxpin.errors import IntegrityError, MlxpinError
from mlxpin.project.lockfile import LockedFile, LockedModel, served_as
from mlxpin.store.ranged import RangePolicy

if TYPE_CHECKING:
    from mlxpin.hub.client import HubDownloader

_RANGE_RE = re.compile(r"\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*", re.IGNORECASE)


def git_blob_sha1(data: bytes) -> str:
    """The git object id of a blob: sha1(b"blob <size>\\0" + content)."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data, usedforsecurity=False).hexdigest()


def lfs_pointer(sha256: str, size: int) -> bytes:
    """The git-lfs pointer text git stores in place of an LFS file, byte for byte."""
    return (
        f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n".encode()
    )


def parse_range(header: str, size: int) -> tuple[int, int] | Literal["unsatisfiable"] | None:
    """(start, end-exclusive) for a single ``bytes=`` range; None to ignore the header
    (RFC 9110: also an invalid one, such as ``bytes=5-2``)."""
    match = _RANGE_RE.fullmatch(header)
    if match is None:
        return None
    # Past 19 digits a number is larger than any file (and int() may refuse its length).
    first, last = (None if not g else int(g) if len(g) < 20 else 1 << 64 for g in match.groups())
    if first is None:
        if not last:
            return None if last is None else "unsatisfiable"
        return (max(0, size - last), size) if size else "unsatisfiable"
    if last is not None and last < first:
        return None
    end = size if last is None else min(last + 1, size)
    return "unsatisfiable" if first >= size else (first, end)


class HubSourceBytes:
    """Bytes from the Hub. The downloader (and huggingface_hub) is only set up when a
    file actually has to be downloaded, so a no-op fetch never imports it."""

    def __init__(
        self,
        lock: LockedModel,
        downloader: Callable[[], HubDownloader],
        ranges: RangePolicy | None = None,
    ) -> None:
        served = served_as(lock)  # a Hub pin's repo and commit, or a built output's
        assert served is not None
        self.repo, self.commit = served
        self._downloader = downloader
        self._opened = False
        self.ranges = ranges  # large files over several ranged connections

    @property
    def downloader(self) -> HubDownloader:
        return self._downloader()

    def open(
        self, file: LockedFile, offset: int
    ) -> contextlib.AbstractContextManager[tuple[int, Iterator[bytes]]]:
        self._opened = True
        return self.downloader.open(self.repo, self.commit, file.path, offset)

    def open_range(
        self, file: LockedFile, start: int, end: int
    ) -> contextlib.AbstractContextManager[tuple[int, Iterator[bytes]]]:
        self._opened = True
        return self.downloader.open(self.repo, self.commit, file.path, start, end)

    def interrupted(self, exc: Exception) -> bool:
        from mlxpin.hub.client import TransferInterrupted

        return isinstance(exc, TransferInterrupted)

    @property
    def deadline_s(self) -> float:
        """How long a 429's Retry-After is honoured (MLXPIN_HUB_DEADLINE)."""
        return self.downloader.config.deadline_s

    def give_up(self, file: LockedFile, cause: str) -> MlxpinError:
        return self.downloader.unreachable(self.repo, self.commit, f"{file.path}: {cause}")

    def mismatch_hint(self, lock: LockedModel, file: LockedFile, problem: str) -> MlxpinError:
        return IntegrityError(lock.name, file.path, f"downloaded bytes {problem}")

    def origin(self) -> str | None:
        """ "mirror" when an `mlxpin mirror` served the bytes (it says so in a header);
        None when nothing was downloaded (the recorded origin stays)."""
        if not self._opened:
            return None
        return "mirror" if self.downloader.served_by_mirror else "hub"
