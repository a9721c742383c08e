"""Durable state behind small protocols: the log and term/vote metadata."""

from pyjraft.storage.api import CorruptLogError, LogStorage, MetaStorage, StorageError
from pyjraft.storage.memory import MemoryLogStorage, MemoryMetaStorage

__all__ = [
    "CorruptLogError",
    "LogStorage",
    "MemoryLogStorage",
    "MemoryMetaStorage",
    "MetaStorage",
    "StorageError",
]
