"""Shared helpers for the storage tests: deterministic entries and file surgery."""

from __future__ import annotations

import os

from pyjraft.core.types import Entry, EntryType


def payload(index: int) -> bytes:
    """Data for the entry at ``index``: derived from the index alone (0..96 bytes)."""
    n = (index * 7919) % 97
    return (index.to_bytes(8, "little") * (n // 8 + 1))[:n]


def entry(index: int, term: int = 1) -> Entry:
    """The deterministic entry at ``index``."""
    return Entry(term, index, EntryType(index % 3), payload(index))


def batch(lo: int, n: int, term: int = 1) -> list[Entry]:
    """``n`` deterministic entries starting at ``lo``."""
    return [entry(i, term) for i in range(lo, lo + n)]


def segments(directory: str) -> list[str]:
    """Paths of the segment files in ``directory``, in index order."""
    return sorted(os.path.join(directory, n) for n in os.listdir(directory) if n.endswith(".log"))


def flip_bit(path: str, offset: int, bit: int = 0) -> None:
    """Flip one bit of the byte at ``offset`` in ``path``."""
    with open(path, "r+b") as f:
        f.seek(offset)
        b = f.read(1)[0]
        f.seek(offset)
        f.write(bytes([b ^ (1 << bit)]))
