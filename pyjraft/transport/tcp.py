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

*Inbound*, the transport binds and accepts itself (`Acceptor`: it keeps a
reserve of file descriptors for storage), applies the connection limits
(in all and per remote IP) before any TLS handshake, and makes every
accepted connection a `ServerConnection` protocol: bytes are split into
frames as they arrive and RAFT frames are decoded and handed, in the same
callback, to the handler registered for ``msg.group`` (unknown groups:
dropped and counted). No task and no stream buffer stand between the socket
and the raft core. REQUEST frames run the named service handler (a task
per coroutine, none for a handler returning a future), so requests on one
connection are served concurrently. The RESPONSE goes back on the same
connection tagged with the request's id; the answers finished in one loop
turn leave in one write. `RpcClient` (`pyjraft.transport.rpc`) is the
calling side, built the same way. The limits on what a connection may
cost (`pyjraft.transport.limits.ServerLimits`) are enforced there; a
sweeper timer closes connections that stay silent, trickle a frame, or
stop reading our answers.

*Authentication* (`pyjraft.transport.tls`): with a `TlsConfig`, every
connection is mutual TLS; a raft message is delivered only if its ``src``
is the node id that the connection's certificate names, and a client
certificate may not send raft frames at all. Outbound, the server's
certificate must name the node id we dialled. Without TLS the transport
listens only on loopback addresses, unless ``insecure_plaintext=True``;
its first log line says which mode it runs in.

*Bad input* -- garbage, a truncated frame, a length over the limit, an
unknown version or kind, an invalid message -- closes *that* connection,
logs the reason on the ``pyjraft.transport`` logger (rate-limited) and
counts it in ``stats.bad_frames`` (or the counter of the limit it broke).
Nothing else is affected.

`close` cancels every task the transport started and closes every socket,
so no task or transport outlives it.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import random
import socket
from collections.abc import Sequence
from functools import partial
from typing import Any

from pyjraft.core.messages import Message
from pyjraft.transport.acceptor import Acceptor, bind_sockets
from pyjraft.transport.base import (
    CallerServiceHandler,
    HandlerRegistry,
    ServiceHandler,
    TransportStats,
    format_address,
    parse_address,
)
from pyjraft.transport.codec import (
    MAX_REQUEST_HEAD,
    EntriesCache,
    encode_message_parts,
    encode_response,
    new_packer,
)
from pyjraft.transport.errors import InsecureBindError
from pyjraft.transport.framing import DEFAULT_MAX_FRAME_SIZE, Kind, frame_header
from pyjraft.transport.limits import DEFAULT_MAX_REQUEST_BYTES, LogLimiter, ServerLimits
from pyjraft.transport.peer import ARRAY_HEADER_MAX, Peer, PeerConfig
from pyjraft.transport.rpc import RpcClient
from pyjraft.transport.server_conn import ServerConnection
from pyjraft.transport.tls import Role, TlsConfig

__all__ = ["RpcClient", "TcpTransport", "is_loopback_host"]

log = logging.getLogger("pyjraft.transport")


def is_loopback_host(host: str) -> bool:
    """Whether ``host`` names only loopback addresses without a lookup:
    ``localhost``, 127.0.0.0/8, ``::1`` (and IPv4-mapped 127.x)."""
    if host.lower() == "localhost":
        return True
    try:
        ip = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_loopback


class TcpTransport(HandlerRegistry):
    """One TCP server per process, shared by raft groups and RPC services.

    Create it with `start`. ``send`` needs a running event loop; everything
    else is plain asyncio. See the module docstring for how it works.
    """

    def __init__(
        self,
        *,
        tls: TlsConfig | None = None,
        insecure_plaintext: bool = False,
        limits: ServerLimits | None = None,
        max_frame_size: int = DEFAULT_MAX_FRAME_SIZE,
        queue_messages: int = 4096,
        queue_bytes: int = 64 * 1024 * 1024,
        backoff_min: float = 0.05,
        backoff_max: float = 2.0,
        connect_timeout: float = 3.0,
        rng: random.Random | None = None,
    ) -> None:
        """Configure a transport; `start` is the usual way to make and open one.

        ``tls``: mutual TLS for every connection, inbound and outbound (see
        `pyjraft.transport.tls`); its certificate must be a node's. Without
        it the server binds only loopback addresses unless
        ``insecure_plaintext`` (then anyone who reaches the port can steer
        the group). ``limits``: what connections may cost (`ServerLimits`).
        """
        if max_frame_size < 64:
            raise ValueError("max_frame_size is too small")
        if tls is not None and tls.identity.role is not Role.NODE:
            raise ValueError(f"a server needs a node certificate; this one names {tls.identity}")
        self._tls = tls
        self._insecure_plaintext = insecure_plaintext
        self._limits = limits if limits is not None else ServerLimits()
        self._max_frame_size = max_frame_size
        self._queue_messages = queue_messages
        self._packer = new_packer()
        self._limiter = LogLimiter(log)
        self.stats = TransportStats()
        """Counters of this transport, its peers and its RPC client."""
        self._peer_config = PeerConfig(
            max_frame_size=max_frame_size,
            queue_messages=queue_messages,
            queue_bytes=queue_bytes,
            backoff_min=backoff_min,
            backoff_max=backoff_max,
            connect_timeout=connect_timeout,
            rng=rng if rng is not None else random.Random(),
            client_ssl=tls.client_context if tls is not None else None,
            pack_array_header=self._packer.pack_array_header,
            limiter=self._limiter,
        )
        HandlerRegistry.__init__(self)
        self._max_request_body = DEFAULT_MAX_REQUEST_BYTES + MAX_REQUEST_HEAD
        self._min_request_limit = DEFAULT_MAX_REQUEST_BYTES
        self._peers: dict[str, Peer] = {}
        self._dirty: list[Peer] = []
        self._flush_scheduled = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._bad_addrs: set[str] = set()
        self._acceptor: Acceptor | None = None
        self._address = ""
        self._conns: set[ServerConnection] = set()
        self._conn_count = 0
        self._conns_per_ip: dict[str, int] = {}
        self._handshakes: set[asyncio.Task[None]] = set()
        self._buffered = 0  # bytes reserved by incomplete frames, all connections
        self._sweeper: asyncio.TimerHandle | None = None
        # What connections may still handle in this turn of the event loop.
        self._turn_started = False
        self._turn_frames_left = self._limits.max_frames_per_turn
        self._turn_bytes_left = self._limits.max_bytes_per_turn
        self._raft_frames_left = self._limits.max_frames_per_turn
        self._raft_bytes_left = self._limits.max_bytes_per_turn
        # Fair shares of the request budget: the turn's number, connections
        # that had to stop for the budget in it, each one's share of the next.
        self._turn = 0
        self._yielders = 0
        self._quantum = self._limits.max_frames_per_turn
        self._rpc = RpcClient(tls=tls, max_frame_size=max_frame_size, stats=self.stats)
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
        """Start the server (once).

        Raises `InsecureBindError` when ``host`` is not a loopback address
        and the transport has neither TLS nor ``insecure_plaintext``.
        """
        if self._acceptor is not None:
            raise RuntimeError("already listening")
        loop = asyncio.get_running_loop()
        infos = await loop.getaddrinfo(
            host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
        if not infos:
            raise OSError(f"cannot resolve {host!r}")
        if self._tls is None and not self._insecure_plaintext:
            exposed = [str(i[4][0]) for i in infos if not is_loopback_host(str(i[4][0]))]
            if exposed or not host:
                raise InsecureBindError(
                    f"refusing to listen on {host or 'every interface'}:{port} "
                    f"({', '.join(exposed) or 'all addresses'}) without TLS: anyone who "
                    "reaches the port could steer the raft group. Give certificates "
                    "(--tls-cert/--tls-key/--tls-ca), bind a loopback address, or pass "
                    "insecure_plaintext=True (--insecure-plaintext) to accept that risk"
                )
        socks = bind_sockets(infos)  # type: ignore[arg-type]
        self._acceptor = Acceptor(
            socks,
            self._on_accept,
            fd_reserve=self._limits.fd_reserve,
            stats=self.stats,
            limiter=self._limiter,
        )
        sock_host, sock_port = socks[0].getsockname()[:2]
        self._address = format_address(str(sock_host), int(sock_port))
        if self._tls is not None:
            log.info(
                "listening on %s with mutual TLS as %s: connections need a certificate of "
                "the cluster CA; raft messages are taken only from node certificates, as "
                "the node each names",
                self._address,
                self._tls.identity,
            )
        elif self._insecure_plaintext and not all(is_loopback_host(str(i[4][0])) for i in infos):
            log.warning(
                "listening on %s in INSECURE PLAINTEXT mode: no authentication, anyone who "
                "can reach this port can send raft messages and steer the group",
                self._address,
            )
        else:
            log.info(
                "listening on %s in plaintext on loopback only: no authentication, any "
                "local process can steer the group (give TLS certificates to authenticate)",
                self._address,
            )
        self._acceptor.start()

    @property
    def address(self) -> str:
        """``"host:port"`` this transport listens on (``""`` before `listen`)."""
        return self._address

    @property
    def tls(self) -> TlsConfig | None:
        """The TLS settings, or None in plaintext."""
        return self._tls

    @property
    def accepting(self) -> bool:
        """Whether the server is accepting connections now (False while it
        keeps its file-descriptor reserve, or before `listen`)."""
        return self._acceptor is not None and self._acceptor.accepting

    def register_service(
        self,
        name: str,
        handler: ServiceHandler,
        max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES,
    ) -> None:
        """Serve RPC requests for service ``name`` with ``handler``; see
        `HandlerRegistry.register_service` for ``max_request_bytes``."""
        HandlerRegistry.register_service(self, name, handler, max_request_bytes)
        self._update_request_limit()

    def register_caller_service(
        self,
        name: str,
        handler: CallerServiceHandler,
        max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES,
    ) -> None:
        """As `register_service`, the handler also told the caller's identity
        (the connection's certificate's; None in plaintext)."""
        HandlerRegistry.register_caller_service(self, name, handler, max_request_bytes)
        self._update_request_limit()

    def unregister_service(self, name: str) -> None:
        """Stop serving ``name``; later requests get an error response."""
        HandlerRegistry.unregister_service(self, name)
        self._update_request_limit()

    def _update_request_limit(self) -> None:
        # No request frame may exceed the largest limit of any service: the
        # header alone refuses it.
        limits = self._service_limits.values()
        largest = max(limits, default=DEFAULT_MAX_REQUEST_BYTES)
        self._max_request_body = min(largest + MAX_REQUEST_HEAD, self._max_frame_size - 2)
        # A body this small is within every service's limit, whatever it is for.
        self._min_request_limit = min(limits, default=0)

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

    def _on_accept(self, sock: socket.socket, addr: object) -> None:
        """A socket was accepted: apply the connection limits, then start the
        connection (and its TLS handshake) in a task."""
        ip = str(addr[0]) if isinstance(addr, tuple) and addr else "?"
        lim = self._limits
        per_ip = self._conns_per_ip.get(ip, 0)
        why = ""
        if self._closed:
            why = "closing"
        elif self._conn_count >= lim.max_connections:
            why = f"{self._conn_count} connections open, the limit is {lim.max_connections}"
        elif per_ip >= lim.max_connections_per_ip:
            why = f"{per_ip} connections open from {ip}, the limit is {lim.max_connections_per_ip}"
        if why:
            sock.close()
            if not self._closed:
                self.stats.refused_connections += 1
                self._limiter.log(
                    logging.WARNING, f"refused:{ip}", "refusing a connection from %s: %s", ip, why
                )
            return
        self._conn_count += 1
        self._conns_per_ip[ip] = per_ip + 1
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        task = asyncio.get_running_loop().create_task(self._start_connection(sock, ip))
        self._handshakes.add(task)
        task.add_done_callback(partial(self._handshake_done, sock))
        self._schedule_sweep()

    async def _start_connection(self, sock: socket.socket, ip: str) -> None:
        conn = ServerConnection(self, ip)
        loop = asyncio.get_running_loop()
        try:
            if self._tls is None:
                await loop.connect_accepted_socket(lambda: conn, sock)
            else:
                await loop.connect_accepted_socket(
                    lambda: conn,
                    sock,
                    ssl=self._tls.server_context,
                    ssl_handshake_timeout=self._limits.read_timeout,
                )
        except asyncio.CancelledError:
            conn.release()
            sock.close()
            raise
        except Exception as e:  # handshake failed or timed out; OSError, SSLError
            conn.release()
            sock.close()
            if self._tls is not None:
                self.stats.auth_failures += 1
                self._limiter.log(
                    logging.WARNING, f"handshake:{ip}", "TLS handshake with %s failed: %r", ip, e
                )

    def _handshake_done(self, sock: socket.socket, task: asyncio.Task[None]) -> None:
        self._handshakes.discard(task)
        if task.cancelled():
            sock.close()  # cancelled before it ran (close): nobody else owns the socket

    def _connection_released(self, ip: str) -> None:
        self._conn_count -= 1
        n = self._conns_per_ip.get(ip, 0) - 1
        if n > 0:
            self._conns_per_ip[ip] = n
        else:
            self._conns_per_ip.pop(ip, None)
        if self._acceptor is not None:
            self._acceptor.connection_closed()

    def _schedule_sweep(self) -> None:
        if self._sweeper is None and not self._closed:
            lim = self._limits
            interval = max(0.02, min(1.0, lim.read_timeout / 4, lim.idle_timeout / 4))
            self._sweeper = asyncio.get_running_loop().call_later(interval, self._sweep)

    def _sweep(self) -> None:
        """Close the connections that broke a time limit (see `ServerLimits`)."""
        self._sweeper = None
        now = asyncio.get_running_loop().time()
        lim = self._limits
        for c in list(self._conns):
            if c.failed:
                continue
            if c.frames != c.seen_frames:
                c.seen_frames = c.frames
                c.quiet_since = now
            if c.writing_paused and now - c.writing_paused_at > lim.idle_timeout:
                c.close_for(
                    f"has not read our answers for {lim.idle_timeout} s", "timed_out_connections"
                )
            elif c.reading_paused:
                continue  # our choice, not the peer's
            elif c.deadline and now > c.deadline:
                c.close_for(
                    f"frame of {c.reserved or '?'} bytes not received in time (slower than "
                    f"{lim.min_read_rate} bytes/s after {lim.read_timeout} s)",
                    "timed_out_connections",
                )
            elif not c.requests and not c.buf and not c.skip:
                quiet = now - c.quiet_since
                if c.frames == 0 and quiet > lim.read_timeout:
                    c.close_for(
                        f"sent no frame within {lim.read_timeout} s", "timed_out_connections"
                    )
                elif quiet > lim.idle_timeout:
                    c.close_for(f"idle for {lim.idle_timeout} s", "timed_out_connections")
        if self._conns or self._handshakes:
            self._schedule_sweep()

    def _new_turn_soon(self) -> None:
        """The first frames of a loop turn: renew the turn's budget at the
        start of the next one (a callback queued now runs before the next
        turn's I/O callbacks)."""
        self._turn_started = True
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        loop.call_soon(self._new_turn)

    def _new_turn(self) -> None:
        self._turn_started = False
        self._turn_frames_left = self._limits.max_frames_per_turn
        self._turn_bytes_left = self._limits.max_bytes_per_turn
        self._raft_frames_left = self._limits.max_frames_per_turn
        self._raft_bytes_left = self._limits.max_bytes_per_turn
        self._turn += 1
        # Connections that wanted more than the budget last turn share this
        # one's equally (the others' requests go first in it).
        self._quantum = max(1, self._limits.max_frames_per_turn // (self._yielders + 1))
        self._yielders = 0

    def _dispatch(self, msgs: list[Message], node_id: str | None) -> None:
        stats = self.stats
        groups = self._groups
        for m in msgs:
            if node_id is not None and m.src != node_id:
                stats.spoofed_messages += 1
                self._limiter.log(
                    logging.WARNING,
                    f"spoofed:{node_id}",
                    "dropping %s claiming src %r on a connection authenticated as node %r",
                    type(m).__name__,
                    m.src[:80],
                    node_id,
                )
                continue
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
        if self._acceptor is not None:
            self._acceptor.close()
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        tasks: list[asyncio.Task[None]] = [p.task for p in self._peers.values()]
        tasks += self._handshakes
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
