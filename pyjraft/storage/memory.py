"""In-memory `LogStorage` and `MetaStorage`, for tests, simulation and
users who want to start without disks. Nothing survives the process."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import cast

from pyjraft.core.log_reader import LogUnavailableError
from pyjraft.core.types import Entry, HardState, count_within


class MemoryLogStorage:
    """A `LogStorage` kept in a list. ``_entries[0]`` is a sentinel holding the
    term of ``first_index() - 1``."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._offset = 0  # index of the sentinel
        self._terms: list[int] = [0]
        self._entries: list[Entry | None] = [None]
        self._closed = False

    def first_index(self) -> int:
        return self._offset + 1

    def last_index(self) -> int:
        return self._offset + len(self._terms) - 1

    def term(self, index: int) -> int:
        i = index - self._offset
        if i < 0 or i >= len(self._terms):
            raise LogUnavailableError(
                f"term({index}): log holds {self.first_index() - 1}..{self.last_index()}"
            )
        return self._terms[i]

    def entries(self, lo: int, hi: int, max_bytes: int | None = None) -> list[Entry]:
        with self._lock:
            if lo < self.first_index() or hi > self.last_index() + 1 or lo > hi:
                raise LogUnavailableError(
                    f"entries[{lo}, {hi}): log holds {self.first_index()}..{self.last_index()}"
                )
            out = cast("list[Entry]", self._entries[lo - self._offset : hi - self._offset])
            if max_bytes is not None:
                del out[count_within(out, max_bytes) :]
            return out

    def append(self, entries: Sequence[Entry]) -> None:
        self._check_open()
        if not entries:
            return
        with self._lock:
            expect = self.last_index() + 1
            for e in entries:
                if e.index != expect:
                    raise ValueError(f"append: expected index {expect}, got {e.index}")
                expect += 1
            self._terms.extend(e.term for e in entries)
            self._entries.extend(entries)

    def truncate_suffix(self, last_kept: int) -> None:
        self._check_open()
        with self._lock:
            if last_kept < self._offset:
                raise ValueError(
                    f"truncate_suffix({last_kept}) below first index {self.first_index()}"
                )
            del self._terms[last_kept - self._offset + 1 :]
            del self._entries[last_kept - self._offset + 1 :]

    def truncate_prefix(self, first_kept: int) -> None:
        self._check_open()
        with self._lock:
            if first_kept <= self.first_index():
                return
            if first_kept > self.last_index() + 1:
                raise ValueError(
                    f"truncate_prefix({first_kept}) past last index {self.last_index()}"
                )
            cut = first_kept - 1 - self._offset
            self._terms = self._terms[cut:]
            self._entries = [None, *self._entries[cut + 1 :]]
            self._offset = first_kept - 1

    def reset(self, next_index: int, prev_term: int) -> None:
        self._check_open()
        with self._lock:
            self._offset = next_index - 1
            self._terms = [prev_term]
            self._entries = [None]

    def close(self) -> None:
        self._closed = True

    def _check_open(self) -> None:
        if self._closed:
            raise ValueError("log storage is closed")


class MemoryMetaStorage:
    """A `MetaStorage` kept in a field."""

    def __init__(self, state: HardState | None = None) -> None:
        self._state = state or HardState()

    def load(self) -> HardState:
        return self._state

    def save(self, state: HardState) -> None:
        self._state = state
