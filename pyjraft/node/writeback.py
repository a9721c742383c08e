"""Writing snapshot files to disk gradually, so they do not crowd out the log.

A snapshot's files reach the page cache at memory speed, and their final
fsync would then hand the disk everything at once: the log's small
fdatasyncs, on every write's latency path, would queue behind a gigabyte.
`start_writeback` asks the kernel to start writing a range of a file
without waiting (Linux ``sync_file_range(SYNC_FILE_RANGE_WRITE)``; the pages
stay cached), and `pace_writeback` does so for a whole directory a range
at a time, at most ``rate`` bytes per second; the fsync that follows then
finds little left to do. Elsewhere both are no-ops and the fsync does it all.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Callable
from typing import Any

RANGE_BYTES = 8 << 20
"""Bytes handed to the disk at a time."""
_SYNC_FILE_RANGE_WRITE = 2


def _load() -> Any:
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    try:
        fn = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    fn.restype = ctypes.c_int
    return fn


_sync_file_range = _load()


def start_writeback(fd: int, offset: int, length: int) -> None:
    """Start writing ``length`` bytes of ``fd`` from ``offset`` to disk; do not wait."""
    if _sync_file_range is not None:
        _sync_file_range(fd, offset, length, _SYNC_FILE_RANGE_WRITE)


def pace_writeback(
    directory: str,
    rate: int,
    *,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> int:
    """Hand every regular file of ``directory`` to the disk, `RANGE_BYTES` at a
    time, at most ``rate`` bytes per second (``rate <= 0``: no pause between
    ranges). Blocking: for a worker thread. Returns the bytes handed over."""
    if _sync_file_range is None:
        return 0
    total = 0
    start = clock()
    for name in sorted(os.listdir(directory)):
        path = os.path.join(directory, name)
        with contextlib.suppress(OSError):
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0) | os.O_NOFOLLOW)
            try:
                size = os.fstat(fd).st_size
                for offset in range(0, size, RANGE_BYTES):
                    n = min(RANGE_BYTES, size - offset)
                    start_writeback(fd, offset, n)
                    total += n
                    if rate > 0:
                        ahead = start + total / rate - clock()
                        if ahead > 0:
                            sleep(ahead)
            finally:
                os.close(fd)
    return total
