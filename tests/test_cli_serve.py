"""`mlxpin serve`: many pinned models behind one endpoint, on REAL mlx_lm.server processes.

Three tiny models with different weights (seeds 0, 1, 2) are published on the loopback
hub, locked and fetched once for the module; then the hub is stopped for good and every
test boots `mlxpin serve` offline with `max_loaded = 2`.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from mlxpin.dev.tinymodel import generate
from mlxpin.gateway.addresses import free_port

from conftest import _HF_LEAKS, Project, logged
from hubserver import HubServer

MODELS = ("alpha", "beta", "gamma")


def manifest(serve: str = "", alpha: str = "") -> str:
    text = f"version = 1\n\n[serve]\nmax_loaded = 2\n{serve}\n"
    for name in MODELS:
        text += f"""
[models.{name}]
api_label = "{name}-chat"
{alpha if name == "alpha" else ""}
[models.{name}.launch]
repo = "tiny/{name}"

[models.{name}.server]
max_tokens = 8
"""
    return text


@pytest.fixture(scope="module")
def fetched(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Project, HubServer]]:
    """Three tiny models locked and fetched once; the hub is down for every test."""
    base = tmp_path_factory.mktemp("serve")
    env = {
        k: v for k, v in os.environ.items() if k not in _HF_LEAKS and not k.startswith("MLXPIN_")
    }
    with HubServer() as hub:
        for seed, name in enumerate(MODELS):
            files = generate(base / f"model-{name}", seed=seed)
            hub.create_repo(f"tiny/{name}").commit({p.name: p.read_bytes() for p in files})
        root = base / "project"
        root.mkdir()
        (base / "hf_home").mkdir()
        env.update(
            HF_ENDPOINT=hub.url,
            HF_HOME=str(base / "hf_home"),
            HF_HUB_DISABLE_XET="1",
            HF_HUB_DISABLE_TELEMETRY="1",
            HF_HUB_DISABLE_PROGRESS_BARS="1",
        )
        project = Project(root=root, env=env)
        project.write_manifest(manifest())
        project.ok("lock")
        project.ok("fetch")
        hub.clear_requests()
        hub.stop()
        yield project, hub
        assert hub.count() == 0  # down throughout, and never asked


def get(url: str, method: str = "GET", key: str | None = None) -> tuple[int, Any]:
    request = urllib.request.Request(url, method=method, data=b"" if method == "POST" else None)
    if key:
        request.add_header("Authorization", f"Bearer {key}")
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"{}")


class Served:
    def __init__(self, project: Project, *args: str, env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "mlxpin",
                "serve",
                "--port",
                str(self.port),
                "--restart-delay",
                "0.2",
                *args,
            ],
            cwd=project.root,
            env=env or project.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.log: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self.client = openai.OpenAI(base_url=self.base + "/v1", api_key="unused", max_retries=0)
        self.wait_listening()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.log.append(line)

    def logged(self, text: str, timeout_s: float = 15.0) -> bool:
        return logged(self.log, text, timeout_s)

    def wait_listening(self, timeout_s: float = 30.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            assert self.process.poll() is None, "".join(self.log)
            try:
                get(self.base + "/v1/models")
                return
            except (urllib.error.URLError, OSError):
                time.sleep(0.05)
        raise AssertionError("not listening:\n" + "".join(self.log))

    def status(self) -> dict[str, Any]:
        code, body = get(self.base + "/mlxpin/status")
        assert code == 200, body
        return {m["name"]: m for m in body["models"]} | {"_": body}

    def states(self) -> dict[str, str]:
        return {name: m["state"] for name, m in self.status().items() if name != "_"}

    def wait_state(self, name: str, state: str, timeout_s: float = 30.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            model: dict[str, Any] = self.status()[name]
            if model["state"] == state:
                return model
            time.sleep(0.05)
        raise AssertionError(f"{name} not {state}: {self.states()}\n" + "".join(self.log))

    def chat(self, name: str, max_tokens: int = 2) -> Any:
        return self.client.chat.completions.create(
            model=f"{name}-chat",
            messages=[{"role": "user", "content": "hi"}],
            max_tokens=max_tokens,
        )

    def starts(self, name: str) -> int:
        return sum(f"{name}: starting" in line for line in self.log)

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=30)


@pytest.fixture
def project(fetched: tuple[Project, HubServer]) -> Project:
    return fetched[0]


@pytest.fixture
def served(project: Project) -> Iterator[Served]:
    running = Served(project)
    try:
        yield running
    finally:
        if running.process.poll() is None:
            running.process.kill()
            running.process.wait()


def alive(pid: int) -> bool:
    path = Path(f"/proc/{pid}/status")
    return path.exists() and "zombie" not in path.read_text()


# --- preflight: no server started ----------------------------------------------------------


def test_dry_run_prints_every_model_its_argv_cost_and_the_budget(project: Project) -> None:
    plan = project.json("serve", "--dry-run")["plan"]
    assert plan["endpoint"] == {"host": "127.0.0.1", "port": 8080}
    assert plan["max_loaded"] == 2
    assert plan["budget"]["source"] == "75% of physical memory"
    assert [m["api_label"] for m in plan["models"]] == ["alpha-chat", "beta-chat", "gamma-chat"]
    for model in plan["models"]:
        argv = model["argv"]
        assert argv[argv.index("--model") + 1] == model["upstream_model"]
        assert argv[argv.index("--host") + 1] == "127.0.0.1"
        assert model["cost"] == model["weights"] + plan["budget"]["per_server_overhead"]
    paths = {m["upstream_model"] for m in plan["models"]}
    assert len(paths) == 3  # three different pins
    text = project.ok("serve", "beta", "--dry-run", "--port", "9999").stdout
    assert "endpoint   http://127.0.0.1:9999/v1  (1 models)" in text
    assert "beta: beta-chat" in text and "alpha" not in text


def test_a_model_over_budget_and_every_other_problem_refused_at_preflight(
    project: Project,
) -> None:
    small = project.root / "small.toml"
    small.write_text(manifest('memory_budget = "1MB"'))
    result = project.run("serve", "--manifest", str(small), "--lock-dir", "lock")
    assert result.returncode == 78, result.stderr
    for name in MODELS:
        assert f"{name}: needs" in result.stderr
    assert "budget of 1.0 MB" in result.stderr
    assert "memory_budget" in result.stderr
    # stale lock (78) and missing snapshot (66) for different models: both named, 78 first
    broken = project.root / "broken.toml"
    broken.write_text(manifest().replace('repo = "tiny/gamma"', 'repo = "tiny/other"'))
    lock_copy = project.root / "lock-copy"
    lock_copy.mkdir(exist_ok=True)
    for name in MODELS:
        (lock_copy / f"{name}.toml").write_text(project.lock_text(name))
    empty = project.root / "empty-home"
    (empty / "mlxpin").mkdir(parents=True, exist_ok=True)  # mounted, never fetched (no root: 75)
    result = project.run(
        "serve",
        "--manifest",
        str(broken),
        "--lock-dir",
        str(lock_copy),
        "--json",
        env={**project.env, "HF_HOME": str(empty)},
    )
    assert result.returncode == 78, result.stderr
    problems = json.loads(result.stdout)["error"]["problems"]
    assert {p["exit_code"] for p in problems} == {78, 66}
    assert "gamma" in problems[0]["message"]
    assert "run `mlxpin fetch alpha`" in result.stderr


def test_serve_boot_path_needs_only_the_standard_library(project: Project) -> None:
    """`python -S` (no site-packages: no aiohttp, huggingface_hub, mlx_lm)."""
    env = {**project.env, "PYTHONPATH": str(Path(__file__).parent.parent / "src")}
    result = subprocess.run(
        [sys.executable, "-S", "-m", "mlxpin", "serve", "--dry-run"],
        cwd=project.root,
        env={**env, "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 69, result.stderr  # preflight ran to the server check
    assert "mlx_lm.server is not installed" in result.stderr


# --- the pool on real servers --------------------------------------------------------------


@pytest.mark.e2e
def test_lazy_start_lru_eviction_of_the_idle_one_status_and_ps(
    served: Served, project: Project
) -> None:
    assert served.states() == dict.fromkeys(MODELS, "stopped")  # nothing started at boot
    code, models = get(served.base + "/v1/models")
    assert code == 200
    assert [m["id"] for m in models["data"]] == ["alpha-chat", "beta-chat", "gamma-chat"]
    assert {m["owned_by"] for m in models["data"]} == {"mlxpin"}

    assert served.chat("alpha").model == "alpha-chat"
    assert served.states() == {"alpha": "ready", "beta": "stopped", "gamma": "stopped"}
    assert served.chat("beta").model == "beta-chat"
    assert served.chat("alpha").model == "alpha-chat"  # alpha used last: beta is the LRU
    assert served.chat("gamma").model == "gamma-chat"
    assert served.states() == {"alpha": "ready", "beta": "stopped", "gamma": "ready"}
    status = served.status()
    assert status["_"]["loaded"] == 2
    assert status["_"]["budget"]["used"] == status["alpha"]["cost"] + status["gamma"]["cost"]
    assert status["alpha"]["last_used"] < status["gamma"]["last_used"]

    with pytest.raises(openai.NotFoundError) as info:
        served.chat("delta")
    assert info.value.code == "model_not_found"

    ps = project.run("ps", "--port", str(served.port))
    assert ps.returncode == 0, ps.stderr
    assert "alpha-chat" in ps.stdout and "ready" in ps.stdout
    assert "loaded 2 of 2" in ps.stdout
    as_json = json.loads(project.run("ps", "--port", str(served.port), "--json").stdout)
    assert {m["name"]: m["state"] for m in as_json["models"]}["beta"] == "stopped"


@pytest.mark.e2e
def test_a_long_stream_survives_another_models_start_and_ends_with_done(served: Served) -> None:
    served.chat("alpha")
    served.chat("beta")  # both loaded; alpha is now the least recently used
    stream = served.client.chat.completions.create(
        model="alpha-chat",
        messages=[{"role": "user", "content": "go"}],
        max_tokens=3000,
        stream=True,
    )
    chunks = iter(stream)
    first = next(chunks)
    assert first.model == "alpha-chat"
    assert served.status()["alpha"]["in_flight"] == 1
    pid = served.status()["alpha"]["pid"]
    assert served.chat("gamma").model == "gamma-chat"  # evicts beta, never the busy alpha
    states = served.states()
    assert states["beta"] == "stopped" and states["alpha"] == "ready"
    rest = list(chunks)
    assert rest and rest[-1].choices[0].finish_reason is not None  # the stream ran to its end
    assert served.status()["alpha"]["pid"] == pid
    assert "[DONE]" not in "".join(served.log)  # relayed to the client, not logged
    raw = urllib.request.Request(
        served.base + "/v1/chat/completions",
        data=json.dumps(
            {
                "model": "alpha-chat",
                "stream": True,
                "max_tokens": 4,
                "messages": [{"role": "user", "content": "x"}],
            }
        ).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(raw, timeout=60) as response:
        body = response.read().decode()
    assert body.rstrip().endswith("data: [DONE]")


@pytest.mark.e2e
def test_concurrent_first_requests_start_one_server(served: Served) -> None:
    answers: list[str] = []
    errors: list[BaseException] = []

    def ask() -> None:
        try:
            answers.append(served.chat("beta").model)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=ask) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors, errors
    assert answers == ["beta-chat"] * 6
    assert served.starts("beta") == 1
    assert served.status()["beta"]["restarts"] == 0


@pytest.mark.e2e
def test_preload_at_boot_and_idle_ttl_stops_an_idle_model(project: Project) -> None:
    path = project.root / "ttl.toml"
    path.write_text(manifest('preload = ["beta"]', alpha="idle_ttl = 1"))
    running = Served(project, "--manifest", str(path), "--lock-dir", "lock")
    try:
        deadline = time.monotonic() + 60
        while get(running.base + "/health")[0] != 200:  # 200 once beta answered its warm-up
            assert time.monotonic() < deadline, "".join(running.log)
            time.sleep(0.05)
        assert running.states() == {"alpha": "stopped", "beta": "ready", "gamma": "stopped"}
        running.chat("alpha")
        running.chat("beta")
        pid = running.status()["alpha"]["pid"]
        running.wait_state("alpha", "stopped", timeout_s=15)
        assert not alive(pid)
        assert running.states()["beta"] == "ready"  # no TTL of its own, none in [serve]
        assert running.chat("alpha").model == "alpha-chat"  # and it comes back on demand
    finally:
        assert running.stop() == 0


@pytest.mark.e2e
def test_kill_9_of_one_server_while_another_keeps_answering(served: Served) -> None:
    served.chat("alpha")
    served.chat("beta")
    victim = served.status()["alpha"]["pid"]
    os.kill(victim, signal.SIGKILL)
    assert served.chat("beta").model == "beta-chat"
    served.wait_state("alpha", "stopped")
    assert served.chat("beta").model == "beta-chat"
    assert served.chat("alpha").model == "alpha-chat"  # back on its next request
    after = served.status()["alpha"]
    assert after["pid"] != victim and after["restarts"] == 1
    assert served.logged("restarting on its next request")


def test_a_model_changed_after_boot_is_never_started(served: Served, project: Project) -> None:
    status = {m["name"]: m for m in project.json("status")["models"]}
    view = Path(status["gamma"]["snapshot"])
    blob = max(view.iterdir(), key=lambda p: p.stat().st_size).resolve()
    original = blob.read_bytes()
    data = bytearray(original)
    data[-1] ^= 1  # changed bytes (a metadata-only change is re-hashed and boots: #26 item 7)
    os.chmod(blob, 0o644)
    blob.write_bytes(bytes(data))
    try:
        with pytest.raises(openai.APIStatusError) as error:
            served.chat("gamma")
        assert error.value.status_code == 503
        assert served.starts("gamma") == 0
        assert served.states()["gamma"] == "failed"
        assert served.logged("gamma: ")
    finally:
        blob.write_bytes(original)  # the hub is down: put the bytes back, then
        project.ok("fetch", "gamma")  # fetch re-hashes the blob and stamps it again


def test_gc_keeps_what_a_running_serve_booted_with(served: Served, project: Project) -> None:
    lock = project.lock_dir / "gamma.toml"
    aside = project.root / "gamma.toml.aside"
    lock.rename(aside)  # as after `lock --update`: no lock names what gamma booted with
    try:
        assert project.json("gc", "--yes")["ok"] is True
    finally:
        aside.rename(lock)
    assert served.chat("gamma").model == "gamma-chat"


@pytest.mark.e2e
def test_load_and_unload_routes_and_sigterm_leaves_no_process(served: Served) -> None:
    code, body = get(served.base + "/mlxpin/models/gamma-chat/load", "POST")
    assert code == 200 and body["model"]["state"] == "ready"
    pid = body["model"]["pid"]
    code, body = get(served.base + "/mlxpin/models/gamma-chat/unload", "POST")
    assert code == 200 and body["model"]["state"] == "stopped"
    assert not alive(pid)
    code, body = get(served.base + "/mlxpin/models/nope/load", "POST")
    assert code == 404 and body["error"]["code"] == "model_not_found"
    get(served.base + "/mlxpin/models/alpha-chat/load", "POST")
    get(served.base + "/mlxpin/models/beta-chat/load", "POST")
    pids = [served.status()[n]["pid"] for n in ("alpha", "beta")]
    assert all(alive(p) for p in pids)
    assert served.stop() == 0
    assert not any(alive(p) for p in pids)
    with pytest.raises((urllib.error.URLError, OSError)):
        get(served.base + "/mlxpin/status")


@pytest.mark.e2e
def test_api_key_guards_completions_and_operator_routes(project: Project) -> None:
    env = {**project.env, "MLXPIN_API_KEY": "sk-serve-SECRET"}
    running = Served(project, env=env)
    try:
        assert get(running.base + "/mlxpin/status")[0] == 401
        assert get(running.base + "/mlxpin/models/alpha-chat/load", "POST")[0] == 401
        code, body = get(running.base + "/mlxpin/status", key="sk-serve-SECRET")
        assert code == 200 and len(body["models"]) == 3
        ps = project.run("ps", "--port", str(running.port), "--json", env=env)
        assert ps.returncode == 0, ps.stderr
        assert "sk-serve-SECRET" not in ps.stdout + ps.stderr + "".join(running.log)
    finally:
        assert running.stop() == 0


def test_a_taken_serve_port_points_at_the_serve_table(fetched: tuple[Project, HubServer]) -> None:
    """serve's port is [serve]'s (or --port), not a model's: the hint says which to change."""
    project, _ = fetched
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        result = project.run("serve", "--port", str(port), timeout=60)
    assert result.returncode == 69, result.stderr
    assert f"serve: cannot listen on 127.0.0.1:{port}" in result.stderr
    assert "`port` in [serve] (or --port)" in result.stderr
    assert "for the model" not in result.stderr
