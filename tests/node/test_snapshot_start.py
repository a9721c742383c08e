"""Starting from a snapshot: the newest valid one, a damaged one set aside, a
log behind or at odds with the snapshot, a machine that persists itself."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pyjraft.core.types import Entry, EntryType
from pyjraft.node.snapshot_start import SnapshotRecoveryError
from pyjraft.storage.segment_log import SegmentLogStorage
from tests.node.harness import run, wait_for
from tests.node.snap_harness import SnapMachine, apply_n, snapshot_dirs, start_solo, stop

OFF = {"snapshot_every_entries": 0, "snapshot_interval_s": 0}


async def two_snapshots(tmp_path: Path, **options: object) -> tuple[int, int, int]:
    """A solo node with snapshots after 20 and 40 writes, then 5 more; returns
    the two snapshot indexes and the last index."""
    node = await start_solo(tmp_path, SnapMachine(), **OFF, **options)  # type: ignore[arg-type]
    await apply_n(node, 20)
    a = (await node.snapshot()).index
    await apply_n(node, 20)
    b = (await node.snapshot()).index
    await apply_n(node, 5)
    last = node.applied_index
    await stop(node)
    return a, b, last


def flip_a_byte(tmp_path: Path, index: int) -> None:
    path = tmp_path / "default" / "snapshot" / f"snapshot-{index:020d}" / "data" / "value"
    data = bytearray(path.read_bytes())
    data[0] ^= 0x01
    path.write_bytes(bytes(data))


def test_a_damaged_newest_snapshot_is_set_aside_and_the_previous_one_used(
    tmp_path: Path,
) -> None:
    async def main() -> None:
        # A margin as large as the distance between snapshots: the log still
        # reaches back to the older one.
        a, b, last = await two_snapshots(tmp_path, snapshot_log_margin=1000)
        flip_a_byte(tmp_path, b)
        m = SnapMachine()
        node = await start_solo(tmp_path, m, **OFF)
        try:
            await wait_for(lambda: m.value == 45, 10, "replays from the older snapshot")
            assert m.loaded == [(a, 20)]
            assert m.applied == list(range(a + 1, last + 1))
            names = snapshot_dirs(tmp_path)
            assert any(n.startswith(f"corrupt-snapshot-{b:020d}") for n in names), names
        finally:
            await stop(node)

    run(main())


def test_a_damaged_newest_snapshot_the_log_does_not_reach_back_from_stops_the_start(
    tmp_path: Path,
) -> None:
    async def main() -> None:
        # Margin 0 and tiny segments: the log is compacted up to the newest.
        a, b, _ = await two_snapshots(tmp_path, snapshot_log_margin=0, segment_bytes=512)
        log = SegmentLogStorage(str(tmp_path / "default" / "log"))
        first = log.first_index()
        log.close()
        assert a < first - 1, "the log no longer follows the older snapshot"
        flip_a_byte(tmp_path, b)
        with pytest.raises(SnapshotRecoveryError, match="are gone from this replica"):
            await start_solo(tmp_path, SnapMachine(), **OFF)

    run(main())


def test_a_log_that_ends_before_the_snapshot_is_reset_after_it(tmp_path: Path) -> None:
    async def main() -> None:
        node = await start_solo(tmp_path, SnapMachine(), **OFF, snapshot_log_margin=1000)
        await apply_n(node, 20)
        snap = await node.snapshot()
        await stop(node)
        # As a pipelined leader that applied (and snapshotted) what its
        # followers made durable before its own write landed, then crashed.
        log = SegmentLogStorage(str(tmp_path / "default" / "log"))
        log.truncate_suffix(snap.index - 5)
        log.close()
        m = SnapMachine()
        node = await start_solo(tmp_path, m, **OFF)
        try:
            assert m.loaded == [(snap.index, 20)]
            assert node.status()["first_index"] == snap.index + 1
            assert await apply_n(node, 1) == [21]
        finally:
            await stop(node)

    run(main())


def test_a_log_at_odds_with_the_snapshot_is_reset_after_it(tmp_path: Path) -> None:
    async def main() -> None:
        node = await start_solo(tmp_path, SnapMachine(), **OFF, snapshot_log_margin=1000)
        await apply_n(node, 20)
        snap = await node.snapshot()
        await stop(node)
        # As a follower that published its leader's snapshot and crashed before
        # resetting its log: another term at the snapshot's index, and after.
        log = SegmentLogStorage(str(tmp_path / "default" / "log"))
        log.truncate_suffix(snap.index - 1)
        stale = [
            Entry(snap.term + 5, i, EntryType.NORMAL, b"1000")
            for i in range(snap.index, snap.index + 3)
        ]
        log.append(stale)
        log.close()
        m = SnapMachine()
        node = await start_solo(tmp_path, m, **OFF)
        try:
            assert m.loaded == [(snap.index, 20)]
            assert node.status()["first_index"] == snap.index + 1
            assert m.value == 20, "the stale entries were never applied"
        finally:
            await stop(node)

    run(main())


class DurableMachine(SnapMachine):
    """Claims to hold its state durably up to ``durable`` (as an LMDB machine
    would); a fresh one starts from ``value`` at that index."""

    def __init__(self, durable: int, value: int) -> None:
        super().__init__()
        self.durable = durable
        self.value = value

    def last_applied_index(self) -> int:
        return self.durable


def test_a_machine_holding_more_than_the_snapshot_is_not_loaded(tmp_path: Path) -> None:
    async def main() -> None:
        node = await start_solo(tmp_path, SnapMachine(), **OFF, snapshot_log_margin=1000)
        await apply_n(node, 20)
        snap = await node.snapshot()
        await apply_n(node, 10)
        last = node.applied_index
        await stop(node)
        m = DurableMachine(last - 3, 27)
        node = await start_solo(tmp_path, m, **OFF)
        try:
            await wait_for(lambda: m.value == 30, 10, "applies after its own index")
            assert m.loaded == [], "its own state is newer than the snapshot"
            assert m.applied == list(range(last - 2, last + 1))
            assert snap.index < last - 3
        finally:
            await stop(node)

    run(main())


def test_a_machine_holding_less_than_the_snapshot_is_loaded(tmp_path: Path) -> None:
    async def main() -> None:
        node = await start_solo(tmp_path, SnapMachine(), **OFF, snapshot_log_margin=1000)
        await apply_n(node, 20)
        snap = await node.snapshot()
        await apply_n(node, 10)
        await stop(node)
        m = DurableMachine(3, 2)
        node = await start_solo(tmp_path, m, **OFF)
        try:
            await wait_for(lambda: m.value == 30, 10, "loads, then applies after it")
            assert m.loaded == [(snap.index, 20)]
            assert m.applied[0] == snap.index + 1
        finally:
            await stop(node)

    run(main())


def test_a_restart_removes_an_interrupted_save(tmp_path: Path) -> None:
    async def main() -> None:
        node = await start_solo(tmp_path, SnapMachine(), **OFF)
        await apply_n(node, 5)
        await stop(node)
        # What a crash in the middle of writing a snapshot leaves.
        tmp = tmp_path / "default" / "snapshot" / f"tmp-{6:020d}-deadbeef" / "data"
        tmp.mkdir(parents=True)
        (tmp / "value").write_text("99")
        m = SnapMachine()
        node = await start_solo(tmp_path, m, **OFF)
        try:
            await wait_for(lambda: m.value == 5, 10, "replays the log")
            assert m.loaded == []
            assert not [n for n in snapshot_dirs(tmp_path) if n.startswith("tmp-")]
        finally:
            await stop(node)

    run(main())


def test_no_snapshot_and_a_compacted_log_stops_the_start(tmp_path: Path) -> None:
    async def main() -> None:
        node = await start_solo(tmp_path, SnapMachine(), **OFF, snapshot_log_margin=0)
        await apply_n(node, 200)
        await node.snapshot()
        await stop(node)
        root = tmp_path / "default" / "snapshot"
        for name in os.listdir(root):
            if name.startswith("snapshot-"):
                os.rename(root / name, root / f"moved-{name}")
        log = SegmentLogStorage(str(tmp_path / "default" / "log"))
        log.truncate_prefix(50)
        log.close()
        with pytest.raises(SnapshotRecoveryError, match="no valid snapshot"):
            await start_solo(tmp_path, SnapMachine(), **OFF)

    run(main())
