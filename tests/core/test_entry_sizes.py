"""Byte accounting of entries: the limits every message and read obeys."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from pyjraft.core.types import Entry, EntryType, count_within, entries_size


def _entries(sizes: list[int]) -> list[Entry]:
    return [Entry(1, i + 1, EntryType.NORMAL, b"x" * n) for i, n in enumerate(sizes)]


@settings(max_examples=300, deadline=None, derandomize=True)
@given(st.lists(st.integers(0, 300), max_size=40), st.integers(0, 5000), st.integers(0, 500))
def test_count_within_matches_a_plain_loop(sizes: list[int], max_bytes: int, used: int) -> None:
    entries = _entries(sizes)
    expected = 0
    total = used
    for e in entries:
        total += e.size
        if total > max_bytes:
            break
        expected += 1
    if expected == 0 and used == 0 and entries:
        expected = 1  # one oversized entry still goes alone
    assert count_within(entries, max_bytes, used) == expected


def test_entries_size_is_the_sum_of_sizes() -> None:
    entries = _entries([0, 5, 100])
    assert entries_size(entries) == sum(e.size for e in entries) == 105 + 3 * 16
    assert entries_size([]) == 0
