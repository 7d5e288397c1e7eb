"""`mlxpin gc` on real store states built by `fetch_model` (no network: local byte sources)."""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from mlxpin.config import Settings, load_settings
from mlxpin.project.lockdir import lock_names_on_disk
from mlxpin.project.lockfile import (
    HEADER,
    LockedFile,
    LockedModel,
    Original,
    lock_path,
    make_locked,
    read_lock,
    write_lock,
)
from mlxpin.store.fetch import fetch_model
from mlxpin.store.layout import StoreLayout, check_stamp, register_root
from mlxpin.store.sources import LocalSourceBytes
from mlxpin.store.verify import NoProgress
from mlxpin.util.atomic import hold_mutex

from conftest import Invoked, invoke

DAY = 24 * 3600


@dataclass
class Env:
    tmp: Path
    environ: dict[str, str | None]
    settings: Settings
    layout: StoreLayout

    def run(self, *args: str, lock_dir: Path | None = None) -> Invoked:
        argv = [*args, "--lock-dir", str(lock_dir or self.settings.lock_dir), "--json"]
        return invoke(argv, self.environ)

    def gc(self, *args: str, lock_dir: Path | None = None) -> dict[str, Any]:
        result = self.run("gc", *args, lock_dir=lock_dir)
        assert result.exit_code == 0, result.output
        data: dict[str, Any] = json.loads(result.stdout)
        return data


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    environ: dict[str, str | None] = {
        "HF_HOME": str(tmp_path / "hf"),
        "MLXPIN_HOME": str(tmp_path / "state"),
        "HF_HUB_CACHE": None,
        "HUGGINGFACE_HUB_CACHE": None,
        "MLXPIN_MANIFEST": None,
        "MLXPIN_LOCK_DIR": None,
    }
    clean = {k: v for k, v in environ.items() if v is not None}
    settings = load_settings(clean, cwd=tmp_path, manifest=tmp_path / "project" / "manifest.toml")
    yield Env(tmp_path, environ, settings, StoreLayout(settings.hub_cache, settings.state_dir))


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def git_sha1(data: bytes) -> str:
    return "gitsha1:" + hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()  # noqa: S324


def pin(
    env: Env,
    lock_dir: Path,
    name: str,
    files: dict[str, bytes],
    *,
    repo: str | None = None,
    commit: str = "c" * 40,
    revision: str = "main",
) -> LockedModel:
    """Lock and fetch a model whose bytes come from a local directory.

    With `repo` it is stored exactly as a Hub download is (Hub cache blobs, a
    `fetched` verification record, snapshot links); without, as a path source.
    """
    source = env.tmp / "sources" / f"{name}-{hashlib.sha1(repr(files).encode()).hexdigest()}"  # noqa: S324
    for path, data in files.items():
        (source / path).parent.mkdir(parents=True, exist_ok=True)
        (source / path).write_bytes(data)
    hashed = [
        LockedFile(p, len(d), git_sha1(d) if repo and p.endswith(".json") else sha(d))
        for p, d in files.items()
    ]
    if repo is not None:
        original = Original(repo=repo, path=None, revision=revision, files=None)
        lock = make_locked(name, original, commit, "2026-01-01T00:00:00Z", hashed)
    else:
        lock = make_locked(name, Original(None, f"./{name}", None, None), None, None, hashed)
    write_lock(lock_dir, lock)
    fetch_model(env.layout, lock, LocalSourceBytes(source, lock.name), NoProgress())
    register_root(env.layout, lock_dir)
    return lock


def listing(*roots: Path) -> dict[str, tuple[object, ...]]:
    """Every entry under the roots with what a change would touch."""
    found: dict[str, tuple[object, ...]] = {}
    for root in roots:
        for directory, dirs, names in os.walk(root):
            for name in (*dirs, *names):
                path = Path(directory) / name
                st = path.lstat()
                target = os.readlink(path) if path.is_symlink() else None
                found[str(path)] = (st.st_mode, st.st_size, st.st_mtime_ns, target)
    return found


def foreign_blob(env: Env, repo: str, data: bytes, commit: str = "f" * 40) -> Path:
    """A file another tool (hf download) put into the Hub cache, never seen by mlxpin."""
    repo_dir = env.layout.repo_dir(repo)
    blob = repo_dir / "blobs" / sha(data).split(":", 1)[1]
    blob.parent.mkdir(parents=True, exist_ok=True)
    blob.write_bytes(data)
    link = repo_dir / "snapshots" / commit / "model.safetensors"
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(os.path.relpath(blob, link.parent))
    (repo_dir / "refs").mkdir(exist_ok=True)
    (repo_dir / "refs" / "main").write_text(commit)
    return blob


def items(data: dict[str, Any], kind: str | None = None) -> list[dict[str, Any]]:
    return [i for i in data["items"] if kind is None or i["kind"] == kind]


def test_dry_run_changes_nothing_and_yes_removes_only_garbage(env: Env) -> None:
    lock_dir = env.settings.lock_dir
    old = pin(
        env,
        lock_dir,
        "gemma",
        {"config.json": b'{"v": 1}', "model.safetensors": b"old weights" * 100},
        repo="mlx-community/gemma",
        commit="a" * 40,
    )
    # The manifest moved on: a new commit shares config.json and replaces the weights.
    new = pin(
        env,
        lock_dir,
        "gemma",
        {"config.json": b'{"v": 1}', "model.safetensors": b"new weights" * 50},
        repo="mlx-community/gemma",
        commit="b" * 40,
    )
    local_old = pin(env, lock_dir, "tiny", {"w.bin": b"tiny v1" * 10})
    local_new = pin(env, lock_dir, "tiny", {"w.bin": b"tiny v2" * 10})
    roots = (env.settings.hub_cache, env.settings.state_dir, lock_dir)
    before = listing(*roots)

    dry = env.gc()
    assert listing(*roots) == before  # not even a lock file was created
    assert dry["dry_run"] is True
    old_weights = env.layout.blob(old, old.files[1])
    old_local = env.layout.blob(local_old, local_old.files[0])
    paths = {i["path"]: i for i in items(dry)}
    assert paths[str(old_weights)]["size"] == len(b"old weights" * 100)
    assert paths[str(old_local)]["kind"] == "local_blob"
    assert {i["kind"] for i in items(dry)} == {"view", "hub_blob", "local_blob", "ref"}
    refs = env.layout.repo_dir("mlx-community/gemma") / "refs"
    assert [i["path"] for i in items(dry, "ref")] == [str(refs / "mlxpin" / "gemma" / ("a" * 40))]
    assert str(env.layout.view(old)) in paths and str(env.layout.view(local_old)) in paths
    assert dry["bytes"] >= len(b"old weights" * 100) + len(b"tiny v1" * 10)
    assert all(i["status"] == "would_remove" for i in items(dry))

    done = env.gc("--yes")
    assert done["dry_run"] is False
    assert all(i["status"] == "removed" for i in items(done)), done
    assert done["freed_bytes"] == dry["bytes"]
    assert not old_weights.exists() and not old_local.exists()
    assert not env.layout.view(old).exists() and not env.layout.stamp(old).exists()
    assert not env.layout.verified_record(old_weights).exists()
    # The live pins are intact and still verified.
    assert check_stamp(env.layout, new).ok and check_stamp(env.layout, local_new).ok
    # The shared config.json stays, and so does the old commit's link to it; the link to
    # the deleted weights is gone. Of the refs, only mlxpin's ref of the old pin goes.
    assert (refs / "main").read_text() == "b" * 40
    assert sorted(p.name for p in (refs / "mlxpin" / "gemma").iterdir()) == ["b" * 40]
    old_snapshot = env.layout.hub_snapshot("mlx-community/gemma", "a" * 40)
    assert (old_snapshot / "config.json").exists()
    assert not (old_snapshot / "model.safetensors").is_symlink()
    assert (env.layout.hub_snapshot("mlx-community/gemma", "b" * 40) / "model.safetensors").exists()
    assert env.gc()["items"] == []


def test_emptied_hub_snapshot_dirs_are_removed(env: Env) -> None:
    lock_dir = env.settings.lock_dir
    pin(env, lock_dir, "m", {"sub/w.safetensors": b"one"}, repo="o/m", commit="a" * 40)
    pin(env, lock_dir, "m", {"sub/w.safetensors": b"two"}, repo="o/m", commit="b" * 40)
    env.gc("--yes")
    snapshots = env.layout.repo_dir("o/m") / "snapshots"
    assert sorted(p.name for p in snapshots.iterdir()) == ["b" * 40]


def test_foreign_blobs_need_all(env: Env) -> None:
    lock_dir = env.settings.lock_dir
    # Adopted: the blob was in the cache before mlxpin fetched the pin.
    adopted_data = b"weights another tool downloaded first"
    repo_dir = env.layout.repo_dir("o/adopted")
    adopted_blob = repo_dir / "blobs" / sha(adopted_data).split(":", 1)[1]
    adopted_blob.parent.mkdir(parents=True)
    adopted_blob.write_bytes(adopted_data)
    adopted = pin(env, lock_dir, "adopted", {"w.safetensors": adopted_data}, repo="o/adopted")
    record = env.layout.verified_record(adopted_blob).read_text().split()
    assert record[-1] == "adopted"
    lock_path(lock_dir, "adopted").unlink()  # no lock references it any more
    # Unrecorded: put there by `hf download`, never seen by mlxpin.
    unrecorded = foreign_blob(env, "o/other", b"hf download bytes")

    data = env.gc("--yes")
    assert adopted_blob.exists() and unrecorded.exists()
    assert {k["path"] for k in data["kept"]} == {str(adopted_blob), str(unrecorded)}
    assert data["kept_bytes"] == len(adopted_data) + len(b"hf download bytes")
    assert not env.layout.view(adopted).exists()  # mlxpin's own view of it did go

    data = env.gc("--all")
    assert {i["path"] for i in items(data, "hub_blob")} == {str(adopted_blob), str(unrecorded)}
    assert adopted_blob.exists()  # still a dry run
    env.gc("--all", "--yes")
    assert not adopted_blob.exists() and not unrecorded.exists()
    # Its snapshot went with its only blob, so the ref to it goes too (huggingface_hub
    # calls a repo with a ref to a missing snapshot corrupt).
    assert not (env.layout.repo_dir("o/other") / "refs" / "main").exists()
    assert not (env.layout.repo_dir("o/other") / "snapshots").exists() or not any(
        (env.layout.repo_dir("o/other") / "snapshots").iterdir()
    )


def test_same_content_in_two_places_is_kept(env: Env) -> None:
    """gc is cautious with content that exists twice: neither copy goes."""
    lock_dir = env.settings.lock_dir
    data = b"identical weights" * 10
    first = pin(env, lock_dir, "first", {"w.safetensors": data}, repo="o/first")
    second = pin(env, lock_dir, "second", {"w.safetensors": data}, repo="o/second")
    lock_path(lock_dir, "second").unlink()
    result = env.gc("--yes")
    assert env.layout.blob(second, second.files[0]).exists()
    assert env.layout.blob(first, first.files[0]).exists()
    assert "origin is uncertain" in result["kept"][0]["reason"]


def test_other_roots_keep_their_files_alive(env: Env) -> None:
    other_lock_dir = env.tmp / "other-project" / "lock"
    theirs = pin(env, other_lock_dir, "theirs", {"w.bin": b"their bytes"}, repo="o/theirs")
    gone_dir = env.tmp / "deleted-project" / "lock"
    orphan = pin(env, gone_dir, "gone", {"w.bin": b"bytes of a deleted project"}, repo="o/gone")
    for path in sorted(gone_dir.parent.rglob("*"), reverse=True):
        path.unlink() if path.is_file() else path.rmdir()
    gone_dir.parent.rmdir()

    data = env.gc()
    live_dirs = {r["lock_dir"] for r in data["roots"] if r["registered"]}
    assert live_dirs == {str(other_lock_dir)}
    roots = items(data, "root")
    assert len(roots) == 1 and "no longer exists" in roots[0]["reason"]
    assert str(env.layout.blob(orphan, orphan.files[0])) in {i["path"] for i in items(data)}
    assert str(env.layout.blob(theirs, theirs.files[0])) not in {i["path"] for i in items(data)}

    refused = env.run("gc", "--yes")  # the deleted project might be on an unmounted disk
    assert refused.exit_code == 78
    assert "--forget-missing" in refused.stderr
    assert env.layout.blob(orphan, orphan.files[0]).exists()
    env.gc("--yes", "--forget-missing")
    assert check_stamp(env.layout, theirs).ok
    assert not env.layout.blob(orphan, orphan.files[0]).exists()
    assert not Path(roots[0]["path"]).exists()
    assert env.layout.root(other_lock_dir).exists()


def test_busy_blob_lock_is_skipped(env: Env) -> None:
    lock_dir = env.settings.lock_dir
    model = pin(env, lock_dir, "m", {"a.bin": b"aaa", "b.bin": b"bbb"}, repo="o/m")
    lock_path(lock_dir, "m").unlink()
    busy = model.files[0]
    with hold_mutex(env.layout.blob_mutex(model, busy), 1.0):
        result = env.run("gc", "--yes")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    status = {i["path"]: i["status"] for i in items(data)}
    assert status[str(env.layout.blob(model, busy))] == "busy"
    assert status[str(env.layout.blob(model, model.files[1]))] == "removed"
    assert data["ok"] is False
    assert env.layout.blob(model, busy).exists()
    assert "skipped" in result.stderr
    env.gc("--yes")
    assert not env.layout.blob(model, busy).exists()


def test_stale_partials_go_fresh_and_live_ones_stay(env: Env) -> None:
    lock_dir = env.settings.lock_dir
    model = pin(env, lock_dir, "m", {"w.bin": b"live"}, repo="o/m")
    blobs = env.layout.repo_dir("o/m") / "blobs"
    stale = blobs / (("1" * 64) + ".mlxpin.incomplete")
    fresh = blobs / (("2" * 64) + ".mlxpin.incomplete")
    foreign = blobs / (("3" * 64) + ".a1b2c3d4.incomplete")  # huggingface_hub's own
    live_partial = env.layout.blob(model, model.files[0]).with_name(
        env.layout.blob(model, model.files[0]).name + ".mlxpin.incomplete"
    )
    for path in (stale, fresh, live_partial, foreign):
        path.write_bytes(b"partial")
    old = time.time() - 2 * DAY
    for path in (stale, live_partial, foreign):
        os.utime(path, (old, old))
    data = env.gc("--yes")
    assert [i["path"] for i in items(data, "partial")] == [str(stale)]
    assert not stale.exists() and fresh.exists() and live_partial.exists()
    assert foreign.exists()  # another tool's download: only with --all
    data = env.gc("--yes", "--all")
    assert [i["path"] for i in items(data, "partial")] == [str(foreign)]


def test_corrupt_live_lock_blocks_deletion(env: Env) -> None:
    lock_dir = env.settings.lock_dir
    pin(env, lock_dir, "m", {"w.bin": b"one"}, repo="o/m", commit="a" * 40)
    pin(env, lock_dir, "m", {"w.bin": b"two"}, repo="o/m", commit="b" * 40)
    (lock_dir / "broken.toml").write_text(HEADER + "format = 1\nname = 'broken'\n")
    dry = env.gc()
    assert dry["problems"] and dry["items"]
    result = env.run("gc", "--yes")
    assert result.exit_code == 65
    assert "gc deletes nothing" in result.stderr
    assert all(Path(i["path"]).exists() for i in dry["items"])


def test_text_output_reports_sizes(env: Env) -> None:
    lock_dir = env.settings.lock_dir
    pin(env, lock_dir, "m", {"w.bin": b"x" * 5000}, repo="o/m", commit="a" * 40)
    pin(env, lock_dir, "m", {"w.bin": b"y" * 10}, repo="o/m", commit="b" * 40)
    result = invoke(["gc", "--lock-dir", str(lock_dir)], env.environ)
    assert result.exit_code == 0, result.output
    assert "5.0 kB" in result.stdout
    assert "would free" in result.stdout and "mlxpin gc --yes" in result.stdout


# --- hardening (issue 8) ---------------------------------------------------------------


def test_crlf_and_headerless_locks_keep_their_pins(env: Env) -> None:
    """What launch accepts as a lock, gc counts as one (git autocrlf, a dropped comment)."""
    lock_dir = env.settings.lock_dir
    crlf = pin(env, lock_dir, "crlf", {"w.bin": b"crlf weights"}, repo="o/crlf")
    bare = pin(env, lock_dir, "bare", {"w.bin": b"bare weights"}, repo="o/bare")
    local = pin(env, lock_dir, "local", {"w.bin": b"local weights"})
    path = lock_path(lock_dir, "crlf")
    path.write_bytes(path.read_bytes().replace(b"\n", b"\r\n"))
    path = lock_path(lock_dir, "bare")
    path.write_bytes(path.read_bytes().removeprefix(HEADER.encode()))
    path = lock_path(lock_dir, "local")
    path.write_bytes(b"\n# my comment\n" + path.read_bytes().removeprefix(HEADER.encode()))
    for lock in (crlf, bare, local):
        assert read_lock(lock_dir, lock.name) == lock  # what launch reads
    # Not locks: a manifest and a pyproject sharing the directory.
    (lock_dir / "manifest.toml").write_text('version = 1\n[models.x]\napi_label = "x"\n')
    (lock_dir / "pyproject.toml").write_text('[project]\nname = "x"\n')
    dry = env.gc()
    assert items(dry) == [] and dry["problems"] == []
    env.gc("--yes")
    for lock in (crlf, bare, local):
        assert check_stamp(env.layout, lock).ok
        assert env.layout.blob(lock, lock.files[0]).exists()
    assert lock_names_on_disk(lock_dir) == ("bare", "crlf", "local")


def test_an_unreadable_root_blocks_gc_yes_like_a_missing_one(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    other = env.tmp / "other-project" / "lock"
    theirs = pin(env, other, "theirs", {"w.bin": b"their bytes"}, repo="o/theirs")
    blob = env.layout.blob(theirs, theirs.files[0])
    real = {name: getattr(os, name) for name in ("scandir", "listdir")}

    def refusing(name: str) -> Any:
        def listing(path: Any = ".") -> Any:  # tests run as root: chmod 000 would not do
            if Path(path) == other:
                raise PermissionError(13, "Permission denied", str(path))
            return real[name](path)

        return listing

    for name in real:
        monkeypatch.setattr(os, name, refusing(name))
    dry = env.gc()
    assert str(blob) in {i["path"] for i in items(dry)}  # a dry run shows what it would do
    refused = env.run("gc", "--yes")
    assert refused.exit_code == 78, refused.output
    assert str(other) in refused.stderr and "cannot be read" in refused.stderr
    assert "--forget-missing" in refused.stderr
    assert blob.exists() and check_stamp(env.layout, theirs).ok
    for name, function in real.items():
        monkeypatch.setattr(os, name, function)
    env.gc("--yes")
    assert blob.exists() and check_stamp(env.layout, theirs).ok


def test_gc_never_leaves_a_ref_to_a_deleted_snapshot(env: Env) -> None:
    """huggingface_hub's scanner treats a ref to a missing snapshot as a corrupt repo."""
    from huggingface_hub import scan_cache_dir

    lock_dir = env.settings.lock_dir
    v1 = pin(
        env, lock_dir, "m", {"w.bin": b"v1 weights"}, repo="o/m", commit="a" * 40, revision="v1"
    )
    v2 = pin(
        env, lock_dir, "m", {"w.bin": b"v2 weights"}, repo="o/m", commit="b" * 40, revision="v2"
    )
    refs = env.layout.repo_dir("o/m") / "refs"
    assert (refs / "v1").read_text() == v1.commit
    assert (refs / "mlxpin" / "m" / ("a" * 40)).read_text() == v1.commit
    assert not scan_cache_dir(env.settings.hub_cache).warnings
    dry = env.gc()
    assert {i["path"] for i in items(dry, "ref")} == {
        str(refs / "v1"),
        str(refs / "mlxpin" / "m" / ("a" * 40)),
    }
    env.gc("--yes")
    info = scan_cache_dir(env.settings.hub_cache)
    assert not info.warnings, info.warnings
    (repo,) = info.repos
    assert {r.commit_hash: set(r.refs) for r in repo.revisions} == {
        "b" * 40: {"v2", f"mlxpin/m/{'b' * 40}"}
    }
    assert check_stamp(env.layout, v2).ok
    assert env.gc()["items"] == []
