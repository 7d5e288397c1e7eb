"""Benchmark: `mlxpin export -o - | mlxpin import -` vs `tar -c | tar -x` of the same blobs.

On the loopback hub from tests/, host A locks and fetches a 1 GiB repo (four LFS shards);
then, alternating and repeated, the same blobs are carried to a fresh place: by tar (no
verification, no fsync) and by export | import into a fresh host B (every byte hashed
against the lock, every file fsync'd, published atomically). The best of each counts.
Goal: >= 0.9x. `--quick` makes one round of each.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from carry import pipe, tar_copy
from fetch import MB, MLXPIN, MiB, shard

from hubserver import HubServer, LfsContent

MANIFEST = 'version = 1\n[models.big]\napi_label = "big"\n[models.big.launch]\nrepo = "bench/big"\n'


def host(workdir: Path, name: str, endpoint: str) -> tuple[Path, dict[str, str]]:
    root = workdir / name
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir()
    (root / "manifest.toml").write_text(MANIFEST)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "MLXPIN_"))}
    env.update(HF_ENDPOINT=endpoint, HF_HOME=str(root / "hf"), HF_HUB_DISABLE_XET="1")
    return root, env


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size-mb", type=int, default=1024, help="MiB in 4 shards")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="one round of each")
    args = parser.parse_args()
    with HubServer() as hub, tempfile.TemporaryDirectory(dir=os.environ.get("TMPDIR")) as tmp:
        workdir = Path(tmp)
        files: dict[str, bytes | LfsContent] = {"config.json": b'{"model_type": "llama"}\n'}
        for index in range(4):
            path = workdir / f"shard{index}.bin"
            name = f"model-{index + 1:05d}-of-00004.safetensors"
            files[name] = shard(path, args.size_mb * MiB // 4, index)
        hub.create_repo("bench/big").commit(files)
        a_root, a_env = host(workdir, "a", hub.url)
        subprocess.run([*MLXPIN, "lock", "-q"], env=a_env, cwd=a_root, check=True)
        subprocess.run([*MLXPIN, "fetch", "-q"], env=a_env, cwd=a_root, check=True)
        blobs = a_root / "hf" / "hub" / "models--bench--big" / "blobs"
        total = sum(p.stat().st_size for p in blobs.iterdir())
        load = [os.getloadavg()[0]]
        runs: dict[str, list[float]] = {"tar": [], "mlxpin": []}
        for round_ in range(1 if args.quick else args.rounds):
            for tool in ("tar", "mlxpin") if round_ % 2 == 0 else ("mlxpin", "tar"):
                os.sync()
                if tool == "tar":
                    runs[tool].append(tar_copy(blobs, workdir / "tar-target", a_env, a_root))
                else:
                    b_root, b_env = host(workdir, "b", "http://127.0.0.1:9")
                    shutil.copytree(a_root / "lock", b_root / "lock")
                    ours = ([*MLXPIN, "export", "-q", "-o", "-"], [*MLXPIN, "import", "-q", "-"])
                    runs[tool].append(pipe(*ours, (a_env, b_env), (a_root, b_root))[0])
        load.append(os.getloadavg()[0])
    best_tar, best_pin = min(runs["tar"]), min(runs["mlxpin"])
    print(f"carry {total / MB:.0f} MB (4 LFS shards) from host A to a fresh host B")
    print(
        f"  tar -c | tar -x (no verification): {best_tar:6.2f} s  {total / MB / best_tar:5.0f} MB/s"
    )
    rate = total / MB / best_pin
    print(f"  mlxpin export | import (verified):  {best_pin:6.2f} s  {rate:5.0f} MB/s")
    print(f"  ratio: {best_tar / best_pin:.2f}x  (goal >= 0.9x)")
    every = {tool: [round(t, 2) for t in times] for tool, times in runs.items()}
    print(f"  all runs: tar {every['tar']}, mlxpin {every['mlxpin']}")
    print(f"load average before/after: {load[0]:.1f}/{load[1]:.1f} on {os.cpu_count()} cores")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
