"""Snapshot metadata: its file format, and everything it refuses."""

from __future__ import annotations

import struct

import crc32c
import msgpack  # type: ignore[import-untyped]
import pytest

from pyjraft.core.types import ConfState
from pyjraft.storage import (
    InvalidSnapshotError,
    SnapshotFile,
    SnapshotManifest,
    decode_snapshot_manifest,
    encode_snapshot_manifest,
)
from pyjraft.storage.snapshot_manifest import (
    MAX_FILE_NAME_BYTES,
    MAX_SNAPSHOT_FILES,
    MAX_SNAPSHOT_MEMBERS,
    MAX_USER_META_BYTES,
    check_file_name,
    check_snapshot_manifest,
    decode_conf_state,
    encode_conf_state,
)

CONF = ConfState(voters=("a:1", "b:2", "c:3"), learners=("d:4",), voters_outgoing=("a:1", "e:5"))
META = SnapshotManifest(
    index=1234,
    term=7,
    conf=CONF,
    files=(SnapshotFile("state.db", 10_000, 0xDEADBEEF), SnapshotFile("empty", 0, 0)),
    user_meta=b"\x00opaque\xff",
)


def reframe(body: object) -> bytes:
    """A metadata file around ``body`` (msgpack), with a valid header and CRC: what
    a buggy or hostile writer could produce."""
    packed = msgpack.packb(body, use_bin_type=True)
    head = struct.pack("<4sIB3xI", b"PJSM", 0, 1, len(packed))
    crc = crc32c.crc32c(packed, crc32c.crc32c(head[8:]))
    return head[:4] + struct.pack("<I", crc) + head[8:] + packed


def body_of(meta: SnapshotManifest) -> dict[str, object]:
    return {
        "index": meta.index,
        "term": meta.term,
        "conf": encode_conf_state(meta.conf),
        "files": [[f.name, f.size, f.crc32c] for f in meta.files],
        "user_meta": meta.user_meta,
    }


def test_round_trip() -> None:
    raw = encode_snapshot_manifest(META)
    assert raw[:4] == b"PJSM" and raw[8] == 1  # magic, version byte
    assert decode_snapshot_manifest(raw) == META
    assert reframe(body_of(META)) == raw
    assert META.total_size == 10_000
    assert META.file("empty").size == 0


def test_configuration_is_encoded_in_one_place_and_unknown_fields_are_refused() -> None:
    assert decode_conf_state(encode_conf_state(CONF)) == CONF
    newer = dict(encode_conf_state(CONF), auto_leave=True)  # a field this code lacks
    with pytest.raises(InvalidSnapshotError, match="configuration must have keys"):
        decode_conf_state(newer)
    with pytest.raises(InvalidSnapshotError, match="configuration must have keys"):
        decode_conf_state({"voters": ["a"]})


@pytest.mark.parametrize(
    "conf",
    [
        {"voters": [], "learners": [], "voters_outgoing": []},
        {"voters": ["a", "a"], "learners": [], "voters_outgoing": []},
        {"voters": ["a"], "learners": ["a"], "voters_outgoing": []},
        {"voters": ["a", ""], "learners": [], "voters_outgoing": []},
        {"voters": ["a", 5], "learners": [], "voters_outgoing": []},
        {"voters": ["x" * 1025], "learners": [], "voters_outgoing": []},
        {"voters": "abc", "learners": [], "voters_outgoing": []},
        {
            "voters": ["a"] + [f"n{i}" for i in range(MAX_SNAPSHOT_MEMBERS)],
            "learners": [],
            "voters_outgoing": [],
        },
    ],
    ids=["no voters", "dup", "voter+learner", "empty id", "int id", "long id", "str", "too many"],
)
def test_bad_configurations_are_refused(conf: dict[str, object]) -> None:
    with pytest.raises(InvalidSnapshotError):
        decode_conf_state(conf)
    body = dict(body_of(META), conf=conf)
    with pytest.raises(InvalidSnapshotError):
        decode_snapshot_manifest(reframe(body))


@pytest.mark.parametrize(
    "name",
    [
        "",
        ".",
        "..",
        "../escape",
        "a/b",
        "/etc/passwd",
        "/",
        "a\\b",
        "nul\x00byte",
        "\x00",
        "new\nline",
        "del\x7f",
        "x" * (MAX_FILE_NAME_BYTES + 1),
        "é" * (MAX_FILE_NAME_BYTES // 2 + 1),  # short in characters, long in bytes
        "\udcff",  # not encodable
        5,
        None,
        b"bytes",
    ],
)
def test_hostile_file_names_are_refused(name: object) -> None:
    with pytest.raises(InvalidSnapshotError):
        check_file_name(name)
    if name == "\udcff":
        return  # msgpack cannot carry it: only reachable through a SnapshotManifest built here
    body = dict(body_of(META), files=[[name, 1, 1]])
    with pytest.raises(InvalidSnapshotError):
        decode_snapshot_manifest(reframe(body))


@pytest.mark.parametrize("name", ["state.db", "x" * MAX_FILE_NAME_BYTES, "é-ü", ".hidden", "a..b"])
def test_plain_file_names_are_accepted(name: str) -> None:
    assert check_file_name(name) == name


@pytest.mark.parametrize(
    "change",
    [
        {"index": 0},
        {"index": -1},
        {"index": True},
        {"index": "5"},
        {"index": 1 << 63},
        {"term": 0},
        {"term": 1.5},
        {"files": [["a", 1, 1], ["a", 2, 2]]},
        {"files": [["a", -1, 0]]},
        {"files": [["a", 1, 1 << 32]]},
        {"files": [["a", 1]]},
        {"files": "a"},
        {"user_meta": "text"},
        {"user_meta": b"x" * (MAX_USER_META_BYTES + 1)},
        {"extra": 1},
    ],
    ids=str,
)
def test_out_of_range_metadata_is_refused(change: dict[str, object]) -> None:
    body = dict(body_of(META), **change)
    with pytest.raises(InvalidSnapshotError):
        decode_snapshot_manifest(reframe(body))


def test_huge_file_counts_are_refused_before_anything_is_built() -> None:
    files = [[f"f{i}", 0, 0] for i in range(MAX_SNAPSHOT_FILES + 1)]
    with pytest.raises(InvalidSnapshotError):
        decode_snapshot_manifest(reframe(dict(body_of(META), files=files)))
    meta = SnapshotManifest(5, 1, CONF, tuple(SnapshotFile(f"f{i}", 0, 0) for i in range(10_001)))
    with pytest.raises(InvalidSnapshotError, match="at most"):
        check_snapshot_manifest(meta)


def test_every_flipped_bit_and_every_truncation_is_refused() -> None:
    raw = encode_snapshot_manifest(META)
    for pos in range(len(raw)):
        for bit in (0, 5):
            bad = bytearray(raw)
            bad[pos] ^= 1 << bit
            with pytest.raises(InvalidSnapshotError):
                decode_snapshot_manifest(bytes(bad))
    for n in range(len(raw)):
        with pytest.raises(InvalidSnapshotError):
            decode_snapshot_manifest(raw[:n])
    with pytest.raises(InvalidSnapshotError, match="length"):
        decode_snapshot_manifest(raw + b"\x00")


def test_another_version_is_refused_with_its_number() -> None:
    raw = bytearray(encode_snapshot_manifest(META))
    raw[8] = 2
    struct.pack_into("<I", raw, 4, crc32c.crc32c(bytes(raw[8:])))
    with pytest.raises(InvalidSnapshotError, match="unknown metadata version 2"):
        decode_snapshot_manifest(bytes(raw))


def test_body_that_is_not_msgpack_is_refused() -> None:
    head = struct.pack("<4sIB3xI", b"PJSM", 0, 1, 3)
    body = b"\xc1\xc1\xc1"  # never used in msgpack
    crc = crc32c.crc32c(body, crc32c.crc32c(head[8:]))
    raw = head[:4] + struct.pack("<I", crc) + head[8:] + body
    with pytest.raises(InvalidSnapshotError, match="not valid msgpack"):
        decode_snapshot_manifest(raw)
