"""`[models.NAME.distributed]`: which hosts run the ranks of one model, and how.

The hostfile it may name is read at launch (`mlxpin.plan.distributed`). `"127.0.0.1"` is
this host, as `mlx.launch` treats it; rank 0 answers HTTP behind the gateway, so it is first.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from mlxpin.project.checker import Checker
from mlxpin.project.validate import is_ip

LOCAL_HOST = "127.0.0.1"
BACKENDS = ("ring", "jaccl")
DEFAULT_STARTING_PORT = 32323  # mlx.launch's own default
DISTRIBUTED_KEYS = ("hosts", "hostfile", "backend", "pipeline", "starting_port", "python", "env")
HOST_KEYS = ("ssh", "ips")
ENV_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# ssh destinations: user@host or host, no option-looking or shell-special characters.
SSH_NAME_RE = re.compile(r"(?:[A-Za-z0-9._-]+@)?[A-Za-z0-9](?:[A-Za-z0-9._:-]*[A-Za-z0-9])?")
# Variables mlxpin or mlx.launch set for every rank: the manifest cannot override them.
RESERVED_ENV = (
    "MLX_RANK",
    "MLX_HOSTFILE",
    "MLX_IBV_DEVICES",
    "MLX_JACCL_COORDINATOR",
    "HF_HUB_OFFLINE",
    "TRANSFORMERS_OFFLINE",
    "HF_DATASETS_OFFLINE",
    "HF_TOKEN",
    "HUGGING_FACE_HUB_TOKEN",
)


@dataclass(frozen=True)
class HostSpec:
    ssh: str  # "127.0.0.1" = this host; otherwise an ssh destination
    ips: tuple[str, ...]  # where the ring backend listens/connects (may be empty for jaccl)

    @property
    def local(self) -> bool:
        return self.ssh == LOCAL_HOST


@dataclass(frozen=True)
class DistributedSpec:
    hosts: tuple[HostSpec, ...] | None  # None when a hostfile is given
    hostfile: Path | None  # absolute; read at launch
    backend: str | None  # None: the hostfile's, else "ring"
    pipeline: bool
    starting_port: int
    python: str | None
    env: tuple[tuple[str, str], ...]


def parse_distributed(
    check: Checker, value: object, keys: tuple[str, ...], base: Path
) -> DistributedSpec:
    table = check.table(value, keys)
    check.known_keys(table, keys, DISTRIBUTED_KEYS)
    fix = 'e.g. hosts = ["127.0.0.1", "192.168.1.12"]  or  hostfile = "hosts.json"'
    hostfile_is = "mlx's JSON hostfile"
    which = check.exactly_one(
        table, keys, ("hosts", "ssh names"), ("hostfile", hostfile_is), fix=fix
    )
    backend = check.string(table["backend"], (*keys, "backend")) if "backend" in table else None
    if backend is not None and backend not in BACKENDS:
        raise check.fail(
            (*keys, "backend"),
            f"unknown backend {backend!r}",
            'write backend = "ring" (TCP) or backend = "jaccl" (Thunderbolt RDMA)',
        )
    hosts: tuple[HostSpec, ...] | None = None
    hostfile: Path | None = None
    if which == "hosts":
        hosts = _hosts(check, table["hosts"], (*keys, "hosts"), backend)
    else:
        _, hostfile = check.local_path(
            table["hostfile"], (*keys, "hostfile"), "must be a file path", base
        )
    pipeline = table.get("pipeline", False)
    if not isinstance(pipeline, bool):
        raise check.fail((*keys, "pipeline"), "must be true or false")
    port = check.number(
        table.get("starting_port", DEFAULT_STARTING_PORT),
        (*keys, "starting_port"),
        "a usable starting port",
        "use an integer from 1024 to 65000; each rank and IP takes the next one",
        within=(1023, 65001),
    )
    python: str | None = None
    if "python" in table:
        python = check.string(table["python"], (*keys, "python"))
        if not python.startswith("/") or "\0" in python or not python.isprintable():
            raise check.fail(
                (*keys, "python"),
                f"{python!r} is not an absolute interpreter path",
                'e.g. python = "/Users/me/mlxpin/.venv/bin/python" (the same on every host)',
            )
    env = _env(check, table.get("env", {}), (*keys, "env"))
    return DistributedSpec(hosts, hostfile, backend, pipeline, port, python, env)


def _hosts(
    check: Checker, value: object, keys: tuple[str, ...], backend: str | None
) -> tuple[HostSpec, ...]:
    if not isinstance(value, list) or len(value) < 2:
        raise check.fail(
            keys,
            "must list at least two hosts, one per rank",
            'e.g. hosts = ["127.0.0.1", "192.168.1.12"]; the first is this host (rank 0)',
        )
    if backend == "jaccl":
        raise check.fail(
            keys,
            "the jaccl backend needs each host's RDMA devices, which `hosts` cannot say",
            "write a hostfile with `mlx.distributed_config --backend jaccl` and set "
            'hostfile = "..." instead',
        )
    hosts: list[HostSpec] = []
    for item in value:
        ips: tuple[str, ...]
        if isinstance(item, str):
            ssh, ips = item, (item,) if is_ip(item) else ()
        elif isinstance(item, dict):
            check.known_keys(item, keys, HOST_KEYS)
            if "ssh" not in item:
                raise check.fail(keys, "a host table needs `ssh`", '{ ssh = "mac2.local", ... }')
            ssh = check.string(item["ssh"], keys)
            raw_ips = item.get("ips", [ssh] if is_ip(ssh) else [])
            problem = "`ips` must be an array of IP addresses"
            ips = tuple(check.string(ip, keys) for ip in check.array(raw_ips, keys, problem))
            for ip in ips:
                if not is_ip(ip):
                    raise check.fail(keys, f"{ip!r} is not an IP address")
        else:
            raise check.fail(
                keys, 'each host is an ssh name or a table { ssh = "...", ips = ["..."] }'
            )
        if not SSH_NAME_RE.fullmatch(ssh):
            raise check.fail(keys, f"{ssh!r} is not an ssh destination", "e.g. mac2.local")
        if not ips:
            raise check.fail(
                keys,
                f"the ring backend needs the IP address of host {ssh!r}",
                f'write {{ ssh = "{ssh}", ips = ["192.168.1.12"] }} or the IP itself',
            )
        hosts.append(HostSpec(ssh=ssh, ips=ips))
    if not hosts[0].local:
        raise check.fail(
            keys,
            f"the first host is rank 0, which answers HTTP behind this host's gateway, "
            f"so it must be this host, not {hosts[0].ssh!r}",
            f'start the list with "{LOCAL_HOST}"',
        )
    return tuple(hosts)


def _env(check: Checker, value: object, keys: tuple[str, ...]) -> tuple[tuple[str, str], ...]:
    table = check.table(value, keys)
    env: list[tuple[str, str]] = []
    for name, raw in table.items():
        if not ENV_NAME_RE.fullmatch(name):
            raise check.fail((*keys, name), "is not an environment variable name")
        if name in RESERVED_ENV:
            raise check.fail(
                (*keys, name), "is set by mlxpin or mlx.launch for every rank", "remove it"
            )
        text = check.string(raw, (*keys, name))
        if "\0" in text or "\n" in text:
            raise check.fail((*keys, name), "must be one line of text")
        env.append((name, text))
    return tuple(sorted(env))
