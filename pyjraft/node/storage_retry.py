"""`StorageRetry`: a write that found no file descriptor is retried, not fatal.

Theory of operation
-------------------
Storage raises `TransientStorageError` when the process or the system ran
out of file descriptors (EMFILE, ENFILE) as it needed to open a file (a new
log segment, ``meta.tmp``), and only before it changed anything (issue 13,
section 3: one such error at an election used to put a leader in ERROR for
good). So the node retries the very same write after a backoff (10 ms,
doubling to 1 s) instead of failing:

- the `Ready` being handled waits: the messages that depend on its write
  (votes, acknowledgements) stay unsent and it is not advanced, exactly as
  if the disk were slow; meanwhile the node keeps stepping messages and
  ticking, and a leader keeps sending heartbeats and appends (they never
  depend on its own write), so it keeps its followers and commits through
  them;
- the first failure of a write is logged at WARNING (``storage_stalled``),
  a reminder every 10 s, the success at INFO (``storage_recovered``, with
  the attempts and the time); ``Node.stats`` counts ``storage_retries``
  (failed attempts) and ``storage_stalls`` (writes that needed one), and
  ``Node.status`` says for how long the current write has been stalled;
- a write still failing after ``NodeOptions.storage_retry_timeout_ms`` is
  fatal (`NodeStorageError`), as any other storage error is at once.

The leader's writer thread (``leader_write_thread``) retries the same way,
sleeping on its own thread; `abort` (shutdown) ends every retry.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Awaitable, Callable, Generator
from typing import Any

from pyjraft.node.errors import NodeStorageError, ShutdownError
from pyjraft.node.events import NodeEvents
from pyjraft.storage.api import TransientStorageError

FIRST_DELAY_S = 0.01
"""The first backoff."""
MAX_DELAY_S = 1.0
"""The longest backoff."""
REMIND_EVERY_S = 10.0
"""How often a write still stalled is logged again."""


class _Stall:
    """One write being retried."""

    __slots__ = ("attempts", "delay", "error", "reminded", "started")

    def __init__(self, error: TransientStorageError, now: float) -> None:
        self.started = now
        self.reminded = now
        self.attempts = 1
        self.delay = FIRST_DELAY_S
        self.error = error


class StorageRetry:
    """Runs storage writes, retrying `TransientStorageError` with backoff (see
    the module docstring). One per node."""

    def __init__(
        self,
        events: NodeEvents,
        stats: dict[str, int],
        timeout_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._events = events
        self._stats = stats
        stats.setdefault("storage_retries", 0)
        stats.setdefault("storage_stalls", 0)
        self._timeout_s = timeout_s
        self._clock = clock
        self._aborted = threading.Event()
        self._stalled_since: float | None = None

    def stalled_ms(self) -> float:
        """Milliseconds the write being retried has been stalled (0 if none is)."""
        since = self._stalled_since
        return 0.0 if since is None else round((self._clock() - since) * 1000, 1)

    def abort(self) -> None:
        """End every retry now (the node is shutting down): they raise `ShutdownError`."""
        self._aborted.set()

    def run(self, write: Callable[..., None], *args: Any) -> Generator[Awaitable[Any], Any, None]:
        """``write(*args)`` on the event loop, retried after an ``asyncio.sleep``
        backoff (use with ``yield from`` in `Node._handle`)."""
        try:
            write(*args)  # the common path: no clock read, nothing to await
            return
        except TransientStorageError as exc:
            stall = self._begin(exc, getattr(write, "__name__", "write"))
        while True:
            yield asyncio.sleep(self._next_delay(stall))
            if self._aborted.is_set():
                raise ShutdownError("node shut down while a storage write was being retried")
            try:
                write(*args)
            except TransientStorageError as exc:
                self._failed_again(stall, exc)
                continue
            self._end(stall)
            return

    def run_blocking(self, write: Callable[..., None], *args: Any) -> None:
        """``write(*args)`` on the calling thread (the leader's writer), retried
        after sleeping on it."""
        try:
            write(*args)
            return
        except TransientStorageError as exc:
            stall = self._begin(exc, getattr(write, "__name__", "write"))
        while True:
            if self._aborted.wait(self._next_delay(stall)):
                raise ShutdownError("node shut down while a storage write was being retried")
            try:
                write(*args)
            except TransientStorageError as exc:
                self._failed_again(stall, exc)
                continue
            self._end(stall)
            return

    # -- bookkeeping ---------------------------------------------------------

    def _begin(self, exc: TransientStorageError, what: str) -> _Stall:
        now = self._clock()
        stall = _Stall(exc, now)
        self._stalled_since = now
        self._stats["storage_stalls"] += 1
        self._stats["storage_retries"] += 1
        self._events.record(
            "storage_stalled",
            f"storage write ({what}) failed for want of a file descriptor: {exc}; "
            f"retrying with backoff for up to {self._timeout_s:.0f} s (its messages wait)",
            level=logging.WARNING,
            error=str(exc),
        )
        return stall

    def _failed_again(self, stall: _Stall, exc: TransientStorageError) -> None:
        stall.attempts += 1
        stall.error = exc
        self._stats["storage_retries"] += 1
        now = self._clock()
        if now - stall.reminded >= REMIND_EVERY_S:
            stall.reminded = now
            self._events.log.warning(
                "storage write still failing after %d attempts in %.1f s: %s",
                stall.attempts,
                now - stall.started,
                exc,
                extra={"event": "storage_stalled", "attempts": stall.attempts},
            )

    def _next_delay(self, stall: _Stall) -> float:
        """The backoff before the next attempt; `NodeStorageError` past the timeout."""
        if self._aborted.is_set():
            raise ShutdownError("node shut down while a storage write was being retried")
        elapsed = self._clock() - stall.started
        if elapsed >= self._timeout_s:
            self._stalled_since = None
            raise NodeStorageError(
                f"storage write failed for {elapsed:.1f} s ({stall.attempts} attempts) for want "
                f"of a file descriptor: {stall.error}"
            ) from stall.error
        delay = min(stall.delay, self._timeout_s - elapsed)
        stall.delay = min(stall.delay * 2, MAX_DELAY_S)
        return delay

    def _end(self, stall: _Stall) -> None:
        self._stalled_since = None
        took = self._clock() - stall.started
        self._events.record(
            "storage_recovered",
            f"storage write succeeded after {stall.attempts} failed attempts in {took:.2f} s",
            attempts=stall.attempts,
            stalled_s=round(took, 3),
        )
