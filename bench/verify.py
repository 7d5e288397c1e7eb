"""Benchmark: `mlxpin verify` on a pin of 5,000 small files vs `sha256sum` of the same
blobs (the hashing floor), run in turn; the ratio is the median of the rounds'. Goal:
within 3x.

`--tree DIR` (repeatable) runs the mlxpin of each tree (DIR/src on PYTHONPATH) in the
same rounds, interleaved (floor, tree 1, tree 2, ...), to compare them side by side;
without it, the mlxpin `python` imports. Each tree's bytecode is cached before timing,
as after an install. A tree at a commit: `git archive <rev> src | tar -x -C DIR`.

Usage: python bench/verify.py [--files N] [--rounds N] [--tree DIR ...]
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

from carry import timed, tree_env, tree_option


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--files", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=9)
    tree_option(parser)
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
    envs = {"mlxpin": env}
    if args.tree:
        envs = {tree: tree_env(env, tree) for tree in args.tree}
    first = next(iter(envs.values()))
    subprocess.run([*mlxpin, "lock", "-q"], env=first, cwd=work, check=True)
    subprocess.run([*mlxpin, "fetch", "-q"], env=first, cwd=work, check=True)
    for each in envs.values():  # caches each tree's bytecode
        subprocess.run([*mlxpin, "verify", "-q"], env=each, cwd=work, check=True)
    blobs = sorted(str(p) for p in (work / "hf").rglob("blobs/sha256/*"))
    floors: list[float] = []
    ours: dict[str, list[float]] = {name: [] for name in envs}
    for _ in range(args.rounds):
        floors.append(timed(["sha256sum", *blobs], env, work))
        for name, each in envs.items():
            ours[name].append(timed([*mlxpin, "verify", "-q"], each, work))
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    print(
        f"files {len(blobs)}  sha256sum {statistics.median(floors):.3f} s (medians of "
        f"{args.rounds}); load average {load}"
    )
    for name, times in ours.items():
        ratio = statistics.median(o / f for o, f in zip(times, floors, strict=True))
        print(f"  {name}: verify {statistics.median(times):.3f} s  ratio {ratio:.2f}x (goal <= 3x)")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
