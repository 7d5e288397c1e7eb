"""No function in src/mlxpin is longer than 100 lines (from `def` to its last line).

A long function hides its steps; split it into named pieces that each do one thing.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "mlxpin"
LIMIT = 100

# Functions allowed to be longer, each with its reason. Empty: none is. The test below
# fails on an entry that no longer offends, so this list can only shrink.
ALLOWED: frozenset[str] = frozenset()


def long_functions(root: Path = PACKAGE, limit: int = LIMIT) -> dict[str, int]:
    """`"path:name"` -> length in lines, for every function longer than `limit`."""
    found: dict[str, int] = {}
    for path in sorted(root.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                assert node.end_lineno is not None
                length = node.end_lineno - node.lineno + 1
                if length > limit:
                    where = f"{path.relative_to(root).as_posix()}:{node.name}"
                    found[where] = length
    return found


def test_no_function_is_longer_than_the_limit() -> None:
    offenders = {k: v for k, v in long_functions().items() if k not in ALLOWED}
    listing = "\n".join(f"  {where} ({lines} lines)" for where, lines in sorted(offenders.items()))
    assert not offenders, f"functions longer than {LIMIT} lines; split them:\n{listing}"


def test_the_allow_list_holds_only_current_offenders() -> None:
    stale = sorted(ALLOWED - long_functions().keys())
    assert not stale, f"no longer over {LIMIT} lines; remove from ALLOWED: {stale}"


def test_a_long_function_is_found(tmp_path: Path) -> None:
    def body(lines: int, indent: str) -> str:
        return "".join(f"{indent}x{i} = {i}\n" for i in range(lines))

    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "m.py").write_text(
        f"def long() -> None:\n{body(LIMIT, '    ')}\n\n"  # def + 100 lines
        f"class C:\n    async def exactly(self) -> None:\n{body(LIMIT - 1, '        ')}"
    )
    assert long_functions(tmp_path) == {"pkg/m.py:long": LIMIT + 1}
