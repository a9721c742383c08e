"""Bounded work per event-loop turn, and the load shedding that keeps it so.

Theory of operation
-------------------
A node shares one event loop with its transport: heartbeats are sent, and
vote requests answered, only when the loop gets to them. A turn of the loop
that does a second of work delays every heartbeat by a second, and an
overloaded leader whose turns are long loses its followers' trust and its
leadership (issue 13, section 4: 3 floods in 8). So every source of work
that grows with the load is cut into bounded pieces, and the loop runs its
timers and reads its sockets between them:

- *reading*: the transport handles at most ``ServerLimits.max_frames_per_turn``
  frames (and ``max_bytes_per_turn`` bytes) per turn, all connections
  together, and serves at most ``max_requests_per_connection`` requests of
  one connection at once (`pyjraft.transport.limits`);
- *proposing*: `Node` proposes at most ``NodeOptions.max_proposals_per_turn``
  queued entries per turn (one batch: one log write, one append per
  follower); the rest wait for the next turn;
- *applying*: at most ``NodeOptions.max_applies_per_turn`` committed entries
  are applied (and their callers answered) per turn; a `Ready` with more
  goes on in the next turn (`next_turn`), timers and messages in between;
- *Readies*: at most two per turn (a write, then what it committed).

Bounding turns keeps heartbeats on time; it does not make a node faster. A
leader offered more than it can commit would still queue without end, every
caller waiting longer than its timeout and getting no answer it can use. So
the leader sheds load at the door (`QueueDelay`): once the oldest proposal
still waiting to be applied has waited ``NodeOptions.max_queue_delay_ms``,
new proposals are refused with `OverloadedError` (nothing proposed; the
client retries later) until the backlog drains below it. The queue then
holds about that many milliseconds of work whatever the machine's speed,
and ``max_pending_proposals`` remains the hard bound on memory. Connections
need no share of their own: each has at most ``max_requests_per_connection``
requests in service, and the transport reads connections in turn.
"""

from __future__ import annotations

import asyncio
import collections


def next_turn(loop: asyncio.AbstractEventLoop) -> asyncio.Future[None]:
    """A future resolved in a later turn of ``loop``: awaiting it lets the loop
    run its due timers and read its sockets first."""
    fut: asyncio.Future[None] = loop.create_future()
    loop.call_soon(_resolve, fut)
    return fut


def _resolve(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


class QueueDelay:
    """How long a leader's oldest unapplied proposal has waited; ``shedding``
    once that exceeds the bound (see the module docstring).

    Updated once per proposal batch and once per apply batch, never per
    entry: `Node.submit` only reads ``shedding``.
    """

    __slots__ = ("_batches", "_max_s", "shedding")

    def __init__(self, max_delay_s: float) -> None:
        """``max_delay_s`` 0 turns shedding by delay off."""
        self._max_s = max_delay_s
        self._batches: collections.deque[tuple[int, float]] = collections.deque()
        self.shedding = False
        """Whether new proposals are to be refused now."""

    def proposed(self, last_index: int, now: float) -> None:
        """A batch ending at ``last_index`` was proposed at loop time ``now``."""
        batches = self._batches
        batches.append((last_index, now))
        if self._max_s:
            self.shedding = now - batches[0][1] > self._max_s

    def applied(self, index: int, now: float) -> None:
        """Everything up to ``index`` was applied (its callers answered) by ``now``."""
        batches = self._batches
        if not batches:
            return
        while batches and batches[0][0] <= index:
            batches.popleft()
        if self._max_s:
            self.shedding = bool(batches) and now - batches[0][1] > self._max_s

    def oldest_age(self, now: float) -> float:
        """Seconds the oldest unapplied batch has waited at ``now`` (0 if none)."""
        return now - self._batches[0][1] if self._batches else 0.0

    def reason(self, pending: int, max_pending: int, now: float) -> str:
        """Why a proposal is refused, with ``pending`` proposals in the node."""
        if pending >= max_pending:
            return f"{pending} proposals pending; retry later"
        return (
            f"the oldest of {pending} pending proposals has waited "
            f"{self.oldest_age(now) * 1000:.0f} ms; retry later"
        )

    def clear(self) -> None:
        """Forget every batch (leadership lost: its callers were answered)."""
        self._batches.clear()
        self.shedding = False
