"""Crash recovery on open: torn tails are truncated, everything else is refused."""

from __future__ import annotations

import logging
import os
import random
import shutil
import struct
from pathlib import Path

import crc32c
import pytest

from pyjraft.core.types import Entry, EntryType
from pyjraft.storage import CorruptLogError, SegmentLogStorage
from pyjraft.storage.record import BATCH_HEADER_SIZE
from pyjraft.storage.segment_file import SEGMENT_HEADER_SIZE, encode_segment_header
from tests.storage.helpers import batch, batch_spans, flip_bit, reseal, segment_key, segments

SEG = 600


def build(path: Path, batches: list[int]) -> tuple[list[Entry], list[tuple[str, int, int]]]:
    """Append batches of the given sizes; return the entries and, per batch, the last
    segment's path, its size after the batch and the batch's last index."""
    log = SegmentLogStorage(path, segment_bytes=SEG, sync=False)
    entries: list[Entry] = []
    marks = []
    for i, n in enumerate(batches):
        es = batch(len(entries) + 1, n, term=1 + i // 4)
        log.append(es)
        entries.extend(es)
        seg = segments(str(path))[-1]
        marks.append((seg, os.path.getsize(seg), len(entries)))
    log.close()
    return entries, marks


def record_offsets(path: str) -> list[int]:
    """File offset of each batch in the segment at ``path``."""
    return [o for o, _, _ in batch_spans(path)]


def check_prefix(path: Path, entries: list[Entry], must_have: int) -> int:
    log = SegmentLogStorage(path, segment_bytes=SEG, sync=False)
    try:
        last = log.last_index()
        assert must_have <= last <= len(entries)
        assert log.entries(1, last + 1) == entries[:last]
        # The recovered log must accept the next append right after the cut.
        nxt = batch(last + 1, 2, term=99)
        log.append(nxt)
    finally:
        log.close()
    log = SegmentLogStorage(path, segment_bytes=SEG, sync=False)
    try:
        assert log.entries(1, last + 3) == entries[:last] + nxt
    finally:
        log.close()
    return last


@pytest.mark.parametrize("mode", ["cut", "zeros", "garbage"])
def test_torn_tail_at_every_byte_is_recovered_to_the_acknowledged_prefix(
    tmp_path: Path, mode: str
) -> None:
    seed = 1234
    rng = random.Random(seed)
    src = tmp_path / "src"
    entries, marks = build(src, [3, 1, 4, 1, 5, 9, 2, 6, 5, 3, 5, 2, 1, 1, 2, 1, 2, 2, 1, 1, 2])
    last_seg, _, _ = marks[-1]
    pristine = Path(last_seg).read_bytes()
    spans = batch_spans(last_seg)
    assert len(spans) >= 4
    start = spans[len(spans) - 4][0]  # the last few batches
    first_in_seg = int(os.path.basename(last_seg)[:20])
    work = tmp_path / "work"
    shutil.copytree(src, work)
    original = set(os.listdir(work))
    seg = work / os.path.basename(last_seg)
    for first_bad in range(start, len(pristine)):
        cut = first_bad
        # Only the last segment is ever changed by recovery and by the appends after
        # it; files those appends created (a rolled segment, its index) go away.
        for name in set(os.listdir(work)) - original:
            os.unlink(work / name)
        tail = len(pristine) - cut
        if mode == "cut":
            damaged = pristine[:cut]
        elif mode == "zeros":
            damaged = pristine[:cut] + b"\0" * (tail + rng.randrange(0, 300))
        else:
            damaged = pristine[:cut] + rng.randbytes(tail + rng.randrange(0, 300))
        seg.write_bytes(damaged)
        # Zeros or random bytes may happen to equal the originals: what counts is the
        # first byte that really differs.
        cut = next(
            (i for i in range(cut, min(len(damaged), len(pristine))) if damaged[i] != pristine[i]),
            min(len(damaged), len(pristine)),
        )
        # Every batch whose bytes all lie before the cut was acknowledged and must survive.
        acked = max((m[2] for m in marks if m[0] != last_seg or m[1] <= cut), default=0)
        # A batch is all or nothing: only whole batches before the cut survive.
        complete = first_in_seg - 1 + sum(n for _, end, n in spans if end <= cut)
        try:
            last = check_prefix(work, entries, acked)
        except Exception as exc:
            raise AssertionError(
                f"mode={mode} first_bad={first_bad} cut={cut} seed={seed}"
            ) from exc
        assert last == complete, f"mode={mode} first_bad={first_bad} cut={cut} seed={seed}"


def test_torn_tail_is_logged(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    _entries, marks = build(tmp_path, [2, 2, 2])
    seg = marks[-1][0]
    with open(seg, "r+b") as f:
        f.truncate(os.path.getsize(seg) - 5)
    with caplog.at_level(logging.WARNING, logger="pyjraft.storage"):
        log = SegmentLogStorage(tmp_path, segment_bytes=SEG)
    # A batch is all or nothing: the torn last batch (indices 5 and 6) goes whole.
    assert log.last_index() == 4
    log.close()
    assert any(
        r.name == "pyjraft.storage" and "torn tail" in r.getMessage() for r in caplog.records
    )


@pytest.mark.parametrize("tail", ["zeros", "garbage"])
def test_torn_first_batch_of_a_new_segment_is_recovered(tmp_path: Path, tail: str) -> None:
    """Created (header durable), extended by the first batch's write, never written."""
    _entries, _marks = build(tmp_path, [20, 20, 20])
    last = segments(str(tmp_path))[-1]
    first = int(os.path.basename(last)[:20])
    header = Path(last).read_bytes()[:SEGMENT_HEADER_SIZE]
    junk = b"\0" * 4096 if tail == "zeros" else random.Random(7).randbytes(4096)
    Path(last).write_bytes(header + junk)
    old_key = segment_key(last)
    log = SegmentLogStorage(tmp_path, segment_bytes=SEG)
    assert log.last_index() == first - 1
    assert os.path.getsize(last) == SEGMENT_HEADER_SIZE
    # The truncated file is never written again: the append replaces it.
    log.append(batch(first, 1, term=9))
    log.close()
    assert segment_key(last).nonce != old_key.nonce
    log = SegmentLogStorage(tmp_path, segment_bytes=SEG)
    assert log.entries(first, first + 1) == batch(first, 1, term=9)
    log.close()


@pytest.mark.parametrize("size", [0, 1, 20, SEGMENT_HEADER_SIZE])
def test_segment_torn_while_being_created_is_deleted(tmp_path: Path, size: int) -> None:
    """Its header never became durable, so it never held a batch: recovery removes it."""
    entries, _marks = build(tmp_path, [20, 20, 20])
    n = len(entries)
    path = tmp_path / f"{n + 1:020d}.log"
    path.write_bytes(b"\0" * size)
    log = SegmentLogStorage(tmp_path, segment_bytes=SEG)
    assert log.last_index() == n
    assert not path.exists()
    log.append(batch(n + 1, 2, term=9))
    assert log.entries(1, n + 3) == entries + batch(n + 1, 2, term=9)
    log.close()


def test_invalid_header_in_a_file_longer_than_a_header_is_refused(tmp_path: Path) -> None:
    """The header is durable before any batch is written: a damaged header in a
    file holding more is damage, never a torn creation."""
    build(tmp_path, [20, 20, 20])
    last = segments(str(tmp_path))[-1]
    flip_bit(last, 20)  # inside the nonce
    size = os.path.getsize(last)
    with pytest.raises(CorruptLogError, match="segment header CRC mismatch") as info:
        SegmentLogStorage(tmp_path, segment_bytes=SEG)
    assert (info.value.path, info.value.offset) == (last, 0)
    assert os.path.getsize(last) == size


def test_segment_header_naming_another_first_index_is_refused(tmp_path: Path) -> None:
    build(tmp_path, [20, 20, 20])
    last = segments(str(tmp_path))[-1]
    raw = Path(last).read_bytes()
    first = int(os.path.basename(last)[:20])
    key = segment_key(last)
    Path(last).write_bytes(encode_segment_header(first + 1, key.nonce) + raw[SEGMENT_HEADER_SIZE:])
    with pytest.raises(CorruptLogError, match="segment header says first index"):
        SegmentLogStorage(tmp_path, segment_bytes=SEG)


def test_bit_flip_in_a_non_last_segment_is_refused(tmp_path: Path) -> None:
    _entries, _ = build(tmp_path, [10] * 8)
    segs = segments(str(tmp_path))
    victim = segs[len(segs) // 2]
    offs = record_offsets(victim)
    size = os.path.getsize(victim)
    for target in (size // 2, size - 1, offs[-1]):
        rec = max(o for o in offs if o <= target)
        flip_bit(victim, target, 3)
        with pytest.raises(CorruptLogError) as info:
            SegmentLogStorage(tmp_path, segment_bytes=SEG)
        assert (info.value.path, info.value.offset) == (victim, rec), target
        flip_bit(victim, target, 3)
    SegmentLogStorage(tmp_path, segment_bytes=SEG).close()


def test_bit_flip_before_a_valid_record_in_the_last_segment_is_refused(tmp_path: Path) -> None:
    _entries, _marks = build(tmp_path, [2] * 8)
    last = segments(str(tmp_path))[-1]
    offs = record_offsets(last)
    assert len(offs) >= 3
    for rec in offs[:-1]:
        for target in (rec, rec + 9, rec + BATCH_HEADER_SIZE - 1, rec + BATCH_HEADER_SIZE + 3):
            flip_bit(last, target, 6)
            with pytest.raises(CorruptLogError) as info:
                SegmentLogStorage(tmp_path, segment_bytes=SEG)
            assert (info.value.path, info.value.offset) == (last, rec)
            flip_bit(last, target, 6)


def test_missing_middle_segment_is_refused(tmp_path: Path) -> None:
    build(tmp_path, [10] * 8)
    segs = segments(str(tmp_path))
    os.unlink(segs[2])
    with pytest.raises(CorruptLogError) as info:
        SegmentLogStorage(tmp_path, segment_bytes=SEG)
    assert info.value.path == segs[3]
    assert "missing" in info.value.reason


def test_missing_first_segment_is_refused(tmp_path: Path) -> None:
    build(tmp_path, [10] * 8)
    segs = segments(str(tmp_path))
    os.unlink(segs[0])
    with pytest.raises(CorruptLogError) as info:
        SegmentLogStorage(tmp_path, segment_bytes=SEG)
    assert info.value.path == segs[1]


def test_segment_name_not_matching_its_first_record_is_refused(tmp_path: Path) -> None:
    build(tmp_path, [10] * 4)
    segs = segments(str(tmp_path))
    first = int(os.path.basename(segs[-1])[:20])
    renamed = os.path.join(str(tmp_path), f"{first - 1:020d}.log")
    # Move the previous segment's last index out of the way by truncating it is not
    # possible, so rename the LAST segment onto a name one lower and drop nothing.
    os.rename(segs[-1], renamed)
    with pytest.raises(CorruptLogError):
        SegmentLogStorage(tmp_path, segment_bytes=SEG)
    os.rename(renamed, os.path.join(str(tmp_path), f"{first + 1:020d}.log"))
    with pytest.raises(CorruptLogError):
        SegmentLogStorage(tmp_path, segment_bytes=SEG)


def test_stray_log_file_is_refused(tmp_path: Path) -> None:
    build(tmp_path, [3])
    (tmp_path / "notes.log").write_text("hello")
    with pytest.raises(CorruptLogError, match="not a segment name"):
        SegmentLogStorage(tmp_path)


def _rewrite_batch(path: str, offset: int, **fields: int) -> None:
    """Rewrite header fields (or the first entry's type) of the batch at ``offset``
    and fix its CRC, as a newer (or buggy) writer would have produced it."""
    raw = bytearray(Path(path).read_bytes())
    _crc, ver, flags, res, count, data_len, first = struct.unpack_from("<IBBHIIQ", raw, offset)
    ver = fields.get("ver", ver)
    flags = fields.get("flags", flags)
    res = fields.get("res", res)
    first = fields.get("index", first)
    struct.pack_into("<IBBHIIQ", raw, offset, 0, ver, flags, res, count, data_len, first)
    if "typ" in fields:
        raw[offset + BATCH_HEADER_SIZE + 12 * count] = fields["typ"]
    if "len" in fields:  # first entry one byte longer, second one byte shorter
        pos = offset + BATCH_HEADER_SIZE + 8 * count
        n0 = struct.unpack_from("<I", raw, pos)[0]
        struct.pack_into("<I", raw, pos, n0 + fields["len"])
    reseal(raw, offset, segment_key(path))
    Path(path).write_bytes(bytes(raw))


@pytest.mark.parametrize(
    "fields",
    [{"ver": 4}, {"typ": 9}, {"res": 1}, {"flags": 1}, {"index": 10**6}, {"len": 1}],
    ids=str,
)
@pytest.mark.parametrize("which", ["first", "middle", "last"])
def test_crc_valid_but_meaningless_record_is_refused_even_at_the_tail(
    tmp_path: Path, fields: dict[str, int], which: str
) -> None:
    build(tmp_path, [2, 2, 2])
    last = segments(str(tmp_path))[-1]
    offs = record_offsets(last)
    assert len(offs) == 3
    rec = {"first": offs[0], "middle": offs[len(offs) // 2], "last": offs[-1]}[which]
    _rewrite_batch(last, rec, **fields)
    size = os.path.getsize(last)
    with pytest.raises(CorruptLogError) as info:
        SegmentLogStorage(tmp_path, segment_bytes=SEG)
    assert (info.value.path, info.value.offset) == (last, rec)
    assert os.path.getsize(last) == size, "nothing may be truncated"


def test_version_1_log_is_refused_with_a_clear_error(tmp_path: Path) -> None:
    """A segment of format version 1 (28-byte record per entry) is never taken for
    a torn tail: it is refused, and left untouched."""
    data = b"hello"
    rec = bytearray(struct.pack("<IBBHIQQ", 0, 1, 0, 0, len(data), 1, 1) + data)
    struct.pack_into("<I", rec, 0, crc32c.crc32c(bytes(rec[4:])))
    seg = tmp_path / f"{1:020d}.log"
    seg.write_bytes(bytes(rec) * 3)
    with pytest.raises(CorruptLogError, match="version 1") as info:
        SegmentLogStorage(tmp_path)
    assert (info.value.path, info.value.offset) == (str(seg), 0)
    assert seg.read_bytes() == bytes(rec) * 3


def test_batch_whose_pages_were_written_out_of_order_is_a_torn_tail(tmp_path: Path) -> None:
    """Power loss may persist a batch's later pages but not its first one: that is
    still a torn (never acknowledged) last batch, not corruption."""
    log = SegmentLogStorage(tmp_path, segment_bytes=1 << 20)
    log.append(batch(1, 3))
    big = [Entry(1, 4 + i, EntryType.NORMAL, bytes([i + 1]) * 3000) for i in range(5)]
    log.append(big)
    log.close()
    seg = segments(str(tmp_path))[0]
    start, end, _n = batch_spans(seg)[-1]
    pristine = Path(seg).read_bytes()
    for lost in range(0, end - start, 4096):
        # Page `lost` of the batch never reached the disk; every other page did.
        damaged = bytearray(pristine)
        damaged[start + lost : start + lost + 4096] = bytes(
            len(damaged[start + lost : start + lost + 4096])
        )
        Path(seg).write_bytes(bytes(damaged))
        log = SegmentLogStorage(tmp_path, segment_bytes=1 << 20)
        assert log.last_index() == 3, lost
        assert log.entries(1, 4) == batch(1, 3)
        log.close()
        assert os.path.getsize(seg) == start


def test_damaged_log_meta_is_refused(tmp_path: Path) -> None:
    log = SegmentLogStorage(tmp_path, segment_bytes=SEG)
    log.append(batch(1, 30))
    log.truncate_prefix(10)
    log.close()
    flip_bit(str(tmp_path / "log_meta"), 20)
    with pytest.raises(CorruptLogError) as info:
        SegmentLogStorage(tmp_path)
    assert info.value.path == str(tmp_path / "log_meta")


def test_missing_log_meta_after_compaction_is_refused(tmp_path: Path) -> None:
    log = SegmentLogStorage(tmp_path, segment_bytes=SEG)
    for i in range(1, 61, 5):
        log.append(batch(i, 5))
    log.truncate_prefix(40)
    log.close()
    os.unlink(tmp_path / "log_meta")
    with pytest.raises(CorruptLogError, match="first segment starts"):
        SegmentLogStorage(tmp_path)


def test_interrupted_reset_is_finished_on_open(tmp_path: Path) -> None:
    log = SegmentLogStorage(tmp_path, segment_bytes=SEG)
    log.append(batch(1, 60))
    # The state right after reset() wrote its intent and crashed before unlinking.
    log._write_log_meta(20, 5, 0x01)
    log.close()
    log = SegmentLogStorage(tmp_path, segment_bytes=SEG)
    assert (log.first_index(), log.last_index(), log.term(19)) == (20, 19, 5)
    assert segments(str(tmp_path)) == []
    log.close()
    log = SegmentLogStorage(tmp_path, segment_bytes=SEG)
    assert (log.first_index(), log.last_index()) == (20, 19)
    log.close()


def test_interrupted_truncate_prefix_is_finished_on_open(tmp_path: Path) -> None:
    log = SegmentLogStorage(tmp_path, segment_bytes=SEG)
    for i in range(1, 61, 5):
        log.append(batch(i, 5))
    n = len(segments(str(tmp_path)))
    # log_meta written, segments not yet deleted.
    log._write_log_meta(45, 1, 0)
    log.close()
    log = SegmentLogStorage(tmp_path, segment_bytes=SEG)
    assert (log.first_index(), log.last_index(), log.term(44)) == (45, 60, 1)
    assert log.entries(45, 61) == batch(45, 16)
    assert len(segments(str(tmp_path))) < n
    log.close()


def _indexes(directory: Path) -> list[str]:
    return sorted(str(directory / n) for n in os.listdir(directory) if n.endswith(".idx"))


def _open_and_read_all(directory: Path) -> list[Entry]:
    log = SegmentLogStorage(directory, segment_bytes=SEG)
    try:
        return log.entries(log.first_index(), log.last_index() + 1)
    finally:
        log.close()


def test_sealed_segments_get_an_index_and_reopen_uses_it(tmp_path: Path) -> None:
    entries, _ = build(tmp_path, [7] * 12)
    segs = segments(str(tmp_path))
    # Every segment but the last has an index; the last one is always scanned.
    assert [p[:-4] for p in _indexes(tmp_path)] == [p[:-4] for p in segs[:-1]]
    assert _open_and_read_all(tmp_path) == entries


@pytest.mark.parametrize("damage", ["flip", "truncate", "delete", "stale", "garbage"])
def test_a_bad_index_only_costs_a_scan(tmp_path: Path, damage: str) -> None:
    entries, _ = build(tmp_path, [7] * 12)
    victim = _indexes(tmp_path)[1]
    raw = Path(victim).read_bytes()
    if damage == "flip":
        flip_bit(victim, len(raw) - 3, 2)
    elif damage == "truncate":
        Path(victim).write_bytes(raw[: len(raw) // 2])
    elif damage == "delete":
        os.unlink(victim)
    elif damage == "stale":
        # A valid index of another segment, as if the files had been mixed up.
        shutil.copy(_indexes(tmp_path)[0], victim)
    else:
        Path(victim).write_bytes(b"\0" * 100)
    assert _open_and_read_all(tmp_path) == entries
    # The scan rewrote it.
    assert Path(victim).read_bytes() == raw
    assert _open_and_read_all(tmp_path) == entries


def test_index_of_a_segment_truncated_later_is_not_trusted(tmp_path: Path) -> None:
    entries, _ = build(tmp_path, [7] * 12)
    segs = segments(str(tmp_path))
    idx = _indexes(tmp_path)
    kept_idx = Path(idx[2]).read_bytes()
    first = int(os.path.basename(segs[2])[:20])
    log = SegmentLogStorage(tmp_path, segment_bytes=SEG)
    log.truncate_suffix(first + 2)  # segs[2] becomes the last segment, shorter
    log.append(batch(first + 3, 40, term=50))
    log.close()
    # A crash could resurrect an index written before the truncation: put it back.
    Path(idx[2]).write_bytes(kept_idx)
    want = entries[: first + 2] + batch(first + 3, 40, term=50)
    assert _open_and_read_all(tmp_path) == want


def test_bit_flip_in_an_indexed_segment_is_refused_with_its_offset(tmp_path: Path) -> None:
    build(tmp_path, [2] * 30)
    segs = segments(str(tmp_path))
    victim = segs[3]
    assert os.path.exists(victim[:-4] + ".idx")
    offs = record_offsets(victim)
    flip_bit(victim, offs[2] + BATCH_HEADER_SIZE + 1)
    with pytest.raises(CorruptLogError) as info:
        SegmentLogStorage(tmp_path, segment_bytes=SEG)
    assert (info.value.path, info.value.offset) == (victim, offs[2])
