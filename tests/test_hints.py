"""A hint names the mlxpin command lines to run with `Run.of(...)` and options with `Flag(...)`.

Every `Run.of(...)` in the source is read here and parsed by the real command line, so a
hint can never send a user to a verb or an option that does not exist (rename a flag and
this fails). And no error outside `cli/` writes a command line into its hint as words.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import io
import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from mlxpin.cli.app import build_parser
from mlxpin.errors import IntegrityError, ModelNotChosenError, Run, SnapshotMissingError

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
    "ServerCrashedError": 1,
    "AccessDeniedError": 3,
    "ManifestError": 4,
}


def _verbs_of(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    """The subcommands under ``parser`` by name (none for a verb)."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def refusal(argv: tuple[str, ...]) -> str | None:
    """What the real CLI says against `mlxpin ARGV` before running it; None if it parses."""
    said = io.StringIO()
    try:
        with contextlib.redirect_stderr(said):
            args, extra = build_parser().parse_known_args(argv)
    except SystemExit:
        return said.getvalue().strip().splitlines()[-1]
    if extra:
        return f"unrecognized arguments: {' '.join(extra)}"
    if args.handler is None:
        return f"no such command: {argv!r} names no verb"
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
    assert {"errors.py", "commands/gc.py", "runtime/uv.py", "supervise/restart.py"} <= where


@pytest.mark.parametrize(("place", "argv"), _built_runs(), ids=str)
def test_every_next_step_is_a_command_line_mlxpin_accepts(
    place: str, argv: tuple[str, ...]
) -> None:
    problem = refusal(argv)
    assert problem is None, f"{place}: `mlxpin {' '.join(argv)}` does not parse: {problem}"


def _command_at(path: str) -> argparse.ArgumentParser | None:
    command: argparse.ArgumentParser | None = build_parser()
    for word in path.split():
        command = _verbs_of(command).get(word) if command is not None else None
    return command


def _options_of(command: argparse.ArgumentParser) -> dict[str, bool]:
    """Each option's spellings -> whether it takes a value."""
    return {
        spelling: action.nargs != 0
        for action in command._actions
        for spelling in action.option_strings
    }


def _every_long_option() -> set[str]:
    options: set[str] = set()
    pending: list[argparse.ArgumentParser] = [build_parser()]
    while pending:
        command = pending.pop()
        options |= {o for o in _options_of(command) if o.startswith("--")}
        pending += _verbs_of(command).values()
    return options - {"--help", "--version"}


def flag_problem(verb: str, option: str, value: str | None) -> str | None:
    """Why `Flag(verb, option, value)` names no real option; None when it does.

    A shared option (verb "") must be on some verb; a value needs an option that takes one.
    """
    if verb == "":
        return None if option in _every_long_option() else f"no verb has the option {option}"
    command = _command_at(verb)
    if command is None:
        return f"no such command: {verb!r}"
    takes_value = _options_of(command).get(option)
    if takes_value is None:
        return f"`mlxpin {verb}` has no option {option}"
    if value is not None and not takes_value:
        return f"{option} of `mlxpin {verb}` takes no value"
    return None


def _built_flags() -> list[tuple[str, tuple[str, str, str | None]]]:
    """Every `Flag(...)` in src/ (its verb and option are always written out)."""
    flags = []
    for path, module in _modules():
        for node in ast.walk(module):
            if isinstance(node, ast.Call) and _callee(node) == "Flag":
                words = [
                    a.value if isinstance(a, ast.Constant) and isinstance(a.value, str) else ""
                    for a in node.args
                ]
                value = words[2] if len(words) > 2 else None
                flags.append(
                    (f"{path.relative_to(SRC)}:{node.lineno}", (words[0], words[1], value))
                )
    return flags


@pytest.mark.parametrize(("place", "flag"), _built_flags(), ids=str)
def test_every_option_a_hint_names_is_an_option_of_its_verb(
    place: str, flag: tuple[str, str, str | None]
) -> None:
    problem = flag_problem(*flag)
    assert problem is None, f"{place}: Flag{flag}: {problem}"


def test_the_option_check_refuses_what_the_cli_lacks() -> None:
    assert flag_problem("", "--manifest", None) is None
    assert flag_problem("service install", "--platform", "linux") is None
    assert "has no option --platfrom" in str(flag_problem("service install", "--platfrom", "x"))
    assert flag_problem("mirror", "--port", None) is None  # named in words, no value given
    assert "no verb has the option --cache-dri" in str(flag_problem("", "--cache-dri", None))
    assert "takes no value" in str(flag_problem("service install", "--system", "yes"))
    assert "no such command" in str(flag_problem("sevice install", "--system", None))


def test_the_parser_check_refuses_what_the_cli_refuses() -> None:
    assert refusal(("fetch", "tiny", "--hosts")) is None
    assert refusal(("service", "install", "tiny")) is None
    assert "--no-such-option" in str(refusal(("fetch", "--no-such-option")))
    assert "invalid choice: 'no-such-verb'" in str(refusal(("no-such-verb",)))
    assert "--forget-missin" in str(refusal(("gc", "--yes", "--forget-missin")))


def _verbs() -> set[str]:
    return set(_verbs_of(build_parser()))


def _hint_arguments(call: ast.Call, in_errors_module: bool) -> list[ast.expr]:
    callee = _callee(call)
    name = callee.rsplit(".", 1)[-1]
    hints: list[ast.expr] = [k.value for k in call.keywords if k.arg in {"hint", "fix"}]
    if callee == "super().__init__" and in_errors_module:
        hints += call.args[1:2]
    elif name in HINT_POSITION:
        hints += call.args[HINT_POSITION[name] : HINT_POSITION[name] + 1]
    return hints


def _spelled_in_hints(module: ast.Module, in_errors_module: bool) -> list[tuple[int, str]]:
    verbs = "|".join(sorted(_verbs()))
    options = "|".join(sorted(re.escape(o) for o in _every_long_option()))
    spelled = re.compile(rf"mlxpin ({verbs})\b|(?<![\w-])({options})(?![\w-])")
    found = []
    for node in ast.walk(module):
        if isinstance(node, ast.Call):
            for argument in _hint_arguments(node, in_errors_module):
                found += [(node.lineno, text) for text in _words(argument) if spelled.search(text)]
    return found


def _words(node: ast.AST) -> Iterator[str]:
    """The string constants of a hint, but not the arguments of its Run and Flag parts."""
    if isinstance(node, ast.Call) and _callee(node) in {"Run.of", "Flag"}:
        return
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        yield node.value
    for child in ast.iter_child_nodes(node):
        yield from _words(child)


def test_no_error_outside_the_cli_spells_a_command_line_or_option_in_its_hint() -> None:
    found = [
        f"{path.relative_to(SRC)}:{line}: {text!r}"
        for path, module in _modules()
        if not path.is_relative_to(CLI)
        for line, text in _spelled_in_hints(module, path.name == "errors.py")
    ]
    assert not found, "build these next steps with Run.of(...) and Flag(...):\n" + "\n".join(found)


def test_the_hint_check_finds_a_command_line_written_as_words() -> None:
    planted = ast.parse(
        "raise UsageError('no such model', f'run `mlxpin fetch {name}`')\n"
        "raise ConfigError('`mlxpin add` would append it', f\"run {Run.of('lock')}\")\n"
        "raise IntegrityError(m, p, 'bad', hint='then mlxpin gc --yes')\n"
        "raise UsageError('bad', 'point --manifest at it')\n"
        "raise UsageError('bad', f\"point {Flag('', '--manifest')} at it\")\n"
    )
    assert [line for line, _ in _spelled_in_hints(planted, False)] == [1, 3, 4]


def test_a_hint_spells_its_command_lines_as_a_user_types_them() -> None:
    error = IntegrityError("tiny", "model.safetensors", "size 3, expected 4")
    assert error.hint is not None
    assert "run `mlxpin lock --update tiny`; otherwise rerun `mlxpin fetch tiny`" in error.hint
    assert SnapshotMissingError("tiny", "not fetched").hint == "run `mlxpin fetch tiny`"
    # A name the shell would split is quoted, so the line can be pasted as it is.
    assert Run.of("fetch", "my model") == "`mlxpin fetch 'my model'`"


def test_the_command_line_words_its_own_usage_for_a_launch_without_a_name(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from mlxpin.cli.output import report_error

    error = ModelNotChosenError(tmp_path / "manifest.toml", ("a", "b"))
    report_error(error, as_json=True)
    usage = "mlxpin launch NAME (one of: a, b), or set MLXPIN_MODEL"
    out, err = capsys.readouterr()
    assert err.endswith(f"say which to launch\n  hint: {usage}\n")
    assert json.loads(out)["error"]["hint"] == usage
