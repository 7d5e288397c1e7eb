"""`serve` preflight: manifest + locks + verified snapshots → a ServePlan (pure data).

Like `launch`'s plan (`mlxpin.serve.plan`), but for every named model at once: each
model's server argv, its cost (what its locked files weigh, plus a stated per-server
overhead), and the pool's limits (memory budget, max_loaded, TTLs). Every model's problem
-- stale lock, snapshot not fetched, larger than the whole budget -- is collected and
reported together before anything starts. No network, no socket, no huggingface_hub.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from mlxpin.config import Settings
from mlxpin.errors import (
    ConfigError,
    LockStaleError,
    MlxpinError,
    OverBudgetError,
    PreflightError,
)
from mlxpin.project.lockfile import valid_locks
from mlxpin.project.manifest import Manifest, ModelSpec, load_manifest
from mlxpin.project.memory import physical_memory
from mlxpin.project.selection import pick
from mlxpin.project.serveropts import server_argv
from mlxpin.runtime.server import ServerRuntime, server_runtime
from mlxpin.serve.plan import (
    OFFLINE_ENV,
    PRIVATE_HOST,
    REMOVED_ENV,
    UNIX_SERVER_MODULE,
    LaunchPlan,
    find_server,
    pinned_snapshot,
    read_api_key,
)
from mlxpin.store.layout import StoreLayout

#: What one mlx_lm.server holds on top of its weights: the Python interpreter, mlx and
#: its kernels, the tokenizer, and a floor of KV cache and activations. Measured on the
#: tiny model at ~0.35 GB RSS (Linux, CPU); a large model's KV cache grows with context,
#: so the budget itself should keep room to spare.
SERVER_OVERHEAD_BYTES: Final = 512 * 1024 * 1024


@dataclass(frozen=True)
class PoolModelPlan:
    launch: LaunchPlan  # the server's argv, environment, cwd and snapshots
    weights: int  # locked bytes of the model, its draft and its adapter
    cost: int  # weights + SERVER_OVERHEAD_BYTES
    idle_ttl: float  # seconds; 0 = never stopped for idleness
    preload: bool

    @property
    def name(self) -> str:
        return self.launch.name


@dataclass(frozen=True)
class ServePlan:
    host: str
    port: int
    models: tuple[PoolModelPlan, ...]
    budget: int  # bytes
    budget_source: str  # how the budget was chosen, for messages
    physical_memory: int
    max_loaded: int | None
    start_timeout: float
    api_key_required: bool
    manifest: Path

    def get(self, name: str) -> PoolModelPlan | None:
        return next((m for m in self.models if m.name == name), None)


def _roles(manifest: Manifest, spec: ModelSpec) -> list[tuple[str, str, ModelSpec]]:
    roles: list[tuple[str, str, ModelSpec]] = [("model", "--model", spec)]
    for role, flag, target in (
        ("draft", "--draft-model", spec.launch.draft),
        ("adapter", "--adapter-path", spec.launch.adapter),
    ):
        dependency = manifest.get(target) if target is not None else None
        if dependency is not None:
            roles.append((role, flag, dependency))
    return roles


def _model_plan(
    settings: Settings,
    manifest: Manifest,
    spec: ModelSpec,
    layout: StoreLayout,
    server: tuple[str, ...],
    port: int,
    verify: bool,
    api_key_required: bool,
    runtime: ServerRuntime,
) -> LaunchPlan:
    roles = _roles(manifest, spec)
    locks = valid_locks(settings.lock_dir, [s for _, _, s in roles])
    snapshots = [
        pinned_snapshot(layout, lock, role, verify)
        for (role, _, _), lock in zip(roles, locks, strict=True)
    ]
    args: list[str] = ["--host", PRIVATE_HOST]
    for (_, flag, _), snapshot in zip(roles, snapshots, strict=True):
        args += [flag, str(snapshot.path)]
    args += server_argv(spec.server)
    return LaunchPlan(
        name=spec.name,
        api_label=spec.api_label,
        aliases=spec.aliases,
        public_host=manifest.serve.host,
        public_port=port,
        private_host=PRIVATE_HOST,
        server_command=server,
        server_args=tuple(args),
        env_set=OFFLINE_ENV,
        env_unset=REMOVED_ENV,
        cwd=settings.state_dir / "run" / f"serve-{port}" / spec.name,
        snapshots=tuple(snapshots),
        api_key_required=api_key_required,
        private_socket=server[-1] == UNIX_SERVER_MODULE,
        gateway=spec.gateway,
        runtime=runtime,
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
    manifest = load_manifest(settings.manifest_path, parser="tomllib")
    specs = pick(manifest, names)
    table = manifest.serve
    public_port = table.port if port is None else port
    public_host = table.host if host is None else host
    # The pinned runtime (78 stale pin, 66 not installed) or this interpreter's mlx_lm; a
    # runtime's interpreter has no mlxpin in it, so its servers listen on loopback ports.
    runtime = server_runtime(settings, manifest)
    server = runtime.command if runtime.pinned else find_server()
    api_key_required = read_api_key(environ) is not None
    layout = StoreLayout.of(settings)
    physical = memory() if table.memory_budget.bytes is None else 0
    budget = table.memory_budget.resolve(physical)
    source = table.memory_budget.describe()
    problems: list[MlxpinError] = []
    stale: list[LockStaleError] = []
    models: list[PoolModelPlan] = []
    for spec in specs:
        if spec.distributed is not None:
            problems.append(
                ConfigError(
                    f"{spec.name} is a distributed model: `mlxpin serve` does not host "
                    "distributed models yet",
                    f"run it with `mlxpin launch {spec.name}`, or name the other models",
                )
            )
            continue
        try:
            launch = _model_plan(
                settings,
                manifest,
                spec,
                layout,
                server,
                public_port,
                verify,
                api_key_required,
                runtime,
            )
        except LockStaleError as exc:
            stale.append(exc)
            continue
        except MlxpinError as exc:
            problems.append(exc)
            continue
        weights = sum(s.total_size for s in launch.snapshots)
        cost = weights + SERVER_OVERHEAD_BYTES
        if cost > budget:
            problems.append(OverBudgetError(spec.name, cost, budget, source))
            continue
        ttl = spec.idle_ttl if spec.idle_ttl is not None else table.idle_ttl
        models.append(
            PoolModelPlan(
                launch=launch,
                weights=weights,
                cost=cost,
                idle_ttl=ttl,
                preload=spec.name in table.preload,
            )
        )
    if stale:  # one "run `mlxpin lock a b`" for every stale lock
        merged = LockStaleError(
            [p for e in stale for p in e.problems],
            list(dict.fromkeys(n for e in stale for n in _names(e))),
        )
        problems.insert(0, merged)
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
        api_key_required=api_key_required,
        manifest=manifest.path,
    )


def _names(error: LockStaleError) -> list[str]:
    return [p.split(":", 1)[0] for p in error.problems]
