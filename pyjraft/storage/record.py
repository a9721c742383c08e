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
    "EncodedBatch",
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

_SCAN = struct.Struct("<IIIQQ")  # version, type and reserved read as one integer
_CRC = struct.Struct("<I")
_TYPES: tuple[EntryType, ...] = tuple(EntryType)
_MAX_TYPE = len(_TYPES) - 1
_VTR_OF_TYPE: dict[int, int] = {t: RECORD_VERSION | t << 8 for t in _TYPES}
_VALID_VTR = frozenset(_VTR_OF_TYPE.values())
_MAX_U64 = (1 << 64) - 1
_MAX_LEN = (1 << 32) - 1
# Entry.size counts len(data) + 16; a record is len(data) + HEADER_SIZE.
_ENTRY_OVERHEAD = 16


def entry_size_of_record(record_bytes: int) -> int:
    """`Entry.size` of the entry stored in a record of ``record_bytes`` bytes."""
    return record_bytes - HEADER_SIZE + _ENTRY_OVERHEAD


class EncodedBatch(NamedTuple):
    """A batch of entries encoded as records, ready for one write."""

    buf: bytearray
    """The records, back to back."""
    offsets: array[int]
    """File offset of each record."""
    run_starts: array[int]
    """First index of each term run the batch starts."""
    run_terms: array[int]
    """Term of each such run."""
    entries: Sequence[Entry]
    """The entries, with ``data`` as `bytes` and ``type`` as `EntryType` (copies only
    of those that were not)."""
    entry_bytes: int
    """Sum of `Entry.size` over the batch."""


def encode_batch(
    entries: Sequence[Entry], first_index: int, base_offset: int, last_term: int
) -> EncodedBatch:
    """Encode ``entries`` (indices must run from ``first_index``) into one buffer to be
    written at ``base_offset``, right after a record of term ``last_term`` (-1: none).

    Raises `ValueError` on an index gap or overlap, an unknown entry type, or a
    field that does not fit the format.
    """
    data_bytes = 0
    for e in entries:
        data_bytes += len(e.data)
    count = len(entries)
    buf = bytearray(data_bytes + HEADER_SIZE * count)
    offsets: array[int] = array("Q")
    run_starts: array[int] = array("Q")
    run_terms: array[int] = array("Q")
    pack_into = _SCAN.pack_into
    crc_into = _CRC.pack_into
    crc = crc32c.crc32c
    codes = _VTR_OF_TYPE
    add_offset = offsets.append
    clean = True
    cur = last_term
    expect = first_index
    pos = 0
    with memoryview(buf) as mv:
        for term, index, typ, data in entries:
            if index != expect:
                raise ValueError(f"append: expected index {expect}, got {index}")
            n = len(data)
            end = pos + HEADER_SIZE + n
            try:
                pack_into(buf, pos, 0, codes[typ], n, term, index)
            except KeyError:
                raise ValueError(f"entry {index}: unknown entry type {typ!r}") from None
            except struct.error as exc:
                raise ValueError(f"entry {index}: field out of range: {exc}") from None
            buf[pos + HEADER_SIZE : end] = data
            crc_into(buf, pos, crc(mv[pos + 4 : end]))
            add_offset(base_offset + pos)
            if term != cur:
                run_starts.append(index)
                run_terms.append(term)
                cur = term
            if clean and (type(data) is not bytes or type(typ) is not EntryType):
                clean = False
            pos = end
            expect += 1
    if not clean:
        # The log's cache hands entries to readers: they must be immutable.
        entries = [Entry(t, i, EntryType(k), bytes(d)) for t, i, k, d in entries]
    return EncodedBatch(
        buf, offsets, run_starts, run_terms, entries, data_bytes + _ENTRY_OVERHEAD * count
    )


class ScanResult(NamedTuple):
    """What `scan_records` found in a buffer."""

    offsets: array[int]
    """File offset of each valid record, in order."""
    run_starts: array[int]
    """Index of the first record of each run of records with one term."""
    run_terms: array[int]
    """Term of each run."""
    end: int
    """Offset just past the last valid record (where the first bad one starts)."""
    error: str | None
    """Why scanning stopped before the end of the buffer; None if it reached the end."""
    corrupt: bool
    """True if the stopping record is CRC-valid but meaningless (never a torn write)."""


def scan_records(buf: bytes | mmap.mmap, size: int, first_index: int) -> ScanResult:
    """Validate the records of a whole segment (``buf[:size]``) whose first record
    must have index ``first_index``; stop at the first bad one.

    This loop is what bounds the time to open a log, hence its shape: one
    ``unpack_from`` reading version, type and reserved bits as one integer,
    one membership test for all three, and terms kept as runs.
    """
    offsets: array[int] = array("Q")
    run_starts: array[int] = array("Q")
    run_terms: array[int] = array("Q")
    unpack = _SCAN.unpack_from
    crc = crc32c.crc32c
    add_offset = offsets.append
    valid = _VALID_VTR
    expect = first_index
    cur = -1
    pos = 0

    with memoryview(buf) as mv:
        while pos < size:
            if size - pos < HEADER_SIZE:
                return ScanResult(
                    offsets, run_starts, run_terms, pos, "partial record header", False
                )
            c, vtr, n, term, index = unpack(mv, pos)
            end = pos + HEADER_SIZE + n
            if end > size:
                return ScanResult(
                    offsets, run_starts, run_terms, pos, "record runs past end of file", False
                )
            if crc(mv[pos + 4 : end]) != c:
                return ScanResult(offsets, run_starts, run_terms, pos, "CRC mismatch", False)
            if vtr not in valid or index != expect:
                why = _why_bad(vtr, index, expect)
                return ScanResult(offsets, run_starts, run_terms, pos, why, True)
            if term != cur:
                run_starts.append(index)
                run_terms.append(term)
                cur = term
            add_offset(pos)
            pos = end
            expect += 1
    return ScanResult(offsets, run_starts, run_terms, pos, None, False)


def _why_bad(vtr: int, index: int, expect: int) -> str:
    ver, typ, res = vtr & 0xFF, (vtr >> 8) & 0xFF, vtr >> 16
    if ver != RECORD_VERSION:
        return f"unknown record version {ver}"
    if index != expect:
        return f"record index {index}, expected {expect}"
    return f"bad record type {typ} / reserved bits {res}"


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
