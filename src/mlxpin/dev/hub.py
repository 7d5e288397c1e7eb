"""`python -m mlxpin.dev.hub`: a stand-in for the Hugging Face Hub, to try mlxpin offline.

It serves one folder (by default a freshly generated tiny model) as the repo OWNER/NAME at
one commit on branch ``main``, on 127.0.0.1, over the part of the Hub's protocol that
`mlxpin lock`/`fetch` and `hf download` use: model info (revision → commit, every file's
size and hash), refs, tree and paths-info listings, and file downloads with ``ETag``,
``X-Repo-Commit`` and ``Range``, on the standard library's HTTP server.
``tests/hubserver.py`` is the full test hub (commits, branches, faults).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

from mlxpin.hub import source as wire
from mlxpin.util.hashing import hash_file, oid_hex

# Shared with the mirror; tests/hubserver.py imports them from here.
git_blob_sha1, lfs_pointer, parse_range = wire.git_blob_sha1, wire.lfs_pointer, wire.parse_range

#: Files stored with git-lfs (like the Hub's default .gitattributes).
LFS_SUFFIXES: tuple[str, ...] = (".safetensors", ".bin", ".gguf")
CHUNK = 1 << 20


@dataclass(frozen=True)
class File:
    path: str  # relative, with "/"
    source: Path
    size: int
    blob_id: str  # git blob sha1 of the content, or of the LFS pointer
    sha256: str | None  # LFS files only

    @property
    def etag(self) -> str:
        return self.sha256 if self.sha256 is not None else self.blob_id

    def tree_entry(self) -> dict[str, object]:
        entry: dict[str, object] = {"type": "file", "oid": self.blob_id, "size": self.size}
        if self.sha256 is not None:
            pointer = len(lfs_pointer(self.sha256, self.size))
            entry["lfs"] = {"oid": self.sha256, "size": self.size, "pointerSize": pointer}
        return {**entry, "path": self.path}


@dataclass(frozen=True)
class Repo:
    id: str
    files: Mapping[str, File]
    commit: str  # stands for a git commit: a hash of the listing (same files, same id)

    def info(self) -> dict[str, object]:
        siblings: list[dict[str, object]] = []
        for f in self.files.values():
            sibling: dict[str, object] = {"rfilename": f.path, "size": f.size, "blobId": f.blob_id}
            if f.sha256 is not None:
                pointer = len(lfs_pointer(f.sha256, f.size))
                sibling["lfs"] = {"sha256": f.sha256, "size": f.size, "pointerSize": pointer}
            siblings.append(sibling)
        date = "2026-01-01T00:00:00.000Z"
        return {"id": self.id, "sha": self.commit, "lastModified": date, "siblings": siblings}

    def listing(self, prefix: str, recursive: bool) -> list[dict[str, object]]:
        """Tree entries under ``prefix`` ("" = root): directories first, then files."""
        base = f"{prefix}/" if prefix else ""
        dirs: set[str] = set()
        out: list[dict[str, object]] = []
        for f in self.files.values():
            if not f.path.startswith(base):
                continue
            rest = f.path[len(base) :].split("/")
            for depth in range(1, len(rest) if recursive else min(len(rest), 2)):
                dirs.add(base + "/".join(rest[:depth]))
            if recursive or len(rest) == 1:
                out.append(f.tree_entry())
        return [
            {"type": "directory", "oid": git_blob_sha1(d.encode()), "size": 0, "path": d}
            for d in sorted(dirs)
        ] + out


def scan(repo_id: str, folder: Path) -> Repo:
    """Every regular file under ``folder`` (hidden ones left out), hashed as the Hub does."""
    files: dict[str, File] = {}
    for source in sorted(folder.rglob("*")):
        rel = source.relative_to(folder).as_posix()
        if not source.is_file() or any(part.startswith(".") for part in rel.split("/")):
            continue
        size = source.stat().st_size
        if source.suffix in LFS_SUFFIXES:
            sha = oid_hex(hash_file(source, "sha256", size))
            files[rel] = File(rel, source, size, git_blob_sha1(lfs_pointer(sha, size)), sha)
        else:
            files[rel] = File(rel, source, size, oid_hex(hash_file(source, "gitsha1", size)), None)
    listing = "".join(f"{f.path}\0{f.blob_id}\n" for f in files.values())
    return Repo(repo_id, files, hashlib.sha1(listing.encode(), usedforsecurity=False).hexdigest())


Headers = Sequence[tuple[str, str]]


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], repo: Repo) -> None:
        super().__init__(address, _Handler)
        self.repo = repo


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:  # and HEAD, POST; every request is logged on stderr
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0)).decode()
        url = urlsplit(self.path)
        segs = [unquote(s) for s in url.path.split("/")[1:]]
        repo = self.server.repo
        api = segs[:2] == ["api", "models"]
        repo_segs = segs[2:4] if api else segs[:2]
        rest = segs[4:] if api else segs[2:]
        if repo_segs != repo.id.split("/"):
            return self._error(401, "RepoNotFound", "Repository not found")
        kind = rest[0] if rest else "revision"
        revision = rest[1] if len(rest) > 1 else "main"
        if kind == "refs" and api:
            main = {"name": "main", "ref": "refs/heads/main", "targetCommit": repo.commit}
            return self._json({"branches": [main], "converts": [], "tags": []})
        if kind not in (("revision", "tree", "paths-info") if api else ("resolve",)):
            return self._error(404, None, "Not Found")
        if revision not in ("main", repo.commit):
            return self._error(404, "RevisionNotFound", f"Invalid rev id: {revision}")
        path = "/".join(rest[2:]).strip("/")
        if kind == "revision":
            return self._json(repo.info())
        if kind == "tree":
            recursive = parse_qs(url.query).get("recursive", [""])[0].lower() in ("1", "true")
            return self._json(repo.listing(path, recursive))
        if kind == "paths-info":
            paths = parse_qs(body).get("paths", [])
            return self._json([e for e in repo.listing("", True) if e["path"] in paths])
        return self._resolve(path)

    do_HEAD = do_POST = do_GET

    def _resolve(self, path: str) -> None:
        found = self.server.repo.files.get(path)
        headers: list[tuple[str, str]] = [("X-Repo-Commit", self.server.repo.commit)]
        if found is None:
            return self._error(404, "EntryNotFound", "Entry not found", headers)
        headers += [("ETag", f'"{found.etag}"'), ("Accept-Ranges", "bytes")]
        if found.sha256 is not None:
            headers += [("X-Linked-Etag", f'"{found.etag}"'), ("X-Linked-Size", str(found.size))]
        start, end, status = 0, found.size, 200
        wanted = parse_range(self.headers.get("Range", ""), found.size)
        if wanted == "unsatisfiable":
            headers.append(("Content-Range", f"bytes */{found.size}"))
            return self._error(416, None, "Requested Range Not Satisfiable", headers)
        if wanted is not None:
            (start, end), status = wanted, 206
            headers.append(("Content-Range", f"bytes {start}-{end - 1}/{found.size}"))
        self._send(status, headers, end - start)
        if self.command == "GET":
            with found.source.open("rb") as handle:
                handle.seek(start)
                while start < end and (chunk := handle.read(min(CHUNK, end - start))):
                    self.wfile.write(chunk)
                    start += len(chunk)
        return None

    def _send(self, status: int, headers: Headers, length: int) -> None:
        self.send_response(status)
        for key, value in [*headers, ("Content-Length", str(length))]:
            self.send_header(key, value)
        self.end_headers()

    def _json(self, payload: object, status: int = 200, headers: Headers = ()) -> None:
        body = json.dumps(payload).encode()
        self._send(status, [*headers, ("Content-Type", "application/json")], len(body))
        if self.command != "HEAD":
            self.wfile.write(body)

    def _error(self, status: int, code: str | None, message: str, headers: Headers = ()) -> None:
        extra = [("X-Error-Code", code)] if code else []
        self._json({"error": message}, status, [*headers, *extra, ("X-Error-Message", message)])


def main(argv: list[str] | None = None) -> int:
    import argparse
    import tempfile

    parser = argparse.ArgumentParser(
        prog="python -m mlxpin.dev.hub",
        description="Serve a folder as a Hugging Face Hub repo on this machine, to try "
        "`mlxpin lock`/`fetch` (and `hf download`) offline. Without FOLDER, a tiny random-weight "
        "model is generated and served.",
    )
    parser.add_argument("folder", type=Path, nargs="?", metavar="FOLDER")
    parser.add_argument("--repo", default="mlxpin-dev/tiny", help="repo id, OWNER/NAME")
    parser.add_argument("--host", default="127.0.0.1", help="default: %(default)s")
    parser.add_argument("--port", type=int, default=8766, help="default: %(default)s; 0: any free")
    args = parser.parse_args(argv)
    if not re.fullmatch(r"[\w.-]+/[\w.-]+", args.repo):
        parser.error(f"--repo must be OWNER/NAME, not {args.repo!r}")
    with tempfile.TemporaryDirectory(prefix="mlxpin-dev-hub-") as scratch:
        folder = args.folder
        if folder is None:
            from mlxpin.dev.tinymodel import generate

            folder = Path(scratch)
            generate(folder)
        if not folder.is_dir():
            parser.error(f"{folder} is not a directory")
        repo = scan(args.repo, folder)
        try:
            server = _Server((args.host, args.port), repo)
        except OSError as exc:
            parser.exit(69, f"cannot listen on {args.host}:{args.port}: {exc.strerror}\n")
        with server:
            size = sum(f.size for f in repo.files.values())
            print(f"serving {folder} as {repo.id}, main = {repo.commit}", flush=True)
            print(f"({len(repo.files)} files, {size:,} bytes); Ctrl-C stops. In another shell:")
            print(f"export HF_ENDPOINT=http://{args.host}:{server.server_port}", flush=True)
            with contextlib.suppress(KeyboardInterrupt):
                server.serve_forever()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
