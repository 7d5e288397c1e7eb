"""Settings, read once from an explicit environment mapping (never at import time): only
`MLXPIN_*` and the Hub's `HF_*` variables can change what is locked, fetched or launched."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from mlxpin.errors import Flag

DEFAULT_ENDPOINT = "https://huggingface.co"
HUB_DEADLINE_VARIABLE = "MLXPIN_HUB_DEADLINE"
DEFAULT_HUB_DEADLINE_S = 60.0  # for one Hub look-up, retries included
# What to do when a directory mlxpin must write cannot be written (exit 74).
STATE_DIR_HINT = (
    "mlxpin keeps its state (locks, snapshots, run directories) in MLXPIN_HOME "
    "(default: $HF_HOME/mlxpin): point it at a writable directory or fix the permissions"
)
HUB_CACHE_HINT = (
    "downloads go to the Hub cache, HF_HUB_CACHE (default: $HF_HOME/hub; "
    f"{Flag('', '--cache-dir')} overrides it): point it at a writable directory or fix the "
    "permissions"
)
_TRUE = {"1", "ON", "YES", "TRUE"}


def is_true(value: str | None) -> bool:
    return value is not None and value.strip().upper() in _TRUE


@dataclass(frozen=True)
class Settings:
    """Where everything is and how to reach the Hub, from flags and the environment."""

    manifest_path: Path
    lock_dir: Path
    default_model: str | None
    hf_home: Path
    hub_cache: Path
    state_dir: Path
    endpoint: str
    offline: bool
    token_present: bool
    # MLXPIN_HUB_DEADLINE as written; checked only by the commands that use the Hub, so a
    # bad value never stops an offline `launch`.
    hub_deadline: str | None = None
    # Ranged fetch, as written (parsed and checked by store.ranged.RangePolicy):
    fetch_connections: str = ""  # MLXPIN_FETCH_CONNECTIONS: connections per large file
    ranged_min_mb: str = ""  # MLXPIN_RANGED_MIN_MB: files at least this large use ranges
    fetch_min_rate: str = ""  # MLXPIN_FETCH_MIN_RATE: BYTES_PER_S[:WINDOW_S] per connection


def _expand(value: str) -> Path:
    return Path(os.path.expandvars(value)).expanduser()


def hf_home(environ: Mapping[str, str]) -> Path:
    """Where huggingface_hub keeps its token and cache, by its own rules."""
    if environ.get("HF_HOME"):
        return _expand(environ["HF_HOME"])
    xdg = environ.get("XDG_CACHE_HOME") or str(Path(environ.get("HOME", "~")) / ".cache")
    return _expand(xdg) / "huggingface"


def hub_cache(environ: Mapping[str, str]) -> Path:
    for name in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if environ.get(name):
            return _expand(environ[name])
    return hf_home(environ) / "hub"


def token_present(environ: Mapping[str, str]) -> bool:
    """Whether huggingface_hub will send a token (the token itself is never read here)."""
    if (environ.get("HF_TOKEN") or environ.get("HUGGING_FACE_HUB_TOKEN") or "").strip():
        return True
    token_path = (
        _expand(environ["HF_TOKEN_PATH"])
        if environ.get("HF_TOKEN_PATH")
        else hf_home(environ) / "token"
    )
    try:
        return bool(token_path.read_text().strip())
    except OSError:
        return False


def load_settings(
    environ: Mapping[str, str],
    *,
    cwd: Path,
    manifest: Path | None = None,
    lock_dir: Path | None = None,
    cache_dir: Path | None = None,
) -> Settings:
    """Resolve every path the commands use: flags first, then MLXPIN_*, then defaults."""
    if manifest is None:
        manifest = _expand(environ["MLXPIN_MANIFEST"]) if environ.get("MLXPIN_MANIFEST") else None
    manifest_path = (cwd / (manifest or Path("manifest.toml"))).absolute()
    if lock_dir is None and environ.get("MLXPIN_LOCK_DIR"):
        lock_dir = _expand(environ["MLXPIN_LOCK_DIR"])
    resolved_lock_dir = (cwd / lock_dir).absolute() if lock_dir else manifest_path.parent / "lock"
    home = hf_home(environ)
    cache = (cwd / cache_dir).absolute() if cache_dir else hub_cache(environ).absolute()
    state = (
        _expand(environ["MLXPIN_HOME"]).absolute()
        if environ.get("MLXPIN_HOME")
        else home.absolute() / "mlxpin"
    )
    return Settings(
        manifest_path=manifest_path,
        lock_dir=resolved_lock_dir,
        default_model=environ.get("MLXPIN_MODEL") or None,
        hf_home=home.absolute(),
        hub_cache=cache,
        state_dir=state,
        endpoint=(environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/"),
        offline=is_true(environ.get("HF_HUB_OFFLINE") or environ.get("TRANSFORMERS_OFFLINE")),
        token_present=token_present(environ),
        hub_deadline=environ.get(HUB_DEADLINE_VARIABLE) or None,
        fetch_connections=environ.get("MLXPIN_FETCH_CONNECTIONS", "").strip(),
        ranged_min_mb=environ.get("MLXPIN_RANGED_MIN_MB", "").strip(),
        fetch_min_rate=environ.get("MLXPIN_FETCH_MIN_RATE", "").strip(),
    )
