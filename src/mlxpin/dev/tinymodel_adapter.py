"""A tiny LoRA adapter for the llama chat kind, as mlx_lm's tuner (`mlx_lm lora`) leaves it,
so that `mlx_lm fuse --adapter-path` (and `mlx_lm.server --adapter-path`) loads it, offline:

    adapter_config.json     fine_tune_type lora, num_layers 2, lora_parameters {rank 4,
                            scale 20.0, dropout 0.0, keys [self_attn.q_proj, self_attn.v_proj]}
    adapters.safetensors    float32 ``model.layers.{i}.self_attn.{q,v}_proj.lora_{a,b}``:
                            lora_a (in x rank) uniform in ±1/sqrt(in), as mlx_lm initialises
                            it; lora_b (rank x out) small but non-zero (a fresh adapter's is
                            zero), so fusing changes every q/v weight

The tuner writes its whole training configuration; only the keys `load_adapters` reads are
kept here (the rest, such as the base model's path, would make the bytes depend on where it
ran). Reproducible like the models: sorted keys, the same safetensors writer, numpy's
``default_rng([seed, 2])``.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from mlxpin.dev import tinymodel as core

if TYPE_CHECKING:
    import numpy.typing as npt

RANK: Final = 4
SCALE: Final = 20.0  # the tuner's default
KEYS: Final = ("self_attn.q_proj", "self_attn.v_proj")
_B_STD: Final = 0.002  # fused deltas of about 0.005 (at most 0.03), weights of about 0.02


def generate(out_dir: Path, *, seed: int = 0) -> tuple[Path, ...]:
    """Write the adapter into ``out_dir``; return the paths, sorted (see the module)."""
    if seed < 0:
        raise ValueError(f"seed must be >= 0, not {seed}")
    files: dict[str, bytes] = {
        "adapter_config.json": core.json_bytes(adapter_config()),
        "adapters.safetensors": core.safetensors_bytes(_weights(seed), dtype="F32"),
    }
    return core.write_files(out_dir, files)


def adapter_config() -> dict[str, Any]:
    return {
        "fine_tune_type": "lora",
        "lora_parameters": {"dropout": 0.0, "keys": list(KEYS), "rank": RANK, "scale": SCALE},
        "num_layers": core.NUM_LAYERS,
    }


def _weights(seed: int) -> dict[str, npt.NDArray[Any]]:
    import numpy as np

    rng = np.random.default_rng([seed, 2])
    h = core.HIDDEN_SIZE
    out = {"self_attn.q_proj": h, "self_attn.v_proj": core.NUM_KV_HEADS * (h // core.NUM_HEADS)}
    bound = np.float32(1 / np.sqrt(h))
    tensors: dict[str, npt.NDArray[Any]] = {}
    for i in range(core.NUM_LAYERS):
        for key in KEYS:
            p = f"model.layers.{i}.{key}."
            tensors[p + "lora_a"] = rng.uniform(-bound, bound, (h, RANK)).astype(np.float32)
            b = rng.standard_normal((RANK, out[key]), dtype=np.float32) * np.float32(_B_STD)
            tensors[p + "lora_b"] = b
    return tensors
