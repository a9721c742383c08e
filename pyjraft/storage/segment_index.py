"""Sidecar index of a sealed segment: its batch offsets, entry lengths and term
runs, so that opening a log need not parse every batch of every segment.

Written next to a segment (``<first index>.idx``) when the log rolls past it.
Purely an accelerator: it is trusted only if its own CRC is valid, it names
the same first index and file size as the segment, and the CRC32C of the
*whole segment file* matches the one it recorded, which proves the segment
is byte for byte what was indexed (one CRC call at GB/s instead of a Python
loop per batch). On any mismatch the segment is scanned batch by batch
as if no index existed, so a stale, torn or lost index costs time, never
correctness. Hence it is written without fsync.

Format (little-endian)::

    magic 4s b"PJIX" | crc I (of every byte after it) | version B (2) | order B
    | reserved H | first Q | count Q | batches Q | runs Q | seg_size Q | seg_crc I
    | pad I | batch_starts: batches x Q | batch_firsts: batches x Q
    | run_starts: runs x Q | run_terms: runs x Q | lengths: count x I

``order`` is 1 if the arrays are little-endian (``array.tobytes`` is native).
"""

from __future__ import annotations

import struct
import sys
from array import array
from typing import NamedTuple

import crc32c

__all__ = ["SegmentIndex", "decode_index", "encode_index"]

_MAGIC = b"PJIX"
_VERSION = 2
_HEADER = struct.Struct("<4sIBBHQQQQQII")
_LITTLE = 1 if sys.byteorder == "little" else 0


class SegmentIndex(NamedTuple):
    """The in-memory index of one segment, as rebuilt from its sidecar file."""

    batch_starts: array[int]
    batch_firsts: array[int]
    lengths: array[int]
    run_starts: array[int]
    run_terms: array[int]
    seg_crc: int


def encode_index(
    first: int,
    seg_size: int,
    seg_crc: int,
    batch_starts: array[int],
    batch_firsts: array[int],
    lengths: array[int],
    run_starts: array[int],
    run_terms: array[int],
) -> bytes:
    """The sidecar file content for a segment of ``seg_size`` bytes whose CRC32C is
    ``seg_crc``."""
    body = b"".join(
        (
            _HEADER.pack(
                _MAGIC,
                0,
                _VERSION,
                _LITTLE,
                0,
                first,
                len(lengths),
                len(batch_starts),
                len(run_starts),
                seg_size,
                seg_crc,
                0,
            ),
            batch_starts.tobytes(),
            batch_firsts.tobytes(),
            run_starts.tobytes(),
            run_terms.tobytes(),
            lengths.tobytes(),
        )
    )
    crc = crc32c.crc32c(memoryview(body)[8:])
    return body[:4] + struct.pack("<I", crc) + body[8:]


def decode_index(raw: bytes, first: int, seg_size: int) -> SegmentIndex | None:
    """The index in ``raw`` if it is intact and describes a segment starting at
    ``first`` of ``seg_size`` bytes; None otherwise (the caller then scans)."""
    if len(raw) < _HEADER.size:
        return None
    magic, crc, version, order, _res, ifirst, count, batches, runs, size, seg_crc, _pad = (
        _HEADER.unpack_from(raw, 0)
    )
    if magic != _MAGIC or version != _VERSION or order != _LITTLE:
        return None
    if len(raw) != _HEADER.size + 8 * (2 * batches + 2 * runs) + 4 * count:
        return None
    if crc32c.crc32c(memoryview(raw)[8:]) != crc:
        return None
    if ifirst != first or size != seg_size or (count > 0) != (runs > 0):
        return None
    if (count > 0) != (batches > 0):
        return None
    arrays = []
    pos = _HEADER.size
    with memoryview(raw) as mv:
        for code, n in (("Q", batches), ("Q", batches), ("Q", runs), ("Q", runs), ("I", count)):
            a: array[int] = array(code)
            width = a.itemsize
            a.frombytes(mv[pos : pos + width * n])
            arrays.append(a)
            pos += width * n
    batch_starts, batch_firsts, run_starts, run_terms, lengths = arrays
    if count and (
        batch_starts[0] != 0
        or batch_starts[-1] >= seg_size
        or batch_firsts[0] != first
        or run_starts[0] != first
    ):
        return None
    return SegmentIndex(batch_starts, batch_firsts, lengths, run_starts, run_terms, seg_crc)
