"""Counters and health of one served model, shared by the gateway and the pool.

Pure data on one asyncio loop (no locks): the gateway counts what it forwards and refuses,
the pool marks restarts, and a real completion marks the current start healthy.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["GatewayState"]


@dataclass(eq=False)
class GatewayState:
    """Mutable state shared by the gateway and the pool (one asyncio loop).

    ``healthy`` turns True only when a real completion succeeds; ``mark_restarting`` turns
    it False and starts a new *epoch*, so that a completion which began against the old
    server process cannot mark the new one healthy when it finishes late.
    """

    healthy: bool = False
    epoch: int = 0
    forwarded: int = 0
    """Requests sent on to the upstream."""
    rejected: int = 0
    """Requests answered by the gateway itself with a 4xx (auth, body, model, size, route)."""
    upstream_errors: int = 0
    """Forwarded requests that failed at the upstream (unreachable, timeout, malformed)."""
    completions_ok: int = 0
    """Upstream 200 completions relayed in full (warm-ups included)."""
    in_flight: int = 0
    restarts: int = 0

    def mark_restarting(self) -> None:
        """The server is going down (or coming up again): not healthy until a completion."""
        self.healthy = False
        self.epoch += 1
        self.restarts += 1

    def mark_healthy(self, epoch: int | None = None) -> bool:
        """Record a successful completion started in ``epoch`` (default: the current one).

        Returns False, changing nothing, if a restart happened since that epoch.
        """
        if epoch is not None and epoch != self.epoch:
            return False
        self.healthy = True
        self.completions_ok += 1
        return True

    def as_dict(self) -> dict[str, int | bool]:
        """A plain snapshot for ``status`` / ``--json``."""
        return {
            "healthy": self.healthy,
            "epoch": self.epoch,
            "restarts": self.restarts,
            "forwarded": self.forwarded,
            "rejected": self.rejected,
            "upstream_errors": self.upstream_errors,
            "completions_ok": self.completions_ok,
            "in_flight": self.in_flight,
        }
