"""``pyjraft kv serve`` takes the TLS, operations and identity options of the
counter server, and its ``kv`` service takes requests up to its largest
valid one (issue 13: the KV wiring)."""

from __future__ import annotations

import asyncio
import json
import resource
import signal
import ssl
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from pyjraft.kv import Client, KvLimits, Op
from pyjraft.kv.server import EXIT_NODE_FAILED, service_request_limit
from pyjraft.testing.ports import free_ports
from pyjraft.transport import RpcClient, TransportError
from pyjraft.transport.tls import TlsConfig
from tests.kv.cluster import KvCluster
from tests.kv.conftest import ServerThread

pytestmark = pytest.mark.timeout(120)
MiB = 1 << 20


def test_the_kv_service_takes_its_largest_valid_requests(server: ServerThread) -> None:
    assert server.transport is not None
    limit = service_request_limit(KvLimits())
    assert server.transport._service_limits["kv"] == limit
    assert 2 * MiB < limit < 2 * MiB + 8192

    async def main() -> None:
        rpc = RpcClient()
        try:
            async with Client([server.addr], rpc=rpc) as kv:
                # A value of the largest size (1 MiB) plus its key and field names
                # is over the transport's default of 1 MiB for a request.
                big = b"v" * (1 * MiB)
                assert (await kv.put(b"k" * 511, big)).revision == 1
                # A transaction whose command is close to 2 MiB.
                almost = b"w" * (MiB - 4096)
                t = await kv.txn([], [Op.put(b"a", almost), Op.put(b"b", almost)], [])
                assert t.succeeded and t.revision == 2
            # Past it: refused at the frame's header, before anything is read
            # (the kv service has the largest limit: the connection is closed).
            before = server.transport.stats.oversized_frames
            with pytest.raises(TransportError):
                await rpc.call(
                    server.addr, "kv", {"op": "put", "key": b"k", "value": b"x" * (3 * MiB)}
                )
            assert server.transport.stats.oversized_frames == before + 1
        finally:
            await rpc.close()

    server.call(main())


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pyjraft.cli", "kv", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def _json_lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in path.read_text(errors="replace").splitlines() if x[:1] == "{"]


def test_a_kv_cluster_over_mutual_tls_with_the_ops_options(tmp_path: Path) -> None:
    http: dict[str, str] = {}
    hports = free_ports(3)

    def node_args(addr: str) -> list[str]:
        http.update((a, f"127.0.0.1:{hports[i]}") for i, a in enumerate(c.addrs))
        gateways = ",".join(f"{a}={h}" for a, h in http.items())
        return ["--http", http[addr], "--gateway-peers", gateways, "--log-format", "json",
                "--cluster-id", "kvtest"]  # fmt: skip

    c = KvCluster(
        tmp_path, group="kv", tls=True, election_timeout_ms=1500, heartbeat_ms=100,
        node_args=node_args,
    )  # fmt: skip
    try:
        c.start_all()
        client = c.tls_files["client:itest"]
        tls = ["--tls-cert", str(client.cert), "--tls-key", str(client.key)]
        tls += ["--tls-ca", str(c.tls_files["ca"].cert)]
        common = ["--peers", c.peers, "--group", "kv", "--deadline", "30"]

        put = _cli("put", "greeting", "hello", *common, *tls)
        assert put.returncode == 0 and put.stdout.strip() == "1", put.stderr
        got = _cli("get", "greeting", *common, *tls)
        assert got.returncode == 0 and got.stdout == "hello\n", got.stderr
        # Without a certificate the client gets nowhere; half of one is a usage error.
        plain = _cli("get", "greeting", *common[:-1], "3")
        assert plain.returncode == 1 and "error:" in plain.stderr
        half = _cli("get", "greeting", *common, *tls[:2])
        assert half.returncode == 1 and "go together" in half.stderr

        async def scrape() -> str:
            ctx = ssl.create_default_context(cafile=str(c.tls_files["ca"].cert))
            ctx.check_hostname = False
            ctx.load_cert_chain(str(client.cert), str(client.key))
            async with aiohttp.ClientSession() as session:
                url = f"https://{http[c.addrs[0]]}/metrics"
                async with session.get(url, ssl=ctx) as r:
                    assert r.status == 200
                    return await r.text()

        metrics = asyncio.run(scrape())
        assert 'pyjraft_term{group="kv"' in metrics

        async def through_the_gateways() -> list[Any]:
            # Every replica's --http serves /v1/kv; a follower redirects to the
            # leader's gateway (--gateway-peers), keeping the method and body.
            ctx = ssl.create_default_context(cafile=str(c.tls_files["ca"].cert))
            ctx.check_hostname = False
            ctx.load_cert_chain(str(client.cert), str(client.key))
            seen: list[Any] = []
            async with aiohttp.ClientSession() as session:
                for i, addr in enumerate(c.addrs):
                    url = f"https://{http[addr]}/v1/kv/gw{i}"
                    async with session.put(url, json={"value": f"v{i}"}, ssl=ctx) as r:
                        seen.append((r.status, (await r.json())["revision"]))
                for i, addr in enumerate(c.addrs):
                    url = f"https://{http[addr]}/v1/kv/gw{2 - i}"
                    async with session.get(url, ssl=ctx) as r:
                        seen.append((r.status, (await r.json())["value"]))
            return seen

        async def with_the_python_client() -> bytes | None:
            config = TlsConfig.from_args(
                str(client.cert), str(client.key), str(c.tls_files["ca"].cert)
            )
            async with Client(c.peers, group="kv", tls=config, deadline=30) as kv:
                await kv.put(b"py", b"tls")
                got = await kv.get(b"py")
                return None if got is None else got.value

        assert asyncio.run(with_the_python_client()) == b"tls"
        with pytest.raises(ValueError, match="not both"):
            Client(c.peers, tls=TlsConfig.from_args(
                str(client.cert), str(client.key), str(c.tls_files["ca"].cert)
            ), rpc=RpcClient())  # fmt: skip
        # pyjraft status over mutual TLS: through the RPC service and over HTTPS.
        for how in ([c.peers], [",".join(http[a] for a in c.addrs), "--http"]):
            st = subprocess.run(
                [sys.executable, "-m", "pyjraft.cli", "status", "--json", "--peers", *how, *tls],
                capture_output=True, text=True, timeout=60, check=False,
            )  # fmt: skip
            rows = json.loads(st.stdout)
            assert st.returncode == 0 and len(rows) == 3, (st.stdout, st.stderr)
            assert sorted(r["role"] for r in rows) == ["follower", "follower", "leader"]
        assert asyncio.run(through_the_gateways()) == [
            (200, 3), (200, 4), (200, 5), (200, "v2"), (200, "v1"), (200, "v0")
        ]  # fmt: skip
        # SIGUSR2: the describe dump, as one JSON line.
        first = c.addrs[0]
        c.procs[first].send_signal(signal.SIGUSR2)
        end = time.monotonic() + 10
        while not any(x.get("event") == "describe" for x in _json_lines(c.log_path(first))):
            assert time.monotonic() < end, "no describe line"
            time.sleep(0.05)
        lines = _json_lines(c.log_path(first))
        assert "with mutual TLS as pyjraft://node/" in lines[0]["msg"]
        node_lines = [x for x in lines if x["logger"] == "pyjraft.node"]
        assert node_lines and all(x["group"] == "kv" and x["node"] == first for x in node_lines)
        assert c.terminate(first) == 0
    finally:
        c.stop_all()
    ident = (tmp_path / f"data-{first.rsplit(':', 1)[1]}" / "kv" / "identity").read_bytes()
    assert b"kvtest" in ident


def test_kv_serve_exits_70_when_its_node_fails(tmp_path: Path) -> None:
    """Files may not grow any more (RLIMIT_FSIZE lowered from outside): the
    next write of the log or the store fails, the node stops, the server exits."""
    (port,) = free_ports(1)
    addr = f"127.0.0.1:{port}"
    data = tmp_path / "data"
    cmd = [sys.executable, "-m", "pyjraft.cli", "kv", "serve", "--data-dir", str(data)]
    cmd += ["--id", addr, "--peers", addr, "--election-timeout-ms", "200"]
    cmd += ["--log-format", "json", "--die-with-parent", "--commit-delay-ms", "0"]
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:

        async def fill() -> None:
            async with Client([addr], timeout=1.0, deadline=20.0) as kv:
                await kv.put(b"k", b"first")
                largest = max(f.stat().st_size for f in data.rglob("*") if f.is_file())
                _, hard = resource.prlimit(proc.pid, resource.RLIMIT_FSIZE)
                resource.prlimit(proc.pid, resource.RLIMIT_FSIZE, (largest + 4096, hard))
                for i in range(1000):
                    try:
                        await kv.put(b"k", b"x" * 1000 + str(i).encode())
                    except Exception:
                        return
            raise AssertionError("no write failed")

        asyncio.run(fill())
        assert proc.wait(30) == EXIT_NODE_FAILED
        assert proc.stderr is not None
        logged = [json.loads(x) for x in proc.stderr.read().splitlines() if x[:1] == b"{"]
        assert any(x.get("event") == "node_error" for x in logged)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        if proc.stderr is not None:
            proc.stderr.close()
