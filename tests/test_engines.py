"""Engines (#19): mlx-vlm models (vision chat, embeddings) pinned, offline, behind the one
gateway, beside mlx-lm chat models; the plan, the manifest, and the real engine end to end.

The end-to-end tests need mlx-vlm importable by this interpreter (the `vlm` extra), e.g.
``PYTHONPATH=$PWD/src /work/vlm-venv/bin/python -m pytest tests/test_engines.py``.
"""

from __future__ import annotations

import base64
import importlib.util
import json
import math
import os
import signal
import struct
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from mlxpin.dev import (
    tinymodel,
    tinymodel_embedding,
    tinymodel_rerank,
    tinymodel_transcription,
    tinymodel_vision,
)
from mlxpin.gateway.addresses import free_port, free_ports
from mlxpin.gateway.apierrors import ApiError
from mlxpin.gateway.backends import Route
from mlxpin.gateway.checks import FormPart, check_form, check_request, encode_form, parse_form
from mlxpin.gateway.routing import RoutingTable
from mlxpin.project.manifest import parse_manifest
from mlxpin.serve import vlm_server
from test_tinymodel_kinds import tiny_png

from conftest import Project
from hubserver import HubServer
from pyindex import PyIndex, build_wheel

NEEDS_MLX_VLM = pytest.mark.skipif(
    importlib.util.find_spec("mlx_vlm") is None,
    reason="mlx_vlm is not importable here: install mlxpin[vlm] (mlx-vlm>=0.7) to run it",
)
EMBED_LABEL = "text-embedding-qwen3-embedding-8b"
VISION_LABEL = "tiny-vision"
CHAT_LABEL = "gemma-4-31b-it"
RERANK_LABEL = "qwen3-reranker-0.6b"
STT_LABEL = "parakeet-ctc-0.6b"
GENERATORS: dict[str, Callable[..., Any]] = {
    "chat": tinymodel.generate,
    "vision": tinymodel_vision.generate,
    "embedding": tinymodel_embedding.generate,
    "rerank": tinymodel_rerank.generate,
    "transcription": tinymodel_transcription.generate,
}

MANIFEST = """version = 1

[serve]
memory_budget = "4GB"

[models.chat]
api_label = "{CHAT_LABEL}"
port = {ports[0]}
[models.chat.launch]
repo = "tiny/chat"
[models.chat.server]
max_tokens = 8

[models.vision]
api_label = "{VISION_LABEL}"
port = {ports[1]}
engine = "mlx-vlm"
[models.vision.launch]
repo = "tiny/vision"
[models.vision.server]
max_tokens = 8

[models.embed]
api_label = "{EMBED_LABEL}"
port = {ports[2]}
engine = "mlx-vlm"
role = "embedding"
[models.embed.launch]
repo = "tiny/embedding"
[models.embed.server]
log_level = "WARNING"

[models.rerank]
api_label = "{RERANK_LABEL}"
port = {ports[3]}
engine = "mlx-vlm"
role = "rerank"
[models.rerank.launch]
repo = "tiny/rerank"

[models.stt]
api_label = "{STT_LABEL}"
port = {ports[4]}
engine = "mlx-vlm"
role = "transcription"
[models.stt.launch]
repo = "tiny/transcription"
"""


def _publish(hub: HubServer, workdir: Path, kind: str) -> None:
    out = workdir / kind
    GENERATORS[kind](out)
    files = {str(p.relative_to(out)): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    hub.create_repo(f"tiny/{kind}").commit(files, message=kind)


@pytest.fixture
def fetched(hub: HubServer, project: Project, tmp_path: Path) -> Project:
    """Five tiny models locked and fetched; the hub then stops (any later request fails
    and is counted)."""
    for kind in GENERATORS:
        _publish(hub, tmp_path / "models", kind)
    ports = free_ports(5)  # distinct: free_port() twice may give one port twice
    labels = {"CHAT_LABEL": CHAT_LABEL, "VISION_LABEL": VISION_LABEL}
    labels |= {"EMBED_LABEL": EMBED_LABEL, "RERANK_LABEL": RERANK_LABEL, "STT_LABEL": STT_LABEL}
    project.write_manifest(MANIFEST.format(ports=ports, **labels))
    project.ok("lock")
    project.ok("fetch")
    hub.clear_requests()
    hub.stop()
    return project


# --- the plan and the manifest (no engine needed) -----------------------------------------


def test_the_plan_runs_mlx_vlm_on_a_private_socket_with_the_role_flag(
    fetched: Project, monkeypatch: pytest.MonkeyPatch
) -> None:
    result = fetched.run("launch", "embed", "--dry-run", "--json")
    if importlib.util.find_spec("mlx_vlm") is None:
        assert result.returncode == 69 and "mlx_vlm" in result.stderr
        return
    plan = json.loads(result.stdout)["plan"]
    argv = plan["argv"]
    assert argv[1:3] == ["-m", "mlxpin.serve.vlm_server"]
    assert argv[argv.index("--embedding-model") + 1] == plan["upstream_model"]
    assert argv[argv.index("--host") + 1] == "127.0.0.1"
    assert "--model" not in argv and "--trust-remote-code" not in argv
    assert plan["private"] == {"socket": "private, chosen at start"}
    assert (plan["engine"], plan["role"]) == ("mlx-vlm", "embedding")
    assert plan["env_set"]["HF_HUB_OFFLINE"] == "1"
    chat = json.loads(fetched.run("launch", "chat", "--dry-run", "--json").stdout)["plan"]
    assert "engine" not in chat and "mlx_vlm" not in chat["runtime"]  # mlx-lm plans unchanged


@pytest.mark.parametrize(
    ("model", "problem"),
    [
        ('engine = "mlx-lm"\nrole = "embedding"', "serves only chat"),
        ('engine = "vllm"', "unknown engine"),
        ('engine = "mlx-vlm"\nrole = "vision"', "unknown role"),
        ('engine = "mlx-vlm"\n[models.m.server]\ntemp = 0.5', "not a supported mlx_vlm.server"),
        ('engine = "mlx-vlm"\n[models.m.server]\napi_key = "x"', "not a supported mlx_vlm.server"),
    ],
)
def test_manifest_refuses_what_an_engine_cannot_do(
    project: Project, model: str, problem: str
) -> None:
    project.write_manifest(
        f'version = 1\n[models.m]\napi_label = "m"\n{model}\n[models.m.launch]\nrepo = "a/b"\n'
    )
    result = project.run("lock", "--check")
    assert result.returncode == 78 and problem in result.stderr, result.stderr


# --- end to end ------------------------------------------------------------------------------


def _request(
    url: str, body: object | None = None, headers: dict[str, str] | None = None
) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers=headers or {})
    if data is not None:
        request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"{}")


class Running:
    """`mlxpin VERB ...` in the background on a free port, its output collected."""

    def __init__(self, project: Project, verb: str, *args: str) -> None:
        if verb == "launch":
            plan = project.json("launch", *args, "--dry-run")["plan"]
            self.port, port_args = plan["public"]["port"], []
        else:
            self.port = free_port()
            port_args = ["--port", str(self.port)]
        self.base = f"http://127.0.0.1:{self.port}"
        self.process = subprocess.Popen(
            [sys.executable, "-m", "mlxpin", verb, *args, *port_args],
            cwd=project.root,
            env=project.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.log: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.log.append(line)

    def wait_healthy(self, timeout_s: float = 240.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            assert self.process.poll() is None, "".join(self.log)
            try:
                if _request(self.base + "/health")[0] == 200:
                    return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.2)
        raise AssertionError("not healthy in time:\n" + "".join(self.log))

    def client(self) -> Any:
        import openai

        return openai.OpenAI(base_url=self.base + "/v1", api_key="k", timeout=240, max_retries=0)

    def descendants(self) -> list[int]:
        found: list[int] = []
        todo = [self.process.pid]
        while todo:
            pid = todo.pop()
            for task in Path(f"/proc/{pid}/task").glob("*"):
                with open(task / "children") as f:
                    kids = [int(k) for k in f.read().split()]
                found += kids
                todo += kids
        return found

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=60)


@pytest.fixture
def run(fetched: Project) -> Iterator[Callable[..., Running]]:
    started: list[Running] = []

    def start(verb: str, *args: str) -> Running:
        started.append(Running(fetched, verb, *args))
        return started[-1]

    yield start
    for running in started:
        if running.process.poll() is None:
            running.process.kill()
            running.process.wait()


def _stops_clean(running: Running, hub: HubServer) -> None:
    kids = running.descendants()
    assert kids, "no engine server ran"
    assert running.stop() == 0, "".join(running.log)
    time.sleep(0.5)
    assert not [pid for pid in kids if Path(f"/proc/{pid}").exists()], "left behind"
    assert hub.count() == 0  # the hub was down the whole time, and never asked


@pytest.mark.e2e
@NEEDS_MLX_VLM
def test_launch_an_embedding_model_answers_the_openai_sdk(
    fetched: Project, run: Callable[..., Running], hub: HubServer
) -> None:
    size = json.loads(
        (Path(fetched.json("launch", "embed", "--dry-run")["plan"]["upstream_model"]))
        .joinpath("config.json")
        .read_bytes()
    )["hidden_size"]
    running = run("launch", "embed")
    running.wait_healthy()
    client = running.client()
    single = client.embeddings.create(model=EMBED_LABEL, input="hello world")
    assert single.model == EMBED_LABEL and len(single.data[0].embedding) == size
    batch = client.embeddings.create(model=EMBED_LABEL, input=["hello", "the world is round"])
    assert [len(d.embedding) for d in batch.data] == [size, size]
    # The orchestrator's own call, as it makes it.
    status, body = _request(
        running.base + "/v1/embeddings", {"model": EMBED_LABEL, "input": "some text"}
    )
    assert status == 200 and len(body["data"][0]["embedding"]) == size
    status, body = _request(
        running.base + "/v1/chat/completions",
        {"model": EMBED_LABEL, "messages": [{"role": "user", "content": "hi"}]},
    )
    assert status == 404 and "/v1/chat/completions" in body["error"]["message"]
    assert "POST /v1/embeddings" in body["error"]["message"]
    status, body = _request(running.base + "/v1/embeddings", {"model": "nope", "input": "x"})
    assert status == 404 and body["error"]["code"] == "model_not_found"
    for remote in ("http://example.com/a.png", "/etc/passwd"):
        item = {"type": "image_url", "image_url": {"url": remote}}
        status, body = _request(
            running.base + "/v1/embeddings", {"model": EMBED_LABEL, "input": [item]}
        )
        assert status == 400 and body["error"]["code"] == "unsupported_parameter"
    status, models = _request(running.base + "/v1/models")
    assert [(m["id"], m["kind"]) for m in models["data"]] == [(EMBED_LABEL, "embedding")]
    again = client.embeddings.create(model=EMBED_LABEL, input="hello world")
    assert again.data[0].embedding == single.data[0].embedding  # still the pinned model
    _stops_clean(running, hub)
    # log_level = "WARNING" reaches uvicorn too: no access line per request
    assert not [line for line in running.log if "POST /v1/embeddings" in line], running.log


@pytest.mark.e2e
@NEEDS_MLX_VLM
def test_launch_a_vision_model_answers_a_chat_with_a_png(
    fetched: Project, run: Callable[..., Running], hub: HubServer
) -> None:
    running = run("launch", "vision")
    running.wait_healthy()
    client = running.client()
    url = "data:image/png;base64," + base64.b64encode(tiny_png()).decode()
    content = [
        {"type": "text", "text": "What is in the image?"},
        {"type": "image_url", "image_url": {"url": url}},
    ]
    reply = client.chat.completions.create(
        model=VISION_LABEL, max_tokens=3, messages=[{"role": "user", "content": content}]
    )
    assert reply.model == VISION_LABEL and reply.choices[0].message.content
    chunks = list(
        client.chat.completions.create(
            model=VISION_LABEL,
            max_tokens=3,
            stream=True,
            messages=[{"role": "user", "content": "count"}],
        )
    )
    assert len(chunks) >= 3 and {c.model for c in chunks} == {VISION_LABEL}
    response = client.responses.create(model=VISION_LABEL, input="hi", max_output_tokens=2)
    assert response.model == VISION_LABEL
    status, message = _request(
        running.base + "/v1/messages",
        {"model": VISION_LABEL, "max_tokens": 2, "messages": [{"role": "user", "content": "hi"}]},
    )
    assert status == 200 and message["model"] == VISION_LABEL, message
    streamed = list(
        client.responses.create(model=VISION_LABEL, input="hi", max_output_tokens=2, stream=True)
    )
    assert streamed and str(running.descendants()) not in str(streamed)
    models = {getattr(getattr(e, "response", None), "model", None) for e in streamed} - {None}
    assert models == {VISION_LABEL}, streamed
    remote = [{"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}]
    status, body = _request(
        running.base + "/v1/chat/completions",
        {"model": VISION_LABEL, "messages": [{"role": "user", "content": remote}]},
    )
    assert status == 400 and "data: URL" in body["error"]["message"]
    status, body = _request(running.base + "/v1/embeddings", {"model": VISION_LABEL, "input": "x"})
    assert status == 404 and "does not serve POST /v1/embeddings" in body["error"]["message"]
    _stops_clean(running, hub)
    assert [line for line in running.log if "POST /v1/chat/completions" in line]  # INFO: logged


@pytest.mark.e2e
@NEEDS_MLX_VLM
def test_serve_an_mlx_lm_chat_and_an_mlx_vlm_embedding_model_on_demand(
    fetched: Project, run: Callable[..., Running], hub: HubServer
) -> None:
    running = run("serve", "chat", "embed")
    running.wait_healthy()
    status, models = _request(running.base + "/v1/models")
    assert {m["id"]: m["kind"] for m in models["data"]} == {
        CHAT_LABEL: "chat",
        EMBED_LABEL: "embedding",
    }
    status, before = _request(running.base + "/mlxpin/status")
    assert {m["state"] for m in before["models"]} == {"stopped"}  # nothing until asked
    client = running.client()
    vector = client.embeddings.create(model=EMBED_LABEL, input="hello").data[0].embedding
    assert len(vector) == 64
    reply = client.chat.completions.create(
        model=CHAT_LABEL, messages=[{"role": "user", "content": "hi"}], max_tokens=2
    )
    assert reply.model == CHAT_LABEL and reply.choices[0].message.content
    status, after = _request(running.base + "/mlxpin/status")
    assert {m["state"] for m in after["models"]} == {"ready"}
    assert after["budget"]["used"] <= after["budget"]["total"]
    status, body = _request(running.base + "/v1/embeddings", {"model": CHAT_LABEL, "input": "x"})
    assert status == 404 and "POST /v1/chat/completions" in body["error"]["message"]
    _stops_clean(running, hub)


RERANK = {
    "query": "What is the capital of France?",
    "documents": ["Paris is the capital of France.", "The quick brown fox.", "yes"],
}


def _scores_every_document(base: str, label: str = RERANK_LABEL) -> dict[str, Any]:
    status, body = _request(base + "/v1/rerank", {"model": label, **RERANK})
    assert status == 200 and body["model"] == label, body
    results = body["results"]
    assert sorted(r["index"] for r in results) == [0, 1, 2]
    assert all(0.0 <= r["relevance_score"] <= 1.0 for r in results)
    scores = [r["relevance_score"] for r in results]
    assert scores == sorted(scores, reverse=True)
    assert body["usage"]["prompt_tokens"] > 0
    return dict(body)


@pytest.mark.e2e
@pytest.mark.slow
@NEEDS_MLX_VLM
def test_launch_a_rerank_model_scores_every_document(
    fetched: Project, run: Callable[..., Running], hub: HubServer
) -> None:
    plan = fetched.json("launch", "rerank", "--dry-run")["plan"]
    assert plan["argv"][plan["argv"].index("--reranker-model") + 1] == plan["upstream_model"]
    running = run("launch", "rerank")
    running.wait_healthy()
    first = _scores_every_document(running.base)
    assert _scores_every_document(running.base) == first  # the pinned model, deterministic
    status, top = _request(
        running.base + "/v1/rerank",
        {"model": RERANK_LABEL, **RERANK, "top_n": 1, "return_documents": True},
    )
    assert status == 200 and len(top["results"]) == 1, top
    best = first["results"][0]
    assert top["results"][0] == {**best, "document": RERANK["documents"][best["index"]]}
    one = {"query": "q", "documents": ["d"]}
    status, body = _request(running.base + "/v1/rerank", {"model": "nope", **one})
    assert status == 404 and body["error"]["code"] == "model_not_found"
    status, body = _request(
        running.base + "/v1/chat/completions",
        {"model": RERANK_LABEL, "messages": [{"role": "user", "content": "hi"}]},
    )
    assert status == 404 and "POST /v1/rerank" in body["error"]["message"], body
    status, body = _request(running.base + "/v1/embeddings", {"model": RERANK_LABEL, "input": "x"})
    assert status == 404 and "does not serve POST /v1/embeddings" in body["error"]["message"]
    status, models = _request(running.base + "/v1/models")
    assert [(m["id"], m["kind"]) for m in models["data"]] == [(RERANK_LABEL, "rerank")]
    _stops_clean(running, hub)


@pytest.mark.e2e
@pytest.mark.slow
@NEEDS_MLX_VLM
def test_serve_an_mlx_lm_chat_beside_an_mlx_vlm_reranker(
    fetched: Project, run: Callable[..., Running], hub: HubServer
) -> None:
    running = run("serve", "chat", "rerank")
    running.wait_healthy()
    _scores_every_document(running.base)
    reply = running.client().chat.completions.create(
        model=CHAT_LABEL, messages=[{"role": "user", "content": "hi"}], max_tokens=2
    )
    assert reply.model == CHAT_LABEL and reply.choices[0].message.content
    status, body = _request(running.base + "/v1/rerank", {"model": CHAT_LABEL, **RERANK})
    assert status == 404 and "POST /v1/chat/completions" in body["error"]["message"], body
    status, after = _request(running.base + "/mlxpin/status")
    assert {m["state"] for m in after["models"]} == {"ready"}
    _stops_clean(running, hub)


def _tone_wav(seconds: float = 1.0, rate: int = 16000) -> bytes:
    """A 16-bit mono WAV of a 440 Hz tone."""
    frames = int(seconds * rate)
    samples = [round(8000 * math.sin(2 * math.pi * 440 * i / rate)) for i in range(frames)]
    data = struct.pack(f"<{frames}h", *samples)
    header = struct.pack(
        "<4sI4s4sIHHIIHH4sI", b"RIFF", 36 + len(data), b"WAVE", b"fmt ", 16, 1, 1, rate,
        2 * rate, 2, 16, b"data", len(data),
    )  # fmt: skip
    return header + data


@pytest.mark.e2e
@pytest.mark.slow
@NEEDS_MLX_VLM
def test_launch_a_transcription_model_transcribes_a_wav(
    fetched: Project, run: Callable[..., Running], hub: HubServer
) -> None:
    plan = fetched.json("launch", "stt", "--dry-run")["plan"]
    assert plan["argv"][plan["argv"].index("--stt-model") + 1] == plan["upstream_model"]
    running = run("launch", "stt")
    running.wait_healthy()
    client = running.client()
    wav = ("tone.wav", _tone_wav(), "audio/wav")
    first = client.audio.transcriptions.create(model=STT_LABEL, file=wav)
    words = {w.lstrip("▁") for w in tinymodel_transcription.VOCABULARY}
    assert first.text and set(first.text.replace(".", " ").split()) <= words, first.text
    assert client.audio.transcriptions.create(model=STT_LABEL, file=wav).text == first.text
    form = [FormPart("file", "tone.wav", "audio/wav", _tone_wav())]
    for label, status_wanted, said in (
        ("nope", 404, "model_not_found"),
        (STT_LABEL, 200, first.text),
    ):
        body, content_type = encode_form(form, label)
        request = urllib.request.Request(
            running.base + "/v1/audio/transcriptions",
            data=body,
            headers={"Content-Type": content_type},
        )
        try:
            with urllib.request.urlopen(request, timeout=120) as response:
                status, answer = response.status, response.read().decode()
        except urllib.error.HTTPError as error:
            status, answer = error.code, error.read().decode()
        assert status == status_wanted and said in answer, answer
    status, answer = _request(
        running.base + "/v1/chat/completions",
        {"model": STT_LABEL, "messages": [{"role": "user", "content": "hi"}]},
    )
    assert status == 404 and "POST /v1/audio/transcriptions" in answer["error"]["message"]
    status, models = _request(running.base + "/v1/models")
    assert [(m["id"], m["kind"]) for m in models["data"]] == [(STT_LABEL, "transcription")]
    _stops_clean(running, hub)


def test_no_engine_runs_under_this_interpreter_without_mlx_vlm(fetched: Project) -> None:
    """Under an interpreter without mlx_vlm, an mlx-vlm model's launch says what is missing."""
    if importlib.util.find_spec("mlx_vlm") is not None:
        pytest.skip("mlx_vlm is importable here")
    result = fetched.run("launch", "vision", "--dry-run")
    assert result.returncode == 69 and "mlxpin[vlm]" in result.stderr


# --- the gateway's checks (pure) ---------------------------------------------------------

VLM_CHAT = Route("vlm-chat", engine="mlx-vlm", role="chat")
VLM_EMBED = Route("vlm-embed", engine="mlx-vlm", role="embedding")
VLM_STT = Route("vlm-stt", engine="mlx-vlm", role="transcription")
LM_CHAT = Route("lm-chat")
TABLE = RoutingTable([VLM_CHAT, VLM_EMBED, VLM_STT, LM_CHAT])


def _check(path: str, body: dict[str, Any]) -> Any:
    return check_request(json.dumps(body).encode(), TABLE, path)


@pytest.mark.parametrize(
    "media",
    [
        {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}},
        {"type": "image_url", "image_url": "/etc/passwd"},
        {"type": "input_image", "image_url": "file:///etc/passwd"},
        {"type": "input_audio", "input_audio": {"data": "/tmp/a.wav", "format": "wav"}},
        {"type": "input_audio", "input_audio": {"data": "https://x/a.wav", "format": "wav"}},
        {"type": "video_url", "video_url": {"url": "rtsp://camera/1"}},
        {"type": "image", "source": {"type": "url", "url": "https://example.com/a.png"}},
        {"type": "audio_url", "audio_url": {"url": "./a.mp3"}},
    ],
)
def test_media_that_is_not_inline_is_refused_for_mlx_vlm(media: dict[str, Any]) -> None:
    messages = [{"role": "user", "content": [{"type": "text", "text": "hi"}, media]}]
    refused = _check("/v1/chat/completions", {"model": "vlm-chat", "messages": messages})
    assert isinstance(refused, ApiError) and refused.status == 400
    assert refused.code == "unsupported_parameter"


def test_inline_media_passes_and_pinned_fields_are_stripped() -> None:
    png = "data:image/png;base64,iVBORw0KGgo="
    content = [
        {"type": "image_url", "image_url": {"url": png}},
        {"type": "input_audio", "input_audio": {"data": "UklGRiQAAABXQVZF", "format": "wav"}},
        {"type": "text", "text": "see https://example.com/a.png"},
    ]
    body = {
        "model": "vlm-chat",
        "adapter_path": "/tmp/evil",
        "messages": [{"role": "user", "content": content}],
        "response_format": {"type": "json_schema", "json_schema": {"schema": {"url": "x"}}},
    }
    route, checked = _check("/v1/chat/completions", body)
    assert route is VLM_CHAT and "adapter_path" not in checked
    route, _ = _check("/v1/embeddings", {"model": "vlm-embed", "input": [png, "text"]})
    assert route is VLM_EMBED


def test_an_endpoint_the_label_does_not_serve_is_404_naming_both() -> None:
    for path, label in (
        ("/v1/embeddings", "vlm-chat"),
        ("/v1/chat/completions", "vlm-embed"),
        ("/v1/responses", "lm-chat"),
        ("/v1/audio/speech", "vlm-stt"),
    ):
        refused = _check(path, {"model": label, "input": "x"})
        assert isinstance(refused, ApiError) and refused.status == 404
        assert path in refused.message and label in refused.message
    assert isinstance(_check("/v1/embeddings", {"model": "nope"}), ApiError)


def test_a_transcription_form_is_relabelled_with_the_servers_path() -> None:
    parts = [
        FormPart("model", None, None, b"vlm-stt"),
        FormPart("file", 'a "b".wav', "audio/wav", b"RIFF\r\n--x\x00"),
        FormPart("language", None, None, "é".encode()),
    ]
    raw, content_type = encode_form(parts[1:], "vlm-stt")
    result = check_form(raw, content_type, TABLE, "/v1/audio/transcriptions")
    assert not isinstance(result, ApiError)
    route, checked = result
    assert route is VLM_STT
    assert [(p.name, p.data) for p in checked] == [(p.name, p.data) for p in parts[1:]]
    upstream, ctype = encode_form(checked, "/models/stt")
    again = parse_form(upstream, ctype)
    assert not isinstance(again, ApiError)
    assert (again[0].name, again[0].data) == ("model", b"/models/stt")
    refused = check_form(raw, content_type, TABLE, "/v1/embeddings")
    assert isinstance(refused, ApiError) and refused.status == 404
    assert isinstance(check_form(b"{}", "application/json", TABLE, "/v1/x"), ApiError)


def test_models_lists_every_label_with_its_kind() -> None:
    listing = json.loads(TABLE.models_body)["data"]
    assert [(m["id"], m["kind"]) for m in listing] == [
        ("vlm-chat", "chat"),
        ("vlm-embed", "embedding"),
        ("vlm-stt", "transcription"),
        ("lm-chat", "chat"),
    ]


def test_the_documented_serve_example_parses(tmp_path: Path) -> None:
    text = (Path(__file__).parents[1] / "docs" / "engines.md").read_text()
    toml = text.split("```toml\n", 1)[1].split("```", 1)[0]
    manifest = parse_manifest(toml.encode(), tmp_path / "manifest.toml")
    assert [(m.api_label, m.engine, m.role) for m in manifest.models] == [
        ("gemma-4-31b-it", "mlx-lm", "chat"),
        ("qwen2.5-vl-7b", "mlx-vlm", "chat"),
        ("text-embedding-qwen3-embedding-8b", "mlx-vlm", "embedding"),
    ]


# --- the engine's runtime pinned ([engines.mlx-vlm]) ----------------------------------------


def test_an_engine_runtime_is_locked_installed_and_run(tmp_path: Path) -> None:
    """[engines.mlx-vlm] pins mlx-vlm's closure like [runtime] pins mlx-lm's (against a
    local index of stand-in wheels): lock/engines/mlx-vlm/runtime.toml, one install, the
    plan runs that interpreter, gc keeps it."""
    with PyIndex(tmp_path / "wheels") as index:
        build_wheel(index.directory, "mlx-vlm", "0.7.1", requires=["mlx-lm>=0.1"])
        build_wheel(index.directory, "mlx-lm", "0.1.0")
        build_wheel(index.directory, "mlx", "0.1.0", extras=["cpu"])
        root = tmp_path / "project"
        tinymodel_embedding.generate(root / "emb")
        leaks = ("UV_", "PIP_", "MLXPIN_", "VIRTUAL_ENV", "HF_TOKEN", "HF_HUB_OFFLINE")
        env = {k: v for k, v in os.environ.items() if not k.startswith(leaks)}
        env.update(
            HF_HOME=str(tmp_path / "hf_home"),
            UV_INDEX_URL=index.url,
            UV_CACHE_DIR=str(tmp_path / "uv-cache"),
            UV_NO_CONFIG="1",
        )
        project = Project(root=root, env=env)
        project.write_manifest(
            'version = 1\n[models.embed]\napi_label = "e"\nengine = "mlx-vlm"\n'
            'role = "embedding"\n[models.embed.launch]\npath = "./emb"\n'
            '[engines.mlx-vlm]\nmlx-vlm = ">=0.7"\n'
        )
        locked = project.json("lock")
        assert [e["action"] for e in locked["engines"]] == ["locked"]
        assert locked["runtime"] is None
        pin = project.lock_dir / "engines" / "mlx-vlm" / "runtime.toml"
        assert "mlx-vlm>=0.7" in pin.read_text()
        fetched = project.json("fetch")
        assert [e["built"] for e in fetched["engines"]] == [True]
        python = Path(fetched["engines"][0]["path"]) / "bin" / "python"
        plan = project.json("launch", "--dry-run")["plan"]
        assert plan["argv"][:3] == [str(python), "-m", "mlx_vlm.server"]
        assert plan["argv"][-2] == "--port" and "--embedding-model" in plan["argv"]
        assert plan["runtime"]["pinned"] and plan["runtime"]["mlx_vlm"] == "0.7.1"
        assert project.json("fetch")["engines"][0]["built"] is False  # a stamp check
        project.ok("gc")
        assert python.exists()  # gc keeps what an engine's pin names
        assert project.json("lock", "--check")["engines"][0]["state"] == "ok"
        project.write_manifest(
            project.root.joinpath("manifest.toml").read_text().replace(">=0.7", ">=0.7.1")
        )
        stale = project.run("launch", "--dry-run")
        assert stale.returncode == 78 and "engines.mlx-vlm" in stale.stderr
        checked = project.run("lock", "--check")
        assert checked.returncode == 78 and "engines.mlx-vlm is stale" in checked.stderr


@pytest.mark.e2e
@pytest.mark.registry
@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_a_pinned_mlx_vlm_runtime_from_the_registry_serves_embeddings(tmp_path: Path) -> None:
    """The real thing: mlx-vlm locked from PyPI, installed, and the engine server run by
    that runtime's interpreter (not this one's) answers through the gateway."""
    root = tmp_path / "project"
    tinymodel_embedding.generate(root / "emb")
    leaks = ("UV_INDEX", "UV_DEFAULT_INDEX", "UV_EXTRA", "PIP_INDEX", "PIP_EXTRA", "MLXPIN_")
    env = {k: v for k, v in os.environ.items() if not k.startswith(leaks) and k != "VIRTUAL_ENV"}
    env.update(HF_HOME=str(tmp_path / "hf_home"), HF_HUB_DISABLE_TELEMETRY="1")
    project = Project(root=root, env=env)
    port = free_port()
    project.write_manifest(
        f'version = 1\n[models.embed]\napi_label = "{EMBED_LABEL}"\nport = {port}\n'
        'engine = "mlx-vlm"\nrole = "embedding"\n[models.embed.launch]\npath = "./emb"\n'
        '[engines.mlx-vlm]\nmlx-vlm = ">=0.7,<0.8"\n'
    )
    locked = project.run("lock", "--json", timeout=900)
    assert locked.returncode == 0, locked.stderr
    fetched = project.run("fetch", "--json", timeout=1500)
    assert fetched.returncode == 0, fetched.stderr
    python = Path(json.loads(fetched.stdout)["engines"][0]["python"])
    running = Running(project, "launch")
    try:
        running.wait_healthy(600)
        vector = running.client().embeddings.create(model=EMBED_LABEL, input="hi")
        assert len(vector.data[0].embedding) == 64
        server = running.descendants()[0]
        cmdline = Path(f"/proc/{server}/cmdline").read_text().split("\0")
        assert cmdline[:3] == [str(python), "-m", "mlx_vlm.server"]
        assert os.path.realpath(f"/proc/{server}/exe") == os.path.realpath(python)
    finally:
        running.stop()


@pytest.mark.parametrize(
    ("argv", "level"),
    [
        (["--model", "m"], "info"),  # mlx_vlm.server's own default
        (["--model", "m", "--log-level", "WARNING"], "warning"),
        (["--log-level", "DEBUG", "--model", "m", "--log-level", "ERROR"], "error"),  # the last
        (["--model", "m", "--log-level"], "info"),  # its parser refuses this one anyway
    ],
)
def test_the_engines_log_level_is_the_one_uvicorn_gets(argv: list[str], level: str) -> None:
    assert vlm_server.log_level(argv) == level
