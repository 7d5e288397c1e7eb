"""Boot preflight: manifest + lock + verified snapshot → a LaunchPlan (pure data).

The boot path: it reads the manifest and lock files and stats the snapshot; it never
imports huggingface_hub or opens a socket. `mlxpin.supervise.runner` runs a plan.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlxpin.config import STATE_DIR_HINT, Settings
from mlxpin.errors import (
    ConfigError,
    IntegrityError,
    MlxpinError,
    ModelNotChosenError,
    NotMountedError,
    SnapshotMissingError,
    UsageError,
)
from mlxpin.project.engines import MLX_LM, MLX_VLM, VLM_ROLE_FLAGS
from mlxpin.project.lockfile import LockedModel, valid_locks
from mlxpin.project.manifest import GatewaySpec, Manifest, ModelIdentity, ModelSpec
from mlxpin.project.selection import label_not_name
from mlxpin.project.serveropts import SERVER_TABLES, server_argv
from mlxpin.runtime.server import SOCKET_SERVERS, ServerRuntime, server_runtime, vlm_server
from mlxpin.store.layout import CHANGED, StoreLayout, check_stamp
from mlxpin.store.records import read_stamp
from mlxpin.util.jsonable import fields_json
from mlxpin.util.writable import require_writable_dir

PRIVATE_HOST = "127.0.0.1"
PRIVATE_PORT_SHOWN = "<private port>"  # in a plan: the port is chosen when the server starts
API_KEY_VARIABLE = "MLXPIN_API_KEY"
API_KEY_FILE_VARIABLE = "MLXPIN_API_KEY_FILE"  # for launchd, which has no EnvironmentFile

# What the server process gets on top of the inherited environment: no network, ever.
OFFLINE_ENV: tuple[tuple[str, str], ...] = (
    ("HF_HUB_OFFLINE", "1"),
    ("TRANSFORMERS_OFFLINE", "1"),
    ("HF_DATASETS_OFFLINE", "1"),
    ("HF_HUB_DISABLE_TELEMETRY", "1"),
)
# Secrets the server does not need and must not see.
REMOVED_ENV: tuple[str, ...] = (
    "HF_TOKEN",
    "HUGGING_FACE_HUB_TOKEN",
    API_KEY_VARIABLE,
    API_KEY_FILE_VARIABLE,
)


def read_api_key(environ: Mapping[str, str]) -> str | None:
    """The bearer key the gateway requires, from MLXPIN_API_KEY or MLXPIN_API_KEY_FILE."""
    if environ.get(API_KEY_VARIABLE):
        return environ[API_KEY_VARIABLE]
    file = environ.get(API_KEY_FILE_VARIABLE)
    if not file:
        return None
    try:
        key = Path(file).expanduser().read_text().strip()
    except OSError as exc:
        raise ConfigError(
            f"{API_KEY_FILE_VARIABLE}={file}: cannot read it ({exc.strerror})",
            "point it at a readable file that holds the key, or unset it",
        ) from None
    if not key:
        raise ConfigError(f"{API_KEY_FILE_VARIABLE}={file} is empty", "write the key into it")
    return key


@dataclass(frozen=True)
class PinnedSnapshot:
    name: str
    role: str  # "model" | "draft" | "adapter"
    path: Path
    commit: str | None
    tree_hash: str
    files: int
    total_size: int


@dataclass(frozen=True)
class StartCheck:
    """What every start of a server re-checks, stat-only as at boot: bytes verified hours
    ago may have changed since."""

    layout: StoreLayout
    locks: tuple[LockedModel, ...]
    runtime: tuple[Settings, Manifest] | None = None  # a pinned runtime: its lock and stamp

    def problem(self) -> str | None:
        try:
            for lock in self.locks:
                boot_check(self.layout, lock)
            if self.runtime is not None:
                server_runtime(*self.runtime)
        except MlxpinError as exc:
            return exc.message
        return None


@dataclass(frozen=True)
class LaunchPlan(ModelIdentity):
    public_host: str
    public_port: int
    private_host: str
    server_command: tuple[str, ...]  # the interpreter/entry point of mlx_lm.server
    server_args: tuple[str, ...]  # everything after it except --port
    env_set: tuple[tuple[str, str], ...]
    env_unset: tuple[str, ...]
    cwd: Path
    snapshots: tuple[PinnedSnapshot, ...]
    api_key: str | None = field(default=None, repr=False)  # the gateway's bearer key
    private_socket: bool = False
    """True: the server listens on a Unix socket in a private directory (``argv_unix``),
    reachable only by this user; False: on a loopback port (``argv``)."""
    gateway: GatewaySpec = field(default_factory=GatewaySpec)
    runtime: ServerRuntime | None = None  # which interpreter, mlx-lm and mlx will run
    log_file: Path | None = None  # the server's own output (rotated); None: inherit stderr
    start_check: StartCheck | None = field(default=None, repr=False, compare=False)
    engine: str = MLX_LM  # the server program (project.engines)
    role: str = "chat"  # what it serves

    @property
    def api_key_required(self) -> bool:
        return self.api_key is not None

    @property
    def upstream_model(self) -> str:
        """The exact --model string; the gateway sends it as "model" to the server."""
        return str(self.snapshots[0].path)

    def argv(self, private_port: int | str) -> list[str]:
        return [*self.server_command, *self.server_args, "--port", str(private_port)]

    def argv_unix(self, socket_path: str) -> list[str]:
        return [*self.server_command, "--unix-socket", socket_path, *self.server_args]

    def shown_argv(self) -> list[str]:
        """The argv with a placeholder for the private address chosen at start."""
        if self.private_socket:
            return self.argv_unix("<private socket>")
        return self.argv(PRIVATE_PORT_SHOWN)

    def environment(self, base: Mapping[str, str]) -> dict[str, str]:
        env = {k: v for k, v in base.items() if k not in self.env_unset}
        env.update(self.env_set)
        return env

    def to_json(self) -> dict[str, Any]:
        """What `launch --dry-run --json` prints as "plan"."""
        return {
            "name": self.name,
            "api_label": self.api_label,
            "aliases": list(self.aliases),
            "public": {"host": self.public_host, "port": self.public_port},
            "private": (
                {"socket": "private, chosen at start"}
                if self.private_socket
                else {"host": self.private_host, "port": "chosen at start"}
            ),
            "argv": self.shown_argv(),
            "env_set": dict(self.env_set),
            "env_unset": list(self.env_unset),
            "cwd": str(self.cwd),
            "upstream_model": self.upstream_model,
            "api_key_required": self.api_key_required,
            "gateway": fields_json(self.gateway),
            "runtime": None
            if self.runtime is None
            else {
                k: v
                for k, v in fields_json(self.runtime).items()
                if k != "command" and (k != "mlx_vlm" or v is not None)
            },
            "snapshots": [fields_json(s) for s in self.snapshots],
            **({} if self.engine == MLX_LM else {"engine": self.engine, "role": self.role}),
        }


def choose_model(manifest: Manifest, name: str | None, settings: Settings) -> ModelSpec:
    chosen = name or settings.default_model
    if chosen is None:
        if len(manifest.models) == 1:
            return manifest.models[0]
        raise ModelNotChosenError(manifest.path, manifest.names)
    spec = manifest.get(chosen)
    if spec is None:
        raise label_not_name(manifest, chosen) or UsageError(
            f"no model named {chosen!r} in {manifest.path}",
            f"one of: {', '.join(manifest.names)}",
        )
    return spec


def pinned_snapshot(
    layout: StoreLayout, lock: LockedModel, role: str, verify: bool
) -> PinnedSnapshot:
    """The verified snapshot of one locked model, or the error that says why not."""
    if verify:
        _verify(layout, lock)
    else:
        boot_check(layout, lock)
    return PinnedSnapshot(
        name=lock.name,
        role=role,
        path=layout.view(lock),
        commit=lock.commit,
        tree_hash=lock.tree_hash,
        files=len(lock.files),
        total_size=lock.total_size,
    )


def boot_check(layout: StoreLayout, lock: LockedModel) -> None:
    """The stat-only check; when it fails on a verified snapshot (a `touch`, `chmod`,
    hard-link backup or `cp -a` moves only metadata), re-hash just the files whose stat
    changed, offline, and restamp: only changed bytes are refused."""
    stamp = check_stamp(layout, lock)
    if stamp.ok:
        return
    if not (stamp.problem or "").endswith(CHANGED) or read_stamp(layout, lock) is None:
        raise SnapshotMissingError(lock.name, stamp.problem or "snapshot not verified")
    _verify(layout, lock, only_changed=True)


def _verify(layout: StoreLayout, lock: LockedModel, only_changed: bool = False) -> None:
    from mlxpin.store.verify import NoProgress, verify_model

    outcome = verify_model(layout, lock, NoProgress(), only_changed=only_changed)
    if outcome.differs:
        path = outcome.differs[0]
        raise IntegrityError(lock.name, path, dict(outcome.bad)[path])
    if outcome.bad:  # missing or extra files: `mlxpin fetch` rebuilds the snapshot
        path, problem = outcome.bad[0]
        raise SnapshotMissingError(lock.name, f"{path}: {problem}")


def plan_launch(
    settings: Settings,
    manifest: Manifest,
    spec: ModelSpec,
    *,
    environ: Mapping[str, str],
    verify: bool = False,
    locks: Sequence[LockedModel] | None = None,
) -> LaunchPlan:
    """The boot plan of ``spec``; ``locks`` when the caller has read them (distributed)."""
    run_dir = settings.state_dir / "run"  # the server's cwd and pid file go here
    require_writable_dir(run_dir, STATE_DIR_HINT)  # else a supervisor restarts us in a loop
    return model_plan(
        settings,
        manifest,
        spec,
        public=(spec.host, spec.port),
        cwd=run_dir / f"{spec.name}-{spec.port}",
        api_key=read_api_key(environ),
        verify=verify,
        locks=locks,
    )


def server_roles(manifest: Manifest, spec: ModelSpec) -> list[tuple[str, str, ModelSpec]]:
    """(role, server flag, model) for the model, its draft and its adapter."""
    roles: list[tuple[str, str, ModelSpec]] = [("model", "--model", spec)]
    for role, flag, target in (
        ("draft", "--draft-model", spec.launch.draft),
        ("adapter", "--adapter-path", spec.launch.adapter),
    ):
        dependency = manifest.get(target) if target is not None else None
        if dependency is not None:  # the manifest parser checked every reference
            roles.append((role, flag, dependency))
    return roles


def model_plan(
    settings: Settings,
    manifest: Manifest,
    spec: ModelSpec,
    *,
    public: tuple[str, int],
    cwd: Path,
    api_key: str | None,
    verify: bool,
    runtime: ServerRuntime | None = None,
    locks: Sequence[LockedModel] | None = None,
) -> LaunchPlan:
    """One model's server: its pinned snapshots (model, draft, adapter), argv and
    environment. ``runtime`` and ``locks`` are read when not given."""
    roles = server_roles(manifest, spec)
    if locks is None:  # all problems at once
        locks = valid_locks(settings.lock_dir, [s for _, _, s in roles])
    if spec.engine == MLX_VLM:
        runtime = vlm_server(settings, manifest)
    elif runtime is None:
        runtime = server_runtime(settings, manifest)  # 78 stale runtime pin, 66 not installed
    layout = StoreLayout.of(settings)
    roots = [(layout.state_dir, "mlxpin's state, MLXPIN_HOME")]
    if any(lock.original.repo and layout.stamp(lock).exists() for lock in locks):
        roots.append((layout.hub_cache, "the Hub cache, HF_HUB_CACHE"))  # fetched there
    for root, what in roots:
        if not root.is_dir():
            raise NotMountedError(root, what)
    snapshots = [
        pinned_snapshot(layout, lock, role, verify)
        for (role, _, _), lock in zip(roles, locks, strict=True)
    ]
    args: list[str] = ["--host", PRIVATE_HOST]
    for (_, flag, _), snapshot in zip(roles, snapshots, strict=True):
        args += [VLM_ROLE_FLAGS[spec.role] if spec.engine == MLX_VLM else flag, str(snapshot.path)]
    args += server_argv(spec.server, SERVER_TABLES[spec.engine])
    return LaunchPlan(
        name=spec.name,
        api_label=spec.api_label,
        aliases=spec.aliases,
        public_host=public[0],
        public_port=public[1],
        private_host=PRIVATE_HOST,
        server_command=runtime.command,
        server_args=tuple(args),
        env_set=OFFLINE_ENV,
        env_unset=REMOVED_ENV,
        cwd=cwd,
        snapshots=tuple(snapshots),
        api_key=api_key,
        private_socket=runtime.command[-1] in SOCKET_SERVERS,  # else a loopback port
        gateway=spec.gateway,
        runtime=runtime,
        log_file=model_log(settings.state_dir, spec.name),
        start_check=StartCheck(
            layout, tuple(locks), (settings, manifest) if runtime.pinned else None
        ),
        engine=spec.engine,
        role=spec.role,
    )


def model_log(state_dir: Path, name: str) -> Path:
    """Where a model server's own output goes (``logs/NAME.log`` is a service's)."""
    return state_dir / "logs" / "models" / f"{name}.log"
