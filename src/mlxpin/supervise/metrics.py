"""``GET /metrics``: a private Prometheus registry per gateway (docs/observability.md).

Request metrics are recorded from each :class:`~mlxpin.gateway.observe.Exchange`; the
pool's gauges and counters are read from its slots when scraped, so a request pays only
for its own few increments. Imported once the gateway is built, never on the boot path.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, get_args

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from mlxpin import __version__
from mlxpin.gateway.observe import Exchange
from mlxpin.project.engines import MLX_VLM
from mlxpin.supervise.policy import State
from mlxpin.supervise.pool import Pool, Slot

__all__ = ["CONTENT_TYPE", "Metrics"]

disable_created_metrics()  # type: ignore[no-untyped-call]  # no *_created series

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
START_BUCKETS = (1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600)
TPS_BUCKETS = (1, 2, 5, 10, 20, 30, 50, 75, 100, 150, 200, 500, 1000)


class Metrics:
    """The registry of one gateway over ``pool``."""

    def __init__(self, pool: Pool) -> None:
        self.registry = registry = CollectorRegistry(auto_describe=True)
        model = ("model",)
        self.requests = Counter(
            "mlxpin_requests",
            "Client requests by model, endpoint and HTTP status.",
            (*model, "endpoint", "status"),
            registry=registry,
        )
        self.duration = Histogram(
            "mlxpin_request_duration_seconds",
            "Client request time, to the last byte of a stream.",
            (*model, "endpoint"),
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.ttft = Histogram(
            "mlxpin_time_to_first_token_seconds",
            "Streams: time until the first event reached the client.",
            model,
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.prompt = Counter(
            "mlxpin_prompt_tokens", "Prompt tokens (the engine's usage).", model, registry=registry
        )
        self.generated = Counter(
            "mlxpin_generated_tokens",
            "Generated tokens (the engine's usage).",
            model,
            registry=registry,
        )
        self.tps = Histogram(
            "mlxpin_generation_tokens_per_second",
            "Generated tokens per second of generation, per request with usage.",
            model,
            buckets=TPS_BUCKETS,
            registry=registry,
        )
        registry.register(PoolCollector(pool))
        self.children: dict[tuple[object, ...], Any] = {}

    def child(self, metric: Any, *labels: str) -> Any:
        """``metric.labels(*labels)``, looked up once (labels() takes a lock and validates
        every call; the label values are the few models, endpoints and statuses)."""
        key = (metric, *labels)
        found = self.children.get(key)
        if found is None:
            found = self.children[key] = metric.labels(*labels)
        return found

    def observe(self, exchange: Exchange) -> None:
        label, endpoint, child = exchange.label, exchange.endpoint, self.child
        child(self.requests, label, endpoint, str(exchange.status)).inc()
        child(self.duration, label, endpoint).observe(exchange.duration_s)
        ttft = exchange.ttft_s
        if ttft is not None:
            child(self.ttft, label).observe(ttft)
        if exchange.completion_tokens is not None:
            child(self.prompt, label).inc(exchange.prompt_tokens or 0)
            child(self.generated, label).inc(exchange.completion_tokens)
            tps = exchange.tokens_per_s
            if tps is not None:
                child(self.tps, label).observe(tps)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class PoolCollector(Collector):
    """The pool's state, read at scrape time."""

    def __init__(self, pool: Pool) -> None:
        self.pool = pool

    def collect(self) -> Iterator[Metric]:
        slots = list(self.pool.slots.values())
        first = slots[0].plan.launch.runtime if slots else None
        build = InfoMetricFamily("mlxpin_build", "mlxpin and the engine runtime it runs.")
        build.add_metric(
            [],
            {
                "mlxpin": __version__,
                "mlx": (first and first.mlx) or "unknown",
                "mlx_lm": (first and first.mlx_lm) or "unknown",
            },
        )
        yield build
        info = InfoMetricFamily("mlxpin_model", "Each model's pin.", labels=["model"])
        per: dict[str, GaugeMetricFamily | CounterMetricFamily] = {
            "in_flight": GaugeMetricFamily(
                "mlxpin_requests_in_flight", "Client requests in flight.", labels=["model"]
            ),
            "queued": GaugeMetricFamily(
                "mlxpin_requests_queued", "Of those, waiting for the model.", labels=["model"]
            ),
            "resident": GaugeMetricFamily(
                "mlxpin_model_resident_bytes",
                "Planned memory of a started model (0 when stopped).",
                labels=["model"],
            ),
            "starts": CounterMetricFamily(
                "mlxpin_model_starts", "Server starts.", labels=["model"]
            ),
            "crashes": CounterMetricFamily(
                "mlxpin_model_crashes", "Servers that exited or failed to start.", labels=["model"]
            ),
        }
        states = GaugeMetricFamily(
            "mlxpin_model_state", "1 for the model's state.", labels=["model", "state"]
        )
        evictions = CounterMetricFamily(
            "mlxpin_model_evictions",
            "Stops: to make room, idle past the TTL, or unloaded by an operator.",
            labels=["model", "reason"],
        )
        starts = HistogramMetricFamily(
            "mlxpin_model_start_duration_seconds",
            "From spawn to the warm-up's answer.",
            labels=["model"],
        )
        for slot in slots:
            label = slot.plan.launch.api_label
            info.add_metric([label], pin_of(slot))
            resident = slot.plan.cost if slot.state in ("starting", "ready", "stopping") else 0
            values = (slot.in_flight, slot.queued, resident, slot.starts, slot.restarts)
            for family, value in zip(per.values(), values, strict=True):
                family.add_metric([label], value)
            for state in get_args(State):
                states.add_metric([label, state], 1.0 if slot.state == state else 0.0)
            for reason, count in slot.evictions.items():
                evictions.add_metric([label, reason], count)
            starts.add_metric([label], *histogram(slot.start_seconds, START_BUCKETS))
        yield info
        yield from per.values()
        yield states
        yield evictions
        yield starts
        budget = self.pool.status()["budget"]
        assert isinstance(budget, dict)
        for key, text in (("total", "The memory budget."), ("used", "Planned memory in use.")):
            gauge = GaugeMetricFamily(f"mlxpin_memory_budget_{key}_bytes", text)
            if budget[key] is not None:
                gauge.add_metric([], budget[key])
                yield gauge


def pin_of(slot: Slot) -> dict[str, str]:
    """What a model runs: its api_label's name, locked commit, engine and runtime."""
    launch = slot.plan.launch
    commit = next((s.commit for s in launch.snapshots if s.role == "model"), None)
    runtime = launch.runtime
    return {
        "name": slot.name,
        "commit": commit or "",
        "engine": "mlx_vlm.server" if launch.engine == MLX_VLM else "mlx_lm.server",
        "runtime": (runtime.key or "")[:12] if runtime and runtime.pinned else "unpinned",
        "mlx_lm": (runtime and runtime.mlx_lm) or "unknown",
        "mlx": (runtime and runtime.mlx) or "unknown",
    }


def histogram(
    values: list[float], bounds: tuple[float, ...]
) -> tuple[list[tuple[str, float]], float]:
    """Cumulative buckets and the sum, as HistogramMetricFamily takes them."""
    buckets = [(str(float(b)), float(sum(v <= b for v in values))) for b in bounds]
    return [*buckets, ("+Inf", float(len(values)))], sum(values)
