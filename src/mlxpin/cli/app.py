"""The command line: one argparse parser; only the verb that runs is imported.

Each verb is a function here that declares its arguments (its docstring is the verb's
help) and names its handler, `module:function` in this package, called with the parsed
arguments and their `Common`. Stdlib only: `launch` and `serve` boot through here.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Iterable, Sequence

from mlxpin import __version__

TYPE_CHECKING = False  # `typing` and `pathlib` cost `--version` more than all the rest
if TYPE_CHECKING:
    from typing import Any, NoReturn


class Parser(argparse.ArgumentParser):
    """argparse as the command line has always parsed: an option that needs a value takes
    the next word even when it starts with "-" (`--revision -x`), and names may stand on
    both sides of an option."""

    def parse_known_args(
        self, args: Iterable[str] | None = None, namespace: Any = None
    ) -> tuple[Any, list[str]]:
        valued = {o for a in self._actions if a.nargs is None for o in a.option_strings}
        words, glued = list(sys.argv[1:] if args is None else args), []
        while words and words[0] != "--":
            word = words.pop(0)
            if word in valued and words and words[0].startswith("-") and words[0] != "-":
                word = f"{word}={words.pop(0)}"
            glued.append(word)
        args, extra = super().parse_known_args(glued + words, namespace)
        names = getattr(args, "names", None)
        if isinstance(names, list) and extra and not any(w.startswith("-") for w in extra):
            names += extra  # `lock a --update b`: names on both sides of an option
            extra = []
        return args, extra

    json = False  # --json was given: a usage error is also said on stdout, as JSON

    def error(self, message: str) -> NoReturn:
        if self.json:
            import json

            from mlxpin.errors import UsageError

            error = UsageError(message, f"see {self.prog} --help").to_json()
            print(json.dumps({"ok": False, "error": error}, indent=2, sort_keys=True))
        super().error(message)


class Formatter(argparse.RawDescriptionHelpFormatter):
    """argparse's, given the terminal's width as `shutil.get_terminal_size` finds it, but
    without importing shutil (argparse builds a formatter for every argument declared, and
    shutil's import cost every verb ~2 ms)."""

    def __init__(self, prog: str) -> None:
        try:
            columns = int(os.environ["COLUMNS"])
        except (KeyError, ValueError):
            columns = 0
        if columns <= 0:
            try:
                columns = os.get_terminal_size().columns  # of standard output
            except (ValueError, OSError):
                columns = 0
        super().__init__(prog, width=(columns or 80) - 2)


class Version(argparse.Action):
    """`--version`, without argparse's formatter (which asks the terminal its size)."""

    def __call__(self, *_: object) -> None:
        print(f"mlxpin {__version__}")
        raise SystemExit(0)


PROJECT = ("cache_dir", "manifest", "lock_dir")
WHERE = {
    "cache_dir": (
        ("--cache-dir",),
        "Hugging Face hub cache to use (default: $HF_HUB_CACHE, else $HF_HOME/hub).",
    ),
    "manifest": (
        ("--manifest", "-m"),
        "manifest.toml to use (default: $MLXPIN_MANIFEST, else ./manifest.toml).",
    ),
    "lock_dir": (
        ("--lock-dir",),
        "Lock directory (default: $MLXPIN_LOCK_DIR, else lock/ beside the manifest).",
    ),
}


def shared(p: Parser, uses: Sequence[str] = PROJECT) -> None:
    """The options every verb shares: where things are (those it `uses`), and output."""
    from pathlib import Path

    for name in uses:
        flags, text = WHERE[name]
        p.add_argument(*flags, type=Path, dest=name, help=text)
    p.add_argument(
        "--json",
        dest="as_json",
        action="store_true",
        help="Print a machine-readable result on stdout.",
    )
    p.add_argument("--quiet", "-q", action="store_true", help="Print only errors.")
    p.add_argument("--verbose", "-v", action="store_true", help="Print debug logs.")


def handler(
    p: Parser, run: str, *, guard: bool = True, logs: bool = True, brief: bool = False
) -> None:
    """`run` (`module:function`) handles the verb; with `guard`, errors become exit codes;
    without `logs`, `logging` is set up (and imported) only for --verbose; a `brief` verb
    makes no cyclic garbage to speak of and runs without the cyclic collector (whose passes
    over what the imports made, all of it alive until exit, cost `status` ~1.5 %)."""
    p.set_defaults(handler=run, guard=guard, logs=logs, brief=brief, usage=p)


def number(kind: type[int] | type[float], least: float, most: float | None = None) -> Any:
    """An argparse type: a number from ``least`` (to ``most``)."""

    def parse(text: str) -> int | float:
        value = kind(text)
        if most is not None and not least <= value <= most:
            raise argparse.ArgumentTypeError(f"must be from {least:g} to {most:g}")
        if value < least:
            raise argparse.ArgumentTypeError(f"must be at least {least:g}")
        return value

    parse.__name__ = kind.__name__  # argparse names it: "invalid int value"
    return parse


def progress(p: Parser) -> None:
    p.add_argument(
        "--progress",
        choices=("auto", "bar", "lines", "json"),
        default="auto",
        help="How long work reports progress on stderr: a bar (auto on a terminal), a line "
        "every 2 s (auto when piped), or JSON events (one object a line).",
    )


def names(p: Parser, text: str = "Model names from the manifest (default: all).") -> None:
    p.add_argument("names", nargs="*", help=text)


# --------------------------------------------------------------------------- the verbs


def lock(p: Parser) -> None:
    """Pin every model's revision to a commit and its files' sizes and hashes in lock/.

    Keeps valid pins untouched (no network for them), locks what is missing or stale,
    and deletes lock files of models no longer in the manifest.
    """
    names(p)
    p.add_argument(
        "--update",
        action="store_true",
        help="Re-resolve the named models (default: all) to the newest commit of their "
        "revision, and print what changed.",
    )
    p.add_argument(
        "--update-runtime",
        action="store_true",
        help="Re-resolve the [runtime] pin to the newest versions its ranges allow, "
        "and print old → new versions.",
    )
    p.add_argument(
        "--check",
        action="store_true",
        help="No network, no writes: exit 78 listing what is missing, stale or orphaned.",
    )
    p.add_argument(
        "--jobs",
        "-j",
        type=number(int, 1),
        default=32,  # commands.lock.MAX_PARALLEL (a test keeps them equal)
        help="Resolve at most this many models at once. [default: 32]",
    )
    shared(p, ("manifest", "lock_dir"))
    handler(p, "lock:lock_command")


def fetch(p: Parser) -> None:
    """Download exactly the locked files into the Hugging Face cache and verify every byte.

    Safe to interrupt (a rerun resumes) and to run in parallel. A second run on an
    unchanged cache makes no request and hashes nothing.
    """
    names(p)
    p.add_argument(
        "--connections",
        type=number(int, 1, 64),
        help="Ranged connections per large file (default: $MLXPIN_FETCH_CONNECTIONS, "
        "else 8; files under $MLXPIN_RANGED_MIN_MB, default 64 MB, use one).",
    )
    p.add_argument(
        "--hosts",
        action="store_true",
        help="Also prepare every other host of a distributed model over ssh "
        "(this host's lock and verified bytes are sent; the host verifies them).",
    )
    progress(p)
    shared(p)
    handler(p, "store:fetch_command")


def build(p: Parser) -> None:
    """Make built models ([models.X.build]) from their locked recipes, offline.

    Runs the step (mlx_lm convert or fuse) in the pinned builder from the verified input
    snapshots. The first build records its output's hashes in lock/NAME.toml; later builds
    must give the same bytes (else 65, nothing installed). `fetch` builds them too.
    """
    names(p, "Built models from the manifest (default: all built models).")
    p.add_argument(
        "--check",
        action="store_true",
        help="Build again and compare with the recorded output; install nothing "
        "(exit 65 naming each file that differs).",
    )
    progress(p)
    shared(p)
    handler(p, "store:build_command")


def verify(p: Parser) -> None:
    """Re-hash every fetched file against the lock (exit 65 naming each bad file)."""
    names(p)
    shared(p)
    handler(p, "store:verify_command", logs=False, brief=True)  # it logs nothing


def status(p: Parser) -> None:
    """Show each model's label, source, locked commit, fetch state and size on disk."""
    names(p)
    shared(p)
    handler(p, "store:status_command", logs=False, brief=True)  # it logs nothing


def run_options(p: Parser) -> None:
    """The options of `boot.RunOptions`, which `launch` and `serve` share."""
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="Print the plan (argv, snapshots, ...) offline and exit.",
    )
    p.add_argument(
        "--verify",
        action="store_true",
        help="Re-hash every file against the lock before starting.",
    )
    p.add_argument(
        "--max-restarts",
        type=number(int, 0),
        default=5,
        help="Crashes of a model within 10 minutes before giving up on it "
        "(launch exits 70; serve marks it failed). [default: 5]",
    )
    p.add_argument(
        "--restart-delay",
        type=number(float, 0.0),
        default=1.0,
        help="First restart delay in seconds (doubles, max 60). [default: 1.0]",
    )
    p.add_argument(
        "--ready-timeout",
        type=number(float, 1.0),
        default=900.0,
        help="Seconds a server may take to answer its warm-up. [default: 900.0]",
    )


def launch(p: Parser) -> None:
    """Boot one locked, fetched model offline: mlx_lm.server behind a label-checking gateway.

    Makes no network request. Refuses with exit 78 if the lock is stale or missing, 66 if
    the snapshot is not fetched, 69 if mlx_lm.server is missing or the port is taken.
    """
    p.add_argument(
        "name",
        nargs="?",
        help="Model to launch (default: $MLXPIN_MODEL, else the manifest's only model).",
    )
    run_options(p)
    p.add_argument(
        "--probe-interval",
        type=number(float, 0.1),
        default=30.0,
        help="Distributed: seconds between progress probes when no request completed. "
        "[default: 30.0]",
    )
    p.add_argument(
        "--probe-timeout",
        type=number(float, 0.1),
        default=60.0,
        help="Distributed: a 1-token probe slower than this restarts the whole group. "
        "[default: 60.0]",
    )
    shared(p)
    handler(p, "boot:launch_command", guard=False)


def endpoint(p: Parser) -> None:
    """`--host` and `--port` of the `serve` endpoint (`serve` and `ps`)."""
    p.add_argument("--host", help="Listen address (default: [serve] host, else 127.0.0.1).")
    p.add_argument(
        "--port", type=number(int, 1, 65535), help="Port (default: [serve] port, else 8080)."
    )


def serve(p: Parser) -> None:
    """Serve many pinned models behind one endpoint, each started on demand.

    Within [serve] memory_budget and max_loaded, least recently used idle models are
    stopped to make room; idle models stop after idle_ttl. Makes no network request.
    Refuses before starting anything (every model's problem at once): 78 stale lock or a
    model larger than the budget, 66 not fetched, 69 port taken or mlx_lm.server missing.
    """
    names(p, "Models to serve (default: every model of the manifest).")
    run_options(p)
    endpoint(p)
    shared(p)
    handler(p, "serveboot:serve_command", guard=False)


def ps(p: Parser) -> None:
    """Show what a running `mlxpin serve` is doing: each model's state, pid, cost, use.

    Asks the endpoint of the manifest's [serve] table (or --host/--port) on its
    /mlxpin/status route, with MLXPIN_API_KEY when it is set.
    """
    endpoint(p)
    shared(p, ("manifest",))
    handler(p, "serveboot:ps_command")


def logs(p: Parser) -> None:
    """Print a model server's own output (<state dir>/logs/models/NAME.log, rotated).

    `launch` and `serve` write it, and copy each line to their own stderr as `[label] ...`.
    """
    p.add_argument("name", help="The model's name in the manifest.")
    p.add_argument("--follow", "-f", action="store_true", help="Keep printing new lines.")
    p.add_argument(
        "-n", "--lines", type=number(int, 0), default=50, help="Lines to print first (default: 50)."
    )
    shared(p, ("manifest",))
    handler(p, "serveboot:logs_command")


def export(p: Parser) -> None:
    """Write the named models' locks and verified files as one bundle (an uncompressed tar).

    Drafts and adapters come along. Refuses (66) unless every model is fetched and
    verified. Nothing is read from the network.
    """
    names(p)
    p.add_argument(
        "--output",
        "-o",
        required=True,
        help="Bundle file to write, or - for stdout (e.g. `-o - | ssh mac2 mlxpin import -`).",
    )
    progress(p)
    shared(p)
    handler(p, "transfer:export_command")


def import_(p: Parser) -> None:
    """Install a bundle into the Hugging Face cache, verifying every byte (no network).

    A model whose lock differs from this project's lock is refused (78). A damaged,
    truncated or foreign bundle installs nothing and exits 65 naming the file.
    """
    p.add_argument("bundle", help="Bundle file to import, or - for stdin.")
    p.add_argument(
        "--write-locks",
        action="store_true",
        help="Adopt the bundle's lock files where this project has none.",
    )
    shared(p)
    progress(p)
    handler(p, "transfer:import_command")


def mirror(p: Parser) -> None:
    """Serve this host's locked, verified models read-only over the Hub's download protocol.

    Other hosts set HF_ENDPOINT=http://HOST:PORT and run `mlxpin fetch` (or `hf download
    REPO --revision COMMIT`). Only locked and verified files are served; MLXPIN_API_KEY
    makes it require that key (clients send it as HF_TOKEN). Stops on SIGTERM/Ctrl-C.
    """
    names(p)
    p.add_argument(
        "--host",
        default="127.0.0.1",
        help="Address to listen on (default: loopback only). [default: 127.0.0.1]",
    )
    p.add_argument(
        "--port", type=int, default=8765, help="TCP port (0: any free port). [default: 8765]"
    )
    p.add_argument(
        "--max-transfers",
        type=int,
        default=64,
        help="Files served at once; more requests wait their turn. [default: 64]",
    )
    p.add_argument(
        "--allow-gated",
        action="store_true",
        help="Also serve models that are gated or private upstream (refused by default).",
    )
    p.add_argument(
        "--api-key-file",
        metavar="FILE",
        help="Require the key in FILE (clients send it as HF_TOKEN); as MLXPIN_API_KEY_FILE.",
    )
    shared(p)
    handler(p, "transfer:mirror_command")


def gc(p: Parser) -> None:
    """Delete snapshots and blobs that no lock of any project references (dry run by default).

    Keeps everything the locks of this project and of every project that ran `mlxpin
    fetch` use, and every Hub-cache file mlxpin did not download itself (unless --all).
    """
    p.add_argument(
        "--yes", "-y", action="store_true", help="Delete (without it: only list what would go)."
    )
    p.add_argument(
        "--all",
        dest="include_foreign",
        action="store_true",
        help="Also delete Hub-cache blobs mlxpin did not download (other tools' files) "
        "that no mlxpin lock references.",
    )
    p.add_argument(
        "--forget-missing",
        action="store_true",
        help="Forget projects that fetched here but whose lock dir is gone for good "
        "(without it, --yes refuses while one is missing: it may be on an unmounted disk).",
    )
    shared(p)
    handler(p, "ops:gc_command")


def add(p: Parser) -> None:
    """Add model NAME to the manifest, keeping every comment and line of the file.

    The result is validated before anything is written (a bare repo id such as
    `gemma-4-31b-it` is refused: that is an api_label; the repo needs its owner).
    """
    p.add_argument("name", help="Model name from the manifest.")
    p.add_argument("--repo", help="Hub repo id, owner/name.")
    p.add_argument("--path", help="A local model directory instead of --repo.")
    p.add_argument("--revision", help="Branch, tag or 40-hex commit (default: main).")
    p.add_argument("--label", help="api_label clients send (default: NAME).")
    p.add_argument(
        "--port", type=int, help="Public port (default: the lowest from 8080 no other model uses)."
    )
    p.add_argument("--files", action="append", help="Allow-list glob; repeat for several.")
    p.add_argument(
        "--lock", dest="then_lock", action="store_true", help="Lock the new model right away."
    )
    shared(p, ("manifest", "lock_dir"))
    handler(p, "ops:add_command")


def remove(p: Parser) -> None:
    """Remove model NAME from the manifest, and its lock file.

    Refused while another model uses it as draft or adapter. Its files stay on disk until
    `mlxpin gc --yes`.
    """
    p.add_argument("name", help="Model name from the manifest.")
    shared(p, ("manifest", "lock_dir"))
    handler(p, "ops:remove_command")


def init(p: Parser) -> None:
    """Write a commented starter manifest.toml (never over an existing file)."""
    shared(p, ("manifest",))
    handler(p, "ops:init_command")


def unit(p: Parser, running: bool = True) -> None:
    """Which boot unit (every `service` verb) and, when `running`, how it runs."""
    from pathlib import Path

    p.add_argument("name", nargs="?", help="Model name from the manifest (or --serve).")
    p.add_argument(
        "--serve",
        action="store_true",
        help="The unit boots `mlxpin serve` (every model behind one endpoint) instead of "
        "`mlxpin launch NAME`; it is named mlxpin-serve (io.mlxpin.serve on macOS).",
    )
    p.add_argument(
        "--system",
        action="store_true",
        help="System-wide unit (/etc/systemd/system, /Library/LaunchDaemons; needs root) "
        "that starts at boot without a login, instead of the user's own.",
    )
    p.add_argument(
        "--platform",
        choices=("linux", "macos"),
        help="Write the unit for this platform instead of the current one.",
    )
    if not running:
        return
    p.add_argument(
        "--log-file",
        type=Path,
        help="Where the service's output goes (default: <state dir>/logs/NAME.log).",
    )
    p.add_argument(
        "--env-file",
        type=Path,
        help="systemd only: optional file with MLXPIN_API_KEY=... read at start "
        "(default: ~/.config/mlxpin/NAME.env, /etc/mlxpin/NAME.env with --system).",
    )
    p.add_argument(
        "--run-as", help="With --system: the account the service runs as (default: you)."
    )


PRINT_HELP = "Only print what would be done; write nothing."


def service_install(p: Parser) -> None:
    """Write a boot unit running `mlxpin launch NAME` (or, with --serve, `mlxpin serve`)
    offline, with absolute paths.

    Validates the manifest first; warns when the lock or the snapshot is not ready. The
    unit holds no secret and never restarts on a permanent error (exit 65/66/77/78).
    """
    unit(p)
    p.add_argument("--print", dest="print_only", action="store_true", help=PRINT_HELP)
    p.add_argument(
        "--enable",
        action="store_true",
        help="Also run systemctl/launchctl to enable and start it now (else print how).",
    )
    shared(p)
    handler(p, "ops:service_install")


def service_uninstall(p: Parser) -> None:
    """Remove the boot unit of NAME (nothing to do when it is not installed)."""
    unit(p, running=False)
    p.add_argument("--print", dest="print_only", action="store_true", help=PRINT_HELP)
    p.add_argument(
        "--disable",
        action="store_true",
        help="First stop and disable it with systemctl/launchctl (else print how).",
    )
    shared(p, ())
    handler(p, "ops:service_uninstall")


def service_show(p: Parser) -> None:
    """Print the unit `install` would write, and whether the installed one matches it."""
    unit(p)
    shared(p)
    handler(p, "ops:service_show")


def service(p: Parser) -> None:
    """Boot units that run `mlxpin launch NAME` at boot: a systemd user unit on Linux, a
    launchd agent on macOS (--system: system-wide)."""
    subcommands(
        p, {"install": service_install, "uninstall": service_uninstall, "show": service_show}
    )


Declare = Callable[[Parser], None]
# The order of `mlxpin --help`: the main job first.
VERBS: dict[str, Declare] = {
    "lock": lock,
    "fetch": fetch,
    "build": build,
    "verify": verify,
    "status": status,
    "launch": launch,
    "serve": serve,
    "ps": ps,
    "logs": logs,
    "export": export,
    "import": import_,
    "mirror": mirror,
    "gc": gc,
    "add": add,
    "remove": remove,
    "init": init,
    "service": service,
}


def _text(declare: Declare) -> str:
    lines = (declare.__doc__ or "").strip().splitlines()
    return "\n".join(line.removeprefix("    ") for line in lines)


def subcommands(p: Parser, verbs: dict[str, Declare], only: str | None = None) -> None:
    """Add ``verbs`` under ``p``, or with ``only`` (a verb), just that one. Other words
    for ``only`` list the verbs (for help and errors) without declaring their arguments."""
    p.set_defaults(handler=None, usage=p)  # no verb: the usage, as a usage error
    sub = p.add_subparsers(title="commands", metavar="COMMAND")
    for name, declare in verbs.items():
        if only in verbs and name != only:
            continue  # one verb runs: the others need not exist
        text = _text(declare)
        summary = text.split("\n\n")[0].replace("\n", " ")
        verb = sub.add_parser(
            name,
            help=summary,
            description=text,
            formatter_class=Formatter,
            allow_abbrev=False,  # --forget-missin is no --forget-missing
        )
        if only in (None, name):
            declare(verb)


def build_parser(only: str | None = None) -> Parser:
    """The whole command line, or what ``only`` (the first word) needs of it."""
    root = Parser(
        prog="mlxpin",
        description=(
            "Reproducible model manifest, lock and offline launcher for mlx_lm.server.\n\n"
            "manifest.toml declares models (api_label + launch.repo); `lock` pins them,\n"
            "`fetch` downloads and verifies them, `launch` boots one offline."
        ),
        formatter_class=Formatter,
        allow_abbrev=False,
    )
    root.add_argument("--version", action=Version, nargs=0, help="Print the version.")
    subcommands(root, VERBS, only)
    return root


def main(argv: Sequence[str] | None = None) -> int:
    """Run `mlxpin ARGV`; the exit code. Usage errors exit 2 (argparse's SystemExit)."""
    words = list(sys.argv[1:] if argv is None else argv)
    Parser.json = "--json" in words
    args, extra = build_parser(words[0] if words else "").parse_known_args(words)
    if extra:  # said by the verb's parser, which names the verb in its usage line
        args.usage.error(f"unrecognized arguments: {' '.join(extra)}")
    if args.handler is None:
        args.usage.print_help()
        return 2
    if not args.brief:
        return _run(args)
    import gc

    collecting = gc.isenabled()
    gc.disable()
    try:
        return _run(args)
    finally:
        if collecting:
            gc.enable()


def _run(args: Any) -> int:
    """Import the verb's handler and run it."""
    import dataclasses
    import importlib

    from mlxpin.cli.output import Common, run_guarded

    module, _, function = args.handler.partition(":")
    command = getattr(importlib.import_module(f"mlxpin.cli.{module}"), function)
    given: dict[str, Any] = {
        f.name: getattr(args, f.name, None) for f in dataclasses.fields(Common)
    }
    common = Common(**given)
    if not args.guard:
        return int(command(args, common))
    return run_guarded(
        lambda: command(args, common),
        as_json=common.as_json,
        quiet=common.quiet,
        verbose=common.verbose,
        logs=args.logs,
    )
