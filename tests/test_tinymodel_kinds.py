"""The vision and embedding tiny models: reproducible bytes, and the real mlx-vlm engine
(`python -m mlx_vlm.server`) loads both and answers embeddings and a chat with an image.

The engine tests need mlx-vlm importable by this interpreter (it is heavy and not in the dev
extras): run them from a venv that has it, e.g.
``PYTHONPATH=src /work/vlm-venv/bin/python -m pytest tests/test_tinymodel_kinds.py``.
"""

from __future__ import annotations

import base64
import importlib.util
import json
import math
import os
import struct
import subprocess
import sys
import time
import urllib.error
import urllib.request
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
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
from mlxpin.gateway.addresses import free_port

KINDS = ("vision", "embedding", "rerank", "transcription")
GENERATORS = {
    "vision": tinymodel_vision.generate,
    "embedding": tinymodel_embedding.generate,
    "rerank": tinymodel_rerank.generate,
    "transcription": tinymodel_transcription.generate,
}
NO_MLX_VLM = importlib.util.find_spec("mlx_vlm") is None
NEEDS_MLX_VLM = pytest.mark.skipif(
    NO_MLX_VLM,
    reason="mlx_vlm is not importable here: run with an interpreter that has mlx-vlm>=0.7",
)


def _read_all(directory: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(directory)): p.read_bytes()
        for p in sorted(directory.rglob("*"))
        if p.is_file()
    }


def _cli(out: Path, *args: str) -> list[str]:
    cmd = [sys.executable, "-m", "mlxpin.dev.tinymodel", str(out), *args]
    env = {**os.environ, "PYTHONHASHSEED": "7"}
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    return done.stdout.split()


# --- reproducibility ----------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_same_arguments_give_identical_bytes(kind: str, tmp_path: Path) -> None:
    first = GENERATORS[kind](tmp_path / "a", seed=3)
    assert _cli(tmp_path / "b", "--kind", kind, "--seed", "3") == [
        str(tmp_path / "b" / p.relative_to(tmp_path / "a")) for p in first
    ]
    assert _read_all(tmp_path / "a") == _read_all(tmp_path / "b")
    GENERATORS[kind](tmp_path / "c", seed=4)
    differ = {n for n, b in _read_all(tmp_path / "c").items() if b != _read_all(tmp_path / "a")[n]}
    assert differ == {"model.safetensors"}


@pytest.mark.parametrize("kind", ("vision", "embedding", "rerank"))
def test_sharded_holds_the_same_tensors(kind: str, tmp_path: Path) -> None:
    GENERATORS[kind](tmp_path / "one")
    paths = GENERATORS[kind](tmp_path / "many", sharded=True)
    index = json.loads((tmp_path / "many" / "model.safetensors.index.json").read_bytes())
    whole = _tensor_names(tmp_path / "one" / "model.safetensors")
    assert set(index["weight_map"]) == whole
    shards = sorted(p for p in paths if p.name.startswith("model-"))
    assert set().union(*(_tensor_names(p) for p in shards)) == whole
    assert len(shards) == tinymodel.NUM_LAYERS + 1


def _tensor_names(path: Path) -> set[str]:
    data = path.read_bytes()
    (length,) = struct.unpack("<Q", data[:8])
    return set(json.loads(data[8 : 8 + length])) - {"__metadata__"}


def test_chat_is_the_default_kind_and_arch_is_chat_only(tmp_path: Path) -> None:
    _cli(tmp_path / "default")
    _cli(tmp_path / "chat", "--kind", "chat", "--arch", "llama")
    assert _read_all(tmp_path / "default") == _read_all(tmp_path / "chat")
    cmd = [sys.executable, "-m", "mlxpin.dev.tinymodel", str(tmp_path / "x")]
    done = subprocess.run(
        [*cmd, "--kind", "vision", "--arch", "qwen2"], capture_output=True, text=True, check=False
    )
    assert done.returncode == 2 and "--arch applies to --kind chat only" in done.stderr


def test_vision_config_agrees_with_its_tokenizer(tmp_path: Path) -> None:
    tinymodel_vision.generate(tmp_path)
    config = json.loads((tmp_path / "config.json").read_bytes())
    tokenizer = json.loads((tmp_path / "tokenizer.json").read_bytes())
    added = {t["content"]: t["id"] for t in tokenizer["added_tokens"]}
    assert config["image_token_id"] == added["<|image_pad|>"]
    assert config["video_token_id"] == added["<|video_pad|>"]
    assert config["vision_start_token_id"] == added["<|vision_start|>"]
    assert config["vocab_size"] == len(tokenizer["model"]["vocab"]) + 4 == max(added.values()) + 1
    assert isinstance(config["vision_config"]["mlp_ratio"], int)


def test_rerank_answers_are_single_tokens_and_the_template_a_file(tmp_path: Path) -> None:
    """mlx-vlm scores logit("yes") - logit("no") and falls back to chat_template.jinja."""
    from tokenizers import Tokenizer

    tinymodel_rerank.generate(tmp_path)
    tokenizer = Tokenizer.from_file(str(tmp_path / "tokenizer.json"))
    vocab = tokenizer.get_vocab()
    assert [tokenizer.encode(word).ids for word in ("yes", "no")] == [[vocab["yes"]], [vocab["no"]]]
    assert "yes" not in tinymodel.tokenizer_json()["model"]["vocab"]
    config = json.loads((tmp_path / "config.json").read_bytes())
    assert (config["model_type"], config["tie_word_embeddings"]) == ("qwen3", True)
    assert config["vocab_size"] == len(vocab)
    assert (tmp_path / "chat_template.jinja").read_text() == tinymodel.CHAT_TEMPLATE + "\n"
    assert "chat_template" not in json.loads((tmp_path / "tokenizer_config.json").read_bytes())


def test_transcription_has_one_weight_file(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="single weight file"):
        tinymodel_transcription.generate(tmp_path, sharded=True)
    cmd = [sys.executable, "-m", "mlxpin.dev.tinymodel", str(tmp_path), "--sharded"]
    done = subprocess.run(
        [*cmd, "--kind", "transcription"], capture_output=True, text=True, check=False
    )
    assert done.returncode == 2 and "--sharded does not apply" in done.stderr


@pytest.mark.skipif(
    importlib.util.find_spec("mlx_audio") is None, reason="mlx_audio is not importable here"
)
def test_transcription_tensors_are_the_ones_mlx_audio_builds(tmp_path: Path) -> None:
    """Same names and shapes as mlx-audio's Parakeet-CTC from the written config (its
    loader is not strict: a missing or misnamed tensor would stay silently random)."""
    from mlx.utils import tree_flatten
    from mlx_audio.stt.models.parakeet.parakeet import Model

    tinymodel_transcription.generate(tmp_path)
    model = Model.from_config(json.loads((tmp_path / "config.json").read_bytes()))
    flat: list[tuple[str, Any]] = tree_flatten(model.parameters())  # type: ignore[assignment]
    built = {name: tuple(array.shape) for name, array in flat}
    assert built == tinymodel_transcription.shapes()
    data = (tmp_path / "model.safetensors").read_bytes()
    (length,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + length])
    assert {k: tuple(v["shape"]) for k, v in header.items() if k != "__metadata__"} == built


# --- the real engine ----------------------------------------------------------------------


@dataclass(frozen=True)
class Engine:
    port: int
    vision: Path
    embedding: Path

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Engine]:
    """`python -m mlx_vlm.server` with both tiny models preloaded, offline, on loopback."""
    if NO_MLX_VLM:
        pytest.skip("mlx_vlm is not importable here: run with an interpreter that has it")
    root = tmp_path_factory.mktemp("mlx-vlm")
    ready = Engine(free_port(), root / "vision", root / "embedding")
    tinymodel_vision.generate(ready.vision)
    tinymodel_embedding.generate(ready.embedding)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(root / "hf-home")}
    cmd = [sys.executable, "-m", "mlx_vlm.server", "--model", str(ready.vision)]
    cmd += ["--embedding-model", str(ready.embedding), "--host", "127.0.0.1"]
    cmd += ["--port", str(ready.port)]
    log_path = root / "server.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, env=env, cwd=root, stdout=log, stderr=subprocess.STDOUT)
    try:
        _wait_healthy(proc, ready.port, log_path)
        yield ready
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def _wait_healthy(proc: subprocess.Popen[bytes], port: int, log_path: Path) -> None:
    """Until /health lists both models loaded (it answers 200 even after a failed preload)."""
    deadline = time.monotonic() + 120
    while True:
        if proc.poll() is not None:
            pytest.fail(f"mlx_vlm.server exited {proc.returncode}:\n{log_path.read_text()}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as r:
                loaded = json.loads(r.read()).get("loaded_models", {})
            if {"text_generation", "embedding"} <= set(loaded):
                return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        if time.monotonic() > deadline:
            pytest.fail(f"mlx_vlm.server not ready in 120 s:\n{log_path.read_text()}")
        time.sleep(0.1)


def _client(engine: Engine) -> Any:
    from openai import OpenAI

    return OpenAI(base_url=engine.base_url, api_key="unused", timeout=120, max_retries=0)


def tiny_png(width: int = 32, height: int = 32) -> bytes:
    """An RGB gradient PNG, by hand (no PIL)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    rows = b"".join(
        b"\x00" + b"".join(bytes((x * 8 % 256, y * 8 % 256, 128)) for x in range(width))
        for y in range(height)
    )
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )


@pytest.mark.e2e
@NEEDS_MLX_VLM
def test_engine_answers_embeddings_single_and_batched(engine: Engine) -> None:
    size = json.loads((engine.embedding / "config.json").read_bytes())["hidden_size"]
    client = _client(engine)
    # The engine's own path as `model`: any other value is a load instruction to it.
    single = client.embeddings.create(model=str(engine.embedding), input="hello world")
    assert len(single.data) == 1 and len(single.data[0].embedding) == size
    assert math.isclose(math.hypot(*single.data[0].embedding), 1.0, rel_tol=1e-2)
    texts = ["hello world", "the server answers chat completion requests"]
    batch = client.embeddings.create(model=str(engine.embedding), input=texts)
    assert [d.index for d in batch.data] == [0, 1]
    assert all(len(d.embedding) == size for d in batch.data)
    assert batch.data[0].embedding != batch.data[1].embedding
    assert batch.usage.prompt_tokens > single.usage.prompt_tokens


@pytest.mark.e2e
@NEEDS_MLX_VLM
def test_engine_answers_a_chat_with_a_png(engine: Engine) -> None:
    client = _client(engine)
    url = "data:image/png;base64," + base64.b64encode(tiny_png()).decode()
    text = {"type": "text", "text": "What is in the image?"}
    image = {"type": "image_url", "image_url": {"url": url}}
    with_image = client.chat.completions.create(
        model=str(engine.vision),
        max_tokens=4,
        messages=[{"role": "user", "content": [text, image]}],
    )
    answer = with_image.choices[0].message.content
    assert isinstance(answer, str) and answer.strip()
    assert with_image.usage.completion_tokens == 4
    text_only = client.chat.completions.create(
        model=str(engine.vision), max_tokens=1, messages=[{"role": "user", "content": [text]}]
    )
    # 32 x 32 is resized to the 56 x 56 minimum: 4 merged patches, between start and end.
    assert with_image.usage.prompt_tokens == text_only.usage.prompt_tokens + 2 + 4
