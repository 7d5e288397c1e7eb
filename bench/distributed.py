"""Distributed launch: time to first answer, one rank vs two (ring over loopback), and the
gateway's added latency on the distributed model (same request through the gateway and
straight to rank 0's private port, interleaved).

Run: .venv/bin/python bench/distributed.py [--requests N]
Everything is local: the tiny generated model, a path source, real mlx.launch and
mlx_lm.server processes. Figures on a loaded 2-core box are noisy; read the ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

from mlxpin.dev.tinymodel import generate
from mlxpin.gateway.addresses import free_port, free_ports


def post(url: str, body: dict[str, object], timeout: float = 30.0) -> dict[str, object]:
    request = urllib.request.Request(
        url, json.dumps(body).encode(), {"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return dict(json.loads(response.read()))


def launch(
    root: Path, env: dict[str, str], name: str, port: int
) -> tuple[float, int, subprocess.Popen[str]]:
    """Start `mlxpin launch NAME`; return (seconds to the first answer, private port, proc)."""
    started = time.monotonic()
    process = subprocess.Popen(
        [sys.executable, "-m", "mlxpin", "launch", name, "-v"],
        cwd=root,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: list[str] = []
    threading.Thread(target=lambda: lines.extend(process.stdout or []), daemon=True).start()
    body = {"model": name, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}
    while True:
        if process.poll() is not None:
            raise SystemExit("launch ended:\n" + "".join(lines))
        try:
            post(f"http://127.0.0.1:{port}/v1/chat/completions", body, timeout=5)
            break
        except OSError:
            time.sleep(0.05)
    elapsed = time.monotonic() - started
    match = re.search(r"--port (\d+)", "".join(lines))
    assert match, "".join(lines)
    return elapsed, int(match.group(1)), process


def stop(process: subprocess.Popen[str]) -> None:
    process.send_signal(signal.SIGTERM)
    process.wait(timeout=60)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=40)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        generate(root / "model")
        one, two = free_ports(2)
        (root / "manifest.toml").write_text(
            f"""version = 1
[models.one]
api_label = "one"
port = {one}
[models.one.launch]
path = "./model"
[models.two]
api_label = "two"
port = {two}
[models.two.launch]
path = "./model"
[models.two.distributed]
hosts = ["127.0.0.1", "127.0.0.1"]
starting_port = {free_port()}
"""
        )
        env = {**os.environ, "HF_HOME": str(root / "hf")}
        for verb in ("lock", "fetch"):
            subprocess.run(
                [sys.executable, "-m", "mlxpin", verb, "-q"], cwd=root, env=env, check=True
            )
        first_one, _, p1 = launch(root, env, "one", one)
        stop(p1)
        first_two, private, p2 = launch(root, env, "two", two)
        body = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}
        via: list[float] = []
        direct: list[float] = []
        gateway = (via, f"http://127.0.0.1:{two}/v1/chat/completions", "two")
        server = (direct, f"http://127.0.0.1:{private}/v1/chat/completions", "default_model")
        for index in range(args.requests):  # ABBA order: neither side always goes first
            for target, url, model in (gateway, server) if index % 2 else (server, gateway):
                started = time.perf_counter()
                post(url, {**body, "model": model})
                target.append(time.perf_counter() - started)
        stop(p2)

    def pct(values: list[float], q: float) -> float:
        return sorted(values)[min(len(values) - 1, int(q * len(values)))] * 1000

    added = statistics.median(v - d for v, d in zip(via, direct, strict=True)) * 1000
    print(
        f"time to first answer: 1 rank {first_one:.1f} s, 2 ranks {first_two:.1f} s "
        f"(x{first_two / first_one:.2f})"
    )
    print(
        f"1-token chat completion on the 2-rank model, {args.requests} each, interleaved: "
        f"direct p50 {pct(direct, 0.5):.1f} ms p99 {pct(direct, 0.99):.1f} ms; "
        f"via gateway p50 {pct(via, 0.5):.1f} ms p99 {pct(via, 0.99):.1f} ms; "
        f"added p50 {pct(via, 0.5) - pct(direct, 0.5):+.1f} ms "
        f"(median of paired differences {added:+.1f} ms)"
    )


if __name__ == "__main__":
    main()
