"""Snapshot test: every command's `--json` result and exit code, through the real CLI.

Each scenario runs ``python -m mlxpin ARGS --json`` in a subprocess against the loopback hub
(tests/hubserver.py) and compares what a user or a supervisor sees with the stored
``tests/snapshots/<scenario>.json``:

    argv           the command line
    exit_code      the process's exit status (sysexits: 0, 2, 65, 66, 69, 70, 77, 78)
    stdout         the ``--json`` document, parsed (null when the command printed nothing,
                   the raw text when it printed something that is not JSON)
    stderr_errors  the ``mlxpin: error:`` / ``internal error:`` / ``hint:`` / ``warning:``
                   lines of stderr (logs and progress are left out)

Volatile parts are normalised first, by `normalise`: the story's temporary directory becomes
``<TMP>``, the loopback hub's URL ``<HUB>``, another ephemeral port ``<PORT>``, the Python
interpreter ``<PYTHON>``, a duration ``<T>``, a file name derived from an absolute path
``<HASH OF PATH>`` and a size that counts directory entries and symlinks ``<FS SIZE>``.
Everything else must match exactly: commit ids, dates, sizes and hashes are deterministic
because the hub's are (git object ids of commits with fixed dates).

The model is a synthetic four-file repo, not the generated tiny model: `launch --dry-run`
never reads weights, and the hashes then depend on nothing but this file.

Scenarios come in stories: a story is a sequence of commands on its own hub and project,
where each command sees what the ones before it did. Stories are independent, so they run
concurrently (a CLI call costs ~0.6 s of interpreter start-up); each story is one test.

Only the command line is driven; no mlxpin module is imported, so files may move without
this test noticing, and behaviour may not change without it failing.

To accept an intended change, rewrite the expected files and review the diff::

    MLXPIN_UPDATE_SNAPSHOTS=1 .venv/bin/pytest -q tests/test_snapshots.py
    git diff tests/snapshots/

(with the variable set, snapshot files that no scenario produces any more are deleted).
"""

from __future__ import annotations

import difflib
import json
import os
import re
import subprocess
import sys
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from conftest import Project, isolated_hf_env
from hubserver import HubServer, LfsContent, Repo, closed_port_url

SNAPSHOT_DIR = Path(__file__).resolve().parent / "snapshots"
UPDATE_VARIABLE = "MLXPIN_UPDATE_SNAPSHOTS"
UPDATING = os.environ.get(UPDATE_VARIABLE) == "1"
CONCURRENT_STORIES = 4

REPO = "mlx-community/tiny-4bit"
GATED_REPO = "acme/tiny-gated"
METADATA_REFUSED_REPO = "acme/tiny-closed"
UNREGISTERED_TOKEN = "hf_SNAPSHOTnotAvalidTOKEN0123456789"
FIRST_COMMIT_DATE = datetime(2026, 5, 1, 10, 0, tzinfo=UTC)
SECOND_COMMIT_DATE = datetime(2026, 6, 2, 9, 0, tzinfo=UTC)

# The stderr lines a user reads as the outcome (logs and progress are left out).
MESSAGE_PREFIXES = ("mlxpin: error:", "mlxpin: internal error:", "  hint:", "mlxpin: warning:")
# JSON keys whose values are wall-clock durations.
DURATION_KEYS = frozenset({"seconds"})
# `gc` totals: they include a snapshot view's size, which is the lstat size of its
# directories (file-system dependent), of its symlinks (absolute: as long as <TMP>) and of
# its stamp (stat numbers).
GC_TOTAL_KEYS = frozenset({"bytes", "freed_bytes"})
# Literal text that varies from run to run, by pattern.
VOLATILE_PATTERNS = (
    # a verification record is named by the sha256 of its blob's absolute path
    (re.compile(r"(?<=/verified/)[0-9a-f]{2}/[0-9a-f]{64}"), "<HASH OF PATH>"),
)


def placeholder_for(key: str, container: dict[str, Any]) -> str | None:
    """The placeholder standing for `container[key]`, if that value is volatile."""
    if key in DURATION_KEYS:
        return "<T>"
    if key in GC_TOTAL_KEYS or (key == "size" and container.get("kind") == "view"):
        return "<FS SIZE>"
    unpinned = container.get("pinned") is False or container.get("state") == "unpinned"
    if key in ("mlx_lm", "mlx") and unpinned and container.get(key) is not None:
        return "<INSTALLED VERSION>"  # this interpreter's mlx-lm/mlx (no [runtime] pin)
    return None


def normalise(value: Any, volatile: list[tuple[str, str]]) -> Any:
    """`value` (parsed JSON) with its volatile parts replaced by placeholders.

    `volatile` holds (literal, placeholder) pairs, applied longest literal first.
    """
    if isinstance(value, dict):
        return {
            key: placeholder_for(key, value) or normalise(item, volatile)
            for key, item in value.items()
        }
    if isinstance(value, list):
        return [normalise(item, volatile) for item in value]
    if isinstance(value, str):
        for literal, placeholder in sorted(volatile, key=lambda pair: -len(pair[0])):
            value = value.replace(literal, placeholder)
        for pattern, placeholder in VOLATILE_PATTERNS:
            value = pattern.sub(placeholder, value)
    return value


# One scenario's normalised result (argv, exit_code, stdout, stderr_errors), and a story's
# results by scenario name.
Outcome = dict[str, Any]
Outcomes = dict[str, Outcome]


def parsed_stdout(stdout: str) -> Any:
    if not stdout.strip():
        return None
    try:
        return json.loads(stdout)
    except json.JSONDecodeError:
        return stdout


@dataclass
class Story:
    """A sequence of scenarios on one hub and one project; records each outcome."""

    hub: HubServer
    project: Project
    tmp: Path
    volatile: list[tuple[str, str]]
    outcomes: Outcomes = field(default_factory=dict)

    @property
    def env(self) -> dict[str, str]:
        return self.project.env

    def run(
        self, scenario: str, *args: str, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        """Run `mlxpin ARGS --json` and record its normalised outcome as SCENARIO."""
        assert scenario not in self.outcomes, f"two scenarios are named {scenario!r}"
        result = self.project.run(*args, "--json", env=env, timeout=60)
        outcome = {
            "argv": ["mlxpin", *args, "--json"],
            "exit_code": result.returncode,
            "stdout": parsed_stdout(result.stdout),
            "stderr_errors": [
                line for line in result.stderr.splitlines() if line.startswith(MESSAGE_PREFIXES)
            ],
        }
        self.outcomes[scenario] = normalise(outcome, self.volatile)
        return result

    def setup(self, *args: str) -> None:
        """Run a command that only prepares the next scenarios (its outcome is not kept)."""
        self.project.ok(*args)


StoryScript = Callable[[Story], None]


def play(script: StoryScript, tmp: Path) -> Outcomes:
    """Run one story on a fresh hub in `tmp`; its scenarios' outcomes by name."""
    with HubServer() as hub:
        root = tmp / "project"
        root.mkdir()
        project = Project(root=root, env=isolated_hf_env(hub.url, tmp / "hf_home"))
        volatile = [(hub.url, "<HUB>"), (sys.executable, "<PYTHON>")]
        volatile += [(path, "<TMP>") for path in {str(tmp), str(tmp.resolve())}]
        played = Story(hub, project, tmp, volatile)
        script(played)
        return played.outcomes


# --- the tiny model and its manifest ----------------------------------------------------


def manifest(repo: str = REPO, revision: str | None = None, launch_extra: str = "") -> str:
    revision_line = f'revision = "{revision}"\n' if revision else ""
    return f"""version = 1

[models.tiny]
api_label = "tiny-chat"
aliases = ["tiny"]
port = 18001

[models.tiny.launch]
repo = "{repo}"
{revision_line}{launch_extra}
[models.tiny.server]
max_tokens = 8
"""


SECOND_MODEL = """
[models.other]
api_label = "other-chat"
port = 18002

[models.other.launch]
repo = "acme/other"
"""


def publish(hub: HubServer, repo_id: str = REPO, **options: Any) -> Repo:
    """A tiny model repo: plain files, a nested file and an LFS weights file."""
    repo = hub.create_repo(repo_id, **options)
    repo.commit(
        {
            "config.json": b'{"model_type": "llama"}\n',
            "tokenizer.json": b'{"version": "1.0"}\n',
            "sub/notes.txt": b"nested\n",
            "model.safetensors": LfsContent(b"\x01" * 4096),
        },
        message="initial",
        date=FIRST_COMMIT_DATE,
    )
    return repo


def publish_second_commit(repo: Repo) -> str:
    return repo.commit(
        {"model.safetensors": LfsContent(b"\x02" * 8192), "extra.json": b"{}\n"},
        delete=["sub/notes.txt"],
        message="second",
        date=SECOND_COMMIT_DATE,
    )


def weights_blob(project: Project, repo: Repo) -> Path:
    """The Hub-cache blob of model.safetensors at the repo's head."""
    lfs = repo.files()["model.safetensors"].lfs
    assert lfs is not None
    cache = project.hf_home / "hub" / ("models--" + repo.id.replace("/", "--"))
    return cache / "blobs" / lfs.sha256


def flip_a_byte(blob: Path, *, keep_mtime: bool) -> None:
    """Corrupt a file in place, same size; with keep_mtime a stat check cannot see it."""
    before = blob.stat()
    data = bytearray(blob.read_bytes())
    data[100] ^= 0xFF
    blob.chmod(0o644)
    blob.write_bytes(bytes(data))
    if keep_mtime:
        os.utime(blob, ns=(before.st_atime_ns, before.st_mtime_ns))


# --- the stories ------------------------------------------------------------------------


def locked_and_fetched(story: Story) -> None:
    """One model locked and fetched; then every command that leaves it as it is."""
    publish(story.hub)
    story.project.write_manifest(manifest())
    story.run("lock-fresh", "lock")
    story.run("fetch-fresh", "fetch")
    story.run("lock-kept", "lock")
    story.run("lock-check-ok", "lock", "--check")
    story.run("lock-update-unchanged", "lock", "--update")
    story.run("lock-check-with-update", "lock", "--check", "--update")
    story.run("lock-unknown-name", "lock", "tinny")
    story.run("fetch-up-to-date", "fetch")
    story.run("fetch-unknown-name", "fetch", "tinny")
    story.run("verify-ok", "verify")
    story.run("status-verified", "status")
    story.run("launch-dry-run", "launch", "--dry-run")
    story.run("launch-dry-run-unknown-name", "launch", "tinny", "--dry-run")
    story.run("gc-nothing-to-collect", "gc")


def missing_lock(story: Story) -> None:
    story.project.write_manifest(manifest())
    story.run("lock-check-missing", "lock", "--check")
    story.run("fetch-missing-lock", "fetch")
    story.run("verify-missing-lock", "verify")
    story.run("status-missing-lock", "status")
    story.run("launch-dry-run-missing-lock", "launch", "--dry-run")


def stale_lock_and_orphan(story: Story) -> None:
    project = story.project
    repo = publish(story.hub)
    repo.tag("v2", repo.head())
    project.write_manifest(manifest())
    story.setup("lock")
    orphan = project.lock_text("tiny").replace('"tiny"', '"gone"')
    (project.lock_dir / "gone.toml").write_text(orphan)
    project.write_manifest(manifest(revision="v2") + SECOND_MODEL)
    story.run("lock-check-stale-missing-orphan", "lock", "--check")
    story.run("fetch-stale-lock", "fetch")
    story.run("launch-dry-run-stale-lock", "launch", "tiny", "--dry-run")
    story.run("status-stale-lock", "status")
    project.write_manifest(manifest(revision="v2"))
    story.run("lock-relocks-stale-removes-orphan", "lock")


def not_fetched_then_updated_then_collected(story: Story) -> None:
    repo = publish(story.hub)
    story.project.write_manifest(manifest())
    story.setup("lock")
    story.run("launch-dry-run-not-fetched", "launch", "--dry-run")
    story.run("verify-not-fetched", "verify")
    story.run("status-not-fetched", "status")
    story.setup("fetch")
    publish_second_commit(repo)
    story.run("lock-update-moved", "lock", "--update")
    story.setup("fetch")
    story.run("gc-dry-run", "gc")
    story.run("gc-yes", "gc", "--yes")


def corrupt_bytes(story: Story) -> None:
    hub, project = story.hub, story.project
    repo = publish(hub)
    project.write_manifest(manifest())
    story.setup("lock")
    hub.corrupt("model.safetensors")
    story.run("fetch-corrupt-download", "fetch")
    hub.reset_faults()
    story.setup("fetch")
    flip_a_byte(weights_blob(project, repo), keep_mtime=True)
    story.run("launch-dry-run-verify-bit-rot", "launch", "--dry-run", "--verify")
    story.run("verify-bit-rot", "verify")
    story.run("launch-dry-run-after-failed-verify", "launch", "--dry-run")
    story.run("fetch-repairs", "fetch")
    flip_a_byte(weights_blob(project, repo), keep_mtime=False)
    story.run("status-tampered", "status")
    story.run("launch-dry-run-tampered", "launch", "--dry-run")


def hub_errors(story: Story) -> None:
    hub, project = story.hub, story.project
    repo = publish(hub)
    repo.set_branch("release", repo.head())
    publish(hub, GATED_REPO, gated="manual")
    publish(hub, METADATA_REFUSED_REPO, gated="manual", metadata_refused=True)
    unreachable = closed_port_url()
    story.volatile.append((unreachable, "http://127.0.0.1:<PORT>"))

    project.write_manifest(manifest(repo="gemma-4-31b-it"))
    story.run("lock-bare-repo-id", "lock")
    project.write_manifest(manifest(repo="nobody/nothing"))
    story.run("lock-repo-not-found", "lock")
    project.write_manifest(manifest(revision="relase"))
    story.run("lock-revision-not-found", "lock")
    project.write_manifest(manifest(repo=METADATA_REFUSED_REPO))
    story.run("lock-gated-metadata-refused", "lock")
    project.write_manifest(manifest())
    with_token = {**story.env, "HF_TOKEN": UNREGISTERED_TOKEN}
    refused = story.run("lock-token-refused", "lock", env=with_token)
    assert UNREGISTERED_TOKEN not in refused.stdout + refused.stderr
    story.run("lock-hub-unreachable", "lock", env={**story.env, "HF_ENDPOINT": unreachable})
    story.run("lock-offline", "lock", env={**story.env, "HF_HUB_OFFLINE": "1"})
    project.write_manifest(manifest(repo=GATED_REPO))
    story.run("lock-gated", "lock")
    story.run("fetch-gated-without-token", "fetch")
    story.run("fetch-hub-unreachable", "fetch", env={**story.env, "HF_ENDPOINT": unreachable})


def manifest_and_usage_errors(story: Story) -> None:
    project = story.project
    story.run("status-no-manifest", "status")
    project.write_manifest("version = 1\n[models.x]\napi_label = 1\n")
    story.run("status-invalid-manifest", "status")
    story.run("launch-dry-run-invalid-manifest", "launch", "--dry-run")
    project.write_manifest(manifest() + SECOND_MODEL)
    story.run("launch-dry-run-which-model", "launch", "--dry-run")
    story.run("lock-bad-flag", "lock", "--no-such-flag")
    story.run("launch-bad-flag", "launch", "--no-such-flag")


def manifest_edits(story: Story) -> None:
    publish(story.hub)
    story.run("init", "init")
    story.run("init-existing", "init")
    globs = ("--files", "*.json", "--files", "*.safetensors")
    story.run("add", "add", "qwen", "--repo", "mlx-community/Qwen3-4B-4bit", *globs)
    story.run("add-duplicate-name", "add", "qwen", "--repo", "acme/other")
    story.run("add-label-taken", "add", "other", "--repo", "acme/other", "--label", "qwen")
    story.run("add-bare-repo-id", "add", "gem", "--repo", "gemma-4-31b-it")
    story.run("add-and-lock", "add", "tiny", "--repo", REPO, "--port", "18001", "--lock")
    story.run("remove", "remove", "tiny")
    story.run("remove-unknown-name", "remove", "tiny")
    drafted = manifest(launch_extra='draft = "other"\n') + SECOND_MODEL
    (story.project.root / "drafted.toml").write_text(drafted)
    story.run("remove-draft-in-use", "remove", "other", "--manifest", "drafted.toml")


def service_units(story: Story) -> None:
    """Boot units of a model not locked yet (so: warnings), in a HOME of the story's own."""
    home = story.tmp / "home"
    home.mkdir()
    env = {k: v for k, v in story.env.items() if k != "XDG_CONFIG_HOME"}
    env["HOME"] = str(home)
    story.project.write_manifest(manifest())

    def service(scenario: str, verb: str, *args: str, platform: str = "linux") -> None:
        story.run(scenario, "service", verb, *args, "--platform", platform, env=env)

    service("service-show-linux", "show", "tiny")
    service("service-show-macos", "show", "tiny", platform="macos")
    service("service-show-unknown-name", "show", "nope")
    service("service-install-print", "install", "tiny", "--print")
    service("service-install-print-and-enable", "install", "tiny", "--print", "--enable")
    service("service-install", "install", "tiny")
    service("service-install-unchanged", "install", "tiny")
    service("service-show-installed", "show", "tiny")
    service("service-uninstall-print", "uninstall", "tiny", "--print")
    service("service-uninstall", "uninstall", "tiny")
    service("service-uninstall-not-installed", "uninstall", "tiny")


STORIES: dict[str, StoryScript] = {
    script.__name__: script
    for script in (  # the longest first: they start first
        hub_errors,
        locked_and_fetched,
        service_units,
        manifest_edits,
        corrupt_bytes,
        not_fetched_then_updated_then_collected,
        stale_lock_and_orphan,
        manifest_and_usage_errors,
        missing_lock,
    )
}


# --- the tests --------------------------------------------------------------------------


def mismatch(scenario: str, outcome: Outcome) -> str | None:
    """How `outcome` differs from the stored snapshot (None: it does not); rewrites the
    snapshot instead when updating."""
    path = SNAPSHOT_DIR / f"{scenario}.json"
    observed = json.dumps(outcome, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
    if UPDATING:
        SNAPSHOT_DIR.mkdir(exist_ok=True)
        path.write_text(observed)
        return None
    if not path.exists():
        return f"{scenario}: no snapshot file {path}"
    expected = path.read_text()
    if json.loads(expected) == outcome:
        return None
    diff = difflib.unified_diff(
        expected.splitlines(), observed.splitlines(), path.name, "observed", lineterm=""
    )
    return f"{scenario}:\n" + "\n".join(diff)


PlayedStories = dict[str, Future[Outcomes]]


@pytest.fixture(scope="module")
def played_stories(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PlayedStories]:
    """Every story, started at once in the background: its outcomes by story name."""
    homes = {name: tmp_path_factory.mktemp(name) for name in STORIES}
    with ThreadPoolExecutor(max_workers=CONCURRENT_STORIES) as pool:
        yield {name: pool.submit(play, script, homes[name]) for name, script in STORIES.items()}
        pool.shutdown(cancel_futures=True)  # after `pytest -x`: do not start the rest


@pytest.mark.parametrize("name", list(STORIES))
def test_story_matches_its_snapshots(name: str, played_stories: PlayedStories) -> None:
    outcomes = played_stories[name].result()
    mismatches = [m for s, o in outcomes.items() if (m := mismatch(s, o)) is not None]
    if mismatches:
        pytest.fail(
            f"{len(mismatches)} scenario(s) changed. If that is intended, rerun with "
            f"{UPDATE_VARIABLE}=1 and review `git diff tests/snapshots`.\n\n"
            + "\n\n".join(mismatches),
            pytrace=False,
        )


def test_every_snapshot_file_has_one_scenario(played_stories: PlayedStories) -> None:
    if any(future.exception() is not None for future in played_stories.values()):
        pytest.skip("a story failed: its test says why")
    scenarios = [s for future in played_stories.values() for s in future.result()]
    assert len(scenarios) == len(set(scenarios)), "two stories share a scenario name"
    files = {path.stem: path for path in SNAPSHOT_DIR.glob("*.json")}
    unused = sorted(set(files) - set(scenarios))
    if UPDATING:
        for stem in unused:
            files[stem].unlink()
        return
    if unused:
        pytest.fail(f"snapshot files that no scenario produces: {unused}", pytrace=False)


def test_every_json_failure_has_one_shape() -> None:
    """Issue #20 item 18: `lock --check`, a failed lock, `verify` and usage errors said
    `"ok": false` without an error (or nothing at all). The kind is error.kind (and, as
    before, error.error)."""
    for path in sorted(SNAPSHOT_DIR.glob("*.json")):
        snapshot = json.loads(path.read_text())
        if snapshot["exit_code"] == 0:
            continue
        stdout = snapshot["stdout"]
        assert isinstance(stdout, dict) and stdout["ok"] is False, path.name
        error = stdout.get("error")
        assert isinstance(error, dict), path.name
        assert {"kind", "error", "exit_code", "message", "hint"} <= set(error), path.name
        assert error["kind"] == error["error"], path.name
        assert error["exit_code"] == snapshot["exit_code"], path.name
