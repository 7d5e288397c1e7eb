"""The pool's decisions, pure (no clock, no process, no I/O; tested alone): may a model
start, and which idle models must stop first (design §9).

A model *holds memory* while ``starting``, ``ready`` or ``stopping`` (until it exits). For
every decision: the models holding memory never number more than ``max_loaded`` nor cost
more than ``budget``; a model with a request in flight, a ``pinned`` one or a starting
one is never evicted. The runtime stops what it is told, waits for those to exit and
asks again, so the invariants hold between every two steps, not just in the end.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Literal

from mlxpin.errors import human_size

State = Literal["stopped", "starting", "ready", "stopping", "failed"]
HOLDING: frozenset[State] = frozenset({"starting", "ready", "stopping"})


@dataclass(frozen=True)
class ModelView:
    """What the policy knows of one model."""

    name: str
    state: State
    cost: int  # bytes it holds while loaded
    in_flight: int = 0  # requests being answered (streams included)
    last_used: float = 0.0  # monotonic time of the last request's end (or start)
    pinned: bool = False  # never evicted

    @property
    def holds_memory(self) -> bool:
        return self.state in HOLDING

    @property
    def evictable(self) -> bool:
        return self.state == "ready" and self.in_flight == 0 and not self.pinned


@dataclass(frozen=True)
class Limits:
    budget: int | None  # bytes; None: no budget
    max_loaded: int | None = None  # None: no limit on the number of servers


@dataclass(frozen=True)
class Start:
    """Start the target now: nothing needs to be stopped."""


@dataclass(frozen=True)
class Evict:
    """Stop these (least recently used first), wait for them to exit, then ask again."""

    names: tuple[str, ...]


@dataclass(frozen=True)
class Wait:
    """No room now; it will come when a busy, starting or stopping model frees it."""

    reason: str


@dataclass(frozen=True)
class Refuse:
    """It can never start (as things are): answer at once."""

    reason: str


@dataclass(frozen=True)
class Already:
    """The target is already starting or ready: nothing to decide."""


Decision = Start | Evict | Wait | Refuse | Already


def loaded(models: Iterable[ModelView]) -> tuple[int, int]:
    """(number, total cost) of the models that hold memory."""
    holding = [m for m in models if m.holds_memory]
    return len(holding), sum(m.cost for m in holding)


def fits(count: int, cost: int, limits: Limits) -> bool:
    within_count = limits.max_loaded is None or count <= limits.max_loaded
    return within_count and (limits.budget is None or cost <= limits.budget)


def plan_start(models: Mapping[str, ModelView], target: str, limits: Limits) -> Decision:
    """What must happen before ``target`` may start (see the module docstring)."""
    model = models[target]
    if model.state in ("starting", "ready"):
        return Already()
    if model.state == "failed":
        return Refuse(f"{target} failed and is not restarted")
    if limits.budget is not None and model.cost > limits.budget:
        return Refuse(
            f"{target} needs {human_size(model.cost)}, more than the whole memory budget "
            f"of {human_size(limits.budget)}"
        )
    if limits.max_loaded is not None and limits.max_loaded < 1:
        return Refuse("max_loaded is 0: no model may run")
    if model.state == "stopping":
        return Wait(f"{target} is stopping")
    others = [m for m in models.values() if m.name != target]
    count, cost = loaded(others)
    count, cost = count + 1, cost + model.cost
    if fits(count, cost, limits):
        return Start()
    chosen: list[str] = []
    for victim in sorted((m for m in others if m.evictable), key=lambda m: (m.last_used, m.name)):
        chosen.append(victim.name)
        count, cost = count - 1, cost - victim.cost
        if fits(count, cost, limits):
            return Evict(tuple(chosen))
    # Even stopping every idle model is not enough. Could it ever fit? Pinned models
    # never leave; everything else (busy, starting, stopping) eventually may.
    pinned = [m for m in others if m.pinned and m.holds_memory]
    if not fits(len(pinned) + 1, sum(m.cost for m in pinned) + model.cost, limits):
        return Refuse(f"{target} does not fit beside the models that are never stopped")
    busy = sorted(m.name for m in others if m.holds_memory and not m.evictable and not m.pinned)
    return Wait("no idle model to stop; waiting for " + ", ".join(busy))


def expired(
    models: Iterable[ModelView], now: float, idle_ttl: Mapping[str, float]
) -> tuple[str, ...]:
    """Ready, idle, unpinned models unused for at least their TTL (0 or absent: never)."""
    out: list[str] = []
    for m in models:
        ttl = idle_ttl.get(m.name, 0.0)
        if ttl > 0 and m.evictable and now - m.last_used >= ttl:
            out.append(m.name)
    return tuple(out)


def next_expiry(
    models: Iterable[ModelView], now: float, idle_ttl: Mapping[str, float]
) -> float | None:
    """Seconds until the next idle model expires (None: nothing will)."""
    waits = [
        max(0.0, m.last_used + idle_ttl[m.name] - now)
        for m in models
        if idle_ttl.get(m.name, 0.0) > 0 and m.evictable
    ]
    return min(waits) if waits else None
