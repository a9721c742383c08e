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
- one ``on_apply`` call.

Recording is one ``list.append`` of the value (a C call, no bucket search):
a `Histogram` sorts what accumulated into its buckets when it is read (a
scrape) or when `FOLD_AT` values are waiting, so memory stays bounded when
nobody scrapes. No lock and no dependency (the exporter in `pyjraft.ops`
turns them into Prometheus histograms). The leader's log writer thread
records appends too: appending to a list and folding a prefix of it
(`Histogram.fold` takes a length, then that slice) are each atomic under the
GIL, so no value is lost or counted twice.

Recording is off unless ``NodeOptions.metrics`` is set (the node then holds
no `NodeMetrics` and skips the clock reads). Reads are timed once per
read (`read`): they are not on the write path. Snapshot durations live with
the snapshot counters (`pyjraft.node.snapshots`).
"""

from __future__ import annotations

import asyncio
import collections
import time
from bisect import bisect_right
from collections.abc import Callable, Sequence

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


FOLD_AT = 4096
"""Observations a `Histogram` holds unsorted before it folds them into buckets."""


class Histogram:
    """Counts of observations per bucket (``value <= bound``), plus their sum."""

    __slots__ = ("_counts", "_pending", "_sum", "bounds", "observe")

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = tuple(bounds)
        if list(self.bounds) != sorted(set(self.bounds)):
            raise ValueError("histogram bounds must be strictly increasing")
        self._counts = [0] * (len(self.bounds) + 1)
        self._sum = 0.0
        self._pending: list[float] = []
        self.observe: Callable[[float], None] = self._pending.append
        """Record one observation (``list.append``: see `fold`)."""

    def fold(self) -> None:
        """Move the observations recorded so far into the buckets."""
        pending = self._pending
        n = len(pending)
        if not n:
            return
        values = sorted(pending[:n])
        del pending[:n]
        counts = self._counts
        below = 0
        for i, bound in enumerate(self.bounds):
            upto = bisect_right(values, bound, below)
            counts[i] += upto - below
            below = upto
        counts[-1] += n - below
        self._sum += sum(values)

    def maybe_fold(self) -> None:
        """`fold` if `FOLD_AT` observations are waiting (bounds memory)."""
        if len(self._pending) >= FOLD_AT:
            self.fold()

    @property
    def counts(self) -> list[int]:
        """Observations per bucket; the last one is above every bound (+Inf)."""
        self.fold()
        return self._counts

    @property
    def sum(self) -> float:
        """The sum of every observation."""
        self.fold()
        return self._sum

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
        "read_index_seconds",
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
        """One ``StateMachine.on_apply`` call (until its awaitable resolves);
        entries applied are counted by ``Node.stats["applied"]``."""
        self.read_index_seconds = Histogram(LATENCY_BUCKETS)
        """One successful `Node.read_index` (any kind), from the call until this
        node has applied up to the confirmed index; reads are counted by
        ``Node.stats`` (``reads``, ``lease_reads``, ``follower_reads``,
        ``read_errors``)."""
        # Proposed batches not yet seen committed: (last index, proposal time).
        self._proposed: collections.deque[tuple[int, float]] = collections.deque(maxlen=1 << 16)

    clock = staticmethod(time.perf_counter)
    """The clock every ``started`` argument is read from."""

    def proposed(self, count: int, last_index: int) -> None:
        """A leader proposed ``count`` entries ending at ``last_index``."""
        h = self.proposal_batch_size
        h.observe(count)
        self._proposed.append((last_index, time.perf_counter()))
        h.maybe_fold()

    def committed(self, commit_index: int) -> None:
        """The leader knows everything up to ``commit_index`` committed."""
        pending = self._proposed
        if not pending or pending[0][0] > commit_index:
            return
        now = time.perf_counter()
        h = self.replicate_seconds
        observe = h.observe
        while pending and pending[0][0] <= commit_index:
            observe(now - pending.popleft()[1])
        h.maybe_fold()

    def leadership_ended(self) -> None:
        """Forget batches whose commit this node will no longer see as leader."""
        self._proposed.clear()

    def applied(self, started: float) -> None:
        """One ``on_apply`` call, begun at ``clock()`` time ``started``, is done."""
        h = self.apply_seconds
        h.observe(time.perf_counter() - started)
        h.maybe_fold()

    def appended(self, started: float) -> None:
        """One log append, begun at ``clock()`` time ``started``, is durable."""
        h = self.log_append_seconds
        h.observe(time.perf_counter() - started)
        h.maybe_fold()

    def saved_meta(self, started: float) -> None:
        """One term/vote save, begun at ``clock()`` time ``started``, is durable."""
        h = self.meta_save_seconds
        h.observe(time.perf_counter() - started)
        h.maybe_fold()

    def read(self, started: float, fut: asyncio.Future[int]) -> None:
        """A `Node.read_index` begun at ``clock()`` time ``started`` is settled
        (a done callback: only reads that succeeded are timed)."""
        if fut.cancelled() or fut.exception() is not None:
            return
        h = self.read_index_seconds
        h.observe(time.perf_counter() - started)
        h.maybe_fold()

    def as_dict(self) -> dict[str, object]:
        """Every histogram as `Histogram.as_dict`, by name."""
        return {name: getattr(self, name).as_dict() for name in self.HISTOGRAMS}
