"""File-descriptor exhaustion is retryable, never taken for corruption (issue 13, section 3/6).

With no descriptor left (EMFILE for the process, ENFILE for the system), the
storage raises `TransientStorageError` before changing anything: the files on
disk and the storage object are as before the call, and the same call
succeeds once descriptors are back. Every other IO failure stays fatal.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from pyjraft.core.types import HardState
from pyjraft.storage import (
    FileMetaStorage,
    SegmentLogStorage,
    StorageError,
    TransientStorageError,
)
from tests.storage.helpers import batch

SEG = 400


def files(directory: Path) -> dict[str, bytes]:
    """Every file of ``directory`` (not the lock) and its bytes."""
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir()) if p.name != "log.lock"}


@contextmanager
def failing_open(
    monkeypatch: pytest.MonkeyPatch, when: Callable[[str], bool], code: int = errno.EMFILE
) -> Iterator[list[str]]:
    """Make ``os.open`` fail with ``code`` for every path ``when`` accepts; yield
    the paths refused."""
    refused: list[str] = []
    real = os.open

    def fake(path: str | os.PathLike[str], flags: int, *a: object, **k: object) -> int:
        p = os.fspath(path)
        if when(p):
            refused.append(p)
            raise OSError(code, os.strerror(code), p)
        return real(path, flags, *a, **k)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "open", fake)
    try:
        yield refused
    finally:
        monkeypatch.setattr(os, "open", real)


@pytest.mark.parametrize("code", [errno.EMFILE, errno.ENFILE])
@pytest.mark.parametrize("which", ["meta.tmp", "directory"])
def test_meta_save_without_descriptors_is_transient_and_changes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, code: int, which: str
) -> None:
    """The term change that took a leader down for good in issue 13."""
    meta = FileMetaStorage(tmp_path)
    meta.save(HardState(term=4, vote="a"))
    before = files(tmp_path)

    def when(p: str) -> bool:
        return p.endswith("meta.tmp") if which == "meta.tmp" else p == str(tmp_path)

    with (
        failing_open(monkeypatch, when, code) as refused,
        pytest.raises(TransientStorageError) as info,
    ):
        meta.save(HardState(term=5, vote="b"))
    assert refused
    assert isinstance(info.value, StorageError)
    assert files(tmp_path) == before
    assert meta.load() == HardState(term=4, vote="a")
    meta.save(HardState(term=5, vote="b"))  # the retry
    assert FileMetaStorage(tmp_path).load() == HardState(term=5, vote="b")


def test_meta_load_without_descriptors_is_transient(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    meta = FileMetaStorage(tmp_path)
    meta.save(HardState(term=2, vote="x"))
    with (
        failing_open(monkeypatch, lambda p: p.endswith("/meta")),
        pytest.raises(TransientStorageError),
    ):
        meta.load()
    assert meta.load() == HardState(term=2, vote="x")


@pytest.mark.parametrize("code", [errno.EIO, errno.ENOSPC, errno.EACCES])
def test_other_open_failures_stay_fatal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, code: int
) -> None:
    meta = FileMetaStorage(tmp_path)
    with (
        failing_open(monkeypatch, lambda p: p.endswith("meta.tmp"), code),
        pytest.raises(StorageError) as info,
    ):
        meta.save(HardState(term=1))
    assert not isinstance(info.value, TransientStorageError)
    log = SegmentLogStorage(tmp_path / "log", segment_bytes=SEG)
    log.append(batch(1, 3))
    log.close()
    log = SegmentLogStorage(tmp_path / "log", segment_bytes=SEG)  # appends roll
    with (
        failing_open(monkeypatch, lambda p: p.endswith(".log"), code),
        pytest.raises(StorageError) as info,
    ):
        log.append(batch(4, 3))
    assert not isinstance(info.value, TransientStorageError)
    with pytest.raises(StorageError, match="failed earlier"):
        log.append(batch(4, 3))
    log.close()


def new_log(path: Path) -> SegmentLogStorage:
    log = SegmentLogStorage(path, segment_bytes=SEG)
    for lo in range(1, 41, 4):
        log.append(batch(lo, 4))
    return log


def test_append_that_must_start_a_segment_is_transient_then_retried(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = new_log(tmp_path)
    log.close()
    log = SegmentLogStorage(tmp_path, segment_bytes=SEG)  # reopened: the next append rolls
    before = files(tmp_path)
    with (
        failing_open(monkeypatch, lambda p: p.endswith(".log")) as refused,
        pytest.raises(TransientStorageError),
    ):
        log.append(batch(41, 4))
    assert refused
    assert files(tmp_path) == before
    assert log.last_index() == 40
    log.append(batch(41, 4))  # the retry
    log.close()
    log = SegmentLogStorage(tmp_path, segment_bytes=SEG)
    assert log.entries(1, 45) == batch(1, 44)
    log.close()


def test_replacing_an_empty_segment_is_transient_then_retried(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = new_log(tmp_path)
    log.truncate_suffix(40)
    log.close()
    # An empty last segment, as recovery leaves after a torn first batch.
    empty = tmp_path / f"{41:020d}.log"
    log = SegmentLogStorage(tmp_path, segment_bytes=SEG)
    log.append(batch(41, 1))
    log.truncate_suffix(40)  # cut == the segment's first: the file goes
    log.close()
    assert not empty.exists()
    log = SegmentLogStorage(tmp_path, segment_bytes=SEG)
    log.append(batch(41, 1))
    log.close()
    with open(empty, "r+b") as f:  # tear its only batch
        f.truncate(os.path.getsize(empty) - 1)
    log = SegmentLogStorage(tmp_path, segment_bytes=SEG)
    assert log.last_index() == 40
    before = files(tmp_path)
    with (
        failing_open(monkeypatch, lambda p: p.endswith(".log.tmp")) as refused,
        pytest.raises(TransientStorageError),
    ):
        log.append(batch(41, 2))
    assert refused
    assert files(tmp_path) == before
    log.append(batch(41, 2))
    log.close()
    log = SegmentLogStorage(tmp_path, segment_bytes=SEG)
    assert log.entries(1, 43) == batch(1, 42)
    log.close()


@pytest.mark.parametrize("last_kept", [22, 24])  # mid-batch (journaled), batch boundary
def test_truncate_suffix_is_transient_then_retried(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, last_kept: int
) -> None:
    log = new_log(tmp_path)
    before = files(tmp_path)
    with failing_open(monkeypatch, lambda p: p.endswith(".tmp")):
        try:
            log.truncate_suffix(last_kept)
            transient = False
        except TransientStorageError:
            transient = True
    # A cut inside a batch writes a journal (a new file); one at a boundary does not.
    assert transient == (last_kept == 22)
    if transient:
        assert files(tmp_path) == before
        assert log.last_index() == 40
        assert log.entries(1, 41) == batch(1, 40)
        log.truncate_suffix(last_kept)
    assert log.last_index() == last_kept
    log.append(batch(last_kept + 1, 2, term=5))
    log.close()
    log = SegmentLogStorage(tmp_path, segment_bytes=SEG)
    assert log.entries(1, last_kept + 3) == batch(1, last_kept) + batch(last_kept + 1, 2, term=5)
    log.close()


def test_truncate_prefix_is_transient_then_retried(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = new_log(tmp_path)
    before = files(tmp_path)
    with (
        failing_open(monkeypatch, lambda p: p.endswith("log_meta.tmp")),
        pytest.raises(TransientStorageError),
    ):
        log.truncate_prefix(30)
    assert files(tmp_path) == before
    assert (log.first_index(), log.last_index()) == (1, 40)
    log.truncate_prefix(30)
    log.close()
    log = SegmentLogStorage(tmp_path, segment_bytes=SEG)
    assert (log.first_index(), log.entries(30, 41)) == (30, batch(30, 11))
    log.close()


def test_reset_whose_last_step_is_transient_is_finished_before_anything_else(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A reset marks "reset pending" in log_meta, deletes the segments, then clears
    the mark. If that last write finds no descriptor, no append may happen before
    it does: the mark would make the next open delete the new segments."""
    log = new_log(tmp_path)
    writes = 0

    def second_log_meta(p: str) -> bool:
        nonlocal writes
        if p.endswith("log_meta.tmp"):
            writes += 1
            return writes >= 2
        return False

    with failing_open(monkeypatch, second_log_meta), pytest.raises(TransientStorageError):
        log.reset(100, 7)
        with pytest.raises(TransientStorageError):
            log.append(batch(100, 2))  # still no descriptor: the mark stays
    assert (log.first_index(), log.last_index()) == (100, 99)
    log.append(batch(100, 2, term=8))  # clears the mark first
    log.close()
    log = SegmentLogStorage(tmp_path, segment_bytes=SEG)
    assert (log.first_index(), log.last_index(), log.term(99)) == (100, 101, 7)
    assert log.entries(100, 102) == batch(100, 2, term=8)
    log.close()


def test_open_without_descriptors_is_transient_then_retried(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    new_log(tmp_path).close()
    with (
        failing_open(monkeypatch, lambda p: p.endswith(".log")),
        pytest.raises(TransientStorageError),
    ):
        SegmentLogStorage(tmp_path, segment_bytes=SEG)
    log = SegmentLogStorage(tmp_path, segment_bytes=SEG)  # the lock was released
    assert log.entries(1, 41) == batch(1, 40)
    log.close()
