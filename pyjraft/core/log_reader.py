"""What the core reads from durable storage: a small read-only protocol.

The runtime owns writing (see `pyjraft.storage.LogStorage`); the core only
reads entries that are already durable, i.e. below the first index of its own
unstable tail, so reads never race with the write in flight.
"""

from __future__ import annotations

from typing import Protocol

from pyjraft.core.types import Entry


class LogUnavailableError(LookupError):
    """The requested index lies outside what the log holds (compacted or not yet written)."""


class LogReader(Protocol):
    """Read access to the durable log."""

    def first_index(self) -> int:
        """Index of the first entry held (1 for a log never compacted)."""
        ...

    def last_index(self) -> int:
        """Index of the last entry held (``first_index() - 1`` when empty)."""
        ...

    def term(self, index: int) -> int:
        """Term of the entry at ``index``; valid from ``first_index() - 1`` to ``last_index()``.

        Raises `LogUnavailableError` outside that range.
        """
        ...

    def entries(self, lo: int, hi: int, max_bytes: int | None = None) -> list[Entry]:
        """Entries ``[lo, hi)``; with ``max_bytes``, a prefix of at least one entry
        whose total `Entry.size` stays within it. Raises `LogUnavailableError`
        if ``lo < first_index()`` or ``hi > last_index() + 1``."""
        ...
