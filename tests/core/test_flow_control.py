"""Pipelined replication's flow control (progress REPLICATE state, in-flight window)."""

from __future__ import annotations

from typing import Any

import pytest

from pyjraft.core import AppendEntries, Message, RaftCore
from pyjraft.core.progress import ProgressState
from tests.core.harness import Network

ABC = ("a", "b", "c")


def _appends_to(msgs: list[Message], dst: str) -> list[AppendEntries]:
    return [m for m in msgs if isinstance(m, AppendEntries) and m.dst == dst and m.entries]


def _pump(net: Network, leader: RaftCore, rounds: int) -> tuple[int, int]:
    """Deliver the leader's appends to ``b`` one at a time (oldest first), feeding
    each answer back, while checking the window after every step. Returns the
    largest number and byte size of unacknowledged appends seen."""
    cfg = leader.config
    in_flight: list[AppendEntries] = _appends_to(net.process_ready("a"), "b")
    acked = leader.progress["b"].match
    most = most_bytes = 0
    for _ in range(rounds):
        outstanding = [m for m in in_flight if m.entries[-1].index > acked]
        most = max(most, len(outstanding))
        size = sum(e.size for m in outstanding for e in m.entries)
        most_bytes = max(most_bytes, size)
        assert len(outstanding) <= cfg.max_inflight_msgs
        assert size <= cfg.max_inflight_bytes + cfg.max_bytes_per_msg
        if not outstanding:
            break
        m = outstanding[0]
        assert len(m.entries) <= cfg.max_entries_per_msg
        assert len(m.entries) == 1 or sum(e.size for e in m.entries) <= cfg.max_bytes_per_msg
        net["b"].step(m)
        for resp in net.process_ready("b"):
            leader.step(resp)
        acked = leader.progress["b"].match
        in_flight = [x for x in in_flight if x.entries[-1].index > acked]
        in_flight += _appends_to(net.process_ready("a"), "b")
    return most, most_bytes


def _replicating(**config: Any) -> tuple[Network, RaftCore]:
    net = Network(ABC, seed=12, **config)
    a = net.elect("a")
    assert a.progress["b"].state is ProgressState.REPLICATE
    net.isolate("c")
    return net, a


def test_inflight_window_bounds_unacknowledged_appends_by_count() -> None:
    net, a = _replicating(max_inflight_msgs=3, max_entries_per_msg=2)
    for i in range(40):
        a.propose(bytes([i]) * 10)
    most, _ = _pump(net, a, 200)
    assert most == 3
    assert a.progress["b"].match == a.log.last_index()


def test_inflight_window_bounds_unacknowledged_bytes() -> None:
    net, a = _replicating(max_inflight_msgs=1000, max_inflight_bytes=1000, max_bytes_per_msg=300)
    for i in range(60):
        a.propose(bytes([i]) * 100)  # Entry.size == 116: at most two per message
    most, most_bytes = _pump(net, a, 500)
    assert 1000 <= most_bytes <= 1000 + 300
    assert most == 9  # one proposal per message: nine of 116 bytes reach 1000
    assert a.progress["b"].match == a.log.last_index()


def _deliver_all_to_b(net: Network, a: RaftCore) -> list[AppendEntries]:
    sent: list[AppendEntries] = []
    in_flight = _appends_to(net.process_ready("a"), "b")
    while in_flight:
        m = in_flight.pop(0)
        sent.append(m)
        net["b"].step(m)
        for resp in net.process_ready("b"):
            a.step(resp)
        in_flight += _appends_to(net.process_ready("a"), "b")
    return sent


def test_no_message_exceeds_the_per_message_limits() -> None:
    net, a = _replicating(max_entries_per_msg=5, max_bytes_per_msg=1000)
    a.propose_batch([b"x"] * 23)
    a.propose_batch([b"y" * 300] * 10)  # Entry.size 316: three fit in 1000 bytes
    sent = _deliver_all_to_b(net, a)
    # 2..21 by fives; 22..26 = three x's and two y's (683 bytes); then y's by threes.
    assert [len(m.entries) for m in sent] == [5, 5, 5, 5, 5, 3, 3, 2]
    assert all(sum(e.size for e in m.entries) <= 1000 for m in sent)
    assert a.progress["b"].match == a.log.last_index() == 34


def test_a_single_entry_larger_than_the_message_limit_goes_alone() -> None:
    net, a = _replicating(max_bytes_per_msg=1000)
    a.propose_batch([b"s", b"L" * 5000, b"t"])
    sent = _deliver_all_to_b(net, a)
    assert [[len(e.data) for e in m.entries] for m in sent] == [[1], [5000], [1]]


@pytest.mark.parametrize("n", [1, 100, 1000])
def test_propose_batch_sends_one_append_per_follower(n: int) -> None:
    net = Network(ABC, seed=13)
    a = net.elect("a")
    a.propose_batch([b"v%d" % i for i in range(n)])
    out = net.process_ready("a")
    appends = [m for m in out if isinstance(m, AppendEntries)]
    assert sorted(m.dst for m in appends) == ["b", "c"]
    assert all(len(m.entries) == n for m in appends)
    net.send(out)
    net.stabilize()
    assert a.commit_index == n + 1
