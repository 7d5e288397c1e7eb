"""`mlxpin add`, `mlxpin remove`, `mlxpin init`: edits that keep the rest of the file intact."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mlxpin.project.edit import AddRequest, add_model_text, cut_model
from mlxpin.project.manifest import parse_manifest
from mlxpin.project.validate import label_problem

from conftest import Invoked, invoke

MANIFEST = """\
# My models. Keep this comment.
version = 1   # trailing comment

# --- the main model ---
[models.gemma]
api_label = "gemma-4-31b-it"    # what clients send
aliases = [ "gemma4",   "g4" ]   # odd spacing stays
port = 8080

[models.gemma.launch]
repo = "mlx-community/gemma-4-31b-it-4bit"
revision = "main"
draft = "drafter"
files = [
    "*.json",   # config
    "*.safetensors",
]

# the drafter, used by gemma
[models.drafter]
api_label = 'drafter'
port = 8090

[models.drafter.launch]
repo = "mlx-community/tiny-drafter"

[models.drafter.server]
max_tokens = 64
# temp = 0.5

# the small one
[models.small]
api_label = "small"
port = 8070
[models.small.launch]
path = "./models/small"
description = '''
[models.fake]
not a header'''

# end of file
"""


@dataclass
class Env:
    tmp: Path
    manifest: Path
    environ: dict[str, str | None]

    def run(self, *args: str) -> Invoked:
        argv = [*args, "--manifest", str(self.manifest)]
        return invoke(argv, self.environ)

    def json(self, *args: str) -> dict[str, Any]:
        result = self.run(*args, "--json")
        assert result.exit_code == 0, result.output
        data: dict[str, Any] = json.loads(result.stdout)
        return data


@pytest.fixture
def env(tmp_path: Path) -> Env:
    project = tmp_path / "project"
    project.mkdir()
    manifest = project / "manifest.toml"
    # A valid manifest (the `description` key below is only for the pure span tests).
    manifest.write_text(MANIFEST.replace(MANIFEST[MANIFEST.index("description") :], ""))
    environ: dict[str, str | None] = {
        "HF_HOME": str(tmp_path / "hf"),
        "MLXPIN_HOME": str(tmp_path / "state"),
        "MLXPIN_MANIFEST": None,
        "MLXPIN_LOCK_DIR": None,
        "HF_HUB_CACHE": None,
    }
    return Env(tmp_path, manifest, environ)


def test_add_appends_and_keeps_every_byte(env: Env) -> None:
    before = env.manifest.read_bytes()
    data = env.json(
        "add",
        "qwen",
        "--repo",
        "mlx-community/Qwen3-4B-4bit",
        "--files",
        "*.json",
        "--files",
        "*.safetensors",
    )
    after = env.manifest.read_bytes()
    assert after.startswith(before)
    assert after[len(before) :].decode() == "\n" + data["added"]
    spec = parse_manifest(after, env.manifest).get("qwen")
    assert spec is not None
    assert spec.api_label == "qwen"  # the default label is the name
    assert spec.port == 8081  # the lowest port from 8080 up that no model uses
    assert spec.launch.files == ("*.json", "*.safetensors")
    assert data["source"] == "mlx-community/Qwen3-4B-4bit@main"


def test_add_then_remove_is_the_identity(env: Env) -> None:
    before = env.manifest.read_bytes()
    env.json("add", "x.y", "--repo", "o/n", "--label", 'a "quoted" label', "--port", "9000")
    assert '[models."x.y"]' in env.manifest.read_text()
    env.json("remove", "x.y")
    assert env.manifest.read_bytes() == before


def test_bare_repo_id_is_refused_and_nothing_written(env: Env) -> None:
    before = env.manifest.read_bytes()
    mtime = env.manifest.stat().st_mtime_ns
    result = env.run("add", "gem", "--repo", "gemma-4-31b-it")
    assert result.exit_code == 78
    assert "bare name" in result.stderr and "api_label" in result.stderr
    assert env.manifest.read_bytes() == before and env.manifest.stat().st_mtime_ns == mtime


def test_duplicate_name_refused(env: Env) -> None:
    before = env.manifest.read_bytes()
    result = env.run("add", "gemma", "--repo", "o/n")
    assert result.exit_code == 2 and "already has a model named 'gemma'" in result.stderr
    assert env.manifest.read_bytes() == before
    label = env.run("add", "other", "--repo", "o/n", "--label", "gemma4")
    assert label.exit_code == 78 and "already used by model 'gemma'" in label.stderr
    assert env.manifest.read_bytes() == before


def test_a_model_needs_exactly_one_source_and_the_hint_names_the_options(
    env: Env, tmp_path: Path
) -> None:
    before = env.manifest.read_bytes()
    for argv in (
        ("add", "two", "--repo", "o/n", "--path", str(tmp_path)),
        ("add", "none"),
        ("add", "local", "--path", str(tmp_path), "--revision", "v1"),
    ):
        result = env.run(*argv)
        assert result.exit_code == 2, argv
        hint = result.stderr.split("hint: ", 1)[1]
        assert "--repo" in hint, argv
    assert "give --repo owner/name or --path DIR" in env.run("add", "none").stderr
    assert env.manifest.read_bytes() == before


def test_remove_referenced_draft_refused(env: Env) -> None:
    before = env.manifest.read_bytes()
    result = env.run("remove", "drafter")
    assert result.exit_code == 78
    assert "used by gemma (launch.draft)" in result.stderr
    assert env.manifest.read_bytes() == before
    unknown = env.run("remove", "nope")
    assert unknown.exit_code == 2


def test_remove_keeps_everything_outside_the_model(env: Env) -> None:
    text = env.manifest.read_text()
    lock_dir = env.manifest.parent / "lock"
    lock_dir.mkdir()
    (lock_dir / "gemma.toml").write_text("stale")
    (lock_dir / "drafter.toml").write_text("kept")
    result = env.run("remove", "gemma")
    assert result.exit_code == 0, result.output
    assert "deleted its lock file" in result.stdout
    assert not (lock_dir / "gemma.toml").exists() and (lock_dir / "drafter.toml").exists()
    after = env.manifest.read_text()
    start = text.index("# --- the main model ---")
    end = text.index("# the drafter, used by gemma")
    assert after == text[:start] + text[end:]
    manifest = parse_manifest(after.encode(), env.manifest)
    assert manifest.names == ("drafter", "small")


def test_remove_middle_and_last_table_layouts() -> None:
    path = Path("manifest.toml")
    text = MANIFEST
    # The small model ends the file: its comment preamble goes, the file's trailing comment
    # (set apart by a blank line) stays, and a header-like line inside a multi-line string
    # is not taken for a table.
    out, removed = cut_model(text, "small", path)
    assert out == text[: text.index("\n# the small one")] + "\n# end of file\n"
    assert out[: -len("\n# end of file\n")] + removed + "\n# end of file\n" == text
    # drafter: its commented-out option (right below its values) goes with it.
    out, _ = cut_model(text, "drafter", path)
    expected = text[: text.index("\n# the drafter")] + text[text.index("\n# the small one") :]
    assert out == expected


def test_comment_blocks_between_tables() -> None:
    path = Path("manifest.toml")
    head = 'version = 1\n\n[models.a]\napi_label = "a"\n[models.a.launch]\nrepo = "o/a"\n'
    tail = '\n# a note on its own\n\n[models.b]\napi_label = "b"\n[models.b.launch]\nrepo = "o/b"\n'
    text = head + "\n# inside a, after a blank\n[models.a.server]\nmax_tokens = 1\n" + tail
    out, _ = cut_model(text, "a", path)
    assert out == "version = 1\n" + tail


def test_crlf_is_kept(env: Env) -> None:
    text = env.manifest.read_text().replace("\n", "\r\n")
    env.manifest.write_bytes(text.encode())
    env.json("add", "crlf", "--path", str(env.manifest.parent / "models" / "crlf"))
    after = env.manifest.read_bytes()
    assert after.startswith(text.encode()) and b"\n" not in after.replace(b"\r\n", b"")
    assert b'path = "./models/crlf"' in after
    env.json("remove", "crlf")
    assert env.manifest.read_bytes() == text.encode()


def test_add_lock_locks_a_path_model(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(env.tmp)  # --path is relative to where the command runs
    model = env.manifest.parent / "models" / "tiny"
    model.mkdir(parents=True)
    (model / "config.json").write_text("{}")
    data = env.json("add", "tiny", "--path", "./project/models/tiny", "--lock")
    assert data["lock"][0]["action"] == "locked"
    assert 'path = "./models/tiny"' in env.manifest.read_text()  # relative to the manifest
    assert (env.manifest.parent / "lock" / "tiny.toml").exists()


def test_init_writes_a_parseable_starter_and_never_overwrites(tmp_path: Path) -> None:
    manifest = tmp_path / "new" / "manifest.toml"
    result = invoke(["init", "--manifest", str(manifest), "--json"])
    assert result.exit_code == 0, result.output
    text = manifest.read_text()
    parsed = parse_manifest(text.encode(), manifest)
    assert parsed.names == ("gemma",)
    assert "api_label" in text and "launch.repo" in text and "# path = " in text
    again = invoke(["init", "--manifest", str(manifest)])
    assert again.exit_code == 2 and "never overwrites" in again.stderr
    assert manifest.read_text() == text


names = st.from_regex(r"[a-z0-9](?:[a-z0-9._-]{0,10}[a-z0-9])?", fullmatch=True)
labels = st.text(
    st.characters(codec="utf-8", exclude_categories=("Cc", "Cs")), min_size=1, max_size=20
).filter(lambda s: label_problem(s) is None)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
# The base manifest's models listen on 8070, 8080 and 8090: a new model needs its own port.
@given(
    name=names,
    label=labels,
    port=st.integers(1, 65535).filter(lambda p: p not in {8070, 8080, 8090}),
)
def test_add_remove_round_trip_property(name: str, label: str, port: int) -> None:
    path = Path("/m/manifest.toml")
    text = MANIFEST.replace(MANIFEST[MANIFEST.index("description") :], "")
    if name in ("gemma", "drafter", "small") or label in ("gemma-4-31b-it", "gemma4", "g4"):
        return
    if label in ("drafter", "small"):
        return
    model = AddRequest(name=name, label=label, port=port, repo="o/n", revision="v1")
    added = add_model_text(text, model, path)
    assert added.startswith(text)
    spec = parse_manifest(added.encode(), path).get(name)
    assert spec is not None and spec.api_label == label
    assert cut_model(added, name, path) == (text, added[len(text) :])


def test_remove_keeps_the_previous_tables_trailing_comment() -> None:
    text = (
        "version = 1\n\n"
        '[models.b]\napi_label = "b"\nport = 9001\n[models.b.launch]\nrepo = "o/b"\n'
        '# revision = "v2"\n'
        '[models.a]\napi_label = "a"\n[models.a.launch]\nrepo = "o/a"\n'
    )
    out, removed = cut_model(text, "a", Path("manifest.toml"))
    assert out == text[: text.index("[models.a]")]
    assert removed == text[text.index("[models.a]") :]


@pytest.mark.parametrize("command", [("add", "qwen", "--repo", "o/n"), ("remove", "drafter")])
def test_a_manifest_nested_too_deep_is_refused_with_its_line_not_a_crash(
    env: Env, command: tuple[str, ...]
) -> None:
    """Twelve inline tables under 90-part keys: past the limit, and past tomlkit's stack."""
    key = ".".join(["k"] * 90)
    deep = "x = " + f"{{ {key} = " * 12 + "1" + " }" * 12
    text = env.manifest.read_text().replace("max_tokens = 64", f"max_tokens = 64\n{deep}")
    env.manifest.write_text(text)
    line = text[: text.index("x = {")].count("\n") + 1
    result = env.run(*command)
    assert result.exit_code == 78, result.output
    assert f"{env.manifest}:{line}: TOML document nested more than 200 levels deep" in result.stderr
    assert env.manifest.read_text() == text


@pytest.mark.parametrize(
    ("args", "key"),
    [
        (("--repo", "gemma-4-31b-it"), "models.gem.launch.repo"),
        (("--repo", "o/n", "--revision", "-x"), "models.gem.launch.revision"),
        (("--repo", "o/n", "--files", "/abs"), "models.gem.launch.files"),
        (("--repo", "o/n", "--label", "small"), "models.gem.api_label"),
    ],
)
def test_add_never_cites_a_line_of_text_it_did_not_write(
    env: Env, args: tuple[str, ...], key: str
) -> None:
    before = env.manifest.read_text()
    result = env.run("add", "gem", *args)
    assert result.exit_code == 78, result.output
    first = result.stderr.splitlines()[0]
    assert first.startswith(f"mlxpin: error: {env.manifest}: {key}: "), first
    assert "`mlxpin add` would append" in first and "nothing was written" in first
    assert env.manifest.read_text() == before


def test_add_still_cites_lines_the_user_wrote(env: Env) -> None:
    text = env.manifest.read_text().replace("port = 8070", "port = 70000")
    env.manifest.write_text(text)
    result = env.run("add", "gem", "--repo", "o/n")
    line = text[: text.index("port = 70000")].count("\n") + 1
    assert result.exit_code == 78
    assert f"{env.manifest}:{line}: models.small.port" in result.stderr


def test_remove_takes_tables_that_are_not_adjacent_each_with_its_comments() -> None:
    b = '[models.b]\napi_label = "b"\n[models.b.launch]\nrepo = "o/b"\n'
    text = (
        'version = 1\n\n[models.a]\napi_label = "a"\n\n'
        + b
        + '\n# a\'s server\n[models.a.server]\nmax_tokens = 1\n\n[models.a.launch]\nrepo = "o/a"\n'
    )
    out, removed = cut_model(text, "a", Path("manifest.toml"))
    assert out == "version = 1\n\n" + b
    assert removed == '\n[models.a]\napi_label = "a"\n' + text[text.index("\n# a's server") :]
