"""Pure checks for the `[runtime]` table's strings: PEP 508 requirements and PEP 440
version specifiers, by regular expressions (stdlib only).

The boot path parses the manifest, so this module must not import `packaging` (~50 ms).
It accepts a strict subset of PEP 508 — `name[extras] specifiers ; marker` from a package
index; direct URLs are refused because only index distributions are hash-pinned. A
property test holds it to `packaging`: whatever it accepts, `packaging` accepts too, and
means the same package name.
"""

from __future__ import annotations

import re

NAME_RE = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?")
_VERSION = (
    r"[0-9]+(?:\.[0-9]+)*"
    r"(?:\.\*|(?:(?:a|b|rc|\.post|\.dev)[0-9]+)*)?"
    r"(?:\+[a-z0-9]+(?:\.[a-z0-9]+)*)?"
)
_CLAUSE_RE = re.compile(rf"\s*(~=|==|!=|<=|>=|<|>)\s*({_VERSION})\s*")
_EXTRAS_RE = re.compile(r"\[\s*([A-Za-z0-9._-]+(?:\s*,\s*[A-Za-z0-9._-]+)*)?\s*\]")
_MARKER_VARS = (
    "python_version",
    "python_full_version",
    "os_name",
    "sys_platform",
    "platform_release",
    "platform_system",
    "platform_version",
    "platform_machine",
    "platform_python_implementation",
    "implementation_name",
    "implementation_version",
)
_MARKER_TOKEN_RE = re.compile(
    r"\s*(?:(?P<str>'[^']*'|\"[^\"]*\")|(?P<op>===|==|!=|<=|>=|~=|<|>|not\s+in\b|in\b)"
    r"|(?P<bool>and\b|or\b)|(?P<paren>[()])|(?P<var>[a-z_]+))"
)
_LOWER_BOUND_RE = re.compile(r"(?:>=|~=|==)\s*([0-9]+)\.([0-9]+)")
#: PEP 508 separates with spaces and tabs only; a line break or a Unicode space is refused.
_OTHER_SPACE_RE = re.compile(r"[^\S \t]")
_OTHER_SPACE = "contains a line break or a space other than ' ' or a tab"


def canonical_name(name: str) -> str:
    """PEP 503 normalisation: `MLX_LM` and `mlx.lm` are `mlx-lm`."""
    return re.sub(r"[-_.]+", "-", name).lower()


def specifier_problem(text: str) -> str | None:
    """`>=0.32,<0.33` (or "" for any version); None when acceptable."""
    if _OTHER_SPACE_RE.search(text):
        return _OTHER_SPACE
    if text.strip() in ("", "*"):
        return None
    for clause in text.split(","):
        match = _CLAUSE_RE.fullmatch(clause)
        if match is None:
            return (
                f"{clause.strip()!r} is not a version specifier "
                '(write e.g. ">=0.32,<0.33" or "==0.32.1")'
            )
        operator, version = match.groups()
        if version.endswith(".*") and operator not in ("==", "!="):
            return f"{clause.strip()!r}: a wildcard version needs == or !="
        if operator == "~=" and "." not in version:
            return f"{clause.strip()!r}: ~= needs at least two version parts (e.g. ~=0.32)"
    return None


def normal_specifier(text: str) -> str:
    """The specifier as uv reads it: "" for any version, else without spaces."""
    stripped = text.strip()
    return "" if stripped in ("", "*") else re.sub(r"\s+", "", stripped)


def lowest_python(text: str) -> tuple[int, int] | None:
    """The lowest Python `major.minor` a range admits, from its >=, ~= or == clause."""
    bounds = [(int(a), int(b)) for a, b in _LOWER_BOUND_RE.findall(text)]
    return max(bounds) if bounds else None


def marker_problem(text: str) -> str | None:
    """A PEP 508 environment marker (`sys_platform == 'darwin' and ...`)."""
    tokens: list[tuple[str, str]] = []
    position = 0
    text = text.rstrip()
    while position < len(text):
        match = _MARKER_TOKEN_RE.match(text, position)
        if match is None or match.end() == position:
            return f"cannot read the marker at {text[position:].strip()!r}"
        kind = match.lastgroup
        assert kind is not None
        value = match.group(kind)
        if kind == "var" and value not in _MARKER_VARS:
            return f"unknown marker variable {value!r}"
        tokens.append((kind, value))
        position = match.end()
    if not tokens:
        return "the marker after ';' is empty"
    rest = _marker_expr(tokens, 0)
    if rest is None or rest != len(tokens):
        return "is not a valid environment marker (e.g. sys_platform == 'darwin')"
    return None


def _marker_expr(tokens: list[tuple[str, str]], index: int) -> int | None:
    index_or = _marker_atom(tokens, index)
    while index_or is not None and index_or < len(tokens) and tokens[index_or][0] == "bool":
        index_or = _marker_atom(tokens, index_or + 1)
    return index_or


def _marker_atom(tokens: list[tuple[str, str]], index: int) -> int | None:
    if index >= len(tokens):
        return None
    if tokens[index] == ("paren", "("):
        end = _marker_expr(tokens, index + 1)
        if end is None or end >= len(tokens) or tokens[end] != ("paren", ")"):
            return None
        return end + 1
    if index + 2 >= len(tokens):
        return None
    left, op, right = tokens[index], tokens[index + 1], tokens[index + 2]
    if op[0] != "op" or left[0] not in ("var", "str") or right[0] not in ("var", "str"):
        return None
    if left[0] == right[0]:  # one side a variable, the other a quoted string
        return None
    return index + 3


def requirement_problem(text: str) -> str | None:
    """`name[extras] specifiers ; marker`; None when acceptable."""
    if _OTHER_SPACE_RE.search(text):
        return _OTHER_SPACE
    head, separator, marker = text.partition(";")
    if "@" in head or "://" in text:
        return "a direct URL cannot be hash-pinned from an index: name a package instead"
    match = NAME_RE.match(head.strip())
    if match is None:
        return "must start with a package name (e.g. sentencepiece>=0.2)"
    rest = head.strip()[match.end() :]
    extras = _EXTRAS_RE.match(rest.lstrip())
    if rest.lstrip().startswith("["):
        if extras is None:
            return "has malformed extras (write e.g. name[extra1,extra2])"
        rest = rest.lstrip()[extras.end() :]
    rest = rest.strip()
    if rest.startswith("(") and rest.endswith(")"):
        rest = rest[1:-1]
    if rest and rest[0] not in "<>=!~":
        return f"{rest!r} is not a version specifier"
    problem = specifier_problem(rest) if rest else None
    if problem:
        return problem
    if separator and not marker.strip():
        return "the marker after ';' is empty"
    if marker.strip():
        return marker_problem(marker)
    return None


def requirement_name(text: str) -> str:
    """The canonical package name of an acceptable requirement."""
    match = NAME_RE.match(text.strip())
    assert match is not None
    return canonical_name(match.group(0))
