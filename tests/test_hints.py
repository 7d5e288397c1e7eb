"""A next step is data: the core names the mlxpin command line to run, the CLI spells it.

Every `Run.of(...)` the code builds is parsed here by the real command line, so a hint
can never send a user to a verb or an option that does not exist (rename a flag and
this fails). And no error outside `cli/` writes a command line into its hint as words.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
import typer.core
import typer.main

from mlxpin.cli.app import _register, app
from mlxpin.errors import Hint, IntegrityError, ModelNotChosenError, Run, SnapshotMissingError

SRC = Path(__file__).resolve().parents[1] / "src" / "mlxpin"
CLI = SRC / "cli"
PLACEHOLDER = "tiny"  # stands for a value the code computes (a model name, a host list)

# Where a constructor takes its hint, by position (the base classes: message, hint).
HINT_POSITION = {
    "MlxpinError": 1,
    "UsageError": 1,
    "DataError": 1,
    "NoInputError": 1,
    "UnavailableError": 1,
    "ConfigError": 1,
    "ResolverUnavailableError": 1,
    "GiveUp": 1,
    "ServerCrashedError": 2,
    "AccessDeniedError": 3,
    "ManifestError": 4,
}


def _root_command() -> typer.core.TyperGroup:
    _register()  # what `mlxpin` does before it parses: every verb on the app
    root = typer.main.get_command(app)
    assert isinstance(root, typer.core.TyperGroup)
    return root


def refusal(argv: tuple[str, ...]) -> str | None:
    """What the real CLI says against `mlxpin ARGV` before running it; None if it parses."""
    command: typer.core.TyperCommand | typer.core.TyperGroup = _root_command()
    context = command.make_context("mlxpin", [], resilient_parsing=True)  # groups: no checks
    words = list(argv)
    try:
        while isinstance(command, typer.core.TyperGroup):
            if not words or words[0] not in command.commands:
                return f"no such command: {words[:1]}"
            name = words.pop(0)
            found = command.get_command(context, name)
            assert isinstance(found, typer.core.TyperCommand | typer.core.TyperGroup)
            command = found
            if isinstance(command, typer.core.TyperGroup):
                context = command.make_context(name, [], parent=context, resilient_parsing=True)
        command.make_context(name, words, parent=context, resilient_parsing=False)
    except Exception as exc:
        if not hasattr(exc, "format_message"):  # click's own refusals carry one
            raise
        return str(exc.format_message())
    return None


def _modules() -> Iterator[tuple[Path, ast.Module]]:
    for path in sorted(SRC.rglob("*.py")):
        yield path, ast.parse(path.read_text(encoding="utf-8"), str(path))


def _callee(call: ast.Call) -> str:
    func = call.func
    if isinstance(func, ast.Name):
        return func.id
    if isinstance(func, ast.Attribute):
        owner = func.value
        if isinstance(owner, ast.Name):
            return f"{owner.id}.{func.attr}"
        if isinstance(owner, ast.Call) and isinstance(owner.func, ast.Name):
            return f"{owner.func.id}().{func.attr}"
        return func.attr
    return ""


def _built_runs() -> list[tuple[str, tuple[str, ...]]]:
    """Every `Run.of(...)` in src/, with computed values replaced by a placeholder."""
    runs = []
    for path, module in _modules():
        for node in ast.walk(module):
            if isinstance(node, ast.Call) and _callee(node) == "Run.of":
                argv = tuple(
                    arg.value
                    if isinstance(arg, ast.Constant) and isinstance(arg.value, str)
                    else PLACEHOLDER
                    for arg in node.args
                )
                runs.append((f"{path.relative_to(SRC)}:{node.lineno}", argv))
    return runs


def test_the_code_names_its_next_steps_as_runs() -> None:
    where = {place.split(":")[0] for place, _ in _built_runs()}
    # The stores, the hub-facing errors, the runtime and the server all name next steps.
    assert {"errors.py", "commands/gc.py", "runtime/uv.py", "serve/restart.py"} <= where


@pytest.mark.parametrize(("place", "argv"), _built_runs(), ids=str)
def test_every_next_step_is_a_command_line_mlxpin_accepts(
    place: str, argv: tuple[str, ...]
) -> None:
    problem = refusal(argv)
    assert problem is None, f"{place}: `mlxpin {' '.join(argv)}` does not parse: {problem}"


def test_the_parser_check_refuses_what_the_cli_refuses() -> None:
    assert refusal(("fetch", "tiny", "--hosts")) is None
    assert refusal(("service", "install", "tiny")) is None
    assert "--no-such-option" in str(refusal(("fetch", "--no-such-option")))
    assert "no such command" in str(refusal(("no-such-verb",)))
    assert "--forget-missin" in str(refusal(("gc", "--yes", "--forget-missin")))


def _verbs() -> set[str]:
    return set(_root_command().commands)


def _hint_arguments(call: ast.Call, in_errors_module: bool) -> list[ast.expr]:
    callee = _callee(call)
    name = callee.rsplit(".", 1)[-1]
    hints: list[ast.expr] = [k.value for k in call.keywords if k.arg in {"hint", "fix"}]
    if callee == "Hint.of" or name == "with_hint":
        hints += call.args
    elif callee == "super().__init__" and in_errors_module:
        hints += call.args[1:2]
    elif name in HINT_POSITION:
        hints += call.args[HINT_POSITION[name] : HINT_POSITION[name] + 1]
    return hints


def _spelled_in_hints(module: ast.Module, in_errors_module: bool) -> list[tuple[int, str]]:
    spelled = re.compile(r"mlxpin (" + "|".join(sorted(_verbs())) + r")\b")
    found = []
    for node in ast.walk(module):
        if isinstance(node, ast.Call):
            for argument in _hint_arguments(node, in_errors_module):
                found += [
                    (node.lineno, inner.value)
                    for inner in ast.walk(argument)
                    if isinstance(inner, ast.Constant)
                    and isinstance(inner.value, str)
                    and spelled.search(inner.value)
                ]
    return found


def test_no_error_outside_the_cli_spells_a_command_line_in_its_hint() -> None:
    found = [
        f"{path.relative_to(SRC)}:{line}: {text!r}"
        for path, module in _modules()
        if not path.is_relative_to(CLI)
        for line, text in _spelled_in_hints(module, path.name == "errors.py")
    ]
    assert not found, "build these next steps with Run.of(...):\n" + "\n".join(found)


def test_the_hint_check_finds_a_command_line_written_as_words() -> None:
    planted = ast.parse(
        "raise UsageError('no such model', f'run `mlxpin fetch {name}`')\n"
        "raise ConfigError('`mlxpin add` would append it', Hint.of('run ', Run.of('lock')))\n"
        "e.with_hint('then mlxpin gc --yes')\n"
    )
    assert [line for line, _ in _spelled_in_hints(planted, False)] == [1, 3]


def test_a_hint_reads_as_words_and_names_its_runs_as_data() -> None:
    error = IntegrityError("tiny", "model.safetensors", "size 3, expected 4")
    assert error.next_runs == (Run(("lock", "--update", "tiny")), Run(("fetch", "tiny")))
    assert error.hint is not None
    assert "run `mlxpin lock --update tiny`; otherwise rerun `mlxpin fetch tiny`" in error.hint
    assert SnapshotMissingError("tiny", "not fetched").hint == "run `mlxpin fetch tiny`"
    # A name the shell would split is quoted, so the line can be pasted as it is.
    assert Run.of("fetch", "my model").spelled() == "`mlxpin fetch 'my model'`"
    assert Hint.of("no command here").runs == ()


def test_the_command_line_words_its_own_usage_for_a_launch_without_a_name(
    tmp_path: Path,
) -> None:
    from mlxpin.cli.output import worded_for_the_command_line

    error = ModelNotChosenError(tmp_path / "manifest.toml", ("a", "b"))
    assert error.hint == "name one of: a, b, or set MLXPIN_MODEL"
    worded = worded_for_the_command_line(error)
    assert worded.hint == "mlxpin launch NAME (one of: a, b), or set MLXPIN_MODEL"
    assert worded.message == error.message and error.hint != worded.hint
