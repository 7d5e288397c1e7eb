"""Benchmark: embeddings through `mlxpin serve`'s gateway vs straight to mlx_vlm.server.

One tiny Qwen3 embedding model (engine mlx-vlm, role embedding), locked and fetched from a
local path, served by `mlxpin serve`; the same keep-alive client then alternates requests
between the gateway and the engine's private Unix socket (with the engine's own path as
`model`). Measured, interleaved:

1. latency of single-input requests, p50 (goal: < 1 ms added);
2. throughput of batched requests (`--batch` inputs each), inputs/s (goal: >= 0.97x).

Needs mlx-vlm (`mlxpin[vlm]`). Usage: python bench/engines.py [--requests N] [--batch N]
"""

from __future__ import annotations

import argparse
import http.client
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=200, help="measured per kind and path")
    parser.add_argument("--batch", type=int, default=16, help="inputs per batched request")
    args = parser.parse_args()
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
        plan = planned(manifest, env, workdir)[0]
        port = free_port()
        served = serve(manifest, env, workdir, port, "embed")
        try:
            deadline = time.monotonic() + 300
            while True:
                try:
                    gateway = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
                    embed(gateway, LABEL, "warm up")  # starts the model on demand
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.2)
            pid = int(str(status(port)["embed"]["pid"]))
            direct = connect(private_address(pid), 300)
            model = plan["upstream_model"]
            batch = [" ".join(WORDS[i % 7 : i % 7 + 5]) for i in range(args.batch)]
            lat: dict[str, list[float]] = {"direct": [], "gateway": []}
            thr: dict[str, list[float]] = {"direct": [], "gateway": []}
            for index in range(20 + args.requests):
                text = WORDS[index % len(WORDS)]
                order = [("direct", direct, model), ("gateway", gateway, LABEL)]
                if index % 2:
                    order.reverse()  # neither path always goes first
                for name, conn, asked in order:
                    single, _ = embed(conn, asked, text)
                    many, count = embed(conn, asked, batch)
                    if index >= 20:
                        lat[name].append(single)
                        thr[name].append(many / count)
        finally:
            stop(served)
    d50, g50 = statistics.median(lat["direct"]), statistics.median(lat["gateway"])
    d_rate = len(thr["direct"]) / sum(thr["direct"])
    g_rate = len(thr["gateway"]) / sum(thr["gateway"])
    print(f"embeddings, {args.requests} interleaved requests per path (keep-alive)")
    print(
        f"  single input p50: direct {ms(d50)}, through the gateway {ms(g50)}: "
        f"added {1000 * (g50 - d50):.2f} ms  (goal < 1 ms)"
    )
    print(
        f"  batches of {args.batch}: direct {d_rate:8.1f} inputs/s, gateway {g_rate:8.1f} "
        f"inputs/s: {g_rate / d_rate:.3f}x  (goal >= 0.97x)"
    )


if __name__ == "__main__":
    main()
