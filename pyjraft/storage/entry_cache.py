"""What the segmented log keeps in memory besides its index: two bounded caches.

`EntryCache` holds the most recently appended entries, a contiguous suffix of
the log, within a budget of memory (entry data plus `CACHED_ENTRY_OVERHEAD`
per entry for its Python objects). It is a list with a moving head: appending
extends it, eviction advances the head a whole batch at a time (the batches
are kept as ``[entry count, bytes]`` runs, so eviction costs O(1) per batch,
not a Python step per entry), and the evicted head is dropped once it
exceeds an eighth of the list, so evicted entries never keep more than a
seventh of the cache's size alive on top of it.

`VerifiedBlocks` is a small LRU of blocks read from disk and verified in
full, keyed by (segment, offset), so that a follower catching up in
``max_bytes`` pieces does not read and verify one block again per piece.

Neither takes a lock: `pyjraft.storage.segment_log.SegmentLogStorage` calls
them under its own.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Sequence

from pyjraft.core.types import Entry, entries_size

__all__ = ["CACHED_ENTRY_OVERHEAD", "EntryCache", "VerifiedBlocks", "cached_cost"]

_MiB = 1 << 20
_CACHE_COMPACT = 4096
# Evicted entries still at the head of the cache list, as a fraction of the list,
# beyond which the list is compacted (each compaction moves every pointer once).
_CACHE_SLACK = 8
_ENTRY_OVERHEAD = 16  # Entry.size = len(data) + 16
# What a cached entry costs beyond its data, in Python objects: its Entry tuple
# (with the GC header), its index int, its bytes header and its list slot. The
# cache budget counts this, so that ``cache_bytes`` is memory, not payload
# (measured with tracemalloc on 64-bit CPython 3.11: 153 bytes).
CACHED_ENTRY_OVERHEAD = 152
# Budget of the LRU of verified blocks read from disk, counted as the block's bytes
# plus an estimate of the Python objects each decoded entry adds (its Entry tuple,
# index int, bytes header and list slot: about 140 bytes on 64-bit CPython).
_VERIFIED_BYTES = 8 * _MiB
_DECODED_ENTRY_OVERHEAD = 128


def cached_cost(entries: Sequence[Entry]) -> int:
    """Bytes ``entries`` count for against the entry cache's budget."""
    return batch_cost(entries_size(entries), len(entries))


def batch_cost(entry_bytes: int, count: int) -> int:
    """`cached_cost` of ``count`` entries whose `Entry.size` sums to ``entry_bytes``."""
    return entry_bytes + (CACHED_ENTRY_OVERHEAD - _ENTRY_OVERHEAD) * count


class EntryCache:
    """The most recent entries of the log, ``[first, first + len)``, within ``budget``
    bytes of memory (see the module docstring). Readers index ``entries`` directly:
    entry ``i`` is ``entries[head + i - first]``."""

    __slots__ = ("budget", "entries", "first", "head", "runs", "size")

    def __init__(self, budget: int, next_index: int) -> None:
        self.budget = budget
        """Memory budget in bytes (`cached_cost`)."""
        self.entries: list[Entry] = []
        """The cached entries, from ``head`` on (before it: evicted, not yet dropped)."""
        self.head = 0
        self.first = next_index
        """Index of the first cached entry (the next one to append when empty)."""
        self.size = 0
        """Bytes of the cached entries (`cached_cost`)."""
        # The cache as appended batches, oldest first: [entry count, bytes] each.
        self.runs: deque[list[int]] = deque()

    def add(self, entries: Sequence[Entry], entry_bytes: int) -> None:
        """Cache a batch just appended (its `Entry.size` sum is ``entry_bytes``), then
        evict whole batches, oldest first, until within the budget."""
        self.entries.extend(entries)
        cost = batch_cost(entry_bytes, len(entries))
        self.size += cost
        self.runs.append([len(entries), cost])
        if self.size > self.budget:
            self._evict()

    def clear(self, next_index: int) -> None:
        """Forget everything; the next entry cached will be ``next_index``."""
        self.entries = []
        self.head = 0
        self.size = 0
        self.runs = deque()
        self.first = next_index

    def drop_from(self, cut: int) -> None:
        """Forget the cached entries from index ``cut`` on."""
        if cut <= self.first:
            self.clear(cut)
            return
        keep = self.head + cut - self.first
        drop = len(self.entries) - keep
        del self.entries[keep:]
        runs = self.runs
        while drop > 0:
            run = runs[-1]
            if run[0] <= drop:
                runs.pop()
                drop -= run[0]
                self.size -= run[1]
            else:
                run[0] -= drop
                left = cached_cost(self.entries[len(self.entries) - run[0] :])
                self.size -= run[1] - left
                run[1] = left
                drop = 0

    def drop_before(self, first_kept: int) -> None:
        """Forget the cached entries before index ``first_kept``."""
        if self.first >= first_kept:
            return
        drop = first_kept - self.first
        self.head += drop
        runs = self.runs
        while drop > 0:
            run = runs[0]
            if run[0] <= drop:
                runs.popleft()
                drop -= run[0]
                self.size -= run[1]
            else:
                run[0] -= drop
                head = self.head
                left = cached_cost(self.entries[head : head + run[0]])
                self.size -= run[1] - left
                run[1] = left
                drop = 0
        self.first = first_kept
        self._compact()

    def _evict(self) -> None:
        # Whole batches at a time: the cache may hold up to one batch less than its
        # budget, never more than the budget.
        runs = self.runs
        head = self.head
        while self.size > self.budget and runs:
            n, nbytes = runs.popleft()
            head += n
            self.size -= nbytes
        self.first += head - self.head
        self.head = head
        self._compact()

    def _compact(self) -> None:
        # Amortised O(1) eviction: drop the evicted head once it exceeds an eighth of
        # the list (moving about 7 pointers per evicted entry).
        if self.head > _CACHE_COMPACT and _CACHE_SLACK * self.head > len(self.entries):
            del self.entries[: self.head]
            self.head = 0


class VerifiedBlocks:
    """LRU of decoded, verified blocks read from disk: (segment first index, block
    offset) -> the block's entries, within 8 MiB (bytes read plus an estimate of
    the decoded objects)."""

    __slots__ = ("_blocks", "_bytes")

    def __init__(self) -> None:
        self._blocks: OrderedDict[tuple[int, int], tuple[list[Entry], int]] = OrderedDict()
        self._bytes = 0

    def get(self, key: tuple[int, int], count: int) -> list[Entry] | None:
        """The block at ``key`` if it is held with exactly ``count`` entries (the
        last block of the last segment grows as batches join it)."""
        hit = self._blocks.get(key)
        if hit is None:
            return None
        if len(hit[0]) == count:
            self._blocks.move_to_end(key)
            return hit[0]
        del self._blocks[key]
        self._bytes -= hit[1]
        return None

    def put(self, key: tuple[int, int], entries: list[Entry], nbytes: int) -> None:
        """Hold the block at ``key`` (``nbytes`` read from disk), evicting the least
        recently used ones beyond the budget (never the newest)."""
        cost = nbytes + _DECODED_ENTRY_OVERHEAD * len(entries)
        self._blocks[key] = (entries, cost)
        self._bytes += cost
        while self._bytes > _VERIFIED_BYTES and len(self._blocks) > 1:
            _key, (_old, evicted) = self._blocks.popitem(last=False)
            self._bytes -= evicted

    def clear(self) -> None:
        """Forget every block (after a truncation or reset)."""
        self._blocks.clear()
        self._bytes = 0
