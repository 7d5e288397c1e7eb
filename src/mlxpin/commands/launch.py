"""`mlxpin launch`: plan one model's boot offline; `supervise.runner.run_plan` runs it."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from mlxpin.config import Settings
from mlxpin.plan.launch import LaunchPlan, choose_model, plan_launch
from mlxpin.project.manifest import load_manifest

if TYPE_CHECKING:  # a one-host boot never imports the distributed planner
    from mlxpin.plan.distributed import DistributedPlan

__all__ = ["plan"]


def plan(
    settings: Settings, name: str | None, environ: Mapping[str, str], *, verify: bool
) -> LaunchPlan | DistributedPlan:
    """The plan of ``name`` (or the manifest's only model); every problem is an error."""
    manifest = load_manifest(settings.manifest_path)
    spec = choose_model(manifest, name, settings)
    if spec.distributed is not None:
        from mlxpin.plan.distributed import plan_distributed

        return plan_distributed(settings, manifest, spec, environ=environ, verify=verify)
    return plan_launch(settings, manifest, spec, environ=environ, verify=verify)
