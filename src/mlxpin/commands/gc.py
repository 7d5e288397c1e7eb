"""`mlxpin gc`: find what no lock references and, with `yes`, delete it.

The store floor does the work: `mlxpin.store.gc.inventory` reads the live lock dirs and the
disk, `mlxpin.store.gc.plan` decides (purely) what is garbage, `mlxpin.store.gc.sweep`
deletes one item safely. This verb adds the installed runtimes (`mlxpin.runtime.garbage`),
refuses to delete while it cannot tell what a lock needs, and returns a frozen result.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from typing import Any

from mlxpin.config import Settings
from mlxpin.errors import ConfigError, ExitCode, LockCorruptError, Run
from mlxpin.runtime.garbage import live_runtime_keys, runtime_garbage
from mlxpin.runtime.layout import RuntimeLayout
from mlxpin.store.gc.inventory import LiveRoot, LiveScan, collect_live, read_roots, scan
from mlxpin.store.gc.plan import GcPlan, RootOnDisk, plan
from mlxpin.store.gc.sweep import LOCK_TIMEOUT_S, ItemOutcome, sweep_item
from mlxpin.store.inuse import remove_stale
from mlxpin.store.layout import StoreLayout
from mlxpin.util.jsonable import json_value


@dataclass(frozen=True)
class GcResult:
    dry_run: bool
    include_foreign: bool
    plan: GcPlan
    outcomes: tuple[ItemOutcome, ...]
    roots: tuple[LiveRoot, ...]
    problems: tuple[LockCorruptError, ...]

    @property
    def freed(self) -> int:
        return sum(o.item.total_size for o in self.outcomes if o.status == "removed")

    @property
    def skipped(self) -> tuple[ItemOutcome, ...]:
        return tuple(o for o in self.outcomes if o.status in ("busy", "changed", "live", "failed"))

    @property
    def failed(self) -> tuple[ItemOutcome, ...]:
        return tuple(o for o in self.outcomes if o.status == "failed")

    @property
    def exit_code(self) -> ExitCode:
        return ExitCode.IO if self.failed else ExitCode.OK

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": not self.skipped,
            "dry_run": self.dry_run,
            "all": self.include_foreign,
            "bytes": self.plan.size,
            "freed_bytes": self.freed,
            "items": json_value(self.outcomes),
            "kept": json_value(self.plan.kept),
            "kept_bytes": self.plan.kept_size,
            "roots": json_value(self.roots),
            "problems": json_value(self.problems),
        }


def _runtime_keys(
    settings: Settings, roots: tuple[LiveRoot, ...]
) -> tuple[set[str], list[LockCorruptError]]:
    """The runtimes the live lock dirs' lock/runtime.toml name."""
    return live_runtime_keys(sorted({settings.lock_dir, *(r.lock_dir for r in roots)}))


def _refuse_unsafe(
    settings: Settings,
    found: LiveScan,
    roots: tuple[RootOnDisk, ...],
    problems: tuple[LockCorruptError, ...],
    *,
    forget_missing: bool,
) -> None:
    """Raise when gc cannot tell what some lock needs, so deleting could lose a live file."""
    if problems:
        first = problems[0]
        raise LockCorruptError(
            first.file,
            first.problem,
            hint="gc deletes nothing while a lock it must keep alive is unreadable (it cannot "
            "tell what that lock needs); fix or delete that file, then run "
            f"{Run.of('gc', '--yes')} again",
        )
    if settings.lock_dir in found.unreadable:
        raise ConfigError(
            f"{settings.lock_dir} cannot be read ({found.unreadable[settings.lock_dir]}), so "
            "gc cannot tell which files its locks need",
            "fix its permissions, or run gc as the user who owns it",
        )
    unreadable = [d for d in found.unreadable if d != settings.lock_dir]
    if unreadable and not forget_missing:
        raise ConfigError(
            f"{unreadable[0]} fetched into this store but cannot be read "
            f"({found.unreadable[unreadable[0]]}), so gc cannot tell which files it still needs",
            "fix its permissions or run gc as its owner; if it is gone for good: "
            + Run.of("gc", "--yes", "--forget-missing"),
        )
    missing = [r.lock_dir for r in roots if r.lock_dir is not None and not r.exists]
    if missing and not forget_missing:
        raise ConfigError(
            f"{missing[0]} fetched into this store but cannot be found now (moved, deleted, "
            "or on a disk that is not mounted), so gc cannot tell which files it still needs",
            "mount or restore it, or if it is gone for good: "
            + Run.of("gc", "--yes", "--forget-missing"),
        )


def gc(
    settings: Settings,
    *,
    yes: bool = False,
    include_foreign: bool = False,
    forget_missing: bool = False,
    lock_timeout_s: float = LOCK_TIMEOUT_S,
    now: float | None = None,
) -> GcResult:
    """Plan, and with `yes` delete. Refuses to delete while a live lock file is unreadable."""
    layout = StoreLayout.of(settings)
    roots = read_roots(layout)
    found = collect_live(settings, layout, roots)
    live_roots, problems = found.roots, found.problems
    roots = tuple(
        replace(r, readable=False) if r.lock_dir in found.unreadable else r for r in roots
    )
    inventory = scan(layout, roots)
    moment = time.time() if now is None else now
    the_plan = plan(inventory, found.live, include_foreign=include_foreign, now=moment)
    runtimes = RuntimeLayout.of(settings)
    keys, runtime_problems = _runtime_keys(settings, live_roots)
    problems = (*problems, *runtime_problems)
    the_plan = GcPlan((*the_plan.doomed, *runtime_garbage(runtimes, keys, moment)), the_plan.kept)
    if not yes:
        outcomes = tuple(ItemOutcome(item, "would_remove") for item in the_plan.doomed)
        return GcResult(True, include_foreign, the_plan, outcomes, live_roots, problems)
    _refuse_unsafe(settings, found, roots, problems, forget_missing=forget_missing)
    remove_stale(layout)  # in-use records of processes that are gone
    # A lock written since the scan may have made something live again: read them once more.
    again = collect_live(settings, layout, read_roots(layout))
    live_again = again.live | {runtimes.path(k) for k in _runtime_keys(settings, again.roots)[0]}
    outcomes = tuple(sweep_item(item, live_again, lock_timeout_s) for item in the_plan.doomed)
    return GcResult(False, include_foreign, the_plan, outcomes, live_roots, problems)
