"""OpenAI-style error answers (pure data; the gateway turns them into HTTP responses):
``{"error": {"message": "...", "type": "invalid_request_error", "param": null, "code": "..."}}``
"""

from __future__ import annotations

import json
from dataclasses import dataclass

__all__ = ["ApiError"]


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
        err = {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }
        return json.dumps(err, separators=(",", ":")).encode()
