"""Snapshots in the core (Raft thesis, chapter 5): compaction, sending a
snapshot to a follower that needs compacted entries, and restoring one."""

from __future__ import annotations

import random

import pytest

from pyjraft.core import (
    AppendEntries,
    AppendEntriesResponse,
    ConfState,
    CoreConfig,
    HardState,
    RaftCore,
    Role,
)
from pyjraft.core.progress import ProgressState
from pyjraft.core.raft_log import LogSafetyError
from pyjraft.core.types import SnapshotMeta
from pyjraft.storage.memory import MemoryLogStorage
from tests.core.harness import Network, ents

ABC = ("a", "b", "c")
CONF = ConfState(ABC)


def _compact(net: Network, nid: str, index: int) -> SnapshotMeta:
    """``nid`` snapshots at ``index`` and drops its log up to it."""
    core = net[nid]
    snap = SnapshotMeta(index, core.log.term(index), CONF)
    core.set_snapshot(snap)
    net.members[nid].log.truncate_prefix(index + 1)
    return snap


def _leader_with_lagging_c(entries: int = 10) -> Network:
    net = Network(ABC)
    a = net.elect("a")
    net.crash("c")
    for i in range(entries):
        a.propose(f"x{i}".encode())
    net.stabilize()
    net.tick()
    return net


def test_5_1_a_follower_behind_compaction_is_sent_the_snapshot_and_no_appends() -> None:
    net = _leader_with_lagging_c()
    a = net["a"]
    snap = _compact(net, "a", a.commit_index)
    net.restart("c")
    mark = len(net.sent)
    net.tick(n=2)
    sends = [s for rd in net.members["a"].readies for s in rd.snapshots_to_send]
    assert sends == [("c", snap)]
    assert a.progress["c"].state is ProgressState.SNAPSHOT
    to_c = [m for m in net.sent_since(mark) if m.dst == "c" and isinstance(m, AppendEntries)]
    assert not [m for m in to_c if m.prev_log_index >= 0 and m.entries], (
        "appends while snapshotting"
    )


def test_5_1_the_follower_restores_then_acknowledges_and_replication_resumes() -> None:
    net = _leader_with_lagging_c()
    a = net["a"]
    snap = _compact(net, "a", a.commit_index)
    net.restart("c")
    net.tick(n=2)
    c = net["c"]
    assert c.restore("a", a.term, snap) is True
    rd = c.ready()
    assert rd.snapshot == snap and rd.committed_entries == []
    ack = [m for m in rd.messages if isinstance(m, AppendEntriesResponse)]
    assert ack and ack[-1].success and ack[-1].index == snap.index
    assert (c.log.first_index(), c.log.last_index(), c.log.term(snap.index)) == (
        snap.index + 1,
        snap.index,
        snap.term,
    )
    assert c.commit_index == snap.index
    net.members["c"].log.reset(snap.index + 1, snap.term)
    c.advance(rd)
    net.send(rd.messages)
    net.stabilize()
    a.propose(b"after")
    net.stabilize()
    net.tick()
    assert a.progress["c"].state is ProgressState.REPLICATE
    assert c.log.last_index() == a.log.last_index() and c.commit_index == a.commit_index


def test_5_1_a_failed_transfer_is_retried_with_the_newest_snapshot() -> None:
    net = _leader_with_lagging_c()
    a = net["a"]
    _compact(net, "a", a.commit_index - 2)
    net.restart("c")
    net.tick(n=2)
    assert a.progress["c"].state is ProgressState.SNAPSHOT
    newer = _compact(net, "a", a.commit_index)
    a.report_snapshot("c", ok=False)
    assert a.progress["c"].state is ProgressState.PROBE
    net.tick(n=2)
    sends = [s for rd in net.members["a"].readies for s in rd.snapshots_to_send]
    assert sends[-1] == ("c", newer)


def test_5_1_a_snapshot_not_past_the_commit_index_is_not_restored() -> None:
    net = Network(ABC)
    a = net.elect("a")
    a.propose(b"x")
    net.stabilize()
    net.tick()
    b = net["b"]
    commit = b.commit_index
    stale = SnapshotMeta(commit - 1, 1, CONF)
    assert b.restore("a", a.term, stale) is False
    rd = b.ready()
    assert rd.snapshot is None
    assert [m.index for m in rd.messages if isinstance(m, AppendEntriesResponse)] == [commit]
    assert b.commit_index == commit


def test_5_1_a_follower_holding_the_snapshots_last_entry_just_commits() -> None:
    net = Network(ABC)
    a = net.elect("a")
    for i in range(3):
        a.propose(f"x{i}".encode())
    net.drop(lambda m: isinstance(m, AppendEntries) and not m.entries)  # no commit news
    net.stabilize()
    b = net["b"]
    last = b.log.last_index()
    assert b.commit_index < last
    snap = SnapshotMeta(last, b.log.term(last), CONF)
    assert b.restore("a", a.term, snap) is False
    assert b.commit_index == last
    rd = b.ready()
    assert rd.snapshot is None and rd.committed_entries  # applied from its own log


def test_5_1_only_the_current_leader_of_the_current_term_is_restored_from() -> None:
    net = Network(ABC)
    a = net.elect("a")
    b = net["b"]
    snap = SnapshotMeta(50, a.term, CONF)
    assert b.restore("c", a.term, snap) is False
    assert b.restore("a", a.term - 1, snap) is False
    assert a.restore("a", a.term, snap) is False  # a leader never restores
    assert b.commit_index < 50


def test_start_from_a_snapshot_commits_and_applies_after_it() -> None:
    log = MemoryLogStorage()
    log.reset(101, 3)
    log.append(ents(3, 3, start=101))
    snap = SnapshotMeta(100, 3, ConfState(("a", "b"), ("l",)))
    cfg = CoreConfig(id="a", voters=("a", "b", "c"))
    core = RaftCore(cfg, log, HardState(3), random.Random(1), snapshot=snap, applied=100)
    assert core.commit_index == 100
    assert core.voters == ("a", "b") and core.learners == ("l",)
    assert core.snapshot == snap
    # A machine that persisted more than the snapshot is not fed it again.
    again = RaftCore(cfg, log, HardState(3), random.Random(1), snapshot=snap, applied=102)
    assert again.commit_index == 102 and not again.ready().committed_entries


def test_compaction_without_a_snapshot_to_send_is_a_local_bug() -> None:
    net = _leader_with_lagging_c()
    net.members["a"].log.truncate_prefix(net["a"].commit_index + 1)
    net.restart("c")
    with pytest.raises(LogSafetyError):
        net.tick(n=2)
    assert net["a"].role is Role.LEADER
