"""`ServerConnection`: one accepted connection of a `TcpTransport`.

Theory of operation
-------------------
Bytes are split into frames as they arrive. In the common case every frame
is complete inside the chunk the socket delivered and is handled straight
from it: RAFT frames are decoded and dispatched in the same callback,
REQUEST frames run their service handler (see `TcpTransport`). Only an
incomplete tail is copied into ``buf``. What a peer may make us hold or
spend is bounded, each bound checked where it is cheapest:

* *Who may send what* (TLS): the certificate's identity is read once, in
  `connection_made`. A client identity sending a RAFT frame is refused at
  the frame's header; a node identity's raft messages are dropped unless
  their ``src`` is that node (`TcpTransport._dispatch`).
* *Frame sizes*: at the header, RAFT frames against the transport's frame
  limit, REQUEST frames against the largest ``max_request_bytes`` of any
  service; once the request's head (rpc id, service) is in, against that
  service's own limit -- an oversized request is answered with an error
  and its remaining bytes are skipped as they arrive, never buffered.
* *Buffered bytes*: an incomplete frame reserves the size its header
  announces from the transport's budget when we start buffering it, and
  gives it back once handled; a frame that does not fit closes the
  connection.
* *Time*: the transport's sweeper (`TcpTransport._sweep`) closes a
  connection that sends no frame for too long, or whose incomplete frame is
  not finished by its deadline (``read_timeout + size / min_read_rate``).
  The hot path only counts frames; the clock is read when buffering starts.
* *Work per turn*: once ``max_frames_per_turn`` frames or
  ``max_bytes_per_turn`` bytes were handled in this turn of the event loop
  (all connections together: `TcpTransport._turn_budget`), a connection
  stops reading, keeps the rest in ``buf`` and carries on in a callback of
  its own, after the loop has run whatever else was ready (timers,
  heartbeats). Connections that had to stop share the next turn's budget
  equally (``max_frames_per_turn`` divided among them and one more), so a
  connection with one request (a status query) is not made to wait while
  a flood of others is read, turn after turn, round robin. Connections
  that carry raft frames (peers) draw on a second budget of the same size:
  a flood of requests, answered at once (say ``overloaded``) and so always
  ready to read, would otherwise take every turn's budget before the
  peers' connections got theirs, and a leader that cannot read its
  followers' acknowledgements in time steps down.
* *Requests in flight*: past ``max_requests_per_connection`` requests or
  ``max_request_bytes_in_flight`` bytes being served, the connection stops
  reading until one is answered.
"""

from __future__ import annotations

import asyncio
import logging
from functools import partial
from typing import TYPE_CHECKING, Any, cast

from pyjraft.transport.base import format_address
from pyjraft.transport.codec import (
    MAX_REQUEST_HEAD,
    decode_messages,
    decode_payload,
    decode_request,
    encode_response,
    split_request,
)
from pyjraft.transport.errors import ProtocolError
from pyjraft.transport.framing import HEADER_SIZE, Kind, TurnWriter, frame_header, parse_header_at
from pyjraft.transport.reasons import count_bad_frame, count_connection_error, count_limit
from pyjraft.transport.tls import Identity, IdentityError, Role, peer_identity

if TYPE_CHECKING:
    from pyjraft.transport.tcp import TcpTransport

log = logging.getLogger("pyjraft.transport")

_RAFT = Kind.RAFT  # enum members as globals: read once per frame, cheaper
_REQUEST = Kind.REQUEST
_CLOSE_GRACE = 1.0  # seconds to wait for a socket to close gracefully before aborting it


class Refused(ProtocolError):
    """A limit refused what the peer sent; ``counter`` names the stat to count it in."""

    def __init__(self, reason: str, counter: str) -> None:
        super().__init__(reason)
        self.counter = counter


class ServerConnection(asyncio.Protocol):
    """One accepted connection; see the module docstring."""

    def __init__(self, t: TcpTransport, ip: str) -> None:
        self.t = t
        self.ip = ip
        self.transport: asyncio.Transport | None = None
        self.peer = ip
        self.node_id: str | None = None
        """The node its certificate names (TLS); None in plaintext or for a client."""
        self.client_role = False
        """Whether its certificate is a client's: no raft frames."""
        self.identity: Identity | None = None
        """What its certificate names (TLS); None in plaintext. Given to the
        services registered with ``register_caller_service``."""
        self.raft = False
        """Whether it has carried raft frames (a peer's): it then draws on the
        turn budget of raft traffic, which requests cannot exhaust."""
        self.turn = -1  # the transport's turn whose share ``turn_frames`` counts
        self.turn_frames = 0
        self.buf = bytearray()
        # Requests being served (tasks running a coroutine handler, or the
        # futures a handler returned), with their encoded sizes.
        self.requests: dict[asyncio.Future[Any], int] = {}
        self.request_bytes = 0
        self.reading_paused = False
        self.yielded = False  # a continuation of this turn's frames is scheduled
        self.writing_paused = False
        self.writing_paused_at = 0.0
        self.drained: asyncio.Future[None] | None = None
        self.out = TurnWriter()  # answers finished in one loop turn: one write
        self.failed = False
        self.eof = False
        self.released = False  # its slot in the connection counts is given back
        # Frames handled (the sweeper compares it between sweeps), and the
        # sweep at which it last changed.
        self.frames = 0
        self.seen_frames = -1
        self.quiet_since = asyncio.get_running_loop().time()
        # The incomplete frame at the head of ``buf`` (or being skipped):
        # bytes reserved for it from the transport's budget, its deadline,
        # whether its request head was checked, bytes still to skip.
        self.reserved = 0
        self.deadline = 0.0
        self.head_checked = False
        self.skip = 0
        self.partial: tuple[Kind, int] | None = None
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    # -- asyncio.Protocol --------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = self.out.transport = cast(asyncio.Transport, transport)
        t = self.t
        if t._closed:
            self.transport.abort()
            return
        t._conns.add(self)
        peer = transport.get_extra_info("peername")
        if isinstance(peer, tuple) and len(peer) >= 2:
            self.peer = format_address(str(peer[0]), int(peer[1]))
        if t._tls is not None:
            try:
                ident = peer_identity(transport.get_extra_info("peercert"))
            except IdentityError as e:
                t.stats.auth_failures += 1
                t._limiter.log(logging.WARNING, "no-identity", "refusing %s: %s", self.peer, e)
                self.abort()
                return
            self.identity = ident
            if ident.role is Role.NODE:
                self.node_id = ident.name
            else:
                self.client_role = True
            self.peer = f"{self.peer} ({ident})"

    def data_received(self, data: bytes) -> None:
        if self.failed:
            return
        if self.skip:
            taken = min(self.skip, len(data))
            self.skip -= taken
            if self.skip:
                return
            self._frame_done()
            data = data[taken:]
            if not data:
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
            self._account_partial()
        elif self.reserved:
            self._frame_done()

    def eof_received(self) -> bool:
        self.eof = True
        if (self.buf or self.skip) and not self.failed and not self.reading_paused:
            self._fail(
                ProtocolError(
                    f"stream ended inside a frame ({len(self.buf) or self.skip} bytes pending)"
                )
            )
            return False
        # Half-closed by the client: answer what it asked, then close
        # (_request_done); with nothing outstanding, let asyncio close now.
        return bool(self.requests)

    def pause_writing(self) -> None:
        self.writing_paused = True
        self.writing_paused_at = asyncio.get_running_loop().time()

    def resume_writing(self) -> None:
        self.writing_paused = False
        if self.drained is not None and not self.drained.done():
            self.drained.set_result(None)
        self.drained = None

    def connection_lost(self, exc: Exception | None) -> None:
        self.t._conns.discard(self)
        self.release()
        self._frame_done()
        if exc is not None:
            count_connection_error(self.t.stats, "inbound_lost", exc)
            log.debug("connection from %s lost: %s", self.peer, exc)
        self._cancel_requests()
        if self.drained is not None and not self.drained.done():
            self.drained.set_result(None)
        if not self.closed.done():
            self.closed.set_result(None)

    def release(self) -> None:
        """Give back this connection's slot in the transport's connection counts (once)."""
        if not self.released:
            self.released = True
            self.t._connection_released(self.ip)

    # -- frames ------------------------------------------------------------------

    def _process_buffered(self) -> None:
        pos = self._process(self.buf)
        if self.failed:
            return
        if pos:
            del self.buf[:pos]
            self._frame_done()  # the frame that held the reservation, if any, is handled
        if self.buf:
            self._account_partial()
        elif self.reserved:
            self._frame_done()

    def _process(self, src: bytes | bytearray) -> int:
        """Handle the complete frames at the start of ``src`` within this turn's
        budget and the request limits; return how many bytes were consumed.
        ``self.partial`` is set to the header of an incomplete frame left at
        that point, if that is where it stopped."""
        t = self.t
        stats = t.stats
        n = len(src)
        pos = 0
        count = 0
        self.partial = None
        if not t._turn_started:
            t._new_turn_soon()
        raft = self.raft
        if raft:
            max_frames = t._raft_frames_left
            max_bytes = t._raft_bytes_left
        else:
            if self.turn != t._turn:
                self.turn = t._turn
                self.turn_frames = 0
            # Its share of the turn: a flood of connections cannot keep one
            # with a single request waiting for many turns.
            max_frames = min(t._turn_frames_left, t._quantum - self.turn_frames)
            max_bytes = t._turn_bytes_left
        lim = t._limits
        max_requests = lim.max_requests_per_connection
        max_request_bytes = lim.max_request_bytes_in_flight
        requests = self.requests
        max_frame = t._max_frame_size
        max_request_body = t._max_request_body
        min_request_limit = t._min_request_limit
        # Frame bodies are decoded from views of ``src``: msgpack copies out
        # what it keeps, so nothing is copied for the frame itself.
        view = memoryview(src)
        try:
            while n - pos >= HEADER_SIZE:
                if requests and (
                    len(requests) >= max_requests or self.request_bytes >= max_request_bytes
                ):
                    # Stop reading: a client flooding requests is slowed down
                    # instead of growing our task set.
                    self._pause_reading()
                    break
                if (count >= max_frames or pos >= max_bytes) and (
                    count or max_frames <= 0 or max_bytes <= 0  # one frame goes, however large
                ):
                    self._yield_turn()
                    break
                kind, body_len = parse_header_at(src, pos, max_frame)
                if kind is _REQUEST:
                    if body_len > max_request_body:
                        raise Refused(
                            f"request frame of {body_len} bytes exceeds the largest service "
                            f"limit ({max_request_body - MAX_REQUEST_HEAD} bytes of request)",
                            "oversized_frames",
                        )
                elif kind is _RAFT:
                    if self.client_role:
                        raise Refused("raft frame from a client certificate", "raft_from_clients")
                    self.raft = True  # from the next call on (this one's budget is chosen)
                else:
                    raise ProtocolError(f"unexpected {kind.name} frame on a server connection")
                end = pos + HEADER_SIZE + body_len
                if end > n:
                    self.partial = (kind, body_len)
                    break
                with view[pos + HEADER_SIZE : end] as body:
                    pos = end
                    count += 1
                    stats.frames_in += 1
                    stats.bytes_in += HEADER_SIZE + body_len
                    if kind is _RAFT:
                        t._dispatch(decode_messages(body), self.node_id)
                    elif body_len <= min_request_limit:
                        # Within every service's limit: decoded all at once.
                        rpc_id, service, request = decode_request(body)
                        stats.requests_in += 1
                        self._serve(rpc_id, service, request, body_len)
                    else:
                        self._request(body)
                if self.failed:
                    break
        except Refused as e:
            self._fail(e, e.counter)
        except ProtocolError as e:
            self._fail(e)
        finally:
            view.release()
            self.frames += count
            if raft:
                t._raft_frames_left -= count
                t._raft_bytes_left -= pos
            else:
                t._turn_frames_left -= count
                t._turn_bytes_left -= pos
                self.turn_frames += count
        return pos

    def _request(self, body: memoryview) -> None:
        """A request larger than some service's limit: its head first."""
        t = self.t
        rpc_id, service, off = split_request(body)
        t.stats.requests_in += 1
        size = len(body) - off
        limit = t._service_limits.get(service)
        if limit is None:
            self._answer_error(rpc_id, f"unknown service {service!r}")
        elif size > limit:
            self._too_large(rpc_id, service, size, limit)
        else:
            with body[off:] as payload:
                request = decode_payload(payload)
            self._serve(rpc_id, service, request, size)

    def _too_large(self, rpc_id: int, service: str, size: int, limit: int) -> None:
        t = self.t
        t.stats.oversized_frames += 1
        t._limiter.log(
            logging.WARNING,
            f"too-large:{service}",
            "refusing a request of %d bytes from %s: service %r takes at most %d",
            size,
            self.peer,
            service,
            limit,
        )
        self._answer_error(
            rpc_id, f"request of {size} bytes exceeds service {service!r}'s limit of {limit}"
        )

    def _answer_error(self, rpc_id: int, text: str) -> None:
        self.t.stats.request_errors += 1
        body = encode_response(rpc_id, False, text)
        self._queue_answer(frame_header(Kind.RESPONSE, len(body)) + body)

    def _account_partial(self) -> None:
        """``buf`` holds an incomplete frame at its head (or frames left for
        the next turn): reserve its announced size, set its deadline, and
        check an incoming request's head as soon as it is in."""
        part = self.partial
        if part is None:
            # Complete frames wait for the next turn, or a header is still
            # coming: that too must come in time.
            if not self.deadline:
                self.deadline = asyncio.get_running_loop().time() + self.t._limits.read_timeout
            return
        kind, body_len = part
        t = self.t
        if not self.reserved:
            size = HEADER_SIZE + body_len
            if t._buffered + size > t._limits.max_buffered_bytes:
                self._fail(
                    Refused(
                        f"a frame of {size} bytes does not fit in the buffer budget "
                        f"({t._buffered} of {t._limits.max_buffered_bytes} bytes in use)",
                        "buffer_limit_refusals",
                    ),
                    "buffer_limit_refusals",
                )
                return
            t._buffered += size
            self.reserved = size
            lim = t._limits
            self.deadline = (
                asyncio.get_running_loop().time() + lim.read_timeout + size / lim.min_read_rate
            )
        if kind is Kind.REQUEST and not self.head_checked:
            have = len(self.buf) - HEADER_SIZE
            if have >= MAX_REQUEST_HEAD:
                self.head_checked = True
                self._check_request_head(body_len)

    def _check_request_head(self, body_len: int) -> None:
        """The incomplete request at the head of ``buf`` is for an unknown
        service or over its service's limit: answer now and skip its bytes."""
        try:
            with memoryview(self.buf) as view, view[HEADER_SIZE:] as body:
                rpc_id, service, off = split_request(body)
        except ProtocolError as e:
            self._fail(e)
            return
        t = self.t
        limit = t._service_limits.get(service)
        size = body_len - off
        if limit is not None and size <= limit:
            return
        t.stats.requests_in += 1
        if limit is None:
            self._answer_error(rpc_id, f"unknown service {service!r}")
        else:
            self._too_large(rpc_id, service, size, limit)
        self.skip = HEADER_SIZE + body_len - len(self.buf)
        self.buf = bytearray()
        # Nothing of it is buffered any more; its deadline stays.
        t._buffered -= self.reserved
        self.reserved = 0

    def _frame_done(self) -> None:
        """The frame that held a reservation was handled (or dropped)."""
        if self.reserved:
            self.t._buffered -= self.reserved
            self.reserved = 0
        self.deadline = 0.0
        self.head_checked = False

    # -- per-turn budget and request limits ---------------------------------------

    def _requests_full(self) -> bool:
        lim = self.t._limits
        return (
            len(self.requests) >= lim.max_requests_per_connection
            or self.request_bytes >= lim.max_request_bytes_in_flight
        )

    def _yield_turn(self) -> None:
        """Stop for this turn; carry on once the loop has run everything else."""
        if not self.yielded:
            self.yielded = True
            self.t.stats.turn_yields += 1
            self.t._yielders += 1
            self._pause_reading()
            asyncio.get_running_loop().call_soon(self._continue)

    def _continue(self) -> None:
        self.yielded = False
        if self.failed or self.transport is None or self.transport.is_closing():
            return
        self._process_buffered()
        self._maybe_resume()

    def _maybe_resume(self) -> None:
        if (
            self.reading_paused
            and not self.yielded
            and not self.failed
            and not self._requests_full()
            and self.transport is not None
            and not self.transport.is_closing()
        ):
            self.reading_paused = False
            self.transport.resume_reading()
            if self.eof and self.buf:
                self._fail(ProtocolError("stream ended inside a frame"))

    # -- requests ----------------------------------------------------------------

    def _serve(self, rpc_id: int, service: str, request: Any, size: int) -> None:
        handler = self.t._services.get(service)
        try:
            if handler is not None:
                pending = handler(request)
            else:
                # Rare: a service told who calls (admin), or an unknown one.
                caller_handler = self.t._caller_services.get(service)
                if caller_handler is None:
                    self._answer_error(rpc_id, f"unknown service {service!r}")
                    return
                pending = caller_handler(request, self.identity)
        except Exception as e:
            self._queue_answer(self.t._response_frame(rpc_id, service, None, e))
            return
        self.request_bytes += size
        if asyncio.isfuture(pending):
            # A future (say, Node.apply's) is answered from its done callback:
            # no task, no coroutine per request.
            self.requests[pending] = size
            pending.add_done_callback(partial(self._future_answered, rpc_id, service))
            return
        rt = asyncio.get_running_loop().create_task(self._answer(rpc_id, service, pending))
        self.requests[rt] = size
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
        size = self.requests.pop(request, None)
        if size is not None:
            self.request_bytes -= size
        if self.reading_paused and not self.yielded and not self._requests_full():
            self._process_buffered()
            self._maybe_resume()
        if self.eof and not self.requests and not self.failed:
            self._close_gracefully()

    async def _answer(self, rpc_id: int, service: str, pending: Any) -> None:
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

    def _fail(self, e: ProtocolError, counter: str = "bad_frames") -> None:
        if self.failed:
            return
        self.failed = True
        stats = self.t.stats
        if counter == "bad_frames":
            count_bad_frame(stats, e.reason)  # also by kind, for the metrics
        else:
            setattr(stats, counter, getattr(stats, counter) + 1)
            count_limit(stats, counter)
        self.t._limiter.log(
            logging.WARNING, counter, "closing connection from %s: %s", self.peer, e.reason
        )
        self.abort()

    def close_for(self, reason: str, counter: str) -> None:
        """Close for a limit the transport enforces (timeouts), logged and counted."""
        self._fail(ProtocolError(reason), counter)

    def abort(self) -> None:
        """Drop the connection at once; requests in flight are cancelled."""
        self._cancel_requests()
        self._frame_done()
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


__all__ = ["Refused", "ServerConnection"]
