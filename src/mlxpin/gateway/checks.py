"""Request checks: what the gateway refuses before any server sees it (pure).

``mlx_lm.server`` resolves some request fields to weights it would load (``draft_model``,
``adapters``...) or URLs it would fetch (image parts): the manifest decides weights and
``launch`` promises no network, so those are refused; inline ``data:`` images pass.
"""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Final

from mlxpin.gateway.apierrors import ApiError
from mlxpin.gateway.backends import Route
from mlxpin.gateway.routing import RoutingTable
from mlxpin.gateway.values import check_values

__all__ = [
    "PINNED_FIELDS",
    "FormPart",
    "check_form",
    "check_request",
    "encode_form",
    "parse_body",
    "remote_image_url",
]

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


def check_request(
    raw: bytes, table: RoutingTable, path: str = "/v1/chat/completions"
) -> tuple[Route, dict[str, Any]] | ApiError:
    """Parse and check one JSON request to POST ``path``; the route it goes to and its body
    (for mlx-vlm, without the fields that would load other weights)."""
    body = parse_body(raw)
    if isinstance(body, ApiError):
        return body
    route = table.resolve(body.get("model"))
    if isinstance(route, ApiError):
        return route
    refused = table.served(route, path, body.get("model") or route.api_label)
    if refused is not None:
        return refused
    if len(raw) > route.max_body_bytes:
        return ApiError(413, "Request body is too large", "request_too_large")
    if route.engine != "mlx-lm":
        for name in PINNED_FIELDS:
            body.pop(name, None)
        return _remote_media(body) or (route, body)
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


# Keys whose string value mlx_vlm.server loads as media: a URL it fetches, or any other
# string opened as a local file. Only inline data: URLs pass.
_MEDIA_KEYS: Final = frozenset(
    {"image_url", "image", "url", "audio_url", "video_url", "video", "input_video", "ref_audio"}
)
# Top-level fields that hold schemas and settings, never media.
_NOT_MEDIA: Final = frozenset({"tools", "tool_choice", "response_format", "text", "metadata"})
_BASE64: Final = re.compile(r"[A-Za-z0-9+/=\s]*")


def _media_problem(value: object, key: str | None) -> str | None:
    """The first media reference in ``value`` that is not inline, shown; walks it all."""
    if isinstance(value, dict):
        for k, v in value.items():
            if k in {"input_audio", "source"} and isinstance(v, dict):
                data = v.get("data")
                if isinstance(data, str) and not (
                    data.startswith("data:") or (_BASE64.fullmatch(data) and data[:1] != "/")
                ):
                    return data
            found = _media_problem(v, k)
            if found is not None:
                return found
    elif isinstance(value, list):
        for item in value:
            found = _media_problem(item, key)
            if found is not None:
                return found
    elif isinstance(value, str) and key in _MEDIA_KEYS and not value.startswith("data:"):
        return value
    return None


def _remote_media(body: dict[str, Any]) -> ApiError | None:
    for key, value in body.items():
        found = None if key in _NOT_MEDIA else _media_problem(value, key)
        if found is not None:
            return ApiError(
                400,
                f"Media is not fetched or read from files ({found[:100]!r}): "
                "send it inline as a data: URL (or base64)",
                "unsupported_parameter",
                key,
            )
    return None


@dataclass(frozen=True)
class FormPart:
    name: str
    filename: str | None
    content_type: str | None
    data: bytes


def parse_form(raw: bytes, content_type: str) -> list[FormPart] | ApiError:
    """A multipart/form-data body as its parts, or a 400."""
    if not content_type.lower().startswith("multipart/form-data"):
        return ApiError(400, "This endpoint takes multipart/form-data", "invalid_request")
    # Here, not at the top: a request waiting at boot is checked before its model is
    # spawned (gateway.waiting), and only transcriptions are multipart.
    from email.parser import BytesParser
    from email.policy import HTTP

    head = b"Content-Type: " + content_type.encode("latin-1", "replace") + b"\r\n\r\n"
    message = BytesParser(policy=HTTP).parsebytes(head + raw)
    if not message.is_multipart():
        return ApiError(400, "Invalid multipart form", "invalid_request")
    parts: list[FormPart] = []
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        payload = part.get_payload(decode=True)
        if not isinstance(name, str) or not isinstance(payload, bytes):
            return ApiError(400, "Invalid multipart form", "invalid_request")
        ctype = part.get("Content-Type")
        parts.append(
            FormPart(name, part.get_filename(), None if ctype is None else str(ctype), payload)
        )
    return parts


def check_form(
    raw: bytes, content_type: str, table: RoutingTable, path: str
) -> tuple[Route, list[FormPart]] | ApiError:
    """Like :func:`check_request`, for a multipart form (its ``model`` field names it)."""
    parts = parse_form(raw, content_type)
    if isinstance(parts, ApiError):
        return parts
    models = [p.data.decode("utf-8", "replace") for p in parts if p.name == "model"]
    route = table.resolve(models[0] if models else None)
    if isinstance(route, ApiError):
        return route
    refused = table.served(route, path, models[0] if models else route.api_label)
    if refused is not None:
        return refused
    if len(raw) > route.max_body_bytes:
        return ApiError(413, "Request body is too large", "request_too_large")
    return route, [p for p in parts if p.name != "model" and p.name not in PINNED_FIELDS]


def encode_form(parts: list[FormPart], model: str) -> tuple[bytes, str]:
    """The form with ``model`` first, as (body, content type)."""
    boundary = "mlxpin-" + secrets.token_hex(16)
    out = bytearray()
    for part in [FormPart("model", None, None, model.encode()), *parts]:
        disposition = f'form-data; name="{_quoted(part.name)}"'
        if part.filename is not None:
            disposition += f'; filename="{_quoted(part.filename)}"'
        out += f"--{boundary}\r\nContent-Disposition: {disposition}\r\n".encode()
        if part.content_type:
            out += f"Content-Type: {part.content_type}\r\n".encode()
        out += b"\r\n" + part.data + b"\r\n"
    out += f"--{boundary}--\r\n".encode()
    return bytes(out), f"multipart/form-data; boundary={boundary}"


def _quoted(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', "%22").replace("\r", "").replace("\n", "")
