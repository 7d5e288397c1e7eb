"""Shared fixtures: a fresh hub-compatible server per test, and a clean HF environment."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from unittest import mock

import pytest

from sshhost import SshHost, find_sshd, ssh_host

from hubserver import HubServer

# The suite starts the CLI as a subprocess hundreds of times. Where the machine sets
# PYTHONDONTWRITEBYTECODE, every one of them would compile mlxpin and
# huggingface_hub from source again; caching bytecode keeps the run short.
os.environ.pop("PYTHONDONTWRITEBYTECODE", None)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Slow end-to-end tests run in CI (CI=true) and with MLXPIN_SLOW=1; a developer's
    default run skips them, saying how to run them."""
    if os.environ.get("CI", "").lower() in ("1", "true") or os.environ.get("MLXPIN_SLOW") == "1":
        return
    skip = pytest.mark.skip(reason="slow end-to-end test: MLXPIN_SLOW=1 runs it (CI always does)")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


# Variables that would make huggingface_hub send a real token, go offline or use another
# cache than the test's own.
_HF_LEAKS = (
    "HF_TOKEN",
    "HUGGING_FACE_HUB_TOKEN",
    "HF_TOKEN_PATH",
    "HF_OIDC_RESOURCE",
    "HF_OIDC_ID_TOKEN",
    "HF_HUB_OFFLINE",
    "HF_HUB_CACHE",
    "HUGGINGFACE_HUB_CACHE",
    "HF_XET_CACHE",
    "HF_ASSETS_CACHE",
)


def logged(log: list[str], text: str, timeout_s: float = 15.0) -> bool:
    """Whether ``text`` reaches ``log`` within ``timeout_s`` (its lines come through a pipe,
    read by another thread)."""
    deadline = time.monotonic() + timeout_s
    while text not in "".join(log):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


@dataclass(frozen=True)
class Invoked:
    """What `mlxpin ARGV` did in this process: its exit code and its output."""

    exit_code: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        return self.stdout + self.stderr


def invoke(argv: Sequence[str], env: Mapping[str, str | None] | None = None) -> Invoked:
    """Run `mlxpin ARGV` through the real CLI in this process, ``env`` set (None: unset)."""
    from mlxpin.cli.app import main

    out, err = io.StringIO(), io.StringIO()
    with mock.patch.dict(os.environ), redirect_stdout(out), redirect_stderr(err):
        for key, value in (env or {}).items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        try:
            code = main(list(argv))
        except SystemExit as exit:  # argparse: usage errors and --help
            code = exit.code if isinstance(exit.code, int) else 1
    return Invoked(code, out.getvalue(), err.getvalue())


@pytest.fixture
def hub() -> Iterator[HubServer]:
    """A running HubServer on 127.0.0.1, closed after the test."""
    with HubServer() as server:
        yield server


def isolated_hf_env(endpoint: str, home: Path) -> dict[str, str]:
    """Environment for a subprocess that must talk to the hub at ``endpoint`` only,
    anonymously, with its Hugging Face home (token, cache, mlxpin state) in ``home``."""
    env = {
        k: v for k, v in os.environ.items() if k not in _HF_LEAKS and not k.startswith("MLXPIN_")
    }
    home.mkdir(exist_ok=True)
    env.update(
        HF_ENDPOINT=endpoint,
        HF_HOME=str(home),
        HF_HUB_DISABLE_XET="1",
        HF_HUB_DISABLE_TELEMETRY="1",
        HF_HUB_DISABLE_PROGRESS_BARS="1",
    )
    return env


@pytest.fixture
def hf_env(hub: HubServer, tmp_path: Path) -> dict[str, str]:
    """Environment for a subprocess that must talk to ``hub`` only, anonymously."""
    return isolated_hf_env(hub.url, tmp_path / "hf_home")


@dataclass
class Project:
    """A project directory (manifest.toml + lock/) driven through the real CLI."""

    root: Path
    env: dict[str, str]
    runs: list[subprocess.CompletedProcess[str]] = field(default_factory=list)

    @property
    def lock_dir(self) -> Path:
        return self.root / "lock"

    @property
    def hf_home(self) -> Path:
        return Path(self.env["HF_HOME"])

    @property
    def state_dir(self) -> Path:
        return self.hf_home / "mlxpin"

    def write_manifest(self, text: str) -> Path:
        path = self.root / "manifest.toml"
        path.write_text(text)
        return path

    def lock_text(self, name: str) -> str:
        return (self.lock_dir / f"{name}.toml").read_text()

    def run(
        self, *args: str, env: dict[str, str] | None = None, timeout: float = 120.0
    ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [sys.executable, "-m", "mlxpin", *args],
            cwd=self.root,
            env=env if env is not None else self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        self.runs.append(result)
        return result

    def ok(self, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        result = self.run(*args, env=env)
        assert result.returncode == 0, (result.returncode, result.stdout, result.stderr)
        return result

    def json(self, *args: str, env: dict[str, str] | None = None) -> Any:
        result = self.run(*args, "--json", env=env)
        return json.loads(result.stdout)


@pytest.fixture
def project(hf_env: dict[str, str], tmp_path: Path) -> Project:
    root = tmp_path / "project"
    root.mkdir()
    return Project(root=root, env=hf_env)


@pytest.fixture
def remote(tmp_path: Path) -> Iterator[SshHost]:
    """Another "host": an sshd on a loopback address with a throwaway key (tests/sshhost.py)."""
    if find_sshd() is None:
        pytest.skip("no sshd here (CI: apt-get install -y openssh-server)")
    if os.geteuid() != 0:
        pytest.skip("the test sshd needs root for its privilege separation")
    with ssh_host(tmp_path / "ssh", Path(sys.executable).parent) as host:
        yield host
