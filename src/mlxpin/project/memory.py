"""Sizes the manifest takes (`parse_size`) and `[serve] memory_budget`: bytes, "48GB",
"512MiB" or "75%", a share that becomes bytes only when a plan is made."""

from __future__ import annotations

import os
import re
import sys
from dataclasses import dataclass

DEFAULT_BUDGET_PERCENT = 75.0

# "", "b": bytes; "k"/"kb" = 10**3 ... "t"/"tb" = 10**12; "kib" = 2**10 ... "tib" = 2**40
_UNITS = {"": 1, "b": 1} | {
    prefix + suffix: (1024 if suffix == "ib" else 1000) ** power
    for power, prefix in enumerate("kmgt", 1)
    for suffix in ("", "b", "ib")
}
# Patterns, not compiled ones: `re` compiles them (and keeps them) on the first size a
# manifest gives, so the manifests that give none do not pay for it.
_SIZE = r"\s*([0-9]+(?:\.[0-9]+)?)\s*([A-Za-z]*)\s*"
_PERCENT = r"\s*([0-9]+(?:\.[0-9]+)?)\s*%\s*"


@dataclass(frozen=True)
class Budget:
    """Either an absolute number of bytes or a share of physical memory."""

    bytes: int | None = None
    percent: float | None = None

    def resolve(self, physical: int) -> int:
        if self.bytes is not None:
            return self.bytes
        percent = DEFAULT_BUDGET_PERCENT if self.percent is None else self.percent
        return int(physical * percent / 100)

    def describe(self) -> str:
        if self.bytes is not None:
            return f"{self.bytes} bytes"
        percent = DEFAULT_BUDGET_PERCENT if self.percent is None else self.percent
        return f"{percent:g}% of physical memory"


def parse_size(text: str) -> int | None:
    """'48GB' → 48_000_000_000, '512MiB' → 536_870_912, '100' → 100; None if not a size."""
    match = re.fullmatch(_SIZE, text, re.ASCII)
    if match is None:
        return None
    unit = _UNITS.get(match.group(2).lower())
    if unit is None:
        return None
    return int(float(match.group(1)) * unit)


def parse_budget(value: object) -> tuple[Budget | None, str | None]:
    """(budget, None) or (None, problem) for a manifest value."""
    if isinstance(value, bool):
        return None, 'must be a number of bytes or a string like "48GB" or "75%"'
    if isinstance(value, int):
        if value <= 0:
            return None, f"{value} is not a positive number of bytes"
        return Budget(bytes=value), None
    if not isinstance(value, str):
        return None, 'must be a number of bytes or a string like "48GB" or "75%"'
    percent = re.fullmatch(_PERCENT, value, re.ASCII)
    if percent is not None:
        share = float(percent.group(1))
        if not 0 < share <= 100:
            return None, f"{value!r} is not a share between 0% and 100%"
        return Budget(percent=share), None
    size = parse_size(value)
    if size is None:
        return None, f"{value!r} is not a size (bytes, KB, MB, GB, TB, KiB…TiB) or a percentage"
    if size <= 0:
        return None, f"{value!r} is not a positive size"
    return Budget(bytes=size), None


def physical_memory() -> int:
    """Bytes of RAM of this machine (0 if it cannot be told)."""
    if sys.platform == "darwin":
        import subprocess

        try:
            out = subprocess.run(
                ["/usr/sbin/sysctl", "-n", "hw.memsize"],
                capture_output=True,
                text=True,
                timeout=5,
                check=False,
            ).stdout
            return int(out.strip())
        except (OSError, ValueError, subprocess.SubprocessError):
            return 0
    try:
        return int(os.sysconf("SC_PAGE_SIZE")) * int(os.sysconf("SC_PHYS_PAGES"))
    except (OSError, ValueError, AttributeError):
        return 0
