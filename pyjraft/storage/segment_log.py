"""`SegmentLogStorage`: the durable raft log as a directory of append-only segment files.

Theory of operation
===================

Files in the log directory:

``<first index, 20 digits>.log``
    A segment: a 32-byte header holding the file's random *nonce*
    (`pyjraft.storage.segment_file`), then consecutive *batch records*,
    format version 3 (see `pyjraft.storage.record`): one per `append` call,
    a 28-byte batch header with one CRC32C over the whole batch, the
    per-entry headers (term, data length, type) as compact columns, then the
    data. Each batch's CRC is bound to its file's nonce and its own offset:
    it is valid nowhere else. The first entry of the first batch has the
    index in the file name. Only the last segment is ever appended to;
    segments are contiguous (each starts right after the previous one ends).
    Segments of format versions 1 and 2 are refused with `CorruptLogError`
    naming the format: there is no migration, as no such log was ever
    deployed.
``log_meta``
    The logical start of the log: ``first_index`` and the term of
    ``first_index - 1`` (what a snapshot covers), plus a "reset pending"
    flag. Replaced atomically (temp file, fsync, rename, fsync directory).
    Missing means ``first_index == 1``, previous term 0.
``truncate_redo``
    Present only while a `truncate_suffix` that cuts a batch in the middle is
    in progress (see below and `pyjraft.storage.log_meta`).
``<first index, 20 digits>.idx``
    Sidecar index of a *sealed* segment (every one but the last), written when
    the log rolls past it: block offsets and first indices, term runs, and the
    CRC32C of the whole segment file (`pyjraft.storage.segment_index`). An
    accelerator only: trusted when that whole-file CRC matches, otherwise
    ignored (as is an index of another format version).
``log.lock``
    Held with ``flock`` while open, so two processes never write one log.

Writing. `append` encodes the whole batch into one batch record (a few
C-level passes over the entries and one CRC32C call), writes it with one
``pwrite`` at the end of the last segment and makes it durable with one
``fdatasync`` (group commit). Before a batch, if the last segment has reached
``segment_bytes`` (or may not be appended to, below), a new segment named
``last_index + 1`` is created: its header written and fdatasynced, then the
directory fsynced, before any batch goes into it. A batch never spans two
segments, so a segment may exceed ``segment_bytes`` by at most one batch.

Every byte of a segment is written once. A segment is appended to only by
the process that created it, and only until it is truncated: a segment
found by `open`, or cut by `truncate_suffix`, is never written past its end
again, the next append starts a new file (an empty one of the same name is
replaced). So bytes past a truncation point (the batches a leader made us
cut, a torn batch recovery removed) can never reappear behind a later torn
append to the same file, where their offsets and nonce would make them
valid. (The one exception is the journaled rewrite of a cut batch, below.)
The cost is one more small file per restart.

The in-memory index holds file
offsets as 32-bit integers, so no batch may start past 4 GiB - 1
(`MAX_SEGMENT_BYTES`, also the largest ``segment_bytes``): the log also rolls
before a batch that would end past it. `truncate_prefix` first records the
new start in ``log_meta`` (durably), then unlinks segments lying wholly before
it; the segment holding the new start keeps its older batches, whose entries
are simply invisible. Those unlinks may reach the disk in any order: on open,
any subset of the segments before the new start may be left, and each is
recognised as wholly before it (it is followed by a segment starting at or
before the new start, or, if it is the last one, its last entry is before
it) and deleted. `reset` sets the "reset pending" flag in ``log_meta``,
unlinks every segment, then clears the flag.

`truncate_suffix` unlinks later segments (newest first) and cuts the segment
holding the cut. At a batch boundary it simply ftruncates there. In the
middle of a batch B (entries ``f..l``, cut after ``k``, ``f <= k < l``) the
kept prefix ``f..k`` must survive (those entries may be committed), but
batches are CRC-framed whole, so B must be replaced in place by a new batch
B' holding ``f..k``; and B' cannot be written before B is gone (indices are
contiguous, the file position is B's). The steps are:

1. read and verify B, encode B';
2. write ``truncate_redo`` = (segment, offset of B, B') atomically: temp file,
   fsync, rename, fsync directory. This is the commit point of the cut;
3. unlink the later segments (newest first), fsync the directory;
4. ftruncate the segment at B's offset, ``pwrite`` B' there, fsync;
5. unlink ``truncate_redo``, fsync the directory.

A crash before 2 leaves the old log intact (the cut entries are uncommitted
by Raft's contract, and the kept ones are in B). A crash anywhere after 2
leaves the redo file, which every open applies *before* scanning anything:
it deletes segments after the named one, ftruncates at the offset, writes
B', fsyncs, then removes the journal. The redo is idempotent, so a crash
during recovery is handled the same way. The kept prefix is therefore
always either in B on disk, or in the journal, or in B' made durable: at no
point is it only in memory. (With ``sync=False`` steps 2, 4 and 5 still
fsync, so this holds there too.)

Reading and concurrency. Each segment keeps a small in-memory index that
does not grow with its number of entries: block offsets, term runs
(`pyjraft.storage.segment_file`); a 1 GiB log costs well under a megabyte
whatever its batch sizes. Recently appended entries are also kept in a
cache bounded in bytes of memory (data plus `CACHED_ENTRY_OVERHEAD` per
entry for its Python objects), a contiguous suffix of the log
(`pyjraft.storage.entry_cache`). Older entries are read with ``pread`` a
whole block at a time, and every batch of the block is CRC-verified in full
before any entry of it is returned; ``max_bytes`` budgets are applied to
the decoded entries. A small LRU of recently verified, decoded blocks
serves repeated reads of one block (a follower catching up in ``max_bytes``
pieces). One writer thread calls the mutating methods while another thread
reads indices the write does not touch: a `threading.Lock` guards the
in-memory index, and is never held across a write, an fsync or an unlink,
so reads are never blocked by an fsync. (Reads from disk ``pread`` under
the lock, so a segment's fd cannot be closed and reused underneath them.)

Recovery on open (`pyjraft.storage.segment_recovery`) finishes any
interrupted operation, verifies every byte of every segment, cuts a torn
tail and refuses anything else that is wrong with `CorruptLogError` naming
the file and offset. A torn tail is told from damage by structure: see
there.

Durability. With ``sync=False`` no fdatasync is issued on appends: this is
UNSAFE, acknowledged writes may be lost (and the log found corrupt) after a
power failure or OS crash; it exists for tests and benchmarks. After any IO
error in a mutating call the storage refuses further writes
(`StorageError`): after a failed fsync the page cache state is unknown, and
retrying would lie.
"""

from __future__ import annotations

import bisect
import contextlib
import logging
import os
import threading
from collections.abc import Sequence

import crc32c

from pyjraft.core.log_reader import LogUnavailableError
from pyjraft.core.types import Entry, count_within, entries_size
from pyjraft.storage._fileutil import (
    file_crc,
    is_fd_exhaustion,
    lock_directory,
    make_dirs_durable,
    open_dir_fd,
    pwrite_all,
    sync_data,
    sync_file,
    unlink_quietly,
)
from pyjraft.storage.api import StorageError, TransientStorageError
from pyjraft.storage.entry_cache import (
    CACHED_ENTRY_OVERHEAD,
    EntryCache,
    VerifiedBlocks,
    cached_cost,
)
from pyjraft.storage.log_meta import (
    RESET_PENDING,
    TRUNCATE_REDO,
    write_log_meta,
    write_truncate_redo,
)
from pyjraft.storage.record import EncodedBatch, SegmentKey, encode_batch
from pyjraft.storage.segment_file import (
    MAX_SEGMENT_BYTES,
    SEGMENT_HEADER_SIZE,
    Segment,
    create_segment,
    new_nonce,
    read_block,
    segment_name,
    write_index,
)
from pyjraft.storage.segment_recovery import recover_log

__all__ = [
    "CACHED_ENTRY_OVERHEAD",
    "MAX_SEGMENT_BYTES",
    "SegmentLogStorage",
    "cached_cost",
    "segment_name",
]

logger = logging.getLogger("pyjraft.storage")

_MiB = 1 << 20
_BLOCK_BYTES = 32 << 10  # default granularity of the in-memory index
_ENTRY_OVERHEAD = 16  # Entry.size = len(data) + 16


class SegmentLogStorage:
    """A durable `LogStorage` in a directory of segment files (see the module docstring).

    ``SegmentLogStorage(directory)`` and ``SegmentLogStorage.open(directory)`` are the
    same: they create the directory if needed (and any missing parent, each level
    fsynced in its parent), lock it, recover it and return a
    ready log. Options:

    ``sync``
        fdatasync every append and truncation (default). ``sync=False`` is UNSAFE:
        acknowledged writes may be lost on power failure or OS crash.
    ``segment_bytes``
        roll to a new segment file once the current one reaches this size.
    ``cache_bytes``
        memory budget of recently appended entries served from memory: their data
        plus `CACHED_ENTRY_OVERHEAD` bytes each for their Python objects.
    ``block_bytes``
        granularity of the in-memory index: older entries are read and verified
        a block (a run of whole batches of about this many bytes) at a time.

    Raises `CorruptLogError` if the directory holds damage that is not a torn tail,
    `StorageError` if it cannot be opened (IO error, already open elsewhere),
    `TransientStorageError` if no file descriptor was left (open again later).
    Every mutating method raises `TransientStorageError` (retryable: nothing was
    changed, the log stays usable) when it needs a new file descriptor and none
    is left, and `StorageError` (fatal: the log refuses further writes) on any
    other IO failure.
    Threading: one thread may call the mutating methods while others read indices
    the mutation does not touch; `close` only once the writer has stopped.
    """

    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        sync: bool = True,
        segment_bytes: int = 64 * _MiB,
        cache_bytes: int = 32 * _MiB,
        block_bytes: int = _BLOCK_BYTES,
    ) -> None:
        if not 1 <= segment_bytes <= MAX_SEGMENT_BYTES:
            raise ValueError(
                f"segment_bytes must be in [1, {MAX_SEGMENT_BYTES}], got {segment_bytes}"
            )
        if cache_bytes < 0:
            raise ValueError(f"cache_bytes must not be negative, got {cache_bytes}")
        if block_bytes < 1:
            raise ValueError(f"block_bytes must be positive, got {block_bytes}")
        self._dir = os.path.abspath(os.fspath(directory))
        self._sync = sync
        self._segment_bytes = segment_bytes
        self._cache_bytes = cache_bytes
        self._block_bytes = block_bytes
        self._lock = threading.Lock()
        self._segments: list[Segment] = []
        self._seg_firsts: list[int] = []  # parallel to _segments, for bisect
        self._first = 1
        self._prev_term = 0
        self._last = 0
        self._cache = EntryCache(cache_bytes, 1)  # entries [cache.first, _last]
        self._verified = VerifiedBlocks()
        self._closed = False
        self._failed: str | None = None
        self._lock_fd = -1
        self._dir_fd = -1  # held open: fsyncing the directory never needs a new fd
        # A reset's final log_meta write that failed for want of a descriptor: it is
        # retried before any other change (see `_check_writable`).
        self._meta_pending: tuple[int, int] | None = None
        try:
            make_dirs_durable(self._dir)
            self._lock_fd = lock_directory(self._dir)
            self._dir_fd = open_dir_fd(self._dir)
            recovered = recover_log(self._dir, self._dir_fd, block_bytes)
        except BaseException as exc:
            self._close_files()
            if is_fd_exhaustion(exc):
                # Recovery is idempotent: opening again is safe.
                raise TransientStorageError(f"{self._dir}: cannot open log: {exc}") from exc
            if isinstance(exc, OSError):
                raise StorageError(f"{self._dir}: cannot open log: {exc}") from exc
            raise
        self._first = recovered.first
        self._prev_term = recovered.prev_term
        self._segments = recovered.segments
        self._seg_firsts = [seg.first for seg in self._segments]
        self._last = self._segments[-1].last if self._segments else self._first - 1
        self._cache.clear(self._last + 1)

    @classmethod
    def open(
        cls,
        directory: str | os.PathLike[str],
        *,
        sync: bool = True,
        segment_bytes: int = 64 * _MiB,
        cache_bytes: int = 32 * _MiB,
        block_bytes: int = _BLOCK_BYTES,
    ) -> SegmentLogStorage:
        """Open (creating if needed) and recover the log in ``directory``; see the class doc."""
        return cls(
            directory,
            sync=sync,
            segment_bytes=segment_bytes,
            cache_bytes=cache_bytes,
            block_bytes=block_bytes,
        )

    @property
    def directory(self) -> str:
        """The log directory (absolute)."""
        return self._dir

    # ------------------------------------------------------------------ reads

    def first_index(self) -> int:
        """Index of the first entry held (1 for a log never compacted)."""
        with self._lock:
            self._check_open()
            return self._first

    def last_index(self) -> int:
        """Index of the last entry held (``first_index() - 1`` when empty)."""
        # One attribute read is atomic: no lock (the core asks this a dozen
        # times per write).
        if self._closed:
            raise ValueError("log storage is closed")
        return self._last

    def term(self, index: int) -> int:
        """Term of the entry at ``index``, from ``first_index() - 1`` to ``last_index()``.

        Raises `LogUnavailableError` outside that range.
        """
        with self._lock:
            self._check_open()
            if index == self._first - 1:
                return self._prev_term
            if index < self._first or index > self._last:
                raise LogUnavailableError(
                    f"term({index}): log holds {self._first - 1}..{self._last}"
                )
            cache = self._cache
            if index >= cache.first:
                return cache.entries[cache.head + index - cache.first].term
            return self._segment_of(index).term(index)

    def entries(self, lo: int, hi: int, max_bytes: int | None = None) -> list[Entry]:
        """Entries ``[lo, hi)``; with ``max_bytes`` a non-empty prefix within that size.

        Raises `LogUnavailableError` if the range is not held, `CorruptLogError` if
        a batch read from disk fails validation.
        """
        with self._lock:
            self._check_open()
            if lo < self._first or hi > self._last + 1 or lo > hi:
                raise LogUnavailableError(
                    f"entries[{lo}, {hi}): log holds {self._first}..{self._last}"
                )
            out: list[Entry] = []
            used = 0
            cache = self._cache
            if lo < cache.first:
                end = min(hi, cache.first)
                used = self._read_disk(lo, end, max_bytes, out)
                if used < 0:
                    return out  # max_bytes reached
                lo = end
            if lo < hi:
                base = cache.head - cache.first
                chunk = cache.entries[base + lo : base + hi]
                if max_bytes is None:
                    out.extend(chunk)
                else:
                    out.extend(chunk[: count_within(chunk, max_bytes, used)])
            return out

    def _read_disk(self, lo: int, hi: int, max_bytes: int | None, out: list[Entry]) -> int:
        """Append entries ``[lo, hi)`` read from segment files to ``out`` (empty on
        entry), within ``max_bytes`` if given (at least one entry). Returns the bytes
        taken (`Entry.size`), or -1 once ``max_bytes`` is reached."""
        used = 0
        i = bisect.bisect_right(self._seg_firsts, lo) - 1
        while lo < hi:
            seg = self._segments[i]
            stop = min(hi, seg.last + 1)
            k = seg.block_of(lo)
            while lo < stop:
                if max_bytes is not None and max_bytes - used < _ENTRY_OVERHEAD and out:
                    return -1  # not even an empty entry fits: read no further block
                entries, first = self._load_block(seg, k)
                take = entries[lo - first : stop - first]
                if max_bytes is not None:
                    n = count_within(take, max_bytes, used)
                    if n < len(take):
                        out.extend(take[:n])
                        return -1
                    used += entries_size(take)
                out.extend(take)
                lo += len(take)
                k += 1
            i += 1
        return used

    def _load_block(self, seg: Segment, k: int) -> tuple[list[Entry], int]:
        """The entries of block ``k`` of ``seg`` and the first one's index, read and
        verified in full (or from the LRU of verified blocks). Called with the lock
        held."""
        start, end, first, count = seg.block_span(k)
        key = (seg.first, start)
        got = self._verified.get(key, count)
        if got is None:
            got = read_block(seg, start, end, first, count).entries
            self._verified.put(key, got, end - start)
        return got, first

    def _segment_of(self, index: int) -> Segment:
        return self._segments[bisect.bisect_right(self._seg_firsts, index) - 1]

    # ----------------------------------------------------------------- writes

    def append(self, entries: Sequence[Entry]) -> None:
        """Append a contiguous batch starting at ``last_index() + 1``, durable on return
        (one write, one fdatasync). Raises `ValueError` on a gap or overlap."""
        self._check_writable()
        if not entries:
            return
        seg = self._segments[-1] if self._segments else None
        first = self._last + 1
        # Encode (and so validate) before touching any file.
        new_key: SegmentKey | None = None
        if seg is None or not seg.appendable or (seg.count > 0 and seg.size >= self._segment_bytes):
            new_key = SegmentKey(new_nonce())
            enc = encode_batch(entries, first, -1, new_key, SEGMENT_HEADER_SIZE)
        else:
            enc = encode_batch(entries, first, seg.last_term, seg.key, seg.size)
            if seg.count > 0 and seg.size + len(enc.buf) > MAX_SEGMENT_BYTES:
                # Every batch must start at an offset the 32-bit index can hold.
                new_key = SegmentKey(new_nonce())
                enc = encode_batch(enc.entries, first, -1, new_key, SEGMENT_HEADER_SIZE)
        if new_key is not None:
            sealed = seg
            seg = self._new_segment(first, new_key)
            if sealed is not None and sealed.count > 0:
                write_index(sealed)
        assert seg is not None
        start = seg.size
        try:
            pwrite_all(seg.fd, enc.buf, start)
            if self._sync:
                sync_data(seg.fd)
        except OSError as exc:
            self._fail(f"append to {seg.path} failed: {exc}")
            # Best effort: leave no partial batch behind for the next append to follow.
            with contextlib.suppress(OSError):
                os.ftruncate(seg.fd, start)
            raise StorageError(self._failed) from exc
        seg.crc = crc32c.crc32c(enc.buf, seg.crc)
        with self._lock:
            seg.add_batch(start, first, self._block_bytes)
            seg.count += len(enc.entries)
            seg.run_starts.extend(enc.run_starts)
            seg.run_terms.extend(enc.run_terms)
            seg.size = start + len(enc.buf)
            self._last += len(enc.entries)
            self._cache.add(enc.entries, enc.entry_bytes)

    def truncate_suffix(self, last_kept: int) -> None:
        """Drop every entry after ``last_kept``, durably. Raises `ValueError` if
        ``last_kept < first_index() - 1``.

        A cut in the middle of a batch rewrites the kept part of that batch as a new
        batch in the same place, journaled in ``truncate_redo`` first so that a crash
        at any point loses none of the kept entries (see the module docstring)."""
        self._check_writable()
        if last_kept < self._first - 1:
            raise ValueError(f"truncate_suffix({last_kept}) below first index {self._first}")
        if last_kept >= self._last:
            return
        cut = last_kept + 1
        rewrite: EncodedBatch | None = None
        with self._lock:
            i = bisect.bisect_right(self._seg_firsts, cut) - 1
            seg: Segment | None = self._segments[i]
            assert seg is not None
            k = 0
            start = 0  # offset of the batch holding the cut
            keep_block = False  # whether block k keeps a batch
            if cut > seg.first:
                k = seg.block_of(cut)
                kstart, kend, kfirst, kcount = seg.block_span(k)
                # Verified read: the kept prefix is rewritten from checked bytes only.
                block = read_block(seg, kstart, kend, kfirst, kcount)
                j = bisect.bisect_right(block.firsts, cut) - 1
                start = kstart + block.offsets[j]
                bfirst = block.firsts[j]
                keep_block = j > 0 or bfirst < cut
                if bfirst < cut:
                    kept = block.entries[bfirst - kfirst : cut - kfirst]
                    rewrite = encode_batch(kept, bfirst, -1, seg.key, start)
        if rewrite is not None:
            assert seg is not None
            try:
                write_truncate_redo(self._dir, seg.first, start, bytes(rewrite.buf), self._dir_fd)
            except OSError as exc:
                self._fail(f"truncate_suffix({last_kept}): writing {TRUNCATE_REDO} failed: {exc}")
                raise StorageError(self._failed) from exc
            self._crash_point("redo_written")
        with self._lock:
            doomed = self._segments[i + 1 :]
            if cut == seg.first:
                doomed.insert(0, seg)
                seg = None
                del self._segments[i:]
                del self._seg_firsts[i:]
            else:
                del self._segments[i + 1 :]
                del self._seg_firsts[i + 1 :]
                nk = k + 1 if keep_block else k
                del seg.block_starts[nk:]
                del seg.block_firsts[nk:]
                seg.count = cut - seg.first
                j = bisect.bisect_left(seg.run_starts, cut)
                del seg.run_starts[j:]
                del seg.run_terms[j:]
                seg.size = start + (len(rewrite.buf) if rewrite is not None else 0)
                # Never appended to again: the next append starts a new file.
                seg.appendable = False
            self._last = last_kept
            self._verified.clear()
            self._cache.drop_from(cut)
        try:
            # Newest first, so a crash in the middle leaves a contiguous (shorter) log.
            for d in reversed(doomed):
                os.close(d.fd)
                os.unlink(d.path)
                unlink_quietly(d.index_path)
                self._fsync_dir()
            self._crash_point("segments_unlinked")
            if seg is not None:
                unlink_quietly(seg.index_path)  # it is the last segment now
                os.ftruncate(seg.fd, start if rewrite is not None else seg.size)
                if rewrite is not None:
                    self._crash_point("ftruncated")
                    pwrite_all(seg.fd, rewrite.buf, start)
                    self._crash_point("rewritten")
                if self._sync or rewrite is not None:
                    sync_file(seg.fd)
                seg.crc = file_crc(seg.fd, seg.size)
            if rewrite is not None:
                self._crash_point("synced")
                os.unlink(os.path.join(self._dir, TRUNCATE_REDO))
                self._fsync_dir()
        except OSError as exc:
            self._fail(f"truncate_suffix({last_kept}) failed: {exc}")
            raise StorageError(self._failed) from exc

    def _crash_point(self, where: str) -> None:
        """Test hook: called between the steps of a mid-batch truncation."""

    def truncate_prefix(self, first_kept: int) -> None:
        """Forget entries before ``first_kept``: record the new start in ``log_meta``,
        then delete the segments lying wholly before it. ``term(first_kept - 1)``
        stays answerable, also after reopening. No-op if ``first_kept <= first_index()``;
        `ValueError` if ``first_kept > last_index() + 1``."""
        self._check_writable()
        if first_kept <= self._first:
            return
        if first_kept > self._last + 1:
            raise ValueError(f"truncate_prefix({first_kept}) past last index {self._last}")
        prev_term = self.term(first_kept - 1)
        try:
            self._write_log_meta(first_kept, prev_term, 0)
        except OSError as exc:
            self._fail(f"truncate_prefix({first_kept}): writing log_meta failed: {exc}")
            raise StorageError(self._failed) from exc
        self._crash_point("log_meta_written")
        with self._lock:
            self._first = first_kept
            self._prev_term = prev_term
            n = 0
            while n < len(self._segments) and self._segments[n].last < first_kept:
                n += 1
            doomed = self._segments[:n]
            del self._segments[:n]
            del self._seg_firsts[:n]
            self._verified.clear()
            self._cache.drop_before(first_kept)
        self._unlink_segments(doomed, f"truncate_prefix({first_kept})")

    def reset(self, next_index: int, prev_term: int) -> None:
        """Discard everything: the log becomes empty with ``first_index() == next_index``
        and ``term(next_index - 1) == prev_term``. Crash-safe: an interrupted reset is
        finished by the next open."""
        self._check_writable()
        if next_index < 1 or prev_term < 0:
            raise ValueError(f"reset({next_index}, {prev_term}): out of range")
        try:
            self._write_log_meta(next_index, prev_term, RESET_PENDING)
        except OSError as exc:
            self._fail(f"reset: writing log_meta failed: {exc}")
            raise StorageError(self._failed) from exc
        with self._lock:
            doomed = self._segments
            self._segments = []
            self._seg_firsts = []
            self._first = next_index
            self._prev_term = prev_term
            self._last = next_index - 1
            self._cache.clear(next_index)
            self._verified.clear()
        self._unlink_segments(doomed, f"reset({next_index})")
        # Until this write lands, the "reset pending" flag would make the next open
        # delete every segment: no other change may happen before it.
        self._meta_pending = (next_index, prev_term)
        self._finish_meta()

    def _finish_meta(self) -> None:
        """Clear the "reset pending" flag of a reset whose last step has not been
        done; `TransientStorageError` leaves it pending, to be retried first."""
        assert self._meta_pending is not None
        next_index, prev_term = self._meta_pending
        try:
            self._write_log_meta(next_index, prev_term, 0)
        except OSError as exc:
            self._fail(f"reset: writing log_meta failed: {exc}")
            raise StorageError(self._failed) from exc
        self._meta_pending = None

    def close(self) -> None:
        """Release files and the directory lock. Further calls raise `ValueError`."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._cache.clear(self._last + 1)
            self._close_files()

    # -------------------------------------------------------------- internals

    def _check_open(self) -> None:
        if self._closed:
            raise ValueError("log storage is closed")

    def _check_writable(self) -> None:
        self._check_open()
        if self._failed is not None:
            raise StorageError(f"log storage failed earlier: {self._failed}")
        if self._meta_pending is not None:
            self._finish_meta()

    def _fsync_dir(self) -> None:
        os.fsync(self._dir_fd)

    def _fail(self, reason: str) -> None:
        self._failed = reason
        logger.error("%s: %s; refusing further writes", self._dir, reason)

    def _new_segment(self, first: int, key: SegmentKey) -> Segment:
        """Create the segment starting at ``first`` (`create_segment`), replacing an
        empty last segment of the same name (one not appended to since it was
        opened). `TransientStorageError` if no descriptor is left: nothing changed."""
        old = self._segments[-1] if self._segments else None
        replace = old is not None and old.first == first
        assert not replace or (old is not None and old.count == 0), "only an empty one"
        try:
            seg = create_segment(self._dir, self._dir_fd, first, key, replace=replace)
        except OSError as exc:
            self._fail(f"cannot create segment {segment_name(first)}: {exc}")
            raise StorageError(self._failed) from exc
        with self._lock:
            if replace:
                del self._segments[-1]
                del self._seg_firsts[-1]
            self._segments.append(seg)
            self._seg_firsts.append(first)
        if replace and old is not None:
            os.close(old.fd)
        return seg

    def _unlink_segments(self, doomed: list[Segment], what: str) -> None:
        if not doomed:
            return
        try:
            for d in doomed:
                os.close(d.fd)
                os.unlink(d.path)
                unlink_quietly(d.index_path)
            self._fsync_dir()
        except OSError as exc:
            self._fail(f"{what}: deleting segments failed: {exc}")
            raise StorageError(self._failed) from exc

    def _close_files(self) -> None:
        self._verified.clear()
        for seg in self._segments:
            with contextlib.suppress(OSError):
                os.close(seg.fd)
        self._segments = []
        self._seg_firsts = []
        if self._dir_fd >= 0:
            os.close(self._dir_fd)
            self._dir_fd = -1
        if self._lock_fd >= 0:
            os.close(self._lock_fd)  # releases the flock
            self._lock_fd = -1

    def _write_log_meta(self, first: int, prev_term: int, flags: int) -> None:
        write_log_meta(self._dir, first, prev_term, flags, self._dir_fd)
