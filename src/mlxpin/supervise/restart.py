"""When to restart a crashed model server, and when to give up (pure, no I/O, no clock).

A server that exits is restarted after a delay that doubles from ``backoff_initial_s`` up
to ``backoff_max_s`` (and starts over after a run longer than the budget window). Two
budgets end it (``launch`` then exits 70, so a boot unit does not loop forever):

- more than ``restart_budget`` exits within ``budget_window_s``;
- more than ``restart_budget`` starts in a row that never answered a warm-up (a model
  that cannot load crashes slowly, so the window alone would not catch it).

An exit while a client's request was in flight is restarted after ``backoff_initial_s``
and spends neither budget: a request the gateway let through (a value it does not know
to refuse) must not let six clients end the run for good (issue #26 item 3).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from mlxpin.errors import Run

__all__ = ["GiveUp", "Restart", "RestartBudget", "RestartPolicy"]


@dataclass(frozen=True)
class RestartPolicy:
    ready_timeout_s: float = 900.0  # loading a 31B model from disk can take minutes
    backoff_initial_s: float = 1.0
    backoff_max_s: float = 60.0
    restart_budget: int = 5  # crashes tolerated ...
    budget_window_s: float = 600.0  # ... within this window
    stop_timeout_s: float = 10.0
    warm_up_errors: int = 20  # error answers in a row (5 s at 0.25 s) before a start fails


@dataclass(frozen=True)
class Restart:
    """Start the server again after ``delay_s``."""

    delay_s: float


@dataclass(frozen=True)
class GiveUp:
    """Stop trying: the budget is spent."""

    message: str
    hint: str


class RestartBudget:
    """The crash history of one server and the decision after each exit."""

    def __init__(self, policy: RestartPolicy) -> None:
        self.policy = policy
        self.crashes: deque[float] = deque()
        self.never_ready = 0  # failed starts in a row that never answered a warm-up
        self.delay = policy.backoff_initial_s

    def after_exit(
        self,
        name: str,
        code: int | None,
        *,
        started: float,
        now: float,
        was_ready: bool,
        during_request: bool = False,
    ) -> Restart | GiveUp:
        """What to do after the server (started at ``started``) exited at ``now``."""
        policy = self.policy
        if was_ready and during_request:
            self.never_ready = 0
            return Restart(policy.backoff_initial_s)
        self.crashes.append(now)
        while self.crashes and now - self.crashes[0] > policy.budget_window_s:
            self.crashes.popleft()
        self.never_ready = 0 if was_ready else self.never_ready + 1
        if self.never_ready > policy.restart_budget:
            return GiveUp(
                f"{name}: mlx_lm.server failed {self.never_ready} starts in a row "
                f"without ever answering (last exit code {code}); giving up",
                "read the server's log above: the model may not load with this mlx-lm",
            )
        if len(self.crashes) > policy.restart_budget:
            return GiveUp(
                f"{name}: mlx_lm.server exited {len(self.crashes)} times within "
                f"{policy.budget_window_s:.0f} s (last exit code {code}); giving up",
                f"read the server's log above; {Run.of('launch', '--verify')} re-checks the files",
            )
        if now - started > policy.budget_window_s:
            self.delay = policy.backoff_initial_s
        delay, self.delay = self.delay, min(self.delay * 2, policy.backoff_max_s)
        return Restart(delay)
