"""What one client request through the gateway was, for metrics, the status page and the
access log (design §15). Only completions a client sent are recorded: the warm-up a start
makes goes straight to the server, past the gateway. Tokens are the engine's ``usage``; a
stream carries it only when the client asked (``stream_options.include_usage``)."""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass

__all__ = ["Exchange"]

_DECODER = json.JSONDecoder()


@dataclass(slots=True)
class Exchange:
    """One completion request, filled in as it goes; times are ``perf_counter`` seconds."""

    endpoint: str
    started: float
    label: str = ""  # the canonical api_label ("" when the request named no known model)
    stream: bool = False
    status: int = 0
    duration_s: float = 0.0
    first_byte: float | None = None  # streams: when the first event went to the client
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    answer: bytes | None = None  # a JSON answer whose usage is still to be read

    @property
    def ttft_s(self) -> float | None:
        return None if self.first_byte is None else self.first_byte - self.started

    @property
    def tokens_per_s(self) -> float | None:
        """Generated tokens over the time spent generating (after the first token for a
        stream, the whole request otherwise); None without usage."""
        if not self.completion_tokens:
            return None
        ttft = self.ttft_s
        spent = self.duration_s - ttft if ttft is not None else self.duration_s
        tokens = self.completion_tokens - (1 if ttft is not None else 0)
        return tokens / spent if spent > 0 and tokens > 0 else None

    def take_usage(self, obj: object) -> None:
        usage = obj.get("usage") if isinstance(obj, dict) else None
        if isinstance(usage, dict):
            prompt, completion = usage.get("prompt_tokens"), usage.get("completion_tokens")
            if isinstance(prompt, int) and isinstance(completion, int):
                self.prompt_tokens, self.completion_tokens = prompt, completion

    def json_body(self, body: bytes) -> None:
        """Take ``usage`` from a JSON answer, parsing only that object: an embeddings
        answer is mostly floats, and parsing it all cost more than relaying it."""
        at = body.rfind(b'"usage"')
        start = body.find(b"{", at)
        if at < 0 or start < 0 or body[at + 7 : start].strip() != b":":
            return
        with contextlib.suppress(ValueError, RecursionError):
            usage, _ = _DECODER.raw_decode(body[start:].decode("utf-8", "replace"))
            self.take_usage({"usage": usage})

    def sse_block(self, block: bytes) -> None:
        """Look for ``usage`` in relayed SSE lines (called only when they mention it)."""
        for line in block.split(b"\n"):
            if line.startswith(b"data:") and b'"usage"' in line:
                with contextlib.suppress(ValueError, RecursionError):
                    self.take_usage(json.loads(line[5:]))

    def access_line(self) -> str:
        tokens = (
            "-"
            if self.completion_tokens is None
            else f"{self.prompt_tokens}+{self.completion_tokens}"
        )
        tps = self.tokens_per_s
        return (
            f"{self.label or '-'} {self.endpoint} {self.status} {self.duration_s * 1000:.0f}ms "
            f"tokens={tokens} tok/s={'-' if tps is None else f'{tps:.1f}'}"
            + (" stream" if self.stream else "")
        )

    def summary(self, wall: float) -> dict[str, object]:
        """Its entry in the status page's recent requests."""
        ttft, tps = self.ttft_s, self.tokens_per_s
        return {
            "time": wall,
            "endpoint": self.endpoint,
            "status": self.status,
            "stream": self.stream,
            "ms": round(self.duration_s * 1000, 1),
            "ttft_ms": None if ttft is None else round(ttft * 1000, 1),
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "tokens_per_s": None if tps is None else round(tps, 1),
        }
