"""Benchmark: embeddings through `mlxpin serve`'s gateway vs straight to mlx_vlm.server.

One tiny Qwen3 embedding model (engine mlx-vlm, role embedding), locked and fetched from a
local path, served by `mlxpin serve`; the same keep-alive client then alternates requests
between the gateway and the engine's private Unix socket (with the engine's own path as
`model`). Measured, interleaved:

1. latency of single-input requests, p50 (goal: < 1 ms added);
2. throughput of batched requests (`--batch` inputs each), inputs/s (goal: >= 0.97x).

With ``--floor``, two references join the interleaving, against the first engine: a
relay that only relays (bench/relayfloor.py: asyncio, no checks of any kind), and
``socat`` (a byte pipe in C; its client names the engine's own path), if installed.

Needs mlx-vlm (`mlxpin[vlm]`). Usage: python bench/engines.py [--requests N] [--batch N]
[--floor] [--tree CHECKOUT --tree OTHER] (a gateway per tree, each against its own engine,
side by side)
"""

from __future__ import annotations

import argparse
import http.client
import json
import shutil
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
) -> tuple[subprocess.Popen[bytes], http.client.HTTPConnection, int | str]:
    """`serve` of the embedding model, warmed up: the process, a connection to its gateway
    and its engine's private address."""
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
    return served, gateway, private_address(pid)


def floors(
    engine: str, model: str, env: dict[str, str]
) -> tuple[list[subprocess.Popen[bytes]], dict[str, tuple[http.client.HTTPConnection, str]]]:
    """The reference relays in front of the engine's socket, and a connection to each."""
    processes: list[subprocess.Popen[bytes]] = []
    paths: dict[str, tuple[http.client.HTTPConnection, str]] = {}
    port = free_port()
    relay = [sys.executable, str(Path(__file__).with_name("relayfloor.py")), engine, str(port)]
    python = subprocess.Popen([*relay, model], env=env, stdout=subprocess.PIPE)
    processes.append(python)
    assert python.stdout is not None
    python.stdout.readline()  # listening
    paths["floor: python relay"] = http.client.HTTPConnection("127.0.0.1", port), LABEL
    if shutil.which("socat"):
        port = free_port()
        listen = f"TCP-LISTEN:{port},bind=127.0.0.1,reuseaddr,fork,nodelay"
        processes.append(subprocess.Popen(["socat", listen, f"UNIX-CONNECT:{engine}"]))
        deadline = time.monotonic() + 10
        while True:
            try:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
                conn.connect()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        paths["floor: socat"] = conn, model
    return processes, paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    # 200 a path left one run's throughput ratio ±0.03 (socat alone: 0.962-1.028x).
    parser.add_argument("--requests", type=int, default=1000, help="measured per kind and path")
    parser.add_argument("--batch", type=int, default=16, help="inputs per batched request")
    parser.add_argument("--floor", action="store_true", help="also measure reference relays")
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
        references: list[subprocess.Popen[bytes]] = []
        try:
            for tree in trees:
                name = f"gateway {Path(tree).name}" if len(trees) > 1 else "gateway"
                mine = tree_env(env, tree)
                served[name], gateway, engine = start(workdir, manifest, mine)
                paths["direct" + name[7:]] = connect(engine, 300), model
                paths[name] = gateway, LABEL
                if args.floor and not references:
                    references, more = floors(str(engine), model, mine)
                    paths.update(more)
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
            for process in references:
                process.terminate()
                process.wait()
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
    first = "direct" + next(iter(served))[7:]
    for name in (n for n in paths if n.startswith("floor")):
        d50, r50 = statistics.median(lat[first]), statistics.median(lat[name])
        ratio = (len(thr[name]) / sum(thr[name])) / (len(thr[first]) / sum(thr[first]))
        print(f"  {name}: added {1000 * (r50 - d50):.2f} ms p50; batches {ratio:.3f}x")


if __name__ == "__main__":
    main()
