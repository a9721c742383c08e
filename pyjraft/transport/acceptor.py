"""`Acceptor`: the listening sockets of a `TcpTransport`, with a file-descriptor reserve.

Theory of operation
-------------------
asyncio's own server accepts whenever the kernel has a connection queued, up
to the process's last file descriptor; then the node's storage cannot open
a file. So the transport binds its sockets itself and accepts from a reader
callback (as asyncio's server does inside), with two differences:

* Before accepting it makes sure at least ``fd_reserve`` descriptors stay
  free under ``RLIMIT_NOFILE``. Counting open descriptors costs a directory
  listing, so it counts once and then accepts half of the headroom it found
  before counting again (whatever else opens descriptors meanwhile, the
  other half covers). Out of headroom, it stops watching the sockets --
  the kernel queues, then refuses, new connections -- and looks again
  every ``recheck`` seconds, and as soon as one of our connections closes.
* ``EMFILE``/``ENFILE`` from ``accept`` (the reserve was too small, or
  another part of the process took the descriptors) is logged as what it
  is, counted, and accepting pauses for ``recheck`` seconds instead of
  spinning; established connections are served all along.

Each accepted socket is handed to ``on_accept`` (which applies the
connection limits and starts the TLS handshake).
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
from collections.abc import Callable

from pyjraft.transport.base import TransportStats
from pyjraft.transport.limits import FD_EXHAUSTED_ERRNOS, LogLimiter, fd_limit, open_fd_count

log = logging.getLogger("pyjraft.transport")

_ACCEPTS_PER_CALLBACK = 64  # then let the loop serve the connections already open


class Acceptor:
    """Accepts connections on listening sockets while descriptors allow."""

    def __init__(
        self,
        sockets: list[socket.socket],
        on_accept: Callable[[socket.socket, object], None],
        *,
        fd_reserve: int,
        stats: TransportStats,
        limiter: LogLimiter,
        recheck: float = 0.5,
    ) -> None:
        self.sockets = sockets
        self._on_accept = on_accept
        self._reserve = fd_reserve
        self._stats = stats
        self._limiter = limiter
        self._recheck = recheck
        self._loop = asyncio.get_running_loop()
        self._allowance = 0  # accepts left before counting descriptors again
        self._watching = False
        self._timer: asyncio.TimerHandle | None = None
        self._closed = False

    @property
    def accepting(self) -> bool:
        """Whether the sockets are being watched for new connections."""
        return self._watching

    def start(self) -> None:
        """Start accepting."""
        if self._closed or self._watching:
            return
        self._watching = True
        for s in self.sockets:
            self._loop.add_reader(s.fileno(), self._accept, s)

    def _stop(self) -> None:
        if self._watching:
            self._watching = False
            for s in self.sockets:
                self._loop.remove_reader(s.fileno())

    def connection_closed(self) -> None:
        """One of our connections closed: if paused for the reserve, look again now."""
        if not self._watching and self._timer is not None and not self._closed:
            self._timer.cancel()
            self._timer = None
            self._resume()

    def _pause(self) -> None:
        self._stop()
        if self._timer is None and not self._closed:
            self._timer = self._loop.call_later(self._recheck, self._resume)

    def _resume(self) -> None:
        self._timer = None
        if self._closed:
            return
        self._allowance = 0
        if self._headroom():
            log.info("accepting connections again")
            self.start()
        else:
            self._timer = self._loop.call_later(self._recheck, self._resume)

    def _headroom(self) -> bool:
        """Whether one more descriptor may be taken; recounts when the allowance is spent."""
        if self._allowance > 0:
            return True
        in_use = open_fd_count()
        if in_use is None:
            self._allowance = 1 << 30  # cannot tell: rely on EMFILE handling
            return True
        limit = fd_limit()
        headroom = limit - self._reserve - in_use
        if headroom <= 0:
            if self._watching:
                self._stats.accept_pauses += 1
                self._limiter.log(
                    logging.WARNING,
                    "fd-reserve",
                    "%d of %d file descriptors in use: not accepting connections while fewer "
                    "than the reserve of %d are free (kept for storage)",
                    in_use,
                    limit,
                    self._reserve,
                )
            return False
        self._allowance = max(1, headroom // 2)
        return True

    def _accept(self, sock: socket.socket) -> None:
        for _ in range(_ACCEPTS_PER_CALLBACK):
            if not self._headroom():
                self._pause()
                return
            try:
                conn, addr = sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except ConnectionAbortedError:
                continue
            except OSError as e:
                if e.errno in FD_EXHAUSTED_ERRNOS or e.errno in (errno.ENOBUFS, errno.ENOMEM):
                    self._stats.fd_exhausted += 1
                    self._limiter.log(
                        logging.ERROR,
                        "accept-emfile",
                        "cannot accept a connection: %s (%s file descriptors open, limit %d); "
                        "pausing accepts for %.1f s, open connections are still served",
                        errno.errorcode.get(e.errno or 0, str(e)),
                        open_fd_count() or "all",
                        fd_limit(),
                        self._recheck,
                    )
                else:
                    self._limiter.log(logging.WARNING, "accept-error", "accept failed: %s", e)
                self._pause()
                return
            self._allowance -= 1
            self._on_accept(conn, addr)

    def close(self) -> None:
        """Stop accepting and close the listening sockets."""
        self._closed = True
        self._stop()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for s in self.sockets:
            s.close()


def bind_sockets(infos: list[tuple[int, int, int, str, tuple[object, ...]]]) -> list[socket.socket]:
    """Listening, non-blocking sockets for ``getaddrinfo`` results (as asyncio's
    ``create_server`` makes them: SO_REUSEADDR, IPv6 sockets v6-only)."""
    socks: list[socket.socket] = []
    try:
        for family, type_, proto, _, sockaddr in infos:
            s = socket.socket(family, type_, proto)
            socks.append(s)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6 and hasattr(socket, "IPPROTO_IPV6"):
                s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            s.bind(sockaddr)
            s.listen(1024)
            s.setblocking(False)
    except BaseException:
        for s in socks:
            s.close()
        raise
    return socks


__all__ = ["Acceptor", "bind_sockets"]
