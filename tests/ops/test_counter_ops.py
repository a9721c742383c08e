"""The counter server's operations surface, on real processes: --http
endpoints, JSON logs with group/node/term on every node line, SIGUSR2's
describe dump, ``pyjraft status``, and the exit status of a failed node."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp

from pyjraft.examples.counter import EXIT_NODE_FAILED, CounterClient, fetch_status
from pyjraft.testing.ports import free_ports
from tests.integration.cluster import CounterCluster


def _json_lines(path: Path) -> list[dict[str, Any]]:
    out = []
    for line in path.read_text(errors="replace").splitlines():
        if line.startswith("{"):
            out.append(json.loads(line))
    return out


def _wait(predicate: Any, timeout: float, what: str) -> Any:
    end = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        assert time.monotonic() < end, f"timed out: {what}"
        time.sleep(0.02)


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pyjraft.cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_a_cluster_with_http_json_logs_status_and_describe(tmp_path: Path) -> None:
    ports = free_ports(3)
    http: dict[str, str] = {}

    def node_args(addr: str) -> list[str]:
        if addr not in http:
            http[addr] = f"127.0.0.1:{ports[len(http)]}"
        return ["--http", http[addr], "--log-format", "json"]

    # A calm election timeout: the checks below read roles after the fact, and a
    # loaded CI machine must not trigger a new election in between.
    c = CounterCluster(tmp_path, election_timeout_ms=1500, heartbeat_ms=100, node_args=node_args)
    try:
        c.start_all()

        async def scenario() -> str:
            leader = await c.wait_for_leader()
            client = CounterClient(c.group, c.addrs, timeout=1.0, deadline=10.0)
            try:
                for _ in range(5):
                    await client.increment_and_get(2)
            finally:
                await client.close()
            async with aiohttp.ClientSession() as session:
                for addr in c.addrs:
                    end = time.monotonic() + 10
                    while True:  # a follower is healthy once it has heard the leader
                        async with session.get(f"http://{http[addr]}/health") as r:
                            if r.status == 200:
                                break
                        assert time.monotonic() < end, f"{addr} not healthy"
                        await asyncio.sleep(0.05)
                async with session.get(f"http://{http[leader]}/metrics") as r:
                    metrics = await r.text()
            assert f'pyjraft_elections_won_total{{group="itest",node="{leader}"}} 1.0' in metrics
            assert "pyjraft_log_append_seconds_bucket" in metrics
            await c.close()
            return leader

        leader = asyncio.run(scenario())

        # pyjraft status: from the RPC status service, and from the HTTP endpoints.
        peers = ",".join(c.addrs)
        table = _cli("status", "--peers", peers)
        assert table.returncode == 0, table.stderr
        lines = table.stdout.splitlines()
        assert lines[0].split()[:4] == ["member", "group", "role", "term"]
        rows = {ln.split()[0]: ln.split() for ln in lines[1:]}
        assert sorted(r[2] for r in rows.values()) == ["follower", "follower", "leader"]
        assert rows[leader][2] == "leader"
        as_json = _cli("status", "--peers", peers, "--json", "--group", c.group)
        parsed = json.loads(as_json.stdout)
        assert {r["member"] for r in parsed} == set(c.addrs)
        assert all(r["lag"] is not None for r in parsed)
        via_http = _cli("status", "--http", "--peers", ",".join(http.values()), "--json")
        assert {r["id"] for r in json.loads(via_http.stdout)} == set(c.addrs)
        watched = _cli("status", "--peers", peers, "--watch", "0.05", "--iterations", "2")
        assert watched.stdout.count("member  ") == 2
        missing = _cli("status", "--peers", f"{peers},127.0.0.1:{free_ports(1)[0]}")
        assert missing.returncode == 1
        assert "! 127.0.0.1:" in missing.stdout

        # SIGUSR2: the describe dump, one JSON line in the JSON log format.
        c.procs[leader].send_signal(signal.SIGUSR2)
        log = c.log_path(leader)

        def described() -> dict[str, Any] | None:
            return next((x for x in _json_lines(log) if x.get("event") == "describe"), None)

        dump = _wait(described, 10, "no describe line after SIGUSR2")["describe"][0]
        assert dump["id"] == leader and dump["group"] == c.group
        assert {"queues", "timers", "events", "options"} <= set(dump)

        # Every line of the node's logger names its group, node and term; the
        # election is there, one line per event.
        events: dict[str, list[dict[str, Any]]] = {}
        for addr in c.addrs:
            node_lines = [x for x in _json_lines(c.log_path(addr)) if x["logger"] == "pyjraft.node"]
            assert node_lines, addr
            for x in node_lines:
                assert x["group"] == c.group and x["node"] == addr and isinstance(x["term"], int)
            events[addr] = [x for x in node_lines if "event" in x]
        won = [x for x in events[leader] if x["event"] == "election_won"]
        assert won and won[-1]["term"] >= 1
        assert any(x["event"] == "election_started" for x in events[leader])
        for addr in c.addrs:
            if addr != leader:
                changes = [x for x in events[addr] if x["event"] == "leader_change"]
                assert changes[-1]["leader"] == leader
    finally:
        c.stop_all()


_LIMITED = (
    "import os, resource, signal, sys;"
    "signal.signal(signal.SIGXFSZ, signal.SIG_IGN);"
    "resource.setrlimit(resource.RLIMIT_FSIZE, (2000, 2000));"
    "os.execv(sys.executable, [sys.executable, *sys.argv[1:]])"
)
"""Runs the rest of its command line with files limited to 2000 bytes (EFBIG
past that, not SIGXFSZ), without a preexec_fn in a threaded test process."""


@contextlib.contextmanager
def _limited_server(
    tmp_path: Path, *extra: str
) -> Iterator[tuple[subprocess.Popen[bytes], str, list[bytes]]]:
    """A one-replica counter whose files may not grow past 2000 bytes: its log
    write fails after a few dozen increments (EFBIG), a storage failure."""
    (port,) = free_ports(1)
    addr = f"127.0.0.1:{port}"

    cmd = [sys.executable, "-c", _LIMITED, "-m", "pyjraft.examples.counter", "server"]
    cmd += ["--data-dir", str(tmp_path / "data"), "--id", addr, "--peers", addr]
    cmd += ["--election-timeout-ms", "200", "--log-format", "json", "--die-with-parent", *extra]
    # stderr through a pipe: the size limit would cut a log file short.
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stderr=subprocess.PIPE)
    lines: list[bytes] = []
    stderr = proc.stderr
    assert stderr is not None
    reader = threading.Thread(target=lambda: lines.extend(stderr), daemon=True)
    reader.start()
    try:
        yield proc, addr, lines
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        reader.join(10)
        stderr.close()


async def _increment_until_failure(addr: str) -> None:
    client = CounterClient("counter", [addr], timeout=1.0, deadline=5.0)
    try:
        for _ in range(1000):
            try:
                await client.increment_and_get(1)
            except Exception:
                return
        raise AssertionError("the log never filled up")
    finally:
        await client.close()


def test_the_server_exits_70_when_its_node_fails(tmp_path: Path) -> None:
    with _limited_server(tmp_path) as (proc, addr, lines):
        asyncio.run(_increment_until_failure(addr))
        assert proc.wait(30) == EXIT_NODE_FAILED
    logged = [json.loads(x) for x in lines if x.startswith(b"{")]
    err = next(x for x in logged if x.get("event") == "node_error")
    assert err["level"] == "ERROR" and err["group"] == "counter" and err["node"] == addr
    assert "File too large" in err["error"]


def test_no_exit_on_error_keeps_a_failed_server_up_reporting_error(tmp_path: Path) -> None:
    (hport,) = free_ports(1)
    args = ("--no-exit-on-error", "--http", f"127.0.0.1:{hport}")
    with _limited_server(tmp_path, *args) as (proc, addr, _):

        async def scenario() -> None:
            await _increment_until_failure(addr)
            st = await fetch_status(addr)
            assert st["role"] == "error" and st["state"] == "error"
            async with (
                aiohttp.ClientSession() as session,
                session.get(f"http://127.0.0.1:{hport}/health") as r,
            ):
                assert r.status == 503
                assert "node is error" in await r.text()

        asyncio.run(scenario())
        assert proc.poll() is None
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
