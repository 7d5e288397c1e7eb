"""`make demo`: lock, fetch, launch and call the embedded tiny model offline, through the
real CLI; locks and cache go to a temporary directory, so the checkout stays untouched."""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from mlxpin.dev.tinymodel import generate
from mlxpin.project.manifest import load_manifest

MODEL = "tiny"


def say(text: str) -> None:
    print(f"\n\033[1m{text}\033[0m" if sys.stdout.isatty() else f"\n== {text}", flush=True)


def mlxpin(*args: str, env: dict[str, str]) -> None:
    print("$ mlxpin " + shlex.join(args), flush=True)
    subprocess.run([sys.executable, "-m", "mlxpin", *args], env=env, check=True)


def wait_healthy(url: str, process: subprocess.Popen[bytes], timeout_s: float = 120.0) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        if process.poll() is not None:
            raise SystemExit(f"mlxpin launch exited early with code {process.returncode}")
        try:
            with urllib.request.urlopen(url + "/health", timeout=2) as response:  # noqa: S310
                if response.status == 200:
                    return time.monotonic() - started
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.2)
    raise SystemExit("the model did not become healthy in time")


def main() -> int:
    root = Path.cwd()
    manifest_path = root / "manifest.toml"
    manifest = load_manifest(manifest_path)
    spec = manifest.get(MODEL)
    if spec is None:
        raise SystemExit(f"{manifest_path} has no [models.{MODEL}] entry")
    with tempfile.TemporaryDirectory(prefix="mlxpin-demo-") as workdir:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "MLXPIN_"))}
        env.update(
            {
                "HF_HOME": str(Path(workdir) / "hf"),
                "HF_HUB_OFFLINE": "1",  # prove that nothing here needs the network
                "MLXPIN_LOCK_DIR": str(Path(workdir) / "lock"),
                "MLXPIN_MANIFEST": str(manifest_path),
            }
        )
        say("1. Generate the tiny model (random weights, real BPE tokenizer) into models/tiny")
        for path in generate(root / "models" / "tiny"):
            print(f"   {path.relative_to(root)}  {path.stat().st_size:,} bytes")
        say("2. Pin it: every file's size and sha256, and a tree hash")
        mlxpin("lock", MODEL, env=env)
        say("3. Fetch: import into the content-addressed store and verify every byte")
        mlxpin("fetch", MODEL, env=env)
        mlxpin("fetch", MODEL, env=env)
        mlxpin("status", MODEL, env=env)
        say("4. The boot plan (no network, no guessing)")
        mlxpin("launch", MODEL, "--dry-run", env=env)
        say("5. Launch: mlx_lm.server on a private Unix socket, the gateway on the public port")
        print(f"$ mlxpin launch {MODEL} &", flush=True)
        log_path = Path(workdir) / "launch.log"
        log = log_path.open("wb")
        process = subprocess.Popen(
            [sys.executable, "-m", "mlxpin", "launch", MODEL],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        base = f"http://{spec.host}:{spec.port}"
        shown = 0
        try:
            seconds = wait_healthy(base, process)
            shown = show_log(log_path, shown)
            print(f"   healthy after {seconds:.1f} s (a real warm-up completion succeeded)")
            say(f'6. A client asks for model="{spec.api_label}" (openai package)')
            talk_to(base, spec.api_label)
        finally:
            say("7. SIGTERM: stop the gateway and the server, leave nothing behind")
            process.send_signal(signal.SIGTERM)
            code = process.wait(timeout=30)
            log.close()
            show_log(log_path, shown)
            print(f"   mlxpin launch exited with code {code}")
            left = [
                line
                for line in subprocess.run(
                    ["ps", "-ww", "-eo", "command"], capture_output=True, text=True, check=False
                ).stdout.splitlines()
                if "mlx_lm" in line and workdir in line
            ]
            print(f"   server processes left behind: {len(left)}")
    print("\nDone: locked, fetched, verified and served offline by api_label.")
    return 0 if code == 0 and not left else 1


def show_log(path: Path, skip: int) -> int:
    """Print the launch log's new lines, indented; returns how many lines it has."""
    lines = path.read_text(errors="replace").splitlines()
    for line in lines[skip:]:
        if "POST /v1/chat/completions" not in line:  # the server's own access log
            print(f"   | {line}")
    return len(lines)


def talk_to(base: str, label: str) -> None:
    import openai

    client = openai.OpenAI(base_url=base + "/v1", api_key="not-needed")
    reply = client.chat.completions.create(
        model=label, messages=[{"role": "user", "content": "Say hello."}], max_tokens=12
    )
    print(f"   model   = {reply.model}")
    print(f"   answer  = {reply.choices[0].message.content!r}  (random weights: nonsense)")
    print("   stream  = ", end="", flush=True)
    stream = client.chat.completions.create(
        model=label, messages=[{"role": "user", "content": "Count."}], max_tokens=8, stream=True
    )
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            print(chunk.choices[0].delta.content, end="", flush=True)
    print()
    try:
        client.chat.completions.create(
            model="gemma-4-31b-it", messages=[{"role": "user", "content": "hi"}], max_tokens=1
        )
    except openai.NotFoundError as error:
        body = error.body if isinstance(error.body, dict) else {}
        print(f"   unknown label → 404 {json.dumps(body.get('code', body))} (server untouched)")


if __name__ == "__main__":
    raise SystemExit(main())
