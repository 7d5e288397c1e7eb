"""Benchmark: `mlxpin fetch` (verifying every byte) vs `hf download --revision <sha>`.

On the loopback hub from tests/, side by side in one run, with mlxpin's default settings:
  1. an uncapped link: a repo of 256 MiB in four LFS shards (plus small files);
  2. a link that caps each connection at 50 MB/s: one 256 MiB file;
  3. no-op re-fetches of the first repo and of a 5,000-file repo (requests counted);
and the peak RSS of `mlxpin fetch`. Runs alternate and repeat; the best of each counts.
Goals: 1. >= 0.95x, 2. >= 5x, no-op 5,000 files < 0.5 s, RSS < 200 MB.
`--quick` makes one round and skips the 5,000-file repo.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from hubserver import HubServer, LfsContent, pseudo_random_bytes  # noqa: E402

MB = 1000 * 1000
MiB = 1024 * 1024
MLXPIN = [sys.executable, "-m", "mlxpin"]


def child_run(argv: list[str], env: dict[str, str], cwd: Path) -> tuple[float, int]:
    """(seconds, peak RSS in bytes) of one child process."""
    started = time.perf_counter()
    process = subprocess.Popen(argv, env=env, cwd=cwd, stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(process.pid, 0)
    elapsed = time.perf_counter() - started
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{argv} failed")
    return elapsed, usage.ru_maxrss * 1024


def shard(path: Path, size: int, seed: int) -> LfsContent:
    with path.open("wb") as handle:
        for block in range(0, size, 8 * MiB):
            handle.write(pseudo_random_bytes(min(8 * MiB, size - block), seed=seed * 1000 + block))
    return LfsContent(path)


def race(
    workdir: Path, env: dict[str, str], name: str, repo: str, commit: str, rounds: int
) -> tuple[list[float], list[float], int]:
    """(hf times, mlxpin times, peak RSS of mlxpin) for fetching one model from scratch."""
    hf_times: list[float] = []
    pin_times: list[float] = []
    rss = 0
    hf = shutil.which("hf", path=str(Path(sys.executable).parent)) or "hf"
    for round_ in range(rounds):
        for tool in ("hf", "mlxpin") if round_ % 2 == 0 else ("mlxpin", "hf"):
            cache = workdir / f"cache-{tool}"
            shutil.rmtree(cache, ignore_errors=True)
            shutil.rmtree(workdir / "hf" / "mlxpin", ignore_errors=True)  # no stamps either
            os.sync()  # no write-back of the previous run lands in this one
            if tool == "hf":
                argv = [hf, "download", repo, "--revision", commit, "--quiet"]
                seconds, _ = child_run([*argv, "--cache-dir", str(cache)], env, workdir)
                hf_times.append(seconds)
            else:
                argv = [*MLXPIN, "fetch", name, "-q", "--cache-dir", str(cache)]
                seconds, peak = child_run(argv, env, workdir)
                pin_times.append(seconds)
                rss = max(rss, peak)
    return hf_times, pin_times, rss


def report(title: str, size: int, hf: list[float], pin: list[float], goal: str) -> None:
    best_hf, best_pin = min(hf), min(pin)
    print(title)
    print(f"  hf download --revision <sha>: {best_hf:6.2f} s  {size / MB / best_hf:6.0f} MB/s")
    print(f"  mlxpin fetch (verifies all):  {best_pin:6.2f} s  {size / MB / best_pin:6.0f} MB/s")
    print(f"  ratio mlxpin/hf: {best_hf / best_pin:.2f}x  (goal {goal})")
    print(f"  all runs: hf {[round(t, 2) for t in hf]}, mlxpin {[round(t, 2) for t in pin]}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size-mb", type=int, default=256, help="MiB in 4 shards, uncapped")
    parser.add_argument("--capped-mb", type=int, default=256, help="MiB of the capped file")
    parser.add_argument("--cap-mbps", type=float, default=50.0, help="MB/s per connection")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="one round, no 5,000-file repo")
    args = parser.parse_args()
    rounds = 1 if args.quick else args.rounds
    with HubServer() as hub, tempfile.TemporaryDirectory(dir=os.environ.get("TMPDIR")) as tmp:
        workdir = Path(tmp)
        files: dict[str, bytes | LfsContent] = {
            "config.json": b'{"model_type": "llama"}\n',
            "tokenizer.json": pseudo_random_bytes(MB, seed=9).hex().encode(),
        }
        for index in range(4):
            path = workdir / f"shard{index}.bin"
            files[f"model-{index + 1:05d}-of-00004.safetensors"] = shard(
                path, args.size_mb * MiB // 4, index
            )
        big = hub.create_repo("bench/big").commit(files)
        capped = shard(workdir / "capped.bin", args.capped_mb * MiB, 77)
        one = hub.create_repo("bench/one").commit({"model.safetensors": capped})
        manifest = "version = 1\n"
        for name in ("big", "one", "many"):
            manifest += f'[models.{name}]\napi_label = "{name}"\n'
            manifest += f'[models.{name}.launch]\nrepo = "bench/{name}"\n'
        if args.quick:
            manifest = manifest.split("[models.many]")[0]
        else:
            hub.create_repo("bench/many").commit(
                {f"shard/{i:05d}.json": b"%d\n" % i for i in range(5000)}
            )
        (workdir / "manifest.toml").write_text(manifest)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "MLXPIN_"))}
        env.update(
            HF_ENDPOINT=hub.url,
            HF_HOME=str(workdir / "hf"),
            HF_HUB_DISABLE_XET="1",
            HF_HUB_DISABLE_PROGRESS_BARS="1",
            HF_HUB_DISABLE_TELEMETRY="1",
        )
        subprocess.run([*MLXPIN, "lock", "-q"], env=env, cwd=workdir, check=True)
        total = sum(e.size for e in hub.repo("bench/big").files(big).values())
        load = [os.getloadavg()[0]]
        uncapped = race(workdir, env, "big", "bench/big", big, rounds)
        hub.throttle_bps = args.cap_mbps * MB
        capped_runs = race(workdir, env, "one", "bench/one", one, rounds)
        hub.throttle_bps = None
        load.append(os.getloadavg()[0])
        cache = str(workdir / "cache-mlxpin")
        child_run([*MLXPIN, "fetch", "big", "-q", "--cache-dir", cache], env, workdir)
        hub.clear_requests()
        noop, _ = child_run([*MLXPIN, "fetch", "big", "-q", "--cache-dir", cache], env, workdir)
        noop_requests = hub.count()
        if not args.quick:
            child_run([*MLXPIN, "fetch", "many", "-q", "--cache-dir", cache], env, workdir)
            hub.clear_requests()
            many, _ = child_run(
                [*MLXPIN, "fetch", "many", "-q", "--cache-dir", cache], env, workdir
            )
            many_requests = hub.count()
        startup, _ = child_run([sys.executable, "-c", "pass"], env, workdir)
    report(
        f"1. {total / MB:.0f} MB repo (4 LFS shards), uncapped loopback hub",
        total,
        *uncapped[:2],
        ">= 0.95x",
    )
    report(
        f"2. one {args.capped_mb} MiB file, each connection capped at {args.cap_mbps:.0f} MB/s",
        args.capped_mb * MiB,
        *capped_runs[:2],
        ">= 5x",
    )
    print(
        f"  peak RSS of mlxpin fetch: {max(uncapped[2], capped_runs[2]) / MB:.0f} MB (goal < 200)"
    )
    print(f"3. no-op re-fetch: {noop:.3f} s, {noop_requests} requests")
    if not args.quick:
        print(
            f"   no-op re-fetch of 5,000 files: {many:.3f} s, {many_requests} requests"
            f"  (goal < 0.5 s; `python -c pass` takes {startup:.3f} s)"
        )
    print(f"load average before/after: {load[0]:.1f}/{load[1]:.1f} on {os.cpu_count()} cores")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
