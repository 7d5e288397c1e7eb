"""A real sshd on a loopback address with a throwaway key: "another host" for the tests.

The "remote" host is this machine reached over ssh, with its own HF_HOME (sshd's SetEnv),
so it has its own store: what is fetched here is not there until it is sent. Clients use
the `ssh` on PATH, so a wrapper directory put first on PATH adds `-F <config>`: the
user's own ~/.ssh is never read or written.
"""

from __future__ import annotations

import contextlib
import getpass
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from mlxpin.gateway.addresses import free_port as _free_port

ALIAS = "testhost"


def find_sshd() -> str | None:
    for candidate in (shutil.which("sshd"), "/usr/sbin/sshd", "/usr/local/sbin/sshd"):
        if candidate and Path(candidate).is_file():
            return candidate
    return None


def _loopback() -> str:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.2", 0))
        except OSError:
            return "127.0.0.1"
    return "127.0.0.2"


@dataclass
class SshHost:
    alias: str
    address: str
    port: int
    bin_dir: Path  # put first on PATH: its `ssh` uses the test's config
    remote_home: Path  # HF_HOME of sessions on this "host"

    def env(self, base: dict[str, str]) -> dict[str, str]:
        return {**base, "PATH": f"{self.bin_dir}{os.pathsep}{base.get('PATH', '')}"}


@contextlib.contextmanager
def ssh_host(workdir: Path, python_bin: Path) -> Iterator[SshHost]:
    sshd = find_sshd()
    if sshd is None:
        raise RuntimeError("no sshd")
    workdir.mkdir(parents=True, exist_ok=True)
    os.chmod(workdir, 0o700)
    for name in ("host_key", "client_key"):
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(workdir / name)],
            check=True,
        )
    (workdir / "authorized_keys").write_text((workdir / "client_key.pub").read_text())
    os.chmod(workdir / "authorized_keys", 0o600)
    remote_home = workdir / "remote-hf-home"
    remote_home.mkdir()
    address = _loopback()
    port = _free_port(address)
    path = f"{python_bin}:/usr/local/bin:/usr/bin:/bin"
    (workdir / "sshd_config").write_text(
        f"ListenAddress {address}\n"
        f"Port {port}\n"
        f"HostKey {workdir / 'host_key'}\n"
        f"PidFile {workdir / 'sshd.pid'}\n"
        f"AuthorizedKeysFile {workdir / 'authorized_keys'}\n"
        "PasswordAuthentication no\nKbdInteractiveAuthentication no\n"
        "PubkeyAuthentication yes\nPermitRootLogin prohibit-password\n"
        "UsePAM no\nStrictModes no\nPrintMotd no\n"
        f"SetEnv HF_HOME={remote_home} PATH={path}\n"
    )
    user = getpass.getuser()
    (workdir / "ssh_config").write_text(
        f"Host {ALIAS}\n"
        f"  HostName {address}\n  Port {port}\n  User {user}\n"
        f"  IdentityFile {workdir / 'client_key'}\n  IdentitiesOnly yes\n"
        "  StrictHostKeyChecking no\n  UserKnownHostsFile /dev/null\n  LogLevel ERROR\n"
    )
    bin_dir = workdir / "bin"
    bin_dir.mkdir()
    wrapper = bin_dir / "ssh"
    # mlx.launch's rank script names MLX_RANK: that session may start a little later (see
    # SshHost.rank_delay_s), as a rank on a real second host would.
    wrapper.write_text(
        "#!/bin/sh\n"
        'case "$*" in *MLX_RANK*) sleep "${MLXPIN_TEST_RANK_DELAY:-0}";; esac\n'
        f'exec /usr/bin/ssh -F {workdir / "ssh_config"} "$@"\n'
    )
    wrapper.chmod(0o755)
    Path("/run/sshd").mkdir(exist_ok=True)  # privilege separation directory (as root)
    process = subprocess.Popen(
        [sshd, "-D", "-e", "-f", str(workdir / "sshd_config")],
        stdout=subprocess.DEVNULL,
        stderr=open(workdir / "sshd.log", "wb"),  # noqa: SIM115
    )
    host = SshHost(ALIAS, address, port, bin_dir, remote_home)
    try:
        deadline = time.monotonic() + 20
        while True:
            probe = subprocess.run(
                [str(wrapper), "-o", "BatchMode=yes", ALIAS, "true"],
                capture_output=True,
                check=False,
            )
            if probe.returncode == 0:
                break
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(
                    "sshd did not accept the test key: "
                    + probe.stderr.decode(errors="replace")
                    + (workdir / "sshd.log").read_text()
                )
            time.sleep(0.2)
        yield host
    finally:
        process.terminate()
        process.wait(timeout=10)
