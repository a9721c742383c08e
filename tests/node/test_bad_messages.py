"""A node that receives impossible raft messages logs and counts them, and
keeps leading; the log lines are rate-limited."""

from __future__ import annotations

import logging

import pytest

from pyjraft.core.messages import AppendEntriesResponse, Heartbeat
from pyjraft.node import ratelimit
from pyjraft.node.ratelimit import RateLimitedLog
from tests.node.harness import LocalCluster, run


def test_a_leader_drops_forged_messages_logs_them_and_keeps_leading(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def main() -> None:
        async with LocalCluster(seed=7) as c:
            leader = await c.leader()
            follower = next(n for n in c.nodes.values() if not n.is_leader)
            term = leader.term
            # Once: LogSafetyError("two leaders") and ERROR for good; an ack far past
            # the last index killed the next send; a huge term bricked the group.
            leader._on_message(Heartbeat(leader.group, term, follower.id, leader.id, 0))
            leader._on_message(
                AppendEntriesResponse(leader.group, term, follower.id, leader.id, True, 1 << 40)
            )
            leader._on_message(Heartbeat(leader.group, (1 << 63) - 1, follower.id, leader.id, 0))
            assert await leader.apply(b"5") == 5
            assert leader.is_leader and leader.term == term
            assert leader.stats["bad_messages"] == 3

    with caplog.at_level(logging.WARNING, logger="pyjraft.node"):
        run(main())
    lines = [r.getMessage() for r in caplog.records if "dropped a bad " in r.getMessage()]
    assert len(lines) == 3
    assert any("second leader" in line for line in lines)


def test_the_rate_limit_summarises_what_it_held_back(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    now = [100.0]
    monkeypatch.setattr(ratelimit.time, "monotonic", lambda: now[0])
    limited = RateLimitedLog(logging.getLogger("test.ratelimit"), per_second=2)
    with caplog.at_level(logging.WARNING, logger="test.ratelimit"):
        for i in range(10):
            limited.warning("bad %d", i)
        now[0] += 1
        limited.warning("bad %d", 10)
    assert [r.getMessage() for r in caplog.records] == [
        "bad 0",
        "bad 1",
        "bad 10 (and 8 more like it not logged)",
    ]
