"""Receiving a snapshot from a leader: chunked, checked, published atomically."""

from __future__ import annotations

import dataclasses
import random
from pathlib import Path

import pytest

from pyjraft.storage import (
    InvalidSnapshotError,
    SnapshotFile,
    SnapshotManifest,
    SnapshotStorage,
    decode_snapshot_manifest,
    encode_snapshot_manifest,
)
from pyjraft.storage.snapshot_manifest import MAX_SNAPSHOT_FILES
from tests.storage.snapshot_helpers import CONF, contents, files_of, snapshot_dirs, write_snapshot


def leader_snapshot(tmp_path: Path, index: int = 40) -> tuple[SnapshotStorage, SnapshotManifest]:
    leader = SnapshotStorage(tmp_path / "leader")
    return leader, write_snapshot(leader, index)


def chunks(
    leader: SnapshotStorage, meta: SnapshotManifest, size: int
) -> list[tuple[str, int, bytes]]:
    """Every chunk of the snapshot, file by file, as a leader would send them."""
    out = []
    with leader.open(meta) as reader:
        for f in meta.files:
            offset = 0
            while offset < f.size:
                data = reader.read_chunk(f.name, offset, size)
                out.append((f.name, offset, data))
                offset += len(data)
    return out


@pytest.mark.parametrize("chunk", [1 << 20, 4096, 777])
def test_install_in_chunks_publishes_the_leaders_snapshot(tmp_path: Path, chunk: int) -> None:
    leader, meta = leader_snapshot(tmp_path)
    follower = SnapshotStorage(tmp_path / "follower")
    wire = decode_snapshot_manifest(encode_snapshot_manifest(meta))  # as received
    session = follower.begin_install(wire)
    assert (session.bytes_done, session.bytes_total) == (0, meta.total_size)
    for name, offset, data in chunks(leader, meta, chunk):
        session.write_chunk(name, offset, data)
    assert session.bytes_done == meta.total_size
    assert session.finish() == meta
    assert follower.latest() == meta
    reader = follower.load_newest_valid()
    assert reader is not None
    assert files_of(reader.directory) == contents(40)
    reader.close()
    assert snapshot_dirs(tmp_path / "follower") == ["snapshot-00000000000000000040"]


def test_files_may_interleave_as_long_as_each_is_in_order(tmp_path: Path) -> None:
    leader, meta = leader_snapshot(tmp_path)
    follower = SnapshotStorage(tmp_path / "follower")
    pieces = chunks(leader, meta, 5000)
    by_file: dict[str, list[tuple[str, int, bytes]]] = {}
    for piece in pieces:
        by_file.setdefault(piece[0], []).append(piece)
    rng = random.Random(3)
    session = follower.begin_install(meta)
    queues = list(by_file.values())
    while any(queues):
        q = rng.choice([q for q in queues if q])
        name, offset, data = q.pop(0)
        session.write_chunk(name, offset, data)
    session.finish()
    follower.verify(meta)


def test_out_of_order_chunks_are_refused_and_change_nothing(tmp_path: Path) -> None:
    leader, meta = leader_snapshot(tmp_path)
    follower = SnapshotStorage(tmp_path / "follower")
    pieces = [p for p in chunks(leader, meta, 4096) if p[0] == "index.bin"]
    session = follower.begin_install(meta)
    name, _, first = pieces[0]
    with pytest.raises(InvalidSnapshotError, match="expected 0"):
        session.write_chunk(name, 4096, pieces[1][2])  # a gap
    session.write_chunk(name, 0, first)
    with pytest.raises(InvalidSnapshotError, match="expected 4096"):
        session.write_chunk(name, 0, first)  # a repeat
    with pytest.raises(InvalidSnapshotError, match="expected 4096"):
        session.write_chunk(name, 100, b"x")  # overlapping
    with pytest.raises(InvalidSnapshotError, match="past its size"):
        session.write_chunk(name, 4096, b"x" * 10_000)
    with pytest.raises(InvalidSnapshotError, match="not in the snapshot"):
        session.write_chunk("other", 0, b"x")
    with pytest.raises(InvalidSnapshotError, match="not in the snapshot"):
        session.write_chunk("../escape", 0, b"x")
    assert session.next_offset(name) == 4096
    for name2, offset, data in pieces[1:]:
        session.write_chunk(name2, offset, data)
    # Everything else still to come: finish refuses, naming a file.
    with pytest.raises(InvalidSnapshotError, match="received 0 of"):
        session.finish()
    session.abort()
    assert snapshot_dirs(tmp_path / "follower") == []


def test_data_that_does_not_match_the_leaders_checksums_is_never_published(
    tmp_path: Path,
) -> None:
    leader, meta = leader_snapshot(tmp_path)
    follower = SnapshotStorage(tmp_path / "follower")
    session = follower.begin_install(meta)
    for name, offset, data in chunks(leader, meta, 65536):
        if name == "state.db" and offset == 65536:
            data = bytes([data[0] ^ 1]) + data[1:]  # corrupted in transit
        session.write_chunk(name, offset, data)
    with pytest.raises(InvalidSnapshotError, match=r"'state\.db': CRC32C"):
        session.finish()
    session.abort()
    assert follower.latest() is None
    assert snapshot_dirs(tmp_path / "follower") == []


def test_an_interrupted_install_is_never_loaded(tmp_path: Path) -> None:
    """A follower killed in the middle of an install restarts on its previous
    snapshot, the partial copy gone."""
    leader, meta = leader_snapshot(tmp_path)
    follower = SnapshotStorage(tmp_path / "follower")
    previous = write_snapshot(follower, 10)
    session = follower.begin_install(meta)
    pieces = chunks(leader, meta, 100_000)
    for name, offset, data in pieces[: len(pieces) // 2]:
        session.write_chunk(name, offset, data)
    follower._release()  # the process dies: nothing more is written, no cleanup
    restarted = SnapshotStorage(tmp_path / "follower")
    assert restarted.latest() == previous
    assert snapshot_dirs(tmp_path / "follower") == ["snapshot-00000000000000000010"]
    reader = restarted.load_newest_valid()
    assert reader is not None and reader.index == 10
    reader.close()
    restarted.close()


def test_empty_files_and_an_empty_snapshot_install(tmp_path: Path) -> None:
    follower = SnapshotStorage(tmp_path)
    meta = SnapshotManifest(9, 2, CONF, (SnapshotFile("empty", 0, 0),), b"u")
    session = follower.begin_install(meta)
    assert session.finish() == meta
    follower.verify(meta)
    none = SnapshotManifest(10, 2, CONF, ())
    follower.begin_install(none).finish()
    follower.verify(none)
    assert [m.index for m in follower.list()] == [9, 10]


@pytest.mark.parametrize(
    "name", ["../../etc/cron.d/x", "/tmp/abs", "a/b", "..", ".", "nul\x00", "", "x" * 300]
)
def test_hostile_metadata_is_refused_before_anything_is_created(tmp_path: Path, name: str) -> None:
    follower = SnapshotStorage(tmp_path)
    meta = SnapshotManifest(9, 2, CONF, (SnapshotFile(name, 1, 0),))
    with pytest.raises(InvalidSnapshotError):
        follower.begin_install(meta)
    assert snapshot_dirs(tmp_path) == []


def test_huge_counts_and_bad_coordinates_are_refused(tmp_path: Path) -> None:
    follower = SnapshotStorage(tmp_path)
    many = tuple(SnapshotFile(f"f{i}", 0, 0) for i in range(MAX_SNAPSHOT_FILES + 1))
    good = SnapshotManifest(9, 2, CONF, ())
    for bad in (
        dataclasses.replace(good, files=many),
        dataclasses.replace(good, index=0),
        dataclasses.replace(good, term=-3),
        dataclasses.replace(good, files=(SnapshotFile("a", -5, 0),)),
        dataclasses.replace(good, files=(SnapshotFile("a", 1, 0), SnapshotFile("a", 1, 0))),
        dataclasses.replace(good, user_meta=b"x" * (2 << 20)),
    ):
        with pytest.raises(InvalidSnapshotError):
            follower.begin_install(bad)
    assert snapshot_dirs(tmp_path) == []
