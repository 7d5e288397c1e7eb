"""The layer rule, read from every module's imports (lazy and TYPE_CHECKING ones included).

Floors, bottom to top; a module may import its own package and any floor below its own:

    errors                  the error tree
    config, util            Settings; atomic writes, parallel work, hashing
    project                 what is declared and pinned (manifest, locks, edits)
    store                   bytes on disk (layout, fetch, gc, bundles)
    hub                     the only huggingface_hub importer (client, resolve)
    runtime                 the pinned server runtime
    serve                   what runs inside an engine server process (the Unix-socket shim)
    plan, gateway, mirror,  pure plans for launch/serve/distributed; the HTTP gateway; the
    build, dev              Hub-protocol mirror; model builds; tiny models and the demo
    supervise, service      engine server processes, the pool and restarts; boot units
    commands                one module per verb; frozen results
    cli                     parsing and rendering; nothing imports it but the entry point

Third-party seams: only ``hub`` imports huggingface_hub, only ``gateway``, ``mirror`` and
``supervise`` (the runner's operator routes) import aiohttp. Package ``__init__`` files
stay empty so the boot path pays nothing for them.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "mlxpin"

FLOORS: dict[str, int] = {
    "errors": 0,
    "config": 1,
    "util": 1,
    "project": 2,
    "store": 3,
    "hub": 4,
    "runtime": 5,
    "serve": 1,
    "plan": 6,
    "build": 6,
    "gateway": 6,
    "mirror": 6,
    "dev": 6,
    "supervise": 7,
    "service": 7,
    "commands": 8,
    "cli": 9,
}
# The executable's entry points may reach every floor.
ENTRY_POINTS = {"entry", "__main__", "__init__"}

ONLY_IMPORTED_BY: dict[str, tuple[str, ...]] = {
    "huggingface_hub": ("hub",),
    "aiohttp": ("gateway", "mirror", "supervise"),
    "prometheus_client": ("supervise",),
}


def modules(root: Path = PACKAGE) -> Iterator[tuple[str, Path]]:
    for path in sorted(root.rglob("*.py")):
        yield ".".join(path.relative_to(root).with_suffix("").parts), path


def imports_of(path: Path, root: Path = PACKAGE) -> Iterator[tuple[int, str]]:
    """Every imported module name, absolute, with its line."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package_parts = path.relative_to(root.parent).with_suffix("").parts[:-1]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = ".".join(package_parts[: len(package_parts) - node.level + 1])
                module = f"{base}.{node.module}" if node.module else base
            else:
                module = node.module or ""
            if module == "mlxpin":
                # `from mlxpin import x` imports the module mlxpin.x
                for alias in node.names:
                    dunder = alias.name.startswith("__")  # __version__ is the package's own
                    yield node.lineno, "mlxpin" if dunder else f"mlxpin.{alias.name}"
            else:
                yield node.lineno, module


def floor_of(module: str) -> str:
    """`serve.gateway` -> `serve`; `errors` -> `errors`."""
    return module.split(".", maxsplit=1)[0]


def violations(root: Path = PACKAGE) -> list[str]:
    found: list[str] = []
    for name, path in modules(root):
        own = floor_of(name)
        rel = path.relative_to(root.parent.parent)
        for line, imported in imports_of(path, root):
            top = imported.split(".")[0]
            if top in ONLY_IMPORTED_BY and own not in ONLY_IMPORTED_BY[top]:
                owners = ", ".join(f"{o}/" for o in ONLY_IMPORTED_BY[top])
                found.append(f"{rel}:{line}: {imported} belongs to {owners}")
            if top != "mlxpin" or imported == "mlxpin" or own in ENTRY_POINTS:
                continue
            target = floor_of(imported.removeprefix("mlxpin."))
            if target in ENTRY_POINTS - {"__init__"}:
                found.append(f"{rel}:{line}: imports the entry point {imported}")
                continue
            if target == own:
                continue
            if own not in FLOORS or target not in FLOORS:
                found.append(f"{rel}:{line}: {imported}: module outside the floors")
            elif FLOORS[target] >= FLOORS[own]:
                found.append(f"{rel}:{line}: {own} reaches up to {imported}")
    return found


def test_every_import_goes_down_the_floors() -> None:
    assert violations() == []


def test_nothing_but_the_entry_point_imports_cli() -> None:
    offenders = [
        f"{name}: {imported}"
        for name, path in modules()
        if floor_of(name) not in {"cli", "entry"}
        for _, imported in imports_of(path)
        if imported.startswith("mlxpin.cli")
    ]
    assert offenders == []


def test_package_inits_hold_only_a_docstring() -> None:
    heavy = [
        str(path.relative_to(PACKAGE))
        for path in PACKAGE.rglob("__init__.py")
        if path.parent != PACKAGE
        and any(
            not (isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant))
            for node in ast.parse(path.read_text(encoding="utf-8")).body
        )
    ]
    assert heavy == []


def test_few_modules_at_the_top() -> None:
    top = sorted(p.stem for p in PACKAGE.glob("*.py"))
    assert top == ["__init__", "__main__", "config", "entry", "errors"]


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("from mlxpin.cli.app import main\n", "mlxpin.cli.app"),
        ("from mlxpin import errors\n", "mlxpin.errors"),
        ("from ..project import manifest\n", "mlxpin.project"),
        ("def f():\n    import aiohttp\n", "aiohttp"),
    ],
)
def test_the_reader_sees_every_form_of_import(tmp_path: Path, source: str, expected: str) -> None:
    root = tmp_path / "src" / "mlxpin"
    path = root / "store" / "x.py"
    path.parent.mkdir(parents=True)
    path.write_text(source, encoding="utf-8")
    assert expected in [name for _, name in imports_of(path, root)]


def test_the_rule_catches_a_module_that_reaches_up(tmp_path: Path) -> None:
    root = tmp_path / "src" / "mlxpin"
    (root / "project").mkdir(parents=True)
    (root / "project" / "bad.py").write_text(
        "from mlxpin.plan.launch import x\nimport huggingface_hub\n", encoding="utf-8"
    )
    found = violations(root)
    assert any("project reaches up to mlxpin.plan.launch" in v for v in found)
    assert any("huggingface_hub belongs to hub/" in v for v in found)
