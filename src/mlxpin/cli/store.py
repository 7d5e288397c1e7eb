"""`mlxpin fetch`, `mlxpin verify`, `mlxpin status`: command line and rendering."""

from __future__ import annotations

import dataclasses
import sys
from argparse import Namespace
from typing import TYPE_CHECKING

from mlxpin.cli.output import CommandExit, Common, Output
from mlxpin.cli.render import share_text, short_commit, short_date
from mlxpin.errors import human_size

if TYPE_CHECKING:  # `status` runs without the fetch code
    from mlxpin.commands.hosts import HostsResult
    from mlxpin.config import Settings
    from mlxpin.store.verify import Progress


class BarProgress:
    """A tqdm bar on stderr, thread-safe (tqdm locks internally)."""

    def __init__(self, label: str) -> None:
        import shutil

        from tqdm import tqdm

        width = None if shutil.get_terminal_size().columns > 0 else 80  # a 0-column tty
        self._bar = tqdm(
            total=0,
            unit="B",
            unit_scale=True,
            unit_divisor=1000,
            desc=label,
            file=sys.stderr,
            ncols=width,
        )

    def add_total(self, nbytes: int) -> None:
        self._bar.total = (self._bar.total or 0) + nbytes
        self._bar.refresh()

    def advance(self, nbytes: int) -> None:
        self._bar.update(nbytes)

    def close(self) -> None:
        self._bar.close()


class LineProgress:
    """Piped stderr: a line (or a JSON event) every INTERVAL_S, bytes moving or not (a
    timer: a stalled transfer still says so), and a last one at the end -- only for work
    that lasted that long, so quick jobs stay quiet."""

    INTERVAL_S = 2.0

    def __init__(self, label: str, as_json: bool) -> None:
        import threading
        import time

        self.label, self.as_json, self.clock = label, as_json, time.monotonic
        self.total = self.done = 0
        self.started = self.last = self.clock()
        self.lines = 0
        self.lock = threading.Lock()
        self.closed = threading.Event()
        threading.Thread(target=self._tick, daemon=True).start()

    def _tick(self) -> None:
        while not self.closed.wait(self.INTERVAL_S / 4):
            self.advance(0)

    def add_total(self, nbytes: int) -> None:
        with self.lock:
            self.total += nbytes

    def advance(self, nbytes: int) -> None:
        with self.lock:
            self.done += nbytes
            now = self.clock()
            if now - self.last >= self.INTERVAL_S:
                self.last = now
                self._emit(now, final=False)

    def close(self) -> None:
        self.closed.set()
        with self.lock:
            if self.lines > 0:
                self._emit(self.clock(), final=True)
                self.lines = -1  # closed: once

    def _emit(self, now: float, *, final: bool) -> None:
        self.lines += 1
        rate = self.done / max(now - self.started, 1e-6)
        eta = max(self.total - self.done, 0) / rate if rate > 0 else None
        if self.as_json:
            import json

            event = {
                "event": "done" if final else "progress",
                "label": self.label,
                "bytes": self.done,
                "total": self.total,
                "rate": round(rate),
                "eta_s": None if eta is None else round(eta, 1),
            }
            print(json.dumps(event), file=sys.stderr, flush=True)
            return
        percent = f" ({100 * self.done / self.total:.0f}%)" if self.total else ""
        tail = "done" if final else f"ETA {'?' if eta is None else f'{eta:.0f} s'}"
        print(
            f"{self.label}: {human_size(self.done)} of {human_size(self.total)}{percent}, "
            f"{human_size(round(rate))}/s, {tail}",
            file=sys.stderr,
            flush=True,
        )


class Bars:
    """The progress bars of one verb's work; `with` closes them however it ends."""

    def __init__(self, mode: str) -> None:
        self.mode = mode  # bar | lines | json | off
        self.bars: list[BarProgress | LineProgress] = []

    def __call__(self, label: str) -> Progress:
        from mlxpin.store.verify import NoProgress

        if self.mode == "off":
            return NoProgress()
        self.close()
        bar = BarProgress(label) if self.mode == "bar" else LineProgress(label, self.mode == "json")
        self.bars.append(bar)
        return bar

    def close(self) -> None:
        for bar in self.bars:
            bar.close()

    def __enter__(self) -> Bars:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


def bars_for(common: Common) -> Bars:
    """--progress: given, as it says; else a bar on a terminal, lines when piped, and
    nothing with --json or -q."""
    mode = common.progress
    if mode in (None, "auto"):
        silent = common.as_json or common.quiet
        mode = "off" if silent else "bar" if sys.stderr.isatty() else "lines"
    return Bars(mode)


def fetch_command(args: Namespace, common: Common) -> None:
    from mlxpin.commands import fetch as fetch_cmd

    out = common.output()
    settings = common.settings()
    names = args.names
    if args.connections is not None:
        settings = dataclasses.replace(settings, fetch_connections=str(args.connections))
    with bars_for(common) as bars:
        result = fetch_cmd.fetch(settings, names, bars, runtime_report=out.note)
    prepared = _prepare_hosts(settings, names, out) if args.hosts else ()
    for model in result.models:
        if model.up_to_date:
            out.line(
                f"{model.name}: up to date ({model.files} files, {human_size(model.total_size)})"
            )
        else:
            out.line(
                f"{model.name}: fetched and verified {model.files} files, "
                f"{human_size(model.total_size)} (downloaded {human_size(model.downloaded_bytes)})"
            )
    for runtime in (result.runtime, *result.engines):
        if runtime is None:
            continue
        versions = (
            f"mlx-lm {runtime.dists.get('mlx-lm')}, mlx {runtime.dists.get('mlx')}, "
            f"{runtime.packages} packages installed, Python {runtime.python_version}"
        )
        vlm = runtime.dists.get("mlx-vlm")
        state = "installed" if runtime.built else "up to date"
        what = (
            f"engine runtime mlx-vlm {vlm}" if vlm and runtime is not result.runtime else "runtime"
        )
        out.line(f"{what}: {state} ({versions}) at {runtime.path}")
    data = result.to_json()
    if args.hosts:
        data["hosts"] = [r.to_json() for r in prepared]
    out.result(data)
    failed = [h for r in prepared for h in r.hosts if not h.ok]
    if failed:
        raise CommandExit(failed[0].exit_code)


def _prepare_hosts(settings: Settings, names: list[str], out: Output) -> tuple[HostsResult, ...]:
    from mlxpin.commands.hosts import fetch_hosts

    prepared = fetch_hosts(settings, names)
    for result in prepared:
        for host in result.hosts:
            sent = " (sent and verified there)" if host.host in result.sent else ""
            share = result.share_of(host.host)
            holds = f", {share_text(share)}" if share is not None else ""
            if host.ok:
                out.note(f"{result.name}: {host.host}: ready at {host.path}{holds}{sent}")
            else:
                out.note(f"{result.name}: {host.host}: NOT ready: {host.problem}")
    return prepared


def build_command(args: Namespace, common: Common) -> None:
    from mlxpin.commands import build as build_cmd

    out = common.output()
    with bars_for(common) as bars:
        result = build_cmd.build(
            common.settings(), args.names, check=args.check, progress=bars, note=out.note
        )
    for model in result.models:
        size = f"{model.files} files, {human_size(model.total_size)}"
        seconds = f"{model.seconds:.1f} s"
        if model.action == "up to date":
            out.line(f"{model.name}: up to date ({size}); --check rebuilds and compares")
        elif model.action == "checked":
            out.line(
                f"{model.name}: rebuilt in {seconds}: identical to the recorded output ({size})"
            )
        elif model.action == "recorded":
            out.line(
                f"{model.name}: built in {seconds} on {model.built_on}; output recorded in "
                f"the lock and installed ({size})"
            )
        else:
            out.line(f"{model.name}: built in {seconds}: matches the lock; installed ({size})")
    out.result(result.to_json())


def verify_command(args: Namespace, common: Common) -> None:
    from mlxpin.commands import verify as verify_cmd

    out = common.output()
    settings = common.settings()
    with bars_for(common) as bars:
        result = verify_cmd.verify(settings, args.names, bars)
    for model in result.models:
        if not model.bad:
            out.line(f"{model.name}: ok ({human_size(model.hashed_bytes)} hashed)")
        for path, why in model.bad:
            print(f"{model.name}: {path}: {why}", file=sys.stderr)
    out.result(result.to_json())
    failure = result.first_problem
    if failure is not None:
        print(f"mlxpin: error: verification failed\n  hint: {failure.hint}", file=sys.stderr)
        raise CommandExit(int(result.exit_code))


def status_command(args: Namespace, common: Common) -> None:
    from mlxpin.commands import status as status_cmd

    out = common.output()
    settings = common.settings()
    result = status_cmd.status(settings, args.names)
    for row in result.models:
        if row.lock_state != "ok":
            lock = f"lock {row.lock_state}"
        elif row.commit:
            lock = f"{short_commit(row.commit)} ({short_date(row.last_modified)})"
        else:
            lock = "content-pinned"
        fetched = row.fetch_state
        if row.fetch_reason and row.fetch_state != "unknown":
            fetched += f" ({row.fetch_reason})"
        if row.origin == "build":
            fetched += " (built here)"
        elif row.origin and row.source.startswith("build "):
            fetched += f" (substituted from a {row.origin})"
        elif row.origin:
            fetched += f" from {row.origin}"
        out.line(
            f"{row.name}: label {row.api_label} on {row.endpoint}; {row.source}; {lock}; "
            f"{fetched}; {human_size(row.size_on_disk)} of {human_size(row.total_size)} on disk"
        )
    runtime = result.runtime
    if runtime is not None:
        if runtime.state == "unpinned":
            where = runtime.python or runtime.problem
            out.line(
                f"runtime: not pinned (add [runtime] to pin it); this interpreter runs mlx-lm "
                f"{runtime.mlx_lm or 'unknown'}, mlx {runtime.mlx or 'unknown'} ({where})"
            )
        elif runtime.key is None:
            out.line(f"runtime: lock {runtime.state} ({runtime.reason})")
        else:
            lock = "pinned" if runtime.state == "ok" else f"lock {runtime.state} ({runtime.reason})"
            where = f"installed at {runtime.path}" if runtime.installed else str(runtime.problem)
            out.line(
                f"runtime: mlx-lm {runtime.mlx_lm}, mlx {runtime.mlx}, {runtime.packages} "
                f"packages; {lock} ({runtime.key[:12]}); {where}"
            )
    out.result(result.to_json())
