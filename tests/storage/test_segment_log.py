"""SegmentLogStorage: the LogStorage contract, segment rolls, the cache, concurrency."""

from __future__ import annotations

import os
import stat
import threading
from pathlib import Path

import pytest

from pyjraft.core.log_reader import LogUnavailableError
from pyjraft.core.types import Entry, EntryType
from pyjraft.storage import SegmentLogStorage, StorageError
from pyjraft.storage import segment_log as segment_log_module
from tests.storage.helpers import batch, entry, segments


def open_log(path: Path, **kw: int) -> SegmentLogStorage:
    kw.setdefault("segment_bytes", 512)
    kw.setdefault("cache_bytes", 256)
    return SegmentLogStorage.open(path, **kw)  # type: ignore[arg-type]


def test_empty_log(tmp_path: Path) -> None:
    log = open_log(tmp_path)
    assert (log.first_index(), log.last_index(), log.term(0)) == (1, 0, 0)
    assert log.entries(1, 1) == []
    with pytest.raises(LogUnavailableError):
        log.term(1)
    with pytest.raises(LogUnavailableError):
        log.entries(1, 2)
    log.close()


def test_append_read_and_reopen(tmp_path: Path) -> None:
    log = open_log(tmp_path)
    expected: list[Entry] = []
    for b in range(30):
        es = batch(len(expected) + 1, 1 + b % 5, term=1 + b // 10)
        log.append(es)
        expected.extend(es)
    assert len(segments(str(tmp_path))) > 3, "small segment_bytes must roll"
    assert log.entries(1, len(expected) + 1) == expected
    log.close()
    log = open_log(tmp_path)
    assert log.last_index() == len(expected)
    assert log.entries(1, len(expected) + 1) == expected
    assert [log.term(e.index) for e in expected] == [e.term for e in expected]
    # Each segment is named after its first record.
    for path in segments(str(tmp_path)):
        first = int(os.path.basename(path)[:20])
        assert log.entries(first, first + 1)[0].index == first
    log.close()


def test_append_rejects_gap_overlap_and_leaves_log_unchanged(tmp_path: Path) -> None:
    log = open_log(tmp_path)
    log.append(batch(1, 3))
    with pytest.raises(ValueError):
        log.append(batch(5, 1))
    with pytest.raises(ValueError):
        log.append(batch(3, 2))
    with pytest.raises(ValueError):
        log.append([entry(4), entry(6)])
    assert log.last_index() == 3
    log.append(batch(4, 1))
    assert log.entries(1, 5) == batch(1, 4)
    log.close()


def test_append_copies_mutable_data(tmp_path: Path) -> None:
    log = open_log(tmp_path, cache_bytes=1 << 20)
    data = bytearray(b"abc")
    log.append([Entry(1, 1, EntryType.NORMAL, data)])  # type: ignore[arg-type]
    data[0] = ord("X")
    (got,) = log.entries(1, 2)
    assert got.data == b"abc" and type(got.data) is bytes
    log.close()


@pytest.mark.parametrize("cache_bytes", [0, 300, 1 << 20])
def test_max_bytes_returns_a_prefix_of_at_least_one(tmp_path: Path, cache_bytes: int) -> None:
    log = open_log(tmp_path, cache_bytes=cache_bytes)
    es = batch(1, 60)
    for i in range(0, 60, 7):
        log.append(es[i : i + 7])
    for lo in (1, 17, 40, 60):
        for max_bytes in (0, 1, 50, 200, 1000, 10**6):
            got = log.entries(lo, 61, max_bytes)
            want: list[Entry] = []
            size = 0
            for e in es[lo - 1 :]:
                size += e.size
                if want and size > max_bytes:
                    break
                want.append(e)
            assert got == want, (lo, max_bytes)
    log.close()


def test_truncate_suffix_across_segments(tmp_path: Path) -> None:
    log = open_log(tmp_path)
    for i in range(1, 101, 10):
        log.append(batch(i, 10))
    n_before = len(segments(str(tmp_path)))
    log.truncate_suffix(25)
    assert log.last_index() == 25
    assert len(segments(str(tmp_path))) < n_before
    log.append(batch(26, 5, term=2))
    log.close()
    log = open_log(tmp_path)
    assert log.entries(1, 31) == batch(1, 25) + batch(26, 5, term=2)
    with pytest.raises(ValueError):
        log.truncate_suffix(-1)
    log.truncate_suffix(0)
    assert (log.first_index(), log.last_index()) == (1, 0)
    log.close()
    log = open_log(tmp_path)
    assert (log.first_index(), log.last_index()) == (1, 0)
    log.close()


def test_truncate_suffix_at_segment_boundary_deletes_that_segment(tmp_path: Path) -> None:
    log = open_log(tmp_path)
    for i in range(1, 101, 10):
        log.append(batch(i, 10))
    firsts = [int(os.path.basename(p)[:20]) for p in segments(str(tmp_path))]
    log.truncate_suffix(firsts[2] - 1)
    assert [int(os.path.basename(p)[:20]) for p in segments(str(tmp_path))] == firsts[:2]
    log.close()


def test_truncate_prefix_keeps_previous_term_across_reopen(tmp_path: Path) -> None:
    log = open_log(tmp_path)
    for i in range(1, 101, 10):
        log.append(batch(i, 10, term=i))
    n_before = len(segments(str(tmp_path)))
    log.truncate_prefix(50)
    assert (log.first_index(), log.term(49)) == (50, 41)
    assert len(segments(str(tmp_path))) < n_before
    with pytest.raises(LogUnavailableError):
        log.entries(49, 51)
    with pytest.raises(LogUnavailableError):
        log.term(48)
    log.close()
    log = open_log(tmp_path)
    assert (log.first_index(), log.last_index(), log.term(49)) == (50, 100, 41)
    assert log.entries(50, 101) == [e for i in range(41, 101, 10) for e in batch(i, 10, i)][9:]
    # Compact everything: all segments go, the next append starts a new one.
    log.truncate_prefix(101)
    assert segments(str(tmp_path)) == []
    assert (log.first_index(), log.last_index(), log.term(100)) == (101, 100, 91)
    with pytest.raises(ValueError):
        log.truncate_prefix(103)
    log.close()
    log = open_log(tmp_path)
    assert (log.first_index(), log.last_index(), log.term(100)) == (101, 100, 91)
    log.append(batch(101, 3, term=92))
    log.close()
    log = open_log(tmp_path)
    assert log.entries(101, 104) == batch(101, 3, term=92)
    log.close()


def test_reset(tmp_path: Path) -> None:
    log = open_log(tmp_path)
    log.append(batch(1, 50))
    log.reset(30, 7)
    assert segments(str(tmp_path)) == []
    assert (log.first_index(), log.last_index(), log.term(29)) == (30, 29, 7)
    log.append(batch(30, 2, term=8))
    log.close()
    log = open_log(tmp_path)
    assert (log.first_index(), log.last_index(), log.term(29)) == (30, 31, 7)
    assert log.entries(30, 32) == batch(30, 2, term=8)
    log.close()


def test_closed_log_raises(tmp_path: Path) -> None:
    log = open_log(tmp_path)
    log.append(batch(1, 2))
    log.close()
    log.close()
    for call in (
        lambda: log.append(batch(3, 1)),
        lambda: log.entries(1, 2),
        lambda: log.term(1),
        log.last_index,
        lambda: log.truncate_suffix(1),
    ):
        with pytest.raises(ValueError):
            call()


def test_directory_is_locked_while_open(tmp_path: Path) -> None:
    log = open_log(tmp_path)
    with pytest.raises(StorageError, match="in use"):
        open_log(tmp_path)
    log.close()
    open_log(tmp_path).close()


def test_sync_false_still_persists_across_clean_close(tmp_path: Path) -> None:
    log = SegmentLogStorage(tmp_path, sync=False, segment_bytes=512)
    log.append(batch(1, 40))
    log.close()
    log = SegmentLogStorage(tmp_path, sync=False)
    assert log.entries(1, 41) == batch(1, 40)
    log.close()


def test_failed_fsync_poisons_the_log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    log = open_log(tmp_path)
    log.append(batch(1, 2))

    def broken(fd: int) -> None:
        raise OSError(5, "EIO")

    monkeypatch.setattr(segment_log_module, "sync_data", broken)
    with pytest.raises(StorageError):
        log.append(batch(3, 1))
    assert log.last_index() == 2
    monkeypatch.undo()
    with pytest.raises(StorageError, match="failed earlier"):
        log.append(batch(3, 1))
    assert log.entries(1, 3) == batch(1, 2)
    log.close()


def test_reads_are_not_blocked_by_an_fsync(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    log = open_log(tmp_path, cache_bytes=0)
    log.append(batch(1, 10))
    in_fsync = threading.Event()
    release = threading.Event()
    real = segment_log_module.sync_data  # type: ignore[attr-defined]

    def slow_sync(fd: int) -> None:
        in_fsync.set()
        assert release.wait(10)
        real(fd)

    monkeypatch.setattr(segment_log_module, "sync_data", slow_sync)
    errors: list[BaseException] = []

    def writer() -> None:
        try:
            log.append(batch(11, 5))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    t = threading.Thread(target=writer)
    t.start()
    try:
        assert in_fsync.wait(10)
        # The writer is inside fsync: every read must complete now, and must not
        # see the batch in flight yet.
        assert log.last_index() == 10
        assert log.entries(1, 11) == batch(1, 10)
        assert log.term(10) == 1
    finally:
        release.set()
        t.join(10)
    assert not errors
    assert log.entries(1, 16) == batch(1, 15)
    log.close()


def test_concurrent_reader_sees_only_whole_valid_entries(tmp_path: Path) -> None:
    log = open_log(tmp_path, sync=False, cache_bytes=2000)
    done = threading.Event()
    failures: list[str] = []

    def reader() -> None:
        while not done.is_set():
            last = log.last_index()
            lo = max(1, last - 30)
            got = log.entries(lo, last + 1)
            if got != batch(lo, last + 1 - lo):
                failures.append(f"entries({lo}, {last + 1})")
                return
            if last and log.term(last) != 1:
                failures.append(f"term({last})")
                return

    t = threading.Thread(target=reader)
    t.start()
    try:
        nxt = 1
        for n in range(1, 200):
            log.append(batch(nxt, 1 + n % 7))
            nxt += 1 + n % 7
    finally:
        done.set()
        t.join(10)
    assert not failures
    log.close()


def test_one_write_and_one_fdatasync_per_batch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = open_log(tmp_path, segment_bytes=1 << 20)
    log.append(batch(1, 1))
    calls = {"pwrite": 0, "write": 0, "sync": 0, "fsync": 0}
    real_pwrite, real_write, real_fsync = os.pwrite, os.write, os.fsync
    real_sync = segment_log_module.sync_data  # type: ignore[attr-defined]

    def pwrite(fd: int, data: bytes, offset: int) -> int:
        calls["pwrite"] += 1
        return real_pwrite(fd, data, offset)

    def write(fd: int, data: bytes) -> int:
        calls["write"] += 1
        return real_write(fd, data)

    def sync(fd: int) -> None:
        calls["sync"] += 1
        real_sync(fd)

    def fsync(fd: int) -> None:  # of a file or of the directory
        calls["fsync"] += 1
        real_fsync(fd)

    monkeypatch.setattr(os, "pwrite", pwrite)
    monkeypatch.setattr(os, "write", write)
    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(segment_log_module, "sync_data", sync)
    log.append(batch(2, 500))
    assert calls == {"pwrite": 1, "write": 0, "sync": 1, "fsync": 0}
    monkeypatch.undo()
    log.close()


def test_a_new_segment_is_made_durable_in_its_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = open_log(tmp_path, segment_bytes=100)
    log.append(batch(1, 5))
    dirs: list[str] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        if stat.S_ISDIR(os.fstat(fd).st_mode):
            dirs.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    log.append(batch(6, 5))  # the first segment is over 100 bytes: roll
    assert dirs == [str(tmp_path)]
    assert len(segments(str(tmp_path))) == 2
    monkeypatch.undo()
    log.close()


def test_invalid_batch_changes_nothing_on_disk(tmp_path: Path) -> None:
    log = open_log(tmp_path, segment_bytes=100)
    log.append(batch(1, 5))
    before = {p: os.path.getsize(p) for p in segments(str(tmp_path))}
    bad_type = Entry(1, 6, 7, b"x")  # type: ignore[arg-type]
    for bad in ([entry(6), bad_type], [entry(6), entry(8)], [Entry(-1, 6, EntryType.NORMAL, b"")]):
        with pytest.raises(ValueError):
            log.append(bad)
    assert {p: os.path.getsize(p) for p in segments(str(tmp_path))} == before
    assert log.last_index() == 5
    log.close()


def test_cache_budget_is_memory_not_payload(tmp_path: Path) -> None:
    # 100-byte entries cost about 2.5 times their data in Python objects: a
    # budget counting data alone held twice the budget in objects.
    import gc
    import tracemalloc

    budget = 8 << 20
    log = SegmentLogStorage.open(tmp_path, segment_bytes=64 << 20, sync=False, cache_bytes=budget)

    def data(i: int) -> bytes:
        return i.to_bytes(4, "little") * 25  # 100 bytes, a new object each

    tracemalloc.start()
    try:
        gc.collect()
        before = tracemalloc.get_traced_memory()[0]
        nxt = 1
        for _ in range(600):  # 60,000 entries, 6 MB of data: past the budget, all through the cache
            log.append([Entry(1, i, EntryType.NORMAL, data(i)) for i in range(nxt, nxt + 100)])
            nxt += 100
        gc.collect()
        used = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    # The cache, the evicted entries it drops in bulk (at most 4096 of them, a
    # million bytes here) and the log's small index.
    assert used <= budget * 1.15, f"{used} bytes held for a {budget}-byte cache"
    assert log.entries(nxt - 100, nxt) == [
        Entry(1, i, EntryType.NORMAL, data(i)) for i in range(nxt - 100, nxt)
    ]
    log.close()
