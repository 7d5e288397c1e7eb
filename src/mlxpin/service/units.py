"""Boot units for `mlxpin launch NAME` or `mlxpin serve`: a systemd unit (Linux) or a
launchd plist (macOS).

Rendering is pure: a frozen `ServiceSpec` → the unit's text. The spec holds only absolute
paths (this interpreter, the manifest, the lock dir, the caches, the log file) and the
variables that say where the caches are, so that at boot `launch` finds exactly the
snapshots `fetch` filled. It never holds a secret: no `HF_TOKEN`, no `MLXPIN_API_KEY`
(systemd reads the key from an optional `EnvironmentFile=` the user creates; launchd has
no such thing, see the plist's comment).

Restart policy, written so that a supervisor never loops on a permanent error:

- systemd: `Restart=on-failure` with `RestartPreventExitStatus=65 66 77 78` (bad data,
  snapshot not fetched, access denied, configuration), a start limit as a backstop for
  temporary failures, `KillMode=mixed` (SIGTERM to `mlxpin launch`, which stops its
  server; SIGKILL to whatever is left after `TimeoutStopSec`).
- launchd cannot exclude exit codes: `KeepAlive = {SuccessfulExit = false}` restarts on
  any failure, at most once per `ThrottleInterval`. `mlxpin launch` refuses a permanent
  error in its preflight (no network, no server started, one line on stderr), so each
  throttled retry is cheap, and it succeeds by itself once the user runs the fix.

The second half of the module (`build_spec`, `install`, `uninstall`) does the side
effects: validating the manifest, writing the file atomically and, only when asked,
running systemctl/launchctl.
"""

from __future__ import annotations

import os
import plistlib
import pwd
import shlex
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from mlxpin.config import Settings
from mlxpin.errors import DiskError, Flag, MlxpinError, UnavailableError, UsageError
from mlxpin.util.atomic import write_atomic

Platform = Literal["linux", "macos"]

LABEL_PREFIX = "io.mlxpin."
UNIT_PREFIX = "mlxpin-"
# sysexits codes `mlxpin launch` uses for errors a restart cannot fix.
PERMANENT_EXIT_CODES = (65, 66, 77, 78)
RESTART_SEC = 5
START_LIMIT_INTERVAL_SEC = 600
START_LIMIT_BURST = 5
STOP_TIMEOUT_SEC = 30
THROTTLE_INTERVAL_SEC = 30
SERVE_UNIT_NAME = "serve"  # `mlxpin service install --serve`: mlxpin-serve / io.mlxpin.serve
# Variables whose values must never reach a unit file.
SECRET_VARIABLES = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "MLXPIN_API_KEY")


@dataclass(frozen=True)
class ServiceSpec:
    """Everything a boot unit says; every path is absolute."""

    name: str
    platform: Platform
    system: bool  # system-wide (boot, no login) rather than the user's own manager
    python: Path
    manifest: Path
    lock_dir: Path
    environment: tuple[tuple[str, str], ...]
    log_file: Path
    working_dir: Path
    env_file: Path | None  # systemd EnvironmentFile= (optional, may not exist)
    user: str | None  # the account a system-wide unit runs as
    description: str
    command: Literal["launch", "serve"] = "launch"  # serve: every model behind one endpoint

    @property
    def what(self) -> str:
        """The command the unit boots, as a user would type it."""
        return "mlxpin serve" if self.command == "serve" else f"mlxpin launch {self.name}"

    @property
    def label(self) -> str:
        """launchd Label / systemd unit name (without .service)."""
        return LABEL_PREFIX + self.name if self.platform == "macos" else UNIT_PREFIX + self.name

    def argv(self) -> tuple[str, ...]:
        return (
            str(self.python),
            "-m",
            "mlxpin",
            *((self.command,) if self.command == "serve" else (self.command, self.name)),
            "--manifest",
            str(self.manifest),
            "--lock-dir",
            str(self.lock_dir),
        )


# --- where units live ---------------------------------------------------------------------


def detect_platform(sys_platform: str | None = None) -> Platform:
    current = sys_platform or sys.platform
    if current == "darwin":
        return "macos"
    if current.startswith("linux"):
        return "linux"
    raise UsageError(
        f"boot units are written for Linux (systemd) and macOS (launchd), not {current!r}",
        f"pass {Flag('service install', '--platform', 'linux')} or "
        f"{Flag('service install', '--platform', 'macos')} to generate one for another machine",
    )


def unit_file_name(name: str, platform: Platform) -> str:
    if platform == "macos":
        return f"{LABEL_PREFIX}{name}.plist"
    return f"{UNIT_PREFIX}{name}.service"


def unit_dir(platform: Platform, system: bool, environ: Mapping[str, str]) -> Path:
    """The directory the service manager reads units from (user or system scope)."""
    if platform == "macos":
        if system:
            return Path("/Library/LaunchDaemons")
        return _home(environ) / "Library" / "LaunchAgents"
    if system:
        return Path("/etc/systemd/system")
    config = environ.get("XDG_CONFIG_HOME")
    base = Path(config) if config and Path(config).is_absolute() else _home(environ) / ".config"
    return base / "systemd" / "user"


def unit_path(name: str, platform: Platform, system: bool, environ: Mapping[str, str]) -> Path:
    return unit_dir(platform, system, environ) / unit_file_name(name, platform)


def default_env_file(name: str, system: bool, environ: Mapping[str, str]) -> Path:
    if system:
        return Path("/etc/mlxpin") / f"{name}.env"
    config = environ.get("XDG_CONFIG_HOME")
    base = Path(config) if config and Path(config).is_absolute() else _home(environ) / ".config"
    return base / "mlxpin" / f"{name}.env"


def _home(environ: Mapping[str, str]) -> Path:
    home = environ.get("HOME")
    return Path(home) if home else Path.home()


# --- rendering (pure) ---------------------------------------------------------------------


def render(spec: ServiceSpec) -> str:
    return render_launchd(spec) if spec.platform == "macos" else render_systemd(spec)


def _systemd_escape(value: str) -> str:
    """Specifiers (`%`) are expanded in every setting we write."""
    return value.replace("%", "%%")


def _systemd_quote(arg: str) -> str:
    """One ExecStart= word: `%` and `$` escaped, quoted when it holds special characters."""
    escaped = _systemd_escape(arg).replace("$", "$$")
    if escaped and not any(c in escaped for c in " \t\"'\\;"):
        return escaped
    return '"' + escaped.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _systemd_env(key: str, value: str) -> str:
    """One Environment= assignment, always quoted (no `$` expansion happens there)."""
    text = _systemd_escape(f"{key}={value}")
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def render_systemd(spec: ServiceSpec) -> str:
    manager = "systemctl" if spec.system else "systemctl --user"
    env_file = spec.env_file
    lines = [
        f"# Generated by `mlxpin service install {spec.name}{' --system' if spec.system else ''}`.",
        "# Regenerate it (same command) after moving the project, the venv or the caches.",
        "#",
        f"# Boots `{spec.what}` offline: no network, the pinned "
        + ("snapshots only." if spec.command == "serve" else "snapshot only."),
        "# Exit codes 65/66/77/78 are permanent (bad data, snapshot not fetched, access denied,",
        "# invalid manifest or stale lock): systemd does not restart them. Fix the cause, then",
        f"#   {manager} restart {spec.label}",
        f"# After {START_LIMIT_BURST} failed starts within {START_LIMIT_INTERVAL_SEC} s it stays",
        f"# failed until `{manager} reset-failed {spec.label}`.",
        "#",
        "# No secret is written here. To make the gateway require a bearer key, put",
        "#   MLXPIN_API_KEY=<key>",
    ]
    if env_file is not None:
        lines += [
            f"# into {_systemd_escape(str(env_file))} (chmod 600); it is read if it exists.",
        ]
    if not spec.system:
        lines += [
            "#",
            "# A user unit starts at boot only with lingering: loginctl enable-linger $USER",
        ]
    lines += [
        f"# Logs: {_systemd_escape(str(spec.log_file))} (rotate with copytruncate).",
        "",
        "[Unit]",
        f"Description=mlxpin: {_systemd_escape(spec.description)}",
        f"StartLimitIntervalSec={START_LIMIT_INTERVAL_SEC}",
        f"StartLimitBurst={START_LIMIT_BURST}",
        "",
        "[Service]",
        "Type=simple",
        "ExecStart=" + " ".join(_systemd_quote(a) for a in spec.argv()),
        f"WorkingDirectory={_systemd_escape(str(spec.working_dir))}",
    ]
    for key, value in spec.environment:
        lines.append("Environment=" + _systemd_env(key, value))
    if env_file is not None:
        lines.append(f"EnvironmentFile=-{_systemd_escape(str(env_file))}")
    if spec.user is not None:
        lines.append(f"User={spec.user}")
    log = _systemd_escape(str(spec.log_file))
    lines += [
        f"StandardOutput=append:{log}",
        f"StandardError=append:{log}",
        "Restart=on-failure",
        f"RestartSec={RESTART_SEC}",
        "RestartPreventExitStatus=" + " ".join(str(c) for c in PERMANENT_EXIT_CODES),
        "KillMode=mixed",
        "KillSignal=SIGTERM",
        f"TimeoutStopSec={STOP_TIMEOUT_SEC}",
        "NoNewPrivileges=yes",
        "",
        "[Install]",
        f"WantedBy={'multi-user.target' if spec.system else 'default.target'}",
        "",
    ]
    return "\n".join(lines)


def _plist_comment(spec: ServiceSpec) -> str:
    """Text of the XML comment (which may not contain a double hyphen, so no flags)."""
    domain = "system" if spec.system else "gui/$(id -u)"
    scope = "a system-wide LaunchDaemon" if spec.system else "a LaunchAgent of this user"
    lines = [
        f"Generated by `mlxpin service install {spec.name}` as {scope}.",
        "Regenerate it after moving the project, the venv or the caches.",
        "",
        f"Boots `{spec.what}` offline. launchd cannot exclude exit codes, so",
        "KeepAlive restarts any failure, at most once per ThrottleInterval seconds. On a",
        "permanent error (exit 65/66/77/78: bad data, snapshot not fetched, access denied,",
        "invalid manifest or stale lock) `mlxpin launch` stops in its preflight at once,",
        "without network or server, so each retry is cheap; it comes up by itself once the",
        "printed fix has been run. To stop retrying:",
        f"  launchctl bootout {domain}/{spec.label}",
        "",
        "No secret is written here. launchd has no environment file: to make the gateway",
        "require a bearer key, put the key in a file only you can read (chmod 600) and",
        "install with MLXPIN_API_KEY_FILE=<that file>; its path (not the key) goes under",
        "EnvironmentVariables, and reinstalling keeps it.",
    ]
    if not spec.system:
        lines += ["", "A LaunchAgent starts at login; a system-wide install starts at boot."]
    lines += [f"Logs: {spec.log_file} (rotate with newsyslog)."]
    text = "\n".join("  " + line if line else "" for line in lines)
    # A path could still hold "--", which an XML comment may not.
    return text.replace("--", "-\N{ZERO WIDTH SPACE}-")


def render_launchd(spec: ServiceSpec) -> str:
    data: dict[str, object] = {
        "Label": spec.label,
        "ProgramArguments": list(spec.argv()),
        "EnvironmentVariables": dict(spec.environment),
        "WorkingDirectory": str(spec.working_dir),
        "RunAtLoad": True,
        "KeepAlive": {"SuccessfulExit": False},
        "ThrottleInterval": THROTTLE_INTERVAL_SEC,
        "ExitTimeOut": STOP_TIMEOUT_SEC,
        "StandardOutPath": str(spec.log_file),
        "StandardErrorPath": str(spec.log_file),
    }
    if spec.user is not None:
        data["UserName"] = spec.user
    body = plistlib.dumps(data, sort_keys=True).decode("utf-8")
    head, sep, rest = body.partition("<plist")
    return f"{head}<!--\n{_plist_comment(spec)}\n-->\n{sep}{rest}"


# --- what to run afterwards ---------------------------------------------------------------


def _systemctl(spec: ServiceSpec) -> tuple[str, ...]:
    return ("systemctl",) if spec.system else ("systemctl", "--user")


def _launchd_domain(spec: ServiceSpec, uid: int | None) -> str:
    if spec.system:
        return "system"
    return f"gui/{uid}" if uid is not None else "gui/$(id -u)"


def enable_commands(
    spec: ServiceSpec, path: Path, *, restart: bool, uid: int | None
) -> tuple[tuple[str, ...], ...]:
    """What `--enable` runs (and what `install` tells the user to run)."""
    if spec.platform == "macos":
        domain = _launchd_domain(spec, uid)
        return (("launchctl", "bootstrap", domain, str(path)),)
    ctl = _systemctl(spec)
    unit = spec.label
    if restart:
        return ((*ctl, "daemon-reload"), (*ctl, "enable", unit), (*ctl, "restart", unit))
    return ((*ctl, "daemon-reload"), (*ctl, "enable", "--now", unit))


def disable_commands(spec: ServiceSpec, uid: int | None) -> tuple[tuple[str, ...], ...]:
    if spec.platform == "macos":
        return (("launchctl", "bootout", f"{_launchd_domain(spec, uid)}/{spec.label}"),)
    return ((*_systemctl(spec), "disable", "--now", spec.label),)


def after_removal_commands(spec: ServiceSpec) -> tuple[tuple[str, ...], ...]:
    if spec.platform == "macos":
        return ()
    return ((*_systemctl(spec), "daemon-reload"),)


def shell_line(commands: Sequence[Sequence[str]], sudo: bool) -> str:
    """One copy-pasteable line (`$(id -u)` is left for the shell to expand)."""
    words = []
    for argv in commands:
        quoted = " ".join(a if a.startswith("gui/$(id -u)") else shlex.quote(a) for a in argv)
        words.append(("sudo " if sudo else "") + quoted)
    return " && ".join(words)


def next_steps(spec: ServiceSpec, path: Path) -> tuple[str, ...]:
    steps = [shell_line(enable_commands(spec, path, restart=False, uid=None), spec.system)]
    if spec.platform == "linux" and not spec.system:
        steps.append("loginctl enable-linger $USER   # start at boot, before any login")
    steps.append(f"tail -f {spec.log_file}")
    return tuple(steps)


# --- side effects -------------------------------------------------------------------------


class ServiceManagerError(UnavailableError):
    """systemctl/launchctl is missing or refused a command (the unit file is in place)."""

    kind = "service_manager"


@dataclass(frozen=True)
class CommandRun:
    argv: tuple[str, ...]
    returncode: int
    output: str


@dataclass(frozen=True)
class BuiltSpec:
    spec: ServiceSpec
    path: Path
    content: str
    warnings: tuple[str, ...]


def _account_name() -> str:
    try:
        return pwd.getpwuid(os.getuid()).pw_name
    except KeyError:
        return str(os.getuid())


def _caches_of(
    settings: Settings, user: str | None, environ: Mapping[str, str]
) -> tuple[Path, Path, Path]:
    """The caches the service's user will use: under `sudo ... --system` (or with
    --run-as) that is the target user's own cache, not root's, unless set explicitly."""
    explicit = any(environ.get(v) for v in ("HF_HOME", "HF_HUB_CACHE", "MLXPIN_HOME"))
    if user is None or user == _account_name() or explicit:
        return settings.hf_home, settings.hub_cache, settings.state_dir
    try:
        home = pwd.getpwnam(user).pw_dir
    except KeyError:
        raise UsageError(f"no user named {user!r} on this machine") from None
    from mlxpin.config import hf_home as default_hf_home

    base = default_hf_home({"HOME": home})
    return base, base / "hub", base / "mlxpin"


def _check_path(path: Path, what: str) -> Path:
    text = str(path)
    if any(not c.isprintable() for c in text):
        raise UsageError(f"{what} {text!r} contains control characters; a unit cannot hold it")
    return path


def _serve_readiness(settings: Settings) -> tuple[str, str, tuple[str, ...]]:
    """Like `_readiness_warnings`, for `mlxpin serve` (every model, one endpoint)."""
    from mlxpin.plan.serve import plan_serve
    from mlxpin.project.selection import manifest_of

    manifest = manifest_of(settings)
    warnings: list[str] = []
    try:
        plan_serve(settings, (), environ={})
    except MlxpinError as exc:  # stale locks, not fetched, over budget, ...
        warnings.append(exc.message + (f"; {exc.hint} before boot" if exc.hint else ""))
    table = manifest.serve
    description = f"{len(manifest.models)} models on {table.host}:{table.port}"
    return SERVE_UNIT_NAME, description, tuple(warnings)


def _readiness_warnings(settings: Settings, name: str) -> tuple[str, str, tuple[str, ...]]:
    """Validate the manifest and the model (errors), and say what is not ready (warnings):
    exactly what `mlxpin launch NAME` would refuse at boot, from the same preflight."""
    from mlxpin.plan.launch import plan_launch
    from mlxpin.project.selection import manifest_of, pick

    manifest = manifest_of(settings)
    spec = pick(manifest, [name])[0]
    warnings: list[str] = []
    try:
        plan_launch(settings, manifest, spec, environ={})
    except MlxpinError as exc:  # stale lock, not fetched, mlx_lm missing, ...
        warnings.append(exc.message + (f"; {exc.hint} before boot" if exc.hint else ""))
    description = f"{spec.api_label} on {spec.host}:{spec.port}"
    return spec.name, description, tuple(warnings)


def build_spec(
    settings: Settings,
    name: str,
    *,
    platform: Platform | None,
    system: bool,
    environ: Mapping[str, str],
    log_file: Path | None = None,
    env_file: Path | None = None,
    run_as: str | None = None,
    serve: bool = False,
) -> BuiltSpec:
    """Validate (manifest parses, the model exists) and render; warnings say what to run.
    With ``serve``, the unit boots `mlxpin serve` (every model behind one endpoint)."""
    chosen = platform or detect_platform()
    if serve:
        model, description, warnings = _serve_readiness(settings)
    else:
        model, description, warnings = _readiness_warnings(settings, name)
    if run_as is not None and not system:
        raise UsageError(
            "a user to run as only applies to a system unit (a user unit runs as you)",
            f"add {Flag('service install', '--system')}, or leave out "
            + Flag("service install", "--run-as"),
        )
    cwd = Path.cwd()
    user = (run_as or environ.get("SUDO_USER") or _account_name()) if system else None
    hf_home, hub_cache, state_dir = _caches_of(settings, user, environ)
    log = (cwd / log_file).absolute() if log_file else state_dir / "logs" / f"{model}.log"
    env_path: Path | None = None
    if chosen == "linux":
        env_path = (
            (cwd / env_file).absolute() if env_file else default_env_file(model, system, environ)
        )
    elif env_file is not None:
        raise UsageError(
            "--env-file is for systemd; launchd has no environment file",
            "see the comment in the generated plist for MLXPIN_API_KEY",
        )
    environment: tuple[tuple[str, str], ...] = (
        ("HF_HOME", str(hf_home)),
        ("HF_HUB_CACHE", str(hub_cache)),
        ("MLXPIN_HOME", str(state_dir)),
        ("HF_HUB_OFFLINE", "1"),
        ("PYTHONUNBUFFERED", "1"),
    )
    key_file = environ.get("MLXPIN_API_KEY_FILE")
    if key_file:
        # A path, never the key: the gateway reads the key from it at every start.
        environment += (
            ("MLXPIN_API_KEY_FILE", str((cwd / Path(key_file).expanduser()).absolute())),
        )
    elif environ.get("MLXPIN_API_KEY"):
        warnings = (
            *warnings,
            "MLXPIN_API_KEY is set but never written into a unit: put the key in a file "
            "(chmod 600) and install with MLXPIN_API_KEY_FILE=<that file>"
            + (" or use the unit's EnvironmentFile" if chosen == "linux" else ""),
        )
    python = Path(sys.executable).absolute()
    spec = ServiceSpec(
        name=model,
        platform=chosen,
        system=system,
        python=_check_path(python, "the interpreter"),
        manifest=_check_path(settings.manifest_path, "the manifest path"),
        lock_dir=_check_path(settings.lock_dir, "the lock dir"),
        environment=tuple((k, str(_check_path(Path(v), k))) for k, v in environment),
        log_file=_check_path(log, "the log file"),
        working_dir=settings.manifest_path.parent,
        env_file=_check_path(env_path, "the environment file") if env_path else None,
        user=user,
        description=description,
        command="serve" if serve else "launch",
    )
    content = render(spec)
    _refuse_secrets(content, environ)
    path = unit_path(model, chosen, system, environ)
    return BuiltSpec(spec, path, content, warnings)


def _refuse_secrets(content: str, environ: Mapping[str, str]) -> None:
    for variable in SECRET_VARIABLES:
        value = (environ.get(variable) or "").strip()
        if len(value) >= 8 and value in content:
            raise UsageError(
                f"the unit would contain the value of {variable}; refusing to write a secret",
                "a path or name passed to mlxpin equals a secret; use other paths",
            )


def _run(argv: Sequence[str], *, tolerate: Sequence[int] = ()) -> CommandRun:
    try:
        done = subprocess.run(list(argv), capture_output=True, text=True, timeout=120, check=False)
    except FileNotFoundError:
        raise ServiceManagerError(
            f"`{argv[0]}` is not installed or not on PATH",
            "run the printed command on a machine with the service manager, or drop "
            + Flag("service install", "--enable"),
        ) from None
    except subprocess.TimeoutExpired:
        raise ServiceManagerError(f"`{' '.join(argv)}` did not finish in 120 s") from None
    output = (done.stderr or done.stdout or "").strip()
    if done.returncode != 0 and done.returncode not in tolerate:
        last = output.splitlines()[-1] if output else "no output"
        raise ServiceManagerError(f"`{' '.join(argv)}` failed (exit {done.returncode}): {last}")
    return CommandRun(tuple(argv), done.returncode, output)


@dataclass(frozen=True)
class InstallResult:
    name: str
    platform: Platform
    system: bool
    path: Path
    content: str
    written: bool  # False with --print, or when the file already had these bytes
    changed: bool  # the file on disk differed (or was absent)
    warnings: tuple[str, ...]
    next_steps: tuple[str, ...]
    ran: tuple[CommandRun, ...]


def install(
    built: BuiltSpec,
    *,
    print_only: bool = False,
    enable: bool = False,
) -> InstallResult:
    spec, path, content = built.spec, built.path, built.content
    data = content.encode("utf-8")
    try:
        changed = path.read_bytes() != data
    except OSError:
        changed = True
    written = False
    ran: list[CommandRun] = []
    if not print_only:
        if changed:
            try:
                spec.log_file.parent.mkdir(parents=True, exist_ok=True)
                write_atomic(path, data, mode=0o644)
            except DiskError as exc:
                if spec.system:
                    exc.hint = f"writing to {path.parent} needs root: rerun with sudo"
                raise
            except PermissionError as exc:
                raise DiskError(path, exc.strerror or str(exc)) from None
            written = True
        else:
            spec.log_file.parent.mkdir(parents=True, exist_ok=True)
        if enable:
            uid = os.getuid()
            try:
                if spec.platform == "macos":
                    # A loaded job keeps its old definition: unload first (absent is fine).
                    ran.append(_run(disable_commands(spec, uid)[0], tolerate=(3, 5, 36, 113)))
                for argv in enable_commands(spec, path, restart=changed, uid=uid):
                    ran.append(_run(argv))
            except ServiceManagerError as exc:
                raise ServiceManagerError(
                    exc.message,
                    f"the unit file is in place at {path}; fix the cause and run: "
                    + shell_line(enable_commands(spec, path, restart=changed, uid=None), False),
                ) from None
    return InstallResult(
        name=spec.name,
        platform=spec.platform,
        system=spec.system,
        path=path,
        content=content,
        written=written,
        changed=changed,
        warnings=built.warnings,
        next_steps=() if enable else next_steps(spec, path),
        ran=tuple(ran),
    )


@dataclass(frozen=True)
class UninstallResult:
    name: str
    path: Path
    existed: bool
    removed: bool
    ran: tuple[CommandRun, ...]
    next_steps: tuple[str, ...]


def uninstall(
    name: str,
    *,
    platform: Platform | None,
    system: bool,
    environ: Mapping[str, str],
    print_only: bool = False,
    disable: bool = False,
) -> UninstallResult:
    """Remove the unit file (after stopping it with `disable`); absent is not an error."""
    from mlxpin.project import validate

    if not validate.NAME_RE.fullmatch(name):
        raise UsageError(f"{name!r} is not a model name (lowercase letters, digits, '.', '_', '-')")
    chosen = platform or detect_platform()
    path = unit_path(name, chosen, system, environ)
    # Only the label matters for the commands; the rest of the spec is not read.
    stub = ServiceSpec(
        name=name,
        platform=chosen,
        system=system,
        python=Path(sys.executable),
        manifest=Path("/"),
        lock_dir=Path("/"),
        environment=(),
        log_file=Path("/"),
        working_dir=Path("/"),
        env_file=None,
        user=None,
        description=name,
    )
    existed = path.exists()
    ran: list[CommandRun] = []
    removed = False
    if not print_only:
        if disable and existed:
            tolerate = (3, 5, 36, 113) if chosen == "macos" else ()
            for argv in disable_commands(stub, os.getuid()):
                ran.append(_run(argv, tolerate=tolerate))
        if existed:
            try:
                path.unlink()
            except FileNotFoundError:
                pass
            except OSError as exc:
                hint = f"removing from {path.parent} needs root: rerun with sudo"
                raise DiskError(path, exc.strerror or str(exc), hint if system else None) from None
            removed = True
        if disable and existed:
            for argv in after_removal_commands(stub):
                ran.append(_run(argv))
    steps: tuple[str, ...] = ()
    if not disable:
        commands = disable_commands(stub, None)
        steps = (shell_line(commands, system),)
        if after_removal_commands(stub):
            steps += (shell_line(after_removal_commands(stub), system),)
    return UninstallResult(name, path, existed, removed, tuple(ran), steps)
