"""OpenAI-style error answers (pure data; the gateway turns them into HTTP responses).

Every refusal and failure a client sees has the shape OpenAI's clients parse::

    {"error": {"message": "...", "type": "invalid_request_error", "param": null, "code": "..."}}
"""

from __future__ import annotations

import json
from dataclasses import dataclass

__all__ = ["ApiError", "error_body"]


def error_body(message: str, type_: str, code: str | None, param: str | None = None) -> bytes:
    """The JSON bytes of one OpenAI-style error."""
    err = {"error": {"message": message, "type": type_, "param": param, "code": code}}
    return json.dumps(err, separators=(",", ":")).encode()


@dataclass(frozen=True)
class ApiError:
    """A refusal or failure, as the client will see it."""

    status: int
    message: str
    code: str
    param: str | None = None
    headers: tuple[tuple[str, str], ...] = ()

    @property
    def type(self) -> str:
        """OpenAI's error type: the client's fault below 500, ours from 500."""
        return "server_error" if self.status >= 500 else "invalid_request_error"

    def body(self) -> bytes:
        return error_body(self.message, self.type, self.code, self.param)
