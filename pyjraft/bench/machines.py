"""The benchmark's state machines: a counter, a large state on disk, and a large
state in memory with copy-on-write snapshots.

- `CountingMachine` counts entries and bytes; its snapshot is one small file.
- `BlobMachine` adds a snapshot file of ``state_bytes`` (pseudo-random bytes
  generated while writing, never held in memory): a large snapshot to send,
  for the install benchmark (`benchmarks/snapshot_install.py`).
- `PagedMachine` holds ``state_bytes`` in memory as 4 KiB pages; every entry
  writes its payload into a page chosen by its index. Its snapshot is
  captured copy-on-write, as a database or ``fork()`` would: the capture
  copies the list of page references (262,144 per GiB: a few milliseconds)
  and marks every page shared; an apply that writes into a shared page
  copies that page first (4 KiB, about a microsecond). The worker thread
  writes the captured pages while applies go on. For the apply-pause
  benchmark (`benchmarks/snapshot_pause.py`).
"""

from __future__ import annotations

import json
import os
import random
from collections.abc import Callable, Iterable, Sequence

from pyjraft.core.types import Entry
from pyjraft.node import SnapshotReader, SnapshotWriter, StateMachine

PAGE = 4 << 10


class CountingMachine(StateMachine):
    """Counts entries and bytes applied; each result is the running count.
    Snapshots are one small file, ``counts`` (the two numbers, in JSON)."""

    def __init__(self) -> None:
        self.count = 0
        self.bytes = 0

    def on_apply(self, entries: Sequence[Entry]) -> list[int]:
        """Count the entries; return the count after each."""
        out: list[int] = []
        count = self.count
        for e in entries:
            count += 1
            self.bytes += len(e.data)
            out.append(count)
        self.count = count
        return out

    def _counts(self) -> str:
        return json.dumps({"count": self.count, "bytes": self.bytes})

    def on_snapshot_save(self, writer: SnapshotWriter) -> Callable[[], None]:
        """Capture the two counts; their file is written on a worker thread."""
        text = self._counts()
        path = os.path.join(writer.directory, "counts")

        def write() -> None:
            with open(path, "w", encoding="ascii") as f:
                f.write(text)

        return write

    def on_snapshot_load(self, reader: SnapshotReader) -> None:
        """Replace the counts with the snapshot's."""
        with open(os.path.join(reader.directory, "counts"), encoding="ascii") as f:
            counts = json.loads(f.read(4096))
        self.count, self.bytes = int(counts["count"]), int(counts["bytes"])


def _write_all(fd: int, groups: Iterable[Sequence[bytes | bytearray]]) -> None:
    """Write each group of buffers with one ``writev`` (the GIL released). No
    fsync: the node hands the files to the disk at its own pace, then syncs
    them (`NodeOptions.snapshot_write_bytes_per_s`)."""
    for group in groups:
        size = sum(len(b) for b in group)
        done = os.writev(fd, group)
        if done < size:  # a short write: finish it
            rest = memoryview(b"".join(group))[done:]
            while rest:
                rest = rest[os.write(fd, rest) :]


class BlobMachine(CountingMachine):
    """`CountingMachine` whose snapshots also hold ``blob``, ``state_bytes`` of
    pseudo-random data written from one 1 MiB block (no memory held)."""

    def __init__(self, state_bytes: int) -> None:
        super().__init__()
        self.state_bytes = state_bytes
        self.blob_loaded = 0

    def on_snapshot_save(self, writer: SnapshotWriter) -> Callable[[], None]:
        """The counts, and the blob, both written on the worker thread."""
        counts = super().on_snapshot_save(writer)
        path = os.path.join(writer.directory, "blob")
        size = self.state_bytes
        seed = self.count

        def write() -> None:
            counts()
            block = random.Random(seed).randbytes(1 << 20)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            try:
                chunks = (
                    [block[: min(len(block), size - off)]] for off in range(0, size, len(block))
                )
                _write_all(fd, chunks)
            finally:
                os.close(fd)

        return write

    def on_snapshot_load(self, reader: SnapshotReader) -> None:
        """The counts; the blob's size is checked, its bytes were checked by CRC."""
        super().on_snapshot_load(reader)
        self.blob_loaded = os.path.getsize(os.path.join(reader.directory, "blob"))


class PagedMachine(CountingMachine):
    """``state_bytes`` in memory as 4 KiB pages, snapshotted copy-on-write (see
    the module docstring)."""

    def __init__(self, state_bytes: int) -> None:
        super().__init__()
        n = max(1, state_bytes // PAGE)
        self.pages = [bytearray(PAGE) for _ in range(n)]
        # A page is shared with the capture in flight when its generation is
        # not newer than the capture's.
        self._page_gen = [0] * n
        self._gen = 1
        self._captured = 0
        self.copied_pages = 0

    def on_apply(self, entries: Sequence[Entry]) -> list[int]:
        """Write each payload into its page (copying a page a capture shares)."""
        pages, gens, n = self.pages, self._page_gen, len(self.pages)
        captured, gen = self._captured, self._gen
        for e in entries:
            k = (e.index * 2654435761) % n
            if gens[k] <= captured:
                pages[k] = bytearray(pages[k])
                gens[k] = gen
                self.copied_pages += 1
            data = e.data[:PAGE]
            off = (e.index * 131) % (PAGE - len(data) + 1)
            pages[k][off : off + len(data)] = data
        return super().on_apply(entries)

    def on_snapshot_save(self, writer: SnapshotWriter) -> Callable[[], None]:
        """Capture: the page references, and every page marked shared."""
        counts = super().on_snapshot_save(writer)
        self._captured = self._gen
        self._gen += 1
        pages = list(self.pages)
        path = os.path.join(writer.directory, "pages")

        def write() -> None:
            counts()
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            try:
                _write_all(fd, (pages[i : i + 256] for i in range(0, len(pages), 256)))
            finally:
                os.close(fd)

        return write

    def on_snapshot_load(self, reader: SnapshotReader) -> None:
        """Replace the pages with the snapshot's."""
        super().on_snapshot_load(reader)
        with open(os.path.join(reader.directory, "pages"), "rb") as f:
            pages = []
            while chunk := f.read(PAGE):
                pages.append(bytearray(chunk))
        self.pages = pages
        self._page_gen = [0] * len(pages)
        self._captured = 0
        self._gen = 1


def make_machine(kind: str, state_bytes: int) -> CountingMachine:
    """The benchmark machine ``kind``: ``counting``, ``blob`` or ``paged``."""
    if kind == "blob":
        return BlobMachine(state_bytes)
    if kind == "paged":
        return PagedMachine(state_bytes)
    return CountingMachine()
