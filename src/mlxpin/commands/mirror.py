"""`mlxpin mirror`: serve this host's locked, verified models to other hosts (read-only)."""

from __future__ import annotations

import asyncio
import errno
import ipaddress
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from mlxpin.config import Settings
from mlxpin.errors import ConfigError, Flag, Run, UnavailableError, UsageError
from mlxpin.mirror.server import MirrorConfig, serve_mirror
from mlxpin.plan.launch import read_api_key
from mlxpin.project.lockfile import served_as
from mlxpin.project.selection import locked_models, manifest_of, pick
from mlxpin.store.layout import StoreLayout, check_stamp

DEFAULT_PORT = 8765


@dataclass(frozen=True)
class MirrorModel:
    name: str
    repo: str
    commit: str
    verified: bool
    problem: str | None


#: Seconds a client may take no bytes before its transfer is cut (default 60).
SEND_TIMEOUT_VARIABLE = "MLXPIN_MIRROR_SEND_TIMEOUT"


@dataclass(frozen=True)
class MirrorPlan:
    config: MirrorConfig
    models: tuple[MirrorModel, ...]


def plan_mirror(
    settings: Settings,
    environ: Mapping[str, str],
    names: Sequence[str] = (),
    host: str = "127.0.0.1",
    port: int = DEFAULT_PORT,
    max_transfers: int = 64,
    allow_gated: bool = False,
) -> MirrorPlan:
    if not 0 <= port <= 65535:
        raise UsageError(f"--port {port} is not a TCP port")
    manifest = manifest_of(settings)
    locks = locked_models(settings, manifest, pick(manifest, names))
    layout = StoreLayout.of(settings)
    served = tuple(x for x in locks if served_as(x) is not None)
    if not served:
        raise UsageError(
            "nothing to mirror: the chosen models are local `path` sources (or unbuilt)",
            "a mirror serves Hub repos and built outputs; carry local models with "
            + Run.of("export", "NAME", "--output", "FILE"),
        )
    guarded = [lock.name for lock in served if lock.access is not None]
    if guarded and not allow_gated:
        raise ConfigError(
            f"{', '.join(guarded)}: gated or private upstream; a mirror would serve it to anyone",
            f"name only the other models, or pass {Flag('mirror', '--allow-gated')} "
            "if every client of this mirror may have it",
        )
    api_key = read_api_key(environ)
    if guarded and api_key is None and not _loopback(host):
        raise ConfigError(
            f"{', '.join(guarded)}: gated or private; off loopback the mirror needs a key",
            f"pass {Flag('mirror', '--api-key-file', 'FILE')} (clients send it as HF_TOKEN)",
        )
    models = tuple(
        MirrorModel(lock.name, *identity, check.ok, check.problem)
        for lock in served
        for identity, check in [(served_as(lock) or ("", ""), check_stamp(layout, lock))]
    )
    timeout = environ.get(SEND_TIMEOUT_VARIABLE) or "60"
    try:
        send_timeout_s = float(timeout)
    except ValueError:
        raise UsageError(f"{SEND_TIMEOUT_VARIABLE}={timeout!r} is not seconds") from None
    config = MirrorConfig(host, port, layout, served, api_key, max_transfers, send_timeout_s)
    return MirrorPlan(config, models)


def _loopback(host: str) -> bool:
    try:
        return host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def run_mirror(plan: MirrorPlan, on_ready: Callable[[str], None]) -> None:
    """Serve until SIGTERM/SIGINT."""
    try:
        asyncio.run(serve_mirror(plan.config, on_ready))
    except OSError as exc:
        if exc.errno in (errno.EADDRINUSE, errno.EACCES, errno.EADDRNOTAVAIL):
            where = f"{plan.config.host}:{plan.config.port}"
            raise UnavailableError(
                f"mirror: cannot listen on {where}: {exc.strerror or exc}",
                f"stop whatever holds the port, or pass another {Flag('mirror', '--port')} / "
                + Flag("mirror", "--host"),
            ) from None
        raise
