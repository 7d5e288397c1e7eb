"""`mlxpin lock`: command line and rendering."""

from __future__ import annotations

from argparse import Namespace

from mlxpin.cli.output import CommandExit, Common, report_error
from mlxpin.cli.render import short_commit, short_date
from mlxpin.commands import lock as lock_cmd
from mlxpin.errors import UsageError, human_size
from mlxpin.runtime.lock import RuntimeChange


def describe_change(change: lock_cmd.LockChange) -> str | None:
    rev = change.revision or "path"
    new = f"{short_commit(change.new_commit)} ({short_date(change.new_date)})"
    if change.action == "kept":
        if change.new_commit is None:
            return f"{change.name}: kept {change.source} ({human_size(change.total_size)})"
        return f"{change.name}: kept {rev} {new}"
    if change.action == "locked" and change.source.startswith("build ") and not change.total_size:
        why = f" [{change.reason}]" if change.reason else ""
        return (
            f"{change.name}: locked {change.source} → its input pins and builder; "
            f"`mlxpin build {change.name}` (or fetch) makes and records the output{why}"
        )
    if change.action == "locked":
        target = new if change.new_commit else "content hashes"
        why = f" [{change.reason}]" if change.reason else ""
        gated = "; gated: fetching needs a token with access" if change.gated else ""
        return (
            f"{change.name}: locked {change.source} → {target}, "
            f"{human_size(change.total_size)}{why}{gated}"
        )
    if change.action == "updated":
        delta = (
            f"{change.files_changed} files changed, {human_size(change.size_delta, signed=True)}"
        )
        if change.new_commit is None:
            return f"{change.name}: {change.source} re-hashed, {delta}"
        old = f"{short_commit(change.old_commit)} ({short_date(change.old_date)})"
        return f"{change.name}: {rev} {old} → {new}, {delta}"
    if change.action == "unchanged":
        return f"{change.name}: {rev} {new} is already the newest"
    if change.action == "removed":
        return f"{change.name}: removed orphaned {change.source}"
    return None


def describe_runtime(change: RuntimeChange) -> str | None:
    versions = f"mlx-lm {change.mlx_lm}, mlx {change.mlx}, {change.packages} packages pinned"
    key = (change.key or "")[:12]
    if change.action == "kept":
        return f"runtime: kept {versions} ({key})"
    if change.action == "locked":
        why = f" [{change.reason}]" if change.reason else ""
        return f"runtime: locked {versions} → {key}{why}"
    if change.action == "updated":
        moves = ", ".join(
            f"{c.name} {c.old or '(new)'} → {c.new or '(removed)'}" for c in change.changes
        )
        return f"runtime: {(change.old_key or '')[:12]} → {key}: {moves}"
    if change.action == "unchanged":
        return f"runtime: {versions} ({key}) is already the newest the ranges allow"
    if change.action == "removed":
        return "runtime: removed lock/runtime.toml (the manifest has no [runtime])"
    return None


def lock_command(args: Namespace, common: Common) -> None:
    out = common.output()
    settings = common.settings()
    selected = args.names
    if args.check:
        if args.update or args.update_runtime:
            raise UsageError(
                "--check cannot be combined with --update or --update-runtime",
                "--check only reads; run `mlxpin lock --update` (or --update-runtime) on its "
                "own to move pins",
            )
        checked = lock_cmd.check(settings, selected)
        for state in checked.all_states:
            if state.state == "ok":
                out.line(f"{state.name}: ok")
            else:
                out.line(f"{state.name}: {state.state} ({state.reason})")
        out.result(checked.to_json())
        if checked.problem is not None:
            if not common.as_json:
                report_error(checked.problem, False)
            raise CommandExit(int(checked.exit_code))
        return
    result = lock_cmd.lock(
        settings, selected, update=args.update, jobs=args.jobs, update_runtime=args.update_runtime
    )
    for change in result.changes:
        text = describe_change(change)
        if text and not (common.quiet and change.action == "kept"):
            out.line(text)
    for runtime, engine in ((result.runtime, None), *((e, e) for e in result.engines)):
        text = describe_runtime(runtime) if runtime is not None else None
        if text and not (common.quiet and runtime is not None and runtime.action == "kept"):
            out.line(text if engine is None else "engine " + text)
    out.result(result.to_json())
    if result.errors:
        for failure in result.errors:
            report_error(failure, False)
        raise CommandExit(int(result.exit_code))
