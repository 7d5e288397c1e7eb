"""The gateway, served for real on 127.0.0.1 in front of a fake ``mlx_lm.server``.

The fake upstream mimics what ``mlx-server.md`` records about the real server: it echoes
the ``"model"`` it receives, answers a streaming request with ``: keepalive`` comments, one
``data:`` event per token (``json.dumps`` with default separators) and ``data: [DONE]``,
and answers errors as ``{"error": "<text>"}``. Every request it gets is recorded, so a test
can say "the server was never contacted". Its behaviour per request is picked by the last
user message (``"mode:gate"``, ``"mode:split"``...).

Everything runs on one event loop in a background thread; the tests talk to it with the
real ``openai`` client (and ``urllib`` where a request must be malformed on purpose).
"""

from __future__ import annotations

import asyncio
import http.client
import json
import logging
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar, cast

import openai
import pytest
from aiohttp import web
from hypothesis import given
from hypothesis import strategies as st

from fixedgateway import GatewayConfig, start_gateway, warm_up
from mlxpin.gateway import app as gateway_app
from mlxpin.gateway.addresses import free_port as _free_port
from mlxpin.gateway.apierrors import ApiError
from mlxpin.gateway.backends import GatewayState
from mlxpin.gateway.fastpath import WholeRequest
from mlxpin.gateway.rewrite import Rewriter as _Rewriter
from mlxpin.gateway.rewrite import SseRelay as _SseRelay

T = TypeVar("T")

LABEL = "tiny-chat-1b"
ALIASES = ("tiny", "tiny-latest")
#: How long the fake server holds a stream's end back after [DONE] ("linger").
LINGER_S = 5.0
UPSTREAM_MODEL = "/srv/hf/hub/models--mlx-community--tiny/snapshots/" + "a1" * 20
TOKENS = ("Hel", "lo", ' "model": "' + UPSTREAM_MODEL + '"', " wörld", "!")
GATE_TIMEOUT_S = 5.0


# --------------------------------------------------------------------------- the loop


class LoopThread:
    """An asyncio loop running forever in a daemon thread."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 10.0) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


# --------------------------------------------------------------------------- fake upstream


@dataclass
class Recorded:
    path: str
    headers: dict[str, str]
    body: dict[str, Any]


@dataclass
class FakeUpstream:
    """A stand-in for ``mlx_lm.server`` (see the module docstring)."""

    requests: list[Recorded] = field(default_factory=list)
    gate: threading.Event = field(default_factory=threading.Event)
    gate_released: bool | None = None  # True: the client saw chunk 1 before we sent the rest
    done_sent_at: float = 0.0
    aborted: int = 0
    runner: web.AppRunner | None = None
    url: str = ""

    def reset(self) -> None:
        self.requests.clear()
        self.gate = threading.Event()
        self.gate_released = None
        self.done_sent_at = 0.0
        self.aborted = 0

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self.completion)
        app.router.add_post("/v1/completions", self.completion)
        self.runner = web.AppRunner(
            app, access_log=None, shutdown_timeout=0.2, handler_cancellation=True
        )
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{_bound_port(self.runner)}"

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()

    @staticmethod
    def _mode(body: dict[str, Any]) -> str:
        if isinstance(body.get("messages"), list) and body["messages"]:
            text = str(body["messages"][-1].get("content", ""))
        else:
            text = str(body.get("prompt", ""))
        return text[5:] if text.startswith("mode:") else "plain"

    async def completion(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.requests.append(Recorded(request.path, dict(request.headers), body))
        model = body.get("model", "default_model")
        mode = self._mode(body)
        if model != UPSTREAM_MODEL:  # the real server would try to download it
            return web.json_response({"error": f"Repository Not Found for {model}"}, status=404)
        if mode == "fail":
            return web.json_response({"error": "boom"}, status=500)
        if mode == "slow":
            try:
                await asyncio.sleep(3)
            except asyncio.CancelledError:
                self.aborted += 1  # the gateway hung up on us
                raise
        chat = request.path == "/v1/chat/completions"
        base = {
            "id": "chatcmpl-1",
            "system_fingerprint": "fp",
            "object": "chat.completion.chunk" if chat else "text_completion",
            "model": model,
            "created": 1,
        }
        if not body.get("stream"):
            text = "".join(TOKENS)
            choice: dict[str, Any] = {"index": 0, "finish_reason": "stop"}
            if chat:
                choice["message"] = {"role": "assistant", "content": text}
            else:
                choice["text"] = text
            answer = dict(base, object="chat.completion" if chat else "text_completion")
            answer["choices"] = [choice]
            answer["usage"] = {"prompt_tokens": 3, "completion_tokens": 5, "total_tokens": 8}
            return web.Response(body=json.dumps(answer).encode(), content_type="application/json")

        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        )
        await response.prepare(request)
        if mode == "late":  # the status line first, the first event well after it
            await asyncio.sleep(0.3)
        events = [b": keepalive 1/2\n\n", b": keepalive 2/2\n\n"]
        for i, token in enumerate(TOKENS):
            delta = {"role": "assistant", "content": token} if chat else None
            choice = {"index": 0, "finish_reason": "stop" if i == len(TOKENS) - 1 else None}
            if chat:
                choice["delta"] = delta
            else:
                choice["text"] = token
            chunk = dict(base, choices=[choice])
            dumped = json.dumps(chunk, separators=(",", ":")) if mode == "compact" else None
            events.append(f"data: {dumped or json.dumps(chunk)}\n\n".encode())
        events.append(b"data: [DONE]\n\n")

        try:
            for i, event in enumerate(events):
                if i == len(events) - 1:
                    self.done_sent_at = time.monotonic()
                if mode == "split":  # cut every event mid-line across several TCP writes
                    for start in range(0, len(event), 37):
                        await response.write(event[start : start + 37])
                        await asyncio.sleep(0.002)
                elif mode == "stall" and i == 3:
                    await asyncio.sleep(3)  # longer than the gateway's read timeout
                else:
                    await response.write(event)
                    await asyncio.sleep(0.01)
                if mode == "gate" and event.startswith(b"data:") and self.gate_released is None:
                    # Hold the rest until the client has seen this chunk through the gateway.
                    loop = asyncio.get_running_loop()
                    self.gate_released = await loop.run_in_executor(
                        None, self.gate.wait, GATE_TIMEOUT_S
                    )
            if mode == "linger":  # [DONE] sent, the answer's end held back
                await asyncio.sleep(LINGER_S)
            elif mode == "pause":  # the same, for a moment
                await asyncio.sleep(0.5)
            await response.write_eof()
        except ConnectionError:
            self.aborted += 1  # the gateway hung up on us (its client left, or it timed out)
        except asyncio.CancelledError:
            self.aborted += 1
            raise
        return response


def _bound_port(runner: web.AppRunner) -> int:
    return int(runner.addresses[0][1])


# --------------------------------------------------------------------------- fixtures


@dataclass
class Gateway:
    config: GatewayConfig
    state: GatewayState
    runner: web.AppRunner
    url: str

    def client(self, api_key: str = "x") -> openai.OpenAI:
        return openai.OpenAI(
            base_url=self.url + "/v1", api_key=api_key, max_retries=0, timeout=10.0
        )


@pytest.fixture(scope="module")
def loop() -> Iterator[LoopThread]:
    lt = LoopThread()
    yield lt
    lt.close()


@pytest.fixture(scope="module")
def upstream_server(loop: LoopThread) -> Iterator[FakeUpstream]:
    fake = FakeUpstream()
    loop.run(fake.start())
    yield fake
    loop.run(fake.stop())


@pytest.fixture
def upstream(upstream_server: FakeUpstream) -> FakeUpstream:
    upstream_server.reset()
    return upstream_server


@pytest.fixture
def make_gateway(loop: LoopThread, upstream: FakeUpstream) -> Iterator[Any]:
    started: list[Gateway] = []

    def make(**overrides: Any) -> Gateway:
        config = GatewayConfig(
            api_label=LABEL,
            aliases=ALIASES,
            upstream_url=upstream.url,
            upstream_model=UPSTREAM_MODEL,
            port=0,
        )
        config = replace(config, **overrides)
        state = GatewayState()
        runner = loop.run(start_gateway(config, state))
        gw = Gateway(config, state, runner, f"http://127.0.0.1:{_bound_port(runner)}")
        started.append(gw)
        return gw

    yield make
    for gw in started:
        loop.run(gw.runner.cleanup())


@pytest.fixture
def gateway(make_gateway: Any) -> Gateway:
    return cast(Gateway, make_gateway())


def _raw(
    url: str, method: str = "GET", data: bytes | None = None, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, Any]]:
    """A plain HTTP request; returns (status, parsed JSON body)."""
    request = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        with err:
            return err.code, json.loads(err.read())


def _messages(text: str = "hi") -> list[Any]:
    return [{"role": "user", "content": text}]


# Selecting "no model": None is sent as JSON null; `omit` leaves the key out entirely.
MODEL_CHOICES: list[Any] = [LABEL, ALIASES[0], ALIASES[1], None, openai.omit]
MODEL_IDS = ["label", "alias", "alias2", "null", "absent"]


# --------------------------------------------------------------------------- completions


@pytest.mark.parametrize("model", MODEL_CHOICES, ids=MODEL_IDS)
def test_chat_completion_answers_with_the_label(
    gateway: Gateway, upstream: FakeUpstream, model: Any
) -> None:
    with gateway.client() as client:
        answer = client.chat.completions.create(model=model, messages=_messages())
    assert answer.model == LABEL
    assert answer.choices[0].message.content == "".join(TOKENS)
    assert [r.body["model"] for r in upstream.requests] == [UPSTREAM_MODEL]
    assert upstream.requests[0].body["messages"] == _messages()
    assert gateway.state.healthy


@pytest.mark.parametrize("model", MODEL_CHOICES, ids=MODEL_IDS)
def test_streaming_chat_answers_with_the_label(
    gateway: Gateway, upstream: FakeUpstream, model: Any
) -> None:
    with gateway.client() as client:
        chunks = list(
            client.chat.completions.create(model=model, messages=_messages(), stream=True)
        )
    assert len(chunks) == len(TOKENS)
    assert {c.model for c in chunks} == {LABEL}
    # Token text that looks like the upstream's "model" pair survives untouched.
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "".join(TOKENS)
    assert [r.body["model"] for r in upstream.requests] == [UPSTREAM_MODEL]
    assert gateway.state.healthy


@pytest.mark.parametrize("stream", [False, True])
def test_text_completions_by_alias(gateway: Gateway, upstream: FakeUpstream, stream: bool) -> None:
    with gateway.client() as client:
        if stream:
            chunks = list(client.completions.create(model="tiny", prompt="hi", stream=True))
            assert {c.model for c in chunks} == {LABEL}
            text = "".join(c.choices[0].text for c in chunks)
        else:
            answer = client.completions.create(model="tiny", prompt="hi")
            assert answer.model == LABEL
            text = answer.choices[0].text
    assert text == "".join(TOKENS)
    assert upstream.requests[0].path == "/v1/completions"
    assert upstream.requests[0].body["model"] == UPSTREAM_MODEL


@pytest.mark.parametrize("stream", [False, True])
def test_unknown_model_is_404_and_never_reaches_the_server(
    gateway: Gateway, upstream: FakeUpstream, stream: bool
) -> None:
    with gateway.client() as client, pytest.raises(openai.NotFoundError) as caught:
        client.chat.completions.create(
            model="mlx-community/some-other-repo", messages=_messages(), stream=stream
        )
    err = caught.value
    assert err.code == "model_not_found"
    assert err.param == "model"
    assert err.type == "invalid_request_error"
    assert "mlx-community/some-other-repo" in err.message
    assert f"Available: {LABEL}, tiny, tiny-latest" in err.message
    assert upstream.requests == []


@pytest.mark.parametrize("field", ["draft_model", "adapters"])
def test_per_request_draft_model_or_adapter_is_refused(
    gateway: Gateway, upstream: FakeUpstream, field: str
) -> None:
    """mlx_lm.server would load these like an unknown "model" (unloading the pin first)."""
    with gateway.client() as client, pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(
            model=LABEL, messages=_messages(), extra_body={field: "some/repo"}
        )
    assert caught.value.code == "unsupported_parameter"
    assert caught.value.param == field
    assert upstream.requests == []


@pytest.mark.parametrize(
    "part",
    [
        {"type": "image_url", "image_url": {"url": "http://169.254.169.254/latest/meta-data"}},
        {"type": "image_url", "image_url": "https://example.invalid/x.png"},
        {"type": "input_image", "image_url": "file:///etc/passwd"},
        {"type": "image", "image": "http://127.0.0.1:1/secret"},
    ],
)
def test_remote_image_urls_are_refused_before_the_server_could_fetch_them(
    gateway: Gateway, upstream: FakeUpstream, part: dict[str, object]
) -> None:
    body = json.dumps({"model": LABEL, "messages": [{"role": "user", "content": [part]}]}).encode()
    status, answer = _raw(gateway.url + "/v1/chat/completions", "POST", body)
    assert status == 400
    assert answer["error"]["code"] == "unsupported_parameter"
    assert "data: URL" in answer["error"]["message"]
    assert upstream.requests == []


def test_inline_data_images_pass_through(gateway: Gateway, upstream: FakeUpstream) -> None:
    part = {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}
    body = json.dumps({"model": LABEL, "messages": [{"role": "user", "content": [part]}]})
    status, _ = _raw(gateway.url + "/v1/chat/completions", "POST", body.encode())
    assert status == 200
    assert len(upstream.requests) == 1


def test_non_string_model_is_refused(gateway: Gateway, upstream: FakeUpstream) -> None:
    body = json.dumps({"model": ["tiny"], "messages": _messages()}).encode()
    status, answer = _raw(gateway.url + "/v1/chat/completions", "POST", body)
    assert status == 404
    assert answer["error"]["code"] == "model_not_found"
    assert upstream.requests == []


def test_streaming_is_relayed_chunk_by_chunk(gateway: Gateway, upstream: FakeUpstream) -> None:
    """The upstream holds every chunk after the first until the client has seen it.

    If the gateway buffered the response, the client would see nothing, the gate would
    never open, and the upstream would record ``gate_released = False`` after 5 s.
    """
    with gateway.client() as client:
        stream = client.chat.completions.create(
            model=LABEL, messages=_messages("mode:gate"), stream=True
        )
        first = next(iter(stream))
        first_seen_at = time.monotonic()
        assert upstream.done_sent_at == 0.0  # the upstream is still mid-response
        upstream.gate.set()
        rest = list(stream)
    assert first.model == LABEL
    assert first.choices[0].delta.content == TOKENS[0]
    assert upstream.gate_released is True
    assert upstream.done_sent_at > first_seen_at
    assert len(rest) == len(TOKENS) - 1
    assert {c.model for c in rest} == {LABEL}


def test_events_split_across_reads_are_rewritten(gateway: Gateway, upstream: FakeUpstream) -> None:
    with gateway.client() as client:
        chunks = list(
            client.chat.completions.create(
                model="tiny", messages=_messages("mode:split"), stream=True
            )
        )
    assert {c.model for c in chunks} == {LABEL}
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "".join(TOKENS)


def test_compact_upstream_json_is_rewritten_too(gateway: Gateway, upstream: FakeUpstream) -> None:
    """Upstream formatting the fast path does not know falls back to a JSON rewrite."""
    with gateway.client() as client:
        chunks = list(
            client.chat.completions.create(
                model=LABEL, messages=_messages("mode:compact"), stream=True
            )
        )
    assert {c.model for c in chunks} == {LABEL}
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "".join(TOKENS)


def test_sse_comments_and_done_pass_through(loop: LoopThread, gateway: Gateway) -> None:
    async def fetch() -> bytes:
        import aiohttp

        async with (
            aiohttp.ClientSession() as session,
            session.post(
                gateway.url + "/v1/chat/completions",
                json={"model": "tiny", "messages": _messages(), "stream": True},
            ) as resp,
        ):
            assert resp.status == 200
            assert resp.content_type == "text/event-stream"
            return await resp.read()

    raw = loop.run(fetch())
    assert raw.startswith(b": keepalive 1/2\n\n: keepalive 2/2\n\ndata: ")
    assert raw.endswith(b"\n\ndata: [DONE]\n\n")
    data = [line[6:] for line in raw.split(b"\n") if line.startswith(b"data: {")]
    assert len(data) == len(TOKENS)
    assert {json.loads(d)["model"] for d in data} == {LABEL}


def test_a_stream_ends_for_the_client_at_done(gateway: Gateway, upstream: FakeUpstream) -> None:
    """The client's answer is whole once [DONE] is relayed, even while the server holds
    its own end back: nothing may follow [DONE] in an OpenAI stream."""
    body = json.dumps({"model": LABEL, "messages": _messages("mode:linger"), "stream": True})
    request = urllib.request.Request(
        gateway.url + "/v1/chat/completions",
        data=body.encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as resp:
        raw = resp.read()  # to the answer's end
    read_whole = time.monotonic()
    assert raw.endswith(b"data: [DONE]\n\n")
    assert upstream.done_sent_at > 0
    assert read_whole < upstream.done_sent_at + LINGER_S  # before the server's end


def _stream_then_hang_up(gateway: Gateway, content: str) -> bytes:
    """A streamed chat completion read to its answer's end, then the connection closed at
    once (as most clients do); what was read."""
    port = int(gateway.url.rsplit(":", 1)[1])
    body = json.dumps({"model": LABEL, "messages": _messages(content), "stream": True})
    with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
        conn.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
            b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n"
            % len(body)
            + body.encode()
        )
        raw = b""
        while not raw.endswith(b"\r\n0\r\n\r\n"):
            raw += conn.recv(65536)
    return raw


def test_a_client_that_leaves_at_done_does_not_cost_the_server_its_connection(
    gateway: Gateway, upstream: FakeUpstream
) -> None:
    """Most clients hang up as soon as their stream has ended. The gateway still reads the
    server's own end after [DONE], so the server never sees a hang-up (mlx_lm.server would
    log a traceback and take a new connection and thread for the next request)."""
    for _ in range(2):
        assert b"data: [DONE]" in _stream_then_hang_up(gateway, "mode:pause")
    time.sleep(1.5)  # the server's end came 0.5 s after [DONE]
    assert upstream.aborted == 0
    assert len(upstream.requests) == 2


def test_a_server_that_never_ends_after_done_loses_its_connection_soon(
    gateway: Gateway, upstream: FakeUpstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The server's end is waited for only briefly once the client has [DONE]."""
    monkeypatch.setattr(gateway_app, "_DRAIN_S", 0.3)
    _stream_then_hang_up(gateway, "mode:linger")
    deadline = time.monotonic() + LINGER_S - 1  # well before the server would have ended
    while not upstream.aborted:
        assert time.monotonic() < deadline, "the server's connection was held"
        time.sleep(0.05)


def test_a_streams_status_line_leaves_with_its_first_event(gateway: Gateway) -> None:
    """One send for the head and the first event: the first bytes a client reads hold both."""
    port = int(gateway.url.rsplit(":", 1)[1])
    body = json.dumps({"model": LABEL, "messages": _messages("mode:late"), "stream": True}).encode()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
        conn.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n" % len(body) + body
        )
        first = conn.recv(65536)
    head, _, rest = first.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    assert b"keepalive 1/2" in rest


def test_upstream_json_error_to_a_stream_is_passed_as_json(
    gateway: Gateway, upstream: FakeUpstream
) -> None:
    with gateway.client() as client, pytest.raises(openai.InternalServerError) as caught:
        client.chat.completions.create(model=LABEL, messages=_messages("mode:fail"), stream=True)
    assert caught.value.status_code == 500
    assert caught.value.message.endswith("boom'}") or "boom" in caught.value.message
    assert caught.value.type == "server_error"
    assert len(upstream.requests) == 1
    assert not gateway.state.healthy


def test_only_content_type_and_accept_are_forwarded(
    make_gateway: Any, upstream: FakeUpstream
) -> None:
    gw: Gateway = make_gateway(api_key="s3cret")
    with gw.client("s3cret") as client:
        client.chat.completions.create(
            model=LABEL, messages=_messages(), extra_headers={"X-Secret-Thing": "nope"}
        )
    headers = {k.lower(): v for k, v in upstream.requests[0].headers.items()}
    assert "authorization" not in headers
    assert "x-secret-thing" not in headers
    assert headers["content-type"] == "application/json"
    assert headers["accept"] == "application/json"
    assert "s3cret" not in json.dumps(headers)


def test_client_disconnect_mid_stream_is_harmless(gateway: Gateway, upstream: FakeUpstream) -> None:
    with gateway.client() as client:
        stream = client.chat.completions.create(
            model=LABEL, messages=_messages("mode:gate"), stream=True
        )
        next(iter(stream))
        stream.close()  # hang up while the upstream is still holding the rest
        upstream.gate.set()
        # The gateway dropped its upstream connection too (so the server stops generating).
        deadline = time.monotonic() + 5
        while upstream.aborted == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert upstream.aborted == 1
        answer = client.chat.completions.create(model=LABEL, messages=_messages())
    assert answer.model == LABEL
    assert gateway.state.completions_ok == 1  # only the second request completed


def test_a_client_that_hangs_up_cancels_its_request_upstream(
    gateway: Gateway, upstream: FakeUpstream
) -> None:
    # Else the request stays in flight until the read timeout and pins the model (#20.7).
    body = json.dumps({"model": LABEL, "messages": _messages("mode:slow")}).encode()
    port = int(gateway.url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json"
            b"\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
        )
        deadline = time.monotonic() + 2
        while not upstream.requests and time.monotonic() < deadline:
            time.sleep(0.01)
    deadline = time.monotonic() + 2  # the upstream answers after 3 s
    while upstream.aborted == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert upstream.aborted == 1


# --------------------------------------------------------------------------- other routes


def test_models_lists_label_and_aliases(gateway: Gateway, upstream: FakeUpstream) -> None:
    with gateway.client() as client:
        models = client.models.list()
    assert [m.id for m in models.data] == [LABEL, *ALIASES]
    assert {m.owned_by for m in models.data} == {"mlxpin"}
    assert upstream.requests == []


def test_health_follows_real_completions(
    loop: LoopThread, gateway: Gateway, upstream: FakeUpstream
) -> None:
    assert _raw(gateway.url + "/health") == (503, {"status": "loading"})
    with gateway.client() as client:
        client.chat.completions.create(model=LABEL, messages=_messages())
    assert _raw(gateway.url + "/health") == (200, {"status": "ok", "model": LABEL})

    gateway.state.mark_restarting()
    assert _raw(gateway.url + "/health") == (503, {"status": "loading"})
    assert loop.run(warm_up(gateway.config, gateway.state, timeout_s=5))
    assert _raw(gateway.url + "/health") == (200, {"status": "ok", "model": LABEL})
    warm = upstream.requests[-1].body
    assert warm["model"] == UPSTREAM_MODEL
    assert warm["max_tokens"] == 1


def test_warm_up_fails_cleanly_when_the_server_is_down(loop: LoopThread) -> None:
    config = GatewayConfig(LABEL, (), f"http://127.0.0.1:{_free_port()}", UPSTREAM_MODEL)
    state = GatewayState()
    assert loop.run(warm_up(config, state, timeout_s=2)) is False
    assert not state.healthy


def test_a_completion_from_before_a_restart_does_not_mark_healthy() -> None:
    state = GatewayState()
    epoch = state.epoch
    state.mark_restarting()
    assert state.mark_healthy(epoch) is False
    assert not state.healthy
    assert state.mark_healthy(state.epoch) is True
    assert state.healthy


def test_other_paths_and_methods_are_openai_errors(gateway: Gateway) -> None:
    status, body = _raw(gateway.url + "/v1/embeddings", "POST", b"{}")
    assert status == 404
    assert body["error"]["code"] == "not_found"
    status, body = _raw(gateway.url + "/v1/chat/completions")
    assert status == 405
    assert body["error"]["code"] == "method_not_allowed"


# --------------------------------------------------------------------------- failures


def test_upstream_down_is_503(make_gateway: Any) -> None:
    gw: Gateway = make_gateway(upstream_url=f"http://127.0.0.1:{_free_port()}")
    with gw.client() as client:
        with pytest.raises(openai.InternalServerError) as caught:
            client.chat.completions.create(model=LABEL, messages=_messages())
        assert caught.value.status_code == 503
        assert caught.value.code == "upstream_unavailable"
        with pytest.raises(openai.InternalServerError) as caught:
            client.chat.completions.create(model=LABEL, messages=_messages(), stream=True)
        assert caught.value.status_code == 503


def test_upstream_timeout_is_504(make_gateway: Any, upstream: FakeUpstream) -> None:
    gw: Gateway = make_gateway(upstream_read_timeout_s=0.3)
    with gw.client() as client, pytest.raises(openai.InternalServerError) as caught:
        client.chat.completions.create(model=LABEL, messages=_messages("mode:slow"))
    assert caught.value.status_code == 504
    assert caught.value.code == "upstream_timeout"


def test_upstream_stall_mid_stream_ends_with_an_error_event(make_gateway: Any) -> None:
    gw: Gateway = make_gateway(upstream_read_timeout_s=0.3)
    seen: list[str] = []
    with gw.client() as client, pytest.raises(openai.APIError) as caught:
        for chunk in client.chat.completions.create(
            model=LABEL, messages=_messages("mode:stall"), stream=True
        ):
            seen.append(chunk.choices[0].delta.content or "")
    assert seen == [TOKENS[0]]
    assert caught.value.code == "upstream_timeout"
    assert not gw.state.healthy


def test_body_too_large_is_413(make_gateway: Any, upstream: FakeUpstream) -> None:
    gw: Gateway = make_gateway(max_body_bytes=1024)
    with gw.client() as client, pytest.raises(openai.APIStatusError) as caught:
        client.chat.completions.create(model=LABEL, messages=_messages("x" * 2000))
    assert caught.value.status_code == 413
    assert caught.value.code == "request_too_large"
    assert upstream.requests == []


def test_a_body_sent_after_its_head_is_waited_for_within_the_body_timeout(
    make_gateway: Any, upstream: FakeUpstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A body that came with its head is read at once; one that follows is waited for,
    and one that does not come in time is a 408."""
    monkeypatch.setattr("mlxpin.gateway.app.BODY_TIMEOUT_S", 0.5)
    gw: Gateway = make_gateway()
    body = json.dumps({"model": LABEL, "messages": _messages()}).encode()
    head = (
        "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode()
    for late, status in ((0.1, b" 200 "), (None, b" 408 ")):
        with socket.create_connection(("127.0.0.1", _bound_port(gw.runner)), timeout=5) as sock:
            sock.sendall(head + body[:5])
            if late is not None:
                time.sleep(late)
                sock.sendall(body[5:])
            assert status in sock.recv(65536).split(b"\r\n")[0]
    assert len(upstream.requests) == 1


def test_non_json_body_is_400(gateway: Gateway, upstream: FakeUpstream) -> None:
    url = gateway.url + "/v1/chat/completions"
    for data in (b"not json", b"\xff\xfe", b"[1, 2]", b'"text"'):
        status, body = _raw(url, "POST", data, {"Content-Type": "application/json"})
        assert status == 400, data
        assert body["error"]["type"] == "invalid_request_error"
        assert body["error"]["code"] == "invalid_json"
    assert upstream.requests == []


def test_bearer_key_is_required_when_configured(make_gateway: Any, upstream: FakeUpstream) -> None:
    gw: Gateway = make_gateway(api_key="s3cret")
    for key in ("wrong", "s3cret-and-more"):
        with gw.client(key) as client, pytest.raises(openai.AuthenticationError) as caught:
            client.chat.completions.create(model=LABEL, messages=_messages())
        assert caught.value.code == "invalid_api_key"
    status, body = _raw(gw.url + "/v1/models")  # no Authorization header at all
    assert status == 401
    assert body["error"]["code"] == "invalid_api_key"
    assert _raw(gw.url + "/health")[0] == 503  # open, and honest
    assert upstream.requests == []

    with gw.client("s3cret") as client:
        assert client.chat.completions.create(model=LABEL, messages=_messages()).model == LABEL
        assert client.models.list().data[0].id == LABEL
    assert _raw(gw.url + "/health")[0] == 200


def test_port_taken_raises_oserror(loop: LoopThread, gateway: Gateway) -> None:
    port = _bound_port(gateway.runner)
    with pytest.raises(OSError):
        loop.run(start_gateway(replace(gateway.config, port=port), GatewayState()))


def test_config_validation_and_repr_hide_the_key() -> None:
    with pytest.raises(ValueError, match="upstream_url"):
        GatewayConfig(LABEL, (), "unix:/tmp/sock", UPSTREAM_MODEL)
    with pytest.raises(ValueError, match="api_label"):
        GatewayConfig("", (), "http://127.0.0.1:1", UPSTREAM_MODEL)
    config = GatewayConfig(LABEL, ("tiny", LABEL), "http://127.0.0.1:1", "m", api_key="k3y")
    assert "k3y" not in repr(config)
    assert config.labels == (LABEL, "tiny")


# --------------------------------------------------------------------------- rewriting


def _slow_rewrite(payload: bytes, label: str) -> Any:
    obj = json.loads(payload)
    if "model" in obj:
        obj["model"] = label
    return obj


@pytest.mark.parametrize(
    "obj",
    [
        {"model": UPSTREAM_MODEL, "choices": []},
        {"id": 1, "model": UPSTREAM_MODEL, "text": '"model": "' + UPSTREAM_MODEL + '"'},
        {'x"model': UPSTREAM_MODEL, "model": "other"},  # an escaped quote before the key
        {'x"model': UPSTREAM_MODEL},
        {"model": UPSTREAM_MODEL, "nested": {"model": UPSTREAM_MODEL}},
        {"model": "default_model"},
        {"no_model": True},
        {"model": UPSTREAM_MODEL + "/"},
    ],
)
def test_fast_rewrite_agrees_with_json(obj: dict[str, Any]) -> None:
    rewriter = _Rewriter('label "q" é', UPSTREAM_MODEL)
    for dumped in (json.dumps(obj), json.dumps(obj, separators=(",", ":"))):
        out = rewriter.event_payload(dumped.encode())
        assert json.loads(out) == _slow_rewrite(dumped.encode(), 'label "q" é')


def _counted_rewrite(rewriter: _Rewriter, payload: bytes) -> bytes | None:
    """The relabelling as it was done before one pass sufficed: count, find, replace."""
    for needle, replacement in rewriter.forms:
        if payload.count(needle) == 1:
            at = payload.find(needle)
            if at > 0 and payload[at - 1] != 0x5C:
                return payload.replace(needle, replacement, 1)
    return None


_PIECES = [
    b'"model": "' + UPSTREAM_MODEL.encode() + b'"',
    b'"model":"' + UPSTREAM_MODEL.encode() + b'"',
    b'"model": "other"',
    b"\\\\",  # an escaped backslash: the quote after it is real
    b"{",
    b'"x": [0.25, -1e-05], ',
    b'"model": "' + UPSTREAM_MODEL[:-1].encode(),
    b"\\",  # a lone backslash: the quote after it is escaped
    b'"',
]


@given(st.lists(st.sampled_from(_PIECES), max_size=12))
def test_one_pass_relabelling_agrees_with_counting(pieces: list[bytes]) -> None:
    rewriter = _Rewriter(LABEL, UPSTREAM_MODEL)
    payload = b"".join(pieces)
    assert rewriter.fast(payload) == _counted_rewrite(rewriter, payload)


def test_relay_holds_only_incomplete_lines() -> None:
    relay = _SseRelay(_Rewriter(LABEL, UPSTREAM_MODEL))
    event = b"data: " + json.dumps({"model": UPSTREAM_MODEL}).encode() + b"\r\n\r\n"
    stream = b": keepalive 1/1\n\n" + event + b"data: [DONE]\n\n"
    out = b""
    for i in range(len(stream)):  # one byte per read: the worst case
        out += relay.feed(stream[i : i + 1])
        assert b"\n" not in relay.pending
    out += relay.finish()
    expected_event = b'data: {"model": "' + LABEL.encode() + b'"}\r\n\r\n'
    assert out == b": keepalive 1/1\n\n" + expected_event + b"data: [DONE]\n\n"
    assert relay.done


def test_logs_one_line_per_request_and_no_secrets(
    make_gateway: Any, caplog: pytest.LogCaptureFixture
) -> None:
    gw: Gateway = make_gateway(api_key="s3cret-key")
    caplog.set_level(logging.DEBUG, logger="mlxpin.gateway")
    with gw.client("s3cret-key") as client:
        client.chat.completions.create(model=LABEL, messages=_messages("private words"))
    with gw.client("bad-key") as client, pytest.raises(openai.AuthenticationError):
        client.chat.completions.create(model=LABEL, messages=_messages("private words"))
    records = [r.getMessage() for r in caplog.records if r.name == "mlxpin.gateway"]
    lines = [line for line in records if not line.startswith("gateway for ")]  # start-up line
    assert len(lines) == 2
    assert "POST /v1/chat/completions -> 200" in lines[0]
    assert "-> 401" in lines[1]
    text = "\n".join(records)
    assert "s3cret" not in text
    assert "bad-key" not in text
    assert "private words" not in text


# --------------------------------------------------------------------------- hardening (issue 8)


def test_models_retrieve_by_label_alias_and_unknown(
    gateway: Gateway, upstream: FakeUpstream
) -> None:
    """Issue 8 item 13: the openai SDK's `client.models.retrieve()`."""
    with gateway.client() as client:
        for label in (LABEL, *ALIASES):
            model = client.models.retrieve(label)
            assert (model.id, model.object, model.owned_by) == (label, "model", "mlxpin")
        with pytest.raises(openai.NotFoundError) as caught:
            client.models.retrieve("mlx-community/other")
    assert caught.value.code == "model_not_found"
    assert upstream.requests == []


def _records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "mlxpin.gateway"]


@pytest.mark.parametrize(
    "data",
    [
        b'{"model": "tiny", "messages": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
        b'{"model": "tiny", "x": ' + b'{"a":' * 50_000 + b"1" + b"}" * 50_000 + b"}",
        json.dumps(
            {"model": "tiny", "messages": [{"role": "user", "content": [{"type": ["text"]}]}]}
        ).encode(),
        json.dumps(
            {"model": "tiny", "messages": [{"role": "user", "content": [{"type": {"a": 1}}]}]}
        ).encode(),
    ],
    ids=["nested-arrays", "nested-objects", "type-list", "type-object"],
)
def test_hostile_json_is_400_with_one_log_line_and_no_traceback(
    gateway: Gateway, upstream: FakeUpstream, caplog: pytest.LogCaptureFixture, data: bytes
) -> None:
    """Issue 8 item 11: these were 500s with a traceback logged per request."""
    caplog.set_level(logging.DEBUG, logger="mlxpin.gateway")
    url = gateway.url + "/v1/chat/completions"
    status, body = _raw(url, "POST", data, {"Content-Type": "application/json"})
    assert status == 400
    assert body["error"]["type"] == "invalid_request_error"
    assert body["error"]["code"] in ("invalid_json", "invalid_value")
    records = _records(caplog)
    assert len(records) == 1
    assert "-> 400" in records[0].getMessage()
    assert all(r.exc_info is None for r in caplog.records)
    assert upstream.requests == []


def _raw_http(port: int, request: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(request)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    return answer


@pytest.mark.parametrize(
    "head",
    [
        b"Content-Length: 2\r\nContent-Length: 3\r\n",
        b"Content-Length: 2\r\nTransfer-Encoding: chunked\r\n",
    ],
    ids=["duplicate-cl", "cl-and-te"],
)
def test_parse_level_400s_are_openai_json(
    gateway: Gateway, upstream: FakeUpstream, caplog: pytest.LogCaptureFixture, head: bytes
) -> None:
    """Issue 8 item 11: aiohttp's own parse errors came back as text with a traceback log."""
    caplog.set_level(logging.DEBUG)
    port = _bound_port(gateway.runner)
    answer = _raw_http(
        port, b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n" + head + b"\r\n{}\r\n"
    )
    status_line, _, rest = answer.partition(b"\r\n")
    assert status_line.split()[1] == b"400", answer[:200]
    headers, _, body = rest.partition(b"\r\n\r\n")
    assert b"application/json" in headers.lower()
    assert json.loads(body)["error"]["type"] == "invalid_request_error"
    assert all(r.exc_info is None for r in caplog.records)
    assert upstream.requests == []


def test_idle_connections_are_capped_timed_out_and_shed_with_503(
    make_gateway: Any, upstream: FakeUpstream
) -> None:
    """Issue 8 item 10: idle half-open connections locked every client out."""
    from mlxpin.gateway.listener import ListenerLimits

    gw: Gateway = make_gateway(limits=ListenerLimits(max_connections=8, header_timeout_s=1.0))
    port = _bound_port(gw.runner)
    idle = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(8)]
    try:
        time.sleep(0.2)
        status, body = _raw(gw.url + "/v1/models")  # connection number 9: shed
        assert status == 503
        assert body["error"]["code"] == "too_many_connections"
        for sock in idle:  # no request head within 1 s: closed by the gateway
            assert sock.recv(1) == b""
        with gw.client() as client:
            assert client.chat.completions.create(model=LABEL, messages=_messages()).model == LABEL
    finally:
        for sock in idle:
            sock.close()


def test_per_model_limits_come_from_the_route(make_gateway: Any, upstream: FakeUpstream) -> None:
    """Issue 8 item 12: the body cap is the model's own (an inline image of 900 kB)."""
    image = "data:image/png;base64," + "A" * (900 * 1024)
    content = [{"type": "image_url", "image_url": {"url": image}}, {"type": "text", "text": "x"}]
    messages: Any = [{"role": "user", "content": content}]
    small: Gateway = make_gateway(max_body_bytes=512 * 1024)
    with small.client() as client, pytest.raises(openai.APIStatusError) as caught:
        client.chat.completions.create(model=LABEL, messages=messages)
    assert caught.value.status_code == 413
    assert upstream.requests == []
    large: Gateway = make_gateway(max_body_bytes=1000 * 1024)
    with large.client() as client:
        assert client.chat.completions.create(model=LABEL, messages=messages).model == LABEL
    assert len(upstream.requests) == 1


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("logit_bias", {"10": 5}),  # past the vocabulary: SIGSEGV in mlx_lm.server
        ("logit_bias", {"-1": 5}),
        ("logit_bias", {"3": "x"}),
        ("temperature", -0.5),
        ("top_p", 0),
        ("max_tokens", 0),
        ("max_tokens", True),
        ("n", 2),
        ("top_k", 1.5),
        ("seed", -1),
    ],
)
def test_values_the_engine_cannot_survive_are_400_naming_the_field(
    field: str, value: object
) -> None:
    """Issue #26 item 3: check values, not only types; token ids within the vocabulary."""
    from mlxpin.gateway.backends import Route
    from mlxpin.gateway.checks import check_request
    from mlxpin.gateway.routing import RoutingTable

    table = RoutingTable([Route("m", vocab_size=10)])
    body = {"model": "m", "messages": [{"role": "user", "content": "x"}], field: value}
    error = check_request(json.dumps(body).encode(), table)
    assert isinstance(error, ApiError)
    assert (error.status, error.param, error.code) == (400, field, "invalid_value")
    body[field] = {"9": -100} if field == "logit_bias" else 1
    assert not isinstance(check_request(json.dumps(body).encode(), table), ApiError)


@pytest.mark.parametrize(
    ("field", "bad", "good"),
    [
        ("stop", 5, "\n"),  # kills mlx_lm.server's generation thread
        ("stop", ["x", 1], ["x", "y"]),
        ("stream", "yes", False),
        ("logprobs", 1, True),
        ("stream_options", {"include_usage": "yes"}, {"include_usage": True}),
        ("chat_template_kwargs", "x", {"enable_thinking": False}),
        ("xtc_probability", "0.5", 0.5),
        ("num_draft_tokens", 1.5, 2),
        ("tools", "x", []),
        ("role_mapping", {"user": 1}, {"user": "U: "}),
        ("messages", [1], [{"role": "user", "content": "x"}]),
    ],
)
def test_badly_typed_fields_are_400_naming_the_field(field: str, bad: object, good: object) -> None:
    """Issue #20 item 6: one badly typed field killed the engine for every later request."""
    from mlxpin.gateway.backends import Route
    from mlxpin.gateway.checks import check_request
    from mlxpin.gateway.routing import RoutingTable

    table = RoutingTable([Route("m")])
    body = {"model": "m", "messages": [{"role": "user", "content": "x"}], field: bad}
    error = check_request(json.dumps(body).encode(), table)
    assert isinstance(error, ApiError)
    assert (error.status, error.param, error.code) == (400, field, "invalid_value")
    body[field] = good
    assert not isinstance(check_request(json.dumps(body).encode(), table), ApiError)


def test_the_vocabulary_size_is_read_from_the_models_config(tmp_path: Path) -> None:
    from mlxpin.gateway.values import read_vocab_size

    (tmp_path / "config.json").write_text('{"text_config": {"vocab_size": 32000}}')
    assert read_vocab_size(tmp_path) == 32000
    assert read_vocab_size(tmp_path / "nowhere") is None


def _raw_request(
    body: dict[str, object], path: str = "/v1/chat/completions", **extra: str
) -> bytes:
    data = json.dumps(body).encode()
    head = f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(data)}\r\n"
    head += "".join(f"{name}: {value}\r\n" for name, value in extra.items())
    return (head + "\r\n").encode() + data


def test_a_request_waiting_at_boot_names_its_model_only_if_the_gateway_would_route_it() -> None:
    """Issue #21 item 4: serve starts that model while the gateway sets up -- never one
    the gateway would refuse the request for."""
    from mlxpin.gateway.backends import Route
    from mlxpin.gateway.routing import RoutingTable
    from mlxpin.gateway.waiting import requested_label

    table = RoutingTable([Route("a-chat"), Route("b-chat", ("b",)), Route("e", role="embedding")])
    chat = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}
    assert requested_label(_raw_request({"model": "b", **chat}), table, None) == "b-chat"
    whole = _raw_request({"model": "a-chat", **chat})
    assert requested_label(whole, table, None) == "a-chat"
    assert requested_label(whole[:-1], table, None) is None  # the body is not all in yet
    assert requested_label(whole.replace(b"POST", b"PUT", 1), table, None) is None
    assert requested_label(_raw_request({"model": "nope", **chat}), table, None) is None
    assert requested_label(_raw_request({"model": "a-chat", "stop": 5}), table, None) is None
    assert requested_label(_raw_request({"model": "e", **chat}), table, None) is None  # a 404
    keyed = {"Authorization": "bearer  k3y "}
    assert requested_label(_raw_request({"model": "a-chat", **chat}, **keyed), table, "k3y")
    assert requested_label(whole, table, "k3y") is None
    wrong = _raw_request({"model": "a-chat", **chat}, Authorization="Bearer nope")
    assert requested_label(wrong, table, "k3y") is None
    gzipped = _raw_request({"model": "a-chat", **chat}, **{"Content-Encoding": "gzip"})
    assert requested_label(gzipped, table, None) is None


def test_a_warm_up_notices_a_server_socket_within_ms_of_its_bind(tmp_path: Path) -> None:
    """Issue #21 item 4: a warm-up waits for the socket file (a stat every 5 ms) instead
    of failing at once, to be retried after a pause that grows to 50 ms."""
    from mlxpin.gateway.backends import Upstream
    from mlxpin.gateway.upstream import warm_up_status

    async def completion(_request: web.Request) -> web.Response:
        return web.json_response({"choices": [{"message": {"content": "x"}}]})

    async def scenario() -> None:
        path = str(tmp_path / "server.sock")
        upstream = Upstream("m", "m", "http://localhost", path)
        assert await warm_up_status(upstream, GatewayState(), timeout_s=0.05) == "unreachable"
        app = web.Application()
        app.router.add_post("/v1/chat/completions", completion)
        runner = web.AppRunner(app)
        await runner.setup()
        trying = asyncio.ensure_future(warm_up_status(upstream, GatewayState(), timeout_s=10))
        await asyncio.sleep(0.2)
        assert not trying.done()  # waiting for the socket, not retried by the caller
        site = web.UnixSite(runner, path)
        await site.start()
        try:
            assert await trying == "ok"
        finally:
            await runner.cleanup()

    asyncio.run(scenario())


def test_plain_requests_are_answered_whole_and_as_aiohttp_would(
    make_gateway: Any, upstream: FakeUpstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A plain request skips aiohttp's request machinery (gateway.fastpath): its answer --
    status, body, the headers a client reads -- is the one aiohttp's way gives
    (``Connection: close`` sends the same request that way). ``Connection: keep-alive``,
    which the openai SDK sends on every request, is plain."""
    from mlxpin.gateway.app import Gateway as RealGateway

    whole: list[str] = []
    answer_whole = RealGateway.answer_whole

    async def counted(self: RealGateway, request: WholeRequest, open_stream: Any) -> Any:
        whole.append(request.path)
        return await answer_whole(self, request, open_stream)

    monkeypatch.setattr(RealGateway, "answer_whole", counted)
    gw: Gateway = make_gateway(api_key="sk-test")
    port = int(gw.url.rsplit(":", 1)[1])
    key = {"Authorization": "Bearer sk-test", "Content-Type": "application/json"}

    def chat(content: object, **extra: object) -> bytes:
        body = {"model": LABEL, "messages": [{"role": "user", "content": content}], **extra}
        return json.dumps(body).encode()

    cases: list[tuple[str, bytes, dict[str, str]]] = [
        ("/v1/chat/completions", chat("hi"), key),
        ("/v1/completions", json.dumps({"model": "tiny", "prompt": "once"}).encode(), key),
        ("/v1/chat/completions", chat("hi"), {}),  # no key: 401
        ("/v1/chat/completions", chat("hi"), {"Authorization": "Bearer wrong"}),
        ("/v1/chat/completions", b"{not json", key),
        ("/v1/chat/completions", json.dumps({"model": "gemma-4-31b-it"}).encode(), key),
        ("/v1/chat/completions", chat("hi", draft_model="mlx-community/other"), key),
        ("/v1/chat/completions", chat("hi", max_tokens=-1), key),
        ("/v1/chat/completions", chat("mode:fail"), key),  # the server's own 500
        ("/v1/embeddings", json.dumps({"model": LABEL, "input": "x"}).encode(), key),
        ("/v1/chat/completions", chat("hi", stream=False), key),
    ]

    def ask(path: str, body: bytes, headers: dict[str, str]) -> tuple[int, dict[str, str], Any]:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        try:
            conn.request("POST", path, body, headers)
            response = conn.getresponse()
            data = response.read()
            kept = {
                k: v
                for k, v in response.getheaders()
                if k.lower() in ("content-type", "www-authenticate", "retry-after", "allow")
            }
            assert int(response.getheader("Content-Length") or -1) == len(data)
            return response.status, kept, json.loads(data)
        finally:
            conn.close()

    for path, body, headers in cases:
        plain = ask(path, body, headers)
        by_aiohttp = ask(path, body, {**headers, "Connection": "close"})
        assert plain == by_aiohttp, (path, body)
        assert ask(path, body, {**headers, "Connection": "Keep-Alive"}) == plain
    assert len(whole) == 2 * len(cases)  # each plain one was answered whole

    def events(headers: dict[str, str]) -> tuple[int, str | None, bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        try:
            conn.request("POST", "/v1/chat/completions", chat("hi", stream=True), headers)
            response = conn.getresponse()
            return response.status, response.getheader("Content-Type"), response.read()
        finally:
            conn.close()

    streamed = events(key)
    assert streamed == events({**key, "Connection": "close"})
    assert streamed[2].endswith(b"data: [DONE]\n\n") and f'"model":"{LABEL}"'.encode() in streamed[
        2
    ].replace(b" ", b"")
    assert len(whole) == 2 * len(cases) + 1  # the stream too
    sent = [r.body for r in upstream.requests]
    assert len(sent) == 3 * 4 + 2  # four cases reach the server three ways, the stream two
    assert all(b["model"] == UPSTREAM_MODEL for b in sent)
