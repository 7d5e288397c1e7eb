"""Fleet: `mlxpin export` / `import` between two hosts (two HF_HOMEs), end to end."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import shutil
import socket
import subprocess
import sys
import tarfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from mlxpin.project.lockfile import LockedFile, make_locked, parse_lock, render
from mlxpin.store.bundle import BundleWriter, blob_member, render_index

from conftest import Project
from hubserver import HubServer, LfsContent, Repo, pseudo_random_bytes

REPO = "mlx-community/tiny-4bit"
BIG = 3 * 1024 * 1024 + 123

MANIFEST = f"""version = 1

[models.tiny]
api_label = "tiny-it"
port = 18011

[models.tiny.launch]
repo = "{REPO}"
"""


def seed(hub: HubServer, big: int = BIG, **options: Any) -> Repo:
    repo = hub.create_repo(REPO, **options)
    repo.commit(
        {
            "config.json": b'{"model_type": "llama"}\n',
            "tokenizer.json": b'{"version": "1.0"}\n',
            "sub/dir/notes.txt": b"nested\n",
            "model.safetensors": LfsContent(pseudo_random_bytes(big, seed=1)),
            "copy.safetensors": LfsContent(pseudo_random_bytes(big, seed=1)),  # same content
            "empty.txt": b"",
        }
    )
    return repo


def distinct_size(repo: Repo) -> int:
    return sum({e.etag: e.size for e in repo.files().values()}.values())


def host_a(hub: HubServer, project: Project) -> Repo:
    """Host A: locked and fetched from the hub."""
    repo = seed(hub)
    project.write_manifest(MANIFEST)
    project.ok("lock")
    project.ok("fetch")
    return repo


def other_host(project: Project, tmp_path: Path, name: str = "b", locks: bool = True) -> Project:
    """Host B: the same project (manifest, and the lock unless told otherwise), its own
    HF_HOME, and an endpoint that refuses connections."""
    root = tmp_path / f"host-{name}"
    root.mkdir()
    home = tmp_path / f"hf_home-{name}"
    home.mkdir()
    shutil.copy(project.root / "manifest.toml", root / "manifest.toml")
    if locks:
        shutil.copytree(project.lock_dir, root / "lock")
    env = dict(project.env, HF_HOME=str(home), HF_ENDPOINT="http://127.0.0.1:9")
    return Project(root=root, env=env)


def cache_files(host: Project) -> list[str]:
    hub = host.hf_home / "hub"
    return sorted(str(p.relative_to(hub)) for p in hub.rglob("*") if not p.is_dir())


def blob_files(host: Project) -> list[Path]:
    hub = host.hf_home / "hub"
    return [p for p in hub.rglob("blobs/*") if p.is_file()]


def run_with_input(host: Project, data: bytes, *args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "mlxpin", *args],
        cwd=host.root,
        env=host.env,
        input=data,
        capture_output=True,
        timeout=120,
        check=False,
    )


def test_export_import_into_another_host_offline(
    hub: HubServer, project: Project, tmp_path: Path
) -> None:
    repo = host_a(hub, project)
    bundle = tmp_path / "tiny.tar"
    data = project.json("export", "tiny", "-o", str(bundle))
    assert data["ok"] is True and data["models"] == ["tiny"]
    # A standard tool lists it: the index first, then the lock, then blobs by oid.
    with tarfile.open(bundle) as tar:
        names = tar.getnames()
    assert names[0] == "mlxpin-bundle.json"
    assert names[1] == "locks/tiny.toml"
    assert all(n.startswith("blobs/") for n in names[2:])
    assert len(names[2:]) == 5  # six files, two with the same content
    hub.stop()
    b = other_host(project, tmp_path)
    hub.clear_requests()
    result = b.json("import", str(bundle))
    assert result["ok"] is True
    (model,) = result["models"]
    assert model["name"] == "tiny" and model["lock"] == "same"
    assert model["commit"] == repo.head()
    b.ok("verify")
    status = b.json("status")["models"][0]
    assert status["fetch"] == "verified"
    assert status["origin"] == "bundle"
    assert "from bundle" in b.ok("status").stdout
    # The standard HF cache holds exactly the files, as fetch would have left them.
    view = Path(model["snapshot"])
    for entry in repo.files().values():
        assert (view / entry.path).read_bytes() == entry.content()
        link = b.hf_home / "hub" / f"models--{REPO.replace('/', '--')}" / "snapshots"
        assert (link / repo.head() / entry.path).read_bytes() == entry.content()
    # A second import is a no-op: nothing written, the stamp untouched.
    again = b.json("import", str(bundle))
    assert again["models"][0]["written_bytes"] == 0
    assert b.json("fetch")["models"][0]["up_to_date"] is True  # fetch agrees: nothing to do


def test_pipe_from_export_to_import(hub: HubServer, project: Project, tmp_path: Path) -> None:
    host_a(hub, project)
    b = other_host(project, tmp_path)
    export = subprocess.Popen(
        [sys.executable, "-m", "mlxpin", "export", "-o", "-"],
        cwd=project.root,
        env=project.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    imported = subprocess.run(
        [sys.executable, "-m", "mlxpin", "import", "-"],
        cwd=b.root,
        env=b.env,
        stdin=export.stdout,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert export.stdout is not None
    export.stdout.close()
    assert export.wait(timeout=60) == 0
    assert export.stderr is not None
    assert "exported tiny" in export.stderr.read().decode()
    assert imported.returncode == 0, imported.stderr
    assert "tiny: imported and verified 6 files" in imported.stdout
    b.ok("verify")


def _bundle(project: Project, tmp_path: Path) -> bytes:
    path = tmp_path / "good.tar"
    project.ok("export", "-o", str(path))
    return path.read_bytes()


def _member_offset(data: bytes, name: str) -> tuple[int, int]:
    """(data offset, size) of a member."""
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        member = tar.getmember(name)
        return member.offset_data, member.size


def _big_member(data: bytes) -> str:
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        return max(tar.getmembers(), key=lambda m: m.size).name


def _assert_nothing_installed(b: Project) -> None:
    assert blob_files(b) == []
    assert not any((b.state_dir / "snapshots").glob("*")) if b.state_dir.exists() else True
    status = b.json("status")["models"][0]
    assert status["fetch"] == "missing"


def test_flipped_byte_installs_nothing(hub: HubServer, project: Project, tmp_path: Path) -> None:
    host_a(hub, project)
    data = bytearray(_bundle(project, tmp_path))
    name = _big_member(bytes(data))
    offset, size = _member_offset(bytes(data), name)
    data[offset + size // 2] ^= 0xFF
    b = other_host(project, tmp_path)
    result = run_with_input(b, bytes(data), "import", "-")
    assert result.returncode == 65, result.stderr
    stderr = result.stderr.decode()
    assert name in stderr and ".safetensors)" in stderr and "hash to" in stderr
    _assert_nothing_installed(b)


@pytest.mark.parametrize("cut", [0.3, 0.999])
def test_truncated_bundle_installs_nothing(
    hub: HubServer, project: Project, tmp_path: Path, cut: float
) -> None:
    host_a(hub, project)
    data = _bundle(project, tmp_path)
    b = other_host(project, tmp_path)
    result = run_with_input(b, data[: int(len(data) * cut)], "import", "-")
    assert result.returncode == 65, result.stderr
    assert "truncated" in result.stderr.decode()
    _assert_nothing_installed(b)


def _rebuild(data: bytes, edit: str) -> bytes:
    """A bundle with one member dropped, added, renamed or turned into a link."""
    out = io.BytesIO()
    with (
        tarfile.open(fileobj=io.BytesIO(data)) as src,
        tarfile.open(fileobj=out, mode="w", format=tarfile.USTAR_FORMAT) as dst,
    ):
        members = src.getmembers()
        big = max(members, key=lambda m: m.size).name
        for member in members:
            content = src.extractfile(member)
            if edit == "missing" and member.name == big:
                continue
            if edit == "escape" and member.name == big:
                member.name = "../../../../escaped.safetensors"
            if edit == "link" and member.name == big:
                link = tarfile.TarInfo(big)
                link.type = tarfile.SYMTYPE
                link.linkname = "/etc/passwd"
                dst.addfile(link)
                continue
            dst.addfile(member, content)
        if edit == "extra":
            extra = tarfile.TarInfo("blobs/sha256/" + "ab" * 32)
            extra.size = 3
            dst.addfile(extra, io.BytesIO(b"bad"))
    return out.getvalue()


@pytest.mark.parametrize("edit", ["missing", "extra", "escape", "link"])
def test_damaged_bundle_installs_nothing(
    hub: HubServer, project: Project, tmp_path: Path, edit: str
) -> None:
    host_a(hub, project)
    data = _rebuild(_bundle(project, tmp_path), edit)
    b = other_host(project, tmp_path)
    result = run_with_input(b, data, "import", "-")
    assert result.returncode == 65, result.stderr
    stderr = result.stderr.decode()
    expected = {
        "missing": "missing from the bundle",
        "extra": "is not a file of any lock",
        "escape": "../../../../escaped.safetensors",
        "link": "not a regular file",
    }[edit]
    assert expected in stderr
    _assert_nothing_installed(b)
    assert not (tmp_path / "escaped.safetensors").exists()
    assert not list(tmp_path.rglob("escaped.safetensors"))


def test_lock_mismatch_is_refused_naming_both_commits(
    hub: HubServer, project: Project, tmp_path: Path
) -> None:
    repo = host_a(hub, project)
    old = repo.head()
    data = _bundle(project, tmp_path)
    b = other_host(project, tmp_path)
    repo.commit({"config.json": b'{"model_type": "llama", "v": 2}\n'})
    b.env["HF_ENDPOINT"] = hub.url
    b.ok("lock", "--update")
    new = repo.head()
    result = run_with_input(b, data, "import", "-")
    assert result.returncode == 78, result.stderr
    stderr = result.stderr.decode()
    assert old in stderr and new in stderr
    assert blob_files(b) == []


def test_write_locks_adopts_the_bundle_locks(
    hub: HubServer, project: Project, tmp_path: Path
) -> None:
    host_a(hub, project)
    data = _bundle(project, tmp_path)
    b = other_host(project, tmp_path, locks=False)
    plain = run_with_input(b, data, "import", "-", "--json")
    assert plain.returncode == 78, plain.stderr  # a bundle vouches only for itself
    assert "--write-locks" in plain.stdout.decode()
    assert not (b.lock_dir / "tiny.toml").exists()
    assert cache_files(b) == []
    adopted = json.loads(run_with_input(b, data, "import", "-", "--json", "--write-locks").stdout)
    assert adopted["models"][0]["lock"] == "written"
    assert (b.lock_dir / "tiny.toml").read_text() == project.lock_text("tiny")
    b.ok("lock", "--check")
    b.ok("verify")


def _planted(project: Project, name: str) -> bytes:
    """A bundle whose lock (named `name`) pins the same commit with other config bytes."""
    good = parse_lock(project.lock_text("tiny").encode(), Path("tiny.toml"))
    config = b'{"model_type": "evil"}\n'
    oid = "gitsha1:" + hashlib.sha1(b"blob %d\0" % len(config) + config).hexdigest()  # noqa: S324
    files = [
        LockedFile(f.path, len(config), oid) if f.path == "config.json" else f for f in good.files
    ]
    lock = make_locked(name, good.original, good.commit, good.last_modified, files)
    view = Path(project.json("status")["models"][0]["snapshot"])
    blobs = {blob_member(f.oid): f for f in lock.files}
    out = io.BytesIO()
    writer = BundleWriter(out)
    total = sum(f.size for f in blobs.values())
    writer.add_bytes("mlxpin-bundle.json", render_index((lock,), len(blobs), total))
    writer.add_bytes(f"locks/{name}.toml", render(lock))
    for member, file in blobs.items():
        data = config if file.oid == oid else (view / file.path).read_bytes()
        writer.add_file(member, io.BytesIO(data), len(data))
    writer.close()
    return out.getvalue()


@pytest.mark.parametrize("name", ["evil", "runtime"])
def test_import_never_replaces_a_pinned_commit(
    hub: HubServer, project: Project, tmp_path: Path, name: str
) -> None:
    repo = host_a(hub, project)
    data = _planted(project, name)
    snapshot = (
        project.hf_home / "hub" / f"models--{REPO.replace('/', '--')}" / "snapshots" / repo.head()
    )
    before = (snapshot / "config.json").read_bytes()
    result = run_with_input(project, data, "import", "-", "--write-locks")
    assert result.returncode in (65, 78), result.stderr
    assert (snapshot / "config.json").read_bytes() == before
    assert not (project.lock_dir / f"{name}.toml").exists()
    project.ok("verify")


def test_export_refuses_what_is_not_verified(
    hub: HubServer, project: Project, tmp_path: Path
) -> None:
    seed(hub)
    project.write_manifest(MANIFEST)
    project.ok("lock")
    out = tmp_path / "x.tar"
    result = project.run("export", "-o", str(out))
    assert result.returncode == 66, result.stderr
    assert "tiny: cannot export: snapshot not fetched" in result.stderr
    assert not out.exists()
    project.ok("fetch")
    blob = next(p for p in blob_files(project) if p.stat().st_size > 1000)
    with blob.open("r+b") as handle:  # changed after it was verified
        handle.seek(10)
        handle.write(b"X")
    result = project.run("export", "-o", str(out))
    assert result.returncode == 66, result.stderr
    assert not out.exists()


def test_gc_keeps_imported_models(hub: HubServer, project: Project, tmp_path: Path) -> None:
    host_a(hub, project)
    data = _bundle(project, tmp_path)
    b = other_host(project, tmp_path)
    assert run_with_input(b, data, "import", "-").returncode == 0
    before = cache_files(b)
    gc = b.json("gc", "--yes")
    assert gc["ok"] is True
    assert cache_files(b) == before
    b.ok("verify")


# --- the mirror --------------------------------------------------------------------------


class Mirror:
    """`mlxpin mirror --port 0` on host A, as a subprocess."""

    def __init__(self, host: Project, *args: str, env: dict[str, str] | None = None) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mlxpin", "mirror", "--port", "0", *args],
            cwd=host.root,
            env=env or host.env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stderr is not None
        self.log: list[str] = []
        for line in self.proc.stderr:
            self.log.append(line)
            if "mlxpin mirror: serving" in line:
                self.url = line.rsplit(" ", 1)[1].strip()
                break
        else:
            raise AssertionError("".join(self.log))

    def __enter__(self) -> Mirror:
        return self

    def __exit__(self, *exc: object) -> None:
        self.proc.terminate()
        assert self.proc.wait(timeout=10) == 0


def client_env(host: Project, endpoint: str) -> dict[str, str]:
    return dict(host.env, HF_ENDPOINT=endpoint, HF_HUB_DISABLE_XET="1")


def test_fetch_from_a_mirror_makes_no_upstream_request(
    hub: HubServer, project: Project, tmp_path: Path
) -> None:
    repo = host_a(hub, project)
    b = other_host(project, tmp_path)
    hub.clear_requests()
    with Mirror(project) as mirror:
        b.env["HF_ENDPOINT"] = mirror.url
        data = b.json("fetch")
        assert data["ok"] is True, data
        b.ok("verify")
        assert b.json("status")["models"][0]["origin"] == "mirror"
        # The real client: snapshot_download at the pinned commit, and `hf download`.
        commit = repo.head()
        c = other_host(project, tmp_path, "c")
        code = (
            "import sys; from huggingface_hub import snapshot_download; "
            f"print(snapshot_download({REPO!r}, revision={commit!r}))"
        )
        done = subprocess.run(
            [sys.executable, "-c", code],
            env=client_env(c, mirror.url),
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        snapshot = Path(done.stdout.strip().splitlines()[-1])
        d = other_host(project, tmp_path, "d")
        hf = Path(sys.executable).parent / "hf"
        cli = subprocess.run(
            [str(hf), "download", REPO, "--revision", commit],
            env=client_env(d, mirror.url),
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert cli.returncode == 0, cli.stderr
        by_cli = d.hf_home / "hub" / f"models--{REPO.replace('/', '--')}" / "snapshots" / commit
        # The locked revision name resolves too.
        by_name = subprocess.run(
            [str(hf), "download", REPO, "config.json", "--revision", "main"],
            env=client_env(d, mirror.url),
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert by_name.returncode == 0, by_name.stderr
    for entry in repo.files().values():
        assert (snapshot / entry.path).read_bytes() == entry.content()
        assert (by_cli / entry.path).read_bytes() == entry.content()
    assert hub.count() == 0


def test_mirror_serves_only_what_is_locked_and_verified(
    hub: HubServer, project: Project, tmp_path: Path
) -> None:
    import httpx2

    repo = host_a(hub, project)
    other = hub.create_repo("acme/other")
    other.commit({"a.txt": b"a"})
    commit = repo.head()
    with Mirror(project) as mirror, httpx2.Client(base_url=mirror.url) as http:
        head = http.head(f"/{REPO}/resolve/{commit}/model.safetensors")
        assert head.status_code == 200
        entry = repo.files()["model.safetensors"]
        assert entry.lfs is not None
        assert head.headers["X-Repo-Commit"] == commit
        assert head.headers["ETag"] == f'"{entry.lfs.sha256}"'
        assert head.headers["X-Linked-Size"] == str(entry.size)
        assert "X-Xet-Hash" not in head.headers
        part = http.get(
            f"/{REPO}/resolve/{commit}/model.safetensors", headers={"Range": "bytes=10-19"}
        )
        assert part.status_code == 206 and part.content == entry.content()[10:20]
        plain = http.head(f"/{REPO}/resolve/main/config.json")
        assert plain.headers["ETag"] == f'"{repo.files()["config.json"].blob_id}"'
        info = http.get(f"/api/models/{REPO}/revision/{commit}").json()
        assert info["sha"] == commit
        siblings = {s["rfilename"]: s for s in info["siblings"]}
        assert siblings["model.safetensors"]["blobId"] == entry.blob_id  # the pointer's sha1
        for path, status, code in [
            ("/acme/other/resolve/main/a.txt", 404, "RepoNotFound"),
            (f"/{REPO}/resolve/{'0' * 40}/config.json", 404, "RevisionNotFound"),
            (f"/{REPO}/resolve/{commit}/secret.txt", 404, "EntryNotFound"),
            (f"/{REPO}/resolve/{commit}/..%2F..%2Fetc%2Fpasswd", 404, "EntryNotFound"),
            ("/api/models/acme/other/revision/main", 404, "RepoNotFound"),
        ]:
            answer = http.get(path)
            assert (answer.status_code, answer.headers.get("X-Error-Code")) == (status, code)
        # A blob changed on disk after it was verified is no longer served.
        view = Path(project.json("status")["models"][0]["snapshot"])
        target = (view / "model.safetensors").resolve()
        with target.open("r+b") as handle:
            handle.seek(5)
            handle.write(b"!")
        gone = http.get(f"/{REPO}/resolve/{commit}/model.safetensors")
        assert gone.status_code == 404
        info_gone = http.get(f"/api/models/{REPO}/revision/{commit}")
        assert info_gone.status_code == 404


def test_a_blob_corrupted_on_the_mirror_is_never_taken_as_good(
    hub: HubServer, project: Project, tmp_path: Path
) -> None:
    """Even a flip that keeps size and mtime: the mirror's stamp check (ctime) or, past
    it, B's own hash check refuses it."""
    import os

    host_a(hub, project)
    view = Path(project.json("status")["models"][0]["snapshot"])
    target = (view / "model.safetensors").resolve()
    before = target.stat()
    with target.open("r+b") as handle:
        handle.seek(1000)
        byte = handle.read(1)
        handle.seek(1000)
        handle.write(bytes([byte[0] ^ 0xFF]))
    os.utime(target, ns=(before.st_atime_ns, before.st_mtime_ns))
    b = other_host(project, tmp_path)
    with Mirror(project) as mirror:
        b.env["HF_ENDPOINT"] = mirror.url
        result = b.run("fetch")
    assert result.returncode == 65, result.stderr
    assert "is not on the Hub at this commit" in result.stderr or "hash to" in result.stderr
    assert b.json("status")["models"][0]["fetch"] == "missing"


def test_a_gated_pin_is_recorded_and_mirrored_only_when_allowed(
    hub: HubServer, project: Project, tmp_path: Path
) -> None:
    seed(hub, gated="manual")
    project.write_manifest(MANIFEST)
    project.ok("lock")
    assert 'access = "gated"' in project.lock_text("tiny")
    hub.add_token("hf_reader", can_read=[REPO])
    project.ok("fetch", env={**project.env, "HF_TOKEN": "hf_reader"})
    refused = project.run("mirror", "--port", "0")
    assert refused.returncode == 78 and "--allow-gated" in refused.stderr
    open_lan = project.run("mirror", "--port", "0", "--allow-gated", "--host", "0.0.0.0")
    assert open_lan.returncode == 78 and "--api-key-file" in open_lan.stderr
    with Mirror(project, "--allow-gated") as mirror:
        url = f"{mirror.url}/api/models/{REPO}"
        with urllib.request.urlopen(url, timeout=10) as answer:
            assert json.loads(answer.read())["gated"] == "manual"


def _ask(port: int, request: bytes, source: str = "127.0.0.1", rcvbuf: int = 0) -> socket.socket:
    sock = socket.socket()
    if rcvbuf:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.bind((source, 0))
    sock.connect(("127.0.0.1", port))
    sock.sendall(request)
    return sock


def _read_all(sock: socket.socket, timeout_s: float) -> bytes:
    sock.settimeout(timeout_s)
    out = bytearray()
    with contextlib.suppress(ConnectionResetError):
        while chunk := sock.recv(1 << 20):
            out += chunk
    sock.close()
    return bytes(out)


def test_clients_that_stop_reading_hold_no_transfer_slot_for_long(
    hub: HubServer, project: Project
) -> None:
    """Issue #20 item 8: four clients that never read held every slot; even a HEAD waited."""
    big = 16 << 20  # far past what the socket buffers take
    repo = seed(hub, big=big)
    project.write_manifest(MANIFEST)
    project.ok("lock")
    project.ok("fetch")
    resolve = f"/{REPO}/resolve/{repo.head()}"
    env = dict(project.env, MLXPIN_MIRROR_SEND_TIMEOUT="2")
    with Mirror(project, "--max-transfers", "4", env=env) as mirror:
        port = int(mirror.url.rsplit(":", 1)[1])
        get = f"GET {resolve}/model.safetensors HTTP/1.1\r\nHost: m\r\n\r\n".encode()
        hogs = [_ask(port, get, rcvbuf=4096) for _ in range(4)]
        time.sleep(0.5)
        for method, path in [("HEAD", "model.safetensors"), ("GET", "config.json")]:
            ask = f"{method} {resolve}/{path} HTTP/1.1\r\nHost: m\r\nConnection: close\r\n\r\n"
            answer = _read_all(_ask(port, ask.encode(), source="127.0.0.2"), 5)
            assert answer.startswith(b"HTTP/1.1 200"), (method, answer[:200])
        time.sleep(3)  # past the send timeout: the first hog's transfer was cut
        assert len(_read_all(hogs[0], 10)) < big
        for hog in hogs[1:]:
            hog.close()


def test_mirror_requires_its_key_when_set(hub: HubServer, project: Project, tmp_path: Path) -> None:
    host_a(hub, project)
    b = other_host(project, tmp_path)
    with Mirror(project, env=dict(project.env, MLXPIN_API_KEY="k3y")) as mirror:
        b.env["HF_ENDPOINT"] = mirror.url
        refused = b.run("fetch")
        assert refused.returncode == 77, refused.stderr
        b.ok("fetch", env=dict(b.env, HF_TOKEN="k3y"))
    b.ok("verify")


@pytest.mark.e2e
def test_import_on_an_offline_host_then_launch_serves_a_completion(
    hub: HubServer, project: Project, tmp_path: Path
) -> None:
    import openai

    from mlxpin.dev.tinymodel import generate
    from mlxpin.gateway.addresses import free_port
    from test_cli_launch import Launched, manifest

    files = generate(tmp_path / "tiny-model")
    from test_cli_launch import REPO as TINY

    hub.create_repo(TINY).commit({p.name: p.read_bytes() for p in files}, message="tiny model")
    port = free_port()
    project.write_manifest(manifest(port))
    project.ok("lock")
    project.ok("fetch")
    hub.stop()  # host B never sees a hub
    b = other_host(project, tmp_path)
    export = subprocess.Popen(
        [sys.executable, "-m", "mlxpin", "export", "-o", "-"],
        cwd=project.root,
        env=project.env,
        stdout=subprocess.PIPE,
    )
    imported = subprocess.run(
        [sys.executable, "-m", "mlxpin", "import", "-"],
        cwd=b.root,
        env=dict(b.env, HF_HUB_OFFLINE="1"),
        stdin=export.stdout,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert export.stdout is not None
    export.stdout.close()
    assert export.wait(timeout=60) == 0
    assert imported.returncode == 0, imported.stderr
    running = Launched(b, port, b.env)
    try:
        running.wait_healthy(120)
        client = openai.OpenAI(base_url=running.base + "/v1", api_key="unused")
        answer = client.chat.completions.create(
            model="tiny-chat", messages=[{"role": "user", "content": "hi"}], max_tokens=4
        )
        assert answer.model == "tiny-chat"
        assert answer.choices
    finally:
        assert running.stop() == 0


# --- fetch at link speed: ranged connections ---------------------------------------------


def ranged_env(host: Project, connections: int = 4) -> dict[str, str]:
    return dict(host.env, MLXPIN_RANGED_MIN_MB="1", MLXPIN_FETCH_CONNECTIONS=str(connections))


def test_large_files_come_over_several_ranges_and_are_verified(
    hub: HubServer, project: Project
) -> None:
    repo = seed(hub)
    project.write_manifest(MANIFEST)
    project.ok("lock")
    # Per connection: more connections pay, and the rest of the file is long enough
    # (at least WORTH_S at the measured rate, on two connections too) for fetch to try them.
    hub.throttle_bps = 600_000
    data = project.json("fetch", env=ranged_env(project))
    hub.throttle_bps = None
    assert data["ok"] is True, data
    ranges = [r.range for r in hub.matching("GET", ".safetensors")]
    assert len(ranges) >= 3 and ranges[0] is None, ranges  # starts on one plain GET
    assert all(r and r.startswith("bytes=") for r in ranges[1:]), ranges
    assert len(hub.matching("GET", "config.json")) == 1  # small files: one plain GET
    view = Path(data["models"][0]["snapshot"])
    for entry in repo.files().values():
        assert (view / entry.path).read_bytes() == entry.content()
    assert data["models"][0]["downloaded_bytes"] == distinct_size(repo)
    project.ok("verify")


def test_ranges_are_retried_and_a_corrupt_range_is_refused(
    hub: HubServer, project: Project
) -> None:
    seed(hub)
    project.write_manifest(MANIFEST)
    project.ok("lock")
    hub.cut_after(".safetensors", 100_000, times=2)
    project.ok("fetch", env=ranged_env(project))
    project.ok("verify")
    shutil.rmtree(project.hf_home)
    project.hf_home.mkdir()
    hub.reset_faults()
    hub.corrupt(".safetensors")
    result = project.run("fetch", env=ranged_env(project))
    assert result.returncode == 65, result.stderr
    assert "hash to" in result.stderr
    assert not [p for p in blob_files(project) if p.stat().st_size == BIG]
    assert project.json("status")["models"][0]["fetch"] == "missing"


def test_an_interrupted_ranged_fetch_resumes_every_range(hub: HubServer, project: Project) -> None:
    import signal
    import time

    seed(hub, big=8 * 1024 * 1024)
    project.write_manifest(MANIFEST)
    project.ok("lock")
    hub.throttle_bps = 1_000_000  # per connection
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlxpin", "fetch", "-q"],
        cwd=project.root,
        env=ranged_env(project),
    )
    progress = 0
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline and progress < 1_000_000:
        time.sleep(0.2)
        for sidecar in (project.hf_home / "hub").rglob("*.ranges"):
            with contextlib.suppress(OSError, ValueError):
                saved = json.loads(sidecar.read_text())
                progress = sum(done for _, _, done in saved["parts"])
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert progress >= 1_000_000, "no range progress was recorded"
    hub.throttle_bps = None
    hub.clear_requests()
    data = project.json("fetch", env=ranged_env(project))
    assert data["ok"] is True
    starts = [r.range for r in hub.matching("GET", ".safetensors")]
    assert starts and all(r is not None for r in starts)
    assert data["models"][0]["downloaded_bytes"] < 8 * 1024 * 1024
    project.ok("verify")


def test_ranged_fetch_from_a_mirror(hub: HubServer, project: Project, tmp_path: Path) -> None:
    repo = host_a(hub, project)
    b = other_host(project, tmp_path)
    with Mirror(project) as mirror:
        b.env["HF_ENDPOINT"] = mirror.url
        data = b.json("fetch", env=ranged_env(b))
    assert data["ok"] is True, data
    assert data["models"][0]["downloaded_bytes"] == distinct_size(repo)
    b.ok("verify")


def test_a_killed_import_leaves_nothing_visible_and_a_rerun_completes(
    hub: HubServer, project: Project, tmp_path: Path
) -> None:
    import signal
    import time

    host_a(hub, project)
    data = _bundle(project, tmp_path)
    b = other_host(project, tmp_path)
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlxpin", "import", "-"],
        cwd=b.root,
        env=b.env,
        stdin=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    assert proc.stdin is not None
    proc.stdin.write(data[: len(data) * 2 // 3])  # the rest never comes
    proc.stdin.flush()
    deadline = time.monotonic() + 60
    hub_dir = b.hf_home / "hub"
    while time.monotonic() < deadline and not list(hub_dir.rglob("*.incomplete")):
        time.sleep(0.1)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    status = b.json("status")["models"][0]
    assert status["fetch"] == "missing"
    assert not list((b.state_dir / "snapshots").glob("*.stamp"))
    result = run_with_input(b, data, "import", "-")
    assert result.returncode == 0, result.stderr
    b.ok("verify")


def test_gc_during_an_import_keeps_what_it_placed(
    hub: HubServer, project: Project, tmp_path: Path
) -> None:
    import time

    host_a(hub, project)
    data = _bundle(project, tmp_path)
    b = other_host(project, tmp_path, locks=False)
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlxpin", "import", "-", "--write-locks"],
        cwd=b.root,
        env=b.env,
        stdin=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdin is not None
    proc.stdin.write(data[: len(data) // 2])
    proc.stdin.flush()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not [
        p for p in blob_files(b) if "." not in p.name and p.stat().st_size
    ]:
        time.sleep(0.05)
    assert b.json("gc", "--yes")["ok"] is True
    proc.stdin.write(data[len(data) // 2 :])
    proc.stdin.close()
    assert proc.wait(timeout=60) == 0
    b.ok("verify")


def test_a_failed_import_keeps_a_blob_another_import_placed_meanwhile(
    hub: HubServer, project: Project, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mlxpin.errors import BundleError
    from mlxpin.store import transfer
    from mlxpin.store.bundle import BundleReader
    from mlxpin.store.fetch import ensure_blob
    from mlxpin.store.layout import StoreLayout
    from mlxpin.store.sources import LocalSourceBytes
    from mlxpin.store.verify import NoProgress

    host_a(hub, project)
    view = Path(project.json("status")["models"][0]["snapshot"])
    data = _rebuild(_bundle(project, tmp_path), "missing")
    b = other_host(project, tmp_path)
    layout = StoreLayout(hub_cache=b.hf_home / "hub", state_dir=b.state_dir)
    real = ensure_blob
    raced: list[Path] = []

    def racing(layout: StoreLayout, lock: Any, file: Any, source: Any, progress: Any) -> Any:
        if not raced:  # another import publishes this blob just before we take its mutex
            real(layout, lock, file, LocalSourceBytes(view, lock.name), progress)
            raced.append(layout.blob(lock, file))
        return real(layout, lock, file, source, progress)

    monkeypatch.setattr(transfer, "ensure_blob", racing)
    with pytest.raises(BundleError):
        transfer.import_bundle(
            layout, BundleReader(io.BytesIO(data), "x"), lambda _: None, NoProgress()
        )
    assert raced and raced[0].is_file()
