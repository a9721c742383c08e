"""Recovery of a segmented log on open: what is on disk, checked, and made whole.

Theory of operation
===================

Interrupted operations are finished first: a reset, a mid-batch
`truncate_suffix` (its ``truncate_redo`` journal, see
`pyjraft.storage.segment_log`), a prefix truncation (see `recover_log`).
Then every byte of every segment is CRC-checked. A sealed segment with a valid
sidecar index is verified with one CRC32C over the whole file (read in
chunks; GB/s, no per-batch Python work); any other segment (the last one
always, and a sealed one whose index is missing, stale or damaged: it is
then rewritten) is scanned batch by batch: header parsed with ``struct``,
the batch's CRC verified, the file mmapped. A sealed segment whose
whole-file CRC does not match its index is scanned too, so damage is
reported at the offset of the exact batch. Rules:

* Torn tail: in the *last* segment, an invalid batch E (partial header,
  batch running past the end of the file, CRC or tag mismatch: zero-filled
  tails, stale blocks of older files, and batches whose pages reached the
  disk in any order included) after which no batch *written later* exists.
  This is decided by structure, not by whatever happens to parse. Each batch
  is written with one ``pwrite`` at the end of its file, and the next only
  after the previous one's ``fdatasync`` returned; so a batch R that is
  valid at an offset after E, in this file, with a later index, was written
  there after E was durable: E was acknowledged, and its damage is
  corruption. Nothing else can pass for such an R: a batch validates only
  at the offset and in the file it was written to (the nonce and offset
  bind its CRC), so stale bytes of any older file and batch-shaped bytes
  anywhere else (E's own data, say) do not; and no byte past a truncation
  point is ever rewritten (see "Every byte of a segment is written once" in
  `pyjraft.storage.segment_log`), so this file's own cut-away batches
  cannot reappear where they were. Without such an R, E is the last write,
  never acknowledged: the file is truncated at E's start (ftruncate +
  fsync) and a warning is logged on ``pyjraft.storage``.
* Torn creation: a last segment whose header is missing or invalid and
  that is no longer than a header never held a batch (the header is durable
  before the first batch is written): it is deleted, with a warning. An
  invalid header in a longer file, or in any other segment, is damage.
* Everything else refuses to open with `CorruptLogError` naming the file and
  offset: an invalid batch followed by one written after it (above), an
  invalid batch in any other segment, a CRC-valid batch with an unknown
  version, set flags or reserved bits, no entries, lengths not adding up, an
  unknown type or an unexpected first index (including a segment whose first
  batch does not match its name), a segment of format 1 or 2, a gap or
  overlap between segments, a first segment starting after ``first_index``,
  a damaged ``log_meta`` or ``truncate_redo``, a segment header naming
  another first index or an unknown format version. Nothing is silently
  dropped.
"""

from __future__ import annotations

import bisect
import logging
import mmap
import os
import re
from typing import NamedTuple

import crc32c

from pyjraft.storage._fileutil import pwrite_all, sync_file, unlink_quietly
from pyjraft.storage.api import CorruptLogError
from pyjraft.storage.log_meta import (
    RESET_PENDING,
    TRUNCATE_REDO,
    TruncateRedo,
    read_log_meta,
    read_truncate_redo,
    write_log_meta,
)
from pyjraft.storage.record import find_valid_batch, scan_batches
from pyjraft.storage.segment_file import (
    MAX_SEGMENT_BYTES,
    SEGMENT_HEADER_SIZE,
    Segment,
    decode_segment_header,
    load_index,
    refuse_older_format,
    segment_name,
    write_index,
)

__all__ = ["RecoveredLog", "recover_log"]

logger = logging.getLogger("pyjraft.storage")

_SEGMENT_RE = re.compile(r"^(\d{20})\.log$")
_SEGMENT_TMP_RE = re.compile(r"^\d{20}\.log\.tmp$")
_INDEX_RE = re.compile(r"^\d{20}\.idx(\.tmp)?$")
_O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)


class RecoveredLog(NamedTuple):
    """A log as recovery left it: where it starts, and its segments (open, verified,
    indexed, none of them appendable)."""

    first: int
    """The first index (from ``log_meta``)."""
    prev_term: int
    """The term of ``first - 1``."""
    segments: list[Segment]
    """Contiguous, the first holding ``first`` (or empty)."""


def recover_log(directory: str, dir_fd: int, block_bytes: int) -> RecoveredLog:
    """Recover the log in ``directory`` (``dir_fd``: an open descriptor of it, to
    fsync it): finish any interrupted truncation or reset, verify every segment,
    cut a torn tail. Raises `CorruptLogError` on damage, `OSError` on IO errors;
    on any error every segment it opened is closed again.

    Interrupted operations are finished in this order: a reset (``log_meta``
    marked "reset pending": every segment is deleted), a mid-batch
    `truncate_suffix` (``truncate_redo``), a `truncate_prefix`: ``log_meta``,
    durable before any unlink, says where the log starts, and the unlinks may
    have reached the disk in any order, so any subset of the segments wholly
    before it may be left. Every segment followed by one starting at or before
    the first index is such a segment; so is the last one left if its last
    entry is before it. All are deleted."""
    segments: list[Segment] = []
    try:
        first, prev_term = _recover(directory, dir_fd, block_bytes, segments)
    except BaseException:
        for seg in segments:
            os.close(seg.fd)
        raise
    return RecoveredLog(first, prev_term, segments)


def _recover(
    directory: str, dir_fd: int, block_bytes: int, segments: list[Segment]
) -> tuple[int, int]:
    first, prev_term, flags = read_log_meta(directory)
    redo = read_truncate_redo(directory)
    unlink_quietly(os.path.join(directory, TRUNCATE_REDO + ".tmp"))
    names: list[tuple[int, str]] = []
    for name in os.listdir(directory):
        if _SEGMENT_TMP_RE.match(name):
            # A replacement segment prepared but not renamed into place.
            unlink_quietly(os.path.join(directory, name))
            continue
        if not name.endswith(".log"):
            continue  # log_meta, journals, temp files, the lock, other components' files
        m = _SEGMENT_RE.match(name)
        if m is None:
            raise CorruptLogError(
                os.path.join(directory, name), 0, "not a segment name (20 digits + .log)"
            )
        names.append((int(m.group(1)), os.path.join(directory, name)))
    names.sort()
    if flags & RESET_PENDING:
        logger.warning("%s: finishing an interrupted reset(%d)", directory, first)
        for _, path in names:
            os.unlink(path)
        if redo is not None:
            os.unlink(os.path.join(directory, TRUNCATE_REDO))
            redo = None
        os.fsync(dir_fd)
        write_log_meta(directory, first, prev_term, 0, dir_fd)
        names = []
    if redo is not None:
        names = _redo_truncate(directory, dir_fd, redo, names)
    # Finish an interrupted truncate_prefix (see `recover_log`): the last
    # segment starting at or before `first` may also lie wholly before it;
    # that is known once it is loaded (below).
    k = bisect.bisect_right([n for n, _ in names], first) - 1
    if k > 0:
        logger.warning("%s: deleting %d segment(s) before first index %d", directory, k, first)
        for _, path in names[:k]:
            os.unlink(path)
        os.fsync(dir_fd)
        names = names[k:]
    if names and names[0][0] > first:
        raise CorruptLogError(
            names[0][1],
            0,
            f"log starts at index {first} (log_meta) but the first segment starts at {names[0][0]}",
        )
    for i, (seg_first, path) in enumerate(names):
        if segments and seg_first != segments[-1].last + 1:
            raise CorruptLogError(
                path,
                0,
                f"segment starts at index {seg_first} but the previous one ends at "
                f"{segments[-1].last} (missing or overlapping segment)",
            )
        seg = _load_segment(
            directory, dir_fd, block_bytes, path, seg_first, is_last=i == len(names) - 1
        )
        if seg is None:
            break  # the last one, torn while being created: deleted
        segments.append(seg)
    if segments and segments[0].last < first:
        # It holds nothing from `first` on: everything up to `first` was
        # compacted, and its unlink had not reached the disk. (A segment after
        # it would start at or before `first`, and have been chosen instead.)
        assert len(segments) == 1
        seg = segments.pop()
        logger.warning("%s: deleting %s, wholly before first index %d", directory, seg.path, first)
        os.close(seg.fd)
        os.unlink(seg.path)
        unlink_quietly(seg.index_path)
        os.fsync(dir_fd)
    # Indexes of deleted segments, of the last segment (it changes), temp files.
    keep = {seg.index_path for seg in segments[:-1]}
    for name in os.listdir(directory):
        path = os.path.join(directory, name)
        if _INDEX_RE.match(name) and path not in keep:
            unlink_quietly(path)
    return first, prev_term


def _redo_truncate(
    directory: str, dir_fd: int, redo: TruncateRedo, names: list[tuple[int, str]]
) -> list[tuple[int, str]]:
    """Finish an interrupted mid-batch `truncate_suffix` from its journal; return
    the segments left. Idempotent: a crash in here is redone by the next open."""
    journal = os.path.join(directory, TRUNCATE_REDO)
    path = os.path.join(directory, segment_name(redo.segment_first))
    if path not in {p for _, p in names}:
        raise CorruptLogError(
            journal, 0, f"names segment {path}, which does not exist (cannot redo the cut)"
        )
    later = [p for n, p in names if n > redo.segment_first]
    logger.warning(
        "%s: finishing an interrupted truncate_suffix: %s cut at offset %d, "
        "%d later segment(s) deleted",
        directory,
        path,
        redo.offset,
        len(later),
    )
    for p in reversed(later):
        os.unlink(p)
        unlink_quietly(p[: -len(".log")] + ".idx")
    if later:
        os.fsync(dir_fd)
    fd = os.open(path, os.O_RDWR | _O_CLOEXEC)
    try:
        size = os.fstat(fd).st_size
        if size < redo.offset:
            raise CorruptLogError(
                path, size, f"{TRUNCATE_REDO} cuts at offset {redo.offset}, past the end"
            )
        os.ftruncate(fd, redo.offset)
        pwrite_all(fd, redo.batch, redo.offset)
        sync_file(fd)
    finally:
        os.close(fd)
    os.unlink(journal)
    os.fsync(dir_fd)
    return [(n, p) for n, p in names if n <= redo.segment_first]


def _load_segment(
    directory: str, dir_fd: int, block_bytes: int, path: str, first: int, *, is_last: bool
) -> Segment | None:
    """Open, verify and index one segment; None if it is a last segment torn
    while being created (it is deleted). See the module docstring."""
    fd = os.open(path, os.O_RDWR | _O_CLOEXEC)
    try:
        size = os.fstat(fd).st_size
        head = os.pread(fd, SEGMENT_HEADER_SIZE, 0)
        header = decode_segment_header(head)
        if isinstance(header, str):
            refuse_older_format(fd, path, size)
            if not is_last or size > SEGMENT_HEADER_SIZE:
                # The header was durable before any batch was written: this is
                # damage, not a torn creation.
                raise CorruptLogError(path, 0, f"{header} (file of {size} bytes)")
            logger.warning(
                "%s: segment torn while being created (%s): it never held a batch; deleting it",
                path,
                header,
            )
            os.close(fd)
            fd = -1
            os.unlink(path)
            unlink_quietly(path[: -len(".log")] + ".idx")
            os.fsync(dir_fd)
            return None
        if header.first != first:
            raise CorruptLogError(
                path, 0, f"segment header says first index {header.first}, not {first}"
            )
        seg = Segment(path, fd, first, header.key)
        if not is_last and load_index(seg, size):
            return seg
        with mmap.mmap(fd, size, access=mmap.ACCESS_READ) as mm:
            res = scan_batches(
                mm,
                size,
                first,
                header.key,
                SEGMENT_HEADER_SIZE,
                block_bytes,
                MAX_SEGMENT_BYTES,
            )
            follower = -1
            if res.error is not None and not res.corrupt and is_last:
                next_index = first + res.entry_count
                follower = find_valid_batch(mm, res.end + 1, size, next_index, header.key)
            with memoryview(mm) as mv:
                seg.crc = crc32c.crc32c(mv[: res.end])
        seg.block_starts = res.block_starts
        seg.block_firsts = res.block_firsts
        seg.count = res.entry_count
        seg.run_starts = res.run_starts
        seg.run_terms = res.run_terms
        seg.size = res.end
        if res.error is None:
            if not is_last:
                write_index(seg)  # so the next open need not scan it
            return seg
        if res.corrupt or not is_last:
            where = "" if is_last else " (not the last segment)"
            raise CorruptLogError(path, res.end, res.error + where)
        if follower >= 0:
            raise CorruptLogError(
                path,
                res.end,
                f"{res.error}, but a batch written after it follows at offset {follower}",
            )
        logger.warning(
            "%s: torn tail at offset %d (%s): truncating %d byte(s); log ends at index %d",
            path,
            res.end,
            res.error,
            size - res.end,
            seg.last,
        )
        os.ftruncate(fd, res.end)
        sync_file(fd)
        return seg
    except BaseException:
        if fd >= 0:
            os.close(fd)
        raise
