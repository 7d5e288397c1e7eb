"""Boot units for `mlxpin launch NAME` or `mlxpin serve`: a systemd unit (Linux) or a
launchd plist (macOS).

Rendering is pure: a frozen `ServiceSpec` → the unit's text. The spec holds only absolute
paths and the variables that say where the caches are, so that at boot `launch` finds
exactly the snapshots `fetch` filled. It never holds a secret: no `HF_TOKEN`, no
`MLXPIN_API_KEY` (systemd reads the key from an optional `EnvironmentFile=`; launchd has
no such thing, see the plist's comment).

The restart policy never loops on a permanent error: systemd is told which exit codes not
to restart; launchd cannot exclude exit codes, so it restarts any failure at most once per
`ThrottleInterval`, and `mlxpin launch` refuses a permanent error in its preflight (no
network, no server), so each retry is cheap and succeeds once the user runs the fix.

`build_spec`, `install` and `uninstall` do the side effects: validating the manifest,
writing the file atomically and, only when asked, running systemctl/launchctl.
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

SERVE_UNIT_NAME = "serve"  # `mlxpin service install --serve`: mlxpin-serve / io.mlxpin.serve
# Variables whose values must never reach a unit file.
SECRET_VARIABLES = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "MLXPIN_API_KEY")
# launchctl bootout's exit codes for a job that is not loaded.
_NOT_LOADED = (3, 5, 36, 113)


@dataclass(frozen=True)
class Unit:
    """Which unit: all that the systemctl/launchctl commands need."""

    name: str
    platform: Platform
    system: bool  # system-wide (boot, no login) rather than the user's own manager

    @property
    def label(self) -> str:
        """launchd Label / systemd unit name (without .service)."""
        return ("io.mlxpin." if self.platform == "macos" else "mlxpin-") + self.name


@dataclass(frozen=True)
class ServiceSpec(Unit):
    """Everything a boot unit says; every path is absolute."""

    python: Path
    manifest: Path
    lock_dir: Path
    log_file: Path
    working_dir: Path
    environment: tuple[tuple[str, str], ...]
    env_file: Path | None  # systemd EnvironmentFile= (optional, may not exist)
    user: str | None  # the account a system-wide unit runs as
    description: str
    command: Literal["launch", "serve"] = "launch"  # serve: every model behind one endpoint

    @property
    def what(self) -> str:
        """The command the unit boots, as a user would type it."""
        return "mlxpin serve" if self.command == "serve" else f"mlxpin launch {self.name}"

    @property
    def install_line(self) -> str:
        """The command that wrote the unit (and regenerates it)."""
        target = "--serve" if self.command == "serve" else self.name
        return f"mlxpin service install {target}{' --system' if self.system else ''}"

    def argv(self) -> tuple[str, ...]:
        command = (self.command,) if self.command == "serve" else (self.command, self.name)
        files = ("--manifest", str(self.manifest), "--lock-dir", str(self.lock_dir))
        return (str(self.python), "-m", "mlxpin", *command, *files)


# --- where units live ---------------------------------------------------------------------


def detect_platform() -> Platform:
    if sys.platform == "darwin":
        return "macos"
    if sys.platform.startswith("linux"):
        return "linux"
    raise UsageError(
        f"boot units are written for Linux (systemd) and macOS (launchd), not {sys.platform!r}",
        f"pass {Flag('service install', '--platform', 'linux')} or "
        f"{Flag('service install', '--platform', 'macos')} to generate one for another machine",
    )


def _home(environ: Mapping[str, str]) -> Path:
    home = environ.get("HOME")
    return Path(home) if home else Path.home()


def _config_home(environ: Mapping[str, str]) -> Path:
    config = environ.get("XDG_CONFIG_HOME")
    return Path(config) if config and Path(config).is_absolute() else _home(environ) / ".config"


def unit_path(unit: Unit, environ: Mapping[str, str]) -> Path:
    """Where the service manager (user or system scope) reads this unit from."""
    if unit.platform == "macos":
        agents = _home(environ) / "Library/LaunchAgents"
        return (Path("/Library/LaunchDaemons") if unit.system else agents) / f"{unit.label}.plist"
    folder = Path("/etc/systemd/system") if unit.system else _config_home(environ) / "systemd/user"
    return folder / f"{unit.label}.service"


def default_env_file(name: str, system: bool, environ: Mapping[str, str]) -> Path:
    folder = Path("/etc/mlxpin") if system else _config_home(environ) / "mlxpin"
    return folder / f"{name}.env"


# --- rendering (pure) ---------------------------------------------------------------------


def render(spec: ServiceSpec) -> str:
    return render_launchd(spec) if spec.platform == "macos" else render_systemd(spec)


def _systemd_escape(value: object) -> str:
    """Specifiers (`%`) are expanded in every setting we write."""
    return str(value).replace("%", "%%")


def _systemd_quoted(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _systemd_word(arg: str) -> str:
    """One ExecStart= word: `%` and `$` escaped, quoted when it holds special characters."""
    escaped = _systemd_escape(arg).replace("$", "$$")
    if escaped and not any(c in escaped for c in " \t\"'\\;"):
        return escaped
    return _systemd_quoted(escaped)


def render_systemd(spec: ServiceSpec) -> str:
    manager = "systemctl" if spec.system else "systemctl --user"
    log = _systemd_escape(spec.log_file)
    head = ""
    settings = "".join(
        f"Environment={_systemd_quoted(_systemd_escape(f'{key}={value}'))}\n"
        for key, value in spec.environment  # always quoted: no `$` expansion happens there
    )
    if spec.env_file is not None:
        env_file = _systemd_escape(spec.env_file)
        head += f"# into {env_file} (chmod 600); it is read if it exists.\n"
        settings += f"EnvironmentFile=-{env_file}\n"
    if not spec.system:
        head += (
            "#\n# A user unit starts at boot only with lingering: loginctl enable-linger $USER\n"
        )
    if spec.user is not None:
        settings += f"User={spec.user}\n"
    env = dict(spec.environment)  # a cache on a disk that mounts late: wait for it
    mounts = " ".join(_systemd_word(env[k]) for k in ("HF_HUB_CACHE", "MLXPIN_HOME") if k in env)
    return f"""\
# Generated by `{spec.install_line}`.
# Regenerate it (same command) after moving the project, the venv or the caches.
#
# Boots `{spec.what}` offline: no network, the pinned \
{"snapshots" if spec.command == "serve" else "snapshot"} only.
# Exit codes 65/66/77/78 are permanent (bad data, snapshot not fetched, access denied,
# invalid manifest or stale lock): systemd does not restart them. Fix the cause, then
#   {manager} restart {spec.label}
# After 5 failed starts within 600 s it stays
# failed until `{manager} reset-failed {spec.label}`.
#
# No secret is written here. To make the gateway require a bearer key, put
#   MLXPIN_API_KEY=<key>
{head}# Logs: {log} (rotate with copytruncate).

[Unit]
Description=mlxpin: {_systemd_escape(spec.description)}
StartLimitIntervalSec=600
StartLimitBurst=5
RequiresMountsFor={mounts}

[Service]
Type=simple
ExecStart={" ".join(_systemd_word(a) for a in spec.argv())}
WorkingDirectory={_systemd_escape(spec.working_dir)}
{settings}StandardOutput=append:{log}
StandardError=append:{log}
Restart=on-failure
RestartSec=5
RestartPreventExitStatus=65 66 77 78
KillMode=mixed
KillSignal=SIGTERM
TimeoutStopSec=30
NoNewPrivileges=yes

[Install]
WantedBy={"multi-user.target" if spec.system else "default.target"}
"""


def _plist_comment(spec: ServiceSpec) -> str:
    """Text of the XML comment (which may not contain a double hyphen, so no flags)."""
    domain = "system" if spec.system else "gui/$(id -u)"
    scope = "a system-wide LaunchDaemon" if spec.system else "a LaunchAgent of this user"
    login = "A LaunchAgent starts at login; a system-wide install starts at boot."
    agent = "" if spec.system else f"\n{login}\n"
    # the serve unit is installed with an option, which an XML comment cannot spell
    serve = spec.command == "serve"
    origin = (
        "`mlxpin service install` (its serve option)"
        if serve
        else f"`mlxpin service install {spec.name}`"
    )
    text = f"""\
Generated by {origin} as {scope}.
Regenerate it after moving the project, the venv or the caches.

Boots `{spec.what}` offline. launchd cannot exclude exit codes, so
KeepAlive restarts any failure, at most once per ThrottleInterval seconds. On a
permanent error (exit 65/66/77/78: bad data, snapshot not fetched, access denied,
invalid manifest or stale lock) `mlxpin launch` stops in its preflight at once,
without network or server, so each retry is cheap; it comes up by itself once the
printed fix has been run. launchd cannot wait for a disk to mount (systemd's
RequiresMountsFor has no equivalent): a cache missing at boot exits 75 and
KeepAlive retries until it is there. To stop retrying:
  launchctl bootout {domain}/{spec.label}

No secret is written here. launchd has no environment file: to make the gateway
require a bearer key, put the key in a file only you can read (chmod 600) and
install with MLXPIN_API_KEY_FILE=<that file>; its path (not the key) goes under
EnvironmentVariables, and reinstalling keeps it.
{agent}Logs: {spec.log_file} (rotate with newsyslog)."""
    text = "\n".join("  " + line if line else "" for line in text.split("\n"))
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
        "ThrottleInterval": 30,
        "ExitTimeOut": 30,
        "StandardOutPath": str(spec.log_file),
        "StandardErrorPath": str(spec.log_file),
    }
    if spec.user is not None:
        data["UserName"] = spec.user
    body = plistlib.dumps(data, sort_keys=True).decode("utf-8")
    head, sep, rest = body.partition("<plist")
    return f"{head}<!--\n{_plist_comment(spec)}\n-->\n{sep}{rest}"


# --- what to run afterwards ---------------------------------------------------------------


def _systemctl(unit: Unit) -> tuple[str, ...]:
    return ("systemctl",) if unit.system else ("systemctl", "--user")


def _launchd_target(unit: Unit, uid: int | None) -> str:
    if unit.system:
        return "system"
    return f"gui/{uid}" if uid is not None else "gui/$(id -u)"


def enable_commands(
    spec: Unit, path: Path, *, restart: bool, uid: int | None
) -> tuple[tuple[str, ...], ...]:
    """What `--enable` runs (and what `install` tells the user to run)."""
    if spec.platform == "macos":
        return (("launchctl", "bootstrap", _launchd_target(spec, uid), str(path)),)
    ctl = _systemctl(spec)
    if restart:
        return (
            (*ctl, "daemon-reload"),
            (*ctl, "enable", spec.label),
            (*ctl, "restart", spec.label),
        )
    return ((*ctl, "daemon-reload"), (*ctl, "enable", "--now", spec.label))


def disable_commands(unit: Unit, uid: int | None) -> tuple[tuple[str, ...], ...]:
    if unit.platform == "macos":
        return (("launchctl", "bootout", f"{_launchd_target(unit, uid)}/{unit.label}"),)
    return ((*_systemctl(unit), "disable", "--now", unit.label),)


def after_removal_commands(unit: Unit) -> tuple[tuple[str, ...], ...]:
    return () if unit.platform == "macos" else ((*_systemctl(unit), "daemon-reload"),)


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


def _readiness(settings: Settings, name: str, serve: bool) -> tuple[str, str, tuple[str, ...]]:
    """Validate the manifest and the model (errors), and say what is not ready (warnings):
    exactly what `mlxpin launch NAME` (or `mlxpin serve`) would refuse at boot, from the
    same preflight."""
    from mlxpin.plan.launch import plan_launch
    from mlxpin.plan.serve import plan_serve
    from mlxpin.project.selection import manifest_of, pick

    manifest = manifest_of(settings)
    if serve:
        unit, table = SERVE_UNIT_NAME, manifest.serve
        description = f"{len(manifest.models)} models on {table.host}:{table.port}"
    else:
        spec = pick(manifest, [name])[0]
        unit, description = spec.name, f"{spec.api_label} on {spec.host}:{spec.port}"
    try:
        if serve:
            plan_serve(settings, (), environ={})
        else:
            plan_launch(settings, manifest, spec, environ={})
    except MlxpinError as exc:  # stale locks, not fetched, over budget, mlx_lm missing, ...
        return unit, description, (exc.message + (f"; {exc.hint} before boot" if exc.hint else ""),)
    return unit, description, ()


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
    model, description, warnings = _readiness(settings, name, serve)
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
    return BuiltSpec(spec, unit_path(spec, environ), content, warnings)


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
                    ran.append(_run(disable_commands(spec, uid)[0], tolerate=_NOT_LOADED))
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
    unit = Unit(name, platform or detect_platform(), system)
    path = unit_path(unit, environ)
    existed = path.exists()
    ran: list[CommandRun] = []
    removed = False
    if existed and not print_only:
        if disable:
            tolerate = _NOT_LOADED if unit.platform == "macos" else ()
            ran += [_run(argv, tolerate=tolerate) for argv in disable_commands(unit, os.getuid())]
        try:
            path.unlink()
        except FileNotFoundError:
            pass
        except OSError as exc:
            hint = f"removing from {path.parent} needs root: rerun with sudo"
            raise DiskError(path, exc.strerror or str(exc), hint if system else None) from None
        removed = True
        if disable:
            ran += [_run(argv) for argv in after_removal_commands(unit)]
    steps: tuple[str, ...] = ()
    if not disable:
        commands = (disable_commands(unit, None), after_removal_commands(unit))
        steps = tuple(shell_line(argvs, system) for argvs in commands if argvs)
    return UninstallResult(name, path, existed, removed, tuple(ran), steps)
