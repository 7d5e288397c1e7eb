"""Distributed launch plan: one model, its ranks spread over hosts by MLX's own `mlx.launch`.

mlxpin never starts a rank itself: it writes a hostfile, checks every host first (its
share of the pin present and stamped, the same mlx/mlx-lm) and hands `mlx.launch` one
command; rank 0 serves HTTP here, behind the gateway. A remote host is checked with
`mlxpin _host check` over ssh, this host's lock on stdin: it only answers "where is this
pin, and is it intact", never decides what is pinned. In pipeline mode a remote host
needs only the files of its ranks' layers (`pipeline_files`, from this host's verified
index); this host keeps the whole pin.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from mlxpin.config import Settings
from mlxpin.errors import ConfigError, ExitCode, MlxpinError, Run, ServerMissingError
from mlxpin.plan.launch import (
    OFFLINE_ENV,
    PRIVATE_PORT_SHOWN,
    LaunchPlan,
    plan_launch,
)
from mlxpin.project.distributed import LOCAL_HOST, DistributedSpec
from mlxpin.project.lockfile import LockedModel, render, valid_locks
from mlxpin.project.manifest import Manifest, ModelSpec
from mlxpin.project.validate import is_ip
from mlxpin.store.layout import StoreLayout, check_stamp
from mlxpin.util.jsonable import fields_json

HOSTFILE_NAME = "hostfile.json"
MODEL_VARIABLE = "MLXPIN_RANK_MODEL_"  # + rank: each rank's own snapshot path, if they differ
SSH_OPTIONS = ("-o", "BatchMode=yes", "-o", "ConnectTimeout=10")
INDEX_FILE = "model.safetensors.index.json"
_LAYER_RE = re.compile(r"(?:^|\.)layers\.(\d+)\.")


@dataclass(frozen=True)
class Rank:
    rank: int
    ssh: str  # "127.0.0.1" = this host
    ips: tuple[str, ...]
    rdma: tuple[object, ...]  # jaccl: one RDMA device (or null) per peer, from the hostfile

    @property
    def local(self) -> bool:
        return self.ssh == LOCAL_HOST


@dataclass(frozen=True)
class HostShare:
    """What one host must hold: the whole pin, or (pipeline mode, a remote host) only the
    files its ranks read."""

    host: str
    ranks: tuple[int, ...]
    files: tuple[str, ...]  # sorted
    size: int
    pin_files: int
    pin_size: int

    @property
    def whole(self) -> bool:
        return len(self.files) == self.pin_files

    @property
    def need(self) -> frozenset[str] | None:
        """The paths to check/send, None for the whole pin."""
        return None if self.whole else frozenset(self.files)

    def to_json(self) -> dict[str, object]:
        return {
            "host": self.host,
            "ranks": list(self.ranks),
            "whole": self.whole,
            "files": list(self.files),
            "size": self.size,
            "pin_files": self.pin_files,
            "pin_size": self.pin_size,
        }


def host_shares(
    lock: LockedModel,
    ranks: Sequence[Rank],
    rank_files: Sequence[Sequence[str]] | None,
) -> tuple[HostShare, ...]:
    """One share per distinct host, in rank order: the union of its ranks' files in
    pipeline mode (this host: the whole pin), else the whole pin everywhere."""
    sizes = {f.path: f.size for f in lock.files}
    shares = []
    for host in dict.fromkeys(r.ssh for r in ranks):
        mine = tuple(r.rank for r in ranks if r.ssh == host)
        if rank_files is None or host == LOCAL_HOST:
            files = tuple(sizes)
        else:
            files = tuple(sorted({f for r in mine for f in rank_files[r]}))
        size = sum(sizes[f] for f in files)
        shares.append(HostShare(host, mine, files, size, len(sizes), lock.total_size))
    return tuple(shares)


@dataclass(frozen=True)
class HostCheck:
    """One host's answer to "is this pin here, verified?"."""

    host: str
    ok: bool
    path: str | None = None
    problem: str | None = None
    exit_code: int = 0
    runtime: str | None = None  # "mlx 0.32.4, mlx-lm 0.32.2"

    def to_json(self) -> dict[str, object]:
        return fields_json(self)


class HostsNotReadyError(MlxpinError):
    """Some hosts of a distributed model cannot start their rank; names every one."""

    kind = "hosts_not_ready"

    def __init__(self, name: str, failures: Sequence[HostCheck]) -> None:
        self.failures = tuple(failures)
        self.exit_code = ExitCode(failures[0].exit_code)
        listed = "; ".join(f"{f.host}: {f.problem}" for f in failures)
        hosts = ",".join(f.host for f in failures if f.host != LOCAL_HOST)
        hint = f"run {Run.of('fetch', name, '--hosts')} to prepare every host"
        if any(f.exit_code == ExitCode.UNAVAILABLE for f in failures):
            hint += (
                "; check that `ssh HOST` works without a password and that mlxpin, mlx and "
                "mlx-lm are installed there (the same versions as here)"
            )
        super().__init__(
            f"{name}: {len(failures)} host(s) not ready, no rank started: {listed}",
            hint if hosts or len(failures) > 1 else f"run {Run.of('fetch', name)}",
        )

    def to_json(self) -> dict[str, object]:
        data = super().to_json()
        data["hosts"] = [f.to_json() for f in self.failures]
        return data


@dataclass(frozen=True)
class DistributedPlan:
    server: LaunchPlan  # labels, ports, server options, env, this host's snapshot
    backend: str
    pipeline: bool
    starting_port: int
    launcher: tuple[str, ...]  # mlx.launch
    python: str  # the interpreter every rank runs
    ranks: tuple[Rank, ...]
    env: tuple[tuple[str, str], ...]  # exported on every rank (offline first)
    hosts: tuple[HostCheck, ...]  # one per distinct host, in rank order
    rank_files: tuple[tuple[str, ...], ...] | None  # pipeline: the files each rank reads
    shares: tuple[HostShare, ...] = ()  # what each host holds (same order as hosts)

    @property
    def name(self) -> str:
        return self.server.name

    @property
    def hostfile_path(self) -> Path:
        return self.server.cwd / HOSTFILE_NAME

    def path_of(self, rank: int) -> str:
        host = self.ranks[rank].ssh
        for check in self.hosts:
            if check.host == host and check.path is not None:
                return check.path
        raise AssertionError(f"no checked path for {host}")

    @property
    def same_paths(self) -> bool:
        return len({self.path_of(r.rank) for r in self.ranks}) == 1

    def hostfile(self) -> dict[str, Any]:
        """mlx's JSON hostfile (`mlx._distributed_utils.common.Hostfile`)."""
        envs = [f"{k}={v}" for k, v in self.env]
        if not self.same_paths:
            envs += [f"{MODEL_VARIABLE}{r.rank}={self.path_of(r.rank)}" for r in self.ranks]
        return {
            "backend": self.backend,
            "envs": envs,
            "hosts": [{"ssh": r.ssh, "ips": list(r.ips), "rdma": list(r.rdma)} for r in self.ranks],
        }

    def _server_tail(self, private_port: int | str) -> list[str]:
        """mlx_lm.server's flags after --model: options, --port, --pipeline."""
        args = list(self.server.server_args)
        at = args.index("--model")
        del args[at : at + 2]
        tail = [*args, "--port", str(private_port)]
        return [*tail, "--pipeline"] if self.pipeline else tail

    def rank_argv(self, rank: int, private_port: int | str) -> list[str]:
        """What rank `rank` ends up running (for the plan; mlx.launch does the running)."""
        tail = self._server_tail(private_port)
        return [self.python, "-m", "mlx_lm", "server", "--model", self.path_of(rank), *tail]

    def command(self, private_port: int | str) -> list[str]:
        """The one command `mlx.launch` runs on every host (it sets MLX_RANK)."""
        if self.same_paths:
            return self.rank_argv(0, private_port)
        # mlx.launch gives every rank the same command: each picks its own host's path.
        script = f'v={MODEL_VARIABLE}$MLX_RANK; exec "$0" "$@" --model "${{!v}}"'
        tail = self._server_tail(private_port)
        return ["/bin/bash", "-c", script, self.python, "-m", "mlx_lm", "server", *tail]

    def launch_argv(self, private_port: int | str) -> list[str]:
        return [
            *self.launcher,
            "--hostfile",
            str(self.hostfile_path),
            "--starting-port",
            str(self.starting_port),
            "--",
            *self.command(private_port),
        ]

    def shares_in_host_order(self) -> tuple[HostShare | None, ...]:
        """What each of ``hosts`` holds (all None for a plan made without shares)."""
        return self.shares or (None,) * len(self.hosts)

    def to_json(self) -> dict[str, Any]:
        """What `launch --dry-run --json` prints as "plan" for a distributed model."""
        data = self.server.to_json()
        data["argv"] = self.launch_argv(PRIVATE_PORT_SHOWN)
        data["distributed"] = {
            "backend": self.backend,
            "pipeline": self.pipeline,
            "starting_port": self.starting_port,
            "hostfile_path": str(self.hostfile_path),
            "hostfile": self.hostfile(),
            "ranks": [
                {
                    "rank": r.rank,
                    "host": r.ssh,
                    "local": r.local,
                    "ips": list(r.ips),
                    "snapshot": self.path_of(r.rank),
                    "argv": self.rank_argv(r.rank, PRIVATE_PORT_SHOWN),
                    "files": list(self.rank_files[r.rank]) if self.rank_files else None,
                }
                for r in self.ranks
            ],
            "hosts": [
                {**h.to_json(), **({"share": s.to_json()} if s is not None else {})}
                for h, s in zip(self.hosts, self.shares_in_host_order(), strict=True)
            ],
        }
        return data


# --- hosts ---------------------------------------------------------------------------------


def _ranks_from_hostfile(path: Path) -> tuple[tuple[Rank, ...], str, tuple[str, ...]]:
    def bad(problem: str) -> ConfigError:
        return ConfigError(
            f"{path}: {problem}",
            "write mlx's JSON hostfile, e.g. with `mlx.distributed_config`, whose first "
            'host is {"ssh": "127.0.0.1", "ips": ["<this host\'s IP>"]}',
        )

    try:
        data = json.loads(path.read_text())
    except OSError as exc:
        raise bad(f"cannot read the hostfile ({exc.strerror})") from None
    except ValueError as exc:
        raise bad(f"not JSON ({exc})") from None
    backend, envs, hosts = "", [], data
    if isinstance(data, dict):
        backend, envs, hosts = data.get("backend", ""), data.get("envs", []), data.get("hosts")
    if not isinstance(hosts, list) or len(hosts) < 2:
        raise bad("needs a list of at least two hosts")
    if not isinstance(backend, str) or not isinstance(envs, list):
        raise bad("`backend` must be a string and `envs` a list")
    ranks: list[Rank] = []
    for index, host in enumerate(hosts):
        if not isinstance(host, dict) or not isinstance(host.get("ssh"), str):
            raise bad(f"host {index} has no `ssh` name")
        ips, rdma = host.get("ips", []), host.get("rdma", [])
        if not isinstance(ips, list) or not all(isinstance(i, str) and is_ip(i) for i in ips):
            raise bad(f"host {index}: `ips` must be a list of IP addresses")
        if not isinstance(rdma, list):
            raise bad(f"host {index}: `rdma` must be a list")
        ranks.append(Rank(index, host["ssh"], tuple(ips), tuple(rdma)))
    if not ranks[0].local:
        raise bad(
            f"the first host is rank 0, which serves HTTP behind this host's gateway: its "
            f'`ssh` must be "{LOCAL_HOST}" (this host), not {ranks[0].ssh!r}'
        )
    if not all(isinstance(e, str) and "=" in e for e in envs):
        raise bad("`envs` entries must be NAME=value strings")
    return tuple(ranks), backend, tuple(envs)


def ranks_of(spec: DistributedSpec) -> tuple[tuple[Rank, ...], str, tuple[tuple[str, str], ...]]:
    """(ranks, backend, env from the hostfile) for a model's [distributed] table."""
    file_env: tuple[str, ...] = ()
    file_backend = ""
    if spec.hostfile is not None:
        ranks, file_backend, file_env = _ranks_from_hostfile(spec.hostfile)
    else:
        assert spec.hosts is not None
        ranks = tuple(Rank(i, h.ssh, h.ips, ()) for i, h in enumerate(spec.hosts))
    backend = spec.backend or file_backend or "ring"
    if backend == "ring" and any(not r.ips for r in ranks):
        missing = ", ".join(r.ssh for r in ranks if not r.ips)
        raise ConfigError(
            f"the ring backend needs an IP address for every host; none for {missing}",
            "add `ips` to those hosts (in `hosts` or the hostfile)",
        )
    env = [tuple(e.split("=", 1)) for e in file_env]
    return ranks, backend, tuple((k, v) for k, v in env)


# --- preflight -----------------------------------------------------------------------------


def runtime_versions() -> str | None:
    """mlx and mlx-lm as installed for this interpreter (None if mlx_lm is missing)."""
    from importlib import metadata

    try:
        return f"mlx {metadata.version('mlx')}, mlx-lm {metadata.version('mlx-lm')}"
    except metadata.PackageNotFoundError:
        return None


def check_here(
    layout: StoreLayout,
    lock: LockedModel,
    host: str,
    verify: bool,
    need: frozenset[str] | None = None,
) -> HostCheck:
    """Is `lock`'s snapshot present and stamped (or, with `verify`, re-hashed) here?
    `need`: only these files of it must be (a pipeline host's share; None: every file)."""
    path = str(layout.view(lock))
    runtime = runtime_versions()
    if verify:
        from mlxpin.store.subset import verify_subset
        from mlxpin.store.verify import NoProgress

        outcome = verify_subset(layout, lock, need, NoProgress())
        if outcome.bad:
            file, problem = outcome.bad[0]
            return HostCheck(host, False, path, f"{file}: {problem}", ExitCode.DATA, runtime)
    else:
        stamp = check_stamp(layout, lock, need=need)
        if not stamp.ok:
            problem = stamp.problem or "snapshot not verified"
            return HostCheck(host, False, path, problem, ExitCode.NO_INPUT, runtime)
    if runtime is None:
        problem = "mlx_lm is not installed for " + sys.executable
        return HostCheck(host, False, path, problem, ExitCode.UNAVAILABLE, None)
    return HostCheck(host, True, path, None, 0, runtime)


SshRunner = Callable[[str, Sequence[str], bytes, float], "subprocess.CompletedProcess[bytes]"]


def run_over_ssh(
    host: str, argv: Sequence[str], stdin: bytes, timeout_s: float
) -> subprocess.CompletedProcess[bytes]:
    """`ssh HOST argv...` with `stdin`; the remote shell gets one quoted command line."""
    return subprocess.run(
        ["ssh", *SSH_OPTIONS, host, shlex.join(argv)],
        input=stdin,
        capture_output=True,
        timeout=timeout_s,
        check=False,
    )


def remote_mlxpin(python: str) -> list[str]:
    return [python, "-m", "mlxpin", "_host"]


def check_remote(
    host: str,
    lock: LockedModel,
    python: str,
    verify: bool,
    ssh: SshRunner = run_over_ssh,
    timeout_s: float = 120.0,
    need: frozenset[str] | None = None,
) -> HostCheck:
    files = [f"--file={path}" for path in sorted(need or ())]  # `=`: a path may start with -
    argv = [*remote_mlxpin(python), "check", *(["--verify"] if verify else []), *files]
    try:
        done = ssh(host, argv, render(lock), timeout_s)
    except subprocess.TimeoutExpired:
        return HostCheck(host, False, None, f"no answer over ssh in {timeout_s:.0f} s", 69)
    except OSError as exc:
        return HostCheck(host, False, None, f"cannot run ssh ({exc.strerror})", 69)
    return parse_remote_answer(host, done.returncode, done.stdout, done.stderr)


def parse_remote_answer(host: str, code: int, stdout: bytes, stderr: bytes) -> HostCheck:
    last = (stderr.decode(errors="replace").strip().splitlines() or [""])[-1][:200]
    if code == 255:
        return HostCheck(host, False, None, f"ssh failed: {last or 'exit 255'}", 69)
    try:
        answer = json.loads(stdout.decode(errors="replace").strip().splitlines()[-1])
    except (ValueError, IndexError):
        if code == 127 or "No module named" in last:
            last = f"mlxpin is not installed there ({last})"
        return HostCheck(host, False, None, last or f"mlxpin exited {code}", 69)
    if not isinstance(answer, dict):
        return HostCheck(host, False, None, "unreadable answer from mlxpin", 69)
    return HostCheck(
        host=host,
        ok=bool(answer.get("ok")),
        path=answer.get("path") if isinstance(answer.get("path"), str) else None,
        problem=str(answer["problem"]) if answer.get("problem") else None,
        exit_code=int(answer.get("exit_code", 0) or 0),
        runtime=answer.get("runtime") if isinstance(answer.get("runtime"), str) else None,
    )


def preflight(
    shares: Sequence[HostShare],
    layout: StoreLayout,
    lock: LockedModel,
    python: str,
    verify: bool,
    ssh: SshRunner = run_over_ssh,
    here: HostCheck | None = None,
) -> tuple[HostCheck, ...]:
    """Check every host at once for its share; the answers in `shares` order (failures
    included). `here`: this host's answer, when already known."""

    def one(share: HostShare) -> HostCheck:
        if share.host == LOCAL_HOST:
            if here is not None:
                return here
            return check_here(layout, lock, share.host, verify, share.need)
        return check_remote(share.host, lock, python, verify, ssh, need=share.need)

    with ThreadPoolExecutor(max_workers=min(8, max(1, len(shares)))) as pool:
        checks = list(pool.map(one, shares))
    local = checks[0].runtime if checks and checks[0].host == LOCAL_HOST else runtime_versions()

    def same_runtime(check: HostCheck) -> HostCheck:
        if check.ok and local is not None and check.runtime not in (None, local):
            problem = f"runs {check.runtime}, this host {local}: every rank needs the same"
            return replace(check, ok=False, problem=problem, exit_code=ExitCode.UNAVAILABLE)
        return check

    return tuple(map(same_runtime, checks))


# --- pipeline ------------------------------------------------------------------------------


def pipeline_layers(num_layers: int, world: int) -> tuple[tuple[int, int], ...]:
    """[start, end) of each rank's layers, as mlx_lm's PipelineMixin splits them: evenly,
    the low ranks take the extra layers, and rank 0 runs the LAST layers."""
    base, extra = divmod(num_layers, world)
    split = [base + (1 if r < extra else 0) for r in range(world)]
    out = []
    for rank in range(world):
        start = sum(split[rank + 1 :])
        out.append((start, start + split[rank]))
    return tuple(out)


def pipeline_files(
    all_files: Sequence[str], weight_map: Mapping[str, str], num_layers: int, world: int
) -> tuple[tuple[str, ...], ...]:
    """The files each rank reads in pipeline mode: every non-weight file, the weight files
    with embeddings/norm/head, and those holding its own layers (mlx_lm's sharded_load)."""
    weights = set(weight_map.values())
    shared = {f for f in all_files if f not in weights}
    out = []
    for start, end in pipeline_layers(num_layers, world):
        mine = set(shared)
        for key, file in weight_map.items():
            match = _LAYER_RE.search(key)
            if match is None or start <= int(match.group(1)) < end:
                mine.add(file)
        out.append(tuple(sorted(mine)))
    return tuple(out)


def plan_pipeline(snapshot: Path, lock: LockedModel, world: int) -> tuple[tuple[str, ...], ...]:
    """Read the (verified) snapshot's index and config; refuse a model mlx_lm cannot split."""
    try:
        index = json.loads((snapshot / INDEX_FILE).read_text())
        config = json.loads((snapshot / "config.json").read_text())
    except (OSError, ValueError):
        raise ConfigError(
            f"{lock.name}: pipeline mode needs {INDEX_FILE} and config.json in the model "
            "(mlx_lm reads the index to give each rank its layers); this snapshot has none",
            "use a sharded checkpoint (mlx_lm.convert writes one), or pipeline = false",
        ) from None
    text = config.get("text_config", config) if isinstance(config, dict) else {}
    layers = text.get("num_hidden_layers") if isinstance(text, dict) else None
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(layers, int) or layers < world or not isinstance(weight_map, dict):
        raise ConfigError(
            f"{lock.name}: pipeline mode over {world} ranks needs num_hidden_layers >= {world} "
            f"in config.json and a weight_map in {INDEX_FILE}",
            "use fewer hosts, or pipeline = false",
        )
    return pipeline_files([f.path for f in lock.files], weight_map, layers, world)


# --- the plan ------------------------------------------------------------------------------


def find_launcher(python: str) -> tuple[str, ...]:
    """MLX's own `mlx.launch`, installed beside the interpreter (or on PATH)."""
    script = Path(python).parent / "mlx.launch"
    if script.is_file():
        return (str(script),)
    import shutil

    found = shutil.which("mlx.launch")
    if found is not None:
        return (found,)
    raise ServerMissingError(f"no `mlx.launch` beside {python} or on PATH (install mlx)")


def plan_distributed(
    settings: Settings,
    manifest: Manifest,
    spec: ModelSpec,
    *,
    environ: Mapping[str, str],
    verify: bool = False,
    ssh: SshRunner = run_over_ssh,
) -> DistributedPlan:
    """Check every host, then plan; raise HostsNotReadyError naming each failing host."""
    dist = spec.distributed
    assert dist is not None
    ranks, backend, file_env = ranks_of(dist)
    locks = valid_locks(settings.lock_dir, [spec])  # 78 for a stale/missing lock
    (lock,) = locks  # no draft or adapter: the manifest refuses them here
    layout = StoreLayout.of(settings)
    python = dist.python or sys.executable
    launcher = find_launcher(sys.executable)
    rank_files = None
    here = None
    if dist.pipeline:
        # Which files each remote host needs comes from this host's verified index.
        here = check_here(layout, lock, LOCAL_HOST, verify)
        if not here.ok:
            raise HostsNotReadyError(spec.name, [here])
        rank_files = plan_pipeline(layout.view(lock), lock, len(ranks))
    shares = host_shares(lock, ranks, rank_files)
    checks = preflight(shares, layout, lock, python, verify, ssh, here)
    failures = [c for c in checks if not c.ok]
    if failures:
        raise HostsNotReadyError(spec.name, failures)
    # This host's half (its snapshot re-checked), from the same manifest.
    server = plan_launch(settings, manifest, spec, environ=environ, locks=locks)
    env = (*OFFLINE_ENV, *file_env, *dist.env)
    return DistributedPlan(
        server=server,
        backend=backend,
        pipeline=dist.pipeline,
        starting_port=dist.starting_port,
        launcher=launcher,
        python=python,
        ranks=ranks,
        env=tuple(env),
        hosts=checks,
        rank_files=rank_files,
        shares=shares,
    )
