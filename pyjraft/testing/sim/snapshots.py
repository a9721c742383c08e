"""Snapshots in the simulation: the state machine, taking snapshots and
compacting, and streaming them to followers that fell behind compaction.

The state machine is a hash chain over the entries applied (CRC32 of index,
term and data, chained): two replicas hold the same state exactly when they
applied the same entries. A snapshot is (`SnapshotMeta`, that hash), so a
follower restored from a snapshot and then applying onwards must end with
the same hash as one that applied every entry; the checker knows the hash of
every committed prefix and compares at every snapshot taken, every snapshot
installed, and at the end.

A leader asked to send a snapshot (``Ready.snapshots_to_send``) streams its
newest durable one; the transfer takes the profile's time and fails if
either end crashed or was paused, the link is cut, or at random. At the end
the follower's core is offered it (`RaftCore.restore`) and the leader's core
is told (`RaftCore.report_snapshot`).
"""

from __future__ import annotations

import zlib
from typing import TYPE_CHECKING

from pyjraft.core.types import Entry, NodeId, SnapshotMeta
from pyjraft.testing.sim.checker import SafetyViolation, Violation

if TYPE_CHECKING:
    from pyjraft.testing.sim.cluster import Simulation


def chain(state: int, entries: list[Entry]) -> int:
    """The state machine's state after applying ``entries`` to ``state``."""
    for e in entries:
        state = zlib.crc32(e.data, zlib.crc32(b"%d:%d:" % (e.index, e.term), state))
    return state


class SnapshotDriver:
    """Takes, sends and installs snapshots for one `Simulation`."""

    def __init__(self, sim: Simulation) -> None:
        self.sim = sim

    def after_apply(self, nid: NodeId) -> None:
        """Snapshot and compact if the node applied enough since its last one."""
        sim = self.sim
        every = sim.profile.snapshot_every
        node = sim.nodes[nid]
        core = node.core
        if not every or core is None:
            return
        last = node.disk.snapshot[0].index if node.disk.snapshot else 0
        if node.applied - last < every:
            return
        index = node.applied
        term = core.log.term_or_none(index)
        if term is None:
            return  # the core restored a newer snapshot meanwhile; it is being installed
        meta = SnapshotMeta(index, term, core.conf_at(index))
        self.check_state(nid, index, node.sm_hash, "took a snapshot")
        node.disk.snapshot = (meta, node.sm_hash)  # published atomically
        sim.result.snapshots_taken += 1
        core.set_snapshot(meta)
        log = node.disk.log
        first_kept = min(index - sim.profile.compact_margin, log.last_index()) + 1
        if first_kept > log.first_index():
            log.truncate_prefix(first_kept)

    def check_state(self, nid: NodeId, index: int, state: int, what: str) -> None:
        """``nid``'s state machine at ``index`` must be the committed prefix's."""
        want = self.sim.checker.prefix_state(index)
        if want is not None and want != state:
            raise SafetyViolation(
                Violation(
                    "state machine safety",
                    nid,
                    f"{what} at index {index} whose state differs from the committed prefix's",
                )
            )

    def send(self, leader: NodeId, peers: list[tuple[NodeId, SnapshotMeta]]) -> None:
        """Start streaming the leader's newest snapshot to each of ``peers``."""
        sim = self.sim
        node = sim.nodes[leader]
        core = node.core
        snap = node.disk.snapshot
        assert core is not None
        if snap is None:
            raise SafetyViolation(
                Violation("snapshot", leader, f"asked to send a snapshot to {peers} it lacks")
            )
        for peer, _ in peers:
            payload = (leader, node.incarnation, core.term, peer, snap)
            sim.schedule_snapshot(sim.profile.snapshot_transfer, payload)
            if sim.profile.snapshot_dup and sim.rng.random() < sim.profile.snapshot_dup:
                # A retry of the same transfer, offered again much later.
                later = sim.profile.snapshot_transfer * (1 + sim.rng.randrange(5))
                sim.schedule_snapshot(later, payload)

    def arrive(
        self,
        leader: NodeId,
        incarnation: int,
        term: int,
        peer: NodeId,
        snap: tuple[SnapshotMeta, int],
    ) -> NodeId | None:
        """A transfer ends: offer it to the follower, tell the leader. Returns the
        follower if its core was offered it (it may have a Ready)."""
        sim = self.sim
        sender = sim.nodes[leader]
        target = sim.nodes[peer]
        failed = (
            target.core is None
            or target.paused_until > sim.now
            or sender.paused_until > sim.now
            or (leader, peer) in sim.net.cut
            or (peer, leader) in sim.net.cut
            or sender.incarnation != incarnation
            or sender.core is None
            or (not sim.healed and sim.rng.random() < sim.profile.snapshot_fail)
        )
        offered = None
        if not failed:
            assert target.core is not None
            sim.current = peer
            if target.core.restore(leader, term, snap[0]):
                target.received = snap
            offered = peer
        else:
            sim.result.snapshot_transfers_failed += 1
        if sender.core is not None and sender.incarnation == incarnation:
            sender.core.report_snapshot(peer, not failed)
            sim.nudge(leader)
        return offered

    def install(self, nid: NodeId, meta: SnapshotMeta) -> tuple[SnapshotMeta, int]:
        """What a Ready's ``snapshot`` installs: the received files for it."""
        node = self.sim.nodes[nid]
        got = node.received
        if got is None or got[0] != meta:
            raise SafetyViolation(
                Violation("snapshot", nid, f"asked to install {meta} but received {got}")
            )
        node.received = None
        self.check_state(nid, meta.index, got[1], "installed a snapshot")
        self.sim.result.snapshots_installed += 1
        return got
