"""What the benchmarks share: timed children, a timed pipe of two processes and `tar -c |
tar -x` (the anchor export | import is measured against), a process's CPU time, and the
`--tree` option that runs other checkouts' mlxpin side by side."""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import time
from pathlib import Path

CPU: dict[str, float] = {}  # CPU seconds (user + system) per kind of run, summed


def timed(argv: list[str], env: dict[str, str], cwd: Path) -> float:
    """Wall seconds of one command run to its end (its stdout discarded)."""
    started = time.perf_counter()
    subprocess.run(argv, env=env, cwd=cwd, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - started


def wait(process: subprocess.Popen[bytes], argv: list[str]) -> int:
    """Peak RSS (bytes) of a finished child; fails loudly on a non-zero exit."""
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        raise SystemExit(f"{argv} failed with {process.returncode}")
    key = " ".join(a for a in argv[:4] if not a.startswith("/"))
    CPU[key] = CPU.get(key, 0.0) + usage.ru_utime + usage.ru_stime
    return usage.ru_maxrss * 1024


def pipe(
    left: list[str],
    right: list[str],
    envs: tuple[dict[str, str], dict[str, str]],
    cwds: tuple[Path, Path],
) -> tuple[float, int, int]:
    """(seconds, peak RSS left, peak RSS right) of `left | right`."""
    started = time.perf_counter()
    first = subprocess.Popen(left, env=envs[0], cwd=cwds[0], stdout=subprocess.PIPE)
    second = subprocess.Popen(
        right, env=envs[1], cwd=cwds[1], stdin=first.stdout, stdout=subprocess.DEVNULL
    )
    assert first.stdout is not None
    first.stdout.close()
    rss_right = wait(second, right)
    rss_left = wait(first, left)
    return time.perf_counter() - started, rss_left, rss_right


def tar_copy(source: Path, target: Path, env: dict[str, str], cwd: Path) -> float:
    """Seconds for `tar -c -C source . | tar -x -C target` into a fresh `target`."""
    shutil.rmtree(target, ignore_errors=True)
    target.mkdir()
    tar = (["tar", "-c", "-C", str(source), "."], ["tar", "-x", "-C", str(target)])
    return pipe(*tar, (env, env), (cwd, cwd))[0]


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of one process (its threads, not its children)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def tree_option(parser: argparse.ArgumentParser, what: str = "trees") -> None:
    """`--tree CHECKOUT`, repeatable: whose mlxpin each run uses (see :func:`tree_env`)."""
    parser.add_argument(
        "--tree",
        action="append",
        default=[],
        help=f"a checkout whose src/ runs mlxpin (repeat to compare {what} side by side; "
        "default: the importing one)",
    )


def tree_env(env: dict[str, str], tree: str | Path) -> dict[str, str]:
    """``env`` running the mlxpin of checkout ``tree`` ("": the importing one)."""
    return {**env, "PYTHONPATH": str(Path(tree).resolve() / "src")} if str(tree) else env
