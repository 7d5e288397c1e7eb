"""Benchmark the fleet: bundles, the mirror, and ranged fetch at a capped link speed.

On the loopback hub from tests/, host A locks and fetches a ~1 GB repo (four LFS
shards + small files); then, side by side in one run:
  1. `mlxpin export -o - | mlxpin import -` into a fresh host B (verifying every byte)
     vs `tar -c <the same blobs> | tar -x` into a fresh directory (no verification);
  2. `mlxpin fetch` on B from A's `mlxpin mirror` vs from the loopback hub;
  3. one 1 GB file from a hub that caps each connection at 50 MB/s:
     `mlxpin fetch` (ranged connections) vs `hf download --revision <sha>`;
with the peak RSS of every mlxpin process. Goals: 1. >= 0.9x, 2. >= 0.95x,
RSS < 100 MB, 3. >= 3x.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from hubserver import HubServer, LfsContent, pseudo_random_bytes  # noqa: E402

sys.path.insert(0, str(ROOT / "bench"))
from carry import CPU, pipe, tar_copy, wait  # noqa: E402

MB = 1000 * 1000
MLXPIN = [sys.executable, "-m", "mlxpin"]


def run(argv: list[str], env: dict[str, str], cwd: Path) -> tuple[float, int]:
    started = time.perf_counter()
    process = subprocess.Popen(argv, env=env, cwd=cwd, stdout=subprocess.DEVNULL)
    rss = wait(process, argv)
    return time.perf_counter() - started, rss


def write_shard(path: Path, megabytes: int, seed: int) -> None:
    with path.open("wb") as handle:
        for block in range(max(1, megabytes // 8)):
            handle.write(pseudo_random_bytes(8 * MB, seed=seed * 1000 + block))


def host(workdir: Path, name: str, endpoint: str, manifest: str) -> tuple[Path, dict[str, str]]:
    root = workdir / name
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir()
    (root / "manifest.toml").write_text(manifest)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "MLXPIN_"))}
    env.update(
        HF_ENDPOINT=endpoint,
        HF_HOME=str(root / "hf"),
        HF_HUB_DISABLE_XET="1",
        HF_HUB_DISABLE_PROGRESS_BARS="1",
        HF_HUB_DISABLE_TELEMETRY="1",
    )
    return root, env


def start_mirror(root: Path, env: dict[str, str]) -> tuple[subprocess.Popen[str], str]:
    process = subprocess.Popen(
        [*MLXPIN, "mirror", "--port", "0"], env=env, cwd=root, stderr=subprocess.PIPE, text=True
    )
    assert process.stderr is not None
    for line in process.stderr:
        if "mlxpin mirror: serving" in line:
            return process, line.rsplit(" ", 1)[1].strip()
    raise SystemExit("the mirror did not start")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size-mb", type=int, default=1000)
    parser.add_argument("--capped-mb", type=int, default=1000, help="size of the capped file")
    parser.add_argument("--cap-mbps", type=float, default=50.0, help="MB/s per connection")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    manifest = (
        'version = 1\n[models.big]\napi_label = "big"\n[models.big.launch]\nrepo = "bench/big"\n'
    )
    with HubServer() as hub, tempfile.TemporaryDirectory(dir=os.environ.get("TMPDIR")) as tmp:
        workdir = Path(tmp)
        files: dict[str, bytes | LfsContent] = {"config.json": b'{"model_type": "llama"}\n'}
        for index in range(4):
            shard = workdir / f"shard{index}.bin"
            write_shard(shard, args.size_mb // 4, index)
            files[f"model-{index + 1:05d}-of-00004.safetensors"] = LfsContent(shard)
        hub.create_repo("bench/big").commit(files)
        capped = workdir / "capped.bin"
        write_shard(capped, args.capped_mb, 77)
        one_commit = hub.create_repo("bench/one").commit({"model.safetensors": LfsContent(capped)})

        a_root, a_env = host(workdir, "a", hub.url, manifest)
        subprocess.run([*MLXPIN, "lock", "-q"], env=a_env, cwd=a_root, check=True)
        subprocess.run([*MLXPIN, "fetch", "-q"], env=a_env, cwd=a_root, check=True)
        blobs_dir = a_root / "hf" / "hub" / "models--bench--big" / "blobs"
        total = sum(p.stat().st_size for p in blobs_dir.iterdir())

        # 1. export | import vs tar | tar
        bundle_runs: list[float] = []
        tar_runs: list[float] = []
        rss_export = rss_import = 0
        for round_ in range(args.rounds):
            for tool in ("tar", "mlxpin") if round_ % 2 == 0 else ("mlxpin", "tar"):
                os.sync()
                if tool == "tar":
                    tar_runs.append(tar_copy(blobs_dir, workdir / "tar-target", a_env, a_root))
                else:
                    b_root, b_env = host(workdir, "b", "http://127.0.0.1:9", manifest)
                    shutil.copytree(a_root / "lock", b_root / "lock")
                    seconds, left, right = pipe(
                        [*MLXPIN, "export", "-q", "-o", "-"],
                        [*MLXPIN, "import", "-q", "-"],
                        (a_env, b_env),
                        (a_root, b_root),
                    )
                    bundle_runs.append(seconds)
                    rss_export, rss_import = max(rss_export, left), max(rss_import, right)

        # 2. fetch from the mirror vs from the hub
        mirror, url = start_mirror(a_root, a_env)
        mirror_runs: list[float] = []
        hub_runs: list[float] = []
        rss_fetch = 0
        upstream = 0
        try:
            for round_ in range(args.rounds):
                for source in ("hub", "mirror") if round_ % 2 == 0 else ("mirror", "hub"):
                    os.sync()
                    endpoint = url if source == "mirror" else hub.url
                    b_root, b_env = host(workdir, "b", endpoint, manifest)
                    shutil.copytree(a_root / "lock", b_root / "lock")
                    before = hub.count()
                    seconds, rss = run([*MLXPIN, "fetch", "-q"], b_env, b_root)
                    if source == "mirror":
                        upstream += hub.count() - before
                    (mirror_runs if source == "mirror" else hub_runs).append(seconds)
                    rss_fetch = max(rss_fetch, rss)
        finally:
            mirror.send_signal(signal.SIGTERM)
            _, _, usage = os.wait4(mirror.pid, 0)
            rss_mirror = usage.ru_maxrss * 1024

        # 3. one capped file: mlxpin fetch (ranged) vs hf download
        hub.throttle_bps = args.cap_mbps * MB
        one_manifest = (
            'version = 1\n[models.one]\napi_label = "one"\n'
            '[models.one.launch]\nrepo = "bench/one"\n'
        )
        c_root, c_env = host(workdir, "c", hub.url, one_manifest)
        subprocess.run([*MLXPIN, "lock", "-q"], env=c_env, cwd=c_root, check=True)
        os.sync()
        capped_pin, rss_capped = run([*MLXPIN, "fetch", "-q"], c_env, c_root)
        hf = shutil.which("hf", path=str(Path(sys.executable).parent)) or "hf"
        d_root, d_env = host(workdir, "d", hub.url, one_manifest)
        os.sync()
        capped_hf, _ = run(
            [hf, "download", "bench/one", "--revision", one_commit, "--quiet"], d_env, d_root
        )
        hub.throttle_bps = None

    gb = total / MB
    best_bundle, best_tar = min(bundle_runs), min(tar_runs)
    print(f"1. carry {gb:.0f} MB (4 LFS shards) from host A to a fresh host B")
    print(f"   tar -c | tar -x (no verification): {best_tar:6.2f} s  {gb / best_tar:6.0f} MB/s")
    print(
        f"   mlxpin export | import (verified): {best_bundle:6.2f} s  {gb / best_bundle:6.0f} MB/s"
    )
    print(
        f"   ratio: {best_tar / best_bundle:.2f}x  (goal >= 0.9x)   runs: tar "
        f"{[round(t, 2) for t in tar_runs]}, mlxpin {[round(t, 2) for t in bundle_runs]}"
    )
    print(f"   peak RSS: export {rss_export / MB:.0f} MB, import {rss_import / MB:.0f} MB")
    best_mirror, best_hub = min(mirror_runs), min(hub_runs)
    print("2. mlxpin fetch on B")
    print(f"   from the loopback hub: {best_hub:6.2f} s  {gb / best_hub:6.0f} MB/s")
    print(f"   from A's mirror:       {best_mirror:6.2f} s  {gb / best_mirror:6.0f} MB/s")
    print(
        f"   ratio: {best_hub / best_mirror:.2f}x  (goal >= 0.95x)   runs: hub "
        f"{[round(t, 2) for t in hub_runs]}, mirror {[round(t, 2) for t in mirror_runs]}"
    )
    print(
        f"   peak RSS: fetch {rss_fetch / MB:.0f} MB, mirror {rss_mirror / MB:.0f} MB; "
        f"hub requests during the mirror fetches: {upstream}"
    )
    size = args.capped_mb
    print(f"3. one {size} MB file, hub capping each connection at {args.cap_mbps:.0f} MB/s")
    print(f"   hf download --revision <sha>: {capped_hf:6.2f} s  {size / capped_hf:6.0f} MB/s")
    print(f"   mlxpin fetch (8 ranges):      {capped_pin:6.2f} s  {size / capped_pin:6.0f} MB/s")
    print(
        f"   ratio: {capped_hf / capped_pin:.2f}x  (goal >= 3x); peak RSS of mlxpin fetch "
        f"{rss_capped / MB:.0f} MB"
    )
    load = os.getloadavg()[0]
    print(f"load average during the run: {load:.1f} on {os.cpu_count()} cores; CPU seconds used:")
    for key, seconds in sorted(CPU.items()):
        print(f"   {key}: {seconds:.2f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
