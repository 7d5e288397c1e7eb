"""Putting the canonical label back into what a model server answers (pure, no I/O).

``mlx_lm.server`` echoes the ``"model"`` it was sent -- the snapshot path. Clients must see
the api_label they asked for: :class:`Rewriter` rewrites one JSON payload,
:class:`SseRelay` a stream of SSE bytes chunk by chunk (holding at most one incomplete
line), and :func:`rewrite_json` a whole non-streaming answer (also turning mlx_lm's
``{"error": "<text>"}`` into OpenAI's error object).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Final

__all__ = ["MAX_SSE_LINE_BYTES", "Rewriter", "SseRelay", "has_done_line", "rewrite_json"]

#: An SSE line longer than this is relayed untouched instead of being held for rewriting.
MAX_SSE_LINE_BYTES: Final = 16 * 1024 * 1024


class Rewriter:
    """Puts the canonical label into upstream JSON, as cheaply as is safe.

    For SSE events the common case is a byte substitution: ``mlx_lm.server`` writes
    ``json.dumps(resp)`` (default separators, ASCII-escaped), so its top-level pair reads
    exactly ``"model": <json.dumps(upstream_model)>``. In valid JSON that byte sequence,
    when the quote before ``model`` is not escaped, can only be a ``"model"`` key with that
    exact value; when it occurs exactly once it is the one we must rewrite. Anything else
    (other formatting, several matches, a preceding backslash) takes the general path:
    ``json.loads`` + ``json.dumps``. Both paths are tested to agree.
    """

    __slots__ = ("forms", "label", "label_json", "model", "needle", "replacement")

    def __init__(self, label: str, upstream_model: str) -> None:
        self.label = label
        self.model = upstream_model
        self.needle = b'"model": ' + json.dumps(upstream_model).encode()
        self.label_json = json.dumps(label).encode()
        self.replacement = b'"model": ' + self.label_json
        #: The pair as json.dumps writes it, then compactly (as pydantic does).
        self.forms = (
            (self.needle, self.replacement),
            (self.needle.replace(b": ", b":", 1), self.replacement.replace(b": ", b":", 1)),
        )

    def fast(self, payload: bytes) -> bytes | None:
        """The payload with its one ``"model": <path>`` pair relabelled, or None when that
        is not certain. Each form costs one pass over the payload: an embeddings answer
        (megabytes of floats for a real model's batch) names its model at the end, a
        completion at the start, and ``rfind`` then a ``find`` that stops at its match
        read each byte once (counting, finding and replacing read it three times)."""
        for needle, replacement in self.forms:
            at = payload.rfind(needle)
            if at <= 0 or payload[at - 1] == 0x5C:  # absent, or preceded by a backslash
                continue
            if payload.find(needle, 0, at + len(needle) - 1) < 0:  # the only one
                return payload[:at] + replacement + payload[at + len(needle) :]
        return None

    def event_payload(self, payload: bytes) -> bytes:
        """Rewrite one SSE ``data:`` payload (without the ``data:`` prefix)."""
        fast = self.fast(payload)
        if fast is not None:
            return fast
        try:
            obj = json.loads(payload)
        except (ValueError, RecursionError):
            return payload  # not JSON: relay untouched
        if isinstance(obj, dict) and "model" in obj:
            obj["model"] = self.label
            return json.dumps(obj, separators=(",", ":")).encode()
        if isinstance(obj, dict) and self._nested(obj):
            return json.dumps(obj, separators=(",", ":")).encode()
        return payload

    def _nested(self, obj: dict[str, object]) -> bool:
        """Relabel the server's path one level down (Responses and Messages events carry
        it in ``response.model`` / ``message.model``); True if anything changed."""
        changed = False
        for value in obj.values():
            if isinstance(value, dict) and value.get("model") == self.model:
                value["model"] = self.label
                changed = True
        return changed

    def sse_block(self, block: bytes) -> bytes:
        """Rewrite a run of complete SSE lines (``block`` ends with a newline)."""
        if b"data:" not in block:  # keep-alive comments, blank lines
            return block
        lines = block.split(b"\n")
        for i, line in enumerate(lines):
            if not line.startswith(b"data:"):
                continue
            cr = line.endswith(b"\r")
            raw = line[5:-1] if cr else line[5:]
            lead = b" " if raw.startswith(b" ") else b""
            payload = raw[1:] if lead else raw
            if not payload.startswith(b"{"):
                continue  # "[DONE]" and anything that is not an object pass untouched
            new = self.event_payload(payload)
            if new is not payload:
                lines[i] = b"data:" + lead + new + (b"\r" if cr else b"")
        return b"\n".join(lines)


class SseRelay:
    """Per-stream state: holds at most one incomplete line between upstream reads."""

    __slots__ = ("done", "on_done", "pending", "rewriter")

    def __init__(self, rewriter: Rewriter, on_done: Callable[[], object] | None = None) -> None:
        self.rewriter = rewriter
        self.on_done = on_done
        """Called once, before the block holding ``data: [DONE]`` is returned."""
        self.pending = b""
        self.done = False

    def _check_done(self, block: bytes) -> None:
        if not self.done and b"[DONE]" in block and has_done_line(block):
            self.done = True
            if self.on_done is not None:
                self.on_done()

    def feed(self, chunk: bytes) -> bytes:
        """The rewritten complete lines of ``pending + chunk``; keeps the incomplete rest."""
        cut = chunk.rfind(b"\n")
        if cut < 0:
            self.pending += chunk
            if len(self.pending) <= MAX_SSE_LINE_BYTES:
                return b""
            out, self.pending = self.pending, b""  # absurdly long line: relay untouched
            return out
        head = chunk[: cut + 1]
        if self.pending:
            head = self.pending + head
        self.pending = chunk[cut + 1 :]
        self._check_done(head)
        return self.rewriter.sse_block(head)

    def finish(self) -> bytes:
        """Whatever is left when the upstream ends (a last line without newline)."""
        rest, self.pending = self.pending, b""
        if not rest:
            return b""
        self._check_done(rest)
        return self.rewriter.sse_block(rest + b"\n")[:-1]


def has_done_line(block: bytes) -> bool:
    return any(
        line.startswith(b"data:") and line[5:].strip() == b"[DONE]" for line in block.split(b"\n")
    )


def rewrite_json(
    status: int, raw: bytes, label: str, rewriter: Rewriter | None = None
) -> bytes | None:
    """The upstream JSON answer with the canonical label, or None if it is not JSON.
    With a ``rewriter``, a 2xx answer naming the server's path once is relabelled by bytes
    (an embeddings answer is mostly floats: parsing it would cost more than the relay)."""
    if rewriter is not None and status < 400:
        fast = rewriter.fast(raw)
        if fast is not None:
            return fast
    try:
        obj = json.loads(raw)
    except (ValueError, RecursionError):
        return None
    if isinstance(obj, dict):
        if status < 400 or "model" in obj:
            obj["model"] = label
        err = obj.get("error")
        if status >= 400 and isinstance(err, str):
            # mlx_lm.server answers {"error": "<text>"}; clients expect OpenAI's shape.
            obj["error"] = {
                "message": err,
                "type": "server_error" if status >= 500 else "invalid_request_error",
                "param": None,
                "code": None,
            }
    return json.dumps(obj, separators=(",", ":")).encode()
