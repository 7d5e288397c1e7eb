"""Observability end to end on REAL mlx_lm.servers behind `mlxpin serve` (design §15):
/metrics counts exactly what clients sent, the status page works in a real headless
Chromium (key form, live table, an unload click), `mlxpin logs` shows a server's own lines,
and the access log has one line per request."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator

import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

import test_cli_serve
from browser import CHROMIUM, Browser
from mlxpin.gateway.observe import Exchange
from test_cli_serve import Served

from conftest import Project

KEY = "sk-obs-test-key"
fetched, project = test_cli_serve.fetched, test_cli_serve.project  # their fixtures


@pytest.fixture
def keyed(project: Project) -> Iterator[Served]:
    running = Served(project, env={**project.env, "MLXPIN_API_KEY": KEY})
    try:
        yield running
    finally:
        if running.process.poll() is None:
            running.process.kill()
            running.process.wait()


def fetch(url: str, key: str | None = KEY) -> tuple[int, str]:
    request = urllib.request.Request(url)
    if key:
        request.add_header("Authorization", f"Bearer {key}")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


@pytest.mark.e2e
def test_metrics_count_what_clients_sent(keyed: Served, project: Project) -> None:
    client = openai.OpenAI(base_url=keyed.base + "/v1", api_key=KEY, max_retries=0)
    prompt = completion = 0
    for _ in range(2):
        reply = client.chat.completions.create(
            model="alpha-chat", messages=[{"role": "user", "content": "hi"}], max_tokens=4
        )
        assert reply.usage is not None
        prompt += reply.usage.prompt_tokens
        completion += reply.usage.completion_tokens
    chunks = list(
        client.chat.completions.create(
            model="alpha-chat",
            messages=[{"role": "user", "content": "count"}],
            max_tokens=5,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    usage = chunks[-1].usage
    assert usage is not None
    prompt += usage.prompt_tokens
    completion += usage.completion_tokens
    list(  # no usage asked: counted as a request, without tokens
        client.chat.completions.create(
            model="beta-chat",
            messages=[{"role": "user", "content": "x"}],
            max_tokens=3,
            stream=True,
        )
    )
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="nope", messages=[{"role": "user", "content": "x"}])

    assert fetch(keyed.base + "/metrics", key=None)[0] == 401
    chat = "/v1/chat/completions"
    beta = (
        "mlxpin_requests_total",
        (("endpoint", chat), ("model", "beta-chat"), ("status", "200")),
    )
    deadline = time.monotonic() + 10
    while True:  # a stream is recorded once its upstream ends, a moment after [DONE]
        status, text = fetch(keyed.base + "/metrics")
        assert status == 200
        got = samples(text)
        if beta in got or time.monotonic() > deadline:
            break
        time.sleep(0.1)

    def value(name: str, **labels: str) -> float:
        return got.get((name, tuple(sorted(labels.items()))), 0.0)

    assert value("mlxpin_requests_total", model="alpha-chat", endpoint=chat, status="200") == 3
    assert value("mlxpin_requests_total", model="beta-chat", endpoint=chat, status="200") == 1
    assert value("mlxpin_requests_total", model="", endpoint=chat, status="404") == 1
    assert value("mlxpin_prompt_tokens_total", model="alpha-chat") == prompt
    assert value("mlxpin_generated_tokens_total", model="alpha-chat") == completion
    assert value("mlxpin_generated_tokens_total", model="beta-chat") == 0  # warm-up not counted
    assert value("mlxpin_request_duration_seconds_count", model="alpha-chat", endpoint=chat) == 3
    assert value("mlxpin_time_to_first_token_seconds_count", model="alpha-chat") == 1
    assert value("mlxpin_time_to_first_token_seconds_count", model="beta-chat") == 1
    assert value("mlxpin_model_state", model="alpha-chat", state="ready") == 1
    assert value("mlxpin_model_state", model="gamma-chat", state="stopped") == 1
    assert value("mlxpin_model_starts_total", model="alpha-chat") == 1
    assert value("mlxpin_model_start_duration_seconds_count", model="beta-chat") == 1
    assert value("mlxpin_requests_in_flight", model="alpha-chat") == 0
    assert value("mlxpin_memory_budget_used_bytes") > 0
    builds = [k for k in got if k[0] == "mlxpin_build_info"]
    assert builds and dict(builds[0][1])["mlxpin"]
    pins = {dict(k[1])["model"]: dict(k[1]) for k in got if k[0] == "mlxpin_model_info"}
    assert len(pins["alpha-chat"]["commit"]) == 40

    access = [line for line in keyed.log if " /v1/chat/completions " in line]
    assert sum("alpha-chat /v1/chat/completions 200" in line for line in access) == 3
    assert any("beta-chat" in line and "stream" in line for line in access)

    # the model server's own lines: in its log file, via `mlxpin logs` and the route
    logs = subprocess.run(
        [sys.executable, "-m", "mlxpin", "logs", "alpha", "-n", "500"],
        cwd=project.root,
        env=project.env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "POST /v1/chat/completions" in logs
    assert any(line.startswith("[alpha-chat] ") for line in keyed.log)
    status, text = fetch(keyed.base + "/mlxpin/logs/alpha-chat?n=500")
    assert status == 200
    assert "POST /v1/chat/completions" in text
    assert fetch(keyed.base + "/mlxpin/logs/alpha-chat", key=None)[0] == 401


@pytest.mark.e2e
@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install chromium)")
def test_status_page_in_a_real_browser_unloads_a_model(keyed: Served) -> None:
    keyed.client = openai.OpenAI(base_url=keyed.base + "/v1", api_key=KEY, max_retries=0)
    keyed.chat("alpha")
    keyed.chat("beta")
    asyncio.run(_browse(keyed.base))
    assert keyed_state(keyed, "alpha") == "stopped"
    assert keyed_state(keyed, "beta") == "ready"


def keyed_state(served: Served, name: str) -> str:
    status, text = fetch(served.base + "/mlxpin/status")
    assert status == 200
    return str({m["name"]: m for m in json.loads(text)["models"]}[name]["state"])


async def _browse(base: str) -> None:
    async with Browser() as page:
        await page.navigate(base + "/mlxpin/")
        assert await page.eval("!!document.querySelector('input[name=key]')")  # the key form
        await page.eval(
            f"document.querySelector('input[name=key]').value = {json.dumps(KEY)};"
            "document.querySelector('form').submit()"
        )
        await page.wait_for("document.querySelectorAll('#models tr').length === 3")
        assert await page.eval("document.cookie") == ""  # HttpOnly: out of the page's reach
        labels = await page.eval(
            "[...document.querySelectorAll('td.label')].map(e => e.textContent)"
        )
        assert labels == ["alpha-chat", "beta-chat", "gamma-chat"]
        states = await page.eval(
            "[...document.querySelectorAll('td.state')].map(e => e.textContent)"
        )
        assert states == ["ready", "ready", "stopped"]
        await page.click('button[data-action="unload"][data-label="alpha-chat"]')
        await page.wait_for(
            "document.querySelector('tr[data-label=\"alpha-chat\"] td.state')"
            ".textContent === 'stopped'"
        )


@pytest.mark.parametrize(
    ("body", "tokens"),
    [
        (
            b'{"data": [{"embedding": [0.5, 1.5]}], "usage": {"prompt_tokens": 3, '
            b'"completion_tokens": 0}}',
            (3, 0),
        ),
        (b'{"usage":{"prompt_tokens":2,"completion_tokens":5},"choices":[]}', (2, 5)),
        (b'{"choices": [], "usage": null, "x": {"prompt_tokens": 1}}', (None, None)),
        (b'{"content": "say \\"usage\\": {}", "usage": {"prompt_tokens": 1}}', (None, None)),
        (b'{"choices": []}', (None, None)),
        (b'not json "usage": {"prompt_tokens": 1, "completion_tokens": 1', (None, None)),
    ],
)
def test_usage_is_read_from_a_json_answer_without_parsing_all_of_it(
    body: bytes, tokens: tuple[int | None, int | None]
) -> None:
    exchange = Exchange("/v1/embeddings", 0.0)
    exchange.json_body(body)
    assert (exchange.prompt_tokens, exchange.completion_tokens) == tokens
