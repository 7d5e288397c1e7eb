"""The restart policy alone (pure: no processes, no clock) and the routing table."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mlxpin.gateway.apierrors import ApiError
from mlxpin.gateway.backends import Route
from mlxpin.gateway.routing import RoutingTable
from mlxpin.supervise.restart import GiveUp, Restart, RestartBudget, RestartPolicy

POLICY = RestartPolicy(backoff_initial_s=1, backoff_max_s=8, restart_budget=3, budget_window_s=100)


def test_backoff_doubles_up_to_its_cap_and_the_budget_ends_it() -> None:
    budget = RestartBudget(RestartPolicy(backoff_initial_s=1, backoff_max_s=4, restart_budget=4))
    delays = []
    for now in (1.0, 2.0, 3.0, 4.0):
        decision = budget.after_exit("m", 3, started=now - 0.5, now=now, was_ready=True)
        assert isinstance(decision, Restart)
        delays.append(decision.delay_s)
    assert delays == [1, 2, 4, 4]
    decision = budget.after_exit("m", 3, started=4.5, now=5.0, was_ready=True)
    assert isinstance(decision, GiveUp)
    assert "exited 5 times within 600 s (last exit code 3)" in decision.message


def test_crashes_outside_the_window_are_forgiven_and_a_long_run_resets_the_backoff() -> None:
    budget = RestartBudget(POLICY)
    for now in (0.0, 1.0, 2.0):
        assert isinstance(budget.after_exit("m", 1, started=now, now=now, was_ready=True), Restart)
    decision = budget.after_exit("m", 1, started=10.0, now=500.0, was_ready=True)
    assert decision == Restart(1)  # the old crashes left the window; the run was long


def test_starts_that_never_answer_give_up_even_when_slow() -> None:
    budget = RestartBudget(POLICY)
    decision: Restart | GiveUp = Restart(0)
    for attempt in range(4):
        now = attempt * 1000.0  # far apart: the window alone would never fill
        decision = budget.after_exit("m", 4, started=now - 900, now=now, was_ready=False)
    assert isinstance(decision, GiveUp)
    assert "failed 4 starts in a row without ever answering (last exit code 4)" in (
        decision.message
    )


@given(
    st.lists(st.tuples(st.floats(0, 1000, allow_nan=False), st.booleans()), min_size=1, max_size=30)
)
def test_delays_stay_within_the_policy(exits: list[tuple[float, bool]]) -> None:
    budget = RestartBudget(POLICY)
    now = 0.0
    for gap, ready in exits:
        now += gap
        decision = budget.after_exit("m", 1, started=now - gap, now=now, was_ready=ready)
        if isinstance(decision, GiveUp):
            assert len(budget.crashes) > POLICY.restart_budget or budget.never_ready > 3
            return
        assert POLICY.backoff_initial_s <= decision.delay_s <= POLICY.backoff_max_s


def test_routing_table_labels_default_and_errors() -> None:
    one = RoutingTable([Route("chat", ("c", "chat"))])
    assert one.resolve(None) is one.routes[0]
    assert one.resolve("c") is one.routes[0]
    missing = one.resolve("other")
    assert isinstance(missing, ApiError)
    assert (missing.status, missing.code) == (404, "model_not_found")
    assert isinstance(one.resolve(["x"]), ApiError)
    two = RoutingTable([Route("a", max_body_bytes=10), Route("b", max_body_bytes=20)])
    required = two.resolve(None)
    assert isinstance(required, ApiError)
    assert required.code == "model_required"
    assert two.max_body_bytes == 20
    with pytest.raises(ValueError, match="used by two models"):
        RoutingTable([Route("a"), Route("b", ("a",))])


def test_exits_during_a_request_restart_at_once_without_spending_the_budget() -> None:
    """Issue #26 item 3: six bad requests ended `launch` for good (exit 70)."""
    budget = RestartBudget(RestartPolicy(backoff_initial_s=1, restart_budget=2))
    for now in map(float, range(10)):
        decision = budget.after_exit(
            "m", -11, started=now - 0.5, now=now, was_ready=True, during_request=True
        )
        assert decision == Restart(1)
    for now in (20.0, 21.0):  # crashes at rest still count
        assert isinstance(budget.after_exit("m", 1, started=0, now=now, was_ready=True), Restart)
    assert isinstance(budget.after_exit("m", 1, started=0, now=22.0, was_ready=True), GiveUp)
