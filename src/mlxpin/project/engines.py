"""Engines: which server program runs a model, what each role of it serves, and the
`[models.x.server]` options each engine accepts (design §13).

`mlx-lm` (`mlx_lm.server`) serves chat only; `mlx-vlm` (`python -m mlx_vlm.server`, >= 0.7)
serves chat with images/audio, embeddings, transcription, speech and rerank, one role per
model, preloaded with the role's own flag.
"""

from __future__ import annotations

from typing import Final

from mlxpin.project.serveropts import SERVER_OPTIONS, ServerOption

MLX_LM: Final = "mlx-lm"
MLX_VLM: Final = "mlx-vlm"
ENGINES: Final = (MLX_LM, MLX_VLM)
ROLES: Final = ("chat", "embedding", "transcription", "speech", "rerank")

CHAT_PATH: Final = "/v1/chat/completions"
EMBEDDINGS_PATH: Final = "/v1/embeddings"
TRANSCRIPTIONS_PATH: Final = "/v1/audio/transcriptions"  # multipart/form-data

#: mlx_vlm.server's preload flag for each role (the model's verified view path follows).
VLM_ROLE_FLAGS: Final = {
    "chat": "--model",
    "embedding": "--embedding-model",
    "transcription": "--stt-model",
    "speech": "--tts-model",
    "rerank": "--reranker-model",
}

_ENDPOINTS: Final = {
    (MLX_LM, "chat"): (CHAT_PATH, "/v1/completions"),
    (MLX_VLM, "chat"): (CHAT_PATH, "/v1/responses", "/v1/messages"),
    (MLX_VLM, "embedding"): (EMBEDDINGS_PATH,),
    (MLX_VLM, "transcription"): (TRANSCRIPTIONS_PATH,),
    (MLX_VLM, "speech"): ("/v1/audio/speech",),
    (MLX_VLM, "rerank"): ("/v1/rerank",),
}
#: Every POST endpoint the gateway relays, for some engine and role.
ALL_ENDPOINTS: Final = tuple(dict.fromkeys(p for paths in _ENDPOINTS.values() for p in paths))


def endpoints(engine: str, role: str) -> tuple[str, ...]:
    """The POST paths a model of this engine and role serves (none: not a valid pair)."""
    return _ENDPOINTS.get((engine, role), ())


# mlx_vlm.server's flags a manifest may set. Not here on purpose: --host/--port/--api-key
# (mlxpin's), the role flags and --adapter-path/--draft-model/--model-dir (the manifest's
# pinned paths only), --reload.
VLM_SERVER_OPTIONS: Final[dict[str, ServerOption]] = {
    **{k: SERVER_OPTIONS[k] for k in ("max_tokens", "trust_remote_code", "log_level")},
    **{k: SERVER_OPTIONS[k] for k in ("prefill_step_size", "kv_group_size", "quantized_kv_start")},
    "kv_bits": ServerOption(
        "--kv-bits", "float", "KV cache quantization bits (3.5: TurboQuant)", 1, 8
    ),
    "max_kv_size": ServerOption("--max-kv-size", "int", "KV cache size in tokens", 1),
    "vision_cache_size": ServerOption("--vision-cache-size", "int", "cached vision features", 0),
    "min_pixels": ServerOption("--min-pixels", "int", "default minimum image pixel area", 1),
    "max_pixels": ServerOption("--max-pixels", "int", "default maximum image pixel area", 1),
    "enable_thinking": ServerOption("--enable-thinking", "bool", "thinking mode by default"),
    "thinking_budget": ServerOption(
        "--thinking-budget", "int", "tokens allowed in a thinking block", 0
    ),
    "max_num_seqs": ServerOption("--max-num-seqs", "int", "sequences decoded at once", 1),
    "top_logprobs_k": ServerOption(
        "--top-logprobs-k", "int", "cap for per-token top_logprobs", 0, 20
    ),
}

SERVER_TABLES: Final = {MLX_LM: SERVER_OPTIONS, MLX_VLM: VLM_SERVER_OPTIONS}
