"""Snapshot metrics and status: what `pyjraft.ops` exports of saves and installs."""

from __future__ import annotations

from pathlib import Path

from pyjraft.ops.collector import RaftCollector
from tests.node.harness import run
from tests.node.snap_harness import SnapMachine, apply_n, start_solo, stop


def samples(collector: RaftCollector) -> dict[str, float]:
    return {s.name: s.value for fam in collector.collect() for s in fam.samples}


def test_saves_are_counted_and_timed(tmp_path: Path) -> None:
    async def main() -> None:
        node = await start_solo(
            tmp_path, SnapMachine(ballast=1000), snapshot_every_entries=0, snapshot_interval_s=0
        )
        try:
            collector = RaftCollector(lambda: [node], list)
            before = samples(collector)
            assert before["pyjraft_snapshot_saves_total"] == 0
            assert before["pyjraft_snapshot_index"] == 0
            await apply_n(node, 10)
            manifest = await node.snapshot()
            after = samples(collector)
            assert after["pyjraft_snapshot_saves_total"] == 1
            assert after["pyjraft_snapshot_index"] == manifest.index
            assert after["pyjraft_snapshot_save_seconds_total"] > 0
            assert after["pyjraft_snapshot_save_pause_seconds_total"] > 0
            assert after["pyjraft_snapshot_saving"] == 0
            st = node.status()["snapshot"]
            assert st["last_save"]["bytes"] == manifest.total_size == 1002
            assert st["last_save"]["index"] == manifest.index
            assert node.describe()["snapshot"]["index"] == manifest.index
            saved = [e for e in node.events.recent if e["event"] == "snapshot_saved"]
            assert saved and saved[-1]["bytes"] == 1002
        finally:
            await stop(node)

    run(main())
