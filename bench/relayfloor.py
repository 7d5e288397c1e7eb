"""A reference for bench/engines.py --floor: the least a Python relay can do.

``python bench/relayfloor.py ENGINE_SOCKET PORT MODEL`` listens on 127.0.0.1:PORT and
relays each ``POST`` (Content-Length bodies only) to the engine's Unix socket over kept
connections, with ``"model"`` set to MODEL in the request and put back into the answer.
Nothing else: no key, no checks, no limits, no queue, no metrics, no timeouts, no errors
answered. Not part of mlxpin; it measures how much of the gateway's added time any relay
written in Python on asyncio pays here.
"""

from __future__ import annotations

import asyncio
import json
import sys

from mlxpin.gateway.rewrite import Rewriter


def framed(buffer: bytearray) -> tuple[bytes, bytes] | None:
    """The first whole message's head and body, taken from ``buffer``; None if not in."""
    end = buffer.find(b"\r\n\r\n")
    if end < 0:
        return None
    head = bytes(buffer[:end])
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    if len(buffer) < end + 4 + length:
        return None
    body = bytes(buffer[end + 4 : end + 4 + length])
    del buffer[: end + 4 + length]
    return head, body


class Engine(asyncio.Protocol):
    """One kept connection to the engine; answers come back to ``waiter``."""

    def __init__(self) -> None:
        self.buffer = bytearray()
        self.waiter: asyncio.Future[bytes] | None = None
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        message = framed(self.buffer)
        if message is not None and self.waiter is not None:
            self.waiter.set_result(message[1])
            self.waiter = None


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
        message = framed(self.buffer)
        if message is not None:
            head, body = message
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
        engine.waiter = loop.create_future()
        assert engine.transport is not None
        engine.transport.write(
            b"POST %s HTTP/1.1\r\nHost: engine\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (path, len(data), data)
        )
        answer = await engine.waiter
        self.idle.append(engine)
        rewriter = self.rewriters.get(label)
        if rewriter is None:
            rewriter = self.rewriters[label] = Rewriter(label, self.model)
        answer = rewriter.fast(answer) or answer
        assert client.transport is not None
        client.transport.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
            % (len(answer), answer)
        )


async def main(socket_path: str, port: int, model: str) -> None:
    relay = Relay(socket_path, model)
    server = await asyncio.get_running_loop().create_server(
        lambda: Client(relay), "127.0.0.1", port
    )
    print("listening", flush=True)
    await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], int(sys.argv[2]), sys.argv[3]))
