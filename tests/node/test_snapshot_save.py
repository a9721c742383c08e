"""Taking snapshots: the save flow (capture on the loop, write off it), the
triggers, failures, and what a restart loads."""

from __future__ import annotations

import asyncio
import os
import threading
from pathlib import Path

import pytest

from pyjraft.node import NodeState, SnapshotsUnavailableError
from tests.node.harness import CounterMachine, run, wait_for
from tests.node.snap_harness import (
    AsyncSnapMachine,
    SnapMachine,
    apply_n,
    snapshot_dirs,
    start_solo,
    stop,
)

OFF = {"snapshot_every_entries": 0, "snapshot_interval_s": 0}


@pytest.mark.parametrize("machine_class", [SnapMachine, AsyncSnapMachine])
def test_applies_go_on_while_the_worker_writes_the_snapshot(
    tmp_path: Path, machine_class: type[SnapMachine]
) -> None:
    async def main() -> None:
        m = machine_class()
        m.gate = threading.Event()
        node = await start_solo(tmp_path, m, **OFF)
        try:
            await apply_n(node, 10)
            at = node.applied_index
            saving = asyncio.ensure_future(node.snapshot())
            # The writer is now stuck on its worker thread, holding the gate.
            await asyncio.to_thread(m.writing.wait, 10)
            assert m.saved == [(at, 10)], "captured on the loop, at the applied index"
            # Applies go on meanwhile: these complete while the writer is blocked.
            results = await apply_n(node, 10)
            assert results == list(range(11, 21))
            assert not saving.done() and node.status()["snapshot"]["saving"]
            m.gate.set()
            manifest = await saving
            assert manifest.index == at
            assert manifest.user_meta == b"counter:10"
            snap_dir = tmp_path / "default" / "snapshot" / f"snapshot-{at:020d}" / "data"
            assert (snap_dir / "value").read_text() == "10", "the state at the index"
            assert node.status()["snapshot"]["index"] == at
            assert node.events.counters["snapshots_saved"] == 1
        finally:
            await stop(node)

    run(main())


def test_restart_loads_the_snapshot_and_replays_only_the_log_after_it(tmp_path: Path) -> None:
    async def main() -> None:
        m = SnapMachine()
        node = await start_solo(tmp_path, m, **OFF)
        await apply_n(node, 30)
        manifest = await node.snapshot()
        await apply_n(node, 5)
        last = node.applied_index
        await stop(node)

        m2 = SnapMachine()
        node = await start_solo(tmp_path, m2, **OFF)
        try:
            await wait_for(lambda: m2.value == 35, 10, "replays after the snapshot")
            assert m2.loaded == [(manifest.index, 30)]
            # Only what follows the snapshot is applied again.
            assert m2.applied == list(range(manifest.index + 1, last + 1))
        finally:
            await stop(node)

    run(main())


def test_a_snapshot_every_n_entries(tmp_path: Path) -> None:
    async def main() -> None:
        m = SnapMachine()
        node = await start_solo(tmp_path, m, snapshot_every_entries=100, snapshot_interval_s=0)
        try:
            for _ in range(5):
                await apply_n(node, 60)
                await wait_for(lambda: not node.status()["snapshot"]["saving"], 10, "save ends")
            indexes = [i for i, _ in m.saved]
            assert len(indexes) >= 2, indexes
            prev = 0
            for i in indexes:
                assert i - prev >= 100, f"taken after {i - prev} entries: {indexes}"
                prev = i
            assert node.applied_index - prev < 100 + 100, "and no later than a batch after"
        finally:
            await stop(node)

    run(main())


def test_a_snapshot_on_the_interval_only_when_something_was_applied(tmp_path: Path) -> None:
    async def main() -> None:
        m = SnapMachine()
        node = await start_solo(tmp_path, m, snapshot_every_entries=0, snapshot_interval_s=0.02)
        try:
            await apply_n(node, 3)
            last = node.applied_index
            await wait_for(
                lambda: node.status()["snapshot"]["index"] == last, 10, "a save on the timer"
            )
            saves = len(m.saved)
            snaps = node._snapshots
            fired = 0
            timer = snaps._on_timer

            def counting() -> None:
                nonlocal fired
                fired += 1
                timer()

            snaps._on_timer = counting  # type: ignore[method-assign]
            await wait_for(lambda: fired >= 3, 10, "the timer fires on")
            assert len(m.saved) == saves, "nothing applied since: no new snapshot"
            await apply_n(node, 1)
            await wait_for(lambda: len(m.saved) > saves, 10, "a new one after an apply")
        finally:
            await stop(node)

    run(main())


def test_on_demand_with_nothing_new_returns_the_newest_without_saving(tmp_path: Path) -> None:
    async def main() -> None:
        m = SnapMachine()
        node = await start_solo(tmp_path, m, **OFF)
        try:
            await apply_n(node, 5)
            first = await node.snapshot()
            again = await node.snapshot()
            assert again == first
            assert len(m.saved) == 1
        finally:
            await stop(node)

    run(main())


def test_never_two_snapshots_at_once(tmp_path: Path) -> None:
    async def main() -> None:
        m = SnapMachine()
        m.gate = threading.Event()
        node = await start_solo(tmp_path, m, snapshot_every_entries=10, snapshot_interval_s=0)
        try:
            await apply_n(node, 10)
            await asyncio.to_thread(m.writing.wait, 10)
            # Far past the count again, asked for by hand too: all wait.
            await apply_n(node, 50)
            second = asyncio.ensure_future(node.snapshot())
            await apply_n(node, 5)
            assert len(m.saved) == 1 and not second.done()
            m.gate.set()
            manifest = await second
            assert manifest.index > m.saved[0][0]
            assert m.max_writers_running == 1
        finally:
            await stop(node)

    run(main())


@pytest.mark.parametrize("where", ["capture", "write"])
def test_a_failed_save_is_logged_and_the_node_goes_on(tmp_path: Path, where: str) -> None:
    async def main() -> None:
        m = SnapMachine()
        if where == "capture":
            m.fail_save = RuntimeError("cannot capture")
        else:
            m.fail_write = OSError("disk full")
        node = await start_solo(tmp_path, m, **OFF)
        try:
            await apply_n(node, 5)
            with pytest.raises((RuntimeError, OSError)):
                await node.snapshot()
            assert node.state is NodeState.RUNNING
            assert node.events.counters["snapshot_save_failures"] == 1
            assert node.events.recent[-1]["event"] == "snapshot_save_failed"
            assert snapshot_dirs(tmp_path) == ["snapshot.lock"], "nothing left behind"
            m.fail_save = m.fail_write = None
            assert await apply_n(node, 1) == [6]
            manifest = await node.snapshot()
            assert manifest.index == node.applied_index
        finally:
            await stop(node)

    run(main())


def test_a_machine_without_on_snapshot_save_never_snapshots(tmp_path: Path) -> None:
    async def main() -> None:
        node = await start_solo(tmp_path, CounterMachine(), snapshot_every_entries=10)
        try:
            await apply_n(node, 100)
            with pytest.raises(SnapshotsUnavailableError):
                await node.snapshot()
            assert node.status()["first_index"] == 1, "the log is never compacted"
            assert not node.status()["snapshot"]["enabled"]
            assert snapshot_dirs(tmp_path) == ["snapshot.lock"]
        finally:
            await stop(node)

    run(main())


def test_a_node_without_data_dir_takes_no_snapshots() -> None:
    async def main() -> None:
        node = await start_solo(None, SnapMachine(), snapshot_every_entries=10)
        try:
            await apply_n(node, 30)
            with pytest.raises(SnapshotsUnavailableError):
                await node.snapshot()
        finally:
            await stop(node)

    run(main())


def test_shutdown_during_a_save_leaves_no_partial_snapshot(tmp_path: Path) -> None:
    async def main() -> None:
        m = SnapMachine()
        m.gate = threading.Event()
        node = await start_solo(tmp_path, m, **OFF)
        await apply_n(node, 5)
        saving = asyncio.ensure_future(node.snapshot())
        await asyncio.to_thread(m.writing.wait, 10)
        down = asyncio.ensure_future(stop(node))
        await asyncio.sleep(0)
        m.gate.set()
        await down
        # Published before the storage closed, or not at all; never half.
        names = snapshot_dirs(tmp_path)
        assert not [n for n in names if n.startswith("tmp-")], names
        if not saving.cancelled() and saving.exception() is None:
            assert any(n.startswith("snapshot-") for n in names)

        m2 = SnapMachine()
        node = await start_solo(tmp_path, m2, **OFF)
        try:
            await wait_for(lambda: m2.value == 5, 10, "state back after restart")
        finally:
            await stop(node)

    run(main())


def test_snapshot_files_are_fsynced_and_checksummed(tmp_path: Path) -> None:
    async def main() -> None:
        m = SnapMachine(ballast=10_000)
        node = await start_solo(tmp_path, m, **OFF)
        try:
            await apply_n(node, 3)
            manifest = await node.snapshot()
            assert sorted(f.name for f in manifest.files) == ["ballast", "value"]
            assert manifest.file("ballast").size == 10_000
            storage = node._snapshots.storage
            assert storage is not None
            storage.verify(manifest)
            path = storage.directory + f"/snapshot-{manifest.index:020d}/data/ballast"
            assert os.path.getsize(path) == 10_000
        finally:
            await stop(node)

    run(main())
