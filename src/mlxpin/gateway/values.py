"""Request values the engine would accept but cannot survive (pure, but for
:func:`read_vocab_size`).

``mlx_lm.server`` checks the types of sampling fields and some of their ranges; a
``logit_bias`` token id past the vocabulary indexes past the logits and kills the process
(SIGSEGV on Linux CPU), and NaN passes its range checks. So the gateway checks each field
against the range the engine accepts (its ``validate_model_parameters``, a little
tighter where the engine's own bound is unsafe) and answers 400 naming the field.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

from mlxpin.gateway.apierrors import ApiError

__all__ = ["check_values", "read_vocab_size"]

_INF: Final = math.inf
#: field: (lowest, highest, whole numbers only, what the message says)
_RANGES: Final[dict[str, tuple[float, float, bool, str]]] = {
    "max_tokens": (1, _INF, True, "a whole number of at least 1"),
    "max_completion_tokens": (1, _INF, True, "a whole number of at least 1"),
    "n": (1, 1, True, "1 (one choice per request)"),
    "temperature": (0, _INF, False, "a number of at least 0"),
    "top_p": (math.ulp(0.0), 1, False, "a number above 0 and at most 1"),
    "top_k": (0, _INF, True, "a whole number of at least 0"),
    "min_p": (0, 1, False, "a number from 0 to 1"),
    "repetition_penalty": (0, _INF, False, "a number of at least 0"),
    "presence_penalty": (-_INF, _INF, False, "a finite number"),
    "frequency_penalty": (-_INF, _INF, False, "a finite number"),
    "repetition_context_size": (0, _INF, True, "a whole number of at least 0"),
    "presence_context_size": (0, _INF, True, "a whole number of at least 0"),
    "frequency_context_size": (0, _INF, True, "a whole number of at least 0"),
    "top_logprobs": (-1, 11, True, "a whole number from 0 to 11"),
    "seed": (0, 2**64 - 1, True, "a whole number from 0 to 2**64-1"),
    "xtc_probability": (0, 1, False, "a number from 0 to 1"),
    "xtc_threshold": (0, 1, False, "a number from 0 to 1"),
    "num_draft_tokens": (0, _INF, True, "a whole number of at least 0"),
}


def _strings(value: object) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


#: field: (its type is right, what the message says). The engine checks some of these
#: only on its generation thread, which a wrong one kills for every later request.
_TYPES: Final[dict[str, tuple[Callable[[Any], bool], str]]] = {
    "stop": (lambda v: isinstance(v, str) or _strings(v), "a string or a list of strings"),
    "stream": (lambda v: isinstance(v, bool), "true or false"),
    "logprobs": (lambda v: isinstance(v, bool), "true or false"),
    "stream_options": (
        lambda v: isinstance(v, dict) and isinstance(v.get("include_usage", False), bool),
        'an object such as {"include_usage": true}',
    ),
    "chat_template_kwargs": (lambda v: isinstance(v, dict), "an object"),
    "tools": (lambda v: isinstance(v, list), "a list"),
    "role_mapping": (
        lambda v: isinstance(v, dict) and _strings(list(v.values())),
        "an object of strings",
    ),
    "messages": (
        lambda v: isinstance(v, list) and all(isinstance(m, dict) for m in v),
        "a list of message objects",
    ),
}


def _number_ok(value: object, low: float, high: float, whole: bool) -> bool:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    if whole and not isinstance(value, int):
        return False
    return math.isfinite(value) and low <= value <= high


def _logit_bias(bias: object, vocab_size: int | None) -> str | None:
    """What is wrong with a logit_bias, or None."""
    if not isinstance(bias, dict):
        return "must be an object of token ids to numbers"
    top = f"below {vocab_size}" if vocab_size is not None else "of at least 0"
    for key, value in bias.items():
        try:
            token = int(key)
        except ValueError:
            token = -1
        if token < 0 or (vocab_size is not None and token >= vocab_size):
            return f"has token id {str(key)[:20]!r}: ids are whole numbers {top}"
        if not _number_ok(value, -_INF, _INF, False):
            return f"has a bias for token {token} that is not a finite number"
    return None


def check_values(body: dict[str, Any], vocab_size: int | None) -> ApiError | None:
    """A 400 naming the first field whose value the engine must not see."""
    for field, (low, high, whole, rule) in _RANGES.items():
        value = body.get(field)
        if value is not None and not _number_ok(value, low, high, whole):
            return ApiError(400, f"'{field}' must be {rule}", "invalid_value", field)
    for field, (right, rule) in _TYPES.items():
        if body.get(field) is not None and not right(body[field]):
            return ApiError(400, f"'{field}' must be {rule}", "invalid_value", field)
    if body.get("logit_bias") is not None:
        problem = _logit_bias(body["logit_bias"], vocab_size)
        if problem is not None:
            return ApiError(400, f"'logit_bias' {problem}", "invalid_value", "logit_bias")
    return None


def read_vocab_size(model_dir: Path) -> int | None:
    """``vocab_size`` from the model's config.json (or its text_config), or None."""
    try:
        config = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    for table in (config, config.get("text_config") if isinstance(config, dict) else None):
        size = table.get("vocab_size") if isinstance(table, dict) else None
        if isinstance(size, int) and not isinstance(size, bool) and size > 0:
            return size
    return None
