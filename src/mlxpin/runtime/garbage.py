"""Which installed runtimes `mlxpin gc` may delete: those no live lock/runtime.toml (or
lock/engines/*/runtime.toml) names, and builds a crash left aside (older than a day).
`mlxpin.store.gc.sweep` deletes them under the runtime's mutex (which `fetch` holds while it
builds)."""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path

from mlxpin.errors import LockCorruptError
from mlxpin.runtime.layout import RuntimeLayout
from mlxpin.runtime.pin import read_pin
from mlxpin.store.gc.inventory import tree_size
from mlxpin.store.gc.plan import STALE_AFTER_S, Doomed, GarbageKind

KEY_RE = re.compile(r"[0-9a-f]{32}")


def live_runtime_keys(lock_dirs: Iterable[Path]) -> tuple[set[str], list[LockCorruptError]]:
    keys: set[str] = set()
    problems: list[LockCorruptError] = []
    # Each lock dir's runtime.toml, and its engines' (lock/engines/<engine>/runtime.toml).
    for lock_dir in [d for top in lock_dirs for d in (top, *sorted(top.glob("engines/*")))]:
        try:
            pin = read_pin(lock_dir)
        except LockCorruptError as exc:
            problems.append(exc)
            continue
        if pin is not None:
            keys.add(pin.key)
    return keys, problems


def runtime_garbage(layout: RuntimeLayout, live: set[str], now: float) -> list[Doomed]:
    doomed: list[Doomed] = []
    try:
        entries = sorted(layout.root.iterdir())
    except OSError:
        return doomed
    kind: GarbageKind
    for entry in entries:
        name = entry.name
        key = name[1:].split(".", 1)[0]  # of a build left aside: `.<key>.tmp-*`, `.<key>.old-*`
        if KEY_RE.fullmatch(name) and entry.is_dir() and not entry.is_symlink():
            if name in live:
                continue
            kind, key, reason = "runtime", name, "server runtime no lock names"
        elif (
            name.startswith(".") and KEY_RE.fullmatch(key) and (".tmp-" in name or ".old-" in name)
        ):
            try:
                if now - entry.lstat().st_mtime <= STALE_AFTER_S:
                    continue
            except OSError:
                continue
            kind, reason = "temp", "runtime build left by an interrupted fetch"
        else:
            continue
        doomed.append(Doomed(kind, entry, tree_size(entry), reason, layout.mutex(key)))
    return doomed
