"""Paper 5.1 (terms), 5.2 (leader election) and 5.4.1 (election restriction)."""

from __future__ import annotations

import random

import pytest

from pyjraft.core import (
    AppendEntries,
    AppendEntriesResponse,
    Entry,
    EntryType,
    HardState,
    Heartbeat,
    Message,
    PreVoteRequest,
    PreVoteResponse,
    RaftCore,
    Role,
    VoteRequest,
    VoteResponse,
)
from tests.core.harness import Network, ents

ABC = ("a", "b", "c")


def _responses(msgs: list[Message], kind: type) -> list[Message]:
    return [m for m in msgs if isinstance(m, kind)]


def _in_role(role: Role, seed: int = 1) -> tuple[Network, RaftCore]:
    """A 3-member network whose member ``a`` is in ``role`` at some term >= 1."""
    net = Network(ABC, seed=seed, hard_states={n: HardState(3) for n in ABC})
    a = net["a"]
    if role is Role.FOLLOWER:
        return net, a
    if role is Role.LEADER:
        net.elect("a")
        return net, a
    a.campaign()  # pre-vote round: stays at term 3
    net.flush()
    net.queue.clear()
    if role is Role.CANDIDATE:
        a.step(PreVoteResponse("default", a.term + 1, "b", "a", True))
        net.flush()
        net.queue.clear()
    assert a.role is role
    return net, a


# -- 5.1 terms -----------------------------------------------------------------


def test_5_1_append_entries_from_lower_term_is_rejected_with_our_term() -> None:
    net = Network(ABC, hard_states={"a": HardState(5)}, logs={"a": ents(1, 2)})
    a = net["a"]
    a.step(AppendEntries("default", 3, "b", "a", 2, 2, tuple(ents(3, start=3)), 3))
    out = net.process_ready("a")
    assert a.term == 5 and a.leader == ""
    assert net.log_of("a") == [(1, 1), (2, 2)]
    assert out == [AppendEntriesResponse("default", 5, "a", "b", False, 0)]


def test_5_1_vote_request_from_lower_term_is_not_granted() -> None:
    net = Network(ABC, hard_states={"a": HardState(5)})
    a = net["a"]
    a.step(VoteRequest("default", 4, "b", "a", 10, 4))
    out = net.process_ready("a")
    assert a.vote == "" and a.term == 5
    assert not [m for m in out if isinstance(m, VoteResponse) and m.granted]
    # It is answered with our term (the paper's RequestVote reply): a candidate
    # left unanswered could stay behind for good (simulator seed 1084/3).
    assert out == [VoteResponse("default", 5, "a", "b", False)]


def test_5_1_the_leader_of_an_older_term_outside_our_configuration_learns_our_term() -> None:
    # We are stuck at a higher term in a configuration without the group's
    # current leader: only our term makes it step down, so that a leader of a
    # newer term can reach us (simulator seed 884/3).
    net = Network(ABC, hard_states={"a": HardState(9)})
    a = net["a"]
    a.step(Heartbeat("default", 4, "d", "a", 0))
    out = net.process_ready("a")
    assert a.term == 9 and a.leader == ""
    assert out == [AppendEntriesResponse("default", 9, "a", "d", False, 0)]
    a.step(Heartbeat("default", 4, "d", "a", 0), from_node=False)  # unauthenticated
    assert net.process_ready("a") == []


@pytest.mark.parametrize("role", [Role.FOLLOWER, Role.PRE_CANDIDATE, Role.CANDIDATE, Role.LEADER])
@pytest.mark.parametrize("kind", ["append", "heartbeat", "vote_response"])
def test_5_1_higher_term_makes_every_role_a_follower_of_that_term(role: Role, kind: str) -> None:
    net, a = _in_role(role)
    high = a.term + 5
    msg: Message
    if kind == "append":
        msg = AppendEntries("default", high, "c", "a", 0, 0, (), 0)
    elif kind == "heartbeat":
        msg = Heartbeat("default", high, "c", "a", 0)
    else:
        msg = VoteResponse("default", high, "c", "a", False)
    a.step(msg)
    net.process_ready("a")
    assert (a.role, a.term, a.vote) == (Role.FOLLOWER, high, "")
    assert net.members["a"].meta.load().term == high
    # From a leader's message we also learn who leads.
    assert a.leader == ("" if kind == "vote_response" else "c")


def test_5_1_terms_never_decrease_under_random_faults() -> None:
    """The harness asserts monotonic terms on every Ready; drive a lossy cluster
    (and check election safety on the way: at most one leader per term)."""
    for seed in range(8):
        net = Network(("a", "b", "c", "d", "e"), seed=seed, check_quorum=False, pre_vote=False)
        rng = random.Random(seed)
        leader_of: dict[int, str] = {}
        for step in range(300):
            if step % 25 == 0:
                net.heal()
                for _ in range(2):
                    x, y = rng.sample(net.ids, 2)
                    net.cut(x, y)
            net.tick()
            for n in net.leaders():
                term = net[n].term
                assert leader_of.setdefault(term, n) == n, f"seed {seed}: two leaders in {term}"
                if rng.random() < 0.3:
                    net[n].propose(b"x")
        assert len(leader_of) >= 2, f"seed {seed}: the faults should force re-elections"


# -- 5.2 leader election -------------------------------------------------------


def test_5_2_follower_campaigns_after_its_election_timeout() -> None:
    net = Network(ABC, seed=3, pre_vote=False)
    a = net["a"]
    timeout = a.randomized_election_ticks
    for _ in range(timeout - 1):
        a.tick()
    assert a.role is Role.FOLLOWER and a.term == 0
    a.tick()
    assert (a.role, a.term, a.vote) == (Role.CANDIDATE, 1, "a")
    out = net.process_ready("a")
    reqs = _responses(out, VoteRequest)
    assert sorted(m.dst for m in reqs) == ["b", "c"]
    assert all(m.term == 1 for m in reqs)


def test_5_2_election_timeout_is_randomized_over_e_to_2e() -> None:
    e = 10
    seen: set[int] = set()
    for seed in range(400):
        net = Network(ABC, seed=seed, election_ticks=e)
        a = net["a"]
        ticks = 0
        while a.role is Role.FOLLOWER:
            a.tick()
            ticks += 1
            assert ticks < 2 * e, f"seed {seed}: no election after {ticks} ticks"
        assert ticks >= e, f"seed {seed}: election after only {ticks} ticks"
        seen.add(ticks)
    assert seen == set(range(e, 2 * e)), f"timeouts seen: {sorted(seen)}"


def test_5_2_candidate_wins_with_a_majority() -> None:
    net = Network(("a", "b", "c", "d", "e"), seed=2)
    net.crash("d")
    net.crash("e")
    net.elect("a")
    assert net["b"].leader == "a" and net["c"].leader == "a"
    assert net["b"].term == net["a"].term == 1


def test_5_2_candidate_without_a_majority_does_not_win() -> None:
    net = Network(("a", "b", "c", "d", "e"), seed=2, pre_vote=False)
    for n in ("c", "d", "e"):
        net.crash(n)
    net["a"].campaign()
    net.stabilize()
    assert net["a"].role is Role.CANDIDATE and net["a"].term == 1


def test_5_2_candidate_steps_down_on_heartbeat_from_leader_of_its_term() -> None:
    _, a = _in_role(Role.CANDIDATE)
    term = a.term
    a.step(Heartbeat("default", term, "b", "a", 0))
    assert (a.role, a.term, a.leader) == (Role.FOLLOWER, term, "b")
    a2 = _in_role(Role.CANDIDATE)[1]
    a2.step(AppendEntries("default", a2.term, "c", "a", 0, 0, (), 0))
    assert (a2.role, a2.leader) == (Role.FOLLOWER, "c")


def test_5_2_candidate_steps_down_on_a_higher_term() -> None:
    _, a = _in_role(Role.CANDIDATE)
    a.step(VoteResponse("default", a.term + 1, "b", "a", False))
    assert a.role is Role.FOLLOWER


def test_5_2_at_most_one_vote_per_term() -> None:
    net = Network(ABC)
    c = net["c"]
    c.step(VoteRequest("default", 2, "a", "c", 0, 0))
    out1 = net.process_ready("c")
    c.step(VoteRequest("default", 2, "b", "c", 0, 0))
    out2 = net.process_ready("c")
    c.step(VoteRequest("default", 2, "a", "c", 0, 0))  # a retransmission
    out3 = net.process_ready("c")
    assert out1 == [VoteResponse("default", 2, "c", "a", True)]
    assert out2 == [VoteResponse("default", 2, "c", "b", False)]
    assert out3 == [VoteResponse("default", 2, "c", "a", True)]
    assert net.members["c"].meta.load() == HardState(2, "a")


def test_5_2_vote_is_durable_before_the_response_may_be_sent() -> None:
    net = Network(ABC)
    c = net["c"]
    c.step(VoteRequest("default", 1, "a", "c", 0, 0))
    rd = c.ready()
    assert rd.hard_state == HardState(1, "a")
    assert rd.eager_messages == []
    assert rd.messages == [VoteResponse("default", 1, "c", "a", True)]
    assert rd.must_sync


def test_5_2_a_candidates_own_vote_is_durable_before_its_requests() -> None:
    net = Network(ABC, pre_vote=False)
    a = net["a"]
    a.campaign()
    rd = a.ready()
    assert rd.hard_state == HardState(1, "a")
    assert rd.eager_messages == []
    assert {type(m) for m in rd.messages} == {VoteRequest}


def test_5_2_a_vote_restarts_the_election_timer() -> None:
    net = Network(ABC, pre_vote=False, check_quorum=False)
    c = net["c"]
    for _ in range(c.randomized_election_ticks - 1):
        c.tick()
    c.step(VoteRequest("default", 1, "a", "c", 0, 0))
    c.tick()
    assert c.role is Role.FOLLOWER


@pytest.mark.parametrize("seed", range(10))
def test_5_2_split_votes_resolve(seed: int) -> None:
    """Four members, two simultaneous candidates each with one vote: a split.
    Randomized timeouts then elect exactly one leader."""
    ids = ("a", "b", "c", "d")
    net = Network(ids, seed=seed, pre_vote=False, check_quorum=False)
    net.cut("a", "d")
    net.cut("b", "c")
    net.cut("a", "b")
    net["a"].campaign()
    net["b"].campaign()
    net.stabilize()
    assert [net[n].role for n in ids] == [
        Role.CANDIDATE,
        Role.CANDIDATE,
        Role.FOLLOWER,
        Role.FOLLOWER,
    ]
    assert net["c"].vote == "a" and net["d"].vote == "b"
    net.heal()
    ticks = 0
    while not net.leaders() and ticks < 200:
        net.tick()
        ticks += 1
    leaders = net.leaders()
    assert len(leaders) == 1, f"seed {seed}: leaders {leaders} after {ticks} ticks"
    term = net[leaders[0]].term
    assert all(net[n].leader == leaders[0] and net[n].term == term for n in ids), f"seed {seed}"


def test_5_2_single_member_group_elects_itself_and_commits() -> None:
    net = Network(("solo",), seed=4)
    solo = net["solo"]
    for _ in range(20):
        solo.tick()
        net.stabilize()
    assert solo.role is Role.LEADER and solo.term == 1
    index = solo.propose(b"x")
    net.stabilize()
    assert solo.commit_index == index == 2
    assert [e.type for e in net.members["solo"].applied] == [EntryType.NOOP, EntryType.NORMAL]


# -- 5.4.1 election restriction ------------------------------------------------


@pytest.mark.parametrize(
    ("cand_last_index", "cand_last_term", "granted"),
    [
        (5, 2, False),  # older last term, longer log: term comparison comes first
        (2, 4, True),  # newer last term, shorter log
        (2, 3, False),  # same last term, shorter
        (3, 3, True),  # same last term, same length
        (4, 3, True),  # same last term, longer
    ],
)
def test_5_4_1_vote_refused_to_a_less_up_to_date_candidate(
    cand_last_index: int, cand_last_term: int, granted: bool
) -> None:
    net = Network(ABC, hard_states={"c": HardState(3)}, logs={"c": ents(1, 2, 3)})
    c = net["c"]
    c.step(VoteRequest("default", 5, "a", "c", cand_last_index, cand_last_term))
    out = net.process_ready("c")
    assert out == [VoteResponse("default", 5, "c", "a", granted)]
    assert c.vote == ("a" if granted else "")


def test_5_4_1_up_to_date_log_wins_the_election() -> None:
    """A member with a stale log cannot be elected by members with newer logs."""
    logs = {"a": ents(1), "b": ents(1, 2), "c": ents(1, 2)}
    net = Network(ABC, logs=logs, hard_states={n: HardState(2) for n in ABC})
    net["a"].campaign()
    net.stabilize()
    assert net["a"].role is not Role.LEADER
    net.elect("b")


def test_propose_on_a_non_leader_names_the_leader() -> None:
    from pyjraft.core import NotLeaderError

    net = Network(ABC, seed=5)
    with pytest.raises(NotLeaderError) as exc:
        net["b"].propose(b"x")
    assert exc.value.leader == ""
    net.elect("a")
    for n in ("b", "c"):
        with pytest.raises(NotLeaderError) as exc:
            net[n].propose(b"x")
        assert exc.value.leader == "a"
        with pytest.raises(NotLeaderError):
            net[n].propose_batch([b"x", b"y"])


def test_pre_vote_request_lower_term_rejected() -> None:
    net = Network(ABC, hard_states={"c": HardState(5)})
    net["c"].step(PreVoteRequest("default", 4, "a", "c", 9, 3))
    out = net.process_ready("c")
    assert len(out) == 1 and not out[0].granted and out[0].term == 5  # type: ignore[union-attr]


def test_new_leader_appends_a_noop_of_its_term() -> None:
    net = Network(
        ABC, logs={n: ents(1, 1) for n in ABC}, hard_states={n: HardState(1) for n in ABC}
    )
    a = net.elect("a")
    last = net.entries_of("a")[-1]
    assert last == Entry(a.term, 3, EntryType.NOOP, b"")
    assert a.term == 2
    assert all(net.entries_of(n)[-1] == last for n in ABC)
