"""`pyjraft.node.events`: elections, votes and role changes derived from the
node's soft and hard states; each logged with group, node and term."""

from __future__ import annotations

import asyncio
import logging

import pytest

from pyjraft.core.types import NONE, HardState, Role, SoftState
from pyjraft.node.events import NodeEvents

ME = "n1:1"


def _events(term: list[int] | None = None) -> NodeEvents:
    box = term if term is not None else [0]
    return NodeEvents("g", ME, lambda: box[0], initial=SoftState(NONE, Role.FOLLOWER, 0))


def _names(ev: NodeEvents) -> list[str]:
    return [e["event"] for e in ev.recent]


def test_a_prevote_campaign_that_wins_logs_each_step() -> None:
    ev = _events()
    ev.soft_state(SoftState(NONE, Role.PRE_CANDIDATE, 0))
    ev.soft_state(SoftState(NONE, Role.CANDIDATE, 1))
    ev.soft_state(SoftState(ME, Role.LEADER, 1))
    assert _names(ev) == [
        "pre_vote_started",
        "role_change",
        "term_change",
        "election_started",
        "role_change",
        "election_won",
        "role_change",
        "leader_change",
    ]
    c = ev.counters
    assert (c["pre_votes_started"], c["elections_started"], c["elections_won"]) == (1, 1, 1)
    assert c["elections_lost"] == 0
    assert [e["event"] for e in ev.elections()] == [
        "pre_vote_started",
        "election_started",
        "election_won",
    ]


def test_a_win_seen_without_its_campaign_still_counts_the_election() -> None:
    # A single-member group campaigns and wins within one Ready.
    ev = _events()
    ev.soft_state(SoftState(ME, Role.LEADER, 1))
    assert ev.counters["elections_started"] == 1
    assert ev.counters["elections_won"] == 1


def test_a_candidate_that_hears_of_another_leader_lost() -> None:
    ev = _events()
    ev.soft_state(SoftState(NONE, Role.CANDIDATE, 2))
    ev.soft_state(SoftState("n2:1", Role.FOLLOWER, 2))
    lost = [e for e in ev.recent if e["event"] == "election_lost"]
    assert len(lost) == 1
    assert lost[0]["term"] == 2
    assert lost[0]["leader"] == "n2:1"
    assert ev.counters["elections_lost"] == 1


def test_a_split_vote_is_a_lost_election_and_a_new_one() -> None:
    ev = _events()
    ev.soft_state(SoftState(NONE, Role.CANDIDATE, 2))
    ev.soft_state(SoftState(NONE, Role.CANDIDATE, 3))
    assert ev.counters["elections_lost"] == 1
    assert ev.counters["elections_started"] == 2


def test_a_failed_prevote_is_logged_but_no_term_changes() -> None:
    ev = _events()
    ev.soft_state(SoftState(NONE, Role.PRE_CANDIDATE, 0))
    ev.soft_state(SoftState(NONE, Role.FOLLOWER, 0))
    assert "pre_vote_failed" in _names(ev)
    assert ev.counters["term_changes"] == 0


def test_votes_for_others_are_logged_once_per_term() -> None:
    ev = _events()
    ev.hard_state(HardState(1, ME))  # our own campaign: not a vote for another
    ev.hard_state(HardState(2, "n2:1"))
    ev.hard_state(HardState(2, "n2:1"))  # the same vote again: nothing new
    ev.hard_state(HardState(3, NONE))
    ev.hard_state(HardState(3, "n3:1"))
    votes = [e for e in ev.recent if e["event"] == "vote_granted"]
    assert [(v["term"], v["voted_for"]) for v in votes] == [(2, "n2:1"), (3, "n3:1")]
    assert ev.counters["votes_granted"] == 2


def test_every_line_carries_group_node_and_current_term(caplog: pytest.LogCaptureFixture) -> None:
    term = [7]
    ev = _events(term)
    with caplog.at_level(logging.INFO, logger="pyjraft.node"):
        ev.soft_state(SoftState("n2:1", Role.FOLLOWER, 7))
        ev.record("snapshot_saved", "snapshot saved", counter="snapshots_saved", index=42)
    assert caplog.records
    for r in caplog.records:
        assert (r.group, r.node, r.term) == ("g", ME, 7)  # type: ignore[attr-defined]
    saved = caplog.records[-1]
    assert saved.event == "snapshot_saved"  # type: ignore[attr-defined]
    assert saved.index == 42  # type: ignore[attr-defined]
    assert ev.counters["snapshots_saved"] == 1
    assert ev.recent[-1]["event"] == "snapshot_saved"


def test_fatal_logs_with_traceback_and_wakes_waiters(caplog: pytest.LogCaptureFixture) -> None:
    async def scenario() -> BaseException:
        ev = _events()
        waiter = asyncio.ensure_future(ev.wait_failed())
        await asyncio.sleep(0)
        assert not waiter.done()
        try:
            raise OSError("disk gone")
        except OSError as e:
            ev.fatal(e)
        got = await asyncio.wait_for(waiter, 5)
        # Asking after the fact answers at once.
        assert await asyncio.wait_for(ev.wait_failed(), 5) is got
        return got

    with caplog.at_level(logging.ERROR, logger="pyjraft.node"):
        err = asyncio.run(scenario())
    assert isinstance(err, OSError)
    (rec,) = caplog.records
    assert rec.event == "node_error"  # type: ignore[attr-defined]
    assert rec.exc_info is not None
