"""Frames: the unit the transport reads and writes on a byte stream.

A frame is a 6-byte header followed by a body::

    +----------------+---------+------+----------------------+
    | length: u32 BE | version | kind | body (length-2 bytes) |
    +----------------+---------+------+----------------------+

``length`` counts the version and kind bytes plus the body, so the smallest
frame is 6 bytes on the wire. The header is validated as a whole (length
bounds, version, kind) before any of the body is read, so a peer announcing a
huge frame costs us six bytes of reading, not an allocation.
"""

from __future__ import annotations

import asyncio
import enum
import struct

from pyjraft.transport.errors import ProtocolError

VERSION = 2
"""The wire version this code speaks; any other version byte is rejected."""

DEFAULT_MAX_FRAME_SIZE = 64 * 1024 * 1024
"""Default bound on a frame's ``length`` field (64 MiB)."""

HEADER = struct.Struct(">IBB")
"""Length, version, kind."""

HEADER_SIZE = HEADER.size
"""Bytes in a frame header (6)."""

_LENGTH_OVERHEAD = 2  # version + kind are counted inside ``length``


class Kind(enum.IntEnum):
    """What a frame's body holds."""

    RAFT = 1
    """A one-way batch of raft messages, possibly for several groups."""
    REQUEST = 2
    """An RPC request: ``[rpc_id, service, body]``."""
    RESPONSE = 3
    """An RPC response: ``[rpc_id, status, body-or-error-text]``."""


_KINDS: dict[int, Kind] = {k.value: k for k in Kind}


def encode_frame(kind: Kind, body: bytes, *, version: int = VERSION) -> bytes:
    """Return ``body`` with a frame header in front of it."""
    return HEADER.pack(len(body) + _LENGTH_OVERHEAD, version, kind) + body


def frame_header(kind: Kind, body_len: int) -> bytes:
    """The header for a body of ``body_len`` bytes (for scatter writes)."""
    return HEADER.pack(body_len + _LENGTH_OVERHEAD, VERSION, kind)


def parse_header(header: bytes, max_frame_size: int = DEFAULT_MAX_FRAME_SIZE) -> tuple[Kind, int]:
    """Validate a 6-byte header; return the frame's kind and its body length.

    Raises `ProtocolError` for a length outside ``2..max_frame_size``, an
    unknown version or an unknown kind.
    """
    if len(header) != HEADER_SIZE:
        raise ProtocolError(f"frame header is {len(header)} bytes, expected {HEADER_SIZE}")
    return parse_header_at(header, 0, max_frame_size)


def parse_header_at(
    buf: bytes | bytearray, pos: int, max_frame_size: int = DEFAULT_MAX_FRAME_SIZE
) -> tuple[Kind, int]:
    """`parse_header` of the 6 bytes of ``buf`` at ``pos`` (the caller checked
    that they are there), without copying them out first."""
    length, version, kind = HEADER.unpack_from(buf, pos)
    if length < _LENGTH_OVERHEAD:
        raise ProtocolError(f"frame length {length} is below the minimum {_LENGTH_OVERHEAD}")
    if length > max_frame_size:
        raise ProtocolError(f"frame length {length} exceeds the maximum {max_frame_size}")
    if version != VERSION:
        raise ProtocolError(f"unsupported wire version {version} (we speak {VERSION})")
    k = _KINDS.get(kind)
    if k is None:
        raise ProtocolError(f"unknown frame kind {kind}")
    return k, length - _LENGTH_OVERHEAD


class FrameDecoder:
    """Incremental frame splitter for a byte stream, without any IO.

    `feed` bytes as they arrive and get back the complete frames; `eof`
    reports a stream that ended in the middle of a frame. After a
    `ProtocolError` the decoder is poisoned: the stream has lost framing and
    the only sane reaction is to close it.
    """

    def __init__(self, max_frame_size: int = DEFAULT_MAX_FRAME_SIZE) -> None:
        self._max = max_frame_size
        self._buf = bytearray()
        self._failed: ProtocolError | None = None

    @property
    def buffered(self) -> int:
        """Bytes received but not yet returned as part of a frame."""
        return len(self._buf)

    def feed(self, data: bytes) -> list[tuple[Kind, bytes]]:
        """Append ``data``; return every frame now complete, in order."""
        if self._failed is not None:
            raise self._failed
        self._buf += data
        out: list[tuple[Kind, bytes]] = []
        pos = 0
        buf = self._buf
        try:
            while len(buf) - pos >= HEADER_SIZE:
                kind, body_len = parse_header_at(buf, pos, self._max)
                end = pos + HEADER_SIZE + body_len
                if end > len(buf):
                    break
                out.append((kind, bytes(buf[pos + HEADER_SIZE : end])))
                pos = end
        except ProtocolError as e:
            self._failed = e
            raise
        finally:
            del buf[:pos]
        return out

    def eof(self) -> None:
        """The stream ended; raise `ProtocolError` if it ended inside a frame."""
        if self._failed is not None:
            raise self._failed
        if self._buf:
            raise ProtocolError(f"stream ended inside a frame ({len(self._buf)} bytes pending)")


class TurnWriter:
    """Frames written during one loop turn leave in one ``writelines`` at its
    end: one system call for a burst of answers or requests, not one each."""

    __slots__ = ("_out", "_scheduled", "transport")

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        """Where the frames go; set it once the connection is made."""
        self._out: list[bytes] = []
        self._scheduled = False

    def write(self, frame: bytes) -> None:
        """Queue ``frame`` for the end of this loop turn."""
        self._out.append(frame)
        if not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self.flush)

    def flush(self) -> None:
        """Write what is queued now (nothing once the transport is closing)."""
        self._scheduled = False
        out, self._out = self._out, []
        transport = self.transport
        if out and transport is not None and not transport.is_closing():
            transport.writelines(out)

    def drop(self) -> None:
        """Forget what is queued."""
        self._out.clear()
