"""FileMetaStorage: round trip, atomic replace, corruption refused."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pyjraft.core.types import HardState
from pyjraft.storage import FileMetaStorage, StorageError


def test_new_directory_loads_empty_state(tmp_path: Path) -> None:
    assert FileMetaStorage(tmp_path / "m").load() == HardState()


def test_save_load_round_trip_across_instances(tmp_path: Path) -> None:
    m = FileMetaStorage(tmp_path)
    for state in [HardState(1, ""), HardState(7, "10.0.0.1:8080"), HardState(2**63, "nœud-é")]:
        m.save(state)
        assert m.load() == state
        assert FileMetaStorage(tmp_path).load() == state


def test_no_temp_file_left_after_save(tmp_path: Path) -> None:
    FileMetaStorage(tmp_path).save(HardState(3, "a"))
    assert sorted(os.listdir(tmp_path)) == ["meta"]


def test_leftover_temp_file_is_ignored_and_overwritten(tmp_path: Path) -> None:
    m = FileMetaStorage(tmp_path)
    m.save(HardState(5, "b"))
    # A crash between writing the temp file and the rename leaves it behind.
    (tmp_path / "meta.tmp").write_bytes(b"garbage from an interrupted save")
    assert m.load() == HardState(5, "b")
    m.save(HardState(6, "c"))
    assert FileMetaStorage(tmp_path).load() == HardState(6, "c")


@pytest.mark.parametrize("offset", range(24))
def test_any_flipped_bit_is_refused(tmp_path: Path, offset: int) -> None:
    m = FileMetaStorage(tmp_path)
    m.save(HardState(9, "node-1"))
    raw = bytearray((tmp_path / "meta").read_bytes())
    raw[offset] ^= 0x10
    (tmp_path / "meta").write_bytes(bytes(raw))
    with pytest.raises(StorageError, match="meta"):
        m.load()


@pytest.mark.parametrize("cut", [0, 1, 10, 23, 25])
def test_truncated_file_is_refused(tmp_path: Path, cut: int) -> None:
    m = FileMetaStorage(tmp_path)
    m.save(HardState(9, "node-1"))
    raw = (tmp_path / "meta").read_bytes()
    (tmp_path / "meta").write_bytes(raw[:cut])
    with pytest.raises(StorageError) as info:
        m.load()
    assert str(tmp_path / "meta") in str(info.value)


def test_trailing_bytes_are_refused(tmp_path: Path) -> None:
    m = FileMetaStorage(tmp_path)
    m.save(HardState(9, "x"))
    with open(tmp_path / "meta", "ab") as f:
        f.write(b"\0")
    with pytest.raises(StorageError):
        m.load()


def test_invalid_values_rejected_on_save(tmp_path: Path) -> None:
    m = FileMetaStorage(tmp_path)
    with pytest.raises(ValueError):
        m.save(HardState(-1, ""))
    with pytest.raises(ValueError):
        m.save(HardState(1, "x" * 70000))
    assert m.load() == HardState()
