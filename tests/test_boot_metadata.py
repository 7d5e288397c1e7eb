"""#26 items 7-9: backups, copies and late mounts of HF_HOME at boot."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from mlxpin.gateway.addresses import free_port
from test_cli_launch import manifest, publish_tiny_model

from conftest import Project
from hubserver import HubServer


@pytest.fixture
def fetched(hub: HubServer, project: Project, tmp_path: Path) -> Project:
    publish_tiny_model(hub, tmp_path)
    project.write_manifest(manifest(free_port()))
    project.ok("lock")
    project.ok("fetch")
    hub.stop()
    return project


def _blobs(project: Project) -> list[Path]:
    return sorted(p for p in (project.hf_home / "hub").rglob("blobs/*") if p.is_file())


@pytest.mark.parametrize("change", ["touch", "chmod", "hardlink-backup"])
def test_metadata_only_changes_still_boot(fetched: Project, change: str, tmp_path: Path) -> None:
    blobs = _blobs(fetched)
    if change == "touch":
        for blob in blobs:
            os.utime(blob)
    elif change == "chmod":
        for blob in blobs:
            os.chmod(blob, os.stat(blob).st_mode & 0o7777)
    else:
        subprocess.run(["cp", "-al", str(fetched.hf_home), str(tmp_path / "backup")], check=True)
    result = fetched.run("launch", "--dry-run")
    assert result.returncode == 0, result.stderr
    assert fetched.ok("status").returncode == 0


def test_changed_bytes_are_still_refused_at_boot(fetched: Project) -> None:
    blob = next(b for b in _blobs(fetched) if b.read_bytes().startswith(b"{"))
    stat = blob.stat()
    blob.write_bytes(blob.read_bytes().replace(b"{", b"[", 1))
    os.utime(blob, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    result = fetched.run("launch", "--dry-run")
    assert result.returncode == 65, result.stderr
    assert "content hash differs from the lock" in result.stderr


def test_a_copied_hf_home_boots_from_its_own_files(fetched: Project, tmp_path: Path) -> None:
    new = tmp_path / "new_home"
    subprocess.run(["cp", "-a", str(fetched.hf_home), str(new)], check=True)
    shutil.rmtree(fetched.hf_home)
    copied = Project(fetched.root, {**fetched.env, "HF_HOME": str(new)})
    plan = copied.json("launch", "--dry-run")["plan"]
    view = Path(plan["upstream_model"])
    assert view.is_relative_to(new)
    for link in view.iterdir():
        assert not os.readlink(link).startswith("/")
        assert link.resolve().is_relative_to(new)
    assert copied.ok("verify").returncode == 0


def test_a_view_pointing_into_another_cache_is_refused(fetched: Project, tmp_path: Path) -> None:
    new = tmp_path / "new_home"
    subprocess.run(["cp", "-a", str(fetched.hf_home), str(new)], check=True)
    copied = Project(fetched.root, {**fetched.env, "HF_HOME": str(new)})
    view = Path(copied.json("launch", "--dry-run")["plan"]["upstream_model"])
    link = next(view.iterdir())
    target = link.resolve()
    old = fetched.hf_home / target.relative_to(new)
    link.unlink()
    link.symlink_to(old)  # an absolute link into the old copy, as mlxpin used to write
    for verb in (("launch", "--dry-run"), ("verify",)):
        result = copied.run(*verb)
        assert result.returncode != 0, verb
        assert "outside this cache" in result.stderr + result.stdout, verb


def test_a_missing_cache_root_at_boot_is_temporary(fetched: Project, tmp_path: Path) -> None:
    moved = tmp_path / "unmounted"
    fetched.hf_home.rename(moved)
    fetched.hf_home.mkdir()  # an empty mount point
    result = fetched.run("launch", "--dry-run")
    assert result.returncode == 75, result.stderr
    assert f"{fetched.hf_home / 'mlxpin'}" in result.stderr
    assert "not mounted?" in result.stderr
    assert "mlxpin fetch" not in result.stderr


def test_a_hub_cache_on_its_own_disk_missing_at_boot_is_temporary(fetched: Project) -> None:
    hub = fetched.hf_home / "hub"
    hub.rename(fetched.hf_home / "elsewhere")
    result = fetched.run("launch", "--dry-run")
    assert result.returncode == 75, result.stderr
    assert f"{hub} (the Hub cache, HF_HUB_CACHE) does not exist: not mounted?" in result.stderr
