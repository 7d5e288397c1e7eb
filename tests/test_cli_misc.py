"""The command line itself: help, version, what each verb imports, error rendering."""

from __future__ import annotations

import gc
import subprocess
import sys
from pathlib import Path

import pytest

from mlxpin.cli.app import build_parser
from mlxpin.commands.lock import MAX_PARALLEL

from conftest import Project, invoke, isolated_hf_env


def test_the_parser_declares_the_lock_commands_default() -> None:
    assert build_parser().parse_args(["lock"]).jobs == MAX_PARALLEL


def test_names_around_options_and_values_that_start_with_a_dash() -> None:
    parse = build_parser().parse_args
    assert parse(["fetch", "a", "--hosts", "b"]).names == ["a", "b"]
    assert parse(["add", "x", "--revision", "-x", "--label", "-"]).revision == "-x"
    assert parse(["export", "-o", "-", "a"]).output == "-"


def imported_by(*argv: str, cwd: Path | None = None, env: dict[str, str] | None = None) -> set[str]:
    """The modules `mlxpin ARGV` imports, in a fresh interpreter, from the executable's
    own entry point (a heavy import there once cost every verb ~25 ms)."""
    code = (
        f"import sys\nsys.argv = ['mlxpin', *{list(argv)!r}]\nfrom mlxpin.entry import main\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\n"
        "print(' '.join(sys.modules), file=sys.stderr)"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=cwd, env=env
    )
    return set(done.stderr.splitlines()[-1].split())


#: All that `status` of a locked, fetched project may import of mlxpin (#21: its start-up
#: was 8x `python -c pass`); a module added here must be one status runs.
STATUS_MODULES = {
    "mlxpin",
    "mlxpin.cli",
    "mlxpin.cli.app",
    "mlxpin.cli.output",
    "mlxpin.cli.render",
    "mlxpin.cli.store",
    "mlxpin.commands",
    "mlxpin.commands.status",
    "mlxpin.config",
    "mlxpin.entry",
    "mlxpin.errors",
    "mlxpin.project",
    "mlxpin.project.checker",
    "mlxpin.project.engines",
    "mlxpin.project.lockfile",
    "mlxpin.project.manifest",
    "mlxpin.project.memory",
    "mlxpin.project.selection",
    "mlxpin.project.tomllines",
    "mlxpin.project.validate",
    "mlxpin.runtime",
    "mlxpin.runtime.dists",
    "mlxpin.runtime.server",
    "mlxpin.store",
    "mlxpin.store.layout",
    "mlxpin.util",
    "mlxpin.util.hashing",
    "mlxpin.util.jsonable",
}


def test_only_the_verb_that_runs_is_imported(tmp_path: Path) -> None:
    ours = {m for m in imported_by("--version") if m.startswith("mlxpin")}
    assert ours == {"mlxpin", "mlxpin.entry", "mlxpin.cli", "mlxpin.cli.app"}
    model = tmp_path / "one"
    model.mkdir()
    (model / "config.json").write_text("{}\n")
    (tmp_path / "manifest.toml").write_text(
        'version = 1\n[models.one]\napi_label = "one"\n[models.one.launch]\npath = "./one"\n'
    )
    env = isolated_hf_env("http://127.0.0.1:9", tmp_path / "hf")
    for verb in ("lock", "fetch"):
        mlxpin = [sys.executable, "-m", "mlxpin", verb, "-q"]
        subprocess.run(mlxpin, cwd=tmp_path, env=env, check=True)
    status = imported_by("status", cwd=tmp_path, env=env)
    assert {m for m in status if m.startswith("mlxpin")} == STATUS_MODULES
    unused = {"logging", "difflib", "huggingface_hub", "filelock", "threading", "concurrent"}
    unused |= {"shlex", "unicodedata"}  # only for hints, and for non-ASCII names
    assert not unused & status


def test_a_brief_verb_run_in_process_leaves_the_collector_on(tmp_path: Path) -> None:
    assert invoke(["status", "--manifest", str(tmp_path / "none.toml")]).exit_code != 0
    assert gc.isenabled()


def test_no_verb_prints_the_usage_as_a_usage_error() -> None:
    for argv in ([], ["service"]):
        result = invoke(argv)
        assert result.exit_code == 2 and "COMMAND" in result.stdout, argv
    refused = invoke(["lock", "--update-runtim"])  # no abbreviations
    assert refused.exit_code == 2 and "mlxpin lock: error: unrecognized" in refused.stderr


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


@pytest.mark.parametrize(
    ("verb", "table"), [("serve", "[serve] port"), ("ps", "[serve] host"), ("lock", "[runtime]")]
)
def test_help_keeps_the_manifest_tables_it_names(verb: str, table: str) -> None:
    """Help text naming a manifest table keeps the brackets (a markup layer once ate them)."""
    text = " ".join(run(verb, "--help").stdout.split())
    assert table in text


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


def test_closed_or_full_stdio_is_a_normal_end_or_74_never_a_traceback(tmp_path: Path) -> None:
    """Issue #26 item 13: `mlxpin ... | head`, `2>&-`, `<&-` and `>/dev/full`."""
    import os

    def with_stdout(fd: int, *args: str) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "mlxpin", *args]
        return subprocess.run(
            command, stdout=fd, stderr=subprocess.PIPE, text=True, cwd=tmp_path, check=False
        )

    for args in (("--version",), ("status", "--json")):
        read, write = os.pipe()
        os.close(read)  # the reader is gone before the first byte
        closed = with_stdout(write, *args)
        os.close(write)
        assert closed.returncode == 141, closed.stderr
        assert "Traceback" not in closed.stderr and "internal error" not in closed.stderr
    with open("/dev/full", "w") as full:
        assert with_stdout(full.fileno(), "status", "--json").returncode == 74
    shell = f"{sys.executable} -m mlxpin import - <&- ; {sys.executable} -m mlxpin status 2>&-"
    both = subprocess.run(
        ["sh", "-c", shell], capture_output=True, text=True, cwd=tmp_path, check=False
    )
    assert "internal error" not in both.stderr and "Traceback" not in both.stderr
    assert both.returncode == 78  # status: no manifest here (said to a closed stderr)
