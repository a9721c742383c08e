"""Durable state behind small protocols: the log and term/vote metadata."""

from pyjraft.storage.api import (
    CorruptLogError,
    LogStorage,
    MetaStorage,
    StorageError,
    TransientStorageError,
)
from pyjraft.storage.memory import MemoryLogStorage, MemoryMetaStorage
from pyjraft.storage.meta import FileMetaStorage
from pyjraft.storage.segment_log import SegmentLogStorage

__all__ = [
    "CorruptLogError",
    "FileMetaStorage",
    "LogStorage",
    "MemoryLogStorage",
    "MemoryMetaStorage",
    "MetaStorage",
    "SegmentLogStorage",
    "StorageError",
    "TransientStorageError",
]
