"""`NodeMetrics`: the latency and size histograms of one node, cheap to record.

Theory of operation
-------------------
Counters and gauges (proposals, batches, commit index, term, per-peer match)
already live in the node (`Node.stats`, `Node.status`) and are read when
someone asks (a Prometheus scrape, the status page): they cost nothing extra
on the write path. What cannot be read later is a distribution, so this
module records the few that matter, once per *batch*, never per entry:

- entries per proposal batch, and from its proposal until the leader sees it
  committed (durable on a majority): the replication latency;
- one log append (its write and its fdatasync: the storage does both in one
  call) and one term/vote save;
- one ``on_apply`` call and the entries it got.

A `Histogram` is a list of bucket counts and a sum: one ``bisect`` and two
additions per observation, no lock and no dependency (the exporter in
`pyjraft.ops` turns them into Prometheus histograms at scrape time). The
leader's log writer thread records appends too; a race with the loop thread
can at worst lose one observation, never corrupt a count.

Recording is off unless ``NodeOptions.metrics`` is set (the node then holds
no `NodeMetrics` and skips the clock reads). Snapshot and read-index
histograms belong here too, once those features exist.
"""

from __future__ import annotations

import collections
import time
from bisect import bisect_left
from collections.abc import Sequence

LATENCY_BUCKETS: tuple[float, ...] = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)
"""Upper bounds (seconds) of the latency histograms: 100 us to 10 s."""

SIZE_BUCKETS: tuple[float, ...] = tuple(float(1 << k) for k in range(15))
"""Upper bounds of the entries-per-batch histograms: 1, 2, 4, ... 16384."""


class Histogram:
    """Counts of observations per bucket (``value <= bound``), plus their sum."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = tuple(bounds)
        if list(self.bounds) != sorted(set(self.bounds)):
            raise ValueError("histogram bounds must be strictly increasing")
        self.counts = [0] * (len(self.bounds) + 1)
        """Observations per bucket; the last one is above every bound (+Inf)."""
        self.sum = 0.0

    def observe(self, value: float) -> None:
        """Record one observation."""
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value

    @property
    def count(self) -> int:
        """Observations so far."""
        return sum(self.counts)

    def cumulative(self) -> list[tuple[float, int]]:
        """``(upper bound, observations <= bound)`` pairs, ending with +Inf."""
        out: list[tuple[float, int]] = []
        total = 0
        for bound, n in zip((*self.bounds, float("inf")), self.counts, strict=True):
            total += n
            out.append((bound, total))
        return out

    def quantile(self, q: float) -> float:
        """An upper bound of the ``q`` quantile (the bound of its bucket); 0 if empty."""
        total = self.count
        if not total:
            return 0.0
        rank = q * total
        seen = 0
        for bound, n in zip((*self.bounds, float("inf")), self.counts, strict=True):
            seen += n
            if seen >= rank:
                return bound
        return float("inf")

    def as_dict(self) -> dict[str, object]:
        """Count, sum and the cumulative buckets, for JSON."""
        return {
            "count": self.count,
            "sum": self.sum,
            "buckets": [["+Inf" if b == float("inf") else b, n] for b, n in self.cumulative()],
        }


class NodeMetrics:
    """The histograms of one node; the node calls these once per batch."""

    HISTOGRAMS = (
        "proposal_batch_size",
        "replicate_seconds",
        "log_append_seconds",
        "meta_save_seconds",
        "apply_seconds",
        "apply_batch_size",
    )
    """Attribute names of the histograms, for exporters."""

    def __init__(self) -> None:
        self.proposal_batch_size = Histogram(SIZE_BUCKETS)
        """Entries per proposal batch (one log write, one AppendEntries per follower)."""
        self.replicate_seconds = Histogram(LATENCY_BUCKETS)
        """Leader: from a batch's proposal until it is known committed."""
        self.log_append_seconds = Histogram(LATENCY_BUCKETS)
        """One log append: its write and its fdatasync."""
        self.meta_save_seconds = Histogram(LATENCY_BUCKETS)
        """One durable save of term and vote."""
        self.apply_seconds = Histogram(LATENCY_BUCKETS)
        """One ``StateMachine.on_apply`` call (until its awaitable resolves)."""
        self.apply_batch_size = Histogram(SIZE_BUCKETS)
        """Entries per ``on_apply`` call."""
        # Proposed batches not yet seen committed: (last index, proposal time).
        self._proposed: collections.deque[tuple[int, float]] = collections.deque(maxlen=1 << 16)

    clock = staticmethod(time.perf_counter)
    """The clock every duration here is measured with."""

    def proposed(self, count: int, last_index: int) -> None:
        """A leader proposed ``count`` entries ending at ``last_index``."""
        self.proposal_batch_size.observe(count)
        self._proposed.append((last_index, time.perf_counter()))

    def committed(self, commit_index: int) -> None:
        """The leader knows everything up to ``commit_index`` committed."""
        pending = self._proposed
        if not pending or pending[0][0] > commit_index:
            return
        now = time.perf_counter()
        observe = self.replicate_seconds.observe
        while pending and pending[0][0] <= commit_index:
            observe(now - pending.popleft()[1])

    def leadership_ended(self) -> None:
        """Forget batches whose commit this node will no longer see as leader."""
        self._proposed.clear()

    def applied(self, count: int, seconds: float) -> None:
        """One ``on_apply`` call took ``seconds`` for ``count`` entries."""
        self.apply_batch_size.observe(count)
        self.apply_seconds.observe(seconds)

    def as_dict(self) -> dict[str, object]:
        """Every histogram as `Histogram.as_dict`, by name."""
        return {name: getattr(self, name).as_dict() for name in self.HISTOGRAMS}
