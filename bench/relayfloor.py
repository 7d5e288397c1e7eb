"""A reference for the benches' --floor: the least a Python relay can do.

``python bench/relayfloor.py ENGINE_SOCKET PORT MODEL [ENGINE ARGV...]`` listens on
127.0.0.1:PORT (once the socket exists, after starting ENGINE ARGV if given) and
relays each ``POST`` (Content-Length bodies only) to the engine's Unix socket over kept
connections, with ``"model"`` set to MODEL in the request. A whole answer gets the asked
``"model"`` put back; a chunked one (a stream) is passed through as it comes, unchanged.
Nothing else: no key, no checks, no limits, no queue, no metrics, no timeouts, no errors
answered. Not part of mlxpin; it measures how much of the gateway's added time any relay
written in Python on asyncio pays here.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable

from mlxpin.gateway.rewrite import Rewriter

_LAST_CHUNK = b"0\r\n\r\n"


def head_and_length(buffer: bytearray) -> tuple[bytes, int | None, int] | None:
    """The head at the start of ``buffer``, its Content-Length (None: chunked) and where
    the body starts; None while the head is not all in."""
    end = buffer.find(b"\r\n\r\n")
    if end < 0:
        return None
    head = bytes(buffer[:end])
    length: int | None = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"content-length":
            length = int(value)
        elif name == b"transfer-encoding" and b"chunked" in value.lower():
            length = None
    return head, length, end + 4


class Engine(asyncio.Protocol):
    """One kept connection to the engine, answering one request at a time to ``sink``:
    called with (head, body, whole) -- whole answers once, a stream piece by piece."""

    def __init__(self) -> None:
        self.buffer = bytearray()
        self.sink: Callable[[bytes | None, bytes, bool], None] | None = None
        self.streaming = False
        self.done: asyncio.Future[None] | None = None
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        assert self.sink is not None and self.done is not None
        if self.streaming:
            self.sink(None, data, False)
            tail = self.buffer + data
            self.buffer = bytearray(tail[-len(_LAST_CHUNK) :])
            if tail.endswith(_LAST_CHUNK):
                self.streaming = False
                self.buffer.clear()
                self.done.set_result(None)
            return
        self.buffer += data
        found = head_and_length(self.buffer)
        if found is None:
            return
        head, length, start = found
        if length is None:  # chunked: the rest is passed through as it comes
            body = bytes(self.buffer[start:])
            self.buffer.clear()
            self.streaming = True
            self.sink(head, b"", False)
            self.data_received(body)
        elif len(self.buffer) >= start + length:
            body = bytes(self.buffer[start : start + length])
            del self.buffer[: start + length]
            self.sink(head, body, True)
            self.done.set_result(None)


class Client(asyncio.Protocol):
    def __init__(self, relay: Relay) -> None:
        self.relay = relay
        self.buffer = bytearray()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        found = head_and_length(self.buffer)
        if found is None:
            return
        head, length, start = found
        if length is None or len(self.buffer) < start + length:
            return
        body = bytes(self.buffer[start : start + length])
        del self.buffer[: start + length]
        path = head.split(b" ", 2)[1]
        task = asyncio.ensure_future(self.relay.forward(self, path, body))
        self.relay.tasks.add(task)
        task.add_done_callback(self.relay.tasks.discard)


class Relay:
    def __init__(self, socket_path: str, model: str) -> None:
        self.socket_path, self.model = socket_path, model
        self.rewriters: dict[str, Rewriter] = {}
        self.idle: list[Engine] = []
        self.tasks: set[asyncio.Future[None]] = set()

    async def forward(self, client: Client, path: bytes, body: bytes) -> None:
        asked = json.loads(body)
        label = asked["model"]
        asked["model"] = self.model
        data = json.dumps(asked, separators=(",", ":")).encode()
        loop = asyncio.get_running_loop()
        if self.idle:
            engine = self.idle.pop()
        else:
            _, engine = await loop.create_unix_connection(Engine, self.socket_path)
        rewriter = self.rewriters.get(label)
        if rewriter is None:
            rewriter = self.rewriters[label] = Rewriter(label, self.model)
        out = client.transport
        assert out is not None and engine.transport is not None

        def sink(head: bytes | None, piece: bytes, whole: bool) -> None:
            if whole:
                answer = rewriter.fast(piece) or piece
                status = (head or b"").split(b"\r\n", 1)[0]
                out.write(
                    b"%s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                    % (status, len(answer), answer)
                )
            elif head is not None:
                out.write(head + b"\r\n\r\n")
            else:
                out.write(piece)

        engine.sink, engine.done = sink, loop.create_future()
        engine.transport.write(
            b"POST %s HTTP/1.1\r\nHost: engine\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (path, len(data), data)
        )
        await engine.done
        self.idle.append(engine)


async def main(socket_path: str, port: int, model: str) -> None:
    relay = Relay(socket_path, model)
    server = await asyncio.get_running_loop().create_server(
        lambda: Client(relay), "127.0.0.1", port, backlog=4096
    )
    print("listening", flush=True)
    await server.serve_forever()


if __name__ == "__main__":
    socket_path, port, model, *engine_argv = sys.argv[1:]
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # the engine is stopped too
    engine = subprocess.Popen(engine_argv) if engine_argv else None
    try:
        while not os.path.exists(socket_path):
            if engine is not None and engine.poll() is not None:
                raise SystemExit(f"the engine exited with {engine.returncode}")
            time.sleep(0.1)
        asyncio.run(main(socket_path, int(port), model))
    except KeyboardInterrupt:
        pass
    finally:
        if engine is not None:
            engine.terminate()
            engine.wait()
