"""Model-based test: SegmentLogStorage behaves like MemoryLogStorage under random
append / truncate_suffix / truncate_prefix / reset / reopen sequences.

Hypothesis drives the choices from a seed it prints (with the shrunk failing
sequence) on failure; ``derandomize=True`` makes every run identical.
"""

from __future__ import annotations

import shutil
import tempfile

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from pyjraft.core.types import Entry, EntryType
from pyjraft.storage import MemoryLogStorage, SegmentLogStorage
from pyjraft.storage.segment_log import cached_cost

SEGMENT_BYTES = 512
CACHE_BYTES = 300


class LogMachine(RuleBasedStateMachine):
    """The durable log and the in-memory model, driven in lockstep."""

    BLOCK_BYTES = 32 << 10  # the default: a whole segment is one index block

    def __init__(self) -> None:
        super().__init__()
        self.dir = tempfile.mkdtemp(prefix="pyjraft-stateful-")
        self.log = self._open()
        self.model = MemoryLogStorage()
        self.term = 1

    def _open(self) -> SegmentLogStorage:
        return SegmentLogStorage(
            self.dir,
            sync=False,
            segment_bytes=SEGMENT_BYTES,
            cache_bytes=CACHE_BYTES,
            block_bytes=self.BLOCK_BYTES,
        )

    @rule(
        sizes=st.lists(st.integers(0, 120), min_size=1, max_size=12),
        bump=st.booleans(),
        kind=st.sampled_from(list(EntryType)),
        fill=st.integers(0, 255),
    )
    def append(self, sizes: list[int], bump: bool, kind: EntryType, fill: int) -> None:
        self.term += bump
        lo = self.model.last_index() + 1
        batch = [
            Entry(self.term, lo + i, kind, bytes([(fill + i) % 256]) * n)
            for i, n in enumerate(sizes)
        ]
        self.log.append(batch)
        self.model.append(batch)

    @rule(data=st.data())
    def truncate_suffix(self, data: st.DataObject) -> None:
        last_kept = data.draw(
            st.integers(self.model.first_index() - 1, self.model.last_index()), "last_kept"
        )
        self.log.truncate_suffix(last_kept)
        self.model.truncate_suffix(last_kept)

    @rule(data=st.data())
    def truncate_prefix(self, data: st.DataObject) -> None:
        first_kept = data.draw(
            st.integers(max(1, self.model.first_index() - 2), self.model.last_index() + 1),
            "first_kept",
        )
        self.log.truncate_prefix(first_kept)
        self.model.truncate_prefix(first_kept)

    @rule(data=st.data(), prev_term=st.integers(0, 50))
    def reset(self, data: st.DataObject, prev_term: int) -> None:
        last = self.model.last_index()
        next_index = data.draw(st.integers(1, last + 20), "next_index")
        self.log.reset(next_index, prev_term)
        self.model.reset(next_index, prev_term)
        self.term = max(self.term, prev_term)

    @rule()
    def reopen(self) -> None:
        self.log.close()
        self.log = self._open()

    @precondition(lambda self: self.model.last_index() >= self.model.first_index())
    @rule(data=st.data())
    def read_range(self, data: st.DataObject) -> None:
        first, last = self.model.first_index(), self.model.last_index()
        lo = data.draw(st.integers(first, last), "lo")
        hi = data.draw(st.integers(lo, last + 1), "hi")
        max_bytes = data.draw(st.none() | st.integers(0, 600), "max_bytes")
        assert self.log.entries(lo, hi, max_bytes) == self.model.entries(lo, hi, max_bytes)

    @invariant()
    def same_log(self) -> None:
        first, last = self.model.first_index(), self.model.last_index()
        assert (self.log.first_index(), self.log.last_index()) == (first, last)
        for i in range(first - 1, last + 1):
            assert self.log.term(i) == self.model.term(i), i
        assert self.log.entries(first, last + 1) == self.model.entries(first, last + 1)

    @invariant()
    def cache_accounting(self) -> None:
        cache = self.log._cache
        cached = cache.entries[cache.head :]
        assert cache.size == cached_cost(cached) <= CACHE_BYTES
        assert sum(n for n, _ in cache.runs) == len(cached)
        assert sum(b for _, b in cache.runs) == cache.size
        assert [e.index for e in cached] == list(range(cache.first, cache.first + len(cached)))
        if cached:
            assert cached[-1].index == self.model.last_index()

    def teardown(self) -> None:
        self.log.close()
        shutil.rmtree(self.dir, ignore_errors=True)


class PerBatchBlockMachine(LogMachine):
    """Every batch its own index block."""

    BLOCK_BYTES = 1


class SmallBlockMachine(LogMachine):
    """Blocks of one to a few batches, several per segment."""

    BLOCK_BYTES = 100


_SETTINGS = settings(
    max_examples=60, stateful_step_count=40, deadline=None, derandomize=True, database=None
)
LogMachine.TestCase.settings = _SETTINGS
PerBatchBlockMachine.TestCase.settings = _SETTINGS
SmallBlockMachine.TestCase.settings = _SETTINGS
TestSegmentLogAgainstModel = LogMachine.TestCase
TestSegmentLogPerBatchBlocksAgainstModel = PerBatchBlockMachine.TestCase
TestSegmentLogSmallBlocksAgainstModel = SmallBlockMachine.TestCase
