"""Installing a leader's snapshot on a follower behind its compacted log:
chunking, the throttle, hostile and broken transfers, timeouts, a leader
change mid-transfer, a restart mid-transfer."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from pyjraft.core.messages import Heartbeat
from pyjraft.node import Node, NodeState
from pyjraft.node.snapshot_wire import SERVICE, ReadRequest
from pyjraft.node.throttle import Throttle
from pyjraft.storage.snapshot_manifest import (
    SnapshotFile,
)
from pyjraft.transport import RemoteError
from pyjraft.transport.local import LocalTransport
from tests.node.harness import IDS, LocalCluster, run, wait_for
from tests.node.snap_harness import SnapMachine, apply_n, snapshot_dirs

BALLAST = 100_000
CHUNK = 4096


class BallastMachine(SnapMachine):
    def __init__(self) -> None:
        super().__init__(ballast=BALLAST)


def cluster(tmp_path: Path, seed: int, **options: Any) -> LocalCluster:
    opts: dict[str, Any] = {
        "snapshot_every_entries": 100,
        "snapshot_interval_s": 0,
        "snapshot_log_margin": 20,
        "snapshot_chunk_bytes": CHUNK,
        "snapshot_transfer_timeout_ms": 2000,
        "segment_bytes": 4096,
        **options,
    }
    return LocalCluster(seed, data_dir=str(tmp_path), machine=BallastMachine, **opts)


async def left_behind(c: LocalCluster, writes: int = 300) -> tuple[Node, str]:
    """Stop a follower, write past the leader's compaction; return the leader
    and the stopped follower."""
    leader = await c.leader()
    lagging = next(n for n in IDS if n != leader.id)
    await c.stop(lagging)
    await apply_n(leader, writes)
    await wait_for(lambda: not leader.status()["snapshot"]["saving"], 10, "save ends")
    assert leader.status()["first_index"] > 2, "the leader compacted past the follower"
    return leader, lagging


def wrap_reads(leader: Node, hook: Callable[[ReadRequest], Awaitable[None]]) -> Callable[[], None]:
    """Run ``hook`` before each chunk the leader serves; returns an undo."""
    sender = leader._snapshots.sender
    assert sender is not None
    real = sender.serve_read

    async def serve_read(req: ReadRequest) -> bytes:
        await hook(req)
        return await real(req)

    sender.serve_read = serve_read  # type: ignore[method-assign]

    def undo() -> None:
        sender.serve_read = real  # type: ignore[method-assign]

    return undo


async def consistent(c: LocalCluster, writes: int) -> None:
    for nid in c.nodes:
        await wait_for(
            lambda nid=nid: c.machines[nid].value == writes, 10, f"{nid} reaches {writes}"
        )
        assert c.nodes[nid].state is NodeState.RUNNING
        await wait_for(lambda nid=nid: not c.nodes[nid]._snapshots.saving, 10, "saves end")


def no_partial_copies(tmp_path: Path, nid: str) -> None:
    names = snapshot_dirs(tmp_path / nid)
    assert not [n for n in names if n.startswith("tmp-")], names


def test_a_follower_behind_compaction_installs_the_snapshot_in_chunks(tmp_path: Path) -> None:
    async def main() -> None:
        async with cluster(tmp_path, 31) as c:
            leader, lagging = await left_behind(c)
            reads: list[tuple[str, int, int]] = []
            in_flight = [0, 0]  # now, most

            async def count(req: ReadRequest) -> None:
                reads.append((req.file, req.offset, req.size))
                in_flight[0] += 1
                in_flight[1] = max(in_flight[1], in_flight[0])
                await asyncio.sleep(0)
                in_flight[0] -= 1

            wrap_reads(leader, count)
            await c.start(lagging)
            await consistent(c, 300)
            follower = c.nodes[lagging]
            st = follower.status()["snapshot"]
            assert st["installs"] == 1 and st["last_install"]["leader"] == leader.id
            snap = st["last_install"]["index"]
            assert c.machines[lagging].loaded == [(snap, c.machines[lagging].loaded[0][1])]
            assert follower.status()["first_index"] >= snap + 1
            # Every byte once, in chunks of the configured size, a window at a time.
            ballast = [r for r in reads if r[0] == "ballast"]
            assert [o for _, o, _ in ballast] == list(range(0, BALLAST, CHUNK))
            assert all(s == min(CHUNK, BALLAST - o) for _, o, s in ballast)
            assert in_flight[1] <= follower.options.snapshot_window
            sent = leader.status()["snapshot"]["bytes_sent"]
            assert sent == st["bytes_received"] == st["last_install"]["bytes_total"]
            assert leader.events.counters["snapshot_sends"] == 1
            assert follower.events.counters["snapshot_installs"] == 1
            no_partial_copies(tmp_path, lagging)
            # And it goes on from there as usual.
            assert (await apply_n(leader, 5))[-1] == 305

    run(main())


def test_the_throttle_books_bytes_on_a_virtual_clock() -> None:
    now = [100.0]
    t = Throttle(1000, burst_s=0.0, clock=lambda: now[0])
    assert t.delay(500) == 0.0
    assert t.delay(500) == pytest.approx(0.5)
    assert t.delay(1000) == pytest.approx(1.0)
    now[0] += 5.0  # idle: earns no more than burst_s of credit
    assert t.delay(1000) == 0.0
    assert t.delay(1) == pytest.approx(1.0)
    assert Throttle(0).delay(10**9) == 0.0, "0 is no limit"
    b = Throttle(1000, burst_s=0.5, clock=lambda: now[0])
    now[0] += 10
    assert b.delay(500) == 0.0 and b.delay(500) == 0.0, "a burst of burst_s worth"
    assert b.delay(500) == pytest.approx(0.5)


def test_a_throttled_install_waits_for_its_rate(tmp_path: Path) -> None:
    async def main() -> None:
        async with cluster(tmp_path, 32, snapshot_throttle_bytes=1 << 20) as c:
            leader, lagging = await left_behind(c)
            await c.start(lagging)
            await consistent(c, 300)
            sender = leader._snapshots.sender
            assert sender is not None
            # 100 KB at 1 MiB/s with a 50 ms burst: about 45 ms of booked waits.
            assert sender.throttle.waited_s > 0.02

    run(main())


def test_malformed_and_misdirected_requests_are_refused(tmp_path: Path) -> None:
    async def main() -> None:
        async with cluster(tmp_path, 33) as c:
            leader = await c.leader()
            follower = next(n for n in c.nodes.values() if not n.is_leader)
            rogue = LocalTransport(c.net, "rogue:1")
            try:
                bad: list[Any] = [
                    None,
                    [],
                    {"op": "read"},
                    {"op": "meta", "group": "default", "transfer": b"short"},
                    {"op": "meta", "group": "default", "transfer": b"x" * 16, "extra": 1},
                    {"op": "nuke", "group": "default", "transfer": b"x" * 16},
                    {"op": "meta", "group": "other", "transfer": b"x" * 16},
                    {
                        "op": "read",
                        "group": "default",
                        "transfer": b"x" * 16,
                        "file": "value",
                        "offset": -1,
                        "size": 10,
                    },
                ]
                for req in bad:
                    with pytest.raises(RemoteError):
                        await rogue.call(follower.id, SERVICE, req)
                # An offer in someone else's name, or of another term: refused.
                for who, term in ((IDS[0], 99), ("rogue:1", follower.term)):
                    reply = await rogue.call(
                        follower.id,
                        SERVICE,
                        {
                            "op": "offer",
                            "group": "default",
                            "leader": who,
                            "term": term,
                            "transfer": os.urandom(16),
                            "index": 10**6,
                            "size": 1,
                        },
                    )
                    assert reply["accepted"] is False, reply
                # A transfer nobody started: the leader knows no such id.
                with pytest.raises(RemoteError, match="no such transfer"):
                    await rogue.call(
                        leader.id,
                        SERVICE,
                        {"op": "meta", "group": "default", "transfer": os.urandom(16)},
                    )
            finally:
                await rogue.close()
            assert all(n.state is NodeState.RUNNING for n in c.nodes.values())
            assert follower.status()["snapshot"]["installing"] is None

    run(main())


def test_a_forged_offer_in_the_leaders_name_fetches_nothing_from_it(tmp_path: Path) -> None:
    async def main() -> None:
        async with cluster(tmp_path, 34) as c:
            leader = await c.leader()
            await apply_n(leader, 10)
            follower = next(n for n in c.nodes.values() if not n.is_leader)
            await wait_for(lambda: follower.leader == leader.id, 5, "follows")
            rogue = LocalTransport(c.net, "rogue:1")
            try:
                reply = await rogue.call(
                    follower.id,
                    SERVICE,
                    {
                        "op": "offer",
                        "group": "default",
                        "leader": leader.id,
                        "term": follower.term,
                        "transfer": os.urandom(16),
                        "index": 10**6,
                        "size": 10,
                    },
                )
            finally:
                await rogue.close()
            # It cannot tell the offer is forged; it asks the leader itself, which
            # started no such transfer: nothing is installed.
            assert reply["accepted"] is True
            await wait_for(
                lambda: follower.events.counters.get("snapshot_install_failures") == 1,
                5,
                "the install fails",
            )
            assert "no such transfer" in follower.events.recent[-1]["reason"]
            assert follower.status()["snapshot"]["installing"] is None
            no_partial_copies(tmp_path, follower.id)
            assert (await apply_n(leader, 1)) == [11]

    run(main())


def hostile_manifest(files: tuple[SnapshotFile, ...]) -> bytes:
    """Encoded metadata without the encoder's checks (what a hostile peer sends)."""
    import struct

    import crc32c
    import msgpack

    body = msgpack.packb(
        {
            "index": 10**6,
            "term": 1,
            "conf": {"voters": list(IDS), "learners": [], "voters_outgoing": []},
            "files": [[f.name, f.size, f.crc32c] for f in files],
            "user_meta": b"",
        },
        use_bin_type=True,
    )
    head = struct.pack("<4sIB3xI", b"PJSM", 0, 1, len(body))
    crc = crc32c.crc32c(body, crc32c.crc32c(head[8:]))
    return head[:4] + struct.pack("<I", crc) + head[8:] + body


@pytest.mark.parametrize("attack", ["path_escape", "short_chunk", "corrupt_chunk"])
def test_a_broken_transfer_is_abandoned_cleanly_and_retried(tmp_path: Path, attack: str) -> None:
    async def main() -> None:
        async with cluster(tmp_path, 35) as c:
            leader, lagging = await left_behind(c)
            sender = leader._snapshots.sender
            assert sender is not None
            real_meta, real_read = sender.serve_meta, sender.serve_read
            attacks = [0]

            async def meta(req: Any) -> bytes:
                raw = await real_meta(req)
                if attack == "path_escape" and not attacks[0]:
                    attacks[0] += 1
                    return hostile_manifest((SnapshotFile("../escape", 3, 0),))
                return raw

            async def read(req: ReadRequest) -> bytes:
                data = await real_read(req)
                if attack != "path_escape" and not attacks[0] and req.file == "ballast":
                    attacks[0] += 1
                    if attack == "short_chunk":
                        return data[:-1]
                    return bytes([data[0] ^ 1]) + data[1:]
                return data

            sender.serve_meta = meta  # type: ignore[method-assign]
            sender.serve_read = read  # type: ignore[method-assign]
            await c.start(lagging)
            await consistent(c, 300)
            follower = c.nodes[lagging]
            assert attacks[0] == 1
            assert follower.events.counters["snapshot_install_failures"] == 1
            assert follower.events.counters["snapshot_installs"] == 1, "the retry installs"
            assert leader.events.counters["snapshot_send_failures"] == 1
            no_partial_copies(tmp_path, lagging)
            assert not (tmp_path / lagging / "default" / "escape").exists()
            # What was installed is the leader's snapshot, byte for byte.
            ((index, _),) = c.machines[lagging].loaded
            storage = follower._snapshots.storage
            assert storage is not None
            latest = storage.latest()
            assert latest is not None and latest.index == index
            storage.verify(latest)

    run(main())


def test_a_transfer_without_progress_times_out_on_both_sides_and_is_retried(
    tmp_path: Path,
) -> None:
    async def main() -> None:
        async with cluster(tmp_path, 36, snapshot_transfer_timeout_ms=300) as c:
            leader, lagging = await left_behind(c)
            stuck = asyncio.Event()
            calls = [0]

            async def stall_the_first_transfer(req: ReadRequest) -> None:
                calls[0] += 1
                if calls[0] == 3:
                    await stuck.wait()  # the leader's disk hangs on this chunk

            wrap_reads(leader, stall_the_first_transfer)
            await c.start(lagging)
            follower = c.nodes[lagging]
            await wait_for(
                lambda: leader.events.counters.get("snapshot_send_failures", 0) >= 1,
                10,
                "the leader gives up",
            )
            await wait_for(
                lambda: follower.events.counters.get("snapshot_install_failures", 0) >= 1,
                10,
                "the follower gives up",
            )
            no_partial_copies(tmp_path, lagging)
            stuck.set()
            await consistent(c, 300)
            assert follower.events.counters["snapshot_installs"] == 1

    run(main())


def test_a_leader_change_mid_transfer_abandons_it_and_the_new_leader_sends(
    tmp_path: Path,
) -> None:
    async def main() -> None:
        async with cluster(tmp_path, 37) as c:
            leader, lagging = await left_behind(c)
            gate = asyncio.Event()
            served = [0]

            async def hold_after_five(req: ReadRequest) -> None:
                served[0] += 1
                if served[0] > 5:
                    await gate.wait()

            wrap_reads(leader, hold_after_five)
            await c.start(lagging)
            follower = c.nodes[lagging]
            await wait_for(
                lambda: (
                    (follower.status()["snapshot"]["installing"] or {}).get("bytes_done", 0) > 0
                ),
                10,
                "the install is under way",
            )
            # The leader is cut off; the two others elect one of them.
            c.net.isolate(leader.id)
            other = next(n for n in IDS if n not in (leader.id, lagging))
            await wait_for(lambda: c.nodes[other].is_leader, 10, f"{other} leads")
            await wait_for(
                lambda: follower.events.counters.get("snapshot_install_failures", 0) >= 1,
                10,
                "the old transfer is abandoned",
            )
            failed = [e for e in follower.events.recent if e["event"] == "snapshot_install_failed"]
            # Noticed at its next chunk, or when the new leader's offer came first.
            reason = failed[0]["reason"]
            assert "leader changed" in reason or f"superseded by {other}" in reason, reason
            new_leader = c.nodes[other]
            assert (await apply_n(new_leader, 10))[-1] == 310
            await wait_for(lambda: c.machines[lagging].value == 310, 10, "catches up")
            gate.set()
            c.net.heal()
            await consistent(c, 310)
            no_partial_copies(tmp_path, lagging)
            assert all(
                e["leader"] != leader.id
                for e in follower.events.recent
                if e["event"] == "snapshot_installed"
            ), "nothing of the deposed leader's transfer was installed"

    run(main())


def test_a_restart_mid_transfer_never_loads_a_partial_copy(tmp_path: Path) -> None:
    async def main() -> None:
        async with cluster(tmp_path, 38) as c:
            leader, lagging = await left_behind(c)
            gate = asyncio.Event()
            served = [0]

            async def hold_after_five(req: ReadRequest) -> None:
                served[0] += 1
                if served[0] > 5:
                    await gate.wait()

            undo = wrap_reads(leader, hold_after_five)
            await c.start(lagging)
            follower = c.nodes[lagging]
            root = tmp_path / lagging / "default" / "snapshot"
            await wait_for(
                lambda: [p for p in root.iterdir() if p.name.startswith("tmp-")],
                10,
                "a partial copy on disk",
            )
            partial = next(p for p in root.iterdir() if p.name.startswith("tmp-"))
            saved = {f.name: f.read_bytes() for f in (partial / "data").iterdir()}
            await c.stop(lagging)
            assert follower.state is NodeState.STOPPED
            no_partial_copies(tmp_path, lagging)
            # As a crash would leave it: the partial copy back in place.
            (partial / "data").mkdir(parents=True)
            for name, data in saved.items():
                (partial / "data" / name).write_bytes(data)
            undo()
            gate.set()
            await c.start(lagging)
            await consistent(c, 300)
            restarted = c.machines[lagging]
            assert len(restarted.loaded) == 1, "one complete snapshot, from a new transfer"
            storage = c.nodes[lagging]._snapshots.storage
            assert storage is not None
            latest = storage.latest()
            assert latest is not None
            storage.verify(latest)
            no_partial_copies(tmp_path, lagging)

    run(main())


def test_the_follower_checks_its_leader_and_term_again_at_the_end(tmp_path: Path) -> None:
    async def main() -> None:
        async with cluster(tmp_path, 39) as c:
            leader, lagging = await left_behind(c)
            gate = asyncio.Event()
            served = [0]
            total = BALLAST // CHUNK + 2  # the ballast's chunks and the value file

            async def hold_the_last(req: ReadRequest) -> None:
                served[0] += 1
                if served[0] == total:
                    await gate.wait()

            wrap_reads(leader, hold_the_last)
            await c.start(lagging)
            follower = c.nodes[lagging]
            await wait_for(lambda: served[0] == total, 10, "all but the last chunk")
            # Before the last chunk arrives, the follower hears of a new term
            # (as from a member whose election it missed).
            other = next(n for n in IDS if n not in (leader.id, lagging))
            term = follower.term
            follower._on_message(Heartbeat("default", term + 1, other, lagging, 0))
            assert follower.term == term + 1
            gate.set()
            await wait_for(
                lambda: follower.events.counters.get("snapshot_install_failures", 0) >= 1,
                10,
                "the transfer of the old term is refused",
            )
            failed = [e for e in follower.events.recent if e["event"] == "snapshot_install_failed"]
            assert "leader changed" in failed[0]["reason"]
            assert c.machines[lagging].loaded == []
            no_partial_copies(tmp_path, lagging)
            await consistent(c, 300)

    run(main())
