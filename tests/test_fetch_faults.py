"""#26 items 10-12, 14 and #20 item 17: how lock and fetch meet a misbehaving Hub."""

from __future__ import annotations

import os
import subprocess
import sys
import time

from test_cli_fetch import MANIFEST, REPO, locked, seed

from conftest import Project
from hubserver import HubServer


def test_a_redirect_loop_on_a_file_is_69_not_a_bug(hub: HubServer, project: Project) -> None:
    locked(hub, project)
    loop = {"Location": f"{hub.url}/{REPO}/resolve/loop/config.json"}
    hub.fail_next(1000, 302, "/resolve/", headers=loop)
    result = project.run("fetch")
    assert result.returncode == 69, result.stderr
    assert "redirect" in result.stderr and "bug" not in result.stderr


def test_429_with_retry_after_is_honoured_by_lock(hub: HubServer, project: Project) -> None:
    seed(hub)
    project.write_manifest(MANIFEST)
    hub.fail_next(4, 429, "/api/models", headers={"Retry-After": "1"})
    started = time.monotonic()
    project.ok("lock")
    assert time.monotonic() - started >= 3.5


def test_429_past_the_deadline_says_rate_limited(hub: HubServer, project: Project) -> None:
    seed(hub)
    project.write_manifest(MANIFEST)
    hub.fail_next(1000, 429, "/api/models", headers={"Retry-After": "30"})
    result = project.run("lock", env={**project.env, "MLXPIN_HUB_DEADLINE": "5"})
    assert result.returncode == 69, result.stderr
    assert "rate limited" in result.stderr


def test_429_with_retry_after_is_honoured_by_fetch(hub: HubServer, project: Project) -> None:
    locked(hub, project)
    hub.fail_next(6, 429, "config.json", headers={"Retry-After": "0.5"})  # > 5 attempts
    project.ok("fetch")


def test_429_on_fetch_past_the_deadline_says_rate_limited(hub: HubServer, project: Project) -> None:
    locked(hub, project)
    hub.fail_next(1000, 429, "/resolve/", headers={"Retry-After": "30"})
    result = project.run("fetch", env={**project.env, "MLXPIN_HUB_DEADLINE": "3"})
    assert result.returncode == 69, result.stderr
    assert "rate limited" in result.stderr


def test_a_wrong_endpoint_scheme_fails_at_once(hub: HubServer, project: Project) -> None:
    locked(hub, project)
    env = {**project.env, "HF_ENDPOINT": hub.url.replace("http://", "htp://")}
    started = time.monotonic()
    result = project.run("fetch", env=env)
    assert result.returncode in (69, 78), result.stderr
    assert time.monotonic() - started < 10
    assert result.stderr.count("retrying") == 0, result.stderr


def test_an_unreachable_hub_says_one_line_per_file(hub: HubServer, project: Project) -> None:
    locked(hub, project)
    env = {**project.env, "HF_ENDPOINT": "http://127.0.0.1:9"}
    result = project.run("fetch", env=env)
    assert result.returncode == 69, result.stderr
    lines = [line for line in result.stderr.splitlines() if "retrying" in line]
    assert len(lines) <= 5, result.stderr  # five files, one line each at most


def test_a_trickling_peer_is_ended_with_69_and_the_resume_point_kept(
    hub: HubServer, project: Project
) -> None:
    locked(hub, project)
    hub.drip("model.safetensors", interval_s=0.5)
    env = {**project.env, "MLXPIN_FETCH_MIN_RATE": "1000:2"}  # bytes/s over 2 s windows
    started = time.monotonic()
    result = project.run("fetch", env=env)
    assert result.returncode == 69, result.stderr
    assert "too slow" in result.stderr
    assert time.monotonic() - started < 60
    partials = list(project.hf_home.rglob("*.incomplete"))
    assert partials and partials[0].stat().st_size > 0


def test_non_utf8_paths_lock_and_fetch(hub: HubServer, project: Project) -> None:
    seed(hub)
    name = os.fsdecode(b"caf\xe9")
    root = project.root / name
    root.mkdir()
    (root / "manifest.toml").write_text(MANIFEST)
    home = os.fsdecode(bytes(project.hf_home) + b"-\xe9")
    env = {**project.env, "HF_HOME": home}
    odd = Project(root, env)
    odd.ok("lock")
    odd.ok("fetch")
    launch = [sys.executable, "-m", "mlxpin", "launch", "--dry-run"]
    result = subprocess.run(launch, cwd=root, env=env, capture_output=True, check=False)
    assert result.returncode == 0, result.stderr
