"""Prefix truncation (compaction) is crash-safe whatever order its unlinks reach the disk.

`truncate_prefix` records the new first index in ``log_meta`` (durably) and only
then unlinks the segments lying wholly before it. Unlinks are directory
updates that reach the disk in any order until the directory is fsynced, so
after a crash any subset of those segments (and of their sidecar indexes) may
be gone. Every such state must open as the compacted log.
"""

from __future__ import annotations

import itertools
import os
import shutil
from pathlib import Path

import pytest

from pyjraft.core.types import Entry
from pyjraft.storage import SegmentLogStorage, StorageError
from tests.storage.helpers import batch, segments

SEG = 400


class Crash(Exception):
    """Stands in for the process dying at a crash point."""


def build(path: Path) -> list[Entry]:
    """Batches of 5 entries, terms rising every 10, in several segments (1..50)."""
    log = SegmentLogStorage(path, segment_bytes=SEG)
    out: list[Entry] = []
    for lo in range(1, 51, 5):
        es = batch(lo, 5, term=1 + lo // 10)
        log.append(es)
        out.extend(es)
    log.close()
    return out


def firsts(path: Path) -> list[int]:
    return [int(os.path.basename(p)[:20]) for p in segments(str(path))]


def check(path: Path, entries: list[Entry], first: int, append: bool = True) -> None:
    """The log opens compacted to ``first``, twice, and takes the next append."""
    last = len(entries)
    prev_term = entries[first - 2].term if first > 1 else 0
    for _ in range(2):
        log = SegmentLogStorage(path, segment_bytes=SEG)
        try:
            assert (log.first_index(), log.last_index()) == (first, last)
            assert log.term(first - 1) == prev_term
            assert log.entries(first, last + 1) == entries[first - 1 :]
        finally:
            log.close()
        # Nothing wholly before `first` is left behind.
        fs = firsts(path)
        assert all(f <= first for f in fs[:1]) or not fs
        assert len([f for f in fs if f < first]) <= 1
    if not append:
        return
    log = SegmentLogStorage(path, segment_bytes=SEG)
    nxt = batch(last + 1, 3, term=99)
    log.append(nxt)
    log.close()
    log = SegmentLogStorage(path, segment_bytes=SEG)
    try:
        assert log.entries(first, last + 4) == entries[first - 1 :] + nxt
    finally:
        log.close()


def state_after_log_meta(src: Path, dst: Path, first_kept: int) -> None:
    """Copy ``src`` to ``dst`` and run ``truncate_prefix(first_kept)`` there up to
    the point where ``log_meta`` is durable and no segment is unlinked yet."""
    shutil.copytree(src, dst)
    log = SegmentLogStorage(dst, segment_bytes=SEG)

    def hook(where: str) -> None:
        if where == "log_meta_written":
            raise Crash(where)

    log._crash_point = hook  # type: ignore[method-assign]
    with pytest.raises(Crash):
        log.truncate_prefix(first_kept)
    log._close_files()  # a dead process writes nothing more


def doomed_segments(path: Path, first_kept: int, last: int) -> list[int]:
    """First indices of the segments lying wholly before ``first_kept``."""
    fs = firsts(path)
    ends = [f - 1 for f in fs[1:]] + [last]
    return [f for f, end in zip(fs, ends, strict=True) if end < first_kept]


@pytest.mark.parametrize("where", ["mid-segment", "segment start", "segment end", "everything"])
def test_any_subset_of_compacted_segments_may_be_missing_after_a_crash(
    tmp_path: Path, where: str
) -> None:
    src = tmp_path / "src"
    entries = build(src)
    fs = firsts(src)
    assert len(fs) >= 5
    first_kept = {
        "mid-segment": fs[3] + 2,
        "segment start": fs[3],
        "segment end": fs[4] - 1,
        "everything": len(entries) + 1,
    }[where]
    base = tmp_path / "base"
    state_after_log_meta(src, base, first_kept)
    doomed = doomed_segments(base, first_kept, len(entries))
    assert len(doomed) >= 3, doomed
    names = [f"{f:020d}" for f in doomed]
    # Every subset of unlinked segments, each with or without its sidecar index:
    # every state any unlink order can leave at any step.
    states = itertools.product(("kept", "log gone", "both gone"), repeat=len(names))
    for n, gone in enumerate(states):
        work = tmp_path / f"w{n}"
        shutil.copytree(base, work)
        for name, what in zip(names, gone, strict=True):
            if what in ("log gone", "both gone"):
                os.unlink(work / f"{name}.log")
            if what == "both gone" and (work / f"{name}.idx").exists():
                os.unlink(work / f"{name}.idx")
        try:
            check(work, entries, first_kept, append=n % 8 == 0)
        except Exception as exc:
            raise AssertionError(f"first_kept={first_kept} state={gone}") from exc
        shutil.rmtree(work)


@pytest.mark.parametrize("where", ["mid-segment", "everything"])
def test_crash_after_each_unlink_of_a_real_truncate_prefix(
    tmp_path: Path, where: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The real code path, cut short after each of its unlinks (the test above
    covers every order the disk may apply them in)."""
    src = tmp_path / "src"
    entries = build(src)
    first_kept = firsts(src)[3] + 2 if where == "mid-segment" else len(entries) + 1
    real_unlink = os.unlink
    for stop in range(20):
        work = tmp_path / f"{stop}"
        shutil.copytree(src, work)
        log = SegmentLogStorage(work, segment_bytes=SEG)
        unlinked = 0

        def unlink(path: str, *a: object, _stop: int = stop, **k: object) -> None:
            nonlocal unlinked
            if unlinked == _stop:
                raise Crash(path)
            real_unlink(path)
            unlinked += 1

        monkeypatch.setattr(os, "unlink", unlink)
        try:
            log.truncate_prefix(first_kept)
            done = True
        except (Crash, StorageError):
            done = False
        finally:
            monkeypatch.setattr(os, "unlink", real_unlink)
        log._close_files()
        check(work, entries, first_kept)
        if done:
            break
    else:
        raise AssertionError("truncate_prefix never finished")


def test_compacted_everything_then_appended_before_the_unlinks_were_durable(
    tmp_path: Path,
) -> None:
    """After compacting everything, new segments start at the new first index; an
    old segment still on disk before them is removed, not taken for a gap."""
    src = tmp_path / "src"
    entries = build(src)
    first_kept = len(entries) + 1
    base = tmp_path / "base"
    state_after_log_meta(src, base, first_kept)
    doomed = doomed_segments(base, first_kept, len(entries))
    log = SegmentLogStorage(base, segment_bytes=SEG)  # finishes the compaction
    more = batch(first_kept, 5, term=8)
    log.append(more)
    log.close()
    new = sorted(set(firsts(base)) - set(doomed))
    assert new == [first_kept]
    for keep in doomed:  # put back any one of the old segments, as if its unlink was lost
        work = tmp_path / f"w{keep}"
        shutil.copytree(base, work)
        shutil.copy(src / f"{keep:020d}.log", work / f"{keep:020d}.log")
        log = SegmentLogStorage(work, segment_bytes=SEG)
        try:
            assert (log.first_index(), log.last_index()) == (first_kept, first_kept + 4)
            assert log.entries(first_kept, first_kept + 5) == more
            assert log.term(first_kept - 1) == entries[-1].term
        finally:
            log.close()
        assert firsts(work) == [first_kept]
