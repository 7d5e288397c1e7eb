"""Benchmark: concurrent clients through `mlxpin launch` and `mlxpin serve` vs a bare
`mlx_lm.server` on the same snapshot, side by side in one run.

For 1, 8, 32 and 128 clients, plain and streaming, each client sends `--requests`
1-token completions back to back: 503 count, throughput (answers/s), p50/p99 latency.
Goals: no 503 below the queue limit, throughput >= 0.9x bare from 8 clients up, p99 no
worse than bare.

With ``--floor``, a reference joins: the same engine behind bench/relayfloor.py, a relay
that only relays (asyncio, no checks of any kind): what any relay in Python costs here.

Usage: python bench/concurrency.py [--requests N] [--clients 1,8,32,128] [--rounds N]
       [--floor] [--tree CHECKOUT --tree OTHER]  (side by side, e.g. a branch against main)
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

from carry import cpu_s, tree_env, tree_option  # bench/ is on sys.path when this runs
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
        "max": pick(1.0),  # a refused connect is retried after 1 s (a bare server's backlog)
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
    parser.add_argument("--rounds", type=int, default=1, help="interleaved; medians shown")
    tree_option(parser)
    parser.add_argument("--no-serve", action="store_true", help="bare and launch only")
    parser.add_argument("--floor", action="store_true", help="also a bare relay, for reference")
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
        (workdir / f"launch-{p}.toml").write_text(text)
        mine = ["--manifest", str(workdir / f"launch-{p}.toml"), "--lock-dir", "lock"]
        return [sys.executable, "-m", "mlxpin", "launch", "alpha", *mine]

    def serve(p: int) -> list[str]:
        return [sys.executable, "-m", "mlxpin", "serve", "alpha", *lockdir, "--port", str(p)]

    def floor(p: int) -> list[str]:  # mlxpin's engine launcher behind a relay that only relays
        sock = str(workdir / f"floor-{p}.sock")
        engine = [sys.executable, "-m", "mlxpin.serve.uds_server", "--unix-socket", sock]
        relay = [sys.executable, str(Path(__file__).with_name("relayfloor.py")), sock, str(p)]
        return [*relay, plan["plan"]["upstream_model"], *engine, *server_args]

    trees = args.tree or [""]
    runs: dict[str, tuple[Callable[[int], list[str]], str]] = {"bare mlx_lm.server": (bare, "")}
    for tree in trees:
        tag = f" {Path(tree).name}" if len(trees) > 1 else ""
        runs[f"mlxpin launch{tag}"] = (launch, tree)
        if not args.no_serve:
            runs[f"mlxpin serve{tag}"] = (serve, tree)
    if args.floor:
        runs["floor: python relay"] = (floor, "")
    started: dict[str, tuple[int, subprocess.Popen[bytes]]] = {}
    results: dict[tuple[str, int, bool], list[dict[str, float]]] = {}
    try:
        for name, (argv, tree) in runs.items():
            port = free_port()
            mine = tree_env(env, tree)
            started[name] = port, subprocess.Popen(
                argv(port), env=mine, cwd=workdir, stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )  # fmt: skip
        for name, (port, process) in started.items():
            MODEL[0] = plan["plan"]["upstream_model"] if name.startswith("bare") else "alpha-chat"
            wait_ready(port, process)
        names = list(started)
        for _ in range(args.rounds):
            names = names[1:] + names[:1]  # none always goes first
            for clients in levels:
                for stream in (False, True):
                    for name in names:
                        port, process = started[name]
                        bare_one = name.startswith("bare")
                        MODEL[0] = plan["plan"]["upstream_model"] if bare_one else "alpha-chat"
                        cpu = cpu_s(process.pid)
                        r = load(port, clients, args.requests, stream)
                        r["cpu"] = (cpu_s(process.pid) - cpu) / (clients * args.requests)
                        results.setdefault((name, clients, stream), []).append(r)
    finally:
        for _port, process in started.values():
            stop(process)
    print(f"{args.rounds} interleaved round(s); medians; cpu: the process's own (not its server)")
    print(f"{'':24} clients stream  503  err   req/s   p50 ms   p99 ms   max ms  cpu ms/req")
    for clients in levels:
        for stream in (False, True):
            for name in started:
                rows = results[(name, clients, stream)]
                m = {k: statistics.median(r[k] for r in rows) for k in rows[0]}
                print(
                    f"{name:24} {clients:7} {stream!s:>6} {m['503']:4.0f} {m['errors']:4.0f} "
                    f"{m['rps']:7.1f} {m['p50']:8.1f} {m['p99']:8.1f} {m['max']:8.1f} "
                    + ("        -" if name.startswith("bare") else f"{1000 * m['cpu']:9.2f}"),
                    flush=True,
                )
    # One round's p99 is the 1% tail of one run: it moves by several ms from round to
    # round. Paired by round (each measured next to bare), the difference is steadier.
    bare_name = next(iter(started))
    print("p99 minus bare's in the same round (ms): median [per round]")
    for clients in levels:
        for stream in (False, True):
            bare_rows = results[(bare_name, clients, stream)]
            for name in list(started)[1:]:
                rows = results[(name, clients, stream)]
                deltas = [r["p99"] - b["p99"] for r, b in zip(rows, bare_rows, strict=True)]
                shown = ", ".join(f"{d:+.1f}" for d in deltas)
                worse = sum(d > 0 for d in deltas)
                print(
                    f"  {name:24} {clients:3} {'stream' if stream else 'plain ':6} "
                    f"{statistics.median(deltas):+.1f} (worse in {worse}/{len(deltas)}) [{shown}]"
                )


if __name__ == "__main__":
    main()
