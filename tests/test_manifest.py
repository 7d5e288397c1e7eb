"""manifest.toml: every rule of design §2, with file:line errors, and no traceback for any input."""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest
import tomlkit
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mlxpin.errors import ManifestError, MlxpinError
from mlxpin.project.manifest import HubSource, PathSource, load_manifest, parse_manifest
from mlxpin.project.serveropts import server_argv
from mlxpin.project.tomllines import KeyLines

FILE = Path("/project/manifest.toml")

GOOD = """\
version = 1

# The label clients send is not the artifact the server loads.
[models.gemma]
api_label = "gemma-4-31b-it"
aliases = ["gemma4"]
port = 8080

[models.gemma.launch]
repo = "mlx-community/gemma-4-31b-it-4bit"
revision = "main"
files = ["*.json", "*.safetensors", "tokenizer*", "*.jinja"]
draft = "drafter"

[models.gemma.server]
max_tokens = 2048
chat_template_args = { enable_thinking = false }

[models.drafter]
api_label = "gemma-drafter"
port = 8081

[models.drafter.launch]
path = "./models/drafter"
"""


def parse(text: str) -> object:
    return parse_manifest(text.encode(), FILE)


def error_of(text: str) -> ManifestError:
    with pytest.raises(ManifestError) as info:
        parse_manifest(text.encode(), FILE)
    return info.value


def test_good_manifest_parses_into_frozen_data() -> None:
    manifest = parse_manifest(GOOD.encode(), FILE)
    gemma = manifest.get("gemma")
    assert gemma is not None
    assert gemma.api_label == "gemma-4-31b-it"
    assert gemma.aliases == ("gemma4",)
    assert gemma.host == "127.0.0.1"
    assert gemma.launch.source == HubSource("mlx-community/gemma-4-31b-it-4bit", "main")
    assert gemma.launch.files == ("*.json", "*.safetensors", "tokenizer*", "*.jinja")
    assert gemma.launch.draft == "drafter"
    assert dict(gemma.server)["chat_template_args"] == {"enable_thinking": False}
    drafter = manifest.get("drafter")
    assert drafter is not None
    assert drafter.launch.source == PathSource("./models/drafter", Path("/project/models/drafter"))
    with pytest.raises(AttributeError):
        gemma.api_label = "x"  # type: ignore[misc]


def test_server_options_become_flags_in_stable_order() -> None:
    manifest = parse_manifest(GOOD.encode(), FILE)
    gemma = manifest.get("gemma")
    assert gemma is not None
    assert server_argv(gemma.server) == [
        "--chat-template-args",
        '{"enable_thinking":false}',
        "--max-tokens",
        "2048",
    ]


def test_bare_repo_id_is_refused_with_owner_hint_and_line() -> None:
    error = error_of(GOOD.replace('"mlx-community/gemma-4-31b-it-4bit"', '"gemma-4-31b-it"'))
    assert error.line == 10
    assert error.key == "models.gemma.launch.repo"
    assert "needs an owner" in error.message
    assert error.hint is not None
    assert "mlx-community/gemma-4-31b-it" in error.hint
    assert "api_label" in error.hint
    assert str(error).startswith("/project/manifest.toml:10: models.gemma.launch.repo:")
    assert error.exit_code == 78


@pytest.mark.parametrize(
    ("bad", "needle"),
    [
        ('"-owner/name"', "start and end"),
        ('"owner/na..me"', "'..'"),
        ('"owner/name/extra"', "local directory"),
        ('"./models/x"', "local directory"),
        ('"owner/na me"', "letters"),
        ('"owner/' + "x" * 100 + '"', "longer than 96"),
    ],
)
def test_invalid_repo_ids_are_refused(bad: str, needle: str) -> None:
    error = error_of(GOOD.replace('"mlx-community/gemma-4-31b-it-4bit"', bad))
    assert needle in str(error)
    assert error.line == 10


def test_unknown_key_gets_did_you_mean_and_line() -> None:
    error = error_of(GOOD.replace("aliases =", "alias ="))
    assert error.line == 6
    assert error.key == "models.gemma.alias"
    assert error.hint == "did you mean `aliases`?"


def test_misplaced_launch_key_names_its_table() -> None:
    error = error_of(GOOD.replace("port = 8080\n", 'port = 8080\nrevision = "v1"\n', 1))
    assert error.hint == "`revision` belongs in [models.gemma.launch]"


def test_model_key_explains_label_vs_repo() -> None:
    error = error_of(GOOD.replace("port = 8080\n", 'port = 8080\nmodel = "x"\n', 1))
    assert error.hint is not None and "api_label" in error.hint and "launch.repo" in error.hint


def test_repo_and_path_are_exclusive() -> None:
    error = error_of(GOOD.replace('revision = "main"', 'revision = "main"\npath = "./x"'))
    assert "exactly one of" in error.message
    error = error_of(GOOD.replace('path = "./models/drafter"', 'files = ["*"]'))
    assert "exactly one of" in error.message


def test_path_source_has_no_revision() -> None:
    error = error_of(GOOD.replace('path = "./models/drafter"', 'path = "./m"\nrevision = "main"'))
    assert "no revision" in error.message


def test_labels_and_aliases_are_unique_across_models() -> None:
    error = error_of(GOOD.replace('api_label = "gemma-drafter"', 'api_label = "gemma4"'))
    assert "already used by model 'gemma'" in error.message
    assert error.key == "models.drafter.api_label"


@pytest.mark.parametrize("label", ["Gemma4", "GEMMA4", "g\u0435mma4", "\uff47emma4"])
def test_labels_that_only_look_different_are_refused_naming_both(label: str) -> None:
    """Issue #20 item 11: case, Unicode form or a lookalike script made 'another' model."""
    error = error_of(GOOD.replace('api_label = "gemma-drafter"', f'api_label = "{label}"'))
    assert repr(label) in error.message and "'gemma4'" in error.message
    assert "model 'gemma'" in error.message
    assert error.key == "models.drafter.api_label"
    alias = error_of(GOOD.replace('aliases = ["gemma4"]', 'aliases = ["caf\u00e9", "cafe\u0301"]'))
    assert alias.key == "models.gemma.aliases"


@pytest.mark.parametrize("label", ["/abs", "a/../b", "", " padded", "x" * 97, "tab\there"])
def test_unsafe_labels_are_refused(label: str) -> None:
    error = error_of(GOOD.replace('"gemma-4-31b-it"', tomlkit.string(label).as_string()))
    assert error.key == "models.gemma.api_label"


def test_explicit_ports_must_not_collide() -> None:
    error = error_of(GOOD.replace("port = 8081", "port = 8080"))
    assert "already the endpoint" in error.message


@pytest.mark.parametrize("port", ["0", "65536", "true", '"8080"', "80.5"])
def test_ports_are_validated(port: str) -> None:
    error = error_of(GOOD.replace("port = 8080", f"port = {port}"))
    assert error.key == "models.gemma.port"


def test_hosts_are_validated() -> None:
    error = error_of(GOOD.replace("port = 8080", 'port = 8080\nhost = "bad host!"'))
    assert error.key == "models.gemma.host"
    manifest = parse_manifest(
        GOOD.replace("port = 8080", 'port = 8080\nhost = "::1"').encode(), FILE
    )
    gemma = manifest.get("gemma")
    assert gemma is not None and gemma.host == "::1"


def test_unknown_server_option_is_refused() -> None:
    error = error_of(GOOD.replace("max_tokens = 2048", "max_token = 2048"))
    assert error.key == "models.gemma.server.max_token"
    assert error.hint == "did you mean `max_tokens`?"
    error = error_of(GOOD.replace("max_tokens = 2048", 'model = "other/repo"'))
    assert "set by mlxpin itself" in str(error.hint)


@pytest.mark.parametrize(
    "option",
    ["max_tokens = 0", "temp = -1", "top_p = 2.0", 'trust_remote_code = "yes"', "kv_bits = 9"],
)
def test_server_option_values_are_validated(option: str) -> None:
    error = error_of(GOOD.replace("max_tokens = 2048", option))
    assert error.key is not None and error.key.startswith("models.gemma.server.")


def test_trust_remote_code_must_be_written_out() -> None:
    manifest = parse_manifest(GOOD.encode(), FILE)
    gemma = manifest.get("gemma")
    assert gemma is not None
    assert "--trust-remote-code" not in server_argv(gemma.server)
    manifest = parse_manifest(
        GOOD.replace("max_tokens = 2048", "trust_remote_code = true").encode(), FILE
    )
    gemma = manifest.get("gemma")
    assert gemma is not None
    assert "--trust-remote-code" in server_argv(gemma.server)


def test_draft_must_name_another_model() -> None:
    error = error_of(GOOD.replace('draft = "drafter"', 'draft = "drafterr"'))
    assert "no model named 'drafterr'" in error.message
    assert error.hint == "did you mean `drafter`?"
    error = error_of(GOOD.replace('draft = "drafter"', 'draft = "gemma"'))
    assert "its own draft" in error.message


@pytest.mark.parametrize("revision", ["", "-x", "a..b", "has space", "A" * 40])
def test_bad_revisions_are_refused(revision: str) -> None:
    error = error_of(GOOD.replace('revision = "main"', f'revision = "{revision}"'))
    assert error.key == "models.gemma.launch.revision"


def test_syntax_error_reports_its_line() -> None:
    error = error_of(GOOD.replace("port = 8080", "port = = 8080"))
    assert error.line == 7
    assert "TOML syntax error" in error.message


def test_invalid_utf8_reports_line() -> None:
    with pytest.raises(ManifestError) as info:
        parse_manifest(b"version = 1\n\n# \xff\n", FILE)
    assert info.value.line == 3


def test_model_names_must_be_safe_file_names() -> None:
    error = error_of(
        GOOD.replace("[models.drafter]", '[models."Drafter"]').replace(
            "[models.drafter.launch]", '[models."Drafter".launch]'
        )
    )
    assert "lowercase" in error.message


def test_missing_file_says_how_to_create_one(tmp_path: Path) -> None:
    with pytest.raises(ManifestError) as info:
        load_manifest(tmp_path / "manifest.toml")
    assert "mlxpin init" in str(info.value.hint)


def test_empty_manifest_explains_what_to_add() -> None:
    error = error_of("version = 1\n")
    assert "declares no models" in error.message


def test_version_must_be_one() -> None:
    assert error_of(GOOD.replace("version = 1", "version = 2")).line == 1


def test_a_valid_manifest_never_reads_its_lines(monkeypatch: pytest.MonkeyPatch) -> None:
    """Lines are for errors: every verb reads the manifest, and indexing it (three regexes
    compiled) cost `status` ~1 % of its start (#21)."""

    def refuse(self: KeyLines, text: str) -> None:
        raise AssertionError("a valid manifest's lines were read")

    monkeypatch.setattr(KeyLines, "_index", refuse)
    assert parse(GOOD + '[serve]\nmemory_budget = "75%"\n[runtime]\nmlx-lm = ">=0.20"\n')


def test_key_lines_handles_dotted_keys_inline_tables_and_multiline_strings() -> None:
    text = (
        '[models.a]\napi_label = "x"\nlaunch.repo = "o/n"\n'
        'note = """\nfake = 1\n"""\n[models."b.c"]\nserver = { max_tokens = 1 }\n'
    )
    lines = KeyLines(text)
    assert lines.line_of(("models", "a", "launch", "repo")) == 3
    assert lines.line_of(("models", "a", "launch")) == 3
    assert lines.line_of(("models", "a", "fake")) == 1  # only inside a string: the table line
    assert lines.line_of(("models", "b.c", "server", "max_tokens")) == 8


# --- property-based: any input gives a Manifest or a ManifestError -------------------------

toml_scalars = st.one_of(
    st.integers(-(2**63), 2**63 - 1),
    st.booleans(),
    st.text(max_size=20),
    st.floats(allow_nan=False),
)
toml_values = st.recursive(
    toml_scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3),
        st.dictionaries(st.text(min_size=1, max_size=8), inner, max_size=3),
    ),
    max_leaves=8,
)
keys = st.sampled_from(
    [
        "version",
        "models",
        "api_label",
        "aliases",
        "port",
        "host",
        "launch",
        "server",
        "repo",
        "path",
        "revision",
        "files",
        "draft",
        "adapter",
        "max_tokens",
        "gemma",
        "x",
    ]
)


@st.composite
def manifest_like(draw: st.DrawFn) -> dict[str, object]:
    model: dict[str, object] = draw(st.dictionaries(keys, toml_values, max_size=5))
    launch: dict[str, object] = draw(st.dictionaries(keys, toml_values, max_size=4))
    if draw(st.booleans()):
        model["launch"] = launch
    doc: dict[str, object] = draw(st.dictionaries(keys, toml_values, max_size=2))
    doc["models"] = {draw(st.sampled_from(["gemma", "Bad Name", "x"])): model}
    return doc


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(st.binary(max_size=300))
def test_any_bytes_give_a_manifest_or_a_clean_error(data: bytes) -> None:
    try:
        parse_manifest(data, FILE)
    except MlxpinError as error:
        assert error.exit_code == 78
        assert str(error).startswith(str(FILE))


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(manifest_like())
def test_any_toml_document_gives_a_manifest_or_a_clean_error(doc: dict[str, object]) -> None:
    try:
        text = tomlkit.dumps(doc)
    except (ValueError, TypeError):
        return  # not representable as TOML at all
    try:
        parse_manifest(text.encode(), FILE)
    except ManifestError as error:
        assert error.exit_code == 78
        assert str(error).startswith(str(FILE))


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=200))
def test_any_text_gives_a_manifest_or_a_clean_error(text: str) -> None:
    with contextlib.suppress(ManifestError):
        parse_manifest(text.encode("utf-8", "surrogatepass"), FILE)


def test_unknown_home_directory_in_a_path_is_a_clean_error() -> None:
    error = error_of(GOOD.replace('path = "./models/drafter"', 'path = "~nosuchuser-xyz/m"'))
    assert error.key == "models.drafter.launch.path"
    assert "home directory" in error.message


# --- [server] strings that argparse would read as a flag ------------------------------------

DASH_VALUES = [
    ('chat_template = "--trust-remote-code"', "chat_template"),
    ('chat_template = "-x"', "chat_template"),
    ('allowed_origins = ["http://a", "--host"]', "allowed_origins"),
    ('allowed_origins = ["-"]', "allowed_origins"),
]


@pytest.mark.parametrize(("option", "key"), DASH_VALUES)
def test_server_strings_starting_with_a_dash_are_refused(option: str, key: str) -> None:
    """`--chat-template -x` makes every mlx_lm.server start fail (argparse reads a flag)."""
    text = GOOD.replace("max_tokens = 2048", option)
    with pytest.raises(ManifestError) as info:
        parse_manifest(text.encode(), FILE)
    assert info.value.key == f"models.gemma.server.{key}"
    assert info.value.line == 16
    assert "must not start with '-'" in info.value.message
    assert str(info.value).startswith(f"{FILE}:16: ")


@settings(max_examples=300, deadline=None)
@given(
    st.sampled_from(["chat_template", "allowed_origins", "log_level"]),
    st.text(min_size=1, max_size=12),
)
def test_no_accepted_server_value_reads_as_a_flag(key: str, value: str) -> None:
    raw = [value] if key == "allowed_origins" else value
    doc = {"models": {"gemma": {"api_label": "g", "launch": {"repo": "o/n"}, "server": {key: raw}}}}
    try:
        manifest = parse_manifest(tomlkit.dumps(doc).encode(), FILE)
    except ManifestError:
        return
    argv = server_argv(manifest.models[0].server)
    assert argv[0].startswith("--")
    assert not any(arg.startswith("-") for arg in argv[1:]), argv


# --- nesting: refused at its line before tomllib runs, never a crash -----------------------

NESTED_HEAD = """\
version = 1
[models.gemma]
api_label = "g"
[models.gemma.launch]
repo = "o/n"
[models.gemma.server]
"""


def nested(kind: str, depth: int) -> str:
    """A manifest whose line 7 holds something nested ``depth`` levels deep."""
    if kind == "array":  # chat_template_args = { a = [[[ ... ]]] }: depth brackets
        inner = "[" * (depth - 1) + "1" + "]" * (depth - 1)
        return NESTED_HEAD + f"chat_template_args = {{ a = {inner} }}\n"
    if kind == "inline":  # { a = { a = ... } }: depth braces
        return NESTED_HEAD + "chat_template_args = " + "{ a = " * depth + "1" + " }" * depth + "\n"
    if kind == "key":  # chat_template_args.k.k.k... = 1: a key of depth fragments
        return NESTED_HEAD + "chat_template_args." + ".".join(["k"] * (depth - 1)) + " = 1\n"
    if kind == "header":  # [models.gemma.server.chat_template_args.k.k...]: depth fragments
        keys = ".".join(["k"] * (depth - 4))
        return NESTED_HEAD + f"[models.gemma.server.chat_template_args.{keys}]\n"
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["array", "inline", "key", "header"])
@pytest.mark.parametrize("depth", [100, 101, 200, 300, 1000])
def test_deep_nesting_is_a_clean_78_with_a_line(kind: str, depth: int) -> None:
    text = nested(kind, depth).encode()
    if depth <= 100:
        parse_manifest(text, FILE)
        return
    error = error_of(nested(kind, depth))
    assert error.exit_code == 78 and error.line == 7
    assert "nested more than 100 levels deep" in error.message


# Scalars whose text is full of brackets, quotes and dots: none of them nests anything.
_TRICKY_SCALARS = [
    "1.5",
    "true",
    "1979-05-27T07:32:00.999Z",
    '"[{#.]}"',
    "'[{ \\\\ ]'",
    '"a\\"[{"',
    '"' + "[{." * 70 + '"',
    "'''x]}\n[[y]]\n{{'''",
    '"""a\n[b.c]\n{ "\\"""\n"""',
]


@st.composite
def deep_manifests(draw: st.DrawFn) -> tuple[str, int, int, int]:
    """A manifest nesting a value under [models.gemma.server.chat_template_args.k...].

    Returns (text, brackets, longest key, depth); depth counts as the readers' limit does:
    header fragments + key fragments + inline table key fragments + one per array or
    inline table that is an element of an array.
    """
    header_frags = draw(st.integers(0, 110))
    key_frags = draw(st.integers(1, 110))
    chain = draw(st.lists(st.tuples(st.sampled_from("[{"), st.integers(1, 110)), max_size=130))
    scalar = st.sampled_from(_TRICKY_SCALARS)
    one_line = [s for s in _TRICKY_SCALARS if "\n" not in s]
    prefix, suffix = "", ""
    in_inline = False
    depth = 4 + header_frags + key_frags
    longest = max(4 + header_frags, key_frags)
    previous = "key"
    for kind, frags in chain:
        sep = " " if in_inline else draw(st.sampled_from([" ", "\n", " # [{ \n"]))
        pick = st.sampled_from(one_line) if in_inline else scalar
        if kind == "[":
            prefix += "[" + sep + draw(pick) + "," + sep
            suffix = sep + "]" + suffix
            depth += 1 if previous == "[" else 0
        else:
            key = ".".join(["k"] * min(frags, 3 if not draw(st.booleans()) else frags))
            longest = max(longest, key.count(".") + 1)
            prefix += "{ " + f'"q[" = {draw(st.sampled_from(one_line))}, {key} = '
            suffix = " }" + suffix
            depth += key.count(".") + 1 + (1 if previous == "[" else 0)
            in_inline = True
        previous = kind
    value = prefix + draw(scalar if not in_inline else st.sampled_from(one_line)) + suffix
    header = ".".join(["models", "gemma", "server", "chat_template_args"] + ["k"] * header_frags)
    text = NESTED_HEAD + f"[{header}]\n" + ".".join(["k"] * key_frags) + " = " + value + "\n"
    return text, len(chain), longest, depth


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(deep_manifests())
def test_nesting_is_refused_past_the_limits_and_never_crashes(
    case: tuple[str, int, int, int],
) -> None:
    text, brackets, longest, depth = case
    try:
        parse_manifest(text.encode(), FILE)
        line, message = None, ""
    except ManifestError as error:
        line, message = error.line, error.message
    refused_for_depth = "levels deep" in message
    if brackets > 100 or longest > 100 or depth > 200:
        assert refused_for_depth, (brackets, longest, depth, message)
        assert line is not None and 7 <= line <= text.count("\n")
    elif brackets <= 100 and longest <= 100 and depth <= 195:
        assert not refused_for_depth, (brackets, longest, depth, message)


# --- messages ------------------------------------------------------------------------------


@pytest.mark.parametrize("version", ["1.0", "1e0", "true", '"1"', "2"])
def test_version_must_be_the_integer_one(version: str) -> None:
    text = GOOD.replace("version = 1", f"version = {version}").encode()
    with pytest.raises(ManifestError) as info:
        parse_manifest(text, FILE)
    assert info.value.line == 1 and info.value.key == "version"
    assert info.value.hint == "write version = 1"


def test_an_alias_equal_to_its_own_label_says_so() -> None:
    error = error_of(GOOD.replace('aliases = ["gemma4"]', 'aliases = ["gemma-4-31b-it"]'))
    assert error.key == "models.gemma.aliases"
    assert error.line == 6
    assert "repeats this model's own api_label" in error.message
    assert "used by model" not in error.message
    error = error_of(GOOD.replace('aliases = ["gemma4"]', 'aliases = ["g4", "g4"]'))
    assert "listed twice" in error.message and "used by model" not in error.message
    error = error_of(GOOD.replace('aliases = ["gemma4"]', 'aliases = ["gemma-drafter"]'))
    assert "already used by model 'gemma'" in error.message  # the other model's own


def test_a_label_where_a_name_is_expected_names_the_model() -> None:
    """Issue #20 item 19: `mlxpin fetch gemma-4-31b-it` said only 'no model named'."""
    from mlxpin.config import load_settings
    from mlxpin.errors import UsageError
    from mlxpin.plan.launch import choose_model
    from mlxpin.project.selection import pick

    manifest = parse_manifest(GOOD.encode(), FILE)
    for label in ("gemma-4-31b-it", "gemma4"):
        with pytest.raises(UsageError) as picked:
            pick(manifest, [label])
        assert "that is gemma's label" in picked.value.message
        assert picked.value.hint == "use the name: gemma"
        with pytest.raises(UsageError) as chosen:
            choose_model(manifest, label, load_settings({}, cwd=Path("/")))
        assert "that is gemma's label" in chosen.value.message
