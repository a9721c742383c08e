"""Busy polling: keep an event loop polling its sockets, without sleeping, for a while.

A leader that has just sent entries waits for one acknowledgement, a few
hundred microseconds away on loopback or a fast network. Sleeping in
``epoll_wait`` costs that wait a wake-up: the process leaves its core, its
caches go cold, and on a machine with fewer cores than busy processes it may
queue behind another one before it runs again. Polling instead (the loop
turns with a zero timeout) handles the acknowledgement the moment it arrives.

It is bounded: `BusyPoll.extend` keeps the loop polling until a deadline at
most that far ahead, so a node polls for at most that long after each batch it
sends, and an idle node (heartbeats only) never polls. One `BusyPoll` serves
every node on a loop (`for_loop`), so many raft groups poll once, not once
each.
"""

from __future__ import annotations

import asyncio
import time
import weakref
from collections.abc import Callable

__all__ = ["BusyPoll", "for_loop"]


class BusyPoll:
    """Keeps one event loop turning without sleeping until a deadline."""

    __slots__ = ("__weakref__", "_clock", "_deadline", "_loop", "_running", "turns")

    def __init__(
        self, loop: asyncio.AbstractEventLoop, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._loop = loop
        self._clock = clock
        self._deadline = 0.0
        self._running = False
        self.turns = 0
        """Loop turns spent polling (a statistic)."""

    @property
    def running(self) -> bool:
        """Whether the loop is being kept polling now."""
        return self._running

    def extend(self, seconds: float) -> None:
        """Keep the loop polling for at least ``seconds`` from now."""
        deadline = self._clock() + seconds
        self._deadline = max(self._deadline, deadline)
        if not self._running:
            self._running = True
            self._loop.call_soon(self._turn)

    def _turn(self) -> None:
        # A callback ready to run makes the loop poll with a zero timeout; this
        # one re-arms itself once per turn until the deadline passes.
        if self._clock() < self._deadline and not self._loop.is_closed():
            self.turns += 1
            self._loop.call_soon(self._turn)
        else:
            self._running = False


_BY_LOOP: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, BusyPoll] = (
    weakref.WeakKeyDictionary()
)


def for_loop(loop: asyncio.AbstractEventLoop) -> BusyPoll:
    """The `BusyPoll` shared by everything running on ``loop``."""
    poll = _BY_LOOP.get(loop)
    if poll is None:
        poll = _BY_LOOP[loop] = BusyPoll(loop)
    return poll
