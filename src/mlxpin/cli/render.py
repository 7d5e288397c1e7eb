"""Pure text formatting shared by the CLI's renderers."""

from __future__ import annotations

from typing import TYPE_CHECKING

from mlxpin.errors import human_size

if TYPE_CHECKING:
    from mlxpin.plan.distributed import HostShare


def short_date(iso: str | None) -> str:
    return iso[:10] if iso else "unknown date"


def short_commit(commit: str | None) -> str:
    return commit[:7] if commit else "-"


def share_text(share: HostShare) -> str:
    """What one host of a distributed model holds: "all 7 files, 2.1 MB" or, for a
    pipeline host's share, "5 of 7 files, 1.4 MB of 2.1 MB (the layers of rank 1)"."""
    if share.whole:
        return f"all {share.pin_files} files, {human_size(share.pin_size)}"
    ranks = ", ".join(str(r) for r in share.ranks)
    return (
        f"{len(share.files)} of {share.pin_files} files, {human_size(share.size)} of "
        f"{human_size(share.pin_size)} (the layers of rank {ranks})"
    )
