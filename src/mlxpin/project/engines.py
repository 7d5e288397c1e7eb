"""Engines: which server program runs a model and what each role of it serves (design
§13); the `[models.x.server]` options each engine accepts are in `serveropts`.

`mlx-lm` (`mlx_lm.server`) serves chat only; `mlx-vlm` (`python -m mlx_vlm.server`, >= 0.7)
serves chat with images/audio, embeddings, transcription, speech and rerank, one role per
model, preloaded with the role's own flag.
"""

from __future__ import annotations

from typing import Final

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
