"""`mlxpin fetch`, `verify`, `status` end to end against the loopback hub."""

from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import time
import tomllib
from pathlib import Path
from typing import Any

import pytest
from huggingface_hub import hf_hub_url, snapshot_download
from hypothesis import given
from hypothesis import strategies as st

from mlxpin.hub.client import file_url

from conftest import Project
from hubserver import HubServer, LfsContent, Repo, pseudo_random_bytes

REPO = "mlx-community/tiny-4bit"
SECRET = "hf_SECRETsecretSECRETsecret0123456789"
BIG = 8 * 1024 * 1024

MANIFEST = f"""version = 1

[models.tiny]
api_label = "tiny-it"
port = 18001

[models.tiny.launch]
repo = "{REPO}"
"""


def seed(hub: HubServer, big: int = 300_000, **options: object) -> Repo:
    repo = hub.create_repo(REPO, **options)  # type: ignore[arg-type]
    repo.commit(
        {
            "config.json": b'{"model_type": "llama"}\n',
            "tokenizer.json": b'{"version": "1.0"}\n',
            "sub/dir/notes.txt": b"nested\n",
            "model.safetensors": LfsContent(pseudo_random_bytes(big, seed=1)),
            "empty.txt": b"",
        }
    )
    return repo


def locked(hub: HubServer, project: Project, big: int = 300_000, **options: object) -> Repo:
    repo = seed(hub, big, **options)
    project.write_manifest(MANIFEST)
    project.ok("lock")
    return repo


def cache(project: Project) -> Path:
    return project.hf_home / "hub" / ("models--" + REPO.replace("/", "--"))


def files_under(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")} if root.exists() else set()


def test_fetch_fills_the_standard_cache_and_an_exact_view(hub: HubServer, project: Project) -> None:
    repo = locked(hub, project)
    commit = repo.head()
    data = project.json("fetch")
    assert data["ok"] is True
    model = data["models"][0]
    assert model["up_to_date"] is False
    assert model["downloaded_bytes"] == sum(e.size for e in repo.files(commit).values())
    view = Path(model["snapshot"])
    lock = tomllib.loads(project.lock_text("tiny"))
    assert sorted(str(p.relative_to(view)) for p in view.rglob("*") if p.is_symlink()) == sorted(
        f["path"] for f in lock["files"]
    )
    for entry in repo.files(commit).values():
        assert (view / entry.path).read_bytes() == entry.content()
        etag = entry.lfs.sha256 if entry.lfs else entry.blob_id
        blob = cache(project) / "blobs" / etag
        assert blob.read_bytes() == entry.content()
        link = cache(project) / "snapshots" / commit / entry.path
        assert link.is_symlink() and not os.readlink(link).startswith("/")
        assert link.resolve() == blob.resolve()
    assert (cache(project) / "refs" / "main").read_text() == commit
    # Other tools share it: huggingface_hub finds the snapshot offline.
    shared = snapshot_download(
        REPO, revision=commit, cache_dir=project.hf_home / "hub", local_files_only=True
    )
    assert (Path(shared) / "model.safetensors").read_bytes() == (
        view / "model.safetensors"
    ).read_bytes()


def test_second_fetch_makes_zero_requests_and_hashes_nothing(
    hub: HubServer, project: Project
) -> None:
    locked(hub, project)
    project.ok("fetch")
    hub.clear_requests()
    data = project.json("fetch")
    assert hub.count() == 0
    assert data["models"][0]["up_to_date"] is True
    assert data["models"][0]["hashed_bytes"] == 0
    hub.stop()  # the Hub being down changes nothing for a fetched model
    assert "tiny: up to date" in project.ok("fetch").stdout


def test_lock_and_fetch_send_the_hub_no_telemetry(hub: HubServer, project: Project) -> None:
    """huggingface_hub >= 2.4 asks the endpoint for its agent registry (and names the
    agent in its User-Agent) unless telemetry is off: mlxpin turns it off for itself."""
    env = {k: v for k, v in project.env.items() if k != "HF_HUB_DISABLE_TELEMETRY"}
    seed(hub)
    project.write_manifest(MANIFEST)
    project.ok("lock", env=env)
    project.ok("fetch", env=env)
    paths = [r.path for r in hub.requests]
    assert paths and not [
        p for p in paths if not p.startswith(f"/api/models/{REPO}") and f"/{REPO}/resolve/" not in p
    ], paths
    assert not (project.hf_home / ".agent_harnesses.json").exists()


def test_fetch_of_locked_files_does_not_import_the_hub_api(
    hub: HubServer, project: Project
) -> None:
    """HfApi costs ~0.1 s to import, before the first byte; fetch only downloads."""
    locked(hub, project)
    traced = project.ok("fetch", env={**project.env, "PYTHONPROFILEIMPORTTIME": "1"})
    imported = {line.rsplit("|", 1)[-1].strip() for line in traced.stderr.splitlines()}
    assert "huggingface_hub.file_download" not in imported
    assert "huggingface_hub.hf_api" not in imported
    assert "huggingface_hub.utils._http" in imported  # it did download, through its session
    project.ok("verify")


@given(
    path=st.lists(
        st.text(st.characters(exclude_categories=["Cs"], exclude_characters="/"), min_size=1),
        min_size=1,
        max_size=3,
    ).map("/".join),
    revision=st.sampled_from(["main", "refs/pr/1", "v1.0", "a" * 40, "with space"]),
)
def test_file_urls_are_the_ones_huggingface_hub_makes(path: str, revision: str) -> None:
    expected = hf_hub_url("owner/name", path, revision=revision, endpoint="http://h:1")
    assert file_url("http://h:1", "owner/name", revision, path) == expected


def test_status_and_verify(hub: HubServer, project: Project) -> None:
    repo = locked(hub, project)
    status = project.json("status")["models"][0]
    assert (status["fetch"], status["lock"], status["api_label"]) == ("missing", "ok", "tiny-it")
    assert status["commit"] == repo.head()
    project.ok("fetch")
    status = project.json("status")["models"][0]
    assert status["fetch"] == "verified"
    assert status["size_on_disk"] == status["total_size"] > 0
    text = project.ok("status").stdout
    assert f"tiny: label tiny-it on 127.0.0.1:18001; {REPO}@main; {repo.head()[:7]}" in text
    assert "verified" in text
    result = project.ok("verify")
    assert "tiny: ok" in result.stdout


def test_corrupt_download_is_refused_and_never_visible(hub: HubServer, project: Project) -> None:
    locked(hub, project)
    hub.corrupt("model.safetensors")
    before = project.lock_text("tiny")
    result = project.run("fetch")
    assert result.returncode == 65
    assert "tiny: model.safetensors: downloaded bytes hash to sha256:" in result.stderr
    assert project.lock_text("tiny") == before  # the lock is never "fixed"
    blobs = files_under(cache(project) / "blobs")
    assert all(len(name) in (40, 64) for name in blobs)  # no partial file, no corrupt blob
    assert not any(
        p.name == "model.safetensors" for p in (project.state_dir / "snapshots").rglob("*")
    )
    assert project.json("status")["models"][0]["fetch"] == "missing"
    hub.reset_faults()
    project.ok("fetch")
    project.ok("verify")


def test_corrupted_blob_on_disk_is_caught_by_verify_and_repaired_by_fetch(
    hub: HubServer, project: Project
) -> None:
    repo = locked(hub, project)
    project.ok("fetch")
    entry = repo.files()["model.safetensors"]
    assert entry.lfs is not None
    blob = cache(project) / "blobs" / entry.lfs.sha256
    with blob.open("r+b") as handle:  # flip a byte in place, same size
        handle.seek(1000)
        byte = handle.read(1)
        handle.seek(1000)
        handle.write(bytes([byte[0] ^ 0xFF]))
    status = project.json("status")["models"][0]
    assert status["fetch"] == "unverified"
    result = project.run("verify")
    assert result.returncode == 65
    assert "tiny: model.safetensors: content hash differs from the lock" in result.stderr
    hub.clear_requests()
    project.ok("fetch")
    assert hub.count(method="GET", path_contains="model.safetensors") == 1
    assert blob.read_bytes() == entry.content()
    project.ok("verify")


def test_bit_rot_with_unchanged_mtime_is_caught_by_verify(hub: HubServer, project: Project) -> None:
    repo = locked(hub, project)
    project.ok("fetch")
    entry = repo.files()["config.json"]
    blob = cache(project) / "blobs" / entry.blob_id
    stat = blob.stat()
    blob.write_bytes(entry.content().replace(b"llama", b"llamb"))
    os.utime(blob, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    result = project.run("verify")
    assert result.returncode == 65
    assert "config.json" in result.stderr
    project.ok("fetch")  # verify dropped the stamp and the record: fetch re-checks and repairs
    project.ok("verify")


def test_foreign_corrupt_blob_in_cache_is_replaced(hub: HubServer, project: Project) -> None:
    repo = locked(hub, project)
    entry = repo.files()["model.safetensors"]
    assert entry.lfs is not None
    blob = cache(project) / "blobs" / entry.lfs.sha256
    blob.parent.mkdir(parents=True)
    blob.write_bytes(b"\0" * entry.size)  # right size, wrong bytes: what hf would accept
    result = project.ok("fetch", "-v")
    assert "corrupt; fetching it again" in result.stderr
    assert blob.read_bytes() == entry.content()


def test_hostile_etag_cannot_write_outside_the_cache(
    hub: HubServer, project: Project, tmp_path: Path
) -> None:
    locked(hub, project)
    hub.hostile_etag("model.safetensors", '"../../../../evil"')
    hub.hostile_etag("config.json", "/tmp/evil-absolute")
    before = files_under(tmp_path)
    project.ok("fetch")
    created = files_under(tmp_path) - before
    assert not any("evil" in name for name in created)
    assert not Path("/tmp/evil-absolute").exists()
    project.ok("verify")


def test_served_from_another_commit_is_refused(hub: HubServer, project: Project) -> None:
    locked(hub, project)
    hub.hostile_commit("f" * 40)
    result = project.run("fetch")
    assert result.returncode == 65
    assert "served from commit" in result.stderr


def test_cut_connection_resumes_with_range(hub: HubServer, project: Project) -> None:
    locked(hub, project, big=3_000_000)
    hub.cut_after("model.safetensors", 1_000_000, times=2)
    hub.cut_after("tokenizer.json", 5, reset=True)
    project.ok("fetch")
    gets = hub.matching(method="GET", path_contains="model.safetensors")
    assert len(gets) == 3
    assert gets[0].range is None
    assert gets[1].range is not None and gets[1].range.startswith("bytes=")
    assert int(gets[1].range.split("=")[1].rstrip("-")) >= 1_000_000
    project.ok("verify")


def test_persistent_5xx_gives_up_with_69(hub: HubServer, project: Project) -> None:
    locked(hub, project)
    hub.fail_next(100, status=503, path_contains="/resolve/")
    result = project.run("fetch")
    assert result.returncode == 69
    assert "unreachable" in result.stderr
    assert "Traceback" not in result.stderr
    assert project.json("status")["models"][0]["fetch"] == "missing"


def test_kill_9_mid_file_then_rerun_resumes_and_verifies(hub: HubServer, project: Project) -> None:
    repo = locked(hub, project, big=BIG)
    hub.throttle_bps = 4 * 1024 * 1024
    entry = repo.files()["model.safetensors"]
    assert entry.lfs is not None
    partial = cache(project) / "blobs" / (entry.lfs.sha256 + ".mlxpin.incomplete")
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlxpin", "fetch", "-q"], cwd=project.root, env=project.env
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if partial.exists() and partial.stat().st_size > 1_000_000:
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    written = partial.stat().st_size
    assert 0 < written < BIG
    # Nothing half-written is reachable through a snapshot.
    assert not (cache(project) / "snapshots" / repo.head() / "model.safetensors").exists()
    assert project.json("status")["models"][0]["fetch"] == "missing"
    hub.throttle_bps = None
    hub.clear_requests()
    project.ok("fetch")
    resumed = hub.matching(method="GET", path_contains="model.safetensors")
    assert len(resumed) == 1
    assert resumed[0].range == f"bytes={written}-"
    assert not partial.exists()
    project.ok("verify")


def test_parallel_fetches_all_succeed_and_download_each_blob_once(
    hub: HubServer, project: Project
) -> None:
    repo = locked(hub, project, big=BIG)
    hub.throttle_bps = 32 * 1024 * 1024
    hub.clear_requests()
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "mlxpin", "fetch", "-q"],
            cwd=project.root,
            env=project.env,
            stderr=subprocess.PIPE,
        )
        for _ in range(3)
    ]
    results = [(p.wait(timeout=120), p.stderr.read() if p.stderr else b"") for p in procs]
    assert [code for code, _ in results] == [0, 0, 0], results
    for path in repo.files():
        if path != "empty.txt":
            assert hub.count(method="GET", path_contains=path) == 1, path
    project.ok("verify")


def test_disk_full_is_a_clear_error_and_leaves_no_half_file(
    hub: HubServer, project: Project
) -> None:
    locked(hub, project, big=2_000_000)

    def small_disk() -> None:
        # Writes beyond 1 MB fail with EFBIG, as a full disk would fail them with ENOSPC.
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (1_000_000, 1_000_000))

    result = subprocess.run(
        [sys.executable, "-m", "mlxpin", "fetch"],
        cwd=project.root,
        env=project.env,
        capture_output=True,
        text=True,
        preexec_fn=small_disk,
        timeout=60,
        check=False,
    )
    assert result.returncode == 74, result.stderr
    assert "cannot write" in result.stderr
    assert "free some space" in result.stderr
    assert not list((cache(project) / "blobs").glob("*.incomplete"))
    project.ok("fetch")


def test_gated_repo_needs_a_token_with_access_to_fetch(hub: HubServer, project: Project) -> None:
    locked(hub, project, gated="manual")
    result = project.run("fetch")
    assert result.returncode == 77
    assert "gated" in result.stderr
    hub.add_token(SECRET, can_read=[REPO])
    env = {**project.env, "HF_TOKEN": SECRET}
    result = project.run("fetch", "--json", env=env)
    assert result.returncode == 0, result.stderr
    assert SECRET not in result.stdout + result.stderr
    for path in (project.state_dir, project.hf_home / "hub"):
        for file in path.rglob("*"):
            if file.is_file() and not file.is_symlink() and file.stat().st_size < 1_000_000:
                assert SECRET.encode() not in file.read_bytes(), file


def test_lfs_redirect_to_cdn_drops_the_token(hub: HubServer, project: Project) -> None:
    hub.cdn_redirect = True
    seed(hub, private=True)
    hub.add_token(SECRET, can_read=[REPO])
    env = {**project.env, "HF_TOKEN": SECRET}
    project.write_manifest(MANIFEST)
    project.ok("lock", env=env)
    project.ok("fetch", env=env)
    cdn = hub.matching(method="GET", path_contains="model.safetensors", origin="cdn")
    assert cdn and not any(r.has_auth for r in cdn)


def test_stale_or_missing_lock_refuses_to_fetch(hub: HubServer, project: Project) -> None:
    seed(hub)
    project.write_manifest(MANIFEST)
    result = project.run("fetch")
    assert result.returncode == 78
    assert "run `mlxpin lock tiny`" in result.stderr
    project.ok("lock")
    project.write_manifest(
        MANIFEST.replace(f'repo = "{REPO}"', f'repo = "{REPO}"\nrevision = "v2"')
    )
    result = project.run("fetch")
    assert result.returncode == 78
    assert "stale" in result.stderr


def test_path_source_is_imported_read_only_and_checked(project: Project) -> None:
    source = project.root / "models" / "local"
    source.mkdir(parents=True)
    (source / "config.json").write_text("{}\n")
    (source / "weights.safetensors").write_bytes(pseudo_random_bytes(100_000))
    project.write_manifest(
        'version = 1\n[models.local]\napi_label = "local"\n'
        '[models.local.launch]\npath = "./models/local"\n'
    )
    project.ok("lock")
    data = project.json("fetch")
    view = Path(data["models"][0]["snapshot"])
    blob = (view / "weights.safetensors").resolve()
    assert blob.is_relative_to(project.state_dir / "blobs" / "sha256")
    assert blob.stat().st_mode & 0o222 == 0
    assert blob.read_bytes() == (source / "weights.safetensors").read_bytes()
    # The source changes after locking: a second model reading it is refused.
    (source / "config.json").write_text('{"edited": 1}\n')
    (project.state_dir / "snapshots").rename(project.root / "old-views")
    for record in (project.state_dir / "verified").rglob("*"):
        if record.is_file():
            record.unlink()
    for stored in (project.state_dir / "blobs" / "sha256").iterdir():
        stored.chmod(0o644)
        stored.unlink()
    result = project.run("fetch")
    assert result.returncode == 65
    assert "changed since it was locked" in result.stderr
    assert "mlxpin lock --update local" in result.stderr


def local_model_project(project: Project) -> Path:
    """A manifest with one local-path model `local` (a lone config.json); its folder."""
    source = project.root / "models" / "local"
    source.mkdir(parents=True)
    (source / "config.json").write_text("{}\n")
    project.write_manifest(
        'version = 1\n[models.local]\napi_label = "local"\n'
        '[models.local.launch]\npath = "./models/local"\n'
    )
    return source


def test_import_of_a_path_model_names_no_commit(project: Project) -> None:
    """Issue #20 item 14: it printed 'at -'."""
    local_model_project(project)
    project.ok("lock")
    project.ok("fetch")
    project.ok("export", "--output", str(project.root / "b.tar"))
    line = project.ok("import", str(project.root / "b.tar")).stdout
    assert "local: imported and verified 1 files, 3 B (wrote 0 B)" in line


def test_cache_dir_flag_and_hf_hub_cache(hub: HubServer, project: Project) -> None:
    locked(hub, project)
    other = project.root / "other-cache"
    project.ok("fetch", "--cache-dir", str(other))
    assert (other / ("models--" + REPO.replace("/", "--")) / "blobs").is_dir()
    assert not cache(project).exists()
    env = {**project.env, "HF_HUB_CACHE": str(project.root / "env-cache")}
    project.ok("fetch", env=env)
    assert (project.root / "env-cache" / ("models--" + REPO.replace("/", "--"))).is_dir()


def test_fetch_json_reports_and_progress_is_off_without_a_terminal(
    hub: HubServer, project: Project
) -> None:
    locked(hub, project)
    result = project.run("fetch", "--json")
    assert result.returncode == 0
    data = json.loads(result.stdout)
    assert set(data["models"][0]) >= {"name", "snapshot", "files", "total_size", "up_to_date"}
    assert "%|" not in result.stderr


def test_complete_partial_from_a_killed_run_needs_no_request(
    hub: HubServer, project: Project
) -> None:
    repo = locked(hub, project)
    entry = repo.files()["model.safetensors"]
    assert entry.lfs is not None
    blobs = cache(project) / "blobs"
    blobs.mkdir(parents=True)
    partial = blobs / (entry.lfs.sha256 + ".mlxpin.incomplete")
    partial.write_bytes(entry.content())  # killed between the last byte and the rename
    hub.clear_requests()
    project.ok("fetch")
    assert hub.count(method="GET", path_contains="model.safetensors") == 0
    assert not partial.exists()
    project.ok("verify")


def test_full_size_but_wrong_partial_is_downloaded_afresh(hub: HubServer, project: Project) -> None:
    repo = locked(hub, project)
    entry = repo.files()["model.safetensors"]
    assert entry.lfs is not None
    blobs = cache(project) / "blobs"
    blobs.mkdir(parents=True)
    (blobs / (entry.lfs.sha256 + ".mlxpin.incomplete")).write_bytes(b"\0" * entry.size)
    hub.clear_requests()
    project.ok("fetch")
    gets = hub.matching(method="GET", path_contains="model.safetensors")
    assert len(gets) == 1 and gets[0].range is None
    project.ok("verify")


def test_interrupted_download_counts_every_byte_received(hub: HubServer, project: Project) -> None:
    locked(hub, project, big=3_000_000)
    hub.cut_after("model.safetensors", 1_000_000)
    data = project.json("fetch")
    sizes = sum(e.size for e in hub.repo(REPO).files().values())
    assert data["models"][0]["downloaded_bytes"] == sizes


def test_ctrl_c_stops_a_fetch_promptly_and_a_rerun_completes(
    hub: HubServer, project: Project
) -> None:
    repo = hub.create_repo(REPO)
    repo.commit(
        {f"shard-{i}.safetensors": LfsContent(pseudo_random_bytes(BIG, seed=i)) for i in range(12)}
    )
    project.write_manifest(MANIFEST)
    project.ok("lock")
    hub.throttle_bps = 2 * 1024 * 1024
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlxpin", "fetch", "-q"],
        cwd=project.root,
        env=project.env,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 30
    while hub.count(method="GET", path_contains="/resolve/") < 8 and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=20)  # throttled, the whole fetch would take ~50 s
    assert proc.returncode == 130, stderr
    assert "interrupted" in stderr
    gets = [r.path for r in hub.matching(method="GET", path_contains="/resolve/")]
    assert len(gets) == 8, gets  # queued files were never started
    hub.throttle_bps = None
    project.ok("fetch")
    project.ok("verify")


def test_missing_local_source_file_is_a_clean_error(project: Project) -> None:
    source = local_model_project(project)
    project.ok("lock")
    (source / "config.json").unlink()
    result = project.run("fetch")
    assert result.returncode == 65
    assert "config.json: cannot be read" in result.stderr
    assert "Traceback" not in result.stderr and "internal error" not in result.stderr


def test_entry_gone_from_the_hub_is_permanent_not_retried(hub: HubServer, project: Project) -> None:
    locked(hub, project)
    hub.fail_next(
        1, status=404, path_contains="config.json", headers={"X-Error-Code": "EntryNotFound"}
    )
    result = project.run("fetch")
    assert result.returncode == 65
    assert "not on the Hub at this commit" in result.stderr
    assert hub.count(method="GET", path_contains="config.json") == 1


def test_other_tools_can_resolve_the_branch_offline_and_the_ref_follows_the_pin(
    hub: HubServer, project: Project
) -> None:
    repo = locked(hub, project)
    project.ok("fetch")
    ref = cache(project) / "refs" / "main"
    assert ref.read_text() == repo.head()
    shared = snapshot_download(REPO, cache_dir=project.hf_home / "hub", local_files_only=True)
    assert Path(shared).name == repo.head()
    ref.write_text("f" * 40)  # moved by hand (or by another tool) to a commit not pinned
    project.ok("fetch", "--cache-dir", str(project.hf_home / "hub"))
    assert ref.read_text() == repo.head()  # `main` means what the lock says it means


def test_identical_files_in_a_fork_get_their_own_view(hub: HubServer, project: Project) -> None:
    seed(hub)
    fork = hub.create_repo("someone/fork")
    fork.commit({p: e.content() for p, e in hub.repo(REPO).files().items()})
    project.write_manifest(
        MANIFEST + '\n[models.fork]\napi_label = "fork"\nport = 18002\n'
        '[models.fork.launch]\nrepo = "someone/fork"\n'
    )
    project.ok("lock")
    first = project.json("fetch")["models"]
    assert first[0]["snapshot"] != first[1]["snapshot"]
    again = project.json("fetch")["models"]
    assert all(m["up_to_date"] for m in again)


def test_blob_locks_are_group_writable_like_huggingface_hub(
    hub: HubServer, project: Project
) -> None:
    locked(hub, project)
    project.ok("fetch")
    locks = list((project.hf_home / "hub" / ".locks").rglob("*.lock"))
    assert locks
    assert all(p.stat().st_mode & 0o777 == 0o664 for p in locks)


# --- hardening (issue 8) ---------------------------------------------------------------


def blob_of(project: Project, repo: Repo, path: str) -> Path:
    entry = repo.files()[path]
    return cache(project) / "blobs" / (entry.lfs.sha256 if entry.lfs else entry.blob_id)


def test_planted_symlinks_in_a_shared_cache_are_never_followed(
    hub: HubServer, project: Project, tmp_path: Path
) -> None:
    """A blob or partial replaced by a link: the link's target is never written, chmodded
    or trusted; fetch replaces the link with a verified regular file."""
    repo = locked(hub, project)
    victims = {name: tmp_path / f"victim-{name}" for name in ("blob", "partial", "good")}
    for name, victim in victims.items():
        victim.write_bytes(b"precious " + name.encode())
        victim.chmod(0o600)
    good = repo.files()["tokenizer.json"].content()
    victims["good"].write_bytes(good)  # the right bytes: still not to be trusted as a blob
    config = blob_of(project, repo, "config.json")
    weights = blob_of(project, repo, "model.safetensors")
    tokenizer = blob_of(project, repo, "tokenizer.json")
    config.parent.mkdir(parents=True)
    config.symlink_to(victims["blob"])
    weights.with_name(weights.name + ".mlxpin.incomplete").symlink_to(victims["partial"])
    tokenizer.symlink_to(victims["good"])
    before = {
        n: (v.read_bytes(), v.stat().st_mode, v.stat().st_mtime_ns) for n, v in victims.items()
    }

    project.ok("fetch")

    after = {
        n: (v.read_bytes(), v.stat().st_mode, v.stat().st_mtime_ns) for n, v in victims.items()
    }
    assert after == before
    for blob, path in (
        (config, "config.json"),
        (weights, "model.safetensors"),
        (tokenizer, "tokenizer.json"),
    ):
        assert not blob.is_symlink() and blob.is_file()
        assert blob.read_bytes() == repo.files()[path].content()
    assert not weights.with_name(weights.name + ".mlxpin.incomplete").exists()
    project.ok("verify")


def test_a_planted_blob_lock_link_is_replaced_not_followed(
    hub: HubServer, project: Project, tmp_path: Path
) -> None:
    repo = locked(hub, project)
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    blob = blob_of(project, repo, "config.json")
    lock = project.hf_home / "hub" / ".locks" / blob.parent.parent.name / (blob.name + ".lock")
    lock.parent.mkdir(parents=True)
    lock.symlink_to(victim)
    project.ok("fetch")
    assert victim.read_bytes() == b"precious"
    assert not lock.is_symlink()


def test_a_blob_replaced_by_a_link_after_fetch_is_foreign(
    hub: HubServer, project: Project, tmp_path: Path
) -> None:
    repo = locked(hub, project)
    project.ok("fetch")
    config = blob_of(project, repo, "config.json")
    copy = tmp_path / "elsewhere.json"
    copy.write_bytes(config.read_bytes())
    config.unlink()
    config.symlink_to(copy)  # same bytes, but another file the cache does not own
    result = project.run("verify")
    assert result.returncode == 65
    assert "config.json: not a regular file" in result.stderr
    assert project.run("launch", "--dry-run").returncode == 66
    project.ok("fetch")
    assert not config.is_symlink() and copy.read_bytes() == config.read_bytes()


def view_of(project: Project) -> Path:
    return Path(project.json("status")["models"][0]["snapshot"])


def test_an_extra_file_in_the_view_is_refused_and_removed_by_fetch(
    hub: HubServer, project: Project
) -> None:
    """mlx_lm loads every *.safetensors in the directory: the view must hold nothing else."""
    repo = locked(hub, project)
    project.ok("fetch")
    view = view_of(project)
    extra = view / "model-zz.safetensors"
    extra.symlink_to(blob_of(project, repo, "model.safetensors"))
    status = project.json("status")["models"][0]
    assert status["fetch"] == "unverified"
    assert "model-zz.safetensors" in status["fetch_reason"]
    result = project.run("launch", "--dry-run")
    assert result.returncode == 66
    assert "model-zz.safetensors is not in the lock" in result.stderr
    result = project.run("launch", "--dry-run", "--verify")
    assert result.returncode == 66
    assert "model-zz.safetensors" in result.stderr
    result = project.run("verify")
    assert result.returncode == 65
    assert "tiny: model-zz.safetensors: not in the lock" in result.stderr
    assert "the bytes differ" not in result.stderr
    data = project.json("fetch")
    assert data["models"][0]["up_to_date"] is False
    assert not extra.exists() and not extra.is_symlink()
    project.ok("verify")
    assert project.run("launch", "--dry-run").returncode == 0


def test_a_regular_file_or_directory_in_the_view_is_refused(
    hub: HubServer, project: Project
) -> None:
    locked(hub, project)
    project.ok("fetch")
    view = view_of(project)
    (view / "sub" / "extra").mkdir()
    assert project.json("status")["models"][0]["fetch"] == "unverified"
    assert project.run("verify").returncode == 65
    project.ok("fetch")
    assert not (view / "sub" / "extra").exists()
    (view / "config.json").unlink()
    (view / "config.json").write_bytes(b"{}")
    assert project.run("launch", "--dry-run").returncode == 66
    assert "config.json" in project.run("verify").stderr
    project.ok("fetch")
    assert (view / "config.json").is_symlink()


def test_a_view_that_is_a_symlink_is_refused(
    hub: HubServer, project: Project, tmp_path: Path
) -> None:
    locked(hub, project)
    project.ok("fetch")
    view = view_of(project)
    elsewhere = tmp_path / "elsewhere"
    view.rename(elsewhere)
    view.symlink_to(elsewhere)
    listing_before = files_under(elsewhere)
    result = project.run("launch", "--dry-run")
    assert result.returncode == 66
    assert "symlink" in result.stderr
    assert project.json("status")["models"][0]["fetch"] == "unverified"
    assert project.run("verify").returncode == 65
    project.ok("fetch")
    assert view.is_dir() and not view.is_symlink()
    assert files_under(elsewhere) == listing_before  # never written through the link
    assert project.run("launch", "--dry-run").returncode == 0


def test_in_place_rewrite_with_mtime_restored_is_caught_by_the_stamp(
    hub: HubServer, project: Project
) -> None:
    repo = locked(hub, project)
    project.ok("fetch")
    blob = blob_of(project, repo, "config.json")
    stat = blob.stat()
    with blob.open("r+b") as handle:  # same inode, same size
        handle.write(blob.read_bytes().replace(b"llama", b"llamb"))
    os.utime(blob, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert project.json("status")["models"][0]["fetch"] == "unverified"
    result = project.run("launch", "--dry-run")
    assert result.returncode == 65  # re-hashed at boot: the bytes changed
    assert "config.json: content hash differs from the lock" in result.stderr
    data = project.json("fetch")
    assert data["models"][0]["up_to_date"] is False
    assert blob.read_bytes() == repo.files()["config.json"].content()


def test_refusal_messages_read_well(hub: HubServer, project: Project) -> None:
    locked(hub, project)
    project.ok("fetch")
    view = view_of(project)
    stamp = view.with_name(view.name + ".stamp")
    stamp.unlink()
    result = project.run("launch", "--dry-run")
    assert result.returncode == 66
    assert "tiny: the snapshot was never verified" in result.stderr
    assert "snapshot the snapshot" not in result.stderr
    project.ok("fetch")
    (view / "tokenizer.json").unlink()
    result = project.run("verify")
    assert result.returncode == 65
    assert "tiny: tokenizer.json: missing" in result.stderr
    assert "the bytes differ" not in result.stderr
    assert "mlxpin fetch tiny" in result.stderr


# --- a good citizen of the HF cache ---------------------------------------------------------


def hf_cli(project: Project, *args: str) -> subprocess.CompletedProcess[str]:
    hf = Path(sys.executable).parent / "hf"
    result = subprocess.run(
        [str(hf), *args], env=project.env, capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, (result.stdout, result.stderr)
    return result


def scan(project: Project) -> Any:
    from huggingface_hub import scan_cache_dir

    return scan_cache_dir(project.hf_home / "hub")


def test_hf_cache_prune_keeps_a_snapshot_pinned_by_commit(hub: HubServer, project: Project) -> None:
    repo = seed(hub)
    commit = repo.head()
    project.write_manifest(MANIFEST + f'revision = "{commit}"\n')
    project.ok("lock")
    project.ok("fetch")
    info = scan(project)
    assert not info.warnings
    (cached,) = info.repos
    assert {r.commit_hash: set(r.refs) for r in cached.revisions} == {
        commit: {f"mlxpin/tiny/{commit}"}
    }
    hf_cli(project, "cache", "prune", "--yes")
    assert (cache(project) / "snapshots" / commit / "model.safetensors").is_file()
    assert project.json("status")["models"][0]["fetch"] == "verified"
    assert project.run("launch", "--dry-run").returncode == 0


def test_refs_follow_the_pin_and_gc_leaves_no_dangling_ref(
    hub: HubServer, project: Project
) -> None:
    repo = locked(hub, project)
    old = repo.head()
    project.ok("fetch")
    ref = cache(project) / "refs" / "main"
    assert ref.read_text() == old
    new = repo.commit({"model.safetensors": LfsContent(pseudo_random_bytes(1000, seed=9))})
    project.ok("lock", "--update")
    project.ok("fetch")
    assert ref.read_text() == new  # offline tools asking for main get the pinned weights
    shared = snapshot_download(REPO, cache_dir=project.hf_home / "hub", local_files_only=True)
    assert Path(shared).name == new
    hf_cli(project, "cache", "prune", "--yes")
    assert project.run("launch", "--dry-run").returncode == 0
    project.ok("gc", "--yes")
    info = scan(project)
    assert not info.warnings, info.warnings
    (cached,) = info.repos
    refs = {name: r.commit_hash for r in cached.revisions for name in r.refs}
    assert refs == {"main": new, f"mlxpin/tiny/{new}": new}
    assert not (cache(project) / "refs" / "mlxpin" / "tiny" / old).exists()
    assert project.run("launch", "--dry-run").returncode == 0


def test_a_piped_fetch_prints_progress_lines(hub: HubServer, project: Project) -> None:
    """stderr is a pipe: a line every 2 s (bytes, rate, ETA) instead of nothing."""
    locked(hub, project, big=100 * 1000 * 1000)
    hub.throttle_bps = 1.5 * 1024 * 1024  # per connection: ~8 s over 8 connections
    try:
        result = project.run("fetch", "--connections", "8")
    finally:
        hub.throttle_bps = None
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("tiny: ")]
    assert len(lines) >= 3, result.stderr
    assert "/s, ETA " in lines[0]
    assert lines[-1].endswith("done")


def test_progress_json_events() -> None:
    import io
    from contextlib import redirect_stderr

    from mlxpin.cli.store import LineProgress

    now = [0.0]
    progress = LineProgress("tiny", as_json=True)
    progress.clock = lambda: now[0]
    progress.started = progress.last = 0.0
    progress.add_total(300)
    err = io.StringIO()
    with redirect_stderr(err):
        for _ in range(3):
            now[0] += 2.5
            progress.advance(100)
        progress.close()
    events = [json.loads(line) for line in err.getvalue().splitlines()]
    assert [e["event"] for e in events] == ["progress"] * 3 + ["done"]
    assert events[0] == {
        "event": "progress",
        "label": "tiny",
        "bytes": 100,
        "total": 300,
        "rate": 40,
        "eta_s": 5.0,
    }


def test_a_stalled_transfer_still_prints_progress_lines(monkeypatch: pytest.MonkeyPatch) -> None:
    import io
    from contextlib import redirect_stderr

    from mlxpin.cli.store import LineProgress

    monkeypatch.setattr(LineProgress, "INTERVAL_S", 0.2)
    err = io.StringIO()
    with redirect_stderr(err):
        progress = LineProgress("tiny", as_json=True)
        progress.add_total(300)
        progress.advance(100)
        time.sleep(1.0)  # not one byte more
        progress.close()
    events = [json.loads(line) for line in err.getvalue().splitlines()]
    assert [e["event"] for e in events[-2:]] == ["progress", "done"]
    assert len(events) >= 3 and {e["bytes"] for e in events} == {100}


def test_verify_rewrites_nothing_that_did_not_change(hub: HubServer, project: Project) -> None:
    """Issue #26 item 2: verify rewrote every file's record (two fsyncs each) and the
    stamp, unchanged: 25x the time of sha256sum on 5,000 small files."""
    locked(hub, project)
    project.ok("fetch")

    def written() -> dict[Path, tuple[int, int]]:
        files = [p for p in project.state_dir.rglob("*") if p.is_file()]
        return {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in files}

    before = written()
    assert any("verified" in p.parts for p in before)
    assert "tiny: ok" in project.ok("verify").stdout
    after = written()
    changed = [p for p in before if after.get(p) != before[p] and "verified" in p.parts]
    changed += [p for p in before if after.get(p) != before[p] and p.suffix == ".stamp"]
    assert changed == []


def test_verify_records_a_touched_blob_and_fetch_then_trusts_it(
    hub: HubServer, project: Project
) -> None:
    """verify reads the stamp, not each blob's record (#26): a blob whose stat the stamp
    still holds needs no new record; a touched one gets one, so fetch hashes nothing."""
    repo = locked(hub, project)
    project.ok("fetch")
    blob = blob_of(project, repo, "config.json")

    def described(st: os.stat_result) -> list[Path]:
        fields = [str(st.st_size), str(st.st_mtime_ns), str(st.st_ino)]
        records = (project.state_dir / "verified").rglob("*")
        return [r for r in records if r.is_file() and r.read_text().split()[:3] == fields]

    assert len(described(blob.stat())) == 1
    os.utime(blob, ns=(blob.stat().st_atime_ns, blob.stat().st_mtime_ns + 10**9))
    assert described(blob.stat()) == []
    assert "tiny: ok" in project.ok("verify").stdout
    assert len(described(blob.stat())) == 1
    assert project.json("fetch")["models"][0]["hashed_bytes"] == 0


@pytest.mark.parametrize("edit", ["a row twice", "a row more", "a stat changed"])
def test_verify_rewrites_a_stamp_that_says_anything_else(
    hub: HubServer, project: Project, edit: str
) -> None:
    """verify writes the stamp only when it changes (#26): its shortcut for "unchanged"
    still rewrites a stamp that lists a file twice, lists a file more, or another stat."""
    locked(hub, project)
    project.ok("fetch")
    (stamp,) = (project.state_dir / "snapshots").glob("*.stamp")
    data = json.loads(stamp.read_bytes())
    rows = data["files"]
    if edit == "a row twice":
        rows.append(rows[0])
    elif edit == "a row more":
        rows.append(["zzz.bin", *rows[0][1:]])
    else:
        rows[0][3] += 1
    stamp.write_text(json.dumps(data, separators=(",", ":")))
    assert project.json("status")["models"][0]["fetch"] != "verified"
    assert "tiny: ok" in project.ok("verify").stdout
    assert project.json("status")["models"][0]["fetch"] == "verified"


@pytest.mark.parametrize("gone", ["one blob", "the blobs directory"])
def test_verify_names_each_blob_that_is_gone(hub: HubServer, project: Project, gone: str) -> None:
    """verify looks blobs up by name in their directory (#26); a directory it cannot open
    still leaves every file named as missing, as a single missing blob is."""
    repo = locked(hub, project)
    project.ok("fetch")
    blob = blob_of(project, repo, "config.json")
    if gone == "one blob":
        blob.unlink()
    else:
        shutil.rmtree(blob.parent)
    result = project.run("verify")
    assert result.returncode != 0
    assert "tiny: config.json: missing (its blob is gone)" in result.stderr
    missing = result.stderr.count("missing (its blob is gone)")
    assert missing == (1 if gone == "one blob" else len(repo.files()))
