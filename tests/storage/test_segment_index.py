"""The in-memory segment index (blocks, 32-bit offsets) and its sidecar file (version 3)."""

from __future__ import annotations

import os
import struct
from array import array
from pathlib import Path

import crc32c
import pytest

from pyjraft.core.types import Entry, EntryType
from pyjraft.storage import CorruptLogError, SegmentLogStorage, segment_recovery
from pyjraft.storage import segment_log as segment_log_module
from pyjraft.storage.record import (
    BATCH_HEADER_SIZE,
    ENTRY_HEADER_SIZE,
    SegmentKey,
    encode_batch,
    scan_batches,
)
from pyjraft.storage.segment_file import SEGMENT_HEADER_SIZE
from pyjraft.storage.segment_index import INDEX_VERSION, decode_index, encode_index
from tests.storage.helpers import batch, segments

SEG = 600


def _indexes(directory: Path) -> list[str]:
    return sorted(str(directory / n) for n in os.listdir(directory) if n.endswith(".idx"))


def _build(path: Path, n_batches: int = 40, per_batch: int = 3) -> list[Entry]:
    log = SegmentLogStorage(path, segment_bytes=SEG, sync=False)
    out: list[Entry] = []
    for b in range(n_batches):
        es = batch(len(out) + 1, per_batch, term=1 + b // 10)
        log.append(es)
        out.extend(es)
    log.close()
    return out


def _read_all(path: Path, **kw: int) -> list[Entry]:
    log = SegmentLogStorage(path, segment_bytes=SEG, sync=False, **kw)
    try:
        return log.entries(log.first_index(), log.last_index() + 1)
    finally:
        log.close()


def _arrays() -> tuple[array[int], array[int], array[int], array[int]]:
    return (
        array("I", [32, 700, 1500]),
        array("I", [0, 9, 20]),
        array("Q", [5, 12]),
        array("Q", [1, 2]),
    )


def test_index_round_trip_and_rejections() -> None:
    starts, firsts, runs, terms = _arrays()
    raw = encode_index(5, 2000, 0xABCD, 30, starts, firsts, runs, terms)
    assert raw[8] == INDEX_VERSION == 3
    idx = decode_index(raw, 5, 2000, 32)
    assert idx is not None
    assert (idx.block_starts, idx.block_firsts, idx.entry_count) == (starts, firsts, 30)
    assert (idx.run_starts, idx.run_terms, idx.seg_crc) == (runs, terms, 0xABCD)
    assert idx.block_starts.itemsize == idx.block_firsts.itemsize == 4
    # Another segment (first index or size), a damaged byte, a short file.
    assert decode_index(raw, 5, 2000, 0) is None
    assert decode_index(raw, 6, 2000, 32) is None
    assert decode_index(raw, 5, 2001, 32) is None
    for pos in (9, len(raw) // 2, len(raw) - 1):
        bad = bytearray(raw)
        bad[pos] ^= 0x10
        assert decode_index(bytes(bad), 5, 2000, 32) is None, pos
    assert decode_index(raw[:-4], 5, 2000, 32) is None
    # CRC-valid but malformed: blocks out of order, a block past the segment's end.
    for bad_starts, bad_firsts in (
        (array("I", [32, 1500, 700]), firsts),
        (starts, array("I", [0, 20, 9])),
        (array("I", [32, 700, 2000]), firsts),
        (starts, array("I", [0, 9, 30])),
        (array("I", [0, 700, 1500]), firsts),  # not right after the segment header
    ):
        bad_raw = encode_index(5, 2000, 0xABCD, 30, bad_starts, bad_firsts, runs, terms)
        assert decode_index(bad_raw, 5, 2000, 32) is None


def _version_2_index(seg_path: str, first: int) -> bytes:
    """The sidecar index the previous format (version 2) wrote for this segment:
    per-batch 64-bit offsets and first indices, per-entry 32-bit lengths."""
    raw = Path(seg_path).read_bytes()
    starts, firsts, lengths = array("Q"), array("Q"), array("I")
    run_starts, run_terms = array("Q"), array("Q")
    pos, cur = SEGMENT_HEADER_SIZE, -1
    while pos < len(raw):
        count, data_len, bfirst = struct.unpack_from("<IIQ", raw, pos + 8)
        a = pos + BATCH_HEADER_SIZE
        terms = array("Q", raw[a : a + 8 * count])
        lengths.frombytes(raw[a + 8 * count : a + 12 * count])
        for k, t in enumerate(terms):
            if t != cur:
                run_starts.append(bfirst + k)
                run_terms.append(t)
                cur = t
        starts.append(pos)
        firsts.append(bfirst)
        pos += BATCH_HEADER_SIZE + ENTRY_HEADER_SIZE * count + data_len
    header = struct.Struct("<4sIBBHQQQQQII")
    counts = (len(lengths), len(starts), len(run_starts))
    body = header.pack(b"PJIX", 0, 2, 1, 0, first, *counts, len(raw), crc32c.crc32c(raw), 0)
    body += b"".join(a.tobytes() for a in (starts, firsts, run_starts, run_terms, lengths))
    return body[:4] + struct.pack("<I", crc32c.crc32c(body[8:])) + body[8:]


def test_version_2_index_is_ignored_and_rewritten(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    entries = _build(tmp_path)
    segs = segments(str(tmp_path))
    victim = _indexes(tmp_path)[1]
    v3 = Path(victim).read_bytes()
    first = int(os.path.basename(victim)[:20])
    Path(victim).write_bytes(_version_2_index(segs[1], first))
    scanned: list[int] = []
    real_scan = scan_batches

    def spy(*args: object, **kw: object) -> object:
        scanned.append(int(args[2]))  # type: ignore[call-overload]
        return real_scan(*args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr("pyjraft.storage.segment_recovery.scan_batches", spy)
    assert _read_all(tmp_path) == entries
    # Only the segment with the old index and the last one were scanned ...
    last_first = int(os.path.basename(segs[-1])[:20])
    assert sorted(scanned) == [first, last_first]
    # ... and the old index was replaced by the current version.
    assert Path(victim).read_bytes() == v3
    scanned.clear()
    assert _read_all(tmp_path) == entries
    assert scanned == [last_first]


@pytest.mark.parametrize("block_bytes", [1, 64, 32 << 10])
def test_index_size_does_not_grow_with_batches(tmp_path: Path, block_bytes: int) -> None:
    """3,000 one-entry batches (141 KB) in one segment: about one block per
    ``block_bytes`` of file, not one index slot per batch or per entry."""
    kw = {"segment_bytes": 100_000, "sync": False, "cache_bytes": 0, "block_bytes": block_bytes}
    log = SegmentLogStorage(tmp_path, **kw)  # type: ignore[arg-type]
    data = b"x" * 10
    want = [Entry(1 + i // 1000, i, int(EntryType.NORMAL), data) for i in range(1, 3001)]
    for e in want:
        log.append([e])

    def blocks(lg: SegmentLogStorage) -> list[tuple[list[int], list[int], int]]:
        return [(list(s.block_starts), list(s.block_firsts), s.count) for s in lg._segments]

    got = blocks(log)
    for seg, (starts, firsts, count) in zip(log._segments, got, strict=True):
        assert seg.block_starts.itemsize == seg.block_firsts.itemsize == 4
        assert len(starts) <= seg.size // block_bytes + 1
        assert firsts[0] == 0 and firsts[-1] < count
    if block_bytes == 1:
        assert sum(len(s) for s, _, _ in got) == 3000
    else:
        assert sum(len(s) for s, _, _ in got) <= 141_000 // block_bytes + len(got)
    # Every way of reading back: the cache-less log, reopened (index files and a scan).
    assert log.entries(1, 3001) == want
    assert log.entries(1, 3001, max_bytes=26 * 100) == want[:100]
    assert log.entries(1500, 3001, max_bytes=1) == want[1499:1500]
    log.close()
    log = SegmentLogStorage(tmp_path, **kw)  # type: ignore[arg-type]
    assert blocks(log) == got
    assert log.entries(1, 3001) == want
    assert [log.term(i) for i in (1, 999, 1000, 1001, 3000)] == [1, 1, 2, 2, 4]
    log.close()


def test_segment_bytes_above_the_offset_limit_is_refused(tmp_path: Path) -> None:
    limit = segment_log_module.MAX_SEGMENT_BYTES
    assert limit == 2**32 - 1
    with pytest.raises(ValueError, match="segment_bytes"):
        SegmentLogStorage(tmp_path, segment_bytes=limit + 1)
    SegmentLogStorage(tmp_path, segment_bytes=limit).close()


def test_rolls_before_a_batch_would_end_past_the_offset_limit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(segment_log_module, "MAX_SEGMENT_BYTES", 340)
    log = SegmentLogStorage(tmp_path, segment_bytes=280, sync=False, cache_bytes=0)
    # Every segment starts with a 32-byte header.
    big = [Entry(1, i, 0, b"y" * 60) for i in range(1, 6)]  # one batch of 393 bytes
    log.append(big)  # larger than the limit, alone in its segment: ends at 425
    a = [Entry(1, 6, 0, b"a" * 160)]  # 201 bytes
    log.append(a)  # rolls: the segment reached segment_bytes; ends at 233
    b = [Entry(1, 7, 0, b"b" * 60)]  # 101 bytes
    log.append(b)  # 233 < segment_bytes, but would end at 334 <= 340: stays
    c = [Entry(1, 8, 0, b"c" * 10)]  # 51 bytes
    log.append(c)  # 334 >= segment_bytes: rolls anyway; ends at 83
    d = [Entry(1, 9, 0, b"d" * 10)]
    log.append(d)  # 83 < 280 and would end at 134 <= 340: stays
    e = [Entry(1, 10, 0, b"e" * 200)]  # 241 bytes
    log.append(e)  # would end at 375 > 340: rolls
    want = big + a + b + c + d + e
    sizes = [os.path.getsize(p) for p in segments(str(tmp_path))]
    assert sizes == [425, 334, 134, 273]
    # Each segment's runs start fresh: terms answer from memory and after reopening.
    assert [log.term(i) for i in range(1, 11)] == [1] * 10
    assert log.entries(1, 11) == want
    log.close()
    log = SegmentLogStorage(tmp_path, segment_bytes=250, sync=False, cache_bytes=0)
    assert log.entries(1, 11) == want
    assert [log.term(i) for i in range(1, 11)] == [1] * 10
    log.close()


def test_segment_with_a_batch_past_the_offset_limit_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A segment the 32-bit index cannot address (only a log written with a larger
    limit can hold one) is refused, never truncated as if torn."""
    log = SegmentLogStorage(tmp_path, segment_bytes=10_000, sync=False)
    for i in range(1, 41, 4):
        log.append(batch(i, 4))
    log.close()
    (seg,) = segments(str(tmp_path))
    size = os.path.getsize(seg)
    monkeypatch.setattr(segment_recovery, "MAX_SEGMENT_BYTES", 300)
    with pytest.raises(CorruptLogError, match="past the largest segment offset") as info:
        SegmentLogStorage(tmp_path, segment_bytes=200, sync=False)
    assert info.value.path == seg and 300 < info.value.offset < size
    assert os.path.getsize(seg) == size


def test_scan_groups_batches_into_blocks() -> None:
    key = SegmentKey(0xFEEDFACE12345678)
    buf = bytearray(SEGMENT_HEADER_SIZE)  # the header is not the scan's business
    offsets = []
    for i in range(1, 21):
        offsets.append(len(buf))
        buf += encode_batch([Entry(1, i, 0, b"z" * 40)], i, -1, key, len(buf)).buf
    data = bytes(buf)  # 20 batches of 81 bytes from offset 32
    per_batch = scan_batches(data, len(data), 1, key, SEGMENT_HEADER_SIZE, 1)
    assert list(per_batch.block_starts) == offsets
    assert list(per_batch.block_firsts) == list(range(20))
    grouped = scan_batches(data, len(data), 1, key, SEGMENT_HEADER_SIZE, 200)
    # A new block at the first batch starting >= 200 bytes after the block's start.
    assert list(grouped.block_starts) == [32, 275, 518, 761, 1004, 1247, 1490]
    assert list(grouped.block_firsts) == [0, 3, 6, 9, 12, 15, 18]
    assert grouped.entry_count == 20 and grouped.error is None
    capped = scan_batches(data, len(data), 1, key, SEGMENT_HEADER_SIZE, 1, max_start=500)
    assert capped.corrupt and capped.end == 518 and capped.entry_count == 6
