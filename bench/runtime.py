"""Benchmark: the pinned server runtime — lock with a warm uv cache, and a no-op fetch.

Uses the real package index (uv's default, or UV_INDEX_URL): `[runtime] mlx-lm =
">=0.32,<0.33"` beside a tiny local-path model. Measures, in one run:
  1. `mlxpin lock` of the runtime with a warm uv cache (runtime.toml deleted each time;
     the first, cache-warming run is not counted),
  2. a no-op `mlxpin fetch` of the installed runtime vs a no-op `mlxpin fetch` of the same
     project without `[runtime]` (the difference is the runtime's cost; goal < 0.2 s),
     run inside a new network namespace with no network at all (`unshare --net`, when
     permitted; else with UV_INDEX_URL at a closed port and UV_OFFLINE=1), so any
     network use would fail the run: zero network is proved, not assumed.
Runs are interleaved; the best and the median of each are reported.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RUNTIME = '\n[runtime]\nmlx-lm = ">=0.32,<0.33"\n'
MANIFEST = """version = 1

[models.tiny]
api_label = "tiny"

[models.tiny.launch]
path = "./model"
"""


CPU: list[tuple[str, float]] = []  # (label, user+sys seconds of the child and its children)


def run(argv: list[str], env: dict[str, str], cwd: Path, label: str = "") -> float:
    """Wall seconds; the child's CPU seconds (robust on a busy machine) go to CPU."""
    started = time.perf_counter()
    process = subprocess.Popen(
        argv, env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    assert process.stderr is not None
    errors = process.stderr.read()
    _, status, usage = os.wait4(process.pid, 0)
    elapsed = time.perf_counter() - started
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{argv} failed: {errors}")
    CPU.append((label, usage.ru_utime + usage.ru_stime))
    return elapsed


def cpu(label: str) -> list[float]:
    return [seconds for name, seconds in CPU if name == label]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    mlxpin = [sys.executable, "-m", "mlxpin"]
    with tempfile.TemporaryDirectory(prefix="mlxpin-bench-runtime-") as tmp:
        root = Path(tmp) / "project"
        (root / "model").mkdir(parents=True)
        (root / "model" / "config.json").write_text("{}\n")
        plain = Path(tmp) / "plain"
        (plain / "model").mkdir(parents=True)
        (plain / "model" / "config.json").write_text("{}\n")
        (root / "manifest.toml").write_text(MANIFEST + RUNTIME)
        (plain / "manifest.toml").write_text(MANIFEST)
        env = {k: v for k, v in os.environ.items() if not k.startswith("MLXPIN_")}
        env["HF_HOME"] = str(Path(tmp) / "hf_home")
        run([*mlxpin, "lock"], env, root)  # warms uv's cache
        run([*mlxpin, "lock"], env, plain)
        print("installing the runtime once (not timed) ...", flush=True)
        run([*mlxpin, "fetch"], env, root)
        run([*mlxpin, "fetch"], env, plain)

        offline = {**env, "UV_INDEX_URL": "http://127.0.0.1:9/simple", "UV_OFFLINE": "1"}
        isolated = subprocess.run(["unshare", "--net", "true"], check=False).returncode == 0
        no_net = ["unshare", "--net", *mlxpin] if isolated else mlxpin
        locks: list[float] = []
        with_runtime: list[float] = []
        without: list[float] = []
        for _ in range(args.repeat):
            (root / "lock" / "runtime.toml").unlink()
            locks.append(run([*mlxpin, "lock"], env, root, "lock"))
            with_runtime.append(run([*no_net, "fetch"], offline, root, "with"))
            without.append(run([*no_net, "fetch"], offline, plain, "without"))
        extra = [a - b for a, b in zip(with_runtime, without, strict=True)]
        cpu_extra = [a - b for a, b in zip(cpu("with"), cpu("without"), strict=True)]
        print(
            f"lock of the runtime, warm uv cache: best {min(locks):.2f} s, "
            f"median {statistics.median(locks):.2f} s"
        )
        print(
            f"no-op fetch with the runtime: best {min(with_runtime):.3f} s, median "
            f"{statistics.median(with_runtime):.3f} s; without: best {min(without):.3f} s, "
            f"median {statistics.median(without):.3f} s"
        )
        print(
            f"runtime's extra on a no-op fetch: median {statistics.median(extra) * 1000:.0f} ms "
            "(goal < 200 ms); network: "
            + ("none (a network namespace without one)" if isolated else "index unreachable")
        )
        print(
            f"CPU seconds (user+sys, robust on a busy machine): lock median "
            f"{statistics.median(cpu('lock')):.2f} s; no-op fetch with the runtime "
            f"{statistics.median(cpu('with')) * 1000:.0f} ms, without "
            f"{statistics.median(cpu('without')) * 1000:.0f} ms, extra median "
            f"{statistics.median(cpu_extra) * 1000:.0f} ms"
        )
        print(f"load average during the run: {os.getloadavg()[0]:.1f} (cores: {os.cpu_count()})")


if __name__ == "__main__":
    main()
