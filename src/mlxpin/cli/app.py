"""The command line: parse, call the core, render. No logic of its own."""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, ParamSpec, TypeVar

import typer

from mlxpin import __version__
from mlxpin.cli.output import CommandExit, Output, report_error, run_guarded, settings_for

__all__ = ["Output", "report_error", "settings_for"]

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
CacheDirOpt = Annotated[
    Path | None,
    typer.Option(
        "--cache-dir",
        help="Hugging Face hub cache to use (default: $HF_HUB_CACHE, else $HF_HOME/hub).",
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


def guarded(func: Callable[P, R]) -> Callable[P, R]:
    """Turn mlxpin errors into a message and an exit code; tracebacks only when debugging."""

    @functools.wraps(func)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        results: list[R] = []

        def call() -> None:
            try:
                results.append(func(*args, **kwargs))
            except typer.Exit as request:
                raise CommandExit(int(request.exit_code)) from None

        code = run_guarded(
            call,
            as_json=bool(kwargs.get("as_json", False)),
            quiet=bool(kwargs.get("quiet", False)),
            verbose=bool(kwargs.get("verbose", False)),
        )
        if code != 0 or not results:
            raise typer.Exit(code)
        return results[0]

    return wrapper


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
    # Each verb's CLI lives beside its renderer; importing registers it on `app`, and the
    # import order is the order of `mlxpin --help`: the main job first.
    import importlib

    for module in ("lock", "store", "launch", "serve", "ops"):
        importlib.import_module(f"mlxpin.cli.{module}")


def main() -> None:
    _register()
    app()
