"""`serve` preflight: manifest + locks + verified snapshots → a ServePlan (pure data).

`launch`'s plan for every named model at once, with each model's cost (locked bytes plus
a per-server overhead) and the pool's limits. Every model's problem is collected and
reported together before anything starts. `launch` itself runs as a pool of one.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Final

from mlxpin.config import Settings
from mlxpin.errors import (
    ConfigError,
    LockStaleError,
    MlxpinError,
    OverBudgetError,
    PreflightError,
)
from mlxpin.plan.launch import (
    PRIVATE_PORT_SHOWN,
    LaunchPlan,
    model_plan,
    read_api_key,
)
from mlxpin.project.manifest import GatewaySpec, Manifest, ModelSpec, load_manifest
from mlxpin.project.memory import physical_memory
from mlxpin.project.selection import pick
from mlxpin.runtime.server import ServerRuntime, server_runtime
from mlxpin.util.jsonable import fields_json

if TYPE_CHECKING:  # the boot path of a one-host launch never imports the distributed plan
    from mlxpin.plan.distributed import DistributedPlan

#: What one mlx_lm.server holds on top of its weights: the Python interpreter, mlx and
#: its kernels, the tokenizer, and a floor of KV cache and activations. Measured on the
#: tiny model at ~0.35 GB RSS (Linux, CPU); a large model's KV cache grows with context,
#: so the budget itself should keep room to spare.
SERVER_OVERHEAD_BYTES: Final = 512 * 1024 * 1024


@dataclass(frozen=True)
class ModelPolicy:
    """How the pool treats one model once it runs."""

    evictable: bool  # may be stopped to make room, for idleness or by an operator
    restart_at_once: bool  # after a crash (else: on its next request)
    fatal_when_spent: bool  # its spent restart budget ends the run (exit 70)


ON_DEMAND = ModelPolicy(evictable=True, restart_at_once=False, fatal_when_spent=False)  # serve
RESIDENT = ModelPolicy(evictable=False, restart_at_once=True, fatal_when_spent=True)  # launch


@dataclass(frozen=True)
class PoolModelPlan:
    launch: LaunchPlan  # the server's argv, environment, cwd and snapshots
    weights: int  # locked bytes of the model, its draft and its adapter
    cost: int  # weights + SERVER_OVERHEAD_BYTES
    idle_ttl: float  # seconds; 0 = never stopped for idleness
    preload: bool
    group: DistributedPlan | None = None  # set: `mlx.launch` runs it over several hosts
    policy: ModelPolicy = ON_DEMAND

    @property
    def name(self) -> str:
        return self.launch.name

    @classmethod
    def of(
        cls,
        launch: LaunchPlan,
        group: DistributedPlan | None,
        *,
        idle_ttl: float,
        preload: bool,
        policy: ModelPolicy = ON_DEMAND,
    ) -> PoolModelPlan:
        """Its cost: locked bytes plus one server's overhead for each rank on this host (a
        group's ranks each hold part of the weights; together, on one host, at most all)."""
        weights = sum(s.total_size for s in launch.snapshots)
        local_ranks = 1 if group is None else max(1, sum(1 for r in group.ranks if r.local))
        cost = weights + SERVER_OVERHEAD_BYTES * local_ranks
        return cls(launch, weights, cost, idle_ttl, preload, group, policy)


@dataclass(frozen=True)
class ServePlan:
    host: str
    port: int
    models: tuple[PoolModelPlan, ...]
    budget: int | None  # bytes; None: no memory budget (launch)
    budget_source: str  # how the budget was chosen, for messages
    physical_memory: int
    max_loaded: int | None
    start_timeout: float
    api_key: str | None = field(default=None, repr=False)  # the gateway's bearer key
    max_connections: int = GatewaySpec().max_connections  # the listener's limits
    header_timeout: float = GatewaySpec().header_timeout

    @property
    def api_key_required(self) -> bool:
        return self.api_key is not None

    @property
    def launched(self) -> PoolModelPlan | None:
        """`launch`'s one model, which is never evicted: the endpoint is its own (named
        after it, healthy with it, no operator routes). None for `serve`."""
        only = self.models[0] if len(self.models) == 1 else None
        return only if only is not None and not only.policy.evictable else None

    def get(self, name: str) -> PoolModelPlan | None:
        return next((m for m in self.models if m.name == name), None)

    def to_json(self) -> dict[str, Any]:
        """What `serve --dry-run --json` prints as "plan"."""
        return {
            "endpoint": {"host": self.host, "port": self.port},
            "budget": {
                "total": self.budget,
                "source": self.budget_source,
                "physical_memory": self.physical_memory or None,
                "per_server_overhead": SERVER_OVERHEAD_BYTES,
            },
            "max_loaded": self.max_loaded,
            "start_timeout": self.start_timeout,
            "api_key_required": self.api_key_required,
            "models": [
                {
                    "name": m.name,
                    "api_label": m.launch.api_label,
                    "aliases": list(m.launch.aliases),
                    "argv": m.launch.shown_argv(),
                    "private": "unix socket" if m.launch.private_socket else "loopback port",
                    "upstream_model": m.launch.upstream_model,
                    "weights": m.weights,
                    "cost": m.cost,
                    "idle_ttl": m.idle_ttl,
                    "preload": m.preload,
                    "distributed": None if m.group is None else _group_json(m.group),
                    "snapshots": [
                        {k: v for k, v in fields_json(s).items() if k in _SNAPSHOT_KEYS}
                        for s in m.launch.snapshots
                    ],
                }
                for m in self.models
            ],
        }


_SNAPSHOT_KEYS: Final = ("name", "role", "path", "commit", "total_size")
#: How long a request waits for `launch`'s model while it (re)starts, before a 503.
LAUNCH_REQUEST_WAIT_S: Final = 30.0


def launch_serve_plan(chosen: LaunchPlan | DistributedPlan) -> ServePlan:
    """`mlxpin launch` as a pool: its one model (a rank group when distributed), resident,
    with no memory budget."""
    launch, group = (chosen, None) if isinstance(chosen, LaunchPlan) else (chosen.server, chosen)
    model = PoolModelPlan.of(launch, group, idle_ttl=0.0, preload=True, policy=RESIDENT)
    return ServePlan(
        host=launch.public_host,
        port=launch.public_port,
        models=(model,),
        budget=None,
        budget_source="launch: one model, no budget",
        physical_memory=0,
        max_loaded=None,
        start_timeout=LAUNCH_REQUEST_WAIT_S,
        api_key=launch.api_key,
        max_connections=launch.gateway.max_connections,
        header_timeout=launch.gateway.header_timeout,
    )


def plan_serve(
    settings: Settings,
    names: Sequence[str],
    *,
    environ: Mapping[str, str],
    host: str | None = None,
    port: int | None = None,
    verify: bool = False,
    memory: Callable[[], int] = physical_memory,
) -> ServePlan:
    """The plan for `mlxpin serve NAMES` (all models when none), or one error naming
    every model's problem (`PreflightError.of`)."""
    manifest = load_manifest(settings.manifest_path)
    specs = pick(manifest, names)
    table = manifest.serve
    public_port = table.port if port is None else port
    public_host = table.host if host is None else host
    # The pinned runtime (78 stale pin, 66 not installed) or this interpreter's mlx_lm (69
    # when there is none), before any model's own problem: nothing could serve them.
    runtime = server_runtime(settings, manifest)
    api_key = read_api_key(environ)
    physical = memory() if table.memory_budget.bytes is None else 0
    budget = table.memory_budget.resolve(physical)
    source = table.memory_budget.describe()
    problems: list[MlxpinError] = []
    stale: list[LockStaleError] = []
    models: list[PoolModelPlan] = []
    for spec in specs:
        try:
            launch, group = _server_plan(
                settings,
                manifest,
                spec,
                environ,
                public=(public_host, public_port),
                api_key=api_key,
                verify=verify,
                runtime=runtime,
            )
        except LockStaleError as exc:
            stale.append(exc)
            continue
        except MlxpinError as exc:
            problems.append(exc)
            continue
        ttl = spec.idle_ttl if spec.idle_ttl is not None else table.idle_ttl
        model = PoolModelPlan.of(launch, group, idle_ttl=ttl, preload=spec.name in table.preload)
        if model.cost > budget:
            problems.append(OverBudgetError(spec.name, model.cost, budget, source))
            continue
        models.append(model)
    if stale:  # one "run `mlxpin lock a b`" for every stale lock
        problems.insert(0, _merged(stale))
    if problems:
        raise PreflightError.of(problems)
    if table.max_loaded is not None and table.preload:
        preloaded = [m for m in models if m.preload]
        if len(preloaded) > table.max_loaded:
            raise ConfigError(
                f"{manifest.path}: [serve] preload names {len(preloaded)} models but "
                f"max_loaded is {table.max_loaded}",
                "preload at most max_loaded models, or raise max_loaded",
            )
    return ServePlan(
        host=public_host,
        port=public_port,
        models=tuple(models),
        budget=budget,
        budget_source=source,
        physical_memory=physical,
        max_loaded=table.max_loaded,
        start_timeout=table.start_timeout,
        api_key=api_key,
    )


def _server_plan(
    settings: Settings,
    manifest: Manifest,
    spec: ModelSpec,
    environ: Mapping[str, str],
    *,
    public: tuple[str, int],
    api_key: str | None,
    verify: bool,
    runtime: ServerRuntime,
) -> tuple[LaunchPlan, DistributedPlan | None]:
    """One model's server in the pool, in the pool's run directory (and its rank group,
    every host checked as `launch` checks them, for a distributed model)."""
    cwd = settings.state_dir / "run" / f"serve-{public[1]}" / spec.name
    if spec.distributed is not None:
        from mlxpin.plan.distributed import plan_distributed

        group = plan_distributed(settings, manifest, spec, environ=environ, verify=verify)
        group = replace(group, server=replace(group.server, public_port=public[1], cwd=cwd))
        return group.server, group
    launch = model_plan(
        settings,
        manifest,
        spec,
        public=public,
        cwd=cwd,
        api_key=api_key,
        verify=verify,
        runtime=runtime,
    )
    return launch, None


def _merged(stale: Sequence[LockStaleError]) -> LockStaleError:
    return LockStaleError(
        [p for e in stale for p in e.problems],
        list(dict.fromkeys(n for e in stale for n in e.names)),
    )


def _group_json(group: DistributedPlan) -> dict[str, Any]:
    return {
        "backend": group.backend,
        "pipeline": group.pipeline,
        "ranks": len(group.ranks),
        "hosts": [h.host for h in group.hosts],
        "shares": [share.to_json() for share in group.shares],  # what each host holds
        "argv": group.launch_argv(PRIVATE_PORT_SHOWN),
    }
