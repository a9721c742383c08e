"""The header of a segment file: what makes each file's batches its own.

Every segment file (``<first index, 20 digits>.log``) starts with a 32-byte
header, little-endian::

    magic 4s b"PJSG" | crc I (CRC32C of bytes [8, 32)) | version B (3)
    | reserved 3x | reserved I | nonce Q | first Q

``first`` is the index of the segment's first entry (the one in its name);
``nonce`` is random, drawn when the file is created, and binds every batch of
the file to it (see "Binding" in `pyjraft.storage.record`). The header is
written and made durable (fdatasync, then the directory fsynced) before any
batch is appended, so:

* a last segment whose header is missing or invalid and that is no longer
  than a header was torn while being created: it never held a batch;
* a header that is invalid in a longer file was damaged after it was
  durable: the file is refused, never guessed at.
"""

from __future__ import annotations

import os
import struct
from typing import NamedTuple

import crc32c

from pyjraft.storage.record import FORMAT_VERSION, SegmentKey

__all__ = [
    "SEGMENT_HEADER_SIZE",
    "SegmentHeader",
    "decode_segment_header",
    "encode_segment_header",
    "new_nonce",
    "segment_name",
]

_MAGIC = b"PJSG"
_HEADER = struct.Struct("<4sIB3xIQQ")
SEGMENT_HEADER_SIZE = _HEADER.size
"""Bytes of the segment header; the first batch starts right after it."""
assert SEGMENT_HEADER_SIZE == 32


def segment_name(first_index: int) -> str:
    """File name of the segment whose first entry has ``first_index``."""
    return f"{first_index:020d}.log"


def new_nonce() -> int:
    """A fresh random nonce for a new segment file (never 0, which a zeroed
    header would show)."""
    while True:
        nonce = int.from_bytes(os.urandom(8), "little")
        if nonce:
            return nonce


class SegmentHeader(NamedTuple):
    """A decoded, valid segment header."""

    first: int
    """Index of the segment's first entry."""
    key: SegmentKey
    """The key binding the file's batches to it."""


def encode_segment_header(first: int, nonce: int) -> bytes:
    """The header of a new segment file whose first entry is ``first``."""
    raw = _HEADER.pack(_MAGIC, 0, FORMAT_VERSION, 0, nonce, first)
    return raw[:4] + struct.pack("<I", crc32c.crc32c(raw[8:])) + raw[8:]


def decode_segment_header(raw: bytes) -> SegmentHeader | str:
    """The header in ``raw`` (the file's first bytes), or why it is not a valid one."""
    if len(raw) < SEGMENT_HEADER_SIZE:
        return f"file has {len(raw)} bytes, shorter than a segment header"
    magic, crc, version, _res, nonce, first = _HEADER.unpack_from(raw, 0)
    if magic != _MAGIC:
        return f"bad segment header magic {magic!r}"
    if crc32c.crc32c(raw[8:SEGMENT_HEADER_SIZE]) != crc:
        return "segment header CRC mismatch"
    if version != FORMAT_VERSION:
        return f"unknown segment format version {version}"
    if _res or not nonce:
        return "segment header reserved bits set or nonce 0"
    return SegmentHeader(first, SegmentKey(nonce))
