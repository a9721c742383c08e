"""The ``log_meta`` file of a segmented log: where the log logically starts.

Format (little-endian, 28 bytes)::

    magic 4s b"PJLM" | crc I (CRC32C of every byte after it) | version B (1)
    | flags B | reserved H | first_index Q | prev_term Q

``prev_term`` is the term of ``first_index - 1`` (what a snapshot covers).
Flag `RESET_PENDING` marks a `SegmentLogStorage.reset` in progress: every
segment on disk is stale and the next open deletes them. The file is replaced
atomically; a missing file means a log never compacted (first index 1, term 0).

The ``truncate_redo`` file journals a `SegmentLogStorage.truncate_suffix` that
cuts a batch in the middle (see `pyjraft.storage.segment_log`)::

    magic 4s b"PJTR" | crc I (CRC32C of every byte after it) | version B (1)
    | reserved 3x | segment_first Q | offset Q | batch_len Q | batch (batch_len bytes)

It says: the segment whose first index is ``segment_first`` must end at
``offset`` followed by exactly ``batch`` (a complete batch record), and no
later segment exists. It is written atomically before the log is touched and
removed once the cut is durable; an open that finds it redoes the cut.
"""

from __future__ import annotations

import os
import struct
from typing import NamedTuple

import crc32c

from pyjraft.storage._fileutil import atomic_replace
from pyjraft.storage.api import CorruptLogError

__all__ = [
    "LOG_META",
    "RESET_PENDING",
    "TRUNCATE_REDO",
    "TruncateRedo",
    "read_log_meta",
    "read_truncate_redo",
    "write_log_meta",
    "write_truncate_redo",
]

LOG_META = "log_meta"
"""File name inside the log directory."""
RESET_PENDING = 0x01
"""Flag: a reset was started; all segments on disk are to be deleted."""

TRUNCATE_REDO = "truncate_redo"
"""File name of the mid-batch truncation journal inside the log directory."""

_REDO_MAGIC = b"PJTR"
_REDO_VERSION = 1
_REDO = struct.Struct("<4sIB3xQQQ")

_MAGIC = b"PJLM"
_VERSION = 1
_FORMAT = struct.Struct("<4sIBBHQQ")


def write_log_meta(
    directory: str, first: int, prev_term: int, flags: int, dir_fd: int = -1
) -> None:
    """Durably replace ``directory/log_meta`` (``dir_fd``: see `atomic_replace`)."""
    raw = _FORMAT.pack(_MAGIC, 0, _VERSION, flags, 0, first, prev_term)
    crc = crc32c.crc32c(raw[8:])
    atomic_replace(directory, LOG_META, raw[:4] + struct.pack("<I", crc) + raw[8:], dir_fd)


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


class TruncateRedo(NamedTuple):
    """A journaled mid-batch ``truncate_suffix``: segment ``segment_first`` ends at
    ``offset`` followed by ``batch``; no later segment exists."""

    segment_first: int
    offset: int
    batch: bytes


def write_truncate_redo(
    directory: str, segment_first: int, offset: int, batch: bytes, dir_fd: int = -1
) -> None:
    """Durably create ``directory/truncate_redo`` (temp file, fsync, rename, fsync dir;
    ``dir_fd``: see `atomic_replace`)."""
    head = _REDO.pack(_REDO_MAGIC, 0, _REDO_VERSION, segment_first, offset, len(batch))
    crc = crc32c.crc32c(batch, crc32c.crc32c(head[8:]))
    raw = head[:4] + struct.pack("<I", crc) + head[8:] + bytes(batch)
    atomic_replace(directory, TRUNCATE_REDO, raw, dir_fd)


def read_truncate_redo(directory: str) -> TruncateRedo | None:
    """The journaled truncation in ``directory``, None if there is none. Raises
    `CorruptLogError` if the file is damaged (it is only ever renamed into place
    complete, so damage is never a torn write)."""
    path = os.path.join(directory, TRUNCATE_REDO)
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        return None
    if len(raw) < _REDO.size:
        raise CorruptLogError(path, 0, f"truncate_redo has only {len(raw)} bytes")
    magic, crc, version, seg_first, offset, n = _REDO.unpack_from(raw, 0)
    if magic != _REDO_MAGIC:
        raise CorruptLogError(path, 0, f"bad magic {magic!r}")
    if crc32c.crc32c(memoryview(raw)[8:]) != crc:
        raise CorruptLogError(path, 4, "CRC mismatch")
    if version != _REDO_VERSION or len(raw) != _REDO.size + n:
        raise CorruptLogError(path, 8, f"unknown truncate_redo version {version} or bad length")
    return TruncateRedo(seg_first, offset, raw[_REDO.size :])
