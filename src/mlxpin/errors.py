"""Every failure a user can cause, as a typed error with a stable exit code.

The exit codes follow sysexits(3) so that a supervisor can tell a permanent
error (do not restart) from a temporary one (try again later)::

    MlxpinError                      base; never raised itself
    ├── UsageError               2   bad command line (unknown model name, bad flag value)
    ├── DataError               65   bytes that do not match what we trust
    │   ├── IntegrityError           a file's size or hash differs from the lock
    │   ├── LockCorruptError         a lock file that is not what `mlxpin lock` writes
    │   └── HubProtocolError         a Hub/mirror answered with hostile or malformed data
    ├── NoInputError            66   something to read is absent
    │   └── SnapshotMissingError     a locked model was never fetched, or changed since
    ├── UnavailableError        69   a service is not there
    │   ├── HubUnreachableError      the Hub endpoint cannot be reached or keeps failing
    │   ├── ServerMissingError       mlx_lm.server is not installed
    │   └── PortInUseError           the public port is taken
    ├── ServerCrashedError      70   mlx_lm.server crashed past its restart budget
    ├── DiskError               74   the disk refused a write (full, read-only, ...)
    ├── LockBusyError           75   another mlxpin holds a lock for too long (retry later)
    ├── AccessDeniedError       77   gated repo, token refused or missing
    └── ConfigError             78   the manifest or the lock does not allow the command
        ├── ManifestError            manifest.toml is invalid (file:line, key, fix)
        ├── LockStaleError           lock missing, stale or orphaned for a command
        ├── RepoNotFoundError        the Hub has no such repo (or it is private)
        └── RevisionNotFoundError    the repo has no such branch, tag or commit

Each class builds its message from its fields; the CLI renders `message` and
`hint` and exits with `exit_code`. A traceback is only ever shown with
MLXPIN_DEBUG=1. Errors are immutable once built: a caller that knows a better next
step makes a copy with `with_hint`, so an error caught and re-raised elsewhere never
changes under another reader.
"""

from __future__ import annotations

from collections.abc import Sequence
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


class MlxpinError(Exception):
    """Base of every error a user can cause. Carries a message and a next step."""

    exit_code: ClassVar[ExitCode] = ExitCode.SOFTWARE
    kind: ClassVar[str] = "error"

    message: str
    hint: str | None

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
        self._sealed = True

    def __setattr__(self, name: str, value: Any) -> None:
        # Fields are set while the subclass builds its message; afterwards they are fixed.
        # Dunder attributes (__cause__, __traceback__, notes) belong to Python itself.
        if self.__dict__.get("_sealed") and not name.startswith("__"):
            raise AttributeError(f"{type(self).__name__} is immutable; use with_hint()")
        super().__setattr__(name, value)

    def with_hint(self, hint: str | None) -> Self:
        """A copy of this error with another next step."""
        copy = type(self).__new__(type(self), *self.args)
        copy.__dict__.update(self.__dict__)
        copy.__dict__["hint"] = hint
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
            "the bytes differ from the lock, so they were refused. If the upstream repo "
            "really changed, run `mlxpin lock --update "
            f"{model}`; otherwise rerun `mlxpin fetch {model}` to download the file again",
        )


class LockCorruptError(DataError):
    kind = "lock_corrupt"

    def __init__(self, file: Path, problem: str) -> None:
        self.file = file
        self.problem = problem
        super().__init__(
            f"{file}: {problem}",
            "lock files are written by `mlxpin lock`; restore it from version control "
            "or delete it and run `mlxpin lock`",
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


class NoInputError(MlxpinError):
    exit_code = ExitCode.NO_INPUT
    kind = "no_input"


class SnapshotMissingError(NoInputError):
    kind = "snapshot_missing"

    def __init__(self, model: str, problem: str) -> None:
        self.model = model
        super().__init__(f"{model}: {problem}", f"run `mlxpin fetch {model}`")


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
            "check the network or HF_ENDPOINT and try again; `mlxpin launch` itself "
            "never needs the network once `mlxpin fetch` has run",
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


class DiskError(MlxpinError):
    exit_code = ExitCode.IO
    kind = "disk"

    def __init__(self, path: Path, detail: str) -> None:
        self.path = path
        super().__init__(
            f"cannot write {path}: {detail}",
            "free some space or fix the permissions, then run the command again "
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
    exit_code = ExitCode.NO_PERMISSION
    kind = "access_denied"


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
        fix: str | None = None,
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
            "run `mlxpin lock" + "".join(f" {n}" for n in names) + "`",
        )


class RepoNotFoundError(ConfigError):
    kind = "repo_not_found"


class RevisionNotFoundError(ConfigError):
    kind = "revision_not_found"
