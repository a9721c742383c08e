"""Directories the storage creates are durable: each one is fsynced in its parent.

A ``mkdir`` is an entry in the parent directory; until the parent is fsynced a
power failure can lose it, and with it every file later made durable inside it.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from pyjraft.core.types import HardState
from pyjraft.storage import FileMetaStorage, SegmentLogStorage
from tests.storage.helpers import batch


@contextmanager
def disk_events(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[tuple[str, str]]]:
    """Record ("mkdir", path) and ("fsync", path) events, in order."""
    events: list[tuple[str, str]] = []
    paths: dict[int, str] = {}
    real_mkdir, real_open, real_fsync = os.mkdir, os.open, os.fsync

    def mkdir(path: str | os.PathLike[str], mode: int = 0o777, **kw: object) -> None:
        real_mkdir(path, mode)
        events.append(("mkdir", os.path.abspath(os.fspath(path))))

    def open_(path: str | os.PathLike[str], flags: int, *args: object, **kw: object) -> int:
        fd = real_open(path, flags, *args, **kw)  # type: ignore[arg-type]
        paths[fd] = os.path.abspath(os.fspath(path))
        return fd

    def fsync(fd: int) -> None:
        real_fsync(fd)
        if stat.S_ISDIR(os.fstat(fd).st_mode):
            events.append(("fsync", paths.get(fd, "?")))

    monkeypatch.setattr(os, "mkdir", mkdir)
    monkeypatch.setattr(os, "open", open_)
    monkeypatch.setattr(os, "fsync", fsync)
    yield events


def assert_each_created_dir_is_fsynced_in_its_parent(events: list[tuple[str, str]]) -> None:
    created = [(i, p) for i, (kind, p) in enumerate(events) if kind == "mkdir"]
    assert created, "nothing was created"
    for i, path in created:
        parent = os.path.dirname(path)
        assert ("fsync", parent) in events[i + 1 :], f"{path} created, {parent} never fsynced"


def test_log_directory_and_its_missing_parents_are_fsynced_in_their_parents(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "data" / "group" / "log"
    with disk_events(monkeypatch) as events:
        log = SegmentLogStorage(target, segment_bytes=4096)
        log.append(batch(1, 3))
        log.close()
    assert [p for kind, p in events if kind == "mkdir"] == [
        str(tmp_path / "data"),
        str(tmp_path / "data" / "group"),
        str(target),
    ]
    assert_each_created_dir_is_fsynced_in_its_parent(events)


def test_meta_directory_is_fsynced_in_its_parent(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "data" / "group"
    with disk_events(monkeypatch) as events:
        FileMetaStorage(target).save(HardState(term=3, vote="a"))
    assert_each_created_dir_is_fsynced_in_its_parent(events)
    assert FileMetaStorage(target).load() == HardState(term=3, vote="a")


def test_the_node_layout_makes_every_level_durable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What `Node` opens on first start: ``data/group/log`` then ``data/group``."""
    base = tmp_path / "data" / "g1"
    with disk_events(monkeypatch) as events:
        log = SegmentLogStorage(base / "log")
        FileMetaStorage(base).save(HardState(term=1))
        log.append(batch(1, 1))
        log.close()
    assert_each_created_dir_is_fsynced_in_its_parent(events)


def test_an_existing_directory_is_still_fsynced_in_its_parent(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A previous start may have created it and died before the fsync."""
    target = tmp_path / "log"
    target.mkdir()
    with disk_events(monkeypatch) as events:
        SegmentLogStorage(target).close()
    assert ("fsync", str(tmp_path)) in events
