"""`mlxpin lock`: command line and rendering."""

from __future__ import annotations

from typing import Annotated

import typer

from mlxpin.cli.app import (
    Common,
    NamesArg,
    report_error,
    verb,
)
from mlxpin.cli.render import human_size, short_commit, short_date
from mlxpin.commands import lock as lock_cmd
from mlxpin.errors import UsageError


def describe_change(change: lock_cmd.LockChange) -> str | None:
    rev = change.revision or "path"
    new = f"{short_commit(change.new_commit)} ({short_date(change.new_date)})"
    if change.action == "kept":
        if change.new_commit is None:
            return f"{change.name}: kept {change.source} ({human_size(change.total_size)})"
        return f"{change.name}: kept {rev} {new}"
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


@verb("lock", uses=("manifest", "lock_dir"))
def lock_command(
    names: NamesArg = None,
    update: Annotated[
        bool,
        typer.Option(
            "--update",
            help="Re-resolve the named models (default: all) to the newest commit of their "
            "revision, and print what changed.",
        ),
    ] = False,
    check: Annotated[
        bool,
        typer.Option(
            "--check",
            help="No network, no writes: exit 78 listing what is missing, stale or orphaned.",
        ),
    ] = False,
    jobs: Annotated[
        int, typer.Option("--jobs", "-j", min=1, help="Resolve at most this many models at once.")
    ] = lock_cmd.MAX_PARALLEL,
    *,
    common: Common,
) -> None:
    """Pin every model's revision to a commit and its files' sizes and hashes in lock/.

    Keeps valid pins untouched (no network for them), locks what is missing or stale,
    and deletes lock files of models no longer in the manifest.
    """
    out = common.output()
    settings = common.settings()
    selected = list(names or ())
    if check:
        if update:
            raise UsageError(
                "--check and --update cannot be combined",
                "--check only reads; run `mlxpin lock --update` on its own to move pins",
            )
        checked = lock_cmd.check(settings, selected)
        for state in checked.states:
            if state.state == "ok":
                out.line(f"{state.name}: ok")
            else:
                out.line(f"{state.name}: {state.state} ({state.reason})")
        out.result(checked.to_json())
        if checked.problem is not None:
            if not common.as_json:
                report_error(checked.problem, False)
            raise typer.Exit(int(checked.exit_code))
        return
    result = lock_cmd.lock(settings, selected, update=update, jobs=jobs)
    for change in result.changes:
        text = describe_change(change)
        if text and not (common.quiet and change.action == "kept"):
            out.line(text)
    out.result(result.to_json())
    if result.errors:
        for failure in result.errors:
            report_error(failure, False)
        raise typer.Exit(int(result.exit_code))
