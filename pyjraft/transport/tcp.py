"""The asyncio TCP transport: raft traffic of many groups and user RPC on one port.

Theory of operation
-------------------
A process runs one `TcpTransport`: one listening socket that accepts
connections carrying frames (`pyjraft.transport.framing`) of three kinds.

*Raft traffic is one-way.* To send, the transport keeps one outbound
connection per destination address (``msg.dst``, ``"host:port"``), owned by a
`_Peer`. `TcpTransport.send` never blocks: it encodes each message at once
(`pyjraft.transport.codec.encode_message`) and appends the bytes to the
peer's bounded queue (bounded in messages and in bytes); when the queue is
full the message is dropped and counted, because Raft retransmits anyway and
a stuck peer must not grow our memory. The peer's writer coroutine wakes,
takes everything queued, packs it into as few RAFT frames as the frame limit
allows, and issues one write: pipelining without a round trip per message,
and order preserved per peer. A reply travels on the *other* node's outbound
connection to our listener, so each pair of nodes uses two connections.

When a connection cannot be made or breaks, the writer reconnects with
exponential backoff and jitter (from an injectable `random.Random`). Whatever
was queued when a connect attempt fails is dropped and counted: it would be
stale by the time the peer is back, and Raft will send fresher messages.
Connections are made lazily, when there is something to send.

*Inbound*, every accepted connection gets a reader coroutine. RAFT frames are
decoded and each message is handed to the handler registered for
``msg.group`` (unknown groups: dropped and counted). REQUEST frames run the
named service handler in its own task, so requests on one connection are
served concurrently (bounded per connection, which throttles reading);
the RESPONSE goes back on the same connection tagged with the request's id.
`RpcClient` is the calling side: one connection per address, many calls in
flight on it, matched to responses by id.

*Bad input* -- garbage, a truncated frame, a length over the limit, an
unknown version or kind, an invalid message -- closes *that* connection,
logs the reason on the ``pyjraft.transport`` logger and counts it in
``stats.bad_frames``. Nothing else is affected.

`close` cancels every task the transport started and closes every socket,
so no task or transport outlives it.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import logging
import random
import ssl as _ssl
from collections.abc import Sequence
from typing import Any

from pyjraft.core.messages import Message
from pyjraft.transport.base import (
    HandlerRegistry,
    TransportStats,
    format_address,
    parse_address,
)
from pyjraft.transport.codec import (
    decode_messages,
    decode_request,
    decode_response,
    encode_message,
    encode_request,
    encode_response,
    new_packer,
)
from pyjraft.transport.errors import ProtocolError, RemoteError, RpcTimeoutError, TransportError
from pyjraft.transport.framing import (
    DEFAULT_MAX_FRAME_SIZE,
    HEADER_SIZE,
    Kind,
    frame_header,
    parse_header,
)

log = logging.getLogger("pyjraft.transport")

_ARRAY_HEADER_MAX = 5  # msgpack array32 header
_STREAM_LIMIT = 1 << 20
_CLOSE_GRACE = 1.0  # seconds to wait for a socket to close before aborting it


async def _read_frame(
    reader: asyncio.StreamReader, max_frame_size: int
) -> tuple[Kind, bytes] | None:
    """Read one frame; None on a clean EOF between frames.

    A stream ending inside a frame raises `ProtocolError` (truncated frame).
    """
    try:
        header = await reader.readexactly(HEADER_SIZE)
    except asyncio.IncompleteReadError as e:
        if e.partial:
            raise ProtocolError(
                f"stream ended inside a frame header ({len(e.partial)} bytes)"
            ) from None
        return None
    kind, body_len = parse_header(header, max_frame_size)
    try:
        body = await reader.readexactly(body_len)
    except asyncio.IncompleteReadError as e:
        raise ProtocolError(
            f"stream ended inside a frame body ({len(e.partial)} of {body_len} bytes)"
        ) from None
    return kind, body


async def _close_writer(writer: asyncio.StreamWriter, abort: bool = False) -> None:
    """Close a stream and wait until it is closed.

    ``abort`` discards unsent data at once; use it whenever nothing queued
    matters, since a graceful close waits for a peer that may never read.
    A graceful close that does not finish promptly is aborted too (a TLS
    shutdown with an unresponsive peer could otherwise take 30 s).
    """
    if abort:
        writer.transport.abort()
    else:
        writer.close()
    try:
        await asyncio.wait_for(writer.wait_closed(), _CLOSE_GRACE)
    except OSError:  # includes TimeoutError
        writer.transport.abort()


def _peername(writer: asyncio.StreamWriter) -> str:
    peer = writer.get_extra_info("peername")
    if isinstance(peer, tuple) and len(peer) >= 2:
        return format_address(str(peer[0]), int(peer[1]))
    return str(peer)


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
    """

    def __init__(
        self,
        *,
        ssl: _ssl.SSLContext | None = None,
        server_hostname: str | None = None,
        max_frame_size: int = DEFAULT_MAX_FRAME_SIZE,
        stats: TransportStats | None = None,
    ) -> None:
        self._ssl = ssl
        self._server_hostname = server_hostname
        self._max_frame_size = max_frame_size
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
        try:
            async with asyncio.timeout(timeout):
                conn = await self._connection(addr)
                return await conn.call(rpc_id, frame)
        except TimeoutError:
            raise RpcTimeoutError(
                f"call to {service!r} at {addr} timed out after {timeout} s"
            ) from None

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
            try:
                reader, writer = await asyncio.open_connection(
                    host,
                    port,
                    ssl=self._ssl,
                    server_hostname=(self._server_hostname or host) if self._ssl else None,
                    limit=_STREAM_LIMIT,
                )
            except OSError as e:  # includes ssl.SSLError
                self.stats.connect_failures += 1
                raise TransportError(f"cannot connect to {addr}: {e}") from e
            conn = _RpcConn(self, addr, reader, writer)
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
            c.task.cancel()
        # gather, not a suppress(CancelledError) loop: a cancel aimed at the
        # caller of close() must still reach it.
        await asyncio.gather(*(c.task for c in conns), return_exceptions=True)


class _RpcConn:
    """One client connection: a reader task resolving futures by request id."""

    def __init__(
        self,
        client: RpcClient,
        addr: str,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        self.client = client
        self.addr = addr
        self.reader = reader
        self.writer = writer
        self.pending: dict[int, asyncio.Future[Any]] = {}
        self.closed = False
        self.task = asyncio.get_running_loop().create_task(self._read_loop())

    async def call(self, rpc_id: int, frame: bytes) -> Any:
        if self.closed:
            raise TransportError(f"connection to {self.addr} is closed")
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.pending[rpc_id] = fut
        stats = self.client.stats
        try:
            self.writer.write(frame)
            stats.frames_out += 1
            stats.bytes_out += len(frame)
            try:
                await self.writer.drain()
            except OSError as e:  # includes ssl.SSLError
                raise TransportError(f"connection to {self.addr} lost: {e}") from e
            return await fut
        finally:
            self.pending.pop(rpc_id, None)
            if fut.done() and not fut.cancelled():
                fut.exception()  # retrieved: no "never retrieved" log if we left early

    async def _read_loop(self) -> None:
        stats = self.client.stats
        error = TransportError(f"connection to {self.addr} closed")
        try:
            while True:
                frame = await _read_frame(self.reader, self.client._max_frame_size)
                if frame is None:
                    break
                kind, body = frame
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
            stats.bad_frames += 1
            log.warning("closing rpc connection to %s: %s", self.addr, e.reason)
            error = TransportError(f"protocol error from {self.addr}: {e.reason}")
        except OSError as e:  # includes ssl.SSLError
            error = TransportError(f"connection to {self.addr} lost: {e}")
        except asyncio.CancelledError:
            error = TransportError("rpc client closed")
            raise
        finally:
            self.closed = True
            self.client._forget(self)
            for fut in self.pending.values():
                if not fut.done():
                    fut.set_exception(error)
            self.pending.clear()
            # Every call was just failed: nothing left to deliver.
            await _close_writer(self.writer, abort=True)


class _Peer:
    """The outbound raft connection to one address, with its bounded queue."""

    def __init__(self, transport: TcpTransport, addr: str, host: str, port: int) -> None:
        self.t = transport
        self.addr = addr
        self.host = host
        self.port = port
        self.queue: collections.deque[bytes] = collections.deque()
        self.queued_bytes = 0
        self.wakeup = asyncio.Event()
        self.task = asyncio.get_running_loop().create_task(self._run(), name=f"raft-peer-{addr}")

    def enqueue(self, data: bytes) -> bool:
        t = self.t
        if len(self.queue) >= t._queue_messages or self.queued_bytes + len(data) > t._queue_bytes:
            return False
        self.queue.append(data)
        self.queued_bytes += len(data)
        self.wakeup.set()
        return True

    def _drop_queue(self) -> None:
        self.t.stats.dropped_sends += len(self.queue)
        self.queue.clear()
        self.queued_bytes = 0

    def _backoff(self, attempt: int) -> float:
        t = self.t
        base: float = min(t._backoff_max, t._backoff_min * 2.0 ** min(attempt, 30))
        # "Equal jitter": at least half the base, so retries stay spaced out,
        # randomized so restarted peers are not hit by everyone in lockstep.
        return base * (0.5 + 0.5 * t._rng.random())

    async def _run(self) -> None:
        t = self.t
        attempt = 0
        connected_before = False
        while True:
            if not self.queue:
                self.wakeup.clear()
                await self.wakeup.wait()
            try:
                reader, writer = await asyncio.wait_for(
                    asyncio.open_connection(
                        self.host,
                        self.port,
                        ssl=t._client_ssl,
                        server_hostname=(t._server_hostname or self.host)
                        if t._client_ssl
                        else None,
                        limit=_STREAM_LIMIT,
                    ),
                    t._connect_timeout,
                )
            except OSError as e:  # includes TimeoutError and ssl.SSLError
                t.stats.connect_failures += 1
                log.debug("cannot connect to %s: %s", self.addr, e)
                self._drop_queue()
                await asyncio.sleep(self._backoff(attempt))
                attempt += 1
                continue
            if connected_before:
                t.stats.reconnects += 1
            connected_before = True
            try:
                await self._pump(reader, writer)
                attempt = 0
            except OSError as e:  # includes ssl.SSLError
                log.info("raft connection to %s lost: %s", self.addr, e)
            finally:
                # Raft tolerates losing what is still buffered; waiting for a
                # peer that stopped reading would stall close().
                await _close_writer(writer, abort=True)
            # A server that accepts and at once hangs up must not make us spin.
            await asyncio.sleep(self._backoff(attempt))
            attempt += 1

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Write everything queued until the connection breaks."""
        stats = self.t.stats
        wrote = False
        while True:
            if not self.queue:
                self.wakeup.clear()
                await self.wakeup.wait()
            # The server never writes on this connection, so EOF means it
            # hung up (e.g. it restarted); reconnect before writing into the void.
            if reader.at_eof() or writer.is_closing():
                if wrote:
                    return
                raise ConnectionResetError("peer closed the connection")
            data, frames, msgs = self._take()
            writer.write(data)
            stats.frames_out += frames
            stats.messages_out += msgs
            stats.bytes_out += len(data)
            await writer.drain()
            wrote = True

    def _take(self) -> tuple[bytes, int, int]:
        """Everything queued, as the fewest RAFT frames the size limit allows."""
        t = self.t
        budget = t._max_frame_size - 2 - _ARRAY_HEADER_MAX
        queue = self.queue
        parts: list[bytes] = []
        frames = msgs = 0
        while queue:
            batch: list[bytes] = []
            size = 0
            while queue and (not batch or size + len(queue[0]) <= budget):
                d = queue.popleft()
                batch.append(d)
                size += len(d)
            head = t._packer.pack_array_header(len(batch))
            parts.append(frame_header(Kind.RAFT, len(head) + size))
            parts.append(head)
            parts.extend(batch)
            frames += 1
            msgs += len(batch)
        self.queued_bytes = 0
        return b"".join(parts), frames, msgs


class TcpTransport(HandlerRegistry):
    """One TCP server per process, shared by raft groups and RPC services.

    Create it with `start`. ``send`` needs a running event loop; everything
    else is plain asyncio. See the module docstring for how it works.
    """

    def __init__(
        self,
        *,
        max_frame_size: int = DEFAULT_MAX_FRAME_SIZE,
        queue_messages: int = 4096,
        queue_bytes: int = 64 * 1024 * 1024,
        backoff_min: float = 0.05,
        backoff_max: float = 2.0,
        connect_timeout: float = 3.0,
        max_requests_per_connection: int = 1024,
        rng: random.Random | None = None,
        ssl: _ssl.SSLContext | None = None,
        client_ssl: _ssl.SSLContext | None = None,
        server_hostname: str | None = None,
    ) -> None:
        """Configure a transport; `start` is the usual way to make and open one.

        ``ssl`` secures the server side, ``client_ssl`` the outbound and RPC
        connections (``server_hostname`` overrides the name checked against
        the peer's certificate; default: the host of the address).
        """
        if max_frame_size < 64:
            raise ValueError("max_frame_size is too small")
        self._max_frame_size = max_frame_size
        self._queue_messages = queue_messages
        self._queue_bytes = queue_bytes
        self._backoff_min = backoff_min
        self._backoff_max = backoff_max
        self._connect_timeout = connect_timeout
        self._max_requests = max_requests_per_connection
        self._rng = rng if rng is not None else random.Random()
        self._ssl = ssl
        self._client_ssl = client_ssl
        self._server_hostname = server_hostname
        self.stats = TransportStats()
        """Counters of this transport, its peers and its RPC client."""
        HandlerRegistry.__init__(self)
        self._peers: dict[str, _Peer] = {}
        self._bad_addrs: set[str] = set()
        self._server: asyncio.Server | None = None
        self._address = ""
        self._conn_tasks: set[asyncio.Task[None]] = set()
        self._packer = new_packer()
        self._rpc = RpcClient(
            ssl=client_ssl,
            server_hostname=server_hostname,
            max_frame_size=max_frame_size,
            stats=self.stats,
        )
        self._closed = False

    @classmethod
    async def start(cls, host: str = "127.0.0.1", port: int = 0, **options: Any) -> TcpTransport:
        """Create a transport listening on ``host:port`` (port 0: any free port).

        ``options`` are the keyword arguments of the constructor.
        """
        t = cls(**options)
        await t.listen(host, port)
        return t

    async def listen(self, host: str, port: int) -> None:
        """Start the server (once)."""
        if self._server is not None:
            raise RuntimeError("already listening")
        self._server = await asyncio.start_server(
            self._serve, host, port, ssl=self._ssl, limit=_STREAM_LIMIT
        )
        sock_host, sock_port = self._server.sockets[0].getsockname()[:2]
        self._address = format_address(str(sock_host), int(sock_port))

    @property
    def address(self) -> str:
        """``"host:port"`` this transport listens on (``""`` before `listen`)."""
        return self._address

    # -- sending --------------------------------------------------------------

    def send(self, msgs: Sequence[Message]) -> None:
        """Queue raft messages for their ``dst`` addresses; never blocks.

        Call it on the event loop's thread, with the loop running. Messages
        that cannot be queued (queue full, bad address, too large, transport
        closed) are dropped and counted in ``stats.dropped_sends``; network
        trouble never raises. Only a message that cannot be encoded at all
        (not a raft message, an int beyond 64 bits) raises, as the bug it is.
        """
        stats = self.stats
        if self._closed:
            stats.dropped_sends += len(msgs)
            return
        limit = self._max_frame_size - 2 - _ARRAY_HEADER_MAX
        for m in msgs:
            peer = self._peers.get(m.dst)
            if peer is None:
                peer = self._new_peer(m.dst)
                if peer is None:
                    stats.dropped_sends += 1
                    continue
            if len(peer.queue) >= self._queue_messages:
                stats.dropped_sends += 1
                continue
            data = encode_message(m, self._packer)
            if len(data) > limit:
                stats.dropped_sends += 1
                log.warning(
                    "dropping %s to %s: %d bytes exceed the frame limit",
                    type(m).__name__,
                    m.dst,
                    len(data),
                )
                continue
            if not peer.enqueue(data):
                stats.dropped_sends += 1

    def _new_peer(self, addr: str) -> _Peer | None:
        try:
            host, port = parse_address(addr)
        except ValueError as e:
            if len(self._bad_addrs) < 1000 and addr not in self._bad_addrs:
                # Once per address: the core retries every tick.
                self._bad_addrs.add(addr)
                log.warning("dropping messages: %s", e)
            return None
        peer = _Peer(self, addr, host, port)
        self._peers[addr] = peer
        return peer

    async def remove_peer(self, addr: str) -> None:
        """Close the outbound raft connection to ``addr`` and drop what is
        queued for it (say, once it has left every group). A later `send` to
        it connects afresh."""
        peer = self._peers.pop(addr, None)
        if peer is not None:
            peer.task.cancel()
            await asyncio.gather(peer.task, return_exceptions=True)
            peer._drop_queue()

    @property
    def peers(self) -> list[str]:
        """Addresses with an outbound raft connection (or an attempt at one)."""
        return list(self._peers)

    async def call(self, addr: str, service: str, request: Any, timeout: float = 5.0) -> Any:
        """`RpcClient.call` through this transport's own client."""
        return await self._rpc.call(addr, service, request, timeout)

    # -- serving ----------------------------------------------------------------

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        if self._closed:
            await _close_writer(writer)
            return
        self._conn_tasks.add(task)
        peer = _peername(writer)
        requests: set[asyncio.Task[None]] = set()
        slots = asyncio.Semaphore(self._max_requests)
        stats = self.stats
        abort = True  # graceful close only after a clean EOF
        try:
            while True:
                frame = await _read_frame(reader, self._max_frame_size)
                if frame is None:
                    abort = False
                    return
                kind, body = frame
                if kind is Kind.RAFT:
                    msgs = decode_messages(body)
                    stats.frames_in += 1
                    stats.bytes_in += HEADER_SIZE + len(body)
                    self._dispatch(msgs)
                elif kind is Kind.REQUEST:
                    rpc_id, service, request = decode_request(body)
                    stats.frames_in += 1
                    stats.bytes_in += HEADER_SIZE + len(body)
                    stats.requests_in += 1
                    # Waiting here stops reading: a client flooding requests
                    # is slowed down instead of growing our task set.
                    await slots.acquire()
                    rt = asyncio.get_running_loop().create_task(
                        self._answer(writer, rpc_id, service, request)
                    )
                    requests.add(rt)
                    rt.add_done_callback(requests.discard)
                    rt.add_done_callback(lambda _t: slots.release())
                else:
                    raise ProtocolError(f"unexpected {kind.name} frame on a server connection")
        except ProtocolError as e:
            stats.bad_frames += 1
            log.warning("closing connection from %s: %s", peer, e.reason)
        except OSError as e:  # includes ssl.SSLError
            log.debug("connection from %s lost: %s", peer, e)
        except asyncio.CancelledError:
            # Only close() cancels us, and it only wants us gone. Ending
            # normally matters: asyncio.streams (3.11) calls exception() on
            # this task, which raises (and logs an error) if it was cancelled.
            pass
        finally:
            for rt in list(requests):
                rt.cancel()
            if requests:
                await asyncio.gather(*requests, return_exceptions=True)
            await _close_writer(writer, abort)
            self._conn_tasks.discard(task)

    def _dispatch(self, msgs: list[Message]) -> None:
        stats = self.stats
        groups = self._groups
        for m in msgs:
            handler = groups.get(m.group)
            if handler is None:
                stats.unknown_group += 1
                continue
            stats.messages_in += 1
            try:
                handler(m)
            except Exception:
                # Our own code failed, not the peer: keep the connection.
                stats.handler_errors += 1
                log.exception("raft handler of group %r failed on %s", m.group, type(m).__name__)

    async def _answer(
        self, writer: asyncio.StreamWriter, rpc_id: int, service: str, request: Any
    ) -> None:
        handler = self._services.get(service)
        if handler is None:
            self.stats.request_errors += 1
            body = encode_response(rpc_id, False, f"unknown service {service!r}")
        else:
            try:
                body = encode_response(rpc_id, True, await handler(request))
                if len(body) + 2 > self._max_frame_size:
                    raise ValueError(f"response of {len(body)} bytes exceeds the frame limit")
            except Exception as e:
                self.stats.request_errors += 1
                log.debug("service %r failed: %r", service, e)
                body = encode_response(rpc_id, False, f"{type(e).__name__}: {e}")
        if writer.is_closing():
            return
        writer.write(frame_header(Kind.RESPONSE, len(body)) + body)
        self.stats.frames_out += 1
        self.stats.bytes_out += HEADER_SIZE + len(body)
        with contextlib.suppress(OSError):
            await writer.drain()

    # -- shutdown -------------------------------------------------------------------

    async def close(self) -> None:
        """Stop serving and sending; cancel every task; close every socket."""
        if self._closed:
            return
        self._closed = True
        if self._server is not None:
            self._server.close()
        # Let connections accepted just now reach _serve, which registers
        # them (or closes them, seeing _closed), so none is left unowned.
        for _ in range(3):
            await asyncio.sleep(0)
        tasks: list[asyncio.Task[None]] = [p.task for p in self._peers.values()]
        tasks.extend(self._conn_tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for p in self._peers.values():
            p._drop_queue()
        self._peers.clear()
        await self._rpc.close()
        if self._server is not None:
            await self._server.wait_closed()
