"""The pool runtime on stand-in servers (fast; the real ones are in test_cli_serve.py).

Stand-ins are tiny Python HTTP servers that answer every completion, or exit at once:
what a crash budget, a failed model and a bounded wait look like is the same for them.
"""

from __future__ import annotations

import asyncio
import json
import select
import socket
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import aiohttp
import pytest
from aiohttp.test_utils import TestClient, TestServer

from mlxpin.cli.serveboot import ps_table
from mlxpin.gateway.addresses import bind_public
from mlxpin.gateway.app import Gateway, serve
from mlxpin.gateway.backends import Unavailable
from mlxpin.plan.launch import LaunchPlan, PinnedSnapshot
from mlxpin.plan.serve import PoolModelPlan, ServePlan, launch_serve_plan
from mlxpin.supervise.metrics import pin_of
from mlxpin.supervise.pool import Pool
from mlxpin.supervise.process import RotatingLog, is_our_server, pump_output
from mlxpin.supervise.restart import RestartPolicy
from mlxpin.supervise.runner import _hand_over, _head_start, pool_app
from test_cli_launch import ANSWERING_SERVER

ANSWERS = ANSWERING_SERVER  # a stand-in that answers every completion
EXITS = "import sys; sys.exit(4)"


def model(tmp_path: Path, name: str, server: str, cost: int = 1) -> PoolModelPlan:
    launch = LaunchPlan(
        name=name,
        api_label=f"{name}-chat",
        aliases=(),
        public_host="127.0.0.1",
        public_port=0,
        private_host="127.0.0.1",
        server_command=(sys.executable, "-c", server),
        server_args=(),
        env_set=(),
        env_unset=(),
        cwd=tmp_path / "run" / name,
        snapshots=(PinnedSnapshot(name, "model", tmp_path / name, None, "sha256-x", 0, 0),),
    )
    return PoolModelPlan(launch=launch, weights=0, cost=cost, idle_ttl=0.0, preload=False)


def plan(*models: PoolModelPlan, max_loaded: int | None = None, wait: float = 30) -> ServePlan:
    return ServePlan(
        host="127.0.0.1",
        port=0,
        models=models,
        budget=100,
        budget_source="test",
        physical_memory=0,
        max_loaded=max_loaded,
        start_timeout=wait,
    )


POLICY = RestartPolicy(backoff_initial_s=0.01, restart_budget=2, ready_timeout_s=20)
ENV = {"PATH": "/usr/bin:/bin"}


def test_past_its_crash_budget_a_model_fails_with_its_reason_and_others_keep_serving(
    tmp_path: Path,
) -> None:
    async def scenario() -> None:
        pool = Pool(
            plan(model(tmp_path, "good", ANSWERS), model(tmp_path, "bad", EXITS)), ENV, POLICY
        )
        await pool.begin()
        try:
            for _ in range(3):  # each start exits before answering: 3 > restart_budget 2
                with pytest.raises(Unavailable) as info:
                    await pool.acquire("bad-chat")
                await asyncio.sleep(0.05)
            assert pool.slots["bad"].state == "failed"
            with pytest.raises(Unavailable) as info:
                await pool.acquire("bad-chat")
            assert info.value.error.code == "model_failed"
            assert info.value.error.status == 503
            assert "failed 3 starts in a row" in info.value.error.message
            assert "last exit code 4" in info.value.error.message
            lease = await pool.acquire("good-chat")  # the other model is not affected
            assert pool.slots["good"].state == "ready"
            lease.release()
            states = {name: slot.state for name, slot in pool.slots.items()}
            assert states == {"good": "ready", "bad": "failed"}
        finally:
            await pool.close()

    asyncio.run(scenario())


def test_when_every_loaded_model_is_busy_the_wait_is_bounded_then_503_retry_after(
    tmp_path: Path,
) -> None:
    async def scenario() -> None:
        models = (model(tmp_path, "a", ANSWERS), model(tmp_path, "b", ANSWERS))
        pool = Pool(plan(*models, max_loaded=1, wait=0.5), ENV, POLICY)
        gateway = Gateway(pool)
        async with TestClient(TestServer(pool_app(gateway, pool))) as client:
            await pool.load(pool.slots["a"])  # (a start may take longer than the 0.5 s wait)
            busy = await pool.acquire("a-chat")  # a request in flight on a: never evicted
            body = {"model": "b-chat", "messages": [{"role": "user", "content": "x"}]}
            response = await client.post("/v1/chat/completions", json=body)
            assert response.status == 503
            assert int(response.headers["Retry-After"]) >= 1
            error = (await response.json())["error"]
            assert error["code"] == "model_loading"
            assert "b-chat" in error["message"] and error["type"] == "server_error"
            assert pool.slots["a"].state == "ready"
            busy.release()  # now a is idle: b evicts it
            await pool.load(pool.slots["b"])  # (a start may take longer than the 0.5 s wait)
            response = await client.post("/v1/chat/completions", json=body)
            assert response.status == 200, await response.text()
            assert (await response.json())["model"] == "b-chat"
            assert pool.status()["loaded"] == 1
            assert pool.views()["a"].state == "stopped"
            status = await (await client.get("/mlxpin/status")).json()
            assert status["loaded"] == 1 and status["max_loaded"] == 1
        await pool.close()

    asyncio.run(scenario())


def test_concurrent_first_requests_share_one_start(tmp_path: Path) -> None:
    async def scenario() -> None:
        pool = Pool(plan(model(tmp_path, "a", ANSWERS)), ENV, POLICY)
        starts = 0
        original = pool._spawn_and_warm

        async def counted(slot: object) -> None:
            nonlocal starts
            starts += 1
            await original(slot)  # type: ignore[arg-type]

        pool._spawn_and_warm = counted  # type: ignore[method-assign]
        leases = await asyncio.gather(*(pool.acquire("a-chat") for _ in range(8)))
        assert starts == 1
        assert pool.slots["a"].in_flight == 8
        for lease in leases:
            lease.release()
        assert pool.slots["a"].in_flight == 0
        await pool.close()

    asyncio.run(scenario())


def test_a_request_waiting_at_boot_starts_its_model_while_the_gateway_sets_up(
    tmp_path: Path,
) -> None:
    """Issue #21 item 4: on demand, the first request's model was spawned only once the
    gateway had imported aiohttp and read it (~0.1 s more than `launch`'s cold start)."""

    async def scenario() -> None:
        pool = Pool(plan(model(tmp_path, "a", ANSWERS), model(tmp_path, "b", ANSWERS)), ENV, POLICY)
        listeners = bind_public("127.0.0.1", 0)
        port = listeners[0].getsockname()[1]
        body = json.dumps({"model": "b-chat", "messages": [{"role": "user", "content": "hi"}]})
        client = socket.create_connection(("127.0.0.1", port))
        client.sendall(
            f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
            f"Content-Length: {len(body)}\r\n\r\n{body}".encode()
        )
        select.select(listeners, [], [], 5)
        runner = None
        try:
            waiting, release = await _head_start(listeners, pool)
            b = pool.slots["b"]
            assert waiting is not None and release is not None
            assert b.state == "starting" and b.process is not None and b.process.process
            assert (b.in_flight, b.last_used_wall, pool.slots["a"].state) == (1, None, "stopped")
            runner = await serve(
                pool_app(Gateway(pool), pool), "127.0.0.1", port, sockets=listeners
            )
            await _hand_over(runner, waiting)
            release()
            answer = await asyncio.get_running_loop().run_in_executor(None, _read_all, client)
            assert answer.startswith(b"HTTP/1.1 200 "), answer[:200]
            assert (b.starts, b.in_flight, pool.slots["a"].starts) == (1, 0, 0)
        finally:
            client.close()
            await pool.close()
            if runner is not None:
                await runner.cleanup()
            for sock in listeners:
                sock.close()

    asyncio.run(scenario())


def test_a_request_waiting_at_boot_never_evicts_or_doubles_a_start(tmp_path: Path) -> None:
    async def scenario() -> None:
        pool = Pool(
            plan(model(tmp_path, "a", ANSWERS), model(tmp_path, "b", ANSWERS), max_loaded=1),
            ENV,
            POLICY,
        )
        try:
            (await pool.acquire("a-chat")).release()
            assert await pool.head_start("b-chat") is None  # it would evict a: the request's call
            assert await pool.head_start("a-chat") is None  # ready already
            assert pool.slots["a"].state == "ready" and pool.slots["b"].starts == 0
        finally:
            await pool.close()

    asyncio.run(scenario())


def test_a_restart_does_not_take_the_last_starts_socket_file_for_the_new_server(
    tmp_path: Path,
) -> None:
    """The warm-up waits for the socket file to appear; a stale one would only be refused."""
    from mlxpin.supervise.servers import SingleServer

    launch = replace(model(tmp_path, "a", ANSWERS).launch, private_socket=True)
    server = SingleServer(launch, ENV)
    path = server.upstream.socket_path
    assert path is not None
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(path)
    stale.close()
    try:
        server.new_process(1.0)
        assert not Path(path).exists()
    finally:
        server.close()


def _read_all(sock: socket.socket) -> bytes:
    sock.settimeout(30)
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


def test_unknown_label_on_operator_routes_is_404(tmp_path: Path) -> None:
    async def scenario() -> None:
        pool = Pool(plan(model(tmp_path, "a", ANSWERS)), ENV, POLICY)
        async with TestClient(TestServer(pool_app(Gateway(pool), pool))) as c:
            response = await c.post("/mlxpin/models/nope/load")
            assert response.status == 404
            assert (await response.json())["error"]["code"] == "model_not_found"
            response = await c.post("/mlxpin/models/a-chat/unload")  # stopped: nothing to do
            assert response.status == 200
            by_name = await c.post("/mlxpin/models/a/unload")  # the manifest name (#20 item 19)
            assert by_name.status == 200
        await pool.close()

    assert aiohttp  # the test client is aiohttp's own
    asyncio.run(scenario())


def test_health_without_the_api_key_names_no_model(tmp_path: Path) -> None:
    """Issue #20 item 9: /health listed every label and state to anyone."""

    async def scenario() -> None:
        pool = Pool(plan(model(tmp_path, "a", ANSWERS)), ENV, POLICY)
        gateway = Gateway(pool, api_key="k3y")
        async with TestClient(TestServer(pool_app(gateway, pool))) as c:
            response = await c.get("/health")
            assert (response.status, await response.json()) == (200, {"status": "ok"})
            authorised = await c.get("/health", headers={"Authorization": "Bearer k3y"})
            assert (await authorised.json())["models"] == {"a-chat": "stopped"}
        await pool.close()

    asyncio.run(scenario())


def test_unload_waits_for_requests_in_flight_and_idle_ttl_stops(tmp_path: Path) -> None:
    async def scenario() -> None:
        quick = model(tmp_path, "a", ANSWERS)
        quick = PoolModelPlan(quick.launch, 0, 1, idle_ttl=0.3, preload=False)
        pool = Pool(plan(quick, model(tmp_path, "b", ANSWERS)), ENV, POLICY)
        await pool.begin()
        try:
            lease = await pool.acquire("b-chat")
            unload = asyncio.create_task(pool.unload(pool.slots["b"]))
            await asyncio.sleep(0.3)
            assert not unload.done() and pool.slots["b"].state == "ready"  # still in flight
            lease.release()
            await asyncio.wait_for(unload, 10)
            assert pool.views()["b"].state == "stopped"
            (await pool.acquire("a-chat")).release()
            assert pool.slots["a"].state == "ready"
            for _ in range(100):  # its 0.3 s TTL passes
                if pool.views()["a"].state == "stopped":
                    break
                await asyncio.sleep(0.05)
            assert pool.views()["a"].state == "stopped"
        finally:
            await pool.close()

    asyncio.run(scenario())


def test_a_resident_model_is_preloaded_restarted_at_once_and_its_spent_budget_is_fatal(
    tmp_path: Path,
) -> None:
    """`launch` is the pool's one-model case: health follows the server, a crash restarts
    it without waiting for a request, and past its crash budget the run must end (70)."""

    async def scenario() -> None:
        resident = launch_serve_plan(model(tmp_path, "a", ANSWERS).launch)
        told: list[bool] = []
        pool = Pool(resident, ENV, POLICY, on_fatal=lambda: told.append(True))
        gateway = Gateway(pool)
        async with TestClient(TestServer(pool_app(gateway, pool, operator=False))) as client:
            assert (await client.get("/health")).status == 503
            await pool.begin()  # preloads it
            slot = pool.slots["a"]
            for _ in range(200):
                if slot.state == "ready":
                    break
                await asyncio.sleep(0.05)
            health = await client.get("/health")
            assert (health.status, await health.json()) == (
                200,
                {"status": "ok", "model": "a-chat"},
            )
            assert slot.view().evictable is False  # never chosen for eviction
            response = await client.post("/mlxpin/models/a-chat/unload")
            assert response.status == 404  # no operator routes on a launch
            assert slot.process is not None and slot.process.process is not None
            first = slot.process.pid
            slot.process.process.kill()  # a crash, with no request in sight
            for _ in range(200):
                if slot.state == "ready" and slot.process and slot.process.pid != first:
                    break
                await asyncio.sleep(0.05)
            assert slot.state == "ready" and slot.restarts == 1
            assert (await client.get("/health")).status == 200
            assert pool.fatal is None and not told
            status = await (await client.get("/mlxpin/status")).json()
            assert status["budget"]["total"] is None  # `ps` against a launch
            assert "budget 537 MB of no budget (launch); loaded 1 of unlimited" in ps_table(status)
        await pool.close()

        failing = launch_serve_plan(model(tmp_path, "b", EXITS).launch)
        pool = Pool(failing, ENV, POLICY, on_fatal=lambda: told.append(True))
        await pool.begin()
        for _ in range(400):
            if told:
                break
            await asyncio.sleep(0.05)
        assert told == [True]
        assert pool.fatal is not None and pool.fatal.exit_code == 70
        assert "failed 3 starts in a row" in pool.fatal.message
        await pool.close()

    asyncio.run(scenario())


def test_a_leftover_server_is_recognised_whatever_columns_says(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`ps` cuts its output at $COLUMNS: a long snapshot path would hide a leftover server
    from the check, and a second server would load the same model."""
    model = str(tmp_path / ("snapshots-" + "x" * 200))
    leftover = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(60)", "mlx_lm", model],
        start_new_session=True,
    )
    try:
        monkeypatch.setenv("COLUMNS", "40")
        for _ in range(50):  # until the child's command line is readable
            if is_our_server(leftover.pid, model):
                break
            time.sleep(0.05)
        assert is_our_server(leftover.pid, model)
        assert not is_our_server(leftover.pid, model + "-other")
    finally:
        leftover.kill()
        leftover.wait()


def test_past_its_engine_slots_a_request_waits_in_a_bounded_queue_then_503(
    tmp_path: Path,
) -> None:
    """Issue #26 item 1: queue, don't refuse; 503 + Retry-After only past the limits."""

    async def scenario() -> None:
        env = {**ENV, "MLXPIN_ENGINE_SLOTS": "1", "MLXPIN_QUEUE_LIMIT": "1"}
        env["MLXPIN_QUEUE_TIMEOUT"] = "0.5"
        pool = Pool(plan(model(tmp_path, "a", ANSWERS)), env, POLICY)
        try:
            first = await pool.acquire("a-chat")
            second = asyncio.create_task(pool.acquire("a-chat"))  # waits for the slot
            await asyncio.sleep(0.05)
            assert pool.status()["models"][0]["waiting"] == 1  # type: ignore[index]
            with pytest.raises(Unavailable) as info:  # past the queue limit: at once
                await pool.acquire("a-chat")
            assert info.value.error.code == "queue_full"
            first.release()  # the waiting one gets the slot
            (await asyncio.wait_for(second, 1.0)).release()
            held = await pool.acquire("a-chat")
            started = time.monotonic()
            with pytest.raises(Unavailable) as info:  # waited the queue timeout
                await pool.acquire("a-chat")
            assert 0.4 < time.monotonic() - started < 3
            assert info.value.error.code == "queue_timeout"
            assert dict(info.value.error.headers)["Retry-After"] == "1"
            held.release()
            assert pool.slots["a"].in_flight == 0
        finally:
            await pool.close()

    asyncio.run(scenario())


UDS_ANSWERS = ANSWERS.replace(
    'port = int(sys.argv[sys.argv.index("--port") + 1])',
    'import os, socketserver\npath = sys.argv[sys.argv.index("--unix-socket") + 1]\n'
    "os.path.exists(path) and os.unlink(path)",
).replace(
    'http.server.ThreadingHTTPServer(("127.0.0.1", port), Ok).serve_forever()',
    "class U(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):\n"
    "    def get_request(self):\n"
    "        return self.socket.accept()[0], ('unix', 0)\n"
    "U(path, Ok).serve_forever()",
)


@pytest.mark.parametrize("fault", ["hang", "socket gone"])
def test_a_hung_server_or_one_whose_socket_vanished_is_noticed_and_replaced(
    tmp_path: Path, fault: str
) -> None:
    """Issue #26 items 4 and 5: /health said ok and nothing restarted, forever."""
    import dataclasses
    import os
    import signal

    from mlxpin.supervise.liveness import Liveness
    from mlxpin.supervise.servers import WatchdogPolicy

    async def scenario() -> None:
        launch = model(tmp_path, "a", UDS_ANSWERS).launch
        launch = dataclasses.replace(launch, private_socket=True)
        watchdog = WatchdogPolicy(single=Liveness(interval_s=0.1, timeout_s=0.3, failures=3))
        policy = dataclasses.replace(POLICY, stop_timeout_s=2.0)
        pool = Pool(launch_serve_plan(launch), ENV, policy, watchdog=watchdog)
        slot = pool.slots["a"]
        try:
            await pool.begin()
            for _ in range(200):
                if pool.health().ready:
                    break
                await asyncio.sleep(0.05)
            assert pool.health().ready and slot.process is not None
            first = slot.process.pid
            socket_path = pool.slots["a"].upstream().socket_path
            assert socket_path is not None
            if fault == "hang":
                os.kill(first, signal.SIGSTOP)
            else:
                os.unlink(socket_path)
            seen_down = False
            for _ in range(300):
                seen_down = seen_down or not pool.health().ready
                running = slot.process  # a restarted one may not have spawned yet
                if running and running.process and running.pid != first and pool.health().ready:
                    break
                await asyncio.sleep(0.02)
            assert seen_down
            assert slot.process is not None and slot.process.pid != first
            assert pool.health().ready and slot.restarts == 1
        finally:
            await pool.close()

    asyncio.run(scenario())


# mlx_lm.server once its generation thread died: /health 503, every completion a 404.
DIES = ANSWERS.replace(
    "    def do_POST(self):\n",
    "    dead = False\n"
    "    def do_GET(self):\n"
    "        self.send_response(503 if Ok.dead else 200)\n"
    "        self.send_header('Content-Length', '0')\n"
    "        self.end_headers()\n"
    "    def do_POST(self):\n"
    "        if b'die' in self.rfile.peek(1 << 16) or Ok.dead:\n"
    "            Ok.dead = True\n"
    "            self.rfile.read(int(self.headers['Content-Length']))\n"
    '            body = b\'{"error": "generation thread died"}\'\n'
    "            self.send_response(404)\n"
    "            self.send_header('Content-Type', 'application/json')\n"
    "            self.send_header('Content-Length', str(len(body)))\n"
    "            self.end_headers()\n"
    "            self.wfile.write(body)\n"
    "            return\n",
)


def test_an_engine_whose_generation_thread_died_is_restarted(tmp_path: Path) -> None:
    """Issue #20 item 6: its /health stayed 200 for mlxpin and every request failed."""
    import dataclasses

    from mlxpin.supervise.liveness import Liveness
    from mlxpin.supervise.servers import WatchdogPolicy

    async def scenario() -> None:
        watchdog = WatchdogPolicy(single=Liveness(interval_s=0.1, timeout_s=1, failures=3))
        launch = launch_serve_plan(model(tmp_path, "a", DIES).launch)
        pool = Pool(launch, ENV, dataclasses.replace(POLICY, stop_timeout_s=2.0), watchdog=watchdog)
        slot = pool.slots["a"]
        try:
            await pool.begin()
            async with TestClient(TestServer(pool_app(Gateway(pool), pool))) as c:
                for _ in range(200):
                    if pool.health().ready:
                        break
                    await asyncio.sleep(0.05)
                assert slot.process is not None
                first = slot.process.pid
                ask = {"model": "a-chat", "messages": [{"role": "user", "content": "die"}]}
                answer = await c.post("/v1/chat/completions", json=ask)
                assert answer.status == 503  # not the engine's 404
                for _ in range(300):
                    running = slot.process  # a restarted one may not have spawned yet
                    if running and running.process and running.pid != first:
                        break
                    await asyncio.sleep(0.02)
                assert slot.process is not None and slot.process.pid != first
                assert slot.restarts == 1
        finally:
            await pool.close()

    asyncio.run(scenario())


def test_a_pid_file_that_cannot_be_written_does_not_stop_the_server(tmp_path: Path) -> None:
    """Issue #26 item 6: on a full state disk the server was killed, never retried, and
    `launch` answered /health 503 forever."""

    async def scenario() -> None:
        resident = launch_serve_plan(model(tmp_path, "a", ANSWERS).launch)
        pool = Pool(resident, ENV, POLICY)
        slot = pool.slots["a"]
        (tmp_path / "run").mkdir()
        slot.server.new_process(1).pidfile.mkdir()  # every write to it fails
        try:
            await pool.begin()
            for _ in range(200):
                if pool.health().ready or pool.fatal is not None:
                    break
                await asyncio.sleep(0.05)
            assert pool.health().ready, slot.failed_reason
        finally:
            await pool.close()

    asyncio.run(scenario())


def test_the_pin_names_the_models_real_engine(tmp_path: Path) -> None:
    chat = model(tmp_path, "a", ANSWERS)
    vlm = model(tmp_path, "b", ANSWERS)
    vlm = replace(vlm, launch=replace(vlm.launch, engine="mlx-vlm", role="embedding"))
    pool = Pool(plan(chat, vlm), ENV, POLICY)
    engines = {name: pin_of(slot)["engine"] for name, slot in pool.slots.items()}
    assert engines == {"a": "mlx_lm.server", "b": "mlx_vlm.server"}


def test_an_unload_whose_client_hangs_up_still_stops_the_model(tmp_path: Path) -> None:
    async def scenario() -> None:
        pool = Pool(plan(model(tmp_path, "a", ANSWERS)), ENV, POLICY)
        slot = pool.slots["a"]
        try:
            await pool.load(slot)
            unload = asyncio.create_task(pool.unload(slot))
            while slot.state != "stopping":
                await asyncio.sleep(0)
            unload.cancel()  # the operator route's handler, cancelled by a hang-up
            for _ in range(500):
                if slot.state != "stopping":
                    break
                await asyncio.sleep(0.01)
            assert pool.views()["a"].state == "stopped"
        finally:
            await pool.close()

    asyncio.run(scenario())


def test_server_log_is_copied_and_rotated(tmp_path: Path) -> None:
    """The server's output goes to its log (bad UTF-8 replaced, \\r as a line end) and is
    rotated past the size, keeping the backups like logging's RotatingFileHandler."""
    path = tmp_path / "logs" / "m.log"

    async def pump() -> None:
        stream = asyncio.StreamReader()
        stream.feed_data(b"one\ntwo\r\xffthree")
        stream.feed_eof()
        await pump_output(stream, path, "m")

    asyncio.run(pump())
    assert path.read_text() == "one\ntwo\n\ufffdthree\n"  # no empty lines
    log = RotatingLog(path, max_bytes=30, backups=2)
    for line in (b"a" * 20 + b"\n", b"b" * 20 + b"\n", b"c" * 20 + b"\n", b"d\n"):
        log.write(line)
    log.close()
    assert path.read_bytes() == b"c" * 20 + b"\nd\n"
    assert (tmp_path / "logs" / "m.log.1").read_bytes() == b"b" * 20 + b"\n"
    assert (tmp_path / "logs" / "m.log.2").read_bytes() == b"a" * 20 + b"\n"
    assert not (tmp_path / "logs" / "m.log.3").exists()
