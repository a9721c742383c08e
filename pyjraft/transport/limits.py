"""The limits a `TcpTransport` server enforces on what peers may cost it.

Every byte from the network is hostile until its connection is
authenticated, and even an authenticated peer may be buggy; so every
resource a remote end can make us hold is bounded here, and every refusal is
logged (rate-limited, see `LogLimiter`) and counted in `TransportStats`.
The README lists them under "Limits".
"""

from __future__ import annotations

import errno
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass

FD_EXHAUSTED_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE})
"""``errno`` values meaning "no file descriptor left" (per process, system-wide)."""

DEFAULT_MAX_REQUEST_BYTES = 1 << 20
"""A service's default bound on one request's encoded size (1 MiB)."""


@dataclass(frozen=True, slots=True)
class ServerLimits:
    """Bounds on what connections to one `TcpTransport` may cost it."""

    max_connections: int = 1024
    """Accepted connections open at once (TLS handshakes included); more are
    closed as soon as accepted."""
    max_connections_per_ip: int = 256
    """Accepted connections open at once from one remote IP address."""
    max_buffered_bytes: int = 256 << 20
    """Bytes of unfinished frames buffered across all connections, counted
    at the size each frame's header announces; a connection whose next
    frame does not fit is closed."""
    read_timeout: float = 10.0
    """Seconds a new connection has to finish its TLS handshake and its
    first frame; and the base of the time any frame may take to arrive."""
    min_read_rate: int = 256 << 10
    """Bytes per second below which a frame is too slow: a frame of ``n``
    bytes must arrive within ``read_timeout + n / min_read_rate`` seconds
    of its first byte (slow-loris), or the connection is closed."""
    idle_timeout: float = 300.0
    """Seconds a connection may stay without a complete frame while none of
    its requests is being served; also how long it may leave our answers
    unread (writing paused) before it is closed."""
    fd_reserve: int = 128
    """File descriptors kept free for storage and outbound connections: the
    server stops accepting while fewer than this many are left under
    ``RLIMIT_NOFILE`` and resumes once connections close."""
    max_frames_per_turn: int = 2048
    """Frames handled per turn of the event loop, all connections together;
    past it a connection stops reading and carries on in the next turn,
    after the loop has run its timers (heartbeats) and other ready
    callbacks, so a flood cannot make one turn long. Large enough that a
    busy leader's turn (say a thousand pipelined requests) is not split,
    which would split its batches. Connections that carry raft frames have
    a budget of their own of the same size (and of ``max_bytes_per_turn``),
    so requests cannot starve the raft traffic of its turn."""
    max_bytes_per_turn: int = 8 << 20
    """Frame bytes handled per turn of the event loop (same rule; one frame
    is always handled, however large)."""
    max_requests_per_connection: int = 1024
    """Requests of one connection being served at once; past it the server
    stops reading that connection until one is answered."""
    max_request_bytes_in_flight: int = 32 << 20
    """Encoded bytes of one connection's requests being served at once
    (same rule)."""

    def __post_init__(self) -> None:
        for name in (
            "max_connections",
            "max_connections_per_ip",
            "max_buffered_bytes",
            "min_read_rate",
            "max_frames_per_turn",
            "max_bytes_per_turn",
            "max_requests_per_connection",
            "max_request_bytes_in_flight",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")
        if self.fd_reserve < 0:
            raise ValueError("fd_reserve must be >= 0")
        if self.read_timeout <= 0 or self.idle_timeout <= 0:
            raise ValueError("read_timeout and idle_timeout must be positive")


class LogLimiter:
    """Logs at most one line per key per ``interval`` seconds; the next line
    for that key says how many were suppressed in between. For refusals a
    remote end can trigger at will: each is counted, but logging every one
    would let it fill the disk."""

    def __init__(
        self,
        logger: logging.Logger,
        interval: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._log = logger
        self._interval = interval
        self._clock = clock
        self._next: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def log(self, level: int, key: str, msg: str, *args: object) -> None:
        """Log ``msg % args`` at ``level`` unless ``key`` logged recently."""
        now = self._clock()
        if now < self._next.get(key, 0.0):
            self._suppressed[key] = self._suppressed.get(key, 0) + 1
            return
        if len(self._next) > 10_000:  # keys come from the network: bound them too
            self._next.clear()
            self._suppressed.clear()
        self._next[key] = now + self._interval
        n = self._suppressed.pop(key, 0)
        if n:
            msg += f" ({n} more like this suppressed)"
        self._log.log(level, msg, *args)


def fd_limit() -> int:
    """The process's soft ``RLIMIT_NOFILE`` (a huge number where there is none)."""
    try:
        import resource
    except ImportError:  # not a Unix
        return 1 << 30
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return soft if soft != resource.RLIM_INFINITY else 1 << 30


def open_fd_count() -> int | None:
    """File descriptors this process has open, or None where it cannot tell."""
    for d in ("/proc/self/fd", "/dev/fd"):
        try:
            # listdir itself holds one descriptor while it runs.
            return len(os.listdir(d)) - 1
        except OSError:
            continue
    return None


__all__ = [
    "DEFAULT_MAX_REQUEST_BYTES",
    "FD_EXHAUSTED_ERRNOS",
    "LogLimiter",
    "ServerLimits",
    "fd_limit",
    "open_fd_count",
]
