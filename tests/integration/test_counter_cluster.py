"""Three real counter processes on loopback: election, concurrent increments,
leader crash (SIGKILL) with no acknowledged write lost, restart and catch-up,
and garbage on the wire."""

from __future__ import annotations

import asyncio
import random
import socket
import struct
import time

import pytest

from pyjraft.client import RaftClient, UnknownOutcomeError
from pyjraft.examples.counter import COUNTER_SERVICE
from pyjraft.transport import RpcClient
from tests.integration.cluster import CounterCluster

pytestmark = pytest.mark.timeout(120)


def _client(c: CounterCluster, rpc: RpcClient, rng: random.Random) -> RaftClient:
    return RaftClient(
        c.group, c.addrs, rpc=rpc, timeout=2.0, deadline=20.0, rng=random.Random(rng.random())
    )


async def _incr(client: RaftClient) -> int:
    return int(await client.call(COUNTER_SERVICE, ["incr", 1]))


async def _get(client: RaftClient) -> int:
    return int(await client.call(COUNTER_SERVICE, ["get"], idempotent=True))


def test_election_and_1000_concurrent_increments(cluster: CounterCluster, seed: int) -> None:
    rng = random.Random(seed)

    async def main() -> None:
        rpc = RpcClient()
        try:
            leader = await cluster.wait_for_leader()
            clients = [_client(cluster, rpc, rng) for _ in range(50)]

            async def worker(client: RaftClient) -> list[int]:
                return [await _incr(client) for _ in range(20)]

            t0 = time.monotonic()
            results = await asyncio.wait_for(asyncio.gather(*(worker(c) for c in clients)), 60)
            elapsed = time.monotonic() - t0
            values = sorted(v for r in results for v in r)
            assert values == list(range(1, 1001)), f"seed {seed}"
            print(f"1000 increments by 50 clients in {elapsed:.2f} s (leader {leader})")
            assert await _get(clients[0]) == 1000
            # Every replica applies the same history.
            st = await cluster.status(leader)
            assert st is not None
            for a in cluster.addrs:
                rst = await cluster.wait_caught_up(a, st["applied_index"])
                assert rst["value"] == 1000, f"{a}: {rst}"
        finally:
            await rpc.close()
            await cluster.close()

    asyncio.run(main())


def test_leader_sigkill_no_acked_increment_lost_and_restart_catches_up(
    cluster: CounterCluster, seed: int
) -> None:
    rng = random.Random(seed)

    async def main() -> None:
        rpc = RpcClient()
        acked: list[int] = []
        unknown: list[str] = []
        stop = asyncio.Event()
        try:
            leader = await cluster.wait_for_leader()

            async def worker(client: RaftClient) -> None:
                while not stop.is_set():
                    try:
                        acked.append(await _incr(client))
                    except UnknownOutcomeError as e:
                        unknown.append(str(e))

            clients = [_client(cluster, rpc, rng) for _ in range(20)]
            tasks = [asyncio.create_task(worker(c)) for c in clients]

            async def until(n: int, what: str) -> None:
                end = time.monotonic() + 30
                while len(acked) < n:
                    assert time.monotonic() < end, f"stuck {what}: {len(acked)} acked, seed {seed}"
                    for t in tasks:
                        if t.done():
                            t.result()  # a worker failed: surface its error
                    await asyncio.sleep(0.02)

            await until(200, "before the kill")
            cluster.kill(leader)
            killed_at = len(acked)
            new_leader = await cluster.wait_for_leader(exclude=leader)
            assert new_leader != leader
            await until(killed_at + 200, "after the kill")
            stop.set()
            await asyncio.wait_for(asyncio.gather(*tasks), 30)

            final = await _get(clients[0])
            print(f"acked {len(acked)}, unknown {len(unknown)}, final {final}, seed {seed}")
            assert len(set(acked)) == len(acked), "two increments returned the same value"
            assert len(acked) <= final <= len(acked) + len(unknown), (
                f"acked {len(acked)} unknown {len(unknown)} final {final}, seed {seed}"
            )
            assert max(acked) <= final

            # The killed node restarts from its data directory and catches up.
            cluster.start(leader)
            st = await cluster.status(new_leader)
            assert st is not None
            rst = await cluster.wait_caught_up(leader, st["applied_index"], timeout=20)
            assert rst["value"] == final, f"restarted {leader}: {rst}"
            assert rst["role"] == "follower"
            # ... and the cluster keeps working with it.
            assert await _incr(clients[0]) == final + 1
        finally:
            stop.set()
            await rpc.close()
            await cluster.close()

    asyncio.run(main())


def _poke(addr: str, data: bytes, *, wait_close: bool = True) -> bool:
    """Send ``data`` to ``addr``; return whether the server closed the connection."""
    host, port = addr.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=2) as s:
        s.sendall(data)
        if not wait_close:
            return False
        s.settimeout(3)
        try:
            return s.recv(1) == b""
        except ConnectionResetError:
            return True
        except TimeoutError:
            return False


def test_garbage_on_the_wire_does_not_disturb_the_cluster(
    cluster: CounterCluster, seed: int
) -> None:
    rng = random.Random(seed)

    async def main() -> None:
        rpc = RpcClient()
        try:
            leader = await cluster.wait_for_leader()
            client = _client(cluster, rpc, rng)
            assert await _incr(client) == 1
            before = await cluster.status(leader)
            assert before is not None
            garbage = bytes(rng.getrandbits(8) for _ in range(4096))
            oversize = struct.pack(">IBB", 0xFFFFFFFF, 1, 1)
            bad_version = struct.pack(">IBB", 10, 99, 1) + b"\0" * 8
            bad_body = struct.pack(">IBB", 10, 1, 1) + b"\xc1" * 8  # 0xc1: never valid msgpack
            for addr in cluster.addrs:
                for data in (garbage, oversize, bad_version, bad_body):
                    closed = await asyncio.to_thread(_poke, addr, data)
                    assert closed, f"{addr} kept a connection open after {data[:8]!r}"
                # A truncated frame: a header announcing 100 bytes, then 10 and EOF.
                truncated = struct.pack(">IBB", 102, 1, 2) + b"x" * 10
                await asyncio.to_thread(_poke, addr, truncated, wait_close=False)
            for _ in range(50):
                await _incr(client)
            assert await _get(client) == 51
            for a in cluster.addrs:
                assert cluster.alive(a), f"{a} died"
                st = await cluster.wait_caught_up(a, before["applied_index"] + 51)
                assert st["value"] == 51
            after = await cluster.status(leader)
            assert after is not None and after["role"] == "leader", after
            # SIGTERM shuts a replica down gracefully; the other two carry on.
            follower = next(a for a in cluster.addrs if a != leader)
            assert await asyncio.to_thread(cluster.terminate, follower) == 0
            assert await _incr(client) == 52
        finally:
            await rpc.close()
            await cluster.close()

    asyncio.run(main())
