"""Which distributions a site-packages directory holds, from its `*.dist-info` names.

Boot path: no Python is started, no metadata file is opened, nothing heavy is imported.
"""

from __future__ import annotations

import os
from pathlib import Path


def dist_versions(site_packages: Path, prefix: str = "") -> dict[str, str]:
    """Installed distributions by canonical name, read from `*.dist-info` directory names
    (no Python started, no metadata parsed); `prefix` keeps only names starting with it.
    Installers write those names escaped (`mlx_lm-0.32.2.dist-info`), so plain string
    operations normalise them (this runs at every boot)."""
    found: dict[str, str] = {}
    try:
        with os.scandir(site_packages) as entries:
            for entry in entries:
                entry_name = entry.name
                if entry_name.endswith(".dist-info") and entry_name.startswith(prefix):
                    name, _, version = entry_name[: -len(".dist-info")].rpartition("-")
                    if name and version:
                        found[name.replace("_", "-").replace(".", "-").lower()] = version
    except OSError:
        return {}
    return found
