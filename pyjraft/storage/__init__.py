"""Durable state behind small protocols: the log, term/vote metadata, snapshots,
and the identity of a data directory."""

from pyjraft.storage.api import (
    CorruptLogError,
    CorruptSnapshotError,
    InvalidSnapshotError,
    LogStorage,
    MetaStorage,
    StorageError,
    TransientStorageError,
)
from pyjraft.storage.identity import (
    DataDirIdentity,
    IdentityMismatchError,
    MemberRegistry,
    bootstrap_identity,
    check_identity,
    load_identity,
)
from pyjraft.storage.memory import MemoryLogStorage, MemoryMetaStorage
from pyjraft.storage.meta import FileMetaStorage
from pyjraft.storage.segment_log import SegmentLogStorage
from pyjraft.storage.snapshot import SnapshotReader, SnapshotStorage
from pyjraft.storage.snapshot_manifest import (
    SnapshotFile,
    SnapshotManifest,
    decode_snapshot_manifest,
    encode_snapshot_manifest,
)
from pyjraft.storage.snapshot_session import SnapshotInstallSession, SnapshotWriteSession

__all__ = [
    "CorruptLogError",
    "CorruptSnapshotError",
    "DataDirIdentity",
    "FileMetaStorage",
    "IdentityMismatchError",
    "InvalidSnapshotError",
    "LogStorage",
    "MemoryLogStorage",
    "MemberRegistry",
    "MemoryMetaStorage",
    "MetaStorage",
    "SegmentLogStorage",
    "SnapshotFile",
    "SnapshotInstallSession",
    "SnapshotManifest",
    "SnapshotReader",
    "SnapshotStorage",
    "SnapshotWriteSession",
    "StorageError",
    "TransientStorageError",
    "bootstrap_identity",
    "check_identity",
    "decode_snapshot_manifest",
    "encode_snapshot_manifest",
    "load_identity",
]
