"""Benchmark: embeddings through `mlxpin serve`'s gateway vs straight to mlx_vlm.server.

One tiny Qwen3 embedding model (engine mlx-vlm, role embedding), locked and fetched from a
local path, served by `mlxpin serve`; the same keep-alive client then alternates requests
between the gateway and the engine's private Unix socket (with the engine's own path as
`model`). Measured, interleaved:

1. latency of single-input requests, p50 (goal: < 1 ms added);
2. throughput of batched requests (`--batch` inputs each), inputs/s (goal: >= 0.97x).

Needs mlx-vlm (`mlxpin[vlm]`). Usage: python bench/engines.py [--requests N] [--batch N]
[--tree CHECKOUT --tree OTHER] (a gateway per tree, each against its own engine, side by side)
"""

from __future__ import annotations

import argparse
import http.client
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from carry import cpu_s, tree_env, tree_option  # bench/ is on sys.path when this runs
from mlxpin.dev.tinymodel_embedding import generate
from mlxpin.gateway.addresses import free_port
from serve import connect, mlxpin, ms, planned, private_address, serve, status, stop

LABEL = "text-embedding-qwen3-embedding-8b"
WORDS = ("the", "quick", "brown", "fox", "jumps", "over", "a", "lazy", "dog", "while", "it", "runs")


def embed(
    conn: http.client.HTTPConnection, model: str, inputs: str | list[str]
) -> tuple[float, int]:
    payload = json.dumps({"model": model, "input": inputs}).encode()
    started = time.perf_counter()
    conn.request("POST", "/v1/embeddings", payload, {"Content-Type": "application/json"})
    response = conn.getresponse()
    data = response.read()
    elapsed = time.perf_counter() - started
    if response.status != 200:
        raise SystemExit(f"HTTP {response.status}: {data[:300]!r}")
    return elapsed, len(json.loads(data)["data"])


def start(
    workdir: Path, manifest: Path, env: dict[str, str]
) -> tuple[subprocess.Popen[bytes], http.client.HTTPConnection, http.client.HTTPConnection]:
    """`serve` of the embedding model, warmed up: the process, a connection to its gateway
    and one straight to its engine."""
    port = free_port()
    served = serve(manifest, env, workdir, port, "embed")
    deadline = time.monotonic() + 300
    while True:
        try:
            gateway = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
            embed(gateway, LABEL, "warm up")  # starts the model on demand
            break
        except OSError:
            if time.monotonic() > deadline:
                stop(served)
                raise
            time.sleep(0.2)
    pid = int(str(status(port)["embed"]["pid"]))
    return served, gateway, connect(private_address(pid), 300)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=200, help="measured per kind and path")
    parser.add_argument("--batch", type=int, default=16, help="inputs per batched request")
    tree_option(parser)
    args = parser.parse_args()
    trees = args.tree or [""]
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        generate(workdir / "embed")
        manifest = workdir / "manifest.toml"
        manifest.write_text(
            f'version = 1\n[models.embed]\napi_label = "{LABEL}"\nengine = "mlx-vlm"\n'
            'role = "embedding"\n[models.embed.launch]\npath = "./embed"\n'
            '[models.embed.server]\nlog_level = "WARNING"\n'
        )
        env = {"HF_HOME": str(workdir / "hf"), "PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1"}
        env["PYTHONPATH"] = ":".join(p for p in sys.path if p)
        for verb in ("lock", "fetch"):
            mlxpin(
                verb, "-q", "--manifest", str(manifest), "--lock-dir", "lock", env=env, cwd=workdir
            )
        model = planned(manifest, env, workdir)[0]["upstream_model"]
        batch = [" ".join(WORDS[i % 7 : i % 7 + 5]) for i in range(args.batch)]
        # one `serve` per tree, each measured against its own engine
        paths: dict[str, tuple[http.client.HTTPConnection, str]] = {}
        served: dict[str, subprocess.Popen[bytes]] = {}
        try:
            for tree in trees:
                name = f"gateway {Path(tree).name}" if len(trees) > 1 else "gateway"
                mine = tree_env(env, tree)
                served[name], gateway, direct = start(workdir, manifest, mine)
                paths["direct" + name[7:]] = direct, model
                paths[name] = gateway, LABEL
            lat: dict[str, list[float]] = {name: [] for name in paths}
            thr: dict[str, list[float]] = {name: [] for name in paths}
            cpu: dict[str, float] = dict.fromkeys(served, 0.0)
            order = list(paths)
            for index in range(20 + args.requests):
                text = WORDS[index % len(WORDS)]
                order = order[1:] + order[:1]  # no path always goes first
                for name in order:
                    conn, asked = paths[name]
                    before = cpu_s(served[name].pid) if name in served else 0.0
                    single, _ = embed(conn, asked, text)
                    many, count = embed(conn, asked, batch)
                    if index >= 20:
                        lat[name].append(single)
                        thr[name].append(many / count)
                        if name in served:
                            cpu[name] += cpu_s(served[name].pid) - before
        finally:
            for process in served.values():
                stop(process)
    print(f"embeddings, {args.requests} interleaved requests per path (keep-alive)")
    for name in served:
        own = "direct" + name[7:]
        d50, g50 = statistics.median(lat[own]), statistics.median(lat[name])
        d_rate = len(thr[own]) / sum(thr[own])
        g_rate = len(thr[name]) / sum(thr[name])
        per = 1000 * cpu[name] / (2 * args.requests)
        print(
            f"  {name}: single input p50 {ms(g50)} vs direct {ms(d50)}: added "
            f"{1000 * (g50 - d50):.2f} ms (goal < 1 ms); batches of {args.batch}: "
            f"{g_rate:.1f} vs {d_rate:.1f} inputs/s, {g_rate / d_rate:.3f}x (goal >= 0.97x); "
            f"gateway CPU {per:.2f} ms/request"
        )


if __name__ == "__main__":
    main()
