"""The gateway's asyncio: aiohttp imported for the boot path without its two TLS
contexts' CA loading, and the event loop it runs on.

aiohttp builds two default TLS client contexts when it is imported, and each reads the
system's CA store (~50 ms each here). mlxpin's gateway and pool only ever speak plain
HTTP to servers on loopback or a Unix socket, so `launch` and `serve` import aiohttp with
that read skipped: ~100 ms off every start. A TLS request made later through aiohttp's
defaults would find no trusted CA and be refused -- it fails closed, never open.

The loop is uvloop's where it is installed (a dependency on Linux and macOS): it accepts
connections and runs transports and callbacks in C, which takes ~20% off the gateway's
CPU for a request on a new connection (bench/gatewaycpu.py). ``MLXPIN_EVENT_LOOP=asyncio``
keeps asyncio's own.
"""

from __future__ import annotations

import asyncio
import ssl
import sys
from collections.abc import Callable, Mapping

__all__ = ["event_loop_factory", "import_aiohttp"]

LOOP_ENV = "MLXPIN_EVENT_LOOP"


def _skip_ca_store(_context: ssl.SSLContext) -> None:
    """Stands in for SSLContext.set_default_verify_paths while aiohttp is imported."""


def import_aiohttp() -> None:
    """Import aiohttp (once) without loading the CA store; a no-op if it is loaded."""
    if "aiohttp" in sys.modules:
        return
    original = ssl.SSLContext.set_default_verify_paths
    ssl.SSLContext.set_default_verify_paths = _skip_ca_store  # type: ignore[method-assign,assignment]
    try:
        import aiohttp  # noqa: F401
    finally:
        ssl.SSLContext.set_default_verify_paths = original  # type: ignore[method-assign]


def event_loop_factory(
    environ: Mapping[str, str],
) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's loop maker, or None (asyncio's own) where it is missing or not wanted."""
    if environ.get(LOOP_ENV, "").strip().lower() == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop
