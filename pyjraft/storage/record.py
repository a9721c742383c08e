"""The on-disk record format of the segmented log, and its codec.

One record per log entry, little-endian, a fixed 28-byte header then the data::

    offset size field
    0      4    crc      CRC32C of bytes [4, 28 + length): every header field
                         after the crc, and the data
    4      1    version  record format version, currently 1
    5      1    type     `EntryType` value
    6      2    reserved must be 0
    8      4    length   data length in bytes
    12     8    term
    20     8    index
    28     ...  data

The crc comes first so that a single contiguous CRC covers everything else,
version and length included: a flipped length or version bit is detected
like any other. Records are validated in full on every read (crc, version,
type, reserved bits, expected index).

Scanning distinguishes two kinds of bad records: *invalid* ones (partial
header, data running past the end of the file, CRC mismatch: what a torn
write leaves behind) and *corrupt* ones (CRC-valid but meaningless: unknown
version, unknown type, reserved bits set, wrong index). Only invalid records
can be a torn tail; the caller decides (see `pyjraft.storage.segment_log`).
"""

from __future__ import annotations

import mmap
import struct
from array import array
from collections.abc import Sequence
from typing import NamedTuple

import crc32c

from pyjraft.core.types import Entry, EntryType

__all__ = [
    "HEADER_SIZE",
    "RECORD_VERSION",
    "ScanResult",
    "decode_records",
    "encode_batch",
    "entry_size_of_record",
    "find_valid_record",
    "scan_records",
]

RECORD_VERSION = 1
"""Format version written into every record."""

_HEADER = struct.Struct("<IBBHIQQ")
HEADER_SIZE = _HEADER.size
"""Bytes of the fixed record header."""
assert HEADER_SIZE == 28

_BODY = struct.Struct("<BBHIQQ")  # the header without its crc
_CRC = struct.Struct("<I")
_TYPES: tuple[EntryType, ...] = tuple(EntryType)
_MAX_TYPE = len(_TYPES) - 1
_MAX_U64 = (1 << 64) - 1
_MAX_LEN = (1 << 32) - 1
# Entry.size counts len(data) + 16; a record is len(data) + HEADER_SIZE.
_ENTRY_OVERHEAD = 16


def entry_size_of_record(record_bytes: int) -> int:
    """`Entry.size` of the entry stored in a record of ``record_bytes`` bytes."""
    return record_bytes - HEADER_SIZE + _ENTRY_OVERHEAD


def encode_batch(
    entries: Sequence[Entry], base_offset: int
) -> tuple[bytes, array[int], array[int]]:
    """Encode ``entries`` into one buffer meant to be written at ``base_offset``.

    Returns the buffer, the file offset of each record and each record's term.
    Raises `ValueError` for a field that does not fit the format.
    """
    parts: list[bytes] = []
    offsets: array[int] = array("Q")
    terms: array[int] = array("Q")
    pos = base_offset
    body_pack = _BODY.pack
    crc_pack = _CRC.pack
    crc = crc32c.crc32c
    for e in entries:
        data = e.data
        n = len(data)
        t = int(e.type)
        if not 0 <= t <= _MAX_TYPE:
            raise ValueError(f"entry {e.index}: unknown entry type {e.type!r}")
        if not 0 <= e.term <= _MAX_U64 or not 0 <= e.index <= _MAX_U64 or n > _MAX_LEN:
            raise ValueError(f"entry {e.index}: term, index or length out of range")
        body = body_pack(RECORD_VERSION, t, 0, n, e.term, e.index)
        parts.append(crc_pack(crc(data, crc(body))))
        parts.append(body)
        parts.append(data)
        offsets.append(pos)
        terms.append(e.term)
        pos += HEADER_SIZE + n
    return b"".join(parts), offsets, terms


class ScanResult(NamedTuple):
    """What `scan_records` found in a buffer."""

    offsets: array[int]
    """File offset of each valid record, in order."""
    terms: array[int]
    """Term of each valid record."""
    end: int
    """Offset just past the last valid record (where the first bad one starts)."""
    error: str | None
    """Why scanning stopped before the end of the buffer; None if it reached the end."""
    corrupt: bool
    """True if the stopping record is CRC-valid but meaningless (never a torn write)."""


def scan_records(buf: bytes | mmap.mmap, size: int, first_index: int) -> ScanResult:
    """Validate the records of a whole segment (``buf[:size]``) whose first record
    must have index ``first_index``; stop at the first bad one."""
    offsets: array[int] = array("Q")
    terms: array[int] = array("Q")
    unpack = _HEADER.unpack_from
    crc = crc32c.crc32c
    add_offset = offsets.append
    add_term = terms.append
    expect = first_index
    pos = 0
    with memoryview(buf) as mv:
        while pos < size:
            if size - pos < HEADER_SIZE:
                return ScanResult(offsets, terms, pos, "partial record header", False)
            c, ver, typ, res, n, term, index = unpack(mv, pos)
            end = pos + HEADER_SIZE + n
            if end > size:
                return ScanResult(offsets, terms, pos, "record runs past end of file", False)
            if crc(mv[pos + 4 : end]) != c:
                return ScanResult(offsets, terms, pos, "CRC mismatch", False)
            if ver != RECORD_VERSION:
                return ScanResult(offsets, terms, pos, f"unknown record version {ver}", True)
            if typ > _MAX_TYPE or res != 0:
                return ScanResult(
                    offsets, terms, pos, f"bad record type {typ} / reserved bits {res}", True
                )
            if index != expect:
                return ScanResult(
                    offsets, terms, pos, f"record index {index}, expected {expect}", True
                )
            add_offset(pos)
            add_term(term)
            pos = end
            expect += 1
    return ScanResult(offsets, terms, pos, None, False)


def find_valid_record(buf: bytes | mmap.mmap, start: int, size: int) -> int:
    """Offset of the first CRC-valid record starting in ``buf[start:size]``, or -1.

    Used to tell a torn tail (nothing valid after the bad record) from damage
    in the middle of the log. Only positions whose version byte is right are
    examined, so zero-filled and most garbage tails are skipped at C speed.
    """
    marker = bytes([RECORD_VERSION])
    unpack = _HEADER.unpack_from
    with memoryview(buf) as mv:
        p = start
        while True:
            j = buf.find(marker, p + 4, size)
            if j < 0:
                return -1
            r = j - 4
            if r + HEADER_SIZE <= size:
                c, _ver, typ, res, n, _term, _index = unpack(mv, r)
                end = r + HEADER_SIZE + n
                if (
                    res == 0
                    and typ <= _MAX_TYPE
                    and end <= size
                    and crc32c.crc32c(mv[r + 4 : end]) == c
                ):
                    return r
            p = r + 1


def decode_records(
    buf: bytes, path: str, base_offset: int, first_index: int, count: int
) -> list[Entry]:
    """Decode and fully validate ``count`` consecutive records from ``buf`` (read
    from ``path`` at ``base_offset``), the first having index ``first_index``.

    Raises `pyjraft.storage.api.CorruptLogError` naming the file offset of a bad record.
    """
    from pyjraft.storage.api import CorruptLogError

    out: list[Entry] = []
    unpack = _HEADER.unpack_from
    crc = crc32c.crc32c
    types = _TYPES
    size = len(buf)
    pos = 0
    expect = first_index
    with memoryview(buf) as mv:
        for _ in range(count):
            if size - pos < HEADER_SIZE:
                raise CorruptLogError(path, base_offset + pos, "short read of record header")
            c, ver, typ, res, n, term, index = unpack(mv, pos)
            end = pos + HEADER_SIZE + n
            if end > size:
                raise CorruptLogError(path, base_offset + pos, "record runs past what was read")
            if crc(mv[pos + 4 : end]) != c:
                raise CorruptLogError(path, base_offset + pos, "CRC mismatch")
            if ver != RECORD_VERSION or typ > _MAX_TYPE or res != 0:
                raise CorruptLogError(
                    path, base_offset + pos, f"bad record version {ver} / type {typ} / res {res}"
                )
            if index != expect:
                raise CorruptLogError(
                    path, base_offset + pos, f"record index {index}, expected {expect}"
                )
            out.append(Entry(term, index, types[typ], buf[pos + HEADER_SIZE : end]))
            pos = end
            expect += 1
    return out
