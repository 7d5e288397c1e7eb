"""Benchmark: how long short verbs take to start, against `python -c pass` (#21).

`mlxpin --version` (goal: <= 3x) and `mlxpin status` of a locked, fetched one-model
project (goal: <= 6x), run in turn with `python -c pass` (A, B, C, A, B, C, ...), with
bytecode cached as after an install; the ratios are medians of the per-round ratios.

Usage: python bench/startup.py [--rounds N]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from carry import timed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=20)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="mlxpin-bench-startup-"))
    (work / "one").mkdir()
    (work / "one" / "config.json").write_text('{"model_type": "llama"}\n')
    (work / "manifest.toml").write_text(
        'version = 1\n[models.one]\napi_label = "one"\n[models.one.launch]\npath = "./one"\n'
    )
    env = {**os.environ, "HF_HOME": str(work / "hf"), "HF_HUB_OFFLINE": "1"}
    env.pop("PYTHONDONTWRITEBYTECODE", None)  # an installed mlxpin has its bytecode
    script = shutil.which("mlxpin", path=str(Path(sys.executable).parent))
    mlxpin = [script] if script else [sys.executable, "-m", "mlxpin"]
    for verb in ("lock", "fetch", "status"):  # the last one caches bytecode
        subprocess.run([*mlxpin, verb, "-q"], env=env, cwd=work, check=True)
    runs: dict[str, list[float]] = {"pass": [], "--version": [], "status": []}
    for _ in range(args.rounds):
        runs["pass"].append(timed([sys.executable, "-c", "pass"], env, work))
        runs["--version"].append(timed([*mlxpin, "--version"], env, work))
        runs["status"].append(timed([*mlxpin, "status"], env, work))
    base = runs["pass"]
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"load average {load}; {args.rounds} rounds")
    print(f"  python -c pass   median {statistics.median(base) * 1000:.1f} ms")
    for verb, goal in (("--version", 3), ("status", 6)):
        ratio = statistics.median(t / b for t, b in zip(runs[verb], base, strict=True))
        median = statistics.median(runs[verb]) * 1000
        print(f"  mlxpin {verb:9}  median {median:.1f} ms  {ratio:.1f}x (goal <= {goal}x)")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
