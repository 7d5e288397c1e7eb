"""`mlxpin service`, `gc`, `add`, `remove` and `init`: command line and rendering."""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from mlxpin.cli.app import (
    Common,
    Group,
    Output,
    app,
    report_error,
    verb,
)
from mlxpin.cli.lock import describe_change
from mlxpin.cli.render import human_size
from mlxpin.errors import UsageError

if TYPE_CHECKING:  # the modules themselves load lazily: `launch` registers this file too
    from mlxpin.commands.service import UnitRequest
    from mlxpin.service.units import CommandRun, Platform

service_app = typer.Typer(
    name="service",
    help=(
        "Boot units that run `mlxpin launch NAME` at boot: a systemd user unit on Linux, "
        "a launchd agent on macOS (--system: system-wide)."
    ),
    no_args_is_help=True,
)
app.add_typer(service_app, name="service")


class PlatformChoice(StrEnum):
    linux = "linux"
    macos = "macos"


NameArg = Annotated[str, typer.Argument(help="Model name from the manifest.", show_default=False)]
UnitNameArg = Annotated[
    str | None,
    typer.Argument(help="Model name from the manifest (or --serve).", show_default=False),
]
ServeOpt = Annotated[
    bool,
    typer.Option(
        "--serve",
        help="The unit boots `mlxpin serve` (every model behind one endpoint) instead of "
        "`mlxpin launch NAME`; it is named mlxpin-serve (io.mlxpin.serve on macOS).",
    ),
]


def _unit_name(name: str | None, serve: bool) -> str:
    from mlxpin.errors import UsageError

    if serve and name is not None:
        raise UsageError("give a model NAME or --serve, not both")
    if not serve and name is None:
        raise UsageError("say which model: NAME, or --serve for the `mlxpin serve` unit")
    return name or "serve"


SystemOpt = Annotated[
    bool,
    typer.Option(
        "--system",
        help="System-wide unit (/etc/systemd/system, /Library/LaunchDaemons; needs root) "
        "that starts at boot without a login, instead of the user's own.",
    ),
]
PlatformOpt = Annotated[
    PlatformChoice | None,
    typer.Option(
        "--platform",
        help="Write the unit for this platform instead of the current one.",
        show_default=False,
    ),
]
PrintOpt = Annotated[
    bool, typer.Option("--print", help="Only print what would be done; write nothing.")
]
LogFileOpt = Annotated[
    Path | None,
    typer.Option(
        "--log-file",
        help="Where the service's output goes (default: <state dir>/logs/NAME.log).",
        show_default=False,
    ),
]
EnvFileOpt = Annotated[
    Path | None,
    typer.Option(
        "--env-file",
        help="systemd only: optional file with MLXPIN_API_KEY=... read at start "
        "(default: ~/.config/mlxpin/NAME.env, /etc/mlxpin/NAME.env with --system).",
        show_default=False,
    ),
]
EnableOpt = Annotated[
    bool,
    typer.Option(
        "--enable",
        help="Also run systemctl/launchctl to enable and start it now (else print how).",
    ),
]
DisableOpt = Annotated[
    bool,
    typer.Option(
        "--disable",
        help="First stop and disable it with systemctl/launchctl (else print how).",
    ),
]
RunAsOpt = Annotated[
    str | None,
    typer.Option(
        "--run-as",
        help="With --system: the account the service runs as (default: you).",
        show_default=False,
    ),
]


def _refuse_with_print(print_only: bool, flag: bool, option: str, does: str) -> None:
    """--print only shows what would be done, so it cannot run systemctl/launchctl too."""
    if print_only and flag:
        raise UsageError(
            f"--print and {option} cannot be combined", f"--print {does} and runs nothing"
        )


def _platform(choice: PlatformChoice | None) -> Platform | None:
    if choice is None:
        return None
    return "macos" if choice is PlatformChoice.macos else "linux"


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


def _request(
    name: str | None,
    serve: bool,
    system: bool,
    platform: PlatformChoice | None,
    log_file: Path | None = None,
    env_file: Path | None = None,
    run_as: str | None = None,
) -> UnitRequest:
    from mlxpin.commands.service import UnitRequest

    unit = _unit_name(name, serve)
    return UnitRequest(unit, _platform(platform), system, log_file, env_file, run_as, serve)


# Which unit (every service verb), and how it runs (`install` and `show`).
UNIT = Group(
    {
        "name": (UnitNameArg, None),
        "serve": (ServeOpt, False),
        "system": (SystemOpt, False),
        "platform": (PlatformOpt, None),
    },
    _request,
)
RUNNING_UNIT = Group(
    {
        **UNIT.options,
        "log_file": (LogFileOpt, None),
        "env_file": (EnvFileOpt, None),
        "run_as": (RunAsOpt, None),
    },
    _request,
)


@verb("install", on=service_app, groups={"request": RUNNING_UNIT})
def service_install(
    request: UnitRequest,
    print_only: PrintOpt = False,
    enable: EnableOpt = False,
    *,
    common: Common,
) -> None:
    """Write a boot unit running `mlxpin launch NAME` (or, with --serve, `mlxpin serve`)
    offline, with absolute paths.

    Validates the manifest first; warns when the lock or the snapshot is not ready. The
    unit holds no secret and never restarts on a permanent error (exit 65/66/77/78).
    """
    from mlxpin.commands import service

    _refuse_with_print(print_only, enable, "--enable", "writes")
    out = common.output()
    installed = service.install(
        common.settings(), request, os.environ, print_only=print_only, enable=enable
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


@verb("uninstall", on=service_app, uses=(), groups={"request": UNIT})
def service_uninstall(
    request: UnitRequest,
    print_only: PrintOpt = False,
    disable: DisableOpt = False,
    *,
    common: Common,
) -> None:
    """Remove the boot unit of NAME (nothing to do when it is not installed)."""
    from mlxpin.commands import service

    _refuse_with_print(print_only, disable, "--disable", "removes")
    out = common.output()
    uninstalled = service.uninstall(request, os.environ, print_only=print_only, disable=disable)
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


@verb("show", on=service_app, groups={"request": RUNNING_UNIT})
def service_show(
    request: UnitRequest,
    *,
    common: Common,
) -> None:
    """Print the unit `install` would write, and whether the installed one matches it."""
    from mlxpin.commands import service

    out = common.output()
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


@verb("gc")
def gc_command(
    yes: Annotated[
        bool, typer.Option("--yes", "-y", help="Delete (without it: only list what would go).")
    ] = False,
    include_foreign: Annotated[
        bool,
        typer.Option(
            "--all",
            help="Also delete Hub-cache blobs mlxpin did not download (other tools' files) "
            "that no mlxpin lock references.",
        ),
    ] = False,
    forget_missing: Annotated[
        bool,
        typer.Option(
            "--forget-missing",
            help="Forget projects that fetched here but whose lock dir is gone for good "
            "(without it, --yes refuses while one is missing: it may be on an unmounted disk).",
        ),
    ] = False,
    *,
    common: Common,
) -> None:
    """Delete snapshots and blobs that no lock of any project references (dry run by default).

    Keeps everything the locks of this project and of every project that ran `mlxpin
    fetch` use, and every Hub-cache file mlxpin did not download itself (unless --all).
    """
    from mlxpin.commands import gc as gc_cmd

    out = common.output()
    settings = common.settings()
    result = gc_cmd.gc(
        settings, yes=yes, include_foreign=include_foreign, forget_missing=forget_missing
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
        raise typer.Exit(int(result.exit_code))


# --- manifest edits -------------------------------------------------------------------------


@verb("add", uses=("manifest", "lock_dir"))
def add_command(
    name: NameArg,
    repo: Annotated[
        str | None,
        typer.Option("--repo", help="Hub repo id, owner/name.", show_default=False),
    ] = None,
    path: Annotated[
        str | None,
        typer.Option(
            "--path", help="A local model directory instead of --repo.", show_default=False
        ),
    ] = None,
    revision: Annotated[
        str | None,
        typer.Option(
            "--revision", help="Branch, tag or 40-hex commit (default: main).", show_default=False
        ),
    ] = None,
    label: Annotated[
        str | None,
        typer.Option("--label", help="api_label clients send (default: NAME).", show_default=False),
    ] = None,
    port: Annotated[
        int | None,
        typer.Option(
            "--port",
            help="Public port (default: the lowest from 8080 no other model uses).",
            show_default=False,
        ),
    ] = None,
    files: Annotated[
        list[str] | None,
        typer.Option("--files", help="Allow-list glob; repeat for several.", show_default=False),
    ] = None,
    then_lock: Annotated[
        bool, typer.Option("--lock", help="Lock the new model right away.")
    ] = False,
    *,
    common: Common,
) -> None:
    """Add model NAME to the manifest, keeping every comment and line of the file.

    The result is validated before anything is written (a bare repo id such as
    `gemma-4-31b-it` is refused: that is an api_label; the repo needs its owner).
    """
    from mlxpin.commands import edit
    from mlxpin.project.edit import AddRequest

    out = common.output()
    request = AddRequest(name, repo, path, revision, label, port, tuple(files) if files else None)
    result = edit.add(common.settings(), request, then_lock=then_lock)
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
        raise typer.Exit(int(result.exit_code))


@verb("remove", uses=("manifest", "lock_dir"))
def remove_command(
    name: NameArg,
    *,
    common: Common,
) -> None:
    """Remove model NAME from the manifest, and its lock file.

    Refused while another model uses it as draft or adapter. Its files stay on disk until
    `mlxpin gc --yes`.
    """
    from mlxpin.commands import edit

    out = common.output()
    result = edit.remove(common.settings(), name)
    removed = result.removed
    out.line(f"{removed.name}: removed from {removed.manifest}")
    if removed.lock_file is not None:
        out.line(f"{removed.name}: deleted its lock file {removed.lock_file}")
    out.line("its snapshot stays on disk until `mlxpin gc --yes`")
    out.result(result.to_json())


@verb("init", uses=("manifest",))
def init_command(
    *,
    common: Common,
) -> None:
    """Write a commented starter manifest.toml (never over an existing file)."""
    from mlxpin.commands import edit

    out = common.output()
    result = edit.init(common.settings())
    out.line(f"wrote {result.created.manifest}: edit it, then run `mlxpin lock` and `mlxpin fetch`")
    out.result(result.to_json())
