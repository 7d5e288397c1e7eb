"""Checks for the `[runtime]` table's strings: PEP 508 requirements and PEP 440 version
specifiers, by `packaging` (imported only by manifests that have a `[runtime]`).

Direct URLs are refused because only index distributions are hash-pinned. Under
`python -S` (the stdlib-only boot path) `packaging` is absent: the strings then go
unchecked here, and a changed one still shows as a stale runtime lock.
"""

from __future__ import annotations

import re

NAME_RE = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?")
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
    try:
        from packaging.specifiers import InvalidSpecifier, Specifier
    except ImportError:  # pragma: no cover - python -S
        return None
    for clause in (part.strip() for part in text.split(",")):
        try:
            Specifier(clause)
        except InvalidSpecifier:
            if clause.endswith(".*") and not clause.startswith(("==", "!=")):
                return f"{clause!r}: a wildcard version needs == or !="
            if clause.startswith("~=") and "." not in clause:
                return f"{clause!r}: ~= needs at least two version parts (e.g. ~=0.32)"
            return (
                f'{clause!r} is not a version specifier (write e.g. ">=0.32,<0.33" or "==0.32.1")'
            )
    return None


def normal_specifier(text: str) -> str:
    """The specifier as uv reads it: "" for any version, else without spaces."""
    stripped = text.strip()
    return "" if stripped in ("", "*") else re.sub(r"\s+", "", stripped)


def lowest_python(text: str) -> tuple[int, int] | None:
    """The lowest Python `major.minor` a range admits, from its >=, ~= or == clause."""
    bounds = [(int(a), int(b)) for a, b in _LOWER_BOUND_RE.findall(text)]
    return max(bounds) if bounds else None


def requirement_problem(text: str) -> str | None:
    """`name[extras] specifiers ; marker`; None when acceptable."""
    if _OTHER_SPACE_RE.search(text):
        return _OTHER_SPACE
    if "@" in text.partition(";")[0] or "://" in text:
        return "a direct URL cannot be hash-pinned from an index: name a package instead"
    try:
        from packaging.requirements import InvalidRequirement, Requirement
    except ImportError:  # pragma: no cover - python -S
        return None if NAME_RE.match(text.strip()) else "must start with a package name"
    try:
        Requirement(text)
    except InvalidRequirement as exc:
        reason = str(exc).splitlines()[0]
        return f"{reason} (write e.g. \"sentencepiece>=0.2; sys_platform == 'darwin'\")"
    return None


def requirement_name(text: str) -> str:
    """The canonical package name of an acceptable requirement."""
    match = NAME_RE.match(text.strip())
    assert match is not None
    return canonical_name(match.group(0))
