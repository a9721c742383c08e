"""`HeartbeatGaps`: a follower's view of how regularly its leader's heartbeats arrive.

A leader sends every follower a heartbeat each tick (``heartbeat_ms``); a
follower that hears nothing from its leader for an election timeout starts
an election. So the gap between two heartbeats from the same leader in the
same term, as the follower receives them, is the margin a cluster has
against a spurious election: an overloaded leader (long event-loop turns),
a paused process or a congested link all show up here first, well before a
leader is lost. Appends reset the election clock too, but they come and go
with the load, so only heartbeats are measured: one observation per tick.

Recording is one subtraction and one ``list.append`` per heartbeat received
(`pyjraft.node.metrics.Histogram`), always on. `Node.status` reports a
summary (``heartbeat_gap``), `pyjraft.ops` exports the histogram as
``pyjraft_heartbeat_gap_seconds``.
"""

from __future__ import annotations

import collections
from typing import Any

from pyjraft.node.metrics import Histogram

GAP_BUCKETS: tuple[float, ...] = (
    *(i / 100 for i in range(1, 21)),  # 10 ms steps up to 200 ms
    0.225,
    0.25,
    0.275,
    0.3,
    0.333,
    0.366,
    0.4,
    0.45,
    0.5,
    0.6,
    0.7,
    0.8,
    0.9,
    1.0,
    1.5,
    2.0,
    3.0,
    5.0,
    10.0,
)
"""Upper bounds (seconds) of the gap histogram: fine around the usual
heartbeat intervals and a third of the usual election timeouts."""

RECENT_GAPS = 1024
"""How many of the latest gaps the exact summary (`HeartbeatGaps.summary`) covers."""


class HeartbeatGaps:
    """Gaps between consecutive heartbeats of one leader in one term."""

    __slots__ = ("_last", "_leader", "_term", "histogram", "max_s", "recent")

    def __init__(self) -> None:
        self.histogram = Histogram(GAP_BUCKETS)
        """Every gap since the node started (seconds)."""
        self.recent: collections.deque[float] = collections.deque(maxlen=RECENT_GAPS)
        """The latest `RECENT_GAPS` gaps (seconds), oldest first."""
        self.max_s = 0.0
        """The longest gap since the node started (seconds)."""
        self._leader = ""
        self._term = -1
        self._last = 0.0

    def heartbeat(self, leader: str, term: int, now: float) -> None:
        """A heartbeat of ``leader`` in ``term`` arrived at loop time ``now``.
        The first one of a leader's term starts the count (there is no gap
        before it: the election is not the leader's silence)."""
        if leader == self._leader and term == self._term:
            gap = now - self._last
            self.histogram.observe(gap)
            self.recent.append(gap)
            self.max_s = max(self.max_s, gap)
            self.histogram.maybe_fold()
        else:
            self._leader = leader
            self._term = term
        self._last = now

    def summary(self) -> dict[str, Any]:
        """Count (since start), and the median, 99th percentile and maximum of
        the latest `RECENT_GAPS` gaps, in milliseconds (None before any)."""
        recent = sorted(self.recent)
        n = len(recent)

        def ms(v: float) -> float:
            return round(v * 1000, 3)

        return {
            "count": self.histogram.count,
            "p50_ms": ms(recent[n // 2]) if n else None,
            "p99_ms": ms(recent[min(n - 1, int(n * 0.99))]) if n else None,
            "max_ms": ms(max(recent)) if n else None,
            "max_since_start_ms": ms(self.max_s) if n else None,
            "buckets": [[b, c] for b, c in self.histogram.cumulative()[:-1]],
        }
