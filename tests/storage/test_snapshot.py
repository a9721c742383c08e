"""SnapshotStorage: writing, reading, verifying, pruning, falling back."""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
import tracemalloc
from pathlib import Path

import pytest

from pyjraft.storage import (
    CorruptSnapshotError,
    InvalidSnapshotError,
    SnapshotStorage,
    StorageError,
)
from pyjraft.storage.snapshot import snapshot_dir_name
from tests.storage.helpers import flip_bit
from tests.storage.snapshot_helpers import (
    CONF,
    contents,
    files_of,
    snapshot_dirs,
    write_snapshot,
)


def test_commit_publishes_a_directory_named_by_index(tmp_path: Path) -> None:
    store = SnapshotStorage(tmp_path / "snap")
    meta = write_snapshot(store, 1234, term=5, user_meta=b"applied=1234")
    assert snapshot_dirs(tmp_path / "snap") == ["snapshot-00000000000000001234"]
    assert (meta.index, meta.term, meta.conf, meta.user_meta) == (1234, 5, CONF, b"applied=1234")
    assert [f.name for f in meta.files] == sorted(contents(1234))
    assert {f.name: f.size for f in meta.files} == {n: len(d) for n, d in contents(1234).items()}
    assert store.latest() == meta
    assert store.list() == [meta]
    with store.open(meta) as reader:
        assert (reader.index, reader.term, reader.conf, reader.user_meta) == (
            1234,
            5,
            CONF,
            b"applied=1234",
        )
        assert files_of(reader.directory) == contents(1234)
        store.verify(meta)
    store.close()
    again = SnapshotStorage(tmp_path / "snap")
    assert again.latest() == meta
    again.close()


def test_read_chunk_reads_any_range_and_refuses_what_is_not_in_the_snapshot(
    tmp_path: Path,
) -> None:
    store = SnapshotStorage(tmp_path)
    meta = write_snapshot(store, 7)
    data = contents(7)["index.bin"]
    with store.open(meta) as reader:
        assert reader.read_chunk("index.bin", 0, 100) == data[:100]
        assert reader.read_chunk("index.bin", 8950, 100) == data[8950:]
        assert reader.read_chunk("index.bin", 9000, 100) == b""
        assert reader.read_chunk("state.db", 5, 3) == contents(7)["state.db"][5:8]
        assert reader.read_chunk("empty", 0, 10) == b""
        for name in ("missing", "../meta", "/etc/passwd"):
            with pytest.raises(InvalidSnapshotError):
                reader.read_chunk(name, 0, 10)
        with pytest.raises(InvalidSnapshotError):
            reader.read_chunk("index.bin", -1, 10)
        with pytest.raises(InvalidSnapshotError):
            reader.read_chunk("index.bin", 0, 1 << 40)
    with pytest.raises(ValueError, match="closed"):
        reader.read_chunk("index.bin", 0, 1)


@pytest.mark.parametrize("keep", [1, 2, 3])
def test_pruning_keeps_the_newest_n_only_after_the_new_one_is_published(
    tmp_path: Path, keep: int
) -> None:
    store = SnapshotStorage(tmp_path, keep=keep)
    published = []
    for index in (10, 20, 30, 40, 50):
        session = store.begin(index, 1, CONF)
        for name, data in contents(index).items():
            Path(session.directory, name).write_bytes(data)
        # Before the commit the older ones are all still there.
        assert [m.index for m in store.list()] == published[-keep:]
        session.commit()
        published.append(index)
        assert [m.index for m in store.list()] == published[-keep:]
    assert snapshot_dirs(tmp_path) == [snapshot_dir_name(i) for i in published[-keep:]]
    store.close()


def test_an_open_reader_pins_its_snapshot_until_closed(tmp_path: Path) -> None:
    store = SnapshotStorage(tmp_path, keep=1)
    old = write_snapshot(store, 10)
    reader = store.open(old)
    write_snapshot(store, 20)
    write_snapshot(store, 30)
    assert [m.index for m in store.list()] == [10, 30]
    # Still readable, whole: a leader streaming it to a follower.
    assert reader.read_chunk("state.db", 0, 50) == contents(10)["state.db"][:50]
    store.verify(old)
    reader.close()
    assert [m.index for m in store.list()] == [30]
    store.close()


def test_keep_must_be_positive(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        SnapshotStorage(tmp_path, keep=0)


@pytest.mark.parametrize("name", ["state.db", "index.bin"])
def test_a_flipped_byte_is_detected_and_the_previous_snapshot_loaded(
    tmp_path: Path, name: str, caplog: pytest.LogCaptureFixture
) -> None:
    store = SnapshotStorage(tmp_path)
    write_snapshot(store, 10)
    newest = write_snapshot(store, 20)
    bad = tmp_path / snapshot_dir_name(20) / "data" / name
    flip_bit(str(bad), os.path.getsize(bad) // 2, 4)
    assert store.latest() == newest  # same size: only a full read sees it
    with pytest.raises(CorruptSnapshotError) as info:
        store.verify(newest)
    assert info.value.path == str(bad)
    assert "CRC32C" in info.value.reason
    with caplog.at_level(logging.ERROR, logger="pyjraft.storage"):
        reader = store.load_newest_valid()
    assert reader is not None and reader.index == 10
    assert files_of(reader.directory) == contents(10)
    reader.close()
    assert any(str(bad) in r.getMessage() for r in caplog.records)
    # Moved aside, never deleted; no longer offered.
    assert store.latest() is not None and store.latest().index == 10  # type: ignore[union-attr]
    assert [n for n in snapshot_dirs(tmp_path) if n.startswith("corrupt-")]
    store.close()


@pytest.mark.parametrize("damage", ["truncated", "missing", "extra", "meta flipped", "meta gone"])
def test_other_damage_is_detected(tmp_path: Path, damage: str) -> None:
    store = SnapshotStorage(tmp_path)
    write_snapshot(store, 10)
    newest = write_snapshot(store, 20)
    snap = tmp_path / snapshot_dir_name(20)
    victim = snap / "data" / "state.db"
    if damage == "truncated":
        os.truncate(victim, 1000)
    elif damage == "missing":
        os.unlink(victim)
    elif damage == "extra":
        (snap / "data" / "planted").write_bytes(b"x")
    elif damage == "meta flipped":
        flip_bit(str(snap / "meta"), 20)
    else:
        os.unlink(snap / "meta")
    if damage == "extra":
        assert store.latest() == newest
        with pytest.raises(CorruptSnapshotError, match="not listed"):
            store.verify(newest)
    else:
        assert store.latest() is not None and store.latest().index == 10  # type: ignore[union-attr]
    reader = store.load_newest_valid()
    assert reader is not None and reader.index == 10
    reader.close()
    store.close()


def test_no_valid_snapshot_loads_none(tmp_path: Path) -> None:
    store = SnapshotStorage(tmp_path)
    assert store.latest() is None and store.load_newest_valid() is None
    write_snapshot(store, 10)
    flip_bit(str(tmp_path / snapshot_dir_name(10) / "data" / "index.bin"), 3)
    assert store.load_newest_valid() is None
    store.close()


@pytest.mark.parametrize("bad", ["subdir", "symlink", "backslash\\name", "new\nline"])
def test_commit_refuses_what_is_not_a_flat_set_of_plain_files(tmp_path: Path, bad: str) -> None:
    store = SnapshotStorage(tmp_path)
    session = store.begin(5, 1, CONF)
    Path(session.directory, "ok").write_bytes(b"fine")
    target = Path(session.directory, bad)
    if bad == "subdir":
        target.mkdir()
    elif bad == "symlink":
        target.symlink_to("/etc/hostname")
    else:
        target.write_bytes(b"x")
    with pytest.raises(InvalidSnapshotError):
        session.commit()
    assert store.latest() is None
    # The session is still open: fix it and commit.
    if bad == "subdir":
        target.rmdir()
    else:
        target.unlink()
    meta = session.commit()
    assert [f.name for f in meta.files] == ["ok"]
    store.close()


def test_oversized_user_meta_is_refused(tmp_path: Path) -> None:
    store = SnapshotStorage(tmp_path)
    session = store.begin(5, 1, CONF)
    with pytest.raises(InvalidSnapshotError):
        session.commit(b"x" * (2 << 20))
    session.abort()
    assert snapshot_dirs(tmp_path) == []
    store.close()


def test_abort_and_leaving_the_with_block_remove_the_temporary_directory(tmp_path: Path) -> None:
    store = SnapshotStorage(tmp_path)
    session = store.begin(5, 1, CONF)
    Path(session.directory, "f").write_bytes(b"x")
    session.abort()
    session.abort()  # idempotent
    with pytest.raises(ValueError):
        session.commit()
    with store.begin(6, 1, CONF) as s2:
        Path(s2.directory, "f").write_bytes(b"x")
    assert snapshot_dirs(tmp_path) == []
    with store.begin(7, 1, CONF) as s3:
        Path(s3.directory, "f").write_bytes(b"x")
        s3.commit()
    assert snapshot_dirs(tmp_path) == [snapshot_dir_name(7)]
    store.close()


def test_bad_snapshot_coordinates_are_refused(tmp_path: Path) -> None:
    store = SnapshotStorage(tmp_path)
    for index, term in ((0, 1), (5, 0), (-1, 1)):
        with pytest.raises(InvalidSnapshotError):
            store.begin(index, term, CONF)
    assert snapshot_dirs(tmp_path) == []
    store.close()


def test_a_second_snapshot_at_the_same_index_keeps_the_first(tmp_path: Path) -> None:
    store = SnapshotStorage(tmp_path)
    first = write_snapshot(store, 10, user_meta=b"first")
    again = write_snapshot(store, 10, user_meta=b"second")
    assert again == first
    assert snapshot_dirs(tmp_path) == [snapshot_dir_name(10)]
    # Unless the existing one is damaged: then it is moved aside and replaced.
    flip_bit(str(tmp_path / snapshot_dir_name(10) / "data" / "state.db"), 99)
    third = write_snapshot(store, 10, user_meta=b"third")
    assert third.user_meta == b"third" and store.latest() == third
    store.close()


def test_leftovers_are_removed_at_open_and_quarantined_snapshots_kept(tmp_path: Path) -> None:
    store = SnapshotStorage(tmp_path)
    write_snapshot(store, 10)
    store.close()
    for name in ("tmp-00000000000000000020-abcd", "trash-snapshot-00000000000000000005-ef01"):
        (tmp_path / name / "data").mkdir(parents=True)
        (tmp_path / name / "data" / "f").write_bytes(b"partial")
    (tmp_path / "corrupt-snapshot-00000000000000000003-0000").mkdir()
    store = SnapshotStorage(tmp_path)
    assert snapshot_dirs(tmp_path) == [
        "corrupt-snapshot-00000000000000000003-0000",
        snapshot_dir_name(10),
    ]
    store.close()


def test_a_second_process_cannot_open_the_same_root(tmp_path: Path) -> None:
    store = SnapshotStorage(tmp_path)
    with pytest.raises(StorageError, match="in use"):
        SnapshotStorage(tmp_path)
    store.close()
    SnapshotStorage(tmp_path).close()


def test_the_root_and_its_parents_are_created_durably(tmp_path: Path) -> None:
    store = SnapshotStorage(tmp_path / "a" / "b" / "snap")
    write_snapshot(store, 3)
    store.close()
    assert SnapshotStorage(tmp_path / "a" / "b" / "snap").latest() is not None


def test_checksumming_streams_in_bounded_memory(tmp_path: Path) -> None:
    """A 48 MiB file is checksummed at commit and at verify without holding it."""
    store = SnapshotStorage(tmp_path)
    session = store.begin(9, 1, CONF)
    with open(Path(session.directory, "big"), "wb") as f:
        for i in range(48):
            f.write(bytes([i]) * (1 << 20))
    tracemalloc.start()
    try:
        meta = session.commit()
        store.verify(meta)
        _now, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert meta.files[0].size == 48 << 20
    assert peak < 8 << 20, f"peak {peak} bytes"
    store.close()


def test_commits_from_a_worker_thread_while_readers_come_and_go(tmp_path: Path) -> None:
    """The node commits off the event loop while the loop lists, opens and reads."""
    store = SnapshotStorage(tmp_path, keep=2)
    write_snapshot(store, 1)
    errors: list[BaseException] = []

    def writer() -> None:
        try:
            for index in range(2, 12):
                session = store.begin(index, 1, CONF)
                Path(session.directory, "f").write_bytes(index.to_bytes(4, "little") * 1000)
                session.commit()
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=writer)
    thread.start()
    seen = []
    while (thread.is_alive() or seen[-1:] != [11]) and not errors:
        assert store.latest() is not None
        reader = store.open_latest()  # pinned at once: no publication can prune it
        assert reader is not None
        with reader:
            seen.append(reader.index)
            data = reader.read_chunk(reader.meta.files[0].name, 0, 1 << 20)
            assert data == reader.index.to_bytes(4, "little") * 1000 or reader.index == 1
    thread.join()
    assert not errors, errors
    assert seen == sorted(seen) and seen[-1] == 11
    assert [m.index for m in store.list()] == [10, 11]
    # A snapshot pruned between `latest` and `open` is refused cleanly.
    with pytest.raises(StorageError, match="no such snapshot"):
        store.open(dataclasses.replace(store.list()[0], index=1))
    store.close()
