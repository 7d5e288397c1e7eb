"""Parse and validate manifest.toml into a frozen `Manifest` (no network, reads one file).

Every problem becomes a `ManifestError` naming the file, the line, the key and the fix.
"""

from __future__ import annotations

import math
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from mlxpin.errors import Flag, ManifestError, Run
from mlxpin.project import engines, validate
from mlxpin.project.checker import Checker, did_you_mean
from mlxpin.project.memory import Budget, parse_budget, parse_size
from mlxpin.project.tomllines import KeyLines, nesting_problem
from mlxpin.project.validate import is_ip

if TYPE_CHECKING:  # [distributed], [runtime], [build], [server]: read only where given
    from mlxpin.project.distributed import DistributedSpec
    from mlxpin.project.recipe import BuildSpec
    from mlxpin.project.runtimespec import RuntimeSpec
    from mlxpin.project.serveropts import ServerValue

MANIFEST_VERSION = 1
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8080
DEFAULT_REVISION = "main"

_TOP_KEYS = ("version", "models", "serve", "runtime", "engines")
_MODEL_KEYS = (
    "api_label",
    "aliases",
    "port",
    "host",
    "launch",
    "server",
    "gateway",
    "idle_ttl",
    "distributed",
    "engine",
    "role",
    "build",
)
DEFAULT_START_TIMEOUT = 120.0
DEFAULT_BUDGET = Budget()
_LAUNCH_KEYS = ("repo", "path", "revision", "files", "draft", "adapter")
# Names that are files of lock/ other than model locks (lock/runtime.toml).
RESERVED_NAMES = ("runtime",)
# A pattern, compiled (and kept by `re`) on the first host other than the default.
_HOST_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_HOSTNAME = rf"(?=.{{1,253}}$){_HOST_LABEL}(?:\.{_HOST_LABEL})*"


@dataclass(frozen=True)
class HubSource:
    """A model from a Hub repo at a revision."""

    repo: str
    revision: str
    built: ClassVar[bool] = False

    def describe(self) -> str:
        return f"{self.repo}@{self.revision}"


@dataclass(frozen=True)
class PathSource:
    """A model from a local directory."""

    written: str  # as written in the manifest (goes into the lock)
    path: Path  # absolute
    built: ClassVar[bool] = False

    def describe(self) -> str:
        return f"path {self.written}"


if TYPE_CHECKING:
    Source = HubSource | PathSource | BuildSpec  # a built model's source is its recipe


@dataclass(frozen=True)
class LaunchSpec:
    """[models.x.launch]: where the weights come from, and which of them."""

    source: Source
    files: tuple[str, ...] | None  # allow-list globs; None = every file
    draft: str | None
    adapter: str | None


@dataclass(frozen=True)
class GatewaySpec:
    """[models.X.gateway]: what the gateway allows this model's clients."""

    request_timeout: float = 600.0  # seconds of silence from the server before a 504
    max_body: int = 8 * 1024 * 1024  # largest request body in bytes (inline images count)
    max_connections: int = 1000  # client connections at once; past it, new ones get 503
    header_timeout: float = 10.0  # seconds a new connection has to send its request head


@dataclass(frozen=True)
class ModelIdentity:
    """Who a model is, wherever it is described (its spec, its launch plan, its status):
    its name in the manifest, the label clients send, and the other labels accepted."""

    name: str
    api_label: str
    aliases: tuple[str, ...]

    @property
    def labels(self) -> tuple[str, ...]:
        return (self.api_label, *self.aliases)


@dataclass(frozen=True)
class ModelSpec(ModelIdentity):
    """One [models.x] table, checked."""

    host: str
    port: int
    launch: LaunchSpec
    server: tuple[tuple[str, ServerValue], ...]
    gateway: GatewaySpec = field(default_factory=GatewaySpec)
    idle_ttl: float | None = None  # `serve`: this model's own idle TTL (None: [serve]'s)
    distributed: DistributedSpec | None = None  # [models.x.distributed]: ranks over hosts
    engine: str = engines.MLX_LM  # which server program runs it (project.engines)
    role: str = "chat"  # what it serves: chat, embedding, transcription, speech, rerank


@dataclass(frozen=True)
class ServeTable:
    """The top-level [serve] table: one gateway for many models (`mlxpin serve`)."""

    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    max_loaded: int | None = None  # None: no limit on the number of servers
    memory_budget: Budget = DEFAULT_BUDGET  # 75 % of physical memory
    idle_ttl: float = 0.0  # seconds; 0 = never stop an idle model
    start_timeout: float = DEFAULT_START_TIMEOUT  # the longest a request waits for a start
    preload: tuple[str, ...] = ()


DEFAULT_SERVE = ServeTable()
_GATEWAY_KEYS = tuple(f.name for f in fields(GatewaySpec))
_SERVE_KEYS = tuple(f.name for f in fields(ServeTable))


@dataclass(frozen=True)
class Manifest:
    """manifest.toml, checked: the models, [serve], [runtime] and [engines]."""

    path: Path
    models: tuple[ModelSpec, ...]
    serve: ServeTable = DEFAULT_SERVE
    runtime: RuntimeSpec | None = None
    engines: tuple[RuntimeSpec, ...] = ()  # [engines.<engine>]: other engines' runtimes

    def engine_runtime(self, engine: str) -> RuntimeSpec | None:
        """The pinned runtime spec of ``engine`` (mlx-lm's is [runtime])."""
        if engine == engines.MLX_LM:
            return self.runtime
        return next((spec for spec in self.engines if spec.server == engine), None)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(m.name for m in self.models)

    def get(self, name: str) -> ModelSpec | None:
        for model in self.models:
            if model.name == name:
                return model
        return None


def _misplaced() -> dict[str, str]:
    """Keys people put in the wrong table, and where they belong (asked on errors only)."""
    from mlxpin.project.distributed import DISTRIBUTED_KEYS
    from mlxpin.project.recipe import KEYS
    from mlxpin.project.serveropts import SERVER_OPTIONS

    return {
        **{k: "build" for k in KEYS},
        **{k: "launch" for k in _LAUNCH_KEYS},
        **{k: "server" for k in SERVER_OPTIONS},
        **{k: "gateway" for k in _GATEWAY_KEYS},
        **{k: "distributed" for k in DISTRIBUTED_KEYS},
    }


def load_manifest(path: Path) -> Manifest:
    """Read and validate a manifest."""
    return parse_text(read_text(path), path)


def read_text(path: Path) -> str:
    """The manifest's text, or the ManifestError saying why there is none."""
    try:
        return _decode(path.read_bytes(), path)
    except FileNotFoundError:
        raise ManifestError(
            path,
            None,
            None,
            "no manifest here",
            f"create one with {Run.of('init')}, or point at it with {Flag('', '--manifest')} "
            "or MLXPIN_MANIFEST",
        ) from None
    except OSError as exc:
        raise ManifestError(path, None, None, f"cannot read it: {exc.strerror}") from None


def parse_manifest(data: bytes, path: Path) -> Manifest:
    """Bytes → Manifest, or a ManifestError. Never anything else."""
    return parse_text(_decode(data, path), path)


def parse_text(text: str, path: Path) -> Manifest:
    return _build(read_toml(text, path), path, KeyLines(text))


def _decode(data: bytes, path: Path) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise ManifestError(path, line, None, "is not valid UTF-8") from None


def read_toml(text: str, path: Path) -> dict[str, Any]:
    """TOML text → data, or a ManifestError at file:line. Nesting is limited first, so
    tomllib (which recurses) never runs out of stack."""
    too_deep = nesting_problem(text)
    if too_deep is not None:
        deep_line, problem = too_deep
        raise ManifestError(path, deep_line, None, problem, "a manifest needs only a few levels")
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        match = re.search(r"\(at line (\d+), column \d+\)$", str(exc))
        reason = re.sub(r" \(at line \d+, column \d+\)$|\(at end of document\)$", "", str(exc))
        line = int(match.group(1)) if match else None
        raise ManifestError(path, line, None, f"TOML syntax error: {reason.strip()}") from None
    except RecursionError:  # the check above makes this unreachable; never a traceback
        raise ManifestError(path, None, None, "TOML document nested too deeply") from None


def _build(document: Mapping[str, Any], path: Path, lines: KeyLines) -> Manifest:
    check = Checker(path, lines, _misplaced)
    check.known_keys(document, (), _TOP_KEYS)
    version = document.get("version", MANIFEST_VERSION)
    if type(version) is not int or version != MANIFEST_VERSION:  # not 1.0, not true
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
    serve = _serve_table(check, document.get("serve", {}), models)
    if "runtime" not in document and "engines" not in document:
        return Manifest(path=path, models=models, serve=serve)
    from mlxpin.project.runtimespec import parse_runtime  # only manifests that pin one

    runtime = parse_runtime(check, document["runtime"]) if "runtime" in document else None
    pinned = check.table(document.get("engines", {}), ("engines",))
    for name in pinned:
        if name not in engines.ENGINES[1:]:
            fix = "[runtime] pins mlx-lm" if name == engines.MLX_LM else "one of: mlx-vlm"
            raise check.fail(("engines", name), f"no engine {name!r} to pin here", fix)
    runtimes = tuple(parse_runtime(check, v, ("engines", k), k) for k, v in pinned.items())
    return Manifest(path=path, models=models, serve=serve, runtime=runtime, engines=runtimes)


def _build_model(check: Checker, name: str, value: object, base: Path) -> ModelSpec:
    keys = ("models", name)
    if not validate.NAME_RE.fullmatch(name):
        raise check.fail(
            keys,
            "model names must be lowercase letters, digits, '.', '_' or '-' (at most 64), "
            "starting and ending with a letter or digit",
            "rename the table, e.g. [models.gemma]; the label clients send goes in api_label",
        )
    if name in RESERVED_NAMES:
        raise check.fail(
            keys,
            f"the model name {name!r} is reserved (lock/{name}.toml pins the server runtime)",
            "rename the table, e.g. [models.my-model]",
        )
    table = check.table(value, keys)
    check.known_keys(table, keys, _MODEL_KEYS)
    label_fix = (
        f'add api_label = "..." to [models.{name}]: the exact string clients send as "model"'
    )
    raw_label = check.require(table, keys, "api_label", "missing api_label", label_fix)
    api_label = _label(check, raw_label, (*keys, "api_label"))
    where, fix = (*keys, "aliases"), 'e.g. aliases = ["gemma4"]'
    aliases_raw = check.array(table.get("aliases", []), where, "must be an array of strings", fix)
    aliases = tuple(_label(check, a, where) for a in aliases_raw)
    host = _host(check, table.get("host", DEFAULT_HOST), (*keys, "host"))
    port = _port(check, table.get("port", DEFAULT_PORT), (*keys, "port"))
    if "build" in table:
        if "launch" in table:
            raise check.fail(
                (*keys, "launch"),
                "a built model has no [launch]: its files are what its build makes",
                f"remove [models.{name}.launch], or remove [models.{name}.build]",
            )
        from mlxpin.project.recipe import parse_build

        built = parse_build(check, table["build"], (*keys, "build"))
        launch = LaunchSpec(source=built, files=None, draft=None, adapter=None)
    else:
        launch_fix = (
            f'add [models.{name}.launch] with repo = "owner/name" (or path = "./dir"), '
            f"or [models.{name}.build] to derive it from another model"
        )
        raw_launch = check.require(table, keys, "launch", "missing [launch] table", launch_fix)
        launch = _launch(check, raw_launch, (*keys, "launch"), base)
    engine, role = _engine(check, table, keys)
    server = _server(check, table.get("server", {}), (*keys, "server"), engine)
    if engine != engines.MLX_LM:
        why = f"engine {engine!r} cannot have a {{}} (only mlx-lm serves them)"
        _refuse_parts(check, keys, launch, why, 'use engine = "mlx-lm"')
        if "distributed" in table:
            raise check.fail((*keys, "distributed"), "only mlx-lm models can be distributed")
    distributed = None
    if "distributed" in table:
        from mlxpin.project.distributed import parse_distributed

        distributed = parse_distributed(check, table["distributed"], (*keys, "distributed"), base)
        why = (
            "a distributed model cannot have a {} (mlx_lm.server refuses them in distributed mode)"
        )
        _refuse_parts(check, keys, launch, why, f"remove [models.{name}.distributed]")
    gateway = _gateway(check, table.get("gateway", {}), (*keys, "gateway"))
    idle_ttl = None
    if "idle_ttl" in table:
        idle_ttl = _seconds(check, table["idle_ttl"], (*keys, "idle_ttl"), allow_zero=True)
    return ModelSpec(
        name,
        api_label,
        aliases,
        host,
        port,
        launch,
        server,
        gateway,
        idle_ttl,
        distributed,
        engine,
        role,
    )


def _refuse_parts(
    check: Checker, keys: tuple[str, ...], launch: LaunchSpec, why: str, fix: str
) -> None:
    """A draft or an adapter where the model cannot take one."""
    for part in ("draft", "adapter"):
        if getattr(launch, part) is not None:
            raise check.fail(
                (*keys, "launch", part), why.format(part), f"remove `{part}`, or {fix}"
            )


def _engine(check: Checker, table: Mapping[str, Any], keys: tuple[str, ...]) -> tuple[str, str]:
    engine = check.string(table.get("engine", engines.MLX_LM), (*keys, "engine"))
    if engine not in engines.ENGINES:
        raise check.fail(
            (*keys, "engine"), f"unknown engine {engine!r}", did_you_mean(engine, engines.ENGINES)
        )
    role = check.string(table.get("role", "chat"), (*keys, "role"))
    if role not in engines.ROLES:
        raise check.fail(
            (*keys, "role"), f"unknown role {role!r}", "one of: " + ", ".join(engines.ROLES)
        )
    if not engines.endpoints(engine, role):
        raise check.fail(
            (*keys, "role"),
            f"engine {engine!r} serves only chat",
            'use engine = "mlx-vlm" for embedding, transcription, speech and rerank models',
        )
    return engine, role


def _label(check: Checker, value: object, keys: tuple[str, ...]) -> str:
    label = check.string(value, keys)
    fix = "use a short printable name such as gemma-4-31b-it"
    check.refuse(keys, validate.label_problem(label), f"label {label!r} ", fix)
    return label


def _host(check: Checker, value: object, keys: tuple[str, ...]) -> str:
    host = check.string(value, keys)
    if host == DEFAULT_HOST:
        return host
    if not re.fullmatch(_HOSTNAME, host) and not is_ip(host):  # names first: no ipaddress import
        raise check.fail(
            keys, f"{host!r} is not an IP address or host name", 'e.g. host = "127.0.0.1"'
        )
    return host


def _port(check: Checker, value: object, keys: tuple[str, ...]) -> int:
    fix = "use an integer from 1 to 65535, e.g. port = 8080"
    return int(check.number(value, keys, "a port number", fix, within=(0, 65536)))


def _launch(check: Checker, value: object, keys: tuple[str, ...], base: Path) -> LaunchSpec:
    table = check.table(value, keys)
    check.known_keys(table, keys, _LAUNCH_KEYS)
    source_fix = 'e.g. repo = "mlx-community/gemma-4-31b-it-4bit"  or  path = "./models/tiny"'
    which = check.exactly_one(
        table, keys, ("repo", "a Hub repo id"), ("path", "a local directory"), fix=source_fix
    )
    source: Source
    if which == "repo":
        repo = _repo(check, table["repo"], (*keys, "repo"))
        revision = check.string(table.get("revision", DEFAULT_REVISION), (*keys, "revision"))
        fix = 'write a branch, a tag or a full 40-hex commit, e.g. revision = "main"'
        problem = validate.revision_problem(revision)
        check.refuse((*keys, "revision"), problem, f"revision {revision!r} ", fix)
        source = HubSource(repo=repo, revision=revision)
    else:
        if "revision" in table:
            raise check.fail(
                (*keys, "revision"),
                "a local `path` has no revision",
                "remove `revision`, or use `repo` for a Hub source",
            )
        problem = "must be a non-empty directory path"
        written, absolute = check.local_path(table["path"], (*keys, "path"), problem, base)
        source = PathSource(written=written, path=absolute)
    files = _files(check, table.get("files"), (*keys, "files"))
    draft = _reference(check, table.get("draft"), (*keys, "draft"))
    adapter = _reference(check, table.get("adapter"), (*keys, "adapter"))
    return LaunchSpec(source=source, files=files, draft=draft, adapter=adapter)


def _repo(check: Checker, value: object, keys: tuple[str, ...]) -> str:
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


def _files(check: Checker, value: object, keys: tuple[str, ...]) -> tuple[str, ...] | None:
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
        check.refuse(keys, validate.pattern_problem(pattern), f"pattern {pattern!r} ")
        patterns.append(pattern)
    return tuple(patterns)


def _reference(check: Checker, value: object, keys: tuple[str, ...]) -> str | None:
    if value is None:
        return None
    name = check.string(value, keys)
    if not name:
        raise check.fail(keys, "must name another model of this manifest")
    return name


def _server(
    check: Checker, value: object, keys: tuple[str, ...], engine: str
) -> tuple[tuple[str, ServerValue], ...]:
    table = check.table(value, keys)
    if not table:
        return ()
    from mlxpin.project.serveropts import SERVER_TABLES, check_server_value  # [server] only

    known = SERVER_TABLES[engine]
    allowed = tuple(known)
    options: list[tuple[str, ServerValue]] = []
    for key, raw in table.items():
        if key not in known:
            fix = did_you_mean(key, allowed)
            if key in ("model", "host", "port", "adapter_path", "draft_model"):
                fix = f"`{key}` is set by mlxpin itself (see [models.x] and [models.x.launch])"
            elif key == "pipeline":
                fix = f"`pipeline` belongs in [models.{keys[1]}.distributed] (mlxpin passes it)"
            server = "mlx_lm.server" if engine == engines.MLX_LM else "mlx_vlm.server"
            raise check.fail((*keys, key), f"not a supported {server} option", fix)
        normalised, problem = check_server_value(key, raw, known)
        if problem or normalised is None:
            raise check.fail(
                (*keys, key),
                problem or "invalid value",
                f"--{key.replace('_', '-')}: {known[key].help}",
            )
        options.append((key, normalised))
    return tuple(sorted(options, key=lambda item: item[0]))


def _gateway(check: Checker, value: object, keys: tuple[str, ...]) -> GatewaySpec:
    table = check.table(value, keys)
    check.known_keys(table, keys, _GATEWAY_KEYS)
    found: dict[str, Any] = {}
    for key in ("request_timeout", "header_timeout", "max_connections", "max_body"):
        if key not in table:
            continue
        raw, where = table[key], (*keys, key)
        if key == "max_body":
            found[key] = _size(check, raw, where)
        elif key == "max_connections":
            found[key] = check.number(
                raw, where, "a positive integer", "e.g. max_connections = 1000", (0, 10**7)
            )
        else:
            seconds = "a positive number of seconds"
            found[key] = float(
                check.number(raw, where, seconds, f"e.g. {key} = 600", (0, 10**7), whole=False)
            )
    return GatewaySpec(**found)


def _size(check: Checker, value: object, keys: tuple[str, ...]) -> int:
    """Bytes, from an integer or a string such as "8MiB" or "20 MB" (`parse_size`)."""
    size: int | None = None
    if isinstance(value, int) and not isinstance(value, bool):
        size = value
    elif isinstance(value, str):
        size = parse_size(value)
    if size is None or not 1 <= size <= 2**40:
        raise check.fail(
            keys, f"{value!r} is not a size in bytes", 'e.g. max_body = "8MiB" or 8388608'
        )
    return size


def _check_cross_references(
    check: Checker, models: tuple[ModelSpec, ...], explicit_ports: set[str]
) -> None:
    names = {m.name for m in models}
    owner_of_label: dict[str, tuple[str, str]] = {}  # label_key -> (model, label)
    owner_of_port: dict[tuple[str, int], str] = {}
    for model in models:
        for index, label in enumerate(model.labels):
            key = "api_label" if index == 0 else "aliases"
            other, seen = owner_of_label.get(validate.label_key(label), (None, label))
            alike = "" if seen == label else f" (looks the same as {seen!r})"
            if other == model.name:
                own = seen == model.api_label
                raise check.fail(
                    ("models", model.name, key),
                    f"alias {label!r} "
                    + ("repeats this model's own api_label" if own else "is listed twice")
                    + alike,
                    "remove it from aliases: the api_label is always accepted"
                    if own
                    else "list each alias once",
                )
            if other is not None:
                raise check.fail(
                    ("models", model.name, key),
                    f"label {label!r} is already used by model {other!r}{alike}",
                    "every api_label and alias must be unique across the manifest",
                )
            owner_of_label[validate.label_key(label)] = (model.name, label)
        # A default port may be shared by models never launched together.
        endpoint = (model.host, model.port)
        if model.name in explicit_ports and endpoint in owner_of_port:
            raise check.fail(
                ("models", model.name, "port"),
                f"{model.host}:{model.port} is already the endpoint of "
                f"model {owner_of_port[endpoint]!r}",
                "give each model its own port",
            )
        if model.name in explicit_ports:
            owner_of_port[endpoint] = model.name
        if model.launch.source.built:
            _check_build_inputs(check, model.name, model.launch.source, models)
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
                    did_you_mean(target, tuple(sorted(names))),
                )


def _check_build_inputs(
    check: Checker, name: str, build: Source, models: tuple[ModelSpec, ...]
) -> None:
    """`from` and `adapter` name other models, and following `from` never comes back."""
    from mlxpin.project.recipe import BuildSpec

    assert isinstance(build, BuildSpec)
    by_name = {m.name: m for m in models}
    for key, target in zip(("from", "adapter"), build.inputs, strict=False):
        keys = ("models", name, "build", key)
        if target == name:
            raise check.fail(keys, f"a model cannot be built from itself ({key} = {target!r})")
        if target not in by_name:
            raise check.fail(
                keys,
                f"no model named {target!r} in this manifest",
                did_you_mean(target, tuple(sorted(by_name))),
            )
    seen = [name, build.source]
    source = by_name[build.source].launch.source
    while isinstance(source, BuildSpec) and source.source in by_name:
        if source.source in seen:
            chain = " → ".join([*seen, source.source])
            raise check.fail(
                ("models", name, "build", "from"),
                f"builds go round in a circle: {chain}",
                "one model of the circle must come from a repo or a path",
            )
        seen.append(source.source)
        source = by_name[source.source].launch.source


def _seconds(check: Checker, value: object, keys: tuple[str, ...], *, allow_zero: bool) -> float:
    least = "0" if allow_zero else "more than 0"
    if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value):
        raise check.fail(
            keys, f"{value!r} is not a number of seconds", f"use a number, {least} or more"
        )
    if value < 0 or (value == 0 and not allow_zero) or value == float("inf"):
        raise check.fail(
            keys,
            f"{value!r} is not a valid number of seconds",
            "use 0 for never" if allow_zero else "use a positive number, e.g. 120",
        )
    return float(value)


def _serve_table(check: Checker, value: object, models: tuple[ModelSpec, ...]) -> ServeTable:
    keys = ("serve",)
    table = check.table(value, keys)
    check.known_keys(table, keys, _SERVE_KEYS)
    max_loaded: int | None = None
    if "max_loaded" in table:
        fix = "e.g. max_loaded = 2; leave it out for no limit"
        where = (*keys, "max_loaded")
        max_loaded = check.number(table["max_loaded"], where, "a positive number of servers", fix)
    budget = DEFAULT_BUDGET
    if "memory_budget" in table:
        parsed, problem = parse_budget(table["memory_budget"])
        if parsed is None:
            raise check.fail(
                (*keys, "memory_budget"),
                problem or "invalid budget",
                'e.g. memory_budget = "48GB" or "75%" (of physical memory)',
            )
        budget = parsed
    preload_raw = check.array(
        table.get("preload", []),
        (*keys, "preload"),
        "must be an array of model names",
        'e.g. preload = ["gemma"]',
    )
    names = tuple(m.name for m in models)
    preload: list[str] = []
    for item in preload_raw:
        name = check.string(item, (*keys, "preload"))
        if name not in names:
            raise check.fail(
                (*keys, "preload"),
                f"no model named {name!r} in this manifest",
                did_you_mean(name, names),
            )
        if name not in preload:
            preload.append(name)
    return ServeTable(
        host=_host(check, table.get("host", DEFAULT_HOST), (*keys, "host")),
        port=_port(check, table.get("port", DEFAULT_PORT), (*keys, "port")),
        max_loaded=max_loaded,
        memory_budget=budget,
        idle_ttl=_seconds(check, table.get("idle_ttl", 0.0), (*keys, "idle_ttl"), allow_zero=True),
        start_timeout=_seconds(
            check,
            table.get("start_timeout", DEFAULT_START_TIMEOUT),
            (*keys, "start_timeout"),
            allow_zero=False,
        ),
        preload=tuple(preload),
    )
