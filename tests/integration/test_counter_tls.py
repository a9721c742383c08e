"""Three real counter processes over mutual TLS; the plaintext rules of the
command line."""

from __future__ import annotations

import asyncio
import random
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from pyjraft.client import RaftClient
from pyjraft.examples.counter import COUNTER_SERVICE
from pyjraft.testing.ports import free_ports
from pyjraft.transport import RpcClient, RpcTimeoutError, TransportError
from tests.integration.cluster import CounterCluster

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def tls_cluster(tmp_path: Path) -> Iterator[CounterCluster]:
    c = CounterCluster(tmp_path, tls=True)
    try:
        c.start_all()
        yield c
    finally:
        c.stop_all()
        print(c.logs(15))


def test_a_counter_cluster_over_mutual_tls(tls_cluster: CounterCluster, seed: int) -> None:
    c = tls_cluster

    async def main() -> None:
        rpc = RpcClient(tls=c.client_tls)
        plain = RpcClient()
        try:
            leader = await c.wait_for_leader()
            clients = [
                RaftClient(c.group, c.addrs, rpc=rpc, deadline=20, rng=random.Random(seed + i))
                for i in range(10)
            ]

            async def worker(client: RaftClient) -> list[int]:
                return [int(await client.call(COUNTER_SERVICE, ["incr", 1])) for _ in range(10)]

            results = await asyncio.gather(*(worker(cl) for cl in clients))
            assert sorted(v for r in results for v in r) == list(range(1, 101)), f"seed {seed}"
            assert await clients[0].call(COUNTER_SERVICE, ["get"], idempotent=True) == 100
            st = await c.status(leader)
            assert st is not None
            for a in c.addrs:
                assert (await c.wait_caught_up(a, st["applied_index"]))["value"] == 100
            # Without a certificate nothing gets through.
            with pytest.raises((TransportError, RpcTimeoutError)):
                await plain.call(leader, COUNTER_SERVICE, ["incr", 1], timeout=2.0)
            assert await clients[0].call(COUNTER_SERVICE, ["get"], idempotent=True) == 100
        finally:
            await plain.close()
            await rpc.close()
            await c.close()

    asyncio.run(main())
    log = c.log_path(c.addrs[0]).read_text().splitlines()
    assert "listening on" in log[0] and "with mutual TLS as pyjraft://node/" in log[0]


def _server(tmp_path: Path, node_id: str, *extra: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "pyjraft.examples.counter", "server"]
    cmd += ["--data-dir", str(tmp_path / "d"), "--id", node_id, "--peers", node_id, *extra]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)


def test_a_server_without_certificates_refuses_a_non_loopback_address(tmp_path: Path) -> None:
    (port,) = free_ports(1)
    res = _server(tmp_path, f"0.0.0.0:{port}")
    assert res.returncode == 1
    assert "without TLS" in res.stderr and "--insecure-plaintext" in res.stderr


def test_a_server_certificate_must_name_its_id(tmp_path: Path) -> None:
    from pyjraft.certs import make_cluster_certs

    a, b = (f"127.0.0.1:{p}" for p in free_ports(2))
    files = make_cluster_certs(tmp_path / "tls", [a])
    res = _server(
        tmp_path,
        b,
        *("--tls-cert", str(files[a].cert), "--tls-key", str(files[a].key)),
        *("--tls-ca", str(files["ca"].cert)),
    )
    assert res.returncode == 1
    assert f"names pyjraft://node/{a}, not this node ({b})" in res.stderr
    res = _server(tmp_path, b, "--tls-cert", str(files[a].cert))
    assert res.returncode == 1 and "go together" in res.stderr


def test_pyjraft_certs_command(tmp_path: Path) -> None:
    from pyjraft.cli import main

    out = tmp_path / "certs"
    assert main(["certs", "--out", str(out), "--nodes", "127.0.0.1:7001", "--clients", "a"]) == 0
    names = sorted(p.name for p in out.iterdir())
    assert names == [
        "ca-key.pem",
        "ca.pem",
        "client-a-key.pem",
        "client-a.pem",
        "node-127.0.0.1_7001-key.pem",
        "node-127.0.0.1_7001.pem",
    ]
    assert main(["certs", "--out", str(out), "--nodes", "nonsense"]) == 1
