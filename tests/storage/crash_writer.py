"""Subprocess for the kill -9 test: append batches forever, print each acknowledged index.

Usage: ``python crash_writer.py DIRECTORY SEED``. Entry data is derived from the
index alone (`tests.storage.helpers.payload`), so the parent can check bytes.
"""

from __future__ import annotations

import random
import sys

from pyjraft.core.types import Entry, EntryType
from pyjraft.storage import SegmentLogStorage


def payload(index: int) -> bytes:
    """Data of the entry at ``index`` (kept in sync with the parent's copy)."""
    n = (index * 7919) % 997
    return (index.to_bytes(8, "little") * (n // 8 + 1))[:n]


def main() -> None:
    directory, seed = sys.argv[1], int(sys.argv[2])
    rng = random.Random(seed)
    log = SegmentLogStorage(directory, sync=True, segment_bytes=16 * 1024)
    nxt = log.last_index() + 1
    out = sys.stdout
    while True:
        n = rng.randint(1, 40)
        log.append([Entry(1, i, EntryType.NORMAL, payload(i)) for i in range(nxt, nxt + n)])
        nxt += n
        out.write(f"{nxt - 1}\n")
        out.flush()


if __name__ == "__main__":
    main()
