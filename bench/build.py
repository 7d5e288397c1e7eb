"""Benchmark: `mlxpin build` of a q4 quantize recipe vs bare `mlx_lm convert -q --q-bits 4`.

The input is a random-weight llama big enough that start-up does not dominate (default:
hidden 2048, 12 layers, bf16, ~1.2 GB), written with `mlxpin.dev.tinymodel`'s writers into
--cache-dir once and reused. It is a path model of a throwaway project, locked and fetched;
then, interleaved for --rounds rounds (the order alternates):
  bare    python -m mlx_lm convert --hf-path VIEW --mlx-path OUT -q --q-bits 4
          (VIEW: the fetched snapshot, the very files mlxpin's build reads)
  build   mlxpin build q4, a first build each time: the step, hashing the output,
          recording it in the lock, installing it (the lock and store are reset before)
  check   mlxpin build --check q4: the step and the hashing, nothing installed
Prints the medians of wall and CPU seconds and their ratios (goal: build <= 1.1x bare),
and what mlxpin adds around the step: hashing the output, and the CLI's start. On a shared
machine the CPU ratio is the steadier figure: wall times follow the load of the moment.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from mlxpin.dev import tinymodel as core

MB = 1000 * 1000
MLXPIN = [sys.executable, "-m", "mlxpin"]


def big_llama(cache: Path, hidden: int, layers: int, seed: int = 0) -> Path:
    """A random-weight llama (one shard per layer) in ``cache``, generated once."""
    out = cache / f"llama-h{hidden}-l{layers}-s{seed}"
    if (out / ".complete").exists():
        return out
    import numpy as np

    tokenizer = core.tokenizer_json()
    vocab_size = len(tokenizer["model"]["vocab"])
    heads, inter = hidden // 128, hidden * 11 // 4
    config = {
        **core.chat_config("llama", vocab_size),
        "head_dim": 128,
        "hidden_size": hidden,
        "intermediate_size": inter,
        "num_attention_heads": heads,
        "num_hidden_layers": layers,
        "num_key_value_heads": heads,
    }
    rng = np.random.default_rng(seed)
    is_norm = lambda name: name.endswith("norm.weight")  # noqa: E731
    count = layers + 1
    weight_map: dict[str, str] = {}
    total = 0
    for number in range(1, count + 1):
        if number == count:
            shapes = {
                "lm_head.weight": (vocab_size, hidden),
                "model.embed_tokens.weight": (vocab_size, hidden),
                "model.norm.weight": (hidden,),
            }
        else:
            p = f"model.layers.{number - 1}."
            shapes = {p + "input_layernorm.weight": (hidden,)}
            shapes |= {p + "post_attention_layernorm.weight": (hidden,)}
            shapes |= {p + f"self_attn.{x}_proj.weight": (hidden, hidden) for x in "qkvo"}
            shapes |= {p + f"mlp.{x}_proj.weight": (inter, hidden) for x in ("gate", "up")}
            shapes |= {p + "mlp.down_proj.weight": (hidden, inter)}
        name = f"model-{number:05d}-of-{count:05d}.safetensors"
        tensors = core.random_tensors(shapes, rng, ones=is_norm)
        core.write_files(out, {name: core.safetensors_bytes(tensors)})
        weight_map |= dict.fromkeys(tensors, name)
        total += sum(t.size * 2 for t in tensors.values())
    index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
    files = {
        "config.json": core.json_bytes(config),
        "generation_config.json": core.json_bytes(core.generation_config()),
        "model.safetensors.index.json": core.json_bytes(index),
        "special_tokens_map.json": core.json_bytes(core.special_tokens_map()),
        "tokenizer.json": core.json_bytes(tokenizer),
        "tokenizer_config.json": core.json_bytes(core.tokenizer_config()),
    }
    core.write_files(out, files)
    (out / ".complete").write_bytes(b"")
    return out


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def timed(argv: list[str], env: dict[str, str], cwd: Path) -> tuple[float, float, str]:
    """(wall seconds, CPU seconds of the process and its children, stdout)."""
    cpu = _children_cpu()
    started = time.perf_counter()
    done = subprocess.run(argv, env=env, cwd=cwd, capture_output=True, text=True, check=False)
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"{argv} failed ({done.returncode}): {done.stderr[-2000:]}")
    return elapsed, _children_cpu() - cpu, done.stdout


def blobs_of(view: Path) -> set[str]:
    return {os.path.realpath(link) for link in view.rglob("*") if link.is_symlink()}


def reset_build(workdir: Path, unbuilt: str, built: dict[str, Any] | None, keep: Path) -> None:
    """Undo a first build: the lock back to its unbuilt state, the view, stamp and blobs
    gone (else the next build would find its blobs in place and skip the moves), except
    the blobs the input's view ``keep`` shares with it (the same tokenizer files)."""
    (workdir / "lock" / "q4.toml").write_text(unbuilt)
    if built is None:
        return
    view = Path(built["snapshot"])
    for blob in blobs_of(view) - blobs_of(keep):
        Path(blob).unlink(missing_ok=True)
    shutil.rmtree(view)
    view.with_name(view.name + ".stamp").unlink(missing_ok=True)


Times = dict[str, list[tuple[float, float]]]  # tool → (wall, CPU) per round


def race(workdir: Path, env: dict[str, str], view: Path, rounds: int) -> Times:
    times: Times = {"bare": [], "build": [], "check": []}
    unbuilt = (workdir / "lock" / "q4.toml").read_text()
    bare = [sys.executable, "-m", "mlx_lm", "convert", "--hf-path", str(view)]
    bare += ["--mlx-path", str(workdir / "bare-out"), "-q", "--q-bits", "4"]
    step_env = {**env, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    built: dict[str, Any] | None = None
    for round_ in range(rounds):
        order = ["bare", "build", "check"]
        order = order[round_ % 3 :] + order[: round_ % 3]
        for tool in order:
            os.sync()  # no write-back of the previous run lands in this one
            if tool == "bare":
                shutil.rmtree(workdir / "bare-out", ignore_errors=True)
                os.sync()
                wall, cpu, _ = timed(bare, step_env, workdir)
            elif tool == "build":
                reset_build(workdir, unbuilt, built, view)
                os.sync()
                wall, cpu, out = timed([*MLXPIN, "build", "q4", "--json"], env, workdir)
                (built,) = json.loads(out)["models"]
                assert built["action"] == "recorded", built
            else:
                if built is None:  # --check needs a recorded output
                    timed([*MLXPIN, "build", "q4", "-q"], env, workdir)
                    built = {"snapshot": _fetched(workdir, env, "q4")}
                wall, cpu, _ = timed([*MLXPIN, "build", "--check", "q4", "-q"], env, workdir)
            times[tool].append((wall, cpu))
            print(f"  round {round_ + 1} {tool:5s} {wall:6.2f} s, CPU {cpu:6.2f} s", flush=True)
    return times


def _fetched(workdir: Path, env: dict[str, str], name: str) -> str:
    _, _, out = timed([*MLXPIN, "fetch", name, "--json"], env, workdir)
    return str(json.loads(out)["models"][0]["snapshot"])


def overheads(workdir: Path, env: dict[str, str]) -> tuple[float, float, int]:
    """(seconds to hash the last bare output as a build does, `mlxpin --version`, bytes)."""
    from mlxpin.build.step import hash_output

    out = workdir / "bare-out"
    started = time.perf_counter()
    files = hash_output("q4", out)
    hashing = time.perf_counter() - started
    version, _, _ = timed([*MLXPIN, "--version"], env, workdir)
    return hashing, version, sum(f.size for f in files)


def report(runs: Times) -> None:
    """Medians of wall and CPU, their ratios to bare, and the median of the ratios within a
    round (runs next to each other in time share the load of the moment)."""
    wall = {tool: statistics.median(t[0] for t in times) for tool, times in runs.items()}
    cpu = {tool: statistics.median(t[1] for t in times) for tool, times in runs.items()}
    labels = {
        "bare": "bare mlx_lm convert",
        "build": "mlxpin build (first build)",
        "check": "mlxpin build --check",
    }
    for tool, label in labels.items():
        pairs = zip(runs[tool], runs["bare"], strict=True)
        paired = statistics.median(t[0] / b[0] for t, b in pairs)
        ratios = f"{wall[tool] / wall['bare']:.2f}x wall, {cpu[tool] / cpu['bare']:.2f}x CPU"
        ratios += f", per-round {paired:.2f}x wall"
        print(
            f"  {label + ':':28s} {wall[tool]:6.2f} s, CPU {cpu[tool]:6.2f} s"
            + (f"  ({ratios})" if tool != "bare" else "")
        )
    print("  goal: mlxpin build <= 1.1x bare")
    rounded = {k: [round(t[0], 2) for t in v] for k, v in runs.items()}
    print(f"  all runs (wall): {json.dumps(rounded)}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--cache-dir",
        type=Path,
        default=Path(tempfile.gettempdir()) / "mlxpin-bench-build",
        help="where the generated input model is kept between runs",
    )
    parser.add_argument("--hidden", type=int, default=2048)
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    started = time.perf_counter()
    model = big_llama(args.cache_dir, args.hidden, args.layers)
    size = sum(p.stat().st_size for p in model.iterdir())
    print(f"input: {model} ({size / MB:.0f} MB, ready in {time.perf_counter() - started:.1f} s)")
    with tempfile.TemporaryDirectory(dir=os.environ.get("TMPDIR")) as tmp:
        workdir = Path(tmp)
        manifest = "version = 1\n"
        manifest += f'[models.big]\napi_label = "big"\n[models.big.launch]\npath = "{model}"\n'
        manifest += '[models.q4]\napi_label = "q4"\nport = 8081\n'
        manifest += '[models.q4.build]\nfrom = "big"\nstep = "quantize"\nbits = 4\n'
        (workdir / "manifest.toml").write_text(manifest)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "MLXPIN_"))}
        env.update(HF_HOME=str(workdir / "hf"), HF_HUB_DISABLE_TELEMETRY="1")
        subprocess.run([*MLXPIN, "lock", "-q"], env=env, cwd=workdir, check=True)
        view = Path(_fetched(workdir, env, "big"))
        load = [os.getloadavg()[0]]
        times = race(workdir, env, view, args.rounds)
        load.append(os.getloadavg()[0])
        hashing, version, out_size = overheads(workdir, env)
    print(f"q4 quantize of a {size / MB:.0f} MB bf16 llama, median of {args.rounds}:")
    report(times)
    print(f"  hashing the {out_size / MB:.0f} MB output as a build does: {hashing:.2f} s")
    print(f"  mlxpin --version (CLI start): {version:.2f} s")
    print(f"load average before/after: {load[0]:.1f}/{load[1]:.1f} on {os.cpu_count()} cores")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
