"""The line on which a key of a valid TOML document is written (tomllib gives none, but an
error must say `manifest.toml:12`), and the nesting limits checked before tomllib runs."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence

_BARE = r"[A-Za-z0-9_-]+"
_BASIC = r'"(?:[^"\\]|\\.)*"'
_LITERAL = r"'[^']*'"
_KEY = rf"(?:{_BARE}|{_BASIC}|{_LITERAL})"
_DOTTED = rf"{_KEY}(?:\s*\.\s*{_KEY})*"
# Patterns that `re` compiles (and keeps) on the first error a manifest has: a valid one
# never needs its lines.
_HEADER = rf"\s*\[\[?\s*({_DOTTED})\s*\]\]?\s*(?:#.*)?$"
_ASSIGN = rf"\s*({_DOTTED})\s*="


def _split_key(dotted: str) -> tuple[str, ...]:
    """`a."b.c".'d'` → ("a", "b.c", "d")."""
    parts: list[str] = []
    for match in re.finditer(_KEY, dotted):
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
    """Key path → 1-based line number, for a document already known to parse. The text
    is read on the first `line_of`, which only an error asks for."""

    def __init__(self, text: str) -> None:
        self._text: str | None = text
        self._explicit: dict[tuple[str, ...], int] = {}
        self._implicit: dict[tuple[str, ...], int] = {}

    def _index(self, text: str) -> None:
        table: tuple[str, ...] = ()
        open_string: str | None = None  # the quotes of a multi-line string being skipped
        for number, line in enumerate(text.splitlines(), 1):
            if open_string is not None:
                if line.count(open_string) % 2 == 1:
                    open_string = None
                continue
            header = re.match(_HEADER, line)
            if header:
                table = _split_key(header.group(1))
                self._record(table, number)
                continue
            assign = re.match(_ASSIGN, line)
            if assign:
                self._record(table + _split_key(assign.group(1)), number)
                rest = line[assign.end() :]
                open_string = next((q for q in ('"""', "'''") if rest.count(q) % 2 == 1), None)

    def _record(self, path: tuple[str, ...], line: int) -> None:
        self._explicit.setdefault(path, line)
        for depth in range(1, len(path)):
            self._implicit.setdefault(path[:depth], line)

    def line_of(self, path: Sequence[str]) -> int | None:
        if self._text is not None:
            text, self._text = self._text, None
            self._index(text)
        key = tuple(path)
        while key:
            if key in self._explicit:
                return self._explicit[key]
            if key in self._implicit:
                return self._implicit[key]
            key = key[:-1]
        return None


# --- nesting limits, checked on the text before tomllib (which recurses) runs -------------

MAX_NESTING = 100  # brackets within one value, or fragments of one dotted key
MAX_DEPTH = 200  # tables, keys and values together

# Only what shapes the structure: strings and comments (skipped whole), newlines and
# punctuation. Everything else (bare keys, numbers, dates) is jumped over by the regex,
# which `re` compiles on the first document long enough to scan.
_STRUCTURE = (
    r'"""(?:\\[\s\S]|[^\\])*?"{3,5}'  # multi-line basic string
    r"|'''[\s\S]*?'{3,5}"  # multi-line literal string
    r'|"(?:[^"\\\n]|\\.)*"?'  # basic string (an unclosed one ends at the line)
    r"|'[^'\n]*'?"  # literal string
    r"|#[^\n]*"  # comment
    r"|[\[\]{}=.,\n]"
)


_KEY_TOO_DEEP = f"TOML key nested more than {MAX_NESTING} levels deep"
_VALUE_TOO_DEEP = f"TOML value nested more than {MAX_NESTING} levels deep"
_DOCUMENT_TOO_DEEP = f"TOML document nested more than {MAX_DEPTH} levels deep"


def nesting_problem(text: str) -> tuple[int, str] | None:
    """(line, problem) of the first place `text` nests deeper than the limits, or None,
    so tomllib (and tomlkit in `remove`) cannot run out of stack. Depth counts header and
    key fragments (+1 for an array of tables) and each array or inline table within an
    array. Text that is not TOML passes: the reader then says what is wrong."""
    if text.count(".") + 2 * (text.count("[") + text.count("{")) + 2 <= MAX_NESTING:
        return None  # cannot nest that deep, no need to scan
    line = 1
    mode = "key"  # key | header | value | after (a top-level value ended: skip the line)
    table_level = 0
    base = 0  # level of the container the current key lives in
    fragments = 1
    aot = False
    stack: list[tuple[bool, int]] = []  # (is an inline table, level)
    for match in re.finditer(_STRUCTURE, text):
        lexeme = match.group()
        first = lexeme[0]
        if first in "\"'#":
            line += lexeme.count("\n")
        elif first == "\n":
            line += 1
            if not stack:
                mode, base, fragments = "key", table_level, 1
        elif mode == "key":
            if first == ".":
                fragments += 1
                if fragments > MAX_NESTING:
                    return line, _KEY_TOO_DEEP
            elif first == "=":
                base += fragments
                if base > MAX_DEPTH:
                    return line, _DOCUMENT_TOO_DEEP
                mode = "value"
            elif first == "[" and not stack:
                mode, fragments, aot = "header", 1, False
            elif first == "}" and stack:
                stack.pop()  # an empty inline table
                mode = "value" if stack else "after"
        elif mode == "header":
            if first == "[" and fragments == 1:
                aot = True
            elif first == ".":
                fragments += 1
                if fragments > MAX_NESTING:
                    return line, _KEY_TOO_DEEP
            elif first == "]":
                table_level = fragments + (1 if aot else 0)
                if table_level > MAX_DEPTH:
                    return line, _DOCUMENT_TOO_DEEP
                mode = "after"
        elif mode == "value":
            inline = stack[-1][0] if stack else False
            if first in "[{":
                if len(stack) >= MAX_NESTING:
                    return line, _VALUE_TOO_DEEP
                level = base if not stack or inline else stack[-1][1] + 1
                if level > MAX_DEPTH:
                    return line, _DOCUMENT_TOO_DEEP
                stack.append((first == "{", level))
                if first == "{":
                    mode, base, fragments = "key", level, 1
            elif first in "]}" and stack:
                stack.pop()
                if not stack:
                    mode = "after"
            elif first == "," and inline:
                mode, base, fragments = "key", stack[-1][1], 1
    return None
