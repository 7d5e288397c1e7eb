"""Install a pinned runtime: a virtual environment built by uv with every hash checked.

Atomicity. A venv embeds paths, so it cannot simply be built anywhere and moved: mlxpin
builds it with `uv venv --relocatable` (its scripts and activators find their directory
at run time; the interpreter link points at the base Python by absolute path, which a
rename does not change), in a sibling temporary directory `runtimes/.<key>.tmp-*` on the
same file system, installs the closure there with `uv pip sync --require-hashes`, writes
the stamp inside, and only then renames it to `runtimes/<key>`. (Bytecode is not
compiled ahead: that took two minutes for mlx-lm's closure here, against seconds for the
install; Python writes `__pycache__` on first use as in any venv, which the stamp
ignores.) Readers trust a directory only with its stamp, and it only exists once
complete; a crash leaves a temporary directory that the next install of that key (or
`gc`) removes. A hash mismatch aborts uv before
anything is renamed, and the temporary directory is deleted.

Parallel installs of one key serialise on `locks/runtime-<key>.lock`; whoever waited
finds the stamp and builds nothing. A present runtime is a stamp check: no uv, no network.
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


def _quiet(_: str) -> None:
    pass


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
    report: Report = _quiet,
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


def _sweep_leftovers(layout: RuntimeLayout, key: str) -> None:
    """Temporary builds of this key (we hold its lock, so none is in progress)."""
    try:
        entries = list(layout.root.iterdir())
    except OSError:
        return
    for entry in entries:
        if entry.name.startswith((f".{key}.tmp-", f".{key}.old-")):
            shutil.rmtree(entry, ignore_errors=True)


def _build(
    layout: RuntimeLayout, pin: RuntimePin, environ: Mapping[str, str], report: Report
) -> None:
    key = pin.key
    final = layout.path(key)
    layout.root.mkdir(parents=True, exist_ok=True)
    _sweep_leftovers(layout, key)
    tmp = layout.root / f".{key}.tmp-{os.getpid()}-{os.urandom(4).hex()}"
    python = choose_python(pin.original.python)
    report(f"runtime {pin.short_key}: creating a virtual environment ({python})")
    try:
        run_uv(
            [
                "venv",
                "--relocatable",
                "--no-project",
                "--python",
                python,
                "--no-python-downloads",
                "--color",
                "never",
                "--quiet",
                str(tmp),
            ],
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
            [
                "pip",
                "sync",
                "--python",
                str(tmp / "bin" / "python"),
                "--require-hashes",
                "--no-progress",
                "--color",
                "never",
                str(requirements),
            ],
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
        version = (tmp / "pyvenv.cfg").read_text(encoding="utf-8")
        python_version = _pyvenv_version(version)
        write_stamp(tmp, key, python_version, site_packages)
        if final.exists() or final.is_symlink():
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


def _pyvenv_version(text: str) -> str:
    for line in text.splitlines():
        name, _, value = line.partition("=")
        if name.strip() in ("version_info", "version"):
            return value.strip()
    return "unknown"
