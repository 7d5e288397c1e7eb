"""The manifest's checks, shared by its tables: every problem is a ManifestError naming
the file, the line (from `KeyLines`), the dotted key, and what to write instead."""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from mlxpin.errors import ManifestError
from mlxpin.project.tomllines import KeyLines


class Checker:
    """Type and key checks that fail with file:line, the dotted key, and a fix."""

    def __init__(
        self, path: Path, lines: KeyLines, misplaced: Callable[[], Mapping[str, str]]
    ) -> None:
        self.path = path
        self.lines = lines
        self.misplaced = misplaced  # key -> the [models.NAME.<table>] it belongs in

    def fail(self, keys: tuple[str, ...], problem: str, fix: str | None = None) -> ManifestError:
        dotted = ".".join(toml_key(k) for k in keys) if keys else None
        return ManifestError(self.path, self.lines.line_of(keys), dotted, problem, fix)

    def table(self, value: object, keys: tuple[str, ...]) -> Mapping[str, Any]:
        if not isinstance(value, dict):
            raise self.fail(keys, "must be a table", f"write it as [{'.'.join(keys)}]")
        return value

    def known_keys(
        self, table: Mapping[str, Any], keys: tuple[str, ...], allowed: tuple[str, ...]
    ) -> None:
        for key in table:
            if key in allowed:
                continue
            where = keys[-1] if keys else "top level"
            fix = did_you_mean(key, allowed)
            home = self.misplaced().get(key)
            if home and keys and keys[0] == "models" and len(keys) == 2:
                fix = f"`{key}` belongs in [models.{keys[1]}.{home}]"
            elif key in ("model", "name", "repo_id", "model_id"):
                fix = "put the label clients send in `api_label`, and the Hub repo in `launch.repo`"
            raise self.fail((*keys, key), f"unknown key in {where}", fix)

    def require(
        self, table: Mapping[str, Any], keys: tuple[str, ...], key: str, problem: str, fix: str
    ) -> Any:
        """`table[key]`; `problem` (reported at the table) when the key is missing."""
        if key not in table:
            raise self.fail(keys, problem, fix)
        return table[key]

    def exactly_one(
        self, table: Mapping[str, Any], keys: tuple[str, ...], *pair: tuple[str, str], fix: str
    ) -> str:
        """Which key of `pair` ((key, what it is), twice) the table has; never neither or both."""
        (first, first_is), (second, second_is) = pair
        if (first in table) == (second in table):
            problem = f"needs exactly one of `{first}` ({first_is}) or `{second}` ({second_is})"
            raise self.fail(keys, problem, fix)
        return first if first in table else second

    def number(
        self,
        value: object,
        keys: tuple[str, ...],
        what: str,
        fix: str,
        within: tuple[float, float] = (0, math.inf),
        whole: bool = True,
    ) -> Any:
        """`value` when it is a number (an integer if `whole`) strictly between `within`."""
        kinds = int if whole else (int, float)
        low, high = within
        if isinstance(value, bool) or not isinstance(value, kinds) or not low < value < high:
            raise self.fail(keys, f"{value!r} is not {what}", fix)
        return value

    def array(
        self, value: object, keys: tuple[str, ...], problem: str, fix: str | None = None
    ) -> list[Any]:
        if not isinstance(value, list):
            raise self.fail(keys, problem, fix)
        return value

    def local_path(
        self, value: object, keys: tuple[str, ...], problem: str, base: Path
    ) -> tuple[str, Path]:
        """A path as written (`problem` if empty), and absolute (a relative one from `base`)."""
        written = self.string(value, keys)
        if not written or "\0" in written:
            raise self.fail(keys, problem)
        try:
            return written, (base / Path(written).expanduser()).absolute()
        except RuntimeError:
            raise self.fail(keys, f"cannot expand the home directory in {written!r}") from None

    def refuse(
        self, keys: tuple[str, ...], problem: str | None, prefix: str, fix: str | None = None
    ) -> None:
        """Fail with `prefix + problem` when a `*_problem` check found one."""
        if problem:
            raise self.fail(keys, prefix + problem, fix)

    def string(self, value: object, keys: tuple[str, ...]) -> str:
        if not isinstance(value, str):
            raise self.fail(keys, f"must be a string, not {type_name(value)}")
        return value


def toml_key(key: str) -> str:
    return key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else '"' + key.replace('"', '\\"') + '"'


def type_name(value: object) -> str:
    return {
        bool: "a boolean",
        int: "an integer",
        float: "a number",
        str: "a string",
        list: "an array",
        dict: "a table",
    }.get(type(value), type(value).__name__)


def did_you_mean(key: str, allowed: tuple[str, ...]) -> str:
    import difflib  # errors only

    close = difflib.get_close_matches(key, allowed, n=1, cutoff=0.6)
    if close:
        return f"did you mean `{close[0]}`?"
    return "allowed keys: " + ", ".join(allowed)
