"""Three real KV replica processes on loopback: operations through the client
and the command line, and a watch and a writer that carry on across a leader
kill (SIGKILL), with no acknowledged write lost or event missed."""

from __future__ import annotations

import asyncio
import os
import random
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pyjraft.client import UnknownOutcomeError
from pyjraft.kv import Client, Compare, Event, KvStore, Op
from tests.kv.cluster import KvCluster

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[KvCluster]:
    c = KvCluster(tmp_path, group="kv")
    try:
        c.start_all()
        yield c
    finally:
        c.stop_all()
        print(c.logs(15))


def _cli(c: KvCluster, *args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "pyjraft.cli", "kv", *args, "--peers", c.peers],
        capture_output=True,
        timeout=60,
        check=False,
    )


def test_operations_through_the_client_and_every_replica_agrees(
    cluster: KvCluster, seed: int
) -> None:
    async def main() -> None:
        leader = await cluster.wait_for_leader()
        # A follower first: the client is told where the leader is and follows.
        peers = [a for a in cluster.addrs if a != leader] + [leader]
        async with Client(peers, rng=random.Random(seed), deadline=20) as kv:
            await kv.put(b"first", b"1")
            assert kv.raft.leader == leader and kv.raft.stats["redirects"] == 1
            await kv.delete(b"first")
            await asyncio.gather(*(kv.put(b"k/%03d" % i, b"v%d" % i) for i in range(200)))
            assert (await kv.get(b"k/007")).value == b"v7"  # type: ignore[union-attr]
            s = await kv.scan(prefix=b"k/", limit=5, reverse=True)
            assert [x.key for x in s.kvs] == [b"k/%03d" % i for i in (199, 198, 197, 196, 195)]
            assert s.revision == 202
            t = await kv.txn(
                [Compare(b"k/000", "version", "==", 1)],
                [Op.delete_range(prefix=b"k/1"), Op.put(b"done", b"1")],
            )
            assert t.succeeded and t.results[0].deleted == 100
            st = await kv.status()
            leader_applied = st["applied_index"]
        for a in cluster.addrs:
            st = await cluster.wait_caught_up(a, leader_applied)
            assert st["kv"]["revision"] == 203, a
            assert st["kv"]["keys"] == 101, a
        await cluster.close()

    asyncio.run(main())
    # SIGTERM: a graceful stop commits what the store held uncommitted.
    follower = cluster.addrs[0]
    assert cluster.terminate(follower) == 0
    store = KvStore(str(cluster.base / f"data-{follower.rsplit(':', 1)[1]}" / "kv" / "kv"))
    assert store.revision == 203 and store.durable_index > 0
    store.close()
    cluster.start(follower)
    done = _cli(cluster, "get", "done")
    assert (done.returncode, done.stdout) == (0, b"1\n"), done.stderr
    absent = _cli(cluster, "get", "k/150")
    assert (absent.returncode, absent.stdout) == (1, b""), absent.stderr


def test_watch_and_writes_continue_across_a_leader_kill(cluster: KvCluster, seed: int) -> None:
    rng = random.Random(seed)

    async def main() -> None:
        leader = await cluster.wait_for_leader()
        # The leader first: the watch starts on the replica about to die.
        peers = [leader] + [a for a in cluster.addrs if a != leader]
        kv = Client(peers, rng=random.Random(rng.random()), deadline=20, watch_wait=1.0)
        watch = kv.watch(prefix=b"w/", start_revision=1)
        acked: dict[bytes, int] = {}
        unknown: set[bytes] = set()
        events: list[Event] = []
        stop = asyncio.Event()

        async def writer() -> None:
            i = 0
            while not stop.is_set():
                key = b"w/%05d" % i
                i += 1
                try:
                    acked[key] = (await kv.put(key, b"x")).revision
                except UnknownOutcomeError:
                    unknown.add(key)

        async def watcher() -> None:
            async for ev in watch:
                events.append(ev)

        watching = asyncio.ensure_future(watcher())
        writing = asyncio.ensure_future(writer())
        while len(acked) < 50 or not events:
            await asyncio.sleep(0.01)
        # The leader's store has committed some of it (its restart skips that).
        while not ((await cluster.status(leader)) or {"kv": {}})["kv"].get("durable_index"):
            await asyncio.sleep(0.01)
        assert watch.server == leader
        t0 = time.monotonic()
        cluster.kill(leader)
        before = len(acked)
        new_leader = await cluster.wait_for_leader(exclude=leader)
        while len(acked) < before + 50:  # the client found the new leader
            await asyncio.sleep(0.01)
        print(
            f"leader {leader} killed; {new_leader} leads; writes resumed after "
            f"{time.monotonic() - t0:.2f} s; {len(unknown)} outcomes unknown"
        )
        stop.set()
        await writing
        last = max(acked.values())
        end = time.monotonic() + 30
        while not (events and events[-1].revision >= last):
            assert not watching.done(), watching.exception()
            assert time.monotonic() < end, f"the watch stopped at {events[-1:]}, seed {seed}"
            await asyncio.sleep(0.01)
        watching.cancel()
        assert watch.server != leader
        # Every acknowledged write was seen, in order, exactly once.
        revisions = [e.revision for e in events]
        assert revisions == sorted(revisions) and len(set(revisions)) == len(revisions)
        seen = {e.kv.key: e.revision for e in events}
        for key, rev in acked.items():
            assert seen.get(key) == rev, (key, rev, seed)
        assert set(seen) <= set(acked) | unknown
        # The killed replica restarts from its store: it skips what it holds.
        cluster.start(leader)
        lst = await kv.status()
        st = await cluster.wait_caught_up(leader, lst["applied_index"])
        assert st["kv"]["revision"] == max(seen.values()), st["kv"]
        # It executed fewer entries than the log holds (whether the node did not
        # hand it what its store held, or it skipped them).
        executed = st["kv"]["machine"]["entries"] - st["kv"]["machine"]["skipped"]
        everything = lst["kv"]["machine"]["entries"] - lst["kv"]["machine"]["skipped"]
        assert 0 < executed < everything, (st["kv"]["machine"], lst["kv"]["machine"])
        await kv.close()
        await cluster.close()

    asyncio.run(main())
    assert os.path.isdir(cluster.base)
