"""Reading a growing, rotating log file: its last lines, then what is appended."""

from __future__ import annotations

from pathlib import Path

__all__ = ["read_from", "tail"]

_TAIL_READ = 256 * 1024


def tail(path: Path, lines: int) -> tuple[bytes, int]:
    """The last ``lines`` lines of ``path`` (at most its last 256 KiB) and its size."""
    with path.open("rb") as f:
        size = f.seek(0, 2)
        f.seek(max(0, size - _TAIL_READ))
        data = f.read()
    if lines <= 0:
        return b"", size
    kept = data.splitlines(keepends=True)[-lines:]
    return b"".join(kept), size


def read_from(path: Path, offset: int) -> tuple[bytes, int]:
    """What was appended to ``path`` since ``offset``; from its start if it was rotated."""
    try:
        with path.open("rb") as f:
            size = f.seek(0, 2)
            if size < offset:  # rotated (or truncated): the new file from its start
                offset = 0
            f.seek(offset)
            data = f.read()
    except FileNotFoundError:
        return b"", 0
    return data, offset + len(data)
