"""`RpcClient`: calls services registered on `TcpTransport` servers.

One connection per address, shared by every call in flight to it; requests
and responses are REQUEST and RESPONSE frames matched by request id.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import ssl as _ssl
from typing import Any

from pyjraft.transport.base import TransportStats, parse_address
from pyjraft.transport.codec import decode_response, encode_request
from pyjraft.transport.errors import ProtocolError, RemoteError, RpcTimeoutError, TransportError
from pyjraft.transport.framing import (
    DEFAULT_MAX_FRAME_SIZE,
    HEADER_SIZE,
    Kind,
    frame_header,
    parse_header,
)

log = logging.getLogger("pyjraft.transport")

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
