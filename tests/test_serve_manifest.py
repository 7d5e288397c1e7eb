"""The [serve] table, per-model idle_ttl and memory budgets (parsing only; no server)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mlxpin.errors import ManifestError
from mlxpin.project.manifest import parse_manifest
from mlxpin.project.memory import Budget, parse_budget, parse_size, physical_memory

MODELS = """
[models.chat]
api_label = "chat"
idle_ttl = 30
[models.chat.launch]
repo = "o/chat"

[models.coder]
api_label = "coder"
[models.coder.launch]
repo = "o/coder"
"""


def parse(text: str) -> object:
    return parse_manifest(text.encode(), Path("/p/manifest.toml"))


def test_serve_table_defaults_and_values() -> None:
    bare = parse_manifest(f"version = 1\n{MODELS}".encode(), Path("m.toml"))
    assert bare.serve.host == "127.0.0.1"
    assert bare.serve.max_loaded is None
    assert bare.serve.memory_budget == Budget()
    assert bare.serve.memory_budget.resolve(1000) == 750
    assert bare.serve.idle_ttl == 0.0
    assert bare.serve.preload == ()
    assert bare.get("chat").idle_ttl == 30.0  # type: ignore[union-attr]
    assert bare.get("coder").idle_ttl is None  # type: ignore[union-attr]
    full = parse_manifest(
        (
            'version = 1\n[serve]\nhost = "0.0.0.0"\nport = 9000\nmax_loaded = 2\n'
            'memory_budget = "48GB"\nidle_ttl = 300\nstart_timeout = 60.5\n'
            'preload = ["coder"]\n' + MODELS
        ).encode(),
        Path("m.toml"),
    )
    serve = full.serve
    assert (serve.host, serve.port, serve.max_loaded) == ("0.0.0.0", 9000, 2)
    assert serve.memory_budget == Budget(bytes=48 * 10**9)
    assert (serve.idle_ttl, serve.start_timeout, serve.preload) == (300.0, 60.5, ("coder",))


@pytest.mark.parametrize(
    ("table", "line", "says"),
    [
        ("max_loded = 2", 3, "did you mean `max_loaded`"),
        ("max_loaded = 0", 3, "not a positive number of servers"),
        ('memory_budget = "48 parsecs"', 3, "not a size"),
        ('memory_budget = "150%"', 3, "between 0% and 100%"),
        ("idle_ttl = -1", 3, "not a valid number of seconds"),
        ("start_timeout = 0", 3, "not a valid number of seconds"),
        ('preload = ["chatt"]', 3, "did you mean `chat`"),
        ("port = 70000", 3, "not a port number"),
    ],
)
def test_serve_table_mistakes_name_file_line_and_fix(table: str, line: int, says: str) -> None:
    with pytest.raises(ManifestError) as info:
        parse(f"version = 1\n[serve]\n{table}\n{MODELS}")
    rendered = str(info.value) + " " + (info.value.hint or "")
    assert f"manifest.toml:{line}:" in rendered
    assert "serve." in rendered
    assert says in rendered


def test_per_model_idle_ttl_is_checked_where_written() -> None:
    with pytest.raises(ManifestError) as info:
        parse("version = 1\n" + MODELS.replace("idle_ttl = 30", 'idle_ttl = "soon"'))
    assert "manifest.toml:5:" in str(info.value)
    assert "models.chat.idle_ttl" in str(info.value)


def test_sizes_and_percentages() -> None:
    assert parse_size("48GB") == 48 * 10**9
    assert parse_size("512MiB") == 512 * 2**20
    assert parse_size("1.5 GiB") == int(1.5 * 2**30)
    assert parse_size("100") == 100
    assert parse_size("lots") is None
    assert parse_size("\u0668MiB") is None  # an Arabic-Indic eight is not a size
    assert parse_budget("\u0665\u0660%")[0] is None
    assert parse_budget(4096) == (Budget(bytes=4096), None)
    assert parse_budget("75%") == (Budget(percent=75.0), None)
    assert Budget(percent=50).resolve(64 * 2**30) == 32 * 2**30
    assert parse_budget(True)[0] is None
    assert parse_budget(0)[0] is None
    assert parse_budget("0%")[0] is None


@given(st.integers(1, 10**6), st.sampled_from(["", "B", "KB", "KiB", "MB", "MiB", "GB", "GiB"]))
def test_every_written_size_parses_to_its_bytes(number: int, unit: str) -> None:
    factor = {"": 1, "B": 1, "KB": 1000, "KiB": 1024, "MB": 10**6, "MiB": 2**20}
    factor |= {"GB": 10**9, "GiB": 2**30}
    assert parse_size(f"{number}{unit}") == number * factor[unit]
    assert parse_budget(f"{number} {unit}") == (Budget(bytes=number * factor[unit]), None)


@given(st.text(max_size=12))
def test_budget_parser_never_raises(text: str) -> None:
    budget, problem = parse_budget(text)
    assert (budget is None) != (problem is None)


def test_physical_memory_is_read_from_the_system() -> None:
    assert physical_memory() > 64 * 2**20


GATEWAY = """version = 1
[models.chat]
api_label = "chat"
[models.chat.launch]
repo = "o/chat"
[models.chat.gateway]
"""


def max_body(value: str) -> int:
    manifest = parse(GATEWAY + f"max_body = {value}\n")
    return manifest.models[0].gateway.max_body  # type: ignore[attr-defined, no-any-return]


UNITS = ["", "B", "K", "KB", "KiB", "M", "MB", "MiB", "G", "GB", "GiB", "kib", "mb"]


@given(st.integers(1, 1000), st.sampled_from(UNITS))
def test_max_body_is_read_by_the_one_size_parser(number: int, unit: str) -> None:
    assert max_body(f'"{number} {unit}"') == parse_size(f"{number}{unit}")


@given(st.text(max_size=10))
def test_max_body_takes_exactly_the_sizes_parse_size_takes(text: str) -> None:
    size = parse_size(text)
    quoted = json.dumps(text, ensure_ascii=False).replace("\x7f", "\\u007f")  # a TOML string
    if size is not None and 1 <= size <= 2**40:
        assert max_body(quoted) == size
        return
    try:
        max_body(quoted)
    except ManifestError as exc:
        assert "max_body" in str(exc)
    else:
        raise AssertionError(f"max_body = {quoted} was accepted")
