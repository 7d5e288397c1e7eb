"""A state or cache directory mlxpin cannot write: exit 74 with a clear message, never 70.

Tests run as root here, and root ignores file modes, so "not writable" is made in ways
that bind root too: a path whose parent is a regular file (ENOTDIR, works everywhere),
a regular file where mlxpin's run directory belongs, and, where the kernel lets this
process make a private mount namespace, a read-only bind mount of HF_HOME (EROFS).
"""

from __future__ import annotations

import errno
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from mlxpin.gateway.addresses import free_port

from conftest import Project
from hubserver import HubServer, LfsContent

REPO = "mlx-community/tiny-4bit"


def manifest(port: int) -> str:
    return f"""version = 1

[models.tiny]
api_label = "tiny-it"
port = {port}

[models.tiny.launch]
repo = "{REPO}"
"""


def seed(hub: HubServer, project: Project) -> None:
    repo = hub.create_repo(REPO)
    repo.commit({"config.json": b"{}\n", "model.safetensors": LfsContent(b"\x01" * 512)})
    project.write_manifest(manifest(free_port()))


def under_a_file(tmp_path: Path) -> str:
    """A directory path that cannot be created, even by root: its parent is a file."""
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a regular file\n")
    return str(blocker / "hf")


def assert_disk_error(result: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert result.returncode == 74, (result.returncode, result.stderr)
    assert "internal error" not in result.stderr
    assert "Traceback" not in result.stderr
    assert "mlxpin: error: cannot write" in result.stderr
    for needle in needles:
        assert needle in result.stderr, result.stderr


def _can_mount_read_only() -> bool:
    if not sys.platform.startswith("linux") or shutil.which("unshare") is None:
        return False
    probe = subprocess.run(
        read_only(Path("/tmp"), "true"), capture_output=True, timeout=30, check=False
    )
    return probe.returncode == 0


def read_only(directory: Path, *argv: str) -> list[str]:
    """argv run in a private mount namespace where ``directory`` is mounted read-only."""
    script = 'mount --bind "$0" "$0" && mount -o remount,bind,ro "$0" "$0" && exec "$@"'
    return ["unshare", "-m", "sh", "-c", script, str(directory), *argv]


READ_ONLY_MOUNT = _can_mount_read_only()


def run_read_only(
    project: Project, directory: Path, *args: str
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        read_only(directory, sys.executable, "-m", "mlxpin", *args),
        cwd=project.root,
        env=project.env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


# --- HF_HOME / MLXPIN_HOME that cannot be created -------------------------------------------


def test_lock_with_hf_home_under_a_file_exits_74(
    hub: HubServer, project: Project, tmp_path: Path
) -> None:
    seed(hub, project)
    bad = under_a_file(tmp_path)
    result = project.run("lock", env={**project.env, "HF_HOME": bad})
    assert_disk_error(result, bad, "MLXPIN_HOME")
    assert not project.lock_dir.exists() or not list(project.lock_dir.iterdir())


def test_fetch_with_unwritable_hf_home_or_mlxpin_home_exits_74(
    hub: HubServer, project: Project, tmp_path: Path
) -> None:
    seed(hub, project)
    project.ok("lock")
    bad = under_a_file(tmp_path)
    assert_disk_error(project.run("fetch", env={**project.env, "HF_HOME": bad}), bad)
    result = project.run("fetch", env={**project.env, "MLXPIN_HOME": bad})
    assert_disk_error(result, bad, "MLXPIN_HOME")
    result = project.run("fetch", env={**project.env, "HF_HUB_CACHE": bad})
    assert_disk_error(result, bad, "HF_HUB_CACHE")
    project.ok("fetch")


def test_add_with_unwritable_mlxpin_home_exits_74_and_leaves_the_manifest(
    project: Project, tmp_path: Path
) -> None:
    project.write_manifest(manifest(free_port()))
    before = (project.root / "manifest.toml").read_bytes()
    bad = under_a_file(tmp_path)
    result = project.run(
        "add", "other", "--repo", "mlx-community/other", env={**project.env, "MLXPIN_HOME": bad}
    )
    assert_disk_error(result, bad)
    assert (project.root / "manifest.toml").read_bytes() == before


# --- launch: the run directory is checked by the preflight, dry run included ---------------


@pytest.fixture
def fetched(hub: HubServer, project: Project) -> Project:
    seed(hub, project)
    project.ok("lock")
    project.ok("fetch")
    hub.stop()
    return project


def test_launch_and_dry_run_refuse_an_unwritable_run_dir_with_74(fetched: Project) -> None:
    project = fetched
    run_dir = project.state_dir / "run"
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.write_text("a regular file where mlxpin's run directory belongs\n")
    for args in (("launch", "--dry-run"), ("launch", "--json", "--dry-run"), ("launch",)):
        result = project.run(*args, "--max-restarts", "0", timeout=60)
        assert_disk_error(result, str(run_dir))
        assert "listening" not in result.stderr  # refused before the gateway started
        assert result.stderr.count("\n") <= 2  # one line and its hint


def test_launch_with_mlxpin_home_under_a_file_says_74_not_snapshot_missing(
    fetched: Project, tmp_path: Path
) -> None:
    bad = under_a_file(tmp_path)
    result = fetched.run("launch", "--dry-run", env={**fetched.env, "MLXPIN_HOME": bad})
    assert_disk_error(result, bad, "MLXPIN_HOME")


def test_a_refused_write_nobody_foresaw_is_74_not_an_internal_error(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from mlxpin.cli.output import run_guarded

    def read_only_disk() -> None:
        raise OSError(errno.EROFS, "Read-only file system", "/somewhere/run/x")

    def bug() -> None:
        raise OSError(errno.EBADF, "Bad file descriptor")

    assert run_guarded(read_only_disk, as_json=False, quiet=True, verbose=False) == 74
    assert "cannot write /somewhere/run/x: Read-only file system" in capsys.readouterr().err
    assert run_guarded(bug, as_json=False, quiet=True, verbose=False) == 70
    assert "internal error" in capsys.readouterr().err


@pytest.mark.skipif(not READ_ONLY_MOUNT, reason="cannot make a private read-only mount here")
def test_read_only_hf_home_launch_and_dry_run_exit_74(fetched: Project) -> None:
    project = fetched
    for args in (("launch", "--dry-run"), ("launch", "--max-restarts", "0")):
        result = run_read_only(project, project.hf_home, *args)
        assert_disk_error(result, str(project.state_dir / "run"), "Read-only file system")
        assert "listening" not in result.stderr


@pytest.mark.skipif(not READ_ONLY_MOUNT, reason="cannot make a private read-only mount here")
def test_read_only_hf_home_lock_fetch_add_exit_74(
    hub: HubServer, project: Project, tmp_path: Path
) -> None:
    seed(hub, project)
    project.hf_home.mkdir(parents=True, exist_ok=True)
    assert_disk_error(run_read_only(project, project.hf_home, "lock"), "Read-only file system")
    project.ok("lock")
    assert_disk_error(run_read_only(project, project.hf_home, "fetch"), "Read-only file system")
    result = run_read_only(project, project.hf_home, "add", "two", "--repo", "mlx-community/two")
    assert_disk_error(result, "Read-only file system")
