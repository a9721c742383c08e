"""Paper 5.3 (log replication), Figure 7, 5.4.2 / Figure 8, and fast backtracking."""

from __future__ import annotations

import pytest

from pyjraft.core import (
    AppendEntries,
    AppendEntriesResponse,
    Entry,
    EntryType,
    HardState,
    Heartbeat,
    Message,
    Role,
)
from tests.core.harness import Network, ents

ABC = ("a", "b", "c")


def test_5_3_leader_replicates_and_commits_on_every_member() -> None:
    net = Network(ABC, seed=1)
    a = net.elect("a")
    index = a.propose(b"hello")
    net.stabilize()
    assert a.commit_index == index
    net.tick(n=1)  # the next heartbeat carries the commit index
    for n in ABC:
        assert net.log_of(n) == [(1, 1), (2, 1)]
        assert net[n].commit_index == index
        assert [e.data for e in net.members[n].applied] == [b"", b"hello"]


def test_5_3_follower_learns_commit_from_the_next_append_or_heartbeat() -> None:
    net = Network(ABC, seed=1)
    a = net.elect("a")
    index = a.propose(b"x")
    net.stabilize()
    assert a.commit_index == index
    # No message was sent after the leader learned the commit.
    assert net["b"].commit_index == index - 1
    a.propose(b"y")
    net.stabilize()
    assert net["b"].commit_index == index  # piggybacked on the next AppendEntries
    a.tick()  # heartbeat_ticks == 1
    net.stabilize()
    assert net["b"].commit_index == net["c"].commit_index == a.commit_index == index + 1


@pytest.mark.parametrize(
    ("prev_index", "prev_term"),
    [(3, 1), (2, 2), (1, 2)],  # past our log; term mismatch; term mismatch early
)
def test_5_3_consistency_check_rejects_on_prev_mismatch(prev_index: int, prev_term: int) -> None:
    net = Network(ABC, logs={"b": ents(1, 1)}, hard_states={"b": HardState(2)})
    b = net["b"]
    entries = tuple(ents(2, start=prev_index + 1))
    b.step(AppendEntries("default", 2, "a", "b", prev_index, prev_term, entries, 0))
    out = net.process_ready("b")
    assert len(out) == 1
    resp = out[0]
    assert isinstance(resp, AppendEntriesResponse)
    assert not resp.success and resp.index == prev_index
    assert net.log_of("b") == [(1, 1), (2, 1)]


def test_5_3_follower_deletes_conflicting_entries_and_appends_new_ones() -> None:
    net = Network(ABC, logs={"b": ents(1, 1, 1, 1)}, hard_states={"b": HardState(1)})
    b = net["b"]
    new = tuple(ents(2, 2, start=3))
    b.step(AppendEntries("default", 2, "a", "b", 2, 1, new, 0))
    rd_msgs = net.process_ready("b")
    assert net.log_of("b") == [(1, 1), (2, 1), (3, 2), (4, 2)]
    assert net.entries_of("b")[2:] == list(new)
    assert rd_msgs == [AppendEntriesResponse("default", 2, "b", "a", True, 4)]


def test_5_3_follower_truncates_a_longer_conflicting_tail() -> None:
    net = Network(ABC, logs={"b": ents(1, 1, 1, 1, 1)}, hard_states={"b": HardState(1)})
    b = net["b"]
    b.step(AppendEntries("default", 2, "a", "b", 1, 1, tuple(ents(2, start=2)), 0))
    net.process_ready("b")
    assert net.log_of("b") == [(1, 1), (2, 2)]


def test_5_3_follower_keeps_entries_following_an_already_present_prefix() -> None:
    """A delayed AppendEntries with entries we already hold must not truncate."""
    net = Network(ABC, logs={"b": ents(1, 2, 2, 2)}, hard_states={"b": HardState(2)})
    b = net["b"]
    b.step(AppendEntries("default", 2, "a", "b", 1, 1, tuple(ents(2, start=2)), 0))
    out = net.process_ready("b")
    assert net.log_of("b") == [(1, 1), (2, 2), (3, 2), (4, 2)]
    # The acknowledgement covers only what that message proved to match.
    assert out == [AppendEntriesResponse("default", 2, "b", "a", True, 2)]


def test_5_3_heartbeat_commit_never_exceeds_what_the_follower_matches() -> None:
    """``c`` holds a divergent tail of an old term as long as the leader's committed
    log. Were the heartbeat to carry the leader's full commit index, ``c`` would
    commit and apply its divergent entries."""
    logs = {"a": ents(1), "b": ents(1), "c": ents(1, 2, 2, 2, 2)}
    hs = {n: HardState(2) for n in ABC}
    net = Network(ABC, seed=7, logs=logs, hard_states=hs)
    net.drop(lambda m: isinstance(m, AppendEntries) and m.dst == "c")
    a = net.elect("a")
    a.propose_batch([b"x", b"y", b"z"])
    net.stabilize()
    assert a.commit_index == 5 and net["c"].log.last_index() == 5
    mark = len(net.sent)
    net.tick(n=3)
    beats = [m for m in net.sent_since(mark) if isinstance(m, Heartbeat) and m.dst == "c"]
    assert beats and all(m.commit <= a.progress["c"].match for m in beats)
    assert net["c"].commit_index == 0 and net.members["c"].applied == []
    # Once repaired, c commits the leader's entries.
    net.heal()
    net.tick(n=2)
    assert net.log_of("c") == net.log_of("a")
    assert net["c"].commit_index == 5
    assert net.members["c"].applied == net.entries_of("a")


# -- Figure 7 --------------------------------------------------------------------

FIG7_LEADER = (1, 1, 1, 4, 4, 5, 5, 6, 6, 6)
FIG7_FOLLOWERS = {
    "a": (1, 1, 1, 4, 4, 5, 5, 6, 6),
    "b": (1, 1, 1, 4),
    "c": (1, 1, 1, 4, 4, 5, 5, 6, 6, 6, 6),
    "d": (1, 1, 1, 4, 4, 5, 5, 6, 6, 6, 7, 7),
    "e": (1, 1, 1, 4, 4, 4, 4),
    "f": (1, 1, 1, 2, 2, 2, 3, 3, 3, 3, 3),
}


@pytest.mark.parametrize("case", sorted(FIG7_FOLLOWERS))
def test_figure_7_every_follower_ends_with_the_leaders_log(case: str) -> None:
    """Leader of term 8 with Figure 7's top log; follower (a)-(f); a third member
    ``x`` holding the leader's log, so the leader wins even when the follower's
    log is more up to date (cases c and d)."""
    ids = ("leader", "follower", "x")
    logs = {
        "leader": ents(*FIG7_LEADER),
        "x": ents(*FIG7_LEADER),
        "follower": ents(*FIG7_FOLLOWERS[case]),
    }
    hs = {"leader": HardState(8), "x": HardState(8), "follower": HardState(7)}
    net = Network(ids, seed=8, logs=logs, hard_states=hs)
    leader = net.elect("leader")
    leader.propose(b"after")
    net.stabilize()
    leader.tick()
    net.stabilize()
    want = [*((i + 1, t) for i, t in enumerate(FIG7_LEADER)), (11, 9), (12, 9)]
    assert net.log_of("leader") == want
    assert net.log_of("follower") == want, f"case {case}"
    assert net.entries_of("follower") == net.entries_of("leader")
    assert net["follower"].commit_index == 12


# -- 5.4.2 / Figure 8 -------------------------------------------------------------

FIG8 = ("s1", "s2", "s3", "s4", "s5")


def _figure_8_c() -> Network:
    """Figure 8 (b) rebuilt from storage, then (c) played: S1 (back from a crash)
    is elected for term 4 with S5 down, appends its term-4 entry (the no-op) at
    index 3, and replicates index 2 (term 2) to S3, so index 2 is on S1, S2, S3.

    The base algorithm of the paper (no pre-vote, no check-quorum). S1 sends one
    entry per message so S3 can hold index 2 without index 3; S4 is unreachable
    and S3 never receives index 3.
    """
    logs = {
        "s1": ents(1, 2),
        "s2": ents(1, 2),
        "s3": ents(1),
        "s4": ents(1),
        "s5": ents(1, 3),
    }
    hs = {
        "s1": HardState(2, "s1"),
        "s2": HardState(2, "s1"),
        "s3": HardState(3, "s5"),
        "s4": HardState(3, "s5"),
        "s5": HardState(3, "s5"),
    }
    net = Network(
        FIG8,
        seed=88,
        logs=logs,
        hard_states=hs,
        pre_vote=False,
        check_quorum=False,
        overrides={"s1": {"max_entries_per_msg": 1}},
    )
    net.crash("s5")
    s1 = net["s1"]
    s1.campaign()  # term 3: S3 and S4 already voted for S5 in term 3
    net.stabilize()
    assert s1.role is Role.CANDIDATE
    net.drop(lambda m: m.src == "s1" and m.dst == "s4" and isinstance(m, AppendEntries))
    net.drop(
        lambda m: (
            m.src == "s1"
            and m.dst == "s3"
            and isinstance(m, AppendEntries)
            and any(e.term == 4 for e in m.entries)
            and net["s3"].log.last_index() >= 2  # its first probe is rejected anyway
        )
    )
    net.elect("s1")
    assert s1.term == 4
    assert net.log_of("s1") == [(1, 1), (2, 2), (3, 4)]
    assert net.log_of("s3") == [(1, 1), (2, 2)]
    assert net.log_of("s4") == [(1, 1)]
    return net


def test_figure_8_c_leader_does_not_commit_a_previous_term_entry_by_counting_replicas() -> None:
    net = _figure_8_c()
    s1 = net["s1"]
    holders = [n for n in FIG8 if (2, 2) in net.log_of(n)]
    assert holders == ["s1", "s2", "s3"]  # a majority of five...
    assert s1.progress["s3"].match == 2 and s1.progress["s2"].match == 3
    assert s1.commit_index == 0  # ...yet not committed
    assert all(net[n].commit_index == 0 for n in FIG8)


def test_figure_8_d_an_uncommitted_previous_term_entry_may_be_overwritten() -> None:
    """Why (c) must not commit: S1 crashes, S5 is elected by S3 and S4 (and
    itself) and overwrites index 2 everywhere it can."""
    net = _figure_8_c()
    net.crash("s1")
    net.heal()
    net.restart("s5")
    net["s5"].campaign()  # term 4: everyone already voted for S1
    net.stabilize()
    s5 = net.elect("s5")
    assert s5.term == 5
    for n in ("s2", "s3", "s4", "s5"):
        assert net.log_of(n)[:2] == [(1, 1), (2, 3)], n
    assert all(e.term != 2 for n in FIG8 if n != "s1" for e in net.members[n].applied)


def test_figure_8_e_an_entry_of_the_current_term_on_a_majority_commits_earlier_ones() -> None:
    net = _figure_8_c()
    s1 = net["s1"]
    net.heal()  # S3 now receives index 3 (term 4)
    s1.tick()
    net.stabilize()
    assert s1.progress["s3"].match == 3
    assert s1.commit_index == 3
    s1.tick()
    net.stabilize()
    assert [(e.index, e.term) for e in net.members["s3"].applied] == [(1, 1), (2, 2), (3, 4)]
    # And now S5 cannot be elected: a majority holds a more up-to-date log.
    net.crash("s1")
    net.restart("s5")
    for _ in range(3):
        net["s5"].campaign()
        net.stabilize()
        assert net["s5"].role is not Role.LEADER


# -- fast backtracking ------------------------------------------------------------


def _count_rejections(msgs: list[Message], src: str) -> int:
    return sum(
        1 for m in msgs if isinstance(m, AppendEntriesResponse) and m.src == src and not m.success
    )


@pytest.mark.parametrize(
    ("leader_terms", "follower_terms"),
    [
        # Follower: 1000 conflicting entries of 2 terms after a shared prefix.
        ((1,) + (2,) * 300 + (4,) * 700, (1,) + (2,) * 500 + (3,) * 500),
        # Follower far longer than the leader, divergent from index 2.
        ((1,) + (4,) * 10, (1,) + (2,) * 500 + (3,) * 500),
        # Follower far shorter: it lacks the leader's tail of two terms.
        ((1,) + (2,) * 500 + (4,) * 500, (1,) + (2,) * 10),
    ],
    ids=["shared-prefix", "follower-longer", "follower-shorter"],
)
def test_fast_backtracking_is_proportional_to_terms_not_entries(
    leader_terms: tuple[int, ...], follower_terms: tuple[int, ...]
) -> None:
    ids = ("a", "b", "c")
    logs = {"a": ents(*leader_terms), "b": ents(*leader_terms), "c": ents(*follower_terms)}
    hs = {"a": HardState(4), "b": HardState(4), "c": HardState(3)}
    net = Network(ids, seed=9, logs=logs, hard_states=hs)
    net.elect("a")
    net.tick(n=2)
    assert net.log_of("c") == net.log_of("a")
    rejections = _count_rejections(net.sent, "c")
    appends = sum(
        1 for m in net.sent if isinstance(m, AppendEntries) and m.dst == "c" and m.entries
    )
    assert rejections <= 2, f"{rejections} rejections"
    assert appends <= 3, f"{appends} AppendEntries with entries"


def test_fast_backtracking_many_small_terms_costs_one_round_trip_per_term_at_most() -> None:
    # Follower: 1 + 5 old terms of 100 entries each (terms 2, 3, 5, 6, 7 absent at leader);
    # leader: one long term-8 tail.
    follower = (1, *(t for t in (2, 3, 5, 6, 7) for _ in range(100)))
    leader = (1,) + (8,) * 600
    logs = {"a": ents(*leader), "b": ents(*leader), "c": ents(*follower)}
    hs = {"a": HardState(8), "b": HardState(8), "c": HardState(7)}
    net = Network(ABC, seed=10, logs=logs, hard_states=hs)
    net.elect("a")
    net.tick(n=2)
    assert net.log_of("c") == net.log_of("a")
    assert _count_rejections(net.sent, "c") <= 6


def test_entry_payloads_survive_replication() -> None:
    net = Network(ABC, seed=11)
    a = net.elect("a")
    a.propose_batch([bytes([i]) * i for i in range(1, 20)])
    net.stabilize()
    for n in ("b", "c"):
        assert net.entries_of(n) == net.entries_of("a")
    assert [e.type for e in net.entries_of("b")][:2] == [EntryType.NOOP, EntryType.NORMAL]
    assert isinstance(net.entries_of("b")[1], Entry)


# -- loss, reordering and duplication ---------------------------------------------


def test_lost_probe_is_resent_after_a_heartbeat_response() -> None:
    logs = {n: ents(1, 1) for n in ABC}
    hs = {n: HardState(1) for n in ABC}
    net = Network(ABC, seed=14, logs=logs, hard_states=hs)
    lost: list[Message] = []

    def lose_first_append_to_c(m: Message) -> bool:
        if isinstance(m, AppendEntries) and m.dst == "c" and not lost:
            lost.append(m)
            return True
        return False

    net.drop(lose_first_append_to_c)
    a = net.elect("a")
    assert lost and net.log_of("c") == [(1, 1), (2, 1)]
    a.tick()
    net.stabilize()
    assert net.log_of("c") == net.log_of("a")


@pytest.mark.parametrize("seed", range(6))
def test_reordered_and_duplicated_appends_converge(seed: int) -> None:
    import random

    rng = random.Random(seed)
    net = Network(ABC, seed=seed)
    a = net.elect("a")
    net.isolate("c")
    pending: list[Message] = []
    for i in range(12):
        a.propose(b"%d" % i)
        pending += [m for m in net.process_ready("a") if m.dst == "b"]
    delivered = 0
    while pending and delivered < 500:
        m = pending.pop(rng.randrange(len(pending)))
        if rng.random() < 0.3:
            pending.append(m)  # deliver it again later
        target = net[m.dst]
        target.step(m)
        delivered += 1
        for out in net.process_ready(m.dst):
            if out.dst in ("a", "b"):
                pending.append(out)
        pending += [x for x in net.process_ready("a") if x.dst == "b"]
        if not pending and a.progress["b"].match < a.log.last_index():
            a.tick()
            pending += [x for x in net.process_ready("a") if x.dst == "b"]
    assert net.log_of("b") == net.log_of("a"), f"seed {seed}"
    assert a.progress["b"].match == a.log.last_index() == 13, f"seed {seed}"
    assert a.commit_index == 13, f"seed {seed}"
