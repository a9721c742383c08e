"""`Peer`: the outbound raft connection to one address, with its bounded queue.

Raft traffic is one-way: we only ever write on this connection (replies come
back on the other node's own outbound connection to our listener). Messages
are encoded by the caller and queued here; the owner (`TcpTransport`) calls
`flush` once per turn of the event loop (or when its own `flush` is
called), which packs everything queued into as few RAFT frames as the size
limit allows and hands them to the socket in one write. Writing straight
from the loop turn, rather than from a task per peer, saves a task wake-up
per message burst, which is most of the cost of a small write on the
latency path.

A task per peer owns the connection's life: it connects when there is
something to send, waits while the connection is up, and reconnects with
exponential backoff and jitter after it breaks. Whatever is queued when a
connect attempt fails is dropped and counted: it would be stale by the time
the peer is back, and Raft sends fresher messages. When the socket's buffer
is full (the peer reads slower than we write), writing pauses and the queue
fills up to its bounds, beyond which messages are dropped and counted.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import random
import ssl as _ssl
from collections.abc import Callable
from dataclasses import dataclass
from typing import cast

from pyjraft.transport.base import TransportStats
from pyjraft.transport.framing import HEADER_SIZE, Kind, frame_header
from pyjraft.transport.limits import FD_EXHAUSTED_ERRNOS, LogLimiter
from pyjraft.transport.reasons import count_connection_error
from pyjraft.transport.tls import check_server_identity

log = logging.getLogger("pyjraft.transport")

ARRAY_HEADER_MAX = 5  # msgpack array32 header
_MAX_IOVECS = 64  # beyond this many pieces, one joined buffer is cheaper than writev


@dataclass(frozen=True, slots=True)
class PeerConfig:
    """What every `Peer` of one transport shares."""

    max_frame_size: int
    queue_messages: int
    queue_bytes: int
    backoff_min: float
    backoff_max: float
    connect_timeout: float
    rng: random.Random
    client_ssl: _ssl.SSLContext | None
    pack_array_header: Callable[[int], bytes]
    limiter: LogLimiter


class _PeerProtocol(asyncio.Protocol):
    """The socket side of a `Peer`: tracks writability and loss."""

    def __init__(self, peer: Peer) -> None:
        self.peer = peer
        self.transport: asyncio.Transport | None = None
        self.paused = False
        self.lost: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        # The server never writes on a raft connection; ignore, don't buffer.
        pass

    def eof_received(self) -> bool:
        # The server hung up (say, it restarted): reconnect before writing
        # into the void.
        return False

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False
        self.peer.flush()

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if not self.lost.done():
            self.lost.set_result(None)
        if exc is not None:
            count_connection_error(self.peer._stats, "lost", exc)
            log.info("raft connection to %s lost: %s", self.peer.addr, exc)


class Peer:
    """The outbound raft connection to one address; see the module docstring."""

    def __init__(
        self,
        addr: str,
        host: str,
        port: int,
        config: PeerConfig,
        stats: TransportStats,
        on_ready: Callable[[Peer], None],
    ) -> None:
        self.addr = addr
        self.host = host
        self.port = port
        self._config = config
        self._stats = stats
        self._on_ready = on_ready
        # Each queued message: its encoded pieces and their total size.
        self.queue: collections.deque[tuple[list[bytes], int]] = collections.deque()
        self.queued_bytes = 0
        self._conn: _PeerProtocol | None = None
        self._wakeup = asyncio.Event()
        self.task = asyncio.get_running_loop().create_task(self._run(), name=f"raft-peer-{addr}")

    @property
    def connected(self) -> bool:
        """Whether a connection is up."""
        conn = self._conn
        return conn is not None and conn.transport is not None

    def enqueue(self, parts: list[bytes], size: int) -> bool:
        """Queue an encoded message (``parts``, ``size`` bytes in all); False
        (nothing queued) when over the bounds."""
        c = self._config
        if len(self.queue) >= c.queue_messages or self.queued_bytes + size > c.queue_bytes:
            return False
        self.queue.append((parts, size))
        self.queued_bytes += size
        if self._conn is not None:
            self._on_ready(self)
        else:
            self._wakeup.set()
        return True

    def flush(self) -> None:
        """Write everything queued, if the connection is up and writable."""
        conn = self._conn
        if conn is None or conn.paused or not self.queue:
            return
        transport = conn.transport
        if transport is None or transport.is_closing():
            return
        parts, nbytes, frames, msgs = self._take()
        if len(parts) > _MAX_IOVECS:
            parts = [b"".join(parts)]
        # One writev of the frames' pieces: no copy of a large batch into one
        # buffer first (uvloop; asyncio's own loop joins them itself).
        transport.writelines(parts)
        stats = self._stats
        stats.frames_out += frames
        stats.messages_out += msgs
        stats.bytes_out += nbytes

    def drop_queue(self) -> None:
        """Drop (and count) everything queued."""
        self._stats.dropped_sends += len(self.queue)
        self.queue.clear()
        self.queued_bytes = 0

    def abort(self) -> None:
        """Drop the connection at once (the task reconnects unless cancelled)."""
        conn = self._conn
        if conn is not None and conn.transport is not None:
            conn.transport.abort()

    def _backoff(self, attempt: int) -> float:
        c = self._config
        base: float = min(c.backoff_max, c.backoff_min * 2.0 ** min(attempt, 30))
        # "Equal jitter": at least half the base, so retries stay spaced out,
        # randomized so restarted peers are not hit by everyone in lockstep.
        return base * (0.5 + 0.5 * c.rng.random())

    async def _run(self) -> None:
        c = self._config
        loop = asyncio.get_running_loop()
        attempt = 0
        connected_before = False
        try:
            while True:
                if not self.queue:
                    self._wakeup.clear()
                    await self._wakeup.wait()
                try:
                    _, conn = await asyncio.wait_for(
                        loop.create_connection(
                            lambda: _PeerProtocol(self),
                            self.host,
                            self.port,
                            ssl=c.client_ssl,
                            # Not a host name check: the identity is checked below.
                            server_hostname=self.host if c.client_ssl else None,
                        ),
                        c.connect_timeout,
                    )
                    if c.client_ssl is not None and conn.transport is not None:
                        why = check_server_identity(
                            conn.transport.get_extra_info("peercert"), self.addr
                        )
                        if why is not None:
                            conn.transport.abort()
                            self._stats.server_identity_mismatches += 1
                            c.limiter.log(
                                logging.WARNING,
                                f"identity:{self.addr}",
                                "not sending to %s: %s",
                                self.addr,
                                why,
                            )
                            raise ConnectionError(why)
                except OSError as e:  # includes TimeoutError and ssl.SSLError
                    self._stats.connect_failures += 1
                    count_connection_error(self._stats, "connect", e)
                    if e.errno in FD_EXHAUSTED_ERRNOS:
                        self._stats.fd_exhausted += 1
                        c.limiter.log(
                            logging.ERROR,
                            "connect-emfile",
                            "cannot connect to %s: out of file descriptors (%s)",
                            self.addr,
                            e,
                        )
                    else:
                        log.debug("cannot connect to %s: %s", self.addr, e)
                    self.drop_queue()
                    await asyncio.sleep(self._backoff(attempt))
                    attempt += 1
                    continue
                if connected_before:
                    self._stats.reconnects += 1
                connected_before = True
                self._conn = conn
                wrote_before = self._stats.frames_out
                self.flush()
                try:
                    await conn.lost
                finally:
                    self._conn = None
                    if conn.transport is not None:
                        # Raft tolerates losing what is still buffered; waiting
                        # for a peer that stopped reading would stall close().
                        conn.transport.abort()
                if self._stats.frames_out != wrote_before:
                    attempt = 0
                # A server that accepts and at once hangs up must not make us spin.
                await asyncio.sleep(self._backoff(attempt))
                attempt += 1
        finally:
            conn_ = self._conn
            self._conn = None
            if conn_ is not None and conn_.transport is not None:
                conn_.transport.abort()

    def _take(self) -> tuple[list[bytes], int, int, int]:
        """Everything queued, as the pieces of the fewest RAFT frames the size
        limit allows; with their byte, frame and message counts."""
        c = self._config
        budget = c.max_frame_size - 2 - ARRAY_HEADER_MAX
        queue = self.queue
        total = self.queued_bytes
        self.queued_bytes = 0
        if len(queue) == 1:
            msg, size = queue.popleft()
            head = c.pack_array_header(1)
            first = frame_header(Kind.RAFT, len(head) + size) + head
            return [first, *msg], total + len(first), 1, 1
        parts: list[bytes] = []
        frames = msgs = 0
        while queue:
            batch: list[list[bytes]] = []
            size = 0
            while queue and (not batch or size + queue[0][1] <= budget):
                msg, n = queue.popleft()
                batch.append(msg)
                size += n
            head = c.pack_array_header(len(batch))
            parts.append(frame_header(Kind.RAFT, len(head) + size) + head)
            for msg in batch:
                parts.extend(msg)
            frames += 1
            msgs += len(batch)
            total += HEADER_SIZE + len(head)
        return parts, total, frames, msgs
