"""Health of one served model, shared by the gateway and the pool.

Pure data on one asyncio loop (no locks): the pool marks restarts, and a real completion
marks the current start healthy.
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
    completions_ok: int = 0
    """Upstream 200 completions relayed in full (warm-ups included): a rank group's
    watchdog reads it as proof of progress."""

    def mark_restarting(self) -> None:
        """The server is going down (or coming up again): not healthy until a completion."""
        self.healthy = False
        self.epoch += 1

    def mark_healthy(self, epoch: int | None = None) -> bool:
        """Record a successful completion started in ``epoch`` (default: the current one).

        Returns False, changing nothing, if a restart happened since that epoch.
        """
        if epoch is not None and epoch != self.epoch:
            return False
        self.healthy = True
        self.completions_ok += 1
        return True
