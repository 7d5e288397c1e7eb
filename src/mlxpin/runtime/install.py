"""Install a pinned runtime: a virtual environment built by uv with every hash checked.

A venv embeds paths, so it is built `--relocatable` (the interpreter link is absolute,
which a rename keeps) in a sibling `runtimes/.<key>.tmp-*`, filled with `uv pip sync
--require-hashes`, stamped, and only then renamed to `runtimes/<key>`: readers trust a
directory only with its stamp, so a crash leaves a temporary directory that the next
install of that key (or `gc`) removes. No bytecode is compiled ahead (minutes, against
seconds for the install). Installs of one key serialise on its mutex; whoever waited finds
the stamp and builds nothing.
"""

from __future__ import annotations

import contextlib
import os
import platform
import re
import shutil
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlxpin.errors import ResolverUnavailableError, Run
from mlxpin.runtime.dists import dist_versions
from mlxpin.runtime.layout import (
    InstalledRuntime,
    RuntimeLayout,
    check_runtime,
    write_stamp,
)
from mlxpin.runtime.pin import RuntimePin, requirements_txt
from mlxpin.runtime.uv import run_uv
from mlxpin.util.atomic import fsync_dir, hold_mutex

BUILD_TIMEOUT_S = 3600.0
_VENV = ("venv", "--relocatable", "--no-project", "--no-python-downloads", "--quiet")
_SYNC = ("pip", "sync", "--require-hashes", "--no-progress")
Report = Callable[[str], None]


@dataclass(frozen=True)
class InstallOutcome:
    key: str
    path: Path
    python: Path
    python_version: str
    built: bool  # False: it was already installed (by an earlier or a parallel fetch)
    packages: int
    seconds: float
    dists: Mapping[str, str]

    def to_json(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "path": str(self.path),
            "python": str(self.python),
            "python_version": self.python_version,
            "built": self.built,
            "packages": self.packages,
            "seconds": round(self.seconds, 3),
            "mlx_lm": self.dists.get("mlx-lm"),
            "mlx": self.dists.get("mlx"),
        }


def choose_python(python_range: str) -> str:
    """This interpreter when it fits the range (the common case), else the range itself
    for uv to find an installed Python (it never downloads one for mlxpin)."""
    from packaging.specifiers import InvalidSpecifier, SpecifierSet

    try:
        fits = SpecifierSet(python_range).contains(platform.python_version())
    except InvalidSpecifier:
        fits = False
    return sys.executable if fits else python_range


def install_runtime(
    layout: RuntimeLayout,
    pin: RuntimePin,
    environ: Mapping[str, str],
    report: Report = lambda _: None,
) -> InstallOutcome:
    started = time.monotonic()
    key = pin.key
    check = check_runtime(layout, key)
    if not check.ok:
        with hold_mutex(layout.mutex(key), timeout_s=BUILD_TIMEOUT_S):
            check = check_runtime(layout, key)  # a parallel fetch may have built it
            if not check.ok:
                _build(layout, pin, environ, report)
                check = check_runtime(layout, key)
                if check.installed is None:
                    raise ResolverUnavailableError(
                        f"the runtime built at {layout.path(key)} fails its own check "
                        f"({check.problem})"
                    )
                return _outcome(check.installed, True, started)
    assert check.installed is not None
    return _outcome(check.installed, False, started)


def _outcome(installed: InstalledRuntime, built: bool, started: float) -> InstallOutcome:
    return InstallOutcome(
        key=installed.key,
        path=installed.path,
        python=installed.python,
        python_version=installed.python_version,
        built=built,
        packages=len(installed.dists),
        seconds=time.monotonic() - started,
        dists=installed.dists,
    )


def _remove_tree(path: Path) -> None:
    """Out of sight first (a rename), then deleted."""
    if not path.exists() and not path.is_symlink():
        return
    trash = path.with_name(f".{path.name}.old-{os.getpid()}-{os.urandom(4).hex()}")
    with contextlib.suppress(OSError):
        path.replace(trash)
        path = trash
    shutil.rmtree(path, ignore_errors=True)


def _build(
    layout: RuntimeLayout, pin: RuntimePin, environ: Mapping[str, str], report: Report
) -> None:
    key = pin.key
    final = layout.path(key)
    layout.root.mkdir(parents=True, exist_ok=True)
    # Builds of this key left by a crash (we hold its mutex, so none is in progress).
    for leftover in [*layout.root.glob(f".{key}.tmp-*"), *layout.root.glob(f".{key}.old-*")]:
        shutil.rmtree(leftover, ignore_errors=True)
    tmp = layout.root / f".{key}.tmp-{os.getpid()}-{os.urandom(4).hex()}"
    python = choose_python(pin.original.python)
    report(f"runtime {pin.short_key}: creating a virtual environment ({python})")
    try:
        run_uv(
            [*_VENV, "--python", python, str(tmp)],
            environ,
            what="creating the runtime's virtual environment",
        )
        requirements = tmp / "mlxpin-requirements.txt"
        requirements.write_text(requirements_txt(pin.packages))
        report(
            f"runtime {pin.short_key}: installing {len(pin.packages)} pinned packages "
            "(hash-checked)"
        )
        run_uv(
            [*_SYNC, "--python", str(tmp / "bin" / "python"), str(requirements)],
            environ,
            what="installing the runtime",
            on_line=lambda line: report(f"runtime {pin.short_key}: {line.strip()}"),
        )
        requirements.unlink()
        site_packages = _site_packages(tmp)
        # The server package is the first requirement: mlx-lm, or an engine's (mlx-vlm).
        server = re.split(r"[^A-Za-z0-9._-]", pin.original.requirements[0], maxsplit=1)[0]
        if server not in dist_versions(site_packages):
            raise ResolverUnavailableError(
                f"the runtime {pin.short_key} installed without {server} for this platform",
                "check the markers of lock/runtime.toml; run " + Run.of("lock", "--update-runtime"),
            )
        write_stamp(tmp, key, _pyvenv_version(tmp / "pyvenv.cfg"), site_packages)
        _remove_tree(final)  # an incomplete or damaged install of this key
        tmp.rename(final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    fsync_dir(layout.root)
    report(f"runtime {pin.short_key}: installed at {final}")


def _site_packages(venv: Path) -> Path:
    found = sorted(venv.glob("lib/python*/site-packages"))
    if not found:
        raise ResolverUnavailableError(f"uv created no site-packages in {venv}")
    return found[0]


def _pyvenv_version(cfg: Path) -> str:
    for line in cfg.read_text(encoding="utf-8").splitlines():
        name, _, value = line.partition("=")
        if name.strip() in ("version_info", "version"):
            return value.strip()
    return "unknown"
