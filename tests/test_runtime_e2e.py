"""End to end on the real package registry: lock `mlx-lm` into a runtime, install it,
launch the tiny model with it, and see that the server process runs the runtime's own
interpreter and loads mlx from the runtime (not from the environment running the tests).

Marked `registry`: it resolves and downloads from PyPI (CI reaches it), with the user's
uv cache so a second run downloads nothing.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from mlxpin.dev.tinymodel import generate
from mlxpin.gateway.addresses import free_port

from conftest import Project

_LEAKS = ("UV_INDEX", "UV_DEFAULT_INDEX", "UV_EXTRA", "PIP_INDEX", "PIP_EXTRA", "MLXPIN_")


def children(pid: int) -> list[int]:
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found += [int(t) for t in (task / "children").read_text().split()]
    return found


def post(url: str, body: dict[str, object]) -> dict[str, object]:
    request = urllib.request.Request(
        url, json.dumps(body).encode(), {"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        data: dict[str, object] = json.loads(response.read())
        return data


@pytest.mark.e2e
@pytest.mark.registry
@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_pinned_runtime_from_the_registry_serves_the_tiny_model(tmp_path: Path) -> None:
    root = tmp_path / "project"
    generate(root / "model")
    env = {k: v for k, v in os.environ.items() if not k.startswith(_LEAKS) and k != "VIRTUAL_ENV"}
    env.update(HF_HOME=str(tmp_path / "hf_home"), HF_HUB_DISABLE_TELEMETRY="1")
    project = Project(root=root, env=env)
    port = free_port()
    project.write_manifest(
        f"""version = 1

[models.tiny]
api_label = "tiny-chat"
port = {port}

[models.tiny.launch]
path = "./model"

[models.tiny.server]
max_tokens = 4

[runtime]
mlx-lm = ">=0.32,<0.33"
"""
    )
    locked = project.run("lock", timeout=600)
    assert locked.returncode == 0, locked.stderr
    assert "runtime: locked mlx-lm 0.32." in locked.stdout
    pinned = (root / "lock" / "runtime.toml").read_text()
    assert "mlx_metal-" in pinned and "macosx" in pinned  # the Mac's files are pinned too
    assert "mlx_cpu-" in pinned and "manylinux" in pinned
    fetched = project.run("fetch", "--json", timeout=900)
    assert fetched.returncode == 0, fetched.stderr
    runtime = json.loads(fetched.stdout)["runtime"]
    python = Path(runtime["python"])
    assert python.is_relative_to(project.state_dir / "runtimes")
    plan = project.json("launch", "--dry-run")["plan"]
    assert plan["argv"][0] == str(python)
    assert plan["runtime"]["mlx_lm"] == runtime["mlx_lm"]

    process = subprocess.Popen(
        [sys.executable, "-m", "mlxpin", "launch"],
        cwd=root,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 300
        healthy = False
        while time.monotonic() < deadline and not healthy:
            assert process.poll() is None, process.stdout.read() if process.stdout else ""
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as r:
                    healthy = r.status == 200
            except (urllib.error.URLError, OSError):
                time.sleep(0.2)
        assert healthy, "the gateway never became healthy"
        reply = post(
            f"http://127.0.0.1:{port}/v1/chat/completions",
            {"model": "tiny-chat", "messages": [{"role": "user", "content": "hi"}]},
        )
        assert reply["model"] == "tiny-chat"

        server = children(process.pid)[0]
        cmdline = Path(f"/proc/{server}/cmdline").read_text().split("\0")
        assert cmdline[:4] == [str(python), "-m", "mlx_lm", "server"]
        site_packages = str(python.parent.parent / "lib")
        maps = Path(f"/proc/{server}/maps").read_text()
        # Every shared library loaded from any site-packages is the runtime's (mlx among them).
        libraries = {line.split()[-1] for line in maps.splitlines() if "site-packages" in line}
        assert any("/mlx/" in lib for lib in libraries), "mlx is not loaded"
        assert all(lib.startswith(site_packages) for lib in libraries), libraries
        assert os.path.realpath(f"/proc/{server}/exe") == os.path.realpath(python)
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
