"""The pool: pinned models behind one gateway, each started on demand (its Backends).

The decisions (may it start, which idle models stop first, which are past their TTL) are
:mod:`mlxpin.supervise.policy`'s; this module carries them out on one asyncio loop. One
shared start per model; starts admitted one at a time; a request waiting for a model
counts as in flight, so a model is never stopped between its warm-up and its first
request. A crash marks it stopped (restarted after a capped backoff, at once or on its
next request as its :class:`~mlxpin.plan.serve.ModelPolicy` says); past its crash budget
it is ``failed`` -- or, for `launch`'s resident model, :attr:`Pool.fatal` ends the run.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from mlxpin.errors import MlxpinError, ServerCrashedError
from mlxpin.gateway.aio import import_aiohttp
from mlxpin.gateway.backends import GatewayState, Health, Lease, Route, Unavailable, Upstream
from mlxpin.gateway.values import read_vocab_size
from mlxpin.plan.serve import PoolModelPlan, ServePlan
from mlxpin.supervise.policy import (
    Already,
    Evict,
    Limits,
    ModelView,
    Refuse,
    Start,
    State,
    Wait,
    expired,
    loaded,
    next_expiry,
    plan_start,
)
from mlxpin.supervise.process import ServerProcess, warm_up
from mlxpin.supervise.queue import EngineQueue, queue_from_env
from mlxpin.supervise.restart import GiveUp, RestartBudget, RestartPolicy
from mlxpin.supervise.servers import ModelServer, WatchdogPolicy, model_server

log = logging.getLogger("mlxpin.serve")


class StartFailed(Exception):
    """A start that did not end with a warm-up answered."""


class Slot:
    """One model of the pool: its plan, state and server process."""

    def __init__(
        self, plan: PoolModelPlan, server: ModelServer, policy: RestartPolicy, queue: EngineQueue
    ) -> None:
        self.plan = plan
        self.queue = queue  # engine slots; requests waiting for one
        self.name = plan.name
        self.state: State = "stopped"
        self.server = server
        self.process: ServerProcess | None = None
        self.health = GatewayState()  # epochs: a late answer from an old start proves nothing
        self.in_flight = 0
        self.queued = 0  # of in_flight: client requests waiting for it to be ready
        self.last_used = 0.0  # monotonic
        self.last_used_wall: float | None = None
        self.restarts = 0
        self.starts = 0  # spawns; their durations until ready, for /metrics:
        self.start_seconds: list[float] = []
        self.evictions = {"room": 0, "idle": 0, "unload": 0}
        self.budget = RestartBudget(policy)
        self.started_at = 0.0
        self.not_before = 0.0  # monotonic time before which it is not restarted
        self.failed_reason: str | None = None
        self.start_task: asyncio.Task[None] | None = None
        self.watcher: asyncio.Task[None] | None = None
        self.stopping_by_us = False
        self._upstream = (server.upstream, server.upstream)  # (its base, with our epoch)

    def view(self) -> ModelView:
        return ModelView(
            self.name,
            self.state,
            self.plan.cost,
            self.in_flight,
            self.last_used,
            pinned=not self.plan.policy.evictable,
        )

    def upstream(self) -> Upstream:
        base, epoch = self.server.upstream, self.health.epoch
        if self._upstream[0] is not base or self._upstream[1].epoch != epoch:  # once a start
            self._upstream = (base, dataclasses.replace(base, epoch=epoch))
        return self._upstream[1]

    async def attempt(self, timeout_s: float) -> str:
        """One 1-token completion straight to the server: "ok", "unreachable" or "error"."""
        # aiohttp is imported here, not at the top: a preloaded server is spawned
        # before the gateway's imports, so the two start-ups overlap.
        import_aiohttp()
        from mlxpin.gateway.upstream import warm_up_status

        return await warm_up_status(self.upstream(), self.health, timeout_s=timeout_s)

    def touch(self) -> None:
        self.last_used = time.monotonic()
        self.last_used_wall = time.time()

    def status(self) -> dict[str, object]:
        """This model's entry in ``GET /mlxpin/status`` (what `mlxpin ps` prints)."""
        idle_s = round(time.monotonic() - self.last_used, 3) if self.last_used_wall else None
        return {
            "name": self.name,
            "api_label": self.plan.launch.api_label,
            "aliases": list(self.plan.launch.aliases),
            "state": self.state,
            "pid": self.process.pid if self.process and self.process.process else None,
            "cost": self.plan.cost,
            "last_used": self.last_used_wall,
            "idle_s": idle_s,
            "in_flight": self.in_flight,
            "waiting": self.queue.waiting,
            "restarts": self.restarts,
            "idle_ttl": self.plan.idle_ttl,
            "preload": self.plan.preload,
            "reason": self.failed_reason,
        }


class Pool:
    """The :class:`~mlxpin.gateway.backends.Backends` of `mlxpin serve` (module docstring)."""

    def __init__(
        self,
        plan: ServePlan,
        environ: Mapping[str, str],
        policy: RestartPolicy | None = None,
        *,
        watchdog: WatchdogPolicy | None = None,
        on_fatal: Callable[[], None] | None = None,
    ) -> None:
        self.plan = plan
        self.policy = policy or RestartPolicy()
        self.limits = Limits(budget=plan.budget, max_loaded=plan.max_loaded)
        self.slots = {
            m.name: Slot(
                m,
                model_server(m, environ, watchdog or WatchdogPolicy()),
                self.policy,
                queue_from_env(environ),
            )
            for m in plan.models
        }
        self.fatal: MlxpinError | None = None  # a fatal_when_spent model's budget is spent
        self._on_fatal = on_fatal
        self.by_label = {m.launch.api_label: self.slots[m.name] for m in plan.models}
        self.admission = asyncio.Lock()
        self._changed = asyncio.Event()
        self.preloaded = not any(m.preload for m in plan.models)
        self.closing = False
        self._ttl_task: asyncio.Task[None] | None = None
        self._preload_task: asyncio.Task[None] | None = None

    # ------------------------------------------------------------------ Backends

    def routes(self) -> Sequence[Route]:
        return tuple(
            Route(
                m.launch.api_label,
                m.launch.aliases,
                max_body_bytes=m.launch.gateway.max_body,
                request_timeout_s=m.launch.gateway.request_timeout,
                engine=m.launch.engine,
                role=m.launch.role,
                vocab_size=next(
                    (read_vocab_size(s.path) for s in m.launch.snapshots if s.role == "model"),
                    None,
                ),
            )
            for m in self.plan.models
        )

    async def acquire(self, label: str) -> Lease:
        slot = self.by_label[label]
        slot.in_flight += 1  # from now on it is never evicted under this request
        slot.queued += 1
        try:
            if self.closing or slot.state != "ready":
                await self.ensure_ready(slot, self.plan.start_timeout)
            await slot.queue.enter(label)
        except BaseException:
            self.leave(slot)
            raise
        finally:
            slot.queued -= 1

        def release() -> None:
            slot.queue.leave()
            self.leave(slot)

        # The slot's in_flight was raised above; the lease gives it back.
        return Lease(slot.upstream(), slot.health, release)

    def health(self) -> Health:
        if self.plan.launched is not None:  # healthy once a completion succeeded since start
            slot = self.slots[self.plan.launched.name]
            if slot.state == "ready" and slot.health.healthy:
                return Health(True, {"status": "ok", "model": slot.plan.launch.api_label})
            return Health(False, {"status": "loading"})
        body: dict[str, object] = {
            "status": "ok" if self.preloaded else "loading",
            "models": {s.plan.launch.api_label: s.state for s in self.slots.values()},
        }
        return Health(self.preloaded, body)

    def status(self) -> Mapping[str, object]:
        now_wall = time.time()
        count, used = loaded(self.views().values())
        return {
            "host": self.plan.host,
            "port": self.plan.port,
            "time": now_wall,
            "budget": {
                "used": used,
                "total": self.plan.budget,
                "source": self.plan.budget_source,
            },
            "loaded": count,
            "max_loaded": self.plan.max_loaded,
            "models": [s.status() for s in self.slots.values()],
        }

    # ------------------------------------------------------------------ bookkeeping

    def leave(self, slot: Slot) -> None:
        slot.in_flight -= 1
        slot.touch()
        self.notify()

    def notify(self) -> None:
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    async def wait_change(self, timeout: float | None) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._changed.wait(), timeout)

    def views(self) -> dict[str, ModelView]:
        return {name: slot.view() for name, slot in self.slots.items()}

    # ------------------------------------------------------------------ starting

    async def ensure_ready(self, slot: Slot, wait_s: float) -> None:
        """Return once ``slot`` is ready; raise Unavailable after ``wait_s`` or on failure."""
        deadline = time.monotonic() + wait_s
        while True:
            if self.closing:
                raise Unavailable("The endpoint is shutting down", code="shutting_down")
            if slot.state == "ready":
                return
            if slot.state == "failed":
                raise Unavailable(
                    f"The model '{slot.plan.launch.api_label}' failed: {slot.failed_reason}",
                    code="model_failed",
                )
            if slot.start_task is None or slot.start_task.done():
                slot.start_task = asyncio.create_task(self._start(slot))
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise self._too_long(slot, wait_s)
            try:
                await asyncio.wait_for(asyncio.shield(slot.start_task), remaining)
            except TimeoutError:
                raise self._too_long(slot, wait_s) from None
            except Unavailable:
                raise
            except StartFailed as exc:
                if slot.failed_reason is not None or slot.plan.policy.restart_at_once:
                    continue  # failed for good (answered above), or restarting already
                raise Unavailable(
                    f"The model '{slot.plan.launch.api_label}' could not start: {exc}",
                    code="model_unavailable",
                    retry_after_s=max(1.0, slot.not_before - time.monotonic()),
                ) from None

    async def head_start(self, label: str) -> Callable[[], None] | None:
        """Start now the model of a request that is waiting to be read while the gateway
        sets up (:mod:`mlxpin.gateway.waiting`); that request finds it starting. Only a
        start the policy admits at once. It counts as in flight, so nothing evicts it,
        until the returned release is called (once the gateway reads requests). Returns
        once it is spawned."""
        slot = self.by_label.get(label)
        if slot is None or slot.state != "stopped" or slot.start_task is not None:
            return None
        if self.closing or not isinstance(plan_start(self.views(), slot.name, self.limits), Start):
            return None
        slot.in_flight += 1
        slot.start_task = asyncio.create_task(self._start(slot))
        slot.start_task.add_done_callback(_reported)
        await self._spawned([slot], slot.start_task)

        def release() -> None:  # not a use: no touch
            slot.in_flight -= 1
            self.notify()

        return release

    def _too_long(self, slot: Slot, waited: float) -> Unavailable:
        doing = "is still starting" if slot.state == "starting" else "is waiting for room"
        return Unavailable(
            f"The model '{slot.plan.launch.api_label}' {doing} after {waited:g} s "
            "(other models are busy or loading); retry shortly",
            code="model_loading",
            retry_after_s=max(1.0, min(10.0, waited / 4)),
        )

    async def _start(self, slot: Slot) -> None:
        """Admit ``slot`` (evicting idle models as the policy says), then spawn and warm up."""
        check = slot.plan.launch.start_check
        changed = check.problem() if check is not None else None
        if changed is not None:  # bytes verified at boot changed since: never load them
            self._give_up(slot, changed, "run `mlxpin verify`, then `mlxpin fetch` to repair it")
            raise StartFailed(changed)
        async with self.admission:
            admitted_by = time.monotonic() + max(self.plan.start_timeout, 1.0)
            while True:
                if self.closing:
                    raise Unavailable("The endpoint is shutting down", code="shutting_down")
                delay = slot.not_before - time.monotonic()
                if delay > 0:  # backoff after a crash
                    await asyncio.sleep(delay)
                    continue
                decision = plan_start(self.views(), slot.name, self.limits)
                if isinstance(decision, Already):
                    return
                if isinstance(decision, Start):
                    slot.state = "starting"
                    self.notify()
                    break
                if isinstance(decision, Evict):
                    for name in decision.names:
                        log.info("%s: stopping idle %s to make room", slot.name, name)
                        self.slots[name].evictions["room"] += 1
                    await asyncio.gather(*(self.stop(self.slots[n]) for n in decision.names))
                    continue
                if isinstance(decision, Refuse):
                    raise Unavailable(
                        f"The model '{slot.plan.launch.api_label}' cannot start: {decision.reason}",
                        code="model_unavailable",
                    )
                assert isinstance(decision, Wait)
                remaining = admitted_by - time.monotonic()
                if remaining <= 0:
                    raise Unavailable(
                        f"No room for '{slot.plan.launch.api_label}': {decision.reason}",
                        code="model_loading",
                        retry_after_s=5.0,
                    )
                await self.wait_change(remaining)
        try:
            await self._spawn_and_warm(slot)
        except StartFailed as exc:
            code = (
                slot.process.process.returncode if slot.process and slot.process.process else None
            )
            await self._kill(slot)
            self._crashed(slot, str(exc), code, was_ready=False)
            raise
        except BaseException:
            await self._kill(slot)
            slot.state = "stopped"
            self.notify()
            raise

    async def _spawn_and_warm(self, slot: Slot) -> None:
        slot.health.mark_restarting()
        process = slot.server.new_process(self.policy.stop_timeout_s)
        slot.process = process
        slot.stopping_by_us = False
        slot.started_at = time.monotonic()
        slot.starts += 1
        try:
            await process.start()
        except OSError as exc:  # a full or read-only state disk: retried with backoff
            raise StartFailed(f"cannot start mlx_lm.server: {exc}") from exc
        self.notify()  # spawned (begin() waits for the preloaded ones)
        exited: asyncio.Future[Any] = asyncio.ensure_future(process.wait())
        outcome = await warm_up(
            slot.name,
            slot.attempt,
            exited,
            ready_timeout_s=self.policy.ready_timeout_s,
            max_errors=self.policy.warm_up_errors,
        )
        if outcome != "ready":
            code = exited.result() if exited.done() else None
            raise StartFailed(
                f"mlx_lm.server exited with code {code} before answering"
                if outcome == "gone"
                else "mlx_lm.server did not answer its warm-up"
            )
        slot.state = "ready"
        slot.start_seconds.append(time.monotonic() - slot.started_at)
        slot.touch()
        log.info("%s: ready: a warm-up completion succeeded (pid %d)", slot.name, process.pid)
        slot.watcher = asyncio.create_task(self._watch(slot, process, exited))
        self.notify()

    async def _watch(self, slot: Slot, process: ServerProcess, exited: asyncio.Future[Any]) -> None:
        """A ready server: wait until it exits or its watch gives a reason to restart it."""
        watch = asyncio.ensure_future(slot.server.watch(process, slot.health, slot.attempt))
        try:
            await asyncio.wait({exited, watch}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            if not watch.done():
                watch.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await watch
        if slot.process is not process or slot.stopping_by_us or self.closing:
            return
        slot.state = "stopping"  # no new request is sent to it from now on
        slot.health.healthy = False
        if exited.done():
            code: int | None = exited.result()
            why = f"mlx_lm.server exited with code {code}"
        else:
            code, why = None, watch.result()
            log.error("%s: %s; stopping it", slot.name, why)
        await process.stop()  # a rank group: no member outlives this start
        process.forget()
        if slot.process is not process or self.closing:
            return
        slot.process = None
        self._crashed(slot, why, code, was_ready=True)

    def _crashed(self, slot: Slot, why: str, code: int | None, *, was_ready: bool) -> None:
        now = time.monotonic()
        slot.restarts += 1
        decision = slot.budget.after_exit(
            slot.name,
            code,
            started=slot.started_at,
            now=now,
            was_ready=was_ready,
            during_request=slot.queue.busy(),
        )
        if isinstance(decision, GiveUp):
            self._give_up(slot, decision.message, decision.hint)
        else:
            slot.state = "stopped"
            slot.not_before = now + decision.delay_s
            at_once, delay = slot.plan.policy.restart_at_once, f"{decision.delay_s:.4g} s"
            when = f"in {delay}" if at_once else f"on its next request (not before {delay})"
            log.warning("%s: %s; restarting %s", slot.name, why, when)
            if at_once:
                slot.start_task = asyncio.create_task(self._start(slot))
                slot.start_task.add_done_callback(_reported)
        self.notify()

    def _give_up(self, slot: Slot, message: str, hint: str | None) -> None:
        slot.state = "failed"
        if slot.plan.policy.fatal_when_spent:
            slot.failed_reason = message
            self.fatal = ServerCrashedError(message, hint)
            if self._on_fatal is not None:
                self._on_fatal()
        else:
            slot.failed_reason = (
                f"{message}; not restarted until "
                f"POST /mlxpin/models/{slot.plan.launch.api_label}/load"
            )
        log.error("%s: failed: %s", slot.name, slot.failed_reason)
        self.notify()

    # ------------------------------------------------------------------ stopping

    async def stop(self, slot: Slot) -> None:
        """Stop ``slot``'s server (the caller checked it may be stopped)."""
        if slot.state not in ("ready", "starting"):
            return
        slot.state = "stopping"
        self.notify()
        await self._kill(slot)
        slot.state = "stopped"
        log.info("%s: stopped", slot.name)
        self.notify()

    async def _kill(self, slot: Slot) -> None:
        process = slot.process
        slot.stopping_by_us = True
        if process is None:
            return
        await process.stop()
        process.forget()
        slot.process = None
        shutil.rmtree(slot.plan.launch.cwd, ignore_errors=True)

    async def unload(self, slot: Slot) -> None:
        """Stop ``slot`` once nothing is in flight on it (new requests may start it again)."""
        while True:
            if slot.state in ("stopped", "failed"):
                return
            if slot.state == "ready" and slot.in_flight == 0:
                slot.evictions["unload"] += 1
                # Shielded: a client that hangs up cancels its handler; a half-done stop
                # would leave the slot "stopping" for good.
                await asyncio.shield(self.stop(slot))
                return
            await self.wait_change(1.0)

    async def load(self, slot: Slot) -> None:
        """Start ``slot`` now (a failed model is given a fresh crash budget)."""
        if slot.state == "failed":
            slot.state = "stopped"
            slot.failed_reason = None
            slot.budget = RestartBudget(self.policy)
            slot.not_before = 0.0
        slot.in_flight += 1  # held while loading: not evicted before it is ever used
        try:
            await self.ensure_ready(slot, self.policy.ready_timeout_s)
        finally:
            self.leave(slot)

    # ------------------------------------------------------------------ lifetime

    async def begin(self) -> None:
        for slot in self.slots.values():  # left by a run killed with -9 (macOS)
            await slot.server.reap_leftover(self.policy.stop_timeout_s)
        self._ttl_task = asyncio.create_task(self._ttl_loop())
        preload = [s for s in self.slots.values() if s.plan.preload]
        if preload:
            self._preload_task = asyncio.create_task(self._preload(preload))
            await self._spawned(preload, self._preload_task)

    async def _spawned(self, slots: list[Slot], task: asyncio.Task[None]) -> None:
        """Let their spawns happen before the caller goes on (importing the gateway): the
        servers load while mlxpin finishes its own start-up."""
        deadline = time.monotonic() + 5.0
        while not task.done() and time.monotonic() < deadline:
            if all(s.process is not None and s.process.process for s in slots):
                break
            await self.wait_change(0.1)

    async def _preload(self, slots: list[Slot]) -> None:
        results = await asyncio.gather(*(self.load(s) for s in slots), return_exceptions=True)
        for slot, result in zip(slots, results, strict=True):
            if isinstance(result, BaseException):
                log.error("%s: preload failed: %s", slot.name, result)
        self.preloaded = all(s.state == "ready" for s in slots)

    async def _ttl_loop(self) -> None:
        ttl = {s.name: s.plan.idle_ttl for s in self.slots.values()}
        shortest = min((t for t in ttl.values() if t > 0), default=None)
        if shortest is None:
            return  # no model is ever stopped for idleness
        while not self.closing:
            views = [s.view() for s in self.slots.values()]
            for name in expired(views, time.monotonic(), ttl):
                slot = self.slots[name]
                if slot.view().evictable:
                    log.info("%s: idle for %.0f s: stopping", name, ttl[name])
                    slot.evictions["idle"] += 1
                    await self.stop(slot)
            wait = next_expiry([s.view() for s in self.slots.values()], time.monotonic(), ttl)
            # A timer, not wait_change: a model that turns idle from now on expires no
            # sooner than `shortest` from now (a request ends with a touch), and waking
            # as each request ended cost the gateway a loop turn per request.
            await asyncio.sleep(min(shortest, shortest if wait is None else wait) + 0.01)

    async def close(self) -> None:
        """Stop every server (SIGTERM, then SIGKILL after the stop timeout)."""
        self.closing = True
        self.notify()
        starts = [s.start_task for s in self.slots.values()]
        for task in (self._ttl_task, self._preload_task, *starts):
            if task is not None and not task.done():
                task.cancel()
                with contextlib.suppress(BaseException):
                    await task
        await asyncio.gather(*(self._kill(s) for s in self.slots.values()))
        for slot in self.slots.values():
            if slot.watcher is not None and not slot.watcher.done():
                slot.watcher.cancel()
            slot.state = "stopped"
            slot.server.close()


def _reported(task: asyncio.Task[None]) -> None:
    """A background restart's outcome was logged where it happened; only consume it."""
    if not task.cancelled():
        task.exception()
