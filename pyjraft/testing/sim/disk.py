"""A simulated node's disk: durable log and term/vote, and writes in flight.

A write (`Write`) is what one `Ready` asks to make durable: a snapshot
restored from the leader (published, and the log reset to start after it),
a hard state, then entries (after truncating a conflicting suffix), in that
order, as `pyjraft.node.Node` does it. A write takes
the node's disk latency to complete; until then nothing of it is durable.
Writes complete in the order they were issued.

A crash loses every write in flight, except that the oldest may have got
part of the way: a random prefix of its steps (snapshot; hard state;
truncation; append) is durable, the rest is not: what a power cut between
two fsyncs leaves behind. The node's own snapshots (`SimDisk.snapshot`) are
published atomically: the old one or the new one.
"""

from __future__ import annotations

import random
from collections import deque
from dataclasses import dataclass, field

from pyjraft.core.log_reader import LogUnavailableError
from pyjraft.core.types import Entry, HardState, SnapshotMeta
from pyjraft.storage.memory import MemoryLogStorage, MemoryMetaStorage


@dataclass(slots=True)
class Write:
    """One `Ready`'s durable part, and where it stands."""

    hard_state: HardState | None
    entries: list[Entry]
    done_at: int
    """Simulated time at which it completes (when nothing crashes first)."""
    snapshot: tuple[SnapshotMeta, int] | None = None
    """A snapshot (and the state machine state it holds) to install first."""


@dataclass(slots=True)
class SimDisk:
    """Durable state that survives a crash, plus the writes in flight."""

    log: MemoryLogStorage = field(default_factory=MemoryLogStorage)
    meta: MemoryMetaStorage = field(default_factory=MemoryMetaStorage)
    inflight: deque[Write] = field(default_factory=deque)
    snapshot: tuple[SnapshotMeta, int] | None = None
    """The newest durable snapshot and the state machine state it holds."""

    def holds(self, index: int, term: int) -> bool:
        """Whether ``(index, term)`` is durable here: in the log, or covered by
        the snapshot (which holds only committed entries)."""
        snap = self.snapshot
        if snap is not None and index <= snap[0].index:
            return index < snap[0].index or snap[0].term == term
        try:
            return self.log.term(index) == term
        except LogUnavailableError:
            return False

    def complete(self, w: Write) -> None:
        """Make all of ``w`` durable (it is the oldest write in flight)."""
        assert self.inflight and self.inflight[0] is w, "writes complete in order"
        self.inflight.popleft()
        self._do(w, 4)

    def write_now(
        self,
        hard_state: HardState | None,
        entries: list[Entry],
        snapshot: tuple[SnapshotMeta, int] | None = None,
    ) -> None:
        """Make a write durable at once (a disk with no latency)."""
        self._do(Write(hard_state, entries, 0, snapshot), 4)

    def crash(self, rng: random.Random) -> None:
        """The process died: the oldest write in flight got a random part of the
        way; everything else in flight is lost."""
        if self.inflight:
            w = self.inflight[0]
            self._do(w, rng.randrange(5))
        self.inflight.clear()

    def crash_during(
        self,
        hard_state: HardState | None,
        entries: list[Entry],
        snapshot: tuple[SnapshotMeta, int] | None,
        rng: random.Random,
    ) -> None:
        """A crash in the middle of a write that had not been queued."""
        self._do(Write(hard_state, entries, 0, snapshot), rng.randrange(5))

    def _do(self, w: Write, steps: int) -> None:
        # Steps: 1 the snapshot (published, the log reset behind it), 2 the hard
        # state, 3 the truncation of a conflicting suffix, 4 the append. A write
        # without one of them skips that step for free.
        if steps >= 1 and w.snapshot is not None:
            self.snapshot = w.snapshot
            meta = w.snapshot[0]
            self.log.reset(meta.index + 1, meta.term)
        if steps >= 2 and w.hard_state is not None:
            self.meta.save(w.hard_state)
        if not w.entries:
            return
        first = w.entries[0].index
        if steps >= 3 and first <= self.log.last_index():
            self.log.truncate_suffix(first - 1)
        if steps >= 4:
            self.log.append(w.entries)
