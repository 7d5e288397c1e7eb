"""A tiny random-weight Qwen3 embedding model that `mlx_vlm --embedding-model` loads, offline.

Laid out like Qwen3-Embedding (a sentence-transformers directory around a Qwen3 decoder):

    1_Pooling/config.json    last-token pooling, dimension = hidden size (64)
    config.json              qwen3, hidden 64, 2 layers, 4 heads (head_dim 16), tied, bf16
    model.safetensors        the llama chat kind's ``model.*`` tensors (no lm_head), plus
                             q/k norms, bf16
    modules.json             Transformer, Pooling, Normalize
    special_tokens_map.json, tokenizer.json, tokenizer_config.json
                             the chat kind's tokenizer, padded on the left

mlx-vlm maps model_type qwen3 to its qwen3_embedding model when loaded as an embedding model;
the vector size is ``hidden_size`` (no ``1_Dense/`` layer is shipped).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from mlxpin.dev import tinymodel as core

if TYPE_CHECKING:
    import numpy.typing as npt

HEAD_DIM: Final = core.HIDDEN_SIZE // core.NUM_HEADS


def generate(out_dir: Path, *, seed: int = 0, sharded: bool = False) -> tuple[Path, ...]:
    """Write the tiny embedding model into ``out_dir``; return the paths, sorted."""
    if seed < 0:
        raise ValueError(f"seed must be >= 0, not {seed}")
    tokenizer = core.tokenizer_json()
    vocab: dict[str, int] = tokenizer["model"]["vocab"]
    weights = qwen3_weights(vocab, seed)
    files: dict[str, bytes] = {
        "1_Pooling/config.json": core.json_bytes(_pooling()),
        "config.json": core.json_bytes(qwen3_config(len(vocab))),
        **(
            core.shards(weights)
            if sharded
            else {"model.safetensors": core.safetensors_bytes(weights)}
        ),
        "modules.json": core.json_bytes(_modules()),
        "special_tokens_map.json": core.json_bytes(core.special_tokens_map()),
        "tokenizer.json": core.json_bytes(tokenizer),
        "tokenizer_config.json": core.json_bytes(
            {**core.tokenizer_config(), "padding_side": "left"}
        ),
    }
    return core.write_files(out_dir, files)


def qwen3_config(vocab_size: int) -> dict[str, Any]:
    chat = core.chat_config("llama", vocab_size)
    return {
        **{k: v for k, v in chat.items() if k != "mlp_bias"},
        "architectures": ["Qwen3ForCausalLM"],
        "model_type": "qwen3",
        "rms_norm_eps": 1e-6,
        "rope_theta": 1000000.0,
        "tie_word_embeddings": True,
    }


def _pooling() -> dict[str, Any]:
    return {
        "include_prompt": True,
        "pooling_mode_cls_token": False,
        "pooling_mode_lasttoken": True,
        "pooling_mode_max_tokens": False,
        "pooling_mode_mean_sqrt_len_tokens": False,
        "pooling_mode_mean_tokens": False,
        "pooling_mode_weightedmean_tokens": False,
        "word_embedding_dimension": core.HIDDEN_SIZE,
    }


def _modules() -> list[dict[str, Any]]:
    return [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {
            "idx": 1,
            "name": "1",
            "path": "1_Pooling",
            "type": "sentence_transformers.models.Pooling",
        },
        {
            "idx": 2,
            "name": "2",
            "path": "2_Normalize",
            "type": "sentence_transformers.models.Normalize",
        },
    ]


def qwen3_weights(vocab: dict[str, int], seed: int) -> dict[str, npt.NDArray[Any]]:
    """The llama chat weights without the head, plus Qwen3's per-head q/k norms (ones)."""
    import numpy as np

    weights = core.chat_weights("llama", vocab, seed)
    del weights["lm_head.weight"]
    for i in range(core.NUM_LAYERS):
        for norm in ("q_norm", "k_norm"):
            weights[f"model.layers.{i}.self_attn.{norm}.weight"] = np.ones(HEAD_DIM, np.float32)
    return weights
