"""The relay's own HTTP client (gateway/relayclient.py) against raw servers: the framings
an engine uses, kept and spare connections, and what a broken answer raises."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp
import pytest

from mlxpin.gateway.backends import Upstream
from mlxpin.gateway.relayclient import RelayClient
from mlxpin.gateway.upstream import classify_failure

Serve = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def read_request(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    length = next(
        int(line.split(b":")[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length")
    )
    return head + await reader.readexactly(length)


async def with_server(
    tmp_path: Path, serve: Serve, test: Callable[[RelayClient], Awaitable[None]]
) -> int:
    """Run ``test`` with a client of a Unix-socket server running ``serve`` per connection;
    the number of connections the server accepted."""
    accepted = 0

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal accepted
        accepted += 1
        try:
            await serve(reader, writer)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    path = str(tmp_path / "engine.sock")
    server = await asyncio.start_unix_server(handle, path)
    client = RelayClient(Upstream("m", "/snap", "http://localhost", path), connect_timeout_s=2)
    try:
        await test(client)
    finally:
        client.close()
        server.close()
    return accepted


def test_an_http10_engine_answers_each_request_and_connections_are_opened_ahead(
    tmp_path: Path,
) -> None:
    """mlx_lm.server: HTTP/1.0, the body ends when it closes; after the first answer the
    client keeps spare connections, so the next requests find one open."""
    requests: list[bytes] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        requests.append(await read_request(reader))
        writer.write(b"HTTP/1.0 200 OK\r\nContent-Type: application/json\r\n\r\n")
        writer.write(b'{"ok": true}')
        await writer.drain()

    async def test(client: RelayClient) -> None:
        for _ in range(3):
            answer = await client.post("/v1/chat/completions", b"{}", {"Accept": "*/*\r\nX: 1"}, 5)
            assert (answer.status, answer.content_type) == (200, "application/json")
            assert await answer.read() == b'{"ok": true}'
            answer.close()
            await asyncio.sleep(0.05)  # the spare's connect runs
        assert client.idle  # one ready for the next request

    accepted = asyncio.run(with_server(tmp_path, serve, test))
    assert accepted == 4  # three requests, one spare still open
    assert requests[0].startswith(b"POST /v1/chat/completions HTTP/1.1\r\nHost: localhost\r\n")
    assert b"Accept: \r\n" in requests[0]  # a value that would split the head is dropped


def test_a_kept_connection_is_reused_and_one_closed_meanwhile_is_retried(tmp_path: Path) -> None:
    """uvicorn (mlx_vlm): HTTP/1.1, chunked or sized bodies, connections kept; a kept one
    the server closed while idle is replaced without the client seeing an error."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for number in range(3):
            await read_request(reader)
            if number == 2:
                return  # it closes as the request comes, as a server closing an idle one
            if number == 0:
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n")
                writer.write(
                    b"Transfer-Encoding: chunked\r\n\r\n5\r\ndata:\r\n3;x\r\n 1\n\r\n0\r\n\r\n"
                )
            else:
                writer.write(b"HTTP/1.1 404 Not Found\r\nContent-Length: 2\r\n\r\nno")
            await writer.drain()

    async def test(client: RelayClient) -> None:
        answer = await client.post("/v1/embeddings", b"{}", {}, 5)
        assert answer.content_type == "text/event-stream"
        assert [piece async for piece in answer.iter_any()] == [b"data:", b" 1\n"]
        answer.close()
        answer = await client.post("/v1/embeddings", b"{}", {}, 5)
        assert (answer.status, answer.reason, await answer.read()) == (404, "Not Found", b"no")
        answer.close()
        answer = await client.post("/v1/embeddings", b"{}", {}, 5)  # retried on a new one
        assert answer.status == 200
        answer.close()
        assert not client.one_shot  # kept connections: none opened ahead

    assert asyncio.run(with_server(tmp_path, serve, test)) == 2


@pytest.mark.parametrize(
    ("answer", "status"),
    [
        (b"", 503),  # closed without answering
        (b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort", 502),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", 502),
        (b"SSH-2.0-OpenSSH\r\n\r\n", 502),
        (None, 504),  # silence past the read timeout
    ],
)
def test_broken_answers_raise_what_the_gateway_answers(
    tmp_path: Path, answer: bytes | None, status: int
) -> None:
    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        if answer is None:
            await asyncio.sleep(5)
        writer.write(answer or b"")
        await writer.drain()

    async def test(client: RelayClient) -> None:
        with pytest.raises((aiohttp.ClientError, TimeoutError)) as info:
            reply = await client.post("/v1/chat/completions", b"{}", {}, 0.3)
            try:
                await reply.read()
            finally:
                reply.close()
        assert classify_failure(info.value).status == status
        assert client.open._value == 256  # every connection given back

    asyncio.run(with_server(tmp_path, serve, test))


def test_no_server_is_a_connection_error(tmp_path: Path) -> None:
    async def test() -> None:
        upstream = Upstream("m", "/snap", "http://localhost", str(tmp_path / "none.sock"))
        with pytest.raises(aiohttp.ClientConnectionError) as info:
            await RelayClient(upstream, connect_timeout_s=1).post("/x", b"", {}, 1)
        assert classify_failure(info.value).status == 503

    asyncio.run(test())


def test_large_bodies_arrive_whole_while_the_reader_lags_and_bodies_go_out_whole(
    tmp_path: Path,
) -> None:
    """Past its read size a connection stops reading the server until the answer is read
    on (a slow client holds the relay back, not the gateway's memory); a request body
    larger than the socket's buffer goes out in full."""
    big = bytes(range(256)) * 4096 * 3  # 3 MiB
    received: list[int] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        received.append(len(await read_request(reader)))
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: audio/wav\r\n")
        writer.write(f"Content-Length: {len(big)}\r\n\r\n".encode() + big)
        await writer.drain()

    async def test(client: RelayClient) -> None:
        answer = await client.post("/v1/audio/speech", big, {}, 5)
        pieces = []
        async for piece in answer.iter_any():
            pieces.append(piece)
            await asyncio.sleep(0.001)
        answer.close()
        assert b"".join(pieces) == big
        assert max(map(len, pieces)) <= 256 * 1024

    asyncio.run(with_server(tmp_path, serve, test))
    assert received[0] > len(big)
