"""Benchmark: the gateway's own cost per request, against an engine that answers at once.

With a real engine the gateway's share is a few percent of each request and drowns in the
engine's noise (bench/engines.py, bench/concurrency.py). Here a stand-in engine on a Unix
socket answers every request at once (HTTP/1.1, kept connections): a fixed chat
completion, a chunked event stream, or a 15 KB embeddings answer. In front of it, the
gateway as `launch` builds it (the key check, request checks, routing, relay, relabelling,
the console's metrics, recent requests and access log, on the event loop `launch` picks),
and for reference bench/relayfloor.py (a relay that only relays). One client sends
requests one after the other, a new connection each (`new`) or one kept connection
(`kept`); measured: the relay process's CPU per request, and the client's p50.

Usage: python bench/gatewaycpu.py [--requests N] [--rounds N] [--tree CHECKOUT --tree OTHER]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

from carry import cpu_s, tree_env, tree_option  # bench/ is on sys.path when this runs
from mlxpin.gateway.addresses import free_port

LABEL = "alpha-chat"
EMBED_LABEL = "alpha-embed"
MODEL = "/srv/hf/hub/models--mlx-community--alpha/snapshots/" + "0a" * 20
EMBEDDING = [round(0.001 * i - 0.5, 6) for i in range(64)]


def engine_answers() -> dict[str, bytes]:
    chat = {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1,
        "model": MODEL,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "hi"},
                "finish_reason": "length",
            }
        ],
        "usage": {"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6},
    }
    event = dict(chat, object="chat.completion.chunk", choices=[{"index": 0, "delta": {}}])
    stream = b"".join(
        b"%x\r\n%s\r\n" % (len(piece), piece)
        for piece in (b"data: " + json.dumps(event).encode() + b"\n\n", b"data: [DONE]\n\n")
    )
    data = [{"object": "embedding", "index": i, "embedding": EMBEDDING} for i in range(16)]
    usage = {"prompt_tokens": 80, "total_tokens": 80}
    embed = {"object": "list", "data": data, "model": MODEL, "usage": usage}
    head = "HTTP/1.1 200 OK\r\nContent-Type: {}\r\n{}\r\n\r\n"
    whole = json.dumps(chat).encode()
    vectors = json.dumps(embed, separators=(",", ":")).encode()
    return {
        "plain": head.format("application/json", f"Content-Length: {len(whole)}").encode() + whole,
        "stream": head.format("text/event-stream", "Transfer-Encoding: chunked").encode()
        + stream
        + b"0\r\n\r\n",
        "embed": head.format("application/json", f"Content-Length: {len(vectors)}").encode()
        + vectors,
    }


class Engine(asyncio.Protocol):
    """Answers each whole request at once, on a kept connection."""

    answers = engine_answers()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport, self.buffer = transport, b""

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while (end := self.buffer.find(b"\r\n\r\n")) >= 0:
            head = self.buffer[:end].lower()
            at = head.find(b"content-length:")
            length = int(head[at + 15 :].split(b"\r\n")[0]) if at >= 0 else 0
            if len(self.buffer) < end + 4 + length:
                return
            body = self.buffer[end + 4 : end + 4 + length]
            self.buffer = self.buffer[end + 4 + length :]
            kind = "embed" if b"/v1/embeddings" in head else "plain"
            if b'"stream":true' in body:
                kind = "stream"
            self.transport.write(self.answers[kind])


def serve_engine(path: str) -> None:
    async def main() -> None:
        await asyncio.get_running_loop().create_unix_server(Engine, path)
        print("ready", flush=True)
        await asyncio.Event().wait()

    asyncio.run(main())


def serve_gateway(engine: str, port: int) -> None:
    """The gateway as `launch` builds it, over one model whose engine is ``engine``."""
    from mlxpin.gateway.aio import import_aiohttp

    import_aiohttp()
    try:  # (a tree from before the gateway picked its loop: asyncio's)
        from mlxpin.gateway.aio import event_loop_factory
    except ImportError:
        loop_factory = None
    else:
        loop_factory = event_loop_factory(os.environ)
    from mlxpin.cli.output import setup_logging
    from mlxpin.gateway.app import Gateway, serve
    from mlxpin.gateway.backends import GatewayState, Lease, Route, Upstream
    from mlxpin.supervise.console import Console

    class OneEngine:
        """A chat model and an embedding model, both answered by ``engine``."""

        def __init__(self) -> None:
            self.state = GatewayState(healthy=True)
            self.models = {
                LABEL: (Route(LABEL), Upstream(LABEL, MODEL, "http://engine", engine)),
                EMBED_LABEL: (
                    Route(EMBED_LABEL, engine="mlx-vlm", role="embedding"),
                    Upstream(EMBED_LABEL, MODEL, "http://engine", engine, role="embedding"),
                ),
            }

        def routes(self) -> list[Route]:
            return [route for route, _ in self.models.values()]

        async def acquire(self, label: str) -> Lease:
            return Lease(self.models[label][1], self.state)

        def health(self) -> object:
            raise NotImplementedError

    setup_logging(quiet=False, verbose=False)  # the access log, as the CLI sets it up

    async def main() -> None:
        gateway = Gateway(OneEngine(), api_key="sk-bench")  # type: ignore[arg-type]
        pool = SimpleNamespace(  # what the console reads of a pool: no model is started
            by_label=dict.fromkeys((LABEL, EMBED_LABEL)),
            slots={},
            status=lambda: {"budget": {"total": None, "used": 0}},
        )
        Console(gateway, pool, "sk-bench", metrics_public=False)  # type: ignore[arg-type]
        await serve(gateway.app(), "127.0.0.1", port)
        print("ready", flush=True)
        await asyncio.Event().wait()

    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(main())


def request(kind: str) -> bytes:
    if kind == "embed":
        body = json.dumps({"model": EMBED_LABEL, "input": ["the quick brown fox"] * 16}).encode()
        path = b"/v1/embeddings"
    else:
        asked = {"model": LABEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}
        body = json.dumps(dict(asked, stream=kind == "stream")).encode()
        path = b"/v1/chat/completions"
    return (
        b"POST %s HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer sk-bench\r\n"
        b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (path, len(body), body)
    )


def read_answer(conn: socket.socket, stream: bool) -> bytes:
    data = b""
    while True:
        piece = conn.recv(65536)
        if not piece:
            raise SystemExit(f"the relay closed: {data[:200]!r}")
        data += piece
        end = data.find(b"\r\n\r\n")
        if end < 0:
            continue
        if stream:
            if data.endswith(b"\r\n0\r\n\r\n"):
                return data
        else:
            head = data[:end].lower()
            at = head.find(b"content-length:")
            if len(data) >= end + 4 + int(head[at + 15 :].split(b"\r\n")[0]):
                return data


def started(argv: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
    process = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    assert process.stdout is not None
    if process.stdout.readline() not in (b"ready\n", b"listening\n"):
        raise SystemExit(f"{argv[1:3]} did not start (exit {process.wait()})")
    return process


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000, help="per case, relay and round")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved; medians shown")
    tree_option(parser)
    args = parser.parse_args()
    trees = args.tree or [""]
    me, env = str(Path(__file__).resolve()), dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
    processes: list[subprocess.Popen[bytes]] = []
    relays: dict[str, tuple[int, subprocess.Popen[bytes]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        try:
            for index, tree in enumerate([*trees, "floor"]):
                sock, port = f"{tmp}/engine-{index}.sock", free_port()
                processes.append(started([sys.executable, me, "--engine", sock], env))
                if tree == "floor":
                    floor = Path(__file__).with_name("relayfloor.py")
                    relay = [sys.executable, str(floor), sock, str(port), MODEL]
                    name = "floor: python relay"
                else:
                    relay = [sys.executable, me, "--gateway", sock, str(port)]
                    name = f"gateway {Path(tree).name}".rstrip()
                mine = tree_env(env, tree) if tree not in ("", "floor") else env
                if mine is not env:
                    mine["PYTHONPATH"] += os.pathsep + env["PYTHONPATH"]
                relays[name] = port, started(relay, mine)
                processes.append(relays[name][1])
            cases = [("new", "plain"), ("new", "stream"), ("kept", "embed"), ("kept", "plain")]
            cpu: dict[tuple[str, str, str], list[float]] = {}
            p50: dict[tuple[str, str, str], list[float]] = {}
            names = list(relays)
            for _ in range(args.rounds):
                names = names[1:] + names[:1]
                for how, kind in cases:
                    data = request(kind)
                    for name in names:
                        port, process = relays[name]
                        before, took = cpu_s(process.pid), []
                        conn = None
                        for _ in range(args.requests):
                            started_at = time.perf_counter()
                            if conn is None:
                                conn = socket.create_connection(("127.0.0.1", port))
                            conn.sendall(data)
                            read_answer(conn, kind == "stream")
                            if how == "new":
                                conn.close()
                                conn = None
                            took.append(time.perf_counter() - started_at)
                        if conn is not None:
                            conn.close()
                        time.sleep(0.05)  # its last close, counted
                        key = (name, how, kind)
                        cpu.setdefault(key, []).append(
                            (cpu_s(process.pid) - before) / args.requests
                        )
                        p50.setdefault(key, []).append(statistics.median(took))
        finally:
            for process in processes:
                process.kill()
                process.wait()
    print(f"{args.requests} requests a case, {args.rounds} interleaved rounds; medians")
    print(f"{'':26} {'connection':10} {'answer':7} {'CPU us/request':>15} {'client p50 us':>14}")
    for how, kind in cases:
        for name in relays:
            key = (name, how, kind)
            print(
                f"{name:26} {how:10} {kind:7} {1e6 * statistics.median(cpu[key]):15.0f} "
                f"{1e6 * statistics.median(p50[key]):14.0f}"
            )


if __name__ == "__main__":
    if sys.argv[1:2] == ["--engine"]:
        serve_engine(sys.argv[2])
    elif sys.argv[1:2] == ["--gateway"]:
        serve_gateway(sys.argv[2], int(sys.argv[3]))
    else:
        main()
