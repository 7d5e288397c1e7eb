"""Where the endpoint and its servers listen: the public sockets (bound before anything
starts, so a taken port is exit 69 with no server spawned), and a private address per
server (a Unix socket in a 0700 directory, or a loopback port)."""

from __future__ import annotations

import contextlib
import os
import resource
import shutil
import socket
import stat
import tempfile
from pathlib import Path

from mlxpin.errors import DiskError

__all__ = ["bind_public", "free_port", "private_socket_dir", "raise_open_files_limit"]

#: Longest Unix socket path that fits sockaddr_un everywhere (macOS: 104 bytes with NUL).
_MAX_SOCKET_PATH = 100
#: The listen backlog, which is also how many connections asyncio accepts in one go when
#: the socket wakes, before any of them is seen and shed. The gateway budgets it twice: a
#: burst can arrive while the one before is still being closed (at 128, a flood hit EMFILE).
ACCEPT_BURST = 64
#: The soft RLIMIT_NOFILE a runner asks for (macOS refuses more than OPEN_MAX, 10240).
OPEN_FILES_TARGET = 10240


def raise_open_files_limit(target: int = OPEN_FILES_TARGET) -> None:
    """Lift the soft RLIMIT_NOFILE toward the hard limit (as far as ``target``).

    A macOS terminal or launchd job starts with a soft limit of 256, which after the
    gateway's reserves (`mlxpin.gateway.listener.connection_cap`) would leave it a single
    client connection."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = target if hard == resource.RLIM_INFINITY else min(hard, target)
    if soft != resource.RLIM_INFINITY and soft < want:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """``count`` distinct free ports: all bound at once, so none is handed out twice."""
    with contextlib.ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(count)]
        for sock in socks:
            sock.bind((host, 0))
        return [int(sock.getsockname()[1]) for sock in socks]


def bind_public(host: str, port: int) -> list[socket.socket]:
    """Listening sockets for ``host:port`` (every address it resolves to), as aiohttp
    would bind them; raises OSError if the address is taken."""
    bound: list[socket.socket] = []
    try:
        seen = set()
        for family, type_, proto, _, address in socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        ):
            if (family, address) in seen:
                continue
            seen.add((family, address))
            sock = socket.socket(family, type_, proto)
            bound.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(address)
            sock.listen(ACCEPT_BURST)
            sock.setblocking(False)
    except BaseException:
        for sock in bound:
            sock.close()
        raise
    return bound


def private_socket_dir(cwd: Path) -> Path:
    """A fresh directory only this user can open, beside a server's ``cwd``, for its
    Unix socket."""
    wanted = cwd.with_name(cwd.name + ".private")
    if len(str(wanted / "server.sock")) > _MAX_SOCKET_PATH:
        return Path(tempfile.mkdtemp(prefix="mlxpin-"))  # 0700 by construction
    shutil.rmtree(wanted, ignore_errors=True)
    with contextlib.suppress(FileNotFoundError):
        wanted.unlink()  # a file or a link where the directory belongs
    wanted.parent.mkdir(parents=True, exist_ok=True)
    wanted.mkdir(mode=0o700)
    info = wanted.lstat()
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid():
        raise DiskError(wanted, "replaced while it was created: not a directory of ours")
    os.chmod(wanted, 0o700)  # whatever the umask
    return wanted
