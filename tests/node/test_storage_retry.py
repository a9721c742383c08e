"""A write that finds no file descriptor (`TransientStorageError`) is retried
with backoff: the node keeps running (a leader keeps leading), the messages
that depend on the write wait for it, and only a write failing for longer
than ``storage_retry_timeout_ms`` is fatal (issue 13, section 3)."""

from __future__ import annotations

import errno
import logging
from collections.abc import Sequence

import pytest

from pyjraft.core.types import Entry, HardState
from pyjraft.node import LeadershipLostError, Node, NodeState, NodeStorageError
from pyjraft.storage import TransientStorageError
from pyjraft.storage.memory import MemoryLogStorage, MemoryMetaStorage
from tests.node.harness import LocalCluster, run, wait_for


def _emfile(what: str) -> TransientStorageError:
    return TransientStorageError(f"{what}: [Errno {errno.EMFILE}] Too many open files")


class FlakyLog(MemoryLogStorage):
    """Raises `TransientStorageError` (before changing anything) for the next
    ``fail`` appends, or for as long as ``blocked``."""

    def __init__(self) -> None:
        super().__init__()
        self.fail = 0
        self.blocked = False
        self.refused = 0

    def append(self, entries: Sequence[Entry]) -> None:
        if self.blocked or self.fail > 0:
            self.fail = max(0, self.fail - 1)
            self.refused += 1
            raise _emfile("log/segment")
        super().append(entries)


class FlakyMeta(MemoryMetaStorage):
    """Raises `TransientStorageError` for the next ``fail`` saves."""

    def __init__(self) -> None:
        super().__init__()
        self.fail = 0

    def save(self, state: HardState) -> None:
        if self.fail > 0:
            self.fail -= 1
            raise _emfile("meta.tmp")
        super().save(state)


class Storages:
    """A flaky log and meta per node, made as the cluster starts it."""

    def __init__(self) -> None:
        self.logs: dict[str, FlakyLog] = {}
        self.metas: dict[str, FlakyMeta] = {}

    def __call__(self, nid: str) -> tuple[FlakyLog, FlakyMeta]:
        log, meta = FlakyLog(), FlakyMeta()
        self.logs[nid], self.metas[nid] = log, meta
        return log, meta


def test_a_leader_retries_its_append_and_keeps_leading(caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> None:
        s = Storages()
        async with LocalCluster(seed=21, storage=s) as c:
            leader = await c.leader()
            term = leader.term
            assert await leader.apply(b"5") == 5
            s.logs[leader.id].fail = 5
            assert await leader.apply(b"2") == 7
            assert leader.stats["storage_retries"] == 5
            assert leader.stats["storage_stalls"] == 1
            assert leader.is_leader and leader.term == term
            assert leader.state is NodeState.RUNNING
            assert leader.status()["storage_stalled_ms"] == 0.0
            events = [e["event"] for e in leader.events.recent]
            assert events[-2:] == ["storage_stalled", "storage_recovered"]

    with caplog.at_level(logging.INFO, logger="pyjraft.node"):
        run(main())
    text = caplog.text
    assert "failed for want of a file descriptor" in text
    assert "succeeded after 5 failed attempts" in text


def test_a_follower_acknowledges_only_once_its_write_succeeded() -> None:
    async def main() -> None:
        s = Storages()
        async with LocalCluster(seed=22, storage=s) as c:
            leader = await c.leader()
            assert await leader.apply(b"1") == 1
            stuck = next(n for n in c.nodes.values() if not n.is_leader)
            s.logs[stuck.id].blocked = True
            # The other follower and the leader commit it.
            assert await leader.apply(b"1") == 2
            await wait_for(lambda: stuck.stats["storage_retries"] >= 3, 5, "retries")
            last = leader.status()["last_index"]
            assert leader.status()["peers"][stuck.id]["match"] < last
            assert stuck.status()["storage_stalled_ms"] > 0
            assert stuck.state is NodeState.RUNNING
            s.logs[stuck.id].blocked = False
            await wait_for(
                lambda: leader.status()["peers"][stuck.id]["match"] == last, 5, "acknowledged"
            )
            await wait_for(lambda: c.machines[stuck.id].value == 2, 5, "applied")
            assert stuck.stats["storage_stalls"] == 1

    run(main())


def test_a_term_and_vote_save_is_retried_through_an_election() -> None:
    async def main() -> None:
        s = Storages()
        async with LocalCluster(seed=23, storage=s) as c:
            leader = await c.leader()
            assert await leader.apply(b"1") == 1
            for nid in c.nodes:
                if nid != leader.id:
                    s.metas[nid].fail = 3  # the next term change of each follower
            await c.stop(leader.id)
            new = await c.leader()
            assert new.id != leader.id and await new.apply(b"1") == 2
            retried = [n.stats["storage_retries"] for n in c.nodes.values()]
            assert sum(retried) >= 3 and all(n.state is NodeState.RUNNING for n in c.nodes.values())

    run(main())


def test_a_leaders_writer_thread_retries_too() -> None:
    async def main() -> None:
        s = Storages()
        async with LocalCluster(seed=24, storage=s, leader_write_thread=True) as c:
            leader = await c.leader()
            assert leader._writer is not None
            assert await leader.apply(b"3") == 3
            s.logs[leader.id].fail = 4
            assert await leader.apply(b"3") == 6
            await wait_for(lambda: leader.stats["storage_retries"] == 4, 5, "retries counted")
            assert leader.is_leader and leader.state is NodeState.RUNNING

    run(main())


def test_a_write_failing_past_the_timeout_is_fatal() -> None:
    async def main() -> None:
        s = Storages()
        async with LocalCluster(seed=25, storage=s, storage_retry_timeout_ms=200) as c:
            leader = await c.leader()
            assert await leader.apply(b"1") == 1
            s.logs[leader.id].blocked = True
            with pytest.raises(NodeStorageError, match="for want of a file descriptor"):
                await leader.apply(b"1")
            assert leader.state is NodeState.ERROR
            assert leader.status()["role"] == "error"
            assert s.logs[leader.id].refused >= 3

    run(main())


def test_shutdown_ends_a_retry() -> None:
    async def main() -> None:
        s = Storages()
        async with LocalCluster(seed=26, storage=s, storage_retry_timeout_ms=600_000) as c:
            leader = await c.leader()
            s.logs[leader.id].blocked = True
            pending = leader.apply(b"1")
            await wait_for(lambda: leader.stats["storage_retries"] >= 2, 5, "retrying")
            node: Node = leader
            await c.stop(leader.id)  # returns once the retry has ended
            assert node.state is NodeState.STOPPED
            with pytest.raises(LeadershipLostError, match="outcome unknown"):
                await pending

    run(main())
