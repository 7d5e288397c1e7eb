"""The bundle format, ranged splitting and the mirror's Range parsing, without processes."""

from __future__ import annotations

import io
import tarfile

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mlxpin.errors import BundleError
from mlxpin.mirror.server import blob_id, parse_range
from mlxpin.project.lockfile import LockedFile, Original, make_locked
from mlxpin.store.bundle import (
    INDEX_MEMBER,
    BundleReader,
    BundleWriter,
    parse_index,
    render_index,
)
from mlxpin.store.ranged import RangePolicy, split

LOCK = make_locked(
    "tiny",
    Original("acme/tiny", None, "main", None),
    "a" * 40,
    None,
    [LockedFile("config.json", 3, "gitsha1:" + "1" * 40)],
)


def small_bundle() -> bytes:
    out = io.BytesIO()
    writer = BundleWriter(out)
    writer.add_bytes(INDEX_MEMBER, render_index((LOCK,), 1, 3))
    writer.add_bytes("locks/tiny.toml", b"x = 1\n")
    writer.add_file("blobs/gitsha1/" + "1" * 40, io.BytesIO(b"abc"), 3)
    writer.close()
    return out.getvalue()


def test_standard_tar_reads_what_the_writer_writes() -> None:
    data = small_bundle()
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        assert tar.getnames() == [INDEX_MEMBER, "locks/tiny.toml", "blobs/gitsha1/" + "1" * 40]
        member = tar.getmember("blobs/gitsha1/" + "1" * 40)
        assert (member.mode, member.mtime, member.size) == (0o444, 0, 3)
        extracted = tar.extractfile(member)
        assert extracted is not None and extracted.read() == b"abc"


def test_reader_round_trip_and_index() -> None:
    reader = BundleReader(io.BytesIO(small_bundle()), "b.tar")
    first = reader.next()
    assert first is not None
    index = parse_index(reader.read_small(first, 1 << 20), "b.tar")
    assert [m.name for m in index.models] == ["tiny"] and index.blobs == 1
    names = []
    while (member := reader.next()) is not None:
        names.append((member.name, b"".join(reader.chunks(member))))
    assert names == [("locks/tiny.toml", b"x = 1\n"), ("blobs/gitsha1/" + "1" * 40, b"abc")]


def test_a_future_version_is_refused_by_name() -> None:
    data = render_index((LOCK,), 1, 3).replace(b'"version": 1', b'"version": 2')
    with pytest.raises(BundleError, match="version 2 is not supported"):
        parse_index(data, "b.tar")


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=4096), st.integers(min_value=0, max_value=4000))
def test_any_damage_is_a_bundle_error_never_a_crash(noise: bytes, at: int) -> None:
    data = bytearray(small_bundle())
    data[at : at + len(noise)] = noise
    reader = BundleReader(io.BytesIO(bytes(data)), "b.tar")
    try:
        while (member := reader.next()) is not None:
            for _ in reader.chunks(member):
                pass
    except BundleError:
        pass


def test_ranges_cover_the_file_and_respect_a_prefix() -> None:
    parts = split(100, 30, 4)
    assert [(p.start, p.end, p.done) for p in parts] == [
        (0, 25, 25),
        (25, 50, 5),
        (50, 75, 0),
        (75, 100, 0),
    ]
    policy = RangePolicy(connections=8, min_size=64 << 20)
    assert policy.parts_for(10 << 20) == 1
    assert policy.parts_for(64 << 20) == 8
    assert RangePolicy(connections=1).parts_for(1 << 30) == 1


def test_mirror_range_parsing_and_pointer_blob_id() -> None:
    assert parse_range("bytes=10-19", 100) == (10, 20)
    assert parse_range("bytes=90-", 100) == (90, 100)
    assert parse_range("bytes=-10", 100) == (90, 100)
    assert parse_range("bytes=100-", 100) == "unsatisfiable"
    assert parse_range("items=1-2", 100) is None
    lfs = LockedFile("m.safetensors", 5, "sha256:" + "ab" * 32)
    assert len(blob_id(lfs)) == 40 and blob_id(lfs) != "ab" * 20
