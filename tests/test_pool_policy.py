"""The pool policy alone: budget and max_loaded hold after every step, busy models stay."""

from __future__ import annotations

from dataclasses import replace

from hypothesis import given, settings
from hypothesis import strategies as st

from mlxpin.supervise.policy import (
    Already,
    Evict,
    Limits,
    ModelView,
    Refuse,
    Start,
    Wait,
    expired,
    fits,
    loaded,
    next_expiry,
    plan_start,
)

GB = 1 << 30


def pool(*views: ModelView) -> dict[str, ModelView]:
    return {v.name: v for v in views}


def test_a_stopped_model_starts_when_it_fits() -> None:
    models = pool(ModelView("a", "stopped", GB), ModelView("b", "ready", GB, last_used=1))
    assert plan_start(models, "a", Limits(budget=3 * GB, max_loaded=2)) == Start()


def test_the_least_recently_used_idle_model_is_evicted_first() -> None:
    models = pool(
        ModelView("a", "ready", GB, last_used=5),
        ModelView("b", "ready", GB, last_used=3),
        ModelView("c", "stopped", GB),
    )
    assert plan_start(models, "c", Limits(budget=10 * GB, max_loaded=2)) == Evict(("b",))


def test_a_busy_model_is_never_evicted_the_request_waits() -> None:
    models = pool(
        ModelView("a", "ready", GB, in_flight=1, last_used=1),
        ModelView("b", "ready", GB, last_used=9),
        ModelView("c", "stopped", GB),
    )
    assert plan_start(models, "c", Limits(budget=10 * GB, max_loaded=2)) == Evict(("b",))
    busy = {**models, "b": replace(models["b"], in_flight=2)}
    decision = plan_start(busy, "c", Limits(budget=10 * GB, max_loaded=2))
    assert isinstance(decision, Wait)
    assert "a, b" in decision.reason


def test_budget_evicts_as_many_as_needed_and_no_more() -> None:
    models = pool(
        ModelView("a", "ready", 2 * GB, last_used=1),
        ModelView("b", "ready", 2 * GB, last_used=2),
        ModelView("c", "ready", 2 * GB, last_used=3),
        ModelView("big", "stopped", 4 * GB),
    )
    assert plan_start(models, "big", Limits(budget=7 * GB)) == Evict(("a", "b"))


def test_refusals_and_nothing_to_do() -> None:
    limits = Limits(budget=4 * GB, max_loaded=2)
    models = pool(
        ModelView("huge", "stopped", 5 * GB),
        ModelView("dead", "failed", GB),
        ModelView("up", "ready", GB),
        ModelView("pin", "ready", 3 * GB, pinned=True),
        ModelView("two", "stopped", 2 * GB),
    )
    huge = plan_start(models, "huge", limits)
    assert isinstance(huge, Refuse)
    assert huge.reason == "huge needs 5.4 GB, more than the whole memory budget of 4.3 GB"
    assert isinstance(plan_start(models, "dead", limits), Refuse)
    assert plan_start(models, "up", limits) == Already()
    assert isinstance(plan_start(models, "two", limits), Refuse)  # never beside the pinned one


def test_a_stopping_model_is_waited_for() -> None:
    models = pool(ModelView("a", "stopping", GB), ModelView("b", "stopped", GB))
    assert isinstance(plan_start(models, "b", Limits(budget=10 * GB, max_loaded=1)), Wait)
    assert isinstance(plan_start(models, "a", Limits(budget=10 * GB, max_loaded=1)), Wait)


def test_idle_ttl_expiry() -> None:
    models = [
        ModelView("a", "ready", GB, last_used=0),
        ModelView("b", "ready", GB, last_used=0, in_flight=1),
        ModelView("c", "ready", GB, last_used=8),
        ModelView("d", "ready", GB, last_used=0),  # ttl 0: never
    ]
    ttl = {"a": 10.0, "b": 10.0, "c": 10.0, "d": 0.0}
    assert expired(models, 12.0, ttl) == ("a",)
    assert next_expiry(models, 12.0, ttl) == 0.0
    assert next_expiry(models[2:], 12.0, ttl) == 6.0
    assert next_expiry(models[3:], 12.0, ttl) is None


# --- property: a random run of requests, starts, stops, crashes -------------------------

NAMES = ("a", "b", "c", "d")
ops = st.lists(
    st.tuples(
        st.sampled_from(("request", "request", "request", "stopped", "end", "crash", "fail")),
        st.sampled_from(NAMES),
    ),
    max_size=60,
)


@settings(max_examples=200, deadline=None)
@given(
    costs=st.tuples(*[st.integers(1, 6) for _ in NAMES]),
    budget=st.integers(1, 14),
    max_loaded=st.one_of(st.none(), st.integers(1, 4)),
    pinned=st.sampled_from((None, *NAMES)),
    steps=ops,
)
def test_budget_and_max_loaded_hold_after_every_step_and_busy_models_stay(
    costs: tuple[int, ...],
    budget: int,
    max_loaded: int | None,
    pinned: str | None,
    steps: list[tuple[str, str]],
) -> None:
    limits = Limits(budget=budget, max_loaded=max_loaded)
    models = {
        n: ModelView(n, "stopped", c, pinned=n == pinned) for n, c in zip(NAMES, costs, strict=True)
    }
    clock = 0.0
    for op, name in steps:
        clock += 1.0
        m = models[name]
        if op == "request" and m.state in ("stopped", "failed", "stopping"):
            decision = plan_start(models, name, limits)
            if isinstance(decision, Start):
                models[name] = replace(m, state="starting")
            elif isinstance(decision, Evict):
                assert decision.names, "an eviction names at least one model"
                for victim in decision.names:
                    v = models[victim]
                    assert v.evictable and v.in_flight == 0 and not v.pinned
                    assert v.name != name
                    models[victim] = replace(v, state="stopping")
                # once they are gone (and nothing else changed) it must fit
                after = {
                    k: replace(v, state="stopped") if k in decision.names else v
                    for k, v in models.items()
                }
                assert plan_start(after, name, limits) == Start()
            elif isinstance(decision, Wait):
                holders = [v for v in models.values() if v.holds_memory and v.name != name]
                assert m.state == "stopping" or any(not v.evictable for v in holders)
            else:
                assert isinstance(decision, Refuse)
                assert m.state == "failed" or m.cost > budget or pinned is not None
        elif op == "request" and m.state == "starting":  # its warm-up answered
            models[name] = replace(m, state="ready")
        elif op == "stopped" and m.state == "stopping":
            models[name] = replace(m, state="stopped", in_flight=0)
        elif op == "request" and m.state == "ready":
            models[name] = replace(m, in_flight=m.in_flight + 1, last_used=clock)
        elif op == "end" and m.in_flight > 0:
            models[name] = replace(m, in_flight=m.in_flight - 1, last_used=clock)
        elif op == "crash" and m.state in ("starting", "ready"):
            models[name] = replace(m, state="stopped", in_flight=0)
        elif op == "fail" and m.state == "stopped":
            models[name] = replace(m, state="failed")
        count, cost = loaded(models.values())
        assert fits(count, cost, limits), (models, limits)
