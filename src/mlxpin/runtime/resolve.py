"""`[runtime]` → a RuntimePin, resolved by uv for Apple-silicon macOS and Linux at once.

`uv pip compile --universal --generate-hashes --format pylock.toml` resolves one closure
valid on every platform (platform-specific dependencies keep their markers) and names
every file of every pinned release with its sha256. mlxpin keeps the files that can
install on Apple-silicon macOS or Linux (and sdists) and drops the rest (Windows, Intel
macOS), so the pin says exactly which bytes may run, wherever it is installed. URLs are
not kept: the pin holds for any index that serves the same files.
"""

from __future__ import annotations

import tempfile
import tomllib
import urllib.parse
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mlxpin.errors import ResolverUnavailableError
from mlxpin.project.requirements import canonical_name, lowest_python
from mlxpin.project.runtimespec import RuntimeSpec
from mlxpin.runtime.pin import DistFile, LockedDist, RuntimePin, make_pin, original_of
from mlxpin.runtime.uv import run_uv

_SDIST_SUFFIXES = (".tar.gz", ".zip", ".tar.bz2", ".tgz")


def platform_fits(file_name: str) -> bool:
    """Can this distribution file install on Apple-silicon macOS or on Linux?"""
    if not file_name.endswith(".whl"):
        return file_name.endswith(_SDIST_SUFFIXES)
    parts = file_name[: -len(".whl")].split("-")
    if len(parts) < 5:
        return False
    for tag in parts[-1].split("."):
        if tag == "any" or tag.startswith(("manylinux", "musllinux", "linux_")):
            return True
        if tag.startswith("macosx_") and tag.endswith(("_arm64", "_universal2")):
            return True
    return False


def resolve_runtime(spec: RuntimeSpec, manifest: Path, environ: Mapping[str, str]) -> RuntimePin:
    """Resolve the newest closure the manifest allows (network: the package index)."""
    lowest = lowest_python(spec.python)
    assert lowest is not None  # the manifest parser requires a lower bound
    with tempfile.TemporaryDirectory(prefix="mlxpin-resolve-") as tmp:
        requirements = Path(tmp) / "requirements.in"
        requirements.write_text("".join(r + "\n" for r in spec.requirements))
        output = Path(tmp) / "pylock.toml"
        run_uv(
            [
                "pip",
                "compile",
                "--universal",
                "--generate-hashes",
                "--format",
                "pylock.toml",
                "--python-version",
                f"{lowest[0]}.{lowest[1]}",
                "--no-header",
                "--no-progress",
                "--quiet",
                "-o",
                str(output),
                str(requirements),
            ],
            environ,
            what="resolving [runtime]",
            cwd=Path(tmp),
            manifest=manifest,
        )
        try:
            document = tomllib.loads(output.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
            raise ResolverUnavailableError(f"uv wrote no readable pylock.toml ({exc})") from None
    packages = [_dist(entry) for entry in document.get("packages", [])]
    kept = [p for p in packages if p.files]
    requires_python = str(document.get("requires-python") or f">={lowest[0]}.{lowest[1]}")
    return make_pin(original_of(spec), requires_python, kept)


def _file(entry: Mapping[str, Any]) -> DistFile | None:
    url = str(entry.get("url") or entry.get("path") or "")
    name = str(entry.get("name") or urllib.parse.unquote(url.rsplit("/", 1)[-1]))
    hashes = entry.get("hashes") or {}
    digest = hashes.get("sha256") if isinstance(hashes, dict) else None
    if not name or not isinstance(digest, str) or not platform_fits(name):
        return None
    size = entry.get("size")
    return DistFile(name, size if isinstance(size, int) else None, digest)


def _dist(entry: Mapping[str, Any]) -> LockedDist:
    sdist = entry.get("sdist")
    items = [*([sdist] if isinstance(sdist, dict) else []), *entry.get("wheels", [])]
    files = tuple(found for found in map(_file, items) if found is not None)
    marker = entry.get("marker")
    return LockedDist(
        name=canonical_name(str(entry["name"])),
        version=str(entry["version"]),
        marker=str(marker) if marker else None,
        files=files,
    )
