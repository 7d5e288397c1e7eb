"""Preparing the other hosts of a distributed model, and what mlxpin answers on them.

This host decides what is pinned: `fetch --hosts` sends the lock and verified bytes over
ssh as a plain tar (`lock.toml`, then for a pipeline share `subset.json`, then
`files/<path>`); the remote `_host receive` stores them only after checking every byte
against the lock, refuses members it was not told of, and keeps the lock as a gc root.
"""

from __future__ import annotations

import contextlib
import io
import json
import shlex
import subprocess
import sys
import tarfile
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import IO, BinaryIO

from mlxpin.config import Settings
from mlxpin.errors import BundleError, DataError, ExitCode, Flag, Run, UsageError
from mlxpin.plan.distributed import (
    SSH_OPTIONS,
    HostCheck,
    HostShare,
    check_here,
    check_remote,
    host_shares,
    parse_remote_answer,
    plan_pipeline,
    ranks_of,
    remote_mlxpin,
)
from mlxpin.plan.launch import choose_model
from mlxpin.project.distributed import LOCAL_HOST
from mlxpin.project.lockfile import LockedModel, parse_lock, render, write_lock
from mlxpin.project.manifest import load_manifest
from mlxpin.store.bundle import MAX_INDEX_BYTES, MAX_LOCK_BYTES, BundleReader
from mlxpin.store.fetch import ensure_blob
from mlxpin.store.inuse import InUse
from mlxpin.store.layout import StoreLayout, register_root, view_key
from mlxpin.store.subset import fetch_subset, need_of
from mlxpin.store.transfer import MemberSource
from mlxpin.store.verify import NoProgress

LOCK_MEMBER = "lock.toml"
SUBSET_MEMBER = "subset.json"
FILES_PREFIX = "files/"
STDIN_NAME = Path("<stdin>")
RECEIVED_DIR = "received"  # under the state dir: received/<pin>/NAME.toml, each a gc root


# --- on the remote host --------------------------------------------------------------------


def host_check(
    settings: Settings, lock_text: bytes, verify: bool, files: Sequence[str] | None = None
) -> HostCheck:
    """`files`: only these of the pin must be here (a pipeline host's share)."""
    lock = parse_lock(lock_text, STDIN_NAME)
    need = need_of(lock, files)
    return check_here(StoreLayout.of(settings), lock, LOCAL_HOST, verify, need)


def host_receive(settings: Settings, stream: BinaryIO) -> HostCheck:
    """Read a lock and its files (all, or the announced share) from a tar stream; stream
    each file straight into its blob, verified; remember the lock (a gc root); answer as
    check."""
    layout = StoreLayout.of(settings)
    reader = BundleReader(stream, "the stream", _receivable)
    with InUse(layout) as in_use:  # gc keeps the blobs placed, until the lock is a root
        try:
            lock, need = _receive(layout, reader, in_use)
            # Every file is in place: this only builds the view and (subset) stamp.
            source = MemberSource(reader, "", lock.name)
            fetch_subset(layout, lock, need, source, NoProgress())
        except BundleError as exc:
            raise DataError(exc.message, _again("NAME")) from None
        # One lock dir per pin: another controller's model of the same name is another pin.
        received = settings.state_dir / RECEIVED_DIR / view_key(lock)
        write_lock(received, lock)
        register_root(layout, received)
    return check_here(layout, lock, LOCAL_HOST, verify=False, need=need)


def _again(name: str) -> str:
    return f"run {Run.of('fetch', name, '--hosts')} again on the sending host"


def _receivable(name: str) -> bool:
    return name in (LOCK_MEMBER, SUBSET_MEMBER) or name.startswith(FILES_PREFIX)


def _read_subset(data: bytes, lock: LockedModel) -> frozenset[str] | None:
    try:
        paths = json.loads(data)
    except ValueError:
        paths = None
    if not isinstance(paths, list) or not all(isinstance(p, str) for p in paths):
        raise DataError(f"{SUBSET_MEMBER} in the stream is not a JSON list of paths")
    return need_of(lock, paths)


def _receive(
    layout: StoreLayout, reader: BundleReader, in_use: InUse
) -> tuple[LockedModel, frozenset[str] | None]:
    member = reader.next()
    if member is None or member.name != LOCK_MEMBER:
        raise DataError(f"the stream must start with {LOCK_MEMBER}")
    lock = parse_lock(reader.read_small(member, MAX_LOCK_BYTES), STDIN_NAME)
    in_use.add(lock)
    need: frozenset[str] | None = None
    member = reader.next()
    if member is not None and member.name == SUBSET_MEMBER:
        need = _read_subset(reader.read_small(member, MAX_INDEX_BYTES), lock)
        member = reader.next()
    expected = {f.path: f for f in lock.files if need is None or f.path in need}
    while member is not None:
        file = expected.pop(member.name.removeprefix(FILES_PREFIX), None)
        if not member.name.startswith(FILES_PREFIX) or file is None or file.size != member.size:
            raise DataError(f"unexpected member {member.name!r} in the stream")
        source = MemberSource(reader, member.name, f"{lock.name}: {file.path}")
        ensure_blob(layout, lock, file, source, NoProgress())  # the stream's bytes, verified
        member = reader.next()
    if expected:
        missing = sorted(expected)
        raise DataError(
            f"the stream ended before {missing[0]} arrived ({len(missing)} file(s) missing)",
            _again(lock.name),
        )
    return lock, need


# --- on this host --------------------------------------------------------------------------


@dataclass(frozen=True)
class HostsResult:
    name: str
    hosts: tuple[HostCheck, ...]
    sent: tuple[str, ...]  # hosts that received the files
    shares: tuple[HostShare, ...] = ()  # what each host holds (same order as hosts)

    @property
    def ok(self) -> bool:
        return all(h.ok for h in self.hosts)

    @property
    def exit_code(self) -> int:
        bad = [h for h in self.hosts if not h.ok]
        return bad[0].exit_code if bad else 0

    def share_of(self, host: str) -> HostShare | None:
        return next((s for s in self.shares if s.host == host), None)

    def to_json(self) -> dict[str, object]:
        hosts = []
        for check in self.hosts:
            data = check.to_json()
            share = self.share_of(check.host)
            if share is not None:
                data["share"] = share.to_json()
            hosts.append(data)
        return {"ok": self.ok, "name": self.name, "hosts": hosts, "sent": list(self.sent)}


def write_stream(
    out: IO[bytes], lock: LockedModel, view: Path, need: frozenset[str] | None
) -> None:
    """The `_host receive` stream: the whole lock, the announced share (if any), its files."""

    def add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
        info = tarfile.TarInfo(name)
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))

    with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        add(tar, LOCK_MEMBER, render(lock))
        if need is not None:
            add(tar, SUBSET_MEMBER, json.dumps(sorted(need)).encode())
        for file in lock.files:
            if need is not None and file.path not in need:
                continue
            info = tarfile.TarInfo(FILES_PREFIX + file.path)
            info.size = file.size
            with (view / file.path).open("rb") as handle:
                tar.addfile(info, handle)


def _send(
    host: str, lock: LockedModel, view: Path, python: str, need: frozenset[str] | None
) -> HostCheck:
    argv = [*remote_mlxpin(python), "receive"]
    process = subprocess.Popen(
        ["ssh", *SSH_OPTIONS, host, shlex.join(argv)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert process.stdin is not None
    with contextlib.suppress(BrokenPipeError, ConnectionResetError):
        write_stream(process.stdin, lock, view, need)  # a remote that stops reading says why
    stdout, stderr = process.communicate()  # closes stdin: the end of the stream
    return parse_remote_answer(host, process.returncode, stdout, stderr)


def prepare_hosts(settings: Settings, name: str, lock: LockedModel) -> HostsResult:
    """Every remote host of `name` holds its share of `lock` verified afterwards (the whole
    pin, or in pipeline mode the files of its ranks), or says why not. This host's
    snapshot must already be fetched (whole): its bytes are what is sent, and its index
    says which files each pipeline rank reads."""
    spec = choose_model(load_manifest(settings.manifest_path), name, settings)
    if spec.distributed is None:
        raise UsageError(
            f"{name} is not a distributed model: it has no [models.{name}.distributed] table",
            f"drop {Flag('fetch', '--hosts')}, or add the table",
        )
    ranks, _, _ = ranks_of(spec.distributed)
    python = spec.distributed.python or sys.executable
    layout = StoreLayout.of(settings)
    view = layout.view(lock)
    here = check_here(layout, lock, LOCAL_HOST, verify=False)
    rank_files = None
    if spec.distributed.pipeline and here.ok:
        rank_files = plan_pipeline(view, lock, len(ranks))
    shares = host_shares(lock, ranks, rank_files)

    def one(share: HostShare) -> tuple[HostCheck, bool]:
        if share.host == LOCAL_HOST:
            return here, False
        if not here.ok:
            problem = f"not prepared: this host's snapshot is not ready ({here.problem})"
            return HostCheck(share.host, False, None, problem, here.exit_code), False
        check = check_remote(share.host, lock, python, verify=False, need=share.need)
        if check.ok or check.exit_code != ExitCode.NO_INPUT:
            return check, False
        return _send(share.host, lock, view, python, share.need), True

    with ThreadPoolExecutor(max_workers=min(8, len(shares))) as pool:
        answers = list(pool.map(one, shares))
    return HostsResult(
        name=name,
        hosts=tuple(a for a, _ in answers),
        sent=tuple(s.host for s, (_, sent) in zip(shares, answers, strict=True) if sent),
        shares=shares,
    )


def fetch_hosts(settings: Settings, names: Sequence[str]) -> tuple[HostsResult, ...]:
    """`fetch --hosts`: prepare the other hosts of the named (default: every) distributed
    model with this host's lock and verified bytes. Run after this host's own fetch."""
    from mlxpin.project.selection import locked_models, manifest_of, pick

    manifest = manifest_of(settings)
    chosen = pick(manifest, names)
    if names:
        for spec in chosen:
            if spec.distributed is None:
                raise UsageError(
                    f"{spec.name} is not a distributed model (no [models.{spec.name}.distributed])",
                    f"drop {Flag('fetch', '--hosts')}, or name only distributed models",
                )
    specs = [s for s in chosen if s.distributed is not None]
    locks = locked_models(settings, manifest, specs) if specs else ()
    return tuple(prepare_hosts(settings, lock.name, lock) for lock in locks)
