"""How every command reports: results on stdout, messages on stderr, typed exit codes."""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlxpin.config import Settings, is_true, load_settings
from mlxpin.errors import ExitCode, MlxpinError, ModelNotChosenError


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


def setup_logging(quiet: bool, verbose: bool) -> None:
    import logging  # only commands that log pay for it; a dry run does not

    log = logging.getLogger("mlxpin")
    level = logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO
    logging.basicConfig(level=level, format="mlxpin: %(message)s", stream=sys.stderr)
    # That format shows none of a record's caller, thread or process, which logging
    # would look up for every record (a frame walk, ~5 us of each access-log line):
    # the logging HOWTO's "Optimization" switches.
    logging._srcfile = None
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    log.setLevel(level)
    if not verbose:
        for noisy in ("httpx", "httpx2", "huggingface_hub", "filelock", "aiohttp.access"):
            logging.getLogger(noisy).setLevel(logging.WARNING)


def report_error(error: MlxpinError, as_json: bool) -> None:
    if isinstance(error, ModelNotChosenError):  # the command line words its own usage line
        error.hint = f"mlxpin launch NAME (one of: {', '.join(error.names)}), or set MLXPIN_MODEL"
    print(f"mlxpin: error: {error.message}", file=sys.stderr)
    if error.hint:
        print(f"  hint: {error.hint}", file=sys.stderr)
    if as_json:
        print(json.dumps({"ok": False, "error": error.to_json()}, indent=2, sort_keys=True))


def settings_for(
    manifest: Path | None, lock_dir: Path | None, cache_dir: Path | None = None
) -> Settings:
    """Settings for a command: its flags, then this process's environment."""
    return load_settings(
        os.environ, cwd=Path.cwd(), manifest=manifest, lock_dir=lock_dir, cache_dir=cache_dir
    )


@dataclass(frozen=True)
class Common:
    """The shared options of one invocation, declared once for every verb."""

    cache_dir: Path | None = None
    manifest: Path | None = None
    lock_dir: Path | None = None
    as_json: bool = False
    quiet: bool = False
    verbose: bool = False
    progress: str | None = None  # --progress, for verbs with long work

    def settings(self) -> Settings:
        return settings_for(self.manifest, self.lock_dir, self.cache_dir)

    def output(self) -> Output:
        return Output(self.as_json, self.quiet)


class CommandExit(Exception):
    """A command's own request to exit with a code (after it printed what it had to)."""

    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code


def _refused_write(error: Exception) -> MlxpinError | None:
    """A write the disk refused where no check foresaw it: still 74, not "a bug"."""
    if not isinstance(error, OSError):
        return None
    from mlxpin.util.atomic import disk_error

    return disk_error(Path(error.filename or "?"), error)


#: A reader that went away (`mlxpin export -o - | head`): ended as `cat` is by SIGPIPE,
#: quietly, with the status a shell shows for that (128 + 13).
PIPE_CLOSED = 141


def discard_stdout() -> None:
    """Later writes (the interpreter's last flush) go nowhere instead of failing again."""
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def run_guarded(
    func: Callable[[], None], *, as_json: bool, quiet: bool, verbose: bool, logs: bool = True
) -> int:
    """Run a command; turn mlxpin errors into a message and an exit code.

    No traceback for anything a user can cause; MLXPIN_DEBUG=1 shows one. A full
    stdout is 74; a closed one is raised on (BrokenPipeError) to mlxpin.entry.
    """
    try:
        code = _guarded(func, as_json=as_json, quiet=quiet, verbose=verbose, logs=logs)
        sys.stdout.flush()
        return code
    except BrokenPipeError:
        raise  # mlxpin.entry ends the run as `cat` (PIPE_CLOSED)
    except OSError as error:
        from mlxpin.util.atomic import disk_error

        refused = disk_error(Path("standard output"), error)
        if refused is None:
            raise
        discard_stdout()
        with contextlib.suppress(OSError):
            report_error(refused, as_json=False)
        return int(refused.exit_code)


def _guarded(
    func: Callable[[], None], *, as_json: bool, quiet: bool, verbose: bool, logs: bool
) -> int:
    if logs or verbose:
        setup_logging(quiet, verbose)
    debug = is_true(os.environ.get("MLXPIN_DEBUG"))
    try:
        func()
    except CommandExit as request:
        return request.code
    except MlxpinError as error:
        if debug:
            import traceback

            traceback.print_exc()
        report_error(error, as_json)
        return int(error.exit_code)
    except KeyboardInterrupt:
        print("mlxpin: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        raise  # run_guarded's
    except Exception as error:
        if debug:
            raise
        refused = _refused_write(error)
        if refused is not None:
            report_error(refused, as_json)
            return int(refused.exit_code)
        print(
            f"mlxpin: internal error: {type(error).__name__}: {error}\n"
            "  hint: this is a bug in mlxpin; rerun with MLXPIN_DEBUG=1 for a traceback "
            "and report it",
            file=sys.stderr,
        )
        return int(ExitCode.SOFTWARE)
    return 0
