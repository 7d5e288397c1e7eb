"""Benchmark: lock 50 models with 50 ms of Hub latency, concurrently vs one after another.

Runs the loopback hub from tests/ and the real `mlxpin lock` CLI twice on the same
manifest (fresh lock dir each time): with the default concurrency and with --jobs 1.
Prints both times and their ratio (goal: <= 0.2).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from hubserver import HubServer, LfsContent  # noqa: E402

MODELS = 50
LATENCY_S = 0.050


def timed_lock(workdir: Path, env: dict[str, str], *extra: str, tag: str = "") -> float:
    lock_dir = workdir / f"lock{'-'.join(extra)}{tag}"
    started = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "mlxpin", "lock", "-q", "--lock-dir", str(lock_dir), *extra],
        cwd=workdir,
        env=env,
        check=True,
    )
    elapsed = time.perf_counter() - started
    assert len(list(lock_dir.glob("*.toml"))) == MODELS
    return elapsed


def main() -> int:
    with HubServer() as hub, tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        lines = ["version = 1"]
        for index in range(MODELS):
            repo = hub.create_repo(f"bench/model-{index:02d}")
            repo.commit(
                {
                    "config.json": b'{"n": %d}\n' % index,
                    "model.safetensors": LfsContent(b"%d" % index * 1000),
                }
            )
            lines += [
                f"[models.m{index:02d}]",
                f'api_label = "m{index:02d}"',
                f"[models.m{index:02d}.launch]",
                f'repo = "bench/model-{index:02d}"',
            ]
        (workdir / "manifest.toml").write_text("\n".join(lines) + "\n")
        env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "MLXPIN_"))}
        env.update(HF_ENDPOINT=hub.url, HF_HOME=str(workdir / "hf"), HF_HUB_DISABLE_XET="1")
        startup = timed_startup(env)
        hub.latency_s = LATENCY_S
        concurrent = min(timed_lock(workdir, env, tag=str(i)) for i in range(3))
        sequential = min(timed_lock(workdir, env, "--jobs", "1", tag=str(i)) for i in range(3))
        requests = hub.count(path_contains="/api/models/")
    print(f"lock {MODELS} models, {LATENCY_S * 1000:.0f} ms Hub latency per request")
    print(f"  concurrent (default --jobs): {concurrent:6.3f} s")
    print(f"  one after another (--jobs 1): {sequential:6.3f} s")
    print(f"  ratio: {concurrent / sequential:.3f}  (goal <= 0.2)")
    net = (concurrent - startup) / (sequential - startup)
    print(f"  net of CLI start-up ({startup:.3f} s): {net:.3f}")
    print(f"  metadata requests: {requests} (one per model per run, best of 3 runs each)")
    return 0


def timed_startup(env: dict[str, str]) -> float:
    started = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "mlxpin", "--version"], env=env, check=True, capture_output=True
    )
    return time.perf_counter() - started


if __name__ == "__main__":
    raise SystemExit(main())
