"""`Throttle`: a byte-rate limit shared by a node's snapshot transfers.

A virtual clock: each grant of ``n`` bytes moves the time at which the
budget is next free by ``n / rate`` seconds, and the caller waits until its
grant's start. Idle time earns at most ``burst_s`` of credit, so a throttle
that was idle does not then let a long burst through. Deterministic given
its clock: the waits it asks for depend on the grants and the clock alone.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable


class Throttle:
    """At most ``rate`` bytes per second on average (``rate <= 0``: no limit)."""

    def __init__(
        self,
        rate: int,
        *,
        burst_s: float = 0.05,
        clock: Callable[[], float] | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.rate = rate
        self.burst_s = burst_s
        self._clock = clock
        self._sleep = sleep
        self._free_at = float("-inf")
        self.waited_s = 0.0
        """Seconds of waiting asked of callers so far."""

    def delay(self, n: int) -> float:
        """Book ``n`` bytes; return how long the caller must wait before using them."""
        if self.rate <= 0:
            return 0.0
        now = self._now()
        start = max(self._free_at, now - self.burst_s)
        self._free_at = start + n / self.rate
        wait = max(0.0, start - now)
        self.waited_s += wait
        return wait

    async def acquire(self, n: int) -> None:
        """Wait until ``n`` more bytes are within the rate."""
        wait = self.delay(n)
        if wait > 0:
            await self._sleep(wait)

    def _now(self) -> float:
        if self._clock is not None:
            return self._clock()
        return asyncio.get_running_loop().time()
