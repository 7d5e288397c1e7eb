"""`hash_existing`: what it vouches for is every byte of the file the path still names."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from mlxpin.project.lockfile import LockedFile
from mlxpin.store.records import FileStat
from mlxpin.store.verify import NoProgress, hash_existing
from mlxpin.util.parallel import CancelToken

DATA = os.urandom(5000)


def locked(data: bytes = DATA) -> LockedFile:
    return LockedFile("f.bin", len(data), "sha256:" + hashlib.sha256(data).hexdigest())


def check(path: Path, seen: os.stat_result | None = None) -> object:
    return hash_existing(path, locked(), NoProgress(), CancelToken(), seen)


def test_an_exact_file_is_vouched_for_with_its_stat(tmp_path: Path) -> None:
    blob = tmp_path / "blob"
    blob.write_bytes(DATA)
    stat = check(blob)
    assert stat is not None
    assert stat == FileStat.of(blob)


def test_a_file_with_more_bytes_than_locked_is_refused(tmp_path: Path) -> None:
    blob = tmp_path / "blob"
    blob.write_bytes(DATA + b"x")  # its first bytes hash to the locked oid
    assert check(blob) is None


def test_bytes_appended_after_the_callers_lstat_are_caught(tmp_path: Path) -> None:
    blob = tmp_path / "blob"
    blob.write_bytes(DATA)
    seen = os.lstat(blob)
    with blob.open("ab") as handle:
        handle.write(b"x")
    assert check(blob, seen) is None


def test_a_file_replaced_while_it_is_read_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    blob, other = tmp_path / "blob", tmp_path / "other"
    blob.write_bytes(DATA)
    other.write_bytes(DATA)
    real_read = os.read

    def read_then_replace(fd: int, n: int) -> bytes:
        data = real_read(fd, n)
        if other.exists():
            other.replace(blob)
        return data

    monkeypatch.setattr(os, "read", read_then_replace)
    assert check(blob) is None


def test_a_file_written_to_while_it_is_read_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    blob = tmp_path / "blob"
    blob.write_bytes(DATA)
    real_read = os.read

    def read_then_rewrite(fd: int, n: int) -> bytes:
        data = real_read(fd, n)
        blob.write_bytes(DATA)  # the same bytes, in place: only the ctime says so
        return data

    monkeypatch.setattr(os, "read", read_then_rewrite)
    assert check(blob) is None


def test_links_fifos_and_short_files_are_never_vouched_for(tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.write_bytes(DATA)
    link = tmp_path / "link"
    link.symlink_to(real)
    assert check(link) is None
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    assert check(fifo) is None  # and not opened: that would block
    short = tmp_path / "short"
    short.write_bytes(DATA[:-1])
    assert check(short) is None
    assert check(tmp_path / "gone") is None
