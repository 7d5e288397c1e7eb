"""Pure text formatting shared by the CLI's renderers."""

from __future__ import annotations


def human_size(size: int, signed: bool = False) -> str:
    sign = ""
    if signed:
        sign = "+" if size >= 0 else "-"
    value = float(abs(size))
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if value < 1000 or unit == "TB":
            text = f"{value:.0f} {unit}" if unit == "B" or value >= 100 else f"{value:.1f} {unit}"
            return sign + text
        value /= 1000
    raise AssertionError("unreachable")


def short_date(iso: str | None) -> str:
    return iso[:10] if iso else "unknown date"


def short_commit(commit: str | None) -> str:
    return commit[:7] if commit else "-"
