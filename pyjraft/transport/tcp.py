"""The asyncio TCP transport: raft traffic of many groups and user RPC on one port.

Theory of operation
-------------------
A process runs one `TcpTransport`: one listening socket that accepts
connections carrying frames (`pyjraft.transport.framing`) of three kinds.

*Raft traffic is one-way.* To send, the transport keeps one outbound
connection per destination address (``msg.dst``), owned by a
`pyjraft.transport.peer.Peer`. `TcpTransport.send` never blocks: it encodes
each message at once (`pyjraft.transport.codec.encode_message`) and appends
the bytes to the peer's bounded queue (bounded in messages and in bytes);
when the queue is full the message is dropped and counted, because Raft
retransmits anyway and a stuck peer must not grow our memory. Once per turn
of the event loop, every peer with something queued packs it into as few
RAFT frames as the frame limit allows and issues one write: pipelining
without a round trip per message, order preserved per peer, and one system
call per peer per turn however many messages the turn produced (a caller on
the latency path -- a node that has just proposed -- may `flush` sooner, in
the same callback). A reply travels on the *other* node's outbound
connection to our listener, so each pair of nodes uses two connections.
Connections are made lazily, and remade with exponential backoff and jitter
after they break.

*Inbound*, every accepted connection is a `_ServerConnection` protocol:
bytes are split into frames as they arrive and RAFT frames are decoded and
handed, in the same callback, to the handler registered for ``msg.group``
(unknown groups: dropped and counted). No task and no stream buffer stand
between the socket and the raft core. REQUEST frames run the named service
handler in a task of its own, so requests on one connection are served
concurrently; at most ``max_requests_per_connection`` at a time, beyond
which the connection stops reading. The RESPONSE goes back on the same
connection tagged with the request's id; the answers finished in one loop
turn leave in one write. `RpcClient` (`pyjraft.transport.rpc`) is the
calling side, built the same way.

*Bad input* -- garbage, a truncated frame, a length over the limit, an
unknown version or kind, an invalid message -- closes *that* connection,
logs the reason on the ``pyjraft.transport`` logger and counts it in
``stats.bad_frames``. Nothing else is affected.

`close` cancels every task the transport started and closes every socket,
so no task or transport outlives it.
"""

from __future__ import annotations

import asyncio
import logging
import random
import ssl as _ssl
from collections.abc import Awaitable, Sequence
from functools import partial
from typing import Any, cast

from pyjraft.core.messages import Message
from pyjraft.transport.base import (
    HandlerRegistry,
    TransportStats,
    format_address,
    parse_address,
)
from pyjraft.transport.codec import (
    EntriesCache,
    decode_messages,
    decode_request,
    encode_message_parts,
    encode_response,
    new_packer,
)
from pyjraft.transport.errors import ProtocolError
from pyjraft.transport.framing import (
    DEFAULT_MAX_FRAME_SIZE,
    HEADER_SIZE,
    Kind,
    TurnWriter,
    frame_header,
    parse_header_at,
)
from pyjraft.transport.peer import ARRAY_HEADER_MAX, Peer, PeerConfig
from pyjraft.transport.reasons import count_bad_frame, count_connection_error
from pyjraft.transport.rpc import RpcClient

__all__ = ["RpcClient", "TcpTransport"]

log = logging.getLogger("pyjraft.transport")

_CLOSE_GRACE = 1.0  # seconds to wait for a socket to close gracefully before aborting it


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
        if max_requests_per_connection < 1:
            raise ValueError("max_requests_per_connection must be >= 1")
        self._max_frame_size = max_frame_size
        self._queue_messages = queue_messages
        self._max_requests = max_requests_per_connection
        self._ssl = ssl
        self._packer = new_packer()
        self._peer_config = PeerConfig(
            max_frame_size=max_frame_size,
            queue_messages=queue_messages,
            queue_bytes=queue_bytes,
            backoff_min=backoff_min,
            backoff_max=backoff_max,
            connect_timeout=connect_timeout,
            rng=rng if rng is not None else random.Random(),
            client_ssl=client_ssl,
            server_hostname=server_hostname,
            pack_array_header=self._packer.pack_array_header,
        )
        self.stats = TransportStats()
        """Counters of this transport, its peers and its RPC client."""
        HandlerRegistry.__init__(self)
        self._peers: dict[str, Peer] = {}
        self._dirty: list[Peer] = []
        self._flush_scheduled = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._bad_addrs: set[str] = set()
        self._server: asyncio.Server | None = None
        self._address = ""
        self._conns: set[_ServerConnection] = set()
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
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: _ServerConnection(self), host, port, ssl=self._ssl
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
        limit = self._max_frame_size - 2 - ARRAY_HEADER_MAX
        peers = self._peers
        cache: EntriesCache = {}  # one batch of entries packed once for every follower
        for m in msgs:
            peer = peers.get(m.dst)
            if peer is None:
                peer = self._new_peer(m.dst)
                if peer is None:
                    stats.dropped_sends += 1
                    continue
            if len(peer.queue) >= self._queue_messages:
                stats.dropped_sends += 1
                continue
            parts = encode_message_parts(m, self._packer, cache)
            size = sum(map(len, parts))
            if size > limit:
                stats.dropped_sends += 1
                log.warning(
                    "dropping %s to %s: %d bytes exceed the frame limit",
                    type(m).__name__,
                    m.dst,
                    size,
                )
                continue
            if not peer.enqueue(parts, size):
                stats.dropped_sends += 1

    def _peer_ready(self, peer: Peer) -> None:
        # Called by a connected peer that has something queued: write it at the
        # end of this loop turn, together with whatever else the turn queues.
        self._dirty.append(peer)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            loop = self._loop
            if loop is None:
                # Looked up once: get_running_loop costs a getpid() each time.
                loop = self._loop = asyncio.get_running_loop()
            loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        self.flush()

    def flush(self) -> None:
        """Write what `send` queued now instead of at the end of this loop turn
        (say, before a blocking fdatasync); never blocks."""
        dirty, self._dirty = self._dirty, []
        for peer in dirty:
            peer.flush()

    def _new_peer(self, addr: str) -> Peer | None:
        try:
            host, port = parse_address(addr)
        except ValueError as e:
            if len(self._bad_addrs) < 1000 and addr not in self._bad_addrs:
                # Once per address: the core retries every tick.
                self._bad_addrs.add(addr)
                log.warning("dropping messages: %s", e)
            return None
        peer = Peer(addr, host, port, self._peer_config, self.stats, self._peer_ready)
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
            peer.drop_queue()

    def peer_queues(self) -> dict[str, dict[str, Any]]:
        """Per outbound peer: whether it is connected, messages and bytes queued."""
        return {
            addr: {"connected": p.connected, "queued": len(p.queue), "queued_bytes": p.queued_bytes}
            for addr, p in self._peers.items()
        }

    @property
    def peers(self) -> list[str]:
        """Addresses with an outbound raft connection (or an attempt at one)."""
        return list(self._peers)

    async def call(self, addr: str, service: str, request: Any, timeout: float = 5.0) -> Any:
        """`RpcClient.call` through this transport's own client."""
        return await self._rpc.call(addr, service, request, timeout)

    # -- serving ----------------------------------------------------------------

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

    def _response_frame(
        self, rpc_id: int, service: str, value: Any, exc: BaseException | None
    ) -> bytes:
        """The RESPONSE frame of a handler's ``value``, or of its error ``exc``."""
        if exc is None:
            try:
                body = encode_response(rpc_id, True, value)
                if len(body) + 2 > self._max_frame_size:
                    raise ValueError(f"response of {len(body)} bytes exceeds the frame limit")
            except Exception as e:
                exc = e
        if exc is not None:
            self.stats.request_errors += 1
            log.debug("service %r failed: %r", service, exc)
            body = encode_response(rpc_id, False, f"{type(exc).__name__}: {exc}")
        return frame_header(Kind.RESPONSE, len(body)) + body

    # -- shutdown -------------------------------------------------------------------

    async def close(self) -> None:
        """Stop serving and sending; cancel every task; close every socket."""
        if self._closed:
            return
        self._closed = True
        if self._server is not None:
            self._server.close()
        tasks: list[asyncio.Task[None]] = [p.task for p in self._peers.values()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for p in self._peers.values():
            p.drop_queue()
        self._peers.clear()
        self._dirty.clear()
        # Connections accepted just now may not have reached connection_made
        # yet; it closes them itself once it sees _closed.
        for _ in range(3):
            await asyncio.sleep(0)
        conns = list(self._conns)
        for c in conns:
            c.abort()
        await asyncio.gather(*(c.closed for c in conns), return_exceptions=True)
        await self._rpc.close()
        if self._server is not None:
            await self._server.wait_closed()


class _ServerConnection(asyncio.Protocol):
    """One accepted connection: frames split as bytes arrive; raft messages
    dispatched in the same callback; requests served in tasks."""

    def __init__(self, t: TcpTransport) -> None:
        self.t = t
        self.transport: asyncio.Transport | None = None
        self.peer = "?"
        self.buf = bytearray()
        # Requests being served: tasks running a coroutine handler, or the
        # futures a handler returned.
        self.requests: set[asyncio.Future[Any]] = set()
        self.reading_paused = False
        self.writing_paused = False
        self.drained: asyncio.Future[None] | None = None
        self.out = TurnWriter()  # answers finished in one loop turn: one write
        self.failed = False
        self.eof = False
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    # -- asyncio.Protocol --------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = self.out.transport = cast(asyncio.Transport, transport)
        if self.t._closed:
            self.transport.abort()
            return
        self.t._conns.add(self)
        peer = transport.get_extra_info("peername")
        if isinstance(peer, tuple) and len(peer) >= 2:
            self.peer = format_address(str(peer[0]), int(peer[1]))

    def data_received(self, data: bytes) -> None:
        if self.failed:
            return
        if self.buf:
            self.buf += data
            self._process_buffered()
            return
        # Nothing pending (the common case): split the frames straight out of
        # ``data``; only an incomplete tail is copied into the buffer.
        pos = self._process(data)
        if pos < len(data) and not self.failed:
            self.buf = bytearray(data[pos:])

    def eof_received(self) -> bool:
        self.eof = True
        if self.buf and not self.failed and not self.reading_paused:
            self._fail(
                ProtocolError(f"stream ended inside a frame ({len(self.buf)} bytes pending)")
            )
            return False
        # Half-closed by the client: answer what it asked, then close
        # (_request_done); with nothing outstanding, let asyncio close now.
        return bool(self.requests)

    def pause_writing(self) -> None:
        self.writing_paused = True

    def resume_writing(self) -> None:
        self.writing_paused = False
        if self.drained is not None and not self.drained.done():
            self.drained.set_result(None)
        self.drained = None

    def connection_lost(self, exc: Exception | None) -> None:
        self.t._conns.discard(self)
        if exc is not None:
            count_connection_error(self.t.stats, "inbound_lost", exc)
            log.debug("connection from %s lost: %s", self.peer, exc)
        self._cancel_requests()
        if self.drained is not None and not self.drained.done():
            self.drained.set_result(None)
        if not self.closed.done():
            self.closed.set_result(None)

    # -- frames ------------------------------------------------------------------

    def _process_buffered(self) -> None:
        pos = self._process(self.buf)
        if pos and not self.failed:
            del self.buf[:pos]

    def _process(self, src: bytes | bytearray) -> int:
        """Handle the complete frames at the start of ``src``, until the
        request limit; return how many bytes were consumed."""
        t = self.t
        stats = t.stats
        n = len(src)
        pos = 0
        # Frame bodies are decoded from views of ``src``: msgpack copies out
        # what it keeps, so nothing is copied for the frame itself.
        view = memoryview(src)
        try:
            while n - pos >= HEADER_SIZE:
                if len(self.requests) >= t._max_requests:
                    # Stop reading: a client flooding requests is slowed down
                    # instead of growing our task set.
                    self._pause_reading()
                    break
                kind, body_len = parse_header_at(src, pos, t._max_frame_size)
                end = pos + HEADER_SIZE + body_len
                if end > n:
                    break
                with view[pos + HEADER_SIZE : end] as body:
                    pos = end
                    if kind is Kind.RAFT:
                        msgs = decode_messages(body)
                        stats.frames_in += 1
                        stats.bytes_in += HEADER_SIZE + body_len
                        t._dispatch(msgs)
                    elif kind is Kind.REQUEST:
                        rpc_id, service, request = decode_request(body)
                        stats.frames_in += 1
                        stats.bytes_in += HEADER_SIZE + body_len
                        stats.requests_in += 1
                        self._serve(rpc_id, service, request)
                    else:
                        raise ProtocolError(f"unexpected {kind.name} frame on a server connection")
                if self.failed:
                    break
        except ProtocolError as e:
            self._fail(e)
        finally:
            view.release()
        return pos

    def _serve(self, rpc_id: int, service: str, request: Any) -> None:
        handler = self.t._services.get(service)
        if handler is None:
            self.t.stats.request_errors += 1
            body = encode_response(rpc_id, False, f"unknown service {service!r}")
            self._queue_answer(frame_header(Kind.RESPONSE, len(body)) + body)
            return
        try:
            pending = handler(request)
        except Exception as e:
            self._queue_answer(self.t._response_frame(rpc_id, service, None, e))
            return
        if asyncio.isfuture(pending):
            # A future (say, Node.apply's) is answered from its done callback:
            # no task, no coroutine per request.
            self.requests.add(pending)
            pending.add_done_callback(partial(self._future_answered, rpc_id, service))
            return
        rt = asyncio.get_running_loop().create_task(self._answer(rpc_id, service, pending))
        self.requests.add(rt)
        rt.add_done_callback(self._request_done)

    def _future_answered(self, rpc_id: int, service: str, fut: asyncio.Future[Any]) -> None:
        if fut.cancelled():
            self._request_done(fut)
            return
        exc = fut.exception()
        value = None if exc is not None else fut.result()
        self._queue_answer(self.t._response_frame(rpc_id, service, value, exc))
        if self.writing_paused:
            # Hold the request's slot until the client reads (see _answer).
            if self.drained is None:
                self.drained = asyncio.get_running_loop().create_future()
            self.drained.add_done_callback(lambda _: self._request_done(fut))
        else:
            self._request_done(fut)

    def _request_done(self, request: asyncio.Future[Any]) -> None:
        self.requests.discard(request)
        if self.reading_paused and len(self.requests) < self.t._max_requests:
            self.reading_paused = False
            if self.transport is not None and not self.transport.is_closing():
                self.transport.resume_reading()
                self._process_buffered()
        if self.eof and not self.requests and not self.failed:
            self._close_gracefully()

    async def _answer(self, rpc_id: int, service: str, pending: Awaitable[Any]) -> None:
        try:
            value, exc = await pending, None
        except Exception as e:
            value, exc = None, e
        self._queue_answer(self.t._response_frame(rpc_id, service, value, exc))
        if self.writing_paused:
            # Hold this request's slot until the client reads: a client that
            # asks without reading runs out of slots and we stop reading it.
            if self.drained is None:
                self.drained = asyncio.get_running_loop().create_future()
            await asyncio.shield(self.drained)

    def _queue_answer(self, frame: bytes) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        self.out.write(frame)
        stats = self.t.stats
        stats.frames_out += 1
        stats.bytes_out += len(frame)

    def _cancel_requests(self) -> None:
        # Our tasks only: a future a handler returned may be shared; its done
        # callback finds the connection gone and just frees the slot.
        for rt in list(self.requests):
            if isinstance(rt, asyncio.Task):
                rt.cancel()

    # -- closing -----------------------------------------------------------------

    def _pause_reading(self) -> None:
        if not self.reading_paused and self.transport is not None:
            self.reading_paused = True
            self.transport.pause_reading()

    def _fail(self, e: ProtocolError) -> None:
        self.failed = True
        count_bad_frame(self.t.stats, e.reason)
        log.warning("closing connection from %s: %s", self.peer, e.reason)
        self.abort()

    def abort(self) -> None:
        """Drop the connection at once; requests in flight are cancelled."""
        self._cancel_requests()
        if self.transport is not None:
            self.transport.abort()

    def _close_gracefully(self) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        self.out.flush()  # answers still queued go before the close
        transport.close()
        # A peer that never reads what is still buffered must not keep the
        # socket open for ever.
        asyncio.get_running_loop().call_later(_CLOSE_GRACE, transport.abort)
