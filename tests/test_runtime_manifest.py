"""`[runtime]` in manifest.toml, and its requirement checks (by `packaging`)."""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest
from hypothesis import example, given
from hypothesis import strategies as st
from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name

from mlxpin.errors import LockCorruptError, ManifestError
from mlxpin.project.manifest import parse_manifest
from mlxpin.project.requirements import requirement_name, requirement_problem
from mlxpin.runtime.pin import (
    DistFile,
    LockedDist,
    RuntimeOriginal,
    make_pin,
    parse_pin,
    render,
    runtime_state,
)

FILE = Path("/project/manifest.toml")
MODEL = """\
version = 1

[models.tiny]
api_label = "tiny"

[models.tiny.launch]
path = "./tiny"
"""


def parse(runtime: str) -> object:
    return parse_manifest((MODEL + "\n[runtime]\n" + runtime).encode(), FILE)


def error_of(runtime: str) -> ManifestError:
    with pytest.raises(ManifestError) as info:
        parse(runtime)
    return info.value


def test_runtime_table_becomes_the_requirements_uv_is_asked_for() -> None:
    manifest = parse_manifest(
        (
            MODEL
            + '\n[runtime]\npython = ">=3.11, <3.14"\nmlx-lm = ">=0.32,<0.33"\nmlx = "==0.32.4"\n'
            "packages = [\"sentencepiece>=0.2; sys_platform == 'darwin'\"]\n"
        ).encode(),
        FILE,
    )
    runtime = manifest.runtime
    assert runtime is not None
    assert runtime.python == ">=3.11,<3.14"
    assert runtime.requirements == (
        "mlx-lm>=0.32,<0.33",
        "mlx==0.32.4; sys_platform == 'darwin'",
        "mlx[cpu]==0.32.4; sys_platform == 'linux'",
        "sentencepiece>=0.2; sys_platform == 'darwin'",
    )
    assert parse_manifest(MODEL.encode(), FILE).runtime is None


def test_runtime_errors_name_the_line_the_key_and_the_fix() -> None:
    typo = error_of('mlx_lm = ">=0.32"\n')
    assert (typo.line, typo.key, typo.hint) == (10, "runtime.mlx_lm", "did you mean `mlx-lm`?")
    missing = error_of('python = ">=3.11"\n')
    assert "missing `mlx-lm`" in missing.message and 'mlx-lm = ">=0.32,<0.33"' in str(missing.hint)
    bad = error_of('mlx-lm = ">=0.32,<0.33"\nmlx = "latest"\n')
    assert (bad.line, bad.key) == (11, "runtime.mlx") and "not a version specifier" in bad.message
    unbounded = error_of('mlx-lm = ""\npython = "<3.13"\n')
    assert "no lower bound" in unbounded.message
    again = error_of('mlx-lm = ""\npackages = ["MLX_LM>=0.1"]\n')
    assert "names 'mlx-lm' again" in again.message
    url = error_of('mlx-lm = ""\npackages = ["x @ https://example.invalid/x.whl"]\n')
    assert "direct URL" in url.message


def test_a_model_cannot_be_named_runtime() -> None:
    with pytest.raises(ManifestError) as info:
        parse_manifest(MODEL.replace("tiny", "runtime").encode(), FILE)
    assert "reserved" in info.value.message and info.value.line == 3


@pytest.mark.parametrize(
    "good",
    [
        "tinypkg",
        "tiny.pkg[a,b]>=1.0,!=1.3.*",
        "x (>=1.0)",
        "x~=1.4.2; python_version >= '3.11' and (sys_platform == 'linux' or os_name == 'nt')",
        "x==2.0.0rc1",
        "x; 'linux' in sys_platform",
    ],
)
def test_good_requirements_pass(good: str) -> None:
    assert requirement_problem(good) is None


@pytest.mark.parametrize(
    "bad",
    ["", ">=1", "x>=", "x ==", "x[", "x; ", "x; foo == 'a'", "x; sys_platform ==", "x~=1"],
)
def test_bad_requirements_fail(bad: str) -> None:
    assert requirement_problem(bad) is not None


_PIECES = st.sampled_from(
    [
        "x",
        "tiny-pkg",
        "A.b_c",
        "[cpu]",
        "[a,b]",
        ">=1.0",
        "<2",
        "==1.*",
        "~=0.3",
        "!=1.2",
        ",",
        " ",
        ";",
        "sys_platform",
        "==",
        "'darwin'",
        " and ",
        " or ",
        "(",
        ")",
        "python_version",
        ">=",
        "'3.11'",
        "@",
        "in",
    ]
)


@given(st.lists(_PIECES, max_size=10).map("".join) | st.text(max_size=40))
@example("0\r")  # found by hypothesis: \s let a carriage return through
@example("mlx-lm\u00a0>=0.32")
def test_what_the_boot_checker_accepts_packaging_accepts_too(text: str) -> None:
    """Soundness against the reference parser: never pass a requirement uv would refuse."""
    if requirement_problem(text) is None:
        try:
            parsed = Requirement(text)
        except InvalidRequirement as exc:  # pragma: no cover - a failure is the finding
            raise AssertionError(f"{text!r} accepted but packaging says {exc}") from None
        assert parsed.url is None
        assert requirement_name(text) == canonicalize_name(parsed.name)


def _pin() -> object:
    return make_pin(
        RuntimeOriginal(">=3.11", ("mlx-lm>=0.1",)),
        ">=3.11",
        [
            LockedDist(
                "mlx-lm", "0.1.0", None, (DistFile("mlx_lm-0.1.0-py3-none-any.whl", 10, "a" * 64),)
            ),
            LockedDist(
                "numpy",
                "2.0",
                "python_full_version < '3.12'",
                (DistFile("n.tar.gz", None, "b" * 64),),
            ),
        ],
    )


def test_runtime_pin_round_trips_and_refuses_edits() -> None:
    pin = _pin()
    data = render(pin)  # type: ignore[arg-type]
    assert parse_pin(data, Path("runtime.toml")) == pin
    assert render(parse_pin(data, Path("runtime.toml"))) == data
    with pytest.raises(LockCorruptError, match="was the file edited"):
        parse_pin(data.replace(b'"0.1.0"', b'"0.2.0"'), Path("runtime.toml"))
    with pytest.raises(LockCorruptError):
        parse_pin(data.replace(b"sha256", b"md5", 1), Path("runtime.toml"))


@given(st.binary(max_size=300))
def test_any_bytes_give_a_pin_or_a_clean_error(data: bytes) -> None:
    with contextlib.suppress(LockCorruptError):
        parse_pin(data, Path("runtime.toml"))


def test_runtime_state_is_pure_and_names_what_changed() -> None:
    manifest = parse('mlx-lm = ">=0.1"\n').runtime  # type: ignore[attr-defined]
    pin = _pin()
    assert runtime_state(None, None).reason == "not pinned"
    assert runtime_state(manifest, None).state == "missing"
    assert runtime_state(None, pin).state == "orphan"  # type: ignore[arg-type]
    stale = runtime_state(manifest, pin)  # type: ignore[arg-type]
    assert stale.state == "stale" and "+\"mlx; sys_platform == 'darwin'\"" in str(stale.reason)
