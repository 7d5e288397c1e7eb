"""Benchmark: `mlxpin verify` on a pin of 5,000 small files vs `sha256sum` of the same
blobs (the hashing floor), run in turn; the ratio is the median of the rounds'. Goal:
within 3x.

Usage: python bench/verify.py [--files N] [--rounds N]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from carry import timed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--files", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=9)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="mlxpin-bench-verify-"))
    model = work / "many"
    model.mkdir()
    (model / "config.json").write_text('{"model_type": "llama"}\n')
    for i in range(args.files):
        (model / f"f{i:05}.txt").write_bytes(os.urandom(2048))
    (work / "manifest.toml").write_text(
        'version = 1\n[models.many]\napi_label = "many"\n[models.many.launch]\npath = "./many"\n'
    )
    env = {**os.environ, "HF_HOME": str(work / "hf"), "HF_HUB_OFFLINE": "1"}
    env.pop("PYTHONDONTWRITEBYTECODE", None)  # an installed mlxpin has its bytecode
    mlxpin = [sys.executable, "-m", "mlxpin"]
    subprocess.run([*mlxpin, "lock", "-q"], env=env, cwd=work, check=True)
    subprocess.run([*mlxpin, "fetch", "-q"], env=env, cwd=work, check=True)
    blobs = sorted(str(p) for p in (work / "hf").rglob("blobs/sha256/*"))
    floors: list[float] = []
    ours: list[float] = []
    for _ in range(args.rounds):
        floors.append(timed(["sha256sum", *blobs], env, work))
        ours.append(timed([*mlxpin, "verify", "-q"], env, work))
    ratio = statistics.median(o / f for o, f in zip(ours, floors, strict=True))
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    print(
        f"files {len(blobs)}  sha256sum {statistics.median(floors):.3f} s  mlxpin verify "
        f"{statistics.median(ours):.3f} s (medians of {args.rounds})  ratio {ratio:.1f}x "
        f"(goal <= 3x); load average {load}"
    )


if __name__ == "__main__":
    main()
