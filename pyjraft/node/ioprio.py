"""Best-effort I/O priority of the calling thread (Linux ``ioprio_set``).

A snapshot is written in bulk while the log's small fdatasyncs are on every
write's latency path; on one disk, the bulk writes queue ahead of them. The
thread that writes a snapshot lowers its own I/O priority to the idle class
for the duration (`idle_io`), so a scheduler that honours priorities (Linux
mq-deadline since 5.14, bfq) serves the log first. Elsewhere this is a no-op.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from typing import Any

_IOPRIO_WHO_PROCESS = 1  # with who=0: the calling thread
_IOPRIO_CLASS_IDLE = 3
_IOPRIO_CLASS_SHIFT = 13
_SYSCALLS = {"x86_64": (251, 252), "aarch64": (30, 31)}  # (ioprio_set, ioprio_get)


def _libc() -> tuple[Any, int, int] | None:
    if not sys.platform.startswith("linux"):
        return None
    import ctypes
    import platform

    numbers = _SYSCALLS.get(platform.machine())
    if numbers is None:
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
    except OSError:
        return None
    return libc, numbers[0], numbers[1]


_SYS = _libc()


@contextlib.contextmanager
def idle_io() -> Iterator[None]:
    """Run the block with the calling thread in the idle I/O class, then restore it."""
    if _SYS is None:
        yield
        return
    libc, set_nr, get_nr = _SYS
    old = libc.syscall(get_nr, _IOPRIO_WHO_PROCESS, 0)
    changed = (
        old >= 0
        and libc.syscall(set_nr, _IOPRIO_WHO_PROCESS, 0, _IOPRIO_CLASS_IDLE << _IOPRIO_CLASS_SHIFT)
        == 0
    )
    try:
        yield
    finally:
        if changed:
            libc.syscall(set_nr, _IOPRIO_WHO_PROCESS, 0, old)
