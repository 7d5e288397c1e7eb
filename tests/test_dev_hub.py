"""`python -m mlxpin.dev.hub`: the real `mlxpin lock` and `fetch` against it, as
docs/development.md shows a newcomer."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from huggingface_hub import snapshot_download

from conftest import Project, isolated_hf_env

REPO = "acme/tiny"
MANIFEST = f"""version = 1

[models.tiny]
api_label = "tiny-chat"

[models.tiny.launch]
repo = "{REPO}"
"""


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("model") / "tiny"
    command = [sys.executable, "-m", "mlxpin.dev.tinymodel", str(out)]
    subprocess.run(command, check=True, capture_output=True, timeout=120)
    return out


@pytest.fixture
def endpoint(model: Path) -> Iterator[str]:
    """The dev hub serving ``model`` as REPO on a free port; its HF_ENDPOINT."""
    command = [sys.executable, "-m", "mlxpin.dev.hub", str(model), "--repo", REPO, "--port", "0"]
    hub = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert hub.stdout is not None
        for line in hub.stdout:
            if line.startswith("export HF_ENDPOINT="):
                yield line.removeprefix("export HF_ENDPOINT=").strip()
                break
        else:
            pytest.fail(f"the dev hub exited with {hub.wait()} before printing HF_ENDPOINT")
    finally:
        hub.terminate()
        hub.wait(timeout=30)


@pytest.fixture
def project(endpoint: str, tmp_path: Path) -> Project:
    root = tmp_path / "project"
    root.mkdir()
    project = Project(root=root, env=isolated_hf_env(endpoint, tmp_path / "hf_home"))
    project.write_manifest(MANIFEST)
    return project


def test_lock_and_fetch_from_the_dev_hub(model: Path, project: Project) -> None:
    lock = project.json("lock")
    assert lock["ok"] is True, lock
    fetched = project.json("fetch")["models"][0]
    assert fetched["downloaded_bytes"] == sum(p.stat().st_size for p in model.iterdir())
    view = Path(fetched["snapshot"])
    for source in model.iterdir():
        assert (view / source.name).read_bytes() == source.read_bytes()
    project.ok("verify")
    assert project.json("status")["models"][0]["fetch"] == "verified"


def test_huggingface_hub_downloads_from_it(model: Path, endpoint: str, tmp_path: Path) -> None:
    """The tree listing, HEAD and ETags `hf download` relies on."""
    snapshot = snapshot_download(REPO, cache_dir=tmp_path / "cache", endpoint=endpoint, token=False)
    assert sorted(p.name for p in Path(snapshot).iterdir()) == sorted(
        p.name for p in model.iterdir()
    )


def test_unknown_repo_and_revision_are_refused_as_the_hub_does(project: Project) -> None:
    project.write_manifest(MANIFEST.replace(REPO, "acme/other"))
    assert project.run("lock").returncode == 78  # repository not found
    project.write_manifest(MANIFEST + 'revision = "v2"\n')
    result = project.run("lock")
    assert result.returncode == 78 and "main" in result.stderr  # the branch suggested


def test_help() -> None:
    command = [sys.executable, "-m", "mlxpin.dev.hub", "--help"]
    result = subprocess.run(command, check=True, capture_output=True, text=True)
    assert "--repo" in result.stdout and "127.0.0.1" in result.stdout
