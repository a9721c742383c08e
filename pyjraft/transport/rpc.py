"""`RpcClient`: calls services registered on `TcpTransport` servers.

One connection per address, shared by every call in flight to it; requests
and responses are REQUEST and RESPONSE frames matched by request id. The
connection is an `asyncio.Protocol`: the requests made in one loop turn leave
in one write, and responses are split out of the bytes as they arrive and
settle their callers' futures in the same callback (no reader task, no
stream buffer in between).
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
from typing import Any, cast

from pyjraft.transport.base import TransportStats, parse_address
from pyjraft.transport.codec import decode_response, encode_request
from pyjraft.transport.errors import ProtocolError, RemoteError, RpcTimeoutError, TransportError
from pyjraft.transport.framing import (
    DEFAULT_MAX_FRAME_SIZE,
    HEADER_SIZE,
    FrameDecoder,
    Kind,
    TurnWriter,
    frame_header,
)
from pyjraft.transport.limits import FD_EXHAUSTED_ERRNOS, LogLimiter
from pyjraft.transport.reasons import count_bad_frame, count_connection_error
from pyjraft.transport.tls import TlsConfig, check_server_identity

log = logging.getLogger("pyjraft.transport")


class RpcClient:
    """Calls services registered on `TcpTransport` servers.

    Usable on its own (no server needed). One connection per address, opened
    on first use and shared by every concurrent call to that address; calls
    are matched to responses by request id, so many can be in flight.

    `call` raises `RemoteError` when the remote handler raised (or the service
    is unknown), `TransportError` when the connection cannot be made or is
    lost before the response arrives, and `RpcTimeoutError` (a subclass of
    `TimeoutError`, i.e. of `asyncio.TimeoutError`) when ``timeout`` expires;
    the timeout covers connecting, sending and waiting.

    With ``tls`` (a client's or a node's certificate) every connection is
    mutual TLS, and the server's certificate must name the node id that
    was called (``addr``), or the call fails with `TransportError`
    ("cannot connect to ...") before anything is sent.
    ``max_frame_size`` bounds a response frame. A connection left without
    calls for ``max_idle`` seconds is not reused: the next call opens a
    fresh one, well before a server's idle timeout (300 s by default) could
    close it under a request in flight -- an outcome the caller could not
    know.
    """

    def __init__(
        self,
        *,
        tls: TlsConfig | None = None,
        max_frame_size: int = DEFAULT_MAX_FRAME_SIZE,
        stats: TransportStats | None = None,
        max_idle: float = 60.0,
    ) -> None:
        self._tls = tls
        self._max_idle = max_idle
        self._max_frame_size = max_frame_size
        self._limiter = LogLimiter(log)
        self.stats = stats if stats is not None else TransportStats()
        """Counters; shared with the owning `TcpTransport` when it made this client."""
        self._conns: dict[str, _RpcConn] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._ids = itertools.count(1)
        self._closed = False

    async def call(self, addr: str, service: str, request: Any, timeout: float = 5.0) -> Any:
        """Call ``service`` at ``addr`` with ``request``; return its response.

        ``request`` must be msgpack-able (else `TypeError`/`ValueError` is
        raised before anything is sent).
        """
        if self._closed:
            raise TransportError("rpc client is closed")
        rpc_id = next(self._ids)
        body = encode_request(rpc_id, service, request)
        if len(body) + 2 > self._max_frame_size:
            raise ValueError(f"request of {len(body)} bytes exceeds the frame limit")
        frame = frame_header(Kind.REQUEST, len(body)) + body
        loop = asyncio.get_running_loop()
        now = loop.time()
        deadline = now + timeout
        conn = self._conns.get(addr)
        if conn is not None and not conn.pending and now - conn.last_used > self._max_idle:
            self._forget(conn)
            conn.abort(TransportError("idle connection retired"))
            conn = None
        if conn is None or conn.closed:
            try:
                async with asyncio.timeout_at(deadline):
                    conn = await self._connection(addr)
            except TimeoutError:
                raise RpcTimeoutError(
                    f"call to {service!r} at {addr} timed out after {timeout} s (connecting)"
                ) from None
        conn.last_used = now
        return await conn.call(rpc_id, frame, deadline, service, timeout)

    async def _connection(self, addr: str) -> _RpcConn:
        conn = self._conns.get(addr)
        if conn is not None and not conn.closed:
            return conn
        lock = self._locks.setdefault(addr, asyncio.Lock())
        async with lock:
            conn = self._conns.get(addr)
            if conn is not None and not conn.closed:
                return conn
            if self._closed:
                raise TransportError("rpc client is closed")
            try:
                host, port = parse_address(addr)
            except ValueError as e:
                raise TransportError(str(e)) from None
            ctx = self._tls.client_context if self._tls is not None else None
            try:
                _, conn = await asyncio.get_running_loop().create_connection(
                    lambda: _RpcConn(self, addr),
                    host,
                    port,
                    ssl=ctx,
                    # Not a host name check: the identity is checked below.
                    server_hostname=host if ctx is not None else None,
                )
            except OSError as e:  # includes ssl.SSLError
                self.stats.connect_failures += 1
                count_connection_error(self.stats, "rpc_connect", e)
                if e.errno in FD_EXHAUSTED_ERRNOS:
                    self.stats.fd_exhausted += 1
                    self._limiter.log(
                        logging.ERROR,
                        "connect-emfile",
                        "cannot connect to %s: out of file descriptors (%s)",
                        addr,
                        e,
                    )
                raise TransportError(f"cannot connect to {addr}: {e}") from e
            if ctx is not None and conn.transport is not None:
                why = check_server_identity(conn.transport.get_extra_info("peercert"), addr)
                if why is not None:
                    conn.abort(TransportError(f"cannot connect to {addr}: {why}"))
                    self.stats.connect_failures += 1
                    self.stats.server_identity_mismatches += 1
                    self._limiter.log(
                        logging.WARNING, f"identity:{addr}", "not calling %s: %s", addr, why
                    )
                    raise TransportError(f"cannot connect to {addr}: {why}")
            self._conns[addr] = conn
            return conn

    def _forget(self, conn: _RpcConn) -> None:
        if self._conns.get(conn.addr) is conn:
            del self._conns[conn.addr]

    async def close(self) -> None:
        """Close every connection; calls in flight fail with `TransportError`."""
        self._closed = True
        conns = list(self._conns.values())
        self._conns.clear()
        for c in conns:
            c.abort(TransportError("rpc client closed"))
        await asyncio.gather(*(c.lost for c in conns), return_exceptions=True)


class _RpcConn(asyncio.Protocol):
    """One client connection: requests written once per loop turn, responses
    split out of the bytes as they arrive and matched to their futures by id."""

    def __init__(self, client: RpcClient, addr: str) -> None:
        self.client = client
        self.addr = addr
        self.transport: asyncio.Transport | None = None
        self.pending: dict[int, asyncio.Future[Any]] = {}
        self.closed = False
        self.frames = FrameDecoder(client._max_frame_size)
        self.out = TurnWriter()  # requests made in one loop turn: one write
        self.paused = False
        self.drained: asyncio.Future[None] | None = None
        self.error: TransportError | None = None
        self.deadlines: list[tuple[float, int, str, float]] = []
        self.timer: asyncio.TimerHandle | None = None
        self.loop = asyncio.get_running_loop()
        self.lost: asyncio.Future[None] = self.loop.create_future()
        self.last_used = self.loop.time()

    async def call(
        self, rpc_id: int, frame: bytes, deadline: float, service: str, timeout: float
    ) -> Any:
        if self.closed:
            raise TransportError(f"connection to {self.addr} is closed")
        fut: asyncio.Future[Any] = self.loop.create_future()
        self.pending[rpc_id] = fut
        self._add_deadline(deadline, rpc_id, service, timeout)
        self.out.write(frame)
        stats = self.client.stats
        stats.frames_out += 1
        stats.bytes_out += len(frame)
        try:
            if self.paused:
                # The server reads slower than we ask: wait, as a stream's drain()
                # would, unless the answer (or the timeout) comes first.
                if self.drained is None:
                    self.drained = self.loop.create_future()
                await asyncio.wait((fut, self.drained), return_when=asyncio.FIRST_COMPLETED)
            return await fut
        finally:
            self.pending.pop(rpc_id, None)
            if fut.done() and not fut.cancelled():
                fut.exception()  # retrieved: no "never retrieved" log if we left early

    # Timeouts: one timer per connection, armed for the earliest deadline of a
    # heap, instead of a timer (and an asyncio.timeout context, ~9 us) per
    # call. Entries of answered calls are skipped when they come up, and the
    # heap is rebuilt once they outnumber the calls in flight.

    def _add_deadline(self, when: float, rpc_id: int, service: str, timeout: float) -> None:
        heap = self.deadlines
        if len(heap) > 64 + 2 * len(self.pending):
            pending = self.pending
            heap[:] = [d for d in heap if d[1] in pending]
            heapq.heapify(heap)
        heapq.heappush(heap, (when, rpc_id, service, timeout))
        if self.timer is None or when < self.timer.when():
            self._arm(when)

    def _arm(self, when: float) -> None:
        if self.timer is not None:
            self.timer.cancel()
        self.timer = self.loop.call_at(when, self._expire)

    def _expire(self) -> None:
        self.timer = None
        heap = self.deadlines
        now = self.loop.time()
        while heap and heap[0][0] <= now:
            _, rpc_id, service, timeout = heapq.heappop(heap)
            fut = self.pending.pop(rpc_id, None)
            if fut is not None and not fut.done():
                fut.set_exception(
                    RpcTimeoutError(
                        f"call to {service!r} at {self.addr} timed out after {timeout} s"
                    )
                )
        if heap and not self.closed:
            self._arm(heap[0][0])

    def abort(self, error: TransportError) -> None:
        """Drop the connection at once; calls in flight fail with ``error``."""
        if self.error is None:
            self.error = error
        if self.transport is not None:
            self.transport.abort()
        else:
            self._fail(error)

    # -- asyncio.Protocol --------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = self.out.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        if self.closed:
            return
        stats = self.client.stats
        try:
            for kind, body in self.frames.feed(data):
                if kind is not Kind.RESPONSE:
                    raise ProtocolError(f"unexpected {kind.name} frame on a client connection")
                rpc_id, ok, payload = decode_response(body)
                stats.frames_in += 1
                stats.bytes_in += HEADER_SIZE + len(body)
                fut = self.pending.pop(rpc_id, None)
                if fut is None or fut.done():
                    continue  # the caller timed out or was cancelled
                if ok:
                    fut.set_result(payload)
                else:
                    fut.set_exception(RemoteError(payload))
        except ProtocolError as e:
            self._protocol_error(e)

    def _protocol_error(self, e: ProtocolError) -> None:
        count_bad_frame(self.client.stats, e.reason)
        log.warning("closing rpc connection to %s: %s", self.addr, e.reason)
        self.abort(TransportError(f"protocol error from {self.addr}: {e.reason}"))

    def eof_received(self) -> bool:
        return False  # the server hung up: close our side too

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False
        self._wake_writers()

    def connection_lost(self, exc: Exception | None) -> None:
        if exc is None and self.error is None:
            try:
                self.frames.eof()
            except ProtocolError as e:
                # The server hung up inside a frame: as bad as garbage.
                self._protocol_error(e)
        if exc is not None:
            error = TransportError(f"connection to {self.addr} lost: {exc}")
        else:
            error = TransportError(f"connection to {self.addr} closed")
        self._fail(self.error or error)

    def _fail(self, error: TransportError) -> None:
        self.closed = True
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.deadlines.clear()
        self.transport = None
        self.client._forget(self)
        pending, self.pending = self.pending, {}
        for fut in pending.values():
            if not fut.done():
                fut.set_exception(error)
        self.out.drop()
        self._wake_writers()
        if not self.lost.done():
            self.lost.set_result(None)

    def _wake_writers(self) -> None:
        if self.drained is not None and not self.drained.done():
            self.drained.set_result(None)
        self.drained = None
