"""The on-disk batch format of the segmented log (format version 3), and its codec.

One `SegmentLogStorage.append` call writes exactly one *batch record*:
a fixed 28-byte batch header, a compact struct-of-arrays of per-entry headers,
then the entries' data back to back. Little-endian::

    offset          size     field
    0               4        crc        CRC32C, seeded with the record's binding
                                        (below), of bytes [4, batch end): every
                                        header field after the crc, the entry
                                        headers, the data
    4               1        version    batch format version, currently 3
    5               1        flags      must be 0
    6               2        reserved   must be 0
    8               4        count      number of entries, >= 1
    12              4        data_len   total data bytes of the batch
    16              8        first      index of the first entry (the others follow
                                        without gaps: entry k has index first + k)
    24              4        tag        low 32 bits of the segment file's nonce
    28              8*count  terms      term of each entry (u64)
    28+8c           4*count  lengths    data length of each entry (u32)
    28+12c          count    types      `EntryType` of each entry (u8)
    28+13c          data_len data       the entries' data, concatenated

A batch is ``28 + 13 * count + data_len`` bytes. The per-entry headers are
stored column by column so that encoding and decoding are a handful of C-level
``array`` operations per batch rather than a ``struct`` call per entry, and the
whole batch is covered by ONE CRC32C call: appending costs a few hundred
nanoseconds of Python per entry, and the CRC runs at memory speed.

Binding. Every segment file starts with a header holding a random 64-bit
*nonce* chosen when the file is created (`pyjraft.storage.segment_file`). A
batch's CRC is seeded with ``crc32c(nonce || offset)`` (both u64), where
``offset`` is where the batch starts in its file, and the batch stores the
nonce's low 32 bits as its ``tag``. A batch is therefore valid only at the
offset it was written at, in the file it was written to: stale bytes of an
older file (a recycled disk block, a deleted segment of the same name), and
a copy of a batch anywhere else (inside an entry's data, say) never parse as
a record of this file, whatever they contain. Recovery relies on this to
tell a torn tail from damage (see `pyjraft.storage.segment_log`). The seed
of a given offset differs for every other offset of the same file (offsets
are under 2**32 and CRC32C detects every burst of up to 32 bits) and, with
the tag, for every other nonce but an exact 64-bit match.

The crc comes first so that one contiguous CRC covers everything else,
version and lengths included: a flipped count, length or version bit is
detected like any other. A batch read back from disk is always verified in
full (crc, version, flags, count, lengths summing to ``data_len``, types,
expected first index) before any entry of it is returned.

Scanning distinguishes two kinds of bad batches: *invalid* ones (partial
header, batch running past the end of the file, CRC or tag mismatch: what a
torn write or stale bytes leave behind) and *corrupt* ones (CRC-valid but
meaningless: unknown version, flags or reserved bits set, zero count,
lengths not adding up, unknown type, wrong first index). Only invalid
batches can be a torn tail; the caller decides.

Formats 1 (one record per entry) and 2 (batches without a segment header or
binding) are not read by this code: `looks_like_v1` and `looks_like_v2` let
the log refuse such a segment with a clear error instead of mistaking it for
a torn tail.
"""

from __future__ import annotations

import mmap
import struct
import sys
from array import array
from collections.abc import Sequence
from functools import partial
from itertools import accumulate, islice
from typing import NamedTuple

import crc32c

from pyjraft.core.types import Entry, EntryType

__all__ = [
    "BATCH_HEADER_SIZE",
    "ENTRY_HEADER_SIZE",
    "FORMAT_VERSION",
    "MAX_BATCH_START",
    "DecodedBlock",
    "EncodedBatch",
    "ScanResult",
    "SegmentKey",
    "batch_size",
    "decode_batches",
    "encode_batch",
    "find_valid_batch",
    "looks_like_v1",
    "looks_like_v2",
    "scan_batches",
]

FORMAT_VERSION = 3
"""Format version written into every batch header (and every segment header)."""

_HEADER = struct.Struct("<IBBHIIQI")
BATCH_HEADER_SIZE = _HEADER.size
"""Bytes of the fixed batch header."""
assert BATCH_HEADER_SIZE == 28
ENTRY_HEADER_SIZE = 13
"""Bytes of per-entry header (term u64, length u32, type u8) inside a batch."""

_CRC = struct.Struct("<I")
_MAX_TYPE = int(max(EntryType))
_BIG_ENDIAN = sys.byteorder != "little"
# Entry.size counts len(data) + 16.
_ENTRY_OVERHEAD = 16
_V1_HEADER = struct.Struct("<IBBHIQQ")
_V2_HEADER = struct.Struct("<IBBHIIQ")
_U64 = struct.Struct("<Q")
_TAG_MASK = 0xFFFFFFFF


class SegmentKey:
    """What binds a batch to its segment file: the file's nonce, the ``tag`` each of
    its batches stores, and the CRC seed of each offset (see "Binding" above)."""

    __slots__ = ("_base", "nonce", "tag")

    def __init__(self, nonce: int) -> None:
        self.nonce = nonce
        """The segment file's random 64-bit nonce."""
        self.tag = nonce & _TAG_MASK
        """Stored in every batch of the file."""
        self._base = crc32c.crc32c(_U64.pack(nonce))

    def seed(self, offset: int) -> int:
        """CRC32C seed of a batch starting at ``offset`` in the file."""
        return int(crc32c.crc32c(_U64.pack(offset), self._base))

    def __repr__(self) -> str:
        return f"SegmentKey({self.nonce:#018x})"


def batch_size(count: int, data_len: int) -> int:
    """Bytes of a batch of ``count`` entries holding ``data_len`` bytes of data."""
    return BATCH_HEADER_SIZE + ENTRY_HEADER_SIZE * count + data_len


def _le(a: array[int]) -> array[int]:
    if _BIG_ENDIAN:  # pragma: no cover - little-endian hosts only in CI
        a.byteswap()
    return a


class EncodedBatch(NamedTuple):
    """A batch of entries encoded as one batch record, ready for one write."""

    buf: bytearray
    """The batch record."""
    lengths: array[int]
    """Data length of each entry (``array('I')``)."""
    run_starts: array[int]
    """First index of each term run the batch starts."""
    run_terms: array[int]
    """Term of each such run."""
    entries: Sequence[Entry]
    """The entries, with ``data`` as `bytes` and ``type`` as a plain int (copies only
    of those that were not)."""
    entry_bytes: int
    """Sum of `Entry.size` over the batch."""


def encode_batch(
    entries: Sequence[Entry], first_index: int, last_term: int, key: SegmentKey, offset: int
) -> EncodedBatch:
    """Encode ``entries`` (indices must run from ``first_index``) as one batch
    record following an entry of term ``last_term`` (-1: none), to be written at
    ``offset`` of the segment file whose key is ``key``.

    Raises `ValueError` on an empty batch, an index gap or overlap, an unknown
    entry type, or a field that does not fit the format. The per-entry work is
    a few C-level passes (``zip``, ``array``, ``map``) and one ``join``.
    """
    if len(entries) == 1:
        one = _encode_one(entries[0], first_index, last_term, key.tag, key.seed(offset))
        if one is not None:
            return one
    return _encode_many(entries, first_index, last_term, key.tag, key.seed(offset))


def _encode_many(
    entries: Sequence[Entry], first_index: int, last_term: int, tag: int, seed: int
) -> EncodedBatch:
    count = len(entries)
    if count == 0:
        raise ValueError("append: empty batch")
    terms_t, indices, types_t, datas = zip(*entries, strict=True)
    if indices[0] != first_index or indices != tuple(range(first_index, first_index + count)):
        expect = first_index
        for i in indices:
            if i != expect:
                raise ValueError(f"append: expected index {expect}, got {i}")
            expect += 1
    try:
        terms = array("Q", terms_t)
        lengths = array("I", map(len, datas))
        types = bytes(types_t)
    except (OverflowError, ValueError, TypeError) as exc:
        raise ValueError(f"append: entry field out of range: {exc}") from None
    if max(types) > _MAX_TYPE:
        bad = next(e for e in entries if not 0 <= e[2] <= _MAX_TYPE)
        raise ValueError(f"entry {bad[1]}: unknown entry type {bad[2]!r}")
    data_len = sum(lengths)
    if data_len > 0xFFFFFFFF or count > 0xFFFFFFFF:
        raise ValueError(f"append: batch too large ({count} entries, {data_len} bytes)")
    # All parts as bytes: join has a fast path for those only (arrays would cost
    # ~100 ns per entry more).
    parts = [
        _HEADER.pack(0, FORMAT_VERSION, 0, 0, count, data_len, first_index, tag),
        (_le(array("Q", terms)) if _BIG_ENDIAN else terms).tobytes(),
        (_le(array("I", lengths)) if _BIG_ENDIAN else lengths).tobytes(),
        types,
    ]
    parts.extend(datas)
    try:
        buf = bytearray().join(parts)
    except TypeError as exc:
        raise ValueError(f"append: entry data is not bytes-like: {exc}") from None
    with memoryview(buf) as mv:
        _CRC.pack_into(buf, 0, crc32c.crc32c(mv[4:], seed))
    run_starts: array[int] = array("Q")
    run_terms: array[int] = array("Q")
    t0 = terms[0]
    if terms.count(t0) == count:
        if t0 != last_term:
            run_starts.append(first_index)
            run_terms.append(t0)
    else:
        cur = last_term
        for k, t in enumerate(terms):
            if t != cur:
                run_starts.append(first_index + k)
                run_terms.append(t)
                cur = t
    clean = set(map(type, types_t)) == {int} and set(map(type, datas)) == {bytes}
    if not clean:
        # The log's cache hands entries to readers: they must be immutable.
        entries = [Entry(t, i, int(k), bytes(d)) for t, i, k, d in entries]
    return EncodedBatch(
        buf, lengths, run_starts, run_terms, entries, data_len + _ENTRY_OVERHEAD * count
    )


_ONE_HEAD = struct.Struct("<IBBHIIQIQIB")  # the batch header, then one entry's term, length, type


def _encode_one(
    entry: Entry, first_index: int, last_term: int, tag: int, seed: int
) -> EncodedBatch | None:
    """`encode_batch` of one plain entry (int fields, bytes data) in a few calls
    (the latency path: one write in flight costs a batch of one per node); None
    for anything else, which the general path encodes or refuses."""
    term, index, etype, data = entry
    if (
        index != first_index
        or type(data) is not bytes
        or type(etype) is not int
        or type(term) is not int
        or not 0 <= etype <= _MAX_TYPE
        or not 0 <= term <= 0xFFFFFFFFFFFFFFFF
        or not 0 <= index <= 0xFFFFFFFFFFFFFFFF
        or len(data) > 0xFFFFFFFF
        or _BIG_ENDIAN
    ):
        return None
    n = len(data)
    buf = bytearray(_ONE_HEAD.pack(0, FORMAT_VERSION, 0, 0, 1, n, index, tag, term, n, etype))
    buf += data
    with memoryview(buf) as mv:
        _CRC.pack_into(buf, 0, crc32c.crc32c(mv[4:], seed))
    starts: array[int] = array("Q")
    terms: array[int] = array("Q")
    if term != last_term:
        starts.append(index)
        terms.append(term)
    if type(entry) is not Entry:
        entry = Entry(term, index, etype, data)
    return EncodedBatch(buf, array("I", (n,)), starts, terms, (entry,), n + _ENTRY_OVERHEAD)


MAX_BATCH_START = 0xFFFFFFFF
"""Largest file offset at which a batch may start inside a segment: the in-memory
index keeps offsets as 32-bit integers (``array('I')``)."""


class ScanResult(NamedTuple):
    """What `scan_batches` found in a segment."""

    block_starts: array[int]
    """File offset of each block (``array('I')``): a block is a run of consecutive
    valid batches, see `scan_batches`."""
    block_firsts: array[int]
    """First index of each block minus the segment's first index (``array('I')``)."""
    entry_count: int
    """Entries in the valid batches."""
    run_starts: array[int]
    """Index of the first entry of each run of entries with one term."""
    run_terms: array[int]
    """Term of each run."""
    end: int
    """Offset just past the last valid batch (where the first bad one starts)."""
    error: str | None
    """Why scanning stopped before the end of the buffer; None if it reached the end."""
    corrupt: bool
    """True if the stopping batch is CRC-valid but meaningless (never a torn write)."""


def _check_columns(
    mv: memoryview, pos: int, count: int, data_len: int
) -> tuple[array[int], array[int], bytes, str | None]:
    """Parse the entry-header columns of a CRC-valid batch at ``pos``; the error
    is set if they are meaningless."""
    a = pos + BATCH_HEADER_SIZE
    terms: array[int] = array("Q")
    terms.frombytes(mv[a : a + 8 * count])
    lengths: array[int] = array("I")
    lengths.frombytes(mv[a + 8 * count : a + 12 * count])
    types = bytes(mv[a + 12 * count : a + 13 * count])
    _le(terms)
    _le(lengths)
    if sum(lengths) != data_len:
        return terms, lengths, types, "entry lengths do not add up to the batch data length"
    if max(types) > _MAX_TYPE:
        return terms, lengths, types, f"unknown entry type {max(types)}"
    return terms, lengths, types, None


def _why_bad_header(ver: int, flags: int, res: int, count: int, first: int, expect: int) -> str:
    if ver != FORMAT_VERSION:
        return f"unknown batch format version {ver}"
    if flags or res:
        return f"batch flags {flags:#x} / reserved bits {res:#x} set"
    if count == 0:
        return "batch with zero entries"
    return f"batch first index {first}, expected {expect}"


def scan_batches(
    buf: bytes | mmap.mmap,
    size: int,
    first_index: int,
    key: SegmentKey,
    start: int,
    block_bytes: int = 1,
    max_start: int = MAX_BATCH_START,
) -> ScanResult:
    """Validate the batches of a whole segment (``buf[start:size]``, the part
    after the segment header) whose first entry must have index ``first_index``
    and whose key is ``key``; stop at the first bad batch.

    The batches are grouped into *blocks*: a batch starts a new block when it
    starts at least ``block_bytes`` after the start of the current block (so
    ``block_bytes=1`` makes every batch a block). A batch starting past
    ``max_start`` is refused as corrupt (the index could not address it).

    This loop bounds the time to open a log: per batch one ``unpack_from``, one
    CRC over the batch (and one over 8 bytes for its seed) and a few ``array``
    calls; nothing per entry in Python unless the term changes inside a batch.
    """
    block_starts: array[int] = array("I")
    block_firsts: array[int] = array("I")
    run_starts: array[int] = array("Q")
    run_terms: array[int] = array("Q")
    unpack = _HEADER.unpack_from
    crc = crc32c.crc32c
    seed = key.seed
    tag = key.tag
    expect = first_index
    cur = -1
    pos = start
    block = start - block_bytes  # start of the current block

    def result(error: str | None, corrupt: bool) -> ScanResult:
        return ScanResult(
            block_starts,
            block_firsts,
            expect - first_index,
            run_starts,
            run_terms,
            pos,
            error,
            corrupt,
        )

    with memoryview(buf) as mv:
        while pos < size:
            if size - pos < BATCH_HEADER_SIZE:
                return result("partial batch header", False)
            c, ver, flags, res, count, data_len, first, t = unpack(mv, pos)
            end = pos + BATCH_HEADER_SIZE + ENTRY_HEADER_SIZE * count + data_len
            if end > size:
                return result("batch runs past end of file", False)
            if t != tag:
                return result("batch of another segment file (tag mismatch)", False)
            if crc(mv[pos + 4 : end], seed(pos)) != c:
                return result("CRC mismatch", False)
            if ver != FORMAT_VERSION or flags or res or count == 0 or first != expect:
                return result(_why_bad_header(ver, flags, res, count, first, expect), True)
            if pos > max_start:
                return result(
                    f"batch starts at offset {pos}, past the largest segment offset "
                    f"this log can index ({max_start})",
                    True,
                )
            terms, _lens, _types, why = _check_columns(mv, pos, count, data_len)
            if why is not None:
                return result(why, True)
            t0 = terms[0]
            if terms.count(t0) == count:
                if t0 != cur:
                    run_starts.append(first)
                    run_terms.append(t0)
                    cur = t0
            else:
                for k, t in enumerate(terms):
                    if t != cur:
                        run_starts.append(first + k)
                        run_terms.append(t)
                        cur = t
            if pos - block >= block_bytes:
                block = pos
                block_starts.append(pos)
                block_firsts.append(first - first_index)
            pos = end
            expect += count
    return result(None, False)


def find_valid_batch(
    buf: bytes | mmap.mmap, start: int, size: int, after_index: int, key: SegmentKey
) -> int:
    """Offset of the first batch in ``buf[start:size]`` that is valid *where it
    lies* in the segment file whose key is ``key`` and whose first index is
    greater than ``after_index``, or -1.

    Used to tell a torn tail from damage in the middle of the log. A batch is
    written with one ``pwrite`` at the end of its file, and the next one only
    after it was made durable; a batch validates only at the offset of the file
    it was written to (see "Binding"), and a segment is never written again
    past a point it was truncated at. So such a batch is proof that it was
    written, at that offset, after everything before it was durable: damage
    before it is damage to acknowledged data, not a torn write. Stale bytes and
    copies of batches (inside a torn batch's own data, say) never qualify.
    Only positions whose version, flags, reserved bytes and tag are right are
    CRC-checked, so zero-filled and garbage tails are skipped at C speed.
    """
    marker = bytes([FORMAT_VERSION, 0, 0, 0])
    unpack = _HEADER.unpack_from
    tag = key.tag
    with memoryview(buf) as mv:
        p = start
        while True:
            j = buf.find(marker, p + 4, size)
            if j < 0:
                return -1
            r = j - 4
            if r + BATCH_HEADER_SIZE <= size:
                c, _ver, _flags, _res, count, data_len, first, t = unpack(mv, r)
                end = r + BATCH_HEADER_SIZE + ENTRY_HEADER_SIZE * count + data_len
                if (
                    t == tag
                    and count > 0
                    and after_index < first
                    and end <= size
                    and crc32c.crc32c(mv[r + 4 : end], key.seed(r)) == c
                ):
                    return r
            p = r + 1


def looks_like_v1(buf: bytes | mmap.mmap, size: int) -> bool:
    """True if ``buf`` starts with a CRC-valid record of format version 1."""
    if size < _V1_HEADER.size:
        return False
    c, ver, _typ, _res, n, _term, _index = _V1_HEADER.unpack_from(buf, 0)
    end = _V1_HEADER.size + n
    return bool(ver == 1 and end <= size and crc32c.crc32c(bytes(buf[4:end])) == c)


def looks_like_v2(buf: bytes | mmap.mmap, size: int) -> bool:
    """True if ``buf`` starts with a CRC-valid batch of format version 2 (no
    segment header, no binding)."""
    if size < _V2_HEADER.size:
        return False
    c, ver, _flags, _res, count, data_len, _first = _V2_HEADER.unpack_from(buf, 0)
    end = _V2_HEADER.size + ENTRY_HEADER_SIZE * count + data_len
    return bool(ver == 2 and end <= size and crc32c.crc32c(bytes(buf[4:end])) == c)


class DecodedBlock(NamedTuple):
    """The consecutive batches of one buffer, decoded and verified."""

    entries: list[Entry]
    """Every entry, in index order."""
    offsets: list[int]
    """Offset of each batch in the buffer."""
    firsts: list[int]
    """First index of each batch."""


def decode_batches(
    buf: bytes, path: str, offset: int, first_index: int, count: int, key: SegmentKey
) -> DecodedBlock:
    """Decode and fully validate the consecutive batches that exactly fill ``buf``
    (read from ``path``, whose key is ``key``, at ``offset``), which must hold
    ``count`` entries from ``first_index``. Every batch is verified before
    anything is returned.

    Raises `pyjraft.storage.api.CorruptLogError` naming the file offset of the
    first bad batch.
    """
    from pyjraft.storage.api import CorruptLogError

    size = len(buf)
    entries: list[Entry] = []
    offsets: list[int] = []
    firsts: list[int] = []
    expect = first_index
    stop = first_index + count
    pos = 0
    with memoryview(buf) as mv:
        while pos < size:
            where = offset + pos
            if size - pos < BATCH_HEADER_SIZE:
                raise CorruptLogError(path, where, "short read of batch header")
            c, ver, flags, res, n, data_len, first, tag = _HEADER.unpack_from(buf, pos)
            end = pos + BATCH_HEADER_SIZE + ENTRY_HEADER_SIZE * n + data_len
            if end > size:
                raise CorruptLogError(
                    path, where, f"batch is {end - pos} bytes, only {size - pos} expected"
                )
            if tag != key.tag:
                raise CorruptLogError(path, where, "batch of another segment file (tag mismatch)")
            if crc32c.crc32c(mv[pos + 4 : end], key.seed(where)) != c:
                raise CorruptLogError(path, where, "CRC mismatch")
            if ver != FORMAT_VERSION or flags or res or n == 0 or first != expect:
                raise CorruptLogError(
                    path, where, _why_bad_header(ver, flags, res, n, first, expect)
                )
            if first + n > stop:
                raise CorruptLogError(
                    path, where, f"batch holds entries up to {first + n - 1}, expected {stop - 1}"
                )
            terms, lengths, types, why = _check_columns(mv, pos, n, data_len)
            if why is not None:
                raise CorruptLogError(path, where, why)
            ends = list(
                accumulate(lengths, initial=pos + BATCH_HEADER_SIZE + ENTRY_HEADER_SIZE * n)
            )
            # C-level passes only: Entry tuples built by tuple.__new__, data by slicing.
            datas = map(buf.__getitem__, map(slice, ends, islice(ends, 1, None)))
            # Iterating bytes yields the type codes as plain ints, as `Entry` wants.
            fields = zip(terms, range(first, first + n), types, datas, strict=True)
            entries.extend(map(_new_entry, fields))
            offsets.append(pos)
            firsts.append(first)
            expect += n
            pos = end
    if expect != stop:
        raise CorruptLogError(
            path, offset, f"batches hold {expect - first_index} entries, expected {count}"
        )
    return DecodedBlock(entries, offsets, firsts)


_new_entry = partial(tuple.__new__, Entry)
