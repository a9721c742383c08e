"""`LoopLagMonitor`: how late the event loop runs a timer.

A task sleeps ``interval`` seconds again and again and records how much
later than asked it woke up: the time the loop spent on other work (a long
callback, a blocking fdatasync, a garbage collection) before it could run
it. A raft node's heartbeats and election timers suffer the same delay, so
this is the number to watch when leaders are lost under load.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib

from pyjraft.node.metrics import LATENCY_BUCKETS, Histogram


class LoopLagMonitor:
    """Measures event-loop lag into `histogram`; `start` it on the loop."""

    def __init__(self, interval: float = 0.25, window: int = 40) -> None:
        if interval <= 0:
            raise ValueError("interval must be > 0")
        self.interval = interval
        self.histogram = Histogram(LATENCY_BUCKETS)
        """Every lag measured, in seconds."""
        self._recent: collections.deque[float] = collections.deque(maxlen=window)
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start measuring on the running loop (once)."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="loop-lag")

    async def stop(self) -> None:
        """Stop measuring."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def recent_max(self) -> float:
        """The longest lag of the last ``window`` measurements (0 before any)."""
        return max(self._recent, default=0.0)

    def record(self, lag: float) -> None:
        """Record one measurement (negative values count as 0)."""
        lag = max(0.0, lag)
        self.histogram.observe(lag)
        self._recent.append(lag)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            asked = loop.time() + self.interval
            await asyncio.sleep(self.interval)
            self.record(loop.time() - asked)
