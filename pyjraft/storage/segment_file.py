"""One segment file of the log: its header, its in-memory index, its sidecar index.

Header
======

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

In-memory index
===============

A `Segment` does not grow with its number of entries or batches. The
batches are grouped into *blocks*: a batch starts a new block when it
starts at least ``block_bytes`` after the current block's start, so a block
is one large batch or a run of smaller ones. A segment keeps, in
``array('I')``\\s, the file offset and first index (relative to the
segment's) of every block, its entry count, and its terms as runs (first
index, term). Entries are read back a whole block at a time and every batch
of it verified (`read_block`).

A sealed segment's index is also written beside it (``<first>.idx``,
`pyjraft.storage.segment_index`) so that the next open need not scan it
(`write_index`, `load_index`).
"""

from __future__ import annotations

import bisect
import logging
import mmap
import os
import struct
from array import array
from typing import NamedTuple

import crc32c

from pyjraft.storage._fileutil import (
    file_crc,
    open_fd,
    pwrite_all,
    sync_data,
    unlink_quietly,
)
from pyjraft.storage.api import CorruptLogError
from pyjraft.storage.record import (
    FORMAT_VERSION,
    MAX_BATCH_START,
    DecodedBlock,
    SegmentKey,
    decode_batches,
    looks_like_v1,
    looks_like_v2,
)
from pyjraft.storage.segment_index import decode_index, encode_index

__all__ = [
    "MAX_SEGMENT_BYTES",
    "SEGMENT_HEADER_SIZE",
    "Segment",
    "SegmentHeader",
    "create_segment",
    "decode_segment_header",
    "encode_segment_header",
    "load_index",
    "new_nonce",
    "read_block",
    "refuse_older_format",
    "segment_name",
    "write_index",
]

logger = logging.getLogger("pyjraft.storage")

assert array("I").itemsize == 4, "the index needs a 32-bit array('I')"

MAX_SEGMENT_BYTES = MAX_BATCH_START
"""Largest accepted ``segment_bytes`` (4 GiB - 1): segment offsets are indexed as
32-bit integers. A segment may still exceed it by one batch (its last)."""

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


class Segment:
    """One segment file (an open fd) and its in-memory index."""

    __slots__ = (
        "appendable",
        "block_firsts",
        "block_starts",
        "count",
        "crc",
        "fd",
        "first",
        "key",
        "path",
        "run_starts",
        "run_terms",
        "size",
    )

    def __init__(self, path: str, fd: int, first: int, key: SegmentKey) -> None:
        self.path = path
        self.fd = fd
        self.first = first
        self.key = key  # binds the file's batches to it (`pyjraft.storage.record`)
        # Only a file this process created, and never truncated since, is appended
        # to: no byte past its end was ever written, so no stale batch of it can
        # reappear behind a torn append (see `pyjraft.storage.segment_log`).
        self.appendable = False
        self.block_starts: array[int] = array("I")  # file offset of each block
        self.block_firsts: array[int] = array("I")  # first index of each block, minus `first`
        self.count = 0  # entries
        # Terms change rarely: runs (first index, term) cost far less than one per entry.
        self.run_starts: array[int] = array("Q")
        self.run_terms: array[int] = array("Q")
        self.size = SEGMENT_HEADER_SIZE  # end of the valid batches: the next one goes here
        self.crc = 0  # CRC32C of bytes [0, size): what the sidecar index records

    @property
    def index_path(self) -> str:
        """Path of this segment's sidecar index (see `pyjraft.storage.segment_index`)."""
        return self.path[: -len(".log")] + ".idx"

    @property
    def last(self) -> int:
        """Index of the last entry (``first - 1`` if empty)."""
        return self.first + self.count - 1

    def term(self, index: int) -> int:
        """Term of the entry at ``index`` (which this segment must hold)."""
        return self.run_terms[bisect.bisect_right(self.run_starts, index) - 1]

    @property
    def last_term(self) -> int:
        """Term of the last entry, -1 if empty."""
        return self.run_terms[-1] if self.run_terms else -1

    def block_of(self, index: int) -> int:
        """Number of the block holding ``index`` (which this segment must hold)."""
        return bisect.bisect_right(self.block_firsts, index - self.first) - 1

    def block_span(self, k: int) -> tuple[int, int, int, int]:
        """``(offset, end offset, first index, entry count)`` of block number ``k``."""
        nk = k + 1
        if nk < len(self.block_starts):
            end, nxt = self.block_starts[nk], self.block_firsts[nk]
        else:
            end, nxt = self.size, self.count
        first = self.block_firsts[k]
        return self.block_starts[k], end, self.first + first, nxt - first

    def add_batch(self, start: int, first: int, block_bytes: int) -> None:
        """Index a batch appended at ``start`` whose first index is ``first``: it
        starts a new block if it starts ``block_bytes`` or more after the last block
        (the rule `pyjraft.storage.record.scan_batches` follows too)."""
        starts = self.block_starts
        if not starts or start - starts[-1] >= block_bytes:
            starts.append(start)
            self.block_firsts.append(first - self.first)


def create_segment(
    directory: str, dir_fd: int, first: int, key: SegmentKey, *, replace: bool
) -> Segment:
    """Create the segment file of ``directory`` starting at ``first``: its header
    written and durable (fdatasync), and its directory entry too (``dir_fd``
    fsynced), before any batch goes into it. With ``replace`` an existing file of
    that name (an empty segment) is replaced atomically: the new one is prepared
    as ``<name>.tmp`` and renamed over it. Otherwise the file must not exist.

    Raises `TransientStorageError` if no descriptor is left (nothing changed),
    `OSError` on any other failure."""
    path = os.path.join(directory, segment_name(first))
    if replace:
        target, flags = path + ".tmp", os.O_RDWR | os.O_CREAT | os.O_TRUNC
    else:
        target, flags = path, os.O_RDWR | os.O_CREAT | os.O_EXCL
    fd = open_fd(target, flags)
    header = encode_segment_header(first, key.nonce)
    try:
        pwrite_all(fd, header, 0)
        sync_data(fd)
        if replace:
            os.replace(target, path)
        os.fsync(dir_fd)
    except BaseException:
        os.close(fd)
        raise
    seg = Segment(path, fd, first, key)
    seg.crc = crc32c.crc32c(header)
    seg.appendable = True
    return seg


def pread_exact(seg: Segment, length: int, offset: int) -> bytes:
    """``length`` bytes of ``seg`` at ``offset``; `CorruptLogError` if it ends early."""
    buf = os.pread(seg.fd, length, offset)
    if len(buf) == length:
        return buf
    parts = [buf]
    got = len(buf)
    while got < length:
        more = os.pread(seg.fd, length - got, offset + got)
        if not more:
            raise CorruptLogError(
                seg.path, offset + got, f"file ends early: wanted {length} bytes at {offset}"
            )
        parts.append(more)
        got += len(more)
    return b"".join(parts)


def read_block(seg: Segment, start: int, end: int, first: int, count: int) -> DecodedBlock:
    """Read the batches in ``[start, end)`` of ``seg`` (``count`` entries from
    ``first``) and verify every one of them before returning any."""
    buf = pread_exact(seg, end - start, start)
    return decode_batches(buf, seg.path, start, first, count, seg.key)


def write_index(seg: Segment) -> None:
    """Write the sidecar index of a segment that is being sealed. Best effort (no
    fsync; any error only logged): without it, the next open scans the segment."""
    raw = encode_index(
        seg.first,
        seg.size,
        seg.crc,
        seg.count,
        seg.block_starts,
        seg.block_firsts,
        seg.run_starts,
        seg.run_terms,
    )
    tmp = seg.index_path + ".tmp"
    try:
        with open(tmp, "wb") as f:
            f.write(raw)
        os.replace(tmp, seg.index_path)
    except OSError as exc:
        logger.warning("%s: cannot write index (%s); next open will scan", seg.path, exc)
        unlink_quietly(tmp)


def load_index(seg: Segment, size: int) -> bool:
    """Load ``seg``'s index from its sidecar file if that proves valid for the
    segment's exact current bytes (read in chunks: no mapping of the whole file)."""
    try:
        with open(seg.index_path, "rb") as f:
            raw = f.read()
    except OSError:
        return False
    idx = decode_index(raw, seg.first, size, SEGMENT_HEADER_SIZE)
    if idx is None:
        return False
    if file_crc(seg.fd, size) != idx.seg_crc:
        return False  # the scan will find and name the damage
    seg.block_starts = idx.block_starts
    seg.block_firsts = idx.block_firsts
    seg.count = idx.entry_count
    seg.run_starts = idx.run_starts
    seg.run_terms = idx.run_terms
    seg.size = size
    seg.crc = idx.seg_crc
    return True


def refuse_older_format(fd: int, path: str, size: int) -> None:
    """Raise a clear `CorruptLogError` if the file at ``path`` is a segment of log
    format 1 or 2 (no segment header): never mistake it for a torn creation."""
    if size == 0:
        return
    with mmap.mmap(fd, size, access=mmap.ACCESS_READ) as mm:
        old = 1 if looks_like_v1(mm, size) else 2 if looks_like_v2(mm, size) else 0
    if old:
        raise CorruptLogError(
            path,
            0,
            f"segment in log format version {old}; this pyjraft reads only format "
            f"version {FORMAT_VERSION} (segment header, bound batch records) and cannot "
            "open this log",
        )
