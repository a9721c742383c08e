"""A crash or an IO error at any step of publishing a snapshot leaves a loadable one.

The steps (`pyjraft.storage.snapshot`): files fsynced, metadata written and
fsynced, the directory renamed into place, the root fsynced, older snapshots
pruned. A crash is the process dying at a step (the test hook raises, the
storage is dropped without cleanup); a power loss also undoes what was not
durable yet at that step (an un-fsynced rename, un-fsynced files).
"""

from __future__ import annotations

import errno
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from pyjraft.storage import SnapshotStorage, StorageError
from pyjraft.storage.snapshot import snapshot_dir_name
from tests.storage.snapshot_helpers import CONF, contents, files_of, snapshot_dirs, write_snapshot

POINTS = ["files_synced", "meta_written", "renamed", "published", "pruned"]
# From this step on the new snapshot is in place (if the rename was made durable).
PUBLISHED_FROM = POINTS.index("renamed")


class Crash(Exception):
    """Stands in for the process dying at a crash point."""


def publish(store: SnapshotStorage, index: int, how: str) -> None:
    """Publish the snapshot at ``index``: written here, or installed from a leader
    that has it."""
    if how == "write":
        write_snapshot(store, index)
        return
    leader = SnapshotStorage(Path(store.directory).parent / f"leader{index}")
    meta = write_snapshot(leader, index)
    with leader.open(meta) as reader:
        session = store.begin_install(meta)
        for f in meta.files:
            session.write_chunk(f.name, 0, reader.read_chunk(f.name, 0, f.size))
        session.finish()
    leader.close()


def power_loss(root: Path, point: str) -> None:
    """Undo in ``root`` what a power loss right after ``point`` could undo."""
    tmps = [n for n in os.listdir(root) if n.startswith("tmp-")]
    if point in ("files_synced", "meta_written"):
        # The temporary copy is left half-written (its metadata in particular).
        for name in tmps:
            for dirpath, _dirs, files in os.walk(root / name):
                for f in files:
                    os.truncate(os.path.join(dirpath, f), 0)
    elif point == "renamed":
        # The rename reached the disk only with the root's fsync, which never came.
        os.rename(root / snapshot_dir_name(20), root / "tmp-00000000000000000020-dead")


def check_loads(root: Path, want: int) -> None:
    store = SnapshotStorage(root, keep=1)
    try:
        reader = store.load_newest_valid()
        assert reader is not None and reader.index == want
        assert files_of(reader.directory) == contents(want)
        store.verify(reader.meta)
        reader.close()
        leftovers = [n for n in snapshot_dirs(root) if not n.startswith("snapshot-")]
        assert leftovers == [], leftovers
        # And the storage carries on: the next publication prunes down to one.
        write_snapshot(store, 30)
        assert [m.index for m in store.list()] == [30]
    finally:
        store.close()


@pytest.mark.parametrize("how", ["write", "install"])
@pytest.mark.parametrize("point", POINTS)
def test_crash_at_every_step_of_publishing_leaves_a_loadable_snapshot(
    tmp_path: Path, point: str, how: str
) -> None:
    root = tmp_path / "snap"
    store = SnapshotStorage(root, keep=1)
    write_snapshot(store, 10)

    def hook(where: str) -> None:
        if where == point:
            raise Crash(where)

    store._crash_point = hook  # type: ignore[method-assign]
    with pytest.raises(Crash):
        publish(store, 20, how)
    store._release()  # the process dies here: no cleanup
    for lost in (False, True):
        state = tmp_path / f"state-{lost}"
        shutil.copytree(root, state)
        if lost:
            power_loss(state, point)
        published = POINTS.index(point) >= PUBLISHED_FROM
        if lost and point == "renamed":
            published = False
        try:
            check_loads(state, 20 if published else 10)
        except Exception as exc:
            raise AssertionError(f"point={point} how={how} power_loss={lost}") from exc


def count_fsyncs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> int:
    store = SnapshotStorage(tmp_path / "calibrate", keep=1)
    write_snapshot(store, 10)
    calls = 0
    real = os.fsync

    def counting(fd: int) -> None:
        nonlocal calls
        calls += 1
        real(fd)

    monkeypatch.setattr(os, "fsync", counting)
    write_snapshot(store, 20)
    monkeypatch.setattr(os, "fsync", real)
    store.close()
    return calls


def test_an_io_error_at_any_fsync_or_rename_leaves_a_loadable_snapshot(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    n = count_fsyncs(tmp_path, monkeypatch)
    assert n >= 7  # 3 files, data dir, meta, tmp dir, root, root after pruning
    real_fsync, real_rename = os.fsync, os.rename
    for what in ("fsync", "rename"):
        for k in range(n if what == "fsync" else 3):
            root = tmp_path / f"{what}{k}"
            store = SnapshotStorage(root, keep=1)
            write_snapshot(store, 10)
            calls = 0

            real: Callable[..., None] = real_fsync if what == "fsync" else real_rename

            def failing(*args: Any, _k: int = k, _real: Callable[..., None] = real) -> None:
                nonlocal calls
                calls += 1
                if calls == _k + 1:
                    raise OSError(errno.EIO, "injected", str(args[0]))
                _real(*args)

            monkeypatch.setattr(os, what, failing)
            try:
                write_snapshot(store, 20)
                finished = True
            except StorageError:
                finished = False
            finally:
                monkeypatch.setattr(os, "fsync", real_fsync)
                monkeypatch.setattr(os, "rename", real_rename)
            store.close()
            # Whatever failed, the newest snapshot that loads is whole: 20 if the
            # publication got as far as its rename, 10 otherwise.
            reopened = SnapshotStorage(root, keep=1)
            reader = reopened.load_newest_valid()
            assert reader is not None, (what, k)
            assert reader.index in (10, 20), (what, k)
            if finished:
                assert reader.index == 20, (what, k)
            assert files_of(reader.directory) == contents(reader.index)
            reader.close()
            assert [n for n in snapshot_dirs(root) if n.startswith(("tmp-", "trash-"))] == []
            reopened.close()


def test_a_publication_never_removes_the_previous_snapshot_before_the_new_one_is_durable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Order of the root's changes: the new snapshot's rename, the root fsync, and
    only then the old one's move to trash."""
    root = tmp_path / "snap"
    store = SnapshotStorage(root, keep=1)
    write_snapshot(store, 10)
    events: list[str] = []
    real_fsync, real_rename = os.fsync, os.rename
    root_ino = os.stat(root).st_ino

    def fsync(fd: int) -> None:
        if os.fstat(fd).st_ino == root_ino:
            events.append("fsync root")
        real_fsync(fd)

    def rename(src: str, dst: str) -> None:
        events.append(f"rename {os.path.basename(src)[:5]} -> {os.path.basename(dst)[:5]}")
        real_rename(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "rename", rename)
    session = store.begin(20, 1, CONF)
    Path(session.directory, "f").write_bytes(b"x")
    session.commit()
    monkeypatch.undo()
    assert events == [
        "rename tmp-0 -> snaps",
        "fsync root",
        "rename snaps -> trash",
        "fsync root",
    ]
    store.close()
