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

Reading and concurrency. The in-memory index of a segment does not grow with
its number of entries or batches. The batches are grouped into *blocks*: a
batch starts a new block when it starts at least ``block_bytes`` (32 KiB)
after the current block's start, so a block is one batch of 32 KiB or more,
or a run of smaller batches of at most 32 KiB plus one batch. Each segment
keeps, in ``array('I')``\\s, the file offset and first index (relative to
the segment's) of every block, its entry count, and its terms as runs (first
index, term): a 1 GiB log costs well under a megabyte whatever its batch
sizes (the per-batch offsets and per-entry lengths this replaced took 150
MiB for 1 GiB of one 100-byte entry per batch, 36 MiB with 1,000 per batch).
Recently appended entries are also kept in a cache bounded in bytes of
memory (data plus `CACHED_ENTRY_OVERHEAD` per entry for its Python
objects), a contiguous suffix of the log. Older entries are read
with ``pread`` a whole block at a time, and every batch of the block is
CRC-verified in full before any entry of it is returned; ``max_bytes``
budgets are applied to the decoded entries. A small LRU of recently
verified, decoded blocks (8 MiB, counting an estimate of the decoded
objects' size) serves repeated reads of one block (a follower catching up in
``max_bytes`` pieces). One writer thread calls the mutating
methods while another thread reads indices the write does not touch: a
`threading.Lock` guards the in-memory index, and is never held across a
write, an fsync or an unlink, so reads are never blocked by an fsync. (Reads
from disk ``pread`` under the lock, so a segment's fd cannot be closed and
reused underneath them.)

Recovery on open. A pending ``truncate_redo`` is applied first (see above).
Every byte of every segment is CRC-checked. A sealed segment with a valid
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
  point is ever rewritten (above), so this file's own cut-away batches
  cannot reappear where they were. Without such an R, E is the last write,
  never acknowledged: the file is truncated at E's start (ftruncate +
  fsync) and a warning is logged on ``pyjraft.storage``.
* Torn creation: a last segment whose header is missing or invalid and
  that is no longer than a header never held a batch (the header is durable
  before the first batch is written): it is deleted, with a warning. An
  invalid header in a longer file, or in any other segment, is damage.
* Everything else refuses to open with `CorruptLogError` naming the file and
  offset: an invalid batch followed by one written after it (above), an
  invalid batch in any other segment, a CRC-valid batch with an unknown version, set flags or
  reserved bits, no entries, lengths not adding up, an unknown type or an
  unexpected first index (including a segment whose first batch does not
  match its name), a segment of format 1 or 2, a gap or overlap between segments,
  a first segment starting after ``first_index``, a damaged ``log_meta`` or
  ``truncate_redo``, a segment header naming another first index or an
  unknown format version. Nothing is silently dropped.

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
import mmap
import os
import re
import threading
from array import array
from collections import OrderedDict, deque
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
    open_fd,
    pwrite_all,
    sync_data,
    sync_file,
    unlink_quietly,
)
from pyjraft.storage.api import CorruptLogError, StorageError, TransientStorageError
from pyjraft.storage.log_meta import (
    RESET_PENDING,
    TRUNCATE_REDO,
    TruncateRedo,
    read_log_meta,
    read_truncate_redo,
    write_log_meta,
    write_truncate_redo,
)
from pyjraft.storage.record import (
    FORMAT_VERSION,
    MAX_BATCH_START,
    DecodedBlock,
    EncodedBatch,
    SegmentKey,
    decode_batches,
    encode_batch,
    find_valid_batch,
    looks_like_v1,
    looks_like_v2,
    scan_batches,
)
from pyjraft.storage.segment_file import (
    SEGMENT_HEADER_SIZE,
    decode_segment_header,
    encode_segment_header,
    new_nonce,
    segment_name,
)
from pyjraft.storage.segment_index import decode_index, encode_index

__all__ = ["MAX_SEGMENT_BYTES", "SegmentLogStorage", "segment_name"]

logger = logging.getLogger("pyjraft.storage")

_SEGMENT_RE = re.compile(r"^(\d{20})\.log$")
_SEGMENT_TMP_RE = re.compile(r"^\d{20}\.log\.tmp$")
_INDEX_RE = re.compile(r"^\d{20}\.idx(\.tmp)?$")
_MiB = 1 << 20
_CACHE_COMPACT = 4096
# Evicted entries still at the head of the cache list, as a fraction of the list,
# beyond which the list is compacted (each compaction moves every pointer once).
_CACHE_SLACK = 8
# Budget of the LRU of verified blocks read from disk, counted as the block's bytes
# plus an estimate of the Python objects each decoded entry adds (its Entry tuple,
# index int, bytes header and list slot: about 140 bytes on 64-bit CPython).
_VERIFIED_BYTES = 8 * _MiB
_DECODED_ENTRY_OVERHEAD = 128
_BLOCK_BYTES = 32 << 10  # default granularity of the in-memory index
_ENTRY_OVERHEAD = 16  # Entry.size = len(data) + 16
# What a cached entry costs beyond its data, in Python objects: its Entry tuple
# (with the GC header), its index int, its bytes header and its list slot. The
# cache budget counts this, so that ``cache_bytes`` is memory, not payload
# (measured with tracemalloc on 64-bit CPython 3.11: 153 bytes).
CACHED_ENTRY_OVERHEAD = 152


def cached_cost(entries: Sequence[Entry]) -> int:
    """Bytes ``entries`` count for against the entry cache's budget."""
    return _cost(entries_size(entries), len(entries))


def _cost(entry_bytes: int, count: int) -> int:
    # `cached_cost` of ``count`` entries whose `Entry.size` sums to ``entry_bytes``.
    return entry_bytes + (CACHED_ENTRY_OVERHEAD - _ENTRY_OVERHEAD) * count


_O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
assert array("I").itemsize == 4, "the index needs a 32-bit array('I')"

MAX_SEGMENT_BYTES = MAX_BATCH_START
"""Largest accepted ``segment_bytes`` (4 GiB - 1): segment offsets are indexed as
32-bit integers. A segment may still exceed it by one batch (its last)."""


class _Segment:
    """One segment file and its in-memory index (see "Reading" in the module doc)."""

    __slots__ = (
        "appendable",
        "block_firsts",
        "block_starts",
        "count",
        "crc",
        "fd",
        "first",
        "key",
        "path",
        "run_starts",
        "run_terms",
        "size",
    )

    def __init__(self, path: str, fd: int, first: int, key: SegmentKey) -> None:
        self.path = path
        self.fd = fd
        self.first = first
        self.key = key  # binds the file's batches to it (`pyjraft.storage.record`)
        # Only a file this process created, and never truncated since, is appended
        # to: no byte past its end was ever written, so no stale batch of it can
        # reappear behind a torn append (see "Recovery" in the module doc).
        self.appendable = False
        self.block_starts: array[int] = array("I")  # file offset of each block
        self.block_firsts: array[int] = array("I")  # first index of each block, minus `first`
        self.count = 0  # entries
        # Terms change rarely: runs (first index, term) cost far less than one per entry.
        self.run_starts: array[int] = array("Q")
        self.run_terms: array[int] = array("Q")
        self.size = SEGMENT_HEADER_SIZE  # end of the valid batches: the next one goes here
        self.crc = 0  # CRC32C of bytes [0, size): what the sidecar index records

    @property
    def index_path(self) -> str:
        """Path of this segment's sidecar index (see `pyjraft.storage.segment_index`)."""
        return self.path[: -len(".log")] + ".idx"

    @property
    def last(self) -> int:
        return self.first + self.count - 1

    def term(self, index: int) -> int:
        """Term of the entry at ``index`` (which this segment must hold)."""
        return self.run_terms[bisect.bisect_right(self.run_starts, index) - 1]

    @property
    def last_term(self) -> int:
        """Term of the last entry, -1 if empty."""
        return self.run_terms[-1] if self.run_terms else -1

    def block_of(self, index: int) -> int:
        """Number of the block holding ``index`` (which this segment must hold)."""
        return bisect.bisect_right(self.block_firsts, index - self.first) - 1

    def block_span(self, k: int) -> tuple[int, int, int, int]:
        """``(offset, end offset, first index, entry count)`` of block number ``k``."""
        nk = k + 1
        if nk < len(self.block_starts):
            end, nxt = self.block_starts[nk], self.block_firsts[nk]
        else:
            end, nxt = self.size, self.count
        first = self.block_firsts[k]
        return self.block_starts[k], end, self.first + first, nxt - first

    def add_batch(self, start: int, first: int, block_bytes: int) -> None:
        """Index a batch appended at ``start`` whose first index is ``first``: it
        starts a new block if it starts ``block_bytes`` or more after the last block
        (the rule `pyjraft.storage.record.scan_batches` follows too)."""
        starts = self.block_starts
        if not starts or start - starts[-1] >= block_bytes:
            starts.append(start)
            self.block_firsts.append(first - self.first)


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
        self._segments: list[_Segment] = []
        self._seg_firsts: list[int] = []  # parallel to _segments, for bisect
        self._first = 1
        self._prev_term = 0
        self._last = 0
        # Cache: entries [_cache_first, _last] are _cache[_cache_head:].
        self._cache: list[Entry] = []
        self._cache_head = 0
        self._cache_first = 1
        self._cache_size = 0
        # The cache as appended batches, oldest first: [entry count, bytes] each, so
        # that eviction costs O(1) per batch instead of a Python step per entry.
        self._cache_runs: deque[list[int]] = deque()
        # LRU of blocks read from disk and verified: (segment first, offset) -> entries.
        self._verified: OrderedDict[tuple[int, int], tuple[list[Entry], int]] = OrderedDict()
        self._verified_bytes = 0
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
            self._recover()
        except BaseException as exc:
            self._close_files()
            if is_fd_exhaustion(exc):
                # Recovery is idempotent: opening again is safe.
                raise TransientStorageError(f"{self._dir}: cannot open log: {exc}") from exc
            if isinstance(exc, OSError):
                raise StorageError(f"{self._dir}: cannot open log: {exc}") from exc
            raise
        self._cache_first = self._last + 1

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
            if index >= self._cache_first:
                return self._cache[self._cache_head + index - self._cache_first].term
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
            if lo < self._cache_first:
                end = min(hi, self._cache_first)
                used = self._read_disk(lo, end, max_bytes, out)
                if used < 0:
                    return out  # max_bytes reached
                lo = end
            if lo < hi:
                base = self._cache_head - self._cache_first
                chunk = self._cache[base + lo : base + hi]
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

    def _load_block(self, seg: _Segment, k: int) -> tuple[list[Entry], int]:
        """The entries of block ``k`` of ``seg`` and the first one's index, read and
        verified in full (or from the LRU of verified blocks). Called with the lock
        held."""
        start, end, first, count = seg.block_span(k)
        key = (seg.first, start)
        hit = self._verified.get(key)
        if hit is not None:
            if len(hit[0]) == count:
                self._verified.move_to_end(key)
                return hit[0], first
            # The block has grown (it is the last one and batches joined it since).
            del self._verified[key]
            self._verified_bytes -= hit[1]
        got = self._read_block(seg, start, end, first, count).entries
        cost = end - start + _DECODED_ENTRY_OVERHEAD * count
        self._verified[key] = (got, cost)
        self._verified_bytes += cost
        while self._verified_bytes > _VERIFIED_BYTES and len(self._verified) > 1:
            _key, (_old, nbytes) = self._verified.popitem(last=False)
            self._verified_bytes -= nbytes
        return got, first

    def _read_block(
        self, seg: _Segment, start: int, end: int, first: int, count: int
    ) -> DecodedBlock:
        """Read the batches in ``[start, end)`` of ``seg`` (``count`` entries from
        ``first``) and verify every one of them."""
        buf = _pread_exact(seg, end - start, start)
        return decode_batches(buf, seg.path, start, first, count, seg.key)

    def _clear_verified(self) -> None:
        self._verified.clear()
        self._verified_bytes = 0

    def _segment_of(self, index: int) -> _Segment:
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
                self._write_index(sealed)
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
            self._cache.extend(enc.entries)
            cost = _cost(enc.entry_bytes, len(enc.entries))
            self._cache_size += cost
            self._cache_runs.append([len(enc.entries), cost])
            self._evict_cache()

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
            seg: _Segment | None = self._segments[i]
            assert seg is not None
            k = 0
            start = 0  # offset of the batch holding the cut
            keep_block = False  # whether block k keeps a batch
            if cut > seg.first:
                k = seg.block_of(cut)
                kstart, kend, kfirst, kcount = seg.block_span(k)
                # Verified read: the kept prefix is rewritten from checked bytes only.
                block = self._read_block(seg, kstart, kend, kfirst, kcount)
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
            self._clear_verified()
            if cut <= self._cache_first:
                self._clear_cache(cut)
            else:
                keep = self._cache_head + cut - self._cache_first
                drop = len(self._cache) - keep
                del self._cache[keep:]
                runs = self._cache_runs
                while drop > 0:
                    run = runs[-1]
                    if run[0] <= drop:
                        runs.pop()
                        drop -= run[0]
                        self._cache_size -= run[1]
                    else:
                        run[0] -= drop
                        left = cached_cost(self._cache[len(self._cache) - run[0] :])
                        self._cache_size -= run[1] - left
                        run[1] = left
                        drop = 0
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
            self._clear_verified()
            if self._cache_first < first_kept:
                drop = first_kept - self._cache_first
                self._cache_head += drop
                runs = self._cache_runs
                while drop > 0:
                    run = runs[0]
                    if run[0] <= drop:
                        runs.popleft()
                        drop -= run[0]
                        self._cache_size -= run[1]
                    else:
                        run[0] -= drop
                        head = self._cache_head
                        left = cached_cost(self._cache[head : head + run[0]])
                        self._cache_size -= run[1] - left
                        run[1] = left
                        drop = 0
                self._cache_first = first_kept
                self._compact_cache()
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
            self._clear_cache(next_index)
            self._clear_verified()
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
            self._clear_cache(self._last + 1)
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

    def _new_segment(self, first: int, key: SegmentKey) -> _Segment:
        """Create the segment file starting at ``first``: its header written and
        durable, and its directory entry too, before any batch goes into it. An
        empty last segment of the same name (one not appended to since it was
        opened) is replaced atomically: the new file is prepared as
        ``<name>.tmp`` and renamed over it. `TransientStorageError` if no
        descriptor is left: nothing was changed."""
        path = os.path.join(self._dir, segment_name(first))
        old = self._segments[-1] if self._segments else None
        if old is not None and old.first != first:
            old = None
        if old is not None:
            assert old.count == 0, "only an empty segment is replaced"
            target, flags = path + ".tmp", os.O_RDWR | os.O_CREAT | os.O_TRUNC
        else:
            target, flags = path, os.O_RDWR | os.O_CREAT | os.O_EXCL
        try:
            fd = open_fd(target, flags)
        except OSError as exc:
            self._fail(f"cannot create segment {path}: {exc}")
            raise StorageError(self._failed) from exc
        seg = _Segment(path, fd, first, key)
        header = encode_segment_header(first, key.nonce)
        try:
            pwrite_all(fd, header, 0)
            sync_data(fd)
            if old is not None:
                os.replace(target, path)
            self._fsync_dir()
        except OSError as exc:
            os.close(fd)
            self._fail(f"cannot create segment {path}: {exc}")
            raise StorageError(self._failed) from exc
        seg.crc = crc32c.crc32c(header)
        seg.appendable = True
        with self._lock:
            if old is not None:
                del self._segments[-1]
                del self._seg_firsts[-1]
            self._segments.append(seg)
            self._seg_firsts.append(first)
        if old is not None:
            os.close(old.fd)
        return seg

    def _unlink_segments(self, doomed: list[_Segment], what: str) -> None:
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

    def _write_index(self, seg: _Segment) -> None:
        """Write the sidecar index of a segment that is being sealed. Best effort:
        without it, the next open scans the segment instead."""
        raw = encode_index(
            seg.first,
            seg.size,
            seg.crc,
            seg.count,
            seg.block_starts,
            seg.block_firsts,
            seg.run_starts,
            seg.run_terms,
        )
        tmp = seg.index_path + ".tmp"
        try:
            with open(tmp, "wb") as f:
                f.write(raw)
            os.replace(tmp, seg.index_path)
        except OSError as exc:
            logger.warning("%s: cannot write index (%s); next open will scan", seg.path, exc)
            unlink_quietly(tmp)

    def _evict_cache(self) -> None:
        # Whole batches at a time: the cache may hold up to one batch less than its
        # budget, never more than the budget.
        runs = self._cache_runs
        head = self._cache_head
        while self._cache_size > self._cache_bytes and runs:
            n, nbytes = runs.popleft()
            head += n
            self._cache_size -= nbytes
        self._cache_first += head - self._cache_head
        self._cache_head = head
        self._compact_cache()

    def _compact_cache(self) -> None:
        # Amortised O(1) eviction: drop the evicted head once it exceeds an eighth of
        # the list (moving about 7 pointers per evicted entry), so evicted entries
        # never keep more than a seventh of the cache's size alive on top of it.
        if self._cache_head > _CACHE_COMPACT and _CACHE_SLACK * self._cache_head > len(self._cache):
            del self._cache[: self._cache_head]
            self._cache_head = 0

    def _clear_cache(self, next_index: int) -> None:
        self._cache = []
        self._cache_head = 0
        self._cache_size = 0
        self._cache_runs = deque()
        self._cache_first = next_index

    def _close_files(self) -> None:
        self._clear_verified()
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

    def _recover(self) -> None:
        first, prev_term, flags = read_log_meta(self._dir)
        redo = read_truncate_redo(self._dir)
        unlink_quietly(os.path.join(self._dir, TRUNCATE_REDO + ".tmp"))
        names: list[tuple[int, str]] = []
        for name in os.listdir(self._dir):
            if _SEGMENT_TMP_RE.match(name):
                # A replacement segment prepared but not renamed into place.
                unlink_quietly(os.path.join(self._dir, name))
                continue
            if not name.endswith(".log"):
                continue  # log_meta, journals, temp files, the lock, other components' files
            m = _SEGMENT_RE.match(name)
            if m is None:
                raise CorruptLogError(
                    os.path.join(self._dir, name), 0, "not a segment name (20 digits + .log)"
                )
            names.append((int(m.group(1)), os.path.join(self._dir, name)))
        names.sort()
        if flags & RESET_PENDING:
            logger.warning("%s: finishing an interrupted reset(%d)", self._dir, first)
            for _, path in names:
                os.unlink(path)
            if redo is not None:
                os.unlink(os.path.join(self._dir, TRUNCATE_REDO))
                redo = None
            self._fsync_dir()
            self._write_log_meta(first, prev_term, 0)
            names = []
        if redo is not None:
            names = self._redo_truncate(redo, names)
        # Finish an interrupted truncate_prefix. log_meta (durable before any
        # unlink) says where the log starts; the unlinks may have reached the disk
        # in any order, so any subset of the compacted segments may be left. Every
        # segment followed by one starting at or before `first` lies wholly before
        # it; so may the last of those (below, once its end is known).
        k = bisect.bisect_right([n for n, _ in names], first) - 1
        if k > 0:
            logger.warning("%s: deleting %d segment(s) before first index %d", self._dir, k, first)
            for _, path in names[:k]:
                os.unlink(path)
            self._fsync_dir()
            names = names[k:]
        if names and names[0][0] > first:
            raise CorruptLogError(
                names[0][1],
                0,
                f"log starts at index {first} (log_meta) but the first segment starts at "
                f"{names[0][0]}",
            )
        self._first = first
        self._prev_term = prev_term
        self._last = first - 1
        for i, (seg_first, path) in enumerate(names):
            if self._segments and seg_first != self._segments[-1].last + 1:
                raise CorruptLogError(
                    path,
                    0,
                    f"segment starts at index {seg_first} but the previous one ends at "
                    f"{self._segments[-1].last} (missing or overlapping segment)",
                )
            seg = self._load_segment(path, seg_first, is_last=i == len(names) - 1)
            if seg is None:
                break  # the last one, torn while being created: deleted
            self._segments.append(seg)
            self._seg_firsts.append(seg_first)
        if self._segments and self._segments[0].last < first:
            # It holds nothing from `first` on: everything up to `first` was
            # compacted, and its unlink had not reached the disk. (A segment after
            # it would start at or before `first`, and have been chosen instead.)
            assert len(self._segments) == 1
            seg = self._segments.pop()
            self._seg_firsts.pop()
            logger.warning(
                "%s: deleting %s, wholly before first index %d", self._dir, seg.path, first
            )
            os.close(seg.fd)
            os.unlink(seg.path)
            unlink_quietly(seg.index_path)
            self._fsync_dir()
        # Indexes of deleted segments, of the last segment (it changes), temp files.
        keep = {seg.index_path for seg in self._segments[:-1]}
        for name in os.listdir(self._dir):
            path = os.path.join(self._dir, name)
            if _INDEX_RE.match(name) and path not in keep:
                unlink_quietly(path)
        if self._segments:
            self._last = self._segments[-1].last

    def _redo_truncate(
        self, redo: TruncateRedo, names: list[tuple[int, str]]
    ) -> list[tuple[int, str]]:
        """Finish an interrupted mid-batch `truncate_suffix` from its journal; return
        the segments left. Idempotent: a crash in here is redone by the next open."""
        journal = os.path.join(self._dir, TRUNCATE_REDO)
        path = os.path.join(self._dir, segment_name(redo.segment_first))
        if path not in {p for _, p in names}:
            raise CorruptLogError(
                journal, 0, f"names segment {path}, which does not exist (cannot redo the cut)"
            )
        later = [p for n, p in names if n > redo.segment_first]
        logger.warning(
            "%s: finishing an interrupted truncate_suffix: %s cut at offset %d, "
            "%d later segment(s) deleted",
            self._dir,
            path,
            redo.offset,
            len(later),
        )
        for p in reversed(later):
            os.unlink(p)
            unlink_quietly(p[: -len(".log")] + ".idx")
        if later:
            self._fsync_dir()
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
        self._fsync_dir()
        return [(n, p) for n, p in names if n <= redo.segment_first]

    def _load_segment(self, path: str, first: int, *, is_last: bool) -> _Segment | None:
        """Open, verify and index one segment; None if it is a last segment torn
        while being created (it is deleted). See "Recovery" in the module doc."""
        fd = os.open(path, os.O_RDWR | _O_CLOEXEC)
        try:
            size = os.fstat(fd).st_size
            head = os.pread(fd, SEGMENT_HEADER_SIZE, 0)
            header = decode_segment_header(head)
            if isinstance(header, str):
                _refuse_older_format(fd, path, size)
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
                self._fsync_dir()
                return None
            if header.first != first:
                raise CorruptLogError(
                    path, 0, f"segment header says first index {header.first}, not {first}"
                )
            seg = _Segment(path, fd, first, header.key)
            if not is_last and self._use_index(seg, size):
                return seg
            with mmap.mmap(fd, size, access=mmap.ACCESS_READ) as mm:
                res = scan_batches(
                    mm,
                    size,
                    first,
                    header.key,
                    SEGMENT_HEADER_SIZE,
                    self._block_bytes,
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
                    self._write_index(seg)  # so the next open need not scan it
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

    def _use_index(self, seg: _Segment, size: int) -> bool:
        """Load ``seg``'s index from its sidecar file if that proves valid for the
        segment's exact current bytes (read in chunks: no mapping of the whole file)."""
        try:
            with open(seg.index_path, "rb") as f:
                raw = f.read()
        except OSError:
            return False
        idx = decode_index(raw, seg.first, size, SEGMENT_HEADER_SIZE)
        if idx is None:
            return False
        if file_crc(seg.fd, size) != idx.seg_crc:
            return False  # the scan will find and name the damage
        seg.block_starts = idx.block_starts
        seg.block_firsts = idx.block_firsts
        seg.count = idx.entry_count
        seg.run_starts = idx.run_starts
        seg.run_terms = idx.run_terms
        seg.size = size
        seg.crc = idx.seg_crc
        return True


def _refuse_older_format(fd: int, path: str, size: int) -> None:
    """Raise a clear `CorruptLogError` if the file at ``path`` is a segment of log
    format 1 or 2 (no segment header): never mistake it for a torn creation."""
    if size == 0:
        return
    with mmap.mmap(fd, size, access=mmap.ACCESS_READ) as mm:
        old = 1 if looks_like_v1(mm, size) else 2 if looks_like_v2(mm, size) else 0
    if old:
        raise CorruptLogError(
            path,
            0,
            f"segment in log format version {old}; this pyjraft reads only format "
            f"version {FORMAT_VERSION} (segment header, bound batch records) and cannot "
            "open this log",
        )


def _pread_exact(seg: _Segment, length: int, offset: int) -> bytes:
    buf = os.pread(seg.fd, length, offset)
    if len(buf) == length:
        return buf
    parts = [buf]
    got = len(buf)
    while got < length:
        more = os.pread(seg.fd, length - got, offset + got)
        if not more:
            raise CorruptLogError(
                seg.path, offset + got, f"file ends early: wanted {length} bytes at {offset}"
            )
        parts.append(more)
        got += len(more)
    return b"".join(parts)
