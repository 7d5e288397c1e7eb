"""Benchmark: `mlxpin fetch` (verifying every byte) vs `hf download --revision <sha>`.

On the loopback hub from tests/, builds a ~1 GB repo (four LFS weight files plus small
files), locks it, then measures side by side in one run:
  1. `hf download REPO --revision <sha>` into a fresh cache (no content verification),
  2. `mlxpin fetch` into a fresh cache (sha256 / git-sha1 of every byte, while downloading),
  3. a no-op re-fetch (requests counted),
  4. a no-op re-fetch of a 5,000-file repo,
and the peak RSS of the `mlxpin fetch` process. Runs are interleaved and repeated; the
best of each is reported. Goals: ratio >= 0.95, no-op 5,000 files < 0.5 s, RSS < 200 MB.
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


def child_run(argv: list[str], env: dict[str, str], cwd: Path) -> tuple[float, int]:
    """(seconds, peak RSS in bytes) of one child process."""
    started = time.perf_counter()
    process = subprocess.Popen(argv, env=env, cwd=cwd, stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(process.pid, 0)
    elapsed = time.perf_counter() - started
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{argv} failed")
    return elapsed, usage.ru_maxrss * 1024


def build_big_repo(hub: HubServer, workdir: Path, total_mb: int) -> str:
    repo = hub.create_repo("bench/big")
    files: dict[str, bytes | LfsContent] = {
        "config.json": b'{"model_type": "llama"}\n',
        "tokenizer.json": pseudo_random_bytes(2 * MB, seed=9).hex()[: 2 * MB].encode(),
        "tokenizer_config.json": b"{}\n",
    }
    shards = 4
    for index in range(shards):
        path = workdir / f"shard{index}.bin"
        with path.open("wb") as handle:
            for block in range(total_mb // shards // 8):
                handle.write(pseudo_random_bytes(8 * MB, seed=index * 1000 + block))
        files[f"model-{index + 1:05d}-of-{shards:05d}.safetensors"] = LfsContent(path)
    return repo.commit(files)


def build_many_files_repo(hub: HubServer, count: int) -> str:
    repo = hub.create_repo("bench/many")
    return repo.commit({f"shard/{i:05d}.json": b"%d\n" % i for i in range(count)})


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size-mb", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with HubServer() as hub, tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        commit = build_big_repo(hub, workdir, args.size_mb)
        build_many_files_repo(hub, 5000)
        (workdir / "manifest.toml").write_text(
            '[models.big]\napi_label = "big"\n[models.big.launch]\nrepo = "bench/big"\n'
            '[models.many]\napi_label = "many"\nport = 8081\n'
            '[models.many.launch]\nrepo = "bench/many"\n'
        )
        env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "MLXPIN_"))}
        env.update(
            HF_ENDPOINT=hub.url,
            HF_HOME=str(workdir / "hf"),
            HF_HUB_DISABLE_XET="1",
            HF_HUB_DISABLE_PROGRESS_BARS="1",
            HF_HUB_DISABLE_TELEMETRY="1",
        )
        subprocess.run(
            [sys.executable, "-m", "mlxpin", "lock", "-q"], env=env, cwd=workdir, check=True
        )
        total = sum(e.size for e in hub.repo("bench/big").files(commit).values())
        hf_times: list[float] = []
        pin_times: list[float] = []
        pin_rss = 0
        for round_ in range(args.rounds):
            for tool in ("hf", "mlxpin") if round_ % 2 == 0 else ("mlxpin", "hf"):
                cache = workdir / f"cache-{tool}"
                shutil.rmtree(cache, ignore_errors=True)
                if tool == "mlxpin":  # a fresh start: no views, stamps or records either
                    shutil.rmtree(workdir / "hf" / "mlxpin", ignore_errors=True)
                os.sync()  # no write-back of the previous run lands in this one
                if tool == "hf":
                    hf = shutil.which("hf", path=str(Path(sys.executable).parent)) or "hf"
                    argv = [hf, "download", "bench/big", "--revision", commit]
                    argv += ["--cache-dir", str(cache), "--quiet"]
                    seconds, _ = child_run(argv, env, workdir)
                    hf_times.append(seconds)
                else:
                    argv = [sys.executable, "-m", "mlxpin", "fetch", "big", "-q"]
                    argv += ["--cache-dir", str(cache)]
                    seconds, rss = child_run(argv, env, workdir)
                    pin_times.append(seconds)
                    pin_rss = max(pin_rss, rss)
        hub.clear_requests()
        cache = workdir / "cache-mlxpin"
        noop, _ = child_run(
            [sys.executable, "-m", "mlxpin", "fetch", "big", "-q", "--cache-dir", str(cache)],
            env,
            workdir,
        )
        noop_requests = hub.count()
        child_run(
            [sys.executable, "-m", "mlxpin", "fetch", "many", "-q", "--cache-dir", str(cache)],
            env,
            workdir,
        )
        hub.clear_requests()
        noop_many, _ = child_run(
            [sys.executable, "-m", "mlxpin", "fetch", "many", "-q", "--cache-dir", str(cache)],
            env,
            workdir,
        )
        noop_many_requests = hub.count()
        startup, _ = child_run([sys.executable, "-c", "pass"], env, workdir)
    best_hf, best_pin = min(hf_times), min(pin_times)
    print(f"fetch of a {total / MB:.0f} MB repo (4 LFS shards + small files), loopback hub")
    print(f"  hf download --revision <sha>: {best_hf:6.2f} s  {total / MB / best_hf:6.0f} MB/s")
    print(f"  mlxpin fetch (verifies all):  {best_pin:6.2f} s  {total / MB / best_pin:6.0f} MB/s")
    print(f"  speed ratio mlxpin/hf: {best_hf / best_pin:.3f}  (goal >= 0.95)")
    runs_hf = [round(t, 2) for t in hf_times]
    runs_pin = [round(t, 2) for t in pin_times]
    print(f"  all runs: hf {runs_hf}, mlxpin {runs_pin}")
    print(f"  peak RSS of mlxpin fetch: {pin_rss / MB:.0f} MB  (goal < 200 MB)")
    print(f"  no-op re-fetch: {noop:.3f} s, {noop_requests} requests")
    print(
        f"  no-op re-fetch of 5,000 files: {noop_many:.3f} s, {noop_many_requests} requests"
        f"  (goal < 0.5 s; `python -c pass` takes {startup:.3f} s)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
