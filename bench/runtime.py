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


def run(argv: list[str], env: dict[str, str], cwd: Path) -> float:
    started = time.perf_counter()
    done = subprocess.run(argv, env=env, cwd=cwd, capture_output=True, text=True, check=False)
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"{argv} failed ({done.returncode}): {done.stderr}")
    return elapsed


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
            locks.append(run([*mlxpin, "lock"], env, root))
            with_runtime.append(run([*no_net, "fetch"], offline, root))
            without.append(run([*no_net, "fetch"], offline, plain))
        extra = [a - b for a, b in zip(with_runtime, without, strict=True)]
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


if __name__ == "__main__":
    main()
