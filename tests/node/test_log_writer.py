"""`LogWriter` (a leader's log writes on their own thread, group-committed) and
the node's pipelined leader writes with ``NodeOptions.leader_write_thread``."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from pyjraft.core.types import Entry, EntryType, Role
from pyjraft.node import NodeState, NodeStorageError, OverloadedError
from pyjraft.node.writer import LogWriter
from tests.node.harness import IDS, LocalCluster, run, wait_for


def entries(first: int, n: int, term: int = 1) -> list[Entry]:
    return [Entry(term, i, EntryType.NORMAL, b"x") for i in range(first, first + n)]


class BlockingAppend:
    """Records each append; the first one waits until `release`."""

    def __init__(self, fail: bool = False) -> None:
        self.calls: list[list[int]] = []
        self.started = threading.Event()
        self.go = threading.Event()
        self.fail = fail

    def __call__(self, batch: list[Entry]) -> None:
        self.calls.append([e.index for e in batch])
        if len(self.calls) == 1:
            self.started.set()
            assert self.go.wait(10), "never released"
        if self.fail:
            raise OSError("disk on fire")


@contextlib.asynccontextmanager
async def stuck_writer(
    fail: bool = False,
) -> AsyncIterator[tuple[LogWriter, BlockingAppend, asyncio.Future[None]]]:
    """A `LogWriter` whose first write (entry 1) is stuck in its append until
    ``append.go`` is set; yields the writer, the append and that write."""
    append = BlockingAppend(fail)
    w = LogWriter(asyncio.get_running_loop(), append, "test-writer")
    try:
        first = w.submit(entries(1, 1))
        await asyncio.to_thread(append.started.wait, 10)
        yield w, append, first
    finally:
        append.go.set()
        await asyncio.to_thread(w.close)


def test_queued_writes_share_one_append_and_finish_in_order() -> None:
    async def main() -> None:
        async with stuck_writer() as (w, append, first):
            done: list[int] = []
            later = [w.submit(entries(2 + 2 * k, 2)) for k in range(3)]
            for k, f in enumerate([first, *later]):
                f.add_done_callback(lambda _f, k=k: done.append(k))
            append.go.set()
            await asyncio.gather(first, *later)
            assert append.calls == [[1], [2, 3, 4, 5, 6, 7]], "one append for the queue"
            assert w.rounds == 2
            assert done == [0, 1, 2, 3], "resolved in submission order"

    run(main())


def test_writes_that_do_not_follow_each_other_are_appended_run_by_run() -> None:
    async def main() -> None:
        async with stuck_writer() as (w, append, first):
            rest = [w.submit(entries(2, 2)), w.submit(entries(2, 1, term=2)), w.submit([])]
            append.go.set()
            await asyncio.gather(first, *rest)
            assert append.calls == [[1], [2, 3], [2]]
            assert w.rounds == 2

    run(main())


def test_a_failed_round_fails_each_of_its_writes() -> None:
    async def main() -> None:
        async with stuck_writer(fail=True) as (w, append, first):
            second = w.submit(entries(2, 1))
            append.go.set()
            results = await asyncio.gather(first, second, return_exceptions=True)
            assert all(isinstance(r, OSError) for r in results), results
            assert w.rounds == 0

    run(main())


def test_calls_run_in_order_with_the_writes_and_fail_alone() -> None:
    async def main() -> None:
        async with stuck_writer() as (w, append, first):
            order: list[str] = []

            def ok() -> None:
                order.append(f"call after {append.calls[-1]}")

            def bad() -> None:
                raise OSError("no descriptor left")

            second = w.submit(entries(2, 1))
            call = w.submit_call(ok)
            third = w.submit(entries(3, 1))
            failing = w.submit_call(bad)
            fourth = w.submit(entries(4, 1))
            append.go.set()
            results = await asyncio.gather(
                first, second, call, third, failing, fourth, return_exceptions=True
            )
            assert results[:4] == [None] * 4 and results[5] is None
            assert isinstance(results[4], OSError), "a call's failure is its own"
            assert append.calls == [[1], [2], [3], [4]], "never merged across a call"
            assert order == ["call after [2]"]

    run(main())


def test_close_finishes_what_was_submitted() -> None:
    async def main() -> None:
        calls: list[list[int]] = []
        w = LogWriter(asyncio.get_running_loop(), lambda b: calls.append([e.index for e in b]), "w")
        futs = [w.submit(entries(1 + k, 1)) for k in range(5)]
        await asyncio.to_thread(w.close)
        await asyncio.gather(*futs)
        assert [i for c in calls for i in c] == [1, 2, 3, 4, 5]
        with pytest.raises(RuntimeError):
            w.submit(entries(6, 1))

    run(main())


def _block_appends(node: Any) -> BlockingAppend:
    """Make the node's log appends wait (the first one) until released."""
    gate = BlockingAppend()
    append = node._log.append

    def blocked(batch: list[Entry]) -> None:
        gate(batch)
        append(batch)

    node._log.append = blocked
    return gate


@contextlib.asynccontextmanager
async def stuck_leader(
    tmp_path: Path, seed: int, **options: Any
) -> AsyncIterator[tuple[LocalCluster, Any, BlockingAppend]]:
    """A cluster with ``leader_write_thread`` whose leader has applied one write
    (value 1) and whose log appends wait from now on (the first one) until
    ``gate.go``; yields the cluster, the leader and the gate."""
    async with LocalCluster(
        seed=seed, data_dir=str(tmp_path), leader_write_thread=True, **options
    ) as c:
        leader = await c.leader()
        assert await leader.apply(b"1") == 1
        # Applied once the followers made it durable: the leader's own write of
        # it may still be on the writer thread, counted as unwritten.
        await wait_for(lambda: not leader._writes, 10, "the leader's first write finishes")
        assert leader._unwritten == 0
        gate = _block_appends(leader)
        try:
            yield c, leader, gate
        finally:
            gate.go.set()


def test_a_leader_applies_what_its_followers_made_durable_while_its_write_waits(
    tmp_path: Path,
) -> None:
    async def main() -> None:
        async with stuck_leader(tmp_path, seed=31) as (c, leader, gate):
            try:
                first = leader.apply(b"2")
                await asyncio.to_thread(gate.started.wait, 10)
                # The leader's disk is stuck; the two followers are a majority.
                assert await asyncio.wait_for(leader.apply(b"3"), 10) == 6
                assert await first == 3
                assert leader._writes, "its own write is still in flight"
            finally:
                gate.go.set()
            await wait_for(lambda: not leader._writes, 10, "the leader's writes finish")
            assert leader._unwritten == 0
            assert leader.state is NodeState.RUNNING
            assert leader._log.last_index() == leader._core.log.last_index()
            assert gate.calls[1:] and gate.calls[0][-1] + 1 == gate.calls[1][0]
            for nid in IDS:
                await wait_for(lambda nid=nid: c.machines[nid].value == 6, 5, f"{nid} applies")

    run(main())


def test_a_deposed_leader_finishes_its_writes_before_it_writes_as_a_follower(
    tmp_path: Path,
) -> None:
    async def main() -> None:
        async with stuck_leader(tmp_path, seed=32) as (c, old, gate):
            c.net.isolate(old.id)
            try:
                stranded = old.apply(b"100")  # never reaches a majority
                await asyncio.to_thread(gate.started.wait, 10)
                new = await wait_for(
                    lambda: next(
                        (n for n in c.nodes.values() if n.is_leader and n is not old), None
                    ),
                    10,
                    "a new leader",
                )
                assert await asyncio.wait_for(new.apply(b"2"), 10) == 3
                c.net.heal()
                # The old leader steps down and must rewrite its tail as a follower,
                # but its stuck write goes first.
                await wait_for(lambda: old._core.role is Role.FOLLOWER, 10, "old steps down")
            finally:
                gate.go.set()
            with pytest.raises(Exception) as info:
                await asyncio.wait_for(stranded, 10)
            assert not isinstance(info.value, NodeStorageError)
            assert await asyncio.wait_for(new.apply(b"3"), 10) == 6
            for nid in IDS:
                await wait_for(lambda nid=nid: c.machines[nid].value == 6, 10, f"{nid} applies")
            assert old.state is NodeState.RUNNING
            assert old._unwritten == 0
            terms = [e.term for e in old._log.entries(1, old._log.last_index() + 1)]
            new_terms = [e.term for e in new._log.entries(1, new._log.last_index() + 1)]
            assert terms == new_terms, "the old leader's log matches the new leader's"

    run(main())


def test_a_leader_whose_disk_is_stuck_refuses_writes_beyond_max_pending_proposals(
    tmp_path: Path,
) -> None:
    # Its followers commit and it applies, so nothing waits for a commit; but
    # every entry stays in its memory until its own write is done. Without a
    # bound, a stuck disk grows the leader without limit.
    async def main() -> None:
        async with stuck_leader(tmp_path, seed=33, max_pending_proposals=20) as (_c, leader, gate):
            try:
                accepted = 0
                with pytest.raises(OverloadedError):
                    for _ in range(200):
                        await asyncio.wait_for(leader.apply(b"1"), 10)
                        accepted += 1
                assert accepted == 20, "each accepted write is one unwritten entry"
                assert leader.stats["overloaded"] == 1
            finally:
                gate.go.set()
            await wait_for(lambda: not leader._writes, 10, "the leader's writes finish")
            assert leader._unwritten == 0
            assert await asyncio.wait_for(leader.apply(b"1"), 10) == accepted + 2

    run(main())
