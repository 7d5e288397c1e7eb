"""Who builds: the builder's identity recorded in a built model's lock, and the platform
that made an output (design §14: Metal and CPU may differ, so a mismatch elsewhere is
reported as another platform's bytes, not as corruption)."""

from __future__ import annotations

import platform
import sys

from mlxpin.config import Settings
from mlxpin.project.manifest import Manifest
from mlxpin.runtime.pin import pinned_runtime
from mlxpin.runtime.server import unpinned_server


def builder_identity(settings: Settings, manifest: Manifest) -> str:
    """With [runtime]: its pinned closure (the builder is pinned like the server);
    without: this interpreter's mlx-lm and mlx versions."""
    pin = pinned_runtime(settings, manifest)  # 78 stale/missing, 65 corrupt, as launch says
    if pin is not None:
        return f"runtime {pin.key}"
    server = unpinned_server()
    return f"mlx-lm {server.mlx_lm or 'unknown'}, mlx {server.mlx or 'unknown'}"


def this_platform() -> str:
    """e.g. "linux-x86_64" or "darwin-arm64" (what made the recorded bytes)."""
    return f"{sys.platform}-{platform.machine().lower() or 'unknown'}"
