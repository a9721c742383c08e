"""Shared helpers for the storage tests: deterministic entries and file surgery."""

from __future__ import annotations

import os
import struct
from pathlib import Path

import crc32c

from pyjraft.core.types import Entry, EntryType
from pyjraft.storage.record import BATCH_HEADER_SIZE, ENTRY_HEADER_SIZE, SegmentKey
from pyjraft.storage.segment_file import SEGMENT_HEADER_SIZE, decode_segment_header


def payload(index: int) -> bytes:
    """Data for the entry at ``index``: derived from the index alone (0..96 bytes)."""
    n = (index * 7919) % 97
    return (index.to_bytes(8, "little") * (n // 8 + 1))[:n]


def entry(index: int, term: int = 1) -> Entry:
    """The deterministic entry at ``index``."""
    return Entry(term, index, EntryType(index % 3), payload(index))


def batch(lo: int, n: int, term: int = 1) -> list[Entry]:
    """``n`` deterministic entries starting at ``lo``."""
    return [entry(i, term) for i in range(lo, lo + n)]


def segments(directory: str) -> list[str]:
    """Paths of the segment files in ``directory``, in index order."""
    return sorted(os.path.join(directory, n) for n in os.listdir(directory) if n.endswith(".log"))


def flip_bit(path: str, offset: int, bit: int = 0) -> None:
    """Flip one bit of the byte at ``offset`` in ``path``."""
    with open(path, "r+b") as f:
        f.seek(offset)
        b = f.read(1)[0]
        f.seek(offset)
        f.write(bytes([b ^ (1 << bit)]))


def segment_key(path: str) -> SegmentKey:
    """The key (nonce) in the header of the segment file at ``path``."""
    header = decode_segment_header(Path(path).read_bytes()[:SEGMENT_HEADER_SIZE])
    assert not isinstance(header, str), header
    return header.key


def batch_spans(path: str) -> list[tuple[int, int, int]]:
    """(offset, end offset, entry count) of each batch in the segment at ``path``."""
    raw = Path(path).read_bytes()
    spans, pos = [], SEGMENT_HEADER_SIZE
    while pos < len(raw):
        count, data_len = struct.unpack_from("<II", raw, pos + 8)
        end = pos + BATCH_HEADER_SIZE + ENTRY_HEADER_SIZE * count + data_len
        spans.append((pos, end, count))
        pos = end
    return spans


def reseal(raw: bytearray, offset: int, key: SegmentKey) -> None:
    """Recompute the CRC of the batch at ``offset`` of ``raw`` (a segment file's
    bytes) as the writer of the file whose key is ``key`` would have."""
    count, data_len = struct.unpack_from("<II", raw, offset + 8)
    end = offset + BATCH_HEADER_SIZE + ENTRY_HEADER_SIZE * count + data_len
    crc = crc32c.crc32c(bytes(raw[offset + 4 : end]), key.seed(offset))
    struct.pack_into("<I", raw, offset, crc)
