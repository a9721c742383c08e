"""A follower measures the gaps between its leader's heartbeats."""

from __future__ import annotations

from pyjraft.core.messages import Heartbeat
from pyjraft.node.heartbeat_gaps import RECENT_GAPS, HeartbeatGaps
from tests.node.harness import LocalCluster, run, wait_for


def test_gaps_are_counted_per_leader_and_term() -> None:
    g = HeartbeatGaps()
    g.heartbeat("a", 1, 10.0)  # the first heartbeat of a term starts the count
    g.heartbeat("a", 1, 10.125)
    g.heartbeat("a", 1, 10.375)
    g.heartbeat("b", 2, 15.0)  # a new leader: its election is not a gap
    g.heartbeat("b", 2, 15.125)
    s = g.summary()
    assert s["count"] == 3
    assert s["max_ms"] == 250.0 and s["max_since_start_ms"] == 250.0
    assert s["p50_ms"] == 125.0
    assert s["p99_ms"] == 250.0
    buckets = dict(s["buckets"])  # cumulative, by upper bound in seconds
    assert buckets[0.12] == 0 and buckets[0.13] == 2 and buckets[0.225] == 2
    assert buckets[0.25] == 3


def test_the_summary_covers_the_latest_gaps_only() -> None:
    g = HeartbeatGaps()
    now = 0.0
    g.heartbeat("a", 1, now)
    now += 5.0  # one long gap, then many short ones
    g.heartbeat("a", 1, now)
    for _ in range(RECENT_GAPS):
        now += 0.125
        g.heartbeat("a", 1, now)
    s = g.summary()
    assert s["count"] == RECENT_GAPS + 1
    assert s["max_ms"] == 125.0
    assert s["max_since_start_ms"] == 5000.0
    assert HeartbeatGaps().summary()["p99_ms"] is None


def test_a_follower_reports_heartbeat_gaps_in_status() -> None:
    async def main() -> None:
        async with LocalCluster(seed=11) as c:
            leader = await c.leader()
            follower = next(n for n in c.nodes.values() if not n.is_leader)
            await wait_for(
                lambda: follower.status()["heartbeat_gap"]["count"] >= 3, 5, "heartbeats counted"
            )
            # Only the leader's heartbeats count: a forged one from another
            # member is dropped by the core and measures nothing.
            before = follower.heartbeat_gaps.histogram.count
            other = next(n for n in c.nodes.values() if n is not leader and n is not follower)
            follower._on_message(Heartbeat(leader.group, leader.term, other.id, follower.id, 0))
            assert follower.heartbeat_gaps.histogram.count == before
            assert leader.status()["heartbeat_gap"]["count"] == 0

    run(main())
