"""A fuse build end to end: the tiny llama and the tiny LoRA adapter (`tinymodel --kind
adapter`) as path models, `[models.fused.build]` fusing one into the other with the real
`mlx_lm fuse`, rebuilt byte for byte by `build --check`, then served by a real mlx_lm.server.
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import openai
import pytest

from mlxpin.dev import tinymodel, tinymodel_adapter
from mlxpin.gateway.addresses import free_port
from test_cli_launch import Launched

from conftest import Project


def _read_all(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


def _tensors(path: Path) -> dict[str, tuple[str, tuple[int, ...], bytes]]:
    """A safetensors file's tensors: name → (dtype, shape, raw bytes)."""
    data = path.read_bytes()
    (length,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + length])
    header.pop("__metadata__", None)
    body = data[8 + length :]
    return {
        name: (t["dtype"], tuple(t["shape"]), body[t["data_offsets"][0] : t["data_offsets"][1]])
        for name, t in header.items()
    }


def test_adapter_is_byte_identical_across_generations(tmp_path: Path) -> None:
    first = tinymodel_adapter.generate(tmp_path / "a", seed=5)
    command = [sys.executable, "-m", "mlxpin.dev.tinymodel", str(tmp_path / "b")]
    done = subprocess.run(
        [*command, "--kind", "adapter", "--seed", "5"],
        env={**os.environ, "PYTHONHASHSEED": "11"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [str(tmp_path / "b" / p.name) for p in first]
    assert [p.name for p in first] == ["adapter_config.json", "adapters.safetensors"]
    assert _read_all(tmp_path / "a") == _read_all(tmp_path / "b")
    tinymodel_adapter.generate(tmp_path / "c", seed=6)
    other = _read_all(tmp_path / "c")
    assert other["adapter_config.json"] == _read_all(tmp_path / "a")["adapter_config.json"]
    assert other["adapters.safetensors"] != _read_all(tmp_path / "a")["adapters.safetensors"]


def test_adapter_matches_the_chat_model_it_adapts(tmp_path: Path) -> None:
    tinymodel_adapter.generate(tmp_path)
    config = json.loads((tmp_path / "adapter_config.json").read_bytes())
    assert config == {
        "fine_tune_type": "lora",
        "lora_parameters": {
            "dropout": 0.0,
            "keys": ["self_attn.q_proj", "self_attn.v_proj"],
            "rank": 4,
            "scale": 20.0,
        },
        "num_layers": tinymodel.NUM_LAYERS,
    }
    tensors = _tensors(tmp_path / "adapters.safetensors")
    h, r = tinymodel.HIDDEN_SIZE, tinymodel_adapter.RANK
    expected = {}
    for i in range(tinymodel.NUM_LAYERS):
        for key in ("q_proj", "v_proj"):
            expected[f"model.layers.{i}.self_attn.{key}.lora_a"] = ("F32", (h, r))
            expected[f"model.layers.{i}.self_attn.{key}.lora_b"] = ("F32", (r, h))
    assert {name: t[:2] for name, t in tensors.items()} == expected
    assert all(any(t[2]) for name, t in tensors.items() if name.endswith("lora_b"))


def test_adapter_refuses_sharded(tmp_path: Path) -> None:
    command = [sys.executable, "-m", "mlxpin.dev.tinymodel", str(tmp_path)]
    done = subprocess.run(
        [*command, "--kind", "adapter", "--sharded"], capture_output=True, text=True, check=False
    )
    assert done.returncode == 2 and "--sharded does not apply to --kind adapter" in done.stderr


def fuse_manifest(port: int) -> str:
    return f"""version = 1

[models.base]
api_label = "base-chat"
port = {free_port()}

[models.base.launch]
path = "./base"

[models.lora]
api_label = "lora"
port = {free_port()}

[models.lora.launch]
path = "./lora"

[models.fused]
api_label = "fused-chat"
port = {port}

[models.fused.build]
from = "base"
step = "fuse"
adapter = "lora"

[models.fused.server]
max_tokens = 4
"""


@pytest.mark.e2e
@pytest.mark.slow
def test_fuse_builds_checks_and_serves(project: Project) -> None:
    tinymodel.generate(project.root / "base")
    tinymodel_adapter.generate(project.root / "lora")
    port = free_port()
    project.write_manifest(fuse_manifest(port))
    project.ok("lock")
    project.ok("fetch", "base", "lora")

    built = project.run("build", "fused", "--json", timeout=300)
    assert built.returncode == 0, built.stderr
    (outcome,) = json.loads(built.stdout)["models"]
    assert outcome["action"] == "recorded"
    recorded = project.lock_text("fused")
    assert 'path = "model.safetensors"' in recorded and 'step = "fuse"' in recorded

    checked = project.run("build", "--check", "fused", timeout=300)
    assert checked.returncode == 0, checked.stderr
    assert project.lock_text("fused") == recorded

    base = _tensors(project.root / "base" / "model.safetensors")
    fused = _tensors(Path(outcome["snapshot"]) / "model.safetensors")
    assert base.keys() == fused.keys()
    changed = {name for name in base if base[name] != fused[name]}
    assert changed == {
        f"model.layers.{i}.self_attn.{key}.weight"
        for i in range(tinymodel.NUM_LAYERS)
        for key in ("q_proj", "v_proj")
    }

    running = Launched(project, port, project.env, "fused")
    try:
        running.wait_healthy()
        client = openai.OpenAI(base_url=running.base + "/v1", api_key="unused")
        reply = client.chat.completions.create(
            model="fused-chat", messages=[{"role": "user", "content": "hi"}], max_tokens=3
        )
        assert reply.model == "fused-chat"
        assert reply.choices[0].message.content
    finally:
        code = running.stop()
    assert code == 0, "".join(running.log)
