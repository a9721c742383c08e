"""A torn tail is told from damage by structure, never by what happens to parse.

Each test builds the exact bytes a power loss can leave (issue 13, section 6):
a torn last batch whose own data holds something shaped like a batch; a new
segment whose blocks show stale bytes of an older file; the same file's old
bytes behind a torn append after a truncation. Recovery must cut them as a torn
tail, and still refuse real damage: a synced batch damaged with a later batch
written after it.
"""

from __future__ import annotations

import os
import random
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from pyjraft.core.types import Entry, EntryType
from pyjraft.storage import CorruptLogError, SegmentLogStorage
from pyjraft.storage.record import encode_batch
from pyjraft.storage.segment_file import SEGMENT_HEADER_SIZE
from tests.storage.helpers import batch, batch_spans, segment_key, segments

PAGE = 4096
SEG = 1 << 20


def open_log(path: Path, segment_bytes: int = SEG) -> SegmentLogStorage:
    return SegmentLogStorage(path, segment_bytes=segment_bytes, cache_bytes=0)


def big_entry_with_inner(index: int, inner: list[bytes], term: int = 1) -> Entry:
    """An entry whose data holds each of ``inner`` (batch-shaped bytes) after 5 KiB of
    filler, so that they lie in the batch's later pages."""
    rng = random.Random(index)
    data = b"".join(rng.randbytes(5000) + b for b in inner) + rng.randbytes(3000)
    return Entry(term, index, EntryType.NORMAL, data)


def torn_tail_layout(tmp_path: Path) -> tuple[Path, int, int, list[Entry]]:
    """A log whose last batch E (index 11) holds, in its data, a copy of a batch of
    another segment file and a batch made for this very file at the offset where
    the batch after E would go. Returns the segment, E's offset, E's end, and the
    entries before E."""
    log = open_log(tmp_path, segment_bytes=300)
    log.append(batch(1, 5))
    log.append(batch(6, 5))  # rolls: a second segment file
    log.close()
    other = segments(str(tmp_path))[0]
    o_start, o_end, _ = batch_spans(other)[0]
    foreign = Path(other).read_bytes()[o_start:o_end]
    log = open_log(tmp_path)
    log.append(batch(11, 1))  # reopened: appends go to a new segment (index 11)
    seg = segments(str(tmp_path))[-1]
    e_start = os.path.getsize(seg)
    key = segment_key(seg)
    # E's size does not depend on the inner bytes' content, so the batch that would
    # follow E can be made for the offset where it would go, and put inside E.
    inner_len = len(encode_batch(batch(13, 1), 13, 1, key, 0).buf)
    shaped = big_entry_with_inner(12, [foreign, bytes(inner_len)])
    e_end = e_start + len(encode_batch([shaped], 12, 1, key, e_start).buf)
    follower = bytes(encode_batch(batch(13, 1), 13, 1, key, e_end).buf)
    e = big_entry_with_inner(12, [foreign, follower])
    log.append([e])
    log.close()
    raw = Path(seg).read_bytes()
    assert len(raw) == e_end
    page_end = (e_start // PAGE + 1) * PAGE
    for inner in (foreign, follower):
        assert raw.index(inner, e_start) > page_end  # in a later page of E
    return Path(seg), e_start, os.path.getsize(seg), batch(1, 11)


def check_recovers_to(path: Path, want: list[Entry]) -> None:
    for _ in range(2):  # recovery is stable
        log = open_log(path)
        try:
            assert (log.first_index(), log.last_index()) == (1, len(want))
            assert log.entries(1, len(want) + 1) == want
        finally:
            log.close()
    log = open_log(path)
    more = batch(len(want) + 1, 2, term=9)
    log.append(more)
    log.close()
    log = open_log(path)
    assert log.entries(1, len(want) + 3) == want + more
    log.close()


def test_torn_last_batch_cut_short_holding_batch_shaped_bytes_is_a_torn_tail(
    tmp_path: Path,
) -> None:
    seg, e_start, e_end, before = torn_tail_layout(tmp_path / "src")
    raw = seg.read_bytes()
    # Every inner batch lies wholly before the cut: the file ends inside E.
    for cut in (e_end - 1, e_end - 2000, e_start + PAGE + 100):
        work = tmp_path / f"cut{cut}"
        shutil.copytree(tmp_path / "src", work)
        (work / seg.name).write_bytes(raw[:cut])
        check_recovers_to(work, before)
        assert os.path.getsize(work / seg.name) == e_start


def test_torn_last_batch_whose_first_page_was_lost_is_a_torn_tail(tmp_path: Path) -> None:
    """The pages of E after the first reached the disk, its header's page did not."""
    seg, e_start, _e_end, before = torn_tail_layout(tmp_path)
    raw = bytearray(seg.read_bytes())
    page_end = (e_start // PAGE + 1) * PAGE
    raw[e_start:page_end] = bytes(page_end - e_start)  # the file was shorter: zeros
    seg.write_bytes(bytes(raw))
    check_recovers_to(tmp_path, before)


def test_damaged_synced_batch_followed_by_a_later_batch_is_refused(tmp_path: Path) -> None:
    """The same lost page, but E was acknowledged: a batch was written after it.
    That later batch proves E was durable, so this is damage, not a torn tail."""
    seg, e_start, e_end, _before = torn_tail_layout(tmp_path)
    log = open_log(tmp_path)
    log.close()
    # Append the batch after E in E's file, as the process that wrote E would have.
    key = segment_key(str(seg))
    nxt = bytes(encode_batch(batch(13, 1), 13, 1, key, e_end).buf)
    raw = bytearray(seg.read_bytes()) + nxt
    page_end = (e_start // PAGE + 1) * PAGE
    raw[e_start:page_end] = bytes(page_end - e_start)
    seg.write_bytes(bytes(raw))
    size = len(raw)
    with pytest.raises(CorruptLogError, match="written after it") as info:
        open_log(tmp_path)
    assert (info.value.path, info.value.offset) == (str(seg), e_start)
    assert os.path.getsize(seg) == size, "nothing may be truncated"


@pytest.mark.parametrize("stale", ["same name", "another segment"])
def test_new_segment_showing_stale_bytes_of_an_older_file_is_a_torn_tail(
    tmp_path: Path, stale: str
) -> None:
    """A segment created, its header made durable, its first batch written but not
    synced: after power loss its blocks show what an older file left there."""
    log = open_log(tmp_path, segment_bytes=400)
    for lo in range(1, 41, 4):
        log.append(batch(lo, 4))
    log.close()
    segs = segments(str(tmp_path))
    assert len(segs) >= 3
    last = segs[-1]
    n = int(os.path.basename(last)[:20])
    old = {"same name": Path(last), "another segment": Path(segs[1])}[stale].read_bytes()
    log = open_log(tmp_path, segment_bytes=400)
    log.truncate_suffix(n - 1)  # the last segment goes whole
    log.append(batch(n, 12, term=2))  # a new file of the same name, longer than a batch
    log.close()
    new = Path(last).read_bytes()
    # Header durable; the batch's blocks hold the older file's bytes.
    Path(last).write_bytes(new[:SEGMENT_HEADER_SIZE] + old[SEGMENT_HEADER_SIZE : len(new)])
    check_recovers_to(tmp_path, batch(1, n - 1))


@contextmanager
def recording_writes(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[tuple[str, int, int]]]:
    """Record (path, offset, length) of every ``os.pwrite``."""
    writes: list[tuple[str, int, int]] = []
    real = os.pwrite

    def pwrite(fd: int, data: bytes, offset: int) -> int:
        n = real(fd, data, offset)
        writes.append((os.readlink(f"/proc/self/fd/{fd}"), offset, n))
        return n

    monkeypatch.setattr(os, "pwrite", pwrite)
    yield writes
    monkeypatch.setattr(os, "pwrite", real)


@pytest.mark.parametrize("cut", ["mid-segment", "segment boundary", "mid-batch"])
def test_torn_append_after_a_truncation_never_shows_the_truncated_batches(
    tmp_path: Path, cut: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """truncate_suffix, then an append whose write is lost: its blocks may show what
    the same file held before the truncation. Those batches were cut away (they
    conflicted with a leader) and must never come back."""
    log = open_log(tmp_path, segment_bytes=500)
    for lo in range(1, 61, 4):
        log.append(batch(lo, 4))
    log.close()
    segs = segments(str(tmp_path))
    firsts = [int(os.path.basename(p)[:20]) for p in segs]
    if cut == "segment boundary":
        last_kept = firsts[-2] - 1
    elif cut == "mid-segment":
        last_kept = firsts[-2] + 3  # a batch boundary inside the segment
    else:
        last_kept = firsts[-2] + 1
    before = {p: Path(p).read_bytes() for p in segs}
    log = open_log(tmp_path, segment_bytes=500)
    log.truncate_suffix(last_kept)
    with recording_writes(monkeypatch) as writes:
        log.append(batch(last_kept + 1, 4, term=7))
    log.close()
    path, offset, length = writes[-1]  # the batch: written, never synced
    raw = bytearray(Path(path).read_bytes())
    old = before.get(path, b"")[offset : offset + length]
    raw[offset : offset + length] = old + bytes(length - len(old))
    Path(path).write_bytes(bytes(raw))
    check_recovers_to(tmp_path, batch(1, last_kept))


def test_a_reopened_or_truncated_segment_is_never_appended_to(tmp_path: Path) -> None:
    """Every byte of a segment is written once: appends after an open or a
    truncate_suffix go to a new file."""
    log = open_log(tmp_path)
    log.append(batch(1, 4))
    log.append(batch(5, 4))  # same file
    log.close()
    assert len(segments(str(tmp_path))) == 1
    first_size = os.path.getsize(segments(str(tmp_path))[0])
    log = open_log(tmp_path)
    log.append(batch(9, 4))
    assert len(segments(str(tmp_path))) == 2
    assert os.path.getsize(segments(str(tmp_path))[0]) == first_size
    log.truncate_suffix(10)
    cut_size = os.path.getsize(segments(str(tmp_path))[1])
    log.append(batch(11, 2, term=3))
    assert len(segments(str(tmp_path))) == 3
    assert os.path.getsize(segments(str(tmp_path))[1]) == cut_size
    log.close()
    check_recovers_to(tmp_path, batch(1, 10) + batch(11, 2, term=3))
