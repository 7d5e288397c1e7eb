"""Distributed launch: `[models.x.distributed]`, the plan, host preflight, and REAL groups.

The e2e tests run two ranks on 127.0.0.1 over the ring backend with MLX's own
`mlx.launch` and real `mlx_lm.server` processes, behind the real gateway, called with the
`openai` client by api_label. "Another host" is this machine reached through a real sshd
(tests/sshhost.py) with its own HF_HOME, so its store is its own.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import openai
import pytest

from mlxpin.config import Settings, load_settings
from mlxpin.dev.tinymodel import generate
from mlxpin.errors import ConfigError, ManifestError
from mlxpin.plan.distributed import (
    DistributedPlan,
    HostsNotReadyError,
    parse_remote_answer,
    pipeline_files,
    pipeline_layers,
    plan_distributed,
)
from mlxpin.project.manifest import load_manifest, parse_manifest
from mlxpin.supervise.rankgroup import group_members, stop_group
from sshhost import SshHost

from conftest import Project

PYTHON_BIN = Path(sys.executable).parent


def plan_tiny(settings: Settings, **options: Any) -> DistributedPlan:
    """The plan of the project's model "tiny", from its manifest as it is now."""
    manifest = load_manifest(settings.manifest_path)
    spec = manifest.get("tiny")
    assert spec is not None
    return plan_distributed(settings, manifest, spec, environ={}, **options)


def free_ports(count: int) -> int:
    """A port p such that p .. p+count-1 are free now."""
    for _ in range(50):
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            base = int(sock.getsockname()[1])
        if base + count > 65000:
            continue
        try:
            socks = []
            for offset in range(count):
                s = socket.socket()
                socks.append(s)
                s.bind(("127.0.0.1", base + offset))
            return base
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise AssertionError("no free port range")


def write_project(
    project: Project,
    *,
    arch: str = "llama",
    hosts: str = '["127.0.0.1", "127.0.0.1"]',
    pipeline: bool = False,
) -> int:
    generate(project.root / "model", arch=arch, sharded=pipeline)  # type: ignore[arg-type]
    port = free_ports(1)
    project.write_manifest(
        f"""version = 1
[models.tiny]
api_label = "tiny-chat"
aliases = ["tiny"]
port = {port}
[models.tiny.launch]
path = "./model"
[models.tiny.server]
max_tokens = 4
[models.tiny.distributed]
hosts = {hosts}
starting_port = {free_ports(4)}
pipeline = {"true" if pipeline else "false"}
"""
    )
    project.ok("lock")
    return port


# --- manifest -------------------------------------------------------------------------------

BASE = """version = 1
[models.big]
api_label = "big"
[models.big.launch]
path = "./m"
"""


def parse(text: str) -> object:
    return parse_manifest(text.encode(), Path("/p/manifest.toml"))


def test_distributed_table_parses_with_hosts_or_a_hostfile() -> None:
    manifest = parse(
        BASE
        + """[models.big.distributed]
hosts = ["127.0.0.1", { ssh = "mac2.local", ips = ["192.168.1.12"] }, "10.0.0.3"]
pipeline = true
starting_port = 40000
env = { ZED = "1", MLX_METAL_FAST_SYNCH = "1" }
"""
    )
    # a distributed model is a chat model of mlx-lm like any other (the gateway routes by role)
    model = manifest.models[0]  # type: ignore[attr-defined]
    assert (model.engine, model.role) == ("mlx-lm", "chat")
    spec = manifest.models[0].distributed  # type: ignore[attr-defined]
    assert [(h.ssh, h.ips, h.local) for h in spec.hosts] == [
        ("127.0.0.1", ("127.0.0.1",), True),
        ("mac2.local", ("192.168.1.12",), False),
        ("10.0.0.3", ("10.0.0.3",), False),
    ]
    assert spec.pipeline and spec.starting_port == 40000 and spec.backend is None
    assert spec.env == (("MLX_METAL_FAST_SYNCH", "1"), ("ZED", "1"))
    other = parse(BASE + '[models.big.distributed]\nhostfile = "h.json"\nbackend = "jaccl"\n')
    spec = other.models[0].distributed  # type: ignore[attr-defined]
    assert spec.hostfile == Path("/p/h.json") and spec.hosts is None and spec.backend == "jaccl"


@pytest.mark.parametrize(
    ("extra", "line", "words"),
    [
        (
            '[models.big.distributed]\nhosts = ["127.0.0.1", "10.0.0.2"]\nbackned = "ring"\n',
            8,
            "did you mean `backend`",
        ),
        (
            '[models.big.distributed]\nhosts = ["10.0.0.2", "127.0.0.1"]\n',
            7,
            "must be this host, not '10.0.0.2'",
        ),
        (
            '[models.big.distributed]\nhosts = ["127.0.0.1", "mac2.local"]\n',
            7,
            "needs the IP address of host 'mac2.local'",
        ),
        (
            '[models.big.distributed]\nhosts = ["127.0.0.1", "10.0.0.2"]\nbackend = "jaccl"\n',
            7,
            "hostfile",
        ),
        ('[models.big.distributed]\nhosts = ["127.0.0.1"]\n', 7, "at least two hosts"),
        (
            '[models.big.distributed]\nhosts = ["127.0.0.1", "10.0.0.2"]\nhostfile = "h.json"\n',
            6,
            "exactly one of `hosts`",
        ),
        (
            '[models.big.distributed]\nhosts = ["127.0.0.1", "-oProxyCommand=x"]\n',
            7,
            "not an ssh destination",
        ),
        (
            '[models.big.distributed]\nhosts = ["127.0.0.1", "10.0.0.2"]\n'
            'env = { MLX_RANK = "3" }\n',
            8,
            "set by mlxpin or mlx.launch",
        ),
        ("[models.big.server]\npipeline = true\n", 7, "belongs in [models.big.distributed]"),
        (
            '[models.big.distributed]\nhosts = ["127.0.0.1", "10.0.0.2"]\n'
            '[models.x]\napi_label = "x"\n[models.x.launch]\npath = "./x"\n',
            None,
            None,
        ),
    ],
)
def test_distributed_table_refusals_name_the_line_and_the_fix(
    extra: str, line: int | None, words: str | None
) -> None:
    if words is None:
        parse(BASE + extra)  # a valid one, for contrast
        return
    with pytest.raises(ManifestError) as info:
        parse(BASE + extra)
    assert info.value.line == line, str(info.value)
    assert words in str(info.value)


def test_draft_or_adapter_refused_for_a_distributed_model() -> None:
    text = BASE.replace('path = "./m"\n', 'path = "./m"\ndraft = "small"\n') + (
        '[models.big.distributed]\nhosts = ["127.0.0.1", "10.0.0.2"]\n'
        '[models.small]\napi_label = "small"\n[models.small.launch]\npath = "./s"\n'
    )
    with pytest.raises(ManifestError) as info:
        parse(text)
    assert info.value.key == "models.big.launch.draft"
    assert "distributed model cannot have a draft" in info.value.message
    assert info.value.line == 6


# --- pipeline split ----------------------------------------------------------------------------


def test_pipeline_split_matches_mlx_lm_rank_0_runs_the_last_layers() -> None:
    assert pipeline_layers(2, 2) == ((1, 2), (0, 1))
    assert pipeline_layers(5, 2) == ((2, 5), (0, 2))
    weight_map = {
        "model.embed_tokens.weight": "rest.safetensors",
        "model.layers.0.mlp.weight": "a.safetensors",
        "model.layers.1.mlp.weight": "b.safetensors",
        "model.layers.2.mlp.weight": "b.safetensors",
    }
    files = ["config.json", "a.safetensors", "b.safetensors", "rest.safetensors"]
    assert pipeline_files(files, weight_map, 3, 2) == (
        ("b.safetensors", "config.json", "rest.safetensors"),
        ("a.safetensors", "config.json", "rest.safetensors"),
    )


# --- plan and preflight ----------------------------------------------------------------------


def test_dry_run_prints_hostfile_every_rank_argv_and_snapshot(project: Project) -> None:
    port = write_project(project)
    result = project.run("launch", "--dry-run")
    assert result.returncode == 66, result.stderr
    assert "127.0.0.1: snapshot not fetched" in result.stderr
    project.ok("fetch")
    plan = project.json("launch", "--dry-run")["plan"]
    dist = plan["distributed"]
    snapshot = plan["snapshots"][0]["path"]
    argv = plan["argv"]
    assert Path(argv[0]).name == "mlx.launch"
    assert argv[argv.index("--hostfile") + 1] == dist["hostfile_path"]
    command = argv[argv.index("--") + 1 :]
    assert command[:4] == [sys.executable, "-m", "mlx_lm", "server"]
    assert command[command.index("--model") + 1] == snapshot == plan["upstream_model"]
    assert command[command.index("--host") + 1] == "127.0.0.1"
    assert "--pipeline" not in command
    hostfile = dist["hostfile"]
    assert hostfile["backend"] == "ring"
    assert [h["ssh"] for h in hostfile["hosts"]] == ["127.0.0.1", "127.0.0.1"]
    assert "HF_HUB_OFFLINE=1" in hostfile["envs"]
    assert [r["snapshot"] for r in dist["ranks"]] == [snapshot, snapshot]
    assert all(r["argv"][r["argv"].index("--model") + 1] == snapshot for r in dist["ranks"])
    assert plan["public"] == {"host": "127.0.0.1", "port": port}
    text = project.ok("launch", "--dry-run").stdout
    assert "rank 0     127.0.0.1 (this host" in text and "rank 1" in text
    assert text.count(f"snapshot {snapshot}") == 2
    assert '"backend": "ring"' in text


SOLO = """
[models.solo]
api_label = "solo-chat"
[models.solo.launch]
path = "./model"
[serve]
port = {port}
"""


def serve_project(project: Project) -> int:
    """`tiny` (two ranks, tensor parallel) beside `solo` (one server), on one endpoint."""
    write_project(project)
    port = free_ports(1)
    manifest = project.root / "manifest.toml"
    project.write_manifest(manifest.read_text() + SOLO.format(port=port))
    project.ok("lock")
    project.ok("fetch")
    return port


def test_serve_plans_a_distributed_model_beside_a_plain_one(project: Project) -> None:
    port = serve_project(project)
    plan = project.json("serve", "--dry-run")["plan"]
    assert plan["endpoint"]["port"] == port
    models = {m["name"]: m for m in plan["models"]}
    assert models["solo"]["distributed"] is None
    group = models["tiny"]["distributed"]
    assert group["backend"] == "ring" and group["ranks"] == 2
    assert Path(group["argv"][0]).name == "mlx.launch"
    # two ranks on this host: two servers' overhead on top of the weights
    overhead = plan["budget"]["per_server_overhead"]
    assert models["tiny"]["cost"] == models["tiny"]["weights"] + 2 * overhead
    assert models["solo"]["cost"] == models["solo"]["weights"] + overhead
    assert [(s["host"], s["ranks"], s["whole"]) for s in group["shares"]] == [
        ("127.0.0.1", [0, 1], True)
    ]
    text = project.ok("serve", "--dry-run").stdout
    assert "ranks    2 (tensor, ring) on 127.0.0.1" in text
    assert "host     127.0.0.1 holds all " in text


def test_pipeline_plan_says_which_files_each_rank_reads(project: Project) -> None:
    write_project(project, arch="qwen2", pipeline=True)
    project.ok("fetch")
    dist = project.json("launch", "--dry-run")["plan"]["distributed"]
    rank0, rank1 = (set(r["files"]) for r in dist["ranks"])
    assert "model-00002-of-00003.safetensors" in rank0 - rank1  # rank 0: the last layer
    assert "model-00001-of-00003.safetensors" in rank1 - rank0
    assert {"model-00003-of-00003.safetensors", "config.json"} <= rank0 & rank1
    assert all("--pipeline" in r["argv"] for r in dist["ranks"])


def test_pipeline_refused_for_a_checkpoint_without_an_index(project: Project) -> None:
    generate(project.root / "model", arch="qwen2")
    write_project(project, arch="qwen2", pipeline=False)
    text = (
        (project.root / "manifest.toml").read_text().replace("pipeline = false", "pipeline = true")
    )
    (project.root / "manifest.toml").write_text(text)
    project.ok("fetch")
    result = project.run("launch", "--dry-run")
    assert result.returncode == 78
    assert "model.safetensors.index.json" in result.stderr


def fake_ssh(homes: dict[str, Path]) -> object:
    """Run `mlxpin _host ...` as if on another host: here, with that host's HF_HOME."""

    def run(
        host: str, argv: Sequence[str], stdin: bytes, timeout_s: float
    ) -> subprocess.CompletedProcess[bytes]:
        if host not in homes:
            return subprocess.CompletedProcess(
                argv, 255, b"", b"ssh: Could not resolve hostname " + host.encode()
            )
        env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "MLXPIN_"))}
        env["HF_HOME"] = str(homes[host])
        return subprocess.run(
            list(argv), input=stdin, capture_output=True, env=env, timeout=timeout_s, check=False
        )

    return run


def test_every_failing_host_is_named_before_any_rank_starts(
    project: Project, tmp_path: Path
) -> None:
    write_project(
        project,
        hosts='["127.0.0.1", { ssh = "mac2", ips = ["127.0.0.1"] }, '
        '{ ssh = "mac3", ips = ["127.0.0.1"] }, { ssh = "gone", ips = ["127.0.0.1"] }]',
    )
    project.ok("fetch")
    mac2, mac3 = tmp_path / "mac2", tmp_path / "mac3"
    project.ok("fetch", env={**project.env, "HF_HOME": str(mac3)})  # mac3 holds the pin
    settings = load_settings(project.env, cwd=project.root)
    with pytest.raises(HostsNotReadyError) as info:
        plan_tiny(settings, ssh=fake_ssh({"mac2": mac2, "mac3": mac3}))
    error = info.value
    assert [(f.host, f.exit_code) for f in error.failures] == [("mac2", 66), ("gone", 69)]
    assert "mac2: snapshot not fetched" in error.message
    assert "gone: ssh failed: ssh: Could not resolve hostname gone" in error.message
    assert error.exit_code == 66
    assert "mlxpin fetch tiny --hosts" in (error.hint or "")

    # With every host ready, each rank gets its own host's path: mlx.launch gives every
    # rank one command, so the command picks the path named for its MLX_RANK.
    project.ok("fetch", env={**project.env, "HF_HOME": str(mac2)})
    plan = plan_tiny(settings, ssh=fake_ssh({"mac2": mac2, "mac3": mac3, "gone": mac3}))
    paths = [plan.path_of(r) for r in range(4)]
    assert (
        paths[0] != paths[1] and paths[1].startswith(str(mac2)) and paths[2].startswith(str(mac3))
    )
    envs = plan.hostfile()["envs"]
    assert f"MLXPIN_RANK_MODEL_1={paths[1]}" in envs
    command = plan.command(1234)
    assert command[:2] == ["/bin/bash", "-c"] and "--model" not in command[3:]
    out = subprocess.run(  # the indirection really picks rank 1's path
        [*command[:3], "echo"],
        env={"MLX_RANK": "1", "MLXPIN_RANK_MODEL_1": paths[1]},
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert out.strip() == f"--model {paths[1]}"


def test_a_hostfile_must_start_with_this_host(project: Project) -> None:
    write_project(project)
    hostfile = project.root / "hosts.json"
    hostfile.write_text(
        json.dumps(
            {
                "backend": "ring",
                "hosts": [
                    {"ssh": "mac1", "ips": ["10.0.0.1"]},
                    {"ssh": "127.0.0.1", "ips": ["10.0.0.2"]},
                ],
            }
        )
    )
    text = re.sub(
        r"hosts = .*", 'hostfile = "hosts.json"', (project.root / "manifest.toml").read_text()
    )
    (project.root / "manifest.toml").write_text(text)
    project.ok("fetch")
    result = project.run("launch", "--dry-run")
    assert result.returncode == 78
    assert "hosts.json" in result.stderr and 'must be "127.0.0.1"' in result.stderr
    settings = load_settings(project.env, cwd=project.root)
    hostfile.write_text("{not json")
    with pytest.raises(ConfigError):
        plan_tiny(settings)


def test_remote_answers_are_told_apart() -> None:
    unreachable = parse_remote_answer("mac2", 255, b"", b"ssh: connect to host mac2: refused\n")
    assert (unreachable.exit_code, unreachable.problem) == (
        69,
        "ssh failed: ssh: connect to host mac2: refused",
    )
    missing = parse_remote_answer("mac2", 1, b"", b"/usr/bin/python3: No module named mlxpin\n")
    assert missing.exit_code == 69 and "mlxpin is not installed there" in (missing.problem or "")
    answer = {"ok": False, "path": "/x", "problem": "snapshot not fetched", "exit_code": 66}
    fetched = parse_remote_answer("mac2", 66, json.dumps(answer).encode() + b"\n", b"")
    assert (fetched.ok, fetched.exit_code, fetched.path) == (False, 66, "/x")


# --- the process group -----------------------------------------------------------------------


def test_stop_group_leaves_nothing_even_orphaned_or_frozen_members() -> None:
    """What a SIGTERM to mlx.launch alone would leave: children re-parented and running.
    Stopping by process group ends them, a SIGSTOPped one included."""
    leader = subprocess.Popen(
        ["/bin/sh", "-c", "sleep 300 & sleep 300 & trap '' TERM; sleep 300 & wait"],
        start_new_session=True,
    )
    pgid = leader.pid
    deadline = time.monotonic() + 10
    while len(group_members(pgid)) < 4 and time.monotonic() < deadline:
        time.sleep(0.05)
    members = group_members(pgid)
    assert len(members) == 4, members
    children = [pid for pid in members if pid != pgid]
    os.kill(children[0], signal.SIGSTOP)
    os.kill(pgid, signal.SIGKILL)  # the "launcher" dies; its children stay
    leader.wait()
    assert set(group_members(pgid)) == set(children)
    import asyncio

    started = time.monotonic()
    assert asyncio.run(stop_group(pgid, timeout_s=2.0))
    assert group_members(pgid) == {}
    assert time.monotonic() - started < 15


# --- real groups (mlx.launch + mlx_lm.server) ------------------------------------------------


def get(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return int(response.status)
    except urllib.error.HTTPError as error:
        return int(error.code)
    except (urllib.error.URLError, OSError):
        return 0


class Group:
    """`mlxpin launch` of a distributed model, with its log."""

    def __init__(self, project: Project, port: int, env: dict[str, str], *args: str) -> None:
        self.project = project
        self.base = f"http://127.0.0.1:{port}"
        self.pidfile = project.state_dir / "run" / f"tiny-{port}.group.pid"
        self.process = subprocess.Popen(
            [sys.executable, "-m", "mlxpin", "launch", "tiny", "-v", *args],
            cwd=project.root,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.log: list[tuple[float, str]] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.log.append((time.monotonic(), line))

    def text(self) -> str:
        return "".join(line for _, line in self.log)

    def first(self, pattern: str, after: float = 0.0, wait_s: float = 10.0) -> float | None:
        """When a log line matching `pattern` (logged after `after`) was read; the log
        arrives through a pipe, so it is waited for up to `wait_s`."""
        deadline = time.monotonic() + wait_s
        while True:
            for at, line in list(self.log):
                if at >= after and re.search(pattern, line):
                    return at
            if time.monotonic() >= deadline:
                return None
            time.sleep(0.05)

    def wait_healthy(self, timeout_s: float = 240.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            assert self.process.poll() is None, self.text()[-4000:]
            if get(self.base + "/health") == 200:
                return
            time.sleep(0.2)
        raise AssertionError("not healthy in time:\n" + self.text()[-4000:])

    def wait_unhealthy(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and get(self.base + "/health") == 200:
            time.sleep(0.1)

    def ranks(self) -> dict[int, int]:
        """MLX_RANK → pid of this host's mlx_lm.server ranks (Linux /proc); none while
        the group is down (its pid file is removed with it)."""
        try:
            pgid = int(self.pidfile.read_text())
        except FileNotFoundError:
            return {}
        found: dict[int, int] = {}
        for pid, command in group_members(pgid).items():
            if "mlx_lm" not in command or "mlx.launch" in command:
                continue
            with _suppress():
                environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
                for item in environ:
                    if item.startswith(b"MLX_RANK="):
                        found[int(item[9:])] = pid
        return found

    def ask(self) -> str:
        client = openai.OpenAI(base_url=self.base + "/v1", api_key="unused", max_retries=0)
        reply = client.chat.completions.create(
            model="tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=2
        )
        assert reply.model == "tiny-chat"
        return reply.choices[0].message.content or ""

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=60)


class _suppress:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> bool:
        return exc[0] is not None and issubclass(exc[0], OSError)  # type: ignore[arg-type]


def processes_using(marker: str) -> list[str]:
    out = subprocess.run(
        ["ps", "-ww", "-A", "-o", "pid=,stat=,command="], capture_output=True, text=True, check=True
    ).stdout
    return [line for line in out.splitlines() if marker in line and line.split()[1][:1] != "Z"]


@pytest.fixture
def groups() -> Iterator[list[Group]]:
    started: list[Group] = []
    yield started
    for group in started:
        if group.process.poll() is None:
            group.process.kill()
            group.process.wait()
        if group.pidfile.exists():
            import asyncio

            asyncio.run(stop_group(int(group.pidfile.read_text()), 2.0))


@pytest.mark.e2e
@pytest.mark.slow  # mlx.launch with two ranks: minutes on two cores; CI runs it
def test_tensor_parallel_group_restarts_as_one_unit_and_stops_clean(
    project: Project, groups: list[Group]
) -> None:
    port = write_project(project)
    project.ok("fetch")
    env = {**project.env, "HF_TOKEN": "hf_SECRETsecretSECRET0123456789"}
    group = Group(project, port, env, "--probe-interval", "1", "--probe-timeout", "4")
    groups.append(group)
    group.wait_healthy()
    started_at = group.first(r"starting 2 ranks with mlx.launch")
    ready_at = group.first(r"ready: 2 ranks answered")
    assert started_at and ready_at
    assert group.ask()  # by alias; the answer carries the api_label
    ranks = group.ranks()
    assert sorted(ranks) == [0, 1]
    for pid in ranks.values():  # every rank offline, without the token
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        assert b"HF_HUB_OFFLINE=1" in environ
        assert not any(item.startswith(b"HF_TOKEN=") for item in environ)

    # kill -9 of rank 1: detected within 10 s, the whole group restarted, answers again.
    killed_at = time.monotonic()
    os.kill(ranks[1], signal.SIGKILL)
    group.wait_unhealthy(10)
    detected = group.first(r"stopping the whole group", after=killed_at)
    assert detected is not None and detected - killed_at < 10, group.text()[-3000:]
    assert ranks[0] not in group.ranks().values() or not Path(f"/proc/{ranks[0]}").exists()
    group.wait_healthy()
    assert group.ask()
    second = group.ranks()
    assert sorted(second) == [0, 1] and set(second.values()).isdisjoint(ranks.values())

    # A frozen rank keeps every port open; only the progress probe notices.
    frozen_at = time.monotonic()
    os.kill(second[1], signal.SIGSTOP)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not group.first(r"no progress", frozen_at, 0):
        time.sleep(0.2)
    assert group.first(r"no progress: a 1-token probe", after=frozen_at), group.text()[-3000:]
    group.wait_unhealthy(10)
    group.wait_healthy()
    assert group.ask()
    assert (
        not Path(f"/proc/{second[1]}").exists()
        or "zombie" in Path(f"/proc/{second[1]}/status").read_text()
    )

    # SIGTERM: no rank left behind, whatever mlx.launch would have done.
    assert group.stop() == 0
    assert processes_using(str(project.state_dir)) == []
    assert get(group.base + "/health") == 0


@pytest.mark.e2e
@pytest.mark.slow  # mlx.launch with two ranks: minutes on two cores; CI runs it
def test_pipeline_parallel_qwen2_answers_by_label(project: Project, groups: list[Group]) -> None:
    port = write_project(project, arch="qwen2", pipeline=True)
    project.ok("fetch")
    group = Group(project, port, project.env)
    groups.append(group)
    group.wait_healthy()
    client = openai.OpenAI(base_url=group.base + "/v1", api_key="unused", max_retries=0)
    chunks = list(
        client.chat.completions.create(
            model="tiny-chat",
            messages=[{"role": "user", "content": "count"}],
            max_tokens=4,
            stream=True,
        )
    )
    assert {c.model for c in chunks} == {"tiny-chat"}
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert "--pipeline" in group.text()
    assert group.stop() == 0
    assert processes_using(str(project.state_dir)) == []


class Served(Group):
    """`mlxpin serve` of a project whose `tiny` is a rank group."""

    def __init__(self, project: Project, port: int) -> None:
        self.project = project
        self.base = f"http://127.0.0.1:{port}"
        self.pidfile = project.state_dir / "run" / f"serve-{port}" / "tiny.group.pid"
        self.process = subprocess.Popen(
            [sys.executable, "-m", "mlxpin", "serve", "-v"],
            cwd=project.root,
            env=project.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.log = []
        threading.Thread(target=self._read, daemon=True).start()

    def states(self) -> dict[str, str]:
        with urllib.request.urlopen(self.base + "/mlxpin/status", timeout=5) as response:
            return {m["name"]: m["state"] for m in json.loads(response.read())["models"]}


@pytest.mark.e2e
@pytest.mark.slow  # mlx.launch with two ranks: minutes on two cores; CI runs it
def test_serve_starts_a_rank_group_on_demand_restarts_it_and_stops_clean(
    project: Project, groups: list[Group]
) -> None:
    port = serve_project(project)
    served = Served(project, port)
    groups.append(served)
    served.wait_healthy(60)  # no preload: healthy as soon as the gateway listens
    assert served.states() == {"tiny": "stopped", "solo": "stopped"}
    assert not served.pidfile.exists()  # nothing started before a request named it

    assert served.ask()  # starts both ranks, answers with the api_label
    ranks = served.ranks()
    assert sorted(ranks) == [0, 1]
    assert served.states()["tiny"] == "ready"

    # kill -9 of rank 1: the whole group is stopped, and started again on the next request
    killed_at = time.monotonic()
    os.kill(ranks[1], signal.SIGKILL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and served.states()["tiny"] == "ready":
        time.sleep(0.2)
    assert served.states()["tiny"] == "stopped", served.text()[-3000:]
    assert served.first(r"stopping the whole group", after=killed_at)
    assert served.first(r"restarting on its next request", after=killed_at)
    assert served.ask()
    assert set(served.ranks().values()).isdisjoint(ranks.values())

    assert served.stop() == 0
    assert processes_using(str(project.state_dir)) == []


# --- another host over ssh -------------------------------------------------------------------


@pytest.mark.e2e
@pytest.mark.slow  # mlx.launch with two ranks: minutes on two cores; CI runs it
def test_a_remote_host_over_ssh_is_checked_prepared_and_runs_rank_1(
    project: Project, remote: SshHost, groups: list[Group]
) -> None:
    port = write_project(
        project, hosts=f'["127.0.0.1", {{ ssh = "{remote.alias}", ips = ["127.0.0.1"] }}]'
    )
    # mlx's ring backend gives up connecting after ~31 s; on a loaded 2-core machine the
    # local rank 0 (sharing its session with mlx.launch's busy threads) can take longer
    # than that to import, so the "remote" rank 1 starts 20 s late, as on a second Mac.
    env = {**remote.env(project.env), "MLXPIN_TEST_RANK_DELAY": "20"}
    project.ok("fetch", env=env)  # this host only
    refused = project.run("launch", "--dry-run", env=env)
    assert refused.returncode == 66, refused.stderr
    assert f"{remote.alias}: snapshot not fetched" in refused.stderr
    assert "127.0.0.1:" not in refused.stderr.split("no rank started:")[1]

    result = project.run("fetch", "--hosts", "--json", env=env)
    assert result.returncode == 0, result.stderr
    answer = json.loads(result.stdout)
    assert [h["host"] for h in answer["hosts"][0]["hosts"]] == ["127.0.0.1", remote.alias]
    assert answer["hosts"][0]["sent"] == [remote.alias]
    remote_path = answer["hosts"][0]["hosts"][1]["path"]
    assert remote_path.startswith(str(remote.remote_home))
    again = json.loads(project.run("fetch", "--hosts", "--json", env=env).stdout)
    assert again["hosts"][0]["sent"] == []  # already there: nothing sent twice

    plan = project.json("launch", "--dry-run", env=env)["plan"]["distributed"]
    assert [r["snapshot"] for r in plan["ranks"]][1] == remote_path

    group = Group(project, port, env)
    groups.append(group)
    group.wait_healthy()
    assert group.ask()
    assert processes_using(remote_path)  # rank 1 runs on "the other host", its own path
    assert group.stop() == 0
    deadline = time.monotonic() + 15
    while processes_using(remote_path) and time.monotonic() < deadline:
        time.sleep(0.2)  # the remote rank ends with its ssh session
    assert processes_using(remote_path) == []
    assert processes_using(str(project.state_dir)) == []
