"""`[runtime]` and `[engines.<engine>]`: the packages a server runs with, as a manifest pins
them (imported only by manifests that have one)."""

from __future__ import annotations

from dataclasses import dataclass

from mlxpin.project import requirements
from mlxpin.project.checker import Checker

_RUNTIME_KEYS = ("python", "mlx-lm", "mlx", "packages")
DEFAULT_RUNTIME_PYTHON = ">=3.11"


@dataclass(frozen=True)
class RuntimeSpec:
    """`[runtime]`: the packages `mlx_lm.server` runs with, pinned into lock/runtime.toml."""

    python: str  # a version range, e.g. ">=3.11,<3.13"
    mlx_lm: str  # a specifier ("" = any version)
    mlx: str
    packages: tuple[str, ...]  # extra PEP 508 requirements, as written
    server: str = "mlx-lm"  # the engine's package; `mlx_lm` is then its specifier

    @property
    def requirements(self) -> tuple[str, ...]:
        """What the resolver is asked for. `mlx` comes with its CPU backend on Linux
        (`mlx[cpu]`) and with Metal on macOS, so one lock boots on both."""
        return (
            f"{self.server}{self.mlx_lm}",
            f"mlx{self.mlx}; sys_platform == 'darwin'",
            f"mlx[cpu]{self.mlx}; sys_platform == 'linux'",
            *self.packages,
        )


def parse_runtime(
    check: Checker, value: object, keys: tuple[str, ...] = ("runtime",), server: str = "mlx-lm"
) -> RuntimeSpec:
    """[runtime] (mlx-lm's) or [engines.<server>]: the server package and its closure."""
    table = check.table(value, keys)
    check.known_keys(table, keys, (*_RUNTIME_KEYS[:1], server, *_RUNTIME_KEYS[2:]))
    check.require(
        table,
        keys,
        server,
        f"missing `{server}`: the runtime exists to pin the server",
        f'add {server} = ">=0.32,<0.33" (any PEP 440 range; the lock pins one version)',
    )
    specs: dict[str, str] = {}
    for key in ("python", server, "mlx"):
        default = DEFAULT_RUNTIME_PYTHON if key == "python" else ""
        text = check.string(table.get(key, default), (*keys, key))
        problem = requirements.specifier_problem(text)
        if problem:
            raise check.fail((*keys, key), problem)
        specs[key] = requirements.normal_specifier(text)
    if requirements.lowest_python(specs["python"]) is None:
        raise check.fail(
            (*keys, "python"),
            f"{specs['python']!r} has no lower bound",
            'write the oldest Python the runtime may use, e.g. python = ">=3.11"',
        )
    raw = check.array(
        table.get("packages", []),
        (*keys, "packages"),
        "must be an array of requirement strings",
        'e.g. packages = ["sentencepiece>=0.2"]',
    )
    packages: list[str] = []
    seen = {server: server, "mlx": "mlx"}
    for item in raw:
        text = check.string(item, (*keys, "packages")).strip()
        problem = requirements.requirement_problem(text)
        if problem:
            raise check.fail((*keys, "packages"), f"{text!r}: {problem}")
        name = requirements.requirement_name(text)
        if name in seen:
            where = f"the `{name}` key" if name in (server, "mlx") else f"{seen[name]!r}"
            raise check.fail(
                (*keys, "packages"),
                f"{text!r} names {name!r} again (already in {where})",
                f"name each package once; put {server} and mlx ranges in their own keys",
            )
        seen[name] = text
        packages.append(text)
    return RuntimeSpec(
        python=specs["python"],
        mlx_lm=specs[server],
        mlx=specs["mlx"],
        packages=tuple(packages),
        server=server,
    )
