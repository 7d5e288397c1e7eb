"""The only module that imports huggingface_hub: metadata look-ups and error mapping.

Every answer from the Hub is validated before it is used (commit shape, file names,
oids), and every client exception becomes one of mlxpin's typed errors naming the repo,
the revision and the likely cause. Requests have bounded timeouts and a small, bounded
number of retries, so an unreachable Hub fails in seconds, not minutes; and every look-up
has an overall deadline (MLXPIN_HUB_DEADLINE), so a Hub that drips its answer byte by
byte, each byte within the read timeout, cannot hold `lock` forever.
"""

from __future__ import annotations

import contextlib
import difflib
import functools
import json
import os
import re
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TypeVar, cast
from urllib.parse import quote

import httpx2

# huggingface_hub reads this once, at import. Unless told otherwise it then asks the
# endpoint for a registry of coding agents (once a day, a 3 s timeout, again on every
# header it builds while that fails) and names the agent in its User-Agent: telemetry
# an offline-first tool does not send by default. Set to 0 to have it anyway.
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

from huggingface_hub.errors import (
    DisabledRepoError,
    GatedRepoError,
    HfHubHTTPError,
    OfflineModeIsEnabled,
    RemoteEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

from mlxpin import errors
from mlxpin.config import DEFAULT_HUB_DEADLINE_S, HUB_DEADLINE_VARIABLE
from mlxpin.project import validate
from mlxpin.util.retry import retry

if TYPE_CHECKING:  # HfApi takes ~0.1 s to import; a fetch of locked files never needs it
    from huggingface_hub import HfApi

T = TypeVar("T")
#: Sent by `mlxpin mirror` on every answer, so fetch can record where bytes came from.
MIRROR_HEADER = "X-Mlxpin-Mirror"
RETRY_STATUS = {408, 429, 500, 502, 503, 504}


@dataclass(frozen=True)
class RemoteFile:
    path: str
    size: int
    oid: str


@dataclass(frozen=True)
class RemoteRevision:
    repo: str
    revision: str
    commit: str
    last_modified: str | None
    access: str | None  # "gated" | "private" (a token was needed), None: public
    files: tuple[RemoteFile, ...]


@dataclass(frozen=True)
class HubConfig:
    endpoint: str
    token_present: bool
    offline: bool = False
    timeout_s: float = 10.0  # to connect, and between two bytes of an answer
    attempts: int = 3
    backoff_s: float = 0.5
    deadline_s: float = DEFAULT_HUB_DEADLINE_S  # for one look-up in all, retries included


def iso_utc(moment: datetime | None) -> str | None:
    if moment is None:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class HubClient:
    def __init__(self, config: HubConfig, sleep: Callable[[float], None] = time.sleep) -> None:
        self.config = config
        self._sleep = sleep

    @functools.cached_property
    def _api(self) -> HfApi:
        from huggingface_hub import HfApi

        return HfApi(endpoint=self.config.endpoint)

    # -- public -----------------------------------------------------------------------

    def resolve(self, repo: str, revision: str) -> RemoteRevision:
        """Resolve a branch, tag or commit to a commit and the list of its files."""
        self.refuse_offline(repo, revision)
        deadline = time.monotonic() + self.config.deadline_s
        info = self._call(
            repo,
            revision,
            deadline,
            lambda timeout: self._api.model_info(
                repo, revision=revision, files_metadata=True, timeout=timeout
            ),
        )
        return _validated(repo, revision, info)

    def revision_suggestions(self, repo: str, revision: str) -> list[str]:
        """Branch and tag names close to a revision that was not found (best effort)."""
        bound = min(self.config.timeout_s, self.config.deadline_s)  # only a nicety
        try:
            refs = _before(time.monotonic() + bound, lambda: self._api.list_repo_refs(repo))
        except (HfHubHTTPError, httpx2.HTTPError, OSError, ValueError, _DeadlinePassed):
            return []
        names = [ref.name for ref in (*refs.branches, *refs.tags)]
        return difflib.get_close_matches(revision, names, n=3, cutoff=0.5) or sorted(names)[:5]

    def refuse_offline(self, repo: str, revision: str) -> None:
        if self.config.offline:
            raise errors.HubUnreachableError(
                self.config.endpoint, repo, revision, "HF_HUB_OFFLINE is set; unset it to lock"
            )

    # -- internals --------------------------------------------------------------------

    def _call(self, repo: str, revision: str, deadline: float, request: Callable[[float], T]) -> T:
        """`request(timeout)` with retries, all of it before `deadline` (monotonic)."""

        def attempt() -> T:
            remaining = deadline - time.monotonic()
            try:
                if remaining <= 0:
                    raise _DeadlinePassed
                timeout = min(self.config.timeout_s, remaining)
                return _before(deadline, functools.partial(request, timeout))
            except _DeadlinePassed:
                raise self._too_slow(repo, revision) from None
            except json.JSONDecodeError as exc:
                if exc.doc.lstrip()[:1] in ("{", "["):  # JSON, but cut off or broken
                    raise errors.HubProtocolError(
                        repo, revision, f"the answer is not valid JSON (truncated?): {exc}"
                    ) from None
                raise self._not_a_hub(repo, revision, exc) from None
            except (ValueError, KeyError, TypeError) as exc:
                raise self._not_a_hub(repo, revision, exc) from None
            except _NETWORK_ERRORS as exc:
                if not _is_retryable(exc):
                    raise self.translate(exc, repo, revision) from None
                raise

        def pause(exc: Exception, delay: float) -> None:
            if time.monotonic() + delay >= deadline:
                if asked_wait(exc) is not None:
                    raise self.translate(exc, repo, revision)
                raise self._too_slow(repo, revision)
            self._sleep(delay)

        def failure(exc: Exception) -> errors.MlxpinError | None:
            return self.translate(exc, repo, revision) if isinstance(exc, _NETWORK_ERRORS) else None

        return retry(
            attempt, self.config.attempts, self.config.backoff_s, failure, pause, asked=asked_wait
        )

    def _too_slow(self, repo: str, revision: str) -> errors.HubUnreachableError:
        return errors.HubUnreachableError(
            self.config.endpoint,
            repo,
            revision,
            f"no complete answer within {self.config.deadline_s:g} s; "
            f"{HUB_DEADLINE_VARIABLE} sets this deadline",
        )

    def _not_a_hub(self, repo: str, revision: str, exc: Exception) -> errors.HubUnreachableError:
        # A proxy, captive portal or wrong mirror answering something that is not JSON.
        return errors.HubUnreachableError(
            self.config.endpoint,
            repo,
            revision,
            f"the endpoint did not answer like a Hub ({type(exc).__name__})",
        )

    def translate(self, exc: BaseException, repo: str, revision: str) -> errors.MlxpinError:
        """Map a client exception to mlxpin's error, most specific first."""
        endpoint = self.config.endpoint
        token = "a token was sent" if self.config.token_present else "no token was sent"
        page = f"{endpoint}/{repo}"
        if isinstance(exc, GatedRepoError):
            why = (
                "the token has no access to this gated repo"
                if self.config.token_present
                else "the repo is gated and no token was sent"
            )
            return errors.AccessDeniedError(
                repo,
                revision,
                f"access refused: {why}",
                f"accept the licence at {page} with your account, then set HF_TOKEN "
                "(or run `hf auth login`) with a token of that account",
            )
        if isinstance(exc, RepositoryNotFoundError):
            return errors.RepoNotFoundError(repo, revision, endpoint, self.config.token_present)
        if isinstance(exc, RevisionNotFoundError):
            close = self.revision_suggestions(repo, revision)
            return errors.RevisionNotFoundError(repo, revision, close)
        if isinstance(exc, DisabledRepoError):
            return errors.AccessDeniedError(
                repo,
                revision,
                "the Hub has disabled this repository",
                "choose another repo in launch.repo",
            )
        if isinstance(exc, OfflineModeIsEnabled):
            return errors.HubUnreachableError(endpoint, repo, revision, "HF_HUB_OFFLINE is set")
        if isinstance(exc, RemoteEntryNotFoundError):
            return errors.HubProtocolError(
                repo, revision, "a locked file is not on the Hub at this commit any more"
            )
        if isinstance(exc, httpx2.RemoteProtocolError) and "complete message body" in str(exc):
            # The server closed cleanly before sending what its Content-Length promised,
            # on every attempt: not the network (a cut network resets, or times out).
            return errors.HubProtocolError(repo, revision, f"every answer was cut short ({exc})")
        if isinstance(exc, HfHubHTTPError):
            status = exc.response.status_code if exc.response is not None else None
            if status == 401:
                return errors.AccessDeniedError(
                    repo,
                    revision,
                    "the Hub refused the token (401: invalid or expired)",
                    "set HF_TOKEN to a valid token, or unset it for public repos",
                )
            if status == 403:
                return errors.AccessDeniedError(
                    repo,
                    revision,
                    f"access refused (403, {token})",
                    f"check your access to {page}",
                )
            if status == 429:
                return errors.HubRateLimitedError(
                    endpoint, repo, revision, _rate_cause(exc, self.config.deadline_s)
                )
            if status in RETRY_STATUS:
                return errors.HubUnreachableError(
                    endpoint, repo, revision, f"HTTP {status} after {self.config.attempts} attempts"
                )
            return errors.HubProtocolError(repo, revision, f"unexpected HTTP {status}")
        return errors.HubUnreachableError(endpoint, repo, revision, _network_cause(exc))


_NETWORK_ERRORS = (HfHubHTTPError, httpx2.HTTPError, OfflineModeIsEnabled, OSError)


class _DeadlinePassed(Exception):
    """The overall deadline of a Hub look-up passed before its answer was complete."""


def _before(deadline: float, call: Callable[[], T]) -> T:
    """`call()`, or _DeadlinePassed once the monotonic clock reaches `deadline`.

    The call runs in a daemon thread: a Hub that drips its answer keeps each read inside
    the read timeout, so only a clock outside the request can end it. A call that is given
    up on finishes (or fails) on its own, and never keeps the process alive.
    """
    outcome: list[tuple[bool, Any]] = []

    def run() -> None:
        try:
            outcome.append((True, call()))
        except BaseException as exc:  # handed to the caller's thread below
            outcome.append((False, exc))

    worker = threading.Thread(target=run, name="mlxpin-hub-call", daemon=True)
    worker.start()
    worker.join(max(0.0, deadline - time.monotonic()))
    if not outcome:
        raise _DeadlinePassed
    ok, value = outcome[0]
    if ok:
        return cast(T, value)
    raise value


def asked_wait(exc: BaseException) -> float | None:
    """The seconds a 429 answer's Retry-After asked us to wait (None: it did not)."""
    if isinstance(exc, TransferInterrupted):
        return exc.retry_after
    response = getattr(exc, "response", None)
    if response is None or response.status_code != 429:
        return None
    return _seconds(response.headers.get("Retry-After"))


def _seconds(value: str | None) -> float | None:
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None  # an HTTP date: rare enough to treat as no advice


def _rate_cause(exc: BaseException, deadline_s: float) -> str:
    wait = asked_wait(exc)
    asked = "" if wait is None else f", asked to wait {wait:g} s"
    return f"HTTP 429{asked}; waited within the {deadline_s:g} s deadline"


def _is_retryable(exc: BaseException) -> bool:
    if isinstance(exc, OfflineModeIsEnabled | httpx2.UnsupportedProtocol):
        return False
    if isinstance(exc, HfHubHTTPError):
        response = exc.response
        return response is not None and response.status_code in RETRY_STATUS
    return isinstance(exc, httpx2.TransportError | OSError)


def _network_cause(exc: BaseException) -> str:
    if isinstance(exc, httpx2.TimeoutException):
        return "timed out"
    if isinstance(exc, httpx2.ConnectError):
        return "connection refused or host unknown"
    name = type(exc).__name__
    return f"{name}: {exc}" if str(exc) else name


def _validated(repo: str, revision: str, info: Any) -> RemoteRevision:
    def bad(problem: str) -> errors.HubProtocolError:
        return errors.HubProtocolError(repo, revision, problem)

    commit = getattr(info, "sha", None)
    if not isinstance(commit, str) or not validate.is_commit(commit):
        raise bad(f"commit {commit!r} is not 40 lowercase hex")
    if validate.is_commit(revision) and commit != revision:
        raise bad(f"asked for commit {revision} but got {commit}")
    files: list[RemoteFile] = []
    seen: set[str] = set()
    for sibling in info.siblings or ():
        path = sibling.rfilename
        problem = validate.relpath_problem(path) if isinstance(path, str) else "is not a string"
        if problem:
            raise bad(f"file name {path!r} {problem}")
        if path in seen:
            raise bad(f"file {path!r} listed twice")
        seen.add(path)
        size = sibling.size
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise bad(f"{path}: size {size!r} is not a byte count")
        lfs = sibling.lfs
        if lfs is not None:
            oid = f"sha256:{lfs.sha256}"
            if lfs.size != size:
                raise bad(f"{path}: LFS size {lfs.size} differs from size {size}")
        else:
            oid = f"gitsha1:{sibling.blob_id}"
        if validate.oid_problem(oid):
            raise bad(f"{path}: content hash {oid!r} is malformed")
        files.append(RemoteFile(path=path, size=size, oid=oid))
    return RemoteRevision(
        repo=repo,
        revision=revision,
        commit=commit,
        last_modified=iso_utc(getattr(info, "last_modified", None)),
        access="private"
        if getattr(info, "private", False)
        else "gated"
        if getattr(info, "gated", False)
        else None,
        files=tuple(sorted(files, key=lambda f: f.path)),
    )


class TransferInterrupted(Exception):
    """A download stopped early for a reason worth retrying (network, 5xx, 429)."""

    def __init__(self, cause: str, retry_after: float | None = None) -> None:
        super().__init__(cause)
        self.retry_after = retry_after  # a 429's Retry-After, seconds


class HubDownloader:
    """Streams one file at a locked commit. Retrying and resuming are the caller's job."""

    def __init__(self, config: HubConfig) -> None:
        from huggingface_hub.utils import build_hf_headers  # type: ignore[attr-defined]

        self.config = config
        self._client = HubClient(config)
        # Built once: reads HF_TOKEN / the token file itself; the token stays in memory.
        self._headers = build_hf_headers()
        self._headers["Accept-Encoding"] = "identity"
        self.served_by_mirror = False  # set once an `mlxpin mirror` answered

    @contextlib.contextmanager
    def open(
        self, repo: str, commit: str, path: str, offset: int, end: int | None = None
    ) -> Iterator[tuple[int, Iterator[bytes]]]:
        """Yields (start offset the server honoured, chunks); `end` (exclusive) asks for
        a range [offset, end) only."""
        from huggingface_hub import get_session, hf_raise_for_status

        self._client.refuse_offline(repo, commit)
        url = file_url(self.config.endpoint, repo, commit, path)
        headers = dict(self._headers)
        if end is not None:
            headers["Range"] = f"bytes={offset}-{end - 1}"
        elif offset:
            headers["Range"] = f"bytes={offset}-"
        timeout = httpx2.Timeout(self.config.timeout_s, read=60.0)
        with contextlib.ExitStack() as stack:
            try:
                response = stack.enter_context(
                    get_session().stream(
                        "GET", url, headers=headers, timeout=timeout, follow_redirects=True
                    )
                )
                if response.status_code >= 400:
                    response.read()
                    if response.status_code in RETRY_STATUS:
                        wait = None
                        if response.status_code == 429:
                            wait = _seconds(response.headers.get("Retry-After"))
                        raise TransferInterrupted(f"HTTP {response.status_code}", wait)
                    hf_raise_for_status(response)
            except RemoteEntryNotFoundError:
                raise errors.HubProtocolError(
                    repo,
                    commit,
                    f"{path} is not on the Hub at this commit any more (an `mlxpin mirror` "
                    "serves only files it has verified)",
                ) from None
            except (HfHubHTTPError, OfflineModeIsEnabled) as exc:
                raise self._client.translate(exc, repo, commit) from None
            except (httpx2.UnsupportedProtocol, httpx2.TooManyRedirects) as exc:
                raise self.unreachable(repo, commit, f"{path}: {_network_cause(exc)}") from None
            except (httpx2.TransportError, OSError) as exc:
                raise TransferInterrupted(_network_cause(exc)) from None
            served_commit = response.headers.get("X-Repo-Commit")
            if served_commit is not None and served_commit != commit:
                raise errors.HubProtocolError(
                    repo, commit, f"{path} was served from commit {served_commit!r}"
                )
            if response.headers.get(MIRROR_HEADER):
                self.served_by_mirror = True
            start = _range_start(response) if response.status_code == 206 else 0
            # Only the network's errors become TransferInterrupted; the caller's own
            # (a full disk, say) pass through the `yield` untouched.
            yield start, _network_chunks(response)

    def unreachable(self, repo: str, commit: str, cause: str) -> errors.MlxpinError:
        if cause.endswith("HTTP 429"):
            cause += f" for the {self.config.deadline_s:g} s deadline"
            return errors.HubRateLimitedError(self.config.endpoint, repo, commit, cause)
        return errors.HubUnreachableError(self.config.endpoint, repo, commit, cause)


def file_url(endpoint: str, repo: str, revision: str, path: str) -> str:
    """A model repo file's download URL, as huggingface_hub's ``hf_hub_url`` makes it
    (whose module costs ~30 ms to import)."""
    return f"{endpoint}/{repo}/resolve/{quote(revision, safe='')}/{quote(path)}"


def _network_chunks(response: httpx2.Response) -> Iterator[bytes]:
    try:
        yield from response.iter_raw()  # as the bytes arrive: a cut loses nothing
    except (httpx2.TransportError, OSError) as exc:
        raise TransferInterrupted(_network_cause(exc)) from None


def _range_start(response: httpx2.Response) -> int:
    content_range = response.headers.get("Content-Range", "")
    match = re.fullmatch(r"bytes (\d+)-\d+/(?:\d+|\*)", content_range.strip())
    return int(match.group(1)) if match else -1
