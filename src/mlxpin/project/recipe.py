"""`[models.X.build]`: a model derived from another manifest model by one pinned step
(design §14). The recipe is pure data: the step, its parameters with every default written
out (so the lock records exactly what ran), and the models it reads; and what a built
model's lock adds to its recipe (`BuildPin`), read only for built models.

    quantize  mlx_lm.convert -q: bits, group_size, mode, quant_predicate, dtype
    convert   mlx_lm.convert: dtype only
    fuse      mlx_lm.fuse: an adapter model (another manifest model) into its base
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Final

from mlxpin.project.checker import Checker, did_you_mean

Param = str | int | bool

STEPS: Final = ("quantize", "convert", "fuse")
BITS: Final = (2, 3, 4, 5, 6, 8)
GROUP_SIZES: Final = (32, 64, 128)
MODES: Final = ("affine", "mxfp4", "nvfp4", "mxfp8")
PREDICATES: Final = ("mixed_2_6", "mixed_3_4", "mixed_3_6", "mixed_4_6")
DTYPES: Final = ("float16", "bfloat16", "float32")
# The parameters each step takes, and their defaults (None: optional, no default).
_PARAMS: Final[dict[str, dict[str, Param | None]]] = {
    "quantize": {
        "bits": 4,
        "group_size": 64,
        "mode": "affine",
        "quant_predicate": None,
        "dtype": None,
    },
    "convert": {"dtype": None},
    "fuse": {"adapter": None, "dequantize": False},
}
_CHOICES: Final[dict[str, tuple[Param, ...]]] = {
    "bits": BITS,
    "group_size": GROUP_SIZES,
    "mode": MODES,
    "quant_predicate": PREDICATES,
    "dtype": DTYPES,
}
KEYS: Final = ("from", "step", *dict.fromkeys(k for p in _PARAMS.values() for k in p))


def step_params(step: str) -> tuple[str, ...]:
    """The parameter keys of a step (the lock reader's allow-list)."""
    return tuple(_PARAMS[step])


@dataclass(frozen=True)
class BuildSpec:
    """What a built model is made from, and how."""

    source: str  # the manifest model it is built from (`from`)
    step: str
    params: tuple[tuple[str, Param], ...]  # sorted; defaults written out
    built: ClassVar[bool] = True  # (HubSource and PathSource say False)

    def param(self, key: str) -> Param | None:
        return dict(self.params).get(key)

    @property
    def inputs(self) -> tuple[str, ...]:
        """The manifest models the step reads: its source, then its adapter (fuse)."""
        adapter = self.param("adapter")
        return (self.source, *([str(adapter)] if adapter is not None else []))

    def describe(self) -> str:
        shown = ", ".join(f"{k}={v}" for k, v in self.params if k != "adapter")
        extra = f" + adapter {self.param('adapter')}" if self.step == "fuse" else ""
        return f"build {self.step} of {self.source}{extra}" + (f" ({shown})" if shown else "")


def parse_build(check: Checker, value: object, keys: tuple[str, ...]) -> BuildSpec:
    table: Mapping[str, Any] = check.table(value, keys)
    check.known_keys(table, keys, KEYS)
    source = check.string(
        check.require(
            table, keys, "from", "missing `from`", 'name the model it is built from: from = "gemma"'
        ),
        (*keys, "from"),
    )
    step = check.string(
        check.require(
            table, keys, "step", "missing `step`", 'e.g. step = "quantize" (or convert, fuse)'
        ),
        (*keys, "step"),
    )
    if step not in STEPS:
        raise check.fail((*keys, "step"), f"unknown step {step!r}", did_you_mean(step, STEPS))
    allowed = _PARAMS[step]
    for key in table:
        if key not in ("from", "step") and key not in allowed:
            raise check.fail(
                (*keys, key),
                f"step {step!r} takes no `{key}`",
                "its keys: " + ", ".join(allowed),
            )
    params: dict[str, Param] = {}
    for key, default in allowed.items():
        raw = table.get(key, default)
        if raw is None:
            if key == "adapter":
                raise check.fail(
                    keys,
                    "step 'fuse' needs `adapter`",
                    'name the manifest model that holds the adapter: adapter = "my-lora"',
                )
            continue
        params[key] = _param(check, key, raw, (*keys, key))
    return BuildSpec(source, step, tuple(sorted(params.items())))


def _param(check: Checker, key: str, raw: object, keys: tuple[str, ...]) -> Param:
    if key == "dequantize":
        if not isinstance(raw, bool):
            raise check.fail(keys, "must be true or false", "e.g. dequantize = true")
        return raw
    if key == "adapter":
        name = check.string(raw, keys)
        if not name:
            raise check.fail(keys, "must name another model of this manifest")
        return name
    choices = _CHOICES[key]
    shown = ", ".join(map(str, choices))
    if isinstance(choices[0], int):
        if isinstance(raw, bool) or raw not in choices or not isinstance(raw, int):
            raise check.fail(keys, f"{raw!r} is not one of {shown}", f"e.g. {key} = {choices[0]}")
        return raw
    value = check.string(raw, keys)
    if value not in choices:
        raise check.fail(
            keys, f"{value!r} is not one of {shown}", did_you_mean(value, tuple(map(str, choices)))
        )
    return value


@dataclass(frozen=True)
class BuildInput:
    """The pin of a model a build read, as it was when the build was locked."""

    name: str
    tree_hash: str
    commit: str | None


@dataclass(frozen=True)
class BuildPin:
    """A built model's derivation beyond its recipe: the pins it reads, the builder that
    runs it, and (once built) the platform that made the recorded output."""

    inputs: tuple[BuildInput, ...]  # the source, then the adapter (fuse)
    builder: str  # "runtime <key>" or "mlx-lm <version>, mlx <version>"
    built_on: str | None = None  # None: no output recorded yet (the lock lists no files)
