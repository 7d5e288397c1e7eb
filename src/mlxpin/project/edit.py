"""Edit manifest.toml without disturbing its author: `add`, `remove`, `init`.

`add` appends the model's tables (rendered by tomlkit); `remove` cuts its block out
(see `_mark_cuts`). Every other byte stays, and the result must read as the old document
plus/minus that model and pass `parse_manifest` before it is written (atomically, keeping
the mode, through a symlink, with CRLF kept).
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import tomlkit
import tomlkit.exceptions
from tomlkit.items import Comment, Item, Key, Table, Whitespace

from mlxpin.config import STATE_DIR_HINT, Settings
from mlxpin.errors import ConfigError, Flag, ManifestError, Run, UsageError
from mlxpin.project.lockfile import lock_path
from mlxpin.project.manifest import (
    DEFAULT_PORT,
    DEFAULT_REVISION,
    Manifest,
    parse_manifest,
    parse_text,
    read_text,
    read_toml,
)
from mlxpin.project.recipe import BuildSpec
from mlxpin.util.atomic import hold_mutex, write_atomic
from mlxpin.util.writable import require_writable_dir


class EditError(ConfigError):
    """The manifest's layout is one the editor cannot change safely; nothing was written."""

    kind = "manifest_edit"


@dataclass(frozen=True)
class AddRequest:
    """What `mlxpin add NAME` was asked; `add` fills in the defaults before rendering it."""

    name: str
    repo: str | None = None
    path: str | None = None
    revision: str | None = None
    label: str | None = None  # default: NAME
    port: int | None = None  # default: the lowest free one from 8080
    files: tuple[str, ...] | None = None


# --- pure text edits ------------------------------------------------------------------------


def newline_of(text: str) -> str:
    return "\r\n" if "\r\n" in text else "\n"


def render_model(model: AddRequest) -> str:
    """The model's tables as TOML (rendered by tomlkit, so every value is quoted right)."""
    entry = tomlkit.table()
    entry["api_label"] = model.label
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


def add_model_text(text: str, model: AddRequest, path: Path) -> str:
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
    expected = read_toml(text, path)
    models = expected.setdefault("models", {})
    if not isinstance(models, dict):
        raise EditError(
            f"{path}: `models` is not a table", "write each model as [models.NAME] tables"
        )
    models[model.name] = read_toml(block, path)["models"][model.name]
    if read_toml(out, path) != expected:
        raise EditError(
            f"{path}: appending [models.{model.name}] would change other keys of the file",
            "add the model by hand; the file's layout is one mlxpin cannot extend safely",
        )
    return out


# Marks put into the rendered document (TOML text holds neither control character). The
# end mark ends a line, as tomlkit expects of whatever comes before a table header.
_CUT, _END = "\0", "\1\n"
_MARKED = re.compile("\0([^\1]*)(?:\1\n)?")


@dataclass(frozen=True)
class _Piece:
    """One rendered piece of a tomlkit document, in file order: a [table] header, a
    `key = value`, a comment line, or blank lines."""

    body: list[tuple[Key | None, Item]]  # the container holding it, at `index`
    index: int
    mine: bool  # part of the model being removed

    @property
    def blank(self) -> bool:
        return isinstance(self.body[self.index][1], Whitespace)

    @property
    def comment(self) -> bool:
        return isinstance(self.body[self.index][1], Comment)

    def mark(self, mark: str, line: int = 0) -> None:
        """Put `mark` before the piece, or (blank lines) before line `line` of it."""
        item = self.body[self.index][1]
        if self.blank or self.comment:
            lines = item.as_string().splitlines(keepends=True)
            lines.insert(line, mark)
            self.body[self.index] = (None, Whitespace("".join(lines)))
        else:
            item.trivia.indent = mark + item.trivia.indent


def _pieces(body: list[tuple[Key | None, Item]], path: tuple[str, ...], name: str) -> list[_Piece]:
    pieces: list[_Piece] = []
    for index, (key, item) in enumerate(body):
        here = path if key is None else (*path, key.key)
        if not isinstance(item, Table) or not item.is_super_table():  # a super table shows nothing
            pieces.append(_Piece(body, index, here[:2] == ("models", name)))
        if isinstance(item, Table):
            pieces += _pieces(item.value.body, here, name)
    return pieces


def _mark_cuts(pieces: Sequence[_Piece]) -> None:
    """Mark, for each run of the model's pieces, what `remove` cuts: from the comments
    directly above its first header to its last value and the comments directly below,
    plus one blank separator line. Comments set apart by blank lines, and those directly
    above the next table, stay (they belong to no table, or to that one)."""
    count, run = len(pieces), 0
    while run < count:
        if not pieces[run].mine:
            run += 1
            continue
        after = run  # the next piece that is not the model's, nor a comment or blank
        while after < count and (
            pieces[after].mine or pieces[after].blank or pieces[after].comment
        ):
            after += 1
        start = run
        while start > 0 and pieces[start - 1].comment:
            start -= 1
        if start > 0 and not pieces[start - 1].blank:
            start = run  # a comment glued to the previous value is that value's
        end = after
        while True:  # comment blocks set apart by a blank line belong to no table: they stay
            while end > start and pieces[end - 1].blank:
                end -= 1
            block = end
            while block > start and pieces[block - 1].comment:
                block -= 1
            if not (start < block < end and pieces[block - 1].blank):
                break
            end = block
        # One blank separator line goes with the block.
        if start > 0 and pieces[start - 1].blank and (end == count or pieces[end].blank):
            pieces[start - 1].mark(_CUT, -1)
        else:
            pieces[start].mark(_CUT)
        if end < count:
            pieces[end].mark(_END, 1 if start == 0 and pieces[end].blank else 0)
        run = after


def cut_model(text: str, name: str, path: Path) -> tuple[str, str]:
    """(`text` without the model's block, that block); every other byte kept."""
    expected = read_toml(text, path)
    models = expected.get("models")
    if isinstance(models, dict):
        models.pop(name, None)
    try:
        document = tomlkit.parse(text)
    except (tomlkit.exceptions.TOMLKitError, ValueError, TypeError, IndexError):
        document = tomlkit.document()  # refused below
    pieces = _pieces(document.body, (), name)
    _mark_cuts(pieces)
    marked = document.as_string()
    kept = _MARKED.sub("", marked)
    remaining = _without_empty_models(read_toml(kept, path))
    if not any(p.mine for p in pieces) or remaining != _without_empty_models(expected):
        raise EditError(
            f"{path}: cannot find where [models.{name}] is written in a way mlxpin can remove "
            "safely",
            f"remove the [models.{name}] tables by hand",
        )
    return kept, "".join(_MARKED.findall(marked))


def _without_empty_models(document: dict[str, Any]) -> dict[str, Any]:
    if document.get("models") == {}:
        return {k: v for k, v in document.items() if k != "models"}
    return document


def first_unused_manifest_port(document: dict[str, Any]) -> int:
    """The lowest port from 8080 up that no model of the manifest uses."""
    models = document.get("models")
    tables = models.values() if isinstance(models, dict) else ()
    ports = (table.get("port", DEFAULT_PORT) for table in tables if isinstance(table, dict))
    used = {port for port in ports if type(port) is int}
    port = DEFAULT_PORT
    while port in used:
        port += 1
    return port


def references_to(manifest: Manifest, name: str) -> list[str]:
    found = [
        f"{model.name} (launch.{role})"
        for model in manifest.models
        for role in ("draft", "adapter")
        if getattr(model.launch, role) == name and model.name != name
    ]
    for model in manifest.models:
        source = model.launch.source
        if isinstance(source, BuildSpec) and name in source.inputs:
            key = "from" if source.source == name else "adapter"
            found.append(f"{model.name} (build.{key})")
    return found


# --- side effects -----------------------------------------------------------------------------


def _parse_added(new_text: str, old_lines: int, name: str, path: Path) -> Manifest:
    """Validate the manifest `add` would write. A problem in the appended tables has no
    line in the file on disk yet: it is named by its key, never by a line number."""
    try:
        return parse_text(new_text, path)
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
    digest = hashlib.sha256(os.fsencode(settings.manifest_path)).hexdigest()[:16]
    return settings.state_dir / "locks" / f"manifest-{digest}.lock"


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


def add(settings: Settings, request: AddRequest) -> AddResult:
    """Append [models.NAME] (+ .launch) to the manifest, validated before it is written."""
    name, path = request.name, request.path
    if (request.repo is None) == (path is None):
        raise UsageError(
            f"{name}: a model has exactly one source, a Hub repo or a local directory",
            f"give {Flag('add', '--repo', 'owner/name')} or {Flag('add', '--path', 'DIR')}",
        )
    if path is not None and request.revision is not None:
        raise UsageError(
            f"{name}: a revision is for a Hub repo; a local directory has none",
            f"leave out {Flag('add', '--revision')}, or use {Flag('add', '--repo')}",
        )
    manifest_path = settings.manifest_path
    require_writable_dir(_manifest_mutex(settings).parent, STATE_DIR_HINT)
    with hold_mutex(_manifest_mutex(settings), 30.0):
        text = read_text(manifest_path)
        document = read_toml(text, manifest_path)
        models = document.get("models")
        if isinstance(models, dict) and name in models:
            raise UsageError(
                f"{manifest_path} already has a model named {name!r}",
                f"pick another name, or {Run.of('remove', name)} first",
            )
        written_path = _written_path(path, manifest_path) if path is not None else None
        model = replace(
            request,
            label=name if request.label is None else request.label,
            port=first_unused_manifest_port(document) if request.port is None else request.port,
            path=written_path,
            files=tuple(request.files) if request.files else None,
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
    source = spec.launch.source.describe()
    added = render_model(model)
    return AddResult(name, manifest_path, added, spec.api_label, spec.port, source, (*warnings,))


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
        text = read_text(manifest_path)
        manifest = parse_text(text, manifest_path)
        pick(manifest, [name])  # a usage error naming the models when unknown
        users = references_to(manifest, name)
        if users:
            raise ConfigError(
                f"{name} is used by {', '.join(users)} in {manifest_path}",
                "remove or change those references first, then remove the model",
            )
        new_text, removed = cut_model(text, name, manifest_path)
        parse_text(new_text, manifest_path)
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
