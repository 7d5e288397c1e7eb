"""The tiny offline model: reproducible bytes, and real mlx_lm loads, generates and serves it."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import pytest

from mlxpin.dev import tinymodel
from mlxpin.gateway.addresses import free_port as any_free_port

ARCHS = ("llama", "qwen2")
FILES = (
    "config.json",
    "generation_config.json",
    "model.safetensors",
    "special_tokens_map.json",
    "tokenizer.json",
    "tokenizer_config.json",
)
TEXTS = (
    "Hello, world! The server answers 42 requests per second.\n\tTabs  and  spaces.",
    "café naïve façade — “quotes”, 日本語のテキスト, Русский, emoji 🙂🚀, ✓",
)


@pytest.fixture(scope="module", params=ARCHS)
def model_dir(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp(f"tiny-{request.param}")
    tinymodel.generate(out, arch=request.param, seed=0)
    return out


@pytest.fixture(scope="module")
def loaded(model_dir: Path) -> tuple[Any, Any]:
    from mlx_lm import load

    return cast("tuple[Any, Any]", load(str(model_dir)))  # no config asked for: 2 items


def _read_all(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


def _generate_in_subprocess(out: Path, arch: str, seed: int, env_extra: dict[str, str]) -> None:
    env = {**os.environ, **env_extra}
    cmd = [
        sys.executable,
        "-m",
        "mlxpin.dev.tinymodel",
        str(out),
        "--arch",
        arch,
        "--seed",
        str(seed),
    ]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [str(out / name) for name in FILES]


# --- reproducibility ----------------------------------------------------------------------


def test_import_is_cheap() -> None:
    code = (
        "import sys, mlxpin.dev.tinymodel, mlxpin.dev.tinymodel_vision, "
        "mlxpin.dev.tinymodel_embedding; print(sorted(m for m in "
        "('numpy', 'tokenizers', 'mlx', 'mlx_lm', 'mlx_vlm', 'transformers') "
        "if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


@pytest.mark.parametrize("arch", ARCHS)
def test_same_seed_is_byte_identical_across_processes(arch: str, tmp_path: Path) -> None:
    # Different hash seeds and rayon thread counts: neither may leak into the bytes.
    _generate_in_subprocess(
        tmp_path / "a", arch, 3, {"PYTHONHASHSEED": "1", "RAYON_RS_NUM_CPUS": "1"}
    )
    _generate_in_subprocess(
        tmp_path / "b", arch, 3, {"PYTHONHASHSEED": "2", "RAYON_RS_NUM_CPUS": "4"}
    )
    tinymodel.generate(tmp_path / "c", arch=arch, seed=3)  # type: ignore[arg-type]
    first = _read_all(tmp_path / "a")
    assert tuple(first) == FILES
    assert _read_all(tmp_path / "b") == first
    assert _read_all(tmp_path / "c") == first


def test_different_seed_changes_only_the_weights(tmp_path: Path) -> None:
    tinymodel.generate(tmp_path / "s0", seed=0)
    tinymodel.generate(tmp_path / "s1", seed=1)
    zero, one = _read_all(tmp_path / "s0"), _read_all(tmp_path / "s1")
    assert zero["model.safetensors"] != one["model.safetensors"]
    assert len(zero["model.safetensors"]) == len(one["model.safetensors"])
    assert {k: v for k, v in zero.items() if k != "model.safetensors"} == {
        k: v for k, v in one.items() if k != "model.safetensors"
    }


def test_archs_differ_in_config_and_weights(tmp_path: Path) -> None:
    tinymodel.generate(tmp_path / "llama", arch="llama")
    tinymodel.generate(tmp_path / "qwen2", arch="qwen2")
    llama, qwen2 = _read_all(tmp_path / "llama"), _read_all(tmp_path / "qwen2")
    assert json.loads(llama["config.json"])["model_type"] == "llama"
    assert json.loads(qwen2["config.json"])["model_type"] == "qwen2"
    assert llama["tokenizer.json"] == qwen2["tokenizer.json"]
    assert llama["model.safetensors"] != qwen2["model.safetensors"]


def test_writes_only_its_files_and_returns_them_sorted(tmp_path: Path) -> None:
    out = tmp_path / "deep" / "model"
    out.mkdir(parents=True)
    (out / "README.md").write_text("mine\n")
    (out / "config.json").write_text("stale\n")
    paths = tinymodel.generate(out)
    assert paths == tuple(out / name for name in FILES)
    assert (out / "README.md").read_text() == "mine\n"
    assert json.loads((out / "config.json").read_text())["hidden_size"] == 64
    assert sorted(p.name for p in out.iterdir()) == sorted([*FILES, "README.md"])


def test_rejects_unknown_arch_and_negative_seed(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="arch"):
        tinymodel.generate(tmp_path, arch="gpt2")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="seed"):
        tinymodel.generate(tmp_path, seed=-1)
    assert list(tmp_path.iterdir()) == []


def test_json_files_are_canonical(model_dir: Path) -> None:
    for name in FILES:
        if name.endswith(".json"):
            raw = (model_dir / name).read_text(encoding="utf-8")
            canonical = json.dumps(json.loads(raw), sort_keys=True, indent=2, ensure_ascii=False)
            assert raw == canonical + "\n", name


def test_config_matches_tokenizer(model_dir: Path) -> None:
    config = json.loads((model_dir / "config.json").read_text())
    tokenizer = json.loads((model_dir / "tokenizer.json").read_text(encoding="utf-8"))
    vocab = tokenizer["model"]["vocab"]
    assert config["vocab_size"] == len(vocab) == 512
    assert (config["hidden_size"], config["num_hidden_layers"], config["num_attention_heads"]) == (
        64,
        2,
        4,
    )
    assert config["torch_dtype"] == config["dtype"] == "bfloat16"
    assert {t["content"]: t["id"] for t in tokenizer["added_tokens"]} == {
        "<|endoftext|>": 0,
        "<|im_start|>": 1,
        "<|im_end|>": 2,
    }
    assert config["eos_token_id"] == vocab["<|im_end|>"]


# --- safetensors ----------------------------------------------------------------------------


def test_safetensors_layout(model_dir: Path) -> None:
    data = (model_dir / "model.safetensors").read_bytes()
    assert 200_000 <= len(data) <= 400_000
    (size,) = struct.unpack("<Q", data[:8])
    assert size % 8 == 0
    header = json.loads(data[8 : 8 + size])
    assert header.pop("__metadata__") == {"format": "mlx"}
    assert list(header) == sorted(header)
    offset = 0
    for name, entry in header.items():
        assert entry["dtype"] == "BF16", name
        count = 1
        for dim in entry["shape"]:
            count *= dim
        assert entry["data_offsets"] == [offset, offset + 2 * count], name
        offset += 2 * count
    assert 8 + size + offset == len(data)


def test_safetensors_agrees_with_mlx(model_dir: Path) -> None:
    import mlx.core as mx

    weights = cast("dict[str, mx.array]", mx.load(str(model_dir / "model.safetensors")))
    config = json.loads((model_dir / "config.json").read_text())
    assert weights["model.embed_tokens.weight"].shape == (config["vocab_size"], 64)
    assert all(w.dtype == mx.bfloat16 for w in weights.values())
    assert weights["model.norm.weight"].astype(mx.float32).tolist() == [1.0] * 64
    has_bias = "model.layers.0.self_attn.q_proj.bias" in weights
    assert has_bias == (config["model_type"] == "qwen2")


def test_bf16_rounds_to_nearest_even() -> None:
    import mlx.core as mx
    import numpy as np

    bits = np.array(
        [0x3F800000, 0x3F808000, 0x3F818000, 0x3F808001, 0xBF80FFFF, 0x7F7FFFFF, 0],
        dtype=np.uint32,
    )
    got = np.frombuffer(tinymodel._bf16(bits.view(np.float32)), dtype="<u2")
    assert got.tolist() == [0x3F80, 0x3F80, 0x3F82, 0x3F81, 0xBF81, 0x7F80, 0]
    # And it matches mlx's own float32 → bfloat16 conversion on random values.
    sample = np.random.default_rng(5).standard_normal(4096, dtype=np.float32) * 3
    ours = np.frombuffer(tinymodel._bf16(sample), dtype="<u2")
    theirs = np.array(mx.array(sample).astype(mx.bfloat16).view(mx.uint16))
    assert ours.tolist() == theirs.tolist()


# --- mlx_lm ---------------------------------------------------------------------------------


def test_mlx_lm_generates_more_than_one_word(loaded: tuple[Any, Any]) -> None:
    from mlx_lm import generate

    model, tokenizer = loaded
    text = generate(model, tokenizer, prompt="The server loads a model", max_tokens=5)
    assert isinstance(text, str)
    assert len(set(text.split())) > 1, text


def test_chat_template_is_chatml(loaded: tuple[Any, Any]) -> None:
    _, tokenizer = loaded
    messages = [{"role": "user", "content": "hi"}]
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True)
    assert "<|im_start|>assistant" in tokenizer.decode(ids)
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert text == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    assert tokenizer.eos_token == "<|im_end|>"
    assert set(tokenizer.eos_token_ids) == {0, 2}


@pytest.mark.parametrize("text", TEXTS)
def test_tokenizer_round_trips(loaded: tuple[Any, Any], model_dir: Path, text: str) -> None:
    from tokenizers import Tokenizer

    _, tokenizer = loaded
    ids = tokenizer.encode(text)
    assert tokenizer.decode(ids) == text
    assert len(ids) < len(text.encode())  # the merges do compress
    # `tokenizers` on the raw file and transformers' class for this arch agree.
    raw = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    assert raw.encode(text).ids == list(ids)
    assert raw.encode("<|im_start|>user").ids[0] == 1


def test_main_prints_the_written_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert tinymodel.main([str(tmp_path), "--arch", "qwen2", "--seed", "2"]) == 0
    assert capsys.readouterr().out.split() == [str(tmp_path / name) for name in FILES]
    with pytest.raises(SystemExit) as excinfo:
        tinymodel.main([str(tmp_path), "--arch", "gpt2"])
    assert excinfo.value.code == 2


# --- a real mlx_lm.server -------------------------------------------------------------------


@pytest.fixture
def free_port() -> int:
    return any_free_port()


def _chat(port: int, max_tokens: int, timeout: float) -> dict[str, Any]:
    body = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": max_tokens}
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/v1/chat/completions",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=timeout) as response:
        result: dict[str, Any] = json.loads(response.read())
        return result


@pytest.fixture
def server(model_dir: Path, free_port: int, tmp_path: Path) -> Iterator[int]:
    """A real `mlx_lm.server` on the tiny model; yields its port once it has answered."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf-home")}
    cmd = [sys.executable, "-m", "mlx_lm", "server", "--model", str(model_dir)]
    cmd += ["--host", "127.0.0.1", "--port", str(free_port)]
    log_path = tmp_path / "server.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, env=env, cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT)
    try:
        # /health answers before the model is loaded: readiness is a real 1-token completion.
        deadline = time.monotonic() + 30
        while True:
            if proc.poll() is not None:
                pytest.fail(f"server exited {proc.returncode}:\n{log_path.read_text()}")
            try:
                _chat(free_port, max_tokens=1, timeout=5)
                break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                if time.monotonic() > deadline:
                    pytest.fail(f"server not ready in 30 s:\n{log_path.read_text()}")
                time.sleep(0.05)
        yield free_port
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


@pytest.mark.e2e
def test_real_server_answers_a_chat_completion(server: int) -> None:
    result = _chat(server, max_tokens=3, timeout=10)
    choice = result["choices"][0]
    assert choice["message"]["role"] == "assistant"
    assert isinstance(choice["message"]["content"], str)
    assert choice["message"]["content"].strip()
    assert choice["finish_reason"] == "length"
    assert result["usage"]["completion_tokens"] == 3
