"""Storage protocols: the durable log and the term/vote metadata.

Both are synchronous on purpose: the runtime calls the writing methods on a
dedicated thread so fsync never blocks the event loop, and calls the reading
methods from the loop. Implementations must allow reads concurrent with one
write in flight, for indices the write does not touch.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from pyjraft.core.log_reader import LogReader
from pyjraft.core.types import Entry, HardState


class StorageError(Exception):
    """Storage is unusable (corruption, IO failure). Fatal for the node using it."""


class TransientStorageError(StorageError):
    """A resource ran out for a moment: the process or the system had no file
    descriptor left (EMFILE, ENFILE) when storage needed to open a file.

    Retryable: it is raised only before the call changed anything, on disk or
    in memory, and the storage stays usable; retry the same call after a short
    backoff (or, for an open, open again: recovery is idempotent). Every other
    `StorageError` is fatal.
    """


class CorruptLogError(StorageError):
    """The log on disk is damaged in a way that is not a torn tail; names file and offset."""

    def __init__(self, path: str, offset: int, reason: str) -> None:
        self.path = path
        self.offset = offset
        self.reason = reason
        super().__init__(f"{path}: offset {offset}: {reason}")


class CorruptSnapshotError(StorageError):
    """A snapshot on disk does not match its metadata, or its metadata is damaged;
    names the file. That snapshot must not be loaded (an older one may be)."""

    def __init__(self, path: str, reason: str) -> None:
        self.path = path
        self.reason = reason
        super().__init__(f"{path}: {reason}")


class InvalidSnapshotError(ValueError):
    """Snapshot metadata or data that is not acceptable (malformed or hostile
    metadata, a chunk out of order, data not matching its metadata): refused,
    nothing is published."""


class LogStorage(LogReader, Protocol):
    """A durable, append-only log of `Entry` values, compacted from the front."""

    def append(self, entries: Sequence[Entry]) -> None:
        """Append a contiguous batch starting at ``last_index() + 1``, durable on return
        (one write, one fdatasync). Raises `ValueError` on a gap or overlap."""
        ...

    def truncate_suffix(self, last_kept: int) -> None:
        """Drop every entry after ``last_kept`` (a conflict with the leader), durably."""
        ...

    def truncate_prefix(self, first_kept: int) -> None:
        """Forget entries before ``first_kept`` (they are in a snapshot). Whole segments
        are deleted; ``term(first_kept - 1)`` stays answerable."""
        ...

    def reset(self, next_index: int, prev_term: int) -> None:
        """Discard everything; the log becomes empty with ``first_index() == next_index``
        and ``term(next_index - 1) == prev_term`` (after installing a snapshot)."""
        ...

    def close(self) -> None:
        """Release files. Further calls raise."""
        ...


class MetaStorage(Protocol):
    """Current term and vote, replaced atomically and durably."""

    def load(self) -> HardState:
        """The last saved state (``HardState()`` for a new node)."""
        ...

    def save(self, state: HardState) -> None:
        """Replace the saved state; durable on return."""
        ...
