"""The test Hub behaves like the real Hub for the real huggingface_hub client.

Every test drives the real client (in-process with explicit ``endpoint=``/``cache_dir=``/
``token=``, or in a subprocess with ``hf_env``) against the server in ``hubserver.py``.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx2
import pytest
from huggingface_hub import HfApi, hf_hub_download, snapshot_download
from huggingface_hub.errors import (
    DisabledRepoError,
    GatedRepoError,
    HfHubHTTPError,
    LocalEntryNotFoundError,
    RemoteEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from huggingface_hub.file_download import get_hf_file_metadata, hf_hub_url
from huggingface_hub.hf_api import RepoFile, RepoFolder

from hubserver import (
    EPOCH,
    GatedMode,
    HubServer,
    LfsContent,
    PlainContent,
    Repo,
    _Pace,
    closed_port_url,
    git_blob_sha1,
    iso_date,
    lfs_pointer,
    pseudo_random_bytes,
    sha256_hex,
)

REPO = "acme/tiny"
WEIGHTS = pseudo_random_bytes(3000, seed=1)
CONFIG = b'{"model_type": "llama"}\n'
FILES: dict[str, bytes] = {
    "config.json": CONFIG,
    "model.safetensors": WEIGHTS,
    "tokenizer/vocab.txt": b"a\nb\n",
    "tokenizer/extra/merges.txt": b"a b\n",
    "README.md": b"# tiny\n",
}
DATE = datetime(2026, 3, 4, 5, 6, 7, tzinfo=UTC)
TOKEN = "hf_testtoken_with_access"
OTHER_TOKEN = "hf_testtoken_without_access"


def api(hub: HubServer, token: str | bool = False) -> HfApi:
    return HfApi(endpoint=hub.url, token=token)


def make_repo(
    hub: HubServer,
    *,
    private: bool = False,
    gated: GatedMode = False,
    metadata_refused: bool = False,
    disabled: bool = False,
    library_name: str | None = None,
    tags: tuple[str, ...] = (),
) -> tuple[Repo, str]:
    repo = hub.create_repo(
        REPO,
        private=private,
        gated=gated,
        metadata_refused=metadata_refused,
        disabled=disabled,
        library_name=library_name,
        tags=tags,
    )
    sha = repo.commit(FILES, message="Initial upload\n\nwith weights", date=DATE)
    return repo, sha


def download(
    hub: HubServer,
    cache: Path,
    filename: str,
    *,
    repo_id: str = REPO,
    revision: str | None = None,
    token: str | bool = False,
) -> Path:
    path = hf_hub_download(
        repo_id, filename, revision=revision, cache_dir=cache, endpoint=hub.url, token=token
    )
    return Path(path)


def storage(cache: Path, repo_id: str = REPO) -> Path:
    return cache / ("models--" + repo_id.replace("/", "--"))


# --------------------------------------------------------------------------------------
# Hashes and the repo model
# --------------------------------------------------------------------------------------


def test_hashes_are_git_and_git_lfs_hashes() -> None:
    assert git_blob_sha1(b"") == "e69de29bb2d1d6434b8b29ae775ad8c2e48c5391"
    assert git_blob_sha1(b"hello\n") == "ce013625030ba8dba906f756967f9e9ca394464a"
    pointer = lfs_pointer("ab" * 32, 12)
    assert pointer == (
        b"version https://git-lfs.github.com/spec/v1\noid sha256:" + b"ab" * 32 + b"\nsize 12\n"
    )
    assert iso_date(datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)) == "2026-01-02T03:04:05.678Z"


def test_entries_plain_lfs_and_forced(hub: HubServer, tmp_path: Path) -> None:
    on_disk = tmp_path / "weights.npz"
    on_disk.write_bytes(b"disk content")
    repo = hub.create_repo(REPO)
    repo.commit(
        {
            "a.json": b"{}",
            "b.safetensors": WEIGHTS,
            "c.gguf": PlainContent(b"forced plain"),
            "d.txt": LfsContent(b"forced lfs"),
            "e.npz": on_disk,
            "f.bin": PlainContent(on_disk),
        }
    )
    files = repo.files()
    assert files["a.json"].lfs is None
    assert files["a.json"].blob_id == git_blob_sha1(b"{}") == files["a.json"].etag
    lfs = files["b.safetensors"]
    assert lfs.lfs is not None
    assert lfs.lfs.sha256 == sha256_hex(WEIGHTS) == lfs.etag
    assert lfs.size == lfs.lfs.size == len(WEIGHTS)
    pointer = lfs_pointer(sha256_hex(WEIGHTS), len(WEIGHTS))
    assert lfs.lfs.pointer_size == len(pointer)
    assert lfs.blob_id == git_blob_sha1(pointer)
    assert files["c.gguf"].lfs is None
    assert files["d.txt"].lfs is not None
    assert files["e.npz"].lfs is not None
    assert files["e.npz"].content() == b"disk content"
    assert files["f.bin"].lfs is None
    assert files["f.bin"].blob_id == git_blob_sha1(b"disk content")


def test_commit_ids_are_deterministic_and_match_git(tmp_path: Path) -> None:
    def build(server: HubServer) -> tuple[Repo, str, str]:
        repo = server.create_repo(REPO)
        first = repo.commit(FILES, message="Initial upload")
        second = repo.commit({"extra.txt": b"x"}, delete=["tokenizer"], message="second")
        return repo, first, second

    with HubServer() as one, HubServer() as two:
        repo, first, second = build(one)
        assert build(two)[1:] == (first, second)
    assert repo.get_commit(first).date == EPOCH
    assert repo.get_commit(second).parent == first
    assert (repo.get_commit(second).date - EPOCH).days == 1
    assert sorted(repo.files(second)) == [
        "README.md",
        "config.json",
        "extra.txt",
        "model.safetensors",
    ]

    git = shutil.which("git")
    if git is None:
        pytest.skip("git is not installed")
    work = tmp_path / "git"
    work.mkdir()
    commit = repo.get_commit(first)
    for path, entry in commit.files.items():
        target = work / path
        target.parent.mkdir(parents=True, exist_ok=True)
        data = entry.content()
        if entry.lfs is not None:
            data = lfs_pointer(entry.lfs.sha256, entry.size)
        target.write_bytes(data)
    stamp = f"@{int(commit.date.timestamp())} +0000"
    env = {
        "PATH": os.environ.get("PATH", ""),
        "HOME": str(tmp_path),
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_AUTHOR_NAME": commit.author,
        "GIT_AUTHOR_EMAIL": f"{commit.author}@users.noreply.hubserver.invalid",
        "GIT_AUTHOR_DATE": stamp,
        "GIT_COMMITTER_NAME": commit.author,
        "GIT_COMMITTER_EMAIL": f"{commit.author}@users.noreply.hubserver.invalid",
        "GIT_COMMITTER_DATE": stamp,
    }

    def run(*args: str) -> str:
        done = subprocess.run(
            [git, *args], cwd=work, env=env, capture_output=True, text=True, check=True
        )
        return done.stdout.strip()

    run("init", "-q")
    run("add", "-A")
    assert run("write-tree") == commit.tree
    assert run("commit-tree", commit.tree, "-m", "Initial upload") == first
    assert run("hash-object", "config.json") == commit.files["config.json"].blob_id


def test_commit_rejects_bad_paths_and_supports_base(hub: HubServer) -> None:
    repo, sha = make_repo(hub)
    for bad in ("", "/abs", "a/../b", "a//b", "dir/"):
        with pytest.raises(ValueError, match="invalid file path"):
            repo.commit({bad: b"x"})
    with pytest.raises(ValueError, match="no such file"):
        repo.commit({}, delete=["missing.txt"])
    with pytest.raises(ValueError, match="directory"):
        repo.commit({"config.json/x": b"x"})
    assert repo.head() == sha  # failed commits change nothing
    repo.commit({"new.txt": b"n"})
    side = repo.commit({"side.txt": b"s"}, branch="side", base=sha)
    assert repo.get_commit(side).parent == sha
    assert "new.txt" not in repo.files("side")


# --------------------------------------------------------------------------------------
# Metadata
# --------------------------------------------------------------------------------------


def test_model_info_with_files_metadata(hub: HubServer) -> None:
    repo, sha = make_repo(hub, library_name="mlx", tags=("mlx", "text-generation"))
    info = api(hub).model_info(REPO, revision="main", files_metadata=True)
    assert info.id == REPO
    assert info.sha == sha
    assert info.last_modified == DATE
    assert info.created_at == EPOCH
    assert (info.private, info.gated, info.disabled) == (False, False, False)
    assert info.library_name == "mlx"
    assert info.tags == ["mlx", "text-generation"]
    assert info.siblings is not None
    siblings = {s.rfilename: s for s in info.siblings}
    assert sorted(siblings) == sorted(FILES)
    for path, content in FILES.items():
        sibling = siblings[path]
        assert sibling.size == len(content)
        assert sibling.blob_id == repo.files()[path].blob_id
    lfs = siblings["model.safetensors"].lfs
    assert lfs is not None
    assert lfs.sha256 == sha256_hex(WEIGHTS)
    assert lfs.size == len(WEIGHTS)
    assert lfs.pointer_size == len(lfs_pointer(sha256_hex(WEIGHTS), len(WEIGHTS)))
    assert siblings["config.json"].lfs is None
    assert siblings["config.json"].blob_id == git_blob_sha1(CONFIG)
    # Without files_metadata, only names; without revision, the default branch.
    plain = api(hub).model_info(REPO)
    assert plain.sha == sha
    assert plain.siblings is not None
    assert all(s.size is None and s.blob_id is None for s in plain.siblings)
    assert hub.count("GET", f"/api/models/{REPO}/revision/main") == 1
    assert hub.count("GET", f"/api/models/{REPO}") == 2
    assert not any(r.has_auth for r in hub.requests)


def test_revisions_branch_tag_sha_pr_and_slashes(hub: HubServer) -> None:
    repo, first = make_repo(hub)
    repo.tag("v1.0", first)
    feature = repo.commit({"feature.txt": b"f"}, branch="feature/x", message="feature")
    pr = repo.commit({"pr.txt": b"p"}, branch="refs/pr/1", base=first, message="PR")
    client = api(hub)
    assert client.model_info(REPO, revision="v1.0").sha == first
    assert client.model_info(REPO, revision=first).sha == first
    assert client.model_info(REPO, revision="feature/x").sha == feature
    assert client.model_info(REPO, revision="refs/pr/1").sha == pr
    assert hub.count("GET", "/revision/feature%2Fx") == 1
    assert hub.count("GET", "/revision/refs%2Fpr%2F1") == 1

    second = repo.commit({"config.json": b"{}"}, message="move main")
    assert second != first
    assert client.model_info(REPO, revision="main").sha == second
    assert client.model_info(REPO, revision="v1.0").sha == first  # tags do not move
    assert client.model_info(REPO, revision=first).sha == first  # old commits stay reachable
    repo.set_branch("main", first)
    assert client.model_info(REPO).sha == first
    repo.delete_branch("feature/x")
    with pytest.raises(RevisionNotFoundError):
        client.model_info(REPO, revision="feature/x")
    with pytest.raises(RevisionNotFoundError):
        client.model_info(REPO, revision="0" * 40)


def test_list_repo_refs(hub: HubServer) -> None:
    repo, first = make_repo(hub)
    repo.tag("v1", first)
    dev = repo.commit({"dev.txt": b"d"}, branch="dev")
    pr = repo.commit({"pr.txt": b"p"}, branch="refs/pr/3")
    refs = api(hub).list_repo_refs(REPO)
    assert [(b.name, b.ref, b.target_commit) for b in refs.branches] == [
        ("dev", "refs/heads/dev", dev),
        ("main", "refs/heads/main", first),
    ]
    assert [(t.name, t.ref, t.target_commit) for t in refs.tags] == [("v1", "refs/tags/v1", first)]
    assert refs.converts == []
    assert refs.pull_requests is None
    with_prs = api(hub).list_repo_refs(REPO, include_pull_requests=True)
    assert with_prs.pull_requests is not None
    assert [(p.name, p.target_commit) for p in with_prs.pull_requests] == [("3", pr)]


def test_list_repo_tree_recursive_paginated(hub: HubServer) -> None:
    repo, sha = make_repo(hub)
    hub.tree_page_size = 2
    entries = list(api(hub).list_repo_tree(REPO, revision=sha, recursive=True))
    files = {e.path: e for e in entries if isinstance(e, RepoFile)}
    folders = {e.path: e for e in entries if isinstance(e, RepoFolder)}
    assert sorted(files) == sorted(FILES)
    assert sorted(folders) == ["tokenizer", "tokenizer/extra"]
    assert folders["tokenizer"].tree_id == repo.get_commit(sha).dirs["tokenizer"]
    weights = files["model.safetensors"]
    assert weights.size == len(WEIGHTS)
    assert weights.lfs is not None
    assert weights.lfs.sha256 == sha256_hex(WEIGHTS)
    assert weights.blob_id == repo.files()["model.safetensors"].blob_id
    assert files["config.json"].blob_id == git_blob_sha1(CONFIG)
    assert files["config.json"].lfs is None
    pages = hub.matching("GET", "/tree/")
    assert len(pages) == 4  # 7 entries, 2 per page
    assert pages[0].query == "recursive=true&expand=false"
    assert all("cursor=" in p.query for p in pages[1:])

    top = list(api(hub).list_repo_tree(REPO, revision="main"))
    assert [e.path for e in top] == ["README.md", "config.json", "model.safetensors", "tokenizer"]
    sub = list(api(hub).list_repo_tree(REPO, path_in_repo="tokenizer", revision="main"))
    assert [e.path for e in sub] == ["tokenizer/extra", "tokenizer/vocab.txt"]
    assert hub.count("GET", "/tree/main/tokenizer") >= 1

    second = repo.commit({"config.json": b"{}"}, message="Update config")
    expanded = {
        e.path: e
        for e in api(hub).list_repo_tree(REPO, revision="main", expand=True, recursive=True)
    }
    config_commit = expanded["config.json"].last_commit
    readme_commit = expanded["README.md"].last_commit
    assert config_commit is not None and readme_commit is not None
    assert (config_commit.oid, config_commit.title) == (second, "Update config")
    assert readme_commit.oid == sha
    info = api(hub).get_paths_info(REPO, ["config.json", "tokenizer", "nope"], revision=sha)
    assert [(type(i).__name__, i.path) for i in info] == [
        ("RepoFile", "config.json"),
        ("RepoFolder", "tokenizer"),
    ]


def test_list_repo_commits(hub: HubServer) -> None:
    repo, first = make_repo(hub)
    second = repo.commit({"a.txt": b"a"}, message="Add a", author="alice")
    third = repo.commit({"b.txt": b"b"}, message="Add b\n\nlonger text")
    hub.commits_page_size = 2
    commits = api(hub).list_repo_commits(REPO)
    assert [c.commit_id for c in commits] == [third, second, first]
    assert [c.title for c in commits] == ["Add b", "Add a", "Initial upload"]
    assert commits[0].message == "longer text"
    assert commits[1].authors == ["alice"]
    assert commits[2].created_at == DATE
    assert hub.count("GET", "/commits/main") == 2
    assert [c.commit_id for c in api(hub).list_repo_commits(REPO, revision=second)] == [
        second,
        first,
    ]


# --------------------------------------------------------------------------------------
# Downloads and the cache
# --------------------------------------------------------------------------------------


def test_resolve_headers_and_ranges(hub: HubServer) -> None:
    _, sha = make_repo(hub)
    url = f"{hub.url}/{REPO}/resolve/main"
    with httpx2.Client() as client:
        head = client.head(f"{url}/model.safetensors")
        assert head.status_code == 200
        assert head.headers["X-Repo-Commit"] == sha
        assert head.headers["ETag"] == f'"{sha256_hex(WEIGHTS)}"'
        assert head.headers["X-Linked-Etag"] == f'"{sha256_hex(WEIGHTS)}"'
        assert head.headers["X-Linked-Size"] == str(len(WEIGHTS))
        assert head.headers["Content-Length"] == str(len(WEIGHTS))
        assert head.headers["Accept-Ranges"] == "bytes"
        plain = client.head(f"{url}/config.json")
        assert plain.headers["ETag"] == f'"{git_blob_sha1(CONFIG)}"'
        assert "X-Linked-Etag" not in plain.headers
        assert client.get(f"{url}/model.safetensors").content == WEIGHTS
        part = client.get(f"{url}/model.safetensors", headers={"Range": "bytes=1000-"})
        assert part.status_code == 206
        assert part.content == WEIGHTS[1000:]
        assert part.headers["Content-Range"] == f"bytes 1000-2999/{len(WEIGHTS)}"
        part = client.get(f"{url}/model.safetensors", headers={"Range": "bytes=10-19"})
        assert (part.status_code, part.content) == (206, WEIGHTS[10:20])
        part = client.get(f"{url}/model.safetensors", headers={"Range": "bytes=-5"})
        assert (part.status_code, part.content) == (206, WEIGHTS[-5:])
        bad = client.get(f"{url}/model.safetensors", headers={"Range": "bytes=3000-"})
        assert bad.status_code == 416
        assert bad.headers["Content-Range"] == "bytes */3000"
        missing = client.head(f"{url}/nope.json")
        assert missing.status_code == 404
        assert missing.headers["X-Error-Code"] == "EntryNotFound"
        assert missing.headers["X-Repo-Commit"] == sha
    ports = {r.client_port for r in hub.requests}
    assert len(ports) == 1  # one keep-alive connection served all of them


def test_hf_hub_download_standard_cache_layout(hub: HubServer, tmp_path: Path) -> None:
    repo, sha = make_repo(hub)
    cache = tmp_path / "cache"
    weights = download(hub, cache, "model.safetensors")
    config = download(hub, cache, "config.json")
    nested = download(hub, cache, "tokenizer/extra/merges.txt")
    root = storage(cache)
    assert (cache / "CACHEDIR.TAG").is_file()
    assert (root / "refs" / "main").read_text() == sha
    assert weights == root / "snapshots" / sha / "model.safetensors"
    assert os.readlink(weights) == f"../../blobs/{sha256_hex(WEIGHTS)}"
    assert os.readlink(config) == f"../../blobs/{git_blob_sha1(CONFIG)}"
    merges = git_blob_sha1(FILES["tokenizer/extra/merges.txt"])
    assert os.readlink(nested) == f"../../../../blobs/{merges}"
    assert weights.read_bytes() == WEIGHTS
    assert (cache / ".locks" / f"models--{REPO.replace('/', '--')}").is_dir()
    assert hub.count("HEAD", "/resolve/main/") == 3
    assert hub.count("GET", "/resolve/main/") == 3

    hub.clear_requests()
    again = download(hub, cache, "model.safetensors", revision=sha)
    assert again == weights
    assert hub.requests == []  # a cached file at a sha costs no request at all

    feature = repo.commit({"config.json": b"{}"}, branch="feature/x")
    changed = download(hub, cache, "config.json", revision="feature/x")
    assert changed.read_bytes() == b"{}"
    assert (root / "refs" / "feature" / "x").read_text() == feature
    assert hub.count("HEAD", "/resolve/feature%2Fx/config.json") == 1


def test_snapshot_download_at_sha_with_patterns(hub: HubServer, tmp_path: Path) -> None:
    repo, sha = make_repo(hub)
    repo.commit({"later.json": b"{}"})
    cache = tmp_path / "cache"
    path = Path(
        snapshot_download(
            REPO,
            revision=sha,
            allow_patterns=["*.json", "tokenizer/*"],
            cache_dir=cache,
            endpoint=hub.url,
            token=False,
        )
    )
    root = storage(cache)
    assert path == root / "snapshots" / sha
    got = sorted(p.relative_to(path).as_posix() for p in path.rglob("*") if p.is_file())
    assert got == ["config.json", "tokenizer/extra/merges.txt", "tokenizer/vocab.txt"]
    assert (root / "trees" / f"{sha}.json").is_file()
    assert not (root / "refs").exists()  # a sha is not a ref
    assert hub.count("GET", "/api/models/acme/tiny/revision/") == 0  # no resolution for a sha
    assert hub.count("GET", f"/tree/{sha}") == 1

    main = Path(snapshot_download(REPO, cache_dir=cache, endpoint=hub.url, token=False))
    assert (root / "refs" / "main").read_text() == repo.head()
    assert (main / "later.json").is_file()
    assert (main / "model.safetensors").read_bytes() == WEIGHTS


def test_verify_repo_checksums_passes_then_catches_corruption(
    hub: HubServer, tmp_path: Path
) -> None:
    _, sha = make_repo(hub)
    good = tmp_path / "good"
    snapshot_download(REPO, revision=sha, cache_dir=good, endpoint=hub.url, token=False)
    result = api(hub).verify_repo_checksums(REPO, revision=sha, cache_dir=good)
    assert result.checked_count == len(FILES)
    assert result.mismatches == [] and result.missing_paths == []

    hub.clear_requests()
    hub.corrupt("model.safetensors")
    hub.corrupt("config.json")
    bad = tmp_path / "bad"
    path = snapshot_download(REPO, revision=sha, cache_dir=bad, endpoint=hub.url, token=False)
    weights = (Path(path) / "model.safetensors").read_bytes()
    assert len(weights) == len(WEIGHTS) and weights != WEIGHTS  # accepted silently
    assert hub.count("GET", "model.safetensors") == 1
    assert hub.matching("GET", "model.safetensors")[0].fault == "corrupt"
    result = api(hub).verify_repo_checksums(REPO, revision=sha, cache_dir=bad)
    assert sorted((m["path"], m["algorithm"]) for m in result.mismatches) == [
        ("config.json", "git-sha1"),
        ("model.safetensors", "sha256"),
    ]


def test_interrupted_download_resumes_with_range(hub: HubServer, tmp_path: Path) -> None:
    big = pseudo_random_bytes(12 << 20, seed=7)
    hub.create_repo(REPO).commit({"big.safetensors": big})
    # The client keeps only whole 10 MiB chunks, so cut after more than that.
    hub.cut_after("big.safetensors", 11 << 20)
    path = download(hub, tmp_path / "cache", "big.safetensors")
    assert hashlib.sha256(path.read_bytes()).hexdigest() == sha256_hex(big)
    gets = hub.matching("GET", "big.safetensors")
    assert [(g.status, g.range, g.fault) for g in gets] == [
        (200, None, "cut"),
        (206, f"bytes={10 << 20}-", None),
    ]


def test_drip_sends_the_answer_byte_by_byte(hub: HubServer) -> None:
    hub.create_repo(REPO).commit({"config.json": b"{}"})
    hub.drip("/api/models/", interval_s=0.01, times=1)
    with socket.create_connection(("127.0.0.1", hub.port)) as sock:
        sock.sendall(f"GET /api/models/{REPO} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        head = b""
        while b"\r\n\r\n" not in head:
            head += sock.recv(65536)
        length = int(head.split(b"Content-Length: ")[1].split(b"\r\n")[0])
        body = head.split(b"\r\n\r\n", 1)[1]
        reads = 0
        while len(body) < length:
            body += sock.recv(65536)
            reads += 1
    assert reads >= length // 2  # one byte (or two) per read, never the whole answer at once
    assert json.loads(body)["id"] == REPO
    assert hub.matching("GET", "/api/models/")[0].fault == "drip"
    assert api(hub).model_info(REPO).id == REPO  # times=1: the next answer is whole


def test_truncate_body_sends_a_complete_message_with_half_a_document(hub: HubServer) -> None:
    hub.create_repo(REPO).commit({"config.json": b"{}"})
    hub.truncate_body("/api/models/", 30, times=1)
    with pytest.raises(json.JSONDecodeError) as info:
        api(hub).model_info(REPO)
    assert len(info.value.doc) == 30
    assert hub.matching("GET", "/api/models/")[0].fault == "truncate"
    assert api(hub).model_info(REPO).id == REPO


def test_reset_connection_is_not_retried_by_the_client(hub: HubServer, tmp_path: Path) -> None:
    big = pseudo_random_bytes(12 << 20, seed=7)
    hub.create_repo(REPO).commit({"big.safetensors": big})
    hub.cut_after("big.safetensors", 11 << 20, reset=True)
    with pytest.raises(httpx2.ReadError):
        download(hub, tmp_path / "cache", "big.safetensors")
    assert hub.count("GET", "big.safetensors") == 1


def test_cdn_redirect_drops_the_authorization_header(hub: HubServer, tmp_path: Path) -> None:
    make_repo(hub, private=True)
    hub.add_token(TOKEN, can_read={REPO})
    hub.cdn_redirect = True
    cache = tmp_path / "cache"
    weights = download(hub, cache, "model.safetensors", token=TOKEN)
    config = download(hub, cache, "config.json", token=TOKEN)
    assert weights.read_bytes() == WEIGHTS
    assert config.read_bytes() == CONFIG
    head = hub.matching("HEAD", "model.safetensors")
    assert [(r.origin, r.status, r.token) for r in head] == [("hub", 302, TOKEN)]
    get = hub.matching("GET", "model.safetensors")
    assert [(r.origin, r.status, r.has_auth) for r in get] == [("cdn", 200, False)]
    assert hub.matching("GET", "config.json")[0].origin == "hub"  # plain files stay on the hub
    assert hub.matching("GET", "config.json")[0].token == TOKEN


def test_subprocess_with_hf_env(hub: HubServer, hf_env: dict[str, str], tmp_path: Path) -> None:
    _, sha = make_repo(hub)
    assert not {"HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"} & set(hf_env)
    code = (
        "import sys\n"
        "from huggingface_hub import snapshot_download\n"
        "print(snapshot_download(sys.argv[1], allow_patterns=['*.json']))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, REPO],
        env=hf_env,
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    home = Path(hf_env["HF_HOME"])
    assert Path(done.stdout.strip()) == storage(home / "hub") / "snapshots" / sha
    assert (storage(home / "hub") / "snapshots" / sha / "config.json").read_bytes() == CONFIG
    assert hub.count() > 0
    assert not any(r.has_auth for r in hub.requests)


def test_serves_large_files_fast(hub: HubServer, tmp_path: Path) -> None:
    content = tmp_path / "big.safetensors"
    size = 64 << 20
    content.write_bytes(pseudo_random_bytes(size, seed=3))
    hub.create_repo(REPO).commit({"big.safetensors": content})
    received = 0
    started = time.perf_counter()
    with (
        httpx2.Client() as client,
        client.stream("GET", f"{hub.url}/{REPO}/resolve/main/big.safetensors") as response,
    ):
        for chunk in response.iter_bytes(1 << 20):
            received += len(chunk)
    elapsed = time.perf_counter() - started
    assert received == size
    assert size / elapsed > 50e6, f"{size / elapsed / 1e6:.0f} MB/s"


# --------------------------------------------------------------------------------------
# Errors: each row of the protocol table
# --------------------------------------------------------------------------------------


def test_missing_repo_is_401_anonymous_and_404_with_token(hub: HubServer, tmp_path: Path) -> None:
    hub.add_token(TOKEN)
    with pytest.raises(RepositoryNotFoundError) as anon:
        api(hub).model_info("acme/missing")
    assert anon.value.response.status_code == 401
    assert anon.value.response.headers["X-Error-Code"] == "RepoNotFound"
    with pytest.raises(RepositoryNotFoundError) as authed:
        api(hub, TOKEN).model_info("acme/missing")
    assert authed.value.response.status_code == 404
    # A bare id is sent as is and refused the same way.
    with pytest.raises(RepositoryNotFoundError):
        api(hub).model_info("gemma-4-31b-it", revision="main")
    assert hub.count("GET", "/api/models/gemma-4-31b-it/revision/main", status=401) == 1
    with pytest.raises(RepositoryNotFoundError):
        download(hub, tmp_path / "cache", "config.json", repo_id="acme/missing")


def test_private_repo_needs_a_token_with_access(hub: HubServer, tmp_path: Path) -> None:
    _, sha = make_repo(hub, private=True)
    hub.add_token(TOKEN, can_read={REPO})
    hub.add_token(OTHER_TOKEN)
    with pytest.raises(RepositoryNotFoundError) as anon:
        api(hub).model_info(REPO)
    assert anon.value.response.status_code == 401
    with pytest.raises(RepositoryNotFoundError) as other:
        api(hub, OTHER_TOKEN).model_info(REPO)
    assert other.value.response.status_code == 404
    with pytest.raises(RepositoryNotFoundError):
        download(hub, tmp_path / "c1", "config.json")
    info = api(hub, TOKEN).model_info(REPO)
    assert (info.sha, info.private) == (sha, True)
    assert download(hub, tmp_path / "c2", "config.json", token=TOKEN).read_bytes() == CONFIG
    assert hub.matching("GET", "config.json")[-1].token == TOKEN


def test_gated_repo_metadata_public_files_refused(hub: HubServer, tmp_path: Path) -> None:
    _, sha = make_repo(hub, gated="manual")
    hub.add_token(TOKEN, can_read={REPO})
    hub.add_token(OTHER_TOKEN)
    info = api(hub).model_info(REPO, files_metadata=True)
    assert (info.sha, info.gated) == (sha, "manual")
    assert len(list(api(hub).list_repo_tree(REPO, recursive=True))) == 7
    with pytest.raises(GatedRepoError) as anon:
        download(hub, tmp_path / "c1", "config.json")
    assert anon.value.response.status_code == 401
    with pytest.raises(GatedRepoError) as other:
        download(hub, tmp_path / "c2", "config.json", token=OTHER_TOKEN)
    assert other.value.response.status_code == 403
    assert download(hub, tmp_path / "c3", "config.json", token=TOKEN).read_bytes() == CONFIG


def test_gated_repo_with_metadata_refused(hub: HubServer) -> None:
    make_repo(hub, gated="auto", metadata_refused=True)
    hub.add_token(TOKEN, can_read={REPO})
    with pytest.raises(GatedRepoError) as anon:
        api(hub).model_info(REPO)
    assert anon.value.response.status_code == 401
    with pytest.raises(GatedRepoError):
        api(hub).list_repo_refs(REPO)
    assert api(hub, TOKEN).model_info(REPO).gated == "auto"


def test_revision_and_entry_not_found(hub: HubServer, tmp_path: Path) -> None:
    _, sha = make_repo(hub)
    with pytest.raises(RevisionNotFoundError):
        api(hub).model_info(REPO, revision="nope")
    with pytest.raises(RevisionNotFoundError):
        list(api(hub).list_repo_tree(REPO, revision="nope"))
    cache = tmp_path / "cache"
    with pytest.raises(RevisionNotFoundError):
        download(hub, cache, "config.json", revision="nope")
    with pytest.raises(RemoteEntryNotFoundError):
        download(hub, cache, "missing.json")
    assert (storage(cache) / ".no_exist" / sha / "missing.json").is_file()
    with pytest.raises(RemoteEntryNotFoundError):
        list(api(hub).list_repo_tree(REPO, path_in_repo="nodir"))


def test_disabled_repo(hub: HubServer, tmp_path: Path) -> None:
    make_repo(hub, disabled=True)
    hub.add_token(TOKEN, can_read={REPO})
    with pytest.raises(DisabledRepoError) as authed:
        api(hub, TOKEN).model_info(REPO)
    assert authed.value.response.status_code == 403
    # Like the Hub, an anonymous caller is told the repo does not exist.
    with pytest.raises(RepositoryNotFoundError):
        api(hub).model_info(REPO)
    hub.disabled_hides_from_anonymous = False
    with pytest.raises(DisabledRepoError):
        api(hub).model_info(REPO)
    # hf_hub_download turns a 403 HEAD into "not in the cache", with the real error as cause.
    with pytest.raises(LocalEntryNotFoundError) as download_error:
        download(hub, tmp_path / "cache", "config.json", token=TOKEN)
    assert isinstance(download_error.value.__cause__, DisabledRepoError)


def test_invalid_token_is_a_plain_401(hub: HubServer, tmp_path: Path) -> None:
    make_repo(hub)
    with pytest.raises(HfHubHTTPError) as error:
        api(hub, "hf_unknown").model_info(REPO)
    assert not isinstance(error.value, RepositoryNotFoundError)
    assert error.value.response.status_code == 401
    assert error.value.server_message == "Invalid credentials in Authorization header"
    with pytest.raises(HfHubHTTPError) as on_download:
        download(hub, tmp_path / "cache", "config.json", token="hf_unknown")
    assert not isinstance(on_download.value, RepositoryNotFoundError)
    assert on_download.value.response.status_code == 401
    assert hub.requests[-1].token == "hf_unknown"


# --------------------------------------------------------------------------------------
# Fault switches and the request log
# --------------------------------------------------------------------------------------


def test_fail_next_and_latency(hub: HubServer, tmp_path: Path) -> None:
    _, sha = make_repo(hub)
    hub.fail_next(1, status=503, path_contains="/api/models/")
    with pytest.raises(HfHubHTTPError) as error:
        api(hub).model_info(REPO)
    assert error.value.response.status_code == 503
    assert api(hub).model_info(REPO).sha == sha
    # A failed HEAD is retried once at once by hf_hub_download (no backoff sleep).
    hub.fail_next(1, status=500, method="HEAD")
    started = time.perf_counter()
    download(hub, tmp_path / "cache", "config.json")
    assert time.perf_counter() - started < 1
    assert [(r.status, r.fault) for r in hub.matching("HEAD")] == [(500, "fail"), (200, None)]

    hub.latency_s = 0.2
    started = time.perf_counter()
    api(hub).model_info(REPO)
    assert time.perf_counter() - started >= 0.2
    assert hub.count("GET", "/api/models/", status=200) == 2
    hub.clear_requests()
    assert hub.requests == []


def test_hostile_names_etags_and_commits(hub: HubServer, tmp_path: Path) -> None:
    _, sha = make_repo(hub)
    hub.hostile_filename(REPO, "config.json", "../evil.json")
    hub.hostile_filename(REPO, "README.md", "/abs")
    info = api(hub).model_info(REPO, revision=sha)
    assert info.siblings is not None
    names = {s.rfilename for s in info.siblings}
    assert {"../evil.json", "/abs"} <= names and "config.json" not in names
    tree = {e.path for e in api(hub).list_repo_tree(REPO, revision=sha)}
    assert "../evil.json" in tree
    with pytest.raises(ValueError, match=r"'\.\.'"):
        download(hub, tmp_path / "c1", "../evil.json")
    hub.reset_faults()

    # The ETag becomes the blob file name unchecked: this one escapes the repo folder.
    hub.hostile_etag("config.json", '"../../outside"')
    url = hf_hub_url(REPO, "config.json", endpoint=hub.url)
    assert get_hf_file_metadata(url, token=False).etag == "../../outside"
    cache = tmp_path / "c2"
    download(hub, cache, "config.json")
    assert (cache / "outside").read_bytes() == CONFIG

    hub.hostile_commit("not-a-sha")
    assert api(hub).model_info(REPO).sha == "not-a-sha"
    assert get_hf_file_metadata(url, token=False).commit_hash == "not-a-sha"
    hub.hostile_commit(None)
    assert api(hub).model_info(REPO).sha == sha


def test_stop_really_closes_and_start_reuses_the_port(hub: HubServer) -> None:
    _, sha = make_repo(hub)
    client = api(hub)
    assert client.model_info(REPO).sha == sha  # leaves a keep-alive connection open
    url = hub.url
    hub.stop()
    with pytest.raises(httpx2.ConnectError):
        client.model_info(REPO)
    with (
        pytest.raises(ConnectionRefusedError),
        socket.create_connection(("127.0.0.1", hub.port), timeout=2),
    ):
        pass
    hub.start()
    assert hub.url == url
    assert client.model_info(REPO).sha == sha


def test_closed_port_url_refuses(tmp_path: Path) -> None:
    url = closed_port_url()
    with pytest.raises(httpx2.ConnectError):
        HfApi(endpoint=url, token=False).model_info(REPO)
    assert closed_port_url() != url


def test_a_capped_connection_is_paced_by_the_clock_with_a_bounded_catch_up() -> None:
    """The cap holds over any stretch of time (never more bytes than rate x time), and a
    reader that stalled gets at most 50 ms of bytes at once, not the whole stall's."""
    pace = _Pace(1_000_000)
    started = time.monotonic()
    for _ in range(10):
        pace.sent(20_000)  # 0.2 s of bytes
    assert time.monotonic() - started >= 0.2 - 0.005
    time.sleep(0.3)  # the reader stalled
    resumed = time.monotonic()
    for _ in range(10):
        pace.sent(20_000)  # 0.2 s of bytes again: the first is sent as the reader is
    # back, the next 50 ms at once, then at the rate: 9 x 20 ms - 50 ms
    assert time.monotonic() - resumed >= 0.13 - 0.005
