"""Benchmark: `mlxpin serve` against bare `mlx_lm.server`, side by side in one run.

Three tiny models with different weights (seeds 0, 1, 2), locked and fetched from local
paths. Measured:

1. Cold start vs a bare `mlx_lm.server` on the same snapshot (spawn → first answered
   1-token completion), interleaved runs. The goal (<= 1.1x) is for the request that
   starts a model of a running `serve` (request → answer, the gateway already up with
   nothing loaded). Shown beside it: `serve` spawned together with that request (its
   own boot added), and with the model preloaded.
2. Swap: with `max_loaded = 2` and two models loaded, a request for the third (evict the
   least recently used + start + first token) vs the bare cold start (goal: <= 1.15x).
3. Gateway added latency p50 with three models loaded: 1-token completions through the
   gateway vs straight to the model's server, interleaved (goal: < 1 ms).
4. RSS of the `mlxpin serve` process itself (goal: < 60 MB).

Usage: python bench/serve.py [--runs N] [--requests N] [--latency-only]
       [--tree CHECKOUT --tree OTHER]  (3. for each tree side by side)
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from carry import tree_env, tree_option  # bench/ is on sys.path when this runs
from launch import first_answer
from mlxpin.dev.tinymodel import generate
from mlxpin.gateway.addresses import free_port

NAMES = ("alpha", "beta", "gamma")


def ms(seconds: float) -> str:
    return f"{seconds * 1000:7.1f} ms"


def mlxpin(*args: str, env: dict[str, str], cwd: Path) -> str:
    return subprocess.run(
        [sys.executable, "-m", "mlxpin", *args],
        env=env,
        cwd=cwd,
        check=True,
        capture_output=True,
        text=True,
    ).stdout


def planned(manifest: Path, env: dict[str, str], cwd: Path, *names: str) -> list[dict[str, Any]]:
    """The models `serve --dry-run --json` would start (the plan's `models`)."""
    shown = mlxpin(
        "serve",
        *names,
        "--dry-run",
        "--json",
        "--manifest",
        str(manifest),
        "--lock-dir",
        "lock",
        env=env,
        cwd=cwd,
    )
    models: list[dict[str, Any]] = json.loads(shown)["plan"]["models"]
    return models


def setup(
    workdir: Path, env: dict[str, str], max_loaded: int | None, preload: bool = False
) -> Path:
    for seed, name in enumerate(NAMES):
        if not (workdir / name).exists():
            generate(workdir / name, seed=seed)
    limit = f"max_loaded = {max_loaded}\n" if max_loaded else ""
    if preload:
        limit += 'preload = ["alpha"]\n'
    text = f"version = 1\n[serve]\n{limit}"
    for name in NAMES:
        text += (
            f'[models.{name}]\napi_label = "{name}-chat"\n'
            f'[models.{name}.launch]\npath = "./{name}"\n'
            f'[models.{name}.server]\nlog_level = "WARNING"\n'
        )
    manifest = workdir / f"serve-{max_loaded or 'all'}{'-preload' if preload else ''}.toml"
    manifest.write_text(text)
    mlxpin("lock", "-q", "--manifest", str(manifest), "--lock-dir", "lock", env=env, cwd=workdir)
    mlxpin("fetch", "-q", "--manifest", str(manifest), "--lock-dir", "lock", env=env, cwd=workdir)
    return manifest


class UnixHTTPConnection(http.client.HTTPConnection):
    """HTTP over a server's private Unix socket (the bench runs as the same user)."""

    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self.path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(self.path)
        self.sock = sock


def connect(address: int | str, timeout: float) -> http.client.HTTPConnection:
    if isinstance(address, str):
        return UnixHTTPConnection(address, timeout)
    return http.client.HTTPConnection("127.0.0.1", address, timeout=timeout)


def post(
    port: int | str, body: dict[str, object], conn: http.client.HTTPConnection | None
) -> float:
    payload = json.dumps(body).encode()
    connection = conn or connect(port, 120)
    started = time.perf_counter()
    connection.request(
        "POST", "/v1/chat/completions", payload, {"Content-Type": "application/json"}
    )
    response = connection.getresponse()
    data = response.read()
    elapsed = time.perf_counter() - started
    if conn is None:
        connection.close()
    if response.status != 200:
        raise SystemExit(f"HTTP {response.status}: {data[:300]!r}")
    return elapsed


def message(model: str) -> dict[str, object]:
    return {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}


def stop(process: subprocess.Popen[bytes]) -> None:
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def serve(
    manifest: Path, env: dict[str, str], cwd: Path, port: int, *names: str
) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mlxpin",
            "serve",
            *names,
            "--manifest",
            str(manifest),
            "--lock-dir",
            "lock",
            "--port",
            str(port),
            "-q",
        ],
        env=env,
        cwd=cwd,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def status(port: int) -> dict[str, dict[str, object]]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    connection.request("GET", "/mlxpin/status")
    body = json.loads(connection.getresponse().read())
    return {m["name"]: m for m in body["models"]}


def status_when_up(port: int, deadline_s: float = 60.0) -> dict[str, dict[str, object]]:
    """The status of a `serve` just spawned, once its gateway answers."""
    started = time.perf_counter()
    while True:
        try:
            return status(port)
        except OSError:
            if time.perf_counter() - started > deadline_s:
                raise
            time.sleep(0.005)


def private_address(pid: int) -> int | str:
    """The server's Unix socket path (or loopback port), from its command line."""
    command = subprocess.run(
        ["ps", "-ww", "-o", "command=", "-p", str(pid)], capture_output=True, text=True, check=True
    ).stdout.split()
    if "--unix-socket" in command:
        return command[command.index("--unix-socket") + 1]
    return int(command[command.index("--port") + 1])


def rss_mb(pid: int) -> float:
    kb = subprocess.run(
        ["ps", "-o", "rss=", "-p", str(pid)], capture_output=True, text=True, check=True
    ).stdout
    return int(kb.strip()) / 1024


def cold_starts(
    workdir: Path, env: dict[str, str], manifest: Path, preloaded: Path, runs: int
) -> float:
    plan = planned(manifest, env, workdir, "alpha")[0]
    shown = plan["argv"]
    if "--unix-socket" in shown:  # mlxpin's launcher: the bare server gets the same options
        server_args = shown[shown.index("--unix-socket") + 2 :]
    else:
        server_args = shown[shown.index("--host") : shown.index("--port")]
    argv = [sys.executable, "-m", "mlx_lm", "server", *server_args]
    bare_times: list[float] = []
    request_times: list[float] = []
    serve_times: list[float] = []
    preload_times: list[float] = []
    for _ in range(runs):
        port = free_port()
        started = time.perf_counter()
        bare = subprocess.Popen(
            [*argv, "--port", str(port)],
            env={**env, "HF_HUB_OFFLINE": "1"},
            cwd=workdir,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        bare_times.append(first_answer(port, message(plan["upstream_model"]), started))
        os.killpg(bare.pid, signal.SIGTERM)
        bare.wait()
        port = free_port()
        served = serve(manifest, env, workdir, port, "alpha")
        try:
            assert status_when_up(port)["alpha"]["state"] == "stopped"
            request_times.append(post(port, message("alpha-chat"), None))
        finally:
            stop(served)
        port = free_port()
        started = time.perf_counter()
        served = serve(manifest, env, workdir, port, "alpha")
        serve_times.append(first_answer(port, message("alpha-chat"), started))
        stop(served)
        port = free_port()
        started = time.perf_counter()
        served = serve(preloaded, env, workdir, port, "alpha")
        preload_times.append(first_answer(port, message("alpha-chat"), started))
        stop(served)
    bare_median = statistics.median(bare_times)
    print(f"cold start, to the first answered completion, median of {runs} interleaved runs")
    for title, median, times in (
        ("bare mlx_lm.server, from its spawn           ", bare_median, bare_times),
        (
            "serve on demand, from the request (the goal)",
            statistics.median(request_times),
            request_times,
        ),
        (
            "serve on demand, spawned with the request   ",
            statistics.median(serve_times),
            serve_times,
        ),
        (
            "serve, preloaded, from its spawn            ",
            statistics.median(preload_times),
            preload_times,
        ),
    ):
        shown = ", ".join(ms(t).strip() for t in times)
        extra = ""
        if median is not bare_median:
            extra = f"  {median / bare_median:.2f}x, {1000 * (median - bare_median):+.0f} ms"
        print(f"  {title}: {ms(median)}{extra}   (runs: {shown})")
    print("  (goal <= 1.1x: the request that starts a model of a running serve)")
    return bare_median


def swaps(workdir: Path, env: dict[str, str], manifest: Path, runs: int, bare: float) -> None:
    port = free_port()
    served = serve(manifest, env, workdir, port)
    try:
        started = time.perf_counter()
        first_answer(port, message("alpha-chat"), started)
        post(port, message("beta-chat"), None)
        order = ["gamma", "alpha", "beta"]
        times: list[float] = []
        for index in range(runs):
            name = order[index % 3]
            assert status(port)[name]["state"] == "stopped"
            times.append(post(port, message(f"{name}-chat"), None))
        rss = rss_mb(served.pid)
    finally:
        stop(served)
    median = statistics.median(times)
    print(f"swap with max_loaded = 2 (stop the LRU idle model + start + first token), {runs} swaps")
    print(
        f"  median {ms(median)} vs bare cold start {ms(bare)}: {median / bare:.2f}x"
        "  (goal <= 1.15x)"
    )
    print(f"  RSS of `mlxpin serve` after the swaps: {rss:.0f} MB  (goal < 60 MB)")


def latency(
    workdir: Path, env: dict[str, str], manifest: Path, requests: int, trees: list[str]
) -> None:
    """Per tree (one `serve` each; "" is the importing one), 1-token completions through the
    gateway vs straight to that serve's own servers, all interleaved."""
    runs: dict[str, tuple[subprocess.Popen[bytes], int, dict[str, int | str]]] = {}
    conns: dict[str, tuple[http.client.HTTPConnection, dict[str, http.client.HTTPConnection]]]
    conns = {}
    upstream = {m["name"]: m["upstream_model"] for m in planned(manifest, env, workdir)}
    try:
        for tree in trees:
            mine = tree_env(env, tree)
            port = free_port()
            served = serve(manifest, mine, workdir, port)
            runs[tree] = served, port, {}  # stopped in `finally` if it never answers
            first_answer(port, message("alpha-chat"), time.perf_counter())
            post(port, message("beta-chat"), None)
            post(port, message("gamma-chat"), None)
            models = status(port)
            assert all(m["state"] == "ready" for m in models.values()), models
            direct_ports = {n: private_address(int(str(models[n]["pid"]))) for n in NAMES}
            runs[tree] = served, port, direct_ports
            conns[tree] = (
                http.client.HTTPConnection("127.0.0.1", port, timeout=60),
                {n: connect(p, 60) for n, p in direct_ports.items()},
            )
        direct: dict[str, list[float]] = {tree: [] for tree in trees}
        through: dict[str, list[float]] = {tree: [] for tree in trees}
        for index in range(20 + requests):
            name = NAMES[index % 3]
            for tree in trees if index % 2 else trees[::-1]:
                _, port, direct_ports = runs[tree]
                gateway_conn, direct_conns = conns[tree]
                d = post(direct_ports[name], message(upstream[name]), direct_conns[name])
                g = post(port, message(f"{name}-chat"), gateway_conn)
                if index >= 20:  # after a warm-up
                    direct[tree].append(d)
                    through[tree].append(g)
        rss = {tree: rss_mb(run[0].pid) for tree, run in runs.items()}
    finally:
        for run in runs.values():
            stop(run[0])
    print(
        f"gateway with three models loaded, {requests} interleaved 1-token completions (keep-alive)"
    )
    for tree in trees:
        d50, g50 = statistics.median(direct[tree]), statistics.median(through[tree])
        print(
            f"  {tree and Path(tree).name + ': '}direct p50 {ms(d50)}, through serve p50 "
            f"{ms(g50)}: added {1000 * (g50 - d50):.2f} ms  (goal < 1 ms)"
        )
        print(
            f"  RSS of `mlxpin serve` with three models loaded: {rss[tree]:.0f} MB  (goal < 60 MB)"
        )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--requests", type=int, default=150)
    parser.add_argument("--latency-only", action="store_true", help="skip cold starts and swaps")
    tree_option(parser, "the latency of trees")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="mlxpin-bench-serve-") as tmp:
        workdir = Path(tmp)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "MLXPIN_"))}
        env.update(HF_HOME=str(workdir / "hf"), HF_HUB_OFFLINE="1")
        env.pop("PYTHONDONTWRITEBYTECODE", None)  # an installed mlxpin has its bytecode
        two = setup(workdir, env, 2)
        preloaded = setup(workdir, env, 2, preload=True)
        every = setup(workdir, env, None)
        print(f"machine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}")
        if not args.latency_only:
            bare = cold_starts(workdir, env, two, preloaded, args.runs)
            swaps(workdir, env, two, args.runs, bare)
        latency(workdir, env, every, args.requests, args.tree or [""])


if __name__ == "__main__":
    main()
