"""`mlxpin export`, `mlxpin import`, `mlxpin mirror`: command line and rendering."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated

import typer

from mlxpin.cli.app import Common, NamesArg, Output, verb
from mlxpin.cli.render import human_size, short_commit
from mlxpin.cli.store import Bars
from mlxpin.errors import UsageError

OutputOpt = Annotated[
    str,
    typer.Option(
        "--output",
        "-o",
        help="Bundle file to write, or - for stdout (e.g. `-o - | ssh mac2 mlxpin import -`).",
        show_default=False,
    ),
]


def _bars(as_json: bool, quiet: bool) -> Bars:
    return Bars(sys.stderr.isatty() and not as_json and not quiet)


@verb("export")
def export_command(
    output: OutputOpt,
    names: NamesArg = None,
    *,
    common: Common,
) -> None:
    """Write the named models' locks and verified files as one bundle (an uncompressed tar).

    Drafts and adapters come along. Refuses (66) unless every model is fetched and
    verified. Nothing is read from the network.
    """
    from mlxpin.commands import transfer

    as_json, quiet = common.as_json, common.quiet
    to_stdout = output == "-"
    if to_stdout and sys.stdout.isatty():
        raise UsageError("refusing to write a bundle to a terminal", "redirect it or pipe it")
    if to_stdout and as_json:
        raise UsageError("--json cannot share stdout with the bundle (-o -)")
    # With -o -, stdout carries the bundle: every message goes to stderr.
    out = Output(as_json, quiet or to_stdout)
    settings = common.settings()
    bars = _bars(as_json, quiet)
    try:
        result = transfer.export(
            settings,
            list(names or ()),
            None if to_stdout else Path(output),
            sys.stdout.buffer,
            bars("export"),
        )
    finally:
        bars.close()
    summary = (
        f"exported {', '.join(result.models)}: {result.blobs} files, "
        f"{human_size(result.total_size)} to {result.output}"
    )
    if to_stdout:
        Output(False, quiet).note(summary)
    else:
        out.line(summary)
    out.result(result.to_json())


BundleArg = Annotated[
    str, typer.Argument(help="Bundle file to import, or - for stdin.", show_default=False)
]
WriteLocksOpt = Annotated[
    bool,
    typer.Option(
        "--write-locks",
        help="Adopt the bundle's lock files where this project has none.",
    ),
]


@verb("import")
def import_command(
    bundle: BundleArg,
    write_locks: WriteLocksOpt = False,
    *,
    common: Common,
) -> None:
    """Install a bundle into the Hugging Face cache, verifying every byte (no network).

    A model whose lock differs from this project's lock is refused (78). A damaged,
    truncated or foreign bundle installs nothing and exits 65 naming the file.
    """
    from mlxpin.commands import transfer

    out = common.output()
    settings = common.settings()
    bars = _bars(common.as_json, common.quiet)
    try:
        result = transfer.import_(
            settings,
            None if bundle == "-" else Path(bundle),
            sys.stdin.buffer,
            write_locks,
            bars("import"),
        )
    finally:
        bars.close()
    for model in result.models:
        note = {
            "same": "",
            "written": f"; lock written to {settings.lock_dir}",
            "absent": "; this project has no lock for it (adopt it with --write-locks)",
        }[model.lock]
        out.line(
            f"{model.name}: imported and verified {model.files} files, "
            f"{human_size(model.total_size)} at {short_commit(model.commit)} "
            f"(wrote {human_size(model.written_bytes)}){note}"
        )
    out.result(result.to_json())


HostOpt = Annotated[
    str, typer.Option("--host", help="Address to listen on (default: loopback only).")
]
PortOpt = Annotated[int, typer.Option("--port", help="TCP port (0: any free port).")]
TransfersOpt = Annotated[
    int,
    typer.Option("--max-transfers", help="Files served at once; more requests wait their turn."),
]


@verb("mirror")
def mirror_command(
    names: NamesArg = None,
    host: HostOpt = "127.0.0.1",
    port: PortOpt = 8765,
    max_transfers: TransfersOpt = 64,
    *,
    common: Common,
) -> None:
    """Serve this host's locked, verified models read-only over the Hub's download protocol.

    Other hosts set HF_ENDPOINT=http://HOST:PORT and run `mlxpin fetch` (or `hf download
    REPO --revision COMMIT`). Only locked and verified files are served; MLXPIN_API_KEY
    makes it require that key (clients send it as HF_TOKEN). Stops on SIGTERM/Ctrl-C.
    """
    from mlxpin.commands import mirror

    out = common.output()
    settings = common.settings()
    plan = mirror.plan_mirror(settings, os.environ, list(names or ()), host, port, max_transfers)
    for model in plan.models:
        state = "verified" if model.verified else f"not served until fetched ({model.problem})"
        out.note(f"{model.name}: {model.repo}@{short_commit(model.commit)} {state}")

    def ready(url: str) -> None:
        out.note(f"mlxpin mirror: serving {len(plan.models)} model(s) on {url}")
        out.result({"ok": True, "url": url, "models": [m.name for m in plan.models]})

    mirror.run_mirror(plan, ready)
