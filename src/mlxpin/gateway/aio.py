"""Import aiohttp for the boot path without its two TLS contexts' CA loading.

aiohttp builds two default TLS client contexts when it is imported, and each reads the
system's CA store (~50 ms each here). mlxpin's gateway and pool only ever speak plain
HTTP to servers on loopback or a Unix socket, so `launch` and `serve` import aiohttp with
that read skipped: ~100 ms off every start. A TLS request made later through aiohttp's
defaults would find no trusted CA and be refused -- it fails closed, never open.
"""

from __future__ import annotations

import ssl
import sys

__all__ = ["import_aiohttp"]


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
