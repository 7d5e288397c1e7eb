"""Preparing the other hosts of a distributed model, and what mlxpin answers on them.

This host decides what is pinned: `fetch --hosts` sends the lock (and the verified bytes)
over ssh; the remote `mlxpin _host receive` stores them only after checking every byte
against that lock, exactly as a local fetch would. `mlxpin _host check` answers the
launch preflight ("is this pin here, verified, and which mlx runs it?").

The stream sent to `_host receive` is a plain tar (weights do not compress): `lock.toml`
first, then `files/<path>` for each locked file, read from this host's verified snapshot.
"""

from __future__ import annotations

import shutil
import subprocess
import tarfile
import tempfile
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from mlxpin.config import Settings
from mlxpin.errors import DataError, ExitCode, UsageError
from mlxpin.project import validate
from mlxpin.project.distributed import LOCAL_HOST
from mlxpin.project.lockfile import LockedModel, parse_lock, render
from mlxpin.serve.distributed import (
    SSH_OPTIONS,
    HostCheck,
    check_here,
    check_remote,
    distinct_hosts,
    distributed_spec,
    parse_remote_answer,
    ranks_of,
    remote_mlxpin,
)
from mlxpin.store.fetch import NoProgress, fetch_model
from mlxpin.store.layout import StoreLayout
from mlxpin.store.sources import LocalSourceBytes

LOCK_MEMBER = "lock.toml"
FILES_PREFIX = "files/"
STDIN_NAME = Path("<stdin>")


# --- on the remote host --------------------------------------------------------------------


def host_check(settings: Settings, lock_text: bytes, verify: bool) -> HostCheck:
    lock = parse_lock(lock_text, STDIN_NAME)
    return check_here(StoreLayout.of(settings), lock, LOCAL_HOST, verify)


def host_receive(settings: Settings, stream: IO[bytes]) -> HostCheck:
    """Read a lock and its files from a tar stream; store them verified; answer as check."""
    layout = StoreLayout.of(settings)
    incoming = settings.state_dir / "incoming"
    incoming.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="receive-", dir=incoming))
    try:
        lock = _unpack(stream, workdir)
        fetch_model(layout, lock, LocalSourceBytes(workdir / "files", lock.name), NoProgress())
        return check_here(layout, lock, LOCAL_HOST, verify=False)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _unpack(stream: IO[bytes], workdir: Path) -> LockedModel:
    lock: LockedModel | None = None
    try:
        with tarfile.open(fileobj=stream, mode="r|") as archive:
            for member in archive:
                if lock is None:
                    if member.name != LOCK_MEMBER or not member.isfile():
                        raise DataError(f"the stream must start with {LOCK_MEMBER}")
                    handle = archive.extractfile(member)
                    assert handle is not None
                    lock = parse_lock(handle.read(), STDIN_NAME)
                    expected = {f.path: f.size for f in lock.files}
                    continue
                path = member.name.removeprefix(FILES_PREFIX)
                if (
                    not member.name.startswith(FILES_PREFIX)
                    or not member.isfile()
                    or validate.relpath_problem(path)
                    or expected.get(path) != member.size
                ):
                    raise DataError(f"unexpected member {member.name!r} in the stream")
                target = workdir / "files" / path
                target.parent.mkdir(parents=True, exist_ok=True)
                handle = archive.extractfile(member)
                assert handle is not None
                with target.open("wb") as out:
                    shutil.copyfileobj(handle, out, 1 << 20)
    except tarfile.TarError as exc:
        raise DataError(f"the stream is not a readable tar ({exc})") from None
    if lock is None:
        raise DataError("the stream was empty")
    return lock


# --- on this host --------------------------------------------------------------------------


@dataclass(frozen=True)
class HostsResult:
    name: str
    hosts: tuple[HostCheck, ...]
    sent: tuple[str, ...]  # hosts that received the files

    @property
    def ok(self) -> bool:
        return all(h.ok for h in self.hosts)

    @property
    def exit_code(self) -> int:
        bad = [h for h in self.hosts if not h.ok]
        return bad[0].exit_code if bad else 0

    def to_json(self) -> dict[str, object]:
        return {
            "ok": self.ok,
            "name": self.name,
            "hosts": [h.to_json() for h in self.hosts],
            "sent": list(self.sent),
        }


def _send(host: str, lock: LockedModel, view: Path, python: str) -> HostCheck:
    argv = [*remote_mlxpin(python), "receive"]
    import shlex

    process = subprocess.Popen(
        ["ssh", *SSH_OPTIONS, host, shlex.join(argv)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert process.stdin is not None
    try:
        with tarfile.open(fileobj=process.stdin, mode="w|", format=tarfile.PAX_FORMAT) as tar:
            data = render(lock)
            info = tarfile.TarInfo(LOCK_MEMBER)
            info.size = len(data)
            import io

            tar.addfile(info, io.BytesIO(data))
            for file in lock.files:
                info = tarfile.TarInfo(FILES_PREFIX + file.path)
                info.size = file.size
                with (view / file.path).open("rb") as handle:
                    tar.addfile(info, handle)
    except (BrokenPipeError, ConnectionResetError):
        pass  # the remote stopped reading: its answer says why
    stdout, stderr = process.communicate()  # closes stdin: the end of the stream
    return parse_remote_answer(host, process.returncode, stdout, stderr)


def prepare_hosts(settings: Settings, name: str, lock: LockedModel) -> HostsResult:
    """Every remote host of `name` holds `lock`'s verified snapshot afterwards (or says why
    not). This host's snapshot must already be fetched: its bytes are what is sent."""
    spec, distributed = distributed_spec(settings, name)
    if not distributed or spec.distributed is None:
        raise UsageError(
            f"{name} is not a distributed model: it has no [models.{name}.distributed] table",
            "drop --hosts, or add the table",
        )
    import sys

    ranks, _, _ = ranks_of(spec.distributed)
    python = spec.distributed.python or sys.executable
    layout = StoreLayout.of(settings)
    view = layout.view(lock)

    def one(host: str) -> tuple[HostCheck, bool]:
        if host == LOCAL_HOST:
            return check_here(layout, lock, host, verify=False), False
        check = check_remote(host, lock, python, verify=False)
        if check.ok or check.exit_code != ExitCode.NO_INPUT:
            return check, False
        return _send(host, lock, view, python), True

    hosts: Sequence[str] = distinct_hosts(ranks)
    with ThreadPoolExecutor(max_workers=min(8, len(hosts))) as pool:
        answers = list(pool.map(one, hosts))
    return HostsResult(
        name=name,
        hosts=tuple(a for a, _ in answers),
        sent=tuple(h for h, (_, sent) in zip(hosts, answers, strict=True) if sent),
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
                    "drop --hosts, or name only distributed models",
                )
    specs = [s for s in chosen if s.distributed is not None]
    locks = locked_models(settings, manifest, specs) if specs else ()
    return tuple(prepare_hosts(settings, lock.name, lock) for lock in locks)
