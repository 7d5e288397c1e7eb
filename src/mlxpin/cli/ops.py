"""`mlxpin service`, `gc`, `add`, `remove` and `init`: command line and rendering."""

from __future__ import annotations

import os
import sys
from argparse import Namespace
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from mlxpin.cli.lock import describe_change
from mlxpin.cli.output import CommandExit, Common, Output, report_error
from mlxpin.errors import UsageError, human_size

if TYPE_CHECKING:
    from mlxpin.commands.service import UnitRequest
    from mlxpin.service.units import CommandRun


def _refuse_with_print(print_only: bool, flag: bool, option: str, does: str) -> None:
    """--print only shows what would be done, so it cannot run systemctl/launchctl too."""
    if print_only and flag:
        raise UsageError(
            f"--print and {option} cannot be combined", f"--print {does} and runs nothing"
        )


def _warn(out: Output, warnings: tuple[str, ...]) -> None:
    for warning in warnings:
        out.note(f"mlxpin: warning: {warning}")


def _ran_then(out: Output, ran: tuple[CommandRun, ...], heading: str, steps: Sequence[str]) -> None:
    """The systemctl/launchctl commands that ran, then the ones left to the user."""
    for run in ran:
        out.line(f"ran: {' '.join(run.argv)}")
    if steps:
        out.line(heading)
        for step in steps:
            out.line(f"  {step}")


def _request(args: Namespace) -> UnitRequest:
    """The unit the arguments name: a model's, or with --serve the `mlxpin serve` one."""
    from mlxpin.commands.service import UnitRequest

    if args.serve and args.name is not None:
        raise UsageError("give a model NAME or --serve, not both")
    if not args.serve and args.name is None:
        raise UsageError("say which model: NAME, or --serve for the `mlxpin serve` unit")
    how: dict[str, Any] = {
        key: getattr(args, key, None) for key in ("log_file", "env_file", "run_as")
    }
    return UnitRequest(args.name or "serve", args.platform, args.system, serve=args.serve, **how)


def service_install(args: Namespace, common: Common) -> None:
    from mlxpin.commands import service

    request, print_only = _request(args), args.print_only
    _refuse_with_print(print_only, args.enable, "--enable", "writes")
    out = common.output()
    installed = service.install(
        common.settings(), request, os.environ, print_only=print_only, enable=args.enable
    )
    result = installed.result
    _warn(out, result.warnings)
    if print_only:
        out.line(result.content.rstrip("\n"))
        out.note(f"mlxpin: would write {result.path} (--print: nothing written)")
    else:
        if result.written:
            out.line(f"{result.name}: wrote {result.path}")
        else:
            out.line(f"{result.name}: {result.path} is already up to date")
        _ran_then(out, result.ran, "next:", result.next_steps)
    out.result(installed.to_json())


def service_uninstall(args: Namespace, common: Common) -> None:
    from mlxpin.commands import service

    request, print_only = _request(args), args.print_only
    _refuse_with_print(print_only, args.disable, "--disable", "removes")
    out = common.output()
    uninstalled = service.uninstall(
        request, os.environ, print_only=print_only, disable=args.disable
    )
    result = uninstalled.result
    name = result.name
    if print_only:
        verb = "would remove" if result.existed else "nothing to remove at"
        out.line(f"{name}: {verb} {result.path}")
    elif result.removed:
        out.line(f"{name}: removed {result.path}")
    else:
        out.line(f"{name}: not installed ({result.path} does not exist)")
    heading = "if it is running, stop it with:" if not print_only else "then run:"
    _ran_then(out, result.ran, heading, result.next_steps if result.existed else ())
    out.result(uninstalled.to_json())


def service_show(args: Namespace, common: Common) -> None:
    from mlxpin.commands import service

    out = common.output()
    request = _request(args)
    shown = service.show(common.settings(), request, os.environ)
    built = shown.built
    _warn(out, built.warnings)
    out.line(built.content.rstrip("\n"))
    if not shown.installed:
        out.note(f"mlxpin: {built.path} is not installed")
    elif not shown.up_to_date:
        again = "--serve" if request.serve else request.name
        out.note(f"mlxpin: {built.path} differs; `mlxpin service install {again}` updates it")
    out.result(shown.to_json())


# --- gc -----------------------------------------------------------------------------------


def gc_command(args: Namespace, common: Common) -> None:
    from mlxpin.commands import gc as gc_cmd

    out = common.output()
    settings = common.settings()
    include_foreign = args.include_foreign
    result = gc_cmd.gc(
        settings, yes=args.yes, include_foreign=include_foreign, forget_missing=args.forget_missing
    )
    for problem in result.problems:
        out.note(f"mlxpin: warning: {problem.message} (its files are unknown, so kept)")
    for root in result.roots:
        if common.verbose:
            out.note(f"mlxpin: live: {root.lock_dir} ({root.locks} locks)")
    for outcome in result.outcomes:
        doomed = outcome.item
        size = human_size(doomed.total_size) if doomed.total_size else "-"
        status = "" if outcome.status in ("would_remove", "removed") else f"  [{outcome.status}]"
        if outcome.detail and outcome.status not in ("would_remove", "removed"):
            status += f" {outcome.detail}"
        out.line(f"{doomed.kind:<10} {size:>9}  {doomed.path}  ({doomed.reason}){status}")
    plan = result.plan
    if result.dry_run:
        if plan.doomed:
            out.line(
                f"would free {human_size(plan.size)} ({len(plan.doomed)} items); "
                "nothing deleted: run `mlxpin gc"
                + (" --all" if include_foreign else "")
                + " --yes` to delete"
            )
        else:
            out.line("nothing to collect")
    else:
        out.line(f"freed {human_size(result.freed)}")
        busy = [o for o in result.skipped if o.status == "busy"]
        if busy:
            out.note(
                f"mlxpin: {len(busy)} item(s) skipped: a fetch is using them; run gc again later"
            )
    if plan.kept and not include_foreign:
        out.line(
            f"kept {len(plan.kept)} unreferenced Hub-cache file(s), "
            f"{human_size(plan.kept_size)}, that mlxpin did not download (--all deletes them)"
        )
        if common.verbose:
            for kept in plan.kept:
                out.line(f"  kept {human_size(kept.size):>9}  {kept.path}  ({kept.reason})")
    out.result(result.to_json())
    failed = result.failed
    if failed:
        print(
            f"mlxpin: error: {len(failed)} item(s) could not be deleted "
            f"(first: {failed[0].item.path}: {failed[0].detail})",
            file=sys.stderr,
        )
        raise CommandExit(int(result.exit_code))


# --- manifest edits -------------------------------------------------------------------------


def add_command(args: Namespace, common: Common) -> None:
    from mlxpin.commands import edit
    from mlxpin.project.edit import AddRequest

    out = common.output()
    files = tuple(args.files) if args.files else None
    request = AddRequest(
        args.name, args.repo, args.path, args.revision, args.label, args.port, files
    )
    result = edit.add(common.settings(), request, then_lock=args.then_lock)
    added = result.added
    _warn(out, added.warnings)
    out.line(
        f"{added.name}: added to {added.manifest} (label {added.api_label}, port {added.port}, "
        f"{added.source})"
    )
    if result.locked is None:
        out.line(f"next: mlxpin lock {added.name} && mlxpin fetch {added.name}")
        out.result(result.to_json())
        return
    for change in result.locked.changes:
        text = describe_change(change)
        if text and change.action != "kept":
            out.line(text)
    out.result(result.to_json())
    if result.locked.errors:
        for failure in result.locked.errors:
            report_error(failure, False)
        out.note(f"mlxpin: {added.name} stays in the manifest; fix the cause and run mlxpin lock")
        raise CommandExit(int(result.exit_code))


def remove_command(args: Namespace, common: Common) -> None:
    from mlxpin.commands import edit

    out = common.output()
    result = edit.remove(common.settings(), args.name)
    removed = result.removed
    out.line(f"{removed.name}: removed from {removed.manifest}")
    if removed.lock_file is not None:
        out.line(f"{removed.name}: deleted its lock file {removed.lock_file}")
    out.line("its snapshot stays on disk until `mlxpin gc --yes`")
    out.result(result.to_json())


def init_command(args: Namespace, common: Common) -> None:
    from mlxpin.commands import edit

    out = common.output()
    result = edit.init(common.settings())
    out.line(f"wrote {result.created.manifest}: edit it, then run `mlxpin lock` and `mlxpin fetch`")
    out.result(result.to_json())
