"""`mlxpin launch`: plan one model's boot offline, then run it as a resident pool.

`plan` reads the manifest, the lock and the snapshot (or, for a distributed model,
asks every host); `run` hands the plan to the pool engine (`serve.poolserver`), which
returns 0 after a signal and raises ServerCrashedError (70) past the crash budget.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from mlxpin.config import Settings
from mlxpin.plan.launch import LaunchPlan, plan_launch
from mlxpin.project.manifest import parse_manifest

if TYPE_CHECKING:  # a one-host boot never imports the distributed planner
    from mlxpin.plan.distributed import DistributedPlan
    from mlxpin.supervise.restart import RestartPolicy

__all__ = ["Watchdog", "plan", "run"]

Watchdog = tuple[float, float]
"""A distributed group's progress probe: (interval, timeout) in seconds."""


def plan(
    settings: Settings, name: str | None, environ: Mapping[str, str], *, verify: bool
) -> LaunchPlan | DistributedPlan:
    """The plan of ``name`` (or the manifest's only model); every problem is an error.
    The manifest is read once, and the distributed planner imported only for a manifest
    that says the word."""
    try:
        data = settings.manifest_path.read_bytes()
    except OSError:  # plan_launch reads it again and says what is wrong
        return plan_launch(settings, name, environ=environ, verify=verify)
    manifest = parse_manifest(data, settings.manifest_path)
    if b"distributed" in data:
        from mlxpin.plan.distributed import distributed_spec, plan_distributed

        if distributed_spec(settings, name, manifest)[1]:
            return plan_distributed(
                settings, name, environ=environ, verify=verify, manifest=manifest
            )
    return plan_launch(settings, name, environ=environ, verify=verify, manifest=manifest)


def run(
    chosen: LaunchPlan | DistributedPlan,
    environ: Mapping[str, str],
    policy: RestartPolicy,
    watchdog: Watchdog,
) -> int:
    if isinstance(chosen, LaunchPlan):
        from mlxpin.supervise.runner import run_plan

        return run_plan(chosen, environ, policy)
    from mlxpin.plan.serve import launch_serve_plan
    from mlxpin.supervise.rankgroup import WatchdogPolicy, group_servers
    from mlxpin.supervise.runner import run_pool_plan

    group = group_servers(WatchdogPolicy(*watchdog))  # the group is the one resident model
    return run_pool_plan(launch_serve_plan(chosen.server, chosen), environ, policy, group)
