"""The command line: parse, call the core, render. No logic of its own."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer

from mlxpin import __version__
from mlxpin.cli.output import (
    CommandExit,
    Common,
    Output,
    report_error,
    run_guarded,
    settings_for,
)

__all__ = ["Common", "Group", "Output", "report_error", "settings_for", "verb"]

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


# The options every verb shares, by the name its function would give them.
COMMON_OPTIONS: dict[str, tuple[Any, Any]] = {
    "cache_dir": (CacheDirOpt, None),
    "manifest": (ManifestOpt, None),
    "lock_dir": (LockDirOpt, None),
    "as_json": (JsonOpt, False),
    "quiet": (QuietOpt, False),
    "verbose": (VerboseOpt, False),
}
PROJECT = ("cache_dir", "manifest", "lock_dir")
KEYWORD_ONLY = inspect.Parameter.KEYWORD_ONLY
OUTPUT = ("as_json", "quiet", "verbose")


def _guarded(func: Callable[[], None], common: Common) -> None:
    """Turn mlxpin errors into a message and an exit code; tracebacks only when debugging."""

    def call() -> None:
        try:
            func()
        except typer.Exit as request:
            raise CommandExit(int(request.exit_code)) from None

    code = run_guarded(call, as_json=common.as_json, quiet=common.quiet, verbose=common.verbose)
    if code != 0:
        raise typer.Exit(code)


@dataclass(frozen=True)
class Group:
    """Options several verbs take, declared once; the function receives them as one value."""

    options: Mapping[str, tuple[Any, Any]]  # name -> (annotation, default), in --help order
    build: Callable[..., Any]  # the options by name -> the value


def _signature(func: Callable[..., None], built: Collection[str]) -> inspect.Signature:
    """``func``'s signature, evaluated; the types of the ``built`` parameters may be imported
    for the type checker only (the command line never sees them: their options stand there)."""
    raw = inspect.signature(func).parameters
    only_typed = {str(raw[name].annotation): object for name in built}
    return inspect.signature(func, eval_str=True, locals=only_typed)


def _parameter(name: str, declared: tuple[Any, Any], kind: Any) -> inspect.Parameter:
    annotation, default = declared
    return inspect.Parameter(name, kind, default=default, annotation=annotation)


def verb(
    name: str,
    *,
    on: typer.Typer | None = None,
    uses: Sequence[str] = PROJECT,
    guard: bool = True,
    groups: Mapping[str, Group] | None = None,
) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """Register `func(..., common: Common)` as the command NAME.

    The command line gets the function's own options, then the shared ones it `uses`
    (plus --json/-q/-v), each declared once in COMMON_OPTIONS; the function receives
    them as one `Common`. A parameter named in `groups` stands for that group's options
    on the command line and receives them built. With `guard`, errors become a message
    and an exit code.
    """
    shared = (*uses, *OUTPUT)
    grouped = groups or {}

    def register(func: Callable[..., None]) -> Callable[..., None]:
        own = _signature(func, grouped)
        params: list[inspect.Parameter] = []
        for p in own.parameters.values():
            if p.name in grouped:
                options = grouped[p.name].options
                params += [_parameter(key, options[key], p.kind) for key in options]
            elif p.name != "common":
                params.append(p)
        params += [_parameter(key, COMMON_OPTIONS[key], KEYWORD_ONLY) for key in shared]

        @functools.wraps(func)
        def command(**kwargs: Any) -> None:
            common = Common(**{key: kwargs.pop(key) for key in shared})
            given = {p: {key: kwargs.pop(key) for key in grouped[p].options} for p in grouped}

            def call() -> None:  # building a group may refuse the options: guarded too
                built = {p: grouped[p].build(**options) for p, options in given.items()}
                func(common=common, **kwargs, **built)

            if guard:
                _guarded(call, common)
            else:
                call()

        command.__signature__ = own.replace(parameters=params)  # type: ignore[attr-defined]
        command.__annotations__ = {p.name: p.annotation for p in params}
        (on or app).command(name)(command)
        return func

    return register


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

    for module in ("lock", "store", "launch", "serve", "transfer", "ops"):
        importlib.import_module(f"mlxpin.cli.{module}")


def main() -> None:
    _register()
    app()
