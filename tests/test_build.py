"""Builds (#22): a model derived from a pinned input by a pinned recipe, through the CLI.

The builder is the real `mlx_lm convert` on the tiny model; host B is another HF_HOME with
the same manifest and lock and no input, taking the output from A's bundle or A's mirror.
"""

from __future__ import annotations

import http.server
import os
import shutil
import sys
import threading
import tomllib
from pathlib import Path

import pytest

from mlxpin.dev.tinymodel import generate
from mlxpin.errors import ManifestError
from mlxpin.project.lockfile import (
    LockedFile,
    make_locked,
    parse_lock,
    render,
    served_as,
)
from mlxpin.project.manifest import parse_text
from mlxpin.project.recipe import BuildSpec
from mlxpin.store.verify import NoProgress
from test_cli_launch import REPO as TINY_REPO
from test_cli_launch import Launched
from test_fleet import Mirror, other_host

from conftest import Project
from hubserver import HubServer

MANIFEST = """version = 1

[models.tiny]
api_label = "tiny"
port = 18611

[models.tiny.launch]
path = "models/tiny"

[models.tiny-q4]
api_label = "tiny-q4"
port = 18612

[models.tiny-q4.build]
from = "tiny"
step = "quantize"
bits = 4
group_size = 32
"""


def host_a(project: Project, manifest: str = MANIFEST) -> Project:
    generate(project.root / "models" / "tiny")
    project.write_manifest(manifest)
    project.ok("lock")
    return project


def built_a(project: Project) -> Project:
    host_a(project)
    project.ok("fetch", "tiny")
    project.ok("build")
    return project


# --- the manifest ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("table", "says"),
    [
        ('from = "tiny"\nstep = "squash"', "unknown step 'squash'"),
        ('from = "tiny"\nstep = "quantize"\nbits = 7', "7 is not one of 2, 3, 4, 5, 6, 8"),
        ('from = "tiny"\nstep = "quantize"\nbits = true', "True is not one of"),
        ('from = "tiny"\nstep = "convert"\nbits = 4', "step 'convert' takes no `bits`"),
        ('from = "tiny"\nstep = "fuse"', "step 'fuse' needs `adapter`"),
        ('from = "nope"\nstep = "convert"', "no model named 'nope'"),
        ('from = "q"\nstep = "convert"', "a model cannot be built from itself"),
        ('step = "convert"', "missing `from`"),
        ('from = "tiny"\nstep = "quantize"\nmode = "nf4"', "'nf4' is not one of affine"),
    ],
)
def test_a_build_table_is_strict(table: str, says: str) -> None:
    text = f"""version = 1
[models.tiny]
api_label = "tiny"
[models.tiny.launch]
path = "m"
[models.q]
api_label = "q"
[models.q.build]
{table}
"""
    with pytest.raises(ManifestError) as caught:
        parse_text(text, Path("/p/manifest.toml"))
    assert says in str(caught.value)
    assert "manifest.toml:" in str(caught.value)  # file:line


def test_builds_in_a_circle_and_a_launch_beside_a_build_are_refused() -> None:
    circle = """version = 1
[models.a]
api_label = "a"
[models.a.build]
from = "b"
step = "convert"
[models.b]
api_label = "b"
[models.b.build]
from = "a"
step = "convert"
"""
    with pytest.raises(ManifestError, match="builds go round in a circle: a → b → a"):
        parse_text(circle, Path("manifest.toml"))
    both = MANIFEST + '\n[models.tiny-q4.launch]\nrepo = "o/n"\n'
    with pytest.raises(ManifestError, match="a built model has no \\[launch\\]"):
        parse_text(both, Path("manifest.toml"))
    misplaced = MANIFEST.replace('api_label = "tiny-q4"', 'api_label = "tiny-q4"\nbits = 4')
    with pytest.raises(ManifestError, match=r"`bits` belongs in \[models.tiny-q4.build\]"):
        parse_text(misplaced, Path("manifest.toml"))


def test_removing_an_input_is_refused_while_a_build_reads_it(project: Project) -> None:
    host_a(project)
    before = (project.root / "manifest.toml").read_text()
    refused = project.run("remove", "tiny")
    assert refused.returncode == 78
    assert "tiny is used by tiny-q4 (build.from)" in refused.stderr
    assert (project.root / "manifest.toml").read_text() == before


def test_defaults_are_written_out_so_the_lock_records_what_ran() -> None:
    manifest = parse_text(MANIFEST, Path("/p/manifest.toml"))
    spec = manifest.get("tiny-q4")
    assert spec is not None and isinstance(spec.launch.source, BuildSpec)
    assert dict(spec.launch.source.params) == {"bits": 4, "group_size": 32, "mode": "affine"}


# --- lock, build, check ------------------------------------------------------------------


def test_lock_pins_the_recipe_then_build_records_and_installs_the_output(
    project: Project,
) -> None:
    host_a(project)
    lock = tomllib.loads(project.lock_text("tiny-q4"))
    assert lock["original"] == {
        "from": "tiny",
        "step": "quantize",
        "bits": 4,
        "group_size": 32,
        "mode": "affine",
    }
    assert lock["build"]["builder"].startswith("mlx-lm ")
    (given,) = lock["build"]["inputs"]
    tiny = tomllib.loads(project.lock_text("tiny"))
    assert given == {"name": "tiny", "tree_hash": tiny["locked"]["tree_hash"]}
    assert "files" not in lock and "built_on" not in lock["build"]
    project.ok("lock", "--check")
    # The input is not fetched yet: 66 naming it.
    missing = project.run("build")
    assert missing.returncode == 66, missing.stderr
    assert "its input tiny is not present here" in missing.stderr
    assert "mlxpin fetch tiny" in missing.stderr
    assert "no output of tiny-q4 is recorded yet" in missing.stderr
    project.ok("fetch", "tiny")
    data = project.json("build")
    assert data["ok"] is True
    (model,) = data["models"]
    assert model["action"] == "recorded" and model["built_on"]
    recorded = tomllib.loads(project.lock_text("tiny-q4"))
    assert recorded["build"]["built_on"] == model["built_on"]
    paths = {f["path"] for f in recorded["files"]}
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= paths
    config = (Path(model["snapshot"]) / "config.json").read_text()
    assert '"bits": 4' in config and '"group_size": 32' in config
    project.ok("lock", "--check")  # recording the output keeps the lock valid
    status = project.ok("status", "tiny-q4").stdout
    assert "verified (built here)" in status
    assert project.json("status", "tiny-q4")["models"][0]["origin"] == "build"
    # Again: nothing to do. --check rebuilds and compares, installing nothing.
    assert "up to date" in project.ok("build").stdout
    piped = project.ok("build", "--check")  # says what it runs (progress lines after 2 s)
    assert (
        "tiny-q4: build quantize of tiny (bits=4, group_size=32, mode=affine), by" in piped.stderr
    )
    assert "identical to the recorded output" in piped.stdout
    checked = project.json("build", "--check")
    assert checked["models"][0]["action"] == "checked"
    assert project.ok("verify", "tiny-q4").returncode == 0
    # A second host with the input builds the same bytes (fetch builds it).
    b = other_host(project, project.root.parent, "same")
    shutil.copytree(project.root / "models", b.root / "models")
    fetched = b.json("fetch")
    assert fetched["ok"] is True, fetched
    assert b.json("status", "tiny-q4")["models"][0]["origin"] == "build"


def test_fetch_makes_inputs_first_whatever_the_manifest_order(project: Project) -> None:
    head, built = MANIFEST.split("[models.tiny-q4]\n")
    host_a(
        project, "version = 1\n\n[models.tiny-q4]\n" + built + head.removeprefix("version = 1\n")
    )
    fetched = project.json("fetch")
    assert [m["name"] for m in fetched["models"]] == ["tiny", "tiny-q4"], fetched
    assert project.json("status", "tiny-q4")["models"][0]["origin"] == "build"


def test_a_changed_recipe_or_input_makes_the_lock_stale(project: Project) -> None:
    built_a(project)
    manifest = project.root / "manifest.toml"
    manifest.write_text(MANIFEST.replace("bits = 4", "bits = 8"))
    stale = project.run("lock", "--check")
    assert stale.returncode == 78
    assert "tiny-q4: stale (build changed: bits 4 → 8)" in stale.stdout
    refused = project.run("build")
    assert refused.returncode == 78, refused.stderr
    project.ok("lock")  # a new derivation: the old output is not kept
    assert "built_on" not in tomllib.loads(project.lock_text("tiny-q4"))["build"]
    manifest.write_text(MANIFEST)
    project.ok("lock")
    # The input's content changes and only the input is re-locked.
    weights = project.root / "models" / "tiny" / "config.json"
    weights.write_text(weights.read_text().replace('"rms_norm_eps"', '"rms_norm_eps" '))
    project.ok("lock", "--update", "tiny")
    moved = project.run("lock", "--check")
    assert moved.returncode == 78
    assert "tiny-q4: stale (its input tiny changed:" in moved.stdout
    assert project.run("launch", "tiny-q4", "--dry-run").returncode == 78


def test_a_tampered_output_is_caught_by_verify(project: Project) -> None:
    built_a(project)
    view = Path(project.json("status", "tiny-q4")["models"][0]["snapshot"])
    blob = (view / "model.safetensors").resolve()
    os.chmod(blob, 0o644)
    data = bytearray(blob.read_bytes())
    data[-1] ^= 1
    blob.write_bytes(bytes(data))
    bad = project.run("verify", "tiny-q4")
    assert bad.returncode == 65
    assert "model.safetensors" in bad.stderr
    refused = project.run("launch", "tiny-q4", "--dry-run")
    assert refused.returncode in (65, 66) and "model.safetensors" in refused.stderr
    # `fetch` (what the hint says) builds it again from the input and installs good bytes.
    project.ok("fetch", "tiny-q4")
    project.ok("verify", "tiny-q4")


def test_a_build_that_differs_from_the_recorded_output_installs_nothing(
    project: Project,
) -> None:
    built_a(project)
    path = project.lock_dir / "tiny-q4.toml"
    lock = parse_lock(path.read_bytes(), path)
    files = [
        LockedFile(f.path, f.size, "sha256:" + "0" * 64) if f.path == "config.json" else f
        for f in lock.files
    ]
    other = make_locked(lock.name, lock.original, None, None, files, None, lock.build)
    path.write_bytes(render(other))
    project.ok("lock", "--check")  # a valid lock: only the bytes disagree
    refused = project.run("build")
    assert refused.returncode == 65, refused.stderr
    assert "differs from the recorded output in config.json" in refused.stderr
    assert project.json("status", "tiny-q4")["models"][0]["fetch"] != "verified"
    assert project.run("build", "--check").returncode == 65


def test_a_quantized_build_of_a_hub_model_launches_offline_and_answers_by_label(
    hub: HubServer, project: Project, tmp_path: Path
) -> None:
    from mlxpin.gateway.addresses import free_port

    files = generate(tmp_path / "upstream")
    hub.create_repo(TINY_REPO).commit({p.name: p.read_bytes() for p in files})
    port = free_port()
    project.write_manifest(
        f"""version = 1
[models.upstream]
api_label = "upstream"
[models.upstream.launch]
repo = "{TINY_REPO}"
[models.q4]
api_label = "tiny-q4-chat"
port = {port}
[models.q4.build]
from = "upstream"
step = "quantize"
[models.q4.server]
max_tokens = 8
"""
    )
    project.ok("lock")
    assert tomllib.loads(project.lock_text("q4"))["build"]["inputs"][0]["commit"]
    project.ok("fetch")  # the input from the loopback Hub, then the build
    hub.stop()  # from here on, no network at all
    project.ok("build", "--check")
    offline = dict(project.env, HF_HUB_OFFLINE="1")
    running = Launched(project, port, offline, "q4")
    try:
        running.wait_healthy(120)
        answer = running.chat("tiny-q4-chat")
        assert answer["model"] == "tiny-q4-chat"
        assert answer["choices"][0]["message"]["content"]
    finally:
        assert running.stop() == 0


def test_a_build_needs_its_input_plus_its_output_in_memory(project: Project) -> None:
    from mlxpin.build.derive import Builder, build_model
    from mlxpin.config import load_settings
    from mlxpin.errors import BuildFailedError, ExitCode

    built_a(project)
    settings = load_settings(project.env, cwd=project.root)
    path = project.lock_dir / "tiny-q4.toml"
    lock = parse_lock(path.read_bytes(), path)
    builder = Builder(lock.build.builder if lock.build else "", sys.executable)
    with pytest.raises(BuildFailedError) as caught:
        build_model(settings, lock, builder, NoProgress(), check_only=True, memory=lambda: 1000)
    assert caught.value.exit_code == ExitCode.CONFIG
    assert (
        "needs about" in caught.value.message and "more than this machine's" in caught.value.message
    )
    assert not list((project.state_dir / "builds").iterdir())  # nothing started, nothing left


def test_gc_keeps_a_built_output_and_its_input_while_a_lock_names_them(
    project: Project,
) -> None:
    built_a(project)
    assert project.json("gc")["items"] == []
    project.ok("remove", "tiny-q4")
    project.ok("lock")
    freed = project.json("gc")["items"]
    assert freed  # the output's blobs, no longer named by a lock
    project.ok("verify", "tiny")  # the input is still named by its own lock


# --- substitution: host B has the lock, not the input --------------------------------------


def test_host_b_takes_the_output_from_a_bundle_without_building(
    project: Project, tmp_path: Path
) -> None:
    built_a(project)
    bundle = tmp_path / "q4.tar"
    project.ok("export", "tiny-q4", "-o", str(bundle))
    b = other_host(project, tmp_path)  # no models/tiny there: it cannot build
    cannot = b.run("build")
    assert cannot.returncode == 66
    assert "take tiny-q4's output from a bundle (`mlxpin import FILE`)" in cannot.stderr
    b.ok("import", str(bundle))
    b.ok("verify", "tiny-q4")
    assert "verified (substituted from a bundle)" in b.ok("status", "tiny-q4").stdout
    assert b.json("fetch", "tiny-q4")["models"][0]["up_to_date"] is True
    assert not (b.state_dir / "logs" / "builds").exists()  # nothing was built on B
    # A bundle whose output is not the one B's lock records is refused.
    c = other_host(project, tmp_path, "c")
    path = c.lock_dir / "tiny-q4.toml"
    lock = parse_lock(path.read_bytes(), path)
    files = [
        LockedFile(f.path, f.size + 1, f.oid) if f.path == "config.json" else f for f in lock.files
    ]
    path.write_bytes(
        render(make_locked(lock.name, lock.original, None, None, files, None, lock.build))
    )
    refused = c.run("import", str(bundle))
    assert refused.returncode != 0
    assert c.json("status", "tiny-q4")["models"][0]["fetch"] != "verified"


def test_host_b_takes_the_output_from_a_mirror_and_refuses_other_bytes(
    project: Project, tmp_path: Path
) -> None:
    built_a(project)
    b = other_host(project, tmp_path)
    with Mirror(project) as mirror:
        b.env["HF_ENDPOINT"] = mirror.url
        data = b.json("fetch", "tiny-q4")
        assert data["ok"] is True, data
    b.ok("verify", "tiny-q4")
    assert "verified (substituted from a mirror)" in b.ok("status", "tiny-q4").stdout
    assert not (b.state_dir / "logs" / "builds").exists()
    # A server that answers for the output with other bytes: refused, nothing installed.
    path = project.lock_dir / "tiny-q4.toml"
    lock = parse_lock(path.read_bytes(), path)
    served = served_as(lock)
    assert served is not None and served[0] == "mlxpin-build/tiny-q4"
    view = Path(project.json("status", "tiny-q4")["models"][0]["snapshot"])
    contents = {f.path: (view / f.path).read_bytes() for f in lock.files}
    contents["config.json"] = contents["config.json"].replace(b"4", b"5", 1)
    c = other_host(project, tmp_path, "c")
    with LyingCache(f"/{served[0]}/resolve/{served[1]}/", served[1], contents) as url:
        c.env["HF_ENDPOINT"] = url
        bad = c.run("fetch", "tiny-q4")
    assert bad.returncode == 65, bad.stderr
    assert "config.json" in bad.stderr and "downloaded bytes hash to" in bad.stderr
    assert c.json("status", "tiny-q4")["models"][0]["fetch"] != "verified"


class LyingCache:
    """A binary cache that serves other bytes under the right name and commit."""

    def __init__(self, prefix: str, commit: str, contents: dict[str, bytes]) -> None:
        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                body = contents.get(self.path.removeprefix(prefix))
                if not self.path.startswith(prefix) or body is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("X-Repo-Commit", commit)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> str:
        self.thread.start()
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


# --- hashing while the builder writes ------------------------------------------------------


def test_early_hashes_count_only_for_files_unchanged_since(tmp_path: Path) -> None:
    from mlxpin.build.early import EarlyHashes
    from mlxpin.build.step import hash_output
    from mlxpin.store.records import FileStat
    from mlxpin.util.hashing import hash_file

    out = tmp_path / "out"
    (out / "sub").mkdir(parents=True)
    kept, rewritten = out / "model.safetensors", out / "sub" / "config.json"
    kept.write_bytes(b"weights" * 1000)
    rewritten.write_bytes(b'{"bits": 4}')
    early = EarlyHashes(out)
    try:
        early.poll()  # first sight: nothing is quiet yet
        assert early.queued == {}
        early.poll()  # unchanged since: both hashed
        assert set(early.queued) == {"model.safetensors", "sub/config.json"}
        assert early.oid("model.safetensors", FileStat.of(kept)) == hash_file(kept, "sha256")
        early.oid("sub/config.json", FileStat.of(rewritten))  # wait for it
        before = os.lstat(rewritten)
        rewritten.write_bytes(b'{"bits": 8}')  # same size, other bytes, written later
        os.utime(rewritten, ns=(before.st_atime_ns, before.st_mtime_ns + 10**9))
        assert early.oid("sub/config.json", FileStat.of(rewritten)) is None
        files = {f.path: f.oid for f in hash_output("q", out, early)}
    finally:
        early.close()
    assert files["sub/config.json"] == hash_file(rewritten, "sha256")  # hashed again
    assert files["model.safetensors"] == hash_file(kept, "sha256")
