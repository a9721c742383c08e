"""Log compaction after snapshots: its bounds, its one-writer rule with the
leader's writer thread, and its storage errors (retried or fatal)."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest

from pyjraft.core.types import Entry, EntryType
from pyjraft.node import NodeState, NodeStorageError
from pyjraft.node import snapshots as snapshots_module
from pyjraft.node.snapshots import CompactedLogView
from pyjraft.storage import MemoryLogStorage, StorageError, TransientStorageError
from tests.node.harness import IDS, LocalCluster, run, wait_for
from tests.node.snap_harness import SnapMachine, apply_n, segment_files, start_solo, stop


def segment_firsts(data_dir: Path) -> list[int]:
    return [int(p.stem) for p in segment_files(data_dir)]


def test_the_log_keeps_the_margin_plus_at_most_one_segment(tmp_path: Path) -> None:
    margin = 40

    async def main() -> None:
        m = SnapMachine()
        node = await start_solo(
            tmp_path,
            m,
            snapshot_every_entries=100,
            snapshot_interval_s=0,
            snapshot_log_margin=margin,
            segment_bytes=1024,
        )
        try:
            counts = []
            for _ in range(12):
                await apply_n(node, 100, b"12345678")
                await wait_for(lambda: not node.status()["snapshot"]["saving"], 10, "save ends")
                snap = node.status()["snapshot"]["index"]
                first = node.status()["first_index"]
                first_kept = snap - margin + 1
                # Never inside the margin...
                assert first <= first_kept, (first, snap)
                # ...and no whole segment before it is kept: only the one holding it.
                firsts = segment_firsts(tmp_path)
                assert len([f for f in firsts if f <= first_kept]) <= 1, (firsts, first_kept)
                counts.append(len(firsts))
            # Bounded: what follows the snapshot plus margin plus one segment.
            assert max(counts[4:]) <= max(counts[:4]) + 1, counts
        finally:
            await stop(node)

    run(main())


@pytest.mark.parametrize("leader_write_thread", [False, True])
def test_compaction_under_load_with_and_without_the_writer_thread(
    tmp_path: Path, leader_write_thread: bool
) -> None:
    async def main() -> None:
        c = LocalCluster(
            seed=21,
            data_dir=str(tmp_path),
            machine=SnapMachine,
            leader_write_thread=leader_write_thread,
            snapshot_every_entries=50,
            snapshot_interval_s=0,
            snapshot_log_margin=10,
            segment_bytes=2048,
        )
        async with c:
            leader = await c.leader()
            results = await apply_n(leader, 1500)
            assert sorted(results) == list(range(1, 1501))
            for nid in IDS:
                await wait_for(lambda nid=nid: c.machines[nid].value == 1500, 10, f"{nid}")
                node = c.nodes[nid]
                assert node.state is NodeState.RUNNING
                st = node.status()
                assert st["snapshot"]["compactions"] >= 1, (nid, st["snapshot"])
                assert st["first_index"] > 1

    run(main())


class FlakyTruncate:
    """Wraps ``log.truncate_prefix``: raises ``error`` on the first ``n`` calls."""

    def __init__(self, log: Any, error: BaseException, n: int = 1) -> None:
        self.real = log.truncate_prefix
        self.error = error
        self.left = n
        self.calls = 0
        self.threads: list[str] = []
        log.truncate_prefix = self

    def __call__(self, first_kept: int) -> None:
        self.calls += 1
        self.threads.append(threading.current_thread().name)
        if self.left > 0:
            self.left -= 1
            raise self.error
        self.real(first_kept)


@pytest.mark.parametrize("leader_write_thread", [False, True])
def test_a_transient_storage_error_in_compaction_is_retried(
    tmp_path: Path, leader_write_thread: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(snapshots_module, "_COMPACT_RETRY_S", 0.01)

    async def main() -> None:
        node = await start_solo(
            tmp_path,
            SnapMachine(),
            snapshot_every_entries=0,
            snapshot_interval_s=0,
            snapshot_log_margin=0,
            segment_bytes=512,
            leader_write_thread=leader_write_thread,
        )
        try:
            flaky = FlakyTruncate(node._log, TransientStorageError("EMFILE"))
            await apply_n(node, 200)
            await node.snapshot()
            await wait_for(
                lambda: node.status()["snapshot"]["compactions"] == 1, 10, "compacted on retry"
            )
            assert node.status()["snapshot"]["compaction_retries"] == 1
            assert flaky.calls == 2
            # On the writer thread, in order with the writes; else on the loop's.
            want = "raft-writer-default" if leader_write_thread else "MainThread"
            assert flaky.threads == [want, want]
            assert node.state is NodeState.RUNNING
            assert node.status()["first_index"] > 1
            assert await apply_n(node, 1) == [201]
        finally:
            await stop(node)

    run(main())


@pytest.mark.parametrize("leader_write_thread", [False, True])
def test_any_other_storage_error_in_compaction_stops_the_node(
    tmp_path: Path, leader_write_thread: bool
) -> None:
    async def main() -> None:
        node = await start_solo(
            tmp_path,
            SnapMachine(),
            snapshot_every_entries=0,
            snapshot_interval_s=0,
            snapshot_log_margin=0,
            segment_bytes=512,
            leader_write_thread=leader_write_thread,
        )
        try:
            FlakyTruncate(node._log, StorageError("log_meta write failed"))
            await apply_n(node, 200)
            await node.snapshot()
            await wait_for(lambda: node.state is NodeState.ERROR, 10, "the node stops")
            assert isinstance(node.error, NodeStorageError)
            with pytest.raises(NodeStorageError):
                await node.apply(b"1")
        finally:
            await stop(node)

    run(main())


def test_the_cores_view_of_the_log_starts_where_compaction_will_cut() -> None:
    storage = MemoryLogStorage()
    storage.append([Entry(1, i, EntryType.NORMAL, b"x") for i in range(1, 101)])
    view = CompactedLogView(storage)
    assert view.first_index() == 1
    view.first_kept = 60  # raised on the loop before the writer thread truncates
    assert view.first_index() == 60
    assert view.term(59) == 1 and view.entries(60, 62)[0].index == 60
    storage.truncate_prefix(60)
    assert view.first_index() == 60
    storage.reset(200, 3)
    assert view.first_index() == 200, "storage ahead of the view: storage wins"
