"""Log lines about what peers send, bounded: a flood of bad input must not
become a flood of log lines (nor cost the event loop more than the input)."""

from __future__ import annotations

import logging
import time
from typing import Any


class RateLimitedLog:
    """At most ``per_second`` lines a second on ``logger``; the rest are counted
    and summarised in the next line that gets through."""

    def __init__(self, logger: logging.Logger, per_second: int = 5) -> None:
        self._logger = logger
        self._per_second = per_second
        self._window = 0
        self._in_window = 0
        self._suppressed = 0

    def warning(self, msg: str, *args: Any) -> None:
        """Log ``msg % args`` at WARNING unless this second's budget is spent."""
        now = int(time.monotonic())
        if now != self._window:
            self._window, self._in_window = now, 0
        if self._in_window >= self._per_second:
            self._suppressed += 1
            return
        self._in_window += 1
        if self._suppressed:
            msg += " (and %d more like it not logged)"
            args = (*args, self._suppressed)
            self._suppressed = 0
        self._logger.warning(msg, *args)
