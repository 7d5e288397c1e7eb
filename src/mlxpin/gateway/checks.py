"""Request checks: what the gateway refuses before any server sees it (pure).

``mlx_lm.server`` resolves some request fields to weights it would load (``draft_model``,
``adapters``...) or URLs it would fetch (image parts): the manifest decides weights and
``launch`` promises no network, so those are refused; inline ``data:`` images pass.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any, Final

from mlxpin.gateway.apierrors import ApiError
from mlxpin.gateway.backends import Route
from mlxpin.gateway.routing import RoutingTable
from mlxpin.gateway.values import check_values

__all__ = ["PINNED_FIELDS", "check_request", "parse_body", "remote_image_url"]

# Request fields mlx_lm.server would resolve to other weights to load.
PINNED_FIELDS: Final = frozenset({"draft_model", "adapters", "adapter", "adapter_path"})

_IMAGE_PART_TYPES: Final = frozenset({"image_url", "input_image", "image"})


def parse_body(raw: bytes) -> dict[str, Any] | ApiError:
    """The request body as a JSON object, or a 400."""
    try:
        body: Any = json.loads(raw)
    except (ValueError, RecursionError):  # JSONDecodeError, UnicodeDecodeError, too deep
        return ApiError(400, "The request body is not valid JSON", "invalid_json")
    if not isinstance(body, dict):
        return ApiError(400, "The request body must be a JSON object", "invalid_json")
    return body


def _content_parts(messages: object) -> Iterator[object]:
    """Every part of every list-valued ``content`` of chat messages."""
    if not isinstance(messages, list):
        return
    for message in messages:
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, list):
            yield from content


def remote_image_url(messages: object) -> str | None:
    """The first image URL in chat messages that is not an inline data: URL."""
    for part in _content_parts(messages):
        kind = part.get("type") if isinstance(part, dict) else None
        if not isinstance(part, dict) or not isinstance(kind, str) or kind not in _IMAGE_PART_TYPES:
            continue
        url = part.get("image_url", part.get("image"))
        if isinstance(url, dict):
            url = url.get("url")
        if url is not None and not (isinstance(url, str) and url.startswith("data:")):
            return url if isinstance(url, str) else json.dumps(url)[:200]
    return None


def _pinned_field(body: dict[str, Any]) -> ApiError | None:
    pinned = PINNED_FIELDS.intersection(body)
    if not pinned:
        return None
    # mlx_lm.server would load these as repos or paths (and unload the pinned model
    # first), exactly like an unknown "model": the manifest decides them.
    field = sorted(pinned)[0]
    return ApiError(
        400,
        f"'{field}' cannot be chosen per request: this endpoint serves a pinned "
        "model, draft model and adapter (see the mlxpin manifest)",
        "unsupported_parameter",
        field,
    )


def _content_types(messages: object) -> ApiError | None:
    """Every content part's ``type`` must be a string (the server indexes on it)."""
    for part in _content_parts(messages):
        if isinstance(part, dict) and not isinstance(part.get("type", ""), str):
            return ApiError(
                400,
                'Every content part needs a string \'type\' (e.g. "text" or "image_url")',
                "invalid_value",
                "messages",
            )
    return None


def check_request(raw: bytes, table: RoutingTable) -> tuple[Route, dict[str, Any]] | ApiError:
    """Parse and check one completion request; the route it goes to and its body."""
    body = parse_body(raw)
    if isinstance(body, ApiError):
        return body
    route = table.resolve(body.get("model"))
    if isinstance(route, ApiError):
        return route
    if len(raw) > route.max_body_bytes:
        return ApiError(413, "Request body is too large", "request_too_large")
    messages = body.get("messages")
    problem = check_values(body, route.vocab_size) or _content_types(messages)
    if problem is not None:
        return problem
    remote = remote_image_url(messages)
    if remote is not None:
        return ApiError(
            400,
            f"Image URLs are not fetched ({remote[:100]!r}): send the image inline as a data: URL",
            "unsupported_parameter",
            "messages",
        )
    return _pinned_field(body) or (route, body)
