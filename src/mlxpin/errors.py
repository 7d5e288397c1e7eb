"""Every failure a user can cause, as a typed error: a message, a hint (the next step)
and an exit code from sysexits(3), so a supervisor can tell a permanent error (do not
restart) from a temporary one. The CLI renders both lines; a traceback needs MLXPIN_DEBUG=1.

Hints spell command lines with `Run.of(...)` and options with `Flag(...)`: tests/test_hints.py
parses each with the real CLI, so a hint never names a verb or option that does not exist.
"""

from __future__ import annotations

from collections.abc import Sequence
from enum import IntEnum
from pathlib import Path
from typing import ClassVar


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


class Run:
    """An mlxpin command line a hint tells the user to run."""

    @staticmethod
    def of(*argv: str) -> str:
        """`mlxpin ARGV`, quoted so that it can be pasted into a shell as it is."""
        import shlex  # a hint is being written: not every verb's start pays for it

        return f"`mlxpin {shlex.join(argv)}`"


def Flag(verb: str, option: str, value: str | None = None) -> str:
    """An option a hint names, as typed. ``verb`` ("service install", or "" for every
    project verb) is read only by tests/test_hints.py, to find the option on it."""
    return option if value is None else f"{option} {value}"


class MlxpinError(Exception):
    """Base of every error a user can cause. Carries a message and a next step."""

    exit_code: ExitCode = ExitCode.SOFTWARE
    kind: ClassVar[str] = "error"

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message if self.hint is None else f"{self.message}\n  hint: {self.hint}"

    def to_json(self) -> dict[str, object]:
        return {
            "kind": self.kind,
            "error": self.kind,  # the kind's first name, kept for scripts that read it
            "exit_code": int(self.exit_code),
            "message": self.message,
            "hint": self.hint,
        }


class UsageError(MlxpinError):
    exit_code = ExitCode.USAGE
    kind = "usage"


class ModelNotChosenError(UsageError):
    """`launch` without a name among several models; cli/output.py words the hint."""

    def __init__(self, manifest: Path, names: Sequence[str]) -> None:
        self.names = tuple(names)
        super().__init__(f"{manifest} declares {len(self.names)} models; say which to launch")


class DataError(MlxpinError):
    exit_code = ExitCode.DATA
    kind = "data"


class IntegrityError(DataError):
    kind = "integrity"

    def __init__(self, model: str, path: str, problem: str, hint: str | None = None) -> None:
        super().__init__(
            f"{model}: {path}: {problem}",
            hint
            or "the bytes differ from the lock, so they were refused. If the upstream repo "
            f"really changed, run {Run.of('lock', '--update', model)}; otherwise rerun "
            f"{Run.of('fetch', model)} to download the file again",
        )


class LockCorruptError(DataError):
    kind = "lock_corrupt"

    def __init__(self, file: Path, problem: str, hint: str | None = None) -> None:
        self.file = file
        self.problem = problem
        super().__init__(
            f"{file}: {problem}",
            hint
            or f"lock files are written by {Run.of('lock')}; restore it from version control "
            f"or delete it and run {Run.of('lock')}",
        )


class HubProtocolError(DataError):
    kind = "hub_protocol"

    def __init__(self, repo: str, revision: str, problem: str) -> None:
        super().__init__(
            f"{repo}@{revision}: the Hub answered with unsafe or malformed data: {problem}",
            "check HF_ENDPOINT: a mirror or proxy may be misbehaving; nothing was written",
        )


class UnstorableFilesError(DataError):
    kind = "unstorable_files"

    def __init__(self, model: str, where: str, problem: str) -> None:
        super().__init__(
            f"{model}: {where}: {problem}",
            "leave those files out with `files` in the model's [launch] table (patterns "
            "match like `hf download --include`), or rename them at the source",
        )


class BundleError(DataError):
    kind = "bundle"

    def __init__(self, bundle: str, member: str, problem: str) -> None:
        super().__init__(
            f"{bundle}: {member}: {problem}",
            "the bundle is damaged, truncated or not an mlxpin bundle; nothing of the "
            f"affected models was installed. Export it again "
            f"({Run.of('export', 'NAME', '--output', 'FILE')}) and retry",
        )


class NoInputError(MlxpinError):
    exit_code = ExitCode.NO_INPUT
    kind = "no_input"


class SnapshotMissingError(NoInputError):
    kind = "snapshot_missing"

    def __init__(self, model: str, problem: str) -> None:
        super().__init__(f"{model}: {problem}", f"run {Run.of('fetch', model)}")


class NotMountedError(MlxpinError):
    """A cache or state root that is missing at boot: most likely a disk not mounted yet,
    so a temporary code (the service retries) instead of "fetch" into an empty mount point."""

    exit_code = ExitCode.TEMP_FAIL
    kind = "not_mounted"

    def __init__(self, directory: Path, what: str) -> None:
        super().__init__(
            f"{directory} ({what}) does not exist: not mounted?",
            "mount it and start again (a service retries by itself); if it was never "
            "created, the models were never fetched there: check HF_HOME, HF_HUB_CACHE "
            "and MLXPIN_HOME",
        )


class UnavailableError(MlxpinError):
    exit_code = ExitCode.UNAVAILABLE
    kind = "unavailable"


class HubUnreachableError(UnavailableError):
    kind = "hub_unreachable"

    def __init__(self, endpoint: str, repo: str, revision: str, cause: str) -> None:
        super().__init__(
            f"{repo}@{revision}: the Hub at {endpoint} is unreachable ({cause})",
            f"check the network or HF_ENDPOINT and try again; {Run.of('launch')} itself "
            f"never needs the network once {Run.of('fetch')} has run",
        )


class HubRateLimitedError(UnavailableError):
    kind = "hub_rate_limited"

    def __init__(self, endpoint: str, repo: str, revision: str, cause: str) -> None:
        super().__init__(
            f"{repo}@{revision}: the Hub at {endpoint} rate limited us ({cause})",
            "wait and try again (a token, HF_TOKEN, gets higher limits); MLXPIN_HUB_DEADLINE "
            "sets how long mlxpin waits as asked",
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

    def __init__(self, model: str | None, host: str, port: int, detail: str) -> None:
        """``model`` None: the port is `serve`'s own, set in [serve] (or --port)."""
        where = "`port` in [serve] (or --port)" if model is None else "another `port` for the model"
        super().__init__(
            f"{model or 'serve'}: cannot listen on {host}:{port}: {detail}",
            f"stop whatever holds the port, or set {where} in the manifest",
        )


class ServerCrashedError(MlxpinError):
    exit_code = ExitCode.SOFTWARE
    kind = "server_crashed"


class DiskError(MlxpinError):
    exit_code = ExitCode.IO
    kind = "disk"

    def __init__(self, path: Path, detail: str, hint: str | None = None) -> None:
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

    def __init__(self, repo: str, revision: str, problem: str, hint: str) -> None:
        super().__init__(f"{repo}@{revision}: {problem}", hint)


class ConfigError(MlxpinError):
    exit_code = ExitCode.CONFIG
    kind = "config"


class ManifestError(ConfigError):
    """An invalid manifest: names the file, the line, the key, and what to write instead."""

    kind = "manifest"

    def __init__(
        self, file: Path, line: int | None, key: str | None, problem: str, fix: str | None = None
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
        self.names = tuple(names)  # the models whose lock `mlxpin lock` would write
        super().__init__("; ".join(problems), f"run {Run.of('lock', *names)}")


class RepoNotFoundError(ConfigError):
    kind = "repo_not_found"

    def __init__(self, repo: str, revision: str, endpoint: str, token_sent: bool) -> None:
        token = "a token was sent" if token_sent else "no token was sent"
        super().__init__(
            f"{repo}@{revision}: repository not found at {endpoint} ({token})",
            f"check the owner and name at {endpoint}/{repo}; a private repo needs HF_TOKEN "
            "set to a token with read access",
        )


class RevisionNotFoundError(ConfigError):
    kind = "revision_not_found"

    def __init__(self, repo: str, revision: str, existing: Sequence[str]) -> None:
        hint = "write an existing branch, tag or full commit in launch.revision"
        if existing:  # the closest branches and tags the repo has
            hint += "; the repo has: " + ", ".join(existing)
        super().__init__(f"{repo}: revision {revision!r} not found", hint)


def human_size(size: int, signed: bool = False) -> str:
    """1500000000 -> '1.5 GB' (decimal units, as `ls -h --si`)."""
    sign = ""
    if signed:
        sign = "+" if size >= 0 else "-"
    value = float(abs(size))
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if value < 1000 or unit == "TB":
            text = f"{value:.0f} {unit}" if unit == "B" or value >= 100 else f"{value:.1f} {unit}"
            return sign + text
        value /= 1000
    raise AssertionError("unreachable")


class OverBudgetError(ConfigError):
    """`serve`: a model that alone needs more memory than the whole budget."""

    kind = "over_budget"

    def __init__(self, model: str, cost: int, budget: int, budget_source: str) -> None:
        super().__init__(
            f"{model}: needs {human_size(cost)} (its locked files plus the per-server "
            f"overhead), more than the whole memory budget of {human_size(budget)} "
            f"({budget_source})",
            "raise [serve] memory_budget in the manifest, or leave the model out of the "
            f"names given to {Run.of('serve')}",
        )


class PreflightError(MlxpinError):
    """Several problems at once, exiting with the code of the earliest step to fix."""

    kind = "preflight"
    ORDER: ClassVar[tuple[ExitCode, ...]] = (
        ExitCode.CONFIG,
        ExitCode.DATA,
        ExitCode.NO_INPUT,
        ExitCode.UNAVAILABLE,
    )

    def __init__(self, problems: Sequence[MlxpinError]) -> None:
        self.problems = tuple(problems)
        codes = {p.exit_code for p in self.problems}
        self.exit_code = next((c for c in self.ORDER if c in codes), ExitCode.SOFTWARE)
        hints = list(dict.fromkeys(p.hint for p in self.problems if p.hint))
        super().__init__(
            f"{len(self.problems)} problems: " + "; ".join(p.message for p in self.problems),
            "; ".join(hints) or None,
        )

    @staticmethod
    def of(problems: Sequence[MlxpinError]) -> MlxpinError:
        """One problem as itself; several as one PreflightError."""
        return problems[0] if len(problems) == 1 else PreflightError(problems)

    def to_json(self) -> dict[str, object]:
        data = super().to_json()
        data["problems"] = [p.to_json() for p in self.problems]
        return data


class PinMismatchError(ConfigError):
    kind = "pin_mismatch"

    def __init__(self, model: str, ours: str, theirs: str, lock_file: Path) -> None:
        super().__init__(
            f"{model}: the bundle pins {theirs} but {lock_file} pins {ours}",
            "export the bundle from a project with the same lock, or run "
            f"{Run.of('lock', '--update', model)} on one side so both pin the same commit",
        )


class RuntimeIntegrityError(DataError):
    kind = "runtime_integrity"

    def __init__(self, detail: str) -> None:
        super().__init__(
            f"the package index served a file whose hash is not in lock/runtime.toml: {detail}",
            "nothing was installed. If the index really changed a release, move the pin with "
            f"{Run.of('lock', '--update-runtime')}; otherwise check UV_INDEX_URL/PIP_INDEX_URL "
            "(a mirror or proxy may be serving other bytes)",
        )


class RuntimeMissingError(NoInputError):
    kind = "runtime_missing"

    def __init__(self, key: str, problem: str) -> None:
        super().__init__(
            f"the pinned server runtime {key[:12]} {problem}", f"run {Run.of('fetch')}"
        )


class ResolverUnavailableError(UnavailableError):
    kind = "resolver_unavailable"


class RuntimeResolutionError(ConfigError):
    kind = "runtime_resolution"

    def __init__(self, file: Path, detail: str) -> None:
        super().__init__(
            f"{file}: [runtime] cannot be satisfied: {detail}",
            "widen the ranges in [runtime] (mlx-lm, mlx, python, packages)",
        )


class BuildMismatchError(DataError):
    """A build whose bytes differ from the output its lock records (nothing installed)."""

    kind = "build_mismatch"

    def __init__(self, model: str, differing: Sequence[str], platforms: str | None) -> None:
        self.differing = tuple(differing)
        shown = ", ".join(self.differing[:5])
        more = f" (and {len(self.differing) - 5} more)" if len(self.differing) > 5 else ""
        if platforms is not None:
            hint = (
                f"the recorded output was built on {platforms}: builds on other platforms "
                "may differ (Metal vs CPU). Take the recorded output from a bundle "
                f"({Run.of('import', 'FILE')}) or a mirror (HF_ENDPOINT) instead of building"
            )
        else:
            hint = (
                "the build is not reproducible with this builder, or the recorded output "
                f"came from elsewhere; nothing was installed. To accept the new bytes, run "
                f"{Run.of('lock', '--update', model)} and build again"
            )
        super().__init__(
            f"{model}: the build differs from the recorded output in {shown}{more}", hint
        )


class BuildFailedError(MlxpinError):
    """The builder (mlx_lm convert/fuse) failed; its last lines and its log say why."""

    kind = "build_failed"

    def __init__(self, model: str, problem: str, hint: str, *, temporary: bool) -> None:
        self.exit_code = ExitCode.TEMP_FAIL if temporary else ExitCode.CONFIG
        super().__init__(f"{model}: {problem}", hint)
