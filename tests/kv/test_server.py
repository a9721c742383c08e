"""The server's parts: the history compactor, linearizable reads through
ReadIndex, and what a replica that does not lead answers."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from types import SimpleNamespace

import pytest

from pyjraft.client import DeadlineExceededError
from pyjraft.kv import Client
from pyjraft.kv.compactor import HistoryCompactor
from pyjraft.node import NotLeaderError
from pyjraft.testing.ports import free_ports
from pyjraft.transport import RpcClient
from tests.kv.conftest import ServerThread

pytestmark = pytest.mark.timeout(60)


def _writes(server: ServerThread, n: int, value: bytes = b"v") -> None:
    async def main() -> None:
        async with Client([server.addr], rng=random.Random(2)) as kv:
            for i in range(n):
                await kv.put(b"k%03d" % i, value)

    asyncio.run(main())


def test_compactor_bounds_history_by_revisions(start_server: Callable[..., ServerThread]) -> None:
    server = start_server(retain_revisions=5, max_history_bytes=0, compact_interval=3600)
    _writes(server, 20)
    assert server.server is not None and server.server.compactor is not None
    compactor = server.server.compactor
    assert compactor.target() == 15
    assert server.call(compactor.run_once()) == 15
    store = server.server.machine.store
    assert store.compact_revision == 15
    assert compactor.target() == 0  # within bounds now (10 % slack)
    _writes(server, 5)  # revision 25: 10 kept > 5 + 0
    assert compactor.target() == 20


def test_compactor_bounds_history_by_bytes(start_server: Callable[..., ServerThread]) -> None:
    server = start_server(retain_revisions=0, max_history_bytes=2000, compact_interval=3600)
    _writes(server, 30, b"x" * 100)
    assert server.server is not None and server.server.compactor is not None
    store = server.server.machine.store
    assert store.history_bytes > 2000
    target = server.call(server.server.compactor.run_once())
    assert target > 1
    assert store.history_bytes <= 2000 - 200
    assert server.server.compactor.target() == 0


def test_compactor_does_nothing_on_a_follower(tmp_path: object) -> None:
    store = SimpleNamespace(revision=100, compact_revision=0, history_bytes=0)
    node = SimpleNamespace(is_leader=False)
    c = HistoryCompactor(node, store, retain_revisions=10)  # type: ignore[arg-type]
    assert c.target() == 90
    assert asyncio.run(c.run_once()) == 0


def test_linearizable_reads_write_nothing_to_the_log(server: ServerThread) -> None:
    assert server.server is not None and server.server.node is not None
    node = server.server.node
    _writes(server, 3)

    async def main() -> None:
        proposals, last = node.stats["proposals"], node._core.log.last_index()
        async with Client([server.addr], rng=random.Random(3)) as kv:
            for read in ("linearizable", "lease"):
                got = await kv.get(b"k002", read=read)  # type: ignore[arg-type]
                assert got is not None and got.value == b"v"
        assert node.stats["proposals"] == proposals
        assert node._core.log.last_index() == last

    server.call(main())


def test_a_replica_that_does_not_lead(start_server: Callable[..., ServerThread]) -> None:
    nobody = f"127.0.0.1:{free_ports(1)[0]}"
    server = start_server(others=(nobody,))
    assert server.server is not None and server.server.node is not None
    node = server.server.node

    async def barrier() -> None:
        with pytest.raises(NotLeaderError):
            await node.read_index()

    server.call(barrier())

    async def main() -> None:
        rpc = RpcClient()
        try:
            for req in (
                {"op": "put", "key": b"k", "value": b"v"},
                {"op": "get", "key": b"k"},
                {"op": "get", "key": b"k", "read": "lease"},
            ):
                reply = await rpc.call(server.addr, "kv", req)
                assert reply["error"] == "not_leader", req
            # Serializable reads and watches are served locally.
            reply = await rpc.call(
                server.addr, "kv", {"op": "get", "key": b"k", "read": "serializable"}
            )
            assert reply == {"ok": {"kv": None, "revision": 0}}
            reply = await rpc.call(server.addr, "kv", {"op": "watch", "start": b"", "wait_ms": 1})
            assert reply["ok"]["events"] == [] and reply["ok"]["next"] == [1, 0]
            # The client keeps trying for a leader, and says nothing was applied.
            async with Client([server.addr], deadline=0.5, rng=random.Random(5)) as kv:
                with pytest.raises(DeadlineExceededError):
                    await kv.put(b"k", b"v")
        finally:
            await rpc.close()

    asyncio.run(main())
