"""Every failure a user can cause, as a typed error with a stable exit code.

The exit codes follow sysexits(3) so that a supervisor can tell a permanent
error (do not restart) from a temporary one (try again later)::

    MlxpinError                      base; never raised itself
    ├── UsageError               2   bad command line (unknown model name, bad flag value)
    │   └── ModelNotChosenError      `launch` without a name, and several models to choose from
    ├── DataError               65   bytes that do not match what we trust
    │   ├── IntegrityError           a file's size or hash differs from the lock
    │   ├── LockCorruptError         a lock file that is not what `mlxpin lock` writes
    │   ├── HubProtocolError         a Hub/mirror answered with hostile or malformed data
    │   ├── UnstorableFilesError     a source's file names cannot be laid out on disk
    │   ├── BundleError              a bundle that is damaged, truncated or not ours
    │   └── RuntimeIntegrityError    a runtime distribution's hash differs from lock/runtime.toml
    ├── NoInputError            66   something to read is absent
    │   ├── SnapshotMissingError     a locked model was never fetched, or changed since
    │   └── RuntimeMissingError      the pinned server runtime is not installed (or damaged)
    ├── UnavailableError        69   a service is not there
    │   ├── HubUnreachableError      the Hub endpoint cannot be reached or keeps failing
    │   ├── ServerMissingError       mlx_lm.server is not installed
    │   ├── ResolverUnavailableError uv, the package index or a matching Python is missing
    │   └── PortInUseError           the public port is taken
    ├── ServerCrashedError      70   mlx_lm.server crashed past its restart budget
    ├── DiskError               74   the disk refused a write (full, read-only, ...)
    ├── LockBusyError           75   another mlxpin holds a lock for too long (retry later)
    ├── AccessDeniedError       77   gated repo, token refused or missing
    ├── ConfigError             78   the manifest or the lock does not allow the command
    │   ├── ManifestError            manifest.toml is invalid (file:line, key, fix)
    │   ├── LockStaleError           lock missing, stale or orphaned for a command
    │   ├── RepoNotFoundError        the Hub has no such repo (or it is private)
    │   ├── RevisionNotFoundError    the repo has no such branch, tag or commit
    │   ├── OverBudgetError          `serve`: a model larger than the whole memory budget
    │   ├── PinMismatchError         `import`: the bundle pins other bytes than our lock
    │   └── RuntimeResolutionError   no versions satisfy the manifest's [runtime]
    └── PreflightError     (varies)  several problems at once, with the code of the
                                     earliest step to fix (78 before 65 before 66 ...)

Each class builds its message from its fields; the CLI renders `message` and
`hint` and exits with `exit_code`. A traceback is only ever shown with
MLXPIN_DEBUG=1. Errors are immutable once built: a caller that knows a better next
step makes a copy with `with_hint`, so an error caught and re-raised elsewhere never
changes under another reader.

The next step is data, not CLI wording: a `Hint` is advice in words with the mlxpin
command lines to run as `Run` values and the options to use as `Flag` values. The core
says *what* to run; their `spelled` is the one place that writes them as a user types
them, and tests/test_hints.py parses every command line the code builds with the real
CLI and finds every option on its verb, so a hint never names a verb or an option that
does not exist. `MlxpinError.next_runs` gives the command lines to any other renderer.
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from dataclasses import dataclass
from enum import IntEnum
from pathlib import Path
from typing import Any, ClassVar, Self


class ExitCode(IntEnum):
    OK = 0
    USAGE = 2
    DATA = 65
    NO_INPUT = 66
    UNAVAILABLE = 69
    SOFTWARE = 70
    IO = 74
    TEMP_FAIL = 75
    NO_PERMISSION = 77
    CONFIG = 78


@dataclass(frozen=True)
class Run:
    """One mlxpin command line a user should run next, as its arguments after `mlxpin`."""

    argv: tuple[str, ...]

    @classmethod
    def of(cls, *argv: str) -> Run:
        return cls(argv)

    def spelled(self) -> str:
        return f"`mlxpin {shlex.join(self.argv)}`"


@dataclass(frozen=True)
class Flag:
    """An option of an mlxpin verb that a next step names (`--port`, `--platform linux`).

    ``verb`` is the command it belongs to ("service install"), or "" for an option
    every project verb shares (`--manifest`, `--cache-dir`)."""

    verb: str
    option: str
    value: str | None = None

    def spelled(self) -> str:
        return self.option if self.value is None else f"{self.option} {self.value}"


@dataclass(frozen=True)
class Hint:
    """What to do next: words, and the command lines and options to use, in reading order."""

    parts: tuple[str | Run | Flag, ...]

    @classmethod
    def of(cls, *parts: str | Run | Flag) -> Hint:
        return cls(parts)

    @property
    def runs(self) -> tuple[Run, ...]:
        return tuple(part for part in self.parts if isinstance(part, Run))

    def text(self) -> str:
        return "".join(part if isinstance(part, str) else part.spelled() for part in self.parts)


class MlxpinError(Exception):
    """Base of every error a user can cause. Carries a message and a next step."""

    exit_code: ClassVar[ExitCode] = ExitCode.SOFTWARE
    kind: ClassVar[str] = "error"

    message: str
    advice: Hint | None

    def __init__(self, message: str, hint: str | Hint | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.advice = Hint.of(hint) if isinstance(hint, str) else hint
        self._sealed = True

    @property
    def hint(self) -> str | None:
        """The next step as one line of text (commands spelled as a user types them)."""
        return None if self.advice is None else self.advice.text()

    @property
    def next_runs(self) -> tuple[Run, ...]:
        """The mlxpin command lines the next step names, as data."""
        return () if self.advice is None else self.advice.runs

    def __setattr__(self, name: str, value: Any) -> None:
        # Fields are set while the subclass builds its message; afterwards they are fixed.
        # Dunder attributes (__cause__, __traceback__, notes) belong to Python itself.
        if self.__dict__.get("_sealed") and not name.startswith("__"):
            raise AttributeError(f"{type(self).__name__} is immutable; use with_hint()")
        super().__setattr__(name, value)

    def with_hint(self, hint: str | Hint | None) -> Self:
        """A copy of this error with another next step."""
        copy = type(self).__new__(type(self), *self.args)
        copy.__dict__.update(self.__dict__)
        copy.__dict__["advice"] = Hint.of(hint) if isinstance(hint, str) else hint
        return copy

    def __str__(self) -> str:
        return self.message if self.hint is None else f"{self.message}\n  hint: {self.hint}"

    def to_json(self) -> dict[str, object]:
        return {
            "error": self.kind,
            "exit_code": int(self.exit_code),
            "message": self.message,
            "hint": self.hint,
        }


class UsageError(MlxpinError):
    exit_code = ExitCode.USAGE
    kind = "usage"


class ModelNotChosenError(UsageError):
    """`launch` without a name, and the manifest declares several models to choose from."""

    kind = "usage"

    def __init__(self, manifest: Path, names: Sequence[str]) -> None:
        self.manifest = manifest
        self.names = tuple(names)
        super().__init__(
            f"{manifest} declares {len(self.names)} models; say which to launch",
            f"name one of: {', '.join(self.names)}, or set MLXPIN_MODEL",
        )


class DataError(MlxpinError):
    exit_code = ExitCode.DATA
    kind = "data"


class IntegrityError(DataError):
    kind = "integrity"

    def __init__(self, model: str, path: str, problem: str) -> None:
        self.model = model
        self.path = path
        self.problem = problem
        super().__init__(
            f"{model}: {path}: {problem}",
            Hint.of(
                "the bytes differ from the lock, so they were refused. If the upstream repo "
                "really changed, run ",
                Run.of("lock", "--update", model),
                "; otherwise rerun ",
                Run.of("fetch", model),
                " to download the file again",
            ),
        )


class LockCorruptError(DataError):
    kind = "lock_corrupt"

    def __init__(self, file: Path, problem: str) -> None:
        self.file = file
        self.problem = problem
        super().__init__(
            f"{file}: {problem}",
            Hint.of(
                "lock files are written by ",
                Run.of("lock"),
                "; restore it from version control or delete it and run ",
                Run.of("lock"),
            ),
        )


class HubProtocolError(DataError):
    kind = "hub_protocol"

    def __init__(self, repo: str, revision: str, problem: str) -> None:
        self.repo = repo
        self.revision = revision
        super().__init__(
            f"{repo}@{revision}: the Hub answered with unsafe or malformed data: {problem}",
            "check HF_ENDPOINT: a mirror or proxy may be misbehaving; nothing was written",
        )


class UnstorableFilesError(DataError):
    kind = "unstorable_files"

    def __init__(self, model: str, where: str, problem: str) -> None:
        self.model = model
        self.problem = problem
        super().__init__(
            f"{model}: {where}: {problem}",
            "leave those files out with `files` in the model's [launch] table (patterns "
            "match like `hf download --include`), or rename them at the source",
        )


class BundleError(DataError):
    kind = "bundle"

    def __init__(self, bundle: str, member: str, problem: str) -> None:
        self.bundle = bundle
        self.member = member
        self.problem = problem
        super().__init__(
            f"{bundle}: {member}: {problem}",
            Hint.of(
                "the bundle is damaged, truncated or not an mlxpin bundle; nothing of the "
                "affected models was installed. Export it again (",
                Run.of("export", "NAME", "--output", "FILE"),
                ") and retry",
            ),
        )


class NoInputError(MlxpinError):
    exit_code = ExitCode.NO_INPUT
    kind = "no_input"


class SnapshotMissingError(NoInputError):
    kind = "snapshot_missing"

    def __init__(self, model: str, problem: str) -> None:
        self.model = model
        super().__init__(f"{model}: {problem}", Hint.of("run ", Run.of("fetch", model)))


class UnavailableError(MlxpinError):
    exit_code = ExitCode.UNAVAILABLE
    kind = "unavailable"


class HubUnreachableError(UnavailableError):
    kind = "hub_unreachable"

    def __init__(self, endpoint: str, repo: str, revision: str, cause: str) -> None:
        self.endpoint = endpoint
        self.repo = repo
        self.revision = revision
        super().__init__(
            f"{repo}@{revision}: the Hub at {endpoint} is unreachable ({cause})",
            Hint.of(
                "check the network or HF_ENDPOINT and try again; ",
                Run.of("launch"),
                " itself never needs the network once ",
                Run.of("fetch"),
                " has run",
            ),
        )


class ServerMissingError(UnavailableError):
    kind = "server_missing"

    def __init__(self, detail: str) -> None:
        super().__init__(
            f"mlx_lm.server is not installed ({detail})",
            "install it into this environment: "
            "pip install mlx-lm  (on Linux also: pip install 'mlx[cpu]')",
        )


class PortInUseError(UnavailableError):
    kind = "port_in_use"

    def __init__(self, model: str, host: str, port: int, detail: str) -> None:
        super().__init__(
            f"{model}: cannot listen on {host}:{port}: {detail}",
            "stop whatever holds the port, or set another `port` for the model in the manifest",
        )


class ServerCrashedError(MlxpinError):
    exit_code = ExitCode.SOFTWARE
    kind = "server_crashed"

    def __init__(self, model: str, message: str, hint: str | Hint | None) -> None:
        self.model = model
        super().__init__(message, hint)


class DiskError(MlxpinError):
    exit_code = ExitCode.IO
    kind = "disk"

    def __init__(self, path: Path, detail: str, hint: str | Hint | None = None) -> None:
        self.path = path
        super().__init__(
            f"cannot write {path}: {detail}",
            hint
            or "free some space or fix the permissions, then run the command again "
            "(finished files are kept)",
        )


class LockBusyError(MlxpinError):
    exit_code = ExitCode.TEMP_FAIL
    kind = "lock_busy"

    def __init__(self, lock_path: Path, waited_s: float) -> None:
        super().__init__(
            f"{lock_path} is held by another mlxpin process (waited {waited_s:.0f} s)",
            "wait for the other command to finish and try again",
        )


class AccessDeniedError(MlxpinError):
    """The Hub refused a repo: gated, token refused or missing, or the repo disabled."""

    exit_code = ExitCode.NO_PERMISSION
    kind = "access_denied"

    def __init__(self, repo: str, revision: str, problem: str, hint: str | Hint) -> None:
        self.repo = repo
        self.revision = revision
        self.problem = problem
        super().__init__(f"{repo}@{revision}: {problem}", hint)


class ConfigError(MlxpinError):
    exit_code = ExitCode.CONFIG
    kind = "config"


class ManifestError(ConfigError):
    """An invalid manifest: names the file, the line, the key, and what to write instead."""

    kind = "manifest"

    def __init__(
        self,
        file: Path,
        line: int | None,
        key: str | None,
        problem: str,
        fix: str | Hint | None = None,
    ) -> None:
        self.file = file
        self.line = line
        self.key = key
        self.problem = problem
        where = str(file) if line is None else f"{file}:{line}"
        what = problem if key is None else f"{key}: {problem}"
        super().__init__(f"{where}: {what}", fix)

    def to_json(self) -> dict[str, object]:
        data = super().to_json()
        data.update({"file": str(self.file), "line": self.line, "key": self.key})
        return data


class LockStaleError(ConfigError):
    kind = "lock_stale"

    def __init__(self, problems: Sequence[str], names: Sequence[str]) -> None:
        self.problems = tuple(problems)
        super().__init__(
            "; ".join(problems),
            Hint.of("run ", Run.of("lock", *names)),
        )


class RepoNotFoundError(ConfigError):
    kind = "repo_not_found"

    def __init__(self, repo: str, revision: str, endpoint: str, token_sent: bool) -> None:
        self.repo = repo
        self.revision = revision
        self.endpoint = endpoint
        self.token_sent = token_sent
        token = "a token was sent" if token_sent else "no token was sent"
        super().__init__(
            f"{repo}@{revision}: repository not found at {endpoint} ({token})",
            f"check the owner and name at {endpoint}/{repo}; a private repo needs HF_TOKEN "
            "set to a token with read access",
        )


class RevisionNotFoundError(ConfigError):
    kind = "revision_not_found"

    def __init__(self, repo: str, revision: str, existing: Sequence[str]) -> None:
        self.repo = repo
        self.revision = revision
        self.existing = tuple(existing)  # the closest branches and tags the repo has
        hint = "write an existing branch, tag or full commit in launch.revision"
        if self.existing:
            hint += "; the repo has: " + ", ".join(self.existing)
        super().__init__(f"{repo}: revision {revision!r} not found", hint)


class OverBudgetError(ConfigError):
    """`serve`: a model that alone needs more memory than the whole budget."""

    kind = "over_budget"

    def __init__(self, model: str, cost: int, budget: int, budget_source: str) -> None:
        self.model = model
        self.cost = cost
        self.budget = budget
        super().__init__(
            f"{model}: needs {cost} bytes (its locked files plus the per-server overhead), "
            f"more than the whole memory budget of {budget} bytes ({budget_source})",
            Hint.of(
                "raise [serve] memory_budget in the manifest, or leave the model out of the "
                "names given to ",
                Run.of("serve"),
            ),
        )


class PreflightError(MlxpinError):
    """Several models cannot start; every problem is named at once.

    Its exit code is the one of the earliest step to fix: 78 (manifest, lock, budget)
    before 65 (bad bytes) before 66 (not fetched) before anything else.
    """

    kind = "preflight"
    ORDER: ClassVar[tuple[ExitCode, ...]] = (
        ExitCode.CONFIG,
        ExitCode.DATA,
        ExitCode.NO_INPUT,
        ExitCode.UNAVAILABLE,
    )

    def __init__(self, problems: Sequence[MlxpinError]) -> None:
        self.problems = tuple(problems)
        hints = list(dict.fromkeys(p.hint for p in self.problems if p.hint))
        super().__init__(
            f"{len(self.problems)} problems: " + "; ".join(p.message for p in self.problems),
            "; ".join(hints) or None,
        )

    @staticmethod
    def of(problems: Sequence[MlxpinError]) -> MlxpinError:
        """One problem as itself; several as the PreflightError of the earliest step."""
        if len(problems) == 1:
            return problems[0]
        codes = {p.exit_code for p in problems}
        code = next((c for c in PreflightError.ORDER if c in codes), min(codes))
        return _PREFLIGHT_BY_CODE.get(code, PreflightError)(problems)

    def to_json(self) -> dict[str, object]:
        data = super().to_json()
        data["problems"] = [p.to_json() for p in self.problems]
        return data


class _PreflightConfig(PreflightError):
    exit_code = ExitCode.CONFIG


class _PreflightData(PreflightError):
    exit_code = ExitCode.DATA


class _PreflightNoInput(PreflightError):
    exit_code = ExitCode.NO_INPUT


class _PreflightUnavailable(PreflightError):
    exit_code = ExitCode.UNAVAILABLE


_PREFLIGHT_BY_CODE: dict[ExitCode, type[PreflightError]] = {
    ExitCode.CONFIG: _PreflightConfig,
    ExitCode.DATA: _PreflightData,
    ExitCode.NO_INPUT: _PreflightNoInput,
    ExitCode.UNAVAILABLE: _PreflightUnavailable,
}


class PinMismatchError(ConfigError):
    kind = "pin_mismatch"

    def __init__(self, model: str, ours: str, theirs: str, lock_file: Path) -> None:
        self.model = model
        super().__init__(
            f"{model}: the bundle pins {theirs} but {lock_file} pins {ours}",
            Hint.of(
                "export the bundle from a project with the same lock, or run ",
                Run.of("lock", "--update", model),
                " on one side so both pin the same commit",
            ),
        )


class RuntimeIntegrityError(DataError):
    kind = "runtime_integrity"

    def __init__(self, detail: str) -> None:
        super().__init__(
            f"the package index served a file whose hash is not in lock/runtime.toml: {detail}",
            Hint.of(
                "nothing was installed. If the index really changed a release, move the pin with ",
                Run.of("lock", "--update-runtime"),
                "; otherwise check UV_INDEX_URL/PIP_INDEX_URL "
                "(a mirror or proxy may be serving other bytes)",
            ),
        )


class RuntimeMissingError(NoInputError):
    kind = "runtime_missing"

    def __init__(self, key: str, problem: str) -> None:
        self.key = key
        super().__init__(
            f"the pinned server runtime {key[:12]} {problem}", Hint.of("run ", Run.of("fetch"))
        )


class ResolverUnavailableError(UnavailableError):
    kind = "resolver_unavailable"


class RuntimeResolutionError(ConfigError):
    kind = "runtime_resolution"

    def __init__(self, file: Path, detail: str) -> None:
        self.file = file
        super().__init__(
            f"{file}: [runtime] cannot be satisfied: {detail}",
            "widen the ranges in [runtime] (mlx-lm, mlx, python, packages)",
        )
