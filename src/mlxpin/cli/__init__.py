"""The command line: parse, call the core, render. No logic of its own."""

from __future__ import annotations

import functools
import json
import logging
import os
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, ParamSpec, TypeVar

import typer

from mlxpin import __version__
from mlxpin.config import Settings, is_true, load_settings
from mlxpin.errors import ExitCode, MlxpinError

P = ParamSpec("P")
R = TypeVar("R")

app = typer.Typer(
    name="mlxpin",
    help=(
        "Reproducible model manifest, lock and offline launcher for mlx_lm.server.\n\n"
        "manifest.toml declares models (api_label + launch.repo); `lock` pins them, "
        "`fetch` downloads and verifies them, `launch` boots one offline."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

log = logging.getLogger("mlxpin")

ManifestOpt = Annotated[
    Path | None,
    typer.Option(
        "--manifest",
        "-m",
        help="manifest.toml to use (default: $MLXPIN_MANIFEST, else ./manifest.toml).",
        show_default=False,
    ),
]
LockDirOpt = Annotated[
    Path | None,
    typer.Option(
        "--lock-dir",
        help="Lock directory (default: $MLXPIN_LOCK_DIR, else lock/ beside the manifest).",
        show_default=False,
    ),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print a machine-readable result on stdout.")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="Print only errors.")]
VerboseOpt = Annotated[bool, typer.Option("--verbose", "-v", help="Print debug logs.")]
NamesArg = Annotated[
    list[str] | None,
    typer.Argument(help="Model names from the manifest (default: all).", show_default=False),
]


class Output:
    """Where results and messages go: stdout for results, stderr for everything else."""

    def __init__(self, as_json: bool, quiet: bool) -> None:
        self.as_json = as_json
        self.quiet = quiet

    def line(self, text: str) -> None:
        if not self.as_json and not self.quiet:
            print(text, flush=True)

    def result(self, data: dict[str, Any]) -> None:
        if self.as_json:
            print(json.dumps(data, indent=2, sort_keys=True), flush=True)

    def note(self, text: str) -> None:
        if not self.quiet:
            print(text, file=sys.stderr, flush=True)


def _setup_logging(quiet: bool, verbose: bool) -> None:
    level = logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO
    logging.basicConfig(level=level, format="mlxpin: %(message)s", stream=sys.stderr)
    log.setLevel(level)
    if not verbose:
        for noisy in ("httpx", "httpx2", "huggingface_hub", "filelock", "aiohttp.access"):
            logging.getLogger(noisy).setLevel(logging.WARNING)


def report_error(error: MlxpinError, as_json: bool) -> None:
    print(f"mlxpin: error: {error.message}", file=sys.stderr)
    if error.hint:
        print(f"  hint: {error.hint}", file=sys.stderr)
    if as_json:
        print(json.dumps({"ok": False, "error": error.to_json()}, indent=2, sort_keys=True))


def guarded(func: Callable[P, R]) -> Callable[P, R]:
    """Turn mlxpin errors into a message and an exit code; tracebacks only when debugging."""

    @functools.wraps(func)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        as_json = bool(kwargs.get("as_json", False))
        _setup_logging(bool(kwargs.get("quiet", False)), bool(kwargs.get("verbose", False)))
        debug = is_true(os.environ.get("MLXPIN_DEBUG"))
        try:
            return func(*args, **kwargs)
        except MlxpinError as error:
            if debug:
                traceback.print_exc()
            report_error(error, as_json)
            raise typer.Exit(int(error.exit_code)) from None
        except KeyboardInterrupt:
            print("mlxpin: interrupted", file=sys.stderr)
            raise typer.Exit(130) from None
        except (typer.Exit, typer.Abort):
            raise
        except Exception as error:
            if debug:
                raise
            print(
                f"mlxpin: internal error: {type(error).__name__}: {error}\n"
                "  hint: this is a bug in mlxpin; rerun with MLXPIN_DEBUG=1 for a traceback "
                "and report it",
                file=sys.stderr,
            )
            raise typer.Exit(int(ExitCode.SOFTWARE)) from None

    return wrapper


def settings_for(
    manifest: Path | None, lock_dir: Path | None, cache_dir: Path | None = None
) -> Settings:
    return load_settings(
        os.environ, cwd=Path.cwd(), manifest=manifest, lock_dir=lock_dir, cache_dir=cache_dir
    )


def _version(value: bool) -> None:
    if value:
        print(f"mlxpin {__version__}")
        raise typer.Exit(0)


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Print the version."),
    ] = False,
) -> None:
    """Reproducible model manifest, lock and offline launcher for mlx_lm.server."""


def _register() -> None:
    # Each verb's CLI lives beside its renderer; importing registers it on `app`.
    from mlxpin.cli import launch, lock, ops, store  # noqa: F401


def main() -> None:
    _register()
    app()
