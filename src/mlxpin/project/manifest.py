"""Parse and validate manifest.toml into a frozen `Manifest` (no network, reads one file).

Every problem becomes a `ManifestError` naming the file, the line, the key and the fix.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from mlxpin.errors import ManifestError
from mlxpin.project import validate
from mlxpin.project.distributed import DISTRIBUTED_KEYS, DistributedSpec, parse_distributed
from mlxpin.project.serveropts import SERVER_OPTIONS, ServerValue, check_server_value
from mlxpin.project.tomllines import KeyLines

MANIFEST_VERSION = 1
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8080
DEFAULT_REVISION = "main"

_TOP_KEYS = ("version", "models")
_MODEL_KEYS = ("api_label", "aliases", "port", "host", "launch", "server", "distributed")
_LAUNCH_KEYS = ("repo", "path", "revision", "files", "draft", "adapter")
_HOSTNAME_RE = re.compile(
    r"(?=.{1,253}$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*"
)


@dataclass(frozen=True)
class HubSource:
    repo: str
    revision: str

    def describe(self) -> str:
        return f"{self.repo}@{self.revision}"


@dataclass(frozen=True)
class PathSource:
    written: str  # as written in the manifest (goes into the lock)
    path: Path  # absolute

    def describe(self) -> str:
        return f"path {self.written}"


Source = HubSource | PathSource


@dataclass(frozen=True)
class LaunchSpec:
    source: Source
    files: tuple[str, ...] | None  # allow-list globs; None = every file
    draft: str | None
    adapter: str | None


@dataclass(frozen=True)
class ModelSpec:
    name: str
    api_label: str
    aliases: tuple[str, ...]
    host: str
    port: int
    launch: LaunchSpec
    server: tuple[tuple[str, ServerValue], ...]
    line: int | None
    distributed: DistributedSpec | None = None  # [models.x.distributed]: ranks over hosts

    @property
    def labels(self) -> tuple[str, ...]:
        return (self.api_label, *self.aliases)


@dataclass(frozen=True)
class Manifest:
    path: Path
    models: tuple[ModelSpec, ...]

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(m.name for m in self.models)

    def get(self, name: str) -> ModelSpec | None:
        for model in self.models:
            if model.name == name:
                return model
        return None


# Keys people put in the wrong table, and where they belong.
_MISPLACED = {
    **{k: "launch" for k in _LAUNCH_KEYS},
    **{k: "server" for k in SERVER_OPTIONS},
    **{k: "distributed" for k in DISTRIBUTED_KEYS},
}


class _Checker:
    def __init__(self, path: Path, lines: KeyLines) -> None:
        self.path = path
        self.lines = lines

    def fail(self, keys: tuple[str, ...], problem: str, fix: str | None = None) -> ManifestError:
        dotted = ".".join(_toml_key(k) for k in keys) if keys else None
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
            fix = _did_you_mean(key, allowed)
            home = _MISPLACED.get(key)
            if home and keys and keys[0] == "models" and len(keys) == 2:
                fix = f"`{key}` belongs in [models.{keys[1]}.{home}]"
            elif key in ("model", "name", "repo_id", "model_id"):
                fix = "put the label clients send in `api_label`, and the Hub repo in `launch.repo`"
            raise self.fail((*keys, key), f"unknown key in {where}", fix)

    def string(self, value: object, keys: tuple[str, ...]) -> str:
        if not isinstance(value, str):
            raise self.fail(keys, f"must be a string, not {_type_name(value)}")
        return value


def _toml_key(key: str) -> str:
    return key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else '"' + key.replace('"', '\\"') + '"'


def _type_name(value: object) -> str:
    return {
        bool: "a boolean",
        int: "an integer",
        float: "a number",
        str: "a string",
        list: "an array",
        dict: "a table",
    }.get(type(value), type(value).__name__)


def _did_you_mean(key: str, allowed: tuple[str, ...]) -> str:
    import difflib  # errors only

    close = difflib.get_close_matches(key, allowed, n=1, cutoff=0.6)
    if close:
        return f"did you mean `{close[0]}`?"
    return "allowed keys: " + ", ".join(allowed)


Parser = Literal["tomlkit", "tomllib"]


def load_manifest(path: Path, parser: Parser = "tomlkit") -> Manifest:
    """Read and validate a manifest. `parser="tomllib"` is the fast reader for the boot
    path; both readers accept the same documents (a property test holds them to it)."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ManifestError(
            path,
            None,
            None,
            "no manifest here",
            "create one with `mlxpin init`, or point at it with --manifest or MLXPIN_MANIFEST",
        ) from None
    except OSError as exc:
        raise ManifestError(path, None, None, f"cannot read it: {exc.strerror}") from None
    return parse_manifest(data, path, parser)


def parse_manifest(data: bytes, path: Path, parser: Parser = "tomlkit") -> Manifest:
    """Bytes → Manifest, or a ManifestError. Never anything else."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise ManifestError(path, line, None, "is not valid UTF-8") from None
    document = _parse_tomllib(text, path) if parser == "tomllib" else _parse_tomlkit(text, path)
    return _build(document, path, KeyLines(text))


def _parse_tomlkit(text: str, path: Path) -> dict[str, Any]:
    import tomlkit
    import tomlkit.exceptions

    try:
        document: dict[str, Any] = tomlkit.parse(text).unwrap()
    except tomlkit.exceptions.ParseError as exc:
        reason = re.sub(r" at line \d+ col \d+$", "", str(exc))
        raise ManifestError(path, exc.line, None, f"TOML syntax error: {reason}") from None
    except (tomlkit.exceptions.TOMLKitError, ValueError, TypeError, IndexError) as exc:
        raise ManifestError(path, None, None, f"TOML error: {exc}") from None
    return document


def _parse_tomllib(text: str, path: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        match = re.search(r"\(at line (\d+), column \d+\)$", str(exc))
        reason = re.sub(r" \(at line \d+, column \d+\)$|\(at end of document\)$", "", str(exc))
        line = int(match.group(1)) if match else None
        raise ManifestError(path, line, None, f"TOML syntax error: {reason.strip()}") from None


def _build(document: Mapping[str, Any], path: Path, lines: KeyLines) -> Manifest:
    check = _Checker(path, lines)
    check.known_keys(document, (), _TOP_KEYS)
    version = document.get("version", MANIFEST_VERSION)
    if isinstance(version, bool) or version != MANIFEST_VERSION:
        raise check.fail(
            ("version",), f"unsupported manifest version {version!r}", "write version = 1"
        )
    models_table = check.table(document.get("models", {}), ("models",))
    if not models_table:
        raise check.fail(
            ("models",),
            "declares no models",
            'add one, e.g. [models.gemma] api_label = "gemma-4-31b-it" and '
            '[models.gemma.launch] repo = "mlx-community/gemma-4-31b-it-4bit"',
        )
    models = tuple(
        _build_model(check, name, value, path.parent) for name, value in models_table.items()
    )
    explicit_ports = {
        name for name, value in models_table.items() if isinstance(value, dict) and "port" in value
    }
    _check_cross_references(check, models, explicit_ports)
    return Manifest(path=path, models=models)


def _build_model(check: _Checker, name: str, value: object, base: Path) -> ModelSpec:
    keys = ("models", name)
    if not validate.NAME_RE.fullmatch(name):
        raise check.fail(
            keys,
            "model names must be lowercase letters, digits, '.', '_' or '-' (at most 64), "
            "starting and ending with a letter or digit",
            "rename the table, e.g. [models.gemma]; the label clients send goes in api_label",
        )
    table = check.table(value, keys)
    check.known_keys(table, keys, _MODEL_KEYS)
    if "api_label" not in table:
        raise check.fail(
            keys,
            "missing api_label",
            f'add api_label = "..." to [models.{name}]: the exact string clients send as "model"',
        )
    api_label = _label(check, table["api_label"], (*keys, "api_label"))
    aliases_raw = table.get("aliases", [])
    if not isinstance(aliases_raw, list):
        raise check.fail(
            (*keys, "aliases"), "must be an array of strings", 'e.g. aliases = ["gemma4"]'
        )
    aliases = tuple(_label(check, a, (*keys, "aliases")) for a in aliases_raw)
    host = _host(check, table.get("host", DEFAULT_HOST), (*keys, "host"))
    port = _port(check, table.get("port", DEFAULT_PORT), (*keys, "port"))
    if "launch" not in table:
        raise check.fail(
            keys,
            "missing [launch] table",
            f'add [models.{name}.launch] with repo = "owner/name" (or path = "./dir")',
        )
    launch = _launch(check, table["launch"], (*keys, "launch"), base)
    server = _server(check, table.get("server", {}), (*keys, "server"))
    distributed = None
    if "distributed" in table:
        distributed = parse_distributed(check, table["distributed"], (*keys, "distributed"), base)
        for role in ("draft", "adapter"):
            if getattr(launch, role) is not None:
                raise check.fail(
                    (*keys, "launch", role),
                    f"a distributed model cannot have a {role} "
                    "(mlx_lm.server refuses them in distributed mode)",
                    f"remove `{role}`, or remove [models.{name}.distributed]",
                )
    return ModelSpec(
        name=name,
        api_label=api_label,
        aliases=aliases,
        host=host,
        port=port,
        launch=launch,
        server=server,
        line=check.lines.line_of(keys),
        distributed=distributed,
    )


def _label(check: _Checker, value: object, keys: tuple[str, ...]) -> str:
    label = check.string(value, keys)
    problem = validate.label_problem(label)
    if problem:
        raise check.fail(
            keys, f"label {label!r} {problem}", "use a short printable name such as gemma-4-31b-it"
        )
    return label


def _host(check: _Checker, value: object, keys: tuple[str, ...]) -> str:
    host = check.string(value, keys)
    if host in ("127.0.0.1", "::1", "localhost", "0.0.0.0"):  # noqa: S104 (validated, not bound here)
        return host
    import ipaddress

    try:
        ipaddress.ip_address(host)
    except ValueError:
        if not _HOSTNAME_RE.fullmatch(host):
            raise check.fail(
                keys, f"{host!r} is not an IP address or host name", 'e.g. host = "127.0.0.1"'
            ) from None
    return host


def _port(check: _Checker, value: object, keys: tuple[str, ...]) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
        raise check.fail(
            keys,
            f"{value!r} is not a port number",
            "use an integer from 1 to 65535, e.g. port = 8080",
        )
    return value


def _launch(check: _Checker, value: object, keys: tuple[str, ...], base: Path) -> LaunchSpec:
    table = check.table(value, keys)
    check.known_keys(table, keys, _LAUNCH_KEYS)
    if ("repo" in table) == ("path" in table):
        raise check.fail(
            keys,
            "needs exactly one of `repo` (a Hub repo id) or `path` (a local directory)",
            'e.g. repo = "mlx-community/gemma-4-31b-it-4bit"  or  path = "./models/tiny"',
        )
    source: Source
    if "repo" in table:
        repo = _repo(check, table["repo"], (*keys, "repo"))
        revision = check.string(table.get("revision", DEFAULT_REVISION), (*keys, "revision"))
        problem = validate.revision_problem(revision)
        if problem:
            raise check.fail(
                (*keys, "revision"),
                f"revision {revision!r} {problem}",
                'write a branch, a tag or a full 40-hex commit, e.g. revision = "main"',
            )
        source = HubSource(repo=repo, revision=revision)
    else:
        if "revision" in table:
            raise check.fail(
                (*keys, "revision"),
                "a local `path` has no revision",
                "remove `revision`, or use `repo` for a Hub source",
            )
        written = check.string(table["path"], (*keys, "path"))
        if not written or "\0" in written:
            raise check.fail((*keys, "path"), "must be a non-empty directory path")
        try:
            expanded = Path(written).expanduser()
        except RuntimeError:
            raise check.fail(
                (*keys, "path"), f"cannot expand the home directory in {written!r}"
            ) from None
        source = PathSource(written=written, path=(base / expanded).absolute())
    files = _files(check, table.get("files"), (*keys, "files"))
    draft = _reference(check, table.get("draft"), (*keys, "draft"))
    adapter = _reference(check, table.get("adapter"), (*keys, "adapter"))
    return LaunchSpec(source=source, files=files, draft=draft, adapter=adapter)


def _repo(check: _Checker, value: object, keys: tuple[str, ...]) -> str:
    repo = check.string(value, keys)
    problem = validate.repo_id_problem(repo)
    if problem is None:
        return repo
    if validate.looks_like_local_path(repo) or repo.count("/") > 1:
        raise check.fail(
            keys,
            f"{repo!r} looks like a local directory, not a Hub repo id",
            f'write path = "{repo}" instead of repo',
        )
    if problem == "has no owner":
        raise check.fail(
            keys,
            f"{repo!r} is a bare name: a Hub launch id needs an owner",
            f'write the full repo id, e.g. repo = "mlx-community/{repo}"; the name clients '
            f'send belongs in api_label (api_label = "{repo}")',
        )
    raise check.fail(
        keys,
        f"repo id {repo!r} {problem}",
        'write it as owner/name, e.g. "mlx-community/gemma-4-31b-it-4bit"',
    )


def _files(check: _Checker, value: object, keys: tuple[str, ...]) -> tuple[str, ...] | None:
    if value is None:
        return None
    if not isinstance(value, list) or not value:
        raise check.fail(
            keys,
            "must be a non-empty array of glob patterns",
            'e.g. files = ["*.json", "*.safetensors"]; leave it out to take every file',
        )
    patterns: list[str] = []
    for item in value:
        pattern = check.string(item, keys)
        problem = validate.pattern_problem(pattern)
        if problem:
            raise check.fail(keys, f"pattern {pattern!r} {problem}")
        patterns.append(pattern)
    return tuple(patterns)


def _reference(check: _Checker, value: object, keys: tuple[str, ...]) -> str | None:
    if value is None:
        return None
    name = check.string(value, keys)
    if not name:
        raise check.fail(keys, "must name another model of this manifest")
    return name


def _server(
    check: _Checker, value: object, keys: tuple[str, ...]
) -> tuple[tuple[str, ServerValue], ...]:
    table = check.table(value, keys)
    allowed = tuple(SERVER_OPTIONS)
    options: list[tuple[str, ServerValue]] = []
    for key, raw in table.items():
        if key not in SERVER_OPTIONS:
            fix = _did_you_mean(key, allowed)
            if key in ("model", "host", "port", "adapter_path", "draft_model"):
                fix = f"`{key}` is set by mlxpin itself (see [models.x] and [models.x.launch])"
            elif key == "pipeline":
                fix = f"`pipeline` belongs in [models.{keys[1]}.distributed] (mlxpin passes it)"
            raise check.fail((*keys, key), "not a supported mlx_lm.server option", fix)
        normalised, problem = check_server_value(key, raw)
        if problem or normalised is None:
            raise check.fail(
                (*keys, key),
                problem or "invalid value",
                f"--{key.replace('_', '-')}: {SERVER_OPTIONS[key].help}",
            )
        options.append((key, normalised))
    return tuple(sorted(options, key=lambda item: item[0]))


def _check_cross_references(
    check: _Checker, models: tuple[ModelSpec, ...], explicit_ports: set[str]
) -> None:
    names = {m.name for m in models}
    owner_of_label: dict[str, str] = {}
    owner_of_port: dict[tuple[str, int], str] = {}
    for model in models:
        for index, label in enumerate(model.labels):
            key = "api_label" if index == 0 else "aliases"
            other = owner_of_label.get(label)
            if other is not None:
                raise check.fail(
                    ("models", model.name, key),
                    f"label {label!r} is already used by model {other!r}",
                    "every api_label and alias must be unique across the manifest",
                )
            owner_of_label[label] = model.name
        endpoint = (model.host, model.port)
        if model.name not in explicit_ports:
            pass  # a default port may be shared by models never launched together
        elif endpoint in owner_of_port:
            raise check.fail(
                ("models", model.name, "port"),
                f"{model.host}:{model.port} is already the endpoint of "
                f"model {owner_of_port[endpoint]!r}",
                "give each model its own port",
            )
        else:
            owner_of_port[endpoint] = model.name
        for role in ("draft", "adapter"):
            target = getattr(model.launch, role)
            if target is None:
                continue
            keys = ("models", model.name, "launch", role)
            if target == model.name:
                raise check.fail(keys, "a model cannot be its own " + role)
            if target not in names:
                raise check.fail(
                    keys,
                    f"no model named {target!r} in this manifest",
                    _did_you_mean(target, tuple(sorted(names))),
                )
