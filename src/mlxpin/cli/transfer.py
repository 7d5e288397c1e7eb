"""`mlxpin export`, `mlxpin import`, `mlxpin mirror`: command line and rendering."""

from __future__ import annotations

import os
import sys
from argparse import Namespace
from pathlib import Path

from mlxpin.cli.output import Common, Output
from mlxpin.cli.render import short_commit
from mlxpin.cli.store import bars_for
from mlxpin.errors import UsageError, human_size


def export_command(args: Namespace, common: Common) -> None:
    from mlxpin.commands import transfer

    as_json, quiet = common.as_json, common.quiet
    output: str = args.output
    to_stdout = output == "-"
    if to_stdout and sys.stdout.isatty():
        raise UsageError("refusing to write a bundle to a terminal", "redirect it or pipe it")
    if to_stdout and as_json:
        raise UsageError("--json cannot share stdout with the bundle (-o -)")
    # With -o -, stdout carries the bundle: every message goes to stderr.
    out = Output(as_json, quiet or to_stdout)
    settings = common.settings()
    with bars_for(common) as bars:
        result = transfer.export(
            settings,
            args.names,
            None if to_stdout else Path(output),
            sys.stdout.buffer,
            bars("export"),
        )
    summary = (
        f"exported {', '.join(result.models)}: {result.blobs} files, "
        f"{human_size(result.total_size)} to {result.output}"
    )
    if to_stdout:
        Output(False, quiet).note(summary)
    else:
        out.line(summary)
    out.result(result.to_json())


def import_command(args: Namespace, common: Common) -> None:
    from mlxpin.commands import transfer

    out = common.output()
    settings = common.settings()
    with bars_for(common) as bars:
        result = transfer.import_(
            settings,
            None if args.bundle == "-" else Path(args.bundle),
            sys.stdin.buffer,
            args.write_locks,
            bars("import"),
        )
    for model in result.models:
        note = {
            "same": "",
            "written": f"; lock written to {settings.lock_dir}",
            "absent": "; this project has no lock for it (adopt it with --write-locks)",
        }[model.lock]
        at = f" at {short_commit(model.commit)}" if model.commit else ""  # path models: none
        out.line(
            f"{model.name}: imported and verified {model.files} files, "
            f"{human_size(model.total_size)}{at} "
            f"(wrote {human_size(model.written_bytes)}){note}"
        )
    out.result(result.to_json())


def mirror_command(args: Namespace, common: Common) -> None:
    from mlxpin.commands import mirror
    from mlxpin.plan.launch import API_KEY_FILE_VARIABLE, API_KEY_VARIABLE

    out = common.output()
    settings = common.settings()
    environ = dict(os.environ)
    if args.api_key_file:
        environ.pop(API_KEY_VARIABLE, None)
        environ[API_KEY_FILE_VARIABLE] = args.api_key_file
    plan = mirror.plan_mirror(
        settings,
        environ,
        args.names,
        args.host,
        args.port,
        args.max_transfers,
        args.allow_gated,
    )
    for model in plan.models:
        state = "verified" if model.verified else f"not served until fetched ({model.problem})"
        out.note(f"{model.name}: {model.repo}@{short_commit(model.commit)} {state}")

    def ready(url: str) -> None:
        out.note(f"mlxpin mirror: serving {len(plan.models)} model(s) on {url}")
        out.result({"ok": True, "url": url, "models": [m.name for m in plan.models]})

    mirror.run_mirror(plan, ready)
