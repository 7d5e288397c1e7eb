"""The boot path imports aiohttp without reading the CA store, and stays fail-closed; the
gateway runs on uvloop where it is installed."""

from __future__ import annotations

import asyncio
import subprocess
import sys

import uvloop

from mlxpin.gateway.aio import event_loop_factory

PROBE = """
import ssl
loaded = []
original = ssl.SSLContext.set_default_verify_paths
def counting(self):
    loaded.append(1)
    return original(self)
ssl.SSLContext.set_default_verify_paths = counting
from mlxpin.gateway.aio import import_aiohttp
import_aiohttp()
import aiohttp.connector as connector
assert loaded == [], loaded  # the CA store was not read while aiohttp was imported
assert ssl.SSLContext.set_default_verify_paths is counting  # and the method is back
context = connector._SSL_CONTEXT_VERIFIED
assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
assert context.cert_store_stats()["x509_ca"] == 0  # no CA trusted: TLS fails closed
ssl.create_default_context()
assert loaded == [1]  # every other TLS context still reads the store
import_aiohttp()  # a second call changes nothing
print("ok")
"""


def test_aiohttp_is_imported_without_the_ca_store_and_verifies_against_nothing() -> None:
    result = subprocess.run(
        [sys.executable, "-c", PROBE], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


def test_the_gateway_runs_on_uvloop_unless_told_otherwise() -> None:
    factory = event_loop_factory({})
    assert factory is uvloop.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        assert isinstance(runner.get_loop(), uvloop.Loop)
    assert event_loop_factory({"MLXPIN_EVENT_LOOP": " AsyncIO "}) is None  # asyncio's own
    assert event_loop_factory({"MLXPIN_EVENT_LOOP": "uvloop"}) is uvloop.new_event_loop
