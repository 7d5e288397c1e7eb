"""Run one build step (mlx_lm convert / fuse) offline, in the builder's interpreter, from
verified input snapshots into a fresh directory; then hash what it wrote.

The environment is fixed: HF_HUB_OFFLINE=1 always (mlx_lm records `local_files_only` in
tokenizer_config.json, so the bytes depend on it), no token, telemetry off. The builder's
own output goes to a log file; its last lines are the error when it fails.
"""

from __future__ import annotations

import contextlib
import os
import signal
import stat as stat_mod
import subprocess
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from mlxpin.build.early import EarlyHashes, hash_and_sync
from mlxpin.errors import BuildFailedError, UnstorableFilesError
from mlxpin.project import validate
from mlxpin.project.lockfile import LockedFile
from mlxpin.project.recipe import BuildSpec
from mlxpin.store.records import FileStat
from mlxpin.store.verify import Progress

POLL_S = 0.1
_DROPPED_VARIABLES = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_TOKEN_PATH", "MLXPIN_API_KEY")


@dataclass(frozen=True)
class StepInputs:
    """Where the verified inputs lie (snapshot views)."""

    source: Path
    adapter: Path | None = None


def step_argv(python: str, spec: BuildSpec, inputs: StepInputs, out: Path) -> list[str]:
    """The builder's command line. Options at their mlx_lm default are still passed when
    they are part of the recipe, except `--q-mode affine` (older mlx_lm lack the flag)."""
    get = spec.param
    if spec.step == "fuse":
        argv = [python, "-m", "mlx_lm", "fuse", "--model", str(inputs.source)]
        argv += ["--adapter-path", str(inputs.adapter), "--save-path", str(out)]
        return argv + (["--dequantize"] if get("dequantize") else [])
    argv = [python, "-m", "mlx_lm", "convert", "--hf-path", str(inputs.source)]
    argv += ["--mlx-path", str(out)]
    if spec.step == "quantize":
        argv += ["-q", "--q-bits", str(get("bits")), "--q-group-size", str(get("group_size"))]
        if get("mode") != "affine":
            argv += ["--q-mode", str(get("mode"))]
        if get("quant_predicate") is not None:
            argv += ["--quant-predicate", str(get("quant_predicate"))]
    if get("dtype") is not None:
        argv += ["--dtype", str(get("dtype"))]
    return argv


def step_environment(environ: Mapping[str, str]) -> dict[str, str]:
    env = {k: v for k, v in environ.items() if k not in _DROPPED_VARIABLES}
    env.update(HF_HUB_OFFLINE="1", HF_HUB_DISABLE_TELEMETRY="1", TRANSFORMERS_OFFLINE="1")
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def run_step(
    name: str,
    argv: Sequence[str],
    env: Mapping[str, str],
    out: Path,
    log_path: Path,
    progress: Progress,
    early: EarlyHashes,
) -> None:
    """Run the builder to its end, reporting the bytes it has written so far and hashing
    the files it has finished (``early``: one listing of ``out`` a poll); a failure is a
    BuildFailedError with the log's last lines. Ctrl-C stops the builder too."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=dict(env),
            cwd=out.parent,
            start_new_session=True,
        )
        written = 0
        try:
            while True:
                try:
                    process.wait(timeout=POLL_S)  # returns as soon as the builder ends
                    break
                except subprocess.TimeoutExpired:
                    pass
                now = early.poll()
                if now > written:
                    progress.advance(now - written)
                    written = now
        except BaseException:
            _stop(process)
            raise
    if process.returncode == 0:
        return
    tail = _tail(log_path)
    if process.returncode < 0:
        sig = signal.Signals(-process.returncode).name
        raise BuildFailedError(
            name,
            f"the builder was killed by {sig}{tail}",
            f"out of memory? a build needs about its input plus its output in memory; "
            f"its log: {log_path}",
            temporary=True,
        )
    raise BuildFailedError(
        name,
        f"the builder exited with {process.returncode}{tail}",
        f"check the recipe in [models.{name}.build]; the builder's log: {log_path}",
        temporary=False,
    )


def _stop(process: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(5)
    except (OSError, subprocess.TimeoutExpired):
        with contextlib.suppress(OSError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def _tail(log_path: Path, lines: int = 3) -> str:
    try:
        text = log_path.read_bytes()[-4000:].decode("utf-8", "replace")
    except OSError:
        return ""
    last = [line.strip() for line in text.splitlines() if line.strip()][-lines:]
    return (": " + " | ".join(last)) if last else ""


def hash_output(
    name: str, out: Path, early: EarlyHashes | None = None, workers: int = 2
) -> tuple[LockedFile, ...]:
    """Every file the builder wrote, with its size and sha256, its bytes on disk: from
    ``early`` when it hashed the file as it is now, else here (two files at a time: the
    hashing releases the GIL). A link or a special file in the output is refused."""
    paths: list[str] = []
    for root, dirs, names in os.walk(out):
        dirs.sort()
        for file_name in sorted(names):
            full = os.path.join(root, file_name)
            relative = os.path.relpath(full, out).replace(os.sep, "/")
            if os.path.islink(full) or not os.path.isfile(full):
                raise UnstorableFilesError(name, str(out), f"{relative} is not a regular file")
            problem = validate.relpath_problem(relative)
            if problem:
                raise UnstorableFilesError(name, str(out), f"{relative!r} {problem}")
            paths.append(relative)
    if not paths:
        raise BuildFailedError(
            name, "the builder wrote no files", f"check [models.{name}.build]", temporary=False
        )

    def pin(relative: str) -> LockedFile:
        full = out / relative
        st = os.lstat(full)
        seen = FileStat.of_result(st, full) if stat_mod.S_ISREG(st.st_mode) else None
        oid = early.oid(relative, seen) if early is not None and seen is not None else None
        if oid is None:
            hashed = hash_and_sync(full, seen) if seen is not None else None
            if hashed is None:
                raise BuildFailedError(
                    name,
                    f"{relative} changed after the builder ended",
                    "build again",
                    temporary=True,
                )
            oid = hashed[1]
        return LockedFile(relative, st.st_size, oid)

    with ThreadPoolExecutor(max_workers=workers) as pool:
        return tuple(pool.map(pin, paths))
