"""Snapshots with real processes: a 3-replica counter snapshots every 1,000
entries while clients write; a follower away for many writes catches up
through an install; a follower SIGKILLed mid-install recovers and finishes;
a leader killed mid-install wedges nobody. Every replica ends with the same
value and no acknowledged increment is lost.

``PYJRAFT_ITEST_SNAPSHOT_WRITES`` sets how many writes the away follower
misses (default 20,000).
"""

from __future__ import annotations

import asyncio
import os
import random
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pyjraft.client import RaftClient, UnknownOutcomeError
from pyjraft.examples.counter import COUNTER_SERVICE
from pyjraft.transport import RpcClient
from tests.integration.cluster import CounterCluster

pytestmark = pytest.mark.timeout(180)

AWAY_WRITES = int(os.environ.get("PYJRAFT_ITEST_SNAPSHOT_WRITES", "20000"))
SNAPSHOT_ARGS = [
    "--snapshot-every",
    "1000",
    "--snapshot-interval-s",
    "0",
    "--snapshot-log-margin",
    "200",
    "--snapshot-transfer-timeout-ms",
    "2000",
]
# Long installs: 8 MiB of padding in every snapshot, served at 2 MiB/s.
SLOW_INSTALL_ARGS = [
    *SNAPSHOT_ARGS,
    "--snapshot-padding-bytes",
    str(8 << 20),
    "--snapshot-throttle-bytes",
    str(2 << 20),
    "--snapshot-chunk-bytes",
    str(256 << 10),
]


@pytest.fixture
def snap_cluster(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[CounterCluster]:
    args = request.param
    c = CounterCluster(tmp_path, election_timeout_ms=600, node_args=lambda _: args)
    try:
        c.start_all()
        yield c
    finally:
        c.stop_all()
        print(c.logs(25))


class Writers:
    """Clients incrementing the counter until stopped; acknowledged results and
    unknown outcomes are kept."""

    def __init__(self, c: CounterCluster, seed: int, n: int = 32) -> None:
        self.c = c
        self.seed = seed
        self.rpc = RpcClient()
        rng = random.Random(seed)
        self.clients = [
            RaftClient(
                c.group,
                c.addrs,
                rpc=self.rpc,
                timeout=2.0,
                deadline=30.0,
                rng=random.Random(rng.random()),
            )
            for _ in range(n)
        ]
        self.acked: list[int] = []
        self.unknown: list[str] = []
        self.stop = asyncio.Event()
        self.tasks = [asyncio.create_task(self._run(cl)) for cl in self.clients]

    async def _run(self, client: RaftClient) -> None:
        while not self.stop.is_set():
            try:
                self.acked.append(int(await client.call(COUNTER_SERVICE, ["incr", 1])))
            except UnknownOutcomeError as e:
                self.unknown.append(str(e))

    async def until(self, n: int, what: str, timeout: float = 60) -> None:
        end = time.monotonic() + timeout
        while len(self.acked) < n:
            assert time.monotonic() < end, (
                f"stuck {what}: {len(self.acked)} acked, seed {self.seed}\n{self.c.logs()}"
            )
            for t in self.tasks:
                if t.done():
                    t.result()  # a writer failed: surface its error
            await asyncio.sleep(0.05)

    async def finish(self) -> int:
        """Stop writing; check the history against the final value; return it."""
        self.stop.set()
        await asyncio.wait_for(asyncio.gather(*self.tasks), 60)
        final = int(await self.clients[0].call(COUNTER_SERVICE, ["get"], idempotent=True))
        acked = self.acked
        assert len(set(acked)) == len(acked), "two increments returned the same value"
        assert len(acked) <= final <= len(acked) + len(self.unknown), (
            f"acked {len(acked)} unknown {len(self.unknown)} final {final}, seed {self.seed}"
        )
        assert max(acked) <= final
        return final

    async def close(self) -> None:
        self.stop.set()
        for t in self.tasks:
            t.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        await self.rpc.close()


async def poll(c: CounterCluster, addr: str, pred: Any, what: str, timeout: float = 60) -> Any:
    """Poll ``addr``'s status until ``pred(status)``; return that status."""
    end = time.monotonic() + timeout
    st = None
    while time.monotonic() < end:
        st = await c.status(addr)
        if st is not None and pred(st):
            return st
        await asyncio.sleep(0.05)
    raise AssertionError(f"{addr}: {what} within {timeout} s (last {st})\n{c.logs()}")


async def all_agree(c: CounterCluster, final: int) -> None:
    """Every replica applies up to the leader and holds ``final``."""
    leader = await c.wait_for_leader(timeout=20)
    st = await c.status(leader)
    assert st is not None
    for a in c.addrs:
        rst = await c.wait_caught_up(a, st["applied_index"], timeout=60)
        assert rst["value"] == final, f"{a}: {rst}"


def installing(st: dict[str, Any]) -> bool:
    inst = st["snapshot"]["installing"]
    return bool(inst) and inst["bytes_done"] > 0


@pytest.mark.parametrize("snap_cluster", [SNAPSHOT_ARGS], indirect=True)
def test_a_follower_away_for_many_writes_catches_up_through_an_install(
    snap_cluster: CounterCluster, seed: int
) -> None:
    c = snap_cluster

    async def main() -> None:
        leader = await c.wait_for_leader()
        w = Writers(c, seed)
        try:
            await w.until(1500, "before the stop")
            follower = next(a for a in c.addrs if a != leader)
            assert await asyncio.to_thread(c.terminate, follower) == 0
            await w.until(1500 + AWAY_WRITES, "while the follower is away", timeout=120)
            lst = await c.status(leader)
            assert lst is not None and lst["snapshot"]["saves"] >= 1
            assert lst["first_index"] > 1500, "the leader compacted past the follower"
            c.start(follower)
            st = await poll(
                c, follower, lambda s: s["snapshot"]["installs"] >= 1, "installs", timeout=60
            )
            await w.until(len(w.acked) + 500, "after the restart")
            final = await w.finish()
            await all_agree(c, final)
            st = await c.status(follower)
            assert st is not None
            print(f"acked {len(w.acked)}, final {final}, install {st['snapshot']['last_install']}")
            assert st["first_index"] > 1500, "the follower's log starts after the snapshot"
        finally:
            await w.close()
            await c.close()

    asyncio.run(main())


@pytest.mark.parametrize("snap_cluster", [SLOW_INSTALL_ARGS], indirect=True)
def test_a_follower_killed_mid_install_recovers_and_finishes(
    snap_cluster: CounterCluster, seed: int
) -> None:
    c = snap_cluster

    async def main() -> None:
        leader = await c.wait_for_leader()
        follower = next(a for a in c.addrs if a != leader)
        w = Writers(c, seed)
        try:
            await w.until(100, "before the stop")
            c.kill(follower)
            await w.until(1500, "while the follower is away")
            c.start(follower)
            await poll(c, follower, installing, "starts installing")
            c.kill(follower)  # SIGKILL, mid-install
            root = c.base / f"data-{follower.rsplit(':', 1)[1]}" / c.group / "snapshot"
            partial = [p.name for p in root.iterdir() if p.name.startswith("tmp-")]
            assert partial, "the kill left a partial copy"
            c.start(follower)
            st = await poll(
                c, follower, lambda s: s["snapshot"]["installs"] >= 1, "installs", timeout=90
            )
            assert st["snapshot"]["last_install"]["bytes_done"] > 8 << 20
            assert not [p for p in root.iterdir() if p.name in partial], "partial copy removed"
            final = await w.finish()
            await all_agree(c, final)
        finally:
            await w.close()
            await c.close()

    asyncio.run(main())


@pytest.mark.parametrize("snap_cluster", [SLOW_INSTALL_ARGS], indirect=True)
def test_a_leader_killed_mid_install_wedges_nobody(snap_cluster: CounterCluster, seed: int) -> None:
    c = snap_cluster

    async def main() -> None:
        leader = await c.wait_for_leader()
        follower = next(a for a in c.addrs if a != leader)
        w = Writers(c, seed)
        try:
            await w.until(100, "before the stop")
            c.kill(follower)
            await w.until(1500, "while the follower is away")
            c.start(follower)
            await poll(c, follower, installing, "starts installing")
            c.kill(leader)  # mid-install
            new_leader = await c.wait_for_leader(timeout=30, exclude=leader)
            assert new_leader != follower, "the lagging follower cannot win"
            await w.until(len(w.acked) + 300, "under the new leader")
            st = await poll(
                c,
                follower,
                lambda s: (
                    s["snapshot"]["last_install"] is not None
                    and s["snapshot"]["last_install"]["leader"] == new_leader
                ),
                "installs from the new leader",
                timeout=90,
            )
            assert st["leader"] == new_leader
            c.start(leader)
            final = await w.finish()
            await all_agree(c, final)
        finally:
            await w.close()
            await c.close()

    asyncio.run(main())
