"""The `[models.x.server]` keys and the server flags they become, for each engine. Only
these are accepted, so a manifest never injects argv; the flags mlxpin sets itself are
left out. Read only for a model with a [server] table, and to launch one."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final, Literal

from mlxpin.project.engines import MLX_LM, MLX_VLM

ServerValue = bool | int | float | str | tuple[str, ...] | dict[str, object]


@dataclass(frozen=True)
class ServerOption:
    """One `[models.x.server]` option the engine accepts."""

    flag: str
    kind: Literal["int", "float", "bool", "str", "json_object", "str_list", "choice"]
    help: str
    minimum: float | None = None
    maximum: float | None = None
    choices: tuple[str, ...] = ()


SERVER_OPTIONS: dict[str, ServerOption] = {
    "max_tokens": ServerOption("--max-tokens", "int", "default maximum tokens per answer", 1),
    "temp": ServerOption("--temp", "float", "default sampling temperature", 0.0, 10.0),
    "top_p": ServerOption("--top-p", "float", "default nucleus top-p", 0.0, 1.0),
    "top_k": ServerOption("--top-k", "int", "default top-k (0 disables)", 0),
    "min_p": ServerOption("--min-p", "float", "default min-p (0 disables)", 0.0, 1.0),
    "chat_template": ServerOption("--chat-template", "str", "a chat template to use"),
    "use_default_chat_template": ServerOption(
        "--use-default-chat-template", "bool", "use the tokenizer's default template"
    ),
    "chat_template_args": ServerOption(
        "--chat-template-args", "json_object", "arguments for apply_chat_template"
    ),
    "trust_remote_code": ServerOption(
        "--trust-remote-code", "bool", "run code shipped with the tokenizer (off by default)"
    ),
    "log_level": ServerOption(
        "--log-level",
        "choice",
        "server log level (above INFO: no access line per request)",
        choices=("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"),
    ),
    "num_draft_tokens": ServerOption(
        "--num-draft-tokens", "int", "tokens drafted per step with a draft model", 1
    ),
    "decode_concurrency": ServerOption("--decode-concurrency", "int", "parallel decodes", 1),
    "prompt_concurrency": ServerOption("--prompt-concurrency", "int", "parallel prompts", 1),
    "prefill_step_size": ServerOption("--prefill-step-size", "int", "prefill step size", 1),
    "prompt_cache_size": ServerOption("--prompt-cache-size", "int", "distinct KV caches", 1),
    "prompt_cache_bytes": ServerOption("--prompt-cache-bytes", "int", "KV cache bytes", 1),
    "kv_bits": ServerOption("--kv-bits", "int", "KV cache quantization bits", 1, 8),
    "kv_group_size": ServerOption("--kv-group-size", "int", "KV quantization group size", 1),
    "quantized_kv_start": ServerOption(
        "--quantized-kv-start", "int", "token position where KV quantization starts", 0
    ),
    "allowed_origins": ServerOption("--allowed-origins", "str_list", "CORS allowed origins"),
}


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


def _json_safe(value: object) -> bool:
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError, RecursionError):
        return False
    return True


def _in_range(option: ServerOption, value: float) -> tuple[ServerValue | None, str | None]:
    if option.minimum is not None and value < option.minimum:
        return None, f"must be ≥ {option.minimum:g}"
    if option.maximum is not None and value > option.maximum:
        return None, f"must be ≤ {option.maximum:g}"
    return value, None


# mlx_lm.server parses its argv with argparse, which reads a value starting with '-' as
# the next flag: `--chat-template -x` fails every start (and `--host` would be one).
_DASH = "must not start with '-' (mlx_lm.server would read it as a flag)"


def check_server_value(
    key: str, value: object, table: Mapping[str, ServerOption] = SERVER_OPTIONS
) -> tuple[ServerValue | None, str | None]:
    """Validate one option; returns (normalised value, None) or (None, problem)."""
    option = table[key]
    kind = option.kind
    if kind == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            return None, "must be an integer"
        return _in_range(option, int(value))
    if kind == "float":
        if isinstance(value, bool) or not isinstance(value, int | float):
            return None, "must be a number"
        if not math.isfinite(value):
            return None, "must be a finite number"
        return _in_range(option, float(value))
    if kind == "bool":
        return (value, None) if isinstance(value, bool) else (None, "must be true or false")
    if kind == "choice":
        if not isinstance(value, str) or value.upper() not in option.choices:
            return None, "must be one of " + ", ".join(option.choices)
        return value.upper(), None
    if kind == "json_object":
        if not isinstance(value, dict) or not _json_safe(value):
            return None, "must be a table of plain values, e.g. { enable_thinking = false }"
        return dict(value), None
    if kind == "str":
        if not isinstance(value, str) or not value or "\0" in value:
            return None, "must be a non-empty string"
        return (None, _DASH) if value.startswith("-") else (value, None)
    if (
        not isinstance(value, list)
        or not value
        or not all(isinstance(v, str) and v and "," not in v for v in value)
    ):
        return None, 'must be a non-empty list of strings without commas, e.g. ["*"]'
    dashed = [v for v in value if v.startswith("-")]
    return (None, f"{dashed[0]!r} {_DASH}") if dashed else (tuple(value), None)


def server_argv(
    options: tuple[tuple[str, ServerValue], ...], table: Mapping[str, ServerOption] = SERVER_OPTIONS
) -> list[str]:
    """Turn validated options into server flags, in a stable order."""
    argv: list[str] = []
    for key, value in sorted(options):
        option = table[key]
        if option.kind == "bool":
            if value:
                argv.append(option.flag)
        elif option.kind == "json_object":
            argv += [option.flag, json.dumps(value, sort_keys=True, separators=(",", ":"))]
        elif option.kind == "str_list":
            assert isinstance(value, tuple)
            argv += [option.flag, ",".join(value)]
        else:
            argv += [option.flag, str(value)]
    return argv
