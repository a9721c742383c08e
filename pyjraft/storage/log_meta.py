"""The ``log_meta`` file of a segmented log: where the log logically starts.

Format (little-endian, 28 bytes)::

    magic 4s b"PJLM" | crc I (CRC32C of every byte after it) | version B (1)
    | flags B | reserved H | first_index Q | prev_term Q

``prev_term`` is the term of ``first_index - 1`` (what a snapshot covers).
Flag `RESET_PENDING` marks a `SegmentLogStorage.reset` in progress: every
segment on disk is stale and the next open deletes them. The file is replaced
atomically; a missing file means a log never compacted (first index 1, term 0).
"""

from __future__ import annotations

import os
import struct

import crc32c

from pyjraft.storage._fileutil import atomic_replace
from pyjraft.storage.api import CorruptLogError

__all__ = ["LOG_META", "RESET_PENDING", "read_log_meta", "write_log_meta"]

LOG_META = "log_meta"
"""File name inside the log directory."""
RESET_PENDING = 0x01
"""Flag: a reset was started; all segments on disk are to be deleted."""

_MAGIC = b"PJLM"
_VERSION = 1
_FORMAT = struct.Struct("<4sIBBHQQ")


def write_log_meta(directory: str, first: int, prev_term: int, flags: int) -> None:
    """Durably replace ``directory/log_meta``."""
    raw = _FORMAT.pack(_MAGIC, 0, _VERSION, flags, 0, first, prev_term)
    crc = crc32c.crc32c(raw[8:])
    atomic_replace(directory, LOG_META, raw[:4] + struct.pack("<I", crc) + raw[8:])


def read_log_meta(directory: str) -> tuple[int, int, int]:
    """``(first_index, prev_term, flags)`` from ``directory/log_meta``; ``(1, 0, 0)``
    if it does not exist. Raises `CorruptLogError` if it is damaged."""
    path = os.path.join(directory, LOG_META)
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        return 1, 0, 0
    if len(raw) != _FORMAT.size:
        raise CorruptLogError(path, 0, f"log_meta has {len(raw)} bytes, expected {_FORMAT.size}")
    magic, crc, version, flags, _res, first, prev_term = _FORMAT.unpack(raw)
    if magic != _MAGIC:
        raise CorruptLogError(path, 0, f"bad magic {magic!r}")
    if crc32c.crc32c(raw[8:]) != crc:
        raise CorruptLogError(path, 4, "CRC mismatch")
    if version != _VERSION:
        raise CorruptLogError(path, 8, f"unknown log_meta version {version}")
    if first < 1 or flags & ~RESET_PENDING:
        raise CorruptLogError(path, 0, f"bad log_meta first={first} flags={flags:#x}")
    return first, prev_term, flags
