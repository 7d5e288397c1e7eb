"""Find the line on which a key of a (valid) TOML document is written.

TOML parsers do not report positions of keys, but an error message must say
`manifest.toml:12`. This scanner reads the text line by line, tracking table headers
and multi-line strings, and maps each key path to the line where it appears. Inline
tables and arrays map to the line of their key; `line_of` falls back to the nearest
ancestor that was found.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence

_BARE = r"[A-Za-z0-9_-]+"
_BASIC = r'"(?:[^"\\]|\\.)*"'
_LITERAL = r"'[^']*'"
_KEY = rf"(?:{_BARE}|{_BASIC}|{_LITERAL})"
_DOTTED = rf"{_KEY}(?:\s*\.\s*{_KEY})*"
_KEY_PART_RE = re.compile(_KEY)
HEADER_RE = re.compile(rf"\s*(\[\[?)\s*({_DOTTED})\s*\]\]?\s*(?:#.*)?$")
ASSIGN_RE = re.compile(rf"\s*({_DOTTED})\s*=")


def split_key(dotted: str) -> tuple[str, ...]:
    """`a."b.c".'d'` → ("a", "b.c", "d")."""
    parts: list[str] = []
    for match in _KEY_PART_RE.finditer(dotted):
        raw = match.group(0)
        if raw.startswith('"'):
            try:
                parts.append(str(json.loads(raw)))
            except ValueError:
                parts.append(raw[1:-1])
        elif raw.startswith("'"):
            parts.append(raw[1:-1])
        else:
            parts.append(raw)
    return tuple(parts)


class KeyLines:
    """Key path → 1-based line number, for a document already known to parse."""

    def __init__(self, text: str) -> None:
        self._explicit: dict[tuple[str, ...], int] = {}
        self._implicit: dict[tuple[str, ...], int] = {}
        self._scan(text)

    def _record(self, path: tuple[str, ...], line: int) -> None:
        self._explicit.setdefault(path, line)
        for depth in range(1, len(path)):
            self._implicit.setdefault(path[:depth], line)

    def _scan(self, text: str) -> None:
        table: tuple[str, ...] = ()
        open_string: str | None = None
        for number, line in enumerate(text.splitlines(), start=1):
            if open_string is not None:
                if line.count(open_string) % 2 == 1:
                    open_string = None
                continue
            header = HEADER_RE.match(line)
            if header:
                table = split_key(header.group(2))
                self._record(table, number)
                continue
            assign = ASSIGN_RE.match(line)
            if assign:
                self._record(table + split_key(assign.group(1)), number)
                rest = line[assign.end() :]
                for quote in ('"""', "'''"):
                    if rest.count(quote) % 2 == 1:
                        open_string = quote
                        break

    def line_of(self, path: Sequence[str]) -> int | None:
        key = tuple(path)
        while key:
            if key in self._explicit:
                return self._explicit[key]
            if key in self._implicit:
                return self._implicit[key]
            key = key[:-1]
        return None
