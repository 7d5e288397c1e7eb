"""The command line itself: help, version, the two launch parsers, error rendering."""

from __future__ import annotations

import subprocess
import sys

import pytest
import typer.main

from mlxpin.cli import boot as bootcli
from mlxpin.cli import serveboot as servecli
from mlxpin.cli.app import _register, app

from conftest import Project


@pytest.mark.parametrize("name", ["launch", "serve"])
def test_the_lean_boot_parsers_have_exactly_the_typer_options(name: str) -> None:
    _register()
    command = typer.main.get_command(app)
    typed = command.commands[name]  # type: ignore[attr-defined]
    typer_flags = {opt for param in typed.params for opt in param.opts if opt.startswith("-")}
    typer_flags -= {"--help", "-h"}
    lean = bootcli.parser() if name == "launch" else servecli.parser()
    lean_flags = {opt for action in lean._actions for opt in action.option_strings}
    assert lean_flags == typer_flags
    typer_defaults = {param.name: param.default for param in typed.params}
    lean_defaults = vars(lean.parse_args([]))
    if name == "serve":
        assert lean_defaults.pop("names") == [] and typer_defaults.pop("names") is None
    assert lean_defaults == typer_defaults


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mlxpin", *args], capture_output=True, text=True, check=False
    )


def test_help_and_version() -> None:
    result = run("--help")
    assert result.returncode == 0
    for verb in ("lock", "fetch", "verify", "status", "launch"):
        assert verb in result.stdout
    assert run("--version").stdout.startswith("mlxpin ")
    launch_help = run("launch", "--help")
    assert launch_help.returncode == 0
    assert "--dry-run" in launch_help.stdout
    assert run("lock", "--no-such-flag").returncode == 2


def test_user_errors_never_show_a_traceback(project: Project) -> None:
    project.write_manifest("version = 1\n[models.x]\napi_label = 1\n")
    for verb in ("lock", "fetch", "verify", "status", "launch"):
        result = project.run(verb)
        assert result.returncode == 78, (verb, result.stderr)
        assert "Traceback" not in result.stderr
        assert "manifest.toml:3: models.x.api_label: must be a string, not an integer" in (
            result.stderr
        )
    debug = project.run("lock", env={**project.env, "MLXPIN_DEBUG": "1"})
    assert "Traceback" in debug.stderr


def test_missing_manifest_says_how_to_start(project: Project) -> None:
    result = project.run("lock")
    assert result.returncode == 78
    assert "no manifest here" in result.stderr
    assert "mlxpin init" in result.stderr


def test_json_errors_are_json(project: Project) -> None:
    project.write_manifest("version = 1\n[models.x]\napi_label = 1\n")
    data = project.json("status")
    assert data["ok"] is False
    assert data["error"]["exit_code"] == 78
    assert data["error"]["line"] == 3
