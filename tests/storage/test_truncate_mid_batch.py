"""truncate_suffix inside a batch: the kept prefix is rewritten as a new batch in
place, journaled in ``truncate_redo`` first, and no crash point loses a kept entry.

Every test runs twice: with an index block per batch, and with the default
blocks (here a whole segment is one block of several batches)."""

from __future__ import annotations

import os
import random
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from pyjraft.core.types import Entry
from pyjraft.storage import CorruptLogError, SegmentLogStorage
from pyjraft.storage.log_meta import TRUNCATE_REDO, read_truncate_redo
from pyjraft.storage.record import batch_size
from pyjraft.storage.segment_file import SEGMENT_HEADER_SIZE
from tests.storage.helpers import batch, flip_bit, segments

SEG = 600
POINTS = ["redo_written", "segments_unlinked", "ftruncated", "rewritten", "synced"]
BLOCK_BYTES = 1  # set by the `block_bytes` fixture for every test


@pytest.fixture(autouse=True, params=[1, 32 << 10], ids=["block=batch", "block=32KiB"])
def block_bytes(request: pytest.FixtureRequest) -> Iterator[int]:
    global BLOCK_BYTES
    BLOCK_BYTES = request.param
    yield request.param
    BLOCK_BYTES = 1


class Crash(Exception):
    """Stands in for the process dying at a crash point."""


def open_log(path: Path, cache_bytes: int = 0) -> SegmentLogStorage:
    return SegmentLogStorage(
        path, segment_bytes=SEG, cache_bytes=cache_bytes, block_bytes=BLOCK_BYTES
    )


def build(path: Path) -> list[Entry]:
    """Batches of 6 entries, several segments; returns all entries (1..60)."""
    log = open_log(path)
    out: list[Entry] = []
    for lo in range(1, 61, 6):
        es = batch(lo, 6, term=1 + lo // 20)
        log.append(es)
        out.extend(es)
    log.close()
    assert len(segments(str(path))) >= 3
    return out


def crash_at(log: SegmentLogStorage, point: str, monkeypatch: pytest.MonkeyPatch) -> None:
    def hook(where: str) -> None:
        if where == point:
            raise Crash(where)

    monkeypatch.setattr(log, "_crash_point", hook)


def abandon(log: SegmentLogStorage) -> None:
    """Drop a log object as a dead process would: release its fds, write nothing."""
    log._close_files()


def check(path: Path, want: list[Entry]) -> None:
    for _ in range(2):  # and recovery is stable: a second open sees the same
        log = open_log(path)
        try:
            assert (log.first_index(), log.last_index()) == (1, len(want))
            assert log.entries(1, len(want) + 1) == want
            assert [log.term(e.index) for e in want] == [e.term for e in want]
        finally:
            log.close()
        assert not os.path.exists(path / TRUNCATE_REDO)
    log = open_log(path)
    nxt = batch(len(want) + 1, 3, term=77)
    log.append(nxt)
    log.close()
    log = open_log(path)
    assert log.entries(1, len(want) + 4) == want + nxt
    log.close()


@pytest.mark.parametrize("cache_bytes", [0, 1 << 20])
@pytest.mark.parametrize("last_kept", [1, 3, 5, 8, 27, 50, 58])
def test_mid_batch_cut_keeps_exactly_the_prefix(
    tmp_path: Path, last_kept: int, cache_bytes: int
) -> None:
    entries = build(tmp_path)
    log = open_log(tmp_path, cache_bytes)
    log.truncate_suffix(last_kept)
    assert log.last_index() == last_kept
    assert log.entries(1, last_kept + 1) == entries[:last_kept]
    assert not os.path.exists(tmp_path / TRUNCATE_REDO)
    # The kept part of the cut batch is one new batch ending the last segment.
    seg = segments(str(tmp_path))[-1]
    seg_first = int(os.path.basename(seg)[:20])
    bfirst = 1 + (last_kept - 1) // 6 * 6
    kept = entries[bfirst - 1 : last_kept]
    before = SEGMENT_HEADER_SIZE + sum(
        batch_size(6, sum(len(e.data) for e in entries[lo - 1 : lo + 5]))
        for lo in range(seg_first, bfirst, 6)
    )
    assert os.path.getsize(seg) == before + batch_size(len(kept), sum(len(e.data) for e in kept))
    log.append(batch(last_kept + 1, 2, term=9))
    log.close()
    check(tmp_path, entries[:last_kept] + batch(last_kept + 1, 2, term=9))


@pytest.mark.parametrize("point", POINTS)
def test_crash_at_every_step_of_a_mid_batch_cut(
    tmp_path: Path, point: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    entries = build(tmp_path)
    log = open_log(tmp_path)
    crash_at(log, point, monkeypatch)
    with pytest.raises(Crash):
        log.truncate_suffix(27)  # batch 25..30, segments after it exist
    abandon(log)
    # The journal is durable from the first crash point on: the cut is redone.
    check(tmp_path, entries[:27])


def test_crash_before_the_journal_leaves_the_old_log(tmp_path: Path) -> None:
    entries = build(tmp_path)
    # atomic_replace died after writing part of its temp file.
    (tmp_path / (TRUNCATE_REDO + ".tmp")).write_bytes(b"PJTR\x01\x02")
    check(tmp_path, entries)
    assert not os.path.exists(tmp_path / (TRUNCATE_REDO + ".tmp"))


@pytest.mark.parametrize("mode", ["cut", "zeros", "garbage"])
def test_torn_rewrite_at_every_byte_is_redone(
    tmp_path: Path, mode: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The state a crash leaves while the rewritten batch (or recovery's own redo of
    it) is being written: the segment cut at the batch, any prefix of the new batch
    written, possibly followed by junk. Every one recovers to exactly the prefix."""
    entries = build(tmp_path / "src")
    src = tmp_path / "src"
    log = open_log(src)
    crash_at(log, "ftruncated", monkeypatch)
    with pytest.raises(Crash):
        log.truncate_suffix(33)
    abandon(log)
    redo = read_truncate_redo(str(src))
    assert redo is not None
    seg_name = f"{redo.segment_first:020d}.log"
    assert os.path.getsize(src / seg_name) == redo.offset
    rng = random.Random(7)
    work = tmp_path / "work"
    for k in range(len(redo.batch) + 1):
        shutil.rmtree(work, ignore_errors=True)
        shutil.copytree(src, work)
        junk = b""
        if mode == "zeros":
            junk = b"\0" * rng.randrange(0, 300)
        elif mode == "garbage":
            junk = rng.randbytes(rng.randrange(0, 300))
        with open(work / seg_name, "r+b") as f:
            f.seek(redo.offset)
            f.write(redo.batch[:k] + junk)
        try:
            check(work, entries[:33])
        except Exception as exc:
            raise AssertionError(f"mode={mode} k={k}") from exc


def test_cut_before_first_index_inside_a_batch(tmp_path: Path) -> None:
    """The kept part of the batch may be compacted away already: still rewritten."""
    log = open_log(tmp_path)
    log.append(batch(1, 10, term=3))
    log.truncate_prefix(8)
    log.truncate_suffix(7)
    assert (log.first_index(), log.last_index(), log.term(7)) == (8, 7, 3)
    log.close()
    log = open_log(tmp_path)
    assert (log.first_index(), log.last_index(), log.term(7)) == (8, 7, 3)
    log.append(batch(8, 2, term=4))
    log.close()
    log = open_log(tmp_path)
    assert log.entries(8, 10) == batch(8, 2, term=4)
    log.close()


def test_damaged_journal_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    build(tmp_path)
    log = open_log(tmp_path)
    crash_at(log, "redo_written", monkeypatch)
    with pytest.raises(Crash):
        log.truncate_suffix(27)
    abandon(log)
    journal = str(tmp_path / TRUNCATE_REDO)
    flip_bit(journal, os.path.getsize(journal) - 1)
    with pytest.raises(CorruptLogError) as info:
        open_log(tmp_path)
    assert info.value.path == journal


def test_interrupted_reset_wins_over_a_journal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    build(tmp_path)
    log = open_log(tmp_path)
    crash_at(log, "redo_written", monkeypatch)
    with pytest.raises(Crash):
        log.truncate_suffix(27)
    log._write_log_meta(100, 5, 0x01)  # as if a reset had started (and crashed)
    abandon(log)
    log = open_log(tmp_path)
    assert (log.first_index(), log.last_index(), log.term(99)) == (100, 99, 5)
    assert segments(str(tmp_path)) == []
    assert not os.path.exists(tmp_path / TRUNCATE_REDO)
    log.close()


def test_disk_reads_are_verified_whole_blocks(tmp_path: Path) -> None:
    """A bit flip in a batch read from disk is reported with the batch's offset, and
    nothing of the block holding it is returned; a block read before the damage is
    then served, verified, from the LRU."""
    entries = build(tmp_path)
    log = open_log(tmp_path)
    segs = segments(str(tmp_path))
    seg = segs[1]
    first = int(os.path.basename(seg)[:20])
    # Damage the second batch of that segment after open: a read of it must fail.
    size0 = SEGMENT_HEADER_SIZE + batch_size(
        6, sum(len(e.data) for e in entries[first - 1 : first + 5])
    )
    flip_bit(seg, size0 + 40)
    if BLOCK_BYTES == 1:
        # The first batch is a block of its own: intact, returned.
        assert log.entries(first, first + 1) == entries[first - 1 : first]
    else:
        # It shares its block with the damaged batch: the whole block is refused.
        with pytest.raises(CorruptLogError) as info:
            log.entries(first, first + 1)
        assert (info.value.path, info.value.offset) == (seg, size0)
    with pytest.raises(CorruptLogError) as info:
        log.entries(first + 6, first + 7)
    assert (info.value.path, info.value.offset) == (seg, size0)
    # A block read (and verified) before its damage is served from the LRU.
    seg2 = segs[2]
    first2 = int(os.path.basename(seg2)[:20])
    assert log.entries(first2, first2 + 1) == entries[first2 - 1 : first2]
    flip_bit(seg2, SEGMENT_HEADER_SIZE + 30)
    assert log.entries(first2, first2 + 6) == entries[first2 - 1 : first2 + 5]
    log.close()
