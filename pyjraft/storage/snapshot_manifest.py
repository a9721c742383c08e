"""Snapshot metadata: what a snapshot is, its file on disk, and what may be trusted.

A snapshot is the state machine's files (a flat directory of regular files)
plus one small metadata file describing them: the last included index and
term, the configuration at that index, the size and CRC32C of every file,
and opaque bytes the state machine may set (`SnapshotManifest`).

Format of the metadata file (and of the metadata a leader sends with an
install: the same bytes), little-endian::

    magic 4s b"PJSM" | crc I (CRC32C of every byte after it) | version B (1)
    | reserved 3x | body_len I | body (body_len bytes of msgpack)

The body is a msgpack map with exactly the keys ``index``, ``term``,
``conf`` (`encode_conf_state`), ``files`` (a list of ``[name, size,
crc32c]``) and ``user_meta`` (bytes). Decoding refuses anything else, and
checks every value against `check_snapshot_manifest`: metadata may come from a
leader, and a file name from it becomes a path on this machine, so names
with ``/``, ``\\``, NUL or other control characters, ``.``, ``..``, empty
or over 255 bytes, duplicates, and counts or sizes past the limits below
are refused with `InvalidSnapshotError` saying which.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any

import crc32c
import msgpack  # type: ignore[import-untyped]

from pyjraft.core.types import ConfState, SnapshotMeta
from pyjraft.storage.api import InvalidSnapshotError

__all__ = [
    "MAX_FILE_NAME_BYTES",
    "MAX_META_BYTES",
    "MAX_NODE_ID_BYTES",
    "MAX_SNAPSHOT_FILES",
    "MAX_SNAPSHOT_MEMBERS",
    "MAX_USER_META_BYTES",
    "META_VERSION",
    "InvalidSnapshotError",
    "SnapshotFile",
    "SnapshotManifest",
    "check_file_name",
    "check_snapshot_manifest",
    "decode_conf_state",
    "decode_snapshot_manifest",
    "encode_conf_state",
    "encode_snapshot_manifest",
]

META_VERSION = 1
"""Version of the metadata format written (and the only one read)."""
MAX_SNAPSHOT_FILES = 10_000
"""Most files one snapshot may hold."""
MAX_FILE_NAME_BYTES = 255
"""Longest file name, in UTF-8 bytes (what common file systems allow)."""
MAX_USER_META_BYTES = 1 << 20
"""Largest opaque user metadata."""
MAX_SNAPSHOT_MEMBERS = 10_000
"""Most node ids in each list of a configuration."""
MAX_NODE_ID_BYTES = 1024
"""Longest node id, in UTF-8 bytes."""
MAX_META_BYTES = 8 << 20
"""Largest encoded metadata body (bounds what is read and decoded)."""
_MAX_U63 = (1 << 63) - 1
_MAGIC = b"PJSM"
_HEADER = struct.Struct("<4sIB3xI")
_KEYS = frozenset({"index", "term", "conf", "files", "user_meta"})
_CONF_KEYS = ("voters", "learners", "voters_outgoing")


@dataclass(frozen=True, slots=True)
class SnapshotFile:
    """One file of a snapshot: its name in the snapshot directory, size, CRC32C."""

    name: str
    size: int
    crc32c: int


@dataclass(frozen=True, slots=True)
class SnapshotManifest:
    """What a snapshot holds: the state after applying every entry up to ``index``
    (of term ``term``), the configuration then, its files, and the state
    machine's opaque ``user_meta``."""

    index: int
    term: int
    conf: ConfState
    files: tuple[SnapshotFile, ...]
    user_meta: bytes = b""

    @property
    def total_size(self) -> int:
        """Bytes of all the files."""
        return sum(f.size for f in self.files)

    @property
    def core_meta(self) -> SnapshotMeta:
        """What the raft core knows of this snapshot (index, term, configuration)."""
        return SnapshotMeta(self.index, self.term, self.conf)

    def file(self, name: str) -> SnapshotFile:
        """The file called ``name``; `KeyError` if the snapshot has none."""
        for f in self.files:
            if f.name == name:
                return f
        raise KeyError(name)


def encode_conf_state(conf: ConfState) -> dict[str, list[str]]:
    """``conf`` as a msgpack-ready map. The one place a configuration is encoded for
    snapshots: a field added to `ConfState` is added here and in `decode_conf_state`
    (and an older reader refuses the unknown key rather than drop it)."""
    out: dict[str, list[Any]] = {
        "voters": list(conf.voters),
        "learners": list(conf.learners),
        "voters_outgoing": list(conf.voters_outgoing),
    }
    if conf.priorities:
        out["priorities"] = [[peer, prio] for peer, prio in conf.priorities]
    return out


def decode_conf_state(obj: object) -> ConfState:
    """The configuration `encode_conf_state` produced; `InvalidSnapshotError` if it
    is not one (unknown or missing keys, ids that are not short non-empty strings,
    duplicates, a learner that is also a voter, no voters)."""
    if not isinstance(obj, dict) or not set(_CONF_KEYS) <= set(obj) <= {*_CONF_KEYS, "priorities"}:
        keys = sorted(map(str, obj)) if isinstance(obj, dict) else type(obj).__name__
        raise InvalidSnapshotError(
            f"configuration must have keys {list(_CONF_KEYS)} (and maybe priorities): {keys}"
        )
    lists = [_node_ids(obj[k], k) for k in _CONF_KEYS]
    conf = ConfState(
        voters=lists[0],
        learners=lists[1],
        voters_outgoing=lists[2],
        priorities=_priorities(obj.get("priorities", [])),
    )
    _check_conf(conf)
    return conf


def _priorities(value: object) -> tuple[tuple[str, int], ...]:
    if not isinstance(value, (list, tuple)) or len(value) > MAX_SNAPSHOT_MEMBERS:
        raise InvalidSnapshotError("configuration: priorities must be a short array")
    out = []
    for item in value:
        if (
            not isinstance(item, (list, tuple))
            or len(item) != 2
            or not isinstance(item[0], str)
            or not _is_int(item[1])
            or not 0 <= item[1] <= 1 << 16
        ):
            raise InvalidSnapshotError(f"configuration: bad priority {item!r:.80}")
        out.append((item[0], int(item[1])))
    return tuple(sorted(out))


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _node_ids(value: object, what: str) -> tuple[str, ...]:
    if not isinstance(value, (list, tuple)) or len(value) > MAX_SNAPSHOT_MEMBERS:
        raise InvalidSnapshotError(
            f"configuration {what}: not a list of at most {MAX_SNAPSHOT_MEMBERS} node ids"
        )
    for node in value:
        if (
            not isinstance(node, str)
            or not node
            or len(node.encode("utf-8", "surrogatepass")) > MAX_NODE_ID_BYTES
        ):
            raise InvalidSnapshotError(f"configuration {what}: bad node id {node!r:.80}")
    if len(set(value)) != len(value):
        raise InvalidSnapshotError(f"configuration {what}: duplicate node id")
    return tuple(value)


def _check_conf(conf: ConfState) -> None:
    for what in _CONF_KEYS:
        _node_ids(getattr(conf, what), what)
    if not conf.voters:
        raise InvalidSnapshotError("configuration has no voters")
    if set(conf.learners) & set(conf.voters):
        raise InvalidSnapshotError("configuration has a node that is both voter and learner")


def check_file_name(name: object) -> str:
    """``name`` if it is acceptable as a snapshot file name (a plain name inside the
    snapshot directory, nothing that could reach outside it); `InvalidSnapshotError`
    saying why not."""
    if not isinstance(name, str):
        raise InvalidSnapshotError(f"file name is not a string: {name!r:.80}")
    try:
        size = len(name.encode("utf-8"))
    except UnicodeEncodeError:
        raise InvalidSnapshotError(f"file name is not valid UTF-8: {name!r:.80}") from None
    if not name or size > MAX_FILE_NAME_BYTES:
        raise InvalidSnapshotError(
            f"file name must be 1 to {MAX_FILE_NAME_BYTES} bytes: {name!r:.80}"
        )
    if name in (".", ".."):
        raise InvalidSnapshotError(f"file name {name!r} is not a file")
    if "/" in name or "\\" in name:
        raise InvalidSnapshotError(f"file name has a path separator: {name!r:.80}")
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in name):
        raise InvalidSnapshotError(f"file name has a NUL or control character: {name!r:.80}")
    return name


def check_snapshot_manifest(meta: SnapshotManifest) -> None:
    """Refuse metadata no correct snapshot has, with `InvalidSnapshotError` saying why:
    index or term out of range, a bad configuration, a bad or duplicate file name,
    a size or CRC out of range, too many files, oversized user metadata."""
    if not _is_int(meta.index) or not 1 <= meta.index <= _MAX_U63:
        raise InvalidSnapshotError(f"snapshot index out of range: {meta.index!r:.40}")
    if not _is_int(meta.term) or not 1 <= meta.term <= _MAX_U63:
        raise InvalidSnapshotError(f"snapshot term out of range: {meta.term!r:.40}")
    if not isinstance(meta.conf, ConfState):
        raise InvalidSnapshotError("snapshot configuration is not a ConfState")
    _check_conf(meta.conf)
    if not isinstance(meta.files, tuple) or len(meta.files) > MAX_SNAPSHOT_FILES:
        raise InvalidSnapshotError(f"a snapshot holds at most {MAX_SNAPSHOT_FILES} files")
    names: set[str] = set()
    for f in meta.files:
        if not isinstance(f, SnapshotFile):
            raise InvalidSnapshotError("snapshot file entry is not a SnapshotFile")
        check_file_name(f.name)
        if f.name in names:
            raise InvalidSnapshotError(f"file {f.name!r} is listed twice")
        names.add(f.name)
        if not _is_int(f.size) or not 0 <= f.size <= _MAX_U63:
            raise InvalidSnapshotError(f"file {f.name!r}: size out of range: {f.size!r:.40}")
        if not _is_int(f.crc32c) or not 0 <= f.crc32c <= 0xFFFFFFFF:
            raise InvalidSnapshotError(f"file {f.name!r}: CRC32C out of range")
    if not isinstance(meta.user_meta, bytes) or len(meta.user_meta) > MAX_USER_META_BYTES:
        raise InvalidSnapshotError(f"user metadata must be at most {MAX_USER_META_BYTES} bytes")


def encode_snapshot_manifest(meta: SnapshotManifest) -> bytes:
    """The metadata file's bytes (see the module docstring); `InvalidSnapshotError`
    if ``meta`` does not pass `check_snapshot_manifest`."""
    check_snapshot_manifest(meta)
    body: bytes = msgpack.packb(
        {
            "index": meta.index,
            "term": meta.term,
            "conf": encode_conf_state(meta.conf),
            "files": [[f.name, f.size, f.crc32c] for f in meta.files],
            "user_meta": meta.user_meta,
        },
        use_bin_type=True,
    )
    head = _HEADER.pack(_MAGIC, 0, META_VERSION, len(body))
    crc = crc32c.crc32c(body, crc32c.crc32c(head[8:]))
    return head[:4] + struct.pack("<I", crc) + head[8:] + body


def decode_snapshot_manifest(raw: bytes) -> SnapshotManifest:
    """The metadata in ``raw``; `InvalidSnapshotError` saying what is wrong if it is
    truncated, damaged, of another version, or not acceptable metadata."""
    if len(raw) < _HEADER.size:
        raise InvalidSnapshotError(f"metadata truncated: {len(raw)} bytes")
    magic, crc, version, body_len = _HEADER.unpack_from(raw, 0)
    if magic != _MAGIC:
        raise InvalidSnapshotError(f"not snapshot metadata (magic {magic!r})")
    if len(raw) != _HEADER.size + body_len or body_len > MAX_META_BYTES:
        raise InvalidSnapshotError(
            f"metadata length {len(raw)} does not match its header ({_HEADER.size + body_len})"
        )
    if crc32c.crc32c(memoryview(raw)[8:]) != crc:
        raise InvalidSnapshotError("metadata CRC mismatch")
    if version != META_VERSION:
        raise InvalidSnapshotError(f"unknown metadata version {version}")
    try:
        body = msgpack.unpackb(
            memoryview(raw)[_HEADER.size :],
            raw=False,
            strict_map_key=True,
            use_list=True,
            max_str_len=max(MAX_FILE_NAME_BYTES, MAX_NODE_ID_BYTES, 16),
            max_bin_len=MAX_USER_META_BYTES,
            max_array_len=max(MAX_SNAPSHOT_FILES, MAX_SNAPSHOT_MEMBERS),
            max_map_len=len(_KEYS),
            max_ext_len=0,
        )
    except (ValueError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError) as exc:
        raise InvalidSnapshotError(f"metadata body is not valid msgpack: {exc}") from None
    if not isinstance(body, dict) or set(body) != _KEYS:
        keys = sorted(map(str, body)) if isinstance(body, dict) else type(body).__name__
        raise InvalidSnapshotError(f"metadata must have keys {sorted(_KEYS)}: {keys}")
    files = body["files"]
    if not isinstance(files, list):
        raise InvalidSnapshotError("metadata files: not a list")
    meta = SnapshotManifest(
        index=body["index"],
        term=body["term"],
        conf=decode_conf_state(body["conf"]),
        files=tuple(_decode_file(f) for f in files),
        user_meta=body["user_meta"],
    )
    check_snapshot_manifest(meta)
    return meta


def _decode_file(obj: Any) -> SnapshotFile:
    if not isinstance(obj, list) or len(obj) != 3:
        raise InvalidSnapshotError(f"metadata file entry is not [name, size, crc32c]: {obj!r:.80}")
    return SnapshotFile(name=obj[0], size=obj[1], crc32c=obj[2])
