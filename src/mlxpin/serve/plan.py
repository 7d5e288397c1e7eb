"""Boot preflight: manifest + lock + verified snapshot → a LaunchPlan (pure data).

This is the boot path: it reads the manifest, one or a few lock files and stats the
snapshot; it never imports huggingface_hub or opens a socket. `mlxpin.serve.supervisor`
executes a plan.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from mlxpin.config import Settings
from mlxpin.errors import (
    ConfigError,
    IntegrityError,
    SnapshotMissingError,
    UsageError,
)
from mlxpin.project.lockfile import LockedModel, valid_locks
from mlxpin.project.manifest import Manifest, ModelSpec, load_manifest
from mlxpin.project.serveropts import server_argv
from mlxpin.runtime.server import ServerRuntime, server_runtime
from mlxpin.store.layout import StoreLayout, check_stamp

PRIVATE_HOST = "127.0.0.1"
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
class LaunchPlan:
    name: str
    api_label: str
    aliases: tuple[str, ...]
    public_host: str
    public_port: int
    private_host: str
    server_command: tuple[str, ...]  # the interpreter/entry point of mlx_lm.server
    server_args: tuple[str, ...]  # everything after it except --port
    env_set: tuple[tuple[str, str], ...]
    env_unset: tuple[str, ...]
    cwd: Path
    snapshots: tuple[PinnedSnapshot, ...]
    api_key_required: bool
    runtime: ServerRuntime | None = None  # which interpreter, mlx-lm and mlx will run

    @property
    def upstream_model(self) -> str:
        """The exact --model string; the gateway sends it as "model" to the server."""
        return str(self.snapshots[0].path)

    def argv(self, private_port: int) -> list[str]:
        return [*self.server_command, *self.server_args, "--port", str(private_port)]

    def environment(self, base: Mapping[str, str]) -> dict[str, str]:
        env = {k: v for k, v in base.items() if k not in self.env_unset}
        env.update(self.env_set)
        return env


def choose_model(manifest: Manifest, name: str | None, settings: Settings) -> ModelSpec:
    chosen = name or settings.default_model
    if chosen is None:
        if len(manifest.models) == 1:
            return manifest.models[0]
        raise UsageError(
            f"{manifest.path} declares {len(manifest.models)} models; say which to launch",
            f"mlxpin launch NAME (one of: {', '.join(manifest.names)}), or set MLXPIN_MODEL",
        )
    spec = manifest.get(chosen)
    if spec is None:
        raise UsageError(
            f"no model named {chosen!r} in {manifest.path}",
            f"one of: {', '.join(manifest.names)}",
        )
    return spec


def _pinned(layout: StoreLayout, lock: LockedModel, role: str, verify: bool) -> PinnedSnapshot:
    if verify:
        _verify(layout, lock)
    else:
        stamp = check_stamp(layout, lock)
        if not stamp.ok:
            raise SnapshotMissingError(lock.name, f"snapshot {stamp.problem}")
    return PinnedSnapshot(
        name=lock.name,
        role=role,
        path=layout.view(lock),
        commit=lock.commit,
        tree_hash=lock.tree_hash,
        files=len(lock.files),
        total_size=lock.total_size,
    )


def _verify(layout: StoreLayout, lock: LockedModel) -> None:
    from mlxpin.store.fetch import NoProgress, verify_model

    outcome = verify_model(layout, lock, NoProgress())
    if outcome.bad:
        path, problem = outcome.bad[0]
        raise IntegrityError(lock.name, path, problem)


def plan_launch(
    settings: Settings,
    name: str | None,
    *,
    environ: Mapping[str, str],
    verify: bool = False,
) -> LaunchPlan:
    manifest = load_manifest(settings.manifest_path, parser="tomllib")
    spec = choose_model(manifest, name, settings)
    layout = StoreLayout.of(settings)
    roles: list[tuple[str, str, ModelSpec]] = [("model", "--model", spec)]
    for role, flag, target in (
        ("draft", "--draft-model", spec.launch.draft),
        ("adapter", "--adapter-path", spec.launch.adapter),
    ):
        dependency = manifest.get(target) if target is not None else None
        if dependency is not None:  # the manifest parser checked every reference
            roles.append((role, flag, dependency))
    locks = valid_locks(settings.lock_dir, [s for _, _, s in roles])  # all problems at once
    runtime = server_runtime(settings, manifest)  # 78 stale runtime pin, 66 not installed
    snapshots = [
        _pinned(layout, lock, role, verify) for (role, _, _), lock in zip(roles, locks, strict=True)
    ]
    args: list[str] = ["--host", PRIVATE_HOST]
    for (_, flag, _), snapshot in zip(roles, snapshots, strict=True):
        args += [flag, str(snapshot.path)]
    args += server_argv(spec.server)
    return LaunchPlan(
        name=spec.name,
        api_label=spec.api_label,
        aliases=spec.aliases,
        public_host=spec.host,
        public_port=spec.port,
        private_host=PRIVATE_HOST,
        server_command=runtime.command,
        server_args=tuple(args),
        env_set=OFFLINE_ENV,
        env_unset=REMOVED_ENV,
        cwd=settings.state_dir / "run" / f"{spec.name}-{spec.port}",
        snapshots=tuple(snapshots),
        api_key_required=read_api_key(environ) is not None,
        runtime=runtime,
    )
