"""Benchmark: concurrent clients through `mlxpin launch` and `mlxpin serve` vs a bare
`mlx_lm.server` on the same snapshot, side by side in one run.

For 1, 8, 32 and 128 clients, plain and streaming, each client sends `--requests`
1-token completions back to back: 503 count, throughput (answers/s), p50/p99 latency.
Goals: no 503 below the queue limit, throughput >= 0.9x bare from 8 clients up, p99 no
worse than bare.

Usage: python bench/concurrency.py [--requests N] [--clients 1,8,32,128]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from mlxpin.gateway.addresses import free_port
from serve import mlxpin, setup, stop  # bench/ is on sys.path when this runs

MODEL = ["alpha-chat"]  # the bare server is asked for the snapshot path instead


def one(port: int, stream: bool) -> tuple[int, float]:
    body = {
        "model": MODEL[0],
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 1,
        "stream": stream,
    }
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
    started = time.perf_counter()
    try:
        conn.request("POST", "/v1/chat/completions", json.dumps(body), {"Content-Type": "json"})
        response = conn.getresponse()
        response.read()
        return response.status, time.perf_counter() - started
    except OSError:
        return 0, time.perf_counter() - started
    finally:
        conn.close()


def load(port: int, clients: int, requests: int, stream: bool) -> dict[str, float]:
    results: list[tuple[int, float]] = []
    lock = threading.Lock()

    def client() -> None:
        for _ in range(requests):
            outcome = one(port, stream)
            with lock:
                results.append(outcome)

    threads = [threading.Thread(target=client) for _ in range(clients)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - started
    ok = sorted(t for s, t in results if s == 200)

    def pick(q: float) -> float:
        return ok[min(len(ok) - 1, int(q * len(ok)))] * 1000 if ok else float("nan")

    return {
        "503": sum(1 for s, _ in results if s == 503),
        "errors": sum(1 for s, _ in results if s not in (200, 503)),
        "rps": len(ok) / wall,
        "p50": pick(0.5),
        "p99": pick(0.99),
    }


def wait_ready(port: int, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"exited with {process.returncode}")
        if one(port, False)[0] == 200:
            return
        time.sleep(0.5)
    raise SystemExit("never became ready")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=4, help="per client")
    parser.add_argument("--clients", default="1,8,32,128")
    args = parser.parse_args()
    levels = [int(c) for c in args.clients.split(",")]
    workdir = Path(tempfile.mkdtemp(prefix="mlxpin-bench-conc-"))
    env = {**os.environ, "HF_HOME": str(workdir / "hf"), "HF_HUB_OFFLINE": "1"}
    manifest = setup(workdir, env, None)
    lockdir = ["--manifest", str(manifest), "--lock-dir", "lock"]
    plan = json.loads(
        mlxpin("launch", "alpha", "--dry-run", "--json", *lockdir, env=env, cwd=workdir)
    )
    shown = plan["plan"]["argv"]
    server_args = (
        shown[shown.index("--unix-socket") + 2 :]
        if "--unix-socket" in shown
        else (shown[shown.index("--host") : shown.index("--port")])
    )

    def bare(p: int) -> list[str]:
        return [sys.executable, "-m", "mlx_lm", "server", *server_args, "--port", str(p)]

    def launch(p: int) -> list[str]:  # launch takes its port from the manifest
        text = manifest.read_text().replace('"alpha-chat"\n', f'"alpha-chat"\nport = {p}\n', 1)
        (workdir / "launch.toml").write_text(text)
        mine = ["--manifest", str(workdir / "launch.toml"), "--lock-dir", "lock"]
        return [sys.executable, "-m", "mlxpin", "launch", "alpha", *mine]

    def serve(p: int) -> list[str]:
        return [sys.executable, "-m", "mlxpin", "serve", "alpha", *lockdir, "--port", str(p)]

    runs = {"bare mlx_lm.server": bare, "mlxpin launch": launch, "mlxpin serve": serve}
    print(f"{'':20} clients stream  503  err   req/s   p50 ms   p99 ms")
    for name, argv in runs.items():
        MODEL[0] = plan["plan"]["upstream_model"] if name.startswith("bare") else "alpha-chat"
        port = free_port()
        process = subprocess.Popen(
            argv(port), env=env, cwd=workdir, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        try:
            wait_ready(port, process)
            for clients in levels:
                for stream in (False, True):
                    r = load(port, clients, args.requests, stream)
                    print(
                        f"{name:20} {clients:7} {stream!s:>6} {r['503']:4.0f} {r['errors']:4.0f} "
                        f"{r['rps']:7.1f} {r['p50']:8.1f} {r['p99']:8.1f}",
                        flush=True,
                    )
        finally:
            stop(process)


if __name__ == "__main__":
    main()
