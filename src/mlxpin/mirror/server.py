"""`mlxpin mirror`: this host's locked, verified snapshots over the Hub's read-only
download protocol (hub-protocol.md), for `HF_ENDPOINT` on other hosts::

    GET  /api/models/{repo}[/revision/{rev}]        model info (sha, siblings, lfs)
    GET  /api/models/{repo}/tree/{rev}[/{path}]     the file listing (recursive)
    HEAD|GET /{repo}/resolve/{rev}/{path}           X-Repo-Commit, ETag, X-Linked-*, Range

`rev` is the locked commit or revision name; anything else is a 404 with the Hub's
`X-Error-Code`. No `X-Xet-Hash` is sent (clients use plain HTTP). A file is served only
while its snapshot's stamp vouches for it: the stamp is re-checked when it changes, and
every blob is opened without following links and must have the stamped stat, or 404.
Loopback by default; `Authorization: Bearer <key>` when a key is set (clients send it as
HF_TOKEN); at most `max_transfers` downloads at once, a quarter of them per client address
(the rest wait; HEAD and API requests never do). A transfer that sends nothing for
`send_timeout_s` (a client that stopped reading) is cut, so it frees its slot.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import os
import signal
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import IO, Final
from urllib.parse import unquote

from aiohttp import web

from mlxpin.hub import source as wire
from mlxpin.project.lockfile import LockedFile, LockedModel, served_as
from mlxpin.store.layout import StoreLayout, check_stamp, view_links
from mlxpin.store.records import FileStat, Stamp, read_stamp
from mlxpin.util.hashing import oid_algorithm, oid_hex

log = logging.getLogger("mlxpin.mirror")

parse_range = wire.parse_range  # (tests import it from here)
MIRROR_HEADER: Final = "X-Mlxpin-Mirror"  # hub/client.py reads it to record the origin


@dataclass(frozen=True)
class MirrorConfig:
    host: str
    port: int
    layout: StoreLayout
    locks: tuple[LockedModel, ...]  # Hub pins and built outputs (`served_as`)
    api_key: str | None = field(default=None, repr=False)
    max_transfers: int = 64
    send_timeout_s: float = 60.0


_CHUNK: Final = 1 << 20  # each must be taken by the client within send_timeout_s


def blob_id(file: LockedFile) -> str:
    """The git blob id the Hub lists: the file's own for plain files, its pointer's for LFS."""
    if oid_algorithm(file.oid) == "gitsha1":
        return oid_hex(file.oid)
    return wire.git_blob_sha1(wire.lfs_pointer(oid_hex(file.oid), file.size))


def file_json(file: LockedFile, *, tree: bool) -> dict[str, object]:
    out: dict[str, object]
    if tree:
        out = {"type": "file", "oid": blob_id(file), "size": file.size, "path": file.path}
    else:
        out = {"rfilename": file.path, "size": file.size, "blobId": blob_id(file)}
    if oid_algorithm(file.oid) == "sha256":
        pointer_size = len(wire.lfs_pointer(oid_hex(file.oid), file.size))
        key = "oid" if tree else "sha256"
        out["lfs"] = {key: oid_hex(file.oid), "size": file.size, "pointerSize": pointer_size}
    return out


def _error(status: int, message: str, code: str | None = None) -> web.Response:
    headers = {"X-Error-Message": message, MIRROR_HEADER: "1"}
    if code is not None:
        headers["X-Error-Code"] = code
    return web.json_response({"error": message}, status=status, headers=headers)


class _Vouched:
    """The stamps of the served pins, re-read (and fully re-checked) when a stamp changes."""

    def __init__(self, layout: StoreLayout) -> None:
        self.layout = layout
        self._cache: dict[str, tuple[tuple[int, int, int], Stamp]] = {}
        self._links: dict[str, dict[str, str]] = {}  # each view's relative link texts

    def stamp(self, lock: LockedModel) -> Stamp | None:
        path = self.layout.stamp(lock)
        try:
            st = path.stat()
        except OSError:
            return None
        key = (st.st_mtime_ns, st.st_size, st.st_ino)
        cached = self._cache.get(str(path))
        if cached is not None and cached[0] == key:
            return cached[1]
        if not check_stamp(self.layout, lock).ok:
            return None
        stamp = read_stamp(self.layout, lock)
        if stamp is not None:
            self._cache[str(path)] = (key, stamp)
        return stamp

    def open(self, lock: LockedModel, file: LockedFile) -> int | None:
        """A descriptor of the blob the stamp vouches for, or None (never a changed file)."""
        stamp = self.stamp(lock)
        if stamp is None or file.path not in stamp.files:
            return None
        blob, stat = stamp.files[file.path]
        view = self.layout.view(lock)
        links = self._links.get(str(view))
        if links is None:
            links = self._links[str(view)] = view_links(self.layout, lock)
        try:
            if os.readlink(view / file.path) not in (links.get(file.path), blob):
                return None
            fd = os.open(blob, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
        except OSError:
            return None
        try:
            now = FileStat.of_result(os.fstat(fd), blob)
        except OSError:
            now = None
        if now != stat:
            os.close(fd)
            log.warning("%s: %s changed since it was verified; not serving it", lock.name, blob)
            return None
        return fd


class Mirror:
    """The routes of the mirror (module docstring), over the locks it serves."""

    def __init__(self, config: MirrorConfig) -> None:
        self.config = config
        self.by_repo: dict[str, list[LockedModel]] = {}
        self.commit: dict[str, str] = {}  # by lock name: the commit it is served at
        for lock in config.locks:
            served = served_as(lock)
            assert served is not None
            self.by_repo.setdefault(served[0], []).append(lock)
            self.commit[lock.name] = served[1]
        self.vouched = _Vouched(config.layout)
        self.slots = asyncio.Semaphore(max(1, config.max_transfers))
        self.clients: dict[str, tuple[asyncio.Semaphore, list[int]]] = {}  # (slots, users)

    @contextlib.asynccontextmanager
    async def transfer_slot(self, peer: str) -> AsyncIterator[None]:
        """One of the client's own slots first, then one of the mirror's."""
        limit = max(1, self.config.max_transfers // 4)
        mine, users = self.clients.setdefault(peer, (asyncio.Semaphore(limit), [0]))
        users[0] += 1
        try:
            async with mine, self.slots:
                yield
        finally:
            users[0] -= 1
            if not users[0]:
                del self.clients[peer]

    def find(self, repo: str, revision: str) -> LockedModel | web.Response:
        locks = self.by_repo.get(repo)
        if not locks:
            return _error(404, "Repository not found on this mirror", "RepoNotFound")
        for lock in locks:
            if revision in (self.commit[lock.name], lock.original.revision):
                return lock
        return _error(404, f"Invalid rev id: {revision} (not locked here)", "RevisionNotFound")

    def verified(self, repo: str, revision: str) -> LockedModel | web.Response:
        """The lock of ``repo@revision`` if every one of its files is vouched for now."""
        lock = self.find(repo, revision)
        if isinstance(lock, web.Response):
            return lock
        if not check_stamp(self.config.layout, lock).ok:  # every file, as of now
            return _error(404, "Repository not verified on this mirror", "RepoNotFound")
        return lock

    def info(self, repo: str, revision: str) -> web.Response:
        lock = self.verified(repo, revision)
        if isinstance(lock, web.Response):
            return lock
        body: dict[str, object] = {
            "_id": hashlib.sha1(repo.encode(), usedforsecurity=False).hexdigest()[:24],
            "id": repo,
            "modelId": repo,
            "sha": self.commit[lock.name],
            "private": lock.access == "private",
            "gated": "manual" if lock.access == "gated" else False,
            "disabled": False,
            "downloads": 0,
            "likes": 0,
            "tags": [],
            "siblings": [file_json(f, tree=False) for f in lock.files],
        }
        if "/" in repo:
            body["author"] = repo.split("/", 1)[0]
        if lock.last_modified is not None:
            body["lastModified"] = lock.last_modified.replace("Z", ".000Z")
        return web.json_response(body, headers={MIRROR_HEADER: "1"})

    def tree(self, repo: str, revision: str, prefix: str, recursive: bool) -> web.Response:
        lock = self.verified(repo, revision)
        if isinstance(lock, web.Response):
            return lock
        prefix = prefix.strip("/")
        under = f"{prefix}/" if prefix else ""
        entries: list[dict[str, object]] = []
        dirs: set[str] = set()
        for file in lock.files:
            if not file.path.startswith(under):
                continue
            rest = file.path[len(under) :]
            if recursive or "/" not in rest:
                entries.append(file_json(file, tree=True))
            else:
                dirs.add(under + rest.split("/", 1)[0])
        if prefix and not entries and not dirs:
            return _error(404, f"Entry not found: {prefix}", "EntryNotFound")
        for name in sorted(dirs):
            entries.append({"type": "directory", "oid": "0" * 40, "size": 0, "path": name})
        entries.sort(key=lambda e: str(e["path"]))
        return web.json_response(entries, headers={MIRROR_HEADER: "1"})

    async def resolve(
        self, request: web.Request, repo: str, revision: str, path: str
    ) -> web.StreamResponse:
        lock = self.find(repo, revision)
        if isinstance(lock, web.Response):
            return lock
        file = next((f for f in lock.files if f.path == path), None)
        if file is None:
            return _error(404, "Entry not found", "EntryNotFound")
        fd = self.vouched.open(lock, file)
        if fd is None:
            return _error(404, "Entry not verified on this mirror", "EntryNotFound")
        with os.fdopen(fd, "rb", buffering=0) as handle:
            headers = _file_headers(self.commit[lock.name], file)
            start, end, status = 0, file.size, 200
            wanted = request.headers.get("Range")
            if wanted is not None:
                parsed = parse_range(wanted, file.size)
                if parsed == "unsatisfiable":
                    return web.Response(
                        status=416,
                        headers={"Content-Range": f"bytes */{file.size}", MIRROR_HEADER: "1"},
                    )
                if isinstance(parsed, tuple):
                    start, end, status = parsed[0], parsed[1], 206
                    headers["Content-Range"] = f"bytes {start}-{end - 1}/{file.size}"
            response = web.StreamResponse(status=status, headers=headers)
            response.content_length = end - start
            await response.prepare(request)
            if request.method != "HEAD" and end > start:
                transport = request.transport
                if transport is None:
                    raise ConnectionResetError("client went away")
                if not await _send(transport, handle, start, end, self.config.send_timeout_s):
                    timeout = self.config.send_timeout_s
                    log.info("%s stopped reading %s for %g s: cut", request.remote, path, timeout)
                    transport.abort()
                    return response
            await response.write_eof()
            return response

    def _authorized(self, request: web.Request) -> bool:
        if self.config.api_key is None:
            return True
        scheme, _, value = request.headers.get("Authorization", "").partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(
            value.strip().encode(), self.config.api_key.encode()
        )

    async def route(self, request: web.Request) -> web.StreamResponse:
        if not self._authorized(request):
            return _error(401, "This mirror needs its key: set HF_TOKEN to it")
        segs = request.raw_path.split("?", 1)[0].split("/")[1:]
        names = [unquote(s) for s in segs]
        api = len(segs) >= 4 and segs[:2] == ["api", "models"]
        if not api and not (len(segs) >= 5 and segs[2] == "resolve"):
            return _error(404, "Not Found")
        if request.method not in ("GET", "HEAD"):
            return _error(405, "Method not allowed")
        if api:
            return self._api(request, f"{names[2]}/{names[3]}", segs[4:])
        args = (request, f"{names[0]}/{names[1]}", names[3], "/".join(names[4:]))
        if request.method == "HEAD":  # no bytes to send: no slot to wait for
            return await self.resolve(*args)
        async with self.transfer_slot(request.remote or ""):
            return await self.resolve(*args)

    def _api(self, request: web.Request, repo: str, rest: list[str]) -> web.Response:
        if not rest or rest == [""]:
            return self.info(repo, "main")
        if rest[0] == "revision" and len(rest) >= 2:
            return self.info(repo, unquote("/".join(rest[1:])))
        if rest[0] == "tree" and len(rest) >= 2:
            recursive = request.query.get("recursive", "").lower() in ("1", "true")
            path = "/".join(unquote(s) for s in rest[2:])
            return self.tree(repo, unquote(rest[1]), path, recursive)
        return _error(404, "Not Found")


async def _send(
    transport: asyncio.WriteTransport, handle: IO[bytes], start: int, end: int, timeout_s: float
) -> bool:
    """Send bytes [start, end) of ``handle``; False once a chunk is not taken in time."""
    loop = asyncio.get_running_loop()
    for offset in range(start, end, _CHUNK):
        count = min(_CHUNK, end - offset)
        try:
            await asyncio.wait_for(loop.sendfile(transport, handle, offset, count), timeout_s)
        except TimeoutError:
            return False
    return True


def _file_headers(commit: str, file: LockedFile) -> dict[str, str]:
    etag = f'"{oid_hex(file.oid)}"'
    headers = {
        "X-Repo-Commit": commit,
        "ETag": etag,
        "Accept-Ranges": "bytes",
        "Content-Type": "application/octet-stream",
        MIRROR_HEADER: "1",
    }
    if oid_algorithm(file.oid) == "sha256":
        headers["X-Linked-Etag"] = etag
        headers["X-Linked-Size"] = str(file.size)
    return headers


async def serve_mirror(config: MirrorConfig, on_ready: Callable[[str], None]) -> None:
    """Serve until SIGTERM/SIGINT; `on_ready` gets the URL once the socket listens."""
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", Mirror(config).route)
    runner = web.AppRunner(
        app,
        access_log=None,
        handle_signals=False,
        shutdown_timeout=2.0,
        keepalive_timeout=15.0,
    )
    await runner.setup()
    site = web.TCPSite(runner, config.host, config.port, backlog=128)
    try:
        await site.start()
    except BaseException:
        await runner.cleanup()
        raise
    port = runner.addresses[0][1] if runner.addresses else config.port  # --port 0
    host = f"[{config.host}]" if ":" in config.host else config.host
    on_ready(f"http://{host}:{port}")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()
