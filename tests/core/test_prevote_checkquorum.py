"""Raft thesis 9.6 (pre-vote) and 6.2 / 9.6 (check-quorum, leader lease on votes)."""

from __future__ import annotations

from pyjraft.core import (
    HardState,
    PreVoteRequest,
    PreVoteResponse,
    Role,
    VoteRequest,
    VoteResponse,
)
from tests.core.harness import Network, ents

ABC = ("a", "b", "c")


def test_9_6_pre_candidate_does_not_increase_its_term() -> None:
    net = Network(ABC, hard_states={"a": HardState(3, "b")})
    a = net["a"]
    a.campaign()
    assert (a.role, a.term, a.vote) == (Role.PRE_CANDIDATE, 3, "b")
    rd = a.ready()
    assert rd.hard_state is None  # nothing durable changed
    assert rd.eager_messages == []
    assert sorted((type(m).__name__, m.dst, m.term) for m in rd.messages) == [
        ("PreVoteRequest", "b", 4),
        ("PreVoteRequest", "c", 4),
    ]


def test_9_6_granting_a_pre_vote_changes_nothing_durable() -> None:
    net = Network(ABC, hard_states={"c": HardState(3)})
    c = net["c"]
    c.step(PreVoteRequest("default", 4, "a", "c", 0, 0))
    rd = c.ready()
    assert rd.hard_state is None and (c.term, c.vote) == (3, "")
    assert rd.messages == [PreVoteResponse("default", 4, "c", "a", True)]


def test_9_6_pre_vote_needs_a_quorum_before_the_real_vote() -> None:
    ids = ("a", "b", "c", "d", "e")
    net = Network(ids, seed=3)
    for n in ("c", "d", "e"):
        net.crash(n)
    a = net["a"]
    a.campaign()
    net.stabilize()
    assert (a.role, a.term) == (Role.PRE_CANDIDATE, 0)
    assert not [m for m in net.sent if isinstance(m, VoteRequest)]
    assert all(net[n].term == 0 for n in ("a", "b"))
    net.restart("c")
    a.campaign()
    net.stabilize()
    assert (a.role, a.term) == (Role.LEADER, 1)
    assert sorted(m.dst for m in net.sent if isinstance(m, VoteRequest)) == ["b", "c", "d", "e"]


def test_9_6_pre_candidate_refused_by_a_majority_returns_to_follower() -> None:
    logs = {"b": ents(2), "c": ents(2)}  # a's log is behind
    net = Network(ABC, seed=4, logs=logs, hard_states={n: HardState(2) for n in ABC})
    a = net["a"]
    a.campaign()
    net.stabilize()
    assert (a.role, a.term) == (Role.FOLLOWER, 2)
    assert not [m for m in net.sent if isinstance(m, VoteRequest)]


def test_9_6_rejoining_partitioned_member_does_not_disturb_a_healthy_leader() -> None:
    for seed in range(5):
        net = Network(ABC, seed=seed)
        net.elect("a")
        term = net["a"].term
        net.isolate("c")
        net.tick(n=100)  # c times out again and again, pre-voting each time
        assert net["c"].term == term, f"seed {seed}: isolated member bumped its term"
        assert net["c"].role is Role.PRE_CANDIDATE, f"seed {seed}"
        net.heal()
        net.tick(n=50)
        assert net.leaders() == ["a"], f"seed {seed}"
        assert [net[n].term for n in ABC] == [term] * 3, f"seed {seed}"
        assert net["c"].leader == "a", f"seed {seed}"


def test_without_pre_vote_a_rejoining_member_bumps_the_term() -> None:
    """The contrast that motivates pre-vote (same schedule, pre-vote off)."""
    net = Network(ABC, seed=1, pre_vote=False, check_quorum=False)
    net.elect("a")
    net.isolate("c")
    net.tick(n=100)
    assert net["c"].term > 1
    net.heal()
    net.tick(n=50)
    assert net["a"].term > 1


def test_check_quorum_leader_steps_down_without_a_quorum() -> None:
    e = 10
    net = Network(ABC, seed=5, election_ticks=e)
    a = net.elect("a")
    term = a.term
    net.isolate("a")
    for _ in range(2 * e):
        a.tick()
        net.stabilize()
    assert (a.role, a.term, a.leader) == (Role.FOLLOWER, term, "")


def test_check_quorum_leader_with_a_quorum_stays() -> None:
    net = Network(ABC, seed=5)
    a = net.elect("a")
    net.isolate("c")
    net.tick(["a", "b"], n=100)
    assert a.role is Role.LEADER and a.term == 1


def test_check_quorum_follower_in_lease_ignores_higher_term_vote_requests() -> None:
    e = 10
    net = Network(ABC, seed=6, election_ticks=e)
    net.elect("a")
    b = net["b"]
    b.step(VoteRequest("default", 5, "c", "b", 100, 5))
    b.step(PreVoteRequest("default", 5, "c", "b", 100, 5))
    out = net.process_ready("b")
    assert out == []
    assert (b.term, b.vote, b.leader) == (1, "a", "a")
    # Once an election timeout passes without hearing from the leader, b votes.
    net.isolate("b")
    for _ in range(e):
        b.tick()
        net.stabilize()
    b.step(VoteRequest("default", 5, "c", "b", 100, 5))
    out = net.process_ready("b")
    assert out == [VoteResponse("default", 5, "b", "c", True)]


def test_check_quorum_transfer_vote_overrides_the_lease() -> None:
    net = Network(ABC, seed=6)
    net.elect("a")
    b = net["b"]
    b.step(VoteRequest("default", 2, "c", "b", 100, 2, transfer=True))
    out = net.process_ready("b")
    assert out == [VoteResponse("default", 2, "b", "c", True)]
