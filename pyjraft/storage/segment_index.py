"""Sidecar index of a sealed segment: its blocks and term runs, so that opening
a log need not parse every batch of every segment.

Written next to a segment (``<first index>.idx``) when the log rolls past it.
Purely an accelerator: it is trusted only if its own CRC is valid, it is of
this version, it names the same first index and file size as the segment, its
arrays are well formed, and the CRC32C of the *whole segment file* matches the
one it recorded, which proves the segment is byte for byte what was indexed
(one CRC call at GB/s instead of a Python loop per batch). On any mismatch the
segment is scanned batch by batch as if no index existed, so a stale, torn,
lost or older-version index costs time, never correctness. Hence it is
written without fsync.

A *block* is a run of consecutive batches (see `pyjraft.storage.segment_log`);
the index holds each block's file offset and first index, not each batch's
or entry's: its size does not grow with the number of entries.

Format version 3 (little-endian)::

    magic 4s b"PJIX" | crc I (of every byte after it) | version B (3) | order B
    | reserved H | first Q | count Q | blocks Q | runs Q | seg_size Q | seg_crc I
    | pad I | block_starts: blocks x I | block_firsts: blocks x I
    | run_starts: runs x Q | run_terms: runs x Q

``count`` is the number of entries; ``block_firsts`` are relative to ``first``.
``order`` is 1 if the arrays are little-endian (``array.tobytes`` is native).
Version 2 (per-batch 64-bit offsets and first indices, per-entry lengths) is
no longer read: such an index is ignored and the segment scanned once, which
rewrites it as version 3.
"""

from __future__ import annotations

import operator
import struct
import sys
from array import array
from itertools import islice
from typing import NamedTuple

import crc32c

__all__ = ["INDEX_VERSION", "SegmentIndex", "decode_index", "encode_index"]

_MAGIC = b"PJIX"
INDEX_VERSION = 3
"""Version written into (and the only one accepted from) sidecar index files."""
_HEADER = struct.Struct("<4sIBBHQQQQQII")
_LITTLE = 1 if sys.byteorder == "little" else 0


class SegmentIndex(NamedTuple):
    """The in-memory index of one segment, as rebuilt from its sidecar file."""

    block_starts: array[int]
    block_firsts: array[int]
    entry_count: int
    run_starts: array[int]
    run_terms: array[int]
    seg_crc: int


def encode_index(
    first: int,
    seg_size: int,
    seg_crc: int,
    count: int,
    block_starts: array[int],
    block_firsts: array[int],
    run_starts: array[int],
    run_terms: array[int],
) -> bytes:
    """The sidecar file content for a segment of ``seg_size`` bytes whose CRC32C is
    ``seg_crc``, holding ``count`` entries from ``first``."""
    body = b"".join(
        (
            _HEADER.pack(
                _MAGIC,
                0,
                INDEX_VERSION,
                _LITTLE,
                0,
                first,
                count,
                len(block_starts),
                len(run_starts),
                seg_size,
                seg_crc,
                0,
            ),
            block_starts.tobytes(),
            block_firsts.tobytes(),
            run_starts.tobytes(),
            run_terms.tobytes(),
        )
    )
    crc = crc32c.crc32c(memoryview(body)[8:])
    return body[:4] + struct.pack("<I", crc) + body[8:]


def _increasing(a: array[int]) -> bool:
    return all(map(operator.lt, a, islice(a, 1, None)))


def decode_index(raw: bytes, first: int, seg_size: int, data_start: int) -> SegmentIndex | None:
    """The index in ``raw`` if it is intact and describes a segment starting at
    ``first`` of ``seg_size`` bytes whose first batch is at ``data_start`` (right
    after the segment header); None otherwise (the caller then scans)."""
    if len(raw) < _HEADER.size:
        return None
    magic, crc, version, order, _res, ifirst, count, blocks, runs, size, seg_crc, _pad = (
        _HEADER.unpack_from(raw, 0)
    )
    if magic != _MAGIC or version != INDEX_VERSION or order != _LITTLE:
        return None
    if len(raw) != _HEADER.size + 4 * 2 * blocks + 8 * 2 * runs:
        return None
    if crc32c.crc32c(memoryview(raw)[8:]) != crc:
        return None
    if ifirst != first or size != seg_size or (count > 0) != (runs > 0):
        return None
    if (count > 0) != (blocks > 0):
        return None
    arrays = []
    pos = _HEADER.size
    with memoryview(raw) as mv:
        for code, n in (("I", blocks), ("I", blocks), ("Q", runs), ("Q", runs)):
            a: array[int] = array(code)
            width = a.itemsize
            a.frombytes(mv[pos : pos + width * n])
            arrays.append(a)
            pos += width * n
    block_starts, block_firsts, run_starts, run_terms = arrays
    if count and (
        block_starts[0] != data_start
        or block_starts[-1] >= seg_size
        or block_firsts[0] != 0
        or block_firsts[-1] >= count
        or run_starts[0] != first
        or run_starts[-1] >= first + count
        or not _increasing(block_starts)
        or not _increasing(block_firsts)
        or not _increasing(run_starts)
    ):
        return None
    return SegmentIndex(block_starts, block_firsts, count, run_starts, run_terms, seg_crc)
