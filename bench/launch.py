"""Benchmark: the boot path and the gateway.

1. Launch preflight: `mlxpin launch NAME --dry-run` on a manifest of 50 models with
   5,000 locked, fetched files, against `python -c pass` (goal: <= 4x).
2. Gateway overhead on a REAL mlx_lm.server running the tiny model: added latency
   p50/p99 of a 1-token completion (gateway vs the server directly, interleaved),
   streaming throughput (chunks/s over a long generation), and the RSS of the
   `mlxpin launch` process that runs the gateway (goals: p50 < 2 ms, p99 < 10 ms,
   throughput >= 0.98x, RSS < 100 MB).
3. Cold start: spawn to the first answered 1-token completion, `mlxpin launch` (through
   its gateway) vs a bare `mlx_lm.server` on the same snapshot, interleaved runs
   (goal: <= 1.1x and <= +100 ms).
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

from mlxpin.dev.tinymodel import generate
from mlxpin.gateway.addresses import free_port

MODELS = 50
FILES_PER_MODEL = 100


def ms(seconds: float) -> str:
    return f"{seconds * 1000:6.2f} ms"


def run_quiet(argv: list[str], env: dict[str, str], cwd: Path) -> None:
    subprocess.run(argv, env=env, cwd=cwd, check=True, stdout=subprocess.DEVNULL)


def best_of(argv: list[str], env: dict[str, str], cwd: Path, runs: int) -> tuple[float, float]:
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        run_quiet(argv, env, cwd)
        times.append(time.perf_counter() - started)
    return min(times), statistics.median(times)


def preflight(workdir: Path, env: dict[str, str], runs: int) -> None:
    lines = ["version = 1"]
    for index in range(MODELS):
        model = workdir / "models" / f"m{index:02d}"
        model.mkdir(parents=True)
        for number in range(FILES_PER_MODEL):
            (model / f"f{number:03d}.json").write_text(f'{{"m": {index}, "f": {number}}}\n')
        lines += [
            f"[models.m{index:02d}]",
            f'api_label = "model-{index:02d}"',
            f"port = {20000 + index}",
            f"[models.m{index:02d}.launch]",
            f'path = "./models/m{index:02d}"',
        ]
    (workdir / "manifest.toml").write_text("\n".join(lines) + "\n")
    run_quiet([sys.executable, "-m", "mlxpin", "lock", "-q"], env, workdir)
    run_quiet([sys.executable, "-m", "mlxpin", "fetch", "-q"], env, workdir)
    mlxpin = str(Path(sys.executable).with_name("mlxpin"))
    dry = [mlxpin, "launch", "m25", "--dry-run", "-q"]
    base = [sys.executable, "-c", "pass"]
    best_of(dry, env, workdir, 2)  # warm the page cache
    dry_best, dry_median = best_of(dry, env, workdir, runs)
    base_best, base_median = best_of(base, env, workdir, runs)
    print(f"launch preflight, {MODELS} models / {MODELS * FILES_PER_MODEL} locked files, fetched")
    print(f"  mlxpin launch --dry-run: best {ms(dry_best)}, median {ms(dry_median)}")
    print(f"  python -c pass:          best {ms(base_best)}, median {ms(base_median)}")
    print(f"  ratio (best): {dry_best / base_best:.1f}x  (goal <= 4x)")


class UnixHTTPConnection(http.client.HTTPConnection):
    """HTTP over the server's private Unix socket (the bench runs as the same user)."""

    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self.path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(self.path)
        self.sock = sock


Address = int | str  # a loopback port, or a Unix socket path


def connect(address: Address, timeout: float) -> http.client.HTTPConnection:
    if isinstance(address, str):
        return UnixHTTPConnection(address, timeout)
    return http.client.HTTPConnection("127.0.0.1", address, timeout=timeout)


def post(
    host: str, port: Address, body: dict[str, object], conn: http.client.HTTPConnection | None
) -> tuple[float, bytes]:
    payload = json.dumps(body).encode()
    connection = conn or connect(port, 60)
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
        raise SystemExit(f"HTTP {response.status}: {data[:200]!r}")
    return elapsed, data


def stream_rate(port: Address, body: dict[str, object]) -> float:
    connection = connect(port, 120)
    payload = json.dumps({**body, "stream": True}).encode()
    connection.request(
        "POST", "/v1/chat/completions", payload, {"Content-Type": "application/json"}
    )
    response = connection.getresponse()
    chunks = 0
    started = time.perf_counter()
    for line in response:
        if line.startswith(b"data: {"):
            chunks += 1
    elapsed = time.perf_counter() - started
    connection.close()
    return chunks / elapsed


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def gateway(workdir: Path, env: dict[str, str], requests: int, stream_tokens: int) -> None:
    project = workdir / "gw"
    generate(project / "tiny")
    port = free_port()
    (project / "manifest.toml").write_text(
        f'[models.tiny]\napi_label = "tiny-chat"\nport = {port}\n'
        f'[models.tiny.launch]\npath = "./tiny"\n[models.tiny.server]\nlog_level = "WARNING"\n'
        f"max_tokens = {stream_tokens}\n"
    )
    run_quiet([sys.executable, "-m", "mlxpin", "lock", "-q"], env, project)
    run_quiet([sys.executable, "-m", "mlxpin", "fetch", "-q"], env, project)
    plan = json.loads(
        subprocess.run(
            [sys.executable, "-m", "mlxpin", "launch", "--dry-run", "--json"],
            env=env,
            cwd=project,
            check=True,
            capture_output=True,
            text=True,
        ).stdout
    )["plan"]
    upstream_model = plan["upstream_model"]
    launch = subprocess.Popen(
        [sys.executable, "-m", "mlxpin", "launch", "-q"],
        env=env,
        cwd=project,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                connection = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
                connection.request("GET", "/health")
                if connection.getresponse().status == 200:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise SystemExit("gateway never became healthy")
            time.sleep(0.1)
        server_pid, private_port = server_process(launch.pid)
        message = [{"role": "user", "content": "hi"}]
        direct_body = {"model": upstream_model, "messages": message, "max_tokens": 1}
        gateway_body = {"model": "tiny-chat", "messages": message, "max_tokens": 1}
        keepalive = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        direct: list[float] = []
        through: list[float] = []
        for _ in range(20):  # warm-up
            post("127.0.0.1", private_port, direct_body, None)
            post("127.0.0.1", port, gateway_body, keepalive)
        for _ in range(requests):
            direct.append(post("127.0.0.1", private_port, direct_body, None)[0])
            through.append(post("127.0.0.1", port, gateway_body, keepalive)[0])
        long_body = {"messages": message, "max_tokens": stream_tokens}

        def streaming() -> tuple[float, float]:
            direct_rates = []
            gateway_rates = []
            for _ in range(7):  # interleaved
                direct_rates.append(
                    stream_rate(private_port, {**long_body, "model": upstream_model})
                )
                gateway_rates.append(stream_rate(port, {**long_body, "model": "tiny-chat"}))
            return statistics.median(direct_rates), statistics.median(gateway_rates)

        shared = streaming()
        pinned: tuple[float, float] | None = None
        if hasattr(os, "sched_setaffinity") and len(os.sched_getaffinity(0)) >= 2:
            # The server gets a core of its own, as on a Mac where it runs on the GPU and
            # has cores to spare; gateway and client share the other one.
            everything = os.sched_getaffinity(0)
            first, second = sorted(everything)[:2]
            pin(server_pid, {first})
            pin(launch.pid, {second})
            os.sched_setaffinity(0, {second})
            try:
                pinned = streaming()
            finally:
                os.sched_setaffinity(0, everything)
        rss_kb = int(
            next(
                line.split()[1]
                for line in Path(f"/proc/{launch.pid}/status").read_text().splitlines()
                if line.startswith("VmRSS:")
            )
        )
    finally:
        launch.send_signal(signal.SIGTERM)
        launch.wait(timeout=30)
    p50 = (percentile(through, 0.5) - percentile(direct, 0.5)) * 1000
    p99 = (percentile(through, 0.99) - percentile(direct, 0.99)) * 1000
    print(
        f"gateway on a real mlx_lm.server (tiny model), {requests} interleaved 1-token completions"
    )
    print(f"  direct  p50 {ms(percentile(direct, 0.5))}  p99 {ms(percentile(direct, 0.99))}")
    print(f"  gateway p50 {ms(percentile(through, 0.5))}  p99 {ms(percentile(through, 0.99))}")
    print(f"  added   p50 {p50:6.2f} ms  p99 {p99:6.2f} ms  (goals < 2 ms, < 10 ms)")
    for title, rates in (("all on shared cores", shared), ("server on its own core", pinned)):
        if rates is None:
            continue
        direct_rate, gateway_rate = rates
        print(
            f"  streaming {stream_tokens} tokens, {title}: direct {direct_rate:.0f} chunks/s, "
            f"gateway {gateway_rate:.0f} chunks/s, ratio {gateway_rate / direct_rate:.3f}"
            "  (goal >= 0.98)"
        )
    print(f"  RSS of `mlxpin launch` (gateway + pool): {rss_kb / 1024:.0f} MB  (goal < 100 MB)")


def first_answer(
    port: int, body: dict[str, object], started: float | None = None, deadline_s: float = 180.0
) -> float:
    """Poll a 1-token completion every 5 ms until one is answered: seconds since `started`
    (default: now). `bench/serve.py` uses it too."""
    payload = json.dumps(body).encode()
    started = time.perf_counter() if started is None else started
    while time.perf_counter() - started < deadline_s:
        try:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
            connection.request(
                "POST", "/v1/chat/completions", payload, {"Content-Type": "application/json"}
            )
            response = connection.getresponse()
            response.read()
            connection.close()
            if response.status == 200:
                return time.perf_counter() - started
        except OSError:
            pass
        time.sleep(0.005)
    raise SystemExit("no answer in time")


def cold_start(workdir: Path, env: dict[str, str], runs: int) -> None:
    project = workdir / "gw"  # locked and fetched by gateway()
    plan = json.loads(
        subprocess.run(
            [sys.executable, "-m", "mlxpin", "launch", "--dry-run", "--json"],
            env=env,
            cwd=project,
            check=True,
            capture_output=True,
            text=True,
        ).stdout
    )["plan"]
    port = plan["public"]["port"]
    message = [{"role": "user", "content": "hi"}]
    bare_argv = [sys.executable, "-m", "mlx_lm", "server", "--model", plan["upstream_model"]]
    bare_argv += ["--log-level", "WARNING"]
    launched: list[float] = []
    bare: list[float] = []
    for _ in range(runs):
        for kind in ("launch", "bare"):
            if kind == "launch":
                argv = [sys.executable, "-m", "mlxpin", "launch", "-q"]
                body = {"model": "tiny-chat", "messages": message, "max_tokens": 1}
                target = port
            else:
                target = free_port()
                argv = [*bare_argv, "--port", str(target)]
                body = {"model": plan["upstream_model"], "messages": message, "max_tokens": 1}
            process = subprocess.Popen(
                argv,
                env={**env, "HF_HUB_OFFLINE": "1"},
                cwd=project,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            try:
                took = first_answer(target, body)
            finally:
                process.send_signal(signal.SIGTERM)
                process.wait(timeout=30)
            (launched if kind == "launch" else bare).append(took)
    lm, bm = statistics.median(launched), statistics.median(bare)
    print(f"cold start, spawn -> first answered completion (tiny model), median of {runs}")
    print(f"  mlxpin launch:      {ms(lm)}  (best {ms(min(launched))})")
    print(f"  bare mlx_lm.server: {ms(bm)}  (best {ms(min(bare))})")
    print(f"  ratio {lm / bm:.2f}x, +{(lm - bm) * 1000:.0f} ms  (goal <= 1.1x, <= +100 ms)")


def server_process(launch_pid: int) -> tuple[int, Address]:
    """(pid, private port or socket) of the mlx_lm.server child of `mlxpin launch`."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        for task in Path(f"/proc/{launch_pid}/task").iterdir():
            for child in (task / "children").read_text().split():
                argv = Path(f"/proc/{child}/cmdline").read_text().split("\0")
                if "--unix-socket" in argv:
                    return int(child), argv[argv.index("--unix-socket") + 1]
                if "--port" in argv:
                    return int(child), int(argv[argv.index("--port") + 1])
        time.sleep(0.1)
    raise SystemExit("could not find the server's private port")


def pin(pid: int, cpus: set[int]) -> None:
    """Pin a process and all its threads (Linux)."""
    for task in Path(f"/proc/{pid}/task").iterdir():
        os.sched_setaffinity(int(task.name), cpus)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--stream-tokens", type=int, default=400)
    parser.add_argument("--cold-starts", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "MLXPIN_"))}
        env.update(HF_HOME=str(workdir / "hf"), HF_HUB_OFFLINE="1")
        env.pop("PYTHONDONTWRITEBYTECODE", None)  # an installed mlxpin has its bytecode
        preflight(workdir, env, args.runs)
        gateway(workdir, env, args.requests, args.stream_tokens)
        if args.cold_starts > 0:  # 0 skips it
            cold_start(workdir, env, args.cold_starts)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
