"""Pipeline mode: a remote host holds, is sent, and is checked for only its ranks' files.

The model is the tiny qwen2 checkpoint split the way large ones are (one weight file per
layer plus one with the embeddings, norm and head), so over two ranks each rank reads one
layer file the other does not. This host (rank 0) keeps the whole pin; "another host" is
either a separate HF_HOME reached through `fake_ssh` (runs everywhere) or this machine
behind a real loopback sshd (tests/sshhost.py).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from mlxpin.config import load_settings
from mlxpin.dev.tinymodel import generate
from mlxpin.errors import DataError
from mlxpin.plan.distributed import (
    HostsNotReadyError,
    Rank,
    host_shares,
    plan_pipeline,
)
from mlxpin.project.lockfile import LockedFile, LockedModel, Original, make_locked
from mlxpin.store.fetch import fetch_model
from mlxpin.store.layout import StoreLayout, check_stamp
from mlxpin.store.records import read_stamp
from mlxpin.store.sources import LocalSourceBytes
from mlxpin.store.subset import fetch_subset, need_of, verify_subset
from mlxpin.store.verify import NoProgress
from sshhost import SshHost
from test_distributed import (
    Group,
    fake_ssh,
    groups,  # noqa: F401  (the fixture: registered here by name)
    plan_tiny,
    processes_using,
    write_project,
)

from conftest import Project

LAYER0 = "model-00001-of-00003.safetensors"  # rank 1's layer (rank 0 runs the LAST layers)
LAYER1 = "model-00002-of-00003.safetensors"  # rank 0's layer
REST = "model-00003-of-00003.safetensors"  # embeddings, norm, head: every rank


def tiny_lock(model: Path, repo: str | None = "org/tiny") -> LockedModel:
    """A lock of the sharded tiny qwen2 in `model`; a Hub pin by default (the bytes still
    come from the directory: the source is a seam)."""
    files = []
    for path in sorted(p for p in model.iterdir() if p.is_file()):
        data = path.read_bytes()
        files.append(LockedFile(path.name, len(data), "sha256:" + hashlib.sha256(data).hexdigest()))
    original = Original(repo=repo, path=None if repo else str(model), revision=None, files=None)
    return make_locked("tiny", original, "c" * 40 if repo else None, None, files)


def listing(directory: Path) -> list[str]:
    return sorted(os.listdir(directory))


# --- who needs what ----------------------------------------------------------------------------


def test_remote_hosts_share_only_their_ranks_files_this_host_keeps_the_pin(tmp_path: Path) -> None:
    generate(tmp_path / "m", arch="qwen2", sharded=True)
    lock = tiny_lock(tmp_path / "m")
    everything = tuple(f.path for f in lock.files)
    ranks = (
        Rank(0, "127.0.0.1", ("10.0.0.1",), ()),
        Rank(1, "mac2", ("10.0.0.2",), ()),
        Rank(2, "mac3", ("10.0.0.3",), ()),
        Rank(3, "mac3", ("10.0.0.3",), ()),
    )
    a, b, c, d = everything[:4]
    here, mac2, mac3 = host_shares(lock, ranks, ((a,), (b, a), (a, c), (d, a)))
    assert here.whole and here.need is None and here.files == everything
    assert (mac2.files, mac2.ranks) == ((a, b), (1,))
    assert mac3.ranks == (2, 3) and mac3.files == (a, c, d)  # the union over its ranks
    assert mac3.size == sum(f.size for f in lock.files if f.path in (a, c, d))
    assert (mac3.pin_files, mac3.pin_size) == (len(everything), lock.total_size)
    assert not mac3.whole and mac3.need == frozenset((a, c, d))
    # Tensor parallel: every host reads every file.
    assert all(s.whole and s.need is None for s in host_shares(lock, ranks, None))

    # The real split of the tiny model over two ranks, from its index.
    split = plan_pipeline(tmp_path / "m", lock, 2)
    assert LAYER1 in split[0] and LAYER0 not in split[0]
    assert LAYER0 in split[1] and LAYER1 not in split[1]
    assert REST in split[0] and REST in split[1]
    _, remote = host_shares(lock, ranks[:2], split)
    assert set(everything) - set(remote.files) == {LAYER1}


def test_a_share_naming_a_file_the_pin_lacks_is_refused(tmp_path: Path) -> None:
    generate(tmp_path / "m", arch="qwen2", sharded=True)
    lock = tiny_lock(tmp_path / "m")
    assert need_of(lock, None) is None
    assert need_of(lock, [f.path for f in lock.files]) is None  # all of it: the whole pin
    assert need_of(lock, ["config.json"]) == frozenset({"config.json"})
    with pytest.raises(DataError, match=r"'evil\.safetensors' is not a file of the pin"):
        need_of(lock, ["config.json", "evil.safetensors"])


# --- a share on disk ---------------------------------------------------------------------------


def test_a_share_is_stamped_as_such_grows_and_a_whole_fetch_upgrades_it(tmp_path: Path) -> None:
    model = tmp_path / "m"
    generate(model, arch="qwen2", sharded=True)
    lock = tiny_lock(model)
    layout = StoreLayout(tmp_path / "hub", tmp_path / "state")
    source = LocalSourceBytes(model, "tiny")
    everything = frozenset(f.path for f in lock.files)
    share = everything - {LAYER1}

    outcome = fetch_subset(layout, lock, share, source, NoProgress())
    view = layout.view(lock)
    assert listing(view) == sorted(share)
    # The Hub cache's own snapshot for the locked commit holds the same files, no more.
    assert listing(layout.hub_snapshot("org/tiny", "c" * 40)) == sorted(share)
    assert not layout.hub_blob(
        "org/tiny", dict((f.path, f.oid) for f in lock.files)[LAYER1]
    ).exists()
    assert outcome.total_size == sum(f.size for f in lock.files if f.path in share)
    stamp = read_stamp(layout, lock)
    assert stamp is not None and set(stamp.files) == share  # which files it verified

    whole = check_stamp(layout, lock)  # one host's launch, export, mirror: the whole pin
    assert not whole.ok
    assert whole.problem == (
        f"the snapshot holds only {len(share)} of the {len(everything)} locked files "
        "(a pipeline host's subset), not the whole pin"
    )
    assert check_stamp(layout, lock, need=share).ok
    assert check_stamp(layout, lock, need=frozenset({"config.json", REST})).ok
    other = check_stamp(layout, lock, need=frozenset({LAYER1, REST}))
    assert (other.ok, other.problem) == (False, f"{LAYER1} is missing from the snapshot")

    # A smaller share later keeps what is held (a share only grows).
    fetch_subset(layout, lock, frozenset({LAYER0}), source, NoProgress())
    assert listing(view) == sorted(share) and check_stamp(layout, lock, need=share).ok

    # A damaged file of the share is named, and --verify re-hashes what the view holds.
    blob = Path(stamp.files[LAYER0][0])
    data = bytearray(blob.read_bytes())
    data[-1] ^= 1
    os.chmod(blob, 0o644)
    blob.write_bytes(bytes(data))
    damaged = check_stamp(layout, lock, need=share)
    assert damaged.problem == f"{LAYER0} changed since it was verified"
    bad = verify_subset(layout, lock, share, NoProgress())
    assert [path for path, _ in bad.bad] == [LAYER0]
    failed = check_stamp(layout, lock, need=share).problem
    assert failed == f"`verify` found {LAYER0}: content hash differs from the lock"
    fetch_subset(layout, lock, share, source, NoProgress())  # sent again: repaired
    assert verify_subset(layout, lock, share, NoProgress()).bad == ()
    assert check_stamp(layout, lock, need=share).ok and listing(view) == sorted(share)

    # A whole fetch upgrades the share; a share fetch never shrinks the whole pin again.
    fetch_model(layout, lock, source, NoProgress())
    assert check_stamp(layout, lock).ok and listing(view) == sorted(everything)
    again = fetch_subset(layout, lock, share, source, NoProgress())
    assert again.up_to_date and check_stamp(layout, lock).ok
    assert listing(view) == sorted(everything)


# --- through the CLI and the host agent (another HF_HOME as "another host") --------------------

PIPELINE_HOSTS = '["127.0.0.1", { ssh = "mac2", ips = ["127.0.0.1"] }]'


def host_env(project: Project, home: Path) -> dict[str, str]:
    env = {k: v for k, v in project.env.items() if not k.startswith(("HF_", "MLXPIN_"))}
    return {**env, "HF_HOME": str(home)}


def receive(project: Project, home: Path, stream: bytes) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "mlxpin", "_host", "receive"],
        input=stream,
        env=host_env(project, home),
        capture_output=True,
        check=False,
        timeout=120,
    )


def stream_for(lock: LockedModel, view: Path, need: frozenset[str] | None) -> bytes:
    from mlxpin.commands.hosts import write_stream

    out = io.BytesIO()
    write_stream(out, lock, view, need)
    return out.getvalue()


def retar(stream: bytes, *, drop: str | None = None, announce: list[str] | None = None) -> bytes:
    """The stream without member `drop`, or announcing `announce` after the lock."""
    out = io.BytesIO()
    with (
        tarfile.open(fileobj=io.BytesIO(stream)) as src,
        tarfile.open(fileobj=out, mode="w") as dst,
    ):
        for member in src:
            if member.name != drop:
                dst.addfile(member, src.extractfile(member))
            if member.name == "lock.toml" and announce is not None:
                data = json.dumps(announce).encode()
                info = tarfile.TarInfo("subset.json")
                info.size = len(data)
                dst.addfile(info, io.BytesIO(data))
    return out.getvalue()


@pytest.fixture
def pipeline_project(project: Project) -> Iterator[tuple[Project, LockedModel, Path]]:
    write_project(project, arch="qwen2", pipeline=True, hosts=PIPELINE_HOSTS)
    project.ok("fetch")
    settings = load_settings(project.env, cwd=project.root)
    from mlxpin.project.lockfile import read_lock

    lock = read_lock(settings.lock_dir, "tiny")
    assert lock is not None
    yield project, lock, StoreLayout.of(settings).view(lock)


def test_the_host_agent_stores_only_the_announced_share_and_the_preflight_checks_only_it(
    pipeline_project: tuple[Project, LockedModel, Path], tmp_path: Path
) -> None:
    project, lock, view = pipeline_project
    mac2 = tmp_path / "mac2"
    everything = frozenset(f.path for f in lock.files)
    share = everything - {LAYER1}

    # A stream must deliver every file it announces, and nothing else.
    short = receive(project, mac2, retar(stream_for(lock, view, share), drop="files/" + LAYER0))
    assert short.returncode == 65
    assert f"the stream ended before {LAYER0} arrived" in json.loads(short.stdout)["problem"]
    extra = receive(project, mac2, retar(stream_for(lock, view, None), announce=sorted(share)))
    assert extra.returncode == 65
    assert f"unexpected member 'files/{LAYER1}'" in json.loads(extra.stdout)["problem"]
    assert not (mac2 / "mlxpin" / "snapshots").exists() or not any(
        (mac2 / "mlxpin" / "snapshots").iterdir()
    )

    done = receive(project, mac2, stream_for(lock, view, share))
    assert done.returncode == 0, done
    answer = json.loads(done.stdout)
    remote_view = Path(answer["path"])
    assert remote_view.is_relative_to(mac2) and listing(remote_view) == sorted(share)

    settings = load_settings(project.env, cwd=project.root)
    plan = plan_tiny(settings, ssh=fake_ssh({"mac2": mac2}))
    assert plan.path_of(1) == str(remote_view)
    here, there = plan.shares
    assert here.whole and not there.whole and set(there.files) == share

    # The plan says who holds what, in text and JSON (as `launch --dry-run` prints it).
    from mlxpin.cli.boot import distributed_text

    text = distributed_text(plan)
    assert "host       127.0.0.1 holds all 9 files" in text
    assert "host       mac2 holds 8 of 9 files" in text and "(the layers of rank 1)" in text
    hosts = plan.to_json()["distributed"]["hosts"]
    assert [h["share"]["whole"] for h in hosts] == [True, False]
    assert set(hosts[1]["share"]["files"]) == share and hosts[1]["share"]["size"] == sum(
        f.size for f in lock.files if f.path in share
    )

    # Its own file gone on the remote: refused before any rank starts, naming host and file.
    (remote_view / LAYER0).unlink()
    with pytest.raises(HostsNotReadyError) as info:
        plan_tiny(settings, ssh=fake_ssh({"mac2": mac2}))
    assert info.value.exit_code == 66
    assert info.value.message.endswith(f"mac2: {LAYER0} is missing from the snapshot")

    # A tensor-parallel model demands every file on every host: the share is not enough.
    receive(project, mac2, stream_for(lock, view, share))
    manifest = project.root / "manifest.toml"
    manifest.write_text(manifest.read_text().replace("pipeline = true", "pipeline = false"))
    with pytest.raises(HostsNotReadyError) as info:
        plan_tiny(settings, ssh=fake_ssh({"mac2": mac2}))
    assert "mac2: the snapshot holds only 8 of the 9 locked files" in info.value.message


class _Watched(io.BytesIO):
    """The stream, noting what the receiving host holds while it reads: any file under
    incoming/, and each blob's inode once every file is read."""

    def __init__(self, data: bytes, state: Path, layout: StoreLayout, lock: LockedModel) -> None:
        super().__init__(data)
        with tarfile.open(fileobj=io.BytesIO(data)) as tar:
            last = tar.getmembers()[-1]
        self.end = last.offset_data + last.size + -last.size % 512  # the end-of-archive
        self.state, self.layout, self.lock = state, layout, lock
        self.copies: set[Path] = set()
        self.inodes: dict[str, int] | None = None

    def read(self, size: int | None = -1, /) -> bytes:
        self.copies |= {p for p in (self.state / "incoming").rglob("*") if p.is_file()}
        if self.tell() >= self.end and self.inodes is None:
            blobs = {f.path: self.layout.blob(self.lock, f) for f in self.lock.files}
            self.inodes = {p: b.stat().st_ino for p, b in blobs.items() if b.exists()}
        return super().read(size)


def test_a_receive_writes_each_file_once_straight_into_its_blob(
    pipeline_project: tuple[Project, LockedModel, Path], tmp_path: Path
) -> None:
    from mlxpin.commands.hosts import host_receive

    project, lock, view = pipeline_project
    settings = load_settings(host_env(project, tmp_path / "mac2"), cwd=tmp_path)
    layout = StoreLayout.of(settings)
    stream = _Watched(stream_for(lock, view, None), settings.state_dir, layout, lock)
    assert host_receive(settings, stream).ok
    # No copy ever waits under incoming/: by the end of the stream every file is its
    # blob already, and the stamped blob is that very file (not a second copy of it).
    assert stream.copies == set()
    assert stream.inodes is not None and sorted(stream.inodes) == sorted(f.path for f in lock.files)
    assert {f.path: layout.blob(lock, f).stat().st_ino for f in lock.files} == stream.inodes
    assert check_stamp(layout, lock).ok


def test_a_rank_host_keeps_received_pins_apart_and_gc_clears_dead_receives(
    pipeline_project: tuple[Project, LockedModel, Path], tmp_path: Path
) -> None:
    project, lock, view = pipeline_project
    mac2 = tmp_path / "mac2"
    assert receive(project, mac2, stream_for(lock, view, None)).returncode == 0
    # Another controller's model of the same name: another pin.
    theirs = Original(repo="acme/other", path=None, revision=None, files=None)
    other = make_locked(lock.name, theirs, "1" * 40, None, lock.files)
    assert receive(project, mac2, stream_for(other, view, None)).returncode == 0
    pid = "import os; print(os.getpid())"
    dead = subprocess.run([sys.executable, "-c", pid], capture_output=True, text=True, check=True)
    stale = mac2 / "mlxpin" / "incoming" / f"{int(dead.stdout)}-killed"
    stale.mkdir(parents=True)
    (stale / "half.bin").write_bytes(b"x" * 1000)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    gc = subprocess.run(
        [sys.executable, "-m", "mlxpin", "gc", "--yes"],
        cwd=elsewhere,
        env=host_env(project, mac2),
        capture_output=True,
        text=True,
        check=False,
    )
    assert gc.returncode == 0, gc.stderr
    layout = StoreLayout(hub_cache=mac2 / "hub", state_dir=mac2 / "mlxpin")
    assert check_stamp(layout, lock).ok and check_stamp(layout, other).ok
    assert not stale.exists()


def test_a_pipeline_plan_needs_this_hosts_pin_first_it_says_which_files_the_others_need(
    project: Project,
) -> None:
    write_project(project, arch="qwen2", pipeline=True, hosts=PIPELINE_HOSTS)
    result = project.run("launch", "--dry-run")  # mac2 is never asked: it cannot be told what
    assert result.returncode == 66, result.stderr
    assert "1 host(s) not ready, no rank started: 127.0.0.1: snapshot not fetched" in result.stderr
    assert "mac2" not in result.stderr and "run `mlxpin fetch tiny`" in result.stderr


# --- a real remote host over ssh ---------------------------------------------------------------


def _remote_hosts(remote: SshHost) -> str:
    return f'["127.0.0.1", {{ ssh = "{remote.alias}", ips = ["127.0.0.1"] }}]'


@pytest.mark.e2e
def test_fetch_hosts_sends_a_pipeline_host_only_its_files_and_launch_checks_only_those(
    project: Project, remote: SshHost, tmp_path: Path
) -> None:
    write_project(project, arch="qwen2", pipeline=True, hosts=_remote_hosts(remote))
    env = remote.env(project.env)
    project.ok("fetch", env=env)  # this host: the whole pin
    refused = project.run("launch", "--dry-run", env=env)
    assert refused.returncode == 66, refused.stderr
    assert f"{remote.alias}: snapshot not fetched" in refused.stderr

    result = project.run("fetch", "--hosts", "--json", env=env)
    assert result.returncode == 0, result.stderr
    model = json.loads(result.stdout)["hosts"][0]
    assert model["sent"] == [remote.alias]
    here, there = model["hosts"]
    assert here["share"]["whole"] and here["share"]["pin_files"] == 9
    share = sorted(set(here["share"]["files"]) - {LAYER1})
    assert there["share"]["files"] == share and not there["share"]["whole"]
    assert there["share"]["ranks"] == [1]
    # The remote's snapshot holds exactly rank 1's files: no rank-0 layer crossed the wire.
    remote_view = Path(there["path"])
    assert remote_view.is_relative_to(remote.remote_home)
    assert listing(remote_view) == share
    assert f"{remote.alias}: ready at {remote_view}, 8 of 9 files" in result.stderr
    again = json.loads(project.run("fetch", "--hosts", "--json", env=env).stdout)
    assert again["hosts"][0]["sent"] == []  # the share is there: nothing sent twice

    # gc on that host keeps the share: the received lock is a root there.
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    gc = subprocess.run(
        [sys.executable, "-m", "mlxpin", "gc", "--json"],
        cwd=elsewhere,
        env={**host_env(project, remote.remote_home)},
        capture_output=True,
        text=True,
        check=False,
    )
    assert gc.returncode == 0, gc.stderr
    swept = json.loads(gc.stdout)
    assert swept["items"] == [], swept["items"]
    assert any(r["registered"] and r["locks"] == 1 for r in swept["roots"])

    # The plan says who holds what; the preflight accepts the share.
    plan = project.json("launch", "--dry-run", env=env)["plan"]["distributed"]
    assert plan["ranks"][1]["snapshot"] == str(remote_view)
    assert plan["hosts"][1]["share"]["files"] == share
    text = project.ok("launch", "--dry-run", env=env).stdout
    assert f"host       {remote.alias} holds 8 of 9 files" in text

    # One of ITS files gone there: refused before any rank starts, naming host and file.
    (remote_view / LAYER0).unlink()
    missing = project.run("launch", "--dry-run", env=env)
    assert missing.returncode == 66, missing.stderr
    assert f"{remote.alias}: {LAYER0} is missing from the snapshot" in missing.stderr
    repaired = json.loads(project.run("fetch", "--hosts", "--json", env=env).stdout)
    assert repaired["hosts"][0]["sent"] == [remote.alias]
    assert listing(remote_view) == share
    project.ok("launch", "--dry-run", env=env)


@pytest.mark.e2e
@pytest.mark.slow  # mlx.launch with two ranks: minutes on two cores; CI runs it
def test_two_rank_pipeline_runs_with_rank_1_on_a_host_holding_only_its_files(
    project: Project,
    remote: SshHost,
    groups: list[Group],  # noqa: F811
) -> None:
    port = write_project(project, arch="qwen2", pipeline=True, hosts=_remote_hosts(remote))
    # As in test_distributed: the "remote" rank starts late, as on a second Mac, so the
    # ring backend's ~31 s connect budget is not spent while rank 0 imports on a busy host.
    env = {**remote.env(project.env), "MLXPIN_TEST_RANK_DELAY": "20"}
    project.ok("fetch", "--hosts", env=env)
    plan = project.json("launch", "--dry-run", env=env)["plan"]["distributed"]
    remote_view = Path(plan["ranks"][1]["snapshot"])
    assert LAYER1 not in listing(remote_view) and LAYER0 in listing(remote_view)

    group = Group(project, port, env)
    groups.append(group)
    group.wait_healthy()
    assert group.ask()
    assert processes_using(str(remote_view))  # rank 1 loads the partial snapshot
    assert group.stop() == 0
    assert processes_using(str(project.state_dir)) == []
