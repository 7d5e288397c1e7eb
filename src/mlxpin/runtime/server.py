"""Which interpreter runs `mlx_lm.server`, and which mlx-lm/mlx versions that means (boot
path: reads lock/runtime.toml and a stamp, never runs uv or Python). With `[runtime]`: the
pinned runtime's interpreter, if its lock answers the manifest and it is installed intact;
without: mlxpin's own interpreter, or `mlx_lm.server` on PATH.
"""

from __future__ import annotations

import importlib.util
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from mlxpin.config import Settings
from mlxpin.errors import (
    LockCorruptError,
    LockStaleError,
    RuntimeMissingError,
    ServerMissingError,
)
from mlxpin.project.manifest import Manifest
from mlxpin.runtime.dists import dist_versions

if TYPE_CHECKING:  # a manifest without [runtime] never loads its spec's module
    from mlxpin.project.runtimespec import RuntimeSpec


@dataclass(frozen=True)
class ServerRuntime:
    """The server program a model runs with, and its versions."""

    command: tuple[str, ...]  # what runs mlx_lm.server (interpreter, -m, module, verb)
    pinned: bool
    key: str | None  # the pinned closure (None: not pinned)
    path: Path | None  # the installed runtime directory
    python: str  # the interpreter (or script) that will run
    mlx_lm: str | None  # versions that will run; None when unknown
    mlx: str | None
    mlx_vlm: str | None = None  # engine mlx-vlm only

    def describe(self) -> str:
        server, version, table = (
            ("mlx-lm", self.mlx_lm, "[runtime]")
            if self.mlx_vlm is None
            else ("mlx-vlm", self.mlx_vlm, "[engines.mlx-vlm]")
        )
        versions = f"{server} {version or 'unknown'}, mlx {self.mlx or 'unknown'}"
        if self.pinned and self.key is not None:
            return f"{versions} (pinned runtime {self.key[:12]}, {self.python})"
        return f"{versions} (not pinned: {self.python}; add {table} to pin it)"


def server_runtime(settings: Settings, manifest: Manifest) -> ServerRuntime:
    if manifest.runtime is None:
        return unpinned_server()
    return _pinned(settings, manifest.runtime, settings.lock_dir, ("-m", "mlx_lm", "server"))


PIN_FILE = "runtime.toml"  # in a lock dir: [runtime]'s pin (runtime/pin.py reads it)


def engine_lock_dir(lock_dir: Path, engine: str) -> Path:
    """Where [engines.<engine>]'s pin lives: its own runtime.toml, read by runtime/ as is."""
    return lock_dir / "engines" / engine


def _pinned(
    settings: Settings, spec: RuntimeSpec, lock_dir: Path, module: tuple[str, ...]
) -> ServerRuntime:
    # Only a pinned runtime pays for reading its pin and stamp.
    from mlxpin.runtime.layout import RuntimeLayout, check_runtime
    from mlxpin.runtime.pin import pin_path, read_state

    state, pin = read_state(spec, lock_dir)
    name = "runtime" if spec.server == "mlx-lm" else f"engines.{spec.server}"
    if state.state == "corrupt":
        raise LockCorruptError(pin_path(lock_dir), state.reason or "unreadable")
    if state.state != "ok" or pin is None:
        raise LockStaleError([f"{name}: lock is {state.state} ({state.reason})"], [])
    check = check_runtime(RuntimeLayout.of(settings), pin.key)
    if check.installed is None:
        raise RuntimeMissingError(pin.key, check.problem or "is not installed")
    installed = check.installed
    if spec.server not in installed.dists:
        raise ServerMissingError(f"the pinned runtime {pin.key[:12]} has no {spec.server}")
    return ServerRuntime(
        command=(str(installed.python), *module),
        pinned=True,
        key=pin.key,
        path=installed.path,
        python=str(installed.python),
        mlx_lm=installed.dists.get("mlx-lm"),
        mlx=installed.dists.get("mlx"),
        mlx_vlm=installed.dists.get("mlx-vlm"),
    )


UNIX_SERVER_MODULE = "mlxpin.serve.uds_server"
VLM_SERVER_MODULE = "mlxpin.serve.vlm_server"  # mlx_vlm.server's app, on a Unix socket
SOCKET_SERVERS = (UNIX_SERVER_MODULE, VLM_SERVER_MODULE)


def vlm_server(settings: Settings, manifest: Manifest) -> ServerRuntime:
    """[engines.mlx-vlm]'s pinned interpreter (on a loopback port, like a pinned mlx-lm:
    mlxpin's socket launcher is not in that runtime), else this interpreter's mlx_vlm
    through mlxpin's Unix-socket launcher."""
    pinned = manifest.engine_runtime("mlx-vlm")
    if pinned is not None:
        lock_dir = engine_lock_dir(settings.lock_dir, "mlx-vlm")
        return _pinned(settings, pinned, lock_dir, ("-m", "mlx_vlm.server"))
    runtime = _this_interpreter("mlx_vlm", VLM_SERVER_MODULE)
    if runtime is None:
        raise ServerMissingError(
            f"no `mlx_vlm` module for {sys.executable}: engine mlx-vlm needs it "
            "(pip install 'mlxpin[vlm]')"
        )
    return runtime


def _this_interpreter(module: str, launcher: str) -> ServerRuntime | None:
    """``module``'s server from this interpreter, through mlxpin's ``launcher``."""
    spec = importlib.util.find_spec(module)
    if spec is None:
        return None
    versions: dict[str, str] = {}
    for location in spec.submodule_search_locations or ():
        versions = dist_versions(Path(location).parent, prefix="mlx")
        if versions:
            break
    return ServerRuntime(
        command=(sys.executable, "-m", launcher),
        pinned=False,
        key=None,
        path=None,
        python=sys.executable,
        mlx_lm=versions.get("mlx-lm"),
        mlx=versions.get("mlx"),
        mlx_vlm=versions.get("mlx-vlm") if module == "mlx_vlm" else None,
    )


def unpinned_server() -> ServerRuntime:
    """The mlx_lm.server entry point, preferring this interpreter's own installation.

    With this interpreter's mlx_lm, the server runs through mlxpin's launcher, which
    serves it on a Unix socket (see `mlxpin.serve.uds_server`); an mlx_lm.server found on
    PATH belongs to another interpreter and can only listen on a loopback port.
    """
    runtime = _this_interpreter("mlx_lm", UNIX_SERVER_MODULE)
    if runtime is not None:
        return runtime
    import shutil  # only without this interpreter's mlx_lm

    script = shutil.which("mlx_lm.server")
    if script is not None:
        return ServerRuntime((script,), False, None, None, script, None, None)
    raise ServerMissingError(f"no `mlx_lm` module for {sys.executable} and none on PATH")
