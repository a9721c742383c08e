"""Impossible input is a bad message to drop and report, never fatal.

Each test replays one of the attacks seen against a real cluster (issue 13):
before the fix each one raised `LogSafetyError`, bricked the group's term,
diverged a replica, or moved leadership; now the core drops the message,
reports it in `Ready.bad_messages`, and the group goes on.
"""

from __future__ import annotations

from pyjraft.core import (
    AppendEntries,
    AppendEntriesResponse,
    HardState,
    Heartbeat,
    Message,
    Role,
    TimeoutNow,
    VoteRequest,
)
from pyjraft.core.validate import MAX_TERM, MAX_TERM_JUMP
from pyjraft.storage.memory import MemoryLogStorage, MemoryMetaStorage
from tests.core.harness import Network, ents

ABC = ("a", "b", "c")


def _reported(net: Network, nid: str) -> list[str]:
    """Reasons the core reported for the bad messages of its next Ready."""
    rd = net[nid].ready()
    net.members[nid].core.advance(rd)
    return [b.reason for b in rd.bad_messages]


def _step_bad(net: Network, nid: str, m: Message) -> list[str]:
    core = net[nid]
    before = (
        core.term,
        core.vote,
        core.role,
        core.leader,
        core.log.last_index(),
        core.commit_index,
    )
    core.step(m)
    after = (core.term, core.vote, core.role, core.leader, core.log.last_index(), core.commit_index)
    assert after == before, f"{m} changed {before} -> {after}"
    reasons = [b.reason for b in core._bad]
    assert reasons, f"{m} was not reported"
    return reasons


def test_a_forged_heartbeat_at_the_leaders_own_term_does_not_stop_it() -> None:
    net = Network(ABC)
    a = net.elect("a")
    reasons = _step_bad(net, "a", Heartbeat("default", a.term, "b", "a", 0))
    assert "second leader" in reasons[0]
    assert a.role is Role.LEADER
    # And it still replicates and commits.
    a.propose(b"x")
    net.stabilize()
    net.tick()
    assert net["b"].commit_index == a.commit_index == a.log.last_index()


def test_an_acknowledgement_past_the_last_index_is_dropped() -> None:
    net = Network(ABC)
    a = net.elect("a")
    before = a.progress["b"].match
    reasons = _step_bad(net, "a", AppendEntriesResponse("default", a.term, "b", "a", True, 1 << 40))
    assert "past our last" in reasons[0]
    assert a.progress["b"].match == before
    a.propose(b"x")
    net.stabilize()  # the next send works (it once raised "compacted")
    assert a.commit_index == a.log.last_index()


def test_a_term_beyond_the_bound_is_dropped_and_the_group_keeps_electing() -> None:
    net = Network(ABC)
    a = net.elect("a")
    term = a.term
    for nid in ABC:
        _step_bad(net, nid, Heartbeat("default", (1 << 63) - 1, "a" if nid != "a" else "b", nid, 0))
    assert all(net[n].term == term for n in ABC)
    assert all(net.members[n].meta.load().term == term for n in ABC)
    # A handover (a new election at term + 1) still works.
    net["b"].step(TimeoutNow("default", term, "a", "b"))
    net.stabilize()
    assert net["b"].role is Role.LEADER and net["b"].term == term + 1


def test_a_term_jump_beyond_the_bound_is_dropped() -> None:
    net = Network(ABC)
    net.elect("a")
    b = net["b"]
    reasons = _step_bad(net, "b", Heartbeat("default", b.term + MAX_TERM_JUMP + 1, "a", "b", 0))
    assert "jumps" in reasons[0]
    assert b.term < MAX_TERM


def test_messages_from_non_members_and_from_ourselves_are_dropped() -> None:
    net = Network(ABC)
    a = net.elect("a")
    a.propose(b"real")
    net.stabilize()
    b = net["b"]
    last = b.log.last_index()
    forged = AppendEntries(
        "default",
        b.term,
        "mallory",
        "b",
        last,
        b.log.last_term(),
        tuple(ents(b.term, start=last + 1)),
        last + 1,
    )
    assert "non-member" in _step_bad(net, "b", forged)[0]
    assert "this node" in _step_bad(net, "b", Heartbeat("default", b.term, "b", "b", 0))[-1]
    assert b.leader == "a"


def test_a_second_leader_in_a_term_does_not_take_over_a_follower() -> None:
    net = Network(ABC)
    a = net.elect("a")
    b = net["b"]
    reasons = _step_bad(net, "b", Heartbeat("default", a.term, "c", "b", 0))
    assert "second leader" in reasons[0]
    assert b.leader == "a"


def test_timeout_now_is_honoured_only_from_the_current_leader() -> None:
    net = Network(ABC)
    a = net.elect("a")
    b = net["b"]
    _step_bad(net, "b", TimeoutNow("default", a.term, "c", "b"))
    _step_bad(net, "b", TimeoutNow("default", a.term + 1, "a", "b"))
    assert b.role is Role.FOLLOWER
    b.step(TimeoutNow("default", a.term, "a", "b"))
    assert b.role is Role.CANDIDATE


def test_a_vote_request_no_candidate_could_send_is_dropped() -> None:
    net = Network(ABC)
    net.elect("a")
    b = net["b"]
    reasons = _step_bad(net, "b", VoteRequest("default", b.term + 1, "c", "b", 5, b.term + 2))
    assert "past the campaign" in reasons[0]


def test_learners_cannot_campaign() -> None:
    net = Network(("a", "b"), learners=("l",))
    net.drop(lambda m: m.dst == "l")
    net.elect("a")
    b = net["b"]
    b.step(VoteRequest("default", b.term + 1, "l", "b", 10, b.term))
    assert b.vote != "l"
    assert "non-voter" in _reported(net, "b")[0]


def test_entries_rewriting_committed_ones_are_ignored_not_fatal() -> None:
    net = Network(ABC)
    a = net.elect("a")
    a.propose(b"x")
    net.stabilize()
    net.tick()
    b = net["b"]
    assert b.commit_index >= 2
    # Same term, from the real leader's id: rewrites committed index 2. Once it
    # raised LogSafetyError; now it is answered as stale and changes nothing.
    bad = AppendEntries(
        "default", b.term, "a", "b", 1, 1, tuple(ents(b.term, start=2, data=b"evil")), 0
    )
    b.step(bad)
    assert net.entries_of("b")[1].data != b"evil" and b.leader == "a"


def test_entries_out_of_order_are_dropped() -> None:
    net = Network(ABC)
    net.elect("a")
    b = net["b"]
    last, t = b.log.last_index(), b.log.last_term()
    bad = AppendEntries(
        "default", b.term, "a", "b", last, t, tuple(ents(b.term + 1, start=last + 1)), 0
    )
    assert "out of order" in _step_bad(net, "b", bad)[0]


def test_campaigning_stops_at_the_term_bound() -> None:
    net = Network(ABC, hard_states={"a": HardState(MAX_TERM)})
    a = net["a"]
    a.campaign()
    assert a.term == MAX_TERM and a.role is Role.FOLLOWER


def test_a_follower_whose_log_went_backwards_is_reported_and_caught_up() -> None:
    net = Network(ABC)
    a = net.elect("a")
    for i in range(5):
        a.propose(f"x{i}".encode())
    net.stabilize()
    assert a.progress["c"].match == a.log.last_index()
    # c's disk is wiped: it restarts with nothing (term and vote forgotten too).
    m = net.members["c"]
    m.log = MemoryLogStorage()
    m.meta = MemoryMetaStorage()
    net.restart("c")
    a.propose(b"after")
    net.stabilize()
    net.tick(n=3)  # heartbeats: the leader probes down to where c's log really ends
    reasons = [b.reason for rd in net.members["a"].readies for b in rd.bad_messages]
    assert any("went backwards" in r for r in reasons), reasons
    assert net.log_of("c") == net.log_of("a")  # caught up from its real end


def test_a_replaced_tail_equal_to_what_was_written_leaves_nothing_pending() -> None:
    # The review's spin: an in-flight write's entries were replaced by equal ones,
    # then the write completed; has_ready() must not keep promising them.
    net = Network(ABC)
    net.elect("a")
    b = net["b"]
    last, t = b.log.last_index(), b.log.last_term()
    batch = tuple(ents(t, t, t, start=last + 1))
    b.step(AppendEntries("default", b.term, "a", "b", last, t, batch, 0))
    rd = b.ready()  # hands out the three entries (the write is in flight)
    b.log.append(list(batch))  # the same entries, re-accepted from a stale append
    net.members["b"].log.append(rd.entries)
    b.advance(rd)
    assert b.log.in_progress >= b.log.last_index()
    while b.has_ready():
        nxt = b.ready()
        assert nxt.entries or nxt.messages or nxt.committed_entries or nxt.soft_state, "spin"
        b.advance(nxt)
