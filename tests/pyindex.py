"""A PEP 503 package index on 127.0.0.1 serving tiny wheels built by the tests.

`build_wheel` writes a real (minimal) wheel: METADATA, WHEEL, RECORD and one module.
`PyIndex` serves `/simple/`, `/simple/<name>/` (links with `#sha256=` fragments) and the
files, counts every request, and lets a test add releases or swap a file's bytes while
it runs.
"""

from __future__ import annotations

import base64
import hashlib
import http.server
import io
import re
import threading
import zipfile
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType


def _normal(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def build_wheel(
    directory: Path,
    name: str,
    version: str,
    *,
    requires: Sequence[str] = (),
    extras: Sequence[str] = (),
    tag: str = "py3-none-any",
    files: dict[str, str] | None = None,
) -> Path:
    """A minimal valid wheel `<name>-<version>-<tag>.whl` in `directory`."""
    dist = re.sub(r"[-.]+", "_", name)
    module = dist.lower()
    info = f"{dist}-{version}.dist-info"
    metadata = ["Metadata-Version: 2.1", f"Name: {name}", f"Version: {version}"]
    metadata += [f"Provides-Extra: {extra}" for extra in extras]
    metadata += [f"Requires-Dist: {req}" for req in requires]
    contents = {
        f"{module}/__init__.py": f'__version__ = "{version}"\n',
        **(files or {}),
        f"{info}/METADATA": "\n".join(metadata) + "\n",
        f"{info}/WHEEL": (
            f"Wheel-Version: 1.0\nGenerator: mlxpin-tests\nRoot-Is-Purelib: true\nTag: {tag}\n"
        ),
    }
    record_lines = []
    for member, text in contents.items():
        data = text.encode()
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record_lines.append(f"{member},sha256={digest},{len(data)}")
    record_lines.append(f"{info}/RECORD,,")
    contents[f"{info}/RECORD"] = "\n".join(record_lines) + "\n"
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{dist}-{version}-{tag}.whl"
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for member, text in contents.items():
            info_entry = zipfile.ZipInfo(member, date_time=(2020, 1, 1, 0, 0, 0))
            archive.writestr(info_entry, text)
    path.write_bytes(buffer.getvalue())
    return path


class PyIndex:
    """Serves every wheel in `directory` (read at each request, so tests can change it)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self.requests: Counter[str] = Counter()
        self.up = True
        index = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                self._answer(head=False)

            def do_HEAD(self) -> None:
                self._answer(head=True)

            def _answer(self, head: bool) -> None:
                index.requests[self.path] += 1
                status, body, kind = index.answer(self.path)
                self.send_response(status)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Cache-Control", "no-cache, no-store")
                self.end_headers()
                if not head:
                    self.wfile.write(body)

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/simple"

    @property
    def count(self) -> int:
        return sum(self.requests.values())

    def files(self) -> dict[str, list[Path]]:
        found: dict[str, list[Path]] = {}
        for path in sorted(self.directory.glob("*.whl")):
            found.setdefault(_normal(path.name.split("-")[0]), []).append(path)
        return found

    def answer(self, path: str) -> tuple[int, bytes, str]:
        path = path.split("?", maxsplit=1)[0]
        if path in ("/simple", "/simple/"):
            links = "".join(f'<a href="/simple/{n}/">{n}</a>\n' for n in self.files())
            return 200, f"<html><body>\n{links}</body></html>".encode(), "text/html"
        match = re.fullmatch(r"/simple/([^/]+)/?", path)
        if match:
            files = self.files().get(_normal(match.group(1)))
            if not files:
                return 404, b"not found", "text/plain"
            links = "".join(
                f'<a href="/files/{p.name}#sha256={hashlib.sha256(p.read_bytes()).hexdigest()}">'
                f"{p.name}</a>\n"
                for p in files
            )
            return 200, f"<html><body>\n{links}</body></html>".encode(), "text/html"
        match = re.fullmatch(r"/files/([^/]+)", path)
        if match and (self.directory / match.group(1)).is_file():
            data = (self.directory / match.group(1)).read_bytes()
            return 200, data, "application/octet-stream"
        return 404, b"not found", "text/plain"

    def __enter__(self) -> PyIndex:
        self.thread.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.server.shutdown()
        self.server.server_close()
