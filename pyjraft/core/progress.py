"""Per-follower replication progress, as the leader sees it.

Theory of operation: a follower's progress is in one of three states.

- PROBE: the leader does not know where the follower's log matches its own.
  It sends one AppendEntries at a time and pauses until an answer (or a
  heartbeat response) arrives; each rejection moves ``next`` back, by a whole
  term at a time thanks to the follower's conflict hint.
- REPLICATE: the logs match up to ``match``; the leader streams entries
  optimistically (``next`` runs ahead of ``match``), bounded by an in-flight
  window counted in messages and in bytes.
- SNAPSHOT: the follower needs a snapshot (the entries it lacks were
  compacted); nothing else is sent until it is installed.
"""

from __future__ import annotations

import enum
from collections import deque


class ProgressState(enum.Enum):
    """How the leader replicates to one follower."""

    PROBE = "probe"
    REPLICATE = "replicate"
    SNAPSHOT = "snapshot"


class Inflights:
    """The window of unacknowledged AppendEntries to one follower: bounded by
    message count and by bytes. Each slot is the last index a message carried."""

    __slots__ = ("_bytes", "_slots", "max_bytes", "max_count")

    def __init__(self, max_count: int, max_bytes: int) -> None:
        self.max_count = max_count
        self.max_bytes = max_bytes
        self._slots: deque[tuple[int, int]] = deque()
        self._bytes = 0

    def add(self, last_index: int, size: int) -> None:
        """Record a message carrying entries up to ``last_index`` of ``size`` bytes."""
        self._slots.append((last_index, size))
        self._bytes += size

    def free_le(self, index: int) -> None:
        """Acknowledge every message whose last index is at most ``index``."""
        slots = self._slots
        while slots and slots[0][0] <= index:
            self._bytes -= slots.popleft()[1]

    def free_first(self) -> None:
        """Free one slot: a heartbeat response proves the follower is alive, so let
        one more message through rather than stalling on a lost acknowledgement."""
        if self._slots:
            self._bytes -= self._slots.popleft()[1]

    def reset(self) -> None:
        """Forget everything in flight."""
        self._slots.clear()
        self._bytes = 0

    def full(self) -> bool:
        """Whether no further message may be sent."""
        return len(self._slots) >= self.max_count or self._bytes >= self.max_bytes

    @property
    def count(self) -> int:
        """Messages in flight."""
        return len(self._slots)

    @property
    def bytes(self) -> int:
        """Bytes in flight."""
        return self._bytes


class Progress:
    """What the leader knows of one peer's log."""

    __slots__ = (
        "inflights",
        "is_learner",
        "match",
        "next",
        "pending_snapshot",
        "probe_sent",
        "recent_active",
        "state",
    )

    def __init__(
        self, next_index: int, max_inflight: int, max_inflight_bytes: int, is_learner: bool = False
    ) -> None:
        self.match = 0
        self.next = next_index
        self.state = ProgressState.PROBE
        self.probe_sent = False
        self.recent_active = False
        self.pending_snapshot = 0
        self.is_learner = is_learner
        self.inflights = Inflights(max_inflight, max_inflight_bytes)

    def become_probe(self) -> None:
        """Fall back to probing from just after what is known to match."""
        if self.state is ProgressState.SNAPSHOT:
            self.next = max(self.match + 1, self.pending_snapshot + 1)
        else:
            self.next = self.match + 1
        self.state = ProgressState.PROBE
        self.probe_sent = False
        self.pending_snapshot = 0
        self.inflights.reset()

    def become_replicate(self) -> None:
        """Stream entries optimistically from just after ``match``."""
        self.state = ProgressState.REPLICATE
        self.next = self.match + 1
        self.probe_sent = False
        self.pending_snapshot = 0
        self.inflights.reset()

    def become_snapshot(self, snapshot_index: int) -> None:
        """Stop sending entries until a snapshot at ``snapshot_index`` is installed."""
        self.state = ProgressState.SNAPSHOT
        self.pending_snapshot = snapshot_index
        self.probe_sent = False
        self.inflights.reset()

    def maybe_update(self, index: int) -> bool:
        """The follower acknowledged ``index``; returns whether ``match`` advanced."""
        updated = False
        if index > self.match:
            self.match = index
            updated = True
            self.probe_sent = False
        self.next = max(self.next, index + 1)
        return updated

    def maybe_decrease_to(self, rejected: int, match_hint: int) -> bool:
        """The follower rejected an append at ``rejected``; move ``next`` back.

        Returns False for a stale rejection (one that cannot be about the
        message most recently sent), which must be ignored.
        """
        if self.state is ProgressState.REPLICATE:
            if rejected <= self.match:
                return False
            self.next = self.match + 1
            return True
        if self.next - 1 != rejected:
            return False
        self.next = max(min(rejected, match_hint + 1), self.match + 1)
        self.probe_sent = False
        return True

    def is_paused(self) -> bool:
        """Whether the leader must hold back appends to this follower for now."""
        if self.state is ProgressState.PROBE:
            return self.probe_sent
        if self.state is ProgressState.REPLICATE:
            return self.inflights.full()
        return True

    def __repr__(self) -> str:
        return (
            f"Progress({self.state.value} match={self.match} next={self.next} "
            f"inflight={self.inflights.count} active={self.recent_active})"
        )
