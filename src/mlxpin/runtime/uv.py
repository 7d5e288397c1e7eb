"""Running uv: where its binary is, which index it talks to, what its failures mean.

uv is the resolver and installer (mlxpin writes neither). Its binary comes with the `uv`
package from PyPI (a dependency of mlxpin), else from PATH. The index is uv's own setting
(UV_INDEX_URL, UV_DEFAULT_INDEX, uv.toml); pip's PIP_INDEX_URL / PIP_EXTRA_INDEX_URL are
passed on when uv's are not set, so a machine configured for pip works unchanged. uv never
downloads a Python interpreter for mlxpin.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from mlxpin.errors import (
    MlxpinError,
    ResolverUnavailableError,
    Run,
    RuntimeIntegrityError,
    RuntimeResolutionError,
)

_NETWORK_HINTS = (
    "error sending request",
    "failed to fetch",
    "connection refused",
    "dns error",
    "timed out",
    "tcp connect error",
    "network",
    "status code 5",
)


def find_uv() -> str:
    try:
        import uv  # the PyPI package that ships the binary

        found = uv.find_uv_bin()
        if found and os.path.isfile(found):
            return str(found)
    except (ImportError, FileNotFoundError):
        pass
    on_path = shutil.which("uv")
    if on_path is not None:
        return on_path
    raise ResolverUnavailableError(
        "uv is not installed (mlxpin resolves and installs the runtime with it)",
        "pip install uv  (or install mlxpin with its dependencies)",
    )


def uv_environment(environ: Mapping[str, str]) -> dict[str, str]:
    env = dict(environ)
    if not (env.get("UV_INDEX_URL") or env.get("UV_DEFAULT_INDEX")) and env.get("PIP_INDEX_URL"):
        env["UV_INDEX_URL"] = env["PIP_INDEX_URL"]
    if not env.get("UV_EXTRA_INDEX_URL") and env.get("PIP_EXTRA_INDEX_URL"):
        env["UV_EXTRA_INDEX_URL"] = env["PIP_EXTRA_INDEX_URL"]
    env["UV_PYTHON_DOWNLOADS"] = "never"
    env.pop("VIRTUAL_ENV", None)  # uv must act on the paths it is given, never an active venv
    return env


def run_uv(
    args: Sequence[str],
    environ: Mapping[str, str],
    *,
    what: str,
    cwd: Path | None = None,
    on_line: Callable[[str], None] | None = None,
    manifest: Path | None = None,
) -> None:
    """Run `uv ARGS --color never`; a failure becomes the typed error its message says it
    is. Each line uv writes to stderr also goes to `on_line` as it comes, and a "still
    working" line every HEARTBEAT_S (uv shows no progress when piped: installs look hung)."""
    argv = [find_uv(), *args, "--color", "never"]
    env = uv_environment(environ)
    lines: list[str] = []
    try:
        with subprocess.Popen(
            argv,
            env=env,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        ) as process:
            assert process.stderr is not None
            done = threading.Event()
            if on_line is not None:
                threading.Thread(target=_heartbeat, args=(done, on_line), daemon=True).start()
            try:
                for line in process.stderr:
                    lines.append(line)
                    if on_line is not None and line.strip():
                        on_line(line.rstrip())
                code = process.wait()
            finally:
                done.set()
    except OSError as exc:
        raise ResolverUnavailableError(f"cannot run uv ({exc.strerror})") from None
    if code != 0:
        index = env.get("UV_INDEX_URL") or env.get("UV_DEFAULT_INDEX")
        raise classify("".join(lines), what, index or "uv's default index (PyPI)", manifest)


HEARTBEAT_S = 5.0


def _heartbeat(done: threading.Event, on_line: Callable[[str], None]) -> None:
    started = time.monotonic()
    while not done.wait(HEARTBEAT_S):
        on_line(f"still working ({time.monotonic() - started:.0f} s)")


def _tail(text: str, lines: int = 6) -> str:
    kept = [line.rstrip() for line in text.strip().splitlines() if line.strip()]
    return " / ".join(kept[-lines:]) or "no message"


def classify(stderr: str, what: str, index: str, manifest: Path | None = None) -> MlxpinError:
    """uv's failure → mlxpin's error (exit code by what went wrong)."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", stderr)
    lower = text.lower()
    if manifest is not None and (
        "no solution found" in lower or "not found in the package registry" in lower
    ):
        return RuntimeResolutionError(manifest, _tail(text, 4))
    if "hash mismatch" in lower or "hashes do not match" in lower:
        return RuntimeIntegrityError(_tail(text, 4))
    if "no interpreter found" in lower or ("no python" in lower and "found" in lower):
        return ResolverUnavailableError(
            f"{what}: no Python interpreter on this machine satisfies [runtime] python "
            f"({_tail(text, 2)})",
            "install a matching Python, or widen `python` in [runtime]",
        )
    if any(hint in lower for hint in _NETWORK_HINTS):
        return ResolverUnavailableError(
            f"{what}: the package index {index} is unreachable ({_tail(text, 3)})",
            "check the network, UV_INDEX_URL or PIP_INDEX_URL and try again; "
            f"{Run.of('launch')} never needs the index once {Run.of('fetch')} has run",
        )
    return ResolverUnavailableError(f"{what}: uv failed: {_tail(text)}")
