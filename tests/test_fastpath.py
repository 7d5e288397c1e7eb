"""Plain requests answered without aiohttp's request machinery (gateway.fastpath).

The parser is checked against aiohttp's own: what it takes, aiohttp reads the same way;
what it is unsure of goes to aiohttp. The connection handling is checked on a real
listener: split bodies, order, a slow body, a hang-up, idle connections, and a connection
that aiohttp took over.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from aiohttp import web
from aiohttp.base_protocol import BaseProtocol
from aiohttp.http_parser import HttpRequestParser
from hypothesis import given, settings
from hypothesis import strategies as st

from mlxpin.gateway import listener
from mlxpin.gateway.fastpath import FAST_PATHS, OpenStream, WholeRequest, whole_request
from mlxpin.gateway.listener import WHOLE_ANSWERS, LimitedRunner, ListenerLimits, WholeAnswers

MAX_BODY = 1 << 20
_TOKEN_CHARS = "!#$%&'*+-.^_`|~abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
header_names = st.text(_TOKEN_CHARS, min_size=1, max_size=20).filter(
    lambda n: (
        n.lower()
        not in {
            "content-length",
            "authorization",
            "transfer-encoding",
            "content-encoding",
            "expect",
            "upgrade",
            "connection",
        }
    )
)
header_values = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=40)
bodies = st.dictionaries(
    st.sampled_from(["model", "input", "messages", "max_tokens", "stream", "n"]),
    st.one_of(st.integers(), st.text(max_size=20), st.booleans(), st.none()),
    max_size=5,
).map(lambda d: json.dumps(d).encode())


def request(path: str, headers: list[tuple[str, str]], body: bytes) -> bytes:
    head = f"POST {path} HTTP/1.1\r\nHost: x\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers)
    return head.encode("latin-1") + f"Content-Length: {len(body)}\r\n\r\n".encode() + body


def aiohttp_reads(data: bytes) -> tuple[str, str, bytes, str | None, str | None, bool]:
    """What aiohttp's own parser makes of ``data``: method, path, body, Authorization,
    Accept, and whether the connection is kept."""
    loop = asyncio.new_event_loop()
    try:
        parser = HttpRequestParser(BaseProtocol(loop), loop, 2**16)
        messages, _upgraded, _tail = parser.feed_data(data)
        (message, payload), *_ = messages
        body = b"".join(payload._buffer)  # the whole body was fed at once
        headers = message.headers
        kept = not message.should_close
        return (
            message.method,
            message.path,
            body,
            headers.get("Authorization"),
            headers.get("Accept"),
            kept,
        )
    finally:
        loop.close()


@settings(max_examples=300, deadline=None)
@given(
    path=st.sampled_from(sorted(FAST_PATHS)),
    headers=st.lists(
        st.tuples(header_names, header_values), max_size=6, unique_by=lambda h: h[0].lower()
    ),
    key=st.none() | st.text(_TOKEN_CHARS, min_size=1, max_size=30),
    kept=st.sampled_from([None, "keep-alive", "Keep-Alive", " KEEP-ALIVE "]),
    asked=st.none() | header_values,
    body=bodies,
)
def test_a_plain_request_is_read_as_aiohttp_reads_it(
    path: str,
    headers: list[tuple[str, str]],
    key: str | None,
    kept: str | None,
    asked: str | None,
    body: bytes,
) -> None:
    if asked is not None:
        headers = [(k, v) for k, v in headers if k.lower() != "accept"] + [("Accept", asked)]
    if key is not None:
        headers = [*headers, ("Authorization", f"Bearer {key}")]
    if kept is not None:  # HTTP/1.1's default, as httpx and requests send it
        headers = [*headers, ("Connection", kept)]
    data = request(path, headers, body)
    got = whole_request(data, MAX_BODY)
    assert isinstance(got, WholeRequest)
    method, seen_path, seen_body, auth, accept, keeps = aiohttp_reads(data)
    assert (method, seen_path, seen_body, keeps) == ("POST", got.path, got.body, True)
    assert got.authorization == (auth or "")
    assert got.accept == ("*/*" if accept is None else accept)  # as completions() reads it
    head = data.index(b"\r\n\r\n") + 4
    for cut in range(head, len(data)):  # the body still coming: wait for it
        assert whole_request(data[:cut], MAX_BODY) == "more"
    for cut in range(head - 3):
        assert whole_request(data[:cut], MAX_BODY) is None  # no whole head: aiohttp's


@given(st.binary(max_size=300))
def test_any_bytes_are_taken_waited_for_or_left_to_aiohttp(data: bytes) -> None:
    assert whole_request(data, MAX_BODY) in (None, "more") or isinstance(
        whole_request(data, MAX_BODY), WholeRequest
    )


@pytest.mark.parametrize(
    "change",
    [
        lambda r: r.replace(b"HTTP/1.1", b"HTTP/1.0"),
        lambda r: r.replace(b"POST", b"PUT"),
        lambda r: r.replace(b"/v1/embeddings", b"/v1/embeddings?x=1"),
        lambda r: r.replace(b"Host:", b"Transfer-Encoding: chunked\r\nHost:"),
        lambda r: r.replace(b"Host:", b"Content-Encoding: gzip\r\nHost:"),
        lambda r: r.replace(b"Host:", b"Expect: 100-continue\r\nHost:"),
        lambda r: r.replace(b"Host:", b"Connection: close\r\nHost:"),
        lambda r: r.replace(b"Host:", b"Connection: keep-alive, Upgrade\r\nHost:"),
        lambda r: r.replace(b"Host:", b"Content-Length: 2\r\nHost:"),
        lambda r: r.replace(b"Host: x", b"Host: x\r\n folded"),
        lambda r: r.replace(b"Host:", b"Bad Name:"),
        lambda r: r.replace(b"Host: x\r\n", b""),
        lambda r: r.replace(b"Host: x", b"Host: x\r\nHost: y"),
        lambda r: r.replace(b"Host: x", b"Host: x\r\nX-Seen: 1\r\nx-seen: 2"),
        lambda r: r.replace(b"Host: x", b"Host: x\x00y"),
        lambda r: r.replace(b"Content-Length: 2", b"Content-Length: +2"),
        lambda r: r + b"POST",  # pipelined
        lambda r: r.replace(b"Host: x", b"Host: " + b"x" * 9000),
    ],
)
def test_anything_else_is_left_to_aiohttp(change: Callable[[bytes], bytes]) -> None:
    plain = b"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}"
    assert isinstance(whole_request(plain, MAX_BODY), WholeRequest)
    assert whole_request(change(plain), MAX_BODY) is None


def test_a_body_over_the_limit_is_left_to_aiohttp_to_refuse() -> None:
    data = b"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nContent-Length: 11\r\n\r\n"
    assert whole_request(data, 10) is None
    assert whole_request(data, 11) == "more"


# --- on a real listener ----------------------------------------------------------------


class Answerer:
    """Answers whole requests, recording them; ``hold`` keeps answers waiting."""

    def __init__(self) -> None:
        self.seen: list[bytes] = []
        self.cancelled = 0
        self.hold = asyncio.Event()
        self.hold.set()

    async def __call__(self, request: WholeRequest, open_stream: OpenStream) -> web.Response | None:
        body = request.body
        self.seen.append(body)
        try:
            await self.hold.wait()
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        asked = json.loads(body)
        if asked.get("broken"):  # a stream begun, then an answer: as after a bug of ours
            await open_stream(200, [("Content-Type", "text/event-stream")]).write(b"data: 0\n\n")
            return web.json_response({"error": "internal"}, status=500)
        if asked.get("stream"):  # three events, as they come
            sink = open_stream(200, [("Content-Type", "text/event-stream")])
            for n in range(3):
                await sink.write(b"data: %d\n\n" % n)
                await asyncio.sleep(0.01)
            await sink.write_eof(b"data: [DONE]\n\n")
            return None
        return web.json_response({"whole": asked}, headers={"X-Answer": "whole"})


async def by_aiohttp(request: web.Request) -> web.Response:
    return web.json_response({"aiohttp": await request.json()})


Body = Callable[[int, Answerer], Awaitable[None]]


def on_a_listener(monkeypatch: pytest.MonkeyPatch, body: Body) -> None:
    """Run ``body(port, answerer)`` against a listener whose plain requests ``answerer``
    answers and whose others aiohttp's handler does (keep-alive 0.5 s, rest wait 0.3 s)."""
    monkeypatch.setattr(listener, "REST_WAIT_S", 0.3)

    async def main() -> None:
        answerer = Answerer()
        app = web.Application()
        answers: WholeAnswers = answerer
        app[WHOLE_ANSWERS] = answers
        app.router.add_post("/v1/embeddings", by_aiohttp)
        runner = LimitedRunner(app, ListenerLimits(), keepalive_timeout=0.5, handle_signals=False)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        try:
            await asyncio.wait_for(body(port, answerer), 20)
        finally:
            await runner.cleanup()

    asyncio.run(main())


async def exchange(
    port: int, *pieces: bytes, pause_s: float = 0.05, answers: int = 1
) -> list[tuple[dict[str, str], Any]]:
    """Send ``pieces`` (pausing between them) on one connection; the answers, parsed."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        for i, piece in enumerate(pieces):
            if i:
                await asyncio.sleep(pause_s)
            writer.write(piece)
            await writer.drain()
        return [await read_answer(reader) for _ in range(answers)]
    finally:
        writer.close()


async def read_answer(reader: asyncio.StreamReader) -> tuple[dict[str, str], Any]:
    head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (h.partition(":") for h in head[1:] if h)}
    headers["status"] = head[0].split(" ")[1]
    body = await reader.readexactly(int(headers["content-length"]))
    return headers, json.loads(body)


def post(body: dict[str, Any], extra: str = "") -> bytes:
    data = json.dumps(body).encode()
    head = f"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\n{extra}Content-Length: {len(data)}\r\n\r\n"
    return head.encode() + data


def test_a_split_request_is_answered_whole_with_a_date_and_its_length(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def body(port: int, answerer: Answerer) -> None:
        data = post({"n": 1})
        cut = data.index(b"\r\n\r\n") + 4
        [(headers, body)] = await exchange(port, data[:cut], data[cut:])
        assert body == {"whole": {"n": 1}}
        assert headers["status"] == "200" and headers["x-answer"] == "whole"
        assert headers["content-type"].startswith("application/json") and headers["date"]
        assert answerer.seen == [b'{"n": 1}']

    on_a_listener(monkeypatch, body)


def test_requests_that_come_while_one_is_answered_are_answered_after_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def body(port: int, answerer: Answerer) -> None:
        answerer.hold.clear()
        loop = asyncio.get_running_loop()
        loop.call_later(0.3, answerer.hold.set)
        answers = await exchange(port, post({"n": 1}), post({"n": 2}), post({"n": 3}), answers=3)
        assert answers[0][1] == {"whole": {"n": 1}}
        # The two that came meanwhile came as one piece (pipelined): aiohttp's, in order.
        assert [next(iter(body.values())) for _, body in answers] == [{"n": i} for i in (1, 2, 3)]

    on_a_listener(monkeypatch, body)


def test_a_body_slower_than_the_wait_is_read_by_aiohttp(monkeypatch: pytest.MonkeyPatch) -> None:
    async def body(port: int, answerer: Answerer) -> None:
        data = post({"n": 1})
        [(_, body)] = await exchange(port, data[:-3], data[-3:], pause_s=0.6)
        assert body == {"aiohttp": {"n": 1}}
        assert answerer.seen == []

    on_a_listener(monkeypatch, body)


def test_a_connection_that_aiohttp_read_stays_aiohttps(monkeypatch: pytest.MonkeyPatch) -> None:
    async def body(port: int, answerer: Answerer) -> None:
        chunked = (
            b"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
            b'7\r\n{"n":1}\r\n0\r\n\r\n'
        )
        answers = await exchange(port, chunked, post({"n": 2}), answers=2)
        assert [body for _, body in answers] == [{"aiohttp": {"n": 1}}, {"aiohttp": {"n": 2}}]
        assert answerer.seen == []

    on_a_listener(monkeypatch, body)


def test_a_client_that_hangs_up_cancels_its_answer(monkeypatch: pytest.MonkeyPatch) -> None:
    async def body(port: int, answerer: Answerer) -> None:
        answerer.hold.clear()
        _reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(post({"n": 1}))
        await writer.drain()
        while not answerer.seen:
            await asyncio.sleep(0.01)
        writer.close()
        deadline = time.monotonic() + 5
        while not answerer.cancelled:
            assert time.monotonic() < deadline, "the answer was not cancelled"
            await asyncio.sleep(0.01)

    on_a_listener(monkeypatch, body)


def test_an_idle_connection_after_a_whole_answer_is_closed(monkeypatch: pytest.MonkeyPatch) -> None:
    async def body(port: int, answerer: Answerer) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        for n in (1, 2):  # the second comes before the first's keep-alive (0.5 s) ends
            writer.write(post({"n": n}))
            await writer.drain()
            assert (await read_answer(reader))[1] == {"whole": {"n": n}}
            await asyncio.sleep(0.35)
        answerer.hold.clear()  # a third is answered for longer than the keep-alive
        writer.write(post({"n": 3}))
        await writer.drain()
        await asyncio.sleep(0.8)
        answerer.hold.set()
        assert (await read_answer(reader))[1] == {"whole": {"n": 3}}
        started = time.monotonic()
        assert await asyncio.wait_for(reader.read(1), 5) == b""  # then closed, once idle
        assert time.monotonic() - started >= 0.3
        writer.close()

    on_a_listener(monkeypatch, body)


def test_a_stream_goes_out_in_chunks_and_the_connection_is_kept(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def body(port: int, answerer: Answerer) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(post({"stream": True}))
        await writer.drain()
        head = await reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 OK\r\n")
        assert b"Transfer-Encoding: chunked" in head and b"Date: " in head
        events = b""
        while True:
            size = int(await reader.readuntil(b"\r\n"), 16)
            if size == 0:
                assert await reader.readexactly(2) == b"\r\n"
                break
            events += (await reader.readexactly(size + 2))[:-2]
        assert events == b"data: 0\n\ndata: 1\n\ndata: 2\n\ndata: [DONE]\n\n"
        writer.write(post({"n": 2}))  # the same connection, after the stream's end
        await writer.drain()
        assert (await read_answer(reader))[1] == {"whole": {"n": 2}}
        writer.close()

    on_a_listener(monkeypatch, body)


def test_a_stream_that_cannot_end_closes_its_connection(monkeypatch: pytest.MonkeyPatch) -> None:
    """Its client must neither wait for an end nor read a second answer as the stream's."""

    async def body(port: int, answerer: Answerer) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(post({"broken": True}))
        await writer.drain()
        got = await asyncio.wait_for(reader.read(), 5)  # to the end: the server closes
        assert got.startswith(b"HTTP/1.1 200 OK") and got.endswith(b"data: 0\n\n\r\n")
        writer.close()

    on_a_listener(monkeypatch, body)


def test_what_floods_in_while_one_is_answered_waits_in_order(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def body(port: int, answerer: Answerer) -> None:
        answerer.hold.clear()
        asyncio.get_running_loop().call_later(0.5, answerer.hold.set)
        flood = post({"n": 2}) * 40_000  # ~2.9 MB pipelined behind the first, held
        answers = await exchange(port, post({"n": 1}), flood, answers=3)
        assert answers[0][1] == {"whole": {"n": 1}}
        assert [body for _, body in answers[1:]] == [{"aiohttp": {"n": 2}}] * 2

    on_a_listener(monkeypatch, body)


def test_stopping_finishes_the_answer_in_flight_and_closes_idle_connections() -> None:
    """The server stops (SIGTERM): a plain request being answered gets its whole answer
    within the shutdown time; a connection idle after its answers is closed at once."""

    async def main() -> None:
        answerer = Answerer()
        app = web.Application()
        answers: WholeAnswers = answerer
        app[WHOLE_ANSWERS] = answers
        runner = LimitedRunner(
            app, ListenerLimits(), keepalive_timeout=30, handle_signals=False, shutdown_timeout=5
        )
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        idle_reader, idle_writer = await asyncio.open_connection("127.0.0.1", port)
        idle_writer.write(post({"n": 1}))
        assert (await read_answer(idle_reader))[1] == {"whole": {"n": 1}}
        answerer.hold.clear()
        busy_reader, busy_writer = await asyncio.open_connection("127.0.0.1", port)
        busy_writer.write(post({"n": 2}))
        while len(answerer.seen) < 2:
            await asyncio.sleep(0.01)
        stopping = asyncio.create_task(runner.cleanup())
        assert await asyncio.wait_for(idle_reader.read(1), 2) == b""  # closed, not waited for
        assert not stopping.done()
        answerer.hold.set()
        assert (await asyncio.wait_for(read_answer(busy_reader), 5))[1] == {"whole": {"n": 2}}
        await asyncio.wait_for(stopping, 5)
        assert answerer.cancelled == 0
        for writer in (idle_writer, busy_writer):
            writer.close()

    asyncio.run(asyncio.wait_for(main(), 30))
