"""The core's view of the log: durable entries (read through `LogReader`)
followed by an unstable tail not yet handed back as durable.

Theory of operation: entries the core creates or accepts go to the unstable
tail first. `Ready` hands the runtime the part of the tail not yet handed
out (everything after ``in_progress``); when the runtime reports the write
durable (`stable_to`), that prefix of the tail is dropped and the core reads
those entries from storage from then on. A conflict that overwrites entries
already handed out moves ``in_progress`` back, so the next `Ready` carries
the replacement and the runtime truncates storage before appending it.
The core reads storage only below the tail's first index, which the write in
flight never touches.

Snapshots (thesis chapter 5): storage may have been compacted, so it begins
at ``first_index()`` and answers ``term(first_index() - 1)`` (the snapshot's
term). A follower that restores a snapshot from its leader (`restore`)
forgets its whole log at once: until the runtime has installed the snapshot
and reset storage to start after it (reported by `snapshot_installed`), the
log is the snapshot's index and term plus the unstable tail, and storage is
not read at all.
"""

from __future__ import annotations

from collections.abc import Sequence

from pyjraft.core.log_reader import LogReader, LogUnavailableError
from pyjraft.core.types import Entry, SnapshotMeta, count_within, entries_size


class LogSafetyError(AssertionError):
    """An operation would break a Raft invariant (e.g. truncating committed entries).

    Reaching this means a bug or corrupted state; the node must stop.
    """


class RaftLog:
    """Storage plus unstable tail, with the commit and apply marks."""

    __slots__ = (
        "applying",
        "committed",
        "in_progress",
        "pending_snapshot",
        "storage",
        "unstable",
        "unstable_offset",
    )

    def __init__(self, storage: LogReader, applied: int = 0) -> None:
        """``applied``: what the state machine already holds (from a snapshot or
        its own durable state); those entries are committed and never handed
        out again."""
        self.storage = storage
        last = storage.last_index()
        self.unstable: list[Entry] = []
        self.unstable_offset = last + 1
        self.in_progress = last
        first = storage.first_index()
        self.committed = max(first - 1, min(applied, last))
        # Entries up to `applying` have been handed to the runtime to apply.
        self.applying = self.committed
        # A snapshot restored from the leader and not yet installed by the runtime.
        self.pending_snapshot: SnapshotMeta | None = None

    # -- reading -------------------------------------------------------------

    def first_index(self) -> int:
        """First index still held (storage's, as the unstable tail never precedes it)."""
        if self.pending_snapshot is not None:
            return self.pending_snapshot.index + 1
        return self.storage.first_index()

    def last_index(self) -> int:
        """Last index, unstable tail included."""
        if self.unstable:
            return self.unstable[-1].index
        if self.pending_snapshot is not None:
            return self.pending_snapshot.index
        return self.storage.last_index()

    def last_term(self) -> int:
        """Term of the last entry (0 for an empty log)."""
        return self.term(self.last_index())

    def term(self, index: int) -> int:
        """Term at ``index``; raises `LogUnavailableError` outside the log."""
        off = self.unstable_offset
        if index >= off:
            i = index - off
            if i < len(self.unstable):
                return self.unstable[i].term
            raise LogUnavailableError(f"term({index}): last index is {self.last_index()}")
        snap = self.pending_snapshot
        if snap is not None:
            if index == snap.index:
                return snap.term
            raise LogUnavailableError(f"term({index}): compacted into snapshot {snap.index}")
        return self.storage.term(index)

    def term_or_none(self, index: int) -> int | None:
        """Term at ``index``, or None when compacted or beyond the last index."""
        try:
            return self.term(index)
        except LogUnavailableError:
            return None

    def match_term(self, index: int, term: int) -> bool:
        """Whether the entry at ``index`` exists with ``term`` (index 0 always matches)."""
        if index == 0:
            return term == 0
        return self.term_or_none(index) == term

    def entries(self, lo: int, hi: int, max_bytes: int | None = None) -> list[Entry]:
        """Entries ``[lo, hi)`` across storage and the tail, limited to ``max_bytes``
        (at least one entry is always returned when ``lo < hi``)."""
        if lo >= hi:
            return []
        off = self.unstable_offset
        out: list[Entry] = []
        if lo < off:
            if self.pending_snapshot is not None:
                raise LogUnavailableError(f"entries from {lo}: compacted into a snapshot")
            out = self.storage.entries(lo, min(hi, off), max_bytes)
            if len(out) < min(hi, off) - lo or hi <= off:
                return out
        start = max(lo, off)
        tail = self.unstable[start - off : hi - off]
        if max_bytes is None:
            out.extend(tail)
            return out
        out.extend(tail[: count_within(tail, max_bytes, entries_size(out))])
        return out

    def is_up_to_date(self, last_index: int, last_term: int) -> bool:
        """Section 5.4.1: whether a candidate's log is at least as up to date as ours."""
        our_term = self.last_term()
        return last_term > our_term or (last_term == our_term and last_index >= self.last_index())

    def find_conflict_by_term(self, index: int, term: int) -> tuple[int, int]:
        """The largest index at or below ``index`` whose term is at most ``term``,
        with that term; used on both sides of fast backtracking."""
        first = self.first_index()
        while index >= first:
            t = self.term(index)
            if t <= term:
                return index, t
            index -= 1
        t0 = self.term_or_none(first - 1)
        if t0 is not None and t0 <= term:
            return first - 1, t0
        return 0, 0

    # -- writing -------------------------------------------------------------

    def append(self, entries: Sequence[Entry]) -> int:
        """Append entries that follow or overwrite the tail; returns the new last index."""
        if not entries:
            return self.last_index()
        first_new = entries[0].index
        if first_new <= self.committed:
            raise LogSafetyError(
                f"append at {first_new} would overwrite committed entries (commit {self.committed})"
            )
        last = self.last_index()
        if first_new > last + 1:
            raise LogSafetyError(f"append at {first_new} leaves a gap after {last}")
        if first_new >= self.unstable_offset:
            # Extends the tail, or overwrites part of it.
            del self.unstable[first_new - self.unstable_offset :]
            self.unstable.extend(entries)
        else:
            # The new entries replace part of storage: the tail restarts there.
            self.unstable = list(entries)
            self.unstable_offset = first_new
        if first_new <= self.in_progress:
            self.in_progress = first_new - 1
        return self.last_index()

    def maybe_append(
        self, prev_index: int, prev_term: int, commit: int, entries: Sequence[Entry]
    ) -> int | None:
        """Section 5.3 on the follower: if our log matches at ``prev_index``, take the
        entries (skipping those we already have, truncating at the first conflict)
        and advance the commit index; returns the last index known to match."""
        if not self.match_term(prev_index, prev_term):
            return None
        last_new = prev_index + len(entries)
        conflict = self.find_conflict(entries)
        if conflict:
            if conflict <= self.committed:
                raise LogSafetyError(
                    f"entry {conflict} conflicts with a committed entry (commit {self.committed})"
                )
            self.append(entries[conflict - entries[0].index :])
        self.commit_to(min(commit, last_new))
        return last_new

    def find_conflict(self, entries: Sequence[Entry]) -> int:
        """Index of the first entry we lack or hold with another term; 0 if none."""
        if not entries:
            return 0
        # The common cases in O(1): all new, or (by log matching) all present.
        if entries[0].index > self.last_index():
            return entries[0].index
        last = entries[-1]
        if self.term_or_none(last.index) == last.term:
            return 0
        for e in entries:
            if self.term_or_none(e.index) != e.term:
                return e.index
        return 0

    def commit_to(self, index: int) -> None:
        """Advance the commit index (it never moves back)."""
        if index > self.committed:
            if index > self.last_index():
                raise LogSafetyError(f"commit {index} is past the last index {self.last_index()}")
            self.committed = index

    def restore(self, snap: SnapshotMeta) -> None:
        """Replace the whole log with ``snap`` (a follower behind its leader's
        compaction); storage is ignored until `snapshot_installed`."""
        if snap.index <= self.committed:
            raise LogSafetyError(f"restore of snapshot {snap.index} at commit {self.committed}")
        self.pending_snapshot = snap
        self.unstable = []
        self.unstable_offset = snap.index + 1
        self.in_progress = snap.index
        self.committed = self.applying = snap.index

    def snapshot_installed(self, snap: SnapshotMeta) -> None:
        """The runtime installed ``snap`` and reset storage to start after it."""
        if self.pending_snapshot is snap:
            self.pending_snapshot = None

    # -- hand-off to the runtime ---------------------------------------------

    def next_unstable(self) -> list[Entry]:
        """The tail entries not yet handed to the runtime to persist."""
        start = self.in_progress + 1 - self.unstable_offset
        if start >= len(self.unstable):
            return []
        return self.unstable[max(start, 0) :]

    def accept_unstable(self, entries: Sequence[Entry]) -> None:
        """Mark ``entries`` (from `next_unstable`) as handed out."""
        if entries:
            self.in_progress = max(self.in_progress, entries[-1].index)

    def stable_to(self, index: int, term: int) -> bool:
        """The runtime made entries up to ``index`` (of ``term``) durable; drop them from
        the tail. Returns False if the tail changed since (the write is superseded)."""
        off = self.unstable_offset
        i = index - off
        if i < 0 or i >= len(self.unstable) or self.unstable[i].term != term:
            return False
        del self.unstable[: i + 1]
        self.unstable_offset = index + 1
        # Those entries are durable now even if a replaced tail had moved
        # in_progress back below them (the replacement equalled what was
        # written): nothing up to here is left to hand out. Without this,
        # has_ready() would promise entries that ready() cannot find.
        self.in_progress = max(self.in_progress, index)
        return True

    def has_next_committed(self) -> bool:
        """Whether committed entries wait to be handed to the runtime."""
        return self.committed > self.applying

    def next_committed(self, max_bytes: int) -> list[Entry]:
        """Committed entries not yet handed out, up to ``max_bytes``."""
        if self.committed <= self.applying:
            return []
        return self.entries(self.applying + 1, self.committed + 1, max_bytes)

    def accept_committed(self, entries: Sequence[Entry]) -> None:
        """Mark committed ``entries`` as handed to the runtime to apply."""
        if entries:
            self.applying = max(self.applying, entries[-1].index)
