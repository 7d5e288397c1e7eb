"""A Hugging Face Hub compatible HTTP server for tests and benchmarks (stdlib only).

The real ``huggingface_hub`` client talks to it through ``HF_ENDPOINT`` (or ``endpoint=``).
It models what mlxpin relies on: repos with git commits, branches that move, tags, PR refs,
LFS files with sha256, private / gated / disabled / missing repos, and the Hub's error
headers. Fault switches (latency, 5xx, cut connections, dripped or truncated answers,
corrupted bytes, hostile names, ETags and commit ids) and a request log let a test assert
exactly what a command did.

Hashes are git's own: a plain file's ``oid`` is its git blob sha1, an LFS file's ``oid`` is
the git blob sha1 of its git-lfs pointer and ``lfs.oid`` its sha256; tree and commit ids
are real git tree/commit object ids, so ``git write-tree`` / ``git commit-tree`` agree.

Quick use::

    with HubServer() as hub:
        repo = hub.create_repo("acme/tiny")
        sha = repo.commit({"config.json": b"{}", "model.safetensors": b"..."})
        HfApi(endpoint=hub.url, token=False).model_info("acme/tiny", revision=sha)

Large content given as a ``Path`` is served from that file (it is hashed once, never
copied: keep it unchanged while the server runs). LFS content given as ``bytes`` of 1 MiB
or more is written to a private temporary directory; smaller content stays in memory.
"""

from __future__ import annotations

import contextlib
import hashlib
import html
import json
import random
import socket
import struct
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import MappingProxyType, TracebackType
from typing import Any, BinaryIO, Literal, Self, TypeAlias, cast
from urllib.parse import parse_qs, quote, unquote, urlencode

# The hashes, the LFS pointer and Range parsing are the dev hub's (`python -m mlxpin.dev.hub`).
from mlxpin.dev.hub import LFS_SUFFIXES, git_blob_sha1, lfs_pointer, parse_range

__all__ = [
    "EPOCH",
    "LFS_SUFFIXES",
    "Blob",
    "Commit",
    "FileContent",
    "FileEntry",
    "GatedMode",
    "HubServer",
    "LfsContent",
    "LfsInfo",
    "Origin",
    "PlainContent",
    "RecordedRequest",
    "Repo",
    "Token",
    "closed_port_url",
    "git_blob_sha1",
    "iso_date",
    "lfs_pointer",
    "pseudo_random_bytes",
    "sha256_hex",
]

GatedMode = Literal[False, "auto", "manual"]
Origin = Literal["hub", "cdn"]

#: First commit date when none is given; commit n of a repo is dated EPOCH + n days.
EPOCH = datetime(2026, 1, 1, tzinfo=UTC)
CHUNK_SIZE = 1 << 20
_IN_MEMORY_LIMIT = 1 << 20
_DEFAULT_AUTHOR = "hubserver"
_API_SUBPATHS = frozenset({"revision", "tree", "refs", "commits", "paths-info", "treesize"})


# --------------------------------------------------------------------------------------
# Hashes and formats
# --------------------------------------------------------------------------------------


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def iso_date(moment: datetime) -> str:
    """The Hub's date format: ISO 8601, UTC, milliseconds, ``Z`` (``2026-01-01T00:00:00.000Z``)."""
    moment = _utc(moment)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def pseudo_random_bytes(size: int, seed: int = 0) -> bytes:
    """Deterministic incompressible bytes (for weights-like test content)."""
    return random.Random(seed).randbytes(size)


_RESERVED_SOCKETS: list[socket.socket] = []


def closed_port_url() -> str:
    """A URL on 127.0.0.1 where nothing listens: connections are refused at once.

    The port stays bound (but not listening) for the life of the process, so nothing else
    can take it and the refusal is deterministic.
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    _RESERVED_SOCKETS.append(sock)
    return f"http://127.0.0.1:{sock.getsockname()[1]}"


def _utc(moment: datetime) -> datetime:
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def _sha1(data: bytes) -> str:
    return hashlib.sha1(data, usedforsecurity=False).hexdigest()


# --------------------------------------------------------------------------------------
# Repo model
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LfsContent:
    """Force a file to be stored with git-lfs (whatever its name)."""

    data: bytes | Path


@dataclass(frozen=True)
class PlainContent:
    """Force a file to be stored as a plain git blob (whatever its name)."""

    data: bytes | Path


#: What ``Repo.commit`` accepts per file. ``bytes`` is LFS when the name ends in one of
#: LFS_SUFFIXES, plain otherwise; a bare ``Path`` is LFS content.
FileContent: TypeAlias = bytes | Path | LfsContent | PlainContent


@dataclass(frozen=True)
class Blob:
    """File content, in memory (``data``) or in a file on disk (``path``)."""

    size: int
    data: bytes | None = field(default=None, repr=False)
    path: Path | None = None

    def read(self, start: int = 0, end: int | None = None) -> bytes:
        stop = self.size if end is None else end
        if self.data is not None:
            return self.data[start:stop]
        assert self.path is not None
        with open(self.path, "rb") as handle:
            handle.seek(start)
            return handle.read(stop - start)


@dataclass(frozen=True)
class LfsInfo:
    sha256: str
    size: int
    pointer_size: int


@dataclass(frozen=True)
class FileEntry:
    """One file of a commit, with the hashes the Hub reports for it."""

    path: str
    size: int
    blob_id: str  # git blob sha1 of what git stores: the content, or the LFS pointer
    lfs: LfsInfo | None
    blob: Blob = field(repr=False, compare=False)

    @property
    def etag(self) -> str:
        """The ETag the Hub serves (and the client's blob file name)."""
        return self.lfs.sha256 if self.lfs is not None else self.blob_id

    def content(self) -> bytes:
        return self.blob.read()


@dataclass(frozen=True)
class Commit:
    sha: str
    parent: str | None
    tree: str  # git tree id of the root
    files: Mapping[str, FileEntry] = field(repr=False)
    dirs: Mapping[str, str] = field(repr=False)  # directory ("" = root) -> git tree id
    message: str
    author: str
    date: datetime

    @property
    def title(self) -> str:
        return self.message.split("\n", 1)[0]

    @property
    def body(self) -> str:
        return self.message.split("\n", 1)[1].strip("\n") if "\n" in self.message else ""


@dataclass(frozen=True)
class Token:
    value: str
    user: str
    can_read: frozenset[str]


@dataclass(frozen=True)
class RecordedRequest:
    """One request as the server saw it (recorded before the response is written)."""

    method: str
    path: str  # raw, percent-encoded, without the query
    query: str  # raw query string
    status: int
    has_auth: bool  # an Authorization header was present
    token: str | None  # the bearer token, if any
    range: str | None  # the Range header, if any
    origin: Origin  # "hub" or the "cdn" listener
    host: str | None  # the Host header
    client_port: int
    fault: str | None = None  # "fail", "cut", "corrupt" when a fault switch fired

    @property
    def unquoted_path(self) -> str:
        return unquote(self.path)

    def matches(self, needle: str) -> bool:
        return needle in self.path or needle in self.unquoted_path


def _check_repo_path(path: str) -> None:
    parts = path.split("/")
    if not path or "\0" in path or any(part in ("", ".", "..") for part in parts):
        raise ValueError(f"invalid file path in a commit: {path!r}")


def _build_trees(files: Mapping[str, FileEntry]) -> dict[str, str]:
    """Git tree ids of every directory ("" is the root), exactly as ``git write-tree``."""
    root: dict[str, Any] = {}
    for path, entry in files.items():
        node = root
        parts = path.split("/")
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ValueError(f"{path!r} needs {part!r} to be a directory, but it is a file")
            node = child
        if parts[-1] in node:
            raise ValueError(f"{path!r} is both a file and a directory")
        node[parts[-1]] = entry
    out: dict[str, str] = {}

    def walk(node: dict[str, Any], prefix: str) -> str:
        rows: list[tuple[bytes, bytes]] = []
        for name, child in node.items():
            raw = name.encode()
            if isinstance(child, dict):
                sha = walk(child, f"{prefix}{name}/")
                rows.append((raw + b"/", b"40000 " + raw + b"\0" + bytes.fromhex(sha)))
            else:
                blob_id = cast(FileEntry, child).blob_id
                rows.append((raw, b"100644 " + raw + b"\0" + bytes.fromhex(blob_id)))
        rows.sort(key=lambda row: row[0])
        body = b"".join(row[1] for row in rows)
        sha = _sha1(b"tree %d\0" % len(body) + body)
        out[prefix.rstrip("/")] = sha
        return sha

    walk(root, "")
    return out


def _commit_object(
    tree: str, parent: str | None, author: str, date: datetime, message: str
) -> bytes:
    stamp = f"{author} <{author}@users.noreply.hubserver.invalid> {int(date.timestamp())} +0000"
    lines = [f"tree {tree}"]
    if parent is not None:
        lines.append(f"parent {parent}")
    lines += [f"author {stamp}", f"committer {stamp}", "", message]
    text = "\n".join(lines)
    if not text.endswith("\n"):
        text += "\n"
    return text.encode()


class Repo:
    """A model repo: commits, refs and access settings. Mutate it from the test thread."""

    def __init__(
        self,
        hub: HubServer,
        repo_id: str,
        *,
        private: bool,
        gated: GatedMode,
        metadata_refused: bool,
        disabled: bool,
        created_at: datetime,
        library_name: str | None,
        tags: Iterable[str],
    ) -> None:
        self._hub = hub
        self.id = repo_id
        self.private = private
        self.gated: GatedMode = gated
        self.metadata_refused = metadata_refused
        self.disabled = disabled
        self.created_at = _utc(created_at)
        self.library_name = library_name
        self.tags = list(tags)
        self._refs: dict[str, str] = {}  # full ref name -> commit sha
        self._commits: dict[str, Commit] = {}

    def __repr__(self) -> str:
        return f"Repo({self.id!r}, refs={self.refs()!r})"

    # -- commits ----------------------------------------------------------------------

    def commit(
        self,
        files: Mapping[str, FileContent],
        *,
        delete: Iterable[str] = (),
        branch: str = "main",
        message: str = "",
        date: datetime | None = None,
        author: str = _DEFAULT_AUTHOR,
        base: str | None = None,
    ) -> str:
        """Commit on top of ``branch`` (created if absent) and move it; return the sha.

        A new branch starts from ``base`` (any revision) or, by default, from ``main``'s
        head if there is one, else from nothing. ``delete`` takes file paths or directory
        paths (everything under them). ``branch`` may be a full ref such as ``refs/pr/1``.
        """
        with self._hub._lock:
            ref = _branch_ref(branch)
            parent: Commit | None
            if ref in self._refs:
                if base is not None:
                    raise ValueError(f"branch {branch!r} exists: base= is only for new branches")
                parent = self._commits[self._refs[ref]]
            elif base is not None:
                parent = self._resolve(base)
                if parent is None:
                    raise ValueError(f"unknown base revision {base!r}")
            else:
                main = self._refs.get("refs/heads/main")
                parent = self._commits[main] if main is not None else None
            tree_files: dict[str, FileEntry] = dict(parent.files) if parent is not None else {}
            for gone in delete:
                _check_repo_path(gone)
                under = [path for path in tree_files if path.startswith(gone + "/")]
                if gone not in tree_files and not under:
                    raise ValueError(f"cannot delete {gone!r}: no such file or directory")
                for path in [gone, *under] if gone in tree_files else under:
                    del tree_files[path]
            for path, content in files.items():
                _check_repo_path(path)
                tree_files[path] = self._hub._make_entry(path, content)
            dirs = _build_trees(tree_files)
            when = _utc(date) if date is not None else EPOCH + timedelta(days=len(self._commits))
            parent_sha = parent.sha if parent is not None else None
            raw = _commit_object(dirs[""], parent_sha, author, when, message)
            sha = _sha1(b"commit %d\0" % len(raw) + raw)
            self._commits.setdefault(
                sha,
                Commit(
                    sha=sha,
                    parent=parent_sha,
                    tree=dirs[""],
                    files=MappingProxyType(dict(sorted(tree_files.items()))),
                    dirs=MappingProxyType(dirs),
                    message=message,
                    author=author,
                    date=when,
                ),
            )
            self._refs[ref] = sha
            return sha

    # -- refs -------------------------------------------------------------------------

    def set_branch(self, name: str, revision: str) -> None:
        """Point a branch (created if absent) at a revision (a sha, branch or tag)."""
        self._set_ref(_branch_ref(name), revision)

    def delete_branch(self, name: str) -> None:
        with self._hub._lock:
            del self._refs[_branch_ref(name)]

    def tag(self, name: str, revision: str) -> None:
        """Create or move a tag (``refs/tags/<name>``)."""
        self._set_ref(name if name.startswith("refs/") else f"refs/tags/{name}", revision)

    def delete_tag(self, name: str) -> None:
        with self._hub._lock:
            del self._refs[name if name.startswith("refs/") else f"refs/tags/{name}"]

    def head(self, branch: str = "main") -> str:
        with self._hub._lock:
            return self._refs[_branch_ref(branch)]

    def refs(self) -> dict[str, str]:
        """All refs, by full name (``refs/heads/main`` -> sha)."""
        with self._hub._lock:
            return dict(self._refs)

    # -- reading ----------------------------------------------------------------------

    def resolve(self, revision: str) -> Commit | None:
        """The commit a revision names, resolved like git (sha, full ref, tag, branch)."""
        with self._hub._lock:
            return self._resolve(revision)

    def get_commit(self, sha: str) -> Commit:
        with self._hub._lock:
            return self._commits[sha]

    def files(self, revision: str = "main") -> Mapping[str, FileEntry]:
        commit = self.resolve(revision)
        if commit is None:
            raise KeyError(revision)
        return commit.files

    def history(self, revision: str = "main") -> list[Commit]:
        """First-parent history, newest first."""
        with self._hub._lock:
            commit = self._resolve(revision)
            out: list[Commit] = []
            while commit is not None:
                out.append(commit)
                commit = self._commits[commit.parent] if commit.parent is not None else None
            return out

    def _resolve(self, revision: str) -> Commit | None:
        if revision in self._commits:
            return self._commits[revision]
        for ref in (revision, f"refs/tags/{revision}", f"refs/heads/{revision}"):
            if ref.startswith("refs/") and ref in self._refs:
                return self._commits[self._refs[ref]]
        return None

    def _set_ref(self, ref: str, revision: str) -> None:
        with self._hub._lock:
            commit = self._resolve(revision)
            if commit is None:
                raise ValueError(f"unknown revision {revision!r} in {self.id}")
            self._refs[ref] = commit.sha


def _branch_ref(name: str) -> str:
    return name if name.startswith("refs/") else f"refs/heads/{name}"


# --------------------------------------------------------------------------------------
# Fault rules
# --------------------------------------------------------------------------------------


@dataclass
class _FailRule:
    remaining: int
    status: int
    path_contains: str | None
    method: str | None
    headers: tuple[tuple[str, str], ...]


@dataclass
class _CutRule:
    path_contains: str
    nbytes: int
    remaining: int
    reset: bool


@dataclass
class _CorruptRule:
    path_contains: str
    remaining: int | None


@dataclass
class _DripRule:
    path_contains: str
    interval_s: float
    remaining: int | None


@dataclass
class _TruncateRule:
    path_contains: str
    nbytes: int
    remaining: int | None


@dataclass(frozen=True)
class _Cut:
    nbytes: int
    reset: bool


# --------------------------------------------------------------------------------------
# The server
# --------------------------------------------------------------------------------------


class HubServer:
    """A hub-compatible server on 127.0.0.1, plus a second "CDN" listener for LFS redirects.

    Attributes a test may set at any time:
        latency_s: seconds to sleep before answering each request (both listeners).
        cdn_redirect: LFS ``/resolve`` answers are 302 redirects to the CDN listener.
        tree_page_size / commits_page_size: pagination of ``/tree`` and ``/commits``.
        disabled_hides_from_anonymous: like the Hub, a disabled repo looks missing (401
            RepoNotFound) to an anonymous caller; a caller with a valid token gets the
            403 "Access to this resource is disabled.".
    """

    def __init__(
        self,
        *,
        tree_page_size: int = 1000,
        commits_page_size: int = 50,
        latency_s: float = 0.0,
        cdn_redirect: bool = False,
    ) -> None:
        self.tree_page_size = tree_page_size
        self.tree_page_size_expand = 50
        self.commits_page_size = commits_page_size
        self.latency_s = latency_s
        # Bytes per second for each file body, i.e. a cap per connection (None: as fast as
        # possible); lets a test kill a client mid-download, and bench/fleet.py play a CDN
        # that caps each connection below the link.
        self.throttle_bps: float | None = None
        self.cdn_redirect = cdn_redirect
        self.disabled_hides_from_anonymous = True
        self._lock = threading.RLock()
        self._repos: dict[str, Repo] = {}
        self._tokens: dict[str, Token] = {}
        self._lfs_blobs: dict[str, Blob] = {}
        self._storage: tempfile.TemporaryDirectory[str] | None = None
        self._fault_lock = threading.Lock()
        self._fails: list[_FailRule] = []
        self._cuts: list[_CutRule] = []
        self._corrupts: list[_CorruptRule] = []
        self._drips: list[_DripRule] = []
        self._truncates: list[_TruncateRule] = []
        self._hostile_names: dict[tuple[str, str], str] = {}
        self._hostile_etags: list[tuple[str, str]] = []
        self._hostile_commit: str | None = None
        self._log_lock = threading.Lock()
        self._log: list[RecordedRequest] = []
        self._servers: dict[Origin, _HTTPServer] = {}
        self._threads: list[threading.Thread] = []
        self._ports: dict[Origin, int] = {}
        self._reserved: list[socket.socket] = []

    # -- lifecycle --------------------------------------------------------------------

    def start(self) -> Self:
        """Bind free ports (the same ones again after a stop) and serve in daemon threads."""
        if self._servers:
            return self
        for sock in self._reserved:
            sock.close()
        self._reserved = []
        origins: tuple[Origin, ...] = ("hub", "cdn")
        for origin in origins:
            server = _HTTPServer(("127.0.0.1", self._ports.get(origin, 0)), self, origin)
            self._ports[origin] = server.server_address[1]
            self._servers[origin] = server
            thread = threading.Thread(
                target=server.serve_forever,
                kwargs={"poll_interval": 0.02},
                name=f"hubserver-{origin}-{self._ports[origin]}",
                daemon=True,
            )
            thread.start()
            self._threads.append(thread)
        return self

    def stop(self) -> None:
        """Close the listening sockets and every open connection; ports then refuse.

        The ports stay reserved (bound, not listening) so nothing else takes them and
        ``start()`` can serve on the same URL again.
        """
        servers, self._servers = self._servers, {}
        for server in servers.values():
            server.shutdown()
            server.server_close()
            server.close_all_connections()
        for thread in self._threads:
            thread.join(timeout=5)
        self._threads = []
        for origin in servers:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind(("127.0.0.1", self._ports[origin]))
            except OSError:
                sock.close()
            else:
                self._reserved.append(sock)

    def close(self) -> None:
        """Stop, release the ports and delete stored LFS content."""
        self.stop()
        for sock in self._reserved:
            sock.close()
        self._reserved = []
        if self._storage is not None:
            self._storage.cleanup()
            self._storage = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @property
    def running(self) -> bool:
        return bool(self._servers)

    @property
    def port(self) -> int:
        if "hub" not in self._ports:
            raise RuntimeError("HubServer was never started")
        return self._ports["hub"]

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT`` (no trailing slash): the value for HF_ENDPOINT."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def cdn_url(self) -> str:
        if "cdn" not in self._ports:
            raise RuntimeError("HubServer was never started")
        return f"http://127.0.0.1:{self._ports['cdn']}"

    # -- repos and tokens -------------------------------------------------------------

    def create_repo(
        self,
        repo_id: str,
        *,
        private: bool = False,
        gated: GatedMode = False,
        metadata_refused: bool = False,
        disabled: bool = False,
        created_at: datetime | None = None,
        library_name: str | None = None,
        tags: Iterable[str] = (),
    ) -> Repo:
        """Create an empty repo (no commit, no branch: commit to create ``main``)."""
        if gated not in (False, "auto", "manual"):
            raise ValueError(f"gated must be False, 'auto' or 'manual', not {gated!r}")
        with self._lock:
            if repo_id in self._repos:
                raise ValueError(f"repo {repo_id!r} exists")
            repo = Repo(
                self,
                repo_id,
                private=private,
                gated=gated,
                metadata_refused=metadata_refused,
                disabled=disabled,
                created_at=created_at if created_at is not None else EPOCH,
                library_name=library_name,
                tags=tags,
            )
            self._repos[repo_id] = repo
            return repo

    def repo(self, repo_id: str) -> Repo:
        with self._lock:
            return self._repos[repo_id]

    def delete_repo(self, repo_id: str) -> None:
        with self._lock:
            del self._repos[repo_id]

    def add_token(self, token: str, can_read: Iterable[str] = (), *, user: str = "user") -> Token:
        """Register a valid token; it may read the private/gated repos in ``can_read``."""
        with self._lock:
            entry = Token(value=token, user=user, can_read=frozenset(can_read))
            self._tokens[token] = entry
            return entry

    def grant(self, token: str, repo_id: str) -> None:
        with self._lock:
            old = self._tokens[token]
            self._tokens[token] = Token(old.value, old.user, old.can_read | {repo_id})

    # -- request log ------------------------------------------------------------------

    @property
    def requests(self) -> list[RecordedRequest]:
        """A copy of the request log, oldest first."""
        with self._log_lock:
            return list(self._log)

    def clear_requests(self) -> None:
        with self._log_lock:
            self._log.clear()

    def matching(
        self,
        method: str | None = None,
        path_contains: str | None = None,
        *,
        origin: Origin | None = None,
        status: int | None = None,
    ) -> list[RecordedRequest]:
        return [
            rec
            for rec in self.requests
            if (method is None or rec.method == method.upper())
            and (path_contains is None or rec.matches(path_contains))
            and (origin is None or rec.origin == origin)
            and (status is None or rec.status == status)
        ]

    def count(
        self,
        method: str | None = None,
        path_contains: str | None = None,
        *,
        origin: Origin | None = None,
        status: int | None = None,
    ) -> int:
        return len(self.matching(method, path_contains, origin=origin, status=status))

    # -- fault switches ---------------------------------------------------------------

    def fail_next(
        self,
        n: int = 1,
        status: int = 500,
        path_contains: str | None = None,
        *,
        method: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        """Answer the next ``n`` matching requests (either listener) with ``status``."""
        with self._fault_lock:
            self._fails.append(
                _FailRule(
                    n,
                    status,
                    path_contains,
                    method.upper() if method else None,
                    tuple((headers or {}).items()),
                )
            )

    def cut_after(
        self, path_contains: str, nbytes: int, times: int = 1, *, reset: bool = False
    ) -> None:
        """For the next ``times`` matching GETs with a longer body: send the headers and
        ``nbytes`` of body, then close the connection (FIN; with ``reset=True`` an RST).

        huggingface_hub retries a FIN-cut download with ``Range`` (httpx RemoteProtocolError)
        but not an RST-cut one (httpx ReadError is not in its retry list).
        """
        with self._fault_lock:
            self._cuts.append(_CutRule(path_contains, nbytes, times, reset))

    def corrupt(self, path_contains: str, times: int | None = None) -> None:
        """Flip one byte (the middle one, XOR 0xFF) of matching file bodies; size unchanged.

        Applies to ``/resolve`` and CDN file bodies, ``times`` times (None: until reset).
        """
        with self._fault_lock:
            self._corrupts.append(_CorruptRule(path_contains, times))

    def drip(self, path_contains: str, interval_s: float = 0.2, times: int | None = None) -> None:
        """Send the body of matching GET answers one byte every ``interval_s`` (headers at
        once): every read returns well within any read timeout, yet the whole answer takes
        ``len(body) * interval_s``. ``times`` answers (None: until reset)."""
        with self._fault_lock:
            self._drips.append(_DripRule(path_contains, interval_s, times))

    def truncate_body(self, path_contains: str, nbytes: int, times: int | None = None) -> None:
        """Answer matching GETs (API answers, not file bodies) with only the first ``nbytes``
        of their body and a Content-Length of ``nbytes``: a complete HTTP message holding a
        truncated document (``cut_after`` instead declares the full length, then closes).
        ``times`` answers (None: until reset)."""
        with self._fault_lock:
            self._truncates.append(_TruncateRule(path_contains, nbytes, times))

    def hostile_filename(self, repo_id: str, real_path: str, served_name: str) -> None:
        """Listings (siblings, tree, paths-info) report ``served_name`` for ``real_path``;
        ``/resolve`` serves the real file under both names."""
        with self._fault_lock:
            self._hostile_names[(repo_id, real_path)] = served_name

    def hostile_etag(self, path_contains: str, etag: str) -> None:
        """``/resolve`` answers matching paths with ``ETag`` (and ``X-Linked-Etag`` for LFS)
        set to ``etag`` verbatim (no quotes added)."""
        with self._fault_lock:
            self._hostile_etags.append((path_contains, etag))

    def hostile_commit(self, value: str | None) -> None:
        """Report ``value`` as ``X-Repo-Commit`` and model_info ``sha`` (None: stop)."""
        with self._fault_lock:
            self._hostile_commit = value

    def reset_faults(self) -> None:
        """Clear every fault switch (not latency_s / cdn_redirect)."""
        with self._fault_lock:
            self._fails.clear()
            self._cuts.clear()
            self._corrupts.clear()
            self._drips.clear()
            self._truncates.clear()
            self._hostile_names.clear()
            self._hostile_etags.clear()
            self._hostile_commit = None

    # -- internals --------------------------------------------------------------------

    def _storage_dir(self) -> Path:
        if self._storage is None:
            self._storage = tempfile.TemporaryDirectory(prefix="hubserver-")
        return Path(self._storage.name)

    def _make_entry(self, path: str, content: FileContent) -> FileEntry:
        if isinstance(content, LfsContent):
            is_lfs, data = True, content.data
        elif isinstance(content, PlainContent):
            is_lfs, data = False, content.data
        elif isinstance(content, Path):
            is_lfs, data = True, content
        else:
            is_lfs, data = path.endswith(LFS_SUFFIXES), content
        if not is_lfs:
            raw = data.read_bytes() if isinstance(data, Path) else bytes(data)
            return FileEntry(path, len(raw), git_blob_sha1(raw), None, Blob(len(raw), data=raw))
        if isinstance(data, Path):
            with open(data, "rb") as handle:
                sha256 = hashlib.file_digest(handle, "sha256").hexdigest()
            size = data.stat().st_size
            blob = Blob(size, path=data.resolve())
        else:
            raw = bytes(data)
            sha256, size = sha256_hex(raw), len(raw)
            if size < _IN_MEMORY_LIMIT:
                blob = Blob(size, data=raw)
            else:
                stored = self._storage_dir() / sha256
                if not stored.exists():
                    partial = stored.with_suffix(".partial")
                    partial.write_bytes(raw)
                    partial.replace(stored)
                blob = Blob(size, path=stored)
        pointer = lfs_pointer(sha256, size)
        with self._lock:
            blob = self._lfs_blobs.setdefault(sha256, blob)
        return FileEntry(
            path, size, git_blob_sha1(pointer), LfsInfo(sha256, size, len(pointer)), blob
        )

    def _record(self, rec: RecordedRequest) -> None:
        with self._log_lock:
            self._log.append(rec)

    def _take_fail(self, method: str, raw_path: str) -> _FailRule | None:
        with self._fault_lock:
            for rule in self._fails:
                if (
                    rule.remaining > 0
                    and (rule.method is None or rule.method == method)
                    and (rule.path_contains is None or _path_has(raw_path, rule.path_contains))
                ):
                    rule.remaining -= 1
                    return rule
        return None

    def _take_cut(self, raw_path: str, length: int) -> _Cut | None:
        with self._fault_lock:
            for rule in self._cuts:
                if (
                    rule.remaining > 0
                    and rule.nbytes < length
                    and _path_has(raw_path, rule.path_contains)
                ):
                    rule.remaining -= 1
                    return _Cut(rule.nbytes, rule.reset)
        return None

    def _take_corrupt(self, raw_path: str) -> bool:
        with self._fault_lock:
            for rule in self._corrupts:
                if (rule.remaining is None or rule.remaining > 0) and _path_has(
                    raw_path, rule.path_contains
                ):
                    if rule.remaining is not None:
                        rule.remaining -= 1
                    return True
        return False

    def _take_drip(self, raw_path: str) -> float | None:
        with self._fault_lock:
            for rule in self._drips:
                if (rule.remaining is None or rule.remaining > 0) and _path_has(
                    raw_path, rule.path_contains
                ):
                    if rule.remaining is not None:
                        rule.remaining -= 1
                    return rule.interval_s
        return None

    def _take_truncate(self, raw_path: str, length: int) -> int | None:
        with self._fault_lock:
            for rule in self._truncates:
                if (
                    (rule.remaining is None or rule.remaining > 0)
                    and rule.nbytes < length
                    and _path_has(raw_path, rule.path_contains)
                ):
                    if rule.remaining is not None:
                        rule.remaining -= 1
                    return rule.nbytes
        return None

    def _served_name(self, repo_id: str, path: str) -> str:
        with self._fault_lock:
            return self._hostile_names.get((repo_id, path), path)

    def _real_name(self, repo_id: str, served: str) -> str | None:
        with self._fault_lock:
            for (rid, real), name in self._hostile_names.items():
                if rid == repo_id and name == served:
                    return real
        return None

    def _etag_override(self, raw_path: str) -> str | None:
        with self._fault_lock:
            for needle, etag in self._hostile_etags:
                if _path_has(raw_path, needle):
                    return etag
        return None

    def _commit_override(self) -> str | None:
        with self._fault_lock:
            return self._hostile_commit


def _path_has(raw_path: str, needle: str) -> bool:
    return needle in raw_path or needle in unquote(raw_path)


# --------------------------------------------------------------------------------------
# HTTP plumbing
# --------------------------------------------------------------------------------------


@dataclass
class _Request:
    method: str
    raw_path: str
    raw_query: str
    query: dict[str, list[str]]
    body: bytes
    token: str | None
    has_auth: bool
    range: str | None
    origin: Origin


@dataclass
class _Response:
    status: int
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""
    blob: Blob | None = None
    start: int = 0
    end: int = 0
    is_file: bool = False
    fault: str | None = None

    @property
    def length(self) -> int:
        return self.end - self.start if self.blob is not None else len(self.body)


def _json(status: int, payload: object, headers: Iterable[tuple[str, str]] = ()) -> _Response:
    body = json.dumps(payload).encode()
    return _Response(
        status, [("Content-Type", "application/json; charset=utf-8"), *headers], body=body
    )


def _error(
    status: int, message: str, code: str | None = None, headers: Iterable[tuple[str, str]] = ()
) -> _Response:
    extra = [("X-Error-Message", message)]
    if code is not None:
        extra.append(("X-Error-Code", code))
    return _json(status, {"error": message}, [*extra, *headers])


def _header_safe(value: str) -> str:
    return value.encode("latin-1", "backslashreplace").decode("latin-1")


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    block_on_close = False

    def __init__(self, address: tuple[str, int], hub: HubServer, origin: Origin) -> None:
        self.hub = hub
        self.origin: Origin = origin
        self._conns: set[socket.socket] = set()
        self._conns_lock = threading.Lock()
        super().__init__(address, _Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._conns_lock:
            self._conns.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._conns_lock:
            self._conns.discard(request)
        super().shutdown_request(request)

    def close_all_connections(self) -> None:
        with self._conns_lock:
            conns = list(self._conns)
            self._conns.clear()
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                conn.close()

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that went away (or a connection closed by stop()) is not an error.
        if isinstance(sys.exc_info()[1], OSError):
            return
        super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body go out in separate writes; without TCP_NODELAY, Nagle plus the
    # client's delayed ACK add ~40 ms to every small response.
    disable_nagle_algorithm = True
    server_version = "hubserver/1.0"
    sys_version = ""

    def log_message(self, format: str, *args: Any) -> None:
        return

    def version_string(self) -> str:
        return self.server_version

    def do_GET(self) -> None:
        self._handle("GET")

    def do_HEAD(self) -> None:
        self._handle("HEAD")

    def do_POST(self) -> None:
        self._handle("POST")

    def do_PUT(self) -> None:
        self._handle("PUT")

    def do_DELETE(self) -> None:
        self._handle("DELETE")

    def _handle(self, method: str) -> None:
        server = cast(_HTTPServer, self.server)
        hub = server.hub
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length > 0 else b""
        raw_path, _, raw_query = self.path.partition("?")
        auth = self.headers.get("Authorization")
        token: str | None = None
        if auth is not None:
            scheme, _, value = auth.partition(" ")
            token = value.strip() if scheme.lower() == "bearer" else auth
        req = _Request(
            method=method,
            raw_path=raw_path,
            raw_query=raw_query,
            query=parse_qs(raw_query, keep_blank_values=True),
            body=body,
            token=token,
            has_auth=auth is not None,
            range=self.headers.get("Range"),
            origin=server.origin,
        )
        if hub.latency_s > 0:
            time.sleep(hub.latency_s)
        try:
            resp = _App(hub).respond(req)
        except Exception as exc:  # a bug here must surface, as a 500 the test can see
            traceback.print_exc()
            resp = _error(500, f"hubserver internal error: {exc!r}")
        self._send(hub, req, resp)

    def _send(self, hub: HubServer, req: _Request, resp: _Response) -> None:
        truncated = None
        if req.method == "GET" and resp.blob is None and resp.fault is None:
            truncated = hub._take_truncate(req.raw_path, len(resp.body))
            if truncated is not None:
                resp.body = resp.body[:truncated]
        length = resp.length
        cut = None
        drip: float | None = None
        if req.method == "GET" and length > 0 and resp.fault is None:
            cut = hub._take_cut(req.raw_path, length)
            drip = hub._take_drip(req.raw_path)
        flip_at: int | None = None
        if req.method == "GET" and resp.is_file and resp.blob is not None and resp.blob.size:
            middle = resp.blob.size // 2
            if resp.start <= middle < resp.end and hub._take_corrupt(req.raw_path):
                flip_at = middle
        fault = (
            resp.fault
            or ("cut" if cut else None)
            or ("corrupt" if flip_at is not None else None)
            or ("truncate" if truncated is not None else None)
            or ("drip" if drip is not None else None)
        )
        hub._record(
            RecordedRequest(
                method=req.method,
                path=req.raw_path,
                query=req.raw_query,
                status=resp.status,
                has_auth=req.has_auth,
                token=req.token,
                range=req.range,
                origin=req.origin,
                host=self.headers.get("Host"),
                client_port=int(self.client_address[1]),
                fault=fault,
            )
        )
        self.send_response(resp.status)
        for name, value in resp.headers:
            self.send_header(name, _header_safe(value))
        self.send_header("Content-Length", str(length))
        self.end_headers()
        if req.method == "HEAD" or length == 0:
            return
        limit = length if cut is None else cut.nbytes
        if drip is not None:
            body = resp.body if resp.blob is None else resp.blob.read(resp.start, resp.end)
            for index in range(limit):
                self.wfile.write(body[index : index + 1])
                time.sleep(drip)
        elif resp.blob is None:
            self.wfile.write(resp.body[:limit])
        else:
            self._send_blob(resp.blob, resp.start, resp.start + limit, flip_at, hub.throttle_bps)
        if cut is not None:
            self.close_connection = True
            if cut.reset:
                self.connection.setsockopt(
                    socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
                )
                self.connection.close()
            else:
                with contextlib.suppress(OSError):
                    self.connection.shutdown(socket.SHUT_RDWR)

    def _send_blob(
        self, blob: Blob, start: int, end: int, flip_at: int | None, throttle_bps: float | None
    ) -> None:
        if blob.path is not None and flip_at is None and throttle_bps is None:
            with open(blob.path, "rb") as source:
                self.connection.sendfile(source, offset=start, count=end - start)
            return
        pos = start
        pace = _Pace(throttle_bps) if throttle_bps is not None else None
        with contextlib.ExitStack() as stack:
            handle: BinaryIO | None = None
            if blob.path is not None:
                handle = stack.enter_context(open(blob.path, "rb"))
                handle.seek(start)
            chunk_size = CHUNK_SIZE
            if throttle_bps is not None:  # ~5 ms of bytes a send: a CDN's pacing, without
                # a Python loop per 64 KiB that takes the cores the client runs on
                chunk_size = max(16 << 10, min(256 << 10, int(throttle_bps * 0.005)))
            while pos < end:
                step = min(chunk_size, end - pos)
                if handle is not None and flip_at is None:  # throttled: as a CDN, no copy here
                    assert pace is not None
                    sent = self.connection.sendfile(handle, offset=pos, count=step)
                    pos += sent
                    pace.sent(sent)
                    continue
                if handle is not None:
                    chunk = bytearray(handle.read(step))
                else:
                    assert blob.data is not None
                    chunk = bytearray(blob.data[pos : pos + step])
                if flip_at is not None and pos <= flip_at < pos + len(chunk):
                    chunk[flip_at - pos] ^= 0xFF
                self.wfile.write(chunk)
                pos += len(chunk)
                if pace is not None:
                    pace.sent(len(chunk))


class _Pace:
    """A cap per connection, paced as a CDN does: the bytes sent by now never exceed
    `rate` times the time since the start (a sleep after each chunk would also count the
    time the send itself took, and give less than the cap when the machine is busy). A
    stalled reader gets no catch-up burst of more than 50 ms of bytes."""

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self.since = time.monotonic()
        self.total = 0

    def sent(self, nbytes: int) -> None:
        self.total += nbytes
        due = self.since + self.total / self.rate
        now = time.monotonic()
        if now > due + 0.05:
            self.since = now - self.total / self.rate - 0.05
        else:
            time.sleep(max(0.0, due - now))


# --------------------------------------------------------------------------------------
# Routing: the Hub's endpoints
# --------------------------------------------------------------------------------------


def _truthy(value: str | None) -> bool:
    return value is not None and value.lower() in ("1", "true", "yes")


def _content_type(path: str) -> str:
    if path.endswith(".json"):
        return "application/json"
    if path.endswith((".txt", ".md")):
        return "text/plain; charset=utf-8"
    return "application/octet-stream"


class _App:
    """Turns one request into one response, reading the hub's state under its lock."""

    def __init__(self, hub: HubServer) -> None:
        self.hub = hub

    def respond(self, req: _Request) -> _Response:
        rule = self.hub._take_fail(req.method, req.raw_path)
        if rule is not None:
            resp = _error(rule.status, f"Injected failure ({rule.status})", headers=rule.headers)
            resp.fault = "fail"
            return resp
        if req.origin == "cdn":
            return self._cdn(req)
        if req.token is not None and req.token not in self.hub._tokens:
            return _error(401, "Invalid credentials in Authorization header")
        segs = req.raw_path.split("/")[1:]
        if segs[:2] == ["api", "whoami-v2"]:
            return self._whoami(req)
        if len(segs) >= 3 and segs[:2] == ["api", "models"]:
            return self._api_models(req, segs[2:])
        if len(segs) >= 3 and segs[0] == "api" and segs[1] in ("datasets", "spaces", "kernels"):
            return self._repo_not_found(req)
        resolve = self._split_resolve(segs)
        if resolve is not None:
            return self._resolve(req, *resolve)
        return _error(404, "Not Found")

    # -- helpers ----------------------------------------------------------------------

    def _token(self, req: _Request) -> Token | None:
        return self.hub._tokens.get(req.token) if req.token is not None else None

    def _repo_not_found(self, req: _Request) -> _Response:
        status = 404 if self._token(req) is not None else 401
        return _error(status, "Repository not found", "RepoNotFound")

    def _access(self, req: _Request, repo_id: str, files: bool) -> Repo | _Response:
        """The repo if this caller may see it (files=True: download files), else the error."""
        token = self._token(req)
        with self.hub._lock:
            repo = self.hub._repos.get(repo_id)
        has_access = token is not None and repo_id in token.can_read
        if repo is None or (repo.private and not has_access):
            return self._repo_not_found(req)
        if repo.disabled:
            if token is None and self.hub.disabled_hides_from_anonymous:
                return self._repo_not_found(req)
            return _error(403, "Access to this resource is disabled.")
        if repo.gated and not has_access and (files or repo.metadata_refused):
            if token is None:
                return _error(
                    401,
                    f"Access to model {repo_id} is restricted. You must have access to it and "
                    "be authenticated to access it. Please log in.",
                    "GatedRepo",
                )
            return _error(
                403,
                f"Access to model {repo_id} is restricted and you are not in the authorized "
                f"list. Visit {self.hub.url}/{repo_id} to ask for access.",
                "GatedRepo",
            )
        return repo

    def _split_repo(self, segs: list[str]) -> tuple[str, list[str]]:
        """``owner/name/rest...`` or a bare ``name/rest...`` (like ``gpt2``)."""
        first = unquote(segs[0])
        if len(segs) >= 2:
            pair = f"{first}/{unquote(segs[1])}"
            with self.hub._lock:
                if pair in self.hub._repos:
                    return pair, segs[2:]
                if first in self.hub._repos and segs[1] in _API_SUBPATHS | {"resolve"}:
                    return first, segs[1:]
            if segs[1] in _API_SUBPATHS | {"resolve"}:
                return first, segs[1:]
            return pair, segs[2:]
        return first, []

    def _split_resolve(self, segs: list[str]) -> tuple[str, list[str]] | None:
        if len(segs) >= 4 and segs[2] == "resolve":
            repo_id, rest = self._split_repo(segs)
            return repo_id, rest[1:]
        if len(segs) >= 3 and segs[1] == "resolve":
            return unquote(segs[0]), segs[2:]
        return None

    def _split_rev(self, repo: Repo, segs: list[str]) -> tuple[str, str]:
        """(revision, path) from raw segments; a revision may arrive with unquoted slashes."""
        names = [unquote(seg) for seg in segs]
        for k in range(1, len(names) + 1):
            candidate = "/".join(names[:k])
            if repo.resolve(candidate) is not None:
                return candidate, "/".join(names[k:])
        return (names[0] if names else ""), "/".join(names[1:])

    def _commit(self, repo: Repo, revision: str) -> Commit | _Response:
        commit = repo.resolve(revision)
        if commit is None:
            return _error(404, f"Invalid rev id: {revision}", "RevisionNotFound")
        return commit

    def _sha(self, commit: Commit) -> str:
        override = self.hub._commit_override()
        return override if override is not None else commit.sha

    # -- /api/models/... --------------------------------------------------------------

    def _api_models(self, req: _Request, segs: list[str]) -> _Response:
        repo_id, rest = self._split_repo(segs)
        repo = self._access(req, repo_id, files=False)
        if isinstance(repo, _Response):
            return repo
        kind = rest[0] if rest else ""
        if req.method not in ("GET", "HEAD") and kind != "paths-info":
            return _error(405, "Method not allowed")
        if kind == "":
            return self._model_info(req, repo, "main")
        if kind == "revision" and len(rest) >= 2:
            return self._model_info(req, repo, "/".join(unquote(seg) for seg in rest[1:]))
        if kind == "refs" and len(rest) == 1:
            return self._refs(req, repo)
        if kind in ("tree", "commits", "paths-info") and len(rest) >= 2:
            revision, path = self._split_rev(repo, rest[1:])
            commit = self._commit(repo, revision)
            if isinstance(commit, _Response):
                return commit
            if kind == "tree":
                return self._tree(req, repo, commit, path)
            if kind == "commits":
                return self._commits(req, repo, commit)
            if req.method != "POST":
                return _error(405, "Method not allowed")
            return self._paths_info(req, repo, commit)
        return _error(404, "Not Found")

    def _model_info(self, req: _Request, repo: Repo, revision: str) -> _Response:
        commit = self._commit(repo, revision)
        if isinstance(commit, _Response):
            return commit
        blobs = _truthy(req.query.get("blobs", [None])[0])
        siblings: list[dict[str, object]] = []
        for path, entry in commit.files.items():
            sibling: dict[str, object] = {"rfilename": self.hub._served_name(repo.id, path)}
            if blobs:
                sibling["size"] = entry.size
                sibling["blobId"] = entry.blob_id
                if entry.lfs is not None:
                    sibling["lfs"] = {
                        "sha256": entry.lfs.sha256,
                        "size": entry.lfs.size,
                        "pointerSize": entry.lfs.pointer_size,
                    }
            siblings.append(sibling)
        info: dict[str, object] = {
            "_id": _sha1(repo.id.encode())[:24],
            "id": repo.id,
            "modelId": repo.id,
            "sha": self._sha(commit),
            "lastModified": iso_date(commit.date),
            "createdAt": iso_date(repo.created_at),
            "private": repo.private,
            "gated": repo.gated,
            "disabled": repo.disabled,
            "downloads": 0,
            "likes": 0,
            "tags": list(repo.tags),
            "siblings": siblings,
            "spaces": [],
            "usedStorage": sum(entry.size for entry in commit.files.values()),
        }
        if "/" in repo.id:
            info["author"] = repo.id.split("/", 1)[0]
        if repo.library_name is not None:
            info["library_name"] = repo.library_name
        if _truthy(req.query.get("securityStatus", [None])[0]):
            info["securityRepoStatus"] = {"scansDone": True, "filesWithIssues": []}
        expand = req.query.get("expand") or req.query.get("expand[]")
        if expand:
            info = {k: v for k, v in info.items() if k in {"_id", "id", *expand}}
        return _json(200, info)

    def _refs(self, req: _Request, repo: Repo) -> _Response:
        groups: dict[str, list[dict[str, str]]] = {"branches": [], "converts": [], "tags": []}
        prefixes = {
            "refs/heads/": "branches",
            "refs/convert/": "converts",
            "refs/tags/": "tags",
        }
        if _truthy(req.query.get("include_prs", [None])[0]):
            groups["pullRequests"] = []
            prefixes["refs/pr/"] = "pullRequests"
        for ref, sha in sorted(repo.refs().items()):
            for prefix, group in prefixes.items():
                if ref.startswith(prefix):
                    name = ref[len(prefix) :]
                    groups[group].append({"name": name, "ref": ref, "targetCommit": sha})
        return _json(200, groups)

    def _last_commit(self, repo: Repo, commit: Commit, path: str, is_dir: bool) -> Commit:
        def key(c: Commit) -> str | None:
            if is_dir:
                return c.dirs.get(path)
            entry = c.files.get(path)
            return entry.blob_id if entry is not None else None

        current, wanted = commit, key(commit)
        while current.parent is not None:
            parent = repo.get_commit(current.parent)
            if key(parent) != wanted:
                break
            current = parent
        return current

    def _entry_json(
        self, repo: Repo, commit: Commit, path: str, *, is_dir: bool, expand: bool
    ) -> dict[str, object]:
        out: dict[str, object]
        if is_dir:
            out = {"type": "directory", "oid": commit.dirs[path], "size": 0, "path": path}
        else:
            entry = commit.files[path]
            out = {
                "type": "file",
                "oid": entry.blob_id,
                "size": entry.size,
                "path": self.hub._served_name(repo.id, path),
            }
            if entry.lfs is not None:
                out["lfs"] = {
                    "oid": entry.lfs.sha256,
                    "size": entry.lfs.size,
                    "pointerSize": entry.lfs.pointer_size,
                }
        if expand:
            last = self._last_commit(repo, commit, path, is_dir)
            out["lastCommit"] = {"id": last.sha, "title": last.title, "date": iso_date(last.date)}
            if not is_dir:
                out["securityFileStatus"] = {
                    "status": "safe",
                    "avScan": {"virusFound": False, "virusNames": None},
                    "pickleImportScan": None,
                }
        return out

    def _tree(self, req: _Request, repo: Repo, commit: Commit, path: str) -> _Response:
        path = path.strip("/")
        if path and path not in commit.dirs:
            return _error(404, f"Entry not found: {path}", "EntryNotFound")
        recursive = _truthy(req.query.get("recursive", [None])[0])
        expand = _truthy(req.query.get("expand", [None])[0])
        prefix = f"{path}/" if path else ""
        listing: list[tuple[str, bool]] = []
        for name in commit.dirs:
            if name and name.startswith(prefix) and (recursive or "/" not in name[len(prefix) :]):
                listing.append((name, True))
        for name in commit.files:
            if name.startswith(prefix) and (recursive or "/" not in name[len(prefix) :]):
                listing.append((name, False))
        listing.sort()
        size = self.hub.tree_page_size
        if expand:
            size = min(size, self.hub.tree_page_size_expand)
        size = max(size, 1)
        cursor = req.query.get("cursor", ["0"])[0]
        start = int(cursor) if cursor.isdigit() else 0
        page = listing[start : start + size]
        body = [self._entry_json(repo, commit, n, is_dir=d, expand=expand) for n, d in page]
        headers: list[tuple[str, str]] = []
        if start + size < len(listing):
            headers.append(("Link", self._next_link(req, "cursor", str(start + size))))
        return _json(200, body, headers)

    def _next_link(self, req: _Request, key: str, value: str) -> str:
        params = [(k, v) for k, vs in req.query.items() if k != key for v in vs]
        params.append((key, value))
        return f'<{self.hub.url}{req.raw_path}?{urlencode(params)}>; rel="next"'

    def _commits(self, req: _Request, repo: Repo, commit: Commit) -> _Response:
        history = repo.history(commit.sha)
        page_arg = req.query.get("p", ["0"])[0]
        page = int(page_arg) if page_arg.isdigit() else 0
        size = max(self.hub.commits_page_size, 1)
        chunk = history[page * size : (page + 1) * size]
        formatted = "formatted" in (req.query.get("expand[]", []) + req.query.get("expand", []))
        items: list[dict[str, object]] = []
        for c in chunk:
            item: dict[str, object] = {
                "id": c.sha,
                "title": c.title,
                "message": c.body,
                "authors": [{"user": c.author, "avatar": None}],
                "date": iso_date(c.date),
            }
            if formatted:
                item["formatted"] = {
                    "title": html.escape(c.title),
                    "message": html.escape(c.body),
                }
            items.append(item)
        headers: list[tuple[str, str]] = []
        if (page + 1) * size < len(history):
            headers.append(("Link", self._next_link(req, "p", str(page + 1))))
        return _json(200, items, headers)

    def _paths_info(self, req: _Request, repo: Repo, commit: Commit) -> _Response:
        form = parse_qs(req.body.decode("utf-8", "replace"), keep_blank_values=True)
        expand = _truthy(form.get("expand", [None])[0])
        out: list[dict[str, object]] = []
        for raw in form.get("paths", []):
            path = self.hub._real_name(repo.id, raw) or raw.strip("/")
            if path in commit.files:
                out.append(self._entry_json(repo, commit, path, is_dir=False, expand=expand))
            elif path and path in commit.dirs:
                out.append(self._entry_json(repo, commit, path, is_dir=True, expand=expand))
        return _json(200, out)

    def _whoami(self, req: _Request) -> _Response:
        token = self._token(req)
        if token is None:
            return _error(401, "Invalid username or password.")
        return _json(
            200,
            {
                "type": "user",
                "id": _sha1(token.user.encode())[:24],
                "name": token.user,
                "fullname": token.user,
                "isPro": False,
                "orgs": [],
                "auth": {
                    "type": "access_token",
                    "accessToken": {"displayName": "test", "role": "read"},
                },
            },
        )

    # -- /{repo}/resolve/{revision}/{path} --------------------------------------------

    def _resolve(self, req: _Request, repo_id: str, segs: list[str]) -> _Response:
        if req.method not in ("GET", "HEAD"):
            return _error(405, "Method not allowed")
        repo = self._access(req, repo_id, files=True)
        if isinstance(repo, _Response):
            return repo
        revision, path = self._split_rev(repo, segs)
        commit = self._commit(repo, revision)
        if isinstance(commit, _Response):
            return commit
        sha = self._sha(commit)
        entry = commit.files.get(path)
        if entry is None:
            real = self.hub._real_name(repo.id, path)
            entry = commit.files.get(real) if real is not None else None
        if entry is None:
            return _error(404, "Entry not found", "EntryNotFound", [("X-Repo-Commit", sha)])
        etag = f'"{entry.etag}"'
        hostile = self.hub._etag_override(req.raw_path)
        headers = [("X-Repo-Commit", sha), ("ETag", hostile if hostile is not None else etag)]
        if entry.lfs is not None:
            headers.append(("X-Linked-Etag", hostile if hostile is not None else etag))
            headers.append(("X-Linked-Size", str(entry.size)))
            if self.hub.cdn_redirect:
                location = (
                    f"{self.hub.cdn_url}/cdn-lfs/{entry.lfs.sha256}/{quote(repo.id)}/"
                    f"{quote(entry.path)}"
                )
                return _Response(302, [*headers, ("Location", location)])
        headers.append(("Content-Type", _content_type(entry.path)))
        return self._serve(req, entry.blob, headers)

    def _serve(self, req: _Request, blob: Blob, headers: list[tuple[str, str]]) -> _Response:
        headers = [*headers, ("Accept-Ranges", "bytes")]
        start, end, status = 0, blob.size, 200
        if req.range is not None:
            parsed = parse_range(req.range, blob.size)
            if parsed == "unsatisfiable":
                return _error(
                    416,
                    "Requested Range Not Satisfiable",
                    headers=[("Content-Range", f"bytes */{blob.size}")],
                )
            if parsed is not None:
                start, end = parsed
                status = 206
                headers.append(("Content-Range", f"bytes {start}-{end - 1}/{blob.size}"))
        return _Response(status, headers, blob=blob, start=start, end=end, is_file=True)

    # -- the CDN listener -------------------------------------------------------------

    def _cdn(self, req: _Request) -> _Response:
        if req.method not in ("GET", "HEAD"):
            return _error(405, "Method not allowed")
        segs = req.raw_path.split("/")[1:]
        if len(segs) < 2 or segs[0] != "cdn-lfs":
            return _error(404, "NoSuchKey")
        with self.hub._lock:
            blob = self.hub._lfs_blobs.get(segs[1])
        if blob is None:
            return _error(404, "NoSuchKey")
        name = unquote(segs[-1]) if len(segs) > 2 else segs[1]
        disposition = f"attachment; filename*=UTF-8''{quote(name)}; filename=\"{quote(name)}\";"
        headers = [
            ("ETag", f'"{segs[1]}"'),
            ("Content-Type", "application/octet-stream"),
            ("Content-Disposition", disposition),
        ]
        return self._serve(req, blob, headers)
