"""`NodeClock`: how a `Node` turns wall time into the core's ticks, mixed
into `Node`."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING

from pyjraft.core.types import Role
from pyjraft.node.lifecycle import NodeState

if TYPE_CHECKING:
    from pyjraft.core.raft import RaftCore


class NodeClock:
    """`Node`'s timer: ticks for the core, lazily for a follower."""

    state: NodeState
    stats: dict[str, int]
    _core: RaftCore
    _loop: asyncio.AbstractEventLoop
    _tick_s: float
    _tick_base: float
    _tick_handle: asyncio.TimerHandle | None
    # Defined by Node (annotations only, so that they resolve to Node's methods).
    _fatal: Callable[[BaseException], None]
    _send_eager: Callable[[], None]
    _schedule_drive: Callable[[], None]

    # Time. The core counts ticks of heartbeat_ms. A leader or candidate gets
    # one tick per timer firing (a stalled loop loses ticks rather than
    # bursting heartbeats). A follower has nothing to do on a tick but count,
    # so it sleeps until its election would fire and is given the ticks that
    # passed in one go, when it wakes or a message arrives: an idle follower
    # wakes for the leader's heartbeats only, not also for a timer of its own.

    def _arm_timer(self, now: float) -> None:
        core = self._core
        if core.role is Role.FOLLOWER:
            remaining = max(1, core.randomized_election_ticks - core.election_elapsed)
            when = self._tick_base + remaining * self._tick_s
        else:
            self._tick_base = now
            when = now + self._tick_s
        self._tick_handle = self._loop.call_at(when, self._on_tick)

    def _rearm_timer(self) -> None:
        if self._tick_handle is not None:
            self._tick_handle.cancel()
        self._arm_timer(self._loop.time())

    def _catch_up(self, now: float) -> None:
        n = int((now - self._tick_base) / self._tick_s)
        if n <= 0:
            return
        self._tick_base += n * self._tick_s
        core = self._core
        for _ in range(n):
            core.tick()
            if core.role is not Role.FOLLOWER:
                self._tick_base = now
                break

    def _catch_up_leader(self, now: float) -> None:
        """Give a leader (or candidate) the ticks that passed since its last one,
        in one go: its lease must see the real time, a stalled loop included."""
        n = int((now - self._tick_base) / self._tick_s)
        if n > 0:
            self._tick_base += n * self._tick_s
            self._core.tick(n)

    def _on_tick(self) -> None:
        if self.state is not NodeState.RUNNING:
            return
        self.stats["timer_wakeups"] += 1
        now = self._loop.time()
        try:
            if self._core.role is Role.FOLLOWER:
                self._catch_up(now)
            else:
                # At least one tick; more if the loop stalled (one heartbeat round).
                self._core.tick(max(1, int((now - self._tick_base) / self._tick_s)))
        except Exception as exc:
            self._fatal(exc)
            return
        self._arm_timer(now)
        self._send_eager()
        self._schedule_drive()
