"""Pure checks for the strings mlxpin trusts: repo ids, revisions, labels, file paths, oids.

Each `*_problem` function returns None when the value is acceptable, else a short
sentence saying what is wrong. Callers turn that into the right typed error.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Final

COMMIT_RE = re.compile(r"[0-9a-f]{40}")
_REPO_PART_RE = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?")
_OID_RE = re.compile(r"gitsha1:[0-9a-f]{40}|sha256:[0-9a-f]{64}")
_DRIVE_RE = re.compile(r"[A-Za-z]:")
_DOT_SEGMENTS = frozenset({"", ".", ".."})
NAME_RE = re.compile(r"[a-z0-9](?:[a-z0-9._-]{0,62}[a-z0-9])?")
MAX_REPO_ID = 96
MAX_LABEL = 96
MAX_NAME_BYTES = 255  # one path component, on every filesystem mlxpin runs on


def is_commit(revision: str) -> bool:
    return COMMIT_RE.fullmatch(revision) is not None


def repo_id_problem(repo: str) -> str | None:
    """Hub rules for `owner/name` (letters, digits, `-_.`; no `..`/`--`; no leading `-`)."""
    if not repo:
        return "is empty"
    if "/" not in repo:
        return "has no owner"
    if len(repo) > MAX_REPO_ID:
        return f"is longer than {MAX_REPO_ID} characters"
    parts = repo.split("/")
    if len(parts) != 2:
        return "must be exactly `owner/name` (one slash)"
    for part in parts:
        if not _REPO_PART_RE.fullmatch(part):
            return (
                f"part {part!r} must use only letters, digits, '-', '_' or '.', "
                "and start and end with a letter or digit"
            )
        if ".." in part or "--" in part:
            return f"part {part!r} must not contain '..' or '--'"
    return None


def looks_like_local_path(value: str) -> bool:
    return value.startswith(("/", "./", "../", "~")) or value in {".", ".."} or "\\" in value


def revision_problem(revision: str) -> str | None:
    if not revision:
        return "is empty"
    if len(revision) > 255:
        return "is longer than 255 characters"
    if not revision.isprintable() or any(c.isspace() for c in revision):
        return "must not contain spaces or control characters"
    if revision.startswith(("-", "/")) or revision.endswith("/") or ".." in revision:
        return "must not start with '-' or '/', end with '/', or contain '..'"
    if re.fullmatch(r"[0-9a-fA-F]{40}", revision) and not is_commit(revision):
        return "looks like a commit hash but is not lowercase"
    return None


def label_problem(label: str) -> str | None:
    if not label:
        return "is empty"
    if len(label) > MAX_LABEL:
        return f"is longer than {MAX_LABEL} characters"
    if not label.isprintable():
        return "must contain only printable characters"
    if label != label.strip():
        return "must not start or end with whitespace"
    if label.startswith("/"):
        return "must not start with '/'"
    if ".." in label.split("/"):
        return "must not contain a '..' path segment"
    return None


def relpath_problem(path: str) -> str | None:
    """A repo file name that is safe to join under a directory on any OS."""
    if not path:
        return "is empty"
    if len(path) > 1024:
        return "is too long"
    if "\\" in path or "\0" in path or not path.isprintable():
        return "contains a backslash or a control character"
    if path.startswith("/") or _DRIVE_RE.match(path):
        return "is absolute"
    if not _DOT_SEGMENTS.isdisjoint(path.split("/")):
        return "has an empty, '.' or '..' segment"
    return None


def _folded(path: str) -> str:
    """How a case- and normalisation-insensitive filesystem (macOS's default) sees a name."""
    if path.isascii():
        return path.lower()
    import unicodedata  # a non-ASCII name: most projects have none

    return unicodedata.normalize("NFC", path).casefold()


# Latin lookalikes in Cyrillic and Greek (the common ones; NFKC takes care of fullwidth).
_LOOKALIKES: Final = str.maketrans(
    "\u0430\u0435\u043e\u0440\u0441\u0443\u0445\u0456\u0458\u0455\u04cf\u03bf\u03b1\u03b9\u03ba\u03bd\u03c1\u03c4\u03c5",
    "aeopcyxijsloaikvptu",
)


def label_key(label: str) -> str:
    """Labels with the same key differ only in case, Unicode form or a lookalike script."""
    if label.isascii():  # NFKC leaves ASCII as it is, and no lookalike is ASCII
        return label.lower()
    import unicodedata

    return _folded(unicodedata.normalize("NFKC", label)).translate(_LOOKALIKES)


def tree_problem(paths: Iterable[str]) -> str | None:
    """Can these repo files be laid out as one directory tree, as fetch will lay them out?

    Refused: a component longer than 255 bytes (UTF-8), a name that is both a file and a
    directory (`a` and `a/b`), and names that differ only in case or Unicode form (one
    file on macOS). Paths must already pass `relpath_problem`.
    """
    files: dict[str, str] = {}  # folded -> as written
    dirs: dict[str, str] = {}
    for path in paths:
        parts = path.split("/")
        for part in parts if len(path) > MAX_NAME_BYTES // 4 else ():
            if len(part.encode("utf-8")) > MAX_NAME_BYTES:
                return (
                    f"file name {path!r} has a component longer than {MAX_NAME_BYTES} bytes "
                    "(no filesystem can hold it)"
                )
        folded = _folded(path)
        other = files.get(folded)
        if other is not None and other != path:
            return (
                f"{other!r} and {path!r} differ only in case or Unicode form "
                "(a case-insensitive filesystem such as macOS's holds only one of them)"
            )
        files[folded] = path
        prefix = ""
        for part in parts[:-1]:
            prefix = f"{prefix}/{part}" if prefix else part
            dirs.setdefault(_folded(prefix), prefix)
    clash = min((item for item in files.items() if item[0] in dirs), default=None)
    if clash is not None:  # the first in sorted order, as named before: no sort of them all
        folded, path = clash
        inside = next(p for p in files.values() if _folded(p).startswith(folded + "/"))
        return f"{path!r} is both a file and a directory (of {inside!r})"
    return None


def oid_problem(oid: str) -> str | None:
    if _OID_RE.fullmatch(oid):
        return None
    return "must be 'gitsha1:<40 hex>' or 'sha256:<64 hex>'"


def pattern_problem(pattern: str) -> str | None:
    if not pattern or not pattern.isprintable():
        return "must be a non-empty printable glob"
    if pattern.startswith("/") or ".." in pattern.split("/") or "\\" in pattern:
        return "must be relative to the repo root (no leading '/', no '..', no backslash)"
    return None


def is_ip(text: str) -> bool:
    try:
        import ipaddress  # only for a hostfile or hosts list: not on a plain boot

        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True
