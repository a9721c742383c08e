"""Linearizable reads in the core (Raft thesis 6.4): ReadIndex rounds and the
leader lease."""

from __future__ import annotations

import pytest

from pyjraft.core import HeartbeatResponse, NotLeaderError, Role
from pyjraft.core.read_only import ReadState
from tests.core.harness import Network

ABC = ("a", "b", "c")


def _read_states(net: Network, nid: str) -> list[ReadState]:
    return [st for rd in net.members[nid].readies for st in rd.read_states]


def test_6_4_a_read_waits_for_a_heartbeat_round_answered_by_a_majority() -> None:
    net = Network(ABC)
    a = net.elect("a")
    a.propose(b"x")
    net.stabilize()
    commit = a.commit_index
    net.drop(lambda m: isinstance(m, HeartbeatResponse))
    a.read_index(b"r1")
    a.read_index(b"r2")
    net.stabilize()
    assert _read_states(net, "a") == [], "no answer before a majority confirms"
    net.heal()
    a.read_index(b"r3")
    net.stabilize()
    assert [(s.ctx, s.index) for s in _read_states(net, "a")] == [
        (b"r1", commit),
        (b"r2", commit),
        (b"r3", commit),
    ]


def test_6_4_an_answer_to_a_later_round_confirms_every_read_before_it() -> None:
    net = Network(ABC)
    a = net.elect("a")
    net.stabilize()
    net.drop(lambda m: True)
    for i in range(10):
        a.read_index(b"%d" % i)  # a round each; every answer is lost
    net.stabilize()
    assert _read_states(net, "a") == []
    net.heal()
    net.tick(["a"])  # the next heartbeat round is answered
    assert sorted(s.ctx for s in _read_states(net, "a")) == sorted(b"%d" % i for i in range(10))


def test_6_4_a_new_leader_serves_reads_only_after_committing_in_its_term() -> None:
    net = Network(ABC)
    a = net.elect("a")
    net.drop(lambda m: m.src == "a" and m.dst != "a")  # its no-op cannot commit
    a.read_index(b"early")
    net.stabilize()
    net.tick(["a"])
    assert _read_states(net, "a") == []
    net.heal()
    net.tick(["a"])
    net.stabilize()
    assert [s.ctx for s in _read_states(net, "a")] == [b"early"]
    assert _read_states(net, "a")[0].index == a.commit_index


def test_6_4_only_the_leader_answers() -> None:
    net = Network(ABC)
    net.elect("a")
    with pytest.raises(NotLeaderError) as info:
        net["b"].read_index(b"r")
    assert info.value.leader == "a"


def test_6_4_a_single_voter_answers_at_once() -> None:
    net = Network(("a",))
    a = net.elect("a")
    a.read_index(b"r")
    rd = a.ready()
    assert [s.ctx for s in rd.read_states] == [b"r"]


def test_6_4_reads_not_confirmed_are_dropped_with_the_leadership() -> None:
    net = Network(ABC)
    a = net.elect("a")
    net.isolate("a")
    a.read_index(b"lost")
    net.tick(n=2 * a.config.election_ticks)  # check-quorum: a steps down
    assert a.role is not Role.LEADER
    assert _read_states(net, "a") == []
    assert a.read_only.waiting == 0


def test_6_4_lease_reads_need_no_round_while_the_lease_holds() -> None:
    net = Network(ABC)
    a = net.elect("a")
    net.tick()  # a round answered: the lease starts
    assert a.lease_valid()
    before = a.read_only._round
    a.read_index(b"lease", lease=True)
    rd = a.ready()
    assert [s.ctx for s in rd.read_states] == [b"lease"]
    assert a.read_only._round == before


def test_6_4_a_deposed_leader_stops_serving_lease_reads_before_anyone_can_be_elected() -> None:
    net = Network(ABC)
    a = net.elect("a")
    net.tick()
    assert a.lease_valid()
    net.isolate("a")
    lease_over = None
    # Tick everyone together; b and c refuse any vote until an election
    # timeout has passed since they heard from a: a's lease must end first.
    for t in range(1, 3 * a.config.election_ticks):
        net.tick()
        if lease_over is None and not a.lease_valid():
            lease_over = t
        if any(net[n].role is Role.LEADER for n in ("b", "c")):
            assert lease_over is not None and lease_over < t
            break
    else:
        raise AssertionError("nobody was elected")


def test_a_stalled_leaders_lease_counts_every_tick_given_at_once() -> None:
    net = Network(ABC)
    a = net.elect("a")
    net.tick()
    assert a.lease_valid()
    a.tick(a.config.election_ticks)  # the runtime catching up after a stall
    assert not a.lease_valid()
    assert a.role is Role.LEADER  # still leads (its quorum check passed once)
