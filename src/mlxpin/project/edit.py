"""Edit manifest.toml without disturbing the person who wrote it: `add`, `remove`, `init`.

Every byte outside the edited model stays as it was:

- `add` appends the model's tables at the end of the file (one blank separator line),
  rendered by tomlkit; nothing before them changes.
- `remove` deletes the model's block: from the comment lines directly above its first
  table header (no blank line between) to its last value line and the comment lines
  directly below it, plus one blank separator line. Comment blocks set apart by blank
  lines after the block, and the comments directly above the next table, belong to no
  table or to that one, and stay. Tables of the model that are not adjacent are removed
  the same way, each on its own.

Both check the result twice before writing: tomlkit must read it as exactly the old
document plus/minus that model (so a layout the line scanner misread is refused, not
corrupted), and `mlxpin.project.manifest.parse_manifest` must accept it (so a bare repo id is
refused with the manifest's own error). Writes are atomic, keep the file's mode, go
through a symlinked manifest to its target, and keep CRLF line endings.
"""

from __future__ import annotations

import copy
import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tomlkit
import tomlkit.exceptions

from mlxpin.config import STATE_DIR_HINT, Settings
from mlxpin.errors import ConfigError, Flag, ManifestError, Run, UsageError
from mlxpin.project.lockfile import lock_path
from mlxpin.project.manifest import (
    DEFAULT_PORT,
    DEFAULT_REVISION,
    Manifest,
    check_nesting,
    load_manifest,
    parse_manifest,
)
from mlxpin.project.tomllines import scan_lines
from mlxpin.util.atomic import hold_mutex, write_atomic
from mlxpin.util.writable import require_writable_dir


class EditError(ConfigError):
    """The manifest's layout is one the editor cannot change safely; nothing was written."""

    kind = "manifest_edit"


@dataclass(frozen=True)
class NewModel:
    name: str
    api_label: str
    port: int
    repo: str | None = None
    path: str | None = None
    revision: str | None = None
    files: tuple[str, ...] | None = None


# --- pure text edits ------------------------------------------------------------------------


def newline_of(text: str) -> str:
    return "\r\n" if "\r\n" in text else "\n"


def render_model(model: NewModel) -> str:
    """The model's tables as TOML (rendered by tomlkit, so every value is quoted right)."""
    entry = tomlkit.table()
    entry["api_label"] = model.api_label
    entry["port"] = model.port
    launch = tomlkit.table()
    if model.repo is not None:
        launch["repo"] = model.repo
        launch["revision"] = model.revision or DEFAULT_REVISION
    if model.path is not None:
        launch["path"] = model.path
    if model.files is not None:
        launch["files"] = list(model.files)
    entry["launch"] = launch
    models = tomlkit.table(is_super_table=True)
    models[model.name] = entry
    document = tomlkit.document()
    document["models"] = models
    return tomlkit.dumps(document)


def _unwrap(text: str, path: Path) -> dict[str, Any]:
    check_nesting(text, path)
    try:
        return tomlkit.parse(text).unwrap()
    except (tomlkit.exceptions.TOMLKitError, ValueError, TypeError, IndexError) as exc:
        raise ManifestError(path, None, None, f"TOML error: {exc}") from None


def add_model_text(text: str, model: NewModel, path: Path) -> str:
    """`text` with the model's tables appended; `text` itself is kept byte for byte."""
    nl = newline_of(text)
    block = render_model(model).replace("\n", nl)
    out = text
    if out and not out.endswith(("\n", "\r")):
        out += nl
    lines = out.splitlines()
    if lines and lines[-1].strip():
        out += nl
    out += block
    before = _unwrap(text, path)
    expected = copy.deepcopy(before)
    models = expected.setdefault("models", {})
    if not isinstance(models, dict):
        raise EditError(
            f"{path}: `models` is not a table", "write each model as [models.NAME] tables"
        )
    models[model.name] = _unwrap(block, path)["models"][model.name]
    if _unwrap(out, path) != expected:
        raise EditError(
            f"{path}: appending [models.{model.name}] would change other keys of the file",
            "add the model by hand; the file's layout is one mlxpin cannot extend safely",
        )
    return out


def _headers(lines: Sequence[str]) -> list[tuple[int, tuple[str, ...]]]:
    """(line index, key path) of every table header, skipping multi-line strings."""
    return [(line.index, line.key) for line in scan_lines(lines) if line.header]


def _is_blank(line: str) -> bool:
    return not line.strip()


def _is_comment(line: str) -> bool:
    return line.strip().startswith("#")


def _preamble_start(lines: Sequence[str], header: int) -> int:
    """First line of the comment block directly above a header (no blank line between).

    A block glued to the previous table's last line (no blank line above it either) is
    that table's trailing comment, e.g. a commented-out key: it is not claimed.
    """
    start = header
    while start > 0 and _is_comment(lines[start - 1]):
        start -= 1
    if start > 0 and not _is_blank(lines[start - 1]):
        return header
    return start


def _content_end(lines: Sequence[str], start: int, end: int) -> int:
    """Pull `end` back over blank lines and over comment blocks set apart by a blank line
    (those belong to no table); a comment block right below a value stays with it."""
    while True:
        while end > start and _is_blank(lines[end - 1]):
            end -= 1
        block = end
        while block > start and _is_comment(lines[block - 1]):
            block -= 1
        if start < block < end and _is_blank(lines[block - 1]):
            end = block
            continue
        return end


def model_spans(text: str, name: str) -> list[tuple[int, int]]:
    """Line ranges [start, end) of the model's blocks, as `remove` deletes them."""
    lines = text.splitlines(keepends=True)
    headers = _headers(lines)
    spans: list[tuple[int, int]] = []
    index = 0
    while index < len(headers):
        line, key = headers[index]
        if key[:2] != ("models", name):
            index += 1
            continue
        run_end = index
        while run_end + 1 < len(headers) and headers[run_end + 1][1][:2] == ("models", name):
            run_end += 1
        start = _preamble_start(lines, line)
        if run_end + 1 < len(headers):
            end = _preamble_start(lines, headers[run_end + 1][0])
        else:
            end = len(lines)
        end = _content_end(lines, start, end)
        # One blank separator goes with the block.
        if (
            start > 0
            and _is_blank(lines[start - 1])
            and (end == len(lines) or _is_blank(lines[end]))
        ):
            start -= 1
        elif start == 0 and end < len(lines) and _is_blank(lines[end]):
            end += 1
        spans.append((start, end))
        index = run_end + 1
    return spans


def remove_model_text(text: str, name: str, path: Path) -> str:
    """`text` without the model's block; every other line kept byte for byte."""
    lines = text.splitlines(keepends=True)
    spans = model_spans(text, name)
    drop = {i for start, end in spans for i in range(start, end)}
    out = "".join(line for i, line in enumerate(lines) if i not in drop)
    expected = _unwrap(text, path)
    models = expected.get("models")
    if isinstance(models, dict):
        models.pop(name, None)
    if not spans or _without_empty_models(_unwrap(out, path)) != _without_empty_models(expected):
        raise EditError(
            f"{path}: cannot find where [models.{name}] is written in a way mlxpin can remove "
            "safely (dotted keys or inline tables?)",
            f"remove the [models.{name}] tables by hand",
        )
    return out


def _without_empty_models(document: dict[str, Any]) -> dict[str, Any]:
    if document.get("models") == {}:
        return {k: v for k, v in document.items() if k != "models"}
    return document


def used_ports(document: dict[str, Any]) -> set[int]:
    models = document.get("models")
    ports: set[int] = set()
    if not isinstance(models, dict):
        return ports
    for table in models.values():
        if isinstance(table, dict):
            port = table.get("port", DEFAULT_PORT)
            if isinstance(port, int) and not isinstance(port, bool):
                ports.add(port)
    return ports


def first_unused_manifest_port(document: dict[str, Any]) -> int:
    """The lowest port from 8080 up that no model of the manifest uses."""
    used = used_ports(document)
    port = DEFAULT_PORT
    while port in used:
        port += 1
    return port


def references_to(manifest: Manifest, name: str) -> list[str]:
    return [
        f"{model.name} (launch.{role})"
        for model in manifest.models
        for role in ("draft", "adapter")
        if getattr(model.launch, role) == name and model.name != name
    ]


# --- side effects -----------------------------------------------------------------------------


def _parse_added(new_text: str, old_lines: int, name: str, path: Path) -> Manifest:
    """Validate the manifest `add` would write. A problem in the appended tables has no
    line in the file on disk yet: it is named by its key, never by a line number."""
    try:
        return parse_manifest(new_text.encode("utf-8"), path)
    except ManifestError as error:
        if error.line is None or error.line <= old_lines:
            raise  # a line the user wrote, still where the message says
        raise ManifestError(
            path,
            None,
            error.key,
            f"{error.problem} (in the [models.{name}] tables `mlxpin add` would append; "
            "nothing was written)",
            error.hint,
        ) from None


def _manifest_mutex(settings: Settings) -> Path:
    digest = hashlib.sha256(str(settings.manifest_path).encode()).hexdigest()[:16]
    return settings.state_dir / "locks" / f"manifest-{digest}.lock"


def _read(path: Path) -> str:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        load_manifest(path)  # raises the manifest's own "no manifest here" error
        raise
    except OSError as exc:
        raise ManifestError(path, None, None, f"cannot read it: {exc.strerror}") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        parse_manifest(data, path)  # raises the manifest's own error
        raise


def _write(path: Path, text: str) -> None:
    target = path.resolve() if path.is_symlink() else path
    try:
        mode = target.stat().st_mode & 0o7777
    except OSError:
        mode = 0o644
    write_atomic(target, text.encode("utf-8"), mode=mode)


def _written_path(directory: str, manifest: Path) -> str:
    """A --path as the manifest should hold it: relative to the manifest when inside it."""
    expanded = Path(directory).expanduser()
    absolute = expanded if expanded.is_absolute() else (Path.cwd() / expanded)
    absolute = Path(os.path.normpath(absolute))
    try:
        relative = absolute.relative_to(manifest.parent)
    except ValueError:
        return str(absolute)
    return "./" + relative.as_posix() if relative.parts else "."


@dataclass(frozen=True)
class AddResult:
    name: str
    manifest: Path
    added: str  # the TOML text appended
    api_label: str
    port: int
    source: str
    warnings: tuple[str, ...]


@dataclass(frozen=True)
class AddRequest:
    """What `mlxpin add NAME` was asked, before the defaults are filled in."""

    name: str
    repo: str | None = None
    path: str | None = None
    revision: str | None = None
    label: str | None = None  # default: NAME
    port: int | None = None  # default: the lowest free one from 8080
    files: tuple[str, ...] | None = None


def add(settings: Settings, request: AddRequest) -> AddResult:
    """Append [models.NAME] (+ .launch) to the manifest, validated before it is written.

    Defaults: the api_label is NAME (clients then send the name you chose; pass --label
    for anything else), the port is the lowest one from 8080 up no other model uses.
    """
    name, repo, path, revision = request.name, request.repo, request.path, request.revision
    label, port, files = request.label, request.port, request.files
    if (repo is None) == (path is None):
        raise UsageError(
            f"{name}: a model has exactly one source, a Hub repo or a local directory",
            f"give {Flag('add', '--repo', 'owner/name')} or {Flag('add', '--path', 'DIR')}",
        )
    if path is not None and revision is not None:
        raise UsageError(
            f"{name}: a revision is for a Hub repo; a local directory has none",
            f"leave out {Flag('add', '--revision')}, or use {Flag('add', '--repo')}",
        )
    manifest_path = settings.manifest_path
    require_writable_dir(_manifest_mutex(settings).parent, STATE_DIR_HINT)
    with hold_mutex(_manifest_mutex(settings), 30.0):
        text = _read(manifest_path)
        document = _unwrap(text, manifest_path)
        models = document.get("models")
        if isinstance(models, dict) and name in models:
            raise UsageError(
                f"{manifest_path} already has a model named {name!r}",
                f"pick another name, or {Run.of('remove', name)} first",
            )
        written_path = _written_path(path, manifest_path) if path is not None else None
        model = NewModel(
            name=name,
            api_label=label if label is not None else name,
            port=port if port is not None else first_unused_manifest_port(document),
            repo=repo,
            path=written_path,
            revision=revision,
            files=tuple(files) if files else None,
        )
        new_text = add_model_text(text, model, manifest_path)
        manifest = _parse_added(new_text, len(text.splitlines()), name, manifest_path)
        spec = manifest.get(name)
        assert spec is not None
        warnings: list[str] = []
        if written_path is not None and not (manifest_path.parent / written_path).is_dir():
            warnings.append(f"{name}: {written_path} is not a directory (yet); lock will need it")
        sharing = [
            other.name
            for other in manifest.models
            if other.name != name and (other.host, other.port) == (spec.host, spec.port)
        ]
        if sharing:
            warnings.append(
                f"{name}: {spec.host}:{spec.port} is also the endpoint of {', '.join(sharing)}; "
                "they cannot run at the same time"
            )
        _write(manifest_path, new_text)
    return AddResult(
        name=name,
        manifest=manifest_path,
        added=render_model(model),
        api_label=spec.api_label,
        port=spec.port,
        source=spec.launch.source.describe(),
        warnings=tuple(warnings),
    )


@dataclass(frozen=True)
class RemoveResult:
    name: str
    manifest: Path
    removed_text: str
    lock_file: Path | None  # the lock file deleted, if there was one


def remove(settings: Settings, name: str) -> RemoveResult:
    """Delete the model's tables (refused while another model uses it) and its lock file."""
    from mlxpin.project.selection import lock_dir_mutex, pick

    manifest_path = settings.manifest_path
    require_writable_dir(_manifest_mutex(settings).parent, STATE_DIR_HINT)
    with hold_mutex(_manifest_mutex(settings), 30.0):
        text = _read(manifest_path)
        manifest = parse_manifest(text.encode("utf-8"), manifest_path)
        pick(manifest, [name])  # a usage error naming the models when unknown
        users = references_to(manifest, name)
        if users:
            raise ConfigError(
                f"{name} is used by {', '.join(users)} in {manifest_path}",
                "remove or change those references first, then remove the model",
            )
        new_text = remove_model_text(text, name, manifest_path)
        parse_manifest(new_text.encode("utf-8"), manifest_path)
        lines = text.splitlines(keepends=True)
        removed = "".join(
            line for start, end in model_spans(text, name) for line in lines[start:end]
        )
        _write(manifest_path, new_text)
    lock_file: Path | None = None
    with hold_mutex(lock_dir_mutex(settings), 30.0):
        candidate = lock_path(settings.lock_dir, name)
        try:
            candidate.unlink()
            lock_file = candidate
        except FileNotFoundError:
            pass
    return RemoveResult(name, manifest_path, removed, lock_file)


STARTER = """\
# mlxpin manifest: the models this machine serves. Hand-written; `mlxpin lock` pins it.
#
# Each [models.NAME] table is one model; NAME is what you type on the command line
# (`mlxpin launch gemma`). Two other names matter, and they are different things:
#   api_label    the string clients send as "model" in OpenAI-style requests;
#   launch.repo  where the weights come from: a Hugging Face Hub repo, always owner/name.
# A bare name such as "gemma-4-31b-it" is a label, never a repo id.
#
# Then: `mlxpin lock` pins every model to a commit and file hashes in lock/ (commit that
# directory), `mlxpin fetch` downloads and verifies the files, and `mlxpin launch NAME`
# serves one offline. `mlxpin add` / `mlxpin remove` edit this file and keep your comments.
version = 1

[models.gemma]
api_label = "gemma-4-31b-it"        # what clients send; unique across the manifest
# aliases = ["gemma4"]              # optional extra labels clients may send
port = 8080                         # the public port of this model's endpoint
host = "127.0.0.1"                  # loopback; "0.0.0.0" would expose it to the network

[models.gemma.launch]
repo = "mlx-community/gemma-4-31b-it-4bit"   # owner/name on the Hub
# path = "./models/gemma"           # or a local directory instead of repo (relative to this file)
revision = "main"                   # a branch, tag or 40-hex commit; `mlxpin lock` pins it
files = ["*.json", "*.safetensors", "tokenizer*", "*.jinja"]   # optional allow-list (globs)
# draft = "gemma-drafter"           # optional: another model of this file, for speculative decoding
# adapter = "my-lora"               # optional: another model of this file holding a LoRA adapter

[models.gemma.server]               # options for mlx_lm.server; unknown keys are refused
max_tokens = 2048
# temp = 0.7
# chat_template_args = { enable_thinking = false }
# trust_remote_code = false         # the default; true must be written out
"""


@dataclass(frozen=True)
class InitResult:
    manifest: Path
    models: tuple[str, ...]


def init(settings: Settings) -> InitResult:
    """Write the commented starter manifest; never over an existing file."""
    path = settings.manifest_path
    if path.exists() or path.is_symlink():
        raise UsageError(
            f"{path} already exists; `mlxpin init` never overwrites a manifest",
            f"edit it, or add a model with {Run.of('add', 'NAME', '--repo', 'owner/name')}",
        )
    manifest = parse_manifest(STARTER.encode("utf-8"), path)
    write_atomic(path, STARTER.encode("utf-8"))
    return InitResult(path, manifest.names)
